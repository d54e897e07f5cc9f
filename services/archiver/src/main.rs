//! `quarry-archiver`: moves old partitions to cold storage on a schedule and
//! on request, restores them, and serves cold partitions over Flight.

use clap::Parser;
use quarry_core::config::ServiceArgs;
use quarry_core::{Config, grpc, logging};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init("info");
    let args = ServiceArgs::parse();
    let config = Config::load(args.config.as_deref())?;
    let security = grpc::Security::from_config(&config)?;
    let listener = grpc::bind(&config.archiver.listen).await?;
    quarry_archiver::serve(&config, &security, listener, grpc::shutdown_signal()).await?;
    Ok(())
}
