//! Rows read back: each stored REAL (with its exact column, see
//! `exact.rs`) as the decimal it stands for, text timestamps and dates into
//! their Arrow types.

use arrow::array::RecordBatch;
use quarry_core::Table;
use quarry_core::dates::parse_date;
use quarry_core::decimal::{PNL_SCALE, SCALE};
use rusqlite::Connection;

use super::exact::{sum_of, units_of};

use crate::arrow_rows::{Agg, PartitionBuilder, Rejected, Trade};

/// Rows per batch read back from a partition.
const READ_BATCH_ROWS: usize = 65_536;

fn conversion(i: usize, ty: rusqlite::types::Type, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, ty, what.into())
}

/// The sum a stored REAL and its exact text column (`real_at + ...`) stand
/// for, at `scale`.
pub(super) fn exact_sum(
    r: &rusqlite::Row<'_>,
    real_at: usize,
    exact_at: usize,
    scale: u32,
) -> rusqlite::Result<i128> {
    let real: f64 = r.get(real_at)?;
    let exact = r.get_ref(exact_at)?.as_str_or_null()?;
    sum_of(real, exact, scale).map_err(|e| conversion(real_at, rusqlite::types::Type::Real, e))
}

/// The quantity or price a stored REAL and its units column stand for.
fn units(r: &rusqlite::Row<'_>, real_at: usize, units_at: usize) -> rusqlite::Result<i128> {
    Ok(units_of(r.get(real_at)?, r.get(units_at)?))
}

fn date(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<i32> {
    let t: String = r.get(i)?;
    parse_date(&t).ok_or_else(|| conversion(i, rusqlite::types::Type::Text, format!("date {t:?}")))
}

fn timestamp(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<i64> {
    let t: String = r.get(i)?;
    chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .and_then(|d| d.and_utc().timestamp_nanos_opt())
        .ok_or_else(|| conversion(i, rusqlite::types::Type::Text, format!("timestamp {t:?}")))
}

/// Reads one partition back in the table's Arrow schema, in batches of at
/// most `READ_BATCH_ROWS` rows.
pub(super) fn read_partition(
    c: &Connection,
    table: Table,
    partition: &str,
) -> rusqlite::Result<Vec<RecordBatch>> {
    let mut columns: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    columns.extend(exact_columns(table).iter().map(|c| c.to_string()));
    let mut st = c.prepare(&format!(
        "SELECT {} FROM {table} WHERE {} = ?1 ORDER BY rowid",
        columns.join(", "),
        table.partition_column()
    ))?;
    let mut rows = st.query([partition])?;
    let mut out = vec![];
    loop {
        let mut builder = PartitionBuilder::new(table);
        let mut n = 0;
        while n < READ_BATCH_ROWS {
            let Some(r) = rows.next()? else { break };
            push(&mut builder, table, r)?;
            n += 1;
        }
        let batch = builder
            .finish()
            .map_err(|e| conversion(0, rusqlite::types::Type::Null, e.to_string()))?;
        out.extend(batch);
        if n < READ_BATCH_ROWS {
            break;
        }
    }
    Ok(out)
}

/// The exact columns of a table, read after the columns of its schema.
fn exact_columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Trades => &["quantity_units", "price_units"],
        Table::TradesRejected => &[],
        Table::AggTradesWeekly => &["total_volume_exact", "total_pnl_exact"],
    }
}

/// One stored row of `table` into the builder.
fn push(b: &mut PartitionBuilder, table: Table, r: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
    match table {
        Table::Trades => b.trade(Trade {
            timestamp: timestamp(r, 0)?,
            user_id: r.get_ref(1)?.as_str()?,
            client_type: r.get_ref(2)?.as_str()?,
            symbol: r.get_ref(3)?.as_str()?,
            side: r.get_ref(4)?.as_str()?,
            quantity: units(r, 5, 8)?,
            price: units(r, 6, 9)?,
            trade_date: date(r, 7)?,
        }),
        Table::TradesRejected => {
            let mut fields = [None; 7];
            for (k, f) in fields.iter_mut().enumerate() {
                *f = r.get_ref(k)?.as_str_or_null()?;
            }
            b.rejected(Rejected {
                fields,
                reason: r.get_ref(7)?.as_str()?,
                source_file: r.get_ref(8)?.as_str()?,
                source_row: r.get::<_, i64>(9)? as u64,
            });
        }
        Table::AggTradesWeekly => b.agg(Agg {
            week_start_date: date(r, 0)?,
            client_type: r.get_ref(1)?.as_str()?,
            user_id: r.get_ref(2)?.as_str()?,
            symbol: r.get_ref(3)?.as_str()?,
            total_volume: exact_sum(r, 4, 7, SCALE)?,
            total_pnl: exact_sum(r, 5, 8, PNL_SCALE)?,
            trade_count: r.get(6)?,
        }),
    }
    Ok(())
}
