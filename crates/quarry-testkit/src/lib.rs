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

/// Rows as `|`-joined text, with Arrow's display of each value (timestamps
/// as their nanoseconds: formatting a named time zone would need chrono-tz),
/// so that tests compare exact values without trusting the code under test.
pub fn rows_text(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    use arrow::datatypes::DataType;
    use arrow::util::display::ArrayFormatter;
    let mut out = vec![];
    for b in batches {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(..) => {
                    arrow::compute::cast(c, &DataType::Int64).expect("timestamps cast to Int64")
                }
                _ => c.clone(),
            })
            .collect();
        let cols: Vec<_> = cols
            .iter()
            .map(|c| ArrayFormatter::try_new(c, &Default::default()).expect("displayable"))
            .collect();
        for i in 0..b.num_rows() {
            let row: Vec<String> = cols.iter().map(|c| c.value(i).to_string()).collect();
            out.push(row.join("|"));
        }
    }
    out
}
