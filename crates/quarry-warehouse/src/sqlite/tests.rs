//! The SQLite backend on real files.

use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Decimal128Array, Int64Array, StringArray};
use quarry_core::ErrorCategory;
use quarry_core::schema::{PNL_TYPE, VOLUME_TYPE};

use super::encode::{NANOS_PER_DAY, timestamp_text};
use super::*;
use crate::RunStats;

fn agg_batch(week: i32, user: &str, volume: i128) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Date32Array::from(vec![week])),
        Arc::new(StringArray::from(vec!["bronze"])),
        Arc::new(StringArray::from(vec![user])),
        Arc::new(StringArray::from(vec!["X"])),
        Arc::new(Decimal128Array::from(vec![volume]).with_data_type(VOLUME_TYPE)),
        Arc::new(Decimal128Array::from(vec![volume * 10i128.pow(8)]).with_data_type(PNL_TYPE)),
        Arc::new(Int64Array::from(vec![1])),
    ];
    RecordBatch::try_new(Table::AggTradesWeekly.schema(), cols).unwrap()
}

fn start(id: &str) -> RunStart {
    RunStart {
        run_id: id.into(),
        source: "test".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    }
}

fn commit(id: &str) -> RunCommit {
    RunCommit {
        run_id: id.into(),
        ..Default::default()
    }
}

/// The partition indexes, which a fresh load drops and rebuilds at commit.
async fn partition_indexes(wh: &SqliteWarehouse) -> Vec<String> {
    wh.read(|c| {
        c.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%_by_%' AND name NOT IN ('pipeline_runs_by_start', 'loaded_days_by_week') ORDER BY 1")?
            .query_map([], |r| r.get(0))?
            .collect()
    })
    .await
    .unwrap()
}

async fn agg_rows(wh: &SqliteWarehouse) -> Vec<(String, String, f64)> {
    wh.read(|c| {
        c.prepare(
            "SELECT week_start_date, user_id, total_volume FROM agg_trades_weekly ORDER BY 1, 2",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
    })
    .await
    .unwrap()
}

#[test]
fn timestamps_are_written_as_sortable_utc_text() {
    let mut out = Vec::new();
    for (nanos, want) in [
        (0i64, "1970-01-01 00:00:00"),
        (1_672_617_845_123_000_000, "2023-01-02 00:04:05.123"),
        (-1, "1969-12-31 23:59:59.999999999"),
        (100_000_000, "1970-01-01 00:00:00.1"),
        (1_000_000_005, "1970-01-01 00:00:01.000000005"),
        (1_704_153_599_000_000_000, "2024-01-01 23:59:59"),
    ] {
        out.clear();
        let day = quarry_core::dates::date_text(nanos.div_euclid(NANOS_PER_DAY) as i32);
        timestamp_text(nanos, &day, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), want);
    }
}

#[tokio::test]
async fn readers_see_the_last_commit_until_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let wh = SqliteWarehouse::open(&dir.path().join("w.db")).unwrap();
    wh.check_connectivity().await.unwrap();
    let mode = WriteMode::Replace;

    wh.begin_run(start("r1")).await.unwrap();
    wh.write(
        "r1",
        Table::AggTradesWeekly,
        mode,
        agg_batch(0, "a", 100_000_000),
    )
    .await
    .unwrap();
    assert!(
        agg_rows(&wh).await.is_empty(),
        "uncommitted rows are invisible"
    );
    let rows = wh.commit(commit("r1")).await.unwrap();
    assert_eq!(rows.get("agg_trades_weekly"), Some(&1));
    assert_eq!(
        agg_rows(&wh).await,
        [("1970-01-01".into(), "a".into(), 1.0)]
    );

    // A second run replaces week 0 and adds week 7; readers see the old state meanwhile.
    wh.begin_run(start("r2")).await.unwrap();
    wh.write(
        "r2",
        Table::AggTradesWeekly,
        mode,
        agg_batch(0, "b", 250_000_000),
    )
    .await
    .unwrap();
    wh.write("r2", Table::AggTradesWeekly, mode, agg_batch(7, "c", 1))
        .await
        .unwrap();
    assert_eq!(agg_rows(&wh).await.len(), 1);
    wh.commit(commit("r2")).await.unwrap();
    assert_eq!(
        agg_rows(&wh).await,
        [
            ("1970-01-01".into(), "b".into(), 2.5),
            ("1970-01-08".into(), "c".into(), 0.00000001)
        ]
    );
}

