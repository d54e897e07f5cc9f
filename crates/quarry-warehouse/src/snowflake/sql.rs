//! Snowflake SQL Quarry writes: the tables' columns and DDL, literals, the
//! `pipeline_runs` rows, the selects that read values back as text, and the
//! weekly aggregate folded from `trades`.

use quarry_core::Table;
use quarry_core::decimal::{PNL_SCALE, SCALE};

use crate::RunRecord;

/// Column definitions of the tables (the staging tables share them).
pub(super) fn columns(table: Table) -> &'static str {
    match table {
        Table::Trades => {
            "timestamp TIMESTAMP_NTZ(9) NOT NULL, user_id VARCHAR NOT NULL,
             client_type VARCHAR NOT NULL, symbol VARCHAR NOT NULL, side VARCHAR NOT NULL,
             quantity NUMBER(18, 8) NOT NULL, price NUMBER(18, 8) NOT NULL,
             trade_date DATE NOT NULL, run_id VARCHAR NOT NULL"
        }
        Table::TradesRejected => {
            "timestamp VARCHAR, user_id VARCHAR, client_type VARCHAR, symbol VARCHAR,
             side VARCHAR, quantity VARCHAR, price VARCHAR, reason VARCHAR NOT NULL,
             source_file VARCHAR NOT NULL, source_row NUMBER(20, 0) NOT NULL,
             run_id VARCHAR NOT NULL"
        }
        Table::AggTradesWeekly => {
            "week_start_date DATE NOT NULL, client_type VARCHAR NOT NULL,
             user_id VARCHAR NOT NULL, symbol VARCHAR NOT NULL,
             total_volume NUMBER(38, 8) NOT NULL, total_pnl NUMBER(38, 16) NOT NULL,
             trade_count NUMBER(19, 0) NOT NULL, run_id VARCHAR NOT NULL"
        }
    }
}

/// `loaded_days`: the days the warehouse holds (crate::weeks), a week is
/// recomputed from them.
pub(super) fn loaded_days_sql(qualified: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified}.loaded_days (
             trade_date DATE NOT NULL, week_start_date DATE NOT NULL,
             raw_trades BOOLEAN NOT NULL, run_id VARCHAR NOT NULL
         ) CLUSTER BY (week_start_date)"
    )
}

/// The Monday of a DATE expression's week, whatever the session's
/// WEEK_START (DAYOFWEEKISO counts from Monday = 1). The cast changes
/// nothing on Snowflake; the stand-in, fakesnow, returns a timestamp.
pub(super) fn week_of(date: &str) -> String {
    format!("CAST(DATEADD(day, 1 - DAYOFWEEKISO({date}), {date}) AS DATE)")
}

/// Fills an empty `loaded_days` from what an older Quarry's schema holds:
/// every day of `trades` (with raw trades), and the Monday of every week of
/// `agg_trades_weekly` without such a day (loaded without raw trades).
/// Inserts nothing once `loaded_days` holds a row.
pub(super) fn backfill_days_sql(qualified: &str) -> String {
    let week = week_of("trade_date");
    format!(
        "INSERT INTO {qualified}.loaded_days (trade_date, week_start_date, raw_trades, run_id)
         SELECT day, week, raw_trades, 'backfill' FROM (
             SELECT trade_date AS day, {week} AS week, TRUE AS raw_trades
             FROM {qualified}.trades GROUP BY trade_date
             UNION ALL
             SELECT week_start_date, week_start_date, FALSE
             FROM {qualified}.agg_trades_weekly
             WHERE week_start_date NOT IN (SELECT {week} FROM {qualified}.trades GROUP BY 1)
             GROUP BY week_start_date
         ) AS found
         WHERE NOT EXISTS (SELECT 1 FROM {qualified}.loaded_days)"
    )
}

/// The exact weekly aggregate of the `trades` of `days` (a list of date
/// literals) into `agg`, per week, client type, user and symbol, the rows
/// marked with `run_id` (a literal).
///
/// quantity · price has 16 decimal places and up to 21 integer digits.
/// Snowflake gives a product the scale min(s1 + s2, max(s1, s2, 12)): two
/// scales of 8 would round it to 12 places. DuckDB (under the stand-in,
/// fakesnow) gives it s1 + s2, in 18 digits if both factors fit 18, else
/// in 38: a factor of scale 16 with another of scale 8 leaves 14 integer
/// digits. Both give (quantity · 10^-8, NUMBER(18, 16)) · (price · 10^8,
/// NUMBER(19, 0)) scale 16 and room for 21 integer digits, and every step
/// to those factors is exact and within 38 digits on both.
pub(super) fn fold_sql(agg: &str, trades: &str, days: &str, run_id: &str) -> String {
    let amount = "CAST(CAST(quantity AS NUMBER(26, 16)) * 0.00000001 AS NUMBER(18, 16)) \
                  * CAST(CAST(price AS NUMBER(19, 8)) * 100000000 AS NUMBER(19, 0))";
    let pnl = format!("CASE side WHEN 'sell' THEN {amount} ELSE -({amount}) END");
    format!(
        "INSERT INTO {agg} ({cols})
         SELECT {week}, client_type, user_id, symbol, {volume}, {pnl}, COUNT(*), {run_id}
         FROM {trades} WHERE trade_date IN ({days})
         GROUP BY 1, 2, 3, 4",
        cols = column_names(Table::AggTradesWeekly),
        week = week_of("trade_date"),
        volume = exact_sum("quantity", SCALE),
        pnl = exact_sum(&pnl, PNL_SCALE),
    )
}

