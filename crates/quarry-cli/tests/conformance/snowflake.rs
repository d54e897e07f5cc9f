//! The Snowflake backend against the fakesnow stand-in scripts/test.sh
//! starts, through the test-only proxy (`snowflake_proxy`) that completes
//! fakesnow's answers, plays an encrypting internal stage, fails statements
//! on demand and records logins.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use arrow::array::{Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
use quarry_core::config::WarehouseConfig;
use quarry_core::schema::{PNL_TYPE, VOLUME_TYPE};
use quarry_core::{RunStatus, Table};
use quarry_testkit::rows_text;
use quarry_warehouse::{Warehouse, WriteMode};

use crate::common::Env;
use crate::harness::{
    agg_batch, assert_backend_error, commit, conformance, daily_loads, generated_rows_in_runs,
    load, rows_of, start,
};
use crate::sneak::Sneak;
use crate::snowflake_proxy::{self, Proxy};

/// Against the fakesnow server scripts/test.sh starts (QUARRY_TEST_SNOWFLAKE_URL),
/// through the test-only proxy that fills in the answers fakesnow leaves
/// short; if the script started it and it does not answer, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
async fn conformance_suite() {
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let proxy = snowflake_proxy::start(&url);
    // Stages with key material, as real Snowflake's internal stages: every
    // staged file goes up encrypted and is decrypted before fakesnow loads it.
    proxy.state.encrypt.store(true, SeqCst);
    // A database of its own: fakesnow keeps one in-memory store for everyone.
    let database = format!("quarry_test_{}", std::process::id());
    let env_on = |database: &str| {
        let mut env = Env::new();
        snowflake_proxy::configure(&mut env.config.warehouse, &proxy, database);
        env
    };
    let env = env_on(&database);
    let sneak = Sneak::Snowflake {
        upstream: url.clone(),
        database: database.clone(),
    };
    conformance(&env, sneak).await;
    // Every file a PUT staged arrived encrypted and was decrypted.
    let decrypted = proxy.state.decrypted.load(SeqCst);
    let puts = proxy.state.puts.load(SeqCst);
    assert_eq!(decrypted, puts, "{decrypted} of {puts} uploads decrypted");
    assert!(puts >= 3, "{puts} PUTs");
    // Nothing left behind: no staging tables of any run, committed or aborted.
    assert_eq!(
        snowflake_proxy::tables(&url, &database).await,
        [
            "AGG_TRADES_WEEKLY",
            "LOADED_DAYS",
            "PIPELINE_RUNS",
            "TRADES",
            "TRADES_REJECTED"
        ]
    );
    // Daily loads, each warehouse in a database of its own.
    daily_loads(|suffix| env_on(&format!("{database}_{suffix}"))).await;
}

/// A million generated trades in 30 runs equal one run, in ETL and ELT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
async fn a_million_rows_in_30_runs_equal_one_run() {
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let proxy = snowflake_proxy::start(&url);
    let database = format!("quarry_million_{}", std::process::id());
    let env_for = |suffix: &str| {
        let mut env = Env::new();
        snowflake_proxy::configure(
            &mut env.config.warehouse,
            &proxy,
            &format!("{database}_{suffix}"),
        );
        env
    };
    generated_rows_in_runs(env_for, 1_000_000, 30).await;
}

/// Transient failures (HTTP 503 from the service, here from the proxy for
/// the next N statements) are retried with backoff until they pass or the
/// attempts run out; permanent ones (a missing object) fail on the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
async fn retries_transient_errors_only() {
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let proxy = snowflake_proxy::start(&url);
    let mut config = WarehouseConfig::default();
    let database = format!("quarry_retry_{}", std::process::id());
    snowflake_proxy::configure(&mut config, &proxy, &database);
    config.snowflake.max_attempts = 4;
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();
    a_retried_put_commits_exactly(wh.as_ref(), &proxy).await;
    small_files_go_up_in_several_puts(&config, &proxy).await;

    // More 503s than attempts: fails as a transient backend error after
    // exactly max_attempts tries.
    proxy.state.fail_next.store(100, SeqCst);
    let before = proxy.state.queries.load(SeqCst);
    let e = wh.list_partitions(Table::Trades).await.unwrap_err();
    assert_backend_error(&e, true);
    assert!(e.to_string().contains("503"), "{e}");
    assert_eq!(proxy.state.queries.load(SeqCst) - before, 4);
    proxy.state.fail_next.store(0, SeqCst);

    // A missing object: permanent, one try, the service's message.
    let mut missing = config.clone();
    missing.snowflake.database = format!("{database}_missing");
    let wh2 = quarry_warehouse::open(&missing).unwrap();
    let before = proxy.state.queries.load(SeqCst);
    let e = wh2.list_runs(10).await.unwrap_err();
    assert_backend_error(&e, false);
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_eq!(proxy.state.queries.load(SeqCst) - before, 1);
}

