//! Services as separate processes, and the `quarry` command as a user runs it.

mod common;
mod snowflake_proxy;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Env;
use common::cli::quarry_ok;
use common::counting_proxy::CountingProxy;
use common::procs::{Service, big_input, free_port, quarry};
use quarry_cli::client;
use quarry_cli::embedded::Cluster;
use quarry_proto::{RunRequest, run_event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_extractor_mid_stream_fails_the_run_and_changes_nothing() {
    let mut env = Env::new();
    env.config.transformer.progress_interval_ms = 5;
    let good = env.copy_fixture();
    env.run(&good).await.unwrap();
    let before = env.snapshot();

    let big = big_input(&env, 400_000);

    let port = free_port();
    let vars = [
        (
            "QUARRY_EXTRACTOR__LISTEN".to_string(),
            format!("127.0.0.1:{port}"),
        ),
        (
            "QUARRY_EXTRACTOR__DATA_ROOTS".to_string(),
            format!("[{:?}]", env.data.display().to_string()),
        ),
        (
            "QUARRY_EXTRACTOR__BATCH_ROWS".to_string(),
            "500".to_string(),
        ),
    ];
    let mut extractor = Service::start("extractor", port, &vars, env.dir.path());
    let cluster = Cluster::start_with_extractor(&env.config, &extractor.url())
        .await
        .unwrap();
    let mut killed_at = None;
    let req = RunRequest {
        source: big.display().to_string(),
        ..Default::default()
    };
    let result = client::run_pipeline(cluster.transformer_url.as_deref().unwrap(), req, |e| {
        if let Some(run_event::Event::Progress(p)) = &e.event
            && p.rows_read > 0
            && killed_at.is_none()
        {
            extractor.child.kill().unwrap();
            killed_at = Some(p.rows_read);
        }
    })
    .await;
    let _ = extractor.child.kill();
    let _ = extractor.child.wait();
    let killed_at = killed_at.expect("the run streamed rows before finishing");
    assert!(killed_at < 400_000, "killed after {killed_at} rows");
    let e = result.expect_err("a run whose extractor died must fail");
    cluster.stop().await.unwrap();

    assert_eq!(env.snapshot(), before);
    let runs = env.runs().await;
    assert_eq!(runs[0].status, "failed", "{e}");
    assert!(!runs[0].error_message.is_empty());
}

/// An endpoint with nothing behind it, whose requests are counted.
fn dead_endpoint() -> CountingProxy {
    CountingProxy::start(&format!("http://127.0.0.1:{}", free_port()))
}

/// A command that failed (exit 1) after one attempt at `endpoint`, with one
/// line on stderr holding every one of `needles`.
fn fails_at_once_in_one_line(
    out: &std::process::Output,
    endpoint: &CountingProxy,
    needles: &[&str],
) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        needles.iter().all(|n| err.contains(n)),
        "{needles:?}: {err}"
    );
    assert_eq!(
        (endpoint.requests(), endpoint.refused()),
        (1, 1),
        "one attempt, not retried: {err}"
    );
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

