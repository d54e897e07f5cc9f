//! What is wrong around a run: a foreign SQLite file, a port that never
//! answers, bad output locations and usage (refused before a run begins),
//! a partial quality section, and the one line of every failure category a
//! run can record.

use std::time::{Duration, Instant};

use super::runs_of;
use crate::common::cli::{fails, one_line_error, run_ok, run_within};
use crate::common::procs::{Stack, free_port};
use crate::common::{Env, HEADER, user_dir};

#[test]
fn a_foreign_sqlite_file_is_refused_untouched() {
    let dir = user_dir();
    let other = dir.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE trades (a INTEGER); INSERT INTO trades VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(&other).unwrap();
    fails(
        dir.path(),
        &["run", "-q", "--sqlite", "other.db"],
        &[
            "other.db is not a Quarry warehouse",
            "trades",
            "nothing was changed",
        ],
    );
    assert_eq!(std::fs::read(&other).unwrap(), before);
    assert!(!dir.path().join("other.db-wal").exists());
    // Not a database at all.
    std::fs::write(dir.path().join("text.db"), "hello\n").unwrap();
    fails(
        dir.path(),
        &["run", "-q", "--sqlite", "text.db"],
        &["text.db is not a SQLite database"],
    );
    assert_eq!(
        std::fs::read(dir.path().join("text.db")).unwrap(),
        b"hello\n"
    );
}

#[test]
fn a_port_that_never_answers_fails_by_the_deadline_naming_it() {
    let dir = user_dir();
    // Accepts connections, never speaks.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _held = std::thread::spawn(move || {
        let mut open = vec![];
        for c in listener.incoming() {
            open.push(c);
        }
    });
    let deadline = [("QUARRY_CLIENT__CONNECT_TIMEOUT_SECS", "2")];
    for args in [
        vec!["runs", "--loader", url.as_str()],
        vec!["run", "-q", "--transformer", url.as_str()],
        vec!["ping", url.as_str()],
    ] {
        let started = Instant::now();
        let out = run_within(dir.path(), &args, &deadline, Duration::from_secs(20));
        one_line_error(&out, &[url.as_str(), "no gRPC answer within 2 s"]);
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?}");
    }
}

#[test]
fn bad_output_locations_and_usage_errors_fail_before_a_run_begins() {
    let dir = user_dir();
    std::fs::write(dir.path().join("outfile"), "x\n").unwrap();
    fails(
        dir.path(),
        &["run", "-q", "--output", "outfile"],
        &["cannot write reports to outfile"],
    );
    for args in [
        vec!["run", "-q", "--delimiter", "é"],
        vec!["run", "-q", "--delimiter", "\""],
        vec!["run", "-q", "--source", ""],
    ] {
        let out = run_within(dir.path(), &args, &[], Duration::from_secs(30));
        one_line_error(&out, &[]);
    }
    // Nothing was run, so nothing was recorded.
    assert!(runs_of(&dir.path().join("agg_result.db")).is_empty());

    // A remote transformer refuses them too, before a run is recorded.
    let env = Env::new();
    let stack = Stack::start(&env, &[]);
    fails(
        dir.path(),
        &[
            "run",
            "-q",
            "--transformer",
            &stack.transformer.url(),
            "--loader",
            &stack.loader.url(),
            "--source",
            " ",
        ],
        &["the source is empty"],
    );
    stack.stop();
    assert!(runs_of(&env.db).is_empty());

    fails(
        dir.path(),
        &["gen", "--rows", "10", "--out", "x.parquet"],
        &["writes CSV", "x.parquet"],
    );
    assert!(!dir.path().join("x.parquet").exists());
}

#[test]
fn a_partial_quality_section_takes_the_other_keys_from_the_defaults() {
    let dir = user_dir();
    let config = dir.path().join("q.toml");
    std::fs::write(
        &config,
        "[transformer.quality.validity]\nseverity = \"warn\"\n",
    )
    .unwrap();
    // Every row invalid: with validity at warn the run commits.
    let mut bad = String::from(HEADER);
    for _ in 0..10 {
        bad.push_str("not a time,1,gold,A,buy,1,2\n");
    }
    std::fs::write(dir.path().join("data/bad.csv"), bad).unwrap();
    let out = run_ok(
        dir.path(),
        &[
            "run",
            "-q",
            "--config",
            "q.toml",
            "--source",
            "data/bad.csv",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("quality warning: validity"));
    // The check that is not named keeps its default severity (error).
    std::fs::write(
        &config,
        "[transformer.quality.freshness]\nthreshold = 1.0\n",
    )
    .unwrap();
    fails(
        dir.path(),
        &[
            "run",
            "-q",
            "--config",
            "q.toml",
            "--source",
            "data/bad.csv",
        ],
        &["quality check failed: validity"],
    );
}

/// Every kind of failure a user can meet ends in one line on stderr naming
/// it, with the category of the recorded run (interrupted runs: see `interrupts`).
#[test]
fn every_failure_category_ends_in_one_line() {
    let dir = user_dir();
    let data = dir.path().join("data");
    std::fs::write(
        data.join("nocol.csv"),
        "timestamp,user_id,client_type,symbol,side,quantity\n",
    )
    .unwrap();
    let mut bad = String::from(HEADER);
    for _ in 0..10 {
        bad.push_str("yesterday,1,gold,A,buy,1,2\n");
    }
    std::fs::write(data.join("bad.csv"), bad).unwrap();
    let db = dir.path().join("agg_result.db");
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        run_within(dir.path(), args, vars, Duration::from_secs(60))
    };

    let out = run(&["run", "-q", "--source", "data/nocol.csv"], &[]);
    one_line_error(
        &out,
        &["failed (input)", "nocol.csv: missing required column price"],
    );
    assert_eq!(runs_of(&db)[0].1, "input");

    let out = run(&["run", "-q", "--source", "data/bad.csv"], &[]);
    one_line_error(&out, &["failed (quality)", "validity"]);
    assert_eq!(runs_of(&db)[0].1, "quality");

    // A bad configuration value fails before anything starts.
    let out = run(&["run", "-q"], &[("QUARRY_EXTRACTOR__BATCH_ROWS", "0")]);
    one_line_error(&out, &["extractor.batch_rows"]);
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[loader]\nlistn = 1\n").unwrap();
    let out = run(&["run", "-q", "--config", "bad.toml"], &[]);
    one_line_error(&out, &["bad.toml", "listn"]);

    // A warehouse that is not there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = run(
        &["run", "-q", "--warehouse", "clickhouse"],
        &[("QUARRY_WAREHOUSE__CLICKHOUSE__URL", &dead)],
    );
    one_line_error(&out, &["clickhouse at", "cannot connect"]);
    assert_eq!(runs_of(&db).len(), 2, "no run began without a warehouse");
}
