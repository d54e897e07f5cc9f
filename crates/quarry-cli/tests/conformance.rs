//! The warehouse contract, written once and run against every backend: the
//! reference sample through the whole pipeline gives the expected tables and
//! top lists; a re-run is idempotent; an abort leaves nothing; partitions can
//! be listed, read back exactly, dropped and written back.

mod common;
mod snowflake_proxy;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, Decimal128Type, Int64Type};
use common::{Env, expected_agg, fixtures};
use quarry_core::config::WarehouseKind;
use quarry_core::dates::date_text;
use quarry_core::decimal::{PNL_SCALE, parse_scaled};
use quarry_core::{ErrorCategory, Table};
use quarry_testkit::rows_text;
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

/// Adds a row to a run behind the backend's back, so that the commit's
/// read-back of what the run holds finds one row more than was sent.
enum Sneak {
    /// A trigger that doubles the run's first trade (a run holds SQLite's
    /// write lock, so nothing outside can write during it).
    Sqlite(std::path::PathBuf),
    /// One more row in the run's Log table.
    ClickHouse { url: String, database: String },
    /// One more row in the run's staging table (its loads run at commit).
    BigQuery {
        url: String,
        project: String,
        dataset: String,
    },
    /// One more row in the run's transient staging table (COPY runs at commit).
    Snowflake { upstream: String, database: String },
}

/// The row a sneak adds: a trade of 2024-01-05, as `trade_batch` writes.
const SNEAKED: &str = "'sneaked', 'gold', 'SYM', 'buy'";

impl Sneak {
    async fn before_begin(&self) {
        if let Sneak::Sqlite(db) = self {
            rusqlite::Connection::open(db)
                .unwrap()
                .execute_batch(
                    "CREATE TRIGGER sneak AFTER INSERT ON trades WHEN NEW.user_id = 'sneak-user'
                     BEGIN INSERT INTO trades VALUES (NEW.timestamp, 'sneaked', 'gold', 'SYM',
                       'buy', 1, 1, NEW.trade_date, NEW.run_id); END;",
                )
                .unwrap();
        }
    }

    async fn before_commit(&self, run_id: &str) {
        let tag: String = run_id.chars().filter(char::is_ascii_alphanumeric).collect();
        match self {
            Sneak::Sqlite(_) => {}
            Sneak::ClickHouse { url, database } => {
                let sql = format!(
                    "INSERT INTO {database}.trades_flat_{tag} (timestamp, timestamp_nanos, \
                     user_id, client_type, symbol, side, quantity, price, trade_date, run_id) \
                     VALUES ('2024-01-05 10:00:00', 0, {SNEAKED}, 1, 1, '2024-01-05', '{run_id}')"
                );
                let out = std::process::Command::new("curl")
                    .args(["-s", "--fail-with-body", "--data-binary", &sql, url])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{sql}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            Sneak::BigQuery {
                url,
                project,
                dataset,
            } => {
                let sql = format!(
                    "INSERT INTO `{project}.{dataset}.trades_stage_{tag}` (timestamp, \
                     timestamp_extra_nanos, user_id, client_type, symbol, side, quantity, price, \
                     trade_date, run_id) VALUES (TIMESTAMP '2024-01-05 10:00:00', 0, {SNEAKED}, \
                     1, 1, DATE '2024-01-05', '{run_id}')"
                );
                let body = serde_json::json!({"query": sql, "useLegacySql": false});
                let out = std::process::Command::new("curl")
                    .args(["-sf", "-H", "Content-Type: application/json", "--data"])
                    .arg(body.to_string())
                    .arg(format!("{url}/bigquery/v2/projects/{project}/queries"))
                    .output()
                    .unwrap();
                let answer = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && !answer.contains("\"errors\""),
                    "{answer}"
                );
            }
            Sneak::Snowflake { upstream, database } => {
                snowflake_proxy::sql(
                    upstream,
                    &format!(
                        "INSERT INTO {database}.public.trades_stage_{tag} (timestamp, user_id, \
                         client_type, symbol, side, quantity, price, trade_date, run_id) VALUES \
                         ('2024-01-05 10:00:00', {SNEAKED}, 1, 1, '2024-01-05', '{run_id}')"
                    ),
                )
                .await;
            }
        }
    }

