//! The warehouse contract, written once and run against every backend: the
//! reference sample through the whole pipeline gives the expected tables and
//! top lists; a re-run is idempotent; an abort leaves nothing; partitions can
//! be listed, read back exactly, dropped and written back.

mod common;
mod snowflake_proxy;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int64Type};
use arrow::util::display::ArrayFormatter;
use common::{Env, expected_agg, fixtures};
use quarry_core::config::WarehouseKind;
use quarry_core::dates::date_text;
use quarry_core::decimal::{PNL_SCALE, parse_scaled};
use quarry_core::{ErrorCategory, Table};
use quarry_warehouse::{
    Metric, RunCommit, RunFailure, RunStart, RunStats, TopUsersQuery, Warehouse, WriteMode,
};

/// Every committed row of every table, as text (decimals exact), by table
/// and partition.
type Snapshot = BTreeMap<(Table, String), Vec<String>>;

async fn snapshot(wh: &dyn Warehouse) -> Snapshot {
    let mut out = BTreeMap::new();
    for table in Table::ALL {
        for p in wh.list_partitions(table).await.unwrap() {
            let batches = wh.read_partition(table, &p.partition).await.unwrap();
            let mut rows = rows_text(&batches);
            assert_eq!(rows.len() as u64, p.rows, "{table} {}", p.partition);
            rows.sort();
            out.insert((table, p.partition), rows);
        }
    }
    out
}

/// Rows as `|`-joined text, using Arrow's display of each value.
fn rows_text(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = vec![];
    for b in batches {
        // Timestamps as their nanoseconds: formatting a named time zone
        // would need chrono-tz.
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(..) => cast(c, &DataType::Int64).unwrap(),
                _ => c.clone(),
            })
            .collect();
        let cols: Vec<_> = cols
            .iter()
            .map(|c| ArrayFormatter::try_new(c, &Default::default()).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| c.value(i).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out
}

