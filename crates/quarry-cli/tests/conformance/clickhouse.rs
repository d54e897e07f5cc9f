//! The ClickHouse backend against the server scripts/test.sh starts, and a
//! server of the test's own that stops and comes back in the middle of a run.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Date32Array, Decimal128Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use quarry_core::config::{WarehouseConfig, WarehouseKind};
use quarry_core::schema::QUANTITY_TYPE;
use quarry_core::{RunMode, RunStatus, Table};
use quarry_warehouse::{RunCommit, Warehouse, WriteMode};

use crate::common::{self, Env};
use crate::harness::{
    agg_batch, commit, conformance, daily_loads, generated_rows_in_runs, load, rows_of, start,
    trade_batch,
};
use crate::own_server::OwnServer;
use crate::sneak::Sneak;

/// Against the ClickHouse server scripts/test.sh starts (QUARRY_TEST_CLICKHOUSE_URL);
/// if the script started it and it does not answer, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the ClickHouse stand-in: scripts/test.sh runs it"]
async fn conformance_suite() {
    let url = quarry_testkit::standin("QUARRY_TEST_CLICKHOUSE_URL");
    // A database of its own: runs of the suite never see each other's tables.
    let database = format!("quarry_test_{}", std::process::id());
    let env_on = |database: String| {
        let mut env = Env::new();
        env.config.warehouse.kind = WarehouseKind::Clickhouse;
        let ch = &mut env.config.warehouse.clickhouse;
        ch.url = url.clone();
        ch.database = database;
        env
    };
    let env = env_on(database.clone());
    let sneak = Sneak::ClickHouse {
        url: url.clone(),
        database: database.clone(),
    };
    conformance(&env, sneak).await;
    daily_loads(|suffix| env_on(format!("{database}_{suffix}"))).await;
    generated_rows_in_runs(
        |suffix| env_on(format!("{database}_{suffix}")),
        1_000_000,
        30,
    )
    .await;
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
            "loaded_days",
            "pipeline_runs",
            "trades",
            "trades_rejected"
        ],
        "{tables}"
    );
}

/// Runs `sql` on the server at `url` through its HTTP interface.
fn query(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--fail-with-body", "--data-binary", sql, url])
        .output()
        .unwrap();
    let body = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{sql}: {body}");
    body
}

/// A warehouse on the stand-in, in a database of its own named `name`.
async fn warehouse_on(name: &str) -> (Arc<dyn Warehouse>, WarehouseConfig, String, String) {
    let url = quarry_testkit::standin("QUARRY_TEST_CLICKHOUSE_URL");
    let database = format!("quarry_test_{}_{name}", std::process::id());
    query(&url, &format!("DROP DATABASE IF EXISTS {database}"));
    let mut config = WarehouseConfig {
        kind: WarehouseKind::Clickhouse,
        ..Default::default()
    };
    config.clickhouse.url = url.clone();
    config.clickhouse.database = database.clone();
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();
    (wh, config, url, database)
}

/// 2024-01-01, a Monday.
const MONDAY: i32 = 19_723;

/// One trade of `user` on `day` at 10:00 UTC (quantity and price scaled by 1e8).
fn trade_on(day: i32, user: &str, side: &str, quantity: i128, price: i128) -> RecordBatch {
    let at = (i64::from(day) * 86_400 + 36_000) * 1_000_000_000;
    RecordBatch::try_new(
        Table::Trades.schema(),
        vec![
            Arc::new(TimestampNanosecondArray::from(vec![at]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![user])),
            Arc::new(StringArray::from(vec!["gold"])),
            Arc::new(StringArray::from(vec!["SYM"])),
            Arc::new(StringArray::from(vec![side])),
            Arc::new(Decimal128Array::from(vec![quantity]).with_data_type(QUANTITY_TYPE)),
            Arc::new(Decimal128Array::from(vec![price]).with_data_type(QUANTITY_TYPE)),
            Arc::new(Date32Array::from(vec![day])),
        ],
    )
    .unwrap()
}

/// `agg_batch(user)` moved to `week`.
fn agg_of_week(user: &str, week: i32) -> RecordBatch {
    let batch = agg_batch(user);
    let mut columns = batch.columns().to_vec();
    columns[0] = Arc::new(Date32Array::from(vec![week]));
    RecordBatch::try_new(batch.schema(), columns).unwrap()
}

/// A run of `day` in `mode` that sends `batches` and commits it as a daily
/// load with raw trades.
async fn daily_run(
    wh: &dyn Warehouse,
    run_id: &str,
    mode: RunMode,
    day: i32,
    batches: Vec<(Table, RecordBatch)>,
) {
    wh.begin_run(start(run_id)).await.unwrap();
    for (table, batch) in batches {
        wh.write(run_id, table, WriteMode::Replace, batch)
            .await
            .unwrap();
    }
    wh.commit(RunCommit {
        mode,
        days: BTreeSet::from([day]),
        raw_trades: true,
        ..commit(run_id)
    })
    .await
    .unwrap();
}

