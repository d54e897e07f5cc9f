//! Arrow batches into SQLite rows: timestamps as sortable UTC text, dates
//! as `YYYY-MM-DD`, decimals as the REAL nearest to the exact value and,
//! where the REAL cannot give it back, the exact value beside it (see
//! `exact.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Int64Type, TimestampNanosecondType, UInt64Type,
};
use quarry_core::Result;
use quarry_core::dates::date_text;
use quarry_core::decimal::{self, PNL_SCALE};
use rusqlite::{Connection, ToSql, params};

use super::exact::{exact_column, units_column};
use super::schema::db_err;

/// `YYYY-MM-DD HH:MM:SS[.fraction]` in UTC: sorts as text and SQLite's date
/// functions read it. Written by hand (one call per row): the date part comes
/// from the cache, the rest is fixed-width digits.
pub(super) fn timestamp_text(nanos: i64, dates: &mut DateTexts, out: &mut String) {
    const NANOS_PER_DAY: i64 = 86_400_000_000_000;
    out.clear();
    out.push_str(dates.get(nanos.div_euclid(NANOS_PER_DAY) as i32));
    let in_day = nanos.rem_euclid(NANOS_PER_DAY);
    let (secs, frac) = (in_day / 1_000_000_000, in_day % 1_000_000_000);
    let _ = write!(
        out,
        " {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let digits = format!("{frac:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// Caches the text of dates: a batch holds few distinct days.
#[derive(Default)]
pub(super) struct DateTexts(BTreeMap<i32, String>);

impl DateTexts {
    fn get(&mut self, d: i32) -> &str {
        self.0.entry(d).or_insert_with(|| date_text(d))
    }
}

pub(super) fn insert_trades(
    conn: &Connection,
    run_id: &str,
    b: &RecordBatch,
    mut dates: Option<&mut BTreeSet<i32>>,
) -> Result<()> {
    let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
    let s = |i: usize| b.column(i).as_string::<i32>();
    let (user, ct, sym, side) = (s(1), s(2), s(3), s(4));
    let qty = b.column(5).as_primitive::<Decimal128Type>();
    let price = b.column(6).as_primitive::<Decimal128Type>();
    let day = b.column(7).as_primitive::<Date32Type>();
    let scale = decimal::SCALE;
    let mut st = conn
        .prepare_cached(
            "INSERT INTO trades (timestamp, user_id, client_type, symbol, side, quantity, price, trade_date, run_id,
                 quantity_units, price_units)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .map_err(|e| db_err("prepare insert into trades", e))?;
    let mut texts = DateTexts::default();
    let mut ts_text = String::new();
    let mut last_day = None;
    // Rows go in day by day (input order within a day): a batch's rows of
    // one day land next to each other, so the partition index is updated
    // at one place for a run of rows, and a day's rows fill whole pages
    // that its later reads and deletes touch together.
    let mut order: Vec<usize> = (0..b.num_rows()).collect();
    order.sort_by_key(|&i| day.value(i));
    for i in order {
        timestamp_text(ts.value(i), &mut texts, &mut ts_text);
        let d = day.value(i);
        if last_day != Some(d) {
            last_day = Some(d);
            if let Some(ds) = dates.as_deref_mut() {
                ds.insert(d);
            }
        }
        let (q, p) = (qty.value(i), price.value(i));
        // Bound one by one and stepped without rusqlite's per-call checks:
        // this loop runs once per raw trade.
        bind_all(
            &mut st,
            &[
                &ts_text.as_str(),
                &user.value(i),
                &ct.value(i),
                &sym.value(i),
                &side.value(i),
                &decimal::to_f64(q, scale),
                &decimal::to_f64(p, scale),
                &texts.get(d),
                &run_id,
                &units_column(q),
                &units_column(p),
            ],
        )
        .and_then(|()| st.raw_execute())
        .map_err(|e| db_err("insert into trades", e))?;
    }
    Ok(())
}

/// Binds `values` to the statement's parameters 1..=n.
fn bind_all(st: &mut rusqlite::CachedStatement<'_>, values: &[&dyn ToSql]) -> rusqlite::Result<()> {
    for (k, v) in values.iter().enumerate() {
        st.raw_bind_parameter(k + 1, v)?;
    }
    Ok(())
}

pub(super) fn insert_rejected(conn: &Connection, run_id: &str, b: &RecordBatch) -> Result<()> {
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

pub(super) fn insert_agg(
    conn: &Connection,
    b: &RecordBatch,
    mut weeks: Option<&mut BTreeSet<i32>>,
) -> Result<()> {
    let week = b.column(0).as_primitive::<Date32Type>();
    let s = |i: usize| b.column(i).as_string::<i32>();
    let (ct, user, sym) = (s(1), s(2), s(3));
    let vol = b.column(4).as_primitive::<Decimal128Type>();
    let pnl = b.column(5).as_primitive::<Decimal128Type>();
    let count = b.column(6).as_primitive::<Int64Type>();
    let mut st = conn
        .prepare_cached(
            "INSERT INTO agg_trades_weekly (week_start_date, client_type, user_id, symbol,
                 total_volume, total_pnl, trade_count, total_volume_exact, total_pnl_exact)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(|e| db_err("prepare insert into agg_trades_weekly", e))?;
    let mut texts = DateTexts::default();
    let mut last_week = None;
    for i in 0..b.num_rows() {
        let w = week.value(i);
        if last_week != Some(w) {
            last_week = Some(w);
            if let Some(ws) = weeks.as_deref_mut() {
                ws.insert(w);
            }
        }
        let (v, p) = (vol.value(i), pnl.value(i));
        bind_all(
            &mut st,
            &[
                &texts.get(w),
                &ct.value(i),
                &user.value(i),
                &sym.value(i),
                &decimal::to_f64(v, decimal::SCALE),
                &decimal::to_f64(p, PNL_SCALE),
                &count.value(i),
                &exact_column(v, decimal::SCALE),
                &exact_column(p, PNL_SCALE),
            ],
        )
        .and_then(|()| st.raw_execute())
        .map_err(|e| db_err("insert into agg_trades_weekly", e))?;
    }
    Ok(())
}