/// A commit whose PUT meets two 503s: the PUT is repeated, then the upload,
/// the COPY and the transaction go through, and exact values and escaped
/// text come back as sent.
async fn a_retried_put_commits_exactly(wh: &dyn Warehouse, proxy: &Proxy) {
    let batch = RecordBatch::try_new(
        Table::AggTradesWeekly.schema(),
        vec![
            Arc::new(Date32Array::from(vec![19_360, 19_367])),
            Arc::new(StringArray::from(vec!["gold", "it's"])),
            Arc::new(StringArray::from(vec!["a\\b", "u"])),
            Arc::new(StringArray::from(vec!["SYM", "S"])),
            Arc::new(Decimal128Array::from(vec![150_000_000, 1]).with_data_type(VOLUME_TYPE)),
            Arc::new(
                Decimal128Array::from(vec![-1, 12_345_678_901_234_567_890_123])
                    .with_data_type(PNL_TYPE),
            ),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .unwrap();
    wh.begin_run(start("retried")).await.unwrap();
    // The batch goes into the run's Parquet file: no statement yet.
    let before = proxy.state.queries.load(SeqCst);
    wh.write(
        "retried",
        Table::AggTradesWeekly,
        WriteMode::Replace,
        batch.clone(),
    )
    .await
    .unwrap();
    assert_eq!(proxy.state.queries.load(SeqCst), before);
    // The commit's first statement, the file's PUT, meets two 503s.
    proxy.state.fail_next.store(2, SeqCst);
    let rows = wh.commit(commit("retried")).await.unwrap();
    assert_eq!(proxy.state.failed.load(SeqCst), 2);
    assert_eq!(rows["agg_trades_weekly"], 2);
    assert_eq!(
        wh.list_partitions(Table::AggTradesWeekly)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        rows_of(wh, &[Table::AggTradesWeekly]).await,
        rows_text(&[batch])
    );
    assert_eq!(
        wh.get_run("retried").await.unwrap().unwrap().status,
        RunStatus::Succeeded
    );
}

/// Small staged files: a run's rows go up in several PUTs and one COPY
/// loads them all.
async fn small_files_go_up_in_several_puts(config: &WarehouseConfig, proxy: &Proxy) {
    let mut small = config.clone();
    small.snowflake.stage_file_kib = 16;
    let wh = quarry_warehouse::open(&small).unwrap();
    wh.check_connectivity().await.unwrap();
    let n = 6_000;
    let big = RecordBatch::try_new(
        Table::AggTradesWeekly.schema(),
        vec![
            Arc::new(Date32Array::from(vec![19_374; n])),
            Arc::new(StringArray::from(vec!["silver"; n])),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("user-{i}")),
            )),
            Arc::new(StringArray::from(vec!["SYM"; n])),
            Arc::new(
                Decimal128Array::from_iter_values((0..n as i128).map(|i| i * 7_919))
                    .with_data_type(VOLUME_TYPE),
            ),
            Arc::new(
                Decimal128Array::from_iter_values((0..n as i128).map(|i| -i))
                    .with_data_type(PNL_TYPE),
            ),
            Arc::new(Int64Array::from(vec![1; n])),
        ],
    )
    .unwrap();
    let puts = proxy.state.puts.load(SeqCst);
    let slices = (0..6).map(|part| (Table::AggTradesWeekly, big.slice(part * 1_000, 1_000)));
    let rows = load(wh.as_ref(), "several-files", slices).await;
    let files = proxy.state.puts.load(SeqCst) - puts;
    assert!(files >= 3, "{files} PUTs");
    assert_eq!(rows["agg_trades_weekly"], n as u64);
    let back = wh
        .read_partition(Table::AggTradesWeekly, "2023-01-17")
        .await
        .unwrap();
    let (mut got, mut sent) = (rows_text(&back), rows_text(&[big]));
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
}

/// Key-pair authentication: both sessions (the queries' and the stage
/// uploads') log in with a JWT signed by the configured private key, for
/// `<ACCOUNT>.<USER>`, and never send a password. fakesnow accepts any
/// login, so the proxy's record of them is checked here against the public
/// key (generated by openssl for the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
async fn key_pair_login_signs_with_the_key() {
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
    let mut config = WarehouseConfig::default();
    let database = format!("quarry_keys_{}", std::process::id());
    snowflake_proxy::configure(&mut config, &proxy, &database);
    config.snowflake.private_key_path = key.to_str().unwrap().into();
    config.snowflake.password_env = "QUARRY_TEST_NO_SUCH_VARIABLE".into();
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();
    wh.begin_run(start("keys")).await.unwrap();
    wh.write(
        "keys",
        Table::AggTradesWeekly,
        WriteMode::Replace,
        agg_batch("u1"),
    )
    .await
    .unwrap();
    let rows = wh.commit(commit("keys")).await.unwrap();
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

/// The weekly fold inside the commit is exact on fakesnow, whose DuckDB
/// types the products of decimals otherwise than Snowflake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake stand-in (fakesnow): scripts/test.sh runs it"]
async fn the_weekly_fold_is_exact() {
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let proxy = snowflake_proxy::start(&url);
    let mut config = WarehouseConfig::default();
    let database = format!("quarry_fold_{}", std::process::id());
    snowflake_proxy::configure(&mut config, &proxy, &database);
    let wh = quarry_warehouse::open(&config).unwrap();
    wh.check_connectivity().await.unwrap();
    crate::bigquery::folds_exactly(wh.as_ref()).await;
}
