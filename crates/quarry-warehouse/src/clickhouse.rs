//! The ClickHouse backend, over the HTTP interface (`clickhouse` crate,
//! RowBinary, which old and new servers accept).
//!
//! Tables are MergeTree, partitioned by their partition column (`trade_date`,
//! `week_start_date`: DATE; `source_file` for the quarantine). A run's
//! batches go into unpartitioned Log tables (`<table>_flat_<run>`); commit
//! checks that each holds what was sent, copies it server-side into a
//! staging table of the target's structure (`<table>_stage_<run>`, one part
//! per partition), swaps every covered partition in with
//! `ALTER TABLE … REPLACE PARTITION … FROM` (atomic per partition, up to 100
//! per statement) and drops the staging tables; abort only drops them.
//! Amounts are Decimal(18,8) / Decimal(38,8) / Decimal(38,16): exact.
//! `timestamp` is DateTime('UTC') plus `timestamp_nanos` (UInt32), since
//! servers before 20.1 have no DateTime64.
//! Runs are rows of a ReplacingMergeTree keyed by run_id (latest version wins).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::staging::{Staged, stage_tag};
use arrow::array::{
    Array, ArrayRef, AsArray, Date32Builder, Decimal128Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Int64Type, TimestampNanosecondType, UInt64Type,
};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use clickhouse::{Client, Row, RowWrite};
use quarry_core::config::ClickHouseConfig;
use quarry_core::dates::{date_text, now_text};
use quarry_core::decimal::{self, PNL_SCALE};
use quarry_core::schema::{PNL_TYPE, QUANTITY_TYPE, VOLUME_TYPE};
use quarry_core::{Error, Result, Table};
use serde::{Deserialize, Serialize};

use crate::{
    Metric, PartitionInfo, RunCommit, RunFailure, RunRecord, RunStart, RunStats, TopUser,
    TopUsersQuery, Warehouse, WeeklyTotal, WriteMode, check_batch,
};

const NANOS: i64 = 1_000_000_000;

fn tables_sql(db: &str) -> [String; 4] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.trades (
                timestamp DateTime('UTC'), timestamp_nanos UInt32, user_id String,
                client_type String, symbol String, side String,
                quantity Decimal(18, 8), price Decimal(18, 8), trade_date Date, run_id String
            ) ENGINE = MergeTree PARTITION BY trade_date ORDER BY (trade_date, user_id, timestamp)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.trades_rejected (
                timestamp Nullable(String), user_id Nullable(String), client_type Nullable(String),
                symbol Nullable(String), side Nullable(String), quantity Nullable(String),
                price Nullable(String), reason String, source_file String, source_row UInt64,
                run_id String
            ) ENGINE = MergeTree PARTITION BY source_file ORDER BY (source_file, source_row)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.agg_trades_weekly (
                week_start_date Date, client_type String, user_id String, symbol String,
                total_volume Decimal(38, 8), total_pnl Decimal(38, 16), trade_count Int64
            ) ENGINE = MergeTree PARTITION BY week_start_date
              ORDER BY (week_start_date, client_type, user_id, symbol)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.pipeline_runs (
                run_id String, version UInt64, source String, status String,
                started_at String, finished_at String,
                rows_in UInt64, rows_valid UInt64, rows_rejected UInt64, rows_duplicate UInt64,
                agg_rows UInt64, plan_ms UInt64, extract_ms UInt64, transform_ms UInt64,
                load_ms UInt64, commit_ms UInt64, total_ms UInt64,
                rows_committed String, error_category String, error_message String,
                quality String, options String, owner String
            ) ENGINE = ReplacingMergeTree(version) ORDER BY run_id"
        ),
    ]
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct TradeRow<'a> {
    timestamp: u32,
    timestamp_nanos: u32,
    user_id: &'a str,
    client_type: &'a str,
    symbol: &'a str,
    side: &'a str,
    quantity: i64,
    price: i64,
    trade_date: u16,
    run_id: &'a str,
}

