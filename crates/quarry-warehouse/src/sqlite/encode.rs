//! Arrow batches into SQLite rows: timestamps as sortable UTC text, dates
//! as `YYYY-MM-DD`, decimals as the REAL nearest to the exact value and,
//! where the REAL cannot give it back, the exact value beside it (see
//! `exact.rs`).
//!
//! A batch is encoded in two steps. [`Staged::encode`] runs on the caller's
//! side (a blocking task of the runtime) and builds every value that is not
//! already in the batch: the order of the rows, timestamp and date text,
//! REALs and exact columns. The writer thread then only binds and steps
//! (`insert`): SQLite has one writer, and on a load of raw trades it is the
//! pipeline's bottleneck, so nothing it does not have to do runs there.

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Int64Type, TimestampNanosecondType, UInt64Type,
};
use quarry_core::dates::date_text;
use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use quarry_core::{Result, Table};
use rusqlite::{CachedStatement, Connection, params};

use super::exact::{exact_column, units_column};
use super::schema::db_err;

pub(super) const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// `YYYY-MM-DD HH:MM:SS[.fraction]` in UTC (`day_text` is the date of
/// `nanos`): sorts as text and SQLite's date functions read it. Appended to `out` digit by digit (it runs once per raw
/// trade; `write!` would go through the formatting machinery each time).
pub(super) fn timestamp_text(nanos: i64, day_text: &str, out: &mut Vec<u8>) {
    let in_day = nanos.rem_euclid(NANOS_PER_DAY);
    let (secs, frac) = (in_day / 1_000_000_000, in_day % 1_000_000_000);
    let two = |v: i64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    out.extend_from_slice(day_text.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&two(secs / 3600));
    out.push(b':');
    out.extend_from_slice(&two(secs / 60 % 60));
    out.push(b':');
    out.extend_from_slice(&two(secs % 60));
    if frac != 0 {
        let mut digits = [0u8; 9];
        let mut f = frac;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        let len = digits.iter().rposition(|&d| d != b'0').expect("frac != 0") + 1;
        out.push(b'.');
        out.extend_from_slice(&digits[..len]);
    }
}

/// A batch ready for the writer thread.
pub(super) enum Staged {
    Trades(TradeRows),
    Rejected(RecordBatch),
    Agg(AggRows),
}

impl Staged {
    /// Builds the values of `batch`, a batch of `table` (schema checked).
    pub fn encode(table: Table, batch: RecordBatch) -> Self {
        match table {
            Table::Trades => Self::Trades(TradeRows::new(batch)),
            Table::TradesRejected => Self::Rejected(batch),
            Table::AggTradesWeekly => Self::Agg(AggRows::new(batch)),
        }
    }

    pub fn table(&self) -> Table {
        match self {
            Self::Trades(_) => Table::Trades,
            Self::Rejected(_) => Table::TradesRejected,
            Self::Agg(_) => Table::AggTradesWeekly,
        }
    }

    pub fn num_rows(&self) -> usize {
        match self {
            Self::Trades(t) => t.batch.num_rows(),
            Self::Rejected(b) => b.num_rows(),
            Self::Agg(a) => a.batch.num_rows(),
        }
    }

    /// Inserts the rows, tagged with `run_id`. The partitions they fall in
    /// are added to `partitions` when given (a replacing write).
    pub fn insert(
        &self,
        conn: &Connection,
        run_id: &str,
        partitions: Option<&mut BTreeSet<i32>>,
    ) -> Result<()> {
        match self {
            Self::Trades(t) => t.insert(conn, run_id, partitions),
            Self::Rejected(b) => insert_rejected(conn, run_id, b),
            Self::Agg(a) => a.insert(conn, partitions),
        }
    }
}

/// A run of consecutive rows of one partition (a day or a week).
struct Span {
    key: i32,
    text: String,
    rows: usize,
}

/// Groups consecutive equal keys into spans.
fn spans(keys: impl Iterator<Item = i32>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for k in keys {
        match out.last_mut() {
            Some(s) if s.key == k => s.rows += 1,
            _ => out.push(Span {
                key: k,
                text: date_text(k),
                rows: 1,
            }),
        }
    }
    out
}

