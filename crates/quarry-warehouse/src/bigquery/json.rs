//! Batches as newline-delimited JSON, the input of BigQuery's load jobs:
//! decimals as exact text, timestamps to the microsecond (the nanoseconds
//! beyond go in their own column), dates as `YYYY-MM-DD`.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Int64Type, TimestampNanosecondType, UInt64Type,
};
use quarry_core::dates::date_text;
use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use quarry_core::{Error, Result, Table};
use serde::Serialize;

#[derive(Serialize)]
struct TradeJson<'a> {
    timestamp: String,
    timestamp_extra_nanos: i64,
    user_id: &'a str,
    client_type: &'a str,
    symbol: &'a str,
    side: &'a str,
    quantity: String,
    price: String,
    trade_date: String,
    run_id: &'a str,
}

#[derive(Serialize)]
struct RejectedJson<'a> {
    timestamp: Option<&'a str>,
    user_id: Option<&'a str>,
    client_type: Option<&'a str>,
    symbol: Option<&'a str>,
    side: Option<&'a str>,
    quantity: Option<&'a str>,
    price: Option<&'a str>,
    reason: &'a str,
    source_file: &'a str,
    source_row: u64,
    run_id: &'a str,
}

#[derive(Serialize)]
struct AggJson<'a> {
    week_start_date: String,
    client_type: &'a str,
    user_id: &'a str,
    symbol: &'a str,
    total_volume: String,
    total_pnl: String,
    trade_count: i64,
}

fn push_json(out: &mut Vec<u8>, row: &impl Serialize) {
    serde_json::to_writer(&mut *out, row).expect("rows serialise");
    out.push(b'\n');
}

/// A batch as newline-delimited JSON: the load job's input.
pub(super) fn batch_json(table: Table, batch: &RecordBatch, run_id: &str) -> Result<Vec<u8>> {
    let n = batch.num_rows();
    let mut out = Vec::with_capacity(n * 160);
    let s = |i: usize| batch.column(i).as_string::<i32>();
    match table {
        Table::Trades => {
            let ts = batch.column(0).as_primitive::<TimestampNanosecondType>();
            let qty = batch.column(5).as_primitive::<Decimal128Type>();
            let price = batch.column(6).as_primitive::<Decimal128Type>();
            let day = batch.column(7).as_primitive::<Date32Type>();
            for i in 0..n {
                let t = ts.value(i);
                let micros = t.div_euclid(1000);
                let at = chrono::DateTime::from_timestamp_micros(micros)
                    .ok_or_else(|| Error::input(format!("timestamp {t} ns is out of range")))?;
                push_json(
                    &mut out,
                    &TradeJson {
                        timestamp: at.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string(),
                        timestamp_extra_nanos: t.rem_euclid(1000),
                        user_id: s(1).value(i),
                        client_type: s(2).value(i),
                        symbol: s(3).value(i),
                        side: s(4).value(i),
                        quantity: decimal::format_scaled(qty.value(i), SCALE),
                        price: decimal::format_scaled(price.value(i), SCALE),
                        trade_date: date_text(day.value(i)),
                        run_id,
                    },
                );
            }
        }
        Table::TradesRejected => {
            let opt = |i: usize, r: usize| (!s(i).is_null(r)).then(|| s(i).value(r));
            let row_no = batch.column(9).as_primitive::<UInt64Type>();
            for r in 0..n {
                push_json(
                    &mut out,
                    &RejectedJson {
                        timestamp: opt(0, r),
                        user_id: opt(1, r),
                        client_type: opt(2, r),
                        symbol: opt(3, r),
                        side: opt(4, r),
                        quantity: opt(5, r),
                        price: opt(6, r),
                        reason: s(7).value(r),
                        source_file: s(8).value(r),
                        source_row: row_no.value(r),
                        run_id,
                    },
                );
            }
        }
        Table::AggTradesWeekly => {
            let week = batch.column(0).as_primitive::<Date32Type>();
            let vol = batch.column(4).as_primitive::<Decimal128Type>();
            let pnl = batch.column(5).as_primitive::<Decimal128Type>();
            let count = batch.column(6).as_primitive::<Int64Type>();
            for i in 0..n {
                push_json(
                    &mut out,
                    &AggJson {
                        week_start_date: date_text(week.value(i)),
                        client_type: s(1).value(i),
                        user_id: s(2).value(i),
                        symbol: s(3).value(i),
                        total_volume: decimal::format_scaled(vol.value(i), SCALE),
                        total_pnl: decimal::format_scaled(pnl.value(i), PNL_SCALE),
                        trade_count: count.value(i),
                    },
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn batches_become_exact_json_lines() {
        let batch = RecordBatch::try_new(
            Table::Trades.schema(),
            vec![
                Arc::new(
                    arrow::array::TimestampNanosecondArray::from(vec![1_704_103_200_123_456_789])
                        .with_timezone("UTC"),
                ),
                Arc::new(arrow::array::StringArray::from(vec!["u\"1"])),
                Arc::new(arrow::array::StringArray::from(vec!["gold"])),
                Arc::new(arrow::array::StringArray::from(vec!["SYM"])),
                Arc::new(arrow::array::StringArray::from(vec!["buy"])),
                Arc::new(
                    arrow::array::Decimal128Array::from(vec![150_000_001])
                        .with_data_type(quarry_core::schema::QUANTITY_TYPE),
                ),
                Arc::new(
                    arrow::array::Decimal128Array::from(vec![-1])
                        .with_data_type(quarry_core::schema::QUANTITY_TYPE),
                ),
                Arc::new(arrow::array::Date32Array::from(vec![19_723])),
            ],
        )
        .unwrap();
        let json = batch_json(Table::Trades, &batch, "r").unwrap();
        let row: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(row["timestamp"], "2024-01-01 10:00:00.123456 UTC");
        assert_eq!(row["timestamp_extra_nanos"], 789);
        assert_eq!(row["user_id"], "u\"1");
        assert_eq!(row["quantity"], "1.50000001");
        assert_eq!(row["price"], "-0.00000001");
        assert_eq!(row["trade_date"], "2024-01-01");
    }
}
