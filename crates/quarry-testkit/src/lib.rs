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

/// The value of a variable `scripts/test.sh` exports for a test that needs a
/// stand-in server or an outside tool (its URL or path). Such tests are
/// `#[ignore]`d, so a plain `cargo test` lists them as ignored; the script
/// runs them with `--include-ignored`, and then a missing variable fails the
/// test here, naming it — never a silent pass.
pub fn standin(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: this test needs the stand-in or tool scripts/test.sh provides (run the suite with scripts/test.sh)"
        ),
    }
}
