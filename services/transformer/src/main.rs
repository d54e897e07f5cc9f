//! `quarry-transformer`: validates, aggregates and drives pipeline runs.

use clap::Parser;
use quarry_core::config::ServiceArgs;
use quarry_core::{Config, grpc, logging};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init("info");
    let args = ServiceArgs::parse();
    let config = Config::load(args.config.as_deref())?;
    let security = grpc::Security::from_config(&config)?;
    let listener = grpc::bind(&config.transformer.listen).await?;
    quarry_transformer::serve(
        &config.transformer,
        &security,
        listener,
        grpc::shutdown_signal(),
    )
    .await?;
    Ok(())
}
