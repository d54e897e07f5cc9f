//! The embedded SQLite backend.
//!
//! One writer connection on its own thread, in WAL mode so readers keep
//! seeing the last committed state during a run. A run is ONE write
//! transaction: rows are inserted, tagged with the run id, straight into the
//! final tables (no staging copy of big tables), and the commit deletes the
//! superseded rows of the covered partitions in the same transaction.
//! Decimals are stored as the REAL nearest to the exact value (SQLite has no
//! decimal type); report sums are recomputed exactly from those values.
//!
//! - `schema.rs`: tables, indexes, the check of an existing database;
//! - `writer.rs`: the writer thread and a run's transaction;
//! - `encode.rs` and `read.rs`: rows in and out.

mod encode;
mod exact;
mod read;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use quarry_core::decimal::{self, PNL_SCALE};
use quarry_core::{Error, Result, RunStatus, Table};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::{
    PartitionInfo, RunCommit, RunFailure, RunRecord, RunStart, TopUser, TopUsersQuery, Warehouse,
    WeeklyTotal, WriteMode, check_batch, rank_top_users,
};
use encode::Staged;
use read::{exact_sum, read_partition};
use schema::{
    BACKFILL_DAYS_SQL, BUSY_TIMEOUT, RUN_COLUMNS, SCHEMA_SQL, check_foreign, db_err,
    partition_index, run_record,
};
use writer::{Command, Writer};

/// The writer's answer to one write: the rows inserted.
type WriteAnswer = oneshot::Receiver<Result<u64>>;

pub struct SqliteWarehouse {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    /// Per run and table, the answer of the write still being inserted
    /// (none after the stream's first write, which is awaited).
    in_flight: Mutex<HashMap<(String, Table), Option<WriteAnswer>>>,
}

impl SqliteWarehouse {
    /// Opens (creating if needed) the database and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| db_err(&format!("cannot open database {}", path.display()), e))?;
        // A database of someone else's is refused before the pragmas below
        // (WAL mode rewrites the file header) or any table is created.
        let upgrade = check_foreign(&conn, path)?;
        conn.execute_batch(
            // page_size applies when the file is created: bigger pages mean
            // fewer page writes for bulk loads.
            // The commit's index builds sort on a second thread (SQLite
            // starts none when temporary files are kept in memory), and
            // their sorted runs spill to temporary files, not to memory.
            "PRAGMA page_size = 16384;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA temp_store = FILE;
             PRAGMA threads = 2;
             PRAGMA cache_size = -65536;
             PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(|e| db_err(&format!("cannot configure database {}", path.display()), e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db_err("busy_timeout", e))?;
        // A new database's tables, or an older one's new columns and loaded
        // days: all or nothing. An up-to-date database is left alone (no
        // write lock: opening it during another process's run does not wait).
        let sql = if upgrade.columns.is_empty() && !upgrade.backfill_days {
            SCHEMA_SQL.to_string()
        } else {
            let mut sql = format!("BEGIN IMMEDIATE;{SCHEMA_SQL}");
            for (table, column, ty) in upgrade.columns {
                sql += &format!("ALTER TABLE {table} ADD COLUMN {column} {ty};");
            }
            if upgrade.backfill_days {
                sql += BACKFILL_DAYS_SQL;
            }
            sql + "COMMIT;"
        };
        conn.execute_batch(&sql)
            .map_err(|e| db_err(&format!("cannot create tables in {}", path.display()), e))?;
        exact::register(&conn).map_err(|e| db_err("register the exact aggregates", e))?;
        for t in Table::ALL {
            conn.execute_batch(&partition_index(t).1)
                .map_err(|e| db_err(&format!("cannot create indexes in {}", path.display()), e))?;
        }
        let (tx, rx) = mpsc::channel(16);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || Writer::new(conn).serve(rx))
            .map_err(|e| {
                Error::internal(format!("cannot start the SQLite writer thread: {e}"))
                    .with_source(e)
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            commands: tx,
            in_flight: Mutex::default(),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| dropped())?
    }

    fn keep_in_flight(&self, key: (String, Table), reply: Option<WriteAnswer>) {
        self.in_flight
            .lock()
            .expect("in-flight writes")
            .insert(key, reply);
    }

    /// The writes of a run that ends: the writer runs commands in order, so
    /// its commit or abort sees them all (a failed one fails the commit).
    fn forget_writes(&self, run_id: &str) {
        self.in_flight
            .lock()
            .expect("in-flight writes")
            .retain(|(run, _), _| run != run_id);
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
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| db_err("busy_timeout", e))?;
            f(&conn).map_err(|e| db_err("query", e))
        })
        .await
        .map_err(|e| Error::internal(format!("SQLite reader panicked: {e}")).with_source(e))?
    }
}

