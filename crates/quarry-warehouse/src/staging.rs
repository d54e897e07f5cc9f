//! One run lifecycle for the backends that stage a run in tables of their
//! own (ClickHouse, BigQuery, Snowflake), written once.
//!
//! The protocol, whatever the backend:
//! - **begin**: discard the leftovers of a run with the same id, create the
//!   run's staging tables (`<table>…_<tag>`), record the run as `running`;
//! - **write**: each batch is checked against its table's schema, its
//!   partitions noted, and handed to the backend, which stages it (at once,
//!   or gathered into bigger loads or files);
//! - **commit**: the backend sends what it still gathers, then every staging
//!   table's row count is read back and must equal the rows sent (else the
//!   commit is refused, category quality); what the warehouse holds of the
//!   run's weeks is read and the [`WeekPlan`] decided (which weeks are
//!   recomputed from `trades`, or the refusal); the backend then replaces the
//!   covered partitions with the staged rows, recomputes the planned weeks,
//!   records the run's days in `loaded_days` and writes the succeeded record
//!   — in one transaction where it has them; the staging tables are dropped.
//!   A commit that fails drops them too and records the run as failed with
//!   the commit's error;
//! - **abort**: the staging tables are dropped (also for a run that is not
//!   open here: refused before it began, or left by a dead process) and the
//!   run is recorded as failed;
//! - **heartbeat**: while a run stages, its record is written again with a
//!   fresh heartbeat in its owner.
//!
//! All of it runs under one lock per warehouse, so writes, the commit, the
//! abort and heartbeats of a run never interleave.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Date32Type;
use async_trait::async_trait;
use quarry_core::dates::{date_text, parse_date};
use quarry_core::{Error, ErrorCategory, Result, RunStatus, Table};
use tokio::sync::Mutex;

use crate::weeks::{WeekPlan, WeekState};
use crate::{
    PartitionInfo, RunCommit, RunFailure, RunRecord, RunStart, RunStats, TopUser, TopUsersQuery,
    Warehouse, WeeklyTotal, WriteMode, check_batch,
};

/// The suffix of a run's staging tables: the run id's letters and digits.
pub(crate) fn stage_tag(run_id: &str) -> Result<String> {
    let tag: String = run_id.chars().filter(char::is_ascii_alphanumeric).collect();
    if tag.is_empty() || tag.len() > 64 {
        return Err(Error::input(format!(
            "run id {run_id:?} cannot name a staging table"
        )));
    }
    Ok(tag)
}

/// The partitions (days, weeks) the rows of `batch` fall in; the quarantine
/// is replaced by source file at commit, not by partition.
pub(crate) fn partitions(table: Table, batch: &RecordBatch) -> BTreeSet<String> {
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

/// What a run has sent, and what its commit replaces.
#[derive(Debug)]
pub(crate) struct Staged {
    /// Rows sent per table.
    pub rows: BTreeMap<Table, u64>,
    /// Partitions (as text) each table's replacing writes fall in.
    pub partitions: BTreeMap<Table, BTreeSet<String>>,
    /// Whether the run replaces the rejected rows of its source files (no
    /// rejected rows were appended).
    rejected_replace: bool,
}

impl Default for Staged {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            partitions: BTreeMap::new(),
            rejected_replace: true,
        }
    }
}

impl Staged {
    /// Counts a batch of `rows` sent to `table` whose rows fall in `parts`.
    pub fn add(
        &mut self,
        table: Table,
        mode: WriteMode,
        rows: u64,
        parts: impl IntoIterator<Item = String>,
    ) {
        *self.rows.entry(table).or_default() += rows;
        let replace = mode == WriteMode::Replace;
        if table == Table::TradesRejected {
            self.rejected_replace &= replace;
        } else if replace {
            self.partitions.entry(table).or_default().extend(parts);
        }
    }

    /// The date partitions (days since the epoch) the run replaces in `table`.
    pub fn days(&self, table: Table) -> BTreeSet<i32> {
        self.partitions
            .get(&table)
            .into_iter()
            .flatten()
            .filter_map(|p| parse_date(p))
            .collect()
    }

