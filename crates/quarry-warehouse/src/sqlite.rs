//! The embedded SQLite backend.
//!
//! One writer connection on its own thread, in WAL mode so readers keep
//! seeing the last committed state during a run. A run is ONE write
//! transaction: rows are inserted, tagged with the run id, straight into the
//! final tables (no staging copy of big tables), and the commit deletes the
//! superseded rows of the covered partitions in the same transaction.
//! Decimals are stored as the REAL nearest to the exact value (SQLite has no
//! decimal type); report sums are recomputed exactly from those values.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Builder, Decimal128Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Int64Type, TimestampNanosecondType, UInt64Type,
};
use async_trait::async_trait;
use quarry_core::dates::{date_text, now_text, parse_date};
use quarry_core::decimal::{self, PNL_SCALE};
use quarry_core::schema::{PNL_TYPE, QUANTITY_TYPE, VOLUME_TYPE};
use quarry_core::{Error, ErrorCategory, Result, Table};
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Metric, PartitionInfo, RunCommit, RunFailure, RunRecord, RunStart, RunStats, TopUser,
    TopUsersQuery, Warehouse, WeeklyTotal, WriteMode, check_batch, rank_top_users,
};

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS trades (
    timestamp   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    client_type TEXT NOT NULL,
    symbol      TEXT NOT NULL,
    side        TEXT NOT NULL,
    quantity    REAL NOT NULL,
    price       REAL NOT NULL,
    trade_date  TEXT NOT NULL,
    run_id      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trades_rejected (
    timestamp   TEXT,
    user_id     TEXT,
    client_type TEXT,
    symbol      TEXT,
    side        TEXT,
    quantity    TEXT,
    price       TEXT,
    reason      TEXT NOT NULL,
    source_file TEXT NOT NULL,
    source_row  INTEGER NOT NULL,
    run_id      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agg_trades_weekly (
    week_start_date TEXT NOT NULL,
    client_type     TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    total_volume    REAL NOT NULL,
    total_pnl       REAL NOT NULL,
    trade_count     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pipeline_runs (
    run_id         TEXT PRIMARY KEY,
    source         TEXT NOT NULL,
    status         TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    finished_at    TEXT,
    rows_in        INTEGER,
    rows_valid     INTEGER,
    rows_rejected  INTEGER,
    rows_duplicate INTEGER,
    agg_rows       INTEGER,
    plan_ms        INTEGER,
    extract_ms     INTEGER,
    transform_ms   INTEGER,
    load_ms        INTEGER,
    commit_ms      INTEGER,
    total_ms       INTEGER,
    rows_committed TEXT,
    error_category TEXT,
    error_message  TEXT,
    quality        TEXT,
    options        TEXT,
    owner          TEXT
);
CREATE INDEX IF NOT EXISTS pipeline_runs_by_start ON pipeline_runs (started_at);
";

/// The index on each table's partition column: what commit deletes by.
fn partition_index(table: Table) -> (String, String) {
    let name = format!("{table}_by_{}", table.partition_column());
    let sql = format!(
        "CREATE INDEX IF NOT EXISTS {name} ON {table} ({})",
        table.partition_column()
    );
    (name, sql)
}

fn db_err(what: &str, e: rusqlite::Error) -> Error {
    // SQLITE_BUSY/LOCKED are worth a retry; everything else is permanent.
    let transient = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    Error::backend(format!("sqlite: {what}: {e}"), transient)
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

enum Command {
    Ping(oneshot::Sender<Result<()>>),
    Begin(RunStart, oneshot::Sender<Result<()>>),
    Write {
        run_id: String,
        table: Table,
        mode: WriteMode,
        batch: RecordBatch,
        reply: oneshot::Sender<Result<u64>>,
    },
    Commit(RunCommit, oneshot::Sender<Result<BTreeMap<String, u64>>>),
    Abort(RunFailure, oneshot::Sender<Result<()>>),
    DropPartition(Table, String, oneshot::Sender<Result<u64>>),
    /// Whether another connection holds the database's write lock.
    OtherWriter(oneshot::Sender<Result<bool>>),
    Close(oneshot::Sender<Result<()>>),
}

/// Columns of `pipeline_runs` added after its first release, with their
/// types: added to older databases when they are opened.
const ADDED_RUN_COLUMNS: [(&str, &str); 1] = [("owner", "TEXT")];

/// The columns of each table of `conn`, by table name (only tables that exist).
fn table_columns(conn: &Connection) -> rusqlite::Result<HashMap<String, BTreeSet<String>>> {
    let mut out = HashMap::new();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for t in tables {
        let cols = conn
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{}')",
                t.replace('\'', "''")
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        out.insert(t, cols);
    }
    Ok(out)
}

/// Refuses a database whose tables of Quarry's names are not Quarry's,
/// before anything is written into it. Returns the run-record columns the
/// database still lacks (an older Quarry's database).
fn check_foreign(conn: &Connection, path: &Path) -> Result<Vec<(&'static str, &'static str)>> {
    let existing = table_columns(conn).map_err(|e| {
        Error::config(format!(
            "{} is not a SQLite database Quarry can use: {e}",
            path.display()
        ))
    })?;
    let reference = Connection::open_in_memory()
        .and_then(|c| c.execute_batch(SCHEMA_SQL).map(|_| c))
        .and_then(|c| table_columns(&c))
        .map_err(|e| Error::internal(format!("the SQLite schema does not load: {e}")))?;
    let mut missing_run_columns = Vec::new();
    for (table, needed) in &reference {
        let Some(has) = existing.get(table) else {
            continue;
        };
        let mut missing: Vec<&String> = needed.difference(has).collect();
        if table == "pipeline_runs" {
            missing.retain(|c| {
                let added = ADDED_RUN_COLUMNS
                    .iter()
                    .find(|(name, _)| *name == c.as_str());
                if let Some(a) = added {
                    missing_run_columns.push(*a);
                }
                added.is_none()
            });
        }
        if !missing.is_empty() {
            return Err(Error::config(format!(
                "{} is not a Quarry warehouse: its table {table} lacks the column{} {}; nothing was changed (use another --sqlite file)",
                path.display(),
                if missing.len() > 1 { "s" } else { "" },
                missing
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(missing_run_columns)
}

pub struct SqliteWarehouse {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
}

impl SqliteWarehouse {
    /// Opens (creating if needed) the database and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| db_err(&format!("cannot open database {}", path.display()), e))?;
        // A database of someone else's is refused before the pragmas below
        // (WAL mode rewrites the file header) or any table is created.
        let add_run_columns = check_foreign(&conn, path)?;
        conn.execute_batch(
            // page_size applies when the file is created: bigger pages mean
            // fewer page writes for bulk loads.
            "PRAGMA page_size = 16384;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -65536;
             PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(|e| db_err(&format!("cannot configure database {}", path.display()), e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db_err("busy_timeout", e))?;
        conn.execute_batch(SCHEMA_SQL)
            .map_err(|e| db_err(&format!("cannot create tables in {}", path.display()), e))?;
        for (column, ty) in add_run_columns {
            conn.execute_batch(&format!(
                "ALTER TABLE pipeline_runs ADD COLUMN {column} {ty}"
            ))
            .map_err(|e| db_err(&format!("cannot add pipeline_runs.{column}"), e))?;
        }
        for t in Table::ALL {
            conn.execute_batch(&partition_index(t).1)
                .map_err(|e| db_err(&format!("cannot create indexes in {}", path.display()), e))?;
        }
        let (tx, rx) = mpsc::channel(16);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || Writer { conn, run: None }.serve(rx))
            .map_err(|e| Error::internal(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            commands: tx,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::internal("the SQLite writer thread has stopped"))?;
        rx.await
            .map_err(|_| Error::internal("the SQLite writer thread dropped a request"))?
    }

    /// Runs a read on its own read-only connection (WAL: it sees the last commit).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| db_err(&format!("cannot open database {}", path.display()), e))?;
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| db_err("busy_timeout", e))?;
            f(&conn).map_err(|e| db_err("query", e))
        })
        .await
        .map_err(|e| Error::internal(format!("SQLite reader panicked: {e}")))?
    }
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn check_connectivity(&self) -> Result<()> {
        self.call(Command::Ping).await
    }

    async fn begin_run(&self, run: RunStart) -> Result<()> {
        self.call(|r| Command::Begin(run, r)).await
    }

    async fn running_runs(&self) -> Result<Vec<RunRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE status = 'running' ORDER BY started_at"
            ))?;
            st.query_map([], run_record)?.collect()
        })
        .await
    }

    /// A live SQLite run holds the write lock from its start to its end (one
    /// transaction), so a `running` run while nobody holds the lock is dead —
    /// unless it started a moment ago (its record is written just before
    /// the lock is taken).
    async fn may_still_run(&self, run: &RunRecord, _stale_after: Duration) -> Result<bool> {
        let just_started = chrono::DateTime::parse_from_rfc3339(&run.started_at)
            .map_or(true, |t| {
                chrono::Utc::now().signed_duration_since(t) < chrono::TimeDelta::seconds(10)
            });
        Ok(just_started || self.call(Command::OtherWriter).await?)
    }

    async fn write(
        &self,
        run_id: &str,
        table: Table,
        mode: WriteMode,
        batch: RecordBatch,
    ) -> Result<u64> {
        let run_id = run_id.to_string();
        self.call(|reply| Command::Write {
            run_id,
            table,
            mode,
            batch,
            reply,
        })
        .await
    }

    async fn commit(&self, commit: RunCommit) -> Result<BTreeMap<String, u64>> {
        self.call(|r| Command::Commit(commit, r)).await
    }

    async fn abort(&self, failure: RunFailure) -> Result<()> {
        self.call(|r| Command::Abort(failure, r)).await
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM pipeline_runs ORDER BY started_at DESC, run_id DESC LIMIT ?1"
            ))?;
            st.query_map([limit], run_record)?.collect()
        })
        .await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let run_id = run_id.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE run_id = ?1"),
                [run_id],
                run_record,
            )
            .optional()
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        self.call(Command::Close).await
    }

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>> {
        self.read(move |c| {
            let col = table.partition_column();
            let mut st = c.prepare(&format!(
                "SELECT {col}, count(*) FROM {table} GROUP BY {col} ORDER BY {col}"
            ))?;
            st.query_map([], |r| {
                Ok(PartitionInfo {
                    partition: r.get(0)?,
                    rows: r.get::<_, i64>(1)? as u64,
                })
            })?
            .collect()
        })
        .await
    }

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        let partition = partition.to_string();
        self.read(move |c| read_partition(c, table, &partition))
            .await
    }

    async fn drop_partition(&self, table: Table, partition: &str) -> Result<u64> {
        let partition = partition.to_string();
        self.call(|reply| Command::DropPartition(table, partition, reply))
            .await
    }

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT week_start_date, client_type, total_volume, total_pnl, trade_count
                 FROM agg_trades_weekly",
            )?;
            let mut rows = st.query([])?;
            // Summed exactly like top_users: each REAL is the decimal it stands for.
            let mut totals: BTreeMap<(String, String), (i128, i128, u64)> = BTreeMap::new();
            while let Some(r) = rows.next()? {
                let key = (r.get(0)?, r.get(1)?);
                let (vol, pnl) = (exact(r, 2, PNL_SCALE)?, exact(r, 3, PNL_SCALE)?);
                let n = r.get::<_, i64>(4)?;
                let t = totals.entry(key).or_default();
                t.0 += vol;
                t.1 += pnl;
                t.2 += n as u64;
            }
            Ok(totals
                .into_iter()
                .map(|((week, ct), (vol, pnl, n))| WeeklyTotal {
                    week_start_date: week,
                    client_type: ct,
                    total_volume: decimal::format_scaled(vol, PNL_SCALE),
                    total_pnl: decimal::format_scaled(pnl, PNL_SCALE),
                    trade_count: n,
                })
                .collect())
        })
        .await
    }

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>> {
        let q = query.clone();
        let totals = self
            .read(move |c| {
                let column = match q.metric {
                    Metric::Volume => "total_volume",
                    Metric::Pnl => "total_pnl",
                };
                let mut st = c.prepare(&format!(
                    "SELECT user_id, {column} FROM agg_trades_weekly WHERE client_type = ?1"
                ))?;
                let mut rows = st.query([&q.client_type])?;
                // Summing REALs drifts; each stored value is read back as the
                // decimal it stands for and summed exactly.
                let mut totals: HashMap<String, i128> = HashMap::new();
                while let Some(r) = rows.next()? {
                    let value = exact(r, 1, PNL_SCALE)?;
                    let user = r.get_ref(0)?.as_str()?;
                    match totals.get_mut(user) {
                        Some(total) => *total += value,
                        None => {
                            totals.insert(user.to_owned(), value);
                        }
                    }
                }
                Ok(totals)
            })
            .await?;
        Ok(rank_top_users(totals, query.limit, PNL_SCALE))
    }
}

