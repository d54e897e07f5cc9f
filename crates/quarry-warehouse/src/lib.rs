//! The warehouse contract and its backends.
//!
//! A run writes Arrow batches into its tables while nothing is visible to
//! readers; `commit` replaces exactly the partitions the run covers (the
//! `trade_date`s of `trades`, the `week_start_date`s of `agg_trades_weekly`,
//! the source files of `trades_rejected`) in one atomic step; `abort` leaves
//! the warehouse as it was. Every run, succeeded or failed, is recorded in
//! `pipeline_runs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use quarry_core::config::{WarehouseConfig, WarehouseKind};
use quarry_core::{Result, Table};

mod arrow_rows;
#[cfg(feature = "bigquery")]
pub mod bigquery;
#[cfg(feature = "clickhouse")]
pub mod clickhouse;
pub mod owner;
mod record;
#[cfg(any(feature = "clickhouse", feature = "bigquery", feature = "snowflake"))]
mod retry;
#[cfg(feature = "snowflake")]
pub mod snowflake;
pub mod sqlite;
#[cfg(any(feature = "clickhouse", feature = "bigquery", feature = "snowflake"))]
mod staging;
#[cfg(any(feature = "bigquery", feature = "snowflake"))]
mod text_rows;
mod types;
mod weeks;

pub use types::{
    Metric, PartitionInfo, RunCommit, RunFailure, RunRecord, RunStart, RunStats, TopUser,
    TopUsersQuery, WeeklyTotal, WriteMode,
};

#[async_trait]
pub trait Warehouse: Send + Sync + 'static {
    /// Backend name for logs and errors, e.g. `sqlite`.
    fn kind(&self) -> &'static str;

    /// Reaches the backend and creates missing tables; fails with one clear line.
    async fn check_connectivity(&self) -> Result<()>;

    /// Opens a run and records it as `running`.
    async fn begin_run(&self, run: RunStart) -> Result<()>;

    /// Tells other processes that the open run `run_id` is alive: refreshes
    /// the heartbeat in its owner record. Only between writes, never during
    /// the commit. Backends whose run record cannot change while the run is
    /// open (SQLite: a run is one transaction) keep the default, which does
    /// nothing.
    async fn heartbeat(&self, _run_id: &str) -> Result<()> {
        Ok(())
    }

    /// Every run recorded as `running`, by any process.
    async fn running_runs(&self) -> Result<Vec<RunRecord>>;

    /// For a run recorded `running` by a process this one cannot inspect
    /// (another host): whether it may still be going. By default its last
    /// heartbeat (or, without an owner record, its start) must be younger
    /// than `stale_after`.
    async fn may_still_run(&self, run: &RunRecord, stale_after: Duration) -> Result<bool> {
        let last = owner::RunOwner::parse(&run.owner_json)
            .map(|o| o.heartbeat_at)
            .unwrap_or_else(|| run.started_at.clone());
        Ok(match chrono::DateTime::parse_from_rfc3339(&last) {
            Ok(t) => {
                let age = chrono::Utc::now().signed_duration_since(t);
                age.to_std().map_or(true, |age| age < stale_after)
            }
            // An unreadable time: not enough to call the run dead.
            Err(_) => true,
        })
    }

    /// Stages one batch of `table` (in `table.schema()`) into an open run.
    /// Returns the number of rows staged. A backend may still be writing
    /// the batch when this returns; a failure then fails a later write of
    /// the run or its commit, never silently.
    async fn write(
        &self,
        run_id: &str,
        table: Table,
        mode: WriteMode,
        batch: RecordBatch,
    ) -> Result<u64>;

    /// Makes the run's data visible, replacing the partitions it covers, and
    /// records it as `succeeded`. Returns the rows committed per table.
    async fn commit(&self, commit: RunCommit) -> Result<BTreeMap<String, u64>>;

    /// Discards what the run staged (if anything) and records it as `failed`.
    async fn abort(&self, failure: RunFailure) -> Result<()>;

    /// The most recent runs first.
    async fn list_runs(&self, limit: u32) -> Result<Vec<RunRecord>>;

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>>;

    /// Top users of a client type, summed exactly over all weeks and symbols;
    /// ties broken by user_id ascending.
    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>>;

    /// Σ volume, Σ PnL (exact) and Σ trades per week and client type, by week.
    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>>;

    /// The committed partitions of `table`, ascending, with their row counts.
    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>>;

    /// One committed partition as batches in `table.schema()`, with exact
    /// decimals (empty if the partition does not exist).
    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>>;

    /// Deletes one partition atomically; returns the rows it held. Refused
    /// while a run is open.
    async fn drop_partition(&self, table: Table, partition: &str) -> Result<u64>;

    /// Flushes and releases the backend at shutdown (an open run is discarded).
    async fn close(&self) -> Result<()>;
}

/// Opens the backend the configuration selects.
pub fn open(config: &WarehouseConfig) -> Result<Arc<dyn Warehouse>> {
    match config.kind {
        WarehouseKind::Sqlite => Ok(Arc::new(sqlite::SqliteWarehouse::open(
            &config.sqlite.path,
        )?)),
        #[cfg(feature = "clickhouse")]
        WarehouseKind::Clickhouse => Ok(clickhouse::open(&config.clickhouse)),
        #[cfg(not(feature = "clickhouse"))]
        WarehouseKind::Clickhouse => Err(quarry_core::Error::config(
            "warehouse.type = \"clickhouse\", but this build has no ClickHouse backend (cargo feature `clickhouse`)",
        )),
        #[cfg(feature = "bigquery")]
        WarehouseKind::Bigquery => bigquery::open(&config.bigquery),
        #[cfg(not(feature = "bigquery"))]
        WarehouseKind::Bigquery => Err(quarry_core::Error::config(
            "warehouse.type = \"bigquery\", but this build has no BigQuery backend (cargo feature `bigquery`)",
        )),
        #[cfg(feature = "snowflake")]
        WarehouseKind::Snowflake => snowflake::open(&config.snowflake),
        #[cfg(not(feature = "snowflake"))]
        WarehouseKind::Snowflake => Err(quarry_core::Error::config(
            "warehouse.type = \"snowflake\", but this build has no Snowflake backend (cargo feature `snowflake`)",
        )),
    }
}

/// Refuses a batch that is not in `table.schema()` (every backend's `write`).
pub fn check_batch(table: Table, batch: &RecordBatch) -> Result<()> {
    let expected = table.schema();
    if batch.schema().fields() != expected.fields() {
        return Err(quarry_core::Error::input(format!(
            "batch for {table} does not match its schema: got {:?}, expected {:?}",
            batch.schema().fields(),
            expected.fields()
        )));
    }
    Ok(())
}

/// Sorts per-user exact totals (scaled integers) into a top-N list.
pub fn rank_top_users(
    totals: impl IntoIterator<Item = (String, i128)>,
    limit: u32,
    scale: u32,
) -> Vec<TopUser> {
    let mut v: Vec<(String, i128)> = totals.into_iter().collect();
    v.sort_by(|(ua, a), (ub, b)| b.cmp(a).then_with(|| ua.cmp(ub)));
    v.into_iter()
        .take(limit as usize)
        .map(|(user_id, total)| TopUser {
            user_id,
            value: quarry_core::decimal::format_scaled(total, scale),
        })
        .collect()
}
