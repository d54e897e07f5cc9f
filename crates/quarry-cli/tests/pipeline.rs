//! End-to-end runs over real gRPC with the SQLite warehouse.

mod common;

use std::collections::BTreeMap;

use common::{Env, HEADER, expected_agg, fixtures, valid_rows};
use quarry_proto::RunOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_sample_gives_the_expected_results() {
    let env = Env::new();
    let src = env.copy_fixture();
    let summary = env.run(&src).await.unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("trades_sample.expected.json")).unwrap(),
    )
    .unwrap();
    let stats = summary.stats.unwrap();
    assert_eq!(stats.rows_in, expected["rows_in"].as_u64().unwrap());
    assert_eq!(stats.rows_valid, expected["rows_valid"].as_u64().unwrap());
    assert_eq!(
        stats.rows_rejected,
        expected["rows_rejected"].as_u64().unwrap()
    );

    // agg_trades_weekly equals the expected CSV row for row; REAL values are
    // the doubles nearest to the exact decimals.
    let want = expected_agg(|t, _| t.parse::<f64>().unwrap());
    let conn = env.conn();
    let mut st = conn
        .prepare(
            "SELECT week_start_date, client_type, user_id, symbol, total_volume, total_pnl, trade_count
             FROM agg_trades_weekly ORDER BY 1, 2, 3, 4",
        )
        .unwrap();
    let got: Vec<(String, String, String, String, f64, f64, i64)> = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        got.len(),
        expected["agg_trades_weekly_rows"].as_u64().unwrap() as usize
    );
    assert_eq!(got, want);

    let rejected: BTreeMap<String, i64> = conn
        .prepare("SELECT reason, count(*) FROM trades_rejected GROUP BY reason")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want_rej: BTreeMap<String, i64> = expected["rejected_by_reason"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
        .collect();
    assert_eq!(rejected, want_rej);
    assert_eq!(env.count("SELECT count(*) FROM trades"), 790);
    assert_eq!(
        env.count("SELECT count(DISTINCT trade_date) FROM trades"),
        expected["trade_dates"].as_i64().unwrap()
    );
    // Rejected rows keep their lineage.
    assert_eq!(
        env.count("SELECT count(*) FROM trades_rejected WHERE source_row < 2 OR source_file NOT LIKE '%trades_sample.csv'"),
        0
    );

    // Top users come from the warehouse, exact.
    let cluster = quarry_cli::embedded::Cluster::start_loader(&env.config)
        .await
        .unwrap();
    let mut l = quarry_cli::client::LoaderClient::connect(&cluster.loader_url)
        .await
        .unwrap();
    for (metric, key) in [
        (quarry_proto::TopMetric::Volume, "top_bronze_by_volume"),
        (quarry_proto::TopMetric::Pnl, "top_bronze_by_pnl"),
    ] {
        let got: Vec<(String, String)> = l
            .top_users("bronze", metric, 3)
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.user_id, u.value))
            .collect();
        let want: Vec<(String, String)> = expected[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
            .collect();
        assert_eq!(got, want, "{key}");
    }
    let run = l.get_run(&summary.run_id).await.unwrap();
    assert_eq!(run.status, "succeeded");
    assert_eq!(run.rows_committed.get("trades"), Some(&790));
    let quality: serde_json::Value = serde_json::from_str(&run.quality_json).unwrap();
    assert_eq!(quality["rejected_by_reason"]["timestamp_missing"], 5);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_code_lands_in_the_quarantine() {
    let mut env = Env::new();
    // 15 of 16 rows are bad on purpose: the validity check only warns here.
    env.config.transformer.quality.validity.severity = quarry_core::config::Severity::Warn;
    let rows = [
        (" ,1,gold,A,buy,1,1", "timestamp_missing"),
        ("2023-02-30 00:00:00,1,gold,A,buy,1,1", "timestamp_invalid"),
        ("2023-01-02 00:00:00,,gold,A,buy,1,1", "user_id_missing"),
        ("2023-01-02 00:00:00,a b,gold,A,buy,1,1", "user_id_invalid"),
        ("2023-01-02 00:00:00,1,,A,buy,1,1", "client_type_missing"),
        (
            "2023-01-02 00:00:00,1,platinum,A,buy,1,1",
            "client_type_invalid",
        ),
        ("2023-01-02 00:00:00,1,gold,,buy,1,1", "symbol_missing"),
        ("2023-01-02 00:00:00,1,gold,#!,buy,1,1", "symbol_invalid"),
        ("2023-01-02 00:00:00,1,gold,A,,1,1", "side_missing"),
        ("2023-01-02 00:00:00,1,gold,A,hold,1,1", "side_invalid"),
        ("2023-01-02 00:00:00,1,gold,A,buy,,1", "quantity_missing"),
        ("2023-01-02 00:00:00,1,gold,A,buy,0,1", "quantity_invalid"),
        ("2023-01-02 00:00:00,1,gold,A,buy,1,", "price_missing"),
        ("2023-01-02 00:00:00,1,gold,A,buy,1,NaN", "price_invalid"),
        ("bad,,platinum,,hold,-1,", "timestamp_invalid"),
    ];
    let mut csv = String::from(HEADER);
    for (r, _) in &rows {
        csv.push_str(r);
        csv.push('\n');
    }
    csv.push_str("2023-01-02 00:00:00,1,gold,A,buy,1,1\n");
    let src = env.write("reasons.csv", csv);
    let s = env.run(&src).await.unwrap().stats.unwrap();
    assert_eq!((s.rows_in, s.rows_valid, s.rows_rejected), (16, 1, 15));
    let conn = env.conn();
    let got: Vec<(i64, String, Option<String>)> = conn
        .prepare("SELECT source_row, reason, user_id FROM trades_rejected ORDER BY source_row")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (i, (row, reason, _)) in got.iter().enumerate() {
        assert_eq!(*row, i as i64 + 2);
        assert_eq!(reason, rows[i].1, "line {row}");
    }
    // Original text is kept as it arrived.
    assert_eq!(got[3].2.as_deref(), Some("a b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weeks_years_and_offsets_follow_utc_and_decimals_stay_exact() {
    let env = Env::new();
    let src = env.write(
        "edges.csv",
        format!(
            "{HEADER}\
             2023-01-01 23:59:59,7,bronze,X,sell,0.12345678,1000.00000001\n\
             2023-01-02T00:30:00+01:00,7,bronze,X,sell,0.00000001,0.00000001\n\
             2023-01-02T00:00:00Z,7,bronze,X,buy,1,0.1\n\
             2022-12-31T23:30:00-01:00,7,bronze,Y,buy,2,3\n\
             2024-12-30 08:00:00.123456,7,bronze,X,sell,0.1,0.2\n"
        ),
    );
    env.run(&src).await.unwrap();
    let conn = env.conn();
    let got: Vec<(String, String, f64, f64, i64)> = conn
        .prepare("SELECT week_start_date, symbol, total_volume, total_pnl, trade_count FROM agg_trades_weekly ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let d = |s: &str| s.parse::<f64>().unwrap();
    assert_eq!(
        got,
        vec![
            // Sunday 23:59:59 and Monday 00:30+01:00 (= Sunday 23:30 UTC): week of 2022-12-26.
            // 0.12345678 * 1000.00000001 + 0.00000001 * 0.00000001, exactly.
            (
                "2022-12-26".into(),
                "X".into(),
                d("0.12345679"),
                d("123.4567800012345679"),
                2
            ),
            // 2022-12-31 23:30 -01:00 is 2023-01-01 00:30 UTC: still that week.
            ("2022-12-26".into(), "Y".into(), d("2"), d("-6"), 1),
            ("2023-01-02".into(), "X".into(), d("1"), d("-0.1"), 1),
            // Monday 2024-12-30 starts the week that runs into 2025.
            ("2024-12-30".into(), "X".into(), d("0.1"), d("0.02"), 1),
        ]
    );
    let ts: Vec<String> = conn
        .prepare("SELECT timestamp FROM trades ORDER BY timestamp")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        ts,
        [
            "2023-01-01 00:30:00",
            "2023-01-01 23:30:00",
            "2023-01-01 23:59:59",
            "2023-01-02 00:00:00",
            "2024-12-30 08:00:00.123456"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_twice_leaves_an_identical_warehouse() {
    let env = Env::new();
    let src = env.copy_fixture();
    env.run(&src).await.unwrap();
    let first = env.snapshot();
    env.run(&src).await.unwrap();
    assert_eq!(env.snapshot(), first);
    assert_eq!(env.count("SELECT count(*) FROM trades"), 790);
    assert_eq!(env.count("SELECT count(DISTINCT run_id) FROM trades"), 1);
    let runs = env.runs().await;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.status == "succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_replaces_only_the_partitions_it_covers() {
    let env = Env::new();
    env.write(
        "a.csv",
        format!(
            "{HEADER}2024-01-01 10:00:00,1,gold,A,buy,1,1\n2024-01-08 10:00:00,1,gold,A,buy,1,1\n"
        ),
    );
    env.run(&env.data).await.unwrap();
    // A second file with another day of the first week replaces that day
    // alone; the week is recomputed from all its days, the other week stays.
    let b = env.write(
        "b.csv",
        format!("{HEADER}2024-01-02 10:00:00,2,gold,B,sell,5,2\n"),
    );
    env.run(&b).await.unwrap();
    let weeks: Vec<(String, String)> = env
        .conn()
        .prepare("SELECT week_start_date, user_id FROM agg_trades_weekly ORDER BY 1")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        weeks,
        [
            ("2024-01-01".into(), "1".into()),
            ("2024-01-01".into(), "2".into()),
            ("2024-01-08".into(), "1".into())
        ]
    );
    assert_eq!(
        env.count("SELECT count(*) FROM trades WHERE trade_date = '2024-01-01'"),
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM trades WHERE trade_date = '2024-01-02'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_breaks_half_way_changes_nothing_and_is_recorded() {
    let mut env = Env::new();
    env.config.extractor.batch_rows = 100;
    let good = env.copy_fixture();
    env.run(&good).await.unwrap();
    let before = env.snapshot();

    let mut broken = valid_rows(5_000).into_bytes();
    broken.extend_from_slice(b"2024-01-03 10:00:00,1,gold,\xff\xfe,buy,1,1\n");
    broken.extend_from_slice(valid_rows(10).split_once('\n').unwrap().1.as_bytes());
    let src = env.write("broken.csv", broken);
    let e = env.run(&src).await.unwrap_err().to_string();
    assert!(
        e.contains("broken.csv line 5002") && e.contains("UTF-8"),
        "{e}"
    );
    assert_eq!(env.snapshot(), before);
    let runs = env.runs().await;
    let failed = &runs[0];
    assert_eq!(
        (failed.status.as_str(), failed.error_category.as_str()),
        ("failed", "input")
    );
    assert!(
        failed.error_message.contains("broken.csv"),
        "{}",
        failed.error_message
    );
    // The rows read before the break (lines 2 to 5001) were counted, then
    // discarded.
    assert_eq!(failed.stats.as_ref().unwrap().rows_in, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_fail_with_a_clear_error_and_change_nothing() {
    let env = Env::new();
    let good = env.copy_fixture();
    env.run(&good).await.unwrap();
    let before = env.snapshot();

    let missing = env.write(
        "missing.csv",
        "timestamp,user_id,client_type,symbol,side,quantity\n2024-01-01 00:00:00,1,gold,A,buy,1\n",
    );
    let e = env.run(&missing).await.unwrap_err();
    assert!(
        e.to_string().contains("missing.csv") && e.to_string().contains("price"),
        "{e}"
    );
    assert_eq!(e.category(), quarry_core::ErrorCategory::Input);

    let binary = env.write(
        "image.csv",
        [
            0x89u8, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, 0xff, 0xd8,
        ],
    );
    let e = env.run(&binary).await.unwrap_err().to_string();
    assert!(
        e.contains("image.csv") && (e.contains("binary") || e.contains("UTF-8")),
        "{e}"
    );

    let truncated = env.write("cut.parquet", b"PAR1\x15\x04garbage");
    let e = env.run(&truncated).await.unwrap_err().to_string();
    assert!(e.contains("cut.parquet") && e.contains("Parquet"), "{e}");

    let outside = env.dir.path().join("outside.csv");
    std::fs::copy(&good, &outside).unwrap();
    for path in [
        outside.clone(),
        env.data.join("../outside.csv"),
        "/etc/passwd".into(),
    ] {
        let e = env.run(&path).await.unwrap_err();
        assert!(
            e.kind() == quarry_core::ErrorKind::PermissionDenied,
            "{path:?}: {e}"
        );
        assert!(
            e.to_string().contains("outside the extractor's data roots"),
            "{e}"
        );
    }

    assert_eq!(env.snapshot(), before);
    let runs = env.runs().await;
    assert_eq!(runs.iter().filter(|r| r.status == "failed").count(), 6);
    assert!(
        runs.iter()
            .filter(|r| r.status == "failed")
            .all(|r| r.error_category == "input")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_ndjson_and_globs_give_the_same_aggregate() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let env = Env::new();
    let csv_src = env.copy_fixture();
    env.run(&csv_src).await.unwrap();
    let agg = |env: &Env| -> Vec<String> {
        env.snapshot()
            .into_iter()
            .filter(|r| r.contains("agg_trades_weekly"))
            .collect()
    };
    let want = agg(&env);

    // Same rows as NDJSON (numbers as JSON numbers) and Parquet (typed columns).
    let mut rdr = csv::Reader::from_path(&csv_src).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let ndjson: String = rows
        .iter()
        .map(|r| {
            let num = |s: &str| if s.is_empty() { "null".to_string() } else { s.to_string() };
            format!(
                "{{\"Timestamp\":{},\"user_id\":\"{}\",\"client_type\":\"{}\",\"symbol\":\"{}\",\"side\":\"{}\",\"quantity\":{},\"price\":{}}}\n",
                serde_json::to_string(&r[0]).unwrap(), &r[1], &r[2], &r[3], &r[4], num(&r[5]), num(&r[6])
            )
        })
        .collect();
    let other = Env::new();
    let nd = other.write("trades.ndjson", ndjson);
    other.run(&nd).await.unwrap();
    assert_eq!(agg(&other), want);

    let text = |k: usize| -> ArrayRef {
        Arc::new(StringArray::from(
            rows.iter().map(|r| r[k].to_string()).collect::<Vec<_>>(),
        ))
    };
    let num = |k: usize| -> ArrayRef {
        Arc::new(Float64Array::from(
            rows.iter()
                .map(|r| r[k].parse::<f64>().ok())
                .collect::<Vec<_>>(),
        ))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("price", DataType::Float64, true),
        Field::new("timestamp", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("client_type", DataType::Utf8, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("side", DataType::Utf8, false),
        Field::new("quantity", DataType::Float64, true),
        Field::new("venue", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            num(6),
            text(0),
            text(1),
            text(2),
            text(3),
            text(4),
            num(5),
            text(1),
        ],
    )
    .unwrap();
    let third = Env::new();
    // Two Parquet files picked up by a glob.
    for (i, part) in [batch.slice(0, 400), batch.slice(400, 400)]
        .into_iter()
        .enumerate()
    {
        let f = std::fs::File::create(third.data.join(format!("part-{i}.parquet"))).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None).unwrap();
        w.write(&part).unwrap();
        w.close().unwrap();
    }
    let summary = third.run(&third.data.join("part-*.parquet")).await.unwrap();
    assert_eq!(summary.stats.unwrap().rows_in, 800);
    assert_eq!(agg(&third), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_counted_and_dropped_on_request() {
    let env = Env::new();
    let row = "2024-01-01 10:00:00,1,gold,A,buy,1,1\n";
    let src = env.write("dups.csv", format!("{HEADER}{row}{row}{row}"));
    let s = env.run(&src).await.unwrap().stats.unwrap();
    assert_eq!((s.rows_valid, s.rows_duplicate), (3, 2));
    assert_eq!(env.count("SELECT trade_count FROM agg_trades_weekly"), 3);
    let s = env
        .run_with(
            &src,
            RunOptions {
                dedup: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .stats
        .unwrap();
    assert_eq!(s.rows_duplicate, 2);
    assert_eq!(env.count("SELECT trade_count FROM agg_trades_weekly"), 1);
    assert_eq!(env.count("SELECT count(*) FROM trades"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_are_serialised_by_the_loader() {
    let env = Env::new();
    // The same days from two files: their commits replace each other's
    // partitions, so they must not interleave.
    let a = env.copy_fixture();
    let b = env.write(
        "copy.csv",
        std::fs::read(common::fixtures().join("trades_sample.csv")).unwrap(),
    );
    let cluster = quarry_cli::embedded::Cluster::start(&env.config)
        .await
        .unwrap();
    let url = cluster.transformer_url.clone().unwrap();
    let run = |src: std::path::PathBuf| {
        let url = url.clone();
        async move {
            let req = quarry_proto::RunRequest {
                source: src.display().to_string(),
                ..Default::default()
            };
            quarry_cli::client::run_pipeline(&url, req, |_| {}).await
        }
    };
    let (ra, rb) = tokio::join!(run(a), run(b));
    ra.unwrap();
    rb.unwrap();
    cluster.stop().await.unwrap();
    // One copy of the trades (the later commit replaced the days), the
    // rejected rows of both files.
    assert_eq!(env.count("SELECT count(*) FROM trades"), 790);
    assert_eq!(env.count("SELECT count(*) FROM trades_rejected"), 20);
    let mut runs = env.runs().await;
    assert_eq!(runs.iter().filter(|r| r.status == "succeeded").count(), 2);
    // One after the other: the second began after the first committed.
    runs.sort_by(|x, y| x.started_at.cmp(&y.started_at));
    assert!(
        runs[0].finished_at <= runs[1].started_at,
        "overlapping runs: {} .. {} and {} .. {}",
        runs[0].started_at,
        runs[0].finished_at,
        runs[1].started_at,
        runs[1].finished_at
    );
}

/// An environment whose directory holds the sample as `data/trades.csv`,
/// where `quarry` runs with its defaults (`agg_result.db` is `env.db`).
fn sample_env() -> Env {
    let env = Env::new();
    std::fs::copy(
        fixtures().join("trades_sample.csv"),
        env.data.join("trades.csv"),
    )
    .unwrap();
    env
}

/// ELT: the transformer sends no weekly rows and the warehouse computes
/// them inside the commit; the tables and the report files are those of ETL.
#[test]
fn an_elt_run_gives_the_tables_and_reports_of_an_etl_run() {
    use common::cli::quarry_ok;
    let (etl, elt) = (sample_env(), sample_env());
    quarry_ok(etl.dir.path(), &["run", "-q", "--mode", "etl"]);
    quarry_ok(elt.dir.path(), &["run", "-q", "--mode", "elt"]);
    assert_eq!(elt.count("SELECT count(*) FROM agg_trades_weekly"), 545);
    assert_eq!(elt.count("SELECT count(*) FROM trades"), 790);
    // Every table, the rejected rows' source files (under each env's own
    // directory) aside.
    let tables = |e: &Env| -> Vec<String> {
        let data = e.data.display().to_string();
        e.snapshot()
            .iter()
            .map(|r| r.replace(&data, "data"))
            .collect()
    };
    assert_eq!(tables(&elt), tables(&etl));
    for f in ["top_bronze_by_volume.csv", "top_bronze_by_pnl.csv"] {
        let read = |e: &Env| std::fs::read_to_string(e.dir.path().join("output").join(f)).unwrap();
        assert_eq!(read(&elt), read(&etl), "{f}");
    }
    // Nothing weekly was sent, and every row is still accounted for.
    let q: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(elt.dir.path().join("output/quality_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(q["agg_trades_weekly_rows"], 0, "{q}");
    assert!(q["rows_staged"].get("agg_trades_weekly").is_none(), "{q}");
    let reconciliation = q["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "reconciliation")
        .unwrap();
    assert_eq!(reconciliation["outcome"], "pass", "{reconciliation}");

    let listed = |e: &Env| {
        let out = quarry_ok(e.dir.path(), &["runs"]);
        let row = out
            .lines()
            .find(|l| l.contains("succeeded"))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string();
        assert!(out.contains("mode"), "{out}");
        row
    };
    assert!(listed(&elt).contains(" elt "), "{}", listed(&elt));
    assert!(listed(&etl).contains(" etl "), "{}", listed(&etl));
}

/// ELT computes the weeks from the raw trades: without them it is refused
/// in one line, before a run begins, however it is asked for.
#[test]
fn an_elt_run_without_raw_trades_is_refused_and_changes_nothing() {
    use common::cli::{fails, one_line_error, quarry_ok, run_within};
    let env = sample_env();
    let dir = env.dir.path();
    quarry_ok(dir, &["run", "-q"]);
    let before = env.snapshot();
    let runs = || env.count("SELECT count(*) FROM pipeline_runs");
    assert_eq!(runs(), 1);

    // The flags: refused by the command itself.
    fails(
        dir,
        &["run", "-q", "--mode", "elt", "--no-raw-trades"],
        &["--mode elt", "--no-raw-trades"],
    );
    // ELT asked of a transformer configured without raw trades: refused by
    // the transformer before the run is recorded.
    let deadline = std::time::Duration::from_secs(60);
    let out = run_within(
        dir,
        &["run", "-q", "--mode", "elt"],
        &[("QUARRY_TRANSFORMER__LOAD_RAW_TRADES", "false")],
        deadline,
    );
    one_line_error(&out, &["ELT", "without raw trades"]);
    // Configured so: a configuration error naming both keys.
    let out = run_within(
        dir,
        &["run", "-q"],
        &[
            ("QUARRY_TRANSFORMER__MODE", "elt"),
            ("QUARRY_TRANSFORMER__LOAD_RAW_TRADES", "false"),
        ],
        deadline,
    );
    one_line_error(&out, &["transformer.mode", "transformer.load_raw_trades"]);
    assert_eq!(env.snapshot(), before);
    assert_eq!(runs(), 1);
}

/// Daily loads: the same deliveries, a few days at a time, leave the same
/// warehouse in ETL and in ELT, and every week holds all of its days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_loads_leave_the_same_warehouse_in_etl_and_elt() {
    let deliveries = [
        "2024-01-01 10:00:00,1,gold,A,buy,1.5,10.25\n2024-01-08 09:00:00,1,gold,A,sell,2,3\n",
        // An exact duplicate, dropped: its day is still the run's.
        "2024-01-02 10:00:00,2,gold,B,sell,5,2\n2024-01-02 10:00:00,2,gold,B,sell,5,2\n",
        // 2024-01-01 again: the day is replaced, its week recomputed.
        "2024-01-01 11:00:00,1,gold,A,buy,0.5,10\n",
    ];
    let mut warehouses = vec![];
    for mode in [quarry_proto::RunMode::Etl, quarry_proto::RunMode::Elt] {
        let env = Env::new();
        for (i, rows) in deliveries.iter().enumerate() {
            let f = env.write(&format!("d{i}.csv"), format!("{HEADER}{rows}"));
            let options = RunOptions {
                dedup: Some(true),
                mode: Some(mode as i32),
                ..Default::default()
            };
            env.run_with(&f, options).await.unwrap();
        }
        let weeks: Vec<(String, String, f64, i64)> = env
            .conn()
            .prepare(
                "SELECT week_start_date, user_id, total_volume, trade_count
                 FROM agg_trades_weekly ORDER BY 1, 2",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            weeks,
            [
                ("2024-01-01".into(), "1".into(), 0.5, 1),
                ("2024-01-01".into(), "2".into(), 5.0, 1),
                ("2024-01-08".into(), "1".into(), 2.0, 1),
            ],
            "{mode:?}"
        );
        let data = env.data.display().to_string();
        warehouses.push(
            env.snapshot()
                .iter()
                .map(|r| r.replace(&data, "data"))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(warehouses[0], warehouses[1]);
}
