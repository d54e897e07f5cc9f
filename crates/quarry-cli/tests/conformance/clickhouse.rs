//! The ClickHouse backend against the server scripts/test.sh starts, and a
//! server of the test's own that stops and comes back in the middle of a run.

use quarry_core::config::WarehouseKind;
use quarry_core::{RunStatus, Table};
use quarry_warehouse::WriteMode;

use crate::common::{self, Env};
use crate::harness::{agg_batch, commit, conformance, rows_of, start};
use crate::own_server::OwnServer;
use crate::sneak::Sneak;

/// Against the ClickHouse server scripts/test.sh starts (QUARRY_TEST_CLICKHOUSE_URL);
/// if the script started it and it does not answer, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the ClickHouse stand-in: scripts/test.sh runs it"]
async fn conformance_suite() {
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
