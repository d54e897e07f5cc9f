//! A run's OpenLineage events: START when it begins, COMPLETE or FAIL when
//! it ends, with what it read (each file, object or database table, with
//! its columns and the rows read) and what it wrote (each table, with the
//! rows written and the quality checks).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use quarry_core::schema::INPUT_COLUMNS;
use quarry_lineage::{Dataset, EventType, RunEvent, dataset_of};
use quarry_transform::checks::Outcome;

use super::Run;

/// The job every pipeline run belongs to.
pub(super) const JOB: &str = "trades_pipeline";

/// Quarry's tables, as the outputs of a run.
const OUTPUTS: [&str; 4] = [
    "trades",
    "trades_rejected",
    "agg_trades_weekly",
    "pipeline_runs",
];

impl Run {
    /// Emits START once the loader has named the warehouse's datasets; a
    /// run that fails before that emits START with its FAIL.
    pub(super) fn emit_lineage(&self, kind: EventType, error: Option<&str>) {
        let started = self.lineage_started.swap(true, Ordering::SeqCst);
        if kind != EventType::Start && !started {
            self.emit_event(EventType::Start, None);
        }
        if kind != EventType::Start || !started {
            self.emit_event(kind, error);
        }
    }

    fn emit_event(&self, kind: EventType, error: Option<&str>) {
        let mut event = RunEvent::new(kind, &self.run_id, self.lineage.namespace(), JOB);
        if let Some(e) = error {
            event = event.with_error(e);
        }
        let (namespace, prefix) = self.datasets.lock().expect("datasets lock").clone();
        let m = self.measures.lock().expect("measures lock");
        if kind == EventType::Start || m.files.is_empty() {
            // Before the plan only the source's name is known.
            let (ns, name) = dataset_of(&self.req.source);
            event.inputs.push(Dataset::new(ns, name));
        } else {
            // Splits of one source (weeks of a table) are one dataset.
            let mut inputs: BTreeMap<(String, String), (u64, u64, Vec<String>)> = BTreeMap::new();
            for f in &m.files {
                let entry = inputs.entry(dataset_of(&f.file)).or_default();
                entry.0 += m.rows_by_file.get(&f.file).copied().unwrap_or(0);
                entry.1 += f.size_bytes;
                for c in &f.extra_columns {
                    if !entry.2.contains(c) {
                        entry.2.push(c.clone());
                    }
                }
            }
            for ((ns, name), (rows, bytes, extra)) in inputs {
                let columns = INPUT_COLUMNS
                    .iter()
                    .copied()
                    .chain(extra.iter().map(String::as_str));
                event.inputs.push(
                    Dataset::new(ns, name)
                        .with_schema(columns)
                        .with_rows_read(rows, (bytes > 0).then_some(bytes)),
                );
            }
        }
        for table in OUTPUTS {
            let mut out = Dataset::new(namespace.clone(), format!("{prefix}{table}"));
            if kind == EventType::Complete {
                let rows = match table {
                    "pipeline_runs" => Some(1),
                    t => m.rows_staged.get(t).copied(),
                };
                if let Some(rows) = rows {
                    out = out.with_rows_written(rows);
                }
                if table == "trades" && !m.checks.is_empty() {
                    out = out.with_assertions(
                        m.checks
                            .iter()
                            .filter(|c| c.outcome != Outcome::Skipped)
                            .map(|c| (c.check.as_str(), c.outcome == Outcome::Pass)),
                    );
                }
            }
            event.outputs.push(out);
        }
        drop(m);
        self.lineage.emit(&event);
    }
}