/// Column names in the order of `columns`.
pub(super) fn column_names(table: Table) -> &'static str {
    match table {
        Table::Trades => {
            "timestamp, user_id, client_type, symbol, side, quantity, price, trade_date, run_id"
        }
        Table::TradesRejected => {
            "timestamp, user_id, client_type, symbol, side, quantity, price, reason, source_file, source_row, run_id"
        }
        Table::AggTradesWeekly => {
            "week_start_date, client_type, user_id, symbol, total_volume, total_pnl, trade_count, run_id"
        }
    }
}

/// Clustering key: the DATE partition column (the quarantine has none).
pub(super) fn cluster(table: Table) -> &'static str {
    match table {
        Table::Trades => " CLUSTER BY (trade_date)",
        Table::AggTradesWeekly => " CLUSTER BY (week_start_date)",
        Table::TradesRejected => "",
    }
}

pub(super) const RUN_COLUMNS: [&str; 23] = [
    "run_id",
    "source",
    "status",
    "started_at",
    "finished_at",
    "rows_in",
    "rows_valid",
    "rows_rejected",
    "rows_duplicate",
    "agg_rows",
    "plan_ms",
    "extract_ms",
    "transform_ms",
    "load_ms",
    "commit_ms",
    "total_ms",
    "rows_committed",
    "error_category",
    "error_message",
    "quality",
    "options",
    "owner",
    "updated_at",
];

/// Positions of the counters (NUMBER) in `RUN_COLUMNS`; the rest is text.
pub(super) const RUN_COUNTERS: std::ops::Range<usize> = 5..16;

pub(super) fn runs_table_sql(qualified: &str) -> String {
    let cols: Vec<String> = RUN_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = if RUN_COUNTERS.contains(&i) {
                "NUMBER(20, 0)"
            } else {
                "VARCHAR"
            };
            format!("{c} {ty}")
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified}.pipeline_runs ({})",
        cols.join(", ")
    )
}

/// Escapes a string literal for Snowflake SQL ('…'; backslash is an escape
/// character there).
pub(super) fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            '\0' => out.push_str("\\0"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Reads `YYYY-MM-DD HH:MM:SS[.fffffffff]` (UTC) back into nanoseconds.
pub(super) fn parse_timestamp(s: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()?;
    t.and_utc().timestamp_nanos_opt()
}

/// Values per `IN (…)` list of the commit's DELETEs.
pub(super) const IN_CHUNK: usize = 1_000;

/// The values of a `pipeline_runs` INSERT in `RUN_COLUMNS` order.
fn run_values(row: &RunRecord) -> String {
    let mut v: Vec<String> = row.text_head().iter().map(|s| literal(s)).collect();
    v.extend(row.stats.counters().iter().map(u64::to_string));
    v.extend(row.text_tail().iter().map(|s| literal(s)));
    v.push(literal(&chrono::Utc::now().to_rfc3339()));
    v.join(", ")
}

/// The statements that replace a run's record in `qualified.pipeline_runs`.
pub(super) fn record_sql(qualified: &str, row: &RunRecord) -> [String; 2] {
    [
        format!(
            "DELETE FROM {qualified}.pipeline_runs WHERE run_id = {}",
            literal(&row.run_id)
        ),
        format!(
            "INSERT INTO {qualified}.pipeline_runs ({}) VALUES ({})",
            RUN_COLUMNS.join(", "),
            run_values(row)
        ),
    ]
}

/// `SUM` of a decimal column or expression, cast to scale `scale` first.
/// The cast changes no value on Snowflake; the stand-in, fakesnow, sums a
/// bare column as DOUBLE and would drift.
pub(super) fn exact_sum(column: &str, scale: u32) -> String {
    format!("SUM(CAST({column} AS NUMBER(38, {scale})))")
}

/// The partition column of `table` as text.
pub(super) fn partition_text(table: Table) -> String {
    match table {
        Table::TradesRejected => "source_file".into(),
        t => format!("TO_VARCHAR({}, 'YYYY-MM-DD')", t.partition_column()),
    }
}

pub(super) fn runs_select(qualified: &str, condition: &str, limit: Option<u32>) -> String {
    let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let cols: Vec<String> = RUN_COLUMNS[..22]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if RUN_COUNTERS.contains(&i) {
                format!("TO_VARCHAR({c})")
            } else {
                (*c).to_string()
            }
        })
        .collect();
    format!(
        "SELECT {} FROM {qualified}.pipeline_runs WHERE {condition} ORDER BY started_at DESC, run_id DESC {limit}",
        cols.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(literal(r"it's a\b"), r"'it''s a\\b'");
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05.123456789"),
            Some(1_704_164_645_123_456_789)
        );
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05"),
            Some(1_704_164_645_000_000_000)
        );
    }

    #[test]
    fn run_table_types() {
        let sql = runs_table_sql("db.s");
        assert!(sql.contains("rows_in NUMBER(20, 0)"), "{sql}");
        assert!(sql.contains("total_ms NUMBER(20, 0)"), "{sql}");
        assert!(sql.contains("rows_committed VARCHAR"), "{sql}");
        assert!(sql.contains("run_id VARCHAR"), "{sql}");
        // Every column but the write time is read back, the owner included.
        assert!(runs_select("db.s", "", None).contains(", owner FROM"));
    }
}
