//! The tables' rows as RowBinary structures (the `clickhouse` crate's
//! `Row`): batches into rows to insert, rows read back into batches, and
//! `pipeline_runs` rows to and from run records.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Int64Type, TimestampNanosecondType, UInt64Type,
};
use clickhouse::Row;
use quarry_core::dates::{date_text, week_start};
use quarry_core::{Error, ErrorCategory, Result, Table};
use serde::{Deserialize, Serialize};

use crate::RunRecord;
use crate::arrow_rows::{Agg, PartitionBuilder, Rejected, Trade};
use crate::record::parse_status;

const NANOS: i64 = 1_000_000_000;

#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct TradeRow {
    pub timestamp: u32,
    pub timestamp_nanos: u32,
    pub user_id: String,
    pub client_type: String,
    pub symbol: String,
    pub side: String,
    pub quantity: i64,
    pub price: i64,
    pub trade_date: u16,
    pub run_id: String,
}

/// A trade as read back (no run id).
#[derive(Debug, Row, Deserialize)]
pub(super) struct TradeOut {
    timestamp: u32,
    timestamp_nanos: u32,
    user_id: String,
    client_type: String,
    symbol: String,
    side: String,
    quantity: i64,
    price: i64,
    trade_date: u16,
}

#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct RejectedRow {
    timestamp: Option<String>,
    user_id: Option<String>,
    client_type: Option<String>,
    symbol: Option<String>,
    side: Option<String>,
    quantity: Option<String>,
    price: Option<String>,
    reason: String,
    source_file: String,
    source_row: u64,
    run_id: String,
}

#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct AggRow {
    week_start_date: u16,
    client_type: String,
    user_id: String,
    symbol: String,
    total_volume: i128,
    total_pnl: i128,
    trade_count: i64,
}

/// A `loaded_days` row: a ReplacingMergeTree keyed by day, the highest
/// version wins. `raw_trades` is 0/1 (servers before 21.12 have no Bool).
#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct LoadedDayRow {
    pub trade_date: u16,
    pub week_start_date: u16,
    pub raw_trades: u8,
    pub run_id: String,
    pub version: u64,
}

impl LoadedDayRow {
    pub fn new(day: i32, raw_trades: bool, run_id: &str, version: u64) -> Result<Self> {
        Ok(Self {
            trade_date: day_u16(day, "trade_date")?,
            week_start_date: day_u16(week_start(day), "week_start_date")?,
            raw_trades: u8::from(raw_trades),
            run_id: run_id.to_string(),
            version,
        })
    }
}

/// A batch of one table as rows to insert.
pub(super) enum Rows {
    Trades(Vec<TradeRow>),
    Rejected(Vec<RejectedRow>),
    Agg(Vec<AggRow>),
}

pub(super) fn day_u16(d: i32, what: &str) -> Result<u16> {
    u16::try_from(d).map_err(|_| {
        Error::input(format!(
            "{what} {} is outside ClickHouse's Date range (1970-2149)",
            date_text(d)
        ))
    })
}

/// `batch` of `table` (in the table's schema) as rows of the run `run_id`.
pub(super) fn encode(table: Table, batch: &RecordBatch, run_id: &str) -> Result<Rows> {
    let n = batch.num_rows();
    let s = |i: usize| batch.column(i).as_string::<i32>();
    Ok(match table {
        Table::Trades => {
            let ts = batch.column(0).as_primitive::<TimestampNanosecondType>();
            let qty = batch.column(5).as_primitive::<Decimal128Type>();
            let price = batch.column(6).as_primitive::<Decimal128Type>();
            let day = batch.column(7).as_primitive::<Date32Type>();
            let mut rows = Vec::with_capacity(n);
            for i in 0..n {
                let t = ts.value(i);
                rows.push(TradeRow {
                    timestamp: u32::try_from(t.div_euclid(NANOS)).map_err(|_| {
                        Error::input("timestamp outside ClickHouse's DateTime range (1970-2106)")
                    })?,
                    timestamp_nanos: t.rem_euclid(NANOS) as u32,
                    user_id: s(1).value(i).to_string(),
                    client_type: s(2).value(i).to_string(),
                    symbol: s(3).value(i).to_string(),
                    side: s(4).value(i).to_string(),
                    quantity: qty.value(i) as i64,
                    price: price.value(i) as i64,
                    trade_date: day_u16(day.value(i), "trade_date")?,
                    run_id: run_id.to_string(),
                });
            }
            Rows::Trades(rows)
        }
        Table::TradesRejected => {
            let opt = |i: usize, r: usize| (!s(i).is_null(r)).then(|| s(i).value(r).to_string());
            let row_no = batch.column(9).as_primitive::<UInt64Type>();
            Rows::Rejected(
                (0..n)
                    .map(|r| RejectedRow {
                        timestamp: opt(0, r),
                        user_id: opt(1, r),
                        client_type: opt(2, r),
                        symbol: opt(3, r),
                        side: opt(4, r),
                        quantity: opt(5, r),
                        price: opt(6, r),
                        reason: s(7).value(r).to_string(),
                        source_file: s(8).value(r).to_string(),
                        source_row: row_no.value(r),
                        run_id: run_id.to_string(),
                    })
                    .collect(),
            )
        }
        Table::AggTradesWeekly => {
            let week = batch.column(0).as_primitive::<Date32Type>();
            let vol = batch.column(4).as_primitive::<Decimal128Type>();
            let pnl = batch.column(5).as_primitive::<Decimal128Type>();
            let count = batch.column(6).as_primitive::<Int64Type>();
            let mut rows = Vec::with_capacity(n);
            for i in 0..n {
                rows.push(AggRow {
                    week_start_date: day_u16(week.value(i), "week_start_date")?,
                    client_type: s(1).value(i).to_string(),
                    user_id: s(2).value(i).to_string(),
                    symbol: s(3).value(i).to_string(),
                    total_volume: vol.value(i),
                    total_pnl: pnl.value(i),
                    trade_count: count.value(i),
                });
            }
            Rows::Agg(rows)
        }
    })
}