#[test]
fn the_quarry_command_runs_the_default_job_and_reports() {
    let dir = common::user_dir();
    let stdout = quarry_ok(dir.path(), &["run"]);
    assert!(
        stdout.contains("succeeded") && stdout.contains("timestamp_invalid"),
        "{stdout}"
    );
    // The database file alone holds the data: nothing is left in the WAL.
    let copy = dir.path().join("copy.db");
    std::fs::copy(dir.path().join("agg_result.db"), &copy).unwrap();
    let rows: i64 = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row("SELECT count(*) FROM agg_trades_weekly", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 545);
    assert_eq!(
        read(dir.path().join("output/top_bronze_by_volume.csv")),
        "user_id,total_volume\n3005,298.57\n3003,285.98\n3004,283.57\n"
    );
    assert_eq!(
        read(dir.path().join("output/top_bronze_by_pnl.csv")),
        "user_id,total_pnl\n3003,69146.6913\n3001,27299.2767\n3004,-200.4569\n"
    );
    let q: serde_json::Value =
        serde_json::from_str(&read(dir.path().join("output/quality_report.json"))).unwrap();
    assert_eq!(q["rows_in"], 800);
    assert_eq!(q["rejected_by_reason"]["timestamp_missing"], 5);
    assert_eq!(q["run"]["status"], "succeeded");
    // Five sample rows have no price (all five rejected for their timestamp first).
    assert_eq!(q["completeness"]["price"]["missing"], 5);

    assert_eq!(
        quarry_ok(
            dir.path(),
            &["report", "top-users", "--metric", "pnl", "--limit", "2"]
        ),
        "user_id,total_pnl\n3003,69146.6913\n3001,27299.2767\n"
    );

    // A failing run: exit code 1, one line naming the problem.
    let out = quarry()
        .args([
            "run",
            "--source",
            "data/nope.csv",
            "--sqlite",
            "other.db",
            "--output",
            "out2",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("quarry: ") && err.contains("nope.csv"),
        "{err}"
    );

    let out = quarry()
        .arg("runs")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    // One run in this warehouse (the failed one went to other.db), succeeded.
    let listed = String::from_utf8_lossy(&out.stdout);
    let statuses: Vec<&str> = listed
        .lines()
        .filter_map(|l| {
            ["succeeded", "failed", "running"]
                .into_iter()
                .find(|s| l.contains(&format!(" {s} ")))
        })
        .collect();
    assert_eq!(statuses, ["succeeded"], "{listed}");
}

#[test]
fn gen_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.csv", "b.csv"] {
        let st = quarry()
            .args(["gen", "--rows", "5000", "--seed", "7", "--out", name])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let a = std::fs::read(dir.path().join("a.csv")).unwrap();
    assert_eq!(a, std::fs::read(dir.path().join("b.csv")).unwrap());
    assert_eq!(a.iter().filter(|b| **b == b'\n').count(), 5001);
}

/// `quarry run --warehouse clickhouse` against the server scripts/test.sh
/// starts gives the same top-3 files as the SQLite run; a wrong address fails
/// at once with one line naming it.
#[test]
#[ignore = "needs the ClickHouse stand-in: scripts/test.sh runs it"]
fn quarry_run_on_clickhouse_matches_the_sqlite_run() {
    let url = quarry_testkit::standin("QUARRY_TEST_CLICKHOUSE_URL");
    let dir = common::user_dir();
    quarry_ok(dir.path(), &["run", "-q", "--output", "out-sqlite"]);
    let database = format!("quarry_cli_{}", std::process::id());
    let on_clickhouse = |url: &str| {
        quarry()
            .args([
                "run",
                "-q",
                "--warehouse",
                "clickhouse",
                "--output",
                "out-ch",
            ])
            .env("QUARRY_WAREHOUSE__CLICKHOUSE__URL", url)
            .env("QUARRY_WAREHOUSE__CLICKHOUSE__DATABASE", &database)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = on_clickhouse(&url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["top_bronze_by_volume.csv", "top_bronze_by_pnl.csv"] {
        assert_eq!(
            read(dir.path().join("out-ch").join(f)),
            read(dir.path().join("out-sqlite").join(f)),
            "{f}"
        );
    }
    // History and reports read from ClickHouse too.
    let runs = quarry()
        .args(["runs", "--stats", "--warehouse", "clickhouse"])
        .env("QUARRY_WAREHOUSE__CLICKHOUSE__URL", &url)
        .env("QUARRY_WAREHOUSE__CLICKHOUSE__DATABASE", &database)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&runs.stdout);
    assert!(text.contains("1 (1 / 0 / 0)"), "{text}");

    // A permanent error (unknown user) fails at once with the server's
    // message: one request (the connectivity check), not retried.
    let proxy = common::counting_proxy::CountingProxy::start(&url);
    let out = quarry()
        .args(["run", "-q", "--warehouse", "clickhouse"])
        .env("QUARRY_WAREHOUSE__CLICKHOUSE__URL", &proxy.url)
        .env("QUARRY_WAREHOUSE__CLICKHOUSE__USER", "nobody")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("nobody"), "{err}");
    assert_eq!(proxy.requests(), 1, "a permanent error was retried");

    // A server that is not there: one line naming it.
    let dead = dead_endpoint();
    let out = on_clickhouse(&dead.url);
    fails_at_once_in_one_line(
        &out,
        &dead,
        &["clickhouse at http://127.0.0.1:", "cannot connect"],
    );
}

