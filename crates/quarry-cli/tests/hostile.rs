//! The `quarry` binary and service processes against hostile input and
//! rough handling: links out of the data roots, FIFOs, devices and huge
//! records, interrupted runs, unanswering ports, foreign databases, bad
//! output locations and usage errors. Every failure must be one line,
//! quick, leave the warehouse as it was, and quote no file content.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::procs::{Service, Stack, big_input, quarry};
use common::{Env, HEADER, fixtures, user_dir};
use quarry_cli::client;
use quarry_proto::{RunRequest, run_event};

/// Runs `quarry ARGS` in `dir`, killing it after `deadline`.
fn run_within(dir: &Path, args: &[&str], vars: &[(&str, &str)], deadline: Duration) -> Output {
    let mut child = quarry()
        .args(args)
        .envs(vars.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "quarry {args:?} still running after {deadline:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs `quarry ARGS` in `dir` (60 s at most) and fails the test unless it
/// succeeds.
fn run_ok(dir: &Path, args: &[&str]) -> Output {
    let out = run_within(dir, args, &[], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "quarry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `quarry ARGS` in `dir` and expects it to fail in one line holding
/// every needle; returns that line.
fn fails(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    one_line_error(
        &run_within(dir, args, &[], Duration::from_secs(60)),
        needles,
    )
}

/// Exit code 1 and exactly one line on stderr holding every needle.
fn one_line_error(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("quarry: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

/// (status, error_category, error_message) of every run, newest first.
fn runs_of(db: &Path) -> Vec<(String, String, String)> {
    if !db.exists() {
        return vec![];
    }
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare(
            "SELECT status, COALESCE(error_category, ''), COALESCE(error_message, '')
             FROM pipeline_runs ORDER BY started_at DESC, run_id DESC",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_of_the_data_roots_are_refused_and_nothing_is_quoted() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    let d = env.data.join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(fixtures().join("trades_sample.csv"), d.join("good.csv")).unwrap();
    let stack = Stack::start(&env, &[]);
    let run = |source: &Path| {
        run_within(
            env.dir.path(),
            &[
                "run",
                "-q",
                "--transformer",
                &stack.transformer.url(),
                "--loader",
                &stack.loader.url(),
                "--source",
                source.to_str().unwrap(),
            ],
            &[],
            Duration::from_secs(60),
        )
    };
    // A file link, then a directory link, each pointing out of the root.
    symlink("/etc/passwd", d.join("passwd.csv")).unwrap();
    let err = one_line_error(
        &run(&d),
        &["passwd.csv", "outside the extractor's data roots"],
    );
    assert!(!err.contains("root:"), "{err}");
    std::fs::remove_file(d.join("passwd.csv")).unwrap();
    symlink("/etc", d.join("etc")).unwrap();
    let err = one_line_error(&run(&d), &["etc", "outside the extractor's data roots"]);
    assert!(!err.contains("root:"), "{err}");
    std::fs::remove_file(d.join("etc")).unwrap();
    // Without them the directory is read.
    let out = run(&d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A forged ticket for a file outside the roots: refused, content unsaid.
    let channel = quarry_core::grpc::connect("extractor", &stack.extractor.url())
        .await
        .unwrap();
    let mut flight = arrow_flight::FlightClient::new(channel);
    let ticket = quarry_proto::ExtractTicket {
        file: "/etc/passwd".into(),
        format: quarry_proto::SourceFormat::Csv as i32,
        csv: None,
        batch_rows: 0,
    };
    let e = match flight
        .do_get(arrow_flight::Ticket::new(prost::Message::encode_to_vec(
            &ticket,
        )))
        .await
    {
        Ok(mut stream) => {
            use futures::StreamExt;
            stream.next().await.unwrap().unwrap_err().to_string()
        }
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("PermissionDenied") || e.contains("permission"),
        "{e}"
    );
    assert!(e.contains("outside") && !e.contains("root:"), "{e}");
    stack.stop();
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_at_once() {
    let dir = user_dir();
    let fifo = dir.path().join("data/f.csv");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    fails(
        dir.path(),
        &["run", "-q", "--source", "data/f.csv"],
        &["f.csv is a FIFO", "regular files only"],
    );
    fails(
        dir.path(),
        &["run", "-q", "--source", "/dev/zero", "--format", "csv"],
        &["/dev/zero is a device"],
    );
    // A FIFO in a directory source is skipped and reported.
    run_ok(dir.path(), &["run", "-q", "--source", "data"]);
    let report = std::fs::read_to_string(dir.path().join("output/quality_report.json")).unwrap();
    let q: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(q["skipped_files"][0]["reason"], "a FIFO", "{q}");
}

/// Peak resident memory (KiB) of `quarry ARGS`, measured by /usr/bin/time.
fn peak_kib(dir: &Path, args: &[&str]) -> (Output, u64) {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "peak_kib=%M", env!("CARGO_BIN_EXE_quarry")])
        .args(args)
        .env_remove("QUARRY_CONFIG")
        .current_dir(dir);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let kib = err
        .lines()
        .find_map(|l| l.strip_prefix("peak_kib="))
        .unwrap_or_else(|| panic!("no peak memory in: {err}"))
        .trim()
        .parse()
        .unwrap();
    // Leave the command's own stderr, without time's lines.
    let own: String = err
        .lines()
        .filter(|l| !l.starts_with("peak_kib=") && !l.starts_with("Command exited"))
        .map(|l| format!("{l}\n"))
        .collect();
    (
        Output {
            stderr: own.into_bytes(),
            ..out
        },
        kib,
    )
}

#[test]
fn huge_records_headers_and_fields_fail_in_bounded_memory() {
    let dir = user_dir();
    let d = dir.path().join("data");
    // 128 MiB without a line break after the header: a record that never ends.
    let mut line = HEADER.as_bytes().to_vec();
    line.resize(line.len() + (128 << 20), b'a');
    std::fs::write(d.join("endless.csv"), &line).unwrap();
    drop(line);
    let (out, kib) = peak_kib(dir.path(), &["run", "-q", "--source", "data/endless.csv"]);
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

#[test]
fn directory_sources_skip_and_report_unknown_files() {
    let dir = user_dir();
    std::fs::write(dir.path().join("data/notes.txt"), "not trades\n").unwrap();
    std::fs::write(dir.path().join("data/old.csv.gz"), [0x1f, 0x8b, 8, 0]).unwrap();
    run_ok(dir.path(), &["run", "-q", "--source", "data"]);
    let q: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("output/quality_report.json")).unwrap(),
    )
    .unwrap();
    let skipped: Vec<String> = q["skipped_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let file = s["file"].as_str().unwrap();
            let name = Path::new(file).file_name().unwrap().to_str().unwrap();
            format!("{name}: {}", s["reason"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        skipped,
        [
            "notes.txt: unknown extension .txt",
            "old.csv.gz: compressed input (.gz) is not supported yet: decompress it first"
        ]
    );
    assert_eq!(q["rows_in"], 800);
    // Named directly, a compressed file is refused with the reason.
    fails(
        dir.path(),
        &["run", "-q", "--source", "data/old.csv.gz"],
        &["compressed input (.gz) is not supported yet"],
    );
}

/// Starts `quarry run` on a big input (small batches, so it streams for a
/// while) and waits until its run is recorded as running.
fn start_long_run(dir: &Path, db: &Path) -> Child {
    let child = quarry()
        .args(["run", "-q", "--source", "data/big.csv", "--sqlite"])
        .arg(db)
        .env("QUARRY_EXTRACTOR__BATCH_ROWS", "500")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !runs_of(db).iter().any(|r| r.0 == "running") {
        assert!(Instant::now() < deadline, "the run never began");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Well into the stream.
    std::thread::sleep(Duration::from_millis(500));
    child
}

fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits for `child`, failing the test after 60 s.
fn wait_output(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 60 s after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Every row of the data tables of `db` (see `Env::snapshot`).
fn snapshot(db: &Path) -> Vec<String> {
    let mut env = Env::new();
    env.db = db.to_path_buf();
    env.snapshot()
}

#[test]
fn an_interrupted_quarry_run_aborts_and_says_so_in_one_line() {
    let dir = user_dir();
    let env = Env::new();
    let big = big_input(&env, 400_000);
    std::fs::copy(&big, dir.path().join("data/big.csv")).unwrap();
    let db = dir.path().join("w.db");
    let out = run_within(
        dir.path(),
        &["run", "-q", "--sqlite", "w.db"],
        &[],
        Duration::from_secs(60),
    );
    assert!(out.status.success());
    let before = snapshot(&db);

    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let child = start_long_run(dir.path(), &db);
        signal(&child, sig);
        let out = wait_output(child);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("interrupted by SIG{sig}"))
                && err.contains("nothing was committed"),
            "{err}"
        );
        let last = &runs_of(&db)[0];
        assert_eq!(
            (last.0.as_str(), last.1.as_str()),
            ("failed", "interrupted"),
            "{last:?}"
        );
        assert_eq!(snapshot(&db), before);
    }

    // SIGKILL leaves the run recorded as running; the next command that
    // opens the warehouse settles it.
    let mut child = start_long_run(dir.path(), &db);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(runs_of(&db)[0].0, "running");
    let out = run_within(
        dir.path(),
        &["runs", "--sqlite", "w.db"],
        &[],
        Duration::from_secs(30),
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !listed.contains("running"),
        "{listed}"
    );
    let last = &runs_of(&db)[0];
    assert_eq!(
        (last.0.as_str(), last.1.as_str()),
        ("failed", "interrupted"),
        "{last:?}"
    );
    assert!(last.2.contains("stopped before the run ended"), "{last:?}");
    assert_eq!(snapshot(&db), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_gives_its_open_run_the_grace_period_and_a_killed_one_is_settled() {
    let env = Env::new();
    let big = big_input(&env, 400_000);
    let batches = [("QUARRY_EXTRACTOR__BATCH_ROWS", "500")];

    // SIGTERM with the default grace: the open run still commits, then the
    // loader exits 0.
    let mut stack = Stack::start(&env, &batches);
    let req = RunRequest {
        source: big.display().to_string(),
        ..Default::default()
    };
    let mut signalled = false;
    let summary = client::run_pipeline(&stack.transformer.url(), req.clone(), |e| {
        if !signalled
            && let Some(run_event::Event::Progress(p)) = &e.event
            && p.rows_read > 0
        {
            stack.loader.terminate();
            signalled = true;
        }
    })
    .await
    .expect("a run in flight commits within the loader's grace period");
    assert!(signalled);
    assert_eq!(summary.stats.unwrap().rows_in, 400_000);
    let status = stack.loader.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", stack.loader.log_text());
    assert_eq!(runs_of(&env.db)[0].0, "succeeded");
    stack.stop();

    // SIGKILL: the run is left running until a loader starts again.
    let mut stack = Stack::start(&env, &batches);
    let mut killed = false;
    let result = client::run_pipeline(&stack.transformer.url(), req, |e| {
        if !killed
            && let Some(run_event::Event::Progress(p)) = &e.event
            && p.rows_read > 0
        {
            stack.loader.child.kill().unwrap();
            killed = true;
        }
    })
    .await;
    assert!(result.is_err());
    let _ = stack.loader.child.wait();
    assert_eq!(runs_of(&env.db)[0].0, "running");
    let vars = [
        (
            "QUARRY_LOADER__LISTEN".to_string(),
            format!("127.0.0.1:{}", stack.loader.port),
        ),
        (
            "QUARRY_WAREHOUSE__SQLITE__PATH".to_string(),
            env.db.display().to_string(),
        ),
    ];
    stack.loader = Service::start("loader", stack.loader.port, &vars, env.dir.path());
    let last = &runs_of(&env.db)[0];
    assert_eq!(
        (last.0.as_str(), last.1.as_str()),
        ("failed", "interrupted"),
        "{last:?}"
    );
    stack.stop();
}

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

#[test]
fn top_lists_cannot_carry_spreadsheet_formulas() {
    let dir = user_dir();
    let mut rows = String::from(HEADER);
    for (user, qty) in [("=HYPERLINK(\"x\")", 900), ("+1", 800), ("@SUM(A1)", 700)] {
        rows.push_str(&format!(
            "2024-01-01 10:00:00,\"{}\",bronze,A,sell,{qty},1\n",
            user.replace('"', "\"\"")
        ));
    }
    std::fs::write(dir.path().join("data/f.csv"), rows).unwrap();
    run_ok(dir.path(), &["run", "-q", "--source", "data/f.csv"]);
    let csv = std::fs::read_to_string(dir.path().join("output/top_bronze_by_volume.csv")).unwrap();
    assert_eq!(
        csv,
        "user_id,total_volume\n\"'=HYPERLINK(\"\"x\"\")\",900\n'+1,800\n'@SUM(A1),700\n"
    );
}

/// Every kind of failure a user can meet ends in one line on stderr naming
/// it, with the category of the recorded run (interrupted runs: above).
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
    let dead = format!("http://127.0.0.1:{}", common::procs::free_port());
    let out = run(
        &["run", "-q", "--warehouse", "clickhouse"],
        &[("QUARRY_WAREHOUSE__CLICKHOUSE__URL", &dead)],
    );
    one_line_error(&out, &["clickhouse at", "cannot connect"]);
    assert_eq!(runs_of(&db).len(), 2, "no run began without a warehouse");
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