const RUN_COLUMNS: &str = "run_id, source, status, started_at, COALESCE(finished_at, ''), \
     COALESCE(rows_in, 0), COALESCE(rows_valid, 0), COALESCE(rows_rejected, 0), COALESCE(rows_duplicate, 0), \
     COALESCE(agg_rows, 0), COALESCE(plan_ms, 0), COALESCE(extract_ms, 0), COALESCE(transform_ms, 0), \
     COALESCE(load_ms, 0), COALESCE(commit_ms, 0), COALESCE(total_ms, 0), COALESCE(rows_committed, '{}'), \
     COALESCE(error_category, ''), COALESCE(error_message, ''), COALESCE(quality, ''), COALESCE(options, ''), \
     COALESCE(owner, '')";

fn run_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)? as u64) };
    let committed: String = r.get(16)?;
    Ok(RunRecord {
        run_id: r.get(0)?,
        source: r.get(1)?,
        status: r.get(2)?,
        started_at: r.get(3)?,
        finished_at: r.get(4)?,
        stats: Some(RunStats {
            rows_in: u(5)?,
            rows_valid: u(6)?,
            rows_rejected: u(7)?,
            rows_duplicate: u(8)?,
            agg_rows: u(9)?,
            plan_ms: u(10)?,
            extract_ms: u(11)?,
            transform_ms: u(12)?,
            load_ms: u(13)?,
            commit_ms: u(14)?,
            total_ms: u(15)?,
        }),
        rows_committed: serde_json::from_str(&committed).unwrap_or_default(),
        error_category: r.get(17)?,
        error_message: r.get(18)?,
        quality_json: r.get(19)?,
        options_json: r.get(20)?,
        owner_json: r.get(21)?,
    })
}

