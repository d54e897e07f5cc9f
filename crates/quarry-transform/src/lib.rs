//! Validation, normalisation and weekly aggregation of trades over Arrow
//! record batches: no network, no async. The only I/O is the spill of
//! duplicate-detection hashes to anonymous temporary files past 64 MiB.
//!
//! This works on the arrow-rs arrays the services exchange over Flight rather
//! than through Polars: validation is one pass per row that stops at the first
//! failing field (the reason code depends on the order), amounts are parsed
//! straight into fixed-point integers (exact, no float step), and the
//! aggregate is one accumulator that outlives every batch of a run. Expressed
//! in Polars it would still need per-batch partial aggregates merged into a
//! long-lived map, plus a conversion of every batch into and out of Polars.

pub mod aggregate;
pub mod checks;
pub mod quality;
mod spill;
pub mod timestamp;
pub mod validate;

pub use aggregate::Aggregator;
pub use validate::{BatchStats, Field, Reason, Validated, validate};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray, UInt64Array};
    use arrow::datatypes::{Decimal128Type, Int64Type};
    use quarry_core::decimal::{PNL_SCALE, SCALE, format_scaled};
    use quarry_core::schema::EXTRACT_SCHEMA;

    use super::*;

    /// Builds an extracted batch; `None` is a null, like a missing JSON key.
    fn batch(rows: &[[Option<&str>; 7]]) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = (0..7)
            .map(|k| {
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r[k]).collect::<Vec<_>>(),
                )) as ArrayRef
            })
            .collect();
        cols.push(Arc::new(UInt64Array::from_iter_values(
            2..rows.len() as u64 + 2,
        )));
        RecordBatch::try_new(EXTRACT_SCHEMA.clone(), cols).unwrap()
    }

    fn row(f: [&str; 7]) -> [Option<&str>; 7] {
        f.map(Some)
    }

    const GOOD: [&str; 7] = [
        "2023-01-02 10:00:00",
        "3003",
        "bronze",
        "AAPL",
        "buy",
        "1.5",
        "100",
    ];

    fn with(field: Field, value: Option<&'static str>) -> [Option<&'static str>; 7] {
        let mut r = row(GOOD);
        r[field as usize] = value;
        r
    }

    #[test]
    fn every_reason_code_is_produced_by_the_first_failing_field() {
        let cases: Vec<([Option<&str>; 7], &str)> = vec![
            (with(Field::Timestamp, Some("  ")), "timestamp_missing"),
            (
                with(Field::Timestamp, Some("yesterday")),
                "timestamp_invalid",
            ),
            (with(Field::UserId, None), "user_id_missing"),
            (with(Field::UserId, Some("30 03")), "user_id_invalid"),
            (with(Field::ClientType, Some("")), "client_type_missing"),
            (
                with(Field::ClientType, Some("platinum")),
                "client_type_invalid",
            ),
            (with(Field::Symbol, None), "symbol_missing"),
            (with(Field::Symbol, Some("$$$")), "symbol_invalid"),
            (with(Field::Side, Some("")), "side_missing"),
            (with(Field::Side, Some("hold")), "side_invalid"),
            (with(Field::Quantity, None), "quantity_missing"),
            (with(Field::Quantity, Some("-1")), "quantity_invalid"),
            (with(Field::Quantity, Some("0")), "quantity_invalid"),
            (with(Field::Quantity, Some("NaN")), "quantity_invalid"),
            (with(Field::Quantity, Some("inf")), "quantity_invalid"),
            (with(Field::Quantity, Some("ten")), "quantity_invalid"),
            (with(Field::Price, Some(" ")), "price_missing"),
            (with(Field::Price, Some("0.000000001")), "price_invalid"),
            // Several bad fields: the first in validation order wins.
            (
                [Some("bad"), None, Some("x"), None, None, Some("-1"), None],
                "timestamp_invalid",
            ),
            (
                [
                    Some(GOOD[0]),
                    Some("1"),
                    Some("x"),
                    None,
                    Some("hold"),
                    None,
                    None,
                ],
                "client_type_invalid",
            ),
        ];
        let rows: Vec<_> = cases.iter().map(|(r, _)| *r).collect();
        let v = validate(&batch(&rows), "in.csv").unwrap();
        assert_eq!(v.trades.num_rows(), 0);
        let rej = v.rejected.unwrap();
        let reasons = rej.column_by_name("reason").unwrap().as_string::<i32>();
        for (i, (_, want)) in cases.iter().enumerate() {
            assert_eq!(reasons.value(i), *want, "case {i}");
        }
        let covered: std::collections::BTreeSet<_> =
            (0..rej.num_rows()).map(|i| reasons.value(i)).collect();
        assert_eq!(covered.len(), Reason::all_codes().len());
        // Lineage and original text are kept.
        assert_eq!(
            rej.column_by_name("source_file")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "in.csv"
        );
        assert_eq!(
            rej.column_by_name("user_id")
                .unwrap()
                .as_string::<i32>()
                .value(3),
            "30 03"
        );
        assert!(rej.column_by_name("user_id").unwrap().is_null(2));
        assert_eq!(v.stats.rows_rejected(), cases.len() as u64);
    }

    #[test]
    fn fields_are_trimmed_and_normalised() {
        let v = validate(
            &batch(&[row([
                " 2023-01-02T10:00:00Z ",
                " 3003 ",
                " Bronze",
                "aapl ",
                "SELL",
                " 2 ",
                "3.5 ",
            ])]),
            "f",
        )
        .unwrap();
        assert_eq!(v.stats.rows_valid, 1);
        let t = &v.trades;
        let s = |i: usize| t.column(i).as_string::<i32>().value(0).to_string();
        assert_eq!(
            (s(1), s(2), s(3), s(4)),
            ("3003".into(), "bronze".into(), "AAPL".into(), "sell".into())
        );
        assert_eq!(
            t.column(5).as_primitive::<Decimal128Type>().value(0),
            200_000_000
        );
    }

    /// week, client_type, user_id, symbol, volume, pnl, count
    type AggRow = (String, String, String, String, String, String, i64);

    fn aggregate(rows: &[[Option<&str>; 7]], dedup: bool) -> (Vec<AggRow>, u64) {
        let v = validate(&batch(rows), "f").unwrap();
        let agg = Aggregator::new(dedup, None);
        agg.ingest(v.trades).unwrap();
        let mut out = vec![];
        let (batches, dups, _) = agg.into_batches(2);
        let dups = dups.count().unwrap().exact;
        for b in batches {
            let b = b.unwrap();
            let date =
                arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            for i in 0..b.num_rows() {
                out.push((
                    date.as_string::<i32>().value(i).to_string(),
                    b.column(1).as_string::<i32>().value(i).to_string(),
                    b.column(2).as_string::<i32>().value(i).to_string(),
                    b.column(3).as_string::<i32>().value(i).to_string(),
                    format_scaled(b.column(4).as_primitive::<Decimal128Type>().value(i), SCALE),
                    format_scaled(
                        b.column(5).as_primitive::<Decimal128Type>().value(i),
                        PNL_SCALE,
                    ),
                    b.column(6).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        (out, dups)
    }

    #[test]
    fn aggregates_exactly_with_eight_decimal_places() {
        let r = |ts, side, q, p| row([ts, "7", "gold", "X", side, q, p]);
        let rows = [
            r(
                "2023-01-02 00:00:00",
                "sell",
                "0.10000001",
                "12345.67890123",
            ),
            r("2023-01-08 23:59:59", "buy", "0.20000002", "0.00000001"),
            r("2023-01-03 00:00:00", "sell", "0.1", "0.2"),
        ];
        let (out, _) = aggregate(&rows, false);
        assert_eq!(out.len(), 1);
        let (week, _, _, _, vol, pnl, n) = &out[0];
        assert_eq!(week, "2023-01-02");
        assert_eq!(vol, "0.40000003");
        // 0.10000001*12345.67890123 - 0.20000002*0.00000001 + 0.1*0.2
        assert_eq!(pnl, "1234.5880135777890121");
        assert_eq!(*n, 3);
    }

    #[test]
    fn weeks_follow_utc_dates_across_year_ends_and_offsets() {
        let r = |ts| row([ts, "1", "silver", "S", "buy", "1", "1"]);
        let rows = [
            r("2023-01-01 23:59:59"),       // Sunday: week of 2022-12-26
            r("2023-01-02 00:00:00"),       // Monday: new week
            r("2023-01-02T01:00:00+02:00"), // 2023-01-01 23:00 UTC: previous week
            r("2020-12-31 12:00:00"),       // Thursday: week of 2020-12-28
            r("2021-01-03T22:00:00-03:00"), // 2021-01-04 01:00 UTC: Monday
        ];
        let (mut out, _) = aggregate(&rows, false);
        out.sort();
        let weeks: Vec<_> = out.iter().map(|o| (o.0.as_str(), o.6)).collect();
        assert_eq!(
            weeks,
            [
                ("2020-12-28", 1),
                ("2021-01-04", 1),
                ("2022-12-26", 2),
                ("2023-01-02", 1)
            ]
        );
    }

    #[test]
    fn duplicates_are_counted_and_dropped_only_when_asked() {
        let rows = [
            row(GOOD),
            row(GOOD),
            row([
                " 2023-01-02T10:00:00",
                "3003",
                "BRONZE",
                "aapl",
                "buy",
                "1.50",
                "100.0",
            ]),
        ];
        let (out, dups) = aggregate(&rows, false);
        assert_eq!((dups, out[0].6), (2, 3));
        let (out, dups) = aggregate(&rows, true);
        assert_eq!((dups, out[0].6), (2, 1));
    }

    #[test]
    fn without_groups_only_duplicates_and_the_profile_are_kept() {
        let rows = [row(GOOD), row(GOOD)];
        let agg = Aggregator::new(true, None).without_groups();
        let kept = agg
            .ingest(validate(&batch(&rows), "f").unwrap().trades)
            .unwrap();
        assert_eq!(kept.num_rows(), 1);
        let (mut batches, dups, profile) = agg.into_batches(2);
        assert!(batches.next().is_none());
        assert_eq!(dups.count().unwrap().exact, 1);
        // 2023-01-02: the one day of the run.
        assert_eq!(
            profile.daily.keys().collect::<Vec<_>>(),
            [&(19_359, "bronze")]
        );
    }
}
