//! The tables as SQLite holds them, the refusal of a database that is not
//! Quarry's, and `pipeline_runs` rows read back.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use quarry_core::{Error, ErrorCategory, Result, Table};
use rusqlite::Connection;

use crate::record::parse_status;
use crate::{RunRecord, RunStats};

pub(super) const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS trades (
    timestamp   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    client_type TEXT NOT NULL,
    symbol      TEXT NOT NULL,
    side        TEXT NOT NULL,
    quantity    REAL NOT NULL,
    price       REAL NOT NULL,
    trade_date  TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    -- exact values where the REAL cannot give them back (exact.rs)
    quantity_units INTEGER,
    price_units    INTEGER
);
CREATE TABLE IF NOT EXISTS trades_rejected (
    timestamp   TEXT,
    user_id     TEXT,
    client_type TEXT,
    symbol      TEXT,
    side        TEXT,
    quantity    TEXT,
    price       TEXT,
    reason      TEXT NOT NULL,
    source_file TEXT NOT NULL,
    source_row  INTEGER NOT NULL,
    run_id      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agg_trades_weekly (
    week_start_date TEXT NOT NULL,
    client_type     TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    total_volume    REAL NOT NULL,
    total_pnl       REAL NOT NULL,
    trade_count     INTEGER NOT NULL,
    -- exact decimal text past 15 significant digits (exact.rs)
    total_volume_exact TEXT,
    total_pnl_exact    TEXT
);
-- The days the warehouse holds (weeks.rs): a week is recomputed from them.
CREATE TABLE IF NOT EXISTS loaded_days (
    trade_date      TEXT PRIMARY KEY,
    week_start_date TEXT NOT NULL,
    raw_trades      INTEGER NOT NULL,
    run_id          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS loaded_days_by_week ON loaded_days (week_start_date);
CREATE TABLE IF NOT EXISTS pipeline_runs (
    run_id         TEXT PRIMARY KEY,
    source         TEXT NOT NULL,
    status         TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    finished_at    TEXT,
    rows_in        INTEGER,
    rows_valid     INTEGER,
    rows_rejected  INTEGER,
    rows_duplicate INTEGER,
    agg_rows       INTEGER,
    plan_ms        INTEGER,
    extract_ms     INTEGER,
    transform_ms   INTEGER,
    load_ms        INTEGER,
    commit_ms      INTEGER,
    total_ms       INTEGER,
    rows_committed TEXT,
    error_category TEXT,
    error_message  TEXT,
    quality        TEXT,
    options        TEXT,
    owner          TEXT
);
CREATE INDEX IF NOT EXISTS pipeline_runs_by_start ON pipeline_runs (started_at);
";

/// The index on each table's partition column: what commit deletes by.
pub(super) fn partition_index(table: Table) -> (String, String) {
    let name = format!("{table}_by_{}", table.partition_column());
    let sql = format!(
        "CREATE INDEX IF NOT EXISTS {name} ON {table} ({})",
        table.partition_column()
    );
    (name, sql)
}

pub(super) fn db_err(what: &str, e: rusqlite::Error) -> Error {
    // SQLITE_BUSY/LOCKED are worth a retry; everything else is permanent.
    let transient = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    Error::backend(format!("sqlite: {what}: {e}"), transient).with_source(e)
}

/// How long a statement waits for another connection's lock.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Columns added after the first release (table, column, type): added to
/// older databases when they are opened.
pub(super) const ADDED_COLUMNS: [(&str, &str, &str); 5] = [
    ("pipeline_runs", "owner", "TEXT"),
    ("trades", "quantity_units", "INTEGER"),
    ("trades", "price_units", "INTEGER"),
    ("agg_trades_weekly", "total_volume_exact", "TEXT"),
    ("agg_trades_weekly", "total_pnl_exact", "TEXT"),
];

/// What an older Quarry's database needs when it is opened.
#[derive(Debug, Default)]
pub(super) struct Upgrade {
    pub columns: Vec<(&'static str, &'static str, &'static str)>,
    /// `loaded_days` is new: filled from the days the tables hold.
    pub backfill_days: bool,
}

/// Fills a new `loaded_days` from what an older database holds: every day
/// of `trades` (with raw trades), and the Monday of every week of
/// `agg_trades_weekly` without such a day (loaded without raw trades).
pub(super) const BACKFILL_DAYS_SQL: &str = "
INSERT OR IGNORE INTO loaded_days (trade_date, week_start_date, raw_trades, run_id)
    SELECT DISTINCT trade_date,
           date(trade_date, '-' || ((CAST(strftime('%w', trade_date) AS INTEGER) + 6) % 7) || ' days'),
           1, 'backfill'
    FROM trades;
INSERT OR IGNORE INTO loaded_days (trade_date, week_start_date, raw_trades, run_id)
    SELECT DISTINCT week_start_date, week_start_date, 0, 'backfill'
    FROM agg_trades_weekly
    WHERE week_start_date NOT IN (SELECT week_start_date FROM loaded_days);
";

/// The columns of each table of `conn`, by table name (only tables that exist).
pub(super) fn table_columns(
    conn: &Connection,
) -> rusqlite::Result<HashMap<String, BTreeSet<String>>> {
    let mut out = HashMap::new();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for t in tables {
        let cols = conn
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{}')",
                t.replace('\'', "''")
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        out.insert(t, cols);
    }
    Ok(out)
}

/// Refuses a database whose tables of Quarry's names are not Quarry's,
/// before anything is written into it. Returns what an older Quarry's
/// database lacks.
pub(super) fn check_foreign(conn: &Connection, path: &Path) -> Result<Upgrade> {
    let existing = table_columns(conn).map_err(|e| {
        Error::config(format!(
            "{} is not a SQLite database Quarry can use: {e}",
            path.display()
        ))
    })?;
    let reference = Connection::open_in_memory()
        .and_then(|c| c.execute_batch(SCHEMA_SQL).map(|_| c))
        .and_then(|c| table_columns(&c))
        .map_err(|e| {
            Error::internal(format!("the SQLite schema does not load: {e}")).with_source(e)
        })?;
    let mut upgrade = Upgrade {
        backfill_days: !existing.contains_key("loaded_days"),
        ..Upgrade::default()
    };
    for (table, needed) in &reference {
        let Some(has) = existing.get(table) else {
            continue;
        };
        let mut missing: Vec<&String> = needed.difference(has).collect();
        missing.retain(|c| {
            let added = ADDED_COLUMNS
                .iter()
                .find(|(t, name, _)| t == table && *name == c.as_str());
            upgrade.columns.extend(added);
            added.is_none()
        });
        if !missing.is_empty() {
            return Err(Error::config(format!(
                "{} is not a Quarry warehouse: its table {table} lacks the column{} {}; nothing was changed (use another --sqlite file)",
                path.display(),
                if missing.len() > 1 { "s" } else { "" },
                missing
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(upgrade)
}

/// The columns of a `pipeline_runs` row as [`run_record`] reads them.
pub(super) const RUN_COLUMNS: &str = "run_id, source, status, started_at, COALESCE(finished_at, ''), \
     COALESCE(rows_in, 0), COALESCE(rows_valid, 0), COALESCE(rows_rejected, 0), COALESCE(rows_duplicate, 0), \
     COALESCE(agg_rows, 0), COALESCE(plan_ms, 0), COALESCE(extract_ms, 0), COALESCE(transform_ms, 0), \
     COALESCE(load_ms, 0), COALESCE(commit_ms, 0), COALESCE(total_ms, 0), COALESCE(rows_committed, '{}'), \
     COALESCE(error_category, ''), COALESCE(error_message, ''), COALESCE(quality, ''), COALESCE(options, ''), \
     COALESCE(owner, '')";

pub(super) fn run_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let mut counters = [0u64; 11];
    for (k, slot) in counters.iter_mut().enumerate() {
        *slot = r.get::<_, i64>(5 + k)? as u64;
    }
    let status: String = r.get(2)?;
    let committed: String = r.get(16)?;
    let category: String = r.get(17)?;
    Ok(RunRecord {
        run_id: r.get(0)?,
        source: r.get(1)?,
        status: parse_status(&status).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?,
        started_at: r.get(3)?,
        finished_at: r.get(4)?,
        stats: RunStats::from_counters(counters),
        rows_committed: serde_json::from_str(&committed).unwrap_or_default(),
        error_category: ErrorCategory::parse(&category),
        error_message: r.get(18)?,
        quality_json: r.get(19)?,
        options_json: r.get(20)?,
        owner_json: r.get(21)?,
    })
}