/// What the open run has written so far.
struct ActiveRun {
    run_id: String,
    /// Partitions to replace at commit (days since the epoch).
    trade_dates: BTreeSet<i32>,
    weeks: BTreeSet<i32>,
    /// Whether rejected rows were sent in replace mode (vs append).
    rejected_replace: bool,
    /// The largest rowid of each table when the run began: rows at or below
    /// it are older than the run, so superseded rows are found by an index
    /// range on (partition, rowid) without looking at the run's own rows.
    max_rowid: BTreeMap<Table, i64>,
    rows: BTreeMap<Table, u64>,
}

struct Writer {
    conn: Connection,
    run: Option<ActiveRun>,
}

impl Writer {
    fn serve(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Command::Ping(reply) => {
                    let r = self
                        .conn
                        .query_row("SELECT count(*) FROM pipeline_runs", [], |_| Ok(()))
                        .map_err(|e| db_err("ping", e));
                    let _ = reply.send(r);
                }
                Command::Begin(run, reply) => {
                    let _ = reply.send(self.begin(run));
                }
                Command::Write {
                    run_id,
                    table,
                    mode,
                    batch,
                    reply,
                } => {
                    let _ = reply.send(self.write(&run_id, table, mode, &batch));
                }
                Command::Commit(c, reply) => {
                    let _ = reply.send(self.commit(c));
                    self.checkpoint();
                }
                Command::Abort(f, reply) => {
                    let _ = reply.send(self.abort(f));
                    self.checkpoint();
                }
                Command::OtherWriter(reply) => {
                    let _ = reply.send(Ok(self.other_writer()));
                }
                Command::DropPartition(table, partition, reply) => {
                    let _ = reply.send(self.drop_partition(table, &partition));
                    self.checkpoint();
                }
                Command::Close(reply) => {
                    let _ = reply.send(self.close());
                    return;
                }
            }
        }
        // Channel closed: an open transaction is rolled back when the connection drops.
    }

    fn active(&mut self, run_id: &str) -> Result<&mut ActiveRun> {
        match self.run.as_ref().map(|r| r.run_id.as_str()) {
            Some(open) if open == run_id => Ok(self.run.as_mut().expect("checked")),
            Some(open) => Err(Error::internal(format!(
                "run {run_id} is not open (run {open} is)"
            ))),
            None => Err(Error::input(format!("run {run_id} is not open"))),
        }
    }

    fn begin(&mut self, run: RunStart) -> Result<()> {
        if let Some(open) = &self.run {
            return Err(Error::internal(format!(
                "cannot begin run {}: run {} is still open",
                run.run_id, open.run_id
            )));
        }
        self.conn
            .execute(
                "INSERT INTO pipeline_runs (run_id, source, status, started_at, options, owner)
                 VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
                params![
                    run.run_id,
                    run.source,
                    now_text(),
                    run.options_json,
                    run.owner_json
                ],
            )
            .map_err(|e| db_err("record run start", e))?;
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| db_err("begin transaction", e))?;
        let mut max_rowid = BTreeMap::new();
        for t in Table::ALL {
            let m: i64 = self
                .conn
                .query_row(
                    &format!("SELECT COALESCE(max(rowid), 0) FROM {t}"),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| db_err("read table extent", e))?;
            max_rowid.insert(t, m);
            if m == 0 && t == Table::AggTradesWeekly {
                // A fresh load of rows that arrive in partition order: one
                // index build at commit (a sort of sorted keys) is much
                // cheaper than maintaining the index row by row. Raw trades
                // arrive in input order: sorting them at commit costs more
                // (measured) than maintaining their index while the other
                // core is still reading the input. Inside the run's
                // transaction, so an abort restores the index.
                self.conn
                    .execute_batch(&format!("DROP INDEX IF EXISTS {}", partition_index(t).0))
                    .map_err(|e| db_err("drop index for a fresh load", e))?;
            }
        }
        self.run = Some(ActiveRun {
            max_rowid,
            run_id: run.run_id,
            trade_dates: BTreeSet::new(),
            weeks: BTreeSet::new(),
            rejected_replace: true,
            rows: BTreeMap::new(),
        });
        Ok(())
    }

    fn write(
        &mut self,
        run_id: &str,
        table: Table,
        mode: WriteMode,
        batch: &RecordBatch,
    ) -> Result<u64> {
        self.active(run_id)?;
        check_batch(table, batch)?;
        let replace = mode != WriteMode::Append;
        let conn = &self.conn;
        let run = self.run.as_mut().expect("checked above");
        let n = batch.num_rows();
        match table {
            Table::Trades => {
                insert_trades(conn, run_id, batch, replace.then_some(&mut run.trade_dates))?
            }
            Table::TradesRejected => {
                run.rejected_replace &= replace;
                insert_rejected(conn, run_id, batch)?
            }
            Table::AggTradesWeekly => insert_agg(conn, batch, replace.then_some(&mut run.weeks))?,
        }
        *run.rows.entry(table).or_default() += n as u64;
        Ok(n as u64)
    }

    fn commit(&mut self, c: RunCommit) -> Result<BTreeMap<String, u64>> {
        self.active(&c.run_id)?;
        let run = self.run.take().expect("checked above");
        match self.finish_commit(&run, &c) {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // Leave nothing half-done behind: the transaction is undone,
                // and the run is recorded as failed by its commit (like the
                // other backends do).
                let _ = self.conn.execute_batch("ROLLBACK");
                let _ = record_end(
                    &self.conn,
                    &c.run_id,
                    "failed",
                    &c.stats,
                    &BTreeMap::new(),
                    Some((e.category().as_str(), &e.to_string())),
                    &c.quality_json,
                );
                Err(e)
            }
        }
    }

    fn finish_commit(&mut self, run: &ActiveRun, c: &RunCommit) -> Result<BTreeMap<String, u64>> {
        let started = Instant::now();
        let conn = &self.conn;
        for t in Table::ALL {
            conn.execute_batch(&partition_index(t).1)
                .map_err(|e| db_err(&format!("index {t}"), e))?;
        }
        let del = |table: Table, key: &dyn rusqlite::ToSql| -> Result<()> {
            let sql = format!(
                "DELETE FROM {table} WHERE {} = ?1 AND rowid <= ?2",
                table.partition_column()
            );
            conn.prepare_cached(&sql)
                .and_then(|mut st| st.execute(params![key, run.max_rowid[&table]]))
                .map_err(|e| db_err(&format!("replace partitions of {table}"), e))?;
            Ok(())
        };
        for d in &run.trade_dates {
            del(Table::Trades, &date_text(*d))?;
        }
        for w in &run.weeks {
            del(Table::AggTradesWeekly, &date_text(*w))?;
        }
        if run.rejected_replace {
            for f in &c.source_files {
                del(Table::TradesRejected, f)?;
            }
        }
        // Read back what the tables now hold of this run: its rows are the
        // ones above the extent at begin (rowids grow; deletes only touch
        // older rows), so this is exact and needs no scan.
        let mut rows = BTreeMap::new();
        for (table, staged) in &run.rows {
            let extent: i64 = conn
                .query_row(
                    &format!("SELECT COALESCE(max(rowid), 0) FROM {table}"),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| db_err(&format!("read back {table}"), e))?;
            let held = (extent - run.max_rowid[table]).max(0) as u64;
            if held != *staged {
                return Err(Error::quality(format!(
                    "reconciliation: {table} was sent {staged} rows but holds {held} of this run"
                )));
            }
            rows.insert(table.name().to_string(), held);
        }
        let mut stats = c.stats;
        stats.commit_ms = started.elapsed().as_millis() as u64;
        record_end(
            conn,
            &c.run_id,
            "succeeded",
            &stats,
            &rows,
            None,
            &c.quality_json,
        )?;
        conn.execute_batch("COMMIT")
            .map_err(|e| db_err("commit transaction", e))?;
        Ok(rows)
    }

    fn drop_partition(&mut self, table: Table, partition: &str) -> Result<u64> {
        if let Some(run) = &self.run {
            return Err(Error::backend(
                format!(
                    "cannot drop partition {partition} of {table} while run {} is open",
                    run.run_id
                ),
                true,
            ));
        }
        let sql = format!(
            "DELETE FROM {table} WHERE {} = ?1",
            table.partition_column()
        );
        self.conn
            .execute(&sql, [partition])
            .map(|n| n as u64)
            .map_err(|e| db_err(&format!("drop partition {partition} of {table}"), e))
    }

    /// Whether another connection holds the write lock: this one tries to
    /// take it without waiting. While this writer has a run open, it holds
    /// the lock itself.
    fn other_writer(&mut self) -> bool {
        if self.run.is_some() {
            return false;
        }
        let _ = self.conn.busy_timeout(std::time::Duration::ZERO);
        let taken = self.conn.execute_batch("BEGIN IMMEDIATE");
        let _ = self.conn.busy_timeout(BUSY_TIMEOUT);
        match taken {
            Ok(()) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                false
            }
            Err(_) => true,
        }
    }

    /// Copies committed pages from the WAL into the database file. Runs after
    /// the commit has been answered (automatic checkpoints are off on this
    /// connection), so readers of the new state do not wait for it.
    fn checkpoint(&mut self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
        }
    }

    /// Moves everything from the WAL into the database file, so the file
    /// alone holds the data (e.g. when it is copied or uploaded).
    fn close(&mut self) -> Result<()> {
        if let Some(run) = self.run.as_ref() {
            tracing::warn!(run_id = %run.run_id, "shutting down during a run: discarding it");
            let failure = RunFailure {
                run_id: run.run_id.clone(),
                category: ErrorCategory::Interrupted,
                message: "run aborted: the warehouse closed before its commit".into(),
                stats: RunStats::default(),
                quality_json: String::new(),
            };
            self.abort(failure)?;
        }
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(|e| db_err("checkpoint", e))
    }

    fn abort(&mut self, f: RunFailure) -> Result<()> {
        if self.run.as_ref().is_some_and(|r| r.run_id == f.run_id) {
            self.run = None;
            self.conn
                .execute_batch("ROLLBACK")
                .map_err(|e| db_err("roll back", e))?;
        }
        // The run may have failed before it began: record it either way.
        self.conn
            .execute(
                "INSERT OR IGNORE INTO pipeline_runs (run_id, source, status, started_at)
                 VALUES (?1, '', 'failed', ?2)",
                params![f.run_id, now_text()],
            )
            .map_err(|e| db_err("record failed run", e))?;
        record_end(
            &self.conn,
            &f.run_id,
            "failed",
            &f.stats,
            &BTreeMap::new(),
            Some((f.category.as_str(), &f.message)),
            &f.quality_json,
        )
    }
}