/// A week recomputed in the server is exact at the extremes of the column
/// types: the largest quantity times the largest price, plus the smallest
/// product, to the 16th decimal place; and an ETL run's own weekly rows of
/// a recomputed week give way to the fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the ClickHouse stand-in: scripts/test.sh runs it"]
async fn recomputed_weeks_are_exact() {
    let (wh, _, url, database) = warehouse_on("fold").await;
    const MAX: i128 = 999_999_999_999_999_999;
    let big = trade_on(MONDAY, "u", "sell", MAX, MAX);
    daily_run(
        wh.as_ref(),
        "big",
        RunMode::Elt,
        MONDAY,
        vec![(Table::Trades, big)],
    )
    .await;
    let want_big =
        "2024-01-01|gold|u|SYM|9999999999.99999999|99999999999999999800.0000000000000001|1";
    assert_eq!(
        rows_of(wh.as_ref(), &[Table::AggTradesWeekly]).await,
        [want_big]
    );

    // Tuesday, in ETL, with a weekly row that only covers Tuesday.
    let both = "2024-01-01|gold|u|SYM|10000000000.00000000|99999999999999999800.0000000000000000|2";
    let small = trade_on(MONDAY + 1, "u", "buy", 1, 1);
    let own = agg_of_week("u", MONDAY);
    daily_run(
        wh.as_ref(),
        "small",
        RunMode::Etl,
        MONDAY + 1,
        vec![(Table::Trades, small), (Table::AggTradesWeekly, own)],
    )
    .await;
    assert_eq!(
        rows_of(wh.as_ref(), &[Table::AggTradesWeekly]).await,
        [both]
    );
    // Monday again, on its own: the week is folded from Monday and Tuesday.
    let big = trade_on(MONDAY, "u", "sell", MAX, MAX);
    daily_run(
        wh.as_ref(),
        "again",
        RunMode::Elt,
        MONDAY,
        vec![(Table::Trades, big)],
    )
    .await;
    assert_eq!(
        rows_of(wh.as_ref(), &[Table::AggTradesWeekly]).await,
        [both]
    );
    let days = query(
        &url,
        &format!(
            "SELECT toString(trade_date), toString(week_start_date), raw_trades, run_id \
             FROM {database}.loaded_days FINAL ORDER BY trade_date"
        ),
    );
    assert_eq!(
        days,
        "2024-01-01\t2024-01-01\t1\tagain\n2024-01-02\t2024-01-01\t1\tsmall\n"
    );
}

/// A warehouse from before `loaded_days` gets it filled once, from its
/// trades (days with raw trades) and its weekly rows (weeks without days);
/// a later run of one of those weeks folds the days found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the ClickHouse stand-in: scripts/test.sh runs it"]
async fn loaded_days_are_backfilled_once() {
    let (wh, config, url, database) = warehouse_on("backfill").await;
    // Written as plain puts (no days declared): `loaded_days` stays empty,
    // then goes, as in a warehouse of an older version.
    load(
        wh.as_ref(),
        "old",
        [
            (Table::Trades, trade_batch("a")),
            (Table::AggTradesWeekly, agg_of_week("a", MONDAY)),
            (Table::AggTradesWeekly, agg_batch("a")),
        ],
    )
    .await;
    query(&url, &format!("DROP TABLE {database}.loaded_days"));
    wh.close().await.unwrap();

    let loaded = format!(
        "SELECT toString(trade_date), toString(week_start_date), raw_trades, run_id \
         FROM {database}.loaded_days FINAL ORDER BY trade_date"
    );
    let backfilled = "2023-01-02\t2023-01-02\t0\tbackfill\n2024-01-05\t2024-01-01\t1\tbackfill\n";
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();
    assert_eq!(query(&url, &loaded), backfilled);
    // Once: a table that holds days is left as it is.
    wh.check_connectivity().await.unwrap();
    let count = format!("SELECT count() FROM {database}.loaded_days");
    assert_eq!(query(&url, &count), "2\n");

    // Wednesday of the week of 2024-01-05: folded with the backfilled Friday.
    let wednesday = trade_on(MONDAY + 2, "a", "sell", 100_000_000, 100_000_000);
    daily_run(
        wh.as_ref(),
        "wednesday",
        RunMode::Elt,
        MONDAY + 2,
        vec![(Table::Trades, wednesday)],
    )
    .await;
    let weeks = rows_of(wh.as_ref(), &[Table::AggTradesWeekly]).await;
    assert!(
        weeks.contains(&"2024-01-01|gold|a|SYM|2.50000001|-14.3750001025000000|2".to_string()),
        "{weeks:?}"
    );
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
async fn retries_across_a_server_restart() {
    let bin = quarry_testkit::standin("QUARRY_TEST_CLICKHOUSE_SERVER");
    let server = own_clickhouse(bin);
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

    wh.begin_run(start("restart")).await.unwrap();
    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::Replace,
        agg_batch("a"),
    )
    .await
    .unwrap();

    let restart = server.bounce(std::time::Duration::from_millis(800));
    // Refused while the server is down, then retried until it is back.
    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::Replace,
        agg_batch("b"),
    )
    .await
    .unwrap();
    let _server = restart.join().unwrap();
    let rows = wh.commit(commit("restart")).await.unwrap();
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
        RunStatus::Succeeded
    );
}
