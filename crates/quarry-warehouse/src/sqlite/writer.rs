//! The one writer: a thread that owns the read-write connection and runs
//! the commands of the backend in order. A run is one write transaction
//! from `Begin` to `Commit` or `Abort`; the commit replaces the covered
//! partitions, recomputes the weeks the [`WeekPlan`] names with the exact
//! aggregates of `exact.rs`, and records the run's days.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use quarry_core::dates::{date_text, parse_date, week_start};
use quarry_core::decimal::{PNL_SCALE, SCALE};
use quarry_core::{Error, ErrorCategory, Result, Table};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::encode::Staged;
use super::schema::{BUSY_TIMEOUT, RUN_COLUMNS, db_err, partition_index, run_record};
use crate::weeks::{LoadedDay, WeekPlan, WeekState};
use crate::{RunCommit, RunFailure, RunRecord, RunStart, RunStats, WriteMode};

/// What the backend asks of its writer thread; each carries its reply.
pub(super) enum Command {
    Ping(oneshot::Sender<Result<()>>),
    Begin(RunStart, oneshot::Sender<Result<()>>),
    /// Answered once the rows are inserted; the caller may have moved on
    /// (see `SqliteWarehouse::write`), so a failure is also kept for the
    /// run's commit.
    Write {
        run_id: String,
        mode: WriteMode,
        rows: Staged,
        reply: oneshot::Sender<Result<u64>>,
    },
    Commit(RunCommit, oneshot::Sender<Result<BTreeMap<String, u64>>>),
    Abort(RunFailure, oneshot::Sender<Result<()>>),
    DropPartition(Table, String, oneshot::Sender<Result<u64>>),
    /// Whether another connection holds the database's write lock.
    OtherWriter(oneshot::Sender<Result<bool>>),
    Close(oneshot::Sender<Result<()>>),
}

/// What the open run has written so far.
struct ActiveRun {
    /// Its record, written again at the end.
    record: RunRecord,
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
    /// The first write that failed: the commit fails with it, and later
    /// writes are refused.
    failed: Option<Error>,
}

pub(super) struct Writer {
    conn: Connection,
    run: Option<ActiveRun>,
}

impl Writer {
    pub fn new(conn: Connection) -> Self {
        Self { conn, run: None }
    }