/// Raw trades, in day order, with their text and REAL values built.
pub(super) struct TradeRows {
    batch: RecordBatch,
    /// Row indexes, day by day (input order within a day): a batch's rows of
    /// one day land next to each other, so the partition index is updated
    /// at one place for a run of rows, and a day's rows fill whole pages
    /// that its later reads and deletes touch together.
    order: Vec<u32>,
    days: Vec<Span>,
    /// Timestamp texts back to back; `ts_ends[k]` ends the `k`th in `order`.
    ts: Vec<u8>,
    ts_ends: Vec<u32>,
    /// Per row in `order`: quantity, price, and their exact units when the
    /// REAL does not give them back.
    reals: Vec<[f64; 2]>,
    units: Vec<[Option<i64>; 2]>,
}

impl TradeRows {
    fn new(batch: RecordBatch) -> Self {
        let ts = batch.column(0).as_primitive::<TimestampNanosecondType>();
        let qty = batch.column(5).as_primitive::<Decimal128Type>();
        let price = batch.column(6).as_primitive::<Decimal128Type>();
        let day = batch.column(7).as_primitive::<Date32Type>();
        let n = batch.num_rows();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&i| day.value(i as usize));
        let days = spans(order.iter().map(|&i| day.value(i as usize)));
        let mut text = Vec::with_capacity(n * 20);
        let mut ts_ends = Vec::with_capacity(n);
        let (mut reals, mut units) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut k = 0;
        for span in &days {
            for &i in &order[k..k + span.rows] {
                let i = i as usize;
                let nanos = ts.value(i);
                // `trade_date` is the timestamp's day when the transformer
                // built the batch; any other client's batch is written as sent.
                let d = nanos.div_euclid(NANOS_PER_DAY) as i32;
                let other;
                let day_text = if d == span.key {
                    span.text.as_str()
                } else {
                    other = date_text(d);
                    other.as_str()
                };
                timestamp_text(nanos, day_text, &mut text);
                ts_ends.push(text.len() as u32);
                let (q, p) = (qty.value(i), price.value(i));
                reals.push([decimal::to_f64(q, SCALE), decimal::to_f64(p, SCALE)]);
                units.push([units_column(q), units_column(p)]);
            }
            k += span.rows;
        }
        Self {
            batch,
            order,
            days,
            ts: text,
            ts_ends,
            reals,
            units,
        }
    }

    fn insert(
        &self,
        conn: &Connection,
        run_id: &str,
        mut dates: Option<&mut BTreeSet<i32>>,
    ) -> Result<()> {
        let s = |i: usize| self.batch.column(i).as_string::<i32>();
        let (user, ct, sym, side) = (s(1), s(2), s(3), s(4));
        let mut st = conn
            .prepare_cached(
                "INSERT INTO trades (timestamp, user_id, client_type, symbol, side, quantity, price,
                     quantity_units, price_units, trade_date, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .map_err(|e| db_err("prepare insert into trades", e))?;
        let err = |e| db_err("insert into trades", e);
        // Bindings stay until they are replaced: the run id once per batch,
        // the date once per day.
        st.raw_bind_parameter(11, run_id).map_err(err)?;
        let mut k = 0;
        let mut start = 0;
        for span in &self.days {
            if let Some(ds) = dates.as_deref_mut() {
                ds.insert(span.key);
            }
            st.raw_bind_parameter(10, span.text.as_str()).map_err(err)?;
            for _ in 0..span.rows {
                let i = self.order[k] as usize;
                let end = self.ts_ends[k] as usize;
                // Built from ASCII digits and a date text.
                let ts = std::str::from_utf8(&self.ts[start..end]).expect("ASCII timestamp");
                start = end;
                bind_trade(
                    &mut st,
                    ts,
                    [user, ct, sym, side],
                    i,
                    self.reals[k],
                    self.units[k],
                )
                .and_then(|()| st.raw_execute())
                .map_err(err)?;
                k += 1;
            }
        }
        Ok(())
    }
}

/// Binds parameters 1..=9 of the trades insert for row `i`.
fn bind_trade(
    st: &mut CachedStatement<'_>,
    ts: &str,
    text: [&StringArray; 4],
    i: usize,
    reals: [f64; 2],
    units: [Option<i64>; 2],
) -> rusqlite::Result<()> {
    st.raw_bind_parameter(1, ts)?;
    for (k, col) in text.iter().enumerate() {
        st.raw_bind_parameter(k + 2, col.value(i))?;
    }
    st.raw_bind_parameter(6, reals[0])?;
    st.raw_bind_parameter(7, reals[1])?;
    st.raw_bind_parameter(8, units[0])?;
    st.raw_bind_parameter(9, units[1])
}