fn stopped() -> Error {
    Error::internal("the SQLite writer thread has stopped")
}

fn dropped() -> Error {
    Error::internal("the SQLite writer thread dropped a request")
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
                "SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE status = ?1 ORDER BY started_at"
            ))?;
            st.query_map([RunStatus::Running.as_str()], run_record)?
                .collect()
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

    /// The batch's values are built here, on a blocking task, while the
    /// writer thread inserts the stream's previous batch: one write per run
    /// and table stays in flight, and this call answers once the write
    /// before it is done (its failure is returned here). The last write's
    /// failure is returned by the run's commit.
    async fn write(
        &self,
        run_id: &str,
        table: Table,
        mode: WriteMode,
        batch: RecordBatch,
    ) -> Result<u64> {
        check_batch(table, &batch)?;
        let rows = batch.num_rows() as u64;
        let staged = tokio::task::spawn_blocking(move || Staged::encode(table, batch))
            .await
            .map_err(|e| Error::internal(format!("encoding a {table} batch panicked: {e}")))?;
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Write {
                run_id: run_id.to_string(),
                mode,
                rows: staged,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        let key = (run_id.to_string(), table);
        let before = self
            .in_flight
            .lock()
            .expect("in-flight writes")
            .remove(&key);
        match before {
            // The first write of a stream is awaited itself: a run that is
            // not open fails the stream at once.
            None => {
                done.await.map_err(|_| dropped())??;
                self.keep_in_flight(key, None);
            }
            Some(before) => {
                self.keep_in_flight(key, Some(done));
                if let Some(before) = before {
                    before.await.map_err(|_| dropped())??;
                }
            }
        }
        Ok(rows)
    }

    async fn commit(&self, commit: RunCommit) -> Result<BTreeMap<String, u64>> {
        self.forget_writes(&commit.run_id);
        self.call(|r| Command::Commit(commit, r)).await
    }

    async fn abort(&self, failure: RunFailure) -> Result<()> {
        self.forget_writes(&failure.run_id);
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
                "SELECT week_start_date, client_type, total_volume, total_pnl, trade_count,
                        total_volume_exact, total_pnl_exact
                 FROM agg_trades_weekly",
            )?;
            let mut rows = st.query([])?;
            // Summed exactly like top_users.
            let mut totals: BTreeMap<(String, String), (i128, i128, u64)> = BTreeMap::new();
            while let Some(r) = rows.next()? {
                let key = (r.get(0)?, r.get(1)?);
                let vol = exact_sum(r, 2, 5, PNL_SCALE)?;
                let pnl = exact_sum(r, 3, 6, PNL_SCALE)?;
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
                let column = q.metric.column();
                let mut st = c.prepare(&format!(
                    "SELECT user_id, {column}, {column}_exact FROM agg_trades_weekly WHERE client_type = ?1"
                ))?;
                let mut rows = st.query([&q.client_type])?;
                // Summing REALs drifts; each stored value is read back as the
                // decimal it stands for (its exact column where it has one)
                // and summed exactly.
                let mut totals: HashMap<String, i128> = HashMap::new();
                while let Some(r) = rows.next()? {
                    let value = exact_sum(r, 1, 2, PNL_SCALE)?;
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
