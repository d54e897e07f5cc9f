//! A `pipeline_runs` row as the backends that read results as text cells
//! (BigQuery, Snowflake) keep it: written as SQL literals, read back from
//! `SELECT` of the columns in this order: run_id, source, status,
//! started_at, finished_at, the eleven counters of `RunStats`,
//! rows_committed, error_category, error_message, quality, options, owner.

use quarry_core::dates::now_text;
use quarry_core::{Error, Result};

use crate::{RunFailure, RunRecord, RunStats};

#[derive(Debug, Clone, Default)]
pub(crate) struct RunRow {
    pub run_id: String,
    pub source: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: String,
    pub stats: RunStats,
    /// JSON object: rows committed per table.
    pub rows_committed: String,
    pub error_category: String,
    pub error_message: String,
    pub quality: String,
    pub options: String,
    /// Who runs it (`owner::RunOwner` as JSON).
    pub owner: String,
}

impl RunRow {
    pub fn new(run_id: String, source: String, options: String, started_at: String) -> Self {
        Self {
            run_id,
            source,
            status: "running".into(),
            started_at,
            rows_committed: "{}".into(),
            options,
            ..Default::default()
        }
    }

    pub fn finished(&mut self, status: &str) {
        self.status = status.into();
        self.finished_at = now_text();
    }

    /// The record of a run that fails while it is not open here: what was
    /// recorded of it (e.g. refused by the loader before it began), or its id.
    pub fn not_open(run_id: &str, recorded: Option<RunRecord>) -> Self {
        match recorded {
            Some(r) => Self {
                owner: r.owner_json,
                ..Self::new(r.run_id, r.source, r.options_json, r.started_at)
            },
            None => Self::new(run_id.into(), String::new(), String::new(), now_text()),
        }
    }

    /// Marks the run failed, as `abort` reports it.
    pub fn abort(&mut self, f: RunFailure) {
        self.finished("failed");
        self.stats = f.stats;
        self.error_category = f.category.as_str().into();
        self.error_message = f.message;
        self.quality = f.quality_json;
    }

    /// Marks the run failed by an error of its commit.
    pub fn commit_failed(&mut self, e: &Error) {
        self.finished("failed");
        self.rows_committed = "{}".into();
        self.error_category = e.category().as_str().into();
        self.error_message = e.to_string();
    }

    /// The text columns before the counters.
    pub fn head(&self) -> [&str; 5] {
        [
            &self.run_id,
            &self.source,
            &self.status,
            &self.started_at,
            &self.finished_at,
        ]
    }

    pub fn counters(&self) -> [u64; 11] {
        let s = &self.stats;
        [
            s.rows_in,
            s.rows_valid,
            s.rows_rejected,
            s.rows_duplicate,
            s.agg_rows,
            s.plan_ms,
            s.extract_ms,
            s.transform_ms,
            s.load_ms,
            s.commit_ms,
            s.total_ms,
        ]
    }

    /// The text columns after the counters.
    pub fn tail(&self) -> [&str; 6] {
        [
            &self.rows_committed,
            &self.error_category,
            &self.error_message,
            &self.quality,
            &self.options,
            &self.owner,
        ]
    }

    /// From the cells of a `SELECT` of the columns in order (NULL counters
    /// read as 0).
    pub fn from_cells(c: &[Option<String>]) -> Result<Self> {
        let t = |i: usize| c.get(i).cloned().flatten().unwrap_or_default();
        let n = |i: usize| -> Result<u64> {
            let v = t(i);
            if v.is_empty() {
                return Ok(0);
            }
            v.parse()
                .map_err(|_| Error::internal(format!("pipeline_runs: bad count {v:?}")))
        };
        Ok(Self {
            run_id: t(0),
            source: t(1),
            status: t(2),
            started_at: t(3),
            finished_at: t(4),
            stats: RunStats {
                rows_in: n(5)?,
                rows_valid: n(6)?,
                rows_rejected: n(7)?,
                rows_duplicate: n(8)?,
                agg_rows: n(9)?,
                plan_ms: n(10)?,
                extract_ms: n(11)?,
                transform_ms: n(12)?,
                load_ms: n(13)?,
                commit_ms: n(14)?,
                total_ms: n(15)?,
            },
            rows_committed: t(16),
            error_category: t(17),
            error_message: t(18),
            quality: t(19),
            options: t(20),
            owner: t(21),
        })
    }

    pub fn record(self) -> RunRecord {
        RunRecord {
            stats: Some(self.stats),
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
