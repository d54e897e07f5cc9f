//! Loading and validation of the configuration.

use std::path::{Path, PathBuf};

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_valid() {
    let c = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(c.warehouse.sqlite.path, PathBuf::from("agg_result.db"));
    assert_eq!(c.run.source, "data/trades.csv");
}

#[test]
fn environment_overrides_typed_values() {
    let c = Config::load_with_env(
        None,
        env(&[
            ("QUARRY_EXTRACTOR__BATCH_ROWS", "1000"),
            ("QUARRY_EXTRACTOR__DATA_ROOTS", r#"["a", "b"]"#),
            ("QUARRY_WAREHOUSE__SQLITE__PATH", "/tmp/x.db"),
            ("QUARRY_TRANSFORMER__DEDUP", "true"),
            ("QUARRY_LOG_FORMAT", "json"),
            ("OTHER__THING", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(c.extractor.batch_rows, 1000);
    assert_eq!(
        c.extractor.data_roots,
        vec![PathBuf::from("a"), PathBuf::from("b")]
    );
    assert_eq!(c.warehouse.sqlite.path, PathBuf::from("/tmp/x.db"));
    assert!(c.transformer.dedup);
}

#[test]
fn bigquery_is_configured_from_the_environment() {
    let c = Config::load_with_env(
        None,
        env(&[
            ("QUARRY_WAREHOUSE__TYPE", "bigquery"),
            ("QUARRY_WAREHOUSE__BIGQUERY__PROJECT", "my-project"),
            ("QUARRY_WAREHOUSE__BIGQUERY__DATASET", "trades_eu"),
            ("QUARRY_WAREHOUSE__BIGQUERY__MAX_ATTEMPTS", "7"),
        ]),
    )
    .unwrap();
    assert_eq!(c.warehouse.kind, WarehouseKind::Bigquery);
    assert_eq!(c.warehouse.bigquery.project, "my-project");
    assert_eq!(c.warehouse.bigquery.dataset, "trades_eu");
    assert_eq!(c.warehouse.bigquery.max_attempts, 7);
    let e = Config::load_with_env(None, env(&[("QUARRY_WAREHOUSE__TYPE", "bigquery")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("warehouse.bigquery.project"), "{e}");
    let e = Config::load_with_env(
        None,
        env(&[("QUARRY_WAREHOUSE__BIGQUERY__DATASET", "a-b; DROP")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("warehouse.bigquery.dataset"), "{e}");
}

#[test]
fn a_section_may_set_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("q.toml");
    std::fs::write(
        &f,
        "[transformer.quality.validity]\nseverity = \"warn\"\n[warehouse.clickhouse]\ndatabase = \"db2\"\n",
    )
    .unwrap();
    let c = Config::load_with_env(Some(&f), env(&[])).unwrap();
    assert_eq!(c.transformer.quality.validity.severity, Severity::Warn);
    assert_eq!(c.transformer.quality.validity.threshold, 0.5);
    assert_eq!(c.warehouse.clickhouse.database, "db2");
    assert_eq!(c.warehouse.clickhouse.url, ClickHouseConfig::default().url);
    let c = Config::load_with_env(
        None,
        env(&[("QUARRY_TRANSFORMER__QUALITY__FRESHNESS__THRESHOLD", "5")]),
    )
    .unwrap();
    assert_eq!(c.transformer.quality.freshness.threshold, 5.0);
    assert_eq!(c.transformer.quality.freshness.severity, Severity::Warn);
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("q.toml");
    std::fs::write(&f, "[loader]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n").unwrap();
    let e = Config::load_with_env(Some(&f), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("listn") && e.contains("q.toml"), "{e}");

    let e = Config::load_with_env(None, env(&[("QUARRY_LOADER__LISTEN", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("loader.listen"), "{e}");

    let e = Config::load_with_env(None, env(&[("QUARRY_WAREHOUSE__TYPE", "oracle")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("oracle"), "{e}");
}

#[test]
fn elt_mode_needs_the_raw_trades() {
    let c = Config::load_with_env(None, env(&[("QUARRY_TRANSFORMER__MODE", "elt")])).unwrap();
    assert_eq!(c.transformer.mode, crate::RunMode::Elt);
    assert_eq!(Config::default().transformer.mode, crate::RunMode::Etl);
    let e = Config::load_with_env(
        None,
        env(&[
            ("QUARRY_TRANSFORMER__MODE", "elt"),
            ("QUARRY_TRANSFORMER__LOAD_RAW_TRADES", "false"),
        ]),
    )
    .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::Config);
    let e = e.to_string();
    assert!(
        e.contains("transformer.mode") && e.contains("transformer.load_raw_trades"),
        "{e}"
    );
    // Without raw trades, ETL is fine; an unknown mode is refused.
    Config::load_with_env(
        None,
        env(&[("QUARRY_TRANSFORMER__LOAD_RAW_TRADES", "false")]),
    )
    .unwrap();
    let e = Config::load_with_env(None, env(&[("QUARRY_TRANSFORMER__MODE", "both")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("both"), "{e}");
}

#[test]
fn snowflake_is_configured_from_the_environment() {
    let c = Config::load_with_env(
        None,
        env(&[
            ("QUARRY_WAREHOUSE__TYPE", "snowflake"),
            ("QUARRY_WAREHOUSE__SNOWFLAKE__ACCOUNT", "myorg-acct"),
            ("QUARRY_WAREHOUSE__SNOWFLAKE__USER", "loader"),
            ("QUARRY_WAREHOUSE__SNOWFLAKE__MAX_ATTEMPTS", "3"),
        ]),
    )
    .unwrap();
    assert_eq!(c.warehouse.kind, WarehouseKind::Snowflake);
    assert_eq!(c.warehouse.snowflake.account, "myorg-acct");
    assert_eq!(c.warehouse.snowflake.max_attempts, 3);

    // Selected without an account: refused before anything starts.
    let e = Config::load_with_env(None, env(&[("QUARRY_WAREHOUSE__TYPE", "snowflake")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("warehouse.snowflake.account"), "{e}");
    let e = Config::load_with_env(
        None,
        env(&[("QUARRY_WAREHOUSE__SNOWFLAKE__SCHEMA", "x; DROP TABLE t")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("warehouse.snowflake.schema"), "{e}");
}

/// config/quarry.toml documents every key with its default: it must load
/// and equal the built-in defaults.
#[test]
fn the_documented_config_is_the_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/quarry.toml");
    let file = Config::load_with_env(Some(&path), Vec::new()).unwrap();
    let ser = |c: &Config| toml::to_string(c).unwrap();
    assert_eq!(ser(&file), ser(&Config::default()));
}
