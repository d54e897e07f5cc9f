//! Configuration: a TOML file plus `QUARRY_SECTION__KEY` environment overrides,
//! validated before any network call. `config/quarry.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub extractor: ExtractorConfig,
    pub transformer: TransformerConfig,
    pub loader: LoaderConfig,
    pub warehouse: WarehouseConfig,
    pub archiver: ArchiverConfig,
    pub storage: StorageConfig,
    pub run: RunConfig,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractorConfig {
    pub listen: String,
    /// Address of the Prometheus `/metrics` endpoint (plain HTTP); empty: off.
    pub metrics_listen: String,
    /// Directories the extractor may read; anything outside is refused.
    pub data_roots: Vec<PathBuf>,
    /// Rows per Arrow record batch.
    pub batch_rows: usize,
    /// Longest CSV record (line breaks inside quotes included) or NDJSON
    /// line; a longer one fails the file, naming its line.
    pub max_record_bytes: usize,
    /// Longest value of an input column; a longer one fails the file.
    pub max_field_bytes: usize,
    /// On SIGTERM/SIGINT: seconds open streams may take to finish before
    /// they are cut (the run reading them then fails and is aborted).
    pub shutdown_grace_secs: u64,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: String::new(),
            data_roots: vec![PathBuf::from("data")],
            batch_rows: 65_536,
            max_record_bytes: 1 << 20,
            max_field_bytes: 64 << 10,
            shutdown_grace_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    pub listen: String,
    /// Address of the Prometheus `/metrics` endpoint (plain HTTP); empty: off.
    pub metrics_listen: String,
    pub extractor_url: String,
    pub loader_url: String,
    /// Splits (files) read and validated at the same time.
    pub split_concurrency: usize,
    /// Drop exact duplicate rows (after normalisation). Off: identical trades can be legitimate.
    pub dedup: bool,
    /// Load validated raw rows into `trades` (off: aggregates and rejects only).
    pub load_raw_trades: bool,
    pub progress_interval_ms: u64,
    /// On SIGTERM/SIGINT: seconds in-flight runs may take to finish; runs
    /// still going then are aborted (nothing committed) and the process exits.
    pub shutdown_grace_secs: u64,
    /// Data-quality checks evaluated before every commit.
    pub quality: QualityConfig,
}

/// What a failed check does: nothing (`off`), a warning, or the run fails
/// before commit (`error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Off,
    Warn,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Off => "off",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// One check: its severity and threshold (what the threshold bounds is
/// documented per check in `config/quarry.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub severity: Severity,
    pub threshold: f64,
}