    /// At commit: the run's source files join the partitions it replaces
    /// (their rows in `trades_rejected`), unless rejected rows were appended.
    pub fn cover_sources(&mut self, source_files: &[String]) {
        if self.rejected_replace {
            self.partitions
                .entry(Table::TradesRejected)
                .or_default()
                .extend(source_files.iter().cloned());
        }
    }
}

/// An open run of a staging backend.
pub(crate) struct StagedRun<P> {
    /// Its record, written again at the end.
    pub record: RunRecord,
    /// The staging tables' name suffix.
    pub tag: String,
    pub staged: Staged,
    /// What the backend keeps of the run besides (gathered rows, files).
    pub pending: P,
}

/// The primitives a staging backend supplies; [`StagedRuns`] drives them.
#[async_trait]
pub(crate) trait StagingBackend: Send + Sync + 'static {
    /// The backend's own state of an open run.
    type Pending: Send + 'static;
    /// A batch turned into what the backend stages (done before the run's
    /// lock is taken, so encoding overlaps another table's staging).
    type Encoded: Send;

    fn pending(&self, tag: &str) -> Self::Pending;

    async fn create_stages(&self, tag: &str) -> Result<()>;

    /// Drops a run's staging tables if they exist.
    async fn drop_stages(&self, tag: &str) -> Result<()>;

    fn encode(&self, table: Table, batch: &RecordBatch, run_id: &str) -> Result<Self::Encoded>;

    /// Stages one encoded batch of the open run `run`.
    async fn stage(
        &self,
        run: &mut StagedRun<Self::Pending>,
        table: Table,
        encoded: Self::Encoded,
    ) -> Result<()>;

    /// Sends whatever the run still gathers, before the read-back.
    async fn flush(&self, run: &mut StagedRun<Self::Pending>) -> Result<()>;

    /// The rows `table`'s staging table holds.
    async fn count_staged(&self, tag: &str, table: Table) -> Result<u64>;

    /// What the warehouse holds of `weeks` (committed state).
    async fn week_state(&self, weeks: &BTreeSet<i32>) -> Result<WeekState>;

    /// Replaces the covered partitions (`run.staged.partitions`) of `trades`
    /// and `trades_rejected` with the run's staged rows, and of
    /// `agg_trades_weekly` for `plan.swapped_weeks()`; replaces each week of
    /// `plan.recompute` by the exact aggregate of the trades of its days
    /// (the run's days as the run staged them); records `plan.run_days` in
    /// `loaded_days`; writes `record` (succeeded) — in one transaction
    /// where the backend has them.
    async fn swap(
        &self,
        run: &mut StagedRun<Self::Pending>,
        plan: &WeekPlan,
        record: &RunRecord,
    ) -> Result<()>;

    /// Writes a run's record (replacing an earlier version).
    async fn record(&self, record: &RunRecord) -> Result<()>;

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>>;

    /// For messages: the backend's name.
    fn name(&self) -> &'static str;
}

/// The staged-run lifecycle over a backend `B` (see the module docs).
pub(crate) struct StagedRuns<B: StagingBackend> {
    backend: B,
    run: Mutex<Option<StagedRun<B::Pending>>>,
}

fn not_open(run_id: &str) -> Error {
    Error::input(format!("run {run_id} is not open"))
}

