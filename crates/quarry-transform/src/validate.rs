//! Row validation and normalisation (DESIGN section 1).
//!
//! Every field is trimmed; `client_type` and `side` are lower-cased, `symbol`
//! upper-cased. A row is rejected with the reason of the FIRST failing field
//! in the order timestamp, user_id, client_type, symbol, side, quantity, price.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Builder, Decimal128Builder, RecordBatch, StringArray,
    StringBuilder, TimestampNanosecondBuilder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, UInt64Type};
use quarry_core::decimal::{self, SCALE};
use quarry_core::schema::{
    INPUT_COLUMNS, QUANTITY_TYPE, REJECTED_SCHEMA, SOURCE_ROW, TRADES_SCHEMA,
};
use quarry_core::{Error, Result};

use crate::timestamp;

/// Input fields in validation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Timestamp = 0,
    UserId,
    ClientType,
    Symbol,
    Side,
    Quantity,
    Price,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Timestamp,
        Field::UserId,
        Field::ClientType,
        Field::Symbol,
        Field::Side,
        Field::Quantity,
        Field::Price,
    ];

    pub fn name(self) -> &'static str {
        INPUT_COLUMNS[self as usize]
    }
}

/// Why a row was rejected: `<field>_missing` (null or empty after trimming)
/// or `<field>_invalid` (present but not acceptable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reason {
    pub field: Field,
    pub missing: bool,
}

pub const REASON_COUNT: usize = 14;

const REASON_CODES: [&str; REASON_COUNT] = [
    "timestamp_missing",
    "timestamp_invalid",
    "user_id_missing",
    "user_id_invalid",
    "client_type_missing",
    "client_type_invalid",
    "symbol_missing",
    "symbol_invalid",
    "side_missing",
    "side_invalid",
    "quantity_missing",
    "quantity_invalid",
    "price_missing",
    "price_invalid",
];

impl Reason {
    fn missing(field: Field) -> Self {
        Self {
            field,
            missing: true,
        }
    }
    fn invalid(field: Field) -> Self {
        Self {
            field,
            missing: false,
        }
    }
    fn index(self) -> usize {
        self.field as usize * 2 + usize::from(!self.missing)
    }
    pub fn code(self) -> &'static str {
        REASON_CODES[self.index()]
    }
    /// Every reason code, in validation order.
    pub fn all_codes() -> &'static [&'static str] {
        &REASON_CODES
    }
}

/// Counters of one batch (or, merged, of a run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub rows_in: u64,
    pub rows_valid: u64,
    /// Rejected rows per reason, indexed like `Reason::all_codes()`.
    pub rejected: [u64; REASON_COUNT],
    /// Rows whose field was null or empty after trimming, per field (all rows).
    pub missing: [u64; 7],
}

impl BatchStats {
    pub fn merge(&mut self, other: &BatchStats) {
        self.rows_in += other.rows_in;
        self.rows_valid += other.rows_valid;
        for (a, b) in self.rejected.iter_mut().zip(other.rejected) {
            *a += b;
        }
        for (a, b) in self.missing.iter_mut().zip(other.missing) {
            *a += b;
        }
    }

    /// `n` as a share of the rows read (0 when none were).
    pub fn share(&self, n: u64) -> f64 {
        if self.rows_in == 0 {
            0.0
        } else {
            n as f64 / self.rows_in as f64
        }
    }

    pub fn rows_rejected(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Non-zero rejection counts by reason code.
    pub fn rejected_by_reason(&self) -> BTreeMap<&'static str, u64> {
        REASON_CODES
            .iter()
            .zip(self.rejected)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (*c, n))
            .collect()
    }
}

/// The outcome of validating one extracted batch.
pub struct Validated {
    /// Accepted rows, normalised, in `TRADES_SCHEMA`.
    pub trades: RecordBatch,
    /// Rejected rows with their original text, in `REJECTED_SCHEMA` (None if none).
    pub rejected: Option<RecordBatch>,
    pub stats: BatchStats,
}

struct ValidRow<'a> {
    ts: i64,
    user_id: &'a str,
    client_type: &'static str,
    symbol: Cow<'a, str>,
    side: &'static str,
    quantity: i128,
    price: i128,
}

/// Largest value of a Decimal(18, 8): quantities and prices beyond it are invalid.
const MAX_AMOUNT: i128 = 999_999_999_999_999_999;

fn amount(text: &str, field: Field) -> Result<i128, Reason> {
    match decimal::parse_scaled(text.as_bytes(), SCALE) {
        Ok(v) if v > 0 && v <= MAX_AMOUNT => Ok(v),
        _ => Err(Reason::invalid(field)),
    }
}

