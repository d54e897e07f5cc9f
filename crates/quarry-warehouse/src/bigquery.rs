//! The BigQuery backend, over the REST API (`gcp-bigquery-client` for
//! queries and jobs, its authenticator trait for credentials).
//!
//! Tables live in one dataset: `trades` (DAY-partitioned on `trade_date`),
//! `agg_trades_weekly` (DAY-partitioned on `week_start_date`: one partition
//! per Monday), `trades_rejected` (clustered by `source_file`) and
//! `pipeline_runs`. A run's batches go into per-run staging tables
//! (`<table>_stage_<run>`, created `LIKE` their target, expiring after two
//! days should a crash leave them) through load jobs (newline-delimited JSON,
//! multipart upload; batches are gathered per table into jobs of up to
//! 32 MiB, the rest loaded at commit): load jobs write no streaming buffer,
//! so the rows can be deleted or replaced by DML at once. Commit checks the
//! staged row counts, then runs ONE multi-statement transaction: per table
//! `DELETE` the covered partitions and `INSERT … SELECT` from staging, plus
//! the run's `pipeline_runs` record; then it drops the staging tables. Abort
//! only drops them. `pipeline_runs` rows are written by DML too (delete and
//! insert in one transaction), never streamed.
//!
//! Amounts are exact: NUMERIC(18, 8) for quantity and price,
//! BIGNUMERIC(38, 8) / BIGNUMERIC(38, 16) for the weekly totals (NUMERIC has
//! only 9 fractional and 29 integer digits). TIMESTAMP holds microseconds, so
//! the nanoseconds below them are kept in `timestamp_extra_nanos`.
//!
//! The REST API may answer HTTP 200 with an `errors` array or a job whose
//! status carries an `errorResult`: every response is checked, and a run
//! succeeds only once the transaction's job completed without one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::run_row::RunRow;
use crate::staging::{Staged, stage_tag};
use crate::text_rows;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Int64Type, TimestampNanosecondType, UInt64Type,
};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_row::TableRow;
use gcp_bigquery_client::yup_oauth2;
use quarry_core::config::BigQueryConfig;
use quarry_core::dates::{date_text, now_text, parse_date};
use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use quarry_core::{Error, Result, Table};
use serde::Serialize;

use crate::{
    Metric, PartitionInfo, RunCommit, RunFailure, RunRecord, RunStart, TopUser, TopUsersQuery,
    Warehouse, WeeklyTotal, WriteMode, check_batch,
};

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// Error reasons worth another attempt (BigQuery's troubleshooting guide).
const TRANSIENT_REASONS: [&str; 5] = [
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "jobRateLimitExceeded",
    "jobBackendError",
];

/// How long one jobs.query / getQueryResults call waits for a job.
const WAIT_MS: i32 = 30_000;

/// Newline-delimited JSON gathered per table before one load job takes it:
/// few, big jobs (each has seconds of overhead on BigQuery, and a table takes
/// at most 1 500 load jobs a day), with bounded memory.
const LOAD_BYTES: usize = 32 << 20;

/// Staging tables outlive a crashed run by this long at most.
const STAGE_EXPIRY: &str = "INTERVAL 2 DAY";

const RUN_COLUMNS: &str = "run_id, source, status, started_at, finished_at, rows_in, rows_valid, \
     rows_rejected, rows_duplicate, agg_rows, plan_ms, extract_ms, transform_ms, load_ms, \
     commit_ms, total_ms, rows_committed, error_category, error_message, quality, options, owner";

fn tables_sql(ds: &str) -> [String; 4] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.trades (
                timestamp TIMESTAMP NOT NULL, timestamp_extra_nanos INT64 NOT NULL,
                user_id STRING NOT NULL, client_type STRING NOT NULL, symbol STRING NOT NULL,
                side STRING NOT NULL, quantity NUMERIC(18, 8) NOT NULL,
                price NUMERIC(18, 8) NOT NULL, trade_date DATE NOT NULL, run_id STRING NOT NULL
            ) PARTITION BY trade_date"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.trades_rejected (
                timestamp STRING, user_id STRING, client_type STRING, symbol STRING,
                side STRING, quantity STRING, price STRING, reason STRING NOT NULL,
                source_file STRING NOT NULL, source_row INT64 NOT NULL, run_id STRING NOT NULL
            ) CLUSTER BY source_file"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.agg_trades_weekly (
                week_start_date DATE NOT NULL, client_type STRING NOT NULL,
                user_id STRING NOT NULL, symbol STRING NOT NULL,
                total_volume BIGNUMERIC(38, 8) NOT NULL, total_pnl BIGNUMERIC(38, 16) NOT NULL,
                trade_count INT64 NOT NULL
            ) PARTITION BY week_start_date"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.pipeline_runs (
                run_id STRING NOT NULL, source STRING, status STRING NOT NULL,
                started_at STRING, finished_at STRING,
                rows_in INT64, rows_valid INT64, rows_rejected INT64, rows_duplicate INT64,
                agg_rows INT64, plan_ms INT64, extract_ms INT64, transform_ms INT64,
                load_ms INT64, commit_ms INT64, total_ms INT64,
                rows_committed STRING, error_category STRING, error_message STRING,
                quality STRING, options STRING, owner STRING
            )"
        ),
    ]
}

/// The columns a table's staging copy is inserted with.
fn columns(table: Table) -> &'static str {
    match table {
        Table::Trades => {
            "timestamp, timestamp_extra_nanos, user_id, client_type, symbol, side, quantity, \
             price, trade_date, run_id"
        }
        Table::TradesRejected => {
            "timestamp, user_id, client_type, symbol, side, quantity, price, reason, \
             source_file, source_row, run_id"
        }
        Table::AggTradesWeekly => {
            "week_start_date, client_type, user_id, symbol, total_volume, total_pnl, trade_count"
        }
    }
}

