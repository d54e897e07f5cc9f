//! Configuration: a TOML file plus `QUARRY_SECTION__KEY` environment overrides,
//! validated before any network call. `config/quarry.toml` documents every key.
//!
//! - this file: the root, loading and the sections every process shares
//!   (client deadlines, TLS, auth, run defaults, object storage);
//! - `services.rs`: the extractor, transformer, loader and archiver sections;
//! - `warehouse.rs`: the warehouse backends.
//!
//! Each section checks its own values (`validate`); [`Config::validate`]
//! asks every section.

mod lineage;
mod services;
mod source;
#[cfg(test)]
mod tests;
mod warehouse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use lineage::{LineageConfig, LineageTransport};
pub use services::{
    ArchiverConfig, CheckConfig, ExtractorConfig, LoaderConfig, QualityConfig, Severity,
    TransformerConfig,
};
pub use source::{PostgresSourceConfig, SourceConfig};
pub use warehouse::{
    BigQueryConfig, ClickHouseConfig, SnowflakeConfig, SqliteConfig, WarehouseConfig,
    WarehouseKind, is_identifier, is_project_id,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub extractor: ExtractorConfig,
    pub transformer: TransformerConfig,
    pub loader: LoaderConfig,
    pub warehouse: WarehouseConfig,
    pub archiver: ArchiverConfig,
    pub storage: StorageConfig,
    pub source: SourceConfig,
    pub run: RunConfig,
    pub lineage: LineageConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub client: ClientConfig,
}

/// Deadlines of every gRPC client (the CLI, and the transformer calling the
/// extractor and the loader).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Seconds to connect to a service and get its first answer (a health
    /// call): a port that accepts connections but never answers fails here.
    pub connect_timeout_secs: u64,
    /// Seconds a query (runs, reports, partitions, status) may take. Runs,
    /// loads and commits are not bounded by it: they take as long as the
    /// data needs, and a peer that stops answering is detected by HTTP/2
    /// keep-alive pings instead.
    pub request_timeout_secs: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10,
            request_timeout_secs: 60,
        }
    }
}

/// TLS between Quarry's services and their clients (the CLI, and the
/// transformer calling the extractor and the loader). One section for all:
/// every server presents `cert_path`/`key_path`, every client trusts `ca_path`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Servers speak TLS only; clients expect `https://` URLs.
    pub enabled: bool,
    /// The server's certificate chain (PEM).
    pub cert_path: PathBuf,
    /// The server's private key (PEM).
    pub key_path: PathBuf,
    /// The CA certificate(s) clients trust (PEM).
    pub ca_path: PathBuf,
    /// Name the server certificates are checked against (empty: the URL's host).
    pub domain: String,
}

/// Bearer-token authentication of every call except gRPC health checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Servers refuse calls without the token; clients send it.
    pub enabled: bool,
    /// Environment variable holding the token (used when `token_file` is empty).
    pub token_env: String,
    /// File holding the token (surrounding whitespace ignored).
    pub token_file: PathBuf,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token_env: "QUARRY_TOKEN".into(),
            token_file: PathBuf::new(),
        }
    }
}

impl ClientConfig {
    fn validate(&self) -> Result<()> {
        if self.connect_timeout_secs == 0 || self.request_timeout_secs == 0 {
            return Err(Error::config(
                "client.connect_timeout_secs and client.request_timeout_secs must be positive",
            ));
        }
        Ok(())
    }
}

impl TlsConfig {
    fn validate(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        for (key, path) in [
            ("tls.ca_path", &self.ca_path),
            ("tls.cert_path", &self.cert_path),
            ("tls.key_path", &self.key_path),
        ] {
            if !path.as_os_str().is_empty() && !path.is_file() {
                return Err(Error::config(format!(
                    "{key} = {}: no such file",
                    path.display()
                )));
            }
        }
        if self.ca_path.as_os_str().is_empty() {
            return Err(Error::config(
                "tls.enabled is true but tls.ca_path is empty: clients need the CA to trust",
            ));
        }
        Ok(())
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<()> {
        if self.enabled && self.token_file.as_os_str().is_empty() && self.token_env.is_empty() {
            return Err(Error::config(
                "auth.enabled is true but neither auth.token_file nor auth.token_env is set",
            ));
        }
        Ok(())
    }
}

/// Object-store settings shared by every `s3://` and `gs://` URL (sources
/// and the cold tier). Credentials come from the standard environments:
/// AWS (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// web identity, instance metadata) and Google (`GOOGLE_SERVICE_ACCOUNT`,
/// `GOOGLE_APPLICATION_CREDENTIALS`, the metadata server), or for `gs://`
/// from the key file named in `[storage.gcs]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub s3: S3Config,
    pub gcs: GcsConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcsConfig {
    /// A service account's JSON key file; empty: the Google environment.
    pub service_account_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Empty: AWS itself; else an S3-compatible endpoint (MinIO, R2, moto…).
    pub endpoint: String,
    /// Empty: from AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.
    pub region: String,
    /// Allow a plain-HTTP endpoint (local servers only).
    pub allow_http: bool,
    /// `bucket.host` addressing (AWS) instead of `host/bucket` (most
    /// S3-compatible servers).
    pub virtual_hosted_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: String::new(),
            allow_http: false,
            virtual_hosted_style: true,
        }
    }
}