pub(super) fn push_trade(b: &mut PartitionBuilder, r: &TradeOut) {
    b.trade(Trade {
        timestamp: i64::from(r.timestamp) * NANOS + i64::from(r.timestamp_nanos),
        user_id: &r.user_id,
        client_type: &r.client_type,
        symbol: &r.symbol,
        side: &r.side,
        quantity: i128::from(r.quantity),
        price: i128::from(r.price),
        trade_date: i32::from(r.trade_date),
    });
}

pub(super) fn push_rejected(b: &mut PartitionBuilder, r: &RejectedRow) {
    b.rejected(Rejected {
        fields: [
            r.timestamp.as_deref(),
            r.user_id.as_deref(),
            r.client_type.as_deref(),
            r.symbol.as_deref(),
            r.side.as_deref(),
            r.quantity.as_deref(),
            r.price.as_deref(),
        ],
        reason: &r.reason,
        source_file: &r.source_file,
        source_row: r.source_row,
    });
}

pub(super) fn push_agg(b: &mut PartitionBuilder, r: &AggRow) {
    b.agg(Agg {
        week_start_date: i32::from(r.week_start_date),
        client_type: &r.client_type,
        user_id: &r.user_id,
        symbol: &r.symbol,
        total_volume: r.total_volume,
        total_pnl: r.total_pnl,
        trade_count: r.trade_count,
    });
}

/// A `pipeline_runs` row: a ReplacingMergeTree keyed by run id, the highest
/// version wins.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(super) struct RunRow {
    run_id: String,
    version: u64,
    source: String,
    status: String,
    started_at: String,
    finished_at: String,
    rows_in: u64,
    rows_valid: u64,
    rows_rejected: u64,
    rows_duplicate: u64,
    agg_rows: u64,
    plan_ms: u64,
    extract_ms: u64,
    transform_ms: u64,
    load_ms: u64,
    commit_ms: u64,
    total_ms: u64,
    rows_committed: String,
    error_category: String,
    error_message: String,
    quality: String,
    options: String,
    owner: String,
}

impl RunRow {
    pub fn new(r: &RunRecord, version: u64) -> Self {
        let s = &r.stats;
        Self {
            run_id: r.run_id.clone(),
            version,
            source: r.source.clone(),
            status: r.status.as_str().into(),
            started_at: r.started_at.clone(),
            finished_at: r.finished_at.clone(),
            rows_in: s.rows_in,
            rows_valid: s.rows_valid,
            rows_rejected: s.rows_rejected,
            rows_duplicate: s.rows_duplicate,
            agg_rows: s.agg_rows,
            plan_ms: s.plan_ms,
            extract_ms: s.extract_ms,
            transform_ms: s.transform_ms,
            load_ms: s.load_ms,
            commit_ms: s.commit_ms,
            total_ms: s.total_ms,
            rows_committed: r.rows_committed_json(),
            error_category: r
                .error_category
                .map(|c| c.as_str().to_string())
                .unwrap_or_default(),
            error_message: r.error_message.clone(),
            quality: r.quality_json.clone(),
            options: r.options_json.clone(),
            owner: r.owner_json.clone(),
        }
    }

    pub fn record(self) -> Result<RunRecord> {
        Ok(RunRecord {
            stats: crate::RunStats::from_counters([
                self.rows_in,
                self.rows_valid,
                self.rows_rejected,
                self.rows_duplicate,
                self.agg_rows,
                self.plan_ms,
                self.extract_ms,
                self.transform_ms,
                self.load_ms,
                self.commit_ms,
                self.total_ms,
            ]),
            rows_committed: serde_json::from_str(&self.rows_committed).unwrap_or_default(),
            status: parse_status(&self.status)?,
            run_id: self.run_id,
            source: self.source,
            started_at: self.started_at,
            finished_at: self.finished_at,
            error_category: ErrorCategory::parse(&self.error_category),
            error_message: self.error_message,
            quality_json: self.quality,
            options_json: self.options,
            owner_json: self.owner,
        })
    }
}
