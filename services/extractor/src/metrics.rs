//! The extractor's Prometheus metrics (see the README's metric list).

use prometheus::{IntCounter, Registry};
use quarry_core::metrics::{Errors, counter};

pub struct Metrics {
    pub registry: Registry,
    pub files_read: IntCounter,
    pub bytes_read: IntCounter,
    pub rows_read: IntCounter,
    pub errors: Errors,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            files_read: counter(
                &r,
                "quarry_extractor_files_read_total",
                "Files streamed to the end",
            ),
            bytes_read: counter(
                &r,
                "quarry_extractor_bytes_read_total",
                "Bytes of the files streamed to the end",
            ),
            rows_read: counter(
                &r,
                "quarry_extractor_rows_read_total",
                "Rows streamed to clients",
            ),
            errors: Errors::new(&r),
            registry: r,
        }
    }
}
