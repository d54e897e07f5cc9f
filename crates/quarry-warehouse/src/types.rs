//! What the warehouse contract speaks: runs, their records and statistics,
//! partitions, report rows. The services convert these to and from their
//! wire types at their gRPC edge; nothing here is protobuf.

use std::collections::{BTreeMap, BTreeSet};

use quarry_core::{ErrorCategory, RunMode, RunStatus};

/// How a run's batches of a table are applied when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Replace the partitions (or source files) the run covers.
    #[default]
    Replace,
    /// Add the rows, replacing nothing.
    Append,
}

/// Counters and stage timings of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunStats {
    pub rows_in: u64,
    pub rows_valid: u64,
    pub rows_rejected: u64,
    pub rows_duplicate: u64,
    pub agg_rows: u64,
    pub plan_ms: u64,
    pub extract_ms: u64,
    pub transform_ms: u64,
    pub load_ms: u64,
    pub commit_ms: u64,
    pub total_ms: u64,
}

impl RunStats {
    /// The counters in their column order in `pipeline_runs`.
    pub fn counters(&self) -> [u64; 11] {
        [
            self.rows_in,
            self.rows_valid,
            self.rows_rejected,
            self.rows_duplicate,
            self.agg_rows,
            self.plan_ms,
            self.extract_ms,
            self.transform_ms,
            self.load_ms,
            self.commit_ms,
            self.total_ms,
        ]
    }

    /// From the counters in column order.
    pub fn from_counters(c: [u64; 11]) -> Self {
        Self {
            rows_in: c[0],
            rows_valid: c[1],
            rows_rejected: c[2],
            rows_duplicate: c[3],
            agg_rows: c[4],
            plan_ms: c[5],
            extract_ms: c[6],
            transform_ms: c[7],
            load_ms: c[8],
            commit_ms: c[9],
            total_ms: c[10],
        }
    }
}

/// One row of `pipeline_runs`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunRecord {
    pub run_id: String,
    pub source: String,
    pub status: RunStatus,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC; empty while running.
    pub finished_at: String,
    pub stats: RunStats,
    pub rows_committed: BTreeMap<String, u64>,
    /// Of a failed run.
    pub error_category: Option<ErrorCategory>,
    pub error_message: String,
    pub quality_json: String,
    pub options_json: String,
    /// Who runs it ([`crate::owner::RunOwner`] as JSON).
    pub owner_json: String,
}

/// Opening facts of a run.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub run_id: String,
    pub source: String,
    pub options_json: String,
    /// Who runs it ([`crate::owner::RunOwner`] as JSON), recorded with the run.
    pub owner_json: String,
}

/// What a successful run commits with. The default declares no days: a
/// plain put of the partitions staged (the archiver's restores).
#[derive(Debug, Clone, Default)]
pub struct RunCommit {
    pub run_id: String,
    /// Every file the run read: their earlier rejected rows are replaced.
    pub source_files: Vec<String>,
    pub stats: RunStats,
    pub quality_json: String,
    /// Who computed the weekly aggregate: in ELT the run sent none and the
    /// warehouse computes every week it touches from `trades`.
    pub mode: RunMode,
    /// The days (`trade_date`, days since the epoch) of the run's valid
    /// rows: their partitions are replaced, their weeks recomputed.
    pub days: BTreeSet<i32>,
    /// Whether the run loaded its raw trades into `trades`.
    pub raw_trades: bool,
}

/// Why a run failed.
#[derive(Debug, Clone)]
pub struct RunFailure {
    pub run_id: String,
    pub category: ErrorCategory,
    pub message: String,
    pub stats: RunStats,
    pub quality_json: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Volume,
    Pnl,
}

impl Metric {
    /// The column of `agg_trades_weekly` the metric sums.
    pub fn column(self) -> &'static str {
        match self {
            Self::Volume => "total_volume",
            Self::Pnl => "total_pnl",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TopUsersQuery {
    pub client_type: String,
    pub metric: Metric,
    pub limit: u32,
}

/// One partition of a table (`Table::partition_column` value) and its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: String,
    pub rows: u64,
}

/// One line of a top-users report: the user and the exact decimal total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUser {
    pub user_id: String,
    pub value: String,
}

/// Σ volume, Σ PnL (exact decimal text) and Σ trades of one week and client type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeeklyTotal {
    /// YYYY-MM-DD, a Monday.
    pub week_start_date: String,
    pub client_type: String,
    pub total_volume: String,
    pub total_pnl: String,
    pub trade_count: u64,
}