    pub fn serve(mut self, mut rx: mpsc::Receiver<Command>) {
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
                    mode,
                    rows,
                    reply,
                } => {
                    let _ = reply.send(self.write(&run_id, mode, &rows));
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
        match self.run.as_ref().map(|r| r.record.run_id.as_str()) {
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
                run.run_id, open.record.run_id
            )));
        }
        let record = RunRecord::begun(run);
        self.conn
            .execute(
                "INSERT INTO pipeline_runs (run_id, source, status, started_at, options, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    record.run_id,
                    record.source,
                    record.status.as_str(),
                    record.started_at,
                    record.options_json,
                    record.owner_json
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
            if m == 0 {
                // A fresh load: one index build at commit (a sort of the
                // keys) costs about a third of maintaining the index row by
                // row (benches/sqlite_load.rs: 10M trades, 10.8 s against
                // 29 s), and the writer is the load's bottleneck. Inside
                // the run's transaction, so an abort restores the index.
                self.conn
                    .execute_batch(&format!("DROP INDEX IF EXISTS {}", partition_index(t).0))
                    .map_err(|e| db_err("drop index for a fresh load", e))?;
            }
        }
        self.run = Some(ActiveRun {
            max_rowid,
            record,
            trade_dates: BTreeSet::new(),
            weeks: BTreeSet::new(),
            rejected_replace: true,
            rows: BTreeMap::new(),
            failed: None,
        });
        Ok(())
    }

    fn write(&mut self, run_id: &str, mode: WriteMode, rows: &Staged) -> Result<u64> {
        self.active(run_id)?;
        let conn = &self.conn;
        let run = self.run.as_mut().expect("checked above");
        if let Some(failed) = &run.failed {
            return Err(
                failed.with_message(format!("run {run_id}: an earlier write failed: {failed}"))
            );
        }
        let table = rows.table();
        let replace = mode != WriteMode::Append;
        let partitions = match table {
            Table::Trades => replace.then_some(&mut run.trade_dates),
            Table::TradesRejected => {
                run.rejected_replace &= replace;
                None
            }
            Table::AggTradesWeekly => replace.then_some(&mut run.weeks),
        };
        if let Err(e) = rows.insert(conn, run_id, partitions) {
            run.failed = Some(e.with_message(format!("{table}: {e}")));
            return Err(e);
        }
        let n = rows.num_rows() as u64;
        *run.rows.entry(table).or_default() += n;
        Ok(n)
    }

    fn commit(&mut self, c: RunCommit) -> Result<BTreeMap<String, u64>> {
        self.active(&c.run_id)?;
        let mut run = self.run.take().expect("checked above");
        match self.finish_commit(&mut run, &c) {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // Leave nothing half-done behind: the transaction is undone,
                // and the run is recorded as failed by its commit (like the
                // other backends do).
                let _ = self.conn.execute_batch("ROLLBACK");
                run.record.commit_failed(&c, &e);
                let _ = record_end(&self.conn, &run.record);
                Err(e)
            }
        }
    }

    fn finish_commit(
        &mut self,
        run: &mut ActiveRun,
        c: &RunCommit,
    ) -> Result<BTreeMap<String, u64>> {
        if let Some(failed) = &run.failed {
            return Err(failed.with_message(format!(
                "run {}: a write failed, nothing is committed: {failed}",
                c.run_id
            )));
        }
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
        // What the warehouse holds of the run's weeks decides which weeks
        // are recomputed: read before anything is replaced.
        let (days, weeks) = WeekPlan::covered(c, &run.weeks);
        let state = week_state(conn, &weeks, &run.max_rowid)?;
        let plan = WeekPlan::new(c, days, weeks, &state)?;
        for d in &run.trade_dates {
            del(Table::Trades, &date_text(*d))?;
        }
        for w in plan.swapped_weeks() {
            del(Table::AggTradesWeekly, &date_text(w))?;
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
        recompute_weeks(conn, &plan)?;
        record_days(conn, &plan, &c.run_id)?;
        let mut commit = c.clone();
        commit.stats.commit_ms = started.elapsed().as_millis() as u64;
        run.record.succeeded(&commit, &rows);
        record_end(conn, &run.record)?;
        conn.execute_batch("COMMIT")
            .map_err(|e| db_err("commit transaction", e))?;
        Ok(rows)
    }

    fn drop_partition(&mut self, table: Table, partition: &str) -> Result<u64> {
        if let Some(run) = &self.run {
            return Err(Error::backend(
                format!(
                    "cannot drop partition {partition} of {table} while run {} is open",
                    run.record.run_id
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
            tracing::warn!(run_id = %run.record.run_id, "shutting down during a run: discarding it");
            let failure = RunFailure {
                run_id: run.record.run_id.clone(),
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
        let open = self.run.take_if(|r| r.record.run_id == f.run_id);
        let mut record = match open {
            Some(run) => {
                self.conn
                    .execute_batch("ROLLBACK")
                    .map_err(|e| db_err("roll back", e))?;
                run.record
            }
            // The run may have failed before it began, or be left by a dead
            // process: it is recorded either way.
            None => {
                let recorded = self
                    .conn
                    .query_row(
                        &format!("SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE run_id = ?1"),
                        [&f.run_id],
                        run_record,
                    )
                    .optional()
                    .map_err(|e| db_err("read run record", e))?;
                let record = RunRecord::not_open(&f.run_id, recorded);
                self.conn
                    .execute(
                        "INSERT OR IGNORE INTO pipeline_runs (run_id, source, status, started_at)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![
                            record.run_id,
                            record.source,
                            record.status.as_str(),
                            record.started_at
                        ],
                    )
                    .map_err(|e| db_err("record failed run", e))?;
                record
            }
        };
        record.failed(f);
        record_end(&self.conn, &record)
    }
}

/// What `loaded_days`, `trades` and `agg_trades_weekly` hold of `weeks`
/// as committed (rows at or below the run's starting extent).
fn week_state(
    conn: &Connection,
    weeks: &BTreeSet<i32>,
    max_rowid: &BTreeMap<Table, i64>,
) -> Result<WeekState> {
    let err = |e| db_err("read the days of the run's weeks", e);
    let mut state = WeekState::default();
    let mut loaded = conn
        .prepare_cached("SELECT trade_date, raw_trades FROM loaded_days WHERE week_start_date = ?1")
        .map_err(err)?;
    let holds = |table: Table, key: &str| -> Result<bool> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {} = ?1 AND rowid <= ?2)",
            table.partition_column()
        );
        conn.prepare_cached(&sql)
            .and_then(|mut st| st.query_row(params![key, max_rowid[&table]], |r| r.get(0)))
            .map_err(err)
    };
    for &week in weeks {
        let rows = loaded
            .query_map([date_text(week)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(err)?;
        if rows.is_empty() {
            continue;
        }
        for (text, raw_trades) in rows {
            let day = parse_date(&text)
                .ok_or_else(|| Error::internal(format!("loaded_days holds the date {text:?}")))?;
            if holds(Table::Trades, &text)? {
                state.hot_days.insert(day);
            }
            state.loaded.push(LoadedDay { day, raw_trades });
        }
        if holds(Table::AggTradesWeekly, &date_text(week))? {
            state.hot_weeks.insert(week);
        }
    }
    Ok(state)
}

/// Replaces each week of `plan.recompute` by the exact fold of the trades
/// of its days (the aggregates of `exact.rs`), after the run's days were
/// replaced.
fn recompute_weeks(conn: &Connection, plan: &WeekPlan) -> Result<()> {
    let err = |e| db_err("recompute the weekly aggregate", e);
    for (week, days) in &plan.recompute {
        let week = date_text(*week);
        conn.prepare_cached("DELETE FROM agg_trades_weekly WHERE week_start_date = ?1")
            .and_then(|mut st| st.execute([&week]))
            .map_err(err)?;
        let days: Vec<String> = days.iter().map(|d| date_text(*d)).collect();
        let sql = format!(
            "INSERT INTO agg_trades_weekly (week_start_date, client_type, user_id, symbol,
                 total_volume, total_pnl, trade_count, total_volume_exact, total_pnl_exact)
             SELECT ?1, client_type, user_id, symbol, quarry_real(v, {SCALE}), quarry_real(p, {PNL_SCALE}),
                    n, quarry_exact(v, {SCALE}), quarry_exact(p, {PNL_SCALE})
             FROM (SELECT client_type, user_id, symbol,
                          quarry_volume(quantity, quantity_units) AS v,
                          quarry_pnl(side, quantity, quantity_units, price, price_units) AS p,
                          count(*) AS n
                   FROM trades WHERE trade_date IN ({})
                   GROUP BY client_type, user_id, symbol)",
            vec!["?"; days.len()].join(", ")
        );
        let mut st = conn.prepare(&sql).map_err(err)?;
        st.raw_bind_parameter(1, &week).map_err(err)?;
        for (k, d) in days.iter().enumerate() {
            st.raw_bind_parameter(k + 2, d).map_err(err)?;
        }
        st.raw_execute().map_err(err)?;
    }
    Ok(())
}

/// Records the run's days in `loaded_days`.
fn record_days(conn: &Connection, plan: &WeekPlan, run_id: &str) -> Result<()> {
    let mut st = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO loaded_days (trade_date, week_start_date, raw_trades, run_id)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(|e| db_err("record the run's days", e))?;
    for &day in &plan.run_days {
        st.execute(params![
            date_text(day),
            date_text(week_start(day)),
            plan.raw_trades,
            run_id
        ])
        .map_err(|e| db_err("record the run's days", e))?;
    }
    Ok(())
}

/// Writes the end of a run's record: status, counters, outcome.
fn record_end(conn: &Connection, r: &RunRecord) -> Result<()> {
    let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10] = r.stats.counters().map(|v| v as i64);
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    conn.execute(
        "UPDATE pipeline_runs SET status = ?2, finished_at = ?3,
            rows_in = ?4, rows_valid = ?5, rows_rejected = ?6, rows_duplicate = ?7, agg_rows = ?8,
            plan_ms = ?9, extract_ms = ?10, transform_ms = ?11, load_ms = ?12, commit_ms = ?13,
            total_ms = ?14, rows_committed = ?15, error_category = ?16, error_message = ?17,
            quality = ?18
         WHERE run_id = ?1",
        params![
            r.run_id,
            r.status.as_str(),
            r.finished_at,
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
            c8,
            c9,
            c10,
            r.rows_committed_json(),
            r.error_category.map(|c| c.as_str()),
            text(&r.error_message),
            text(&r.quality_json),
        ],
    )
    .map_err(|e| db_err("record run end", e))?;
    Ok(())
}