/// The contract, against the warehouse `env.config.warehouse` selects.
async fn conformance(env: &Env) {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("trades_sample.expected.json")).unwrap(),
    )
    .unwrap();

    // 1. The reference sample through the pipeline.
    let src = env.copy_fixture();
    env.run(&src).await.unwrap();
    let wh: Arc<dyn Warehouse> = quarry_warehouse::open(&env.config.warehouse).unwrap();
    wh.check_connectivity().await.unwrap();

    // agg_trades_weekly equals the expected CSV, decimal for decimal.
    let want = expected_agg(|t, scale| parse_scaled(t.as_bytes(), scale).unwrap());
    let weeks = wh.list_partitions(Table::AggTradesWeekly).await.unwrap();
    assert_eq!(weeks.len() as u64, expected["weeks"].as_u64().unwrap());
    let mut got = vec![];
    for w in &weeks {
        for b in wh
            .read_partition(Table::AggTradesWeekly, &w.partition)
            .await
            .unwrap()
        {
            let s = |i: usize| b.column(i).as_string::<i32>();
            let d = |i: usize| b.column(i).as_primitive::<Decimal128Type>();
            for i in 0..b.num_rows() {
                got.push((
                    date_text(b.column(0).as_primitive::<Date32Type>().value(i)),
                    s(1).value(i).to_string(),
                    s(2).value(i).to_string(),
                    s(3).value(i).to_string(),
                    d(4).value(i),
                    d(5).value(i),
                    b.column(6).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
    }
    got.sort();
    assert_eq!(got, want);

    // The quarantine: every rejected row with its reason.
    let rejected = wh.list_partitions(Table::TradesRejected).await.unwrap();
    assert_eq!(rejected.len(), 1, "one source file");
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for b in wh
        .read_partition(Table::TradesRejected, &rejected[0].partition)
        .await
        .unwrap()
    {
        let r = b.column(7).as_string::<i32>();
        for i in 0..b.num_rows() {
            *reasons.entry(r.value(i).to_string()).or_default() += 1;
        }
    }
    assert_eq!(
        serde_json::to_value(&reasons).unwrap(),
        expected["rejected_by_reason"]
    );
    let trade_dates = wh.list_partitions(Table::Trades).await.unwrap();
    assert_eq!(
        trade_dates.len() as u64,
        expected["trade_dates"].as_u64().unwrap()
    );
    assert_eq!(
        trade_dates.iter().map(|p| p.rows).sum::<u64>(),
        expected["rows_valid"].as_u64().unwrap()
    );

    // Top lists.
    for (metric, key) in [
        (Metric::Volume, "top_bronze_by_volume"),
        (Metric::Pnl, "top_bronze_by_pnl"),
    ] {
        let top = wh
            .top_users(&TopUsersQuery {
                client_type: "bronze".into(),
                metric,
                limit: 3,
            })
            .await
            .unwrap();
        let want: Vec<(String, i128)> = expected[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let v = p[1].as_str().unwrap();
                (
                    p[0].as_str().unwrap().to_string(),
                    parse_scaled(v.as_bytes(), PNL_SCALE).unwrap(),
                )
            })
            .collect();
        let got: Vec<(String, i128)> = top
            .iter()
            .map(|u| {
                (
                    u.user_id.clone(),
                    parse_scaled(u.value.as_bytes(), PNL_SCALE).unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "{key}");
    }

    // 2. A re-run is idempotent.
    let before = snapshot(wh.as_ref()).await;
    env.run(&src).await.unwrap();
    assert_eq!(
        snapshot(wh.as_ref()).await,
        before,
        "a re-run changed the tables"
    );

    // 3. An abort leaves nothing behind and is recorded.
    let (table, partition) = (Table::Trades, trade_dates[3].partition.clone());
    let original = wh.read_partition(table, &partition).await.unwrap();
    wh.begin_run(RunStart {
        run_id: "aborted".into(),
        source: "conformance".into(),
        options_json: "{}".into(),
    })
    .await
    .unwrap();
    for b in &original {
        wh.write("aborted", table, WriteMode::ReplacePartitions, b.clone())
            .await
            .unwrap();
    }
    wh.abort(RunFailure {
        run_id: "aborted".into(),
        category: ErrorCategory::Input,
        message: "stopped on purpose".into(),
        stats: RunStats::default(),
        quality_json: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(
        snapshot(wh.as_ref()).await,
        before,
        "the abort left rows behind"
    );
    let run = wh.get_run("aborted").await.unwrap().unwrap();
    assert_eq!(
        (run.status.as_str(), run.error_category.as_str()),
        ("failed", "input")
    );

    // 4. Partition round trip: drop one, then write it back through a run.
    let rows = trade_dates[3].rows;
    assert_eq!(wh.drop_partition(table, &partition).await.unwrap(), rows);
    let after_drop = wh.list_partitions(table).await.unwrap();
    assert!(after_drop.iter().all(|p| p.partition != partition));
    assert_eq!(after_drop.len(), trade_dates.len() - 1);
    assert!(
        wh.read_partition(table, &partition)
            .await
            .unwrap()
            .is_empty()
    );
    wh.begin_run(RunStart {
        run_id: "restore".into(),
        source: "conformance".into(),
        options_json: "{}".into(),
    })
    .await
    .unwrap();
    for b in original {
        wh.write("restore", table, WriteMode::ReplacePartitions, b)
            .await
            .unwrap();
    }
    let committed = wh
        .commit(RunCommit {
            run_id: "restore".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(committed["trades"], rows);
    assert_eq!(
        snapshot(wh.as_ref()).await,
        before,
        "the round trip changed the tables"
    );
    wh.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    conformance(&Env::new()).await;
}

/// Against the ClickHouse server scripts/test.sh starts (QUARRY_TEST_CLICKHOUSE_URL);
/// if the script started it and it does not answer, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse() {
    let Ok(url) = std::env::var("QUARRY_TEST_CLICKHOUSE_URL") else {
        eprintln!("skipped: QUARRY_TEST_CLICKHOUSE_URL is not set (scripts/test.sh sets it)");
        return;
    };
    let mut env = Env::new();
    let ch = &mut env.config.warehouse.clickhouse;
    ch.url = url;
    // A database of its own: runs of the suite never see each other's tables.
    ch.database = format!("quarry_test_{}", std::process::id());
    let (url, database) = (ch.url.clone(), ch.database.clone());
    env.config.warehouse.kind = WarehouseKind::Clickhouse;
    conformance(&env).await;
    // Nothing left behind: no staging tables of any run, committed or aborted.
    let out = std::process::Command::new("curl")
        .args(["-sf", "--data-binary"])
        .arg(format!(
            "SELECT name FROM system.tables WHERE database = '{database}' ORDER BY name"
        ))
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url} failed");
    let tables = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        tables.split_whitespace().collect::<Vec<_>>(),
        [
            "agg_trades_weekly",
            "pipeline_runs",
            "trades",
            "trades_rejected"
        ],
        "{tables}"
    );
}

/// Against the fakesnow server scripts/test.sh starts (QUARRY_TEST_SNOWFLAKE_URL),
/// through the test-only proxy that fills in the answers fakesnow leaves
/// short; if the script started it and it does not answer, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake() {
    let Ok(url) = std::env::var("QUARRY_TEST_SNOWFLAKE_URL") else {
        eprintln!("skipped: QUARRY_TEST_SNOWFLAKE_URL is not set (scripts/test.sh sets it)");
        return;
    };
    let proxy = snowflake_proxy::start(&url);
    let mut env = Env::new();
    // A database of its own: fakesnow keeps one in-memory store for everyone.
    let database = format!("quarry_test_{}", std::process::id());
    snowflake_config(&mut env.config.warehouse, &proxy, &database);
    conformance(&env).await;
    // Nothing left behind: no staging tables of any run, committed or aborted.
    assert_eq!(
        snowflake_proxy::tables(&url, &database).await,
        [
            "AGG_TRADES_WEEKLY",
            "PIPELINE_RUNS",
            "TRADES",
            "TRADES_REJECTED"
        ]
    );
}

fn snowflake_config(
    config: &mut quarry_core::config::WarehouseConfig,
    proxy: &snowflake_proxy::Proxy,
    database: &str,
) {
    config.kind = WarehouseKind::Snowflake;
    let sf = &mut config.snowflake;
    sf.account = "quarry-test".into();
    sf.user = "quarry".into();
    sf.endpoint = proxy.url.clone();
    sf.database = database.into();
}

/// Transient failures (HTTP 503 from the service, here from the proxy for
/// the next N statements) are retried with backoff until they pass or the
/// attempts run out; permanent ones (a missing object) fail on the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_retries_transient_errors_only() {
    use std::sync::atomic::Ordering::SeqCst;
    let Ok(url) = std::env::var("QUARRY_TEST_SNOWFLAKE_URL") else {
        eprintln!("skipped: QUARRY_TEST_SNOWFLAKE_URL is not set (scripts/test.sh sets it)");
        return;
    };
    let proxy = snowflake_proxy::start(&url);
    let mut config = quarry_core::config::WarehouseConfig::default();
    let database = format!("quarry_retry_{}", std::process::id());
    snowflake_config(&mut config, &proxy, &database);
    config.snowflake.max_attempts = 4;
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();
    let batch = RecordBatch::try_new(
        Table::AggTradesWeekly.schema(),
        vec![
            Arc::new(arrow::array::Date32Array::from(vec![19_360, 19_367])),
            Arc::new(arrow::array::StringArray::from(vec!["gold", "it's"])),
            Arc::new(arrow::array::StringArray::from(vec!["a\\b", "u"])),
            Arc::new(arrow::array::StringArray::from(vec!["SYM", "S"])),
            Arc::new(
                arrow::array::Decimal128Array::from(vec![150_000_000, 1])
                    .with_data_type(quarry_core::schema::VOLUME_TYPE),
            ),
            Arc::new(
                arrow::array::Decimal128Array::from(vec![-1, 12_345_678_901_234_567_890_123])
                    .with_data_type(quarry_core::schema::PNL_TYPE),
            ),
            Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
        ],
    )
    .unwrap();
    wh.begin_run(RunStart {
        run_id: "retried".into(),
        source: "test".into(),
        options_json: "{}".into(),
    })
    .await
    .unwrap();
    // The staging INSERT meets two 503s, then goes through.
    proxy.state.fail_next.store(2, SeqCst);
    wh.write(
        "retried",
        Table::AggTradesWeekly,
        WriteMode::ReplacePartitions,
        batch.clone(),
    )
    .await
    .unwrap();
    assert_eq!(proxy.state.failed.load(SeqCst), 2);
    // The commit meets one more.
    proxy.state.fail_next.store(1, SeqCst);
    let rows = wh
        .commit(RunCommit {
            run_id: "retried".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(proxy.state.failed.load(SeqCst), 3);
    assert_eq!(rows["agg_trades_weekly"], 2);
    let parts = wh.list_partitions(Table::AggTradesWeekly).await.unwrap();
    assert_eq!(parts.len(), 2);
    // Exact values and escaped text came back as sent.
    let mut back = vec![];
    for p in &parts {
        back.extend(
            wh.read_partition(Table::AggTradesWeekly, &p.partition)
                .await
                .unwrap(),
        );
    }
    assert_eq!(rows_text(&back), rows_text(&[batch]));
    assert_eq!(
        wh.get_run("retried").await.unwrap().unwrap().status,
        "succeeded"
    );

    // More 503s than attempts: fails as a transient backend error after
    // exactly max_attempts tries.
    proxy.state.fail_next.store(100, SeqCst);
    let before = proxy.state.queries.load(SeqCst);
    let e = wh.list_partitions(Table::Trades).await.unwrap_err();
    assert!(
        matches!(
            e,
            quarry_core::Error::Backend {
                transient: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("503"), "{e}");
    assert_eq!(proxy.state.queries.load(SeqCst) - before, 4);
    proxy.state.fail_next.store(0, SeqCst);

    // A missing object: permanent, one try, the service's message.
    let mut missing = config.clone();
    missing.snowflake.database = format!("{database}_missing");
    let wh2 = quarry_warehouse::open(&missing).unwrap();
    let before = proxy.state.queries.load(SeqCst);
    let e = wh2.list_runs(10).await.unwrap_err();
    assert!(
        matches!(
            e,
            quarry_core::Error::Backend {
                transient: false,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_eq!(proxy.state.queries.load(SeqCst) - before, 1);
}

/// The load rate against fakesnow (run by hand: `cargo test -p quarry-cli
/// --test conformance snowflake_load_rate -- --ignored --nocapture`, with
/// QUARRY_SNOWFLAKE_LOAD_ROWS input rows, default 2000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn snowflake_load_rate() {
    let Ok(url) = std::env::var("QUARRY_TEST_SNOWFLAKE_URL") else {
        eprintln!("skipped: QUARRY_TEST_SNOWFLAKE_URL is not set (scripts/test.sh sets it)");
        return;
    };
    let rows: u64 = std::env::var("QUARRY_SNOWFLAKE_LOAD_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let proxy = snowflake_proxy::start(&url);
    let mut env = Env::new();
    let database = format!("quarry_rate_{}", std::process::id());
    snowflake_config(&mut env.config.warehouse, &proxy, &database);
    let mut csv = vec![];
    quarry_testkit::generate(
        &quarry_testkit::GenOptions {
            rows,
            ..Default::default()
        },
        &mut csv,
    )
    .unwrap();
    let src = env.write("gen.csv", csv);
    let started = std::time::Instant::now();
    env.run(&src).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let wh = quarry_warehouse::open(&env.config.warehouse).unwrap();
    let mut loaded = 0;
    for t in Table::ALL {
        loaded += wh
            .list_partitions(t)
            .await
            .unwrap()
            .iter()
            .map(|p| p.rows)
            .sum::<u64>();
    }
    println!(
        "snowflake load: {rows} input rows, {loaded} rows loaded into 3 tables in {secs:.1} s = {:.0} rows/s",
        loaded as f64 / secs
    );
}

/// A ClickHouse server of the test's own, on a free port, that can be
/// stopped and started again on the same data.
struct OwnServer {
    bin: String,
    dir: tempfile::TempDir,
    /// HTTP, TCP and interserver ports.
    ports: [u16; 3],
    child: Option<std::process::Child>,
}

impl OwnServer {
    fn start(bin: String) -> Self {
        // Three distinct free ports (held together while they are picked).
        let listeners: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports = [0, 1, 2].map(|i| listeners[i].local_addr().unwrap().port());
        drop(listeners);
        let mut s = Self {
            bin,
            dir: tempfile::tempdir().unwrap(),
            ports,
            child: None,
        };
        s.up();
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }

    fn up(&mut self) {
        let d = self.dir.path();
        let arg = |k: &str, v: &str| format!("--{k}={}/{v}/", d.display());
        let child = std::process::Command::new(&self.bin)
            .arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .args([
                arg("path", "data"),
                arg("tmp_path", "tmp"),
                arg("user_files_path", "user_files"),
                arg("format_schema_path", "format_schemas"),
            ])
            .arg(format!("--logger.log={}/server.log", d.display()))
            .arg(format!("--logger.errorlog={}/server.err.log", d.display()))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--http_port={}", self.ports[0]))
            .arg(format!("--tcp_port={}", self.ports[1]))
            .arg(format!("--interserver_http_port={}", self.ports[2]))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.ports[0])).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "own ClickHouse did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: a clean shutdown keeps the data for the restart.
            let _ = std::process::Command::new("kill")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// The server stops in the middle of a run and comes back: the writes that
/// hit the outage are retried (capped exponential backoff), and the run
/// commits exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_retries_across_a_server_restart() {
    let Ok(bin) = std::env::var("QUARRY_TEST_CLICKHOUSE_SERVER") else {
        eprintln!("skipped: QUARRY_TEST_CLICKHOUSE_SERVER is not set (scripts/test.sh sets it)");
        return;
    };
    let mut server = OwnServer::start(bin);
    let mut config = quarry_core::config::WarehouseConfig {
        kind: WarehouseKind::Clickhouse,
        ..Default::default()
    };
    config.clickhouse.url = server.url();
    config.clickhouse.max_attempts = 10;
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();

    // Agg rows of one week, as the transformer would send them.
    let batch = |user: &str| {
        RecordBatch::try_new(
            Table::AggTradesWeekly.schema(),
            vec![
                Arc::new(arrow::array::Date32Array::from(vec![19_360])),
                Arc::new(arrow::array::StringArray::from(vec!["gold"])),
                Arc::new(arrow::array::StringArray::from(vec![user])),
                Arc::new(arrow::array::StringArray::from(vec!["SYM"])),
                Arc::new(
                    arrow::array::Decimal128Array::from(vec![150_000_000])
                        .with_data_type(quarry_core::schema::VOLUME_TYPE),
                ),
                Arc::new(
                    arrow::array::Decimal128Array::from(vec![-1])
                        .with_data_type(quarry_core::schema::PNL_TYPE),
                ),
                Arc::new(arrow::array::Int64Array::from(vec![1])),
            ],
        )
        .unwrap()
    };
    wh.begin_run(RunStart {
        run_id: "restart".into(),
        source: "test".into(),
        options_json: "{}".into(),
    })
    .await
    .unwrap();
    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::ReplacePartitions,
        batch("a"),
    )
    .await
    .unwrap();

    server.down();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(800));
        server.up();
        server
    });
    // Refused while the server is down, then retried until it is back.
    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::ReplacePartitions,
        batch("b"),
    )
    .await
    .unwrap();
    let _server = restart.join().unwrap();
    let rows = wh
        .commit(RunCommit {
            run_id: "restart".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(rows["agg_trades_weekly"], 2);
    let parts = wh.list_partitions(Table::AggTradesWeekly).await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].rows, 2);
    assert_eq!(
        wh.get_run("restart").await.unwrap().unwrap().status,
        "succeeded"
    );
}