fn insert_rejected(conn: &Connection, run_id: &str, b: &RecordBatch) -> Result<()> {
    let s = |i: usize| b.column(i).as_string::<i32>();
    let cols: Vec<_> = (0..7).map(s).collect();
    let reason = s(7);
    let file = s(8);
    let row = b.column(9).as_primitive::<UInt64Type>();
    let mut st = conn
        .prepare_cached(
            "INSERT INTO trades_rejected (timestamp, user_id, client_type, symbol, side, quantity, price,
                 reason, source_file, source_row, run_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .map_err(|e| db_err("prepare insert into trades_rejected", e))?;
    for i in 0..b.num_rows() {
        let v = |k: usize| (!cols[k].is_null(i)).then(|| cols[k].value(i));
        st.execute(params![
            v(0),
            v(1),
            v(2),
            v(3),
            v(4),
            v(5),
            v(6),
            reason.value(i),
            file.value(i),
            row.value(i) as i64,
            run_id
        ])
        .map_err(|e| db_err("insert into trades_rejected", e))?;
    }
    Ok(())
}

/// Weekly groups with their REALs and exact texts built.
pub(super) struct AggRows {
    batch: RecordBatch,
    /// Consecutive rows of one week, in batch order (the transformer sends
    /// groups week by week).
    weeks: Vec<Span>,
    /// Per row: total volume and PnL as REALs, and as exact text when the
    /// REAL does not give them back.
    reals: Vec<[f64; 2]>,
    exact: Vec<[Option<String>; 2]>,
}

impl AggRows {
    fn new(batch: RecordBatch) -> Self {
        let week = batch.column(0).as_primitive::<Date32Type>();
        let vol = batch.column(4).as_primitive::<Decimal128Type>();
        let pnl = batch.column(5).as_primitive::<Decimal128Type>();
        let weeks = spans(week.values().iter().copied());
        let (mut reals, mut exact) = (Vec::new(), Vec::new());
        for (v, p) in vol.values().iter().zip(pnl.values().iter()) {
            reals.push([decimal::to_f64(*v, SCALE), decimal::to_f64(*p, PNL_SCALE)]);
            exact.push([exact_column(*v, SCALE), exact_column(*p, PNL_SCALE)]);
        }
        Self {
            batch,
            weeks,
            reals,
            exact,
        }
    }

    fn insert(&self, conn: &Connection, mut weeks: Option<&mut BTreeSet<i32>>) -> Result<()> {
        let s = |i: usize| self.batch.column(i).as_string::<i32>();
        let (ct, user, sym) = (s(1), s(2), s(3));
        let count = self.batch.column(6).as_primitive::<Int64Type>();
        let mut st = conn
            .prepare_cached(
                "INSERT INTO agg_trades_weekly (week_start_date, client_type, user_id, symbol,
                     total_volume, total_pnl, trade_count, total_volume_exact, total_pnl_exact)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(|e| db_err("prepare insert into agg_trades_weekly", e))?;
        let err = |e| db_err("insert into agg_trades_weekly", e);
        let mut i = 0;
        for span in &self.weeks {
            if let Some(ws) = weeks.as_deref_mut() {
                ws.insert(span.key);
            }
            st.raw_bind_parameter(1, span.text.as_str()).map_err(err)?;
            for _ in 0..span.rows {
                let [v, p] = self.reals[i];
                let [ve, pe] = &self.exact[i];
                let bind = |st: &mut CachedStatement<'_>| -> rusqlite::Result<()> {
                    st.raw_bind_parameter(2, ct.value(i))?;
                    st.raw_bind_parameter(3, user.value(i))?;
                    st.raw_bind_parameter(4, sym.value(i))?;
                    st.raw_bind_parameter(5, v)?;
                    st.raw_bind_parameter(6, p)?;
                    st.raw_bind_parameter(7, count.value(i))?;
                    st.raw_bind_parameter(8, ve.as_deref())?;
                    st.raw_bind_parameter(9, pe.as_deref())
                };
                bind(&mut st).and_then(|()| st.raw_execute()).map_err(err)?;
                i += 1;
            }
        }
        Ok(())
    }
}
