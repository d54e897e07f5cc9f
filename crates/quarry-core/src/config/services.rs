//! The sections of the four services: where each listens and what it may
//! do; the transformer's data-quality checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_listen, check_metrics_listen, check_url};
use crate::error::{Error, Result};
use crate::run::RunMode;

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
    /// The environment variable holding the password of PostgreSQL sources
    /// (never part of the source URL, which runs record).
    pub postgres_password_env: String,
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
            postgres_password_env: "PGPASSWORD".into(),
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
    /// Who computes the weekly aggregate: the transformer (`etl`) or the
    /// warehouse from the loaded raw trades (`elt`).
    pub mode: RunMode,
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
            mode: RunMode::Etl,
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

impl ExtractorConfig {
    pub(super) fn validate(&self) -> Result<()> {
        check_listen("extractor.listen", &self.listen)?;
        check_metrics_listen("extractor.metrics_listen", &self.metrics_listen)?;
        if self.data_roots.is_empty() {
            return Err(Error::config(
                "extractor.data_roots is empty: the extractor could read nothing",
            ));
        }
        if !(1..=1 << 20).contains(&self.batch_rows) {
            return Err(Error::config(format!(
                "extractor.batch_rows = {} must be between 1 and 1048576",
                self.batch_rows
            )));
        }
        if !(1024..=1 << 30).contains(&self.max_record_bytes)
            || !(64..=self.max_record_bytes).contains(&self.max_field_bytes)
        {
            return Err(Error::config(format!(
                "extractor.max_record_bytes = {} must be between 1024 and 1073741824, and extractor.max_field_bytes = {} between 64 and max_record_bytes",
                self.max_record_bytes, self.max_field_bytes
            )));
        }
        Ok(())
    }
}

impl TransformerConfig {
    pub(super) fn validate(&self) -> Result<()> {
        check_listen("transformer.listen", &self.listen)?;
        check_metrics_listen("transformer.metrics_listen", &self.metrics_listen)?;
        check_url("transformer.extractor_url", &self.extractor_url)?;
        check_url("transformer.loader_url", &self.loader_url)?;
        if !(1..=64).contains(&self.split_concurrency) {
            return Err(Error::config(format!(
                "transformer.split_concurrency = {} must be between 1 and 64",
                self.split_concurrency
            )));
        }
        if self.progress_interval_ms == 0 {
            return Err(Error::config(
                "transformer.progress_interval_ms must be positive",
            ));
        }
        if self.mode == RunMode::Elt && !self.load_raw_trades {
            return Err(Error::config(
                "transformer.mode = \"elt\" computes the weekly aggregate from the raw trades: it needs transformer.load_raw_trades = true",
            ));
        }
        self.quality.validate()
    }
}

impl QualityConfig {
    fn validate(&self) -> Result<()> {
        for (key, cols) in [
            ("critical_columns", &self.critical_columns),
            ("key_columns", &self.key_columns),
        ] {
            if let Some(c) = cols
                .iter()
                .find(|c| !crate::schema::INPUT_COLUMNS.contains(&c.as_str()))
            {
                return Err(Error::config(format!(
                    "transformer.quality.{key}: {c:?} is not one of {:?}",
                    crate::schema::INPUT_COLUMNS
                )));
            }
        }
        for (key, check) in [
            ("completeness", self.completeness),
            ("validity", self.validity),
            ("uniqueness", self.uniqueness),
            ("key_uniqueness", self.key_uniqueness),
            ("consistency", self.consistency),
            ("freshness", self.freshness),
            ("reconciliation", self.reconciliation),
        ] {
            if !check.threshold.is_finite() || check.threshold < 0.0 {
                return Err(Error::config(format!(
                    "transformer.quality.{key}.threshold = {} must be a number >= 0",
                    check.threshold
                )));
            }
        }
        if self.validity.threshold > 1.0 {
            return Err(Error::config(
                "transformer.quality.validity.threshold is a share: at most 1",
            ));
        }
        Ok(())
    }
}

impl LoaderConfig {
    pub(super) fn validate(&self) -> Result<()> {
        check_listen("loader.listen", &self.listen)?;
        check_metrics_listen("loader.metrics_listen", &self.metrics_listen)?;
        if self.run_idle_timeout_secs == 0 || self.heartbeat_secs == 0 {
            return Err(Error::config(
                "loader.run_idle_timeout_secs and loader.heartbeat_secs must be positive",
            ));
        }
        if self.stale_run_secs < 2 * self.heartbeat_secs {
            return Err(Error::config(format!(
                "loader.stale_run_secs = {} must be at least twice loader.heartbeat_secs ({})",
                self.stale_run_secs, self.heartbeat_secs
            )));
        }
        Ok(())
    }
}

impl ArchiverConfig {
    pub(super) fn validate(&self) -> Result<()> {
        check_listen("archiver.listen", &self.listen)?;
        check_metrics_listen("archiver.metrics_listen", &self.metrics_listen)?;
        if self.cold_root.trim().is_empty() {
            return Err(Error::config("archiver.cold_root is empty"));
        }
        if let Some(t) = self.tables.iter().find(|t| {
            !crate::Table::ALL
                .iter()
                .any(|x| x.name() == t.as_str() && x.partition_is_date())
        }) {
            return Err(Error::config(format!(
                "archiver.tables: {t:?} is not a date-partitioned table (trades, agg_trades_weekly)"
            )));
        }
        if self.rows_per_file == 0 || self.row_group_rows == 0 || self.lease_secs == 0 {
            return Err(Error::config(
                "archiver.rows_per_file, row_group_rows and lease_secs must be positive",
            ));
        }
        Ok(())
    }
}
