//! A run's record through its life (begun, beating, succeeded or failed),
//! and the text columns of `pipeline_runs` for the backends that write it
//! with SQL literals and read it back as text cells (BigQuery, Snowflake):
//! run_id, source, status, started_at, finished_at, the eleven counters of
//! `RunStats`, rows_committed, error_category, error_message, quality,
//! options, owner.

use std::collections::BTreeMap;

use quarry_core::dates::now_text;
use quarry_core::{Error, ErrorCategory, Result, RunStatus};

use crate::owner::RunOwner;
use crate::{RunCommit, RunFailure, RunRecord, RunStart, RunStats};

impl RunRecord {
    /// The record of a run that begins now.
    pub fn begun(start: RunStart) -> Self {
        Self {
            run_id: start.run_id,
            source: start.source,
            status: RunStatus::Running,
            started_at: now_text(),
            options_json: start.options_json,
            owner_json: start.owner_json,
            ..Default::default()
        }
    }

    /// The record of a run that fails while it is not open here (refused
    /// before it began, or left by a dead process): what was recorded of it,
    /// or just its id.
    pub fn not_open(run_id: &str, recorded: Option<RunRecord>) -> Self {
        recorded.unwrap_or_else(|| Self {
            run_id: run_id.to_string(),
            started_at: now_text(),
            ..Default::default()
        })
    }

    fn finish(&mut self, status: RunStatus) {
        self.status = status;
        self.finished_at = now_text();
    }

    /// The run committed `rows` per table.
    pub fn succeeded(&mut self, commit: &RunCommit, rows: &BTreeMap<String, u64>) {
        self.finish(RunStatus::Succeeded);
        self.stats = commit.stats;
        self.rows_committed = rows.clone();
        self.quality_json = commit.quality_json.clone();
    }

    /// The run failed (aborted, or found dead).
    pub fn failed(&mut self, f: RunFailure) {
        self.finish(RunStatus::Failed);
        self.stats = f.stats;
        self.rows_committed.clear();
        self.error_category = Some(f.category);
        self.error_message = f.message;
        self.quality_json = f.quality_json;
    }

    /// The run's commit failed with `e`.
    pub fn commit_failed(&mut self, commit: &RunCommit, e: &Error) {
        self.finish(RunStatus::Failed);
        self.stats = commit.stats;
        self.quality_json = commit.quality_json.clone();
        self.rows_committed.clear();
        self.error_category = Some(e.category());
        self.error_message = e.to_string();
    }

    /// The owner says it is alive (heartbeat now).
    pub fn beat(&mut self) {
        self.owner_json = RunOwner::beat(&self.owner_json);
    }

    /// `rows_committed` as stored: a JSON object.
    pub fn rows_committed_json(&self) -> String {
        serde_json::to_string(&self.rows_committed).expect("a map serialises")
    }

    /// The text columns before the counters.
    pub fn text_head(&self) -> [&str; 5] {
        [
            &self.run_id,
            &self.source,
            self.status.as_str(),
            &self.started_at,
            &self.finished_at,
        ]
    }

    /// The text columns after the counters.
    pub fn text_tail(&self) -> [String; 6] {
        [
            self.rows_committed_json(),
            self.error_category
                .map(|c| c.as_str().to_string())
                .unwrap_or_default(),
            self.error_message.clone(),
            self.quality_json.clone(),
            self.options_json.clone(),
            self.owner_json.clone(),
        ]
    }

    /// From the cells of a `SELECT` of the columns in order (NULL counters
    /// read as 0). A count or status that does not parse is an error.
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
        let mut counters = [0u64; 11];
        for (k, slot) in counters.iter_mut().enumerate() {
            *slot = n(5 + k)?;
        }
        Ok(Self {
            run_id: t(0),
            source: t(1),
            status: parse_status(&t(2))?,
            started_at: t(3),
            finished_at: t(4),
            stats: RunStats::from_counters(counters),
            rows_committed: serde_json::from_str(&t(16)).unwrap_or_default(),
            error_category: ErrorCategory::parse(&t(17)),
            error_message: t(18),
            quality_json: t(19),
            options_json: t(20),
            owner_json: t(21),
        })
    }
}

/// A stored status.
pub(crate) fn parse_status(text: &str) -> Result<RunStatus> {
    RunStatus::parse(text)
        .ok_or_else(|| Error::internal(format!("pipeline_runs: unknown status {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_cells() {
        let mut r = RunRecord::begun(RunStart {
            run_id: "r1".into(),
            source: "s'rc".into(),
            options_json: "{}".into(),
            owner_json: "{\"pid\":1}".into(),
        });
        r.stats.rows_in = 7;
        r.failed(RunFailure {
            run_id: "r1".into(),
            category: ErrorCategory::Quality,
            message: "bad".into(),
            stats: RunStats {
                rows_in: 7,
                ..Default::default()
            },
            quality_json: "{}".into(),
        });
        let mut cells: Vec<Option<String>> =
            r.text_head().iter().map(|s| Some(s.to_string())).collect();
        cells.extend(r.stats.counters().iter().map(|n| Some(n.to_string())));
        cells.extend(r.text_tail().into_iter().map(Some));
        assert_eq!(RunRecord::from_cells(&cells).unwrap(), r);
        cells[2] = Some("done".into());
        assert!(RunRecord::from_cells(&cells).is_err());
        cells[2] = Some("failed".into());
        cells[5] = Some("x".into());
        assert!(RunRecord::from_cells(&cells).is_err());
    }
}
