//! The BigQuery backend against the emulator scripts/test.sh starts, and an
//! emulator of the test's own that stops and comes back in the middle of a run.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use quarry_core::config::WarehouseKind;
use quarry_core::schema::{PNL_TYPE, QUANTITY_TYPE, VOLUME_TYPE};
use quarry_core::{ErrorCategory, RunMode, RunStatus, Table};
use quarry_testkit::rows_text;
use quarry_warehouse::{RunCommit, Warehouse, WriteMode};

use crate::common::{self, Env};
use crate::harness::{
    agg_batch, assert_backend_error, commit, conformance, daily_loads, generated_rows_in_runs,
    rows_of, start, trade_batch,
};
use crate::own_server::OwnServer;
use crate::sneak::Sneak;

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

/// An environment whose warehouse is `dataset` on the emulator at `url`.
fn bigquery_env(url: &str, project: &str, dataset: &str) -> Env {
    let mut env = Env::new();
    let bq = &mut env.config.warehouse.bigquery;
    bq.api_url = url.into();
    bq.project = project.into();
    bq.dataset = dataset.into();
    // The emulator takes any bearer token: handed over in a variable, as
    // `access_token_env` does in production.
    bq.access_token_env = "QUARRY_TEST_BIGQUERY_TOKEN".into();
    env.config.warehouse.kind = WarehouseKind::Bigquery;
    env
}

/// Against the BigQuery emulator scripts/test.sh starts (QUARRY_TEST_BIGQUERY_URL);
/// if the script started it and it does not answer, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
async fn conformance_suite() {
    let (url, project) = bigquery_target();
    // A dataset of its own: runs of the suite never see each other's tables.
    let dataset = format!("quarry_test_{}", std::process::id());
    let env = bigquery_env(&url, &project, &dataset);
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
            "loaded_days",
            "pipeline_runs",
            "trades",
            "trades_rejected"
        ]
    );
    // Daily loads, each warehouse in a dataset of its own.
    daily_loads(|suffix| bigquery_env(&url, &project, &format!("{dataset}_{suffix}"))).await;
}

/// A million generated trades in 30 runs equal one run, in ETL and ELT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
async fn a_million_rows_in_30_runs_equal_one_run() {
    let (url, project) = bigquery_target();
    let dataset = format!("quarry_million_{}", std::process::id());
    let env_for = |suffix: &str| bigquery_env(&url, &project, &format!("{dataset}_{suffix}"));
    generated_rows_in_runs(env_for, 1_000_000, 30).await;
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

fn bigquery_with_static_token(config: &quarry_core::config::BigQueryConfig) -> Arc<dyn Warehouse> {
    quarry_warehouse::bigquery::with_authenticator(config, Arc::new(StaticToken))
}

/// Permanent errors are not retried: a dataset that does not exist fails
/// the first request with the backend's notFound message, at once; a wrong
/// endpoint gives one clear line from check_connectivity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
async fn permanent_errors_fail_at_once() {
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
    assert_backend_error(&e, false);
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
async fn retries_across_an_emulator_restart() {
    let bin = quarry_testkit::standin("QUARRY_TEST_BIGQUERY_EMULATOR");
    let emulator = own_bigquery_emulator(bin);
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
    wh.begin_run(start("restart")).await.unwrap();
    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::Replace,
        agg_batch("a"),
    )
    .await
    .unwrap();

    wh.write(
        "restart",
        Table::AggTradesWeekly,
        WriteMode::Replace,
        agg_batch("b"),
    )
    .await
    .unwrap();

    let restart = emulator.bounce(std::time::Duration::from_millis(800));
    // The commit loads the gathered rows and runs the transaction: refused
    // while the emulator is down, then retried until it is back.
    let rows = wh.commit(commit("restart")).await.unwrap();
    // Requests met the outage and were tried again.
    assert!(proxy.refused() >= 1, "no request met the outage");
    let _emulator = restart.join().unwrap();
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

/// A commit whose transaction fails half-way (here: the quarantine table
/// vanished, which the emulator reports as HTTP 200 with an `errors` array)
/// is not a success: the error is permanent, the statements that ran before
/// the failure are rolled back (the trades partition keeps its rows, to the
/// nanosecond), the run is recorded as failed and its staging tables are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
async fn a_failed_commit_changes_nothing() {
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
    // The runs read a source file: the commit replaces its quarantine too.
    let commit = |run_id: &str| RunCommit {
        source_files: vec!["trades.csv".into()],
        ..commit(run_id)
    };
    let mode = WriteMode::Replace;
    wh.begin_run(start("good")).await.unwrap();
    wh.write("good", Table::Trades, mode, trade_batch("a"))
        .await
        .unwrap();
    wh.write("good", Table::AggTradesWeekly, mode, agg_batch("a"))
        .await
        .unwrap();
    wh.commit(commit("good")).await.unwrap();
    let tables = [Table::Trades, Table::AggTradesWeekly];
    let before = rows_of(wh.as_ref(), &tables).await;
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
    assert_backend_error(&e, false);
    assert!(e.to_string().contains("notFound"), "{e}");
    assert_eq!(
        rows_of(wh.as_ref(), &tables).await,
        before,
        "a failed commit changed the tables"
    );
    let run = wh.get_run("broken").await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.error_category),
        (RunStatus::Failed, Some(ErrorCategory::Backend))
    );
    assert_eq!(
        bigquery_tables(&url, &project, &dataset),
        [
            "agg_trades_weekly",
            "loaded_days",
            "pipeline_runs",
            "trades"
        ]
    );
}

