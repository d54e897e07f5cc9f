//! Column names and Arrow schemas shared by every service.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::decimal::{PNL_SCALE, SCALE};

/// The input columns every source must have, in validation order.
pub const INPUT_COLUMNS: [&str; 7] = [
    "timestamp",
    "user_id",
    "client_type",
    "symbol",
    "side",
    "quantity",
    "price",
];

/// Whether `b` can separate CSV fields: one ASCII character that is not the
/// quote, a line break or NUL.
pub fn is_valid_delimiter(b: u8) -> bool {
    b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r' | 0)
}

/// Extra column of extracted batches: 1-based line (CSV, NDJSON) or row (Parquet) number.
pub const SOURCE_ROW: &str = "source_row";

pub const QUANTITY_TYPE: DataType = DataType::Decimal128(18, SCALE as i8);
pub const VOLUME_TYPE: DataType = DataType::Decimal128(38, SCALE as i8);
pub const PNL_TYPE: DataType = DataType::Decimal128(38, PNL_SCALE as i8);

/// The tables Quarry writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Trades,
    TradesRejected,
    AggTradesWeekly,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Trades, Table::TradesRejected, Table::AggTradesWeekly];

    pub fn name(self) -> &'static str {
        match self {
            Table::Trades => "trades",
            Table::TradesRejected => "trades_rejected",
            Table::AggTradesWeekly => "agg_trades_weekly",
        }
    }

    pub fn parse(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The column whose values a run replaces as a whole.
    pub fn partition_column(self) -> &'static str {
        match self {
            Table::Trades => "trade_date",
            Table::TradesRejected => "source_file",
            Table::AggTradesWeekly => "week_start_date",
        }
    }

    /// Whether the partition column is a DATE (the tables the archiver can tier).
    pub fn partition_is_date(self) -> bool {
        matches!(self, Table::Trades | Table::AggTradesWeekly)
    }

    /// The schema of the batches sent to the loader for this table
    /// (the loader adds `run_id`).
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Trades => TRADES_SCHEMA.clone(),
            Table::TradesRejected => REJECTED_SCHEMA.clone(),
            Table::AggTradesWeekly => AGG_SCHEMA.clone(),
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// Batches served by the extractor: the input columns as text, as found.
pub static EXTRACT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields: Vec<Field> = INPUT_COLUMNS.iter().map(|c| utf8(c, true)).collect();
    fields.push(Field::new(SOURCE_ROW, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
});

pub static TRADES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        utf8("user_id", false),
        utf8("client_type", false),
        utf8("symbol", false),
        utf8("side", false),
        Field::new("quantity", QUANTITY_TYPE, false),
        Field::new("price", QUANTITY_TYPE, false),
        Field::new("trade_date", DataType::Date32, false),
    ]))
});

pub static REJECTED_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields: Vec<Field> = INPUT_COLUMNS.iter().map(|c| utf8(c, true)).collect();
    fields.push(utf8("reason", false));
    fields.push(utf8("source_file", false));
    fields.push(Field::new(SOURCE_ROW, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
});

pub static AGG_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("week_start_date", DataType::Date32, false),
        utf8("client_type", false),
        utf8("user_id", false),
        utf8("symbol", false),
        Field::new("total_volume", VOLUME_TYPE, false),
        Field::new("total_pnl", PNL_TYPE, false),
        Field::new("trade_count", DataType::Int64, false),
    ]))
});
