//! The transformer's Prometheus metrics (see the README's metric list).

use prometheus::{HistogramVec, IntCounter, Registry};
use quarry_core::metrics::{Errors, counter, histogram_vec};
use quarry_proto::RunStats;

pub struct Metrics {
    pub registry: Registry,
    pub runs_started: IntCounter,
    pub runs_succeeded: IntCounter,
    pub runs_failed: IntCounter,
    pub rows_in: IntCounter,
    pub rows_valid: IntCounter,
    pub rows_rejected: IntCounter,
    stage_seconds: HistogramVec,
    pub errors: Errors,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            runs_started: counter(&r, "quarry_runs_started_total", "Runs started"),
            runs_succeeded: counter(&r, "quarry_runs_succeeded_total", "Runs committed"),
            runs_failed: counter(
                &r,
                "quarry_runs_failed_total",
                "Runs failed and aborted (nothing committed)",
            ),
            rows_in: counter(&r, "quarry_rows_in_total", "Input rows read"),
            rows_valid: counter(
                &r,
                "quarry_rows_valid_total",
                "Input rows passing validation",
            ),
            rows_rejected: counter(
                &r,
                "quarry_rows_rejected_total",
                "Input rows rejected by validation",
            ),
            stage_seconds: histogram_vec(
                &r,
                "quarry_stage_duration_seconds",
                "Time per stage of a succeeded run (extract and transform: summed over splits)",
                &["stage"],
            ),
            errors: Errors::new(&r),
            registry: r,
        }
    }

    pub fn observe_stages(&self, s: &RunStats) {
        for (stage, ms) in [
            ("plan", s.plan_ms),
            ("extract", s.extract_ms),
            ("transform", s.transform_ms),
            ("load", s.load_ms),
            ("commit", s.commit_ms),
        ] {
            self.stage_seconds
                .with_label_values(&[stage])
                .observe(ms as f64 / 1000.0);
        }
    }
}
