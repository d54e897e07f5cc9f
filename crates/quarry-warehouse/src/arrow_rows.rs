//! Rows of a table back into Arrow batches of its schema, once for every
//! backend: each backend reads its values (SQLite cells, ClickHouse rows,
//! BigQuery and Snowflake text) and pushes them here as typed values.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use quarry_core::schema::{PNL_TYPE, QUANTITY_TYPE, VOLUME_TYPE};
use quarry_core::{Result, Table};

/// A trade: timestamp in nanoseconds since the epoch (UTC), amounts scaled
/// by 10^8, the day as days since 1970-01-01.
pub(crate) struct Trade<'a> {
    pub timestamp: i64,
    pub user_id: &'a str,
    pub client_type: &'a str,
    pub symbol: &'a str,
    pub side: &'a str,
    pub quantity: i128,
    pub price: i128,
    pub trade_date: i32,
}

/// A rejected row: the seven original fields (NULL: None), why, where from.
pub(crate) struct Rejected<'a> {
    pub fields: [Option<&'a str>; 7],
    pub reason: &'a str,
    pub source_file: &'a str,
    pub source_row: u64,
}

/// An aggregate row: volume scaled by 10^8, PnL by 10^16.
pub(crate) struct Agg<'a> {
    pub week_start_date: i32,
    pub client_type: &'a str,
    pub user_id: &'a str,
    pub symbol: &'a str,
    pub total_volume: i128,
    pub total_pnl: i128,
    pub trade_count: i64,
}

/// Column builders of one table's schema.
// One builder per partition read or batch built: the size of its variants
// does not matter, boxing them would only add indirection.
#[allow(clippy::large_enum_variant)]
pub(crate) enum PartitionBuilder {
    Trades {
        ts: TimestampNanosecondBuilder,
        text: [StringBuilder; 4],
        qty: Decimal128Builder,
        price: Decimal128Builder,
        day: Date32Builder,
    },
    Rejected {
        text: [StringBuilder; 9],
        row: UInt64Builder,
    },
    Agg {
        week: Date32Builder,
        text: [StringBuilder; 3],
        vol: Decimal128Builder,
        pnl: Decimal128Builder,
        count: Int64Builder,
    },
}

fn finish_all<const N: usize>(builders: [StringBuilder; N]) -> Vec<ArrayRef> {
    builders
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect()
}

impl PartitionBuilder {
    pub fn new(table: Table) -> Self {
        match table {
            Table::Trades => Self::Trades {
                ts: TimestampNanosecondBuilder::new().with_timezone("UTC"),
                text: Default::default(),
                qty: Decimal128Builder::new().with_data_type(QUANTITY_TYPE),
                price: Decimal128Builder::new().with_data_type(QUANTITY_TYPE),
                day: Date32Builder::new(),
            },
            Table::TradesRejected => Self::Rejected {
                text: Default::default(),
                row: UInt64Builder::new(),
            },
            Table::AggTradesWeekly => Self::Agg {
                week: Date32Builder::new(),
                text: Default::default(),
                vol: Decimal128Builder::new().with_data_type(VOLUME_TYPE),
                pnl: Decimal128Builder::new().with_data_type(PNL_TYPE),
                count: Int64Builder::new(),
            },
        }
    }

    fn table(&self) -> Table {
        match self {
            Self::Trades { .. } => Table::Trades,
            Self::Rejected { .. } => Table::TradesRejected,
            Self::Agg { .. } => Table::AggTradesWeekly,
        }
    }

    /// Appends a trade; a builder of another table is a bug.
    pub fn trade(&mut self, v: Trade<'_>) {
        let Self::Trades {
            ts,
            text,
            qty,
            price,
            day,
        } = self
        else {
            unreachable!("a trade pushed to the builder of {}", self.table())
        };
        ts.append_value(v.timestamp);
        for (b, s) in text
            .iter_mut()
            .zip([v.user_id, v.client_type, v.symbol, v.side])
        {
            b.append_value(s);
        }
        qty.append_value(v.quantity);
        price.append_value(v.price);
        day.append_value(v.trade_date);
    }

    /// Appends a rejected row; a builder of another table is a bug.
    pub fn rejected(&mut self, v: Rejected<'_>) {
        let Self::Rejected { text, row } = self else {
            unreachable!("a rejected row pushed to the builder of {}", self.table())
        };
        for (b, f) in text.iter_mut().zip(v.fields) {
            b.append_option(f);
        }
        text[7].append_value(v.reason);
        text[8].append_value(v.source_file);
        row.append_value(v.source_row);
    }

    /// Appends an aggregate row; a builder of another table is a bug.
    pub fn agg(&mut self, v: Agg<'_>) {
        let Self::Agg {
            week,
            text,
            vol,
            pnl,
            count,
        } = self
        else {
            unreachable!("an aggregate row pushed to the builder of {}", self.table())
        };
        week.append_value(v.week_start_date);
        for (b, s) in text.iter_mut().zip([v.client_type, v.user_id, v.symbol]) {
            b.append_value(s);
        }
        vol.append_value(v.total_volume);
        pnl.append_value(v.total_pnl);
        count.append_value(v.trade_count);
    }

    /// The rows so far as one batch, or none if there were none.
    pub fn finish(self) -> Result<Option<RecordBatch>> {
        let table = self.table();
        let cols: Vec<ArrayRef> = match self {
            Self::Trades {
                mut ts,
                text,
                mut qty,
                mut price,
                mut day,
            } => {
                let mut cols: Vec<ArrayRef> = vec![Arc::new(ts.finish())];
                cols.extend(finish_all(text));
                cols.push(Arc::new(qty.finish()));
                cols.push(Arc::new(price.finish()));
                cols.push(Arc::new(day.finish()));
                cols
            }
            Self::Rejected { text, mut row } => {
                let mut cols = finish_all(text);
                cols.push(Arc::new(row.finish()));
                cols
            }
            Self::Agg {
                mut week,
                text,
                mut vol,
                mut pnl,
                mut count,
            } => {
                let mut cols: Vec<ArrayRef> = vec![Arc::new(week.finish())];
                cols.extend(finish_all(text));
                cols.push(Arc::new(vol.finish()));
                cols.push(Arc::new(pnl.finish()));
                cols.push(Arc::new(count.finish()));
                cols
            }
        };
        if cols[0].is_empty() {
            return Ok(None);
        }
        Ok(Some(RecordBatch::try_new(table.schema(), cols)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_builds_its_schema() {
        let mut t = PartitionBuilder::new(Table::Trades);
        t.trade(Trade {
            timestamp: 1,
            user_id: "u",
            client_type: "gold",
            symbol: "S",
            side: "buy",
            quantity: 2,
            price: 3,
            trade_date: 4,
        });
        assert_eq!(t.finish().unwrap().unwrap().num_rows(), 1);
        let mut r = PartitionBuilder::new(Table::TradesRejected);
        r.rejected(Rejected {
            fields: [None, Some("x"), None, None, None, None, None],
            reason: "timestamp_missing",
            source_file: "f.csv",
            source_row: 2,
        });
        let b = r.finish().unwrap().unwrap();
        assert_eq!(b.schema(), Table::TradesRejected.schema());
        let a = PartitionBuilder::new(Table::AggTradesWeekly);
        assert!(a.finish().unwrap().is_none());
    }
}
