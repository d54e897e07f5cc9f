//! `quarry serve` and `quarry ping`: one service in this process, and the
//! health check of a running one.

use std::time::Duration;

use anyhow::bail;
use quarry_cli::client;
use quarry_core::{Config, grpc};

use super::args::Service;

/// `quarry serve`: serves one service until Ctrl-C / SIGTERM.
pub(crate) async fn serve(config: &Config, service: Service) -> anyhow::Result<()> {
    let sec = grpc::Security::from_config(config)?;
    match service {
        Service::Extractor => {
            let l = grpc::bind(&config.extractor.listen).await?;
            quarry_extractor::serve(config, &sec, l, grpc::shutdown_signal()).await?
        }
        Service::Transformer => {
            let l = grpc::bind(&config.transformer.listen).await?;
            quarry_transformer::serve(config, &sec, l, grpc::shutdown_signal()).await?
        }
        Service::Loader => {
            let l = grpc::bind(&config.loader.listen).await?;
            quarry_loader::serve(
                &config.loader,
                &config.warehouse,
                &sec,
                l,
                grpc::shutdown_signal(),
            )
            .await?
        }
        Service::Archiver => {
            let l = grpc::bind(&config.archiver.listen).await?;
            quarry_archiver::serve(config, &sec, l, grpc::shutdown_signal()).await?
        }
    }
    Ok(())
}

/// `quarry ping`: fails unless the service at `url` reports SERVING within
/// `timeout` seconds.
pub(crate) async fn ping(
    config: &Config,
    url: &str,
    service: &str,
    timeout: u64,
) -> anyhow::Result<()> {
    let status = tokio::time::timeout(Duration::from_secs(timeout), async {
        let sec = grpc::Security::from_config(config)?;
        client::health_with(url, service, &sec).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("{url} did not answer within {timeout} s"))??;
    println!("{status}");
    if status != "SERVING" {
        bail!("{url} is {status}");
    }
    Ok(())
}