/// The weekly fold inside the commit is exact on the emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the BigQuery emulator: scripts/test.sh runs it"]
async fn the_weekly_fold_is_exact() {
    let (url, project) = bigquery_target();
    let config = quarry_core::config::BigQueryConfig {
        api_url: url,
        project,
        dataset: format!("quarry_fold_{}", std::process::id()),
        ..Default::default()
    };
    let wh = bigquery_with_static_token(&config);
    wh.check_connectivity().await.unwrap();
    folds_exactly(wh.as_ref()).await;
}

/// Trades of user `x` (amounts in units of 10^-8): (day, side, quantity, price).
fn trades(rows: &[(i32, &str, i128, i128)]) -> RecordBatch {
    let n = rows.len();
    let decimals = |f: fn(&(i32, &str, i128, i128)) -> i128| {
        Arc::new(
            Decimal128Array::from_iter_values(rows.iter().map(f)).with_data_type(QUANTITY_TYPE),
        )
    };
    RecordBatch::try_new(
        Table::Trades.schema(),
        vec![
            Arc::new(
                TimestampNanosecondArray::from_iter_values(
                    rows.iter().map(|r| i64::from(r.0) * 86_400_000_000_000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec!["x"; n])),
            Arc::new(StringArray::from(vec!["gold"; n])),
            Arc::new(StringArray::from(vec!["SYM"; n])),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            decimals(|r| r.2),
            decimals(|r| r.3),
            Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.0))),
        ],
    )
    .unwrap()
}

/// One weekly row of user `x`: volume in units of 10^-8, PnL of 10^-16.
fn weekly(week: i32, volume: i128, pnl: i128, count: i64) -> RecordBatch {
    RecordBatch::try_new(
        Table::AggTradesWeekly.schema(),
        vec![
            Arc::new(Date32Array::from(vec![week])),
            Arc::new(StringArray::from(vec!["gold"])),
            Arc::new(StringArray::from(vec!["x"])),
            Arc::new(StringArray::from(vec!["SYM"])),
            Arc::new(Decimal128Array::from(vec![volume]).with_data_type(VOLUME_TYPE)),
            Arc::new(Decimal128Array::from(vec![pnl]).with_data_type(PNL_TYPE)),
            Arc::new(Int64Array::from(vec![count])),
        ],
    )
    .unwrap()
}

/// The weekly row of user `x` folded from `rows` (exact, in i128), as text.
fn folded(week: i32, rows: &[(i32, &str, i128, i128)]) -> String {
    let volume: i128 = rows.iter().map(|r| r.2).sum();
    let pnl: i128 = rows
        .iter()
        .map(|r| {
            if r.1 == "sell" {
                r.2 * r.3
            } else {
                -(r.2 * r.3)
            }
        })
        .sum();
    rows_text(&[weekly(week, volume, pnl, rows.len() as i64)]).remove(0)
}

/// The weeks a commit folds from `trades` hold the exact sums, at the
/// extremes of the amounts' types: products of 21 integer digits and of 16
/// decimal places. The backends whose SQL types products differently from
/// their stand-ins (BigQuery, Snowflake) run it.
pub async fn folds_exactly(wh: &dyn Warehouse) {
    const MAX: i128 = 999_999_999_999_999_999; // 9999999999.99999999
    let monday = 19_723; // 2024-01-01
    let first = [
        (monday, "sell", MAX, MAX),
        (monday, "buy", 1, 1),
        (monday + 1, "sell", 3, 7),
        (
            monday + 1,
            "buy",
            1_234_567_812_345_678,
            9_876_543_287_654_321,
        ),
    ];
    let days = |d: &[i32]| d.iter().copied().collect::<BTreeSet<i32>>();
    // ELT: no weekly rows are sent; the commit folds the week.
    wh.begin_run(start("fold-elt")).await.unwrap();
    wh.write(
        "fold-elt",
        Table::Trades,
        WriteMode::Replace,
        trades(&first),
    )
    .await
    .unwrap();
    wh.commit(RunCommit {
        mode: RunMode::Elt,
        days: days(&[monday, monday + 1]),
        raw_trades: true,
        ..commit("fold-elt")
    })
    .await
    .unwrap();
    assert_eq!(
        rows_of(wh, &[Table::AggTradesWeekly]).await,
        [folded(monday, &first)]
    );

    // ETL, a day more of that week and a day of the next: the first week is
    // folded again from all its days (the weekly row sent for it, wrong on
    // purpose, is left out), the second is the row sent.
    let second = [
        (monday + 2, "sell", 100_000_000, 250_000_000),
        (monday + 7, "buy", 200_000_000, 300_000_000),
    ];
    wh.begin_run(start("fold-etl")).await.unwrap();
    let mode = WriteMode::Replace;
    wh.write("fold-etl", Table::Trades, mode, trades(&second))
        .await
        .unwrap();
    for row in [
        weekly(monday, 1, 1, 1),
        weekly(monday + 7, 200_000_000, -6 * 10i128.pow(16), 1),
    ] {
        wh.write("fold-etl", Table::AggTradesWeekly, mode, row)
            .await
            .unwrap();
    }
    wh.commit(RunCommit {
        mode: RunMode::Etl,
        days: days(&[monday + 2, monday + 7]),
        raw_trades: true,
        ..commit("fold-etl")
    })
    .await
    .unwrap();
    let mut week_one = first.to_vec();
    week_one.push(second[0]);
    assert_eq!(
        rows_of(wh, &[Table::AggTradesWeekly]).await,
        [folded(monday, &week_one), folded(monday + 7, &second[1..])]
    );
}