#[derive(Debug, Row, Deserialize)]
struct TradeOut {
    timestamp: u32,
    timestamp_nanos: u32,
    user_id: String,
    client_type: String,
    symbol: String,
    side: String,
    quantity: i64,
    price: i64,
    trade_date: u16,
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct RejectedRow {
    timestamp: Option<String>,
    user_id: Option<String>,
    client_type: Option<String>,
    symbol: Option<String>,
    side: Option<String>,
    quantity: Option<String>,
    price: Option<String>,
    reason: String,
    source_file: String,
    source_row: u64,
    run_id: String,
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct AggRow {
    week_start_date: u16,
    client_type: String,
    user_id: String,
    symbol: String,
    total_volume: i128,
    total_pnl: i128,
    trade_count: i64,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct RunRow {
    run_id: String,
    version: u64,
    source: String,
    status: String,
    started_at: String,
    finished_at: String,
    rows_in: u64,
    rows_valid: u64,
    rows_rejected: u64,
    rows_duplicate: u64,
    agg_rows: u64,
    plan_ms: u64,
    extract_ms: u64,
    transform_ms: u64,
    load_ms: u64,
    commit_ms: u64,
    total_ms: u64,
    rows_committed: String,
    error_category: String,
    error_message: String,
    quality: String,
    options: String,
    /// Who runs it (`owner::RunOwner` as JSON).
    owner: String,
}

impl RunRow {
    fn new(run_id: String, source: String, options: String, started_at: String) -> Self {
        Self {
            run_id,
            version: version(),
            source,
            status: "running".into(),
            started_at,
            finished_at: String::new(),
            rows_in: 0,
            rows_valid: 0,
            rows_rejected: 0,
            rows_duplicate: 0,
            agg_rows: 0,
            plan_ms: 0,
            extract_ms: 0,
            transform_ms: 0,
            load_ms: 0,
            commit_ms: 0,
            total_ms: 0,
            rows_committed: "{}".into(),
            error_category: String::new(),
            error_message: String::new(),
            quality: String::new(),
            options,
            owner: String::new(),
        }
    }

    /// The row's next version (a newer version replaces it).
    fn next_version(&mut self) {
        self.version = version().max(self.version + 1);
    }

    fn finished(&mut self, status: &str) {
        self.next_version();
        self.status = status.into();
        self.finished_at = now_text();
    }

    fn set_stats(&mut self, s: &RunStats) {
        self.rows_in = s.rows_in;
        self.rows_valid = s.rows_valid;
        self.rows_rejected = s.rows_rejected;
        self.rows_duplicate = s.rows_duplicate;
        self.agg_rows = s.agg_rows;
        self.plan_ms = s.plan_ms;
        self.extract_ms = s.extract_ms;
        self.transform_ms = s.transform_ms;
        self.load_ms = s.load_ms;
        self.commit_ms = s.commit_ms;
        self.total_ms = s.total_ms;
    }

    fn record(self) -> RunRecord {
        RunRecord {
            stats: Some(RunStats {
                rows_in: self.rows_in,
                rows_valid: self.rows_valid,
                rows_rejected: self.rows_rejected,
                rows_duplicate: self.rows_duplicate,
                agg_rows: self.agg_rows,
                plan_ms: self.plan_ms,
                extract_ms: self.extract_ms,
                transform_ms: self.transform_ms,
                load_ms: self.load_ms,
                commit_ms: self.commit_ms,
                total_ms: self.total_ms,
            }),
            rows_committed: serde_json::from_str(&self.rows_committed).unwrap_or_default(),
            run_id: self.run_id,
            source: self.source,
            status: self.status,
            started_at: self.started_at,
            finished_at: self.finished_at,
            error_category: self.error_category,
            error_message: self.error_message,
            quality_json: self.quality,
            options_json: self.options,
            owner_json: self.owner,
        }
    }
}

/// The run being written: what it staged, per table.
struct ActiveRun {
    /// The run's record (its id included), written again at the end.
    row: RunRow,
    /// Staging table suffix derived from the run id.
    tag: String,
    staged: Staged,
}

impl ActiveRun {
    fn run_id(&self) -> &str {
        &self.row.run_id
    }
}

pub struct ClickHouseWarehouse {
    /// Bound to the database: inserts name tables without it.
    client: Client,
    /// Without a database, to create it.
    admin: Client,
    db: String,
    url: String,
    max_attempts: u32,
    run: Mutex<Option<ActiveRun>>,
    /// Serialises writes of one run (inserts, commit, abort).
    writing: tokio::sync::Mutex<()>,
}

/// ClickHouse exception codes worth another attempt: timeouts, network,
/// overload, too many parts, memory limit, read-only replica.
const TRANSIENT_CODES: [u32; 9] = [159, 164, 202, 209, 210, 241, 242, 252, 425];

fn server_code(message: &str) -> Option<u32> {
    let rest = message.split("Code: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn is_transient(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(m) => server_code(m).is_some_and(|c| TRANSIENT_CODES.contains(&c)),
        _ => false,
    }
}

fn stage_name(table: Table, tag: &str) -> String {
    format!("{table}_stage_{tag}")
}

/// Where a run's batches land first: an unpartitioned Log table, so a batch
/// is one part whatever the number of days it spans. (Inserting batches
/// straight into the partitioned staging table made a part per day per
/// batch, and the server spent the run merging them.)
fn flat_name(table: Table, tag: &str) -> String {
    format!("{table}_flat_{tag}")
}

/// Partition commands per ALTER statement.
const ALTER_CHUNK: usize = 100;

/// Escapes a string literal for ClickHouse SQL ('…').
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Row versions of pipeline_runs: microseconds since the epoch, so the
/// latest write of a run wins.
fn version() -> u64 {
    chrono::Utc::now().timestamp_micros() as u64
}

fn day_u16(d: i32, what: &str) -> Result<u16> {
    u16::try_from(d).map_err(|_| {
        Error::input(format!(
            "{what} {} is outside ClickHouse's Date range (1970-2149)",
            date_text(d)
        ))
    })
}

impl ClickHouseWarehouse {
    pub fn open(config: &ClickHouseConfig) -> Result<Self> {
        let mut client = Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            // Servers before 20.x lack the metadata the validation reads.
            .with_validation(false);
        if let Ok(password) = std::env::var(&config.password_env)
            && !password.is_empty()
        {
            client = client.with_password(password);
        }
        Ok(Self {
            admin: client.clone(),
            client: client.with_database(&config.database),
            db: config.database.clone(),
            url: config.url.clone(),
            max_attempts: config.max_attempts,
            run: Mutex::new(None),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    fn err(&self, what: &str, e: clickhouse::error::Error) -> Error {
        Error::backend(
            format!("clickhouse at {}: {what}: {e}", self.url),
            is_transient(&e),
        )
    }

    /// Runs `op` again on transient errors, with capped exponential backoff
    /// and jitter; permanent errors fail at once.
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = clickhouse::error::Result<T>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        op.retry(backoff)
            .when(is_transient)
            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "clickhouse: {what}: retrying"))
            .await
            .map_err(|e| self.err(what, e))
    }

    async fn execute(&self, what: &str, sql: &str) -> Result<()> {
        self.retry(what, || self.client.query(sql).execute()).await
    }

    /// Inserts `rows` in one request (RowBinary), retried whole on transient
    /// errors: a retry that duplicated rows is caught by the read-back.
    async fn insert_rows<T: RowWrite>(&self, table: &str, rows: &[T::Value<'_>]) -> Result<()> {
        self.retry(&format!("insert into {table}"), || async {
            let mut insert = self.client.insert::<T>(table).await?;
            for r in rows {
                insert.write(r).await?;
            }
            insert.end().await
        })
        .await
    }

    /// The staging table of `table` in a run, qualified for SQL.
    fn stage(&self, table: Table, tag: &str) -> String {
        format!("{}.{}", self.db, stage_name(table, tag))
    }

    async fn record(&self, row: &RunRow) -> Result<()> {
        self.insert_rows::<RunRow>("pipeline_runs", std::slice::from_ref(row))
            .await
    }

    async fn count(&self, what: &str, sql: &str) -> Result<u64> {
        self.retry(what, || self.client.query(sql).fetch_one::<u64>())
            .await
    }

    fn flat(&self, table: Table, tag: &str) -> String {
        format!("{}.{}", self.db, flat_name(table, tag))
    }

    async fn drop_stages(&self, tag: &str) -> Result<()> {
        for t in Table::ALL {
            for name in [self.stage(t, tag), self.flat(t, tag)] {
                self.execute(
                    "drop staging table",
                    &format!("DROP TABLE IF EXISTS {name}"),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn finish_commit(
        &self,
        run: &mut ActiveRun,
        c: &RunCommit,
    ) -> Result<BTreeMap<String, u64>> {
        // Read back what each staging table holds before anything is swapped.
        let mut rows = BTreeMap::new();
        for (table, staged) in &run.staged.rows {
            let held = self
                .count(
                    "read back staged rows",
                    &format!("SELECT count() FROM {}", self.flat(*table, &run.tag)),
                )
                .await?;
            if held != *staged {
                return Err(Error::quality(format!(
                    "reconciliation: {table} was sent {staged} rows but its staging table holds {held}"
                )));
            }
            rows.insert(table.name().to_string(), held);
            // Into the partitioned stage in big blocks: one part per day.
            self.execute(
                &format!("partition staged {table} rows"),
                &format!(
                    "INSERT INTO {} SELECT * FROM {}",
                    self.stage(*table, &run.tag),
                    self.flat(*table, &run.tag)
                ),
            )
            .await?;
        }
        run.staged.cover_sources(&c.source_files);
        for (table, parts) in &run.staged.partitions {
            let target = format!("{}.{table}", self.db);
            let staged: BTreeSet<String> = if run.staged.rows.contains_key(table) {
                self.retry("list staged partitions", || {
                    self.client
                        .query(&format!(
                            "SELECT DISTINCT toString({}) FROM {}",
                            table.partition_column(),
                            self.stage(*table, &run.tag)
                        ))
                        .fetch_all::<String>()
                })
                .await?
                .into_iter()
                .collect()
            } else {
                BTreeSet::new()
            };
            let commands: Vec<String> = parts
                .iter()
                .map(|p| {
                    if staged.contains(p) {
                        format!(
                            "REPLACE PARTITION {} FROM {}",
                            literal(p),
                            self.stage(*table, &run.tag)
                        )
                    } else {
                        // Covered but empty now (e.g. a file without rejects any more).
                        format!("DROP PARTITION {}", literal(p))
                    }
                })
                .collect();
            for chunk in commands.chunks(ALTER_CHUNK) {
                self.execute(
                    &format!("replace partitions of {table}"),
                    &format!("ALTER TABLE {target} {}", chunk.join(", ")),
                )
                .await?;
            }
        }
        self.drop_stages(&run.tag).await?;
        run.row.finished("succeeded");
        run.row.set_stats(&c.stats);
        run.row.rows_committed = serde_json::to_string(&rows).expect("a map serialises");
        run.row.quality = c.quality_json.clone();
        self.record(&run.row).await?;
        Ok(rows)
    }

    fn take_run(&self, run_id: &str) -> Result<ActiveRun> {
        let mut guard = self.run.lock().expect("run lock");
        match guard.as_ref().map(ActiveRun::run_id) {
            Some(open) if open == run_id => Ok(guard.take().expect("checked")),
            Some(open) => Err(Error::internal(format!(
                "run {run_id} is not open (run {open} is)"
            ))),
            None => Err(Error::input(format!("run {run_id} is not open"))),
        }
    }
}

#[async_trait]
impl Warehouse for ClickHouseWarehouse {
    fn kind(&self) -> &'static str {
        "clickhouse"
    }

    async fn check_connectivity(&self) -> Result<()> {
        // One attempt: a wrong URL or credentials should say so at once.
        self.admin
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .map_err(|e| self.err("cannot connect", e))?;
        let create = format!("CREATE DATABASE IF NOT EXISTS {}", self.db);
        self.retry("create database", || self.admin.query(&create).execute())
            .await?;
        for sql in tables_sql(&self.db) {
            self.execute("create tables", &sql).await?;
        }
        // pipeline_runs of an older Quarry lacks the owner column (servers
        // before 19.x have no ADD COLUMN IF NOT EXISTS: look first).
        let has_owner = self
            .count(
                "inspect pipeline_runs",
                &format!(
                    "SELECT count() FROM system.columns WHERE database = '{}' AND table = 'pipeline_runs' AND name = 'owner'",
                    self.db
                ),
            )
            .await?;
        if has_owner == 0 {
            self.execute(
                "add pipeline_runs.owner",
                &format!(
                    "ALTER TABLE {}.pipeline_runs ADD COLUMN owner String DEFAULT ''",
                    self.db
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn begin_run(&self, run: RunStart) -> Result<()> {
        let tag = stage_tag(&run.run_id)?;
        {
            let guard = self.run.lock().expect("run lock");
            if let Some(open) = guard.as_ref() {
                return Err(Error::internal(format!(
                    "cannot begin run {}: run {} is still open",
                    run.run_id,
                    open.run_id()
                )));
            }
        }
        let _w = self.writing.lock().await;
        // Leftovers of a crashed run with the same id are discarded.
        self.drop_stages(&tag).await?;
        for t in Table::ALL {
            self.execute(
                "create staging table",
                &format!("CREATE TABLE {} AS {}.{t}", self.stage(t, &tag), self.db),
            )
            .await?;
            self.execute(
                "create staging table",
                &format!(
                    "CREATE TABLE {} AS {}.{t} ENGINE = Log",
                    self.flat(t, &tag),
                    self.db
                ),
            )
            .await?;
        }
        let mut row = RunRow::new(run.run_id, run.source, run.options_json, now_text());
        row.owner = run.owner_json;
        self.record(&row).await?;
        *self.run.lock().expect("run lock") = Some(ActiveRun {
            row,
            tag,
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
        let _w = self.writing.lock().await;
        let tag = {
            let guard = self.run.lock().expect("run lock");
            match guard.as_ref() {
                Some(r) if r.run_id() == run_id => r.tag.clone(),
                _ => return Err(Error::input(format!("run {run_id} is not open"))),
            }
        };
        let stage = flat_name(table, &tag);
        let n = batch.num_rows();
        let mut parts = BTreeSet::new();
        match table {
            Table::Trades => {
                let ts = batch.column(0).as_primitive::<TimestampNanosecondType>();
                let s = |i: usize| batch.column(i).as_string::<i32>();
                let qty = batch.column(5).as_primitive::<Decimal128Type>();
                let price = batch.column(6).as_primitive::<Decimal128Type>();
                let day = batch.column(7).as_primitive::<Date32Type>();
                let mut rows = Vec::with_capacity(n);
                for i in 0..n {
                    let t = ts.value(i);
                    let d = day.value(i);
                    parts.insert(d);
                    rows.push(TradeRow {
                        timestamp: u32::try_from(t.div_euclid(NANOS)).map_err(|_| {
                            Error::input(
                                "timestamp outside ClickHouse's DateTime range (1970-2106)",
                            )
                        })?,
                        timestamp_nanos: t.rem_euclid(NANOS) as u32,
                        user_id: s(1).value(i),
                        client_type: s(2).value(i),
                        symbol: s(3).value(i),
                        side: s(4).value(i),
                        quantity: qty.value(i) as i64,
                        price: price.value(i) as i64,
                        trade_date: day_u16(d, "trade_date")?,
                        run_id,
                    });
                }
                self.insert_rows::<TradeRow<'static>>(&stage, &rows).await?;
            }
            Table::TradesRejected => {
                let s = |i: usize| batch.column(i).as_string::<i32>();
                let opt =
                    |i: usize, r: usize| (!s(i).is_null(r)).then(|| s(i).value(r).to_string());
                let row_no = batch.column(9).as_primitive::<UInt64Type>();
                let rows: Vec<RejectedRow> = (0..n)
                    .map(|r| RejectedRow {
                        timestamp: opt(0, r),
                        user_id: opt(1, r),
                        client_type: opt(2, r),
                        symbol: opt(3, r),
                        side: opt(4, r),
                        quantity: opt(5, r),
                        price: opt(6, r),
                        reason: s(7).value(r).to_string(),
                        source_file: s(8).value(r).to_string(),
                        source_row: row_no.value(r),
                        run_id: run_id.to_string(),
                    })
                    .collect();
                self.insert_rows::<RejectedRow>(&stage, &rows).await?;
            }
            Table::AggTradesWeekly => {
                let week = batch.column(0).as_primitive::<Date32Type>();
                let s = |i: usize| batch.column(i).as_string::<i32>();
                let vol = batch.column(4).as_primitive::<Decimal128Type>();
                let pnl = batch.column(5).as_primitive::<Decimal128Type>();
                let count = batch.column(6).as_primitive::<Int64Type>();
                let mut rows = Vec::with_capacity(n);
                for i in 0..n {
                    parts.insert(week.value(i));
                    rows.push(AggRow {
                        week_start_date: day_u16(week.value(i), "week_start_date")?,
                        client_type: s(1).value(i).to_string(),
                        user_id: s(2).value(i).to_string(),
                        symbol: s(3).value(i).to_string(),
                        total_volume: vol.value(i),
                        total_pnl: pnl.value(i),
                        trade_count: count.value(i),
                    });
                }
                self.insert_rows::<AggRow>(&stage, &rows).await?;
            }
        }
        let mut guard = self.run.lock().expect("run lock");
        let run = guard
            .as_mut()
            .ok_or_else(|| Error::input(format!("run {run_id} is not open")))?;
        run.staged
            .add(table, mode, n as u64, parts.into_iter().map(date_text));
        Ok(n as u64)
    }

    async fn commit(&self, commit: RunCommit) -> Result<BTreeMap<String, u64>> {
        let _w = self.writing.lock().await;
        let mut run = self.take_run(&commit.run_id)?;
        match self.finish_commit(&mut run, &commit).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // Partitions already swapped stay swapped (each swap is atomic
                // and holds this run's complete data); a re-run completes it.
                let _ = self.drop_stages(&run.tag).await;
                run.row.finished("failed");
                run.row.error_category = e.category().as_str().into();
                run.row.error_message = e.to_string();
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
            .is_some_and(|r| r.run_id() == f.run_id);
        let mut row = if open {
            let run = self.take_run(&f.run_id)?;
            self.drop_stages(&run.tag).await?;
            run.row
        } else {
            // Not open here (refused before it began, or left by a dead
            // process): keep what is known of it; whatever it staged goes.
            let row = match self.get_run(&f.run_id).await? {
                Some(r) => {
                    let mut row = RunRow::new(r.run_id, r.source, r.options_json, r.started_at);
                    row.owner = r.owner_json;
                    row
                }
                None => RunRow::new(f.run_id.clone(), String::new(), String::new(), now_text()),
            };
            self.drop_stages(&stage_tag(&f.run_id)?).await?;
            row
        };
        row.finished("failed");
        row.set_stats(&f.stats);
        row.error_category = f.category.as_str().into();
        row.error_message = f.message;
        row.quality = f.quality_json;
        self.record(&row).await
    }

    async fn heartbeat(&self, run_id: &str) -> Result<()> {
        let _w = self.writing.lock().await;
        let row = {
            let mut guard = self.run.lock().expect("run lock");
            match guard.as_mut() {
                Some(run) if run.run_id() == run_id => {
                    run.row.next_version();
                    run.row.owner = crate::owner::RunOwner::beat(&run.row.owner);
                    run.row.clone()
                }
                _ => return Ok(()),
            }
        };
        self.record(&row).await
    }

    async fn running_runs(&self) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT ?fields FROM {}.pipeline_runs FINAL WHERE status = 'running' ORDER BY started_at",
            self.db
        );
        let rows = self
            .retry("list running runs", || {
                self.client.query(&sql).fetch_all::<RunRow>()
            })
            .await?;
        Ok(rows.into_iter().map(RunRow::record).collect())
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT ?fields FROM {}.pipeline_runs FINAL ORDER BY started_at DESC, run_id DESC LIMIT {limit}",
            self.db
        );
        let rows = self
            .retry("list runs", || {
                self.client.query(&sql).fetch_all::<RunRow>()
            })
            .await?;
        Ok(rows.into_iter().map(RunRow::record).collect())
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let sql = format!(
            "SELECT ?fields FROM {}.pipeline_runs FINAL WHERE run_id = ?",
            self.db
        );
        let rows = self
            .retry("get run", || {
                self.client.query(&sql).bind(run_id).fetch_all::<RunRow>()
            })
            .await?;
        Ok(rows.into_iter().next().map(RunRow::record))
    }

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>> {
        let column = match query.metric {
            Metric::Volume => "total_volume",
            Metric::Pnl => "total_pnl",
        };
        let sql = format!(
            "SELECT user_id, toString(sum({column})) FROM {}.agg_trades_weekly
             WHERE client_type = ? GROUP BY user_id ORDER BY sum({column}) DESC, user_id ASC LIMIT {}",
            self.db, query.limit
        );
        let rows = self
            .retry("top users", || {
                self.client
                    .query(&sql)
                    .bind(query.client_type.as_str())
                    .fetch_all::<(String, String)>()
            })
            .await?;
        rows.into_iter()
            .map(|(user_id, total)| {
                let v = decimal::parse_scaled(total.as_bytes(), PNL_SCALE).map_err(|e| {
                    Error::internal(format!("clickhouse returned {total:?}: {e:?}"))
                })?;
                Ok(TopUser {
                    user_id,
                    value: decimal::format_scaled(v, PNL_SCALE),
                })
            })
            .collect()
    }

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>> {
        let sql = format!(
            "SELECT toString(week_start_date), client_type, toString(sum(total_volume)),
                    toString(sum(total_pnl)), toUInt64(sum(trade_count))
             FROM {}.agg_trades_weekly GROUP BY week_start_date, client_type ORDER BY 1, 2",
            self.db
        );
        let rows = self
            .retry("weekly totals", || {
                self.client
                    .query(&sql)
                    .fetch_all::<(String, String, String, String, u64)>()
            })
            .await?;
        let norm = |t: &str| {
            decimal::parse_scaled(t.as_bytes(), PNL_SCALE)
                .map(|v| decimal::format_scaled(v, PNL_SCALE))
                .map_err(|e| Error::internal(format!("clickhouse returned {t:?}: {e:?}")))
        };
        rows.into_iter()
            .map(|(week, ct, vol, pnl, n)| {
                Ok(WeeklyTotal {
                    week_start_date: week,
                    client_type: ct,
                    total_volume: norm(&vol)?,
                    total_pnl: norm(&pnl)?,
                    trade_count: n,
                })
            })
            .collect()
    }

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>> {
        let col = table.partition_column();
        let sql = format!(
            "SELECT toString({col}), count() FROM {}.{table} GROUP BY {col} ORDER BY {col}",
            self.db
        );
        let rows = self
            .retry("list partitions", || {
                self.client.query(&sql).fetch_all::<(String, u64)>()
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(partition, rows)| PartitionInfo { partition, rows })
            .collect())
    }

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        let filter = format!(
            "FROM {}.{table} WHERE {} = {}",
            self.db,
            table.partition_column(),
            literal(partition)
        );
        let cols: Vec<ArrayRef> = match table {
            Table::Trades => {
                let sql =
                    format!("SELECT ?fields {filter} ORDER BY timestamp, timestamp_nanos, user_id");
                let rows = self
                    .retry("read partition", || {
                        self.client.query(&sql).fetch_all::<TradeOut>()
                    })
                    .await?;
                let mut ts = TimestampNanosecondBuilder::new().with_timezone("UTC");
                let mut text: [StringBuilder; 4] = Default::default();
                let mut qty = Decimal128Builder::new().with_data_type(QUANTITY_TYPE);
                let mut price = Decimal128Builder::new().with_data_type(QUANTITY_TYPE);
                let mut day = Date32Builder::new();
                for r in &rows {
                    ts.append_value(i64::from(r.timestamp) * NANOS + i64::from(r.timestamp_nanos));
                    for (b, v) in
                        text.iter_mut()
                            .zip([&r.user_id, &r.client_type, &r.symbol, &r.side])
                    {
                        b.append_value(v);
                    }
                    qty.append_value(i128::from(r.quantity));
                    price.append_value(i128::from(r.price));
                    day.append_value(i32::from(r.trade_date));
                }
                let mut cols: Vec<ArrayRef> = vec![Arc::new(ts.finish())];
                cols.extend(text.map(|mut b| Arc::new(b.finish()) as ArrayRef));
                cols.push(Arc::new(qty.finish()));
                cols.push(Arc::new(price.finish()));
                cols.push(Arc::new(day.finish()));
                cols
            }
            Table::TradesRejected => {
                let sql = format!("SELECT ?fields {filter} ORDER BY source_row");
                let rows = self
                    .retry("read partition", || {
                        self.client.query(&sql).fetch_all::<RejectedRow>()
                    })
                    .await?;
                let mut text: Vec<StringBuilder> = (0..9).map(|_| StringBuilder::new()).collect();
                let mut row_no = UInt64Builder::new();
                for r in &rows {
                    for (b, v) in text.iter_mut().zip([
                        &r.timestamp,
                        &r.user_id,
                        &r.client_type,
                        &r.symbol,
                        &r.side,
                        &r.quantity,
                        &r.price,
                    ]) {
                        b.append_option(v.as_deref());
                    }
                    text[7].append_value(&r.reason);
                    text[8].append_value(&r.source_file);
                    row_no.append_value(r.source_row);
                }
                let mut cols: Vec<ArrayRef> = text
                    .into_iter()
                    .map(|mut b| Arc::new(b.finish()) as ArrayRef)
                    .collect();
                cols.push(Arc::new(row_no.finish()));
                cols
            }
            Table::AggTradesWeekly => {
                let sql = format!("SELECT ?fields {filter} ORDER BY client_type, user_id, symbol");
                let rows = self
                    .retry("read partition", || {
                        self.client.query(&sql).fetch_all::<AggRow>()
                    })
                    .await?;
                let mut week = Date32Builder::new();
                let mut text: [StringBuilder; 3] = Default::default();
                let mut vol = Decimal128Builder::new().with_data_type(VOLUME_TYPE);
                let mut pnl = Decimal128Builder::new().with_data_type(PNL_TYPE);
                let mut count = Int64Builder::new();
                for r in &rows {
                    week.append_value(i32::from(r.week_start_date));
                    for (b, v) in text.iter_mut().zip([&r.client_type, &r.user_id, &r.symbol]) {
                        b.append_value(v);
                    }
                    vol.append_value(r.total_volume);
                    pnl.append_value(r.total_pnl);
                    count.append_value(r.trade_count);
                }
                let mut cols: Vec<ArrayRef> = vec![Arc::new(week.finish())];
                cols.extend(text.map(|mut b| Arc::new(b.finish()) as ArrayRef));
                cols.push(Arc::new(vol.finish()));
                cols.push(Arc::new(pnl.finish()));
                cols.push(Arc::new(count.finish()));
                cols
            }
        };
        if cols[0].is_empty() {
            return Ok(vec![]);
        }
        Ok(vec![RecordBatch::try_new(table.schema(), cols)?])
    }

    async fn drop_partition(&self, table: Table, partition: &str) -> Result<u64> {
        let _w = self.writing.lock().await;
        if let Some(run) = self.run.lock().expect("run lock").as_ref() {
            return Err(Error::backend(
                format!(
                    "cannot drop partition {partition} of {table} while run {} is open",
                    run.run_id()
                ),
                true,
            ));
        }
        let rows = self
            .count(
                "count partition rows",
                &format!(
                    "SELECT count() FROM {}.{table} WHERE {} = {}",
                    self.db,
                    table.partition_column(),
                    literal(partition)
                ),
            )
            .await?;
        self.execute(
            &format!("drop partition {partition} of {table}"),
            &format!(
                "ALTER TABLE {}.{table} DROP PARTITION {}",
                self.db,
                literal(partition)
            ),
        )
        .await?;
        Ok(rows)
    }

    async fn close(&self) -> Result<()> {
        let run = self.run.lock().expect("run lock").take();
        if let Some(run) = run {
            tracing::warn!(run_id = %run.run_id(), "shutting down during a run: discarding it");
            self.drop_stages(&run.tag).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped_and_codes_classified() {
        assert_eq!(literal("it's a\\b"), r"'it\'s a\\b'");
        assert_eq!(
            server_code("Code: 60, e.displayText() = DB::Exception: Table x doesn't exist."),
            Some(60)
        );
        assert_eq!(server_code("no code here"), None);
        let bad = |m: &str| clickhouse::error::Error::BadResponse(m.into());
        assert!(!is_transient(&bad(
            "Code: 53, e.displayText() = DB::Exception: Type mismatch"
        )));
        assert!(is_transient(&bad(
            "Code: 252, e.displayText() = DB::Exception: Too many parts"
        )));
        assert!(is_transient(&clickhouse::error::Error::TimedOut));
    }
}