/// Defaults of `quarry run` and the report commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub source: String,
    pub output_dir: PathBuf,
    /// Client type of the top-users report files.
    pub top_client_type: String,
    pub top_limit: u32,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            source: "data/trades.csv".into(),
            output_dir: PathBuf::from("output"),
            top_client_type: "bronze".into(),
            top_limit: 3,
        }
    }
}

impl RunConfig {
    fn validate(&self) -> Result<()> {
        if self.top_limit == 0 {
            return Err(Error::config("run.top_limit must be positive"));
        }
        Ok(())
    }
}

/// Environment variables with this prefix and a `__` override config keys:
/// `QUARRY_EXTRACTOR__BATCH_ROWS=1000` sets `[extractor] batch_rows`.
pub const ENV_PREFIX: &str = "QUARRY_";

impl Config {
    /// Reads the file (if any), applies the process environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        // Every key has a default: the file and the environment are laid
        // over the built-in configuration, so a section may name one key.
        let mut root = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            _ => return Err(Error::internal("the default configuration is not a table")),
        };
        if let Some(p) = path {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::config(format!("cannot read config file {}: {e}", p.display()))
                    .with_source(e)
            })?;
            let file = text.parse::<toml::Table>().map_err(|e| {
                Error::config(format!("config file {}: {}", p.display(), e.message()))
                    .with_source(e)
            })?;
            merge(&mut root, file);
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") {
                continue; // e.g. QUARRY_LOG_FORMAT: not a config key
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut root, &path, parse_env_value(&value))
                .map_err(|e| Error::config(format!("environment variable {key}: {e}")))?;
        }
        let origin = path
            .map(|p| format!("config file {}", p.display()))
            .unwrap_or_else(|| "configuration".into());
        let config: Config =
            toml::Value::Table(root)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    Error::config(format!("{origin}: {}", e.message())).with_source(e)
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work, before anything starts:
    /// each section its own.
    pub fn validate(&self) -> Result<()> {
        self.extractor.validate()?;
        self.transformer.validate()?;
        self.loader.validate()?;
        self.warehouse.validate()?;
        self.archiver.validate()?;
        self.tls.validate()?;
        self.auth.validate()?;
        self.client.validate()?;
        self.source.validate()?;
        self.lineage.validate()?;
        self.run.validate()
    }
}

/// A service's gRPC address (`<section>.listen`).
fn check_listen(key: &str, addr: &str) -> Result<()> {
    if addr.parse::<SocketAddr>().is_err() {
        return Err(Error::config(format!(
            "{key} = {addr:?} is not an address like 127.0.0.1:50051"
        )));
    }
    Ok(())
}

/// A service's metrics address (`<section>.metrics_listen`); empty turns it off.
fn check_metrics_listen(key: &str, addr: &str) -> Result<()> {
    if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
        return Err(Error::config(format!(
            "{key} = {addr:?} is not an address like 127.0.0.1:9451 (empty: off)"
        )));
    }
    Ok(())
}

/// Checks a service URL (`http://host:port` or `https://…`).
pub fn check_url(key: &str, url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => Ok(()),
        _ => Err(Error::config(format!(
            "{key} = {url:?} is not a URL like http://127.0.0.1:50051"
        ))),
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    // TOML literals (numbers, booleans, arrays, quoted strings) keep their type;
    // anything else is a plain string.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> std::result::Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// The command line of a service binary: `quarry-<service> [--config FILE]`.
#[cfg(feature = "service")]
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "A Quarry service; configuration: TOML file plus QUARRY_SECTION__KEY variables"
)]
pub struct ServiceArgs {
    /// TOML configuration file (see config/quarry.toml).
    #[arg(long, short, env = "QUARRY_CONFIG")]
    pub config: Option<PathBuf>,
}
