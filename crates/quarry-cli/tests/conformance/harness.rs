//! The contract every backend must keep, written once; each backend's file
//! runs it against its stand-in with [`conformance`].

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    AsArray, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow::datatypes::{Date32Type, Decimal128Type, Int64Type};
use quarry_core::dates::date_text;
use quarry_core::decimal::{PNL_SCALE, parse_scaled};
use quarry_core::schema::{PNL_TYPE, QUANTITY_TYPE, VOLUME_TYPE};
use quarry_core::{ErrorCategory, RunStatus, Table};
use quarry_testkit::rows_text;
use quarry_warehouse::{
    Metric, PartitionInfo, RunCommit, RunFailure, RunStart, RunStats, TopUsersQuery, Warehouse,
    WriteMode,
};
use serde_json::Value;

use crate::common::{self, Env, expected_agg, fixtures};
use crate::sneak::Sneak;

/// Every committed row of every table, as text (decimals exact), by table
/// and partition.
type Snapshot = BTreeMap<(Table, String), Vec<String>>;

pub async fn snapshot(wh: &dyn Warehouse) -> Snapshot {
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

/// Every committed row of `tables`, as text.
pub async fn rows_of(wh: &dyn Warehouse, tables: &[Table]) -> Vec<String> {
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

/// The opening of a test run.
pub fn start(run_id: &str) -> RunStart {
    RunStart {
        run_id: run_id.into(),
        source: "conformance".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    }
}

/// The commit of a test run that read no source file.
pub fn commit(run_id: &str) -> RunCommit {
    RunCommit {
        run_id: run_id.into(),
        ..Default::default()
    }
}

/// Opens a run, writes `batches` (replacing their partitions), commits;
/// returns the rows committed per table.
pub async fn load(
    wh: &dyn Warehouse,
    run_id: &str,
    batches: impl IntoIterator<Item = (Table, RecordBatch)>,
) -> BTreeMap<String, u64> {
    wh.begin_run(start(run_id)).await.unwrap();
    for (table, batch) in batches {
        wh.write(run_id, table, WriteMode::Replace, batch)
            .await
            .unwrap();
    }
    wh.commit(commit(run_id)).await.unwrap()
}

/// One agg row of week 2023-01-02 for `user`, as the transformer would send it.
pub fn agg_batch(user: &str) -> RecordBatch {
    RecordBatch::try_new(
        Table::AggTradesWeekly.schema(),
        vec![
            Arc::new(Date32Array::from(vec![19_360])),
            Arc::new(StringArray::from(vec!["gold"])),
            Arc::new(StringArray::from(vec![user])),
            Arc::new(StringArray::from(vec!["SYM"])),
            Arc::new(Decimal128Array::from(vec![150_000_000]).with_data_type(VOLUME_TYPE)),
            Arc::new(Decimal128Array::from(vec![-1]).with_data_type(PNL_TYPE)),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap()
}

/// One trade of 2024-01-05, as the transformer would send it.
pub fn trade_batch(user: &str) -> RecordBatch {
    RecordBatch::try_new(
        Table::Trades.schema(),
        vec![
            Arc::new(
                TimestampNanosecondArray::from(vec![1_704_448_800_123_456_789])
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![user])),
            Arc::new(StringArray::from(vec!["gold"])),
            Arc::new(StringArray::from(vec!["SYM"])),
            Arc::new(StringArray::from(vec!["buy"])),
            Arc::new(Decimal128Array::from(vec![150_000_001]).with_data_type(QUANTITY_TYPE)),
            Arc::new(Decimal128Array::from(vec![1_025_000_000]).with_data_type(QUANTITY_TYPE)),
            Arc::new(Date32Array::from(vec![19_727])),
        ],
    )
    .unwrap()
}

/// The contract, against the warehouse `env.config.warehouse` selects, in
/// six steps:
/// Step 1: the reference sample through the pipeline gives the expected tables
///    and top lists;
/// Step 2: a re-run is idempotent;
/// Step 3: an abort leaves nothing;
/// Step 4: a partition can be dropped and written back;
/// Step 5: PnL stays exact to the 16th decimal place;
/// Step 6: the commit refuses a run that holds other rows than were sent.
pub async fn conformance(env: &Env, sneak: Sneak) {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("trades_sample.expected.json")).unwrap(),
    )
    .unwrap();
    let src = env.copy_fixture();
    env.run(&src).await.unwrap();
    let wh: Arc<dyn Warehouse> = quarry_warehouse::open(&env.config.warehouse).unwrap();
    wh.check_connectivity().await.unwrap();
    let wh = wh.as_ref();

    let trade_dates = the_reference_sample_loads_exactly(wh, &expected).await;

    let before = snapshot(wh).await;
    env.run(&src).await.unwrap();
    assert_eq!(snapshot(wh).await, before, "a re-run changed the tables");

    an_abort_leaves_nothing(wh, &trade_dates[3], &before).await;
    a_partition_round_trips(wh, &trade_dates[3], trade_dates.len(), &before).await;
    pnl_is_exact_to_the_16th_place(env, wh).await;
    a_commit_refuses_rows_it_was_not_sent(wh, &sneak).await;
    wh.close().await.unwrap();
}

/// Step 1: `agg_trades_weekly` equals the expected CSV decimal for decimal, the
/// quarantine holds every rejected row with its reason, the top lists are
/// the expected ones. Returns the trade dates.
async fn the_reference_sample_loads_exactly(
    wh: &dyn Warehouse,
    expected: &Value,
) -> Vec<PartitionInfo> {
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
    the_quarantine_holds_every_reason(wh, expected).await;
    let trade_dates = wh.list_partitions(Table::Trades).await.unwrap();
    assert_eq!(
        trade_dates.len() as u64,
        expected["trade_dates"].as_u64().unwrap()
    );
    assert_eq!(
        trade_dates.iter().map(|p| p.rows).sum::<u64>(),
        expected["rows_valid"].as_u64().unwrap()
    );
    the_top_lists_are_exact(wh, expected).await;
    trade_dates
}

async fn the_quarantine_holds_every_reason(wh: &dyn Warehouse, expected: &Value) {
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
}

async fn the_top_lists_are_exact(wh: &dyn Warehouse, expected: &Value) {
    let exact = |v: &str| parse_scaled(v.as_bytes(), PNL_SCALE).unwrap();
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
            .map(|p| (p[0].as_str().unwrap().into(), exact(p[1].as_str().unwrap())))
            .collect();
        let got: Vec<(String, i128)> = top
            .iter()
            .map(|u| (u.user_id.clone(), exact(&u.value)))
            .collect();
        assert_eq!(got, want, "{key}");
    }
}

