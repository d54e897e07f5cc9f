//! The Snowflake backend, over Snowflake's REST API (`snowflake-api` crate:
//! password or key-pair login, one session, statements one at a time).
//!
//! Tables are created if missing in `<database>.<schema>` (both created too):
//! amounts are NUMBER(18,8) / NUMBER(38,8) / NUMBER(38,16) (exact), dates
//! DATE, `timestamp` TIMESTAMP_NTZ(9) holding UTC, and the dated tables are
//! clustered on their partition column. A run's batches are written into
//! Parquet files of `stage_file_kib` each, `PUT` to the table stage of a
//! per-run transient staging table (`<table>_stage_<run>`, see `stage.rs`
//! for the upload); commit runs `COPY INTO` each staging table from its
//! stage (Snowflake loads the files in parallel, skips files it already
//! loaded and purges them), reads back what each staging table holds, then
//! runs ONE transaction that deletes every covered partition, copies the
//! staged rows in and writes the run's record, and drops the staging
//! tables (and with them their stages) once the COMMIT is confirmed. Abort
//! only drops them. Statements run in the session of the warehouse object;
//! PUT runs in the uploader's own session.
//!
//! Query results come back as Arrow batches of the crate's own arrow
//! version; every value is selected as text (`TO_VARCHAR`) and read by value
//! into this workspace's arrow types, so the types Snowflake picks for
//! NUMBER or TIMESTAMP results never matter and decimals stay exact.

mod stage;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::run_row::RunRow;
use crate::staging::{Staged, stage_tag};
use crate::text_rows::{self, Rows};
use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Date32Type, Field, Schema};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use quarry_core::config::SnowflakeConfig;
use quarry_core::config::is_identifier;
use quarry_core::dates::{date_text, now_text};
use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use quarry_core::{Error, Result, Table};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use snowflake_api::{
    AuthArgs, AuthType, CertificateArgs, PasswordArgs, QueryResult, SnowflakeApi,
    SnowflakeApiBuilder, SnowflakeApiError,
};
use stage::{Login, Uploader};

use crate::{
    Metric, PartitionInfo, RunCommit, RunFailure, RunRecord, RunStart, TopUser, TopUsersQuery,
    Warehouse, WeeklyTotal, WriteMode, check_batch,
};

/// Column definitions of the tables (the staging tables share them).
fn columns(table: Table) -> &'static str {
    match table {
        Table::Trades => {
            "timestamp TIMESTAMP_NTZ(9) NOT NULL, user_id VARCHAR NOT NULL,
             client_type VARCHAR NOT NULL, symbol VARCHAR NOT NULL, side VARCHAR NOT NULL,
             quantity NUMBER(18, 8) NOT NULL, price NUMBER(18, 8) NOT NULL,
             trade_date DATE NOT NULL, run_id VARCHAR NOT NULL"
        }
        Table::TradesRejected => {
            "timestamp VARCHAR, user_id VARCHAR, client_type VARCHAR, symbol VARCHAR,
             side VARCHAR, quantity VARCHAR, price VARCHAR, reason VARCHAR NOT NULL,
             source_file VARCHAR NOT NULL, source_row NUMBER(20, 0) NOT NULL,
             run_id VARCHAR NOT NULL"
        }
        Table::AggTradesWeekly => {
            "week_start_date DATE NOT NULL, client_type VARCHAR NOT NULL,
             user_id VARCHAR NOT NULL, symbol VARCHAR NOT NULL,
             total_volume NUMBER(38, 8) NOT NULL, total_pnl NUMBER(38, 16) NOT NULL,
             trade_count NUMBER(19, 0) NOT NULL, run_id VARCHAR NOT NULL"
        }
    }
}

/// Column names in the order of `columns`.
fn column_names(table: Table) -> &'static str {
    match table {
        Table::Trades => {
            "timestamp, user_id, client_type, symbol, side, quantity, price, trade_date, run_id"
        }
        Table::TradesRejected => {
            "timestamp, user_id, client_type, symbol, side, quantity, price, reason, source_file, source_row, run_id"
        }
        Table::AggTradesWeekly => {
            "week_start_date, client_type, user_id, symbol, total_volume, total_pnl, trade_count, run_id"
        }
    }
}

/// Clustering key: the DATE partition column (the quarantine has none).
fn cluster(table: Table) -> &'static str {
    match table {
        Table::Trades => " CLUSTER BY (trade_date)",
        Table::AggTradesWeekly => " CLUSTER BY (week_start_date)",
        Table::TradesRejected => "",
    }
}

const RUN_COLUMNS: [&str; 23] = [
    "run_id",
    "source",
    "status",
    "started_at",
    "finished_at",
    "rows_in",
    "rows_valid",
    "rows_rejected",
    "rows_duplicate",
    "agg_rows",
    "plan_ms",
    "extract_ms",
    "transform_ms",
    "load_ms",
    "commit_ms",
    "total_ms",
    "rows_committed",
    "error_category",
    "error_message",
    "quality",
    "options",
    "owner",
    "updated_at",
];

/// Positions of the counters (NUMBER) in `RUN_COLUMNS`; the rest is text.
const RUN_COUNTERS: std::ops::Range<usize> = 5..16;

