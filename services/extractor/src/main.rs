//! `quarry-extractor`: serves sources over Arrow Flight.

use clap::Parser;
use quarry_core::config::ServiceArgs;
use quarry_core::{Config, grpc, logging};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init("info");
    let args = ServiceArgs::parse();
    let config = Config::load(args.config.as_deref())?;
    let security = grpc::Security::from_config(&config)?;
    let listener = grpc::bind(&config.extractor.listen).await?;
    quarry_extractor::serve(
        &config.extractor,
        &security,
        listener,
        grpc::shutdown_signal(),
    )
    .await?;
    Ok(())
}
