//! GoogleSQL Quarry writes: the tables' DDL, column lists, literals, the
//! `pipeline_runs` rows as values, and the weekly aggregate folded from
//! `trades`.

use std::fmt::Write as _;

use quarry_core::dates::{date_text, parse_date};
use quarry_core::{Error, Result, Table};

use crate::RunRecord;

pub(super) const RUN_COLUMNS: &str = "run_id, source, status, started_at, finished_at, rows_in, rows_valid, \
     rows_rejected, rows_duplicate, agg_rows, plan_ms, extract_ms, transform_ms, load_ms, \
     commit_ms, total_ms, rows_committed, error_category, error_message, quality, options, owner";

pub(super) fn tables_sql(ds: &str) -> [String; 5] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.trades (
                timestamp TIMESTAMP NOT NULL, timestamp_extra_nanos INT64 NOT NULL,
                user_id STRING NOT NULL, client_type STRING NOT NULL, symbol STRING NOT NULL,
                side STRING NOT NULL, quantity NUMERIC(18, 8) NOT NULL,
                price NUMERIC(18, 8) NOT NULL, trade_date DATE NOT NULL, run_id STRING NOT NULL
            ) PARTITION BY trade_date"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.trades_rejected (
                timestamp STRING, user_id STRING, client_type STRING, symbol STRING,
                side STRING, quantity STRING, price STRING, reason STRING NOT NULL,
                source_file STRING NOT NULL, source_row INT64 NOT NULL, run_id STRING NOT NULL
            ) CLUSTER BY source_file"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.agg_trades_weekly (
                week_start_date DATE NOT NULL, client_type STRING NOT NULL,
                user_id STRING NOT NULL, symbol STRING NOT NULL,
                total_volume BIGNUMERIC(38, 8) NOT NULL, total_pnl BIGNUMERIC(38, 16) NOT NULL,
                trade_count INT64 NOT NULL
            ) PARTITION BY week_start_date"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.pipeline_runs (
                run_id STRING NOT NULL, source STRING, status STRING NOT NULL,
                started_at STRING, finished_at STRING,
                rows_in INT64, rows_valid INT64, rows_rejected INT64, rows_duplicate INT64,
                agg_rows INT64, plan_ms INT64, extract_ms INT64, transform_ms INT64,
                load_ms INT64, commit_ms INT64, total_ms INT64,
                rows_committed STRING, error_category STRING, error_message STRING,
                quality STRING, options STRING, owner STRING
            )"
        ),
        // The days the warehouse holds (crate::weeks): a week is recomputed
        // from them.
        format!(
            "CREATE TABLE IF NOT EXISTS {ds}.loaded_days (
                trade_date DATE NOT NULL, week_start_date DATE NOT NULL,
                raw_trades BOOL NOT NULL, run_id STRING NOT NULL
            ) PARTITION BY week_start_date"
        ),
    ]
}

/// The Monday of a DATE expression's week.
pub(super) fn week_of(date: &str) -> String {
    format!("DATE_TRUNC({date}, WEEK(MONDAY))")
}

/// Fills an empty `loaded_days` (`{ds}.loaded_days`) from what an older
/// Quarry's dataset holds: every day of `trades` (with raw trades), and the
/// Monday of every week of `agg_trades_weekly` without such a day (loaded
/// without raw trades). Inserts nothing once `loaded_days` holds a row.
pub(super) fn backfill_days_sql(ds: &str) -> String {
    let week = week_of("trade_date");
    format!(
        "INSERT INTO {ds}.loaded_days (trade_date, week_start_date, raw_trades, run_id)
         SELECT day, week, raw_trades, 'backfill' FROM (
             SELECT trade_date AS day, {week} AS week, TRUE AS raw_trades
             FROM {ds}.trades GROUP BY trade_date
             UNION ALL
             SELECT week_start_date, week_start_date, FALSE
             FROM {ds}.agg_trades_weekly
             WHERE week_start_date NOT IN (SELECT {week} FROM {ds}.trades GROUP BY 1)
             GROUP BY week_start_date
         )
         WHERE NOT EXISTS (SELECT 1 FROM {ds}.loaded_days)"
    )
}

/// A date as a GoogleSQL literal.
pub(super) fn date_literal(text: &str) -> String {
    format!("DATE '{text}'")
}

