//! Runs interrupted by SIGINT, SIGTERM and SIGKILL, of the `quarry`
//! command and of a loader process: an interrupted run commits nothing and
//! is recorded as interrupted, at once or by the next process that opens
//! the warehouse; a loader sent SIGTERM first lets its open run commit.

use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use quarry_cli::client;
use quarry_proto::{RunRequest, run_event};

use super::runs_of;
use crate::common::cli::run_within;
use crate::common::procs::{Service, Stack, big_input, exit_within, quarry, signal};
use crate::common::{Env, user_dir};

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

/// Waits for `child`, failing the test after 60 s.
fn wait_output(mut child: Child) -> Output {
    if exit_within(&mut child, Duration::from_secs(60)).is_none() {
        panic!("still running 60 s after the signal");
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
        signal(&child, sig, "quarry run");
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