fn valid_user_id(s: &str) -> bool {
    s.len() <= 64 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn valid_symbol(s: &str) -> bool {
    s.len() <= 32
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:^=".contains(&b))
}

fn check_row<'a>(f: &[Option<&'a str>; 7]) -> Result<ValidRow<'a>, Reason> {
    let get = |field: Field| -> Result<&'a str, Reason> {
        match f[field as usize] {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Reason::missing(field)),
        }
    };
    let ts = timestamp::parse(get(Field::Timestamp)?.as_bytes())
        .ok_or(Reason::invalid(Field::Timestamp))?;
    let user_id = get(Field::UserId)?;
    if !valid_user_id(user_id) {
        return Err(Reason::invalid(Field::UserId));
    }
    let ct = get(Field::ClientType)?;
    let client_type = ["gold", "silver", "bronze"]
        .into_iter()
        .find(|c| ct.eq_ignore_ascii_case(c))
        .ok_or(Reason::invalid(Field::ClientType))?;
    let sym = get(Field::Symbol)?;
    let symbol = if sym.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(sym.to_ascii_uppercase())
    } else {
        Cow::Borrowed(sym)
    };
    if !valid_symbol(&symbol) {
        return Err(Reason::invalid(Field::Symbol));
    }
    let sd = get(Field::Side)?;
    let side = ["buy", "sell"]
        .into_iter()
        .find(|c| sd.eq_ignore_ascii_case(c))
        .ok_or(Reason::invalid(Field::Side))?;
    let quantity = amount(get(Field::Quantity)?, Field::Quantity)?;
    let price = amount(get(Field::Price)?, Field::Price)?;
    Ok(ValidRow {
        ts,
        user_id,
        client_type,
        symbol,
        side,
        quantity,
        price,
    })
}

fn text_column<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b StringArray> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| Error::internal(format!("extracted batch has no column {name}")))?;
    match col.data_type() {
        DataType::Utf8 => Ok(col.as_string::<i32>()),
        other => Err(Error::internal(format!(
            "extracted column {name} is {other}, expected Utf8"
        ))),
    }
}

/// Validates one batch in `EXTRACT_SCHEMA` read from `source_file`.
pub fn validate(batch: &RecordBatch, source_file: &str) -> Result<Validated> {
    let n = batch.num_rows();
    let cols: Vec<&StringArray> = INPUT_COLUMNS
        .iter()
        .map(|c| text_column(batch, c))
        .collect::<Result<_>>()?;
    let rows: &UInt64Array = batch
        .column_by_name(SOURCE_ROW)
        .and_then(|c| c.as_primitive_opt::<UInt64Type>())
        .ok_or_else(|| Error::internal("extracted batch has no UInt64 source_row column"))?;

    let mut stats = BatchStats {
        rows_in: n as u64,
        ..Default::default()
    };
    let mut ts_b = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut user_b = StringBuilder::with_capacity(n, n * 4);
    let mut ct_b = StringBuilder::with_capacity(n, n * 6);
    let mut sym_b = StringBuilder::with_capacity(n, n * 4);
    let mut side_b = StringBuilder::with_capacity(n, n * 4);
    let mut qty_b = Decimal128Builder::with_capacity(n).with_data_type(QUANTITY_TYPE);
    let mut price_b = Decimal128Builder::with_capacity(n).with_data_type(QUANTITY_TYPE);
    let mut date_b = Date32Builder::with_capacity(n);

    let mut rej_cols: Vec<StringBuilder> = (0..7).map(|_| StringBuilder::new()).collect();
    let mut rej_reason = StringBuilder::new();
    let mut rej_file = StringBuilder::new();
    let mut rej_row = UInt64Builder::new();

    for i in 0..n {
        let mut fields: [Option<&str>; 7] = [None; 7];
        for (k, col) in cols.iter().enumerate() {
            let v = if col.is_null(i) {
                None
            } else {
                Some(col.value(i).trim())
            };
            if v.is_none_or(str::is_empty) {
                stats.missing[k] += 1;
            }
            fields[k] = v;
        }
        match check_row(&fields) {
            Ok(r) => {
                stats.rows_valid += 1;
                ts_b.append_value(r.ts);
                user_b.append_value(r.user_id);
                ct_b.append_value(r.client_type);
                sym_b.append_value(&r.symbol);
                side_b.append_value(r.side);
                qty_b.append_value(r.quantity);
                price_b.append_value(r.price);
                date_b.append_value(timestamp::trade_date(r.ts));
            }
            Err(reason) => {
                stats.rejected[reason.index()] += 1;
                for (b, col) in rej_cols.iter_mut().zip(&cols) {
                    // The original text, untrimmed: the quarantine keeps what arrived.
                    b.append_option((!col.is_null(i)).then(|| col.value(i)));
                }
                rej_reason.append_value(reason.code());
                rej_file.append_value(source_file);
                rej_row.append_value(rows.value(i));
            }
        }
    }

    let trades_cols: Vec<ArrayRef> = vec![
        Arc::new(ts_b.finish()),
        Arc::new(user_b.finish()),
        Arc::new(ct_b.finish()),
        Arc::new(sym_b.finish()),
        Arc::new(side_b.finish()),
        Arc::new(qty_b.finish()),
        Arc::new(price_b.finish()),
        Arc::new(date_b.finish()),
    ];
    let trades = RecordBatch::try_new(TRADES_SCHEMA.clone(), trades_cols)?;
    let rejected = if stats.rows_rejected() > 0 {
        let mut c: Vec<ArrayRef> = rej_cols
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        c.push(Arc::new(rej_reason.finish()));
        c.push(Arc::new(rej_file.finish()));
        c.push(Arc::new(rej_row.finish()));
        Some(RecordBatch::try_new(REJECTED_SCHEMA.clone(), c)?)
    } else {
        None
    };
    Ok(Validated {
        trades,
        rejected,
        stats,
    })
}