/// The exact weekly aggregate of the `trades` of `days` (a list of date
/// literals) into `agg`, per week, client type, user and symbol. Amounts
/// are multiplied as BIGNUMERIC: NUMERIC would round the products (16
/// decimal places) to 9. The casts name a scale because a bare BIGNUMERIC
/// is DECIMAL(38, 5) on the emulator; on BigQuery the product of two
/// BIGNUMERICs is an unrounded BIGNUMERIC either way. The sums are cast to
/// the columns' types.
pub(super) fn fold_sql(agg: &str, trades: &str, days: &str) -> String {
    let amount = "CAST(quantity AS BIGNUMERIC(38, 8)) * CAST(price AS BIGNUMERIC(38, 8))";
    format!(
        "INSERT INTO {agg} ({cols})
         SELECT {week}, client_type, user_id, symbol,
                CAST(SUM(CAST(quantity AS BIGNUMERIC(38, 8))) AS BIGNUMERIC(38, 8)),
                CAST(SUM(CASE side WHEN 'sell' THEN {amount} ELSE -({amount}) END)
                     AS BIGNUMERIC(38, 16)),
                COUNT(*)
         FROM {trades} WHERE trade_date IN ({days})
         GROUP BY 1, 2, 3, 4;\n",
        cols = columns(Table::AggTradesWeekly),
        week = week_of("trade_date"),
    )
}

/// The columns a table's staging copy is inserted with.
pub(super) fn columns(table: Table) -> &'static str {
    match table {
        Table::Trades => {
            "timestamp, timestamp_extra_nanos, user_id, client_type, symbol, side, quantity, \
             price, trade_date, run_id"
        }
        Table::TradesRejected => {
            "timestamp, user_id, client_type, symbol, side, quantity, price, reason, \
             source_file, source_row, run_id"
        }
        Table::AggTradesWeekly => {
            "week_start_date, client_type, user_id, symbol, total_volume, total_pnl, trade_count"
        }
    }
}

/// Escapes a string literal for GoogleSQL ('…').
pub(super) fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A partition value of `table` as a SQL literal: dates are checked and
/// typed, file names escaped.
pub(super) fn partition_literal(table: Table, partition: &str) -> Result<String> {
    match table {
        Table::TradesRejected => Ok(literal(partition)),
        _ => parse_date(partition)
            .map(|d| format!("DATE '{}'", date_text(d)))
            .ok_or_else(|| {
                Error::input(format!(
                    "{partition:?} is not a {} (YYYY-MM-DD)",
                    table.partition_column()
                ))
            }),
    }
}

/// The values of a `pipeline_runs` INSERT, in column order.
fn run_values(row: &RunRecord) -> String {
    let text = |cols: &[&str]| {
        cols.iter()
            .map(|c| literal(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let numbers = row
        .stats
        .counters()
        .map(|n| n.min(i64::MAX as u64).to_string())
        .join(", ");
    let tail = row.text_tail();
    let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
    format!("({}, {numbers}, {})", text(&row.text_head()), text(&tail))
}

/// `DELETE` + `INSERT` of a run record into `runs` (the qualified
/// `pipeline_runs`), for a transaction: runs are never streamed, so DML may
/// replace them at once.
pub(super) fn record_sql(runs: &str, row: &RunRecord) -> String {
    format!(
        "DELETE FROM {runs} WHERE run_id = {id};\nINSERT INTO {runs} ({RUN_COLUMNS}) VALUES {values};\n",
        id = literal(&row.run_id),
        values = run_values(row)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RunFailure, RunStart};
    use quarry_core::ErrorCategory;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(literal("it's a\\b"), r"'it\'s a\\b'");
        assert_eq!(literal("a\nb\u{1}"), r"'a\nb\u0001'");
        assert_eq!(
            partition_literal(Table::Trades, "2024-01-05").unwrap(),
            "DATE '2024-01-05'"
        );
        assert!(partition_literal(Table::AggTradesWeekly, "2024-01-05' OR 1=1").is_err());
        assert_eq!(
            partition_literal(Table::TradesRejected, "a'b.csv").unwrap(),
            r"'a\'b.csv'"
        );
    }

    #[test]
    fn run_records_become_escaped_values() {
        let mut row = RunRecord::begun(RunStart {
            run_id: "r1".into(),
            source: "s'rc".into(),
            options_json: "{}".into(),
            owner_json: String::new(),
        });
        row.failed(RunFailure {
            run_id: "r1".into(),
            category: ErrorCategory::Input,
            message: "line\nbreak".into(),
            stats: crate::RunStats {
                rows_in: 7,
                ..Default::default()
            },
            quality_json: String::new(),
        });
        let values = run_values(&row);
        assert!(values.starts_with("('r1', 's\\'rc', 'failed'"), "{values}");
        assert!(values.contains(r"'line\nbreak'"), "{values}");
        assert!(values.contains(", 7, 0,"), "{values}");
    }
}
