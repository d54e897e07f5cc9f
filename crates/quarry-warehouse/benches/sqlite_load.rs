//! How fast raw trades can go into SQLite on this machine, and how close
//! Quarry's loader gets to that.
//!
//!   cargo bench -p quarry-warehouse --bench sqlite_load [-- ROWS]
//!
//! Measurements on the same trades (ROWS, default 2 000 000, dates in random
//! order over two years), each into a fresh database file in WAL mode with
//! Quarry's pragmas, timed from the first insert to a checkpointed database:
//! 1. the floor: one prepared INSERT of pre-built values, no index;
//! 2. the floor with the `trade_date` index maintained while inserting;
//! 3. the same, each chunk of a batch's size sorted by day first;
//! 4. the floor with the index built once after the last row (what Quarry
//!    does on a fresh load);
//! 5. Quarry: `SqliteWarehouse` (begin, write Arrow batches, commit, close),
//!    which also converts the exact decimals, formats timestamps and indexes.
//!
//! Then the weekly aggregate (ROWS / 2 groups, about the share of a
//! generated file, in week order as the transformer sends them): the floor
//! with the `week_start_date` index maintained or built at the end, and
//! Quarry's write of the same groups as Arrow batches of exact decimals.
//!
//! SQLite has one writer per database, so 1 bounds any load path that goes
//! through SQL on one core; the pipeline's end-to-end raw rate is lower still,
//! because parsing and validation share the machine's other cores.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use quarry_core::Table;
use quarry_core::schema::{PNL_TYPE, QUANTITY_TYPE, VOLUME_TYPE};
use quarry_warehouse::sqlite::SqliteWarehouse;
use quarry_warehouse::{RunCommit, RunStart, Warehouse, WriteMode};
use rusqlite::Connection;

const BATCH_ROWS: usize = 65_536;
const DAYS: u64 = 730;
const FIRST_DAY: i32 = 19_723; // 2024-01-01
const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// A deterministic trade: (day, nanos in day, user, side, quantity, price).
fn trade(i: usize) -> (i32, i64, String, &'static str, i128, i128) {
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let day = FIRST_DAY + (x % DAYS) as i32;
    let nanos = (x >> 20) as i64 % NANOS_PER_DAY / 1_000_000 * 1_000_000;
    let side = if x & 1 == 0 { "buy" } else { "sell" };
    let user = format!("{}", (x >> 32) % 10_000);
    let qty = 1_000_000 + (x >> 40) as i128 % 100_000_000_000;
    (day, nanos, user, side, qty, 15_735_000_000)
}

fn fresh(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// How the floor measurements lay out and index the rows.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Rows appended in input order, no index.
    Plain,
    /// Appended, the `trade_date` index maintained row by row.
    Indexed,
    /// Appended, the index built once after the last row.
    IndexAtEnd,
    /// As `Indexed`, each chunk of this many rows sorted by day first (what
    /// the loader does with each batch).
    IndexedSorted(usize),
}

