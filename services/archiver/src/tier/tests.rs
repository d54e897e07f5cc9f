//! Moves and restores against a real SQLite warehouse and a local store.

use arrow::array::{
    Date32Array, Decimal128Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use quarry_core::schema::QUANTITY_TYPE;
use quarry_warehouse::sqlite::SqliteWarehouse;
use quarry_warehouse::{RunCommit, RunStart, WriteMode};

use super::*;

const DAY0: i32 = 19_723; // 2024-01-01

/// Trades of `days` days from 2024-01-01, `per_day` rows each.
fn trades(days: i32, per_day: i32) -> Vec<RecordBatch> {
    (0..days)
        .map(|d| {
            let n = per_day as usize;
            let day = DAY0 + d;
            let ns = |i: i32| (day as i64 * 86_400 + i as i64 * 60) * 1_000_000_000;
            let dec = |f: fn(i32) -> i128| {
                Arc::new(
                    Decimal128Array::from((0..per_day).map(f).collect::<Vec<_>>())
                        .with_data_type(QUANTITY_TYPE),
                )
            };
            RecordBatch::try_new(
                Table::Trades.schema(),
                vec![
                    Arc::new(
                        TimestampNanosecondArray::from((0..per_day).map(ns).collect::<Vec<_>>())
                            .with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from(
                        (0..per_day)
                            .map(|i| format!("u{}", i % 7))
                            .collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(vec!["bronze"; n])),
                    Arc::new(StringArray::from(vec!["AAPL"; n])),
                    Arc::new(StringArray::from(
                        (0..per_day)
                            .map(|i| if i % 2 == 0 { "buy" } else { "sell" })
                            .collect::<Vec<_>>(),
                    )),
                    dec(|i| (i as i128 + 1) * 100_000_000),
                    dec(|i| 12_345_678_901 + i as i128),
                    Arc::new(Date32Array::from(vec![day; n])),
                ],
            )
            .unwrap()
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    cold: std::path::PathBuf,
    original: Vec<RecordBatch>,
}

impl Fixture {
    /// Six days of trades committed into a fresh SQLite warehouse.
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let cold = dir.path().join("cold");
        let original = trades(6, 50);
        let wh = SqliteWarehouse::open(&db).unwrap();
        wh.check_connectivity().await.unwrap();
        wh.begin_run(RunStart {
            run_id: "load".into(),
            source: "test".into(),
            options_json: "{}".into(),
            owner_json: quarry_warehouse::owner::RunOwner::this_process("archiver").to_json(),
        })
        .await
        .unwrap();
        for b in &original {
            wh.write("load", Table::Trades, WriteMode::Replace, b.clone())
                .await
                .unwrap();
        }
        wh.commit(RunCommit {
            run_id: "load".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        wh.close().await.unwrap();
        Self {
            _dir: dir,
            db,
            cold,
            original,
        }
    }

    /// An archiver over the fixture's warehouse and cold directory;
    /// hot_days = 2 and small files, so a partition spans several.
    fn tier(&self) -> Tier {
        let wh = Arc::new(SqliteWarehouse::open(&self.db).unwrap());
        let cold = quarry_storage::open(self.cold.to_str().unwrap(), &Default::default()).unwrap();
        let config = ArchiverConfig {
            hot_days: 2,
            rows_per_file: 20,
            row_group_rows: 8,
            ..Default::default()
        };
        Tier::new(wh, cold, config)
    }
}

/// 2024-01-06: with hot_days = 2, the days before 01-04 (three) are due.
fn as_of() -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(2024, 1, 6)
}

/// Rows as sorted text, so that expected values do not come from the
/// archiver's own checksum.
fn rows_text(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = quarry_testkit::rows_text(batches);
    rows.sort();
    rows
}

/// Every row, hot and cold (as the manifests list them), as text.
async fn everything(t: &Tier) -> Vec<String> {
    let mut all = vec![];
    for p in t.warehouse.list_partitions(Table::Trades).await.unwrap() {
        all.extend(
            t.warehouse
                .read_partition(Table::Trades, &p.partition)
                .await
                .unwrap(),
        );
    }
    for p in t.cold_partitions(Table::Trades).await.unwrap().keys() {
        all.extend(t.read_cold(Table::Trades, p).await.unwrap());
    }
    rows_text(&all)
}

/// (partition, outcome) of each move.
fn outcomes(moves: &[PartitionMove]) -> Vec<(String, String)> {
    moves
        .iter()
        .map(|m| (m.partition.clone(), m.outcome.clone()))
        .collect()
}

/// The three due days with one outcome each.
fn due_days(outcome: &str) -> Vec<(String, String)> {
    ["2024-01-01", "2024-01-02", "2024-01-03"]
        .iter()
        .map(|d| (d.to_string(), outcome.to_string()))
        .collect()
}

async fn hot_days(t: &Tier) -> Vec<String> {
    let parts = t.warehouse.list_partitions(Table::Trades).await.unwrap();
    parts.into_iter().map(|p| p.partition).collect()
}

/// Parquet files in a partition directory that no manifest lists.
async fn orphans(t: &Tier, partition: &str) -> Vec<String> {
    let dir = t.dir(Table::Trades, partition);
    let listed: Vec<String> = t
        .manifest(Table::Trades, partition)
        .await
        .unwrap()
        .map(|m| m.files.into_iter().map(|f| f.name).collect())
        .unwrap_or_default();
    t.names(&dir)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".parquet") && !listed.contains(n))
        .collect()
}

#[tokio::test]
async fn old_partitions_move_and_come_back() {
    let f = Fixture::new().await;
    let t = f.tier();
    let want = rows_text(&f.original);

    let (cutoff, dry) = t.archive("", as_of(), true).await.unwrap();
    assert_eq!(cutoff, "2024-01-04");
    assert_eq!(dry.len(), 3);
    assert!(
        dry.iter()
            .all(|m| m.outcome == "would_archive" && m.rows == 50)
    );
    assert_eq!(hot_days(&t).await.len(), 6, "a dry run moves nothing");

    let (_, moves) = t.archive("trades", as_of(), false).await.unwrap();
    let outcomes: Vec<_> = moves.iter().map(|m| m.outcome.as_str()).collect();
    assert_eq!(outcomes, ["archived"; 3]);
    assert!(
        moves.iter().all(|m| m.files == 3 && m.bytes > 0),
        "{moves:?}"
    );
    assert_eq!(
        hot_days(&t).await,
        ["2024-01-04", "2024-01-05", "2024-01-06"]
    );
    assert!(
        everything(&t).await == want,
        "hot + cold = the original rows"
    );

    // Nothing is due any more; a second run changes nothing.
    let (_, again) = t.archive("", as_of(), false).await.unwrap();
    assert!(again.is_empty(), "{again:?}");

    let listed = t.list("").await.unwrap();
    assert_eq!(listed.len(), 6);
    assert_eq!(listed.iter().filter(|p| p.cold_rows == Some(50)).count(), 3);

    // Restore all three: the warehouse is as before, and held hot.
    let restored = t
        .restore(
            "trades",
            NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            NaiveDate::from_ymd_opt(2024, 1, 3).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(restored.len(), 3);
    let mut hot = vec![];
    for p in hot_days(&t).await {
        hot.extend(t.warehouse.read_partition(Table::Trades, &p).await.unwrap());
    }
    assert_eq!(rows_text(&hot), want);
    let (_, held) = t.archive("", as_of(), true).await.unwrap();
    assert!(held.is_empty(), "restored partitions are held: {held:?}");

    let events = t.events(10).await.unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(events[0].action, "restored");
}

#[tokio::test]
async fn a_failure_at_any_step_loses_nothing_and_the_next_run_finishes() {
    for step in [
        Step::ExportMidway,
        Step::Export,
        Step::Verify,
        Step::Manifest,
        Step::Drop,
        Step::AfterDrop,
    ] {
        let f = Fixture::new().await;
        let t = f.tier();
        let want = rows_text(&f.original);
        assert_eq!(want.len(), 300);
        t.inject(Some(step));
        let (_, moves) = t.archive("", as_of(), false).await.unwrap();
        assert_eq!(outcomes(&moves), due_days("failed"), "{step:?}");
        assert!(
            moves.iter().all(|m| m.detail.contains("injected failure")),
            "{step:?}: {moves:?}"
        );
        // Every row is hot or cold (or both), never neither; cold holds
        // only published copies.
        let dropped = step == Step::AfterDrop;
        assert_eq!(
            hot_days(&t).await.len(),
            if dropped { 3 } else { 6 },
            "{step:?}"
        );
        let cold = t.cold_partitions(Table::Trades).await.unwrap();
        let published = matches!(step, Step::Drop | Step::AfterDrop);
        assert_eq!(cold.len(), if published { 3 } else { 0 }, "{step:?}");
        // Rows of a published but not yet dropped partition are in
        // both tiers: none is missing.
        let mut seen = everything(&t).await;
        seen.dedup();
        assert!(seen == want, "{step:?}: rows lost by the failure");

        // The next run finishes the job: the three days end up cold,
        // exactly once, with no file left that no manifest lists.
        t.inject(None);
        let (_, moves) = t.archive("", as_of(), false).await.unwrap();
        let expected = match step {
            Step::Drop => due_days("finished"),
            // Dropped already: nothing is due any more.
            Step::AfterDrop => vec![],
            _ => due_days("archived"),
        };
        assert_eq!(outcomes(&moves), expected, "{step:?}");
        assert_eq!(
            hot_days(&t).await,
            ["2024-01-04", "2024-01-05", "2024-01-06"],
            "{step:?}"
        );
        assert_eq!(
            t.cold_partitions(Table::Trades).await.unwrap().len(),
            3,
            "{step:?}"
        );
        assert!(
            everything(&t).await == want,
            "{step:?}: rows lost or doubled"
        );
        for p in ["2024-01-01", "2024-01-02", "2024-01-03"] {
            assert!(orphans(&t, p).await.is_empty(), "{step:?}: orphans in {p}");
        }
    }
}

/// An archiver killed while it held a lease never releases it: the
/// partition is busy for others until the lease expires, then the next
/// archiver takes it over and finishes the move.
#[tokio::test]
async fn a_lease_left_by_a_killed_archiver_expires() {
    let f = Fixture::new().await;
    let mut killed = f.tier();
    killed.config.lease_secs = 1;
    assert!(killed.lease(Table::Trades, "2024-01-01").await.unwrap());
    drop(killed);
    let t = f.tier();
    let (_, moves) = t.archive("", as_of(), false).await.unwrap();
    assert_eq!(
        outcomes(&moves),
        [
            ("2024-01-01".to_string(), "busy".to_string()),
            ("2024-01-02".to_string(), "archived".to_string()),
            ("2024-01-03".to_string(), "archived".to_string()),
        ]
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (_, moves) = t.archive("", as_of(), false).await.unwrap();
    assert_eq!(
        outcomes(&moves),
        [("2024-01-01".to_string(), "archived".to_string())]
    );
    assert!(everything(&t).await == rows_text(&f.original));
}

#[tokio::test]
async fn a_corrupted_cold_file_is_caught_and_the_partition_stays_hot() {
    let f = Fixture::new().await;
    let t = f.tier();
    t.inject(Some(Step::Corrupt));
    let (_, moves) = t.archive("", as_of(), false).await.unwrap();
    assert!(
        moves
            .iter()
            .all(|m| m.outcome == "failed" && m.detail.contains("checksum")),
        "{moves:?}"
    );
    assert_eq!(hot_days(&t).await.len(), 6);
    assert!(t.cold_partitions(Table::Trades).await.unwrap().is_empty());
    assert!(
        orphans(&t, "2024-01-01").await.is_empty(),
        "bad files deleted"
    );
    let events = t.events(10).await.unwrap();
    assert!(events.iter().any(|e| e.action == "verify_failed"));
}

#[tokio::test]
async fn a_second_archiver_backs_off_a_leased_partition() {
    let f = Fixture::new().await;
    let (a, b) = (f.tier(), f.tier());
    assert!(a.lease(Table::Trades, "2024-01-01").await.unwrap());
    assert!(!b.lease(Table::Trades, "2024-01-01").await.unwrap());
    let (_, moves) = b.archive("", as_of(), false).await.unwrap();
    let outcomes: Vec<_> = moves.iter().map(|m| m.outcome.as_str()).collect();
    assert_eq!(outcomes, ["busy", "archived", "archived"]);
    a.release(Table::Trades, "2024-01-01").await;
    let (_, moves) = b.archive("", as_of(), false).await.unwrap();
    assert_eq!(moves.len(), 1);
    assert_eq!(moves[0].outcome, "archived");
}
