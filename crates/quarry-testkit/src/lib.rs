//! Deterministic synthetic trades (`quarry gen`) and helpers for tests.

pub mod generate;

use std::path::PathBuf;

pub use generate::{GenOptions, generate};

/// The reference sample and the results a correct run must produce
/// (`trades_sample.csv`, `trades_sample.expected.json`,
/// `trades_sample.expected_agg.csv`), kept in this crate so that the tests
/// need nothing outside the repository.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}
