//! Stopping services with SIGTERM mid-run: the process exits 0 within its
//! grace period, the run is recorded as failed, the warehouse is unchanged.

mod common;

use std::time::{Duration, Instant};

use common::Env;
use common::procs::{Service, Stack, big_input};
use quarry_cli::client::{self, LoaderClient};
use quarry_proto::{RunEvent, RunRequest, run_event};

/// Rows read so far once the run streams rows, else None.
fn streaming(e: &RunEvent) -> Option<u64> {
    match &e.event {
        Some(run_event::Event::Progress(p)) if p.rows_read > 0 => Some(p.rows_read),
        _ => None,
    }
}

/// Once the run is planned (no row read yet).
fn planned(e: &RunEvent) -> Option<u64> {
    matches!(e.event, Some(run_event::Event::Started(_))).then_some(0)
}

/// Runs `source` on the stack and sends SIGTERM to `victim` at the first
/// event `when` picks — after pausing the extractor (SIGSTOP) if `pause`,
/// so that the run cannot finish within the grace period however fast the
/// machine is. Returns the run's result and the rows read then.
async fn run_and_terminate(
    stack: &Stack,
    victim: &Service,
    source: &std::path::Path,
    when: fn(&RunEvent) -> Option<u64>,
    pause: bool,
) -> (quarry_core::Result<quarry_proto::RunSummary>, u64) {
    let mut signalled_at = None;
    let req = RunRequest {
        source: source.display().to_string(),
        ..Default::default()
    };
    let result = client::run_pipeline(&stack.transformer.url(), req, |e| {
        if signalled_at.is_none()
            && let Some(rows) = when(e)
        {
            if pause {
                stack.extractor.pause();
            }
            victim.terminate();
            signalled_at = Some(rows);
        }
    })
    .await;
    if pause {
        stack.extractor.resume();
    }
    (
        result,
        signalled_at.expect("the run reached the signal point"),
    )
}

/// A stack over a warehouse holding one committed run, and a big input.
async fn prepared() -> (Env, std::path::PathBuf, Vec<String>) {
    let env = Env::new();
    let good = env.copy_fixture();
    env.run(&good).await.unwrap();
    let before = env.snapshot();
    let big = big_input(&env, 400_000);
    (env, big, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_transformer_aborts_its_run_and_exits_0() {
    let (env, big, before) = prepared().await;
    let mut stack = Stack::start(
        &env,
        &[
            ("QUARRY_TRANSFORMER__SHUTDOWN_GRACE_SECS", "1"),
            ("QUARRY_EXTRACTOR__BATCH_ROWS", "500"),
        ],
    );
    let (result, at) = run_and_terminate(&stack, &stack.transformer, &big, streaming, true).await;
    let signalled = Instant::now();
    assert!(at < 400_000, "signalled after {at} rows");
    let e = result.expect_err("a run cut by shutdown must fail");
    assert!(e.to_string().contains("shut down"), "{e}");
    let status = stack.transformer.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "transformer exited with {status}: {}",
        stack.transformer.log_text()
    );
    // Grace (1 s) plus the abort, well under the orchestrator's kill timeout.
    assert!(signalled.elapsed() < Duration::from_secs(15));
    let log = stack.transformer.log_text();
    assert!(log.contains("shutdown grace period over"), "{log}");

    // The loader recorded the abort; nothing of the run is visible.
    let mut loader = LoaderClient::connect(&stack.loader.url()).await.unwrap();
    let runs = loader.list_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].status, "failed", "{:?}", runs[0]);
    assert!(
        runs[0].error_message.contains("shut down"),
        "{}",
        runs[0].error_message
    );
    assert_eq!(env.snapshot(), before);
    stack.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_loader_aborts_the_open_run_and_exits_0() {
    let (env, big, before) = prepared().await;
    let mut stack = Stack::start(
        &env,
        &[
            ("QUARRY_LOADER__SHUTDOWN_GRACE_SECS", "1"),
            ("QUARRY_EXTRACTOR__BATCH_ROWS", "500"),
        ],
    );
    let (result, at) = run_and_terminate(&stack, &stack.loader, &big, streaming, true).await;
    assert!(at < 400_000, "signalled after {at} rows");
    result.expect_err("a run whose loader stopped must fail");
    let status = stack.loader.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "loader exited with {status}: {}",
        stack.loader.log_text()
    );
    let log = stack.loader.log_text();
    assert!(
        log.contains("the loader shut down before its commit"),
        "{log}"
    );
    stack.stop();

    // The warehouse (closed cleanly) holds the failed run and nothing of it.
    assert_eq!(env.snapshot(), before);
    let runs = env.runs().await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].status, "failed", "{:?}", runs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_finishes_within_the_grace_period_commits() {
    let env = Env::new();
    let sample = env.copy_fixture();
    let stack = Stack::start(&env, &[("QUARRY_TRANSFORMER__SHUTDOWN_GRACE_SECS", "60")]);
    let (result, _) = run_and_terminate(&stack, &stack.transformer, &sample, planned, false).await;
    let summary = result.expect("the run finishes within the grace period");
    assert_eq!(summary.stats.unwrap().rows_in, 800);
    stack.stop();
    let runs = env.runs().await;
    assert_eq!(runs[0].status, "succeeded");
}

/// While a run holds the loader (its source paused), a second run waits
/// `begin_timeout_secs` for it and is then refused with one clear error;
/// the first run, resumed, commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_waits_begin_timeout_secs_then_is_refused() {
    let env = Env::new();
    let sample = env.copy_fixture();
    let big = big_input(&env, 400_000);
    let stack = Stack::start(
        &env,
        &[
            ("QUARRY_LOADER__BEGIN_TIMEOUT_SECS", "1"),
            ("QUARRY_EXTRACTOR__BATCH_ROWS", "500"),
        ],
    );
    let paused = tokio::sync::Notify::new();
    let first = async {
        let mut done = false;
        let req = RunRequest {
            source: big.display().to_string(),
            ..Default::default()
        };
        client::run_pipeline(&stack.transformer.url(), req, |e| {
            if !done && streaming(e).is_some() {
                stack.extractor.pause();
                paused.notify_one();
                done = true;
            }
        })
        .await
    };
    let second = async {
        paused.notified().await;
        let req = RunRequest {
            source: sample.display().to_string(),
            ..Default::default()
        };
        let refused = client::run_pipeline(&stack.transformer.url(), req, |_| {}).await;
        stack.extractor.resume();
        refused
    };
    let (first, second) = tokio::join!(first, second);
    let e = second.expect_err("the loader is busy");
    assert!(
        e.to_string()
            .contains("the warehouse is busy with another run for over 1 s"),
        "{e}"
    );
    assert_eq!(first.unwrap().stats.unwrap().rows_in, 400_000);
    stack.stop();
    let runs = env.runs().await;
    let statuses: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.status.as_str(), r.error_category.as_str()))
        .collect();
    // Newest first: the refused run is recorded when it is aborted.
    assert_eq!(
        statuses,
        [("failed", "backend"), ("succeeded", "")],
        "{runs:?}"
    );
}