impl<B: StagingBackend> StagedRuns<B> {
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            run: Mutex::new(None),
        }
    }

    /// Takes the open run `run_id` out of `slot`.
    fn take(
        slot: &mut Option<StagedRun<B::Pending>>,
        run_id: &str,
    ) -> Result<StagedRun<B::Pending>> {
        match slot.as_ref().map(|r| r.record.run_id.as_str()) {
            Some(open) if open == run_id => Ok(slot.take().expect("checked")),
            Some(open) => Err(Error::internal(format!(
                "run {run_id} is not open (run {open} is)"
            ))),
            None => Err(not_open(run_id)),
        }
    }

    async fn finish_commit(
        &self,
        run: &mut StagedRun<B::Pending>,
        commit: &RunCommit,
    ) -> Result<BTreeMap<String, u64>> {
        let started = std::time::Instant::now();
        self.backend.flush(run).await?;
        // Read back what each staging table holds before anything is replaced.
        let mut rows = BTreeMap::new();
        for (table, staged) in &run.staged.rows {
            let held = self.backend.count_staged(&run.tag, *table).await?;
            if held != *staged {
                return Err(Error::quality(format!(
                    "reconciliation: {table} was sent {staged} rows but its staging table holds {held}"
                )));
            }
            rows.insert(table.name().to_string(), held);
        }
        run.staged.cover_sources(&commit.source_files);
        let (days, weeks) = WeekPlan::covered(commit, &run.staged.days(Table::AggTradesWeekly));
        let state = self.backend.week_state(&weeks).await?;
        let plan = WeekPlan::new(commit, days, weeks, &state)?;
        // The commit's time as SQLite records it: up to the swap that
        // writes the record.
        let mut commit = commit.clone();
        commit.stats.commit_ms = started.elapsed().as_millis() as u64;
        let mut record = run.record.clone();
        record.succeeded(&commit, &rows);
        self.backend.swap(run, &plan, &record).await?;
        run.record = record;
        Ok(rows)
    }
}

/// A staging backend's answers outside the run lifecycle; with them,
/// [`StagedRuns`] is a whole [`Warehouse`].
#[async_trait]
pub(crate) trait StagedWarehouse: StagingBackend {
    /// Reaches the backend once, then creates what is missing.
    async fn check_and_create(&self) -> Result<()>;

    /// The runs `condition` (an SQL boolean expression over
    /// `pipeline_runs`) selects, newest first, at most `limit`.
    async fn runs_where(
        &self,
        what: &str,
        condition: &str,
        limit: Option<u32>,
    ) -> Result<Vec<RunRecord>>;

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>>;

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>>;

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>>;

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>>;

    /// Deletes one partition at once and returns its rows (the driver makes
    /// sure no run is open).
    async fn delete_partition(&self, table: Table, partition: &str) -> Result<u64>;
}

