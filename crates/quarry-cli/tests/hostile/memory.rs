//! Records, headers and fields too big to take fail short and in bounded
//! memory; an input ten times bigger costs far less than ten times the
//! memory.

use std::time::Duration;

use crate::common::cli::{fails, one_line_error, peak_kib, run_within};
use crate::common::{HEADER, user_dir};

#[test]
fn huge_records_headers_and_fields_fail_in_bounded_memory() {
    let dir = user_dir();
    let d = dir.path().join("data");
    // 128 MiB without a line break after the header: a record that never ends.
    let mut line = HEADER.as_bytes().to_vec();
    line.resize(line.len() + (128 << 20), b'a');
    std::fs::write(d.join("endless.csv"), &line).unwrap();
    drop(line);
    let (out, kib) = peak_kib(
        dir.path(),
        &[],
        &["run", "-q", "--source", "data/endless.csv"],
    );
    one_line_error(
        &out,
        &[
            "endless.csv line 2",
            "longer than 1048576 bytes",
            "max_record_bytes",
        ],
    );
    assert!(kib < 100 << 10, "peak RSS {kib} KiB for a 128 MiB record");

    // A 16 KB header: the error stays short (and fits a gRPC status).
    let header: Vec<String> = (0..2000).map(|i| format!("col{i}")).collect();
    std::fs::write(d.join("wide.csv"), header.join(",") + "\n").unwrap();
    let err = fails(
        dir.path(),
        &["run", "-q", "--source", "data/wide.csv"],
        &["wide.csv", "missing required columns", "more"],
    );
    assert!(err.len() < 1000, "{} bytes: {err}", err.len());

    // A 2 MB field: the run fails naming the line; nothing is stored.
    std::fs::write(
        d.join("field.csv"),
        format!(
            "{HEADER}2024-01-01 10:00:00,1,gold,A,buy,1,2\n2024-01-01 10:00:00,{},gold,A,buy,1,2\n",
            "u".repeat(2 << 20)
        ),
    )
    .unwrap();
    let err = fails(
        dir.path(),
        &["run", "-q", "--source", "data/field.csv"],
        &["field.csv line 3"],
    );
    assert!(err.len() < 1000, "{} bytes", err.len());
    let db = dir.path().join("agg_result.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    let stored: i64 = c
        .query_row("SELECT count(*) FROM trades_rejected", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 0);
    // A smaller limit applies through the configuration.
    let out = run_within(
        dir.path(),
        &["run", "-q", "--source", "data/trades.csv"],
        &[
            ("QUARRY_EXTRACTOR__MAX_FIELD_BYTES", "64"),
            ("QUARRY_EXTRACTOR__MAX_RECORD_BYTES", "1024"),
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pipeline streams: ten times the input (with the same groups) costs
/// far less memory than the input grew by. (What does grow: the duplicate
/// counter keeps 8 bytes of hash per row, up to 64 MiB per part before it
/// spills to disk; holding the input itself would cost more than its size.)
#[test]
fn memory_stays_bounded_as_the_input_grows() {
    let dir = user_dir();
    let mut peak = vec![];
    for rows in ["200000", "2000000"] {
        let file = format!("data/gen-{rows}.csv");
        let out = run_within(
            dir.path(),
            &["gen", "--rows", rows, "--users", "100", "--out", &file],
            &[],
            Duration::from_secs(120),
        );
        assert!(out.status.success());
        let (out, kib) = peak_kib(
            dir.path(),
            &[],
            &["run", "-q", "--no-raw-trades", "--source", &file],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        peak.push(kib);
    }
    let input_growth_kib = std::fs::metadata(dir.path().join("data/gen-2000000.csv"))
        .unwrap()
        .len()
        / 1024
        - std::fs::metadata(dir.path().join("data/gen-200000.csv"))
            .unwrap()
            .len()
            / 1024;
    let growth = peak[1].saturating_sub(peak[0]);
    assert!(
        growth < input_growth_kib * 3 / 4,
        "peak RSS {} KiB -> {} KiB for {input_growth_kib} KiB more input",
        peak[0],
        peak[1]
    );
}