/// Escapes a string literal for GoogleSQL ('…').
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A partition value of `table` as a SQL literal: dates are checked and
/// typed, file names escaped.
fn partition_literal(table: Table, partition: &str) -> Result<String> {
    match table {
        Table::TradesRejected => Ok(literal(partition)),
        _ => parse_date(partition)
            .map(|d| format!("DATE '{}'", date_text(d)))
            .ok_or_else(|| {
                Error::input(format!(
                    "{partition:?} is not a {} (YYYY-MM-DD)",
                    table.partition_column()
                ))
            }),
    }
}

/// A failed request, classified.
#[derive(Debug)]
struct Fail {
    message: String,
    transient: bool,
}

impl Fail {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }

    /// From the `errors` of a response or a job's `errorResult`: transient
    /// only if every reason is.
    fn from_protos<'a>(errors: impl IntoIterator<Item = &'a ErrorProto>) -> Self {
        let mut reasons = vec![];
        let mut messages = vec![];
        for e in errors {
            reasons.push(e.reason.clone().unwrap_or_default());
            messages.push(e.message.clone().unwrap_or_default());
        }
        let transient = !reasons.is_empty()
            && reasons
                .iter()
                .all(|r| TRANSIENT_REASONS.contains(&r.as_str()));
        messages.dedup();
        Self {
            message: format!("{}: {}", reasons.join(","), messages.join("; ")),
            transient,
        }
    }

    /// From an HTTP error response body (`{"error": {code, message, errors}}`).
    fn from_http(status: u16, body: &str) -> Self {
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let message = err
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| body.chars().take(300).collect());
        let reasons: Vec<String> = err
            .and_then(|e| e.get("errors"))
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("reason")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            transient: http_transient(status.into(), &reasons),
            message: format!("HTTP {status} {}: {message}", reasons.join(",")),
        }
    }
}

fn http_transient(code: i64, reasons: &[String]) -> bool {
    code >= 500
        || code == 429
        || reasons
            .iter()
            .any(|r| TRANSIENT_REASONS.contains(&r.as_str()))
}

impl From<BQError> for Fail {
    fn from(e: BQError) -> Self {
        match &e {
            BQError::RequestError(r) => Self {
                transient: r.is_connect()
                    || r.is_timeout()
                    || r.is_request()
                    || r.status()
                        .is_some_and(|s| s.is_server_error() || s.as_u16() == 429),
                message: request_error_text(r),
            },
            BQError::ResponseError { error } => {
                let reasons: Vec<String> = error
                    .error
                    .errors
                    .iter()
                    .filter_map(|m| m.get("reason").cloned())
                    .collect();
                Self {
                    transient: http_transient(error.error.code, &reasons),
                    message: format!(
                        "HTTP {} {}: {}",
                        error.error.code,
                        reasons.join(","),
                        error.error.message
                    ),
                }
            }
            // Credentials that do not work are not retried.
            _ => Self::permanent(e.to_string()),
        }
    }
}

impl From<reqwest::Error> for Fail {
    fn from(r: reqwest::Error) -> Self {
        Self {
            transient: r.is_connect() || r.is_timeout() || r.is_request(),
            message: request_error_text(&r),
        }
    }
}

/// A transport error with its causes (reqwest's own text is just "error
/// sending request").
fn request_error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// Access tokens of a service account (JSON key), refreshed before they expire.
#[derive(Clone)]
struct ServiceAccountToken {
    key: Arc<yup_oauth2::ServiceAccountKey>,
    auth: Arc<tokio::sync::OnceCell<yup_oauth2::authenticator::DefaultAuthenticator>>,
}

#[async_trait]
impl Authenticator for ServiceAccountToken {
    async fn access_token(&self) -> std::result::Result<String, BQError> {
        let auth = self
            .auth
            .get_or_try_init(|| {
                yup_oauth2::ServiceAccountAuthenticator::builder((*self.key).clone()).build()
            })
            .await
            .map_err(BQError::InvalidServiceAccountAuthenticator)?;
        let token = auth.token(&[SCOPE]).await?;
        token.token().map(str::to_string).ok_or(BQError::NoToken)
    }
}

/// An OAuth2 access token handed over in an environment variable.
#[derive(Clone)]
struct EnvToken(String);

#[async_trait]
impl Authenticator for EnvToken {
    async fn access_token(&self) -> std::result::Result<String, BQError> {
        Ok(self.0.clone())
    }
}

/// The run being written: what it staged, per table.
struct ActiveRun {
    record: RunRow,
    /// Staging table suffix derived from the run id.
    tag: String,
    /// Makes load job ids unique across runs that reuse a run id.
    job_prefix: String,
    loads: u64,
    /// Rows accepted but not loaded yet, per table.
    pending: BTreeMap<Table, Vec<u8>>,
    staged: Staged,
}

/// One load job's worth of rows for a staging table.
struct Load {
    table_id: String,
    job_id: String,
    data: Vec<u8>,
}

impl ActiveRun {
    /// The rows gathered for `table`, if any, as the run's next load job.
    fn take_load(&mut self, table: Table) -> Option<Load> {
        let data = self.pending.remove(&table).filter(|d| !d.is_empty())?;
        self.loads += 1;
        Some(Load {
            table_id: format!("{table}_stage_{}", self.tag),
            job_id: format!("{}_{table}_{}", self.job_prefix, self.loads),
            data,
        })
    }
}

