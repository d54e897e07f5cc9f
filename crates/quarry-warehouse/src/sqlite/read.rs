//! Rows read back: each stored REAL as the decimal it stands for, text
//! timestamps and dates into their Arrow types.

use arrow::array::RecordBatch;
use quarry_core::Table;
use quarry_core::dates::parse_date;
use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use rusqlite::Connection;

use crate::arrow_rows::{Agg, PartitionBuilder, Rejected, Trade};

/// Rows per batch read back from a partition.
const READ_BATCH_ROWS: usize = 65_536;

fn conversion(i: usize, ty: rusqlite::types::Type, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, ty, what.into())
}

/// The decimal a stored REAL stands for, at `scale`.
pub(super) fn exact(r: &rusqlite::Row<'_>, i: usize, scale: u32) -> rusqlite::Result<i128> {
    let v: f64 = r.get(i)?;
    decimal::from_f64(v, scale).map_err(|e| {
        conversion(
            i,
            rusqlite::types::Type::Real,
            format!("{v} is not a decimal: {e:?}"),
        )
    })
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
    let columns: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
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

/// One stored row of `table` into the builder.
fn push(b: &mut PartitionBuilder, table: Table, r: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
    match table {
        Table::Trades => b.trade(Trade {
            timestamp: timestamp(r, 0)?,
            user_id: r.get_ref(1)?.as_str()?,
            client_type: r.get_ref(2)?.as_str()?,
            symbol: r.get_ref(3)?.as_str()?,
            side: r.get_ref(4)?.as_str()?,
            quantity: exact(r, 5, SCALE)?,
            price: exact(r, 6, SCALE)?,
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
            total_volume: exact(r, 4, SCALE)?,
            total_pnl: exact(r, 5, PNL_SCALE)?,
            trade_count: r.get(6)?,
        }),
    }
    Ok(())
}