    async fn after(&self) {
        if let Sneak::Sqlite(db) = self {
            rusqlite::Connection::open(db)
                .unwrap()
                .execute_batch("DROP TRIGGER sneak")
                .unwrap();
        }
    }
}

/// The contract, against the warehouse `env.config.warehouse` selects.
async fn conformance(env: &Env, sneak: Sneak) {
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

    // 3. An abort leaves nothing behind and is recorded: the run replaces an
    // existing day with one row of its own, adds a day and a user no
    // committed run has, and rewrites a week of the aggregate — had the abort
    // committed anything, the snapshot would show it.
    let (table, partition) = (Table::Trades, trade_dates[3].partition.clone());
    let original = wh.read_partition(table, &partition).await.unwrap();
    wh.begin_run(RunStart {
        run_id: "aborted".into(),
        source: "conformance".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    })
    .await
    .unwrap();
    let replacing = original[0].slice(0, 1);
    for (t, b) in [
        (table, replacing),
        (Table::Trades, trade_batch("aborted-user")),
        (Table::AggTradesWeekly, agg_batch("aborted-user")),
    ] {
        wh.write("aborted", t, WriteMode::ReplacePartitions, b)
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
        owner_json: String::new(),
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

    // 5. PnL to the 16th decimal place (quantity and price of 8 each), kept
    // exact: read back as text and summed into the top list exactly. The
    // values have at most 15 significant digits, which SQLite's REAL holds.
    let sixteen = env.write(
        "sixteen.csv",
        format!(
            "{}\
             2031-03-03 10:00:00,u16,bronze,SYM,sell,0.00012345,0.00000011\n\
             2031-03-04 10:00:00,u16,bronze,SYM,buy,1.00000001,0.00000003\n\
             2031-03-10 10:00:00,u16,bronze,SYM,sell,3.5,0.00000007\n",
            common::HEADER
        ),
    );
    env.run(&sixteen).await.unwrap();
    let mut weeks = vec![];
    for w in ["2031-03-03", "2031-03-10"] {
        let batches = wh.read_partition(Table::AggTradesWeekly, w).await.unwrap();
        weeks.extend(rows_text(&batches));
    }
    assert_eq!(
        weeks,
        [
            // +0.00012345 x 0.00000011 - 1.00000001 x 0.00000003
            "2031-03-03|bronze|u16|SYM|1.00012346|-0.0000000299864208|2",
            "2031-03-10|bronze|u16|SYM|3.50000000|0.0000002450000000|1",
        ]
    );
    let top = wh
        .top_users(&TopUsersQuery {
            client_type: "bronze".into(),
            metric: Metric::Pnl,
            limit: 10,
        })
        .await
        .unwrap();
    let u16_total = top.iter().find(|u| u.user_id == "u16").expect("u16 ranked");
    assert_eq!(
        parse_scaled(u16_total.value.as_bytes(), PNL_SCALE).unwrap(),
        2_150_135_792,
        "{}",
        u16_total.value
    );

    // 6. The commit reads back what the run holds and refuses a mismatch: a
    // row added behind the backend's back fails it (quality), the tables
    // stay as they were, the run is recorded as failed.
    let before = snapshot(wh.as_ref()).await;
    sneak.before_begin().await;
    wh.begin_run(RunStart {
        run_id: "mismatch".into(),
        source: "conformance".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    })
    .await
    .unwrap();
    wh.write(
        "mismatch",
        Table::Trades,
        WriteMode::ReplacePartitions,
        trade_batch("sneak-user"),
    )
    .await
    .unwrap();
    sneak.before_commit("mismatch").await;
    let e = wh
        .commit(RunCommit {
            run_id: "mismatch".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap_err();
    sneak.after().await;
    assert_eq!(e.category(), ErrorCategory::Quality, "{e}");
    assert!(
        e.to_string()
            .contains("reconciliation: trades was sent 1 rows but"),
        "{e}"
    );
    assert_eq!(
        snapshot(wh.as_ref()).await,
        before,
        "a refused commit changed the tables"
    );
    assert_eq!(
        wh.get_run("mismatch").await.unwrap().unwrap().status,
        "failed"
    );
    wh.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let env = Env::new();
    let db = env.db.clone();
    conformance(&env, Sneak::Sqlite(db)).await;
}

/// Against the ClickHouse server scripts/test.sh starts (QUARRY_TEST_CLICKHOUSE_URL);
/// if the script started it and it does not answer, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the ClickHouse stand-in: scripts/test.sh runs it"]
async fn clickhouse() {
    let url = quarry_testkit::standin("QUARRY_TEST_CLICKHOUSE_URL");
    let mut env = Env::new();
    let ch = &mut env.config.warehouse.clickhouse;
    ch.url = url;
    // A database of its own: runs of the suite never see each other's tables.
    ch.database = format!("quarry_test_{}", std::process::id());
    let (url, database) = (ch.url.clone(), ch.database.clone());
    env.config.warehouse.kind = WarehouseKind::Clickhouse;
    let sneak = Sneak::ClickHouse {
        url: url.clone(),
        database: database.clone(),
    };
    conformance(&env, sneak).await;
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
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
async fn snowflake() {
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let proxy = snowflake_proxy::start(&url);
    // Stages with key material, as real Snowflake's internal stages: every
    // staged file goes up encrypted and is decrypted before fakesnow loads it.
    proxy
        .state
        .encrypt
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut env = Env::new();
    // A database of its own: fakesnow keeps one in-memory store for everyone.
    let database = format!("quarry_test_{}", std::process::id());
    snowflake_proxy::configure(&mut env.config.warehouse, &proxy, &database);
    let sneak = Sneak::Snowflake {
        upstream: url.clone(),
        database: database.clone(),
    };
    conformance(&env, sneak).await;
    // Every file a PUT staged arrived encrypted and was decrypted.
    let decrypted = proxy
        .state
        .decrypted
        .load(std::sync::atomic::Ordering::SeqCst);
    let puts = proxy.state.puts.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(decrypted, puts, "{decrypted} of {puts} uploads decrypted");
    assert!(puts >= 3, "{puts} PUTs");
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

/// Transient failures (HTTP 503 from the service, here from the proxy for
/// the next N statements) are retried with backoff until they pass or the
/// attempts run out; permanent ones (a missing object) fail on the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
async fn snowflake_retries_transient_errors_only() {
    use std::sync::atomic::Ordering::SeqCst;
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let proxy = snowflake_proxy::start(&url);
    let mut config = quarry_core::config::WarehouseConfig::default();
    let database = format!("quarry_retry_{}", std::process::id());
    snowflake_proxy::configure(&mut config, &proxy, &database);
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
        owner_json: String::new(),
    })
    .await
    .unwrap();
    // The batch goes into the run's Parquet file: no statement yet.
    let before = proxy.state.queries.load(SeqCst);
    wh.write(
        "retried",
        Table::AggTradesWeekly,
        WriteMode::ReplacePartitions,
        batch.clone(),
    )
    .await
    .unwrap();
    assert_eq!(proxy.state.queries.load(SeqCst), before);
    // The commit's first statement, the file's PUT, meets two 503s and is
    // repeated; then the upload, the COPY and the transaction go through.
    proxy.state.fail_next.store(2, SeqCst);
    let rows = wh
        .commit(RunCommit {
            run_id: "retried".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(proxy.state.failed.load(SeqCst), 2);
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

    // Small staged files: a run's rows go up in several PUTs and one COPY
    // loads them all.
    let mut small = config.clone();
    small.snowflake.stage_file_kib = 16;
    let wh3 = quarry_warehouse::open(&small).unwrap();
    wh3.check_connectivity().await.unwrap();
    let n = 6_000;
    let big = RecordBatch::try_new(
        Table::AggTradesWeekly.schema(),
        vec![
            Arc::new(arrow::array::Date32Array::from(vec![19_374; n])),
            Arc::new(arrow::array::StringArray::from(vec!["silver"; n])),
            Arc::new(arrow::array::StringArray::from_iter_values(
                (0..n).map(|i| format!("user-{i}")),
            )),
            Arc::new(arrow::array::StringArray::from(vec!["SYM"; n])),
            Arc::new(
                arrow::array::Decimal128Array::from_iter_values((0..n as i128).map(|i| i * 7_919))
                    .with_data_type(quarry_core::schema::VOLUME_TYPE),
            ),
            Arc::new(
                arrow::array::Decimal128Array::from_iter_values((0..n as i128).map(|i| -i))
                    .with_data_type(quarry_core::schema::PNL_TYPE),
            ),
            Arc::new(arrow::array::Int64Array::from(vec![1; n])),
        ],
    )
    .unwrap();
    wh3.begin_run(RunStart {
        run_id: "several-files".into(),
        source: "test".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    })
    .await
    .unwrap();
    let puts = proxy.state.puts.load(SeqCst);
    for part in 0..6 {
        wh3.write(
            "several-files",
            Table::AggTradesWeekly,
            WriteMode::ReplacePartitions,
            big.slice(part * 1_000, 1_000),
        )
        .await
        .unwrap();
    }
    let rows = wh3
        .commit(RunCommit {
            run_id: "several-files".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap();
    let files = proxy.state.puts.load(SeqCst) - puts;
    assert!(files >= 3, "{files} PUTs");
    assert_eq!(rows["agg_trades_weekly"], n as u64);
    let back = wh3
        .read_partition(Table::AggTradesWeekly, "2023-01-17")
        .await
        .unwrap();
    let (mut got, mut sent) = (rows_text(&back), rows_text(&[big]));
    got.sort();
    sent.sort();
    assert_eq!(got, sent);

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

/// Key-pair authentication: both sessions (the queries' and the stage
/// uploads') log in with a JWT signed by the configured private key, for
/// `<ACCOUNT>.<USER>`, and never send a password. fakesnow accepts any
/// login, so the proxy's record of them is checked here against the public
/// key (generated by openssl for the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
async fn snowflake_key_pair_login_signs_with_the_key() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = (dir.path().join("key.pem"), dir.path().join("pub.pem"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ],
        vec!["pkey", "-pubout", "-in", key.to_str().unwrap(), "-out"],
    ] {
        let target = if args[0] == "genpkey" { &key } else { &public };
        let ok = std::process::Command::new("openssl")
            .args(&args)
            .arg(target)
            .status()
            .expect("openssl runs");
        assert!(ok.success());
    }
    let proxy = snowflake_proxy::start(&url);
    let mut config = quarry_core::config::WarehouseConfig::default();
    let database = format!("quarry_keys_{}", std::process::id());
    snowflake_proxy::configure(&mut config, &proxy, &database);
    config.snowflake.private_key_path = key.to_str().unwrap().into();
    config.snowflake.password_env = "QUARRY_TEST_NO_SUCH_VARIABLE".into();
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();
    wh.begin_run(RunStart {
        run_id: "keys".into(),
        source: "test".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    })
    .await
    .unwrap();
    wh.write(
        "keys",
        Table::AggTradesWeekly,
        WriteMode::ReplacePartitions,
        agg_batch("u1"),
    )
    .await
    .unwrap();
    let rows = wh
        .commit(RunCommit {
            run_id: "keys".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(rows["agg_trades_weekly"], 1);
    let logins = proxy.state.logins.lock().unwrap().clone();
    let pem = std::fs::read(&public).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
    let apps: Vec<&str> = logins
        .iter()
        .map(|l| l["CLIENT_APP_ID"].as_str().unwrap_or_default())
        .collect();
    assert!(
        apps.contains(&"quarry"),
        "the upload session logged in: {apps:?}"
    );
    for login in &logins {
        assert_eq!(login["AUTHENTICATOR"], "SNOWFLAKE_JWT", "{login}");
        assert!(login.get("PASSWORD").is_none(), "{login}");
        let token = login["TOKEN"].as_str().unwrap();
        let claims = decode::<serde_json::Value>(
            token,
            &DecodingKey::from_rsa_pem(&pem).unwrap(),
            &validation,
        )
        .expect("signed by the configured key")
        .claims;
        assert_eq!(claims["sub"], "QUARRY-TEST.QUARRY");
        assert!(
            claims["iss"]
                .as_str()
                .unwrap()
                .starts_with("QUARRY-TEST.QUARRY.SHA256:"),
            "{claims}"
        );
    }
}

/// Builds a server's command line from its data directory and ports.
type ServerCommand = Box<dyn Fn(&std::path::Path, &[u16]) -> std::process::Command + Send>;

/// A server of the test's own on free loopback ports, with its data in a
/// temporary directory, that can be stopped and started again on that data.
struct OwnServer {
    name: &'static str,
    dir: tempfile::TempDir,
    /// The first one is the HTTP port `url` names.
    ports: Vec<u16>,
    command: ServerCommand,
    /// A path under `url` that answers 2xx once the server is ready.
    ready_path: &'static str,
    child: Option<std::process::Child>,
}

impl OwnServer {
    fn start(
        name: &'static str,
        ports: usize,
        ready_path: &'static str,
        command: impl Fn(&std::path::Path, &[u16]) -> std::process::Command + Send + 'static,
    ) -> Self {
        // Distinct free ports (held together while they are picked).
        let listeners: Vec<_> = (0..ports)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let mut s = Self {
            name,
            dir: tempfile::tempdir().unwrap(),
            ports,
            command: Box::new(command),
            ready_path,
            child: None,
        };
        s.up();
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }

    fn up(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = (self.command)(self.dir.path(), &self.ports)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let ready = format!("{}{}", self.url(), self.ready_path);
        while !std::process::Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &ready])
            .status()
            .unwrap()
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "own {} did not start",
                self.name
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

/// A ClickHouse server of the test's own (HTTP, TCP and interserver ports).
fn own_clickhouse(bin: String) -> OwnServer {
    OwnServer::start("ClickHouse", 3, "/ping", move |d, ports| {
        let arg = |k: &str, v: &str| format!("--{k}={}/{v}/", d.display());
        let mut c = std::process::Command::new(&bin);
        c.arg("--config-file=/etc/clickhouse-server/config.xml")
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
            .arg(format!("--http_port={}", ports[0]))
            .arg(format!("--tcp_port={}", ports[1]))
            .arg(format!("--interserver_http_port={}", ports[2]));
        c
    })
}

/// The server stops in the middle of a run and comes back: the writes that
/// hit the outage are retried (capped exponential backoff), and the run
/// commits exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the ClickHouse server binary: scripts/test.sh runs it"]
async fn clickhouse_retries_across_a_server_restart() {
    let bin = quarry_testkit::standin("QUARRY_TEST_CLICKHOUSE_SERVER");
    let mut server = own_clickhouse(bin);
    // The backend talks to the server through a proxy that counts attempts.
    let proxy = common::counting_proxy::CountingProxy::start(&server.url());
    let mut config = quarry_core::config::WarehouseConfig {
        kind: WarehouseKind::Clickhouse,
        ..Default::default()
    };
    config.clickhouse.url = proxy.url.clone();
    config.clickhouse.max_attempts = 10;
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();

    wh.begin_run(RunStart {
        run_id: "restart".into(),
        source: "test".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    })
    .await
    .unwrap();
    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::ReplacePartitions,
        agg_batch("a"),
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
        agg_batch("b"),
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
    // The write that met the outage was refused, then retried: more than
    // one attempt, the failed ones counted by the proxy.
    assert!(proxy.refused() >= 1, "no attempt met the outage");
    assert_eq!(rows["agg_trades_weekly"], 2);
    // Exactly what was sent, to the 16th decimal place of the PnL.
    let mut got = rows_of(wh.as_ref(), &[Table::AggTradesWeekly]).await;
    got.sort();
    assert_eq!(
        got,
        [
            "2023-01-03|gold|a|SYM|1.50000000|-0.0000000000000001|1",
            "2023-01-03|gold|b|SYM|1.50000000|-0.0000000000000001|1",
        ]
    );
    assert_eq!(
        wh.get_run("restart").await.unwrap().unwrap().status,
        "succeeded"
    );
}

/// The BigQuery emulator's REST root and project, from scripts/standins.sh.
fn bigquery_target() -> (String, String) {
    (
        quarry_testkit::standin("QUARRY_TEST_BIGQUERY_URL"),
        quarry_testkit::standin("QUARRY_TEST_BIGQUERY_PROJECT"),
    )
}

/// The tables of a BigQuery dataset, by name (REST tables.list).
fn bigquery_tables(url: &str, project: &str, dataset: &str) -> Vec<String> {
    let out = std::process::Command::new("curl")
        .arg("-sf")
        .arg(format!(
            "{url}/bigquery/v2/projects/{project}/datasets/{dataset}/tables?maxResults=1000"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url} failed");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = list["tables"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t["tableReference"]["tableId"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Against the BigQuery emulator scripts/test.sh starts (QUARRY_TEST_BIGQUERY_URL);
/// if the script started it and it does not answer, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
async fn bigquery() {
    let (url, project) = bigquery_target();
    let mut env = Env::new();
    let bq = &mut env.config.warehouse.bigquery;
    bq.api_url = url.clone();
    bq.project = project.clone();
    // A dataset of its own: runs of the suite never see each other's tables.
    bq.dataset = format!("quarry_test_{}", std::process::id());
    // The emulator takes any bearer token: handed over in a variable, as
    // `access_token_env` does in production.
    bq.access_token_env = "QUARRY_TEST_BIGQUERY_TOKEN".into();
    let dataset = bq.dataset.clone();
    env.config.warehouse.kind = WarehouseKind::Bigquery;
    let sneak = Sneak::BigQuery {
        url: url.clone(),
        project: project.clone(),
        dataset: dataset.clone(),
    };
    conformance(&env, sneak).await;
    // Nothing left behind: no staging tables of any run, committed or aborted.
    assert_eq!(
        bigquery_tables(&url, &project, &dataset),
        [
            "agg_trades_weekly",
            "pipeline_runs",
            "trades",
            "trades_rejected"
        ]
    );
}

/// Test-only credentials for the emulator, which accepts any bearer token:
/// a real account goes through the service-account key file instead.
#[derive(Clone)]
struct StaticToken;

#[async_trait::async_trait]
impl gcp_bigquery_client::auth::Authenticator for StaticToken {
    async fn access_token(&self) -> Result<String, gcp_bigquery_client::error::BQError> {
        Ok("emulator".into())
    }
}

fn bigquery_with_static_token(
    config: &quarry_core::config::BigQueryConfig,
) -> quarry_warehouse::bigquery::BigQueryWarehouse {
    quarry_warehouse::bigquery::BigQueryWarehouse::with_authenticator(config, Arc::new(StaticToken))
}

/// One agg row of a week, as the transformer would send it.
fn agg_batch(user: &str) -> RecordBatch {
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
}

/// Permanent errors are not retried: a dataset that does not exist fails
/// the first request with the backend's notFound message, at once; a wrong
/// endpoint gives one clear line from check_connectivity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
async fn bigquery_permanent_errors_fail_at_once() {
    let (url, project) = bigquery_target();
    // Requests are counted on their way: a retry would show as a second one.
    let proxy = common::counting_proxy::CountingProxy::start(&url);
    let mut config = quarry_core::config::BigQueryConfig {
        api_url: proxy.url.clone(),
        project,
        dataset: format!("quarry_missing_{}", std::process::id()),
        max_attempts: 10,
        ..Default::default()
    };
    let wh = bigquery_with_static_token(&config);
    let e = wh.list_partitions(Table::Trades).await.unwrap_err();
    assert_eq!(proxy.requests(), 1, "a permanent error was retried");
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
    assert!(e.to_string().contains("notFound"), "{e}");

    // Nothing listens on this port: refused, one line, not retried here.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.api_url = format!("http://127.0.0.1:{port}");
    let e = bigquery_with_static_token(&config)
        .check_connectivity()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot connect") && e.contains(&config.api_url) && !e.contains('\n'),
        "{e}"
    );
}

/// A BigQuery emulator of the test's own, file-backed (REST and gRPC ports).
fn own_bigquery_emulator(bin: String) -> OwnServer {
    OwnServer::start("BigQuery emulator", 2, "/readyz", move |d, ports| {
        std::fs::create_dir_all(d.join("gcs")).unwrap();
        let mut c = std::process::Command::new(&bin);
        c.args(["start", "--persistent", "--data-dir"])
            .arg(d.join("data"))
            .args(["--project", "quarry-test", "--rest-host", "127.0.0.1"])
            .args(["--rest-port", &ports[0].to_string()])
            .args(["--grpc-host", "127.0.0.1", "--grpc-port"])
            .arg(ports[1].to_string())
            .args(["--log-level", "warning"])
            .env("BQEMU_GCS_LOCAL_ROOT", d.join("gcs"));
        c
    })
}

/// The emulator stops in the middle of a run and comes back (file-backed,
/// so its tables survive): the requests that hit the outage are retried
/// (connection refused, capped exponential backoff), and the run commits
/// exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator binary: scripts/test.sh runs it"]
async fn bigquery_retries_across_an_emulator_restart() {
    let bin = quarry_testkit::standin("QUARRY_TEST_BIGQUERY_EMULATOR");
    let mut emulator = own_bigquery_emulator(bin);
    let proxy = common::counting_proxy::CountingProxy::start(&emulator.url());
    let config = quarry_core::config::BigQueryConfig {
        api_url: proxy.url.clone(),
        project: "quarry-test".into(),
        dataset: "quarry_restart".into(),
        max_attempts: 12,
        ..Default::default()
    };
    let wh = bigquery_with_static_token(&config);
    wh.check_connectivity().await.unwrap();
    wh.begin_run(RunStart {
        run_id: "restart".into(),
        source: "test".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    })
    .await
    .unwrap();
    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::ReplacePartitions,
        agg_batch("a"),
    )
    .await
    .unwrap();

    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::ReplacePartitions,
        agg_batch("b"),
    )
    .await
    .unwrap();

    emulator.down();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(800));
        emulator.up();
        emulator
    });
    // The commit loads the gathered rows and runs the transaction: refused
    // while the emulator is down, then retried until it is back.
    let rows = wh
        .commit(RunCommit {
            run_id: "restart".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
        })
        .await
        .unwrap();
    // Requests met the outage and were tried again.
    assert!(proxy.refused() >= 1, "no request met the outage");
    let _emulator = restart.join().unwrap();
    assert_eq!(rows["agg_trades_weekly"], 2);
    // Exactly what was sent, to the 16th decimal place of the PnL.
    let mut got = rows_of(&wh, &[Table::AggTradesWeekly]).await;
    got.sort();
    assert_eq!(
        got,
        [
            "2023-01-03|gold|a|SYM|1.50000000|-0.0000000000000001|1",
            "2023-01-03|gold|b|SYM|1.50000000|-0.0000000000000001|1",
        ]
    );
    assert_eq!(
        wh.get_run("restart").await.unwrap().unwrap().status,
        "succeeded"
    );
}

/// One trade of 2024-01-05, as the transformer would send it.
fn trade_batch(user: &str) -> RecordBatch {
    RecordBatch::try_new(
        Table::Trades.schema(),
        vec![
            Arc::new(
                arrow::array::TimestampNanosecondArray::from(vec![1_704_448_800_123_456_789])
                    .with_timezone("UTC"),
            ),
            Arc::new(arrow::array::StringArray::from(vec![user])),
            Arc::new(arrow::array::StringArray::from(vec!["gold"])),
            Arc::new(arrow::array::StringArray::from(vec!["SYM"])),
            Arc::new(arrow::array::StringArray::from(vec!["buy"])),
            Arc::new(
                arrow::array::Decimal128Array::from(vec![150_000_001])
                    .with_data_type(quarry_core::schema::QUANTITY_TYPE),
            ),
            Arc::new(
                arrow::array::Decimal128Array::from(vec![1_025_000_000])
                    .with_data_type(quarry_core::schema::QUANTITY_TYPE),
            ),
            Arc::new(arrow::array::Date32Array::from(vec![19_727])),
        ],
    )
    .unwrap()
}

/// Every committed row of `tables`, as text.
async fn rows_of(wh: &dyn Warehouse, tables: &[Table]) -> Vec<String> {
    let mut out = vec![];
    for &table in tables {
        for p in wh.list_partitions(table).await.unwrap() {
            out.extend(rows_text(
                &wh.read_partition(table, &p.partition).await.unwrap(),
            ));
        }
    }
    out
}

/// A commit whose transaction fails half-way (here: the quarantine table
/// vanished, which the emulator reports as HTTP 200 with an `errors` array)
/// is not a success: the error is permanent, the statements that ran before
/// the failure are rolled back (the trades partition keeps its rows, to the
/// nanosecond), the run is recorded as failed and its staging tables are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
async fn bigquery_failed_commit_changes_nothing() {
    let (url, project) = bigquery_target();
    let dataset = format!("quarry_commit_{}", std::process::id());
    let config = quarry_core::config::BigQueryConfig {
        api_url: url.clone(),
        project: project.clone(),
        dataset: dataset.clone(),
        ..Default::default()
    };
    let wh = bigquery_with_static_token(&config);
    wh.check_connectivity().await.unwrap();
    let commit = |run_id: &str| RunCommit {
        run_id: run_id.into(),
        source_files: vec!["trades.csv".into()],
        stats: RunStats::default(),
        quality_json: String::new(),
    };
    let start = |run_id: &str| RunStart {
        run_id: run_id.into(),
        source: "test".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    };
    let mode = WriteMode::ReplacePartitions;
    wh.begin_run(start("good")).await.unwrap();
    wh.write("good", Table::Trades, mode, trade_batch("a"))
        .await
        .unwrap();
    wh.write("good", Table::AggTradesWeekly, mode, agg_batch("a"))
        .await
        .unwrap();
    wh.commit(commit("good")).await.unwrap();
    let tables = [Table::Trades, Table::AggTradesWeekly];
    let before = rows_of(&wh, &tables).await;
    // Exact to the nanosecond and to the 16th decimal place of the PnL.
    assert_eq!(
        before,
        [
            "1704448800123456789|a|gold|SYM|buy|1.50000001|10.25000000|2024-01-05",
            "2023-01-03|gold|a|SYM|1.50000000|-0.0000000000000001|1",
        ]
    );

    wh.begin_run(start("broken")).await.unwrap();
    wh.write("broken", Table::Trades, mode, trade_batch("b"))
        .await
        .unwrap();
    wh.write("broken", Table::AggTradesWeekly, mode, agg_batch("b"))
        .await
        .unwrap();
    let drop = serde_json::json!({
        "query": format!("DROP TABLE `{project}.{dataset}.trades_rejected`"),
        "useLegacySql": false,
    });
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(drop.to_string())
        .arg(format!("{url}/bigquery/v2/projects/{project}/queries"))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url} failed");

    let e = wh.commit(commit("broken")).await.unwrap_err();
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
    assert!(e.to_string().contains("notFound"), "{e}");
    assert_eq!(
        rows_of(&wh, &tables).await,
        before,
        "a failed commit changed the tables"
    );
    let run = wh.get_run("broken").await.unwrap().unwrap();
    assert_eq!(
        (run.status.as_str(), run.error_category.as_str()),
        ("failed", "backend")
    );
    assert_eq!(
        bigquery_tables(&url, &project, &dataset),
        ["agg_trades_weekly", "pipeline_runs", "trades"]
    );
}