fn runs_table_sql(qualified: &str) -> String {
    let cols: Vec<String> = RUN_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = if RUN_COUNTERS.contains(&i) {
                "NUMBER(20, 0)"
            } else {
                "VARCHAR"
            };
            format!("{c} {ty}")
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified}.pipeline_runs ({})",
        cols.join(", ")
    )
}

/// Escapes a string literal for Snowflake SQL ('…'; backslash is an escape
/// character there).
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            '\0' => out.push_str("\\0"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Reads `YYYY-MM-DD HH:MM:SS[.fffffffff]` (UTC) back into nanoseconds.
fn parse_timestamp(s: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()?;
    t.and_utc().timestamp_nanos_opt()
}

/// Rows per row group of a staged file.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Values per `IN (…)` list of the commit's DELETEs.
const IN_CHUNK: usize = 1_000;

/// Snowflake error codes worth another attempt: too many statements
/// waiting for a table lock (000625), a statement that reached its timeout
/// while queued or running (000630).
const TRANSIENT_CODES: [&str; 2] = ["000625", "000630"];

/// An HTTP answer that is not a success (the crate reads every body as
/// JSON, so statuses are checked before it does).
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status} from {path}: {body}")]
pub struct HttpStatus {
    pub status: u16,
    pub path: String,
    pub body: String,
}

impl HttpStatus {
    fn transient(&self) -> bool {
        self.status >= 500 || self.status == 429 || self.status == 408
    }
}

/// Turns non-success HTTP statuses into errors that say what they were.
struct CheckStatus;

#[async_trait]
impl Middleware for CheckStatus {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let path = req.url().path().to_string();
        let resp = next.run(req, extensions).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(300);
        Err(reqwest_middleware::Error::Middleware(anyhow::Error::new(
            HttpStatus {
                status: status.as_u16(),
                path,
                body,
            },
        )))
    }
}

/// Sends the account's requests to `endpoint` (a private-link or proxy
/// host) instead of `https://<account>.snowflakecomputing.com`; other hosts
/// (result chunks in cloud storage) are left alone.
struct Endpoint {
    account_host: String,
    base: reqwest::Url,
}

#[async_trait]
impl Middleware for Endpoint {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if req
            .url()
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(&self.account_host))
        {
            let url = req.url_mut();
            let moved = url
                .set_scheme(self.base.scheme())
                .and_then(|()| url.set_host(self.base.host_str()).map_err(|_| ()))
                .and_then(|()| url.set_port(self.base.port()));
            if moved.is_err() {
                return Err(reqwest_middleware::Error::Middleware(anyhow::anyhow!(
                    "cannot send a request to {}",
                    self.base
                )));
            }
        }
        next.run(req, extensions).await
    }
}

fn http_client(config: &SnowflakeConfig) -> Result<ClientWithMiddleware> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("quarry/", env!("CARGO_PKG_VERSION")))
        .gzip(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| Error::internal(format!("snowflake: HTTP client: {e}")))?;
    let mut builder = reqwest_middleware::ClientBuilder::new(client);
    if !config.endpoint.is_empty() {
        let base = reqwest::Url::parse(&config.endpoint).map_err(|e| {
            Error::config(format!(
                "warehouse.snowflake.endpoint = {:?}: {e}",
                config.endpoint
            ))
        })?;
        builder = builder.with(Endpoint {
            account_host: format!("{}.snowflakecomputing.com", config.account),
            base,
        });
    }
    Ok(builder.with(CheckStatus).build())
}

