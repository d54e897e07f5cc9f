//! Rows read back as text: the BigQuery and Snowflake backends select every
//! value as text (exact decimals, dates as `YYYY-MM-DD`) and convert it here
//! by value — a partition into one Arrow batch of the table's schema, the
//! days and weeks the warehouse holds into a [`WeekState`].

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use quarry_core::dates::{date_text, parse_date, week_start};
use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use quarry_core::{Error, Result, Table};

use crate::arrow_rows::{Agg, PartitionBuilder, Rejected, Trade};
use crate::weeks::{LoadedDay, WeekState};

/// Rows of a result, every value as text (NULL: None).
pub type Rows = Vec<Vec<Option<String>>>;

/// How a backend's rows hold the trades' timestamp: in the first `cells`
/// cells, read into nanoseconds since the epoch by `parse`.
pub struct Timestamp<'a> {
    pub cells: usize,
    pub parse: &'a dyn Fn(&[Option<String>]) -> Option<i64>,
}

/// One result row, its cells read by type; `backend` names the source in
/// errors.
struct Cells<'a> {
    backend: &'a str,
    row: &'a [Option<String>],
}

impl<'a> Cells<'a> {
    fn bad(&self, what: &str, v: Option<&str>) -> Error {
        Error::internal(format!("{} returned {v:?} for {what}", self.backend))
    }

    fn opt(&self, i: usize) -> Option<&'a str> {
        self.row.get(i).and_then(|c| c.as_deref())
    }

    fn text(&self, i: usize) -> Result<&'a str> {
        self.opt(i)
            .ok_or_else(|| self.bad("a NOT NULL column", None))
    }

    fn scaled(&self, i: usize, scale: u32) -> Result<i128> {
        let t = self.text(i)?;
        decimal::parse_scaled(t.as_bytes(), scale).map_err(|_| self.bad("a decimal", Some(t)))
    }

    fn day(&self, i: usize) -> Result<i32> {
        let t = self.text(i)?;
        parse_date(t).ok_or_else(|| self.bad("a date", Some(t)))
    }

    fn int(&self, i: usize) -> Result<i64> {
        let t = self.text(i)?;
        t.parse().map_err(|_| self.bad("an integer", Some(t)))
    }
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
    let mut out = PartitionBuilder::new(table);
    for row in rows {
        let c = Cells { backend, row };
        match table {
            Table::Trades => {
                let k = timestamp.cells;
                let ts = (timestamp.parse)(row.get(..k).unwrap_or_default())
                    .ok_or_else(|| c.bad("a timestamp", c.opt(0)))?;
                out.trade(Trade {
                    timestamp: ts,
                    user_id: c.text(k)?,
                    client_type: c.text(k + 1)?,
                    symbol: c.text(k + 2)?,
                    side: c.text(k + 3)?,
                    quantity: c.scaled(k + 4, SCALE)?,
                    price: c.scaled(k + 5, SCALE)?,
                    trade_date: c.day(k + 6)?,
                });
            }
            Table::TradesRejected => {
                let n = c.int(9)?;
                out.rejected(Rejected {
                    // The raw fields may be NULL; reason and source file may not.
                    fields: std::array::from_fn(|i| c.opt(i)),
                    reason: c.text(7)?,
                    source_file: c.text(8)?,
                    source_row: u64::try_from(n)
                        .map_err(|_| c.bad("a row number", Some(&n.to_string())))?,
                });
            }
            Table::AggTradesWeekly => out.agg(Agg {
                week_start_date: c.day(0)?,
                client_type: c.text(1)?,
                user_id: c.text(2)?,
                symbol: c.text(3)?,
                total_volume: c.scaled(4, SCALE)?,
                total_pnl: c.scaled(5, PNL_SCALE)?,
                trade_count: c.int(6)?,
            }),
        }
    }
    Ok(out.finish()?.into_iter().collect())
}

/// `days` as a comma-separated list of SQL date literals (`literal` quotes
/// one `YYYY-MM-DD` text).
pub fn date_list(days: impl IntoIterator<Item = i32>, literal: impl Fn(&str) -> String) -> String {
    days.into_iter()
        .map(|d| literal(&date_text(d)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every day of `weeks` (Mondays): where `trades` is asked which days it
/// holds, partition-pruned to the weeks at hand.
pub fn days_of_weeks(weeks: &BTreeSet<i32>) -> BTreeSet<i32> {
    weeks.iter().flat_map(|w| *w..*w + 7).collect()
}

/// What a week-state row names in its first cell.
pub const LOADED: &str = "loaded";
pub const HOT_DAY: &str = "trades";
pub const HOT_WEEK: &str = "agg";

/// The rows of a week-state query, `(kind, date, raw_trades)` as text: a
/// `loaded_days` row ([`LOADED`], its day, `true`/`false`), a day `trades`
/// holds rows of ([`HOT_DAY`]) or a week `agg_trades_weekly` holds rows of
/// ([`HOT_WEEK`]). Only the hot days that are loaded days count.
pub fn week_state(backend: &str, rows: &[Vec<Option<String>>]) -> Result<WeekState> {
    let mut state = WeekState::default();
    let mut hot_days = BTreeSet::new();
    for row in rows {
        let c = Cells { backend, row };
        let day = c.day(1)?;
        match c.text(0)? {
            LOADED => {
                let raw = c.text(2)?;
                let raw_trades = match raw.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(c.bad("a boolean", Some(raw))),
                };
                state.loaded.push(LoadedDay { day, raw_trades });
            }
            HOT_DAY => {
                hot_days.insert(day);
            }
            HOT_WEEK => {
                state.hot_weeks.insert(week_start(day));
            }
            other => return Err(c.bad("a week-state row", Some(other))),
        }
    }
    state.hot_days = state
        .loaded
        .iter()
        .map(|l| l.day)
        .filter(|d| hot_days.contains(d))
        .collect();
    Ok(state)
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

    #[test]
    fn week_state_rows() {
        let rows = vec![
            row(&[Some("loaded"), Some("2024-01-01"), Some("true")]),
            row(&[Some("loaded"), Some("2024-01-02"), Some("FALSE")]),
            row(&[Some("loaded"), Some("2024-01-03"), Some("true")]),
            row(&[Some("trades"), Some("2024-01-01"), None]),
            row(&[Some("trades"), Some("2024-01-05"), None]),
            row(&[Some("agg"), Some("2024-01-01"), None]),
        ];
        let s = week_state("test", &rows).unwrap();
        let d = |t: &str| parse_date(t).unwrap();
        assert_eq!(
            s.loaded,
            [
                LoadedDay {
                    day: d("2024-01-01"),
                    raw_trades: true
                },
                LoadedDay {
                    day: d("2024-01-02"),
                    raw_trades: false
                },
                LoadedDay {
                    day: d("2024-01-03"),
                    raw_trades: true
                },
            ]
        );
        // A day of trades that loaded_days does not name is not a hot day.
        assert_eq!(s.hot_days, BTreeSet::from([d("2024-01-01")]));
        assert_eq!(s.hot_weeks, BTreeSet::from([d("2024-01-01")]));
        let bad = row(&[Some("loaded"), Some("2024-01-01"), Some("maybe")]);
        assert!(week_state("test", &[bad]).is_err());
        assert_eq!(days_of_weeks(&BTreeSet::from([d("2024-01-01")])).len(), 7);
        assert_eq!(
            date_list([d("2024-01-01"), d("2024-01-08")], |t| format!("'{t}'")),
            "'2024-01-01', '2024-01-08'"
        );
    }
}