impl CheckConfig {
    pub const fn new(severity: Severity, threshold: f64) -> Self {
        Self {
            severity,
            threshold,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Columns whose missing share the completeness check bounds.
    pub critical_columns: Vec<String>,
    /// Columns forming a trade's identity for the key-uniqueness check
    /// (empty: off). Compared after normalisation.
    pub key_columns: Vec<String>,
    /// Earlier succeeded runs the consistency check compares with.
    pub history_runs: u32,
    /// Fewer earlier runs than this: the consistency check is skipped.
    pub min_history_runs: u32,
    /// Max share of rows missing a critical column.
    pub completeness: CheckConfig,
    /// Min share of rows passing every validation rule.
    pub validity: CheckConfig,
    /// Max share of exact duplicate rows.
    pub uniqueness: CheckConfig,
    /// Max share of rows repeating another row's key (`key_columns`).
    pub key_uniqueness: CheckConfig,
    /// Max relative deviation of trades and volume per day, per client type,
    /// from the median of the earlier runs.
    pub consistency: CheckConfig,
    /// Max hours between the newest trade and the start of the run.
    pub freshness: CheckConfig,
    /// Max rows unaccounted for: rows in vs valid + rejected, valid rows vs
    /// the aggregate's trade counts, rows staged vs committed.
    pub reconciliation: CheckConfig,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            critical_columns: crate::schema::INPUT_COLUMNS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            key_columns: vec![],
            history_runs: 10,
            min_history_runs: 3,
            completeness: CheckConfig::new(Severity::Warn, 0.05),
            validity: CheckConfig::new(Severity::Error, 0.5),
            uniqueness: CheckConfig::new(Severity::Warn, 0.01),
            key_uniqueness: CheckConfig::new(Severity::Warn, 0.01),
            consistency: CheckConfig::new(Severity::Warn, 0.5),
            freshness: CheckConfig::new(Severity::Warn, 72.0),
            reconciliation: CheckConfig::new(Severity::Error, 0.0),
        }
    }
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50052".into(),
            metrics_listen: String::new(),
            extractor_url: "http://127.0.0.1:50051".into(),
            loader_url: "http://127.0.0.1:50053".into(),
            split_concurrency: 2,
            dedup: false,
            load_raw_trades: true,
            progress_interval_ms: 250,
            shutdown_grace_secs: 540,
            quality: QualityConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    pub listen: String,
    /// Address of the Prometheus `/metrics` endpoint (plain HTTP); empty: off.
    pub metrics_listen: String,
    /// How long BeginRun waits for another run's commit before refusing.
    pub begin_timeout_secs: u64,
    /// A run with no activity for this long is aborted (its driver is gone).
    pub run_idle_timeout_secs: u64,
    /// How often the open runs' heartbeat is recorded (warehouses other
    /// than SQLite), so loaders elsewhere see they are alive.
    pub heartbeat_secs: u64,
    /// A run recorded `running` by a loader on another host whose heartbeat
    /// is older than this is taken for interrupted (set it above the longest
    /// commit: no heartbeat is written while a run commits).
    pub stale_run_secs: u64,
    /// On SIGTERM/SIGINT: seconds open runs may take to commit; runs still
    /// open then are aborted (staged data discarded) and the process exits.
    pub shutdown_grace_secs: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50053".into(),
            metrics_listen: String::new(),
            begin_timeout_secs: 60,
            run_idle_timeout_secs: 600,
            heartbeat_secs: 30,
            stale_run_secs: 3600,
            shutdown_grace_secs: 240,
        }
    }
}

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
    /// Service-account JSON key file; empty: the file named by `credentials_env`.
    pub credentials_file: PathBuf,
    /// Environment variable naming the service-account key file.
    pub credentials_env: String,
    /// Environment variable holding an OAuth2 access token to use instead of
    /// a key file (empty: off), e.g. from `gcloud auth print-access-token`.
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

/// The archiver: hot/cold tiering of date partitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiverConfig {
    pub listen: String,
    /// Address of the Prometheus `/metrics` endpoint (plain HTTP); empty: off.
    pub metrics_listen: String,
    /// Where cold partitions go: a directory (`cold`, `file:///var/quarry/cold`),
    /// `s3://bucket/prefix` or `gs://bucket/prefix`.
    pub cold_root: String,
    /// Partitions older than this many days (before today or `--as-of`) move.
    pub hot_days: u32,
    /// Seconds between scheduled archive runs of the service (0: on demand only).
    pub interval_secs: u64,
    /// Tables archived; each must be partitioned by a date.
    pub tables: Vec<String>,
    /// Rows per Parquet file (a partition larger than this gets several files).
    pub rows_per_file: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// How long a partition's lease holds off other archivers; longer than
    /// the slowest single move.
    pub lease_secs: u64,
    /// Days a restored partition stays hot before it may move again.
    pub hold_days: u32,
    /// On SIGTERM/SIGINT: seconds open calls may take to finish before the
    /// process exits (an interrupted move is finished by the next run).
    pub shutdown_grace_secs: u64,
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50054".into(),
            metrics_listen: String::new(),
            cold_root: "cold".into(),
            hot_days: 30,
            interval_secs: 3600,
            tables: vec!["trades".into()],
            rows_per_file: 1_000_000,
            row_group_rows: 128 * 1024,
            lease_secs: 900,
            hold_days: 30,
            shutdown_grace_secs: 240,
        }
    }
}