fn floor(dir: &Path, rows: usize, layout: Layout) -> f64 {
    let path = fresh(dir, "floor.db");
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(
        "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 0; PRAGMA temp_store = FILE;
         PRAGMA threads = 2;
         CREATE TABLE trades (timestamp TEXT NOT NULL, user_id TEXT NOT NULL,
             client_type TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
             quantity REAL NOT NULL, price REAL NOT NULL, trade_date TEXT NOT NULL,
             run_id TEXT NOT NULL);",
    )
    .expect("schema");
    if matches!(layout, Layout::Indexed | Layout::IndexedSorted(_)) {
        conn.execute_batch("CREATE INDEX trades_by_trade_date ON trades (trade_date)")
            .expect("index");
    }
    // Values are built before the clock starts: only SQLite is timed.
    let mut values: Vec<(i32, String, String, &str, f64)> = (0..rows)
        .map(|i| {
            let (day, nanos, user, side, qty, _) = trade(i);
            let date = chrono::NaiveDate::from_num_days_from_ce_opt(day + 719_163)
                .expect("date")
                .to_string();
            let secs = nanos / 1_000_000_000;
            let ts = format!(
                "{date} {:02}:{:02}:{:02}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            );
            (day, ts, user, side, qty as f64 / 1e8)
        })
        .collect();
    if let Layout::IndexedSorted(n) = layout {
        for chunk in values.chunks_mut(n) {
            chunk.sort_by_key(|v| v.0);
        }
    }
    let started = Instant::now();
    conn.execute_batch("BEGIN").expect("begin");
    {
        let mut st = conn
            .prepare("INSERT INTO trades VALUES (?1, ?2, 'bronze', 'AAPL', ?3, ?4, 157.35, ?5, ?6)")
            .expect("prepare");
        for (_, ts, user, side, qty) in &values {
            st.raw_bind_parameter(1, ts.as_str()).expect("bind");
            st.raw_bind_parameter(2, user.as_str()).expect("bind");
            st.raw_bind_parameter(3, *side).expect("bind");
            st.raw_bind_parameter(4, *qty).expect("bind");
            st.raw_bind_parameter(5, &ts[..10]).expect("bind");
            st.raw_bind_parameter(6, "0f8fad5b-d9cb-469f-a165-70867728950e")
                .expect("bind");
            st.raw_execute().expect("insert");
        }
    }
    if layout == Layout::IndexAtEnd {
        conn.execute_batch("CREATE INDEX trades_by_trade_date ON trades (trade_date)")
            .expect("index");
    }
    conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("commit");
    started.elapsed().as_secs_f64()
}

fn batches(rows: usize) -> Vec<RecordBatch> {
    (0..rows)
        .step_by(BATCH_ROWS)
        .map(|start| {
            let t: Vec<_> = (start..rows.min(start + BATCH_ROWS)).map(trade).collect();
            let n = t.len();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(
                    TimestampNanosecondArray::from_iter_values(
                        t.iter().map(|r| r.0 as i64 * NANOS_PER_DAY + r.1),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(
                    t.iter().map(|r| r.2.as_str()),
                )),
                Arc::new(StringArray::from(vec!["bronze"; n])),
                Arc::new(StringArray::from(vec!["AAPL"; n])),
                Arc::new(StringArray::from_iter_values(t.iter().map(|r| r.3))),
                Arc::new(
                    Decimal128Array::from_iter_values(t.iter().map(|r| r.4))
                        .with_data_type(QUANTITY_TYPE),
                ),
                Arc::new(
                    Decimal128Array::from_iter_values(t.iter().map(|r| r.5))
                        .with_data_type(QUANTITY_TYPE),
                ),
                Arc::new(Date32Array::from_iter_values(t.iter().map(|r| r.0))),
            ];
            RecordBatch::try_new(Table::Trades.schema(), cols).expect("batch")
        })
        .collect()
}

/// A deterministic weekly group, the `i`th of `groups` in week order:
/// (week, client type, user, symbol, Σ quantity at 10^-8, PnL at 10^-16, trades).
fn group(i: usize, groups: usize) -> (i32, &'static str, String, &'static str, i128, i128, i64) {
    const SYMBOLS: [&str; 8] = [
        "AAPL", "MSFT", "TSLA", "NVDA", "AMZN", "META", "XOM", "COST",
    ];
    const CLIENTS: [&str; 3] = ["gold", "silver", "bronze"];
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let week = FIRST_DAY + 7 * (i * (DAYS as usize / 7) / groups) as i32;
    let volume = 1_000_000 + (x >> 24) as i128 % 100_000_000_000;
    // A sum of quantity × price: 4 significant places after the point.
    let pnl = ((x >> 8) as i128 % 20_000_000_000 - 10_000_000_000) * 1_000_000_000_000;
    let client = CLIENTS[(x >> 60) as usize % 3];
    let user = format!("{}", (x >> 32) % 10_000);
    (
        week,
        client,
        user,
        SYMBOLS[(x >> 56) as usize % 8],
        volume,
        pnl,
        1 + (x >> 58) as i64,
    )
}

fn week_text(week: i32) -> String {
    chrono::NaiveDate::from_num_days_from_ce_opt(week + 719_163)
        .expect("date")
        .to_string()
}

/// The aggregate's floor: Quarry's nine columns from pre-built values, the
/// `week_start_date` index maintained row by row or built after the last row.
fn agg_floor(dir: &Path, groups: usize, index_at_end: bool) -> f64 {
    let path = fresh(dir, "agg_floor.db");
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(
        "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 0; PRAGMA temp_store = FILE;
         PRAGMA threads = 2;
         CREATE TABLE agg_trades_weekly (week_start_date TEXT NOT NULL,
             client_type TEXT NOT NULL, user_id TEXT NOT NULL, symbol TEXT NOT NULL,
             total_volume REAL NOT NULL, total_pnl REAL NOT NULL, trade_count INTEGER NOT NULL,
             total_volume_exact TEXT, total_pnl_exact TEXT);",
    )
    .expect("schema");
    let index = "CREATE INDEX agg_by_week ON agg_trades_weekly (week_start_date)";
    if !index_at_end {
        conn.execute_batch(index).expect("index");
    }
    let values: Vec<_> = (0..groups)
        .map(|i| {
            let (week, client, user, symbol, volume, pnl, trades) = group(i, groups);
            let real = |v: i128, scale: i32| v as f64 / 10f64.powi(scale);
            (
                week_text(week),
                client,
                user,
                symbol,
                real(volume, 8),
                real(pnl, 16),
                trades,
            )
        })
        .collect();
    let started = Instant::now();
    conn.execute_batch("BEGIN").expect("begin");
    {
        let mut st = conn
            .prepare(
                "INSERT INTO agg_trades_weekly VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)",
            )
            .expect("prepare");
        for (week, client, user, symbol, volume, pnl, trades) in &values {
            st.raw_bind_parameter(1, week.as_str()).expect("bind");
            st.raw_bind_parameter(2, *client).expect("bind");
            st.raw_bind_parameter(3, user.as_str()).expect("bind");
            st.raw_bind_parameter(4, *symbol).expect("bind");
            st.raw_bind_parameter(5, *volume).expect("bind");
            st.raw_bind_parameter(6, *pnl).expect("bind");
            st.raw_bind_parameter(7, *trades).expect("bind");
            st.raw_execute().expect("insert");
        }
    }
    if index_at_end {
        conn.execute_batch(index).expect("index");
    }
    conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("commit");
    started.elapsed().as_secs_f64()
}

fn agg_batches(groups: usize) -> Vec<RecordBatch> {
    (0..groups)
        .step_by(BATCH_ROWS)
        .map(|start| {
            let g: Vec<_> = (start..groups.min(start + BATCH_ROWS))
                .map(|i| group(i, groups))
                .collect();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Date32Array::from_iter_values(g.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(g.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(
                    g.iter().map(|r| r.2.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(g.iter().map(|r| r.3))),
                Arc::new(
                    Decimal128Array::from_iter_values(g.iter().map(|r| r.4))
                        .with_data_type(VOLUME_TYPE),
                ),
                Arc::new(
                    Decimal128Array::from_iter_values(g.iter().map(|r| r.5))
                        .with_data_type(PNL_TYPE),
                ),
                Arc::new(Int64Array::from_iter_values(g.iter().map(|r| r.6))),
            ];
            RecordBatch::try_new(Table::AggTradesWeekly.schema(), cols).expect("batch")
        })
        .collect()
}

async fn quarry(dir: &Path, table: Table, input: Vec<RecordBatch>) -> f64 {
    let path = fresh(dir, "quarry.db");
    let wh = SqliteWarehouse::open(&path).expect("open");
    let run_id = "bench".to_string();
    let started = Instant::now();
    wh.begin_run(RunStart {
        run_id: run_id.clone(),
        source: "bench".into(),
        options_json: "{}".into(),
        owner_json: String::new(),
    })
    .await
    .expect("begin");
    for b in input {
        wh.write(&run_id, table, WriteMode::Replace, b)
            .await
            .expect("write");
    }
    wh.commit(RunCommit {
        run_id,
        ..Default::default()
    })
    .await
    .expect("commit");
    wh.close().await.expect("close");
    started.elapsed().as_secs_f64()
}

fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("{rows} trades into SQLite (WAL, 16 KiB pages), one writer, checkpointed:");
    let report = |what: &str, secs: f64| {
        println!(
            "  {what:<52} {secs:>7.2} s  {:>6.2}M rows/s",
            rows as f64 / secs / 1e6
        );
    };
    for (what, layout) in [
        ("floor: prepared INSERT, pre-built values", Layout::Plain),
        ("floor + trade_date index", Layout::Indexed),
        (
            "floor + index, 64K-row chunks sorted by day",
            Layout::IndexedSorted(BATCH_ROWS),
        ),
        ("floor, index built after the last row", Layout::IndexAtEnd),
    ] {
        report(what, floor(dir.path(), rows, layout));
    }
    report(
        "Quarry SqliteWarehouse (Arrow batches, exact -> REAL)",
        rt.block_on(quarry(dir.path(), Table::Trades, batches(rows))),
    );
    let groups = rows / 2;
    println!("{groups} weekly groups into agg_trades_weekly, in week order:");
    let report = |what: &str, secs: f64| {
        println!(
            "  {what:<52} {secs:>7.2} s  {:>6.2}M rows/s",
            groups as f64 / secs / 1e6
        );
    };
    report(
        "floor + week_start_date index",
        agg_floor(dir.path(), groups, false),
    );
    report(
        "floor, index built after the last row",
        agg_floor(dir.path(), groups, true),
    );
    report(
        "Quarry SqliteWarehouse (Arrow batches, exact -> REAL)",
        rt.block_on(quarry(
            dir.path(),
            Table::AggTradesWeekly,
            agg_batches(groups),
        )),
    );
}