/// Step 3: An abort leaves nothing behind and is recorded: the run replaces an
/// existing day with one row of its own, adds a day and a user no committed
/// run has, and rewrites a week of the aggregate — had the abort committed
/// anything, the snapshot would show it.
async fn an_abort_leaves_nothing(wh: &dyn Warehouse, day: &PartitionInfo, before: &Snapshot) {
    let original = wh
        .read_partition(Table::Trades, &day.partition)
        .await
        .unwrap();
    wh.begin_run(start("aborted")).await.unwrap();
    for (t, b) in [
        (Table::Trades, original[0].slice(0, 1)),
        (Table::Trades, trade_batch("aborted-user")),
        (Table::AggTradesWeekly, agg_batch("aborted-user")),
    ] {
        wh.write("aborted", t, WriteMode::Replace, b).await.unwrap();
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
    assert_eq!(snapshot(wh).await, *before, "the abort left rows behind");
    let run = wh.get_run("aborted").await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.error_category),
        (RunStatus::Failed, Some(ErrorCategory::Input))
    );
    assert_eq!(run.error_message, "stopped on purpose");
}

/// Step 4: A partition dropped is gone from the listing and the reads; written
/// back through a run, the tables are as they were.
async fn a_partition_round_trips(
    wh: &dyn Warehouse,
    day: &PartitionInfo,
    days: usize,
    before: &Snapshot,
) {
    let (table, partition) = (Table::Trades, day.partition.as_str());
    let original = wh.read_partition(table, partition).await.unwrap();
    assert_eq!(wh.drop_partition(table, partition).await.unwrap(), day.rows);
    let after_drop = wh.list_partitions(table).await.unwrap();
    assert!(after_drop.iter().all(|p| p.partition != partition));
    assert_eq!(after_drop.len(), days - 1);
    assert!(
        wh.read_partition(table, partition)
            .await
            .unwrap()
            .is_empty()
    );
    let committed = load(wh, "restore", original.into_iter().map(|b| (table, b))).await;
    assert_eq!(committed["trades"], day.rows);
    assert_eq!(
        snapshot(wh).await,
        *before,
        "the round trip changed the tables"
    );
}

/// Step 5: PnL to the 16th decimal place (quantity and price of 8 each), kept
/// exact: read back as text and summed into the top list exactly. The
/// values have at most 15 significant digits, which SQLite's REAL holds.
async fn pnl_is_exact_to_the_16th_place(env: &Env, wh: &dyn Warehouse) {
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
}