/// `quarry run --warehouse bigquery` against the emulator scripts/test.sh
/// starts gives the same top-3 files as the SQLite run; missing credentials
/// and a wrong address fail at once with one line.
#[test]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
fn quarry_run_on_bigquery_matches_the_sqlite_run() {
    let url = quarry_testkit::standin("QUARRY_TEST_BIGQUERY_URL");
    let project = std::env::var("QUARRY_TEST_BIGQUERY_PROJECT").unwrap();
    let dir = common::user_dir();
    quarry_ok(dir.path(), &["run", "-q", "--output", "out-sqlite"]);
    let dataset = format!("quarry_cli_{}", std::process::id());
    let bigquery = |url: &str, args: &[&str]| {
        quarry()
            .args(args)
            .args(["--warehouse", "bigquery"])
            .env("QUARRY_WAREHOUSE__BIGQUERY__API_URL", url)
            .env("QUARRY_WAREHOUSE__BIGQUERY__PROJECT", &project)
            .env("QUARRY_WAREHOUSE__BIGQUERY__DATASET", &dataset)
            // The emulator takes any bearer token (scripts/standins.sh sets one).
            .env(
                "QUARRY_WAREHOUSE__BIGQUERY__ACCESS_TOKEN_ENV",
                "QUARRY_TEST_BIGQUERY_TOKEN",
            )
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = bigquery(&url, &["run", "-q", "--output", "out-bq"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["top_bronze_by_volume.csv", "top_bronze_by_pnl.csv"] {
        assert_eq!(
            read(dir.path().join("out-bq").join(f)),
            read(dir.path().join("out-sqlite").join(f)),
            "{f}"
        );
    }
    // History read from BigQuery too.
    let runs = bigquery(&url, &["runs", "--stats"]);
    let text = String::from_utf8_lossy(&runs.stdout);
    assert!(text.contains("1 (1 / 0 / 0)"), "{text}");

    // The service-account path: a key file whose token exchange is answered
    // by a test-only token endpoint (the emulator has none), then reading
    // the run history with the token it hands out.
    let token_server = TokenEndpoint::start();
    let key = dir.path().join("sa.json");
    write_service_account_key(&key, &token_server.url());
    let runs = quarry()
        .args(["runs", "--warehouse", "bigquery"])
        .env("QUARRY_WAREHOUSE__BIGQUERY__API_URL", &url)
        .env("QUARRY_WAREHOUSE__BIGQUERY__PROJECT", &project)
        .env("QUARRY_WAREHOUSE__BIGQUERY__DATASET", &dataset)
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        runs.status.success(),
        "{}",
        String::from_utf8_lossy(&runs.stderr)
    );
    assert!(
        String::from_utf8_lossy(&runs.stdout).contains("succeeded"),
        "{}",
        String::from_utf8_lossy(&runs.stdout)
    );
    assert!(token_server.requests() >= 1);
    // The same key with its token endpoint gone: one line, at once.
    drop(token_server);
    let out = quarry()
        .args(["run", "-q", "--warehouse", "bigquery"])
        .env("QUARRY_WAREHOUSE__BIGQUERY__API_URL", &url)
        .env("QUARRY_WAREHOUSE__BIGQUERY__PROJECT", &project)
        .env("QUARRY_WAREHOUSE__BIGQUERY__DATASET", &dataset)
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    // No credentials at all (no key, no gcloud file, a metadata server that
    // is not there): one line naming what was tried.
    let out = quarry()
        .args(["run", "-q", "--warehouse", "bigquery"])
        .env("QUARRY_WAREHOUSE__BIGQUERY__API_URL", &url)
        .env("QUARRY_WAREHOUSE__BIGQUERY__PROJECT", &project)
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env("CLOUDSDK_CONFIG", dir.path().join("no-gcloud"))
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{}", free_port()))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for says in [
        "GOOGLE_APPLICATION_CREDENTIALS",
        "no-gcloud",
        "metadata server",
    ] {
        assert!(err.contains(says), "{says}: {err}");
    }

    // An endpoint that is not there: one line naming it.
    let dead = dead_endpoint();
    let out = bigquery(&dead.url, &["run", "-q"]);
    fails_at_once_in_one_line(&out, &dead, &["bigquery", "cannot connect"]);
}

/// A test-only OAuth2 token endpoint: answers every request with a fixed
/// access token, as Google's would after checking the signed assertion.
struct TokenEndpoint {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TokenEndpoint {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, done) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                assert!(
                    String::from_utf8_lossy(&body).contains("assertion="),
                    "not a JWT bearer grant"
                );
                count.fetch_add(1, Ordering::SeqCst);
                let token = r#"{"access_token":"granted","expires_in":3600,"token_type":"Bearer"}"#;
                let mut stream = reader.into_inner();
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{token}",
                    token.len()
                )
                .unwrap();
            }
        });
        Self {
            port,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // The listener closes when its thread sees the flag.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A service-account key file (fresh RSA key from openssl) whose token
/// exchange goes to `token_uri`.
fn write_service_account_key(path: &Path, token_uri: &str) {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl genpkey failed");
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "quarry-test",
        "private_key_id": "test",
        "private_key": String::from_utf8(out.stdout).unwrap(),
        "client_email": "quarry@quarry-test.iam.gserviceaccount.com",
        "client_id": "1",
        "auth_uri": "http://127.0.0.1/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "http://127.0.0.1/certs",
        "client_x509_cert_url": "http://127.0.0.1/cert",
    });
    std::fs::write(path, key.to_string()).unwrap();
}

