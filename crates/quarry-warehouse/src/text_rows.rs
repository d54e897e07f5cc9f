//! A partition read back as text, as one Arrow batch: the BigQuery and
//! Snowflake backends select every value as text (exact decimals, dates as
//! `YYYY-MM-DD`) and convert it here by value into the table's schema.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use quarry_core::dates::parse_date;
use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use quarry_core::schema::{PNL_TYPE, QUANTITY_TYPE, VOLUME_TYPE};
use quarry_core::{Error, Result, Table};

/// Rows of a result, every value as text (NULL: None).
pub type Rows = Vec<Vec<Option<String>>>;

/// How a backend's rows hold the trades' timestamp: in the first `cells`
/// cells, read into nanoseconds since the epoch by `parse`.
pub struct Timestamp<'a> {
    pub cells: usize,
    pub parse: &'a dyn Fn(&[Option<String>]) -> Option<i64>,
}

/// `rows` of `table` (the columns of its schema in order, the trades'
/// timestamp as `timestamp` says) as one batch; none if there are no rows.
/// `backend` names the source in errors.
pub fn partition_batch(
    backend: &str,
    table: Table,
    rows: &[Vec<Option<String>>],
    timestamp: Timestamp<'_>,
) -> Result<Vec<RecordBatch>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let bad = |what: &str, v: Option<&str>| {
        Error::internal(format!("{backend} returned {v:?} for {what}"))
    };
    let text = |r: &[Option<String>], i: usize| -> Result<String> {
        r.get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| bad("a NOT NULL column", None))
    };
    let scaled = |r: &[Option<String>], i: usize, scale: u32| -> Result<i128> {
        let t = text(r, i)?;
        decimal::parse_scaled(t.as_bytes(), scale).map_err(|_| bad("a decimal", Some(&t)))
    };
    let day = |r: &[Option<String>], i: usize| -> Result<i32> {
        let t = text(r, i)?;
        parse_date(&t).ok_or_else(|| bad("a date", Some(&t)))
    };
    let int = |r: &[Option<String>], i: usize| -> Result<i64> {
        let t = text(r, i)?;
        t.parse().map_err(|_| bad("an integer", Some(&t)))
    };
    let cols: Vec<ArrayRef> = match table {
        Table::Trades => {
            let mut ts = TimestampNanosecondBuilder::new().with_timezone("UTC");
            let mut strs: [StringBuilder; 4] = Default::default();
            let mut qty = Decimal128Builder::new().with_data_type(QUANTITY_TYPE);
            let mut price = Decimal128Builder::new().with_data_type(QUANTITY_TYPE);
            let mut days = Date32Builder::new();
            let k = timestamp.cells;
            for r in rows {
                let cells = r.get(..k).unwrap_or_default();
                ts.append_value(
                    (timestamp.parse)(cells)
                        .ok_or_else(|| bad("a timestamp", r.first().and_then(|c| c.as_deref())))?,
                );
                for (i, b) in strs.iter_mut().enumerate() {
                    b.append_value(text(r, k + i)?);
                }
                qty.append_value(scaled(r, k + 4, SCALE)?);
                price.append_value(scaled(r, k + 5, SCALE)?);
                days.append_value(day(r, k + 6)?);
            }
            let mut cols: Vec<ArrayRef> = vec![Arc::new(ts.finish())];
            cols.extend(strs.map(|mut b| Arc::new(b.finish()) as ArrayRef));
            cols.push(Arc::new(qty.finish()));
            cols.push(Arc::new(price.finish()));
            cols.push(Arc::new(days.finish()));
            cols
        }
        Table::TradesRejected => {
            // The raw fields may be NULL; reason and source file may not.
            let mut strs: Vec<StringBuilder> = (0..9).map(|_| StringBuilder::new()).collect();
            let mut row_no = UInt64Builder::new();
            for r in rows {
                for (i, b) in strs.iter_mut().enumerate() {
                    if i < 7 {
                        b.append_option(r.get(i).cloned().flatten());
                    } else {
                        b.append_value(text(r, i)?);
                    }
                }
                let n = int(r, 9)?;
                row_no.append_value(
                    u64::try_from(n).map_err(|_| bad("a row number", Some(&n.to_string())))?,
                );
            }
            let mut cols: Vec<ArrayRef> = strs
                .into_iter()
                .map(|mut b| Arc::new(b.finish()) as ArrayRef)
                .collect();
            cols.push(Arc::new(row_no.finish()));
            cols
        }
        Table::AggTradesWeekly => {
            let mut weeks = Date32Builder::new();
            let mut strs: [StringBuilder; 3] = Default::default();
            let mut vol = Decimal128Builder::new().with_data_type(VOLUME_TYPE);
            let mut pnl = Decimal128Builder::new().with_data_type(PNL_TYPE);
            let mut count = Int64Builder::new();
            for r in rows {
                weeks.append_value(day(r, 0)?);
                for (i, b) in strs.iter_mut().enumerate() {
                    b.append_value(text(r, 1 + i)?);
                }
                vol.append_value(scaled(r, 4, SCALE)?);
                pnl.append_value(scaled(r, 5, PNL_SCALE)?);
                count.append_value(int(r, 6)?);
            }
            let mut cols: Vec<ArrayRef> = vec![Arc::new(weeks.finish())];
            cols.extend(strs.map(|mut b| Arc::new(b.finish()) as ArrayRef));
            cols.push(Arc::new(vol.finish()));
            cols.push(Arc::new(pnl.finish()));
            cols.push(Arc::new(count.finish()));
            cols
        }
    };
    Ok(vec![RecordBatch::try_new(table.schema(), cols)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Decimal128Type, TimestampNanosecondType};

    fn row(cells: &[Option<&str>]) -> Vec<Option<String>> {
        cells.iter().map(|c| c.map(String::from)).collect()
    }

    #[test]
    fn trades_with_a_two_cell_timestamp() {
        let rows = vec![row(&[
            Some("1704164645123456"),
            Some("789"),
            Some("u1"),
            Some("gold"),
            Some("AAPL"),
            Some("buy"),
            Some("1.5"),
            Some("187.25000001"),
            Some("2024-01-02"),
        ])];
        let micros_and_nanos = |c: &[Option<String>]| {
            let n = |i: usize| c.get(i)?.as_deref()?.parse::<i64>().ok();
            Some(n(0)? * 1000 + n(1)?)
        };
        let b = partition_batch(
            "test",
            Table::Trades,
            &rows,
            Timestamp {
                cells: 2,
                parse: &micros_and_nanos,
            },
        )
        .unwrap();
        let b = &b[0];
        assert_eq!(
            b.column(0)
                .as_primitive::<TimestampNanosecondType>()
                .value(0),
            1_704_164_645_123_456_789
        );
        assert_eq!(b.column(1).as_string::<i32>().value(0), "u1");
        assert_eq!(
            b.column(6).as_primitive::<Decimal128Type>().value(0),
            18_725_000_001
        );
    }

    #[test]
    fn nulls_where_they_are_not_allowed_are_errors() {
        let one = |c: &[Option<String>]| c[0].as_deref()?.parse().ok();
        let ts = || Timestamp {
            cells: 1,
            parse: &one,
        };
        let rejected = row(&[
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some("timestamp_missing"),
            Some("a.csv"),
            Some("7"),
        ]);
        let b = partition_batch(
            "test",
            Table::TradesRejected,
            std::slice::from_ref(&rejected),
            ts(),
        )
        .unwrap();
        assert_eq!(b[0].num_rows(), 1);
        let mut no_reason = rejected;
        no_reason[7] = None;
        let e = partition_batch("test", Table::TradesRejected, &[no_reason], ts()).unwrap_err();
        assert!(e.to_string().contains("test returned None"), "{e}");
        let agg = row(&[
            Some("2024-01-01"),
            Some("gold"),
            Some("u"),
            Some("S"),
            Some("x"),
            Some("0"),
            Some("1"),
        ]);
        let e = partition_batch("test", Table::AggTradesWeekly, &[agg], ts()).unwrap_err();
        assert!(e.to_string().contains(r#"Some("x") for a decimal"#), "{e}");
        assert!(
            partition_batch("test", Table::Trades, &[], ts())
                .unwrap()
                .is_empty()
        );
    }
}