fn record_end(
    conn: &Connection,
    run_id: &str,
    status: &str,
    s: &RunStats,
    rows: &BTreeMap<String, u64>,
    error: Option<(&str, &str)>,
    quality: &str,
) -> Result<()> {
    let i = |v: u64| v as i64;
    conn.execute(
        "UPDATE pipeline_runs SET status = ?2, finished_at = ?3,
            rows_in = ?4, rows_valid = ?5, rows_rejected = ?6, rows_duplicate = ?7, agg_rows = ?8,
            plan_ms = ?9, extract_ms = ?10, transform_ms = ?11, load_ms = ?12, commit_ms = ?13,
            total_ms = ?14, rows_committed = ?15, error_category = ?16, error_message = ?17,
            quality = ?18
         WHERE run_id = ?1",
        params![
            run_id,
            status,
            now_text(),
            i(s.rows_in),
            i(s.rows_valid),
            i(s.rows_rejected),
            i(s.rows_duplicate),
            i(s.agg_rows),
            i(s.plan_ms),
            i(s.extract_ms),
            i(s.transform_ms),
            i(s.load_ms),
            i(s.commit_ms),
            i(s.total_ms),
            serde_json::to_string(rows).unwrap_or_default(),
            error.map(|e| e.0),
            error.map(|e| e.1),
            (!quality.is_empty()).then_some(quality),
        ],
    )
    .map_err(|e| db_err("record run end", e))?;
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` in UTC: sorts as text and SQLite's date
/// functions read it. Written by hand (one call per row): the date part comes
/// from the cache, the rest is fixed-width digits.
fn timestamp_text(nanos: i64, dates: &mut DateTexts, out: &mut String) {
    const NANOS_PER_DAY: i64 = 86_400_000_000_000;
    out.clear();
    out.push_str(dates.get(nanos.div_euclid(NANOS_PER_DAY) as i32));
    let in_day = nanos.rem_euclid(NANOS_PER_DAY);
    let (secs, frac) = (in_day / 1_000_000_000, in_day % 1_000_000_000);
    let _ = write!(
        out,
        " {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let digits = format!("{frac:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// Caches the text of dates: a batch holds few distinct days.
#[derive(Default)]
struct DateTexts(BTreeMap<i32, String>);

impl DateTexts {
    fn get(&mut self, d: i32) -> &str {
        self.0.entry(d).or_insert_with(|| date_text(d))
    }
}

fn insert_trades(
    conn: &Connection,
    run_id: &str,
    b: &RecordBatch,
    mut dates: Option<&mut BTreeSet<i32>>,
) -> Result<()> {
    let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
    let s = |i: usize| b.column(i).as_string::<i32>();
    let (user, ct, sym, side) = (s(1), s(2), s(3), s(4));
    let qty = b.column(5).as_primitive::<Decimal128Type>();
    let price = b.column(6).as_primitive::<Decimal128Type>();
    let day = b.column(7).as_primitive::<Date32Type>();
    let scale = decimal::SCALE;
    let mut st = conn
        .prepare_cached(
            "INSERT INTO trades (timestamp, user_id, client_type, symbol, side, quantity, price, trade_date, run_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(|e| db_err("prepare insert into trades", e))?;
    let mut texts = DateTexts::default();
    let mut ts_text = String::new();
    let mut last_day = None;
    for i in 0..b.num_rows() {
        timestamp_text(ts.value(i), &mut texts, &mut ts_text);
        let d = day.value(i);
        if last_day != Some(d) {
            last_day = Some(d);
            if let Some(ds) = dates.as_deref_mut() {
                ds.insert(d);
            }
        }
        // Bound one by one and stepped without rusqlite's per-call checks:
        // this loop runs once per raw trade.
        bind_all(
            &mut st,
            &[
                &ts_text.as_str(),
                &user.value(i),
                &ct.value(i),
                &sym.value(i),
                &side.value(i),
                &decimal::to_f64(qty.value(i), scale),
                &decimal::to_f64(price.value(i), scale),
                &texts.get(d),
                &run_id,
            ],
        )
        .and_then(|()| st.raw_execute())
        .map_err(|e| db_err("insert into trades", e))?;
    }
    Ok(())
}

/// Binds `values` to the statement's parameters 1..=n.
fn bind_all(st: &mut rusqlite::CachedStatement<'_>, values: &[&dyn ToSql]) -> rusqlite::Result<()> {
    for (k, v) in values.iter().enumerate() {
        st.raw_bind_parameter(k + 1, v)?;
    }
    Ok(())
}

fn insert_rejected(conn: &Connection, run_id: &str, b: &RecordBatch) -> Result<()> {
    let s = |i: usize| b.column(i).as_string::<i32>();
    let cols: Vec<_> = (0..7).map(s).collect();
    let reason = s(7);
    let file = s(8);
    let row = b.column(9).as_primitive::<UInt64Type>();
    let mut st = conn
        .prepare_cached(
            "INSERT INTO trades_rejected (timestamp, user_id, client_type, symbol, side, quantity, price,
                 reason, source_file, source_row, run_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .map_err(|e| db_err("prepare insert into trades_rejected", e))?;
    for i in 0..b.num_rows() {
        let v = |k: usize| (!cols[k].is_null(i)).then(|| cols[k].value(i));
        st.execute(params![
            v(0),
            v(1),
            v(2),
            v(3),
            v(4),
            v(5),
            v(6),
            reason.value(i),
            file.value(i),
            row.value(i) as i64,
            run_id
        ])
        .map_err(|e| db_err("insert into trades_rejected", e))?;
    }
    Ok(())
}

fn insert_agg(
    conn: &Connection,
    b: &RecordBatch,
    mut weeks: Option<&mut BTreeSet<i32>>,
) -> Result<()> {
    let week = b.column(0).as_primitive::<Date32Type>();
    let s = |i: usize| b.column(i).as_string::<i32>();
    let (ct, user, sym) = (s(1), s(2), s(3));
    let vol = b.column(4).as_primitive::<Decimal128Type>();
    let pnl = b.column(5).as_primitive::<Decimal128Type>();
    let count = b.column(6).as_primitive::<Int64Type>();
    let mut st = conn
        .prepare_cached(
            "INSERT INTO agg_trades_weekly (week_start_date, client_type, user_id, symbol,
                 total_volume, total_pnl, trade_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(|e| db_err("prepare insert into agg_trades_weekly", e))?;
    let mut texts = DateTexts::default();
    let mut last_week = None;
    for i in 0..b.num_rows() {
        let w = week.value(i);
        if last_week != Some(w) {
            last_week = Some(w);
            if let Some(ws) = weeks.as_deref_mut() {
                ws.insert(w);
            }
        }
        bind_all(
            &mut st,
            &[
                &texts.get(w),
                &ct.value(i),
                &user.value(i),
                &sym.value(i),
                &decimal::to_f64(vol.value(i), decimal::SCALE),
                &decimal::to_f64(pnl.value(i), PNL_SCALE),
                &count.value(i),
            ],
        )
        .and_then(|()| st.raw_execute())
        .map_err(|e| db_err("insert into agg_trades_weekly", e))?;
    }
    Ok(())
}

/// Rows per batch read back from a partition.
const READ_BATCH_ROWS: usize = 65_536;

fn conversion(i: usize, ty: rusqlite::types::Type, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, ty, what.into())
}

/// The decimal a stored REAL stands for, at `scale`.
fn exact(r: &rusqlite::Row<'_>, i: usize, scale: u32) -> rusqlite::Result<i128> {
    let v: f64 = r.get(i)?;
    decimal::from_f64(v, scale).map_err(|e| {
        conversion(
            i,
            rusqlite::types::Type::Real,
            format!("{v} is not a decimal: {e:?}"),
        )
    })
}

fn date(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<i32> {
    let t: String = r.get(i)?;
    parse_date(&t).ok_or_else(|| conversion(i, rusqlite::types::Type::Text, format!("date {t:?}")))
}

fn timestamp(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<i64> {
    let t: String = r.get(i)?;
    chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .and_then(|d| d.and_utc().timestamp_nanos_opt())
        .ok_or_else(|| conversion(i, rusqlite::types::Type::Text, format!("timestamp {t:?}")))
}

/// Reads one partition back in the table's Arrow schema.
fn read_partition(
    c: &Connection,
    table: Table,
    partition: &str,
) -> rusqlite::Result<Vec<RecordBatch>> {
    let columns: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut st = c.prepare(&format!(
        "SELECT {} FROM {table} WHERE {} = ?1 ORDER BY rowid",
        columns.join(", "),
        table.partition_column()
    ))?;
    let mut rows = st.query([partition])?;
    let mut out = vec![];
    loop {
        let mut builder = PartitionBuilder::new(table);
        let mut n = 0;
        while n < READ_BATCH_ROWS {
            let Some(r) = rows.next()? else { break };
            builder.push(r)?;
            n += 1;
        }
        if n == 0 {
            break;
        }
        out.push(
            builder
                .finish()
                .map_err(|e| conversion(0, rusqlite::types::Type::Null, e.to_string()))?,
        );
        if n < READ_BATCH_ROWS {
            break;
        }
    }
    Ok(out)
}

/// Column builders for one table's schema.
enum PartitionBuilder {
    Trades {
        ts: TimestampNanosecondBuilder,
        text: [StringBuilder; 4],
        qty: Decimal128Builder,
        price: Decimal128Builder,
        day: Date32Builder,
    },
    Rejected {
        text: Vec<StringBuilder>,
        row: UInt64Builder,
    },
    Agg {
        week: Date32Builder,
        text: [StringBuilder; 3],
        vol: Decimal128Builder,
        pnl: Decimal128Builder,
        count: Int64Builder,
    },
}

impl PartitionBuilder {
    fn new(table: Table) -> Self {
        match table {
            Table::Trades => Self::Trades {
                ts: TimestampNanosecondBuilder::new().with_timezone("UTC"),
                text: Default::default(),
                qty: Decimal128Builder::new().with_data_type(QUANTITY_TYPE),
                price: Decimal128Builder::new().with_data_type(QUANTITY_TYPE),
                day: Date32Builder::new(),
            },
            Table::TradesRejected => Self::Rejected {
                text: (0..9).map(|_| StringBuilder::new()).collect(),
                row: UInt64Builder::new(),
            },
            Table::AggTradesWeekly => Self::Agg {
                week: Date32Builder::new(),
                text: Default::default(),
                vol: Decimal128Builder::new().with_data_type(VOLUME_TYPE),
                pnl: Decimal128Builder::new().with_data_type(PNL_TYPE),
                count: Int64Builder::new(),
            },
        }
    }

    fn push(&mut self, r: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        match self {
            Self::Trades {
                ts,
                text,
                qty,
                price,
                day,
            } => {
                ts.append_value(timestamp(r, 0)?);
                for (k, b) in text.iter_mut().enumerate() {
                    b.append_value(r.get_ref(k + 1)?.as_str()?);
                }
                qty.append_value(exact(r, 5, decimal::SCALE)?);
                price.append_value(exact(r, 6, decimal::SCALE)?);
                day.append_value(date(r, 7)?);
            }
            Self::Rejected { text, row } => {
                for (k, b) in text.iter_mut().enumerate() {
                    b.append_option(r.get_ref(k)?.as_str_or_null()?);
                }
                row.append_value(r.get::<_, i64>(9)? as u64);
            }
            Self::Agg {
                week,
                text,
                vol,
                pnl,
                count,
            } => {
                week.append_value(date(r, 0)?);
                for (k, b) in text.iter_mut().enumerate() {
                    b.append_value(r.get_ref(k + 1)?.as_str()?);
                }
                vol.append_value(exact(r, 4, decimal::SCALE)?);
                pnl.append_value(exact(r, 5, PNL_SCALE)?);
                count.append_value(r.get(6)?);
            }
        }
        Ok(())
    }

    fn finish(self) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        let (table, cols): (Table, Vec<ArrayRef>) = match self {
            Self::Trades {
                mut ts,
                text,
                mut qty,
                mut price,
                mut day,
            } => {
                let mut cols: Vec<ArrayRef> = vec![Arc::new(ts.finish())];
                cols.extend(text.map(|mut b| Arc::new(b.finish()) as ArrayRef));
                cols.push(Arc::new(qty.finish()));
                cols.push(Arc::new(price.finish()));
                cols.push(Arc::new(day.finish()));
                (Table::Trades, cols)
            }
            Self::Rejected { text, mut row } => {
                let mut cols: Vec<ArrayRef> = text
                    .into_iter()
                    .map(|mut b| Arc::new(b.finish()) as ArrayRef)
                    .collect();
                cols.push(Arc::new(row.finish()));
                (Table::TradesRejected, cols)
            }
            Self::Agg {
                mut week,
                text,
                mut vol,
                mut pnl,
                mut count,
            } => {
                let mut cols: Vec<ArrayRef> = vec![Arc::new(week.finish())];
                cols.extend(text.map(|mut b| Arc::new(b.finish()) as ArrayRef));
                cols.push(Arc::new(vol.finish()));
                cols.push(Arc::new(pnl.finish()));
                cols.push(Arc::new(count.finish()));
                (Table::AggTradesWeekly, cols)
            }
        };
        RecordBatch::try_new(table.schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Date32Array, Decimal128Array, Int64Array, StringArray};
    use quarry_core::ErrorCategory;

    use super::*;

    fn agg_batch(week: i32, user: &str, volume: i128) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Date32Array::from(vec![week])),
            Arc::new(StringArray::from(vec!["bronze"])),
            Arc::new(StringArray::from(vec![user])),
            Arc::new(StringArray::from(vec!["X"])),
            Arc::new(Decimal128Array::from(vec![volume]).with_data_type(VOLUME_TYPE)),
            Arc::new(Decimal128Array::from(vec![volume * 10i128.pow(8)]).with_data_type(PNL_TYPE)),
            Arc::new(Int64Array::from(vec![1])),
        ];
        RecordBatch::try_new(Table::AggTradesWeekly.schema(), cols).unwrap()
    }

    fn start(id: &str) -> RunStart {
        RunStart {
            run_id: id.into(),
            source: "test".into(),
            options_json: "{}".into(),
            owner_json: String::new(),
        }
    }

    fn commit(id: &str) -> RunCommit {
        RunCommit {
            run_id: id.into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        }
    }

    /// The partition indexes, which a fresh load drops and rebuilds at commit.
    async fn partition_indexes(wh: &SqliteWarehouse) -> Vec<String> {
        wh.read(|c| {
            c.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%_by_%' AND name <> 'pipeline_runs_by_start' ORDER BY 1")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
        .unwrap()
    }

    async fn agg_rows(wh: &SqliteWarehouse) -> Vec<(String, String, f64)> {
        wh.read(|c| {
            c.prepare("SELECT week_start_date, user_id, total_volume FROM agg_trades_weekly ORDER BY 1, 2")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .await
        .unwrap()
    }

    #[test]
    fn timestamps_are_written_as_sortable_utc_text() {
        let mut dates = DateTexts::default();
        let mut out = String::new();
        for (nanos, want) in [
            (0, "1970-01-01 00:00:00"),
            (1_672_617_845_123_000_000, "2023-01-02 00:04:05.123"),
            (-1, "1969-12-31 23:59:59.999999999"),
            (1_704_153_599_000_000_000, "2024-01-01 23:59:59"),
        ] {
            timestamp_text(nanos, &mut dates, &mut out);
            assert_eq!(out, want);
        }
    }

    #[tokio::test]
    async fn readers_see_the_last_commit_until_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let wh = SqliteWarehouse::open(&dir.path().join("w.db")).unwrap();
        wh.check_connectivity().await.unwrap();
        let mode = WriteMode::ReplacePartitions;

        wh.begin_run(start("r1")).await.unwrap();
        wh.write(
            "r1",
            Table::AggTradesWeekly,
            mode,
            agg_batch(0, "a", 100_000_000),
        )
        .await
        .unwrap();
        assert!(
            agg_rows(&wh).await.is_empty(),
            "uncommitted rows are invisible"
        );
        let rows = wh.commit(commit("r1")).await.unwrap();
        assert_eq!(rows.get("agg_trades_weekly"), Some(&1));
        assert_eq!(
            agg_rows(&wh).await,
            [("1970-01-01".into(), "a".into(), 1.0)]
        );

        // A second run replaces week 0 and adds week 7; readers see the old state meanwhile.
        wh.begin_run(start("r2")).await.unwrap();
        wh.write(
            "r2",
            Table::AggTradesWeekly,
            mode,
            agg_batch(0, "b", 250_000_000),
        )
        .await
        .unwrap();
        wh.write("r2", Table::AggTradesWeekly, mode, agg_batch(7, "c", 1))
            .await
            .unwrap();
        assert_eq!(agg_rows(&wh).await.len(), 1);
        wh.commit(commit("r2")).await.unwrap();
        assert_eq!(
            agg_rows(&wh).await,
            [
                ("1970-01-01".into(), "b".into(), 2.5),
                ("1970-01-08".into(), "c".into(), 0.00000001)
            ]
        );
    }

    #[tokio::test]
    async fn abort_leaves_nothing_and_records_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let wh = SqliteWarehouse::open(&dir.path().join("w.db")).unwrap();
        wh.begin_run(start("r1")).await.unwrap();
        wh.write(
            "r1",
            Table::AggTradesWeekly,
            WriteMode::ReplacePartitions,
            agg_batch(0, "a", 1),
        )
        .await
        .unwrap();
        // One run at a time per writer.
        assert!(wh.begin_run(start("r2")).await.is_err());
        wh.abort(RunFailure {
            run_id: "r1".into(),
            category: ErrorCategory::Input,
            message: "bad file".into(),
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap();
        assert!(agg_rows(&wh).await.is_empty());
        assert_eq!(
            partition_indexes(&wh).await.len(),
            3,
            "the abort restored the indexes"
        );
        let run = wh.get_run("r1").await.unwrap().unwrap();
        assert_eq!(
            (run.status.as_str(), run.error_category.as_str()),
            ("failed", "input")
        );
        assert_eq!(run.error_message, "bad file");
        // Writing to a run that is not open is refused.
        assert!(
            wh.write(
                "r1",
                Table::AggTradesWeekly,
                WriteMode::ReplacePartitions,
                agg_batch(0, "a", 1)
            )
            .await
            .is_err()
        );
        // A schema that does not match the table is refused.
        wh.begin_run(start("r3")).await.unwrap();
        let e = wh
            .write(
                "r3",
                Table::Trades,
                WriteMode::ReplacePartitions,
                agg_batch(0, "a", 1),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }
}