/// `quarry ping URL`: exit 0 and SERVING from a running service, exit 1 with
/// one line when nothing listens (what container health checks rely on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_a_services_health() {
    let env = Env::new();
    let cluster = Cluster::start_loader(&env.config).await.unwrap();
    let out = quarry()
        .args([
            "ping",
            &cluster.loader_url,
            "--service",
            "quarry.v1.LoaderService",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let out = quarry()
        .args(["ping", &cluster.loader_url, "--service", "no.such.Service"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    cluster.stop().await.unwrap();
    let out = quarry()
        .args(["ping", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `quarry run --warehouse snowflake` against the fakesnow server
/// scripts/test.sh starts, through the test-only proxy (set as the
/// account's `endpoint`), gives the same top-3 files as the SQLite run; a
/// host that is not there fails at once with one line naming it.
#[test]
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
fn quarry_run_on_snowflake_matches_the_sqlite_run() {
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let proxy = snowflake_proxy::start(&url);
    let dir = common::user_dir();
    quarry_ok(dir.path(), &["run", "-q", "--output", "out-sqlite"]);
    let database = format!("quarry_cli_{}", std::process::id());
    let on_snowflake = |endpoint: &str, args: &[&str]| {
        quarry()
            .args(args)
            .args(["--warehouse", "snowflake"])
            .env("QUARRY_WAREHOUSE__SNOWFLAKE__ACCOUNT", "quarry-test")
            .env("QUARRY_WAREHOUSE__SNOWFLAKE__USER", "quarry")
            .env("QUARRY_WAREHOUSE__SNOWFLAKE__ENDPOINT", endpoint)
            .env("QUARRY_WAREHOUSE__SNOWFLAKE__DATABASE", &database)
            .env("QUARRY_WAREHOUSE__SNOWFLAKE__MAX_ATTEMPTS", "2")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = on_snowflake(&proxy.url, &["run", "-q", "--output", "out-sf"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["top_bronze_by_volume.csv", "top_bronze_by_pnl.csv"] {
        assert_eq!(
            read(dir.path().join("out-sf").join(f)),
            read(dir.path().join("out-sqlite").join(f)),
            "{f}"
        );
    }
    // History reads from Snowflake too.
    let runs = on_snowflake(&proxy.url, &["runs", "--stats"]);
    let text = String::from_utf8_lossy(&runs.stdout);
    assert!(text.contains("1 (1 / 0 / 0)"), "{text}");

    // A host that is not there: one line naming it.
    let dead = dead_endpoint();
    let out = on_snowflake(&dead.url, &["run", "-q"]);
    fails_at_once_in_one_line(
        &out,
        &dead,
        &[
            "snowflake account quarry-test at http://127.0.0.1:",
            "cannot connect",
        ],
    );
}

/// Weekly PnL totals past 15 significant digits, delivered as two runs into
/// one week: the top files and `quarry report top-users` on SQLite are
/// exact, and so is `COALESCE(total_pnl_exact, total_pnl)` for users' SQL.
#[test]
fn top_files_are_exact_past_fifteen_digits_on_sqlite() {
    use quarry_core::decimal::{PNL_SCALE, SCALE, parse_scaled};
    let dir = common::user_dir();
    let trades = [
        (
            "2023-01-02 09:00:00",
            "7001",
            "sell",
            "12345678.12345678",
            "248.64810571",
        ),
        (
            "2023-01-02 10:00:00",
            "7001",
            "buy",
            "0.00000001",
            "99999999.99999999",
        ),
        (
            "2023-01-03 09:00:00",
            "7002",
            "sell",
            "98765432.1",
            "31.08000001",
        ),
        (
            "2023-01-04 09:00:00",
            "7001",
            "sell",
            "3.33333333",
            "7.77777777",
        ),
        (
            "2023-01-04 12:00:00",
            "7003",
            "buy",
            "11111111.11111111",
            "0.99999999",
        ),
        (
            "2023-01-05 09:00:00",
            "7002",
            "buy",
            "0.12345679",
            "87654321.12345678",
        ),
    ];
    let (mut volume, mut pnl) = (
        std::collections::BTreeMap::<&str, i128>::new(),
        std::collections::BTreeMap::<&str, i128>::new(),
    );
    let mut files = [String::from(common::HEADER), String::from(common::HEADER)];
    for (i, (ts, user, side, q, p)) in trades.iter().enumerate() {
        let (qv, pv) = (
            parse_scaled(q.as_bytes(), SCALE).unwrap(),
            parse_scaled(p.as_bytes(), SCALE).unwrap(),
        );
        *volume.entry(user).or_default() += qv;
        *pnl.entry(user).or_default() += if *side == "sell" { qv * pv } else { -qv * pv };
        files[usize::from(i >= 3)] += &format!("{ts},{user},bronze,XYZ,{side},{q},{p}\n");
    }
    for (k, f) in files.iter().enumerate() {
        let name = format!("data/part-{k}.csv");
        std::fs::write(dir.path().join(&name), f).unwrap();
        quarry_ok(dir.path(), &["run", "-q", "--source", &name]);
    }
    let top = |file: &str, scale: u32| -> Vec<(String, i128)> {
        read(dir.path().join("output").join(file))
            .lines()
            .skip(1)
            .map(|l| {
                let (user, value) = l.split_once(',').unwrap();
                (
                    user.to_string(),
                    parse_scaled(value.as_bytes(), scale).unwrap(),
                )
            })
            .collect()
    };
    let ranked = |totals: &std::collections::BTreeMap<&str, i128>| -> Vec<(String, i128)> {
        let mut v: Vec<(String, i128)> = totals.iter().map(|(u, t)| (u.to_string(), *t)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    };
    assert_eq!(top("top_bronze_by_pnl.csv", PNL_SCALE), ranked(&pnl));
    assert_eq!(top("top_bronze_by_volume.csv", SCALE), ranked(&volume));
    let report = quarry_ok(
        dir.path(),
        &["report", "top-users", "--metric", "pnl", "--limit", "3"],
    );
    let best = &ranked(&pnl)[0];
    let best_text = quarry_core::decimal::format_scaled(best.1, PNL_SCALE);
    assert!(
        report.contains(best.0.as_str()) && report.contains(best_text.trim_end_matches('0')),
        "{report}"
    );
    let stored: String = rusqlite::Connection::open(dir.path().join("agg_result.db"))
        .unwrap()
        .query_row(
            "SELECT CAST(COALESCE(total_pnl_exact, total_pnl) AS TEXT) FROM agg_trades_weekly WHERE user_id = ?1",
            [&best.0],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(parse_scaled(stored.as_bytes(), PNL_SCALE).unwrap(), best.1);
}