#[tokio::test]
async fn abort_leaves_nothing_and_records_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let wh = SqliteWarehouse::open(&dir.path().join("w.db")).unwrap();
    wh.begin_run(start("r1")).await.unwrap();
    wh.write(
        "r1",
        Table::AggTradesWeekly,
        WriteMode::Replace,
        agg_batch(0, "a", 1),
    )
    .await
    .unwrap();
    // One run at a time per writer.
    assert!(wh.begin_run(start("r2")).await.is_err());
    wh.abort(RunFailure {
        run_id: "r1".into(),
        category: ErrorCategory::Input,
        message: "bad file".into(),
        stats: RunStats::default(),
        quality_json: String::new(),
    })
    .await
    .unwrap();
    assert!(agg_rows(&wh).await.is_empty());
    assert_eq!(
        partition_indexes(&wh).await.len(),
        3,
        "the abort restored the indexes"
    );
    let run = wh.get_run("r1").await.unwrap().unwrap();
    assert_eq!(
        (run.status.as_str(), run.error_category.map(|c| c.as_str())),
        ("failed", Some("input"))
    );
    assert_eq!(run.error_message, "bad file");
    // Writing to a run that is not open is refused.
    assert!(
        wh.write(
            "r1",
            Table::AggTradesWeekly,
            WriteMode::Replace,
            agg_batch(0, "a", 1)
        )
        .await
        .is_err()
    );
    // A schema that does not match the table is refused.
    wh.begin_run(start("r3")).await.unwrap();
    let e = wh
        .write(
            "r3",
            Table::Trades,
            WriteMode::Replace,
            agg_batch(0, "a", 1),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
}

/// A write is answered before its rows are in (the next batch is encoded
/// meanwhile): its failure must still fail the run and commit nothing.
#[tokio::test]
async fn a_write_that_fails_after_its_answer_fails_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let wh = SqliteWarehouse::open(&path).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON agg_trades_weekly WHEN NEW.user_id = 'bad'
             BEGIN SELECT RAISE(ABORT, 'user bad is refused'); END",
        )
        .unwrap();
    wh.begin_run(start("r1")).await.unwrap();
    let mut failures = Vec::new();
    for user in ["a", "bad"] {
        let written = wh
            .write(
                "r1",
                Table::AggTradesWeekly,
                WriteMode::Replace,
                agg_batch(0, user, 1),
            )
            .await;
        failures.extend(written.err());
    }
    let e = wh.commit(commit("r1")).await.unwrap_err();
    assert!(e.to_string().contains("user bad is refused"), "{e}");
    assert!(failures.is_empty() || failures[0].to_string().contains("refused"));
    assert!(agg_rows(&wh).await.is_empty());
    assert_eq!(
        wh.get_run("r1").await.unwrap().unwrap().status.as_str(),
        "failed"
    );
    // The writer is free for the next run.
    wh.begin_run(start("r2")).await.unwrap();
    wh.write(
        "r2",
        Table::AggTradesWeekly,
        WriteMode::Replace,
        agg_batch(0, "a", 1),
    )
    .await
    .unwrap();
    wh.commit(commit("r2")).await.unwrap();
    assert_eq!(agg_rows(&wh).await.len(), 1);
}

#[tokio::test]
async fn an_older_database_gains_the_exact_columns_and_its_loaded_days() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    {
        // The tables as a Quarry before daily loads created them.
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE trades (timestamp TEXT NOT NULL, user_id TEXT NOT NULL,
                 client_type TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
                 quantity REAL NOT NULL, price REAL NOT NULL, trade_date TEXT NOT NULL,
                 run_id TEXT NOT NULL);
             CREATE TABLE agg_trades_weekly (week_start_date TEXT NOT NULL,
                 client_type TEXT NOT NULL, user_id TEXT NOT NULL, symbol TEXT NOT NULL,
                 total_volume REAL NOT NULL, total_pnl REAL NOT NULL, trade_count INTEGER NOT NULL);
             INSERT INTO trades VALUES
                 ('2024-01-03 10:00:00', 'u', 'gold', 'X', 'buy', 1.5, 2.0, '2024-01-03', 'old'),
                 ('2024-01-07 10:00:00', 'u', 'gold', 'X', 'buy', 1.0, 2.0, '2024-01-07', 'old');
             INSERT INTO agg_trades_weekly VALUES
                 ('2024-01-01', 'gold', 'u', 'X', 2.5, -5.0, 2),
                 ('2024-01-08', 'gold', 'u', 'X', 1.0, 1.0, 1);",
        )
        .unwrap();
    }
    let wh = SqliteWarehouse::open(&db).unwrap();
    let days = wh
        .read(|c| {
            c.prepare("SELECT trade_date, week_start_date, raw_trades FROM loaded_days ORDER BY 1")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<(String, String, bool)>>>()
        })
        .await
        .unwrap();
    let row = |d: &str, w: &str, raw| (d.to_string(), w.to_string(), raw);
    assert_eq!(
        days,
        [
            row("2024-01-03", "2024-01-01", true),
            row("2024-01-07", "2024-01-01", true),
            // A week without raw trades: its Monday, loaded without them.
            row("2024-01-08", "2024-01-08", false),
        ]
    );
    let totals = wh.weekly_totals().await.unwrap();
    assert_eq!(totals[0].total_pnl, "-5");
    wh.close().await.unwrap();
    // Opened again, nothing is filled twice.
    let wh = SqliteWarehouse::open(&db).unwrap();
    let n = wh
        .read(|c| {
            c.query_row("SELECT count(*) FROM loaded_days", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await
        .unwrap();
    assert_eq!(n, 3);
    wh.close().await.unwrap();
}
