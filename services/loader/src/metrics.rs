//! The loader's Prometheus metrics (see the README's metric list).

use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};
use quarry_core::metrics::{Errors, counter, counter_vec, histogram};

pub struct Metrics {
    pub registry: Registry,
    pub commits: IntCounter,
    pub aborts: IntCounter,
    pub rows_loaded: IntCounterVec,
    pub commit_seconds: Histogram,
    pub errors: Errors,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            commits: counter(&r, "quarry_loader_commits_total", "Runs committed"),
            aborts: counter(
                &r,
                "quarry_loader_aborts_total",
                "Runs aborted (on request, abandoned, or at shutdown)",
            ),
            rows_loaded: counter_vec(
                &r,
                "quarry_rows_loaded_total",
                "Rows committed to the warehouse, by table",
                &["table"],
            ),
            commit_seconds: histogram(
                &r,
                "quarry_loader_commit_duration_seconds",
                "Time of a run's commit in the warehouse",
            ),
            errors: Errors::new(&r),
            registry: r,
        }
    }
}
