//! `quarry-loader`: stages Flight streams into the warehouse and commits runs.

use clap::Parser;
use quarry_core::config::ServiceArgs;
use quarry_core::{Config, grpc, logging};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init("info");
    let args = ServiceArgs::parse();
    let config = Config::load(args.config.as_deref())?;
    let security = grpc::Security::from_config(&config)?;
    let listener = grpc::bind(&config.loader.listen).await?;
    quarry_loader::serve(
        &config.loader,
        &config.warehouse,
        &security,
        listener,
        grpc::shutdown_signal(),
    )
    .await?;
    Ok(())
}
