//! The archiver's Prometheus metrics (see the README's metric list).

use prometheus::{IntCounter, Registry};
use quarry_core::metrics::{Errors, counter};
use quarry_proto::PartitionMove;

pub struct Metrics {
    pub registry: Registry,
    moved: IntCounter,
    restored: IntCounter,
    failed: IntCounter,
    pub errors: Errors,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            moved: counter(
                &r,
                "quarry_archiver_partitions_moved_total",
                "Partitions moved to cold storage",
            ),
            restored: counter(
                &r,
                "quarry_archiver_partitions_restored_total",
                "Partitions restored to the warehouse",
            ),
            failed: counter(
                &r,
                "quarry_archiver_partitions_failed_total",
                "Partition moves or restores that failed (the data stays where it was)",
            ),
            errors: Errors::new(&r),
            registry: r,
        }
    }

    pub fn count_moves(&self, moves: &[PartitionMove]) {
        for m in moves {
            match m.outcome.as_str() {
                "archived" => self.moved.inc(),
                "restored" => self.restored.inc(),
                "failed" => self.failed.inc(),
                _ => {}
            }
        }
    }
}