#[async_trait]
impl<B: StagedWarehouse> Warehouse for StagedRuns<B> {
    fn kind(&self) -> &'static str {
        self.backend.name()
    }

    async fn check_connectivity(&self) -> Result<()> {
        self.backend.check_and_create().await
    }

    async fn begin_run(&self, start: RunStart) -> Result<()> {
        let tag = stage_tag(&start.run_id)?;
        let mut guard = self.run.lock().await;
        if let Some(open) = guard.as_ref() {
            return Err(Error::internal(format!(
                "cannot begin run {}: run {} is still open",
                start.run_id, open.record.run_id
            )));
        }
        // Leftovers of a crashed run with the same id are discarded.
        self.backend.drop_stages(&tag).await?;
        self.backend.create_stages(&tag).await?;
        let record = RunRecord::begun(start);
        self.backend.record(&record).await?;
        *guard = Some(StagedRun {
            record,
            pending: self.backend.pending(&tag),
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
        let n = batch.num_rows() as u64;
        let parts = partitions(table, &batch);
        let encoded = self.backend.encode(table, &batch, run_id)?;
        let mut guard = self.run.lock().await;
        let run = guard
            .as_mut()
            .filter(|r| r.record.run_id == run_id)
            .ok_or_else(|| not_open(run_id))?;
        self.backend.stage(run, table, encoded).await?;
        run.staged.add(table, mode, n, parts);
        Ok(n)
    }

    async fn commit(&self, commit: RunCommit) -> Result<BTreeMap<String, u64>> {
        let mut guard = self.run.lock().await;
        let mut run = Self::take(&mut guard, &commit.run_id)?;
        match self.finish_commit(&mut run, &commit).await {
            Ok(rows) => {
                // Committed: the staging tables are only leftovers now.
                if let Err(e) = self.backend.drop_stages(&run.tag).await {
                    tracing::warn!(run_id = %commit.run_id, error = %e,
                        "{}: committed, but a staging table was not dropped", self.backend.name());
                }
                Ok(rows)
            }
            Err(e) => {
                let _ = self.backend.drop_stages(&run.tag).await;
                run.record.commit_failed(&commit, &e);
                let _ = self.backend.record(&run.record).await;
                Err(e)
            }
        }
    }

    async fn abort(&self, failure: RunFailure) -> Result<()> {
        let mut guard = self.run.lock().await;
        let open = guard
            .as_ref()
            .is_some_and(|r| r.record.run_id == failure.run_id);
        let mut record = if open {
            let run = Self::take(&mut guard, &failure.run_id)?;
            self.backend.drop_stages(&run.tag).await?;
            run.record
        } else {
            // Not open here (refused before it began, or left by a dead
            // process): whatever it staged goes too.
            self.backend
                .drop_stages(&stage_tag(&failure.run_id)?)
                .await?;
            RunRecord::not_open(
                &failure.run_id,
                self.backend.get_run(&failure.run_id).await?,
            )
        };
        record.failed(failure);
        self.backend.record(&record).await
    }

    async fn heartbeat(&self, run_id: &str) -> Result<()> {
        let mut guard = self.run.lock().await;
        let Some(run) = guard.as_mut().filter(|r| r.record.run_id == run_id) else {
            return Ok(());
        };
        run.record.beat();
        self.backend.record(&run.record).await
    }

    /// At shutdown: a run still open is discarded and recorded as failed.
    async fn close(&self) -> Result<()> {
        let run = self.run.lock().await.take();
        if let Some(run) = run {
            tracing::warn!(run_id = %run.record.run_id, "shutting down during a run: discarding it");
            self.backend.drop_stages(&run.tag).await?;
            let mut record = run.record;
            record.failed(RunFailure {
                run_id: record.run_id.clone(),
                category: ErrorCategory::Interrupted,
                message: "run aborted: the warehouse closed before its commit".into(),
                stats: RunStats::default(),
                quality_json: String::new(),
            });
            self.backend.record(&record).await?;
        }
        Ok(())
    }

    async fn running_runs(&self) -> Result<Vec<RunRecord>> {
        let running = format!("status = '{}'", RunStatus::Running);
        self.backend
            .runs_where("list running runs", &running, None)
            .await
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        self.backend
            .runs_where("list runs", "1 = 1", Some(limit))
            .await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        self.backend.get_run(run_id).await
    }

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>> {
        self.backend.top_users(query).await
    }

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>> {
        self.backend.weekly_totals().await
    }

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>> {
        self.backend.list_partitions(table).await
    }

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        self.backend.read_partition(table, partition).await
    }

    /// Refused while a run is open; no run can begin until it is done.
    async fn drop_partition(&self, table: Table, partition: &str) -> Result<u64> {
        let guard = self.run.lock().await;
        if let Some(run) = guard.as_ref() {
            return Err(Error::backend(
                format!(
                    "cannot drop partition {partition} of {table} while run {} is open",
                    run.record.run_id
                ),
                true,
            ));
        }
        self.backend.delete_partition(table, partition).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_covered_partitions() {
        assert_eq!(stage_tag("01a2-b3_c").unwrap(), "01a2b3c");
        assert!(stage_tag("--").is_err());

        let mut s = Staged::default();
        s.add(
            Table::Trades,
            WriteMode::Replace,
            2,
            ["2024-01-01".to_string()],
        );
        s.add(
            Table::Trades,
            WriteMode::Append,
            1,
            ["2024-01-02".to_string()],
        );
        s.add(Table::TradesRejected, WriteMode::Replace, 1, []);
        assert_eq!(s.rows[&Table::Trades], 3);
        s.cover_sources(&["a.csv".into()]);
        assert_eq!(s.partitions[&Table::Trades].len(), 1);
        assert!(s.partitions[&Table::TradesRejected].contains("a.csv"));

        let mut s = Staged::default();
        s.add(Table::TradesRejected, WriteMode::Append, 1, []);
        s.cover_sources(&["a.csv".into()]);
        assert!(!s.partitions.contains_key(&Table::TradesRejected));
    }
}
