//! The commands of `quarry`, one module each (`history` holds the ones that
//! read the warehouse: `runs`, `report`, `report top-users`); `args` is the
//! command line. This file holds how commands reach their services: a
//! loader, remote or in-process, and the services they start in-process.

pub(crate) mod archive;
pub(crate) mod args;
pub(crate) mod history;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod synthetic;

use anyhow::bail;
use quarry_cli::client::LoaderClient;
use quarry_cli::embedded::Cluster;
use quarry_core::config::WarehouseKind;
use quarry_core::{Config, grpc};

use self::args::Target;

/// How the command reaches services it started in-process: loopback, no
/// TLS or token, the configured client deadlines.
fn embedded_security(config: &Config) -> grpc::Security {
    let secs = std::time::Duration::from_secs;
    grpc::Security::default().with_deadlines(
        secs(config.client.connect_timeout_secs),
        secs(config.client.request_timeout_secs),
    )
}

/// Runs `f` against a remote loader, or against an in-process one over the local SQLite file.
async fn with_loader<F, Fut>(config: &mut Config, target: Target, f: F) -> anyhow::Result<()>
where
    F: FnOnce(LoaderClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if let Some(url) = target.loader {
        let sec = grpc::Security::from_config(config)?;
        return f(LoaderClient::connect_with(&url, &sec).await?).await;
    }
    if let Some(db) = target.sqlite {
        config.warehouse.sqlite.path = db;
    }
    if let Some(w) = target.warehouse {
        config.warehouse.kind = w.into();
    }
    let db = &config.warehouse.sqlite.path;
    if config.warehouse.kind == WarehouseKind::Sqlite && !db.exists() {
        bail!(
            "{} does not exist: run `quarry run` first or pass --sqlite / --loader",
            db.display()
        );
    }
    let cluster = Cluster::start_loader(config).await?;
    let result =
        f(LoaderClient::connect_with(&cluster.loader_url, &embedded_security(config)).await?).await;
    cluster.stop().await?;
    result
}
