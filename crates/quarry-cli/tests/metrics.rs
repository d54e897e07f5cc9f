//! Prometheus `/metrics` of service processes, scraped over plain HTTP after
//! real runs, and the JSON logs of a run.

mod common;

use common::Env;
use common::procs::{Stack, free_port};
use quarry_cli::client;
use quarry_proto::RunRequest;

/// The value of one sample, e.g. `quarry_rows_in_total` or
/// `quarry_rows_loaded_total{table="trades"}`; fails the test if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn scrape(port: u16) -> String {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    resp.text().await.unwrap()
}

async fn run(stack: &Stack, source: &std::path::Path) -> quarry_core::Result<String> {
    let req = RunRequest {
        source: source.display().to_string(),
        ..Default::default()
    };
    client::run_pipeline(&stack.transformer.url(), req, |_| {})
        .await
        .map(|s| s.run_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_counts_its_work_on_metrics() {
    let env = Env::new();
    let sample_csv = env.copy_fixture();
    let (em, tm, lm) = (free_port(), free_port(), free_port());
    let listen = |p: u16| format!("127.0.0.1:{p}");
    let (em_s, tm_s, lm_s) = (listen(em), listen(tm), listen(lm));
    let stack = Stack::start(
        &env,
        &[
            ("QUARRY_EXTRACTOR__METRICS_LISTEN", &em_s),
            ("QUARRY_TRANSFORMER__METRICS_LISTEN", &tm_s),
            ("QUARRY_LOADER__METRICS_LISTEN", &lm_s),
            ("QUARRY_LOG_FORMAT", "json"),
        ],
    );
    // Before any run: the series exist at 0.
    let t = scrape(tm).await;
    assert_eq!(sample(&t, "quarry_runs_started_total"), 0.0);
    assert_eq!(sample(&t, "quarry_errors_total{category=\"input\"}"), 0.0);

    let run_id = run(&stack, &sample_csv).await.unwrap();
    let t = scrape(tm).await;
    assert_eq!(sample(&t, "quarry_runs_started_total"), 1.0);
    assert_eq!(sample(&t, "quarry_runs_succeeded_total"), 1.0);
    assert_eq!(sample(&t, "quarry_runs_failed_total"), 0.0);
    assert_eq!(sample(&t, "quarry_rows_in_total"), 800.0);
    assert_eq!(sample(&t, "quarry_rows_valid_total"), 790.0);
    assert_eq!(sample(&t, "quarry_rows_rejected_total"), 10.0);
    for stage in ["plan", "extract", "transform", "load", "commit"] {
        let series = format!("quarry_stage_duration_seconds_count{{stage=\"{stage}\"}}");
        assert_eq!(sample(&t, &series), 1.0, "{series}");
    }

    let l = scrape(lm).await;
    assert_eq!(sample(&l, "quarry_loader_commits_total"), 1.0);
    assert_eq!(sample(&l, "quarry_loader_aborts_total"), 0.0);
    assert_eq!(
        sample(&l, "quarry_rows_loaded_total{table=\"trades\"}"),
        790.0
    );
    assert_eq!(
        sample(&l, "quarry_rows_loaded_total{table=\"trades_rejected\"}"),
        10.0
    );
    assert_eq!(
        sample(&l, "quarry_rows_loaded_total{table=\"agg_trades_weekly\"}"),
        545.0
    );
    assert_eq!(
        sample(&l, "quarry_loader_commit_duration_seconds_count"),
        1.0
    );

    let e = scrape(em).await;
    let size = std::fs::metadata(&sample_csv).unwrap().len();
    assert_eq!(sample(&e, "quarry_extractor_bytes_read_total"), size as f64);
    assert_eq!(sample(&e, "quarry_extractor_rows_read_total"), 800.0);
    assert_eq!(sample(&e, "quarry_extractor_files_read_total"), 1.0);

    // A failing run: counted as failed, by category, and aborted.
    let missing = env.data.join("nope.csv");
    run(&stack, &missing).await.expect_err("no such file");
    let t = scrape(tm).await;
    assert_eq!(sample(&t, "quarry_runs_started_total"), 2.0);
    assert_eq!(sample(&t, "quarry_runs_failed_total"), 1.0);
    assert_eq!(sample(&t, "quarry_errors_total{category=\"input\"}"), 1.0);
    assert_eq!(
        sample(&t, "quarry_stage_duration_seconds_count{stage=\"plan\"}"),
        1.0
    );
    let l = scrape(lm).await;
    assert_eq!(sample(&l, "quarry_loader_aborts_total"), 1.0);
    assert_eq!(sample(&l, "quarry_loader_commits_total"), 1.0);
    assert_eq!(
        sample(&scrape(em).await, "quarry_errors_total{category=\"input\"}"),
        1.0
    );

    let (t_log, l_log) = (stack.transformer.log.clone(), stack.loader.log.clone());
    stack.stop();

    // Every JSON log line of the run carries its run_id.
    for log in [t_log, l_log] {
        let text = std::fs::read_to_string(&log).unwrap();
        let mut of_run = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", log.display()));
            let message = v["message"].as_str().unwrap_or_default();
            let service_line = ["listening", "metrics on", "shutting down", "waiting for"]
                .iter()
                .any(|m| message.contains(m));
            if service_line {
                continue;
            }
            // Every other line belongs to a run and names it, at the top
            // level or in the run's span.
            if line.contains(&run_id) {
                of_run += 1;
            } else {
                assert!(
                    v["span"]["run_id"].is_string() || v["run_id"].is_string(),
                    "{}: a run's line without run_id: {line}\n{text}",
                    log.display()
                );
            }
        }
        assert!(of_run >= 2, "{}: {of_run} lines of the run", log.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archiver_counts_partitions_moved_and_restored() {
    use quarry_proto::archiver_service_client::ArchiverServiceClient;
    use quarry_proto::{ArchiveRequest, RestoreRequest};

    let env = Env::new();
    env.run(&env.copy_fixture()).await.unwrap();
    let (port, metrics) = (free_port(), free_port());
    let vars: Vec<(String, String)> = [
        ("QUARRY_ARCHIVER__LISTEN", format!("127.0.0.1:{port}")),
        (
            "QUARRY_ARCHIVER__METRICS_LISTEN",
            format!("127.0.0.1:{metrics}"),
        ),
        ("QUARRY_ARCHIVER__INTERVAL_SECS", "0".into()),
        (
            "QUARRY_ARCHIVER__COLD_ROOT",
            env.dir.path().join("cold").display().to_string(),
        ),
        (
            "QUARRY_WAREHOUSE__SQLITE__PATH",
            env.db.display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut archiver = common::procs::Service::start("archiver", port, &vars, env.dir.path());
    let mut c = ArchiverServiceClient::connect(archiver.url())
        .await
        .unwrap();
    let archived = c
        .archive(ArchiveRequest {
            table: "trades".into(),
            as_of: "2023-03-15".into(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archived.moves.len(), 43);
    let restored = c
        .restore(RestoreRequest {
            table: "trades".into(),
            from: "2023-01-01".into(),
            to: "2023-01-10".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let n_restored = restored
        .moves
        .iter()
        .filter(|m| m.outcome == "restored")
        .count();
    // 2023-01-01 to 2023-01-10: ten archived days come back.
    assert_eq!(n_restored, 10, "{:?}", restored.moves);
    let m = scrape(metrics).await;
    assert_eq!(sample(&m, "quarry_archiver_partitions_moved_total"), 43.0);
    assert_eq!(
        sample(&m, "quarry_archiver_partitions_restored_total"),
        n_restored as f64
    );
    assert_eq!(sample(&m, "quarry_archiver_partitions_failed_total"), 0.0);
    archiver.terminate();
    let status = archiver.wait_exit(std::time::Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", archiver.log_text());
}
