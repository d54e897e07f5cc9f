//! The warehouse section: which backend, and each backend's settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::check_url;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarehouseKind {
    #[default]
    Sqlite,
    Clickhouse,
    Bigquery,
    Snowflake,
}

impl WarehouseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WarehouseKind::Sqlite => "sqlite",
            WarehouseKind::Clickhouse => "clickhouse",
            WarehouseKind::Bigquery => "bigquery",
            WarehouseKind::Snowflake => "snowflake",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarehouseConfig {
    #[serde(rename = "type")]
    pub kind: WarehouseKind,
    pub sqlite: SqliteConfig,
    pub clickhouse: ClickHouseConfig,
    pub bigquery: BigQueryConfig,
    pub snowflake: SnowflakeConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. http://127.0.0.1:8123.
    pub url: String,
    /// Database holding Quarry's tables; created if missing.
    pub database: String,
    pub user: String,
    /// Environment variable holding the password (never the password itself).
    pub password_env: String,
    /// Attempts of one statement on transient errors (connection refused or
    /// reset, timeouts, overload), with capped exponential backoff.
    pub max_attempts: u32,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "quarry".into(),
            user: "default".into(),
            password_env: "QUARRY_CLICKHOUSE_PASSWORD".into(),
            max_attempts: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BigQueryConfig {
    /// Google Cloud project that runs the jobs and holds the dataset.
    pub project: String,
    /// Dataset holding Quarry's tables; created with them if missing.
    pub dataset: String,
    /// Location of the dataset and its jobs, e.g. US, EU, europe-west1.
    pub location: String,
    /// JSON key file: a service-account key or `authorized_user` credentials.
    /// Empty: the file named by `credentials_env`; if that is not set either,
    /// gcloud's application_default_credentials.json, else the metadata
    /// server (GKE Workload Identity, Compute Engine).
    pub credentials_file: PathBuf,
    /// Environment variable naming the key file.
    pub credentials_env: String,
    /// Environment variable holding an OAuth2 access token to use instead of
    /// any other credentials (empty: off), e.g. from `gcloud auth print-access-token`.
    pub access_token_env: String,
    /// REST API root (jobs, datasets, tables; uploads go to its /upload twin).
    pub api_url: String,
    /// Attempts of one request on transient errors (connection refused or
    /// reset, 5xx, rate limits), with capped exponential backoff.
    pub max_attempts: u32,
}

impl Default for BigQueryConfig {
    fn default() -> Self {
        Self {
            project: String::new(),
            dataset: "quarry".into(),
            location: "US".into(),
            credentials_file: PathBuf::new(),
            credentials_env: "GOOGLE_APPLICATION_CREDENTIALS".into(),
            access_token_env: String::new(),
            api_url: "https://bigquery.googleapis.com".into(),
            max_attempts: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnowflakeConfig {
    /// Account identifier, e.g. `myorg-myaccount` or `xy12345.eu-central-1`.
    pub account: String,
    pub user: String,
    /// Role of the session (empty: the user's default role).
    pub role: String,
    /// Virtual warehouse running the queries (empty: the user's default).
    pub warehouse: String,
    /// Database and schema holding Quarry's tables; created if missing.
    pub database: String,
    pub schema: String,
    /// Environment variable holding the password (password authentication).
    pub password_env: String,
    /// PEM file of the user's private key: key-pair authentication instead
    /// of the password when set.
    pub private_key_path: String,
    /// Base URL of the account (empty: https://<account>.snowflakecomputing.com),
    /// e.g. a private-link host.
    pub endpoint: String,
    /// Attempts of one statement on transient errors (connection refused or
    /// reset, HTTP 5xx, 429), with capped exponential backoff.
    pub max_attempts: u32,
    /// Size of the Parquet files a run PUTs to its staging tables' stages,
    /// in KiB: a file is uploaded once it holds this much.
    pub stage_file_kib: u32,
}

impl Default for SnowflakeConfig {
    fn default() -> Self {
        Self {
            account: String::new(),
            user: String::new(),
            role: String::new(),
            warehouse: String::new(),
            database: "quarry".into(),
            schema: "public".into(),
            password_env: "QUARRY_SNOWFLAKE_PASSWORD".into(),
            private_key_path: String::new(),
            endpoint: String::new(),
            max_attempts: 5,
            stage_file_kib: 65_536,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    pub path: PathBuf,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("agg_result.db"),
        }
    }
}

/// A plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters.
pub fn is_identifier(s: &str) -> bool {
    s.len() <= 64
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A Google Cloud project id as it may appear in a table path: lower-case
/// letters, digits and hyphens, optionally behind a `domain:` prefix.
pub fn is_project_id(s: &str) -> bool {
    let id = s.rsplit_once(':').map_or(s, |(_, id)| id);
    (1..=63).contains(&id.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'))
}

/// The refusal of a name that must be a plain identifier.
fn not_identifier(key: &str, value: &str) -> Error {
    Error::config(format!(
        "{key} = {value:?} must be letters, digits and _ (not starting with a digit)"
    ))
}

impl WarehouseConfig {
    /// The selected warehouse's tables as OpenLineage datasets: the
    /// namespace, and the prefix of each table's name (following
    /// OpenLineage's naming of each system).
    pub fn lineage_names(&self) -> (String, String) {
        match self.kind {
            WarehouseKind::Sqlite => {
                let path = std::path::absolute(&self.sqlite.path)
                    .unwrap_or_else(|_| self.sqlite.path.clone());
                (format!("sqlite://{}", path.display()), String::new())
            }
            WarehouseKind::Clickhouse => {
                let host = self
                    .clickhouse
                    .url
                    .split_once("://")
                    .map_or(self.clickhouse.url.as_str(), |(_, rest)| {
                        rest.trim_end_matches('/')
                    });
                (
                    format!("clickhouse://{host}"),
                    format!("{}.", self.clickhouse.database),
                )
            }
            WarehouseKind::Bigquery => (
                "bigquery".into(),
                format!("{}.{}.", self.bigquery.project, self.bigquery.dataset),
            ),
            WarehouseKind::Snowflake => (
                format!(
                    "snowflake://{}",
                    self.snowflake.account.to_ascii_lowercase()
                ),
                format!(
                    "{}.{}.",
                    self.snowflake.database.to_ascii_uppercase(),
                    self.snowflake.schema.to_ascii_uppercase()
                ),
            ),
        }
    }

    /// Every backend's settings must be well-formed (a later run may select
    /// another); the selected one must also be complete.
    pub(super) fn validate(&self) -> Result<()> {
        self.clickhouse.validate()?;
        self.bigquery
            .validate(self.kind == WarehouseKind::Bigquery)?;
        self.snowflake
            .validate(self.kind == WarehouseKind::Snowflake)?;
        if self.sqlite.path.as_os_str().is_empty() {
            return Err(Error::config("warehouse.sqlite.path is empty"));
        }
        Ok(())
    }
}

impl ClickHouseConfig {
    fn validate(&self) -> Result<()> {
        check_url("warehouse.clickhouse.url", &self.url)?;
        if !is_identifier(&self.database) {
            return Err(not_identifier(
                "warehouse.clickhouse.database",
                &self.database,
            ));
        }
        if self.max_attempts == 0 {
            return Err(Error::config(
                "warehouse.clickhouse.max_attempts must be at least 1",
            ));
        }
        Ok(())
    }
}

impl BigQueryConfig {
    fn validate(&self, selected: bool) -> Result<()> {
        check_url("warehouse.bigquery.api_url", &self.api_url)?;
        if !is_identifier(&self.dataset) {
            return Err(not_identifier("warehouse.bigquery.dataset", &self.dataset));
        }
        if self.max_attempts == 0 {
            return Err(Error::config(
                "warehouse.bigquery.max_attempts must be at least 1",
            ));
        }
        if selected && !is_project_id(&self.project) {
            return Err(Error::config(format!(
                "warehouse.bigquery.project = {:?} is not a Google Cloud project id (set it, or QUARRY_WAREHOUSE__BIGQUERY__PROJECT)",
                self.project
            )));
        }
        Ok(())
    }
}

impl SnowflakeConfig {
    fn validate(&self, selected: bool) -> Result<()> {
        for (key, value, required) in [
            ("database", &self.database, true),
            ("schema", &self.schema, true),
            ("role", &self.role, false),
            ("warehouse", &self.warehouse, false),
        ] {
            if (required || !value.is_empty()) && !is_identifier(value) {
                return Err(not_identifier(&format!("warehouse.snowflake.{key}"), value));
            }
        }
        if !self.endpoint.is_empty() {
            check_url("warehouse.snowflake.endpoint", &self.endpoint)?;
        }
        if self.max_attempts == 0 {
            return Err(Error::config(
                "warehouse.snowflake.max_attempts must be at least 1",
            ));
        }
        if self.stage_file_kib == 0 {
            return Err(Error::config(
                "warehouse.snowflake.stage_file_kib must be at least 1",
            ));
        }
        if !selected {
            return Ok(());
        }
        let account_ok = !self.account.is_empty()
            && self
                .account
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !account_ok {
            return Err(Error::config(format!(
                "warehouse.snowflake.account = {:?} must be an account identifier like myorg-myaccount",
                self.account
            )));
        }
        if self.user.is_empty() {
            return Err(Error::config("warehouse.snowflake.user is empty"));
        }
        Ok(())
    }
}