fn reqwest_transient(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// A failed request through the backend's client: worth another attempt?
fn middleware_transient(e: &reqwest_middleware::Error) -> bool {
    match e {
        reqwest_middleware::Error::Reqwest(e) => reqwest_transient(e),
        reqwest_middleware::Error::Middleware(e) => e
            .downcast_ref::<HttpStatus>()
            .is_some_and(HttpStatus::transient),
    }
}

fn connection_transient(e: &snowflake_api::connection::ConnectionError) -> bool {
    use snowflake_api::connection::ConnectionError as C;
    match e {
        C::RequestError(e) => reqwest_transient(e),
        C::RequestMiddlewareError(e) => middleware_transient(e),
        _ => false,
    }
}

fn is_transient(e: &SnowflakeApiError) -> bool {
    use snowflake_api::SnowflakeApiError as S;
    match e {
        S::RequestError(c) => connection_transient(c),
        // The login's error type is not public: its message tells.
        S::AuthError(a) => {
            let m = a.to_string();
            [
                "HTTP 5",
                "HTTP 429",
                "HTTP 408",
                "error sending request",
                "timed out",
            ]
            .iter()
            .any(|p| m.contains(p))
        }
        S::ApiError(code, _) => TRANSIENT_CODES.contains(&code.as_str()),
        _ => false,
    }
}

fn text_column(col: &dyn sf_arrow::Array) -> Option<Vec<Option<String>>> {
    use sf_arrow::cast::AsArray as _;
    use sf_arrow::types::{Decimal128Type as D, Int8Type, Int16Type, Int32Type, Int64Type as I64};
    let n = col.len();
    let get = |f: &dyn Fn(usize) -> String| {
        (0..n)
            .map(|i| (!col.is_null(i)).then(|| f(i)))
            .collect::<Vec<_>>()
    };
    Some(match col.data_type() {
        sf_arrow_schema::DataType::Utf8 => {
            let a = col.as_string::<i32>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Utf8View => {
            let a = col.as_string_view();
            get(&|i| a.value(i).to_string())
        }
        // Counts and flags that were not cast to text (e.g. DML results).
        sf_arrow_schema::DataType::Int8 => {
            let a = col.as_primitive::<Int8Type>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Int16 => {
            let a = col.as_primitive::<Int16Type>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Int32 => {
            let a = col.as_primitive::<Int32Type>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Int64 => {
            let a = col.as_primitive::<I64>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Decimal128(_, s) => {
            let a = col.as_primitive::<D>();
            let s = u32::try_from(*s).ok()?;
            get(&|i| decimal::format_scaled(a.value(i), s))
        }
        _ => return None,
    })
}

/// Reads a result by value: Arrow batches (SELECT) or the JSON rowset of
/// DML statements.
fn result_rows(result: QueryResult) -> Result<Rows> {
    match result {
        QueryResult::Empty => Ok(vec![]),
        QueryResult::Json(j) => {
            let rows = j.value.as_array().cloned().unwrap_or_default();
            Ok(rows
                .iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| match c {
                                    serde_json::Value::Null => None,
                                    serde_json::Value::String(s) => Some(s.clone()),
                                    other => Some(other.to_string()),
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect())
        }
        QueryResult::Arrow(batches) => {
            let mut rows = vec![];
            for b in batches {
                let cols: Vec<Vec<Option<String>>> = b
                    .columns()
                    .iter()
                    .map(|c| {
                        text_column(c.as_ref()).ok_or_else(|| {
                            Error::internal(format!(
                                "snowflake returned a column of type {} where text was selected",
                                c.data_type()
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                for i in 0..b.num_rows() {
                    rows.push(cols.iter().map(|c| c[i].clone()).collect());
                }
            }
            Ok(rows)
        }
    }
}

/// The values of a `pipeline_runs` INSERT in `RUN_COLUMNS` order.
fn run_values(row: &RunRow) -> String {
    let mut v: Vec<String> = row.head().iter().map(|s| literal(s)).collect();
    v.extend(row.counters().iter().map(u64::to_string));
    v.extend(row.tail().iter().map(|s| literal(s)));
    v.push(literal(&chrono::Utc::now().to_rfc3339()));
    v.join(", ")
}

/// The run being written: what it staged, per table.
struct ActiveRun {
    row: RunRow,
    /// Staging table suffix derived from the run id.
    tag: String,
    staged: Staged,
    /// The Parquet file being filled, per table.
    files: BTreeMap<Table, ArrowWriter<Vec<u8>>>,
    /// Files PUT so far (numbers the next one).
    files_put: u32,
}

/// A staged file taken from its run to be PUT.
struct TakenFile {
    /// The run's staging-table suffix.
    tag: String,
    name: String,
    writer: ArrowWriter<Vec<u8>>,
}

/// The Parquet schema of a table's staged files: its columns plus `run_id`,
/// timestamps without a zone (the TIMESTAMP_NTZ columns hold UTC).
fn file_schema(table: Table) -> Arc<Schema> {
    let mut fields: Vec<Field> = table
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(unit, Some(_)) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(*unit, None)),
            _ => f.as_ref().clone(),
        })
        .collect();
    fields.push(Field::new("run_id", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// `batch` in the staged files' schema.
fn file_batch(table: Table, batch: &RecordBatch, run_id: &str) -> Result<RecordBatch> {
    let schema = file_schema(table);
    let mut cols: Vec<ArrayRef> = vec![];
    for (col, field) in batch.columns().iter().zip(schema.fields()) {
        cols.push(if col.data_type() == field.data_type() {
            col.clone()
        } else {
            // Only the timestamp's zone differs: same values.
            arrow::compute::cast(col, field.data_type())?
        });
    }
    cols.push(Arc::new(StringArray::from(vec![run_id; batch.num_rows()])));
    Ok(RecordBatch::try_new(schema, cols)?)
}

fn file_writer(table: Table) -> Result<ArrowWriter<Vec<u8>>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    ArrowWriter::try_new(Vec::new(), file_schema(table), Some(props))
        .map_err(|e| Error::internal(format!("snowflake: staged file of {table}: {e}")))
}

/// The partitions (days, weeks) the rows of `batch` fall in.
fn partitions(table: Table, batch: &RecordBatch) -> BTreeSet<String> {
    let column = match table {
        Table::Trades => 7,
        Table::AggTradesWeekly => 0,
        Table::TradesRejected => return BTreeSet::new(),
    };
    let days: BTreeSet<i32> = batch
        .column(column)
        .as_primitive::<Date32Type>()
        .values()
        .iter()
        .copied()
        .collect();
    days.into_iter().map(date_text).collect()
}

pub struct SnowflakeWarehouse {
    api: SnowflakeApi,
    uploader: Uploader,
    /// `<database>.<schema>`, validated identifiers.
    qualified: String,
    database: String,
    /// Where the account is, for messages.
    place: String,
    max_attempts: u32,
    /// A staged file is PUT once it holds this many bytes.
    file_bytes: usize,
    run: Mutex<Option<ActiveRun>>,
    /// Serialises writes of one run (inserts, commit, abort).
    writing: tokio::sync::Mutex<()>,
    /// Held for writing while a transaction is open in the session, so
    /// reads never see its uncommitted rows.
    tx: tokio::sync::RwLock<()>,
    /// Held while a statement of the session is on its way.
    in_session: tokio::sync::Mutex<()>,
}

impl SnowflakeWarehouse {
    /// Logs in on first use with the configured credentials (password from
    /// the environment variable named in config, or the private key file).
    pub fn open(config: &SnowflakeConfig) -> Result<Self> {
        for (key, v) in [("database", &config.database), ("schema", &config.schema)] {
            if !is_identifier(v) {
                return Err(Error::config(format!(
                    "warehouse.snowflake.{key} = {v:?} is not a plain identifier"
                )));
            }
        }
        if config.account.is_empty() || config.user.is_empty() {
            return Err(Error::config(
                "warehouse.snowflake.account and warehouse.snowflake.user must be set",
            ));
        }
        let (auth_type, login) = if config.private_key_path.is_empty() {
            let password = std::env::var(&config.password_env).map_err(|_| {
                Error::config(format!(
                    "snowflake: the password variable {} (warehouse.snowflake.password_env) is not set",
                    config.password_env
                ))
            })?;
            (
                AuthType::Password(PasswordArgs {
                    password: password.clone(),
                }),
                Login::Password(password),
            )
        } else {
            let private_key_pem =
                std::fs::read_to_string(&config.private_key_path).map_err(|e| {
                    Error::config(format!(
                        "snowflake: cannot read the private key file {} (warehouse.snowflake.private_key_path): {e}",
                        config.private_key_path
                    ))
                })?;
            (
                AuthType::Certificate(CertificateArgs {
                    private_key_pem: private_key_pem.clone(),
                }),
                Login::KeyPair(private_key_pem),
            )
        };
        let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
        let auth = AuthArgs {
            account_identifier: config.account.clone(),
            warehouse: non_empty(&config.warehouse),
            database: None,
            schema: None,
            username: config.user.clone(),
            role: non_empty(&config.role),
            auth_type,
        };
        let http = http_client(config)?;
        let api = SnowflakeApiBuilder::new(auth)
            .with_client(http.clone())
            .build()
            .map_err(|e| Error::config(format!("snowflake: {e}")))?;
        let place = if config.endpoint.is_empty() {
            format!("account {}", config.account)
        } else {
            format!("account {} at {}", config.account, config.endpoint)
        };
        let uploader = Uploader::new(
            http,
            &config.account,
            &config.user,
            &config.warehouse,
            &config.role,
            login,
            &place,
        );
        Ok(Self {
            api,
            uploader,
            qualified: format!("{}.{}", config.database, config.schema),
            database: config.database.clone(),
            place,
            max_attempts: config.max_attempts,
            file_bytes: config.stage_file_kib as usize * 1024,
            run: Mutex::new(None),
            writing: tokio::sync::Mutex::new(()),
            tx: tokio::sync::RwLock::new(()),
            in_session: tokio::sync::Mutex::new(()),
        })
    }

    fn err(&self, what: &str, e: &SnowflakeApiError) -> Error {
        Error::backend(
            format!("snowflake {}: {what}: {e}", self.place),
            is_transient(e),
        )
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
    }

    /// Sends one statement in the session, after any other of this process
    /// has been answered: the session's statements go one at a time, in the
    /// order of their sequence numbers (fakesnow even refuses a second one
    /// while the first runs).
    async fn statement(&self, sql: &str) -> std::result::Result<QueryResult, SnowflakeApiError> {
        let _one = self.in_session.lock().await;
        self.api.exec(sql).await
    }

    /// One statement, once.
    async fn exec_once(&self, what: &str, sql: &str) -> Result<Rows> {
        let result = self.statement(sql).await.map_err(|e| self.err(what, &e))?;
        result_rows(result)
    }

    /// One statement, run again on transient errors with capped exponential
    /// backoff and jitter; permanent errors fail at once.
    async fn exec(&self, what: &str, sql: &str) -> Result<Rows> {
        let result = (|| self.statement(sql))
            .retry(self.backoff())
            .when(is_transient)
            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "snowflake: {what}: retrying"))
            .await
            .map_err(|e| self.err(what, &e))?;
        result_rows(result)
    }

    /// A read: waits for an open transaction of this session to end.
    async fn read(&self, what: &str, sql: &str) -> Result<Rows> {
        let _r = self.tx.read().await;
        self.exec(what, sql).await
    }

    fn table(&self, table: Table) -> String {
        format!("{}.{table}", self.qualified)
    }

    fn stage(&self, table: Table, tag: &str) -> String {
        format!("{}.{table}_stage_{tag}", self.qualified)
    }

    /// The table stage of a staging table, as PUT and COPY name it.
    fn table_stage(&self, table: Table, tag: &str) -> String {
        format!("{}.%{table}_stage_{tag}", self.qualified)
    }

    /// PUTs a finished staged file, retried as a whole (a new PUT gives
    /// fresh credentials; the upload overwrites a file of the same name).
    async fn put_file(&self, table: Table, tag: &str, name: &str, data: Vec<u8>) -> Result<()> {
        let data = bytes::Bytes::from(data);
        let stage = self.table_stage(table, tag);
        (|| self.uploader.put(&stage, name, data.clone()))
            .retry(self.backoff())
            .when(Error::is_transient)
            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "snowflake: PUT {name}: retrying"))
            .await
    }

    /// Takes the open file of `table` if `all` or if it is full, and names it.
    fn take_file(&self, run_id: &str, table: Table, all: bool) -> Result<Option<TakenFile>> {
        let mut guard = self.run.lock().expect("run lock");
        let run = guard
            .as_mut()
            .filter(|r| r.row.run_id == run_id)
            .ok_or_else(|| Error::input(format!("run {run_id} is not open")))?;
        let full = run
            .files
            .get(&table)
            .is_some_and(|w| w.bytes_written() + w.in_progress_size() >= self.file_bytes);
        if !(all || full) {
            return Ok(None);
        }
        let Some(writer) = run.files.remove(&table) else {
            return Ok(None);
        };
        run.files_put += 1;
        Ok(Some(TakenFile {
            tag: run.tag.clone(),
            name: format!("{table}-{:06}.parquet", run.files_put),
            writer,
        }))
    }

    /// PUTs the file of `table` if it is full (or, with `all`, whatever it
    /// holds).
    async fn flush_file(&self, run_id: &str, table: Table, all: bool) -> Result<()> {
        let Some(TakenFile { tag, name, writer }) = self.take_file(run_id, table, all)? else {
            return Ok(());
        };
        let data = writer
            .into_inner()
            .map_err(|e| Error::internal(format!("snowflake: staged file {name}: {e}")))?;
        self.put_file(table, &tag, &name, data).await
    }

    async fn drop_stages(&self, tag: &str) -> Result<()> {
        for t in Table::ALL {
            self.exec(
                "drop staging table",
                &format!("DROP TABLE IF EXISTS {}", self.stage(t, tag)),
            )
            .await?;
        }
        Ok(())
    }

    /// Runs `statements` as one transaction. A failure before COMMIT rolls
    /// back and, if transient, the whole transaction runs again. A COMMIT
    /// whose answer was lost counts only if the run's record shows
    /// `status` (written inside the transaction).
    async fn transaction(&self, statements: &[String], run_id: &str, status: &str) -> Result<()> {
        let _w = self.tx.write().await;
        let attempt = || async {
            self.exec_once("begin transaction", "BEGIN TRANSACTION")
                .await?;
            for s in statements {
                if let Err(e) = self.exec_once("transaction", s).await {
                    let _ = self.exec_once("rollback", "ROLLBACK").await;
                    return Err(e);
                }
            }
            match self.exec_once("commit", "COMMIT").await {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Did it commit? The record written inside says so.
                    let _ = self.exec_once("rollback", "ROLLBACK").await;
                    match self.run_status(run_id).await {
                        Ok(Some(s)) if s == status => Ok(()),
                        _ => Err(e),
                    }
                }
            }
        };
        attempt
            .retry(self.backoff())
            .when(Error::is_transient)
            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "snowflake: transaction: retrying"))
            .await
    }

    async fn run_status(&self, run_id: &str) -> Result<Option<String>> {
        let rows = self
            .exec(
                "read run status",
                &format!(
                    "SELECT status FROM {}.pipeline_runs WHERE run_id = {}",
                    self.qualified,
                    literal(run_id)
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// The statements that replace a run's record.
    fn record_sql(&self, row: &RunRow) -> [String; 2] {
        [
            format!(
                "DELETE FROM {}.pipeline_runs WHERE run_id = {}",
                self.qualified,
                literal(&row.run_id)
            ),
            format!(
                "INSERT INTO {}.pipeline_runs ({}) VALUES ({})",
                self.qualified,
                RUN_COLUMNS.join(", "),
                run_values(row)
            ),
        ]
    }

    /// Writes a run's record in a transaction of its own.
    async fn record(&self, row: &RunRow) -> Result<()> {
        let statements = self.record_sql(row);
        self.transaction(&statements, &row.run_id, &row.status)
            .await
    }

    async fn count(&self, what: &str, sql: &str) -> Result<u64> {
        let rows = self.exec(what, sql).await?;
        let text = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_else(|| "0".into());
        text.parse()
            .map_err(|_| Error::internal(format!("snowflake returned {text:?} for a count")))
    }

    async fn finish_commit(
        &self,
        run: &mut ActiveRun,
        c: &RunCommit,
    ) -> Result<BTreeMap<String, u64>> {
        for table in run.staged.rows.keys() {
            // Loads every file of the stage; a file already loaded (an
            // answer lost and the COPY repeated) is skipped by Snowflake.
            self.exec(
                &format!("copy staged files of {table}"),
                &format!(
                    "COPY INTO {} FROM @{} FILE_FORMAT = (TYPE = PARQUET) \
                     MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE PURGE = TRUE",
                    self.stage(*table, &run.tag),
                    self.table_stage(*table, &run.tag)
                ),
            )
            .await?;
        }
        // Read back what each staging table holds before anything is replaced.
        let mut rows = BTreeMap::new();
        for (table, staged) in &run.staged.rows {
            let held = self
                .count(
                    "read back staged rows",
                    &format!(
                        "SELECT TO_VARCHAR(COUNT(*)) FROM {}",
                        self.stage(*table, &run.tag)
                    ),
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
        let mut statements = vec![];
        for (table, parts) in &run.staged.partitions {
            let parts: Vec<&String> = parts.iter().collect();
            for chunk in parts.chunks(IN_CHUNK) {
                let list: Vec<String> = chunk.iter().map(|p| literal(p)).collect();
                statements.push(format!(
                    "DELETE FROM {} WHERE {} IN ({})",
                    self.table(*table),
                    table.partition_column(),
                    list.join(", ")
                ));
            }
        }
        for table in run.staged.rows.keys() {
            let cols = column_names(*table);
            statements.push(format!(
                "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
                self.table(*table),
                self.stage(*table, &run.tag)
            ));
        }
        run.row.finished("succeeded");
        run.row.stats = c.stats;
        run.row.rows_committed = serde_json::to_string(&rows).expect("a map serialises");
        run.row.quality = c.quality_json.clone();
        statements.extend(self.record_sql(&run.row));
        self.transaction(&statements, &run.row.run_id, "succeeded")
            .await?;
        // Committed: the staging tables are only leftovers now.
        if let Err(e) = self.drop_stages(&run.tag).await {
            tracing::warn!(error = %e, "snowflake: committed, but a staging table was not dropped");
        }
        Ok(rows)
    }

    fn take_run(&self, run_id: &str) -> Result<ActiveRun> {
        let mut guard = self.run.lock().expect("run lock");
        match guard.as_ref().map(|r| r.row.run_id.as_str()) {
            Some(open) if open == run_id => Ok(guard.take().expect("checked")),
            Some(open) => Err(Error::internal(format!(
                "run {run_id} is not open (run {open} is)"
            ))),
            None => Err(Error::input(format!("run {run_id} is not open"))),
        }
    }
}

fn bad_value(what: &str, v: &Option<String>) -> Error {
    Error::internal(format!("snowflake returned {v:?} for {what}"))
}

#[async_trait]
impl Warehouse for SnowflakeWarehouse {
    fn kind(&self) -> &'static str {
        "snowflake"
    }

    async fn check_connectivity(&self) -> Result<()> {
        // One attempt: a wrong host or credentials should say so at once.
        self.exec_once("cannot connect", "SELECT 1").await?;
        self.exec(
            "create database",
            &format!("CREATE DATABASE IF NOT EXISTS {}", self.database),
        )
        .await?;
        self.exec(
            "create schema",
            &format!("CREATE SCHEMA IF NOT EXISTS {}", self.qualified),
        )
        .await?;
        for t in Table::ALL {
            self.exec(
                "create tables",
                &format!(
                    "CREATE TABLE IF NOT EXISTS {} ({}){}",
                    self.table(t),
                    columns(t),
                    cluster(t)
                ),
            )
            .await?;
        }
        self.exec("create tables", &runs_table_sql(&self.qualified))
            .await?;
        // pipeline_runs of an older Quarry lacks the owner column.
        self.exec(
            "add pipeline_runs.owner",
            &format!(
                "ALTER TABLE {}.pipeline_runs ADD COLUMN IF NOT EXISTS owner VARCHAR",
                self.qualified
            ),
        )
        .await?;
        Ok(())
    }

    async fn begin_run(&self, run: RunStart) -> Result<()> {
        let tag = stage_tag(&run.run_id)?;
        if let Some(open) = self.run.lock().expect("run lock").as_ref() {
            return Err(Error::internal(format!(
                "cannot begin run {}: run {} is still open",
                run.run_id, open.row.run_id
            )));
        }
        let _w = self.writing.lock().await;
        // Leftovers of a crashed run with the same id are discarded.
        self.drop_stages(&tag).await?;
        for t in Table::ALL {
            self.exec(
                "create staging table",
                &format!(
                    "CREATE TRANSIENT TABLE {} ({})",
                    self.stage(t, &tag),
                    columns(t)
                ),
            )
            .await?;
        }
        let row = RunRow {
            owner: run.owner_json,
            ..RunRow::new(run.run_id, run.source, run.options_json, now_text())
        };
        self.record(&row).await?;
        *self.run.lock().expect("run lock") = Some(ActiveRun {
            row,
            tag,
            staged: Staged::default(),
            files: BTreeMap::new(),
            files_put: 0,
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
        let _w = self.writing.lock().await;
        let n = batch.num_rows() as u64;
        let parts = partitions(table, &batch);
        let rows = file_batch(table, &batch, run_id)?;
        {
            let mut guard = self.run.lock().expect("run lock");
            let run = guard
                .as_mut()
                .filter(|r| r.row.run_id == run_id)
                .ok_or_else(|| Error::input(format!("run {run_id} is not open")))?;
            let writer = match run.files.entry(table) {
                std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(file_writer(table)?),
            };
            writer
                .write(&rows)
                .map_err(|e| Error::internal(format!("snowflake: staged file of {table}: {e}")))?;
            run.staged.add(table, mode, n, parts);
        }
        self.flush_file(run_id, table, false).await?;
        Ok(n)
    }

    async fn commit(&self, commit: RunCommit) -> Result<BTreeMap<String, u64>> {
        let _w = self.writing.lock().await;
        // The last, partly filled files are PUT before anything else.
        let mut flushed = Ok(());
        for table in Table::ALL {
            flushed = self.flush_file(&commit.run_id, table, true).await;
            if flushed.is_err() {
                break;
            }
        }
        let mut run = self.take_run(&commit.run_id)?;
        let committed = match flushed {
            Ok(()) => self.finish_commit(&mut run, &commit).await,
            Err(e) => Err(e),
        };
        match committed {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // Nothing of the run is visible: the transaction rolled back
                // or never began.
                let _ = self.drop_stages(&run.tag).await;
                run.row.commit_failed(&e);
                let _ = self.record(&run.row).await;
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
            .is_some_and(|r| r.row.run_id == f.run_id);
        let mut row = if open {
            let run = self.take_run(&f.run_id)?;
            self.drop_stages(&run.tag).await?;
            run.row
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
                Some(run) if run.row.run_id == run_id => {
                    run.row.owner = crate::owner::RunOwner::beat(&run.row.owner);
                    run.row.clone()
                }
                _ => return Ok(()),
            }
        };
        self.record(&row).await
    }

    async fn running_runs(&self) -> Result<Vec<RunRecord>> {
        let rows = self
            .read(
                "list running runs",
                &runs_select(&self.qualified, "WHERE status = 'running'", u32::MAX),
            )
            .await?;
        rows.iter()
            .map(|r| RunRow::from_cells(r).map(RunRow::record))
            .collect()
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let rows = self
            .read("list runs", &runs_select(&self.qualified, "", limit))
            .await?;
        rows.iter()
            .map(|r| RunRow::from_cells(r).map(RunRow::record))
            .collect()
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let filter = format!("WHERE run_id = {}", literal(run_id));
        let rows = self
            .read("get run", &runs_select(&self.qualified, &filter, 1))
            .await?;
        rows.first()
            .map(|r| RunRow::from_cells(r).map(RunRow::record))
            .transpose()
    }

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>> {
        let column = match query.metric {
            Metric::Volume => "total_volume",
            Metric::Pnl => "total_pnl",
        };
        let sum = exact_sum(column, PNL_SCALE);
        let sql = format!(
            "SELECT user_id, TO_VARCHAR({sum}) FROM {} WHERE client_type = {}
             GROUP BY user_id ORDER BY {sum} DESC, user_id ASC LIMIT {}",
            self.table(Table::AggTradesWeekly),
            literal(&query.client_type),
            query.limit
        );
        let rows = self.read("top users", &sql).await?;
        rows.into_iter()
            .map(|r| {
                let total = r.get(1).cloned().flatten().unwrap_or_default();
                let v = decimal::parse_scaled(total.as_bytes(), PNL_SCALE)
                    .map_err(|e| Error::internal(format!("snowflake returned {total:?}: {e:?}")))?;
                Ok(TopUser {
                    user_id: r.first().cloned().flatten().unwrap_or_default(),
                    value: decimal::format_scaled(v, PNL_SCALE),
                })
            })
            .collect()
    }

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>> {
        let sql = format!(
            "SELECT TO_VARCHAR(week_start_date, 'YYYY-MM-DD'), client_type,
                    TO_VARCHAR({}), TO_VARCHAR({}),
                    TO_VARCHAR(SUM(trade_count))
             FROM {} GROUP BY week_start_date, client_type
             ORDER BY week_start_date, client_type",
            exact_sum("total_volume", SCALE),
            exact_sum("total_pnl", PNL_SCALE),
            self.table(Table::AggTradesWeekly)
        );
        let rows = self.read("weekly totals", &sql).await?;
        let norm = |t: &Option<String>| {
            let text = t.as_deref().unwrap_or_default();
            decimal::parse_scaled(text.as_bytes(), PNL_SCALE)
                .map(|v| decimal::format_scaled(v, PNL_SCALE))
                .map_err(|_| bad_value("a weekly total", t))
        };
        rows.iter()
            .map(|r| {
                Ok(WeeklyTotal {
                    week_start_date: r[0].clone().unwrap_or_default(),
                    client_type: r[1].clone().unwrap_or_default(),
                    total_volume: norm(&r[2])?,
                    total_pnl: norm(&r[3])?,
                    trade_count: r[4]
                        .as_deref()
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| bad_value("a trade count", &r[4]))?,
                })
            })
            .collect()
    }

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>> {
        let col = table.partition_column();
        let sql = format!(
            "SELECT {}, TO_VARCHAR(COUNT(*)) FROM {} GROUP BY {col} ORDER BY {col}",
            partition_text(table),
            self.table(table)
        );
        let rows = self.read("list partitions", &sql).await?;
        rows.into_iter()
            .map(|r| {
                let rows = r[1]
                    .as_deref()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| bad_value("a row count", &r[1]))?;
                Ok(PartitionInfo {
                    partition: r[0].clone().unwrap_or_default(),
                    rows,
                })
            })
            .collect()
    }

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        let filter = format!(
            "FROM {} WHERE {} = {}",
            self.table(table),
            table.partition_column(),
            literal(partition)
        );
        let dec = |c: &str, p: u32, s: u32| format!("TO_VARCHAR(CAST({c} AS NUMBER({p}, {s})))");
        let date = |c: &str| format!("TO_VARCHAR({c}, 'YYYY-MM-DD')");
        let sql = match table {
            Table::Trades => format!(
                "SELECT TO_VARCHAR(timestamp, 'YYYY-MM-DD HH24:MI:SS.FF9'), user_id, client_type,
                        symbol, side, {}, {}, {} {filter} ORDER BY timestamp, user_id",
                dec("quantity", 18, SCALE),
                dec("price", 18, SCALE),
                date("trade_date")
            ),
            Table::TradesRejected => format!(
                "SELECT timestamp, user_id, client_type, symbol, side, quantity, price, reason,
                        source_file, TO_VARCHAR(source_row) {filter} ORDER BY source_row"
            ),
            Table::AggTradesWeekly => format!(
                "SELECT {}, client_type, user_id, symbol, {}, {}, TO_VARCHAR(trade_count)
                 {filter} ORDER BY client_type, user_id, symbol",
                date("week_start_date"),
                dec("total_volume", 38, SCALE),
                dec("total_pnl", 38, PNL_SCALE)
            ),
        };
        let rows = self.read("read partition", &sql).await?;
        let timestamp = |c: &[Option<String>]| parse_timestamp(c.first()?.as_deref()?);
        text_rows::partition_batch(
            "snowflake",
            table,
            &rows,
            text_rows::Timestamp {
                cells: 1,
                parse: &timestamp,
            },
        )
    }

    async fn drop_partition(&self, table: Table, partition: &str) -> Result<u64> {
        let _w = self.writing.lock().await;
        if let Some(run) = self.run.lock().expect("run lock").as_ref() {
            return Err(Error::backend(
                format!(
                    "cannot drop partition {partition} of {table} while run {} is open",
                    run.row.run_id
                ),
                true,
            ));
        }
        let _t = self.tx.write().await;
        // One DELETE: atomic; Snowflake answers with the rows it deleted.
        let rows = self
            .exec_once(
                &format!("drop partition {partition} of {table}"),
                &format!(
                    "DELETE FROM {} WHERE {} = {}",
                    self.table(table),
                    table.partition_column(),
                    literal(partition)
                ),
            )
            .await?;
        let deleted = rows.first().and_then(|r| r.first().cloned().flatten());
        deleted
            .as_deref()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad_value("the rows deleted", &deleted))
    }

    async fn close(&self) -> Result<()> {
        let run = self.run.lock().expect("run lock").take();
        if let Some(run) = run {
            tracing::warn!(run_id = %run.row.run_id, "shutting down during a run: discarding it");
            self.drop_stages(&run.tag).await?;
        }
        Ok(())
    }
}

/// `SUM` of a decimal column at `scale`. The explicit cast
/// changes nothing on Snowflake (the column already has that type); the
/// stand-in, fakesnow, sums a bare column as DOUBLE and would drift.
fn exact_sum(column: &str, scale: u32) -> String {
    format!("SUM(CAST({column} AS NUMBER(38, {scale})))")
}

/// The partition column of `table` as text.
fn partition_text(table: Table) -> String {
    match table {
        Table::TradesRejected => "source_file".into(),
        t => format!("TO_VARCHAR({}, 'YYYY-MM-DD')", t.partition_column()),
    }
}

fn runs_select(qualified: &str, filter: &str, limit: u32) -> String {
    let cols: Vec<String> = RUN_COLUMNS[..21]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if RUN_COUNTERS.contains(&i) {
                format!("TO_VARCHAR({c})")
            } else {
                (*c).to_string()
            }
        })
        .collect();
    format!(
        "SELECT {} FROM {qualified}.pipeline_runs {filter} ORDER BY started_at DESC, run_id DESC LIMIT {limit}",
        cols.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(literal(r"it's a\b"), r"'it''s a\\b'");
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05.123456789"),
            Some(1_704_164_645_123_456_789)
        );
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05"),
            Some(1_704_164_645_000_000_000)
        );
    }

    #[test]
    fn errors_are_classified() {
        let api = |code: &str| SnowflakeApiError::ApiError(code.into(), "m".into());
        assert!(!is_transient(&api("002003")), "object does not exist");
        assert!(!is_transient(&api("001003")), "SQL compilation error");
        assert!(is_transient(&api("000625")));
        let status = |s: u16| {
            SnowflakeApiError::RequestError(
                snowflake_api::connection::ConnectionError::RequestMiddlewareError(
                    reqwest_middleware::Error::Middleware(anyhow::Error::new(HttpStatus {
                        status: s,
                        path: "/".into(),
                        body: String::new(),
                    })),
                ),
            )
        };
        assert!(is_transient(&status(503)));
        assert!(is_transient(&status(429)));
        assert!(!is_transient(&status(403)));
    }

    #[test]
    fn run_table_types() {
        let sql = runs_table_sql("db.s");
        assert!(sql.contains("rows_in NUMBER(20, 0)"), "{sql}");
        assert!(sql.contains("total_ms NUMBER(20, 0)"), "{sql}");
        assert!(sql.contains("rows_committed VARCHAR"), "{sql}");
        assert!(sql.contains("run_id VARCHAR"), "{sql}");
    }
}