/// The values of a `pipeline_runs` INSERT, in column order.
fn run_values(row: &RunRow) -> String {
    let text = |cols: &[&str]| {
        cols.iter()
            .map(|c| literal(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let numbers = row
        .counters()
        .map(|n| n.min(i64::MAX as u64).to_string())
        .join(", ");
    format!("({}, {numbers}, {})", text(&row.head()), text(&row.tail()))
}

/// What a query returned: rows of nullable text cells, and the rows a DML
/// statement touched.
struct QueryOut {
    rows: Vec<Vec<Option<String>>>,
    affected: Option<u64>,
}

fn cells(rows: Option<Vec<TableRow>>) -> impl Iterator<Item = Vec<Option<String>>> {
    rows.unwrap_or_default().into_iter().map(|r| {
        r.columns
            .unwrap_or_default()
            .into_iter()
            .map(|c| match c.value {
                Some(serde_json::Value::String(s)) => Some(s),
                Some(serde_json::Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            })
            .collect()
    })
}

#[derive(Serialize)]
struct TradeJson<'a> {
    timestamp: String,
    timestamp_extra_nanos: i64,
    user_id: &'a str,
    client_type: &'a str,
    symbol: &'a str,
    side: &'a str,
    quantity: String,
    price: String,
    trade_date: String,
    run_id: &'a str,
}

#[derive(Serialize)]
struct RejectedJson<'a> {
    timestamp: Option<&'a str>,
    user_id: Option<&'a str>,
    client_type: Option<&'a str>,
    symbol: Option<&'a str>,
    side: Option<&'a str>,
    quantity: Option<&'a str>,
    price: Option<&'a str>,
    reason: &'a str,
    source_file: &'a str,
    source_row: u64,
    run_id: &'a str,
}

#[derive(Serialize)]
struct AggJson<'a> {
    week_start_date: String,
    client_type: &'a str,
    user_id: &'a str,
    symbol: &'a str,
    total_volume: String,
    total_pnl: String,
    trade_count: i64,
}

fn push_json(out: &mut Vec<u8>, row: &impl Serialize) {
    serde_json::to_writer(&mut *out, row).expect("rows serialise");
    out.push(b'\n');
}

/// A batch as newline-delimited JSON (the load job's input), and the
/// partitions its rows fall in.
fn batch_json(
    table: Table,
    batch: &RecordBatch,
    run_id: &str,
) -> Result<(Vec<u8>, BTreeSet<String>)> {
    let n = batch.num_rows();
    let mut out = Vec::with_capacity(n * 160);
    let mut parts = BTreeSet::new();
    let s = |i: usize| batch.column(i).as_string::<i32>();
    match table {
        Table::Trades => {
            let ts = batch.column(0).as_primitive::<TimestampNanosecondType>();
            let qty = batch.column(5).as_primitive::<Decimal128Type>();
            let price = batch.column(6).as_primitive::<Decimal128Type>();
            let day = batch.column(7).as_primitive::<Date32Type>();
            let mut days = BTreeSet::new();
            for i in 0..n {
                let t = ts.value(i);
                let micros = t.div_euclid(1000);
                let at = chrono::DateTime::from_timestamp_micros(micros)
                    .ok_or_else(|| Error::input(format!("timestamp {t} ns is out of range")))?;
                days.insert(day.value(i));
                push_json(
                    &mut out,
                    &TradeJson {
                        timestamp: at.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string(),
                        timestamp_extra_nanos: t.rem_euclid(1000),
                        user_id: s(1).value(i),
                        client_type: s(2).value(i),
                        symbol: s(3).value(i),
                        side: s(4).value(i),
                        quantity: decimal::format_scaled(qty.value(i), SCALE),
                        price: decimal::format_scaled(price.value(i), SCALE),
                        trade_date: date_text(day.value(i)),
                        run_id,
                    },
                );
            }
            parts.extend(days.into_iter().map(date_text));
        }
        Table::TradesRejected => {
            let opt = |i: usize, r: usize| (!s(i).is_null(r)).then(|| s(i).value(r));
            let row_no = batch.column(9).as_primitive::<UInt64Type>();
            for r in 0..n {
                push_json(
                    &mut out,
                    &RejectedJson {
                        timestamp: opt(0, r),
                        user_id: opt(1, r),
                        client_type: opt(2, r),
                        symbol: opt(3, r),
                        side: opt(4, r),
                        quantity: opt(5, r),
                        price: opt(6, r),
                        reason: s(7).value(r),
                        source_file: s(8).value(r),
                        source_row: row_no.value(r),
                        run_id,
                    },
                );
            }
        }
        Table::AggTradesWeekly => {
            let week = batch.column(0).as_primitive::<Date32Type>();
            let vol = batch.column(4).as_primitive::<Decimal128Type>();
            let pnl = batch.column(5).as_primitive::<Decimal128Type>();
            let count = batch.column(6).as_primitive::<Int64Type>();
            let mut weeks = BTreeSet::new();
            for i in 0..n {
                weeks.insert(week.value(i));
                push_json(
                    &mut out,
                    &AggJson {
                        week_start_date: date_text(week.value(i)),
                        client_type: s(1).value(i),
                        user_id: s(2).value(i),
                        symbol: s(3).value(i),
                        total_volume: decimal::format_scaled(vol.value(i), SCALE),
                        total_pnl: decimal::format_scaled(pnl.value(i), PNL_SCALE),
                        trade_count: count.value(i),
                    },
                );
            }
            parts.extend(weeks.into_iter().map(date_text));
        }
    }
    Ok((out, parts))
}

pub struct BigQueryWarehouse {
    project: String,
    dataset: String,
    location: String,
    api_url: String,
    max_attempts: u32,
    auth: Arc<dyn Authenticator>,
    client: tokio::sync::OnceCell<gcp_bigquery_client::Client>,
    http: reqwest::Client,
    run: Mutex<Option<ActiveRun>>,
    /// Serialises writes of one run (loads, commit, abort).
    writing: tokio::sync::Mutex<()>,
}

impl BigQueryWarehouse {
    /// Opens the backend with the credentials the configuration names: an
    /// access token from `access_token_env`, else the service-account key
    /// file (`credentials_file`, else the file `credentials_env` names).
    pub fn open(config: &BigQueryConfig) -> Result<Self> {
        if !quarry_core::config::is_project_id(&config.project) {
            return Err(Error::config(format!(
                "warehouse.bigquery.project = {:?} is not a Google Cloud project id",
                config.project
            )));
        }
        let auth: Arc<dyn Authenticator> = if !config.access_token_env.is_empty() {
            let token = std::env::var(&config.access_token_env)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| {
                    Error::config(format!(
                        "warehouse.bigquery.access_token_env names {}, which is not set",
                        config.access_token_env
                    ))
                })?;
            Arc::new(EnvToken(token.trim().to_string()))
        } else {
            let path = if config.credentials_file.as_os_str().is_empty() {
                std::env::var_os(&config.credentials_env)
                    .filter(|p| !p.is_empty())
                    .map(std::path::PathBuf::from)
                    .ok_or_else(|| {
                        Error::config(format!(
                            "no BigQuery credentials: set warehouse.bigquery.credentials_file, \
                             the environment variable {} (a service-account key file), \
                             or warehouse.bigquery.access_token_env",
                            config.credentials_env
                        ))
                    })?
            } else {
                config.credentials_file.clone()
            };
            let bytes = std::fs::read(&path).map_err(|e| {
                Error::config(format!(
                    "cannot read the BigQuery service-account key {}: {e}",
                    path.display()
                ))
            })?;
            let key = yup_oauth2::parse_service_account_key(bytes).map_err(|e| {
                Error::config(format!(
                    "{} is not a service-account key: {e}",
                    path.display()
                ))
            })?;
            Arc::new(ServiceAccountToken {
                key: Arc::new(key),
                auth: Arc::new(tokio::sync::OnceCell::new()),
            })
        };
        Ok(Self::with_authenticator(config, auth))
    }

    /// Opens the backend with the given credentials.
    pub fn with_authenticator(config: &BigQueryConfig, auth: Arc<dyn Authenticator>) -> Self {
        Self {
            project: config.project.clone(),
            dataset: config.dataset.clone(),
            location: config.location.clone(),
            api_url: config.api_url.trim_end_matches('/').to_string(),
            max_attempts: config.max_attempts,
            auth,
            client: tokio::sync::OnceCell::new(),
            http: reqwest::Client::new(),
            run: Mutex::new(None),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    async fn client(&self) -> std::result::Result<&gcp_bigquery_client::Client, Fail> {
        self.client
            .get_or_try_init(|| async {
                gcp_bigquery_client::client_builder::ClientBuilder::new()
                    .with_v2_base_url(format!("{}/bigquery/v2", self.api_url))
                    .with_client(self.http.clone())
                    .build_from_authenticator(self.auth.clone())
                    .await
            })
            .await
            .map_err(Fail::from)
    }

    /// A table of the dataset, quoted for SQL.
    fn table(&self, name: &str) -> String {
        format!("`{}.{}.{name}`", self.project, self.dataset)
    }

    fn stage(&self, table: Table, tag: &str) -> String {
        self.table(&format!("{table}_stage_{tag}"))
    }

    fn err(&self, what: &str, f: Fail) -> Error {
        // One line, whatever the backend's message holds.
        let message = f.message.split_whitespace().collect::<Vec<_>>().join(" ");
        Error::backend(
            format!(
                "bigquery {}.{} at {}: {what}: {message}",
                self.project, self.dataset, self.api_url
            ),
            f.transient,
        )
    }

    /// Runs `op` again on transient errors, with capped exponential backoff
    /// and jitter; permanent errors fail at once.
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Fail>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        op.retry(backoff)
            .when(|f: &Fail| f.transient)
            .notify(
                |f, wait| tracing::warn!(error = %f.message, ?wait, "bigquery: {what}: retrying"),
            )
            .await
            .map_err(|f| self.err(what, f))
    }

    /// One query or script, to completion, every page of its result.
    async fn query_once(&self, sql: &str) -> std::result::Result<QueryOut, Fail> {
        let client = self.client().await?;
        let mut req = QueryRequest::new(sql);
        req.use_legacy_sql = false;
        req.location = Some(self.location.clone());
        req.timeout_ms = Some(WAIT_MS);
        let resp = client.job().query(&self.project, req).await?;
        if let Some(errors) = resp.errors.as_ref().filter(|e| !e.is_empty()) {
            return Err(Fail::from_protos(errors));
        }
        let mut rows: Vec<Vec<Option<String>>> = cells(resp.rows).collect();
        let mut affected = resp.num_dml_affected_rows.and_then(|n| n.parse().ok());
        let mut complete = resp.job_complete == Some(true);
        let mut page_token = resp.page_token;
        if complete && page_token.is_none() {
            return Ok(QueryOut { rows, affected });
        }
        let job_id = resp
            .job_reference
            .and_then(|r| r.job_id)
            .ok_or_else(|| Fail::permanent("the query response names no job"))?;
        while !complete || page_token.is_some() {
            let r = client
                .job()
                .get_query_results(
                    &self.project,
                    &job_id,
                    GetQueryResultsParameters {
                        location: Some(self.location.clone()),
                        page_token: page_token.clone(),
                        timeout_ms: Some(WAIT_MS),
                        ..Default::default()
                    },
                )
                .await?;
            if let Some(errors) = r.errors.as_ref().filter(|e| !e.is_empty()) {
                return Err(Fail::from_protos(errors));
            }
            if r.job_complete != Some(true) {
                continue;
            }
            if !complete {
                // The first complete answer repeats the first page.
                rows.clear();
                complete = true;
            }
            rows.extend(cells(r.rows));
            affected = affected.or(r.num_dml_affected_rows.and_then(|n| n.parse().ok()));
            page_token = r.page_token;
        }
        Ok(QueryOut { rows, affected })
    }

    async fn query(&self, what: &str, sql: &str) -> Result<QueryOut> {
        self.retry(what, || self.query_once(sql)).await
    }

    async fn rows(&self, what: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        Ok(self.query(what, sql).await?.rows)
    }

    async fn count(&self, what: &str, sql: &str) -> Result<u64> {
        let rows = self.rows(what, sql).await?;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::internal(format!("bigquery: {what}: no count returned")))
    }

    /// Loads newline-delimited JSON into `table_id` (appending) with one load
    /// job, uploaded in the request (multipart), and waits for it; returns
    /// the rows the job wrote. A retry reuses the job id, so a job that was
    /// created before the connection broke is waited for, not run twice.
    async fn load_once(
        &self,
        table_id: &str,
        job_id: &str,
        data: &[u8],
    ) -> std::result::Result<u64, Fail> {
        let token = self.auth.access_token().await?;
        let job = serde_json::json!({
            "jobReference": {
                "projectId": self.project,
                "jobId": job_id,
                "location": self.location,
            },
            "configuration": {"load": {
                "destinationTable": {
                    "projectId": self.project,
                    "datasetId": self.dataset,
                    "tableId": table_id,
                },
                "sourceFormat": "NEWLINE_DELIMITED_JSON",
                "writeDisposition": "WRITE_APPEND",
                "createDisposition": "CREATE_NEVER",
            }},
        });
        let boundary = format!("quarry_{job_id}");
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{job}\r\n\
             --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let mut body = Vec::with_capacity(head.len() + data.len() + tail.len());
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(tail.as_bytes());
        let resp = self
            .http
            .post(format!(
                "{}/upload/bigquery/v2/projects/{}/jobs?uploadType=multipart",
                self.api_url, self.project
            ))
            .bearer_auth(token)
            .header(
                "Content-Type",
                format!("multipart/related; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let started_id = if status == 409 {
            // Created by an earlier attempt whose answer was lost.
            job_id.to_string()
        } else if (200..300).contains(&status) {
            let job: Job = serde_json::from_str(&text)
                .map_err(|e| Fail::permanent(format!("unreadable load job answer: {e}")))?;
            job.job_reference
                .and_then(|r| r.job_id)
                .unwrap_or_else(|| job_id.to_string())
        } else {
            return Err(Fail::from_http(status, &text));
        };
        self.wait_for_job(&started_id).await
    }

    /// Runs one load job, retried (with the same job id) on transient errors.
    async fn load(&self, load: &Load) -> Result<()> {
        // What the staging table holds is checked once, at commit: the
        // emulator reports the table's total as a job's outputRows.
        let started = std::time::Instant::now();
        self.retry(&format!("load into {}", load.table_id), || {
            self.load_once(&load.table_id, &load.job_id, &load.data)
        })
        .await?;
        tracing::debug!(
            job_id = %load.job_id,
            rows = load.data.iter().filter(|b| **b == b'\n').count(),
            bytes = load.data.len(),
            ms = started.elapsed().as_millis() as u64,
            "bigquery: loaded"
        );
        Ok(())
    }

    /// Polls a job until it is done; its `errorResult` fails it. Returns the
    /// rows a load job wrote.
    async fn wait_for_job(&self, job_id: &str) -> std::result::Result<u64, Fail> {
        let client = self.client().await?;
        let mut pause = Duration::from_millis(50);
        loop {
            let job = client
                .job()
                .get_job(&self.project, job_id, Some(&self.location))
                .await?;
            let status = job.status.unwrap_or_default();
            if status.state.as_deref() == Some("DONE") {
                if let Some(e) = status.error_result {
                    return Err(Fail::from_protos(std::iter::once(&e)));
                }
                return Ok(job
                    .statistics
                    .and_then(|s| s.load)
                    .and_then(|l| l.output_rows)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// `DELETE` + `INSERT` of a run record, as one transaction (runs are
    /// never streamed: DML may replace them at once).
    fn record_sql(&self, row: &RunRow) -> String {
        format!(
            "DELETE FROM {runs} WHERE run_id = {id};\nINSERT INTO {runs} ({RUN_COLUMNS}) VALUES {values};\n",
            runs = self.table("pipeline_runs"),
            id = literal(&row.run_id),
            values = run_values(row)
        )
    }

    async fn record(&self, row: &RunRow) -> Result<()> {
        let sql = format!(
            "BEGIN TRANSACTION;\n{}COMMIT TRANSACTION;",
            self.record_sql(row)
        );
        self.query("record run", &sql).await.map(|_| ())
    }

    async fn drop_stages(&self, tag: &str) -> Result<()> {
        for t in Table::ALL {
            self.query(
                "drop staging table",
                &format!("DROP TABLE IF EXISTS {}", self.stage(t, tag)),
            )
            .await?;
        }
        Ok(())
    }

    fn take_run(&self, run_id: &str) -> Result<ActiveRun> {
        let mut guard = self.run.lock().expect("run lock");
        match guard.as_ref().map(|r| r.record.run_id.as_str()) {
            Some(open) if open == run_id => Ok(guard.take().expect("checked")),
            Some(open) => Err(Error::internal(format!(
                "run {run_id} is not open (run {open} is)"
            ))),
            None => Err(Error::input(format!("run {run_id} is not open"))),
        }
    }

    async fn finish_commit(
        &self,
        run: &mut ActiveRun,
        c: &RunCommit,
    ) -> Result<BTreeMap<String, u64>> {
        // The rows still gathered go in first.
        for table in Table::ALL {
            if let Some(load) = run.take_load(table) {
                self.load(&load).await?;
            }
        }
        // Read back what each staging table holds before anything is replaced.
        let mut rows = BTreeMap::new();
        for (table, staged) in &run.staged.rows {
            let held = self
                .count(
                    "read back staged rows",
                    &format!("SELECT COUNT(*) FROM {}", self.stage(*table, &run.tag)),
                )
                .await?;
            if held != *staged {
                return Err(Error::quality(format!(
                    "reconciliation: {table} was sent {staged} rows but its staging table holds {held}"
                )));
            }
            rows.insert(table.name().to_string(), held);
        }
        run.staged.cover_sources(&c.source_files);
        let mut script = String::from("BEGIN TRANSACTION;\n");
        for table in Table::ALL {
            let target = self.table(table.name());
            if let Some(parts) = run.staged.partitions.get(&table).filter(|p| !p.is_empty()) {
                let list = parts
                    .iter()
                    .map(|p| partition_literal(table, p))
                    .collect::<Result<Vec<_>>>()?
                    .join(", ");
                let _ = writeln!(
                    script,
                    "DELETE FROM {target} WHERE {} IN ({list});",
                    table.partition_column()
                );
            }
            if run.staged.rows.contains_key(&table) {
                let cols = columns(table);
                let _ = writeln!(
                    script,
                    "INSERT INTO {target} ({cols}) SELECT {cols} FROM {};",
                    self.stage(table, &run.tag)
                );
            }
        }
        run.record.finished("succeeded");
        run.record.stats = c.stats;
        run.record.rows_committed = serde_json::to_string(&rows).expect("a map serialises");
        run.record.quality = c.quality_json.clone();
        script.push_str(&self.record_sql(&run.record));
        script.push_str("COMMIT TRANSACTION;");
        // Confirmed only when the script's job completed without an error.
        self.query("commit (transaction)", &script).await?;
        if let Err(e) = self.drop_stages(&run.tag).await {
            // The run is committed; its staging tables expire on their own.
            tracing::warn!(run_id = %run.record.run_id, error = %e, "bigquery: staging tables left behind");
        }
        Ok(rows)
    }
}

fn parse_amount(text: Option<&String>, scale: u32) -> Result<i128> {
    let t = text.map(String::as_str).unwrap_or("");
    decimal::parse_scaled(t.as_bytes(), scale)
        .map_err(|e| Error::internal(format!("bigquery returned {t:?} for a decimal: {e:?}")))
}

fn cell_i64(text: Option<&String>) -> Result<i64> {
    let t = text.map(String::as_str).unwrap_or("");
    t.parse()
        .map_err(|_| Error::internal(format!("bigquery returned {t:?} for an integer")))
}

#[async_trait]
impl Warehouse for BigQueryWarehouse {
    fn kind(&self) -> &'static str {
        "bigquery"
    }

    async fn check_connectivity(&self) -> Result<()> {
        // One attempt: a wrong endpoint, credentials or project should say so at once.
        self.query_once("SELECT 1")
            .await
            .map_err(|f| self.err("cannot connect", f))?;
        // Created only when missing: creating needs more than writing into it.
        let exists = self
            .retry("look up dataset", || async {
                let client = self.client().await?;
                match client.dataset().get(&self.project, &self.dataset).await {
                    Ok(_) => Ok(true),
                    Err(BQError::ResponseError { error }) if error.error.code == 404 => Ok(false),
                    Err(e) => Err(Fail::from(e)),
                }
            })
            .await?;
        if !exists {
            let create = format!(
                "CREATE SCHEMA IF NOT EXISTS `{}.{}` OPTIONS (location = {})",
                self.project,
                self.dataset,
                literal(&self.location)
            );
            self.query("create dataset", &create).await?;
        }
        for sql in tables_sql(&format!("`{}.{}`", self.project, self.dataset)) {
            self.query("create tables", &sql).await?;
        }
        // pipeline_runs of an older Quarry lacks the owner column.
        self.query(
            "add pipeline_runs.owner",
            &format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS owner STRING",
                self.table("pipeline_runs")
            ),
        )
        .await?;
        Ok(())
    }

    async fn begin_run(&self, run: RunStart) -> Result<()> {
        let tag = stage_tag(&run.run_id)?;
        {
            let guard = self.run.lock().expect("run lock");
            if let Some(open) = guard.as_ref() {
                return Err(Error::internal(format!(
                    "cannot begin run {}: run {} is still open",
                    run.run_id, open.record.run_id
                )));
            }
        }
        let _w = self.writing.lock().await;
        // Leftovers of a crashed run with the same id are discarded.
        self.drop_stages(&tag).await?;
        let expiry = format!("TIMESTAMP_ADD(CURRENT_TIMESTAMP(), {STAGE_EXPIRY})");
        for t in Table::ALL {
            self.query(
                "create staging table",
                &format!(
                    "CREATE TABLE {} LIKE {} OPTIONS (expiration_timestamp = {expiry})",
                    self.stage(t, &tag),
                    self.table(t.name())
                ),
            )
            .await?;
        }
        let record = RunRow {
            owner: run.owner_json,
            ..RunRow::new(run.run_id, run.source, run.options_json, now_text())
        };
        self.record(&record).await?;
        *self.run.lock().expect("run lock") = Some(ActiveRun {
            record,
            job_prefix: format!("quarry_{tag}_{}", chrono::Utc::now().timestamp_micros()),
            tag,
            loads: 0,
            pending: BTreeMap::new(),
            staged: Staged::default(),
        });
        Ok(())
    }

    async fn write(
        &self,
        run_id: &str,
        table: Table,
        mode: WriteMode,
        batch: RecordBatch,
    ) -> Result<u64> {
        check_batch(table, &batch)?;
        let n = batch.num_rows() as u64;
        let (data, parts) = batch_json(table, &batch, run_id)?;
        let _w = self.writing.lock().await;
        let load = {
            let mut guard = self.run.lock().expect("run lock");
            let run = match guard.as_mut() {
                Some(r) if r.record.run_id == run_id => r,
                _ => return Err(Error::input(format!("run {run_id} is not open"))),
            };
            run.staged.add(table, mode, n, parts);
            let pending = run.pending.entry(table).or_default();
            pending.extend_from_slice(&data);
            if pending.len() >= LOAD_BYTES {
                run.take_load(table)
            } else {
                None
            }
        };
        if let Some(load) = load {
            self.load(&load).await?;
        }
        Ok(n)
    }

    async fn commit(&self, commit: RunCommit) -> Result<BTreeMap<String, u64>> {
        let _w = self.writing.lock().await;
        let mut run = self.take_run(&commit.run_id)?;
        match self.finish_commit(&mut run, &commit).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // The transaction either committed as a whole or not at all.
                let _ = self.drop_stages(&run.tag).await;
                run.record.commit_failed(&e);
                let _ = self.record(&run.record).await;
                Err(e)
            }
        }
    }

    async fn abort(&self, f: RunFailure) -> Result<()> {
        let _w = self.writing.lock().await;
        let open = self
            .run
            .lock()
            .expect("run lock")
            .as_ref()
            .is_some_and(|r| r.record.run_id == f.run_id);
        let mut row = if open {
            let run = self.take_run(&f.run_id)?;
            self.drop_stages(&run.tag).await?;
            run.record
        } else {
            // Not open here (refused before it began, or left by a dead
            // process): whatever it staged goes too.
            self.drop_stages(&stage_tag(&f.run_id)?).await?;
            RunRow::not_open(&f.run_id, self.get_run(&f.run_id).await?)
        };
        row.abort(f);
        self.record(&row).await
    }

    async fn heartbeat(&self, run_id: &str) -> Result<()> {
        let _w = self.writing.lock().await;
        let row = {
            let mut guard = self.run.lock().expect("run lock");
            match guard.as_mut() {
                Some(run) if run.record.run_id == run_id => {
                    run.record.owner = crate::owner::RunOwner::beat(&run.record.owner);
                    run.record.clone()
                }
                _ => return Ok(()),
            }
        };
        self.record(&row).await
    }

    async fn running_runs(&self) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM {} WHERE status = 'running' ORDER BY started_at",
            self.table("pipeline_runs")
        );
        let rows = self.rows("list running runs", &sql).await?;
        rows.iter()
            .map(|r| RunRow::from_cells(r).map(RunRow::record))
            .collect()
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM {} ORDER BY started_at DESC, run_id DESC LIMIT {limit}",
            self.table("pipeline_runs")
        );
        let rows = self.rows("list runs", &sql).await?;
        rows.iter()
            .map(|r| RunRow::from_cells(r).map(RunRow::record))
            .collect()
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM {} WHERE run_id = {}",
            self.table("pipeline_runs"),
            literal(run_id)
        );
        let rows = self.rows("get run", &sql).await?;
        rows.first()
            .map(|r| RunRow::from_cells(r).map(RunRow::record))
            .transpose()
    }

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>> {
        let column = match query.metric {
            Metric::Volume => "total_volume",
            Metric::Pnl => "total_pnl",
        };
        let sql = format!(
            "SELECT user_id, CAST(SUM({column}) AS STRING) FROM {}
             WHERE client_type = {} GROUP BY user_id
             ORDER BY SUM({column}) DESC, user_id ASC LIMIT {}",
            self.table("agg_trades_weekly"),
            literal(&query.client_type),
            query.limit
        );
        let rows = self.rows("top users", &sql).await?;
        let totals = rows
            .iter()
            .map(|r| {
                Ok((
                    r.first().cloned().flatten().unwrap_or_default(),
                    parse_amount(r.get(1).and_then(Option::as_ref), PNL_SCALE)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        // Ranked again on the exact values: the order is the contract.
        Ok(crate::rank_top_users(totals, query.limit, PNL_SCALE))
    }

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>> {
        let sql = format!(
            "SELECT CAST(week_start_date AS STRING), client_type,
                    CAST(SUM(total_volume) AS STRING), CAST(SUM(total_pnl) AS STRING),
                    SUM(trade_count)
             FROM {} GROUP BY week_start_date, client_type ORDER BY 1, 2",
            self.table("agg_trades_weekly")
        );
        let rows = self.rows("weekly totals", &sql).await?;
        rows.iter()
            .map(|r| {
                let amount = |i: usize| {
                    parse_amount(r.get(i).and_then(Option::as_ref), PNL_SCALE)
                        .map(|v| decimal::format_scaled(v, PNL_SCALE))
                };
                Ok(WeeklyTotal {
                    week_start_date: r.first().cloned().flatten().unwrap_or_default(),
                    client_type: r.get(1).cloned().flatten().unwrap_or_default(),
                    total_volume: amount(2)?,
                    total_pnl: amount(3)?,
                    trade_count: cell_i64(r.get(4).and_then(Option::as_ref))? as u64,
                })
            })
            .collect()
    }

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>> {
        let col = table.partition_column();
        let sql = format!(
            "SELECT CAST({col} AS STRING), COUNT(*) FROM {} GROUP BY {col} ORDER BY {col}",
            self.table(table.name())
        );
        let rows = self.rows("list partitions", &sql).await?;
        rows.iter()
            .map(|r| {
                Ok(PartitionInfo {
                    partition: r.first().cloned().flatten().unwrap_or_default(),
                    rows: cell_i64(r.get(1).and_then(Option::as_ref))? as u64,
                })
            })
            .collect()
    }

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        let filter = format!(
            "FROM {} WHERE {} = {}",
            self.table(table.name()),
            table.partition_column(),
            partition_literal(table, partition)?
        );
        let sql = match table {
            Table::Trades => format!(
                "SELECT UNIX_MICROS(timestamp), timestamp_extra_nanos, user_id, client_type,
                        symbol, side, CAST(quantity AS STRING), CAST(price AS STRING),
                        CAST(trade_date AS STRING)
                 {filter} ORDER BY timestamp, timestamp_extra_nanos, user_id"
            ),
            Table::TradesRejected => format!(
                "SELECT timestamp, user_id, client_type, symbol, side, quantity, price,
                        reason, source_file, source_row
                 {filter} ORDER BY source_row"
            ),
            Table::AggTradesWeekly => format!(
                "SELECT CAST(week_start_date AS STRING), client_type, user_id, symbol,
                        CAST(total_volume AS STRING), CAST(total_pnl AS STRING), trade_count
                 {filter} ORDER BY client_type, user_id, symbol"
            ),
        };
        let rows = self.rows("read partition", &sql).await?;
        // Microseconds and the nanoseconds beyond them, in two cells.
        let nanos = |c: &[Option<String>]| {
            let n = |i: usize| c.get(i)?.as_deref()?.parse::<i64>().ok();
            n(0)?.checked_mul(1000)?.checked_add(n(1)?)
        };
        text_rows::partition_batch(
            "bigquery",
            table,
            &rows,
            text_rows::Timestamp {
                cells: 2,
                parse: &nanos,
            },
        )
    }

    async fn drop_partition(&self, table: Table, partition: &str) -> Result<u64> {
        let _w = self.writing.lock().await;
        if let Some(run) = self.run.lock().expect("run lock").as_ref() {
            return Err(Error::backend(
                format!(
                    "cannot drop partition {partition} of {table} while run {} is open",
                    run.record.run_id
                ),
                true,
            ));
        }
        let condition = format!(
            "{} = {}",
            table.partition_column(),
            partition_literal(table, partition)?
        );
        let target = self.table(table.name());
        let out = self
            .query(
                &format!("drop partition {partition} of {table}"),
                &format!("DELETE FROM {target} WHERE {condition}"),
            )
            .await?;
        match out.affected {
            Some(n) => Ok(n),
            None => Err(Error::internal(format!(
                "bigquery: the delete of partition {partition} of {table} reported no row count"
            ))),
        }
    }

    async fn close(&self) -> Result<()> {
        let run = self.run.lock().expect("run lock").take();
        if let Some(run) = run {
            tracing::warn!(run_id = %run.record.run_id, "shutting down during a run: discarding it");
            self.drop_stages(&run.tag).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(literal("it's a\\b"), r"'it\'s a\\b'");
        assert_eq!(literal("a\nb\u{1}"), r"'a\nb\u0001'");
        assert_eq!(
            partition_literal(Table::Trades, "2024-01-05").unwrap(),
            "DATE '2024-01-05'"
        );
        assert!(partition_literal(Table::AggTradesWeekly, "2024-01-05' OR 1=1").is_err());
        assert_eq!(
            partition_literal(Table::TradesRejected, "a'b.csv").unwrap(),
            r"'a\'b.csv'"
        );
    }

    #[test]
    fn errors_are_classified() {
        let proto = |reason: &str| ErrorProto {
            reason: Some(reason.into()),
            message: Some(format!("{reason} happened")),
            ..Default::default()
        };
        assert!(Fail::from_protos(&[proto("rateLimitExceeded")]).transient);
        assert!(Fail::from_protos(&[proto("backendError")]).transient);
        let f = Fail::from_protos(&[proto("notFound")]);
        assert!(!f.transient);
        assert!(f.message.contains("notFound happened"), "{}", f.message);
        assert!(!Fail::from_protos(&[proto("invalidQuery"), proto("backendError")]).transient);
        assert!(Fail::from_http(503, "<html>unavailable</html>").transient);
        assert!(Fail::from_http(429, "{}").transient);
        let f = Fail::from_http(
            403,
            r#"{"error":{"code":403,"message":"Access Denied","errors":[{"reason":"accessDenied"}]}}"#,
        );
        assert!(!f.transient);
        assert!(f.message.contains("Access Denied"), "{}", f.message);
        assert!(
            Fail::from_http(
                403,
                r#"{"error":{"code":403,"message":"Exceeded rate limits","errors":[{"reason":"rateLimitExceeded"}]}}"#,
            )
            .transient
        );
    }

    #[test]
    fn batches_become_exact_json_lines() {
        let batch = RecordBatch::try_new(
            Table::Trades.schema(),
            vec![
                Arc::new(
                    arrow::array::TimestampNanosecondArray::from(vec![1_704_103_200_123_456_789])
                        .with_timezone("UTC"),
                ),
                Arc::new(arrow::array::StringArray::from(vec!["u\"1"])),
                Arc::new(arrow::array::StringArray::from(vec!["gold"])),
                Arc::new(arrow::array::StringArray::from(vec!["SYM"])),
                Arc::new(arrow::array::StringArray::from(vec!["buy"])),
                Arc::new(
                    arrow::array::Decimal128Array::from(vec![150_000_001])
                        .with_data_type(quarry_core::schema::QUANTITY_TYPE),
                ),
                Arc::new(
                    arrow::array::Decimal128Array::from(vec![-1])
                        .with_data_type(quarry_core::schema::QUANTITY_TYPE),
                ),
                Arc::new(arrow::array::Date32Array::from(vec![19_723])),
            ],
        )
        .unwrap();
        let (json, parts) = batch_json(Table::Trades, &batch, "r").unwrap();
        let row: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(row["timestamp"], "2024-01-01 10:00:00.123456 UTC");
        assert_eq!(row["timestamp_extra_nanos"], 789);
        assert_eq!(row["user_id"], "u\"1");
        assert_eq!(row["quantity"], "1.50000001");
        assert_eq!(row["price"], "-0.00000001");
        assert_eq!(row["trade_date"], "2024-01-01");
        assert_eq!(parts, BTreeSet::from(["2024-01-01".to_string()]));
    }

    #[test]
    fn run_records_round_trip_through_their_cells() {
        let mut row = RunRow::new("r1".into(), "s'rc".into(), "{}".into(), now_text());
        row.stats.rows_in = 7;
        row.finished("failed");
        row.error_message = "line\nbreak".into();
        let values = run_values(&row);
        assert!(values.starts_with("('r1', 's\\'rc', 'failed'"), "{values}");
        assert!(values.contains(r"'line\nbreak'"), "{values}");
        let cells: Vec<Option<String>> = [
            "r1",
            "src",
            "failed",
            "a",
            "b",
            "7",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "{\"trades\":3}",
            "input",
            "m",
            "{}",
            "{}",
        ]
        .iter()
        .map(|s| Some(s.to_string()))
        .collect();
        let back = RunRow::from_cells(&cells).unwrap().record();
        assert_eq!(back.stats.unwrap().rows_in, 7);
        assert_eq!(back.rows_committed["trades"], 3);
    }
}
