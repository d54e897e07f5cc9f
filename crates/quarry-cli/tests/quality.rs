//! Data-quality checks end to end: thresholds from config, failed runs that
//! leave the warehouse unchanged, history-based consistency, and the report.

mod common;

use common::{Env, HEADER};
use quarry_cli::client::LoaderClient;
use quarry_cli::embedded::Cluster;
use quarry_cli::report::{self, ReportData};
use quarry_core::ErrorCategory;
use quarry_core::config::{CheckConfig, Severity};
use quarry_proto::TopMetric;

/// `per_day` gold trades on each of three days, then `bad` invalid rows.
fn trades(per_day: usize, bad: usize) -> String {
    let mut s = String::from(HEADER);
    for day in 1..=3 {
        for i in 0..per_day {
            s.push_str(&format!(
                "2024-03-0{day} 10:{:02}:{:02},{},gold,SYM,buy,1,10\n",
                i / 60 % 60,
                i % 60,
                i % 7
            ));
        }
    }
    for _ in 0..bad {
        s.push_str("2024-03-01 10:00:00,1,gold,SYM,hold,1,10\n");
    }
    s
}

fn check<'a>(quality: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    quality["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {quality}"))
}

fn quality(r: &quarry_proto::RunRecord) -> serde_json::Value {
    serde_json::from_str(&r.quality_json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_check_fails_the_run_and_leaves_the_warehouse_unchanged() {
    let env = Env::new();
    let good = env.write("good.csv", trades(10, 0));
    env.run(&good).await.unwrap();
    let before = env.snapshot();

    // 30 valid rows, 40 invalid ones: valid share 0.43 < 0.5 (error by default).
    let bad = env.write("bad.csv", trades(10, 40));
    let err = env.run(&bad).await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Quality, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("validity: valid_share = 0.428571, min 0.5 (error)"),
        "{msg}"
    );
    assert_eq!(
        env.snapshot(),
        before,
        "the failed run changed the warehouse"
    );

    let runs = env.runs().await;
    let failed = runs.iter().find(|r| r.status == "failed").unwrap();
    assert_eq!(failed.error_category, "quality");
    let q = quality(failed);
    assert_eq!(check(&q, "validity")["outcome"], "fail");
    assert_eq!(check(&q, "validity")["threshold"], 0.5);
    assert_eq!(check(&q, "reconciliation")["outcome"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warn_check_is_reported_and_the_run_commits() {
    let mut env = Env::new();
    env.config.transformer.quality.uniqueness = CheckConfig::new(Severity::Warn, 0.0);
    env.config.transformer.quality.key_columns = vec!["user_id".into(), "symbol".into()];
    // Every row of a day repeats the previous day's row exactly but for the date.
    let src = env.write(
        "dups.csv",
        format!("{}{}", trades(5, 0), &trades(5, 0)[HEADER.len()..]),
    );
    let summary = env.run(&src).await.unwrap();
    assert_eq!(summary.stats.unwrap().rows_duplicate, 15);
    let runs = env.runs().await;
    let q = quality(&runs[0]);
    assert_eq!(runs[0].status, "succeeded");
    assert_eq!(check(&q, "uniqueness")["outcome"], "warn");
    assert_eq!(check(&q, "uniqueness")["value"], 0.5);
    // 30 rows, 5 distinct (user, symbol) keys: 25 repeat one.
    assert_eq!(check(&q, "key_uniqueness")["value"], 25.0 / 30.0);
    assert_eq!(check(&q, "key_uniqueness")["outcome"], "warn");
    // The data is from 2024: far older than 72 hours.
    assert_eq!(check(&q, "freshness")["outcome"], "warn");
    assert_eq!(check(&q, "completeness")["outcome"], "pass");
    assert_eq!(q["profile"]["per_day"]["gold"]["trades_per_day"], 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_compares_with_the_history_of_earlier_runs() {
    let mut env = Env::new();
    let q = &mut env.config.transformer.quality;
    q.consistency = CheckConfig::new(Severity::Error, 0.5);
    q.min_history_runs = 2;
    let normal = env.write("normal.csv", trades(10, 0));
    // No history yet, then one run: skipped; with two earlier runs: measured.
    for expected in ["skipped", "skipped", "pass"] {
        env.run(&normal).await.unwrap();
        let runs = env.runs().await;
        assert_eq!(
            check(&quality(&runs[0]), "consistency")["outcome"],
            expected
        );
    }
    let before = env.snapshot();
    let spike = env.write("spike.csv", trades(40, 0));
    let err = env.run(&spike).await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Quality);
    assert!(
        err.to_string()
            .contains("consistency: max_relative_deviation = 3.000000, max 0.5 (error): gold trades/day: 40.00 vs median 10.00 of 3 earlier runs"),
        "{err}"
    );
    assert_eq!(env.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_renders_the_fixture_as_html_and_svg() {
    let env = Env::new();
    let src = env.copy_fixture();
    env.run(&src).await.unwrap();
    let cluster = Cluster::start_loader(&env.config).await.unwrap();
    let mut l = LoaderClient::connect(&cluster.loader_url).await.unwrap();
    let data = ReportData {
        weekly: l.weekly_totals().await.unwrap(),
        top_client_type: "bronze".into(),
        top_by_volume: l.top_users("bronze", TopMetric::Volume, 3).await.unwrap(),
        top_by_pnl: l.top_users("bronze", TopMetric::Pnl, 3).await.unwrap(),
        runs: l.list_runs(30).await.unwrap(),
    };
    cluster.stop().await.unwrap();
    // Weekly totals add up to the aggregate table.
    let trades: u64 = data.weekly.iter().map(|w| w.trade_count).sum();
    assert_eq!(
        trades as i64,
        env.count("SELECT sum(trade_count) FROM agg_trades_weekly")
    );

    let out = env.dir.path().join("output");
    let files = report::write(&out, &data, "now").unwrap();
    assert_eq!(files.len(), 8);
    for svg in &files[1..] {
        let text = std::fs::read_to_string(svg).unwrap();
        let doc =
            roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", svg.display()));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let marks = doc
            .descendants()
            .filter(|n| ["polyline", "path", "rect", "circle"].contains(&n.tag_name().name()))
            .count();
        // Background and axes alone draw a few; data adds many more.
        assert!(marks > 8, "{} looks empty ({marks} marks)", svg.display());
    }
    let html = std::fs::read_to_string(&files[0]).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &html,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("report.html is well-formed");
    let count = |tag: &str| {
        doc.descendants()
            .filter(|n| n.tag_name().name() == tag)
            .count()
    };
    assert_eq!(count("svg"), 7);
    assert_eq!(count("figure"), 7);
    // Recent runs, the quality checks of the latest run, the top users.
    assert_eq!(count("table"), 3);
    // Self-contained: nothing is loaded from elsewhere.
    assert!(!doc.descendants().any(|n| n.has_attribute("src")
        || n.attribute("href").is_some_and(|h| h.contains("://"))
        || n.tag_name().name() == "link"));
    for u in data.top_by_volume.iter().chain(&data.top_by_pnl) {
        assert!(html.contains(&format!("<td>{}</td>", u.user_id)));
    }
    assert!(html.contains("timestamp_missing") && html.contains("validity"));
}