/// Step 6: The commit reads back what the run holds and refuses a mismatch: a
/// row added behind the backend's back fails it (quality), the tables stay
/// as they were, the run is recorded as failed.
async fn a_commit_refuses_rows_it_was_not_sent(wh: &dyn Warehouse, sneak: &Sneak) {
    let before = snapshot(wh).await;
    sneak.before_begin().await;
    wh.begin_run(start("mismatch")).await.unwrap();
    wh.write(
        "mismatch",
        Table::Trades,
        WriteMode::Replace,
        trade_batch("sneak-user"),
    )
    .await
    .unwrap();
    sneak.before_commit("mismatch").await;
    let e = wh.commit(commit("mismatch")).await.unwrap_err();
    sneak.after().await;
    assert_eq!(e.category(), ErrorCategory::Quality, "{e}");
    assert!(
        e.to_string()
            .contains("reconciliation: trades was sent 1 rows but"),
        "{e}"
    );
    assert_eq!(
        snapshot(wh).await,
        before,
        "a refused commit changed the tables"
    );
    let run = wh.get_run("mismatch").await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.error_category),
        (RunStatus::Failed, Some(ErrorCategory::Quality))
    );
}

/// Asserts `e` is a backend error, transient or permanent as `transient` says.
pub fn assert_backend_error(e: &quarry_core::Error, transient: bool) {
    assert!(
        e.category() == ErrorCategory::Backend && e.is_transient() == transient,
        "expected a {} backend error: {e:?}",
        if transient { "transient" } else { "permanent" }
    );
}

/// What the readers of a warehouse see of its data: the rows of some tables
/// (exact text), every top list, the weekly totals of the report page and
/// the number of rejected rows.
#[derive(Debug, PartialEq)]
struct Seen {
    rows: Vec<String>,
    tops: Vec<(String, String)>,
    totals: Vec<(String, String, String, String, u64)>,
    rejected: u64,
}

async fn seen(env: &Env, tables: &[Table]) -> Seen {
    let wh: Arc<dyn Warehouse> = quarry_warehouse::open(&env.config.warehouse).unwrap();
    let wh = wh.as_ref();
    let mut rows = rows_of(wh, tables).await;
    rows.sort();
    let mut tops = vec![];
    for client_type in ["gold", "silver", "bronze"] {
        for metric in [Metric::Volume, Metric::Pnl] {
            let q = TopUsersQuery {
                client_type: client_type.into(),
                metric,
                limit: 1_000,
            };
            tops.extend(
                wh.top_users(&q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|u| (u.user_id, u.value)),
            );
        }
    }
    let totals = wh
        .weekly_totals()
        .await
        .unwrap()
        .into_iter()
        .map(|t| {
            let exact = |v: &str| parse_scaled(v.as_bytes(), PNL_SCALE).unwrap().to_string();
            (
                t.week_start_date,
                t.client_type,
                exact(&t.total_volume),
                exact(&t.total_pnl),
                t.trade_count,
            )
        })
        .collect();
    let rejected = wh
        .list_partitions(Table::TradesRejected)
        .await
        .unwrap()
        .iter()
        .map(|p| p.rows)
        .sum();
    wh.close().await.unwrap();
    Seen {
        rows,
        tops,
        totals,
        rejected,
    }
}