/// Object-store settings shared by every `s3://` URL. Credentials come from
/// the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, web identity, instance metadata); `gs://` from
/// `GOOGLE_APPLICATION_CREDENTIALS` / `GOOGLE_SERVICE_ACCOUNT`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub s3: S3Config,
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
            })?;
            let file = text.parse::<toml::Table>().map_err(|e| {
                Error::config(format!("config file {}: {}", p.display(), e.message()))
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
        let config: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| Error::config(format!("{origin}: {}", e.message())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work, before anything starts.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config(m));
        for (key, addr) in [
            ("extractor.listen", &self.extractor.listen),
            ("transformer.listen", &self.transformer.listen),
            ("loader.listen", &self.loader.listen),
            ("archiver.listen", &self.archiver.listen),
        ] {
            if addr.parse::<SocketAddr>().is_err() {
                return bad(format!(
                    "{key} = {addr:?} is not an address like 127.0.0.1:50051"
                ));
            }
        }
        for (key, addr) in [
            ("extractor.metrics_listen", &self.extractor.metrics_listen),
            (
                "transformer.metrics_listen",
                &self.transformer.metrics_listen,
            ),
            ("loader.metrics_listen", &self.loader.metrics_listen),
            ("archiver.metrics_listen", &self.archiver.metrics_listen),
        ] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                return bad(format!(
                    "{key} = {addr:?} is not an address like 127.0.0.1:9451 (empty: off)"
                ));
            }
        }
        for (key, url) in [
            ("transformer.extractor_url", &self.transformer.extractor_url),
            ("transformer.loader_url", &self.transformer.loader_url),
        ] {
            check_url(key, url)?;
        }
        if self.extractor.data_roots.is_empty() {
            return bad("extractor.data_roots is empty: the extractor could read nothing".into());
        }
        if !(1..=1 << 20).contains(&self.extractor.batch_rows) {
            return bad(format!(
                "extractor.batch_rows = {} must be between 1 and 1048576",
                self.extractor.batch_rows
            ));
        }
        let e = &self.extractor;
        if !(1024..=1 << 30).contains(&e.max_record_bytes)
            || !(64..=e.max_record_bytes).contains(&e.max_field_bytes)
        {
            return bad(format!(
                "extractor.max_record_bytes = {} must be between 1024 and 1073741824, and extractor.max_field_bytes = {} between 64 and max_record_bytes",
                e.max_record_bytes, e.max_field_bytes
            ));
        }
        if !(1..=64).contains(&self.transformer.split_concurrency) {
            return bad(format!(
                "transformer.split_concurrency = {} must be between 1 and 64",
                self.transformer.split_concurrency
            ));
        }
        if self.transformer.progress_interval_ms == 0 {
            return bad("transformer.progress_interval_ms must be positive".into());
        }
        let q = &self.transformer.quality;
        for (key, cols) in [
            ("critical_columns", &q.critical_columns),
            ("key_columns", &q.key_columns),
        ] {
            if let Some(c) = cols
                .iter()
                .find(|c| !crate::schema::INPUT_COLUMNS.contains(&c.as_str()))
            {
                return bad(format!(
                    "transformer.quality.{key}: {c:?} is not one of {:?}",
                    crate::schema::INPUT_COLUMNS
                ));
            }
        }
        for (key, check) in [
            ("completeness", q.completeness),
            ("validity", q.validity),
            ("uniqueness", q.uniqueness),
            ("key_uniqueness", q.key_uniqueness),
            ("consistency", q.consistency),
            ("freshness", q.freshness),
            ("reconciliation", q.reconciliation),
        ] {
            if !check.threshold.is_finite() || check.threshold < 0.0 {
                return bad(format!(
                    "transformer.quality.{key}.threshold = {} must be a number >= 0",
                    check.threshold
                ));
            }
        }
        if q.validity.threshold > 1.0 {
            return bad("transformer.quality.validity.threshold is a share: at most 1".into());
        }
        let l = &self.loader;
        if l.run_idle_timeout_secs == 0 || l.heartbeat_secs == 0 {
            return bad(
                "loader.run_idle_timeout_secs and loader.heartbeat_secs must be positive".into(),
            );
        }
        if l.stale_run_secs < 2 * l.heartbeat_secs {
            return bad(format!(
                "loader.stale_run_secs = {} must be at least twice loader.heartbeat_secs ({})",
                l.stale_run_secs, l.heartbeat_secs
            ));
        }
        let ch = &self.warehouse.clickhouse;
        check_url("warehouse.clickhouse.url", &ch.url)?;
        if !is_identifier(&ch.database) {
            return bad(format!(
                "warehouse.clickhouse.database = {:?} must be letters, digits and _ (not starting with a digit)",
                ch.database
            ));
        }
        if ch.max_attempts == 0 {
            return bad("warehouse.clickhouse.max_attempts must be at least 1".into());
        }
        let bq = &self.warehouse.bigquery;
        check_url("warehouse.bigquery.api_url", &bq.api_url)?;
        if !is_identifier(&bq.dataset) {
            return bad(format!(
                "warehouse.bigquery.dataset = {:?} must be letters, digits and _ (not starting with a digit)",
                bq.dataset
            ));
        }
        if bq.max_attempts == 0 {
            return bad("warehouse.bigquery.max_attempts must be at least 1".into());
        }
        if self.warehouse.kind == WarehouseKind::Bigquery && !is_project_id(&bq.project) {
            return bad(format!(
                "warehouse.bigquery.project = {:?} is not a Google Cloud project id (set it, or QUARRY_WAREHOUSE__BIGQUERY__PROJECT)",
                bq.project
            ));
        }
        let sf = &self.warehouse.snowflake;
        for (key, value, required) in [
            ("database", &sf.database, true),
            ("schema", &sf.schema, true),
            ("role", &sf.role, false),
            ("warehouse", &sf.warehouse, false),
        ] {
            if (required || !value.is_empty()) && !is_identifier(value) {
                return bad(format!(
                    "warehouse.snowflake.{key} = {value:?} must be letters, digits and _ (not starting with a digit)"
                ));
            }
        }
        if !sf.endpoint.is_empty() {
            check_url("warehouse.snowflake.endpoint", &sf.endpoint)?;
        }
        if sf.max_attempts == 0 {
            return bad("warehouse.snowflake.max_attempts must be at least 1".into());
        }
        if sf.stage_file_kib == 0 {
            return bad("warehouse.snowflake.stage_file_kib must be at least 1".into());
        }
        if self.warehouse.kind == WarehouseKind::Snowflake {
            let account_ok = !sf.account.is_empty()
                && sf
                    .account
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !account_ok {
                return bad(format!(
                    "warehouse.snowflake.account = {:?} must be an account identifier like myorg-myaccount",
                    sf.account
                ));
            }
            if sf.user.is_empty() {
                return bad("warehouse.snowflake.user is empty".into());
            }
        }
        if self.warehouse.sqlite.path.as_os_str().is_empty() {
            return bad("warehouse.sqlite.path is empty".into());
        }
        let a = &self.archiver;
        if a.cold_root.trim().is_empty() {
            return bad("archiver.cold_root is empty".into());
        }
        if let Some(t) = a.tables.iter().find(|t| {
            !crate::Table::ALL
                .iter()
                .any(|x| x.name() == t.as_str() && x.partition_is_date())
        }) {
            return bad(format!(
                "archiver.tables: {t:?} is not a date-partitioned table (trades, agg_trades_weekly)"
            ));
        }
        if a.rows_per_file == 0 || a.row_group_rows == 0 || a.lease_secs == 0 {
            return bad(
                "archiver.rows_per_file, row_group_rows and lease_secs must be positive".into(),
            );
        }
        if self.tls.enabled {
            for (key, path) in [
                ("tls.ca_path", &self.tls.ca_path),
                ("tls.cert_path", &self.tls.cert_path),
                ("tls.key_path", &self.tls.key_path),
            ] {
                if !path.as_os_str().is_empty() && !path.is_file() {
                    return bad(format!("{key} = {}: no such file", path.display()));
                }
            }
            if self.tls.ca_path.as_os_str().is_empty() {
                return bad(
                    "tls.enabled is true but tls.ca_path is empty: clients need the CA to trust"
                        .into(),
                );
            }
        }
        if self.auth.enabled
            && self.auth.token_file.as_os_str().is_empty()
            && self.auth.token_env.is_empty()
        {
            return bad(
                "auth.enabled is true but neither auth.token_file nor auth.token_env is set".into(),
            );
        }
        if self.client.connect_timeout_secs == 0 || self.client.request_timeout_secs == 0 {
            return bad(
                "client.connect_timeout_secs and client.request_timeout_secs must be positive"
                    .into(),
            );
        }
        if self.run.top_limit == 0 {
            return bad("run.top_limit must be positive".into());
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.warehouse.sqlite.path, PathBuf::from("agg_result.db"));
        assert_eq!(c.run.source, "data/trades.csv");
    }

    #[test]
    fn environment_overrides_typed_values() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("QUARRY_EXTRACTOR__BATCH_ROWS", "1000"),
                ("QUARRY_EXTRACTOR__DATA_ROOTS", r#"["a", "b"]"#),
                ("QUARRY_WAREHOUSE__SQLITE__PATH", "/tmp/x.db"),
                ("QUARRY_TRANSFORMER__DEDUP", "true"),
                ("QUARRY_LOG_FORMAT", "json"),
                ("OTHER__THING", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.extractor.batch_rows, 1000);
        assert_eq!(
            c.extractor.data_roots,
            vec![PathBuf::from("a"), PathBuf::from("b")]
        );
        assert_eq!(c.warehouse.sqlite.path, PathBuf::from("/tmp/x.db"));
        assert!(c.transformer.dedup);
    }

    #[test]
    fn bigquery_is_configured_from_the_environment() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("QUARRY_WAREHOUSE__TYPE", "bigquery"),
                ("QUARRY_WAREHOUSE__BIGQUERY__PROJECT", "my-project"),
                ("QUARRY_WAREHOUSE__BIGQUERY__DATASET", "trades_eu"),
                ("QUARRY_WAREHOUSE__BIGQUERY__MAX_ATTEMPTS", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.warehouse.kind, WarehouseKind::Bigquery);
        assert_eq!(c.warehouse.bigquery.project, "my-project");
        assert_eq!(c.warehouse.bigquery.dataset, "trades_eu");
        assert_eq!(c.warehouse.bigquery.max_attempts, 7);
        let e = Config::load_with_env(None, env(&[("QUARRY_WAREHOUSE__TYPE", "bigquery")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("warehouse.bigquery.project"), "{e}");
        let e = Config::load_with_env(
            None,
            env(&[("QUARRY_WAREHOUSE__BIGQUERY__DATASET", "a-b; DROP")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("warehouse.bigquery.dataset"), "{e}");
    }

    #[test]
    fn a_section_may_set_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("q.toml");
        std::fs::write(
            &f,
            "[transformer.quality.validity]\nseverity = \"warn\"\n[warehouse.clickhouse]\ndatabase = \"db2\"\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&f), env(&[])).unwrap();
        assert_eq!(c.transformer.quality.validity.severity, Severity::Warn);
        assert_eq!(c.transformer.quality.validity.threshold, 0.5);
        assert_eq!(c.warehouse.clickhouse.database, "db2");
        assert_eq!(c.warehouse.clickhouse.url, ClickHouseConfig::default().url);
        let c = Config::load_with_env(
            None,
            env(&[("QUARRY_TRANSFORMER__QUALITY__FRESHNESS__THRESHOLD", "5")]),
        )
        .unwrap();
        assert_eq!(c.transformer.quality.freshness.threshold, 5.0);
        assert_eq!(c.transformer.quality.freshness.severity, Severity::Warn);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("q.toml");
        std::fs::write(&f, "[loader]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n").unwrap();
        let e = Config::load_with_env(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listn") && e.contains("q.toml"), "{e}");

        let e = Config::load_with_env(None, env(&[("QUARRY_LOADER__LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("loader.listen"), "{e}");

        let e = Config::load_with_env(None, env(&[("QUARRY_WAREHOUSE__TYPE", "oracle")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("oracle"), "{e}");
    }
}

/// The command line of a service binary: `quarry-<service> [--config FILE]`.
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

#[cfg(test)]
mod snowflake_section {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn snowflake_is_configured_from_the_environment() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("QUARRY_WAREHOUSE__TYPE", "snowflake"),
                ("QUARRY_WAREHOUSE__SNOWFLAKE__ACCOUNT", "myorg-acct"),
                ("QUARRY_WAREHOUSE__SNOWFLAKE__USER", "loader"),
                ("QUARRY_WAREHOUSE__SNOWFLAKE__MAX_ATTEMPTS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.warehouse.kind, WarehouseKind::Snowflake);
        assert_eq!(c.warehouse.snowflake.account, "myorg-acct");
        assert_eq!(c.warehouse.snowflake.max_attempts, 3);

        // Selected without an account: refused before anything starts.
        let e = Config::load_with_env(None, env(&[("QUARRY_WAREHOUSE__TYPE", "snowflake")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("warehouse.snowflake.account"), "{e}");
        let e = Config::load_with_env(
            None,
            env(&[("QUARRY_WAREHOUSE__SNOWFLAKE__SCHEMA", "x; DROP TABLE t")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("warehouse.snowflake.schema"), "{e}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// config/quarry.toml documents every key with its default: it must load
    /// and equal the built-in defaults.
    #[test]
    fn the_documented_config_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/quarry.toml");
        let file = Config::load_with_env(Some(&path), Vec::new()).unwrap();
        let ser = |c: &Config| toml::to_string(c).unwrap();
        assert_eq!(ser(&file), ser(&Config::default()));
    }
}