/// The sample cut into one CSV per UTC day (a row whose timestamp does not
/// parse goes with the row before it), by day.
fn sample_by_day() -> (csv::StringRecord, BTreeMap<i32, Vec<csv::StringRecord>>) {
    let mut reader = csv::Reader::from_path(fixtures().join("trades_sample.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    let at = header
        .iter()
        .position(|h| h.trim().eq_ignore_ascii_case("timestamp"))
        .unwrap();
    let mut days: BTreeMap<i32, Vec<csv::StringRecord>> = BTreeMap::new();
    let (mut last, mut orphans) = (None, vec![]);
    for record in reader.records() {
        let record = record.unwrap();
        let day = record.get(at).and_then(|t| {
            quarry_transform::timestamp::parse(t.trim().as_bytes())
                .map(quarry_transform::timestamp::trade_date)
        });
        match day.or(last) {
            Some(d) => {
                last = Some(d);
                days.entry(d).or_default().push(record);
            }
            None => orphans.push(record),
        }
    }
    days.first_entry().unwrap().get_mut().extend(orphans);
    (header, days)
}

fn write_csv(path: &std::path::Path, header: &csv::StringRecord, rows: &[csv::StringRecord]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(header).unwrap();
    for r in rows {
        w.write_record(r).unwrap();
    }
    w.flush().unwrap();
}

/// The order of the daily runs: every day once in a shuffled order, one day
/// delivered first with wrong rows (corrected by its own later delivery),
/// one day delivered again at the end.
fn daily_order(days: &[i32]) -> (Vec<i32>, i32, i32) {
    let mut order = days.to_vec();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let corrected = days[days.len() / 2];
    let again = days[days.len() / 3];
    order.push(again);
    (order, corrected, again)
}

/// Step 7, on warehouses of its own (`env_for(suffix)` makes a fresh one):
/// the sample delivered as one file per UTC day, one run per file in a
/// shuffled order — one day first with wrong rows then corrected, one day
/// twice — equals one run over the whole sample: trades and the weekly
/// aggregate decimal for decimal, every top list, the weekly totals; in ETL
/// and in ELT, and ETL equals ELT.
pub async fn daily_loads(env_for: impl Fn(&str) -> Env) {
    let (header, days) = sample_by_day();
    let day_list: Vec<i32> = days.keys().copied().collect();
    let (order, corrected, again) = daily_order(&day_list);
    let mut seen_by_mode = vec![];
    for mode in quarry_core::RunMode::ALL {
        let mut whole = env_for(&format!("whole_{mode}"));
        whole.config.transformer.mode = mode;
        let all: Vec<csv::StringRecord> = days.values().flatten().cloned().collect();
        let src = whole.data.join("trades.csv");
        write_csv(&src, &header, &all);
        whole.run(&src).await.unwrap();
        let want = seen(&whole, &[Table::Trades, Table::AggTradesWeekly]).await;

        let mut daily = env_for(&format!("daily_{mode}"));
        daily.config.transformer.mode = mode;
        let file = |day: i32| daily.data.join(format!("trades-{}.csv", date_text(day)));
        // The wrong first delivery: every quantity 1, a row missing.
        let mut wrong = days[&corrected].clone();
        wrong.pop();
        let at = header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case("quantity"))
            .unwrap();
        for r in &mut wrong {
            let fields: Vec<&str> = r
                .iter()
                .enumerate()
                .map(|(i, v)| if i == at { "1" } else { v })
                .collect();
            *r = csv::StringRecord::from(fields);
        }
        write_csv(&file(corrected), &header, &wrong);
        daily.run(&file(corrected)).await.unwrap();
        for &day in &order {
            write_csv(&file(day), &header, &days[&day]);
            daily
                .run(&file(day))
                .await
                .unwrap_or_else(|e| panic!("{mode} run of {}: {e}", date_text(day)));
        }
        let got = seen(&daily, &[Table::Trades, Table::AggTradesWeekly]).await;
        assert_eq!(want.rows.len(), got.rows.len(), "{mode}: rows");
        assert_eq!(
            want,
            got,
            "{mode}: daily runs (corrected {}, again {}) differ from one run",
            date_text(corrected),
            date_text(again)
        );
        seen_by_mode.push(want);
    }
    assert_eq!(seen_by_mode[0], seen_by_mode[1], "ETL and ELT differ");
}

/// Step 8, on warehouses of its own: `rows` generated trades over two years
/// cut into `runs` runs of consecutive days (so most runs end inside a week
/// the next one completes), loaded in a shuffled order, give the same
/// weekly aggregate, top lists and totals in ETL and in ELT as one ETL run
/// over the whole file.
pub async fn generated_rows_in_runs(env_for: impl Fn(&str) -> Env, rows: u64, runs: usize) {
    let mut csv = vec![];
    quarry_testkit::generate(
        &quarry_testkit::GenOptions {
            rows,
            users: 500,
            ..Default::default()
        },
        &mut csv,
    )
    .unwrap();
    let text = String::from_utf8(csv).unwrap();
    let (header, body) = text.split_once('\n').unwrap();
    // Days in order of first appearance do not matter: group by day, then
    // cut the sorted days into `runs` ranges.
    let mut by_day: BTreeMap<i32, String> = BTreeMap::new();
    let mut last = 0;
    for line in body.lines() {
        let ts = line.split(',').next().unwrap_or_default();
        if let Some(nanos) = quarry_transform::timestamp::parse(ts.as_bytes()) {
            last = quarry_transform::timestamp::trade_date(nanos);
        }
        let day = by_day.entry(last).or_default();
        day.push_str(line);
        day.push('\n');
    }
    let days: Vec<i32> = by_day.keys().copied().collect();
    let per_run = days.len().div_ceil(runs);
    let mut chunks: Vec<&[i32]> = days.chunks(per_run).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..chunks.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunks.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let tables = [Table::AggTradesWeekly];
    let whole = env_for("whole");
    let src = whole.write("trades.csv", &text);
    whole.run(&src).await.unwrap();
    let want = seen(&whole, &tables).await;
    for mode in quarry_core::RunMode::ALL {
        let mut env = env_for(&format!("runs_{mode}"));
        env.config.transformer.mode = mode;
        for (k, chunk) in chunks.iter().enumerate() {
            let mut part = format!("{header}\n");
            for d in *chunk {
                part.push_str(&by_day[d]);
            }
            let src = env.write(&format!("part-{k:02}.csv"), part);
            env.run(&src).await.unwrap();
        }
        let got = seen(&env, &tables).await;
        assert_eq!(want.rows.len(), got.rows.len(), "{mode}: weekly rows");
        assert_eq!(want, got, "{mode}: {runs} runs differ from one run");
    }
}
