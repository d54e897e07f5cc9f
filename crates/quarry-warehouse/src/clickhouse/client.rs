//! Talking to the server: the HTTP client, statements with retries, the
//! error classes, names and literals, the tables' DDL.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use clickhouse::{Client, RowWrite};
use quarry_core::config::ClickHouseConfig;
use quarry_core::dates::week_start;
use quarry_core::{Error, Result, Table};

use super::rows::LoadedDayRow;
use crate::retry::{RetryLogic, RetryPolicy};

/// ClickHouse exception codes worth another attempt: timeouts, network,
/// overload, too many parts, memory limit, read-only replica.
const TRANSIENT_CODES: [u32; 9] = [159, 164, 202, 209, 210, 241, 242, 252, 425];

fn server_code(message: &str) -> Option<u32> {
    let rest = message.split("Code: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Network errors, timeouts and the server's overload codes are transient.
pub(super) struct Transient;

impl RetryLogic for Transient {
    type Error = clickhouse::error::Error;

    fn is_retriable(&self, e: &clickhouse::error::Error) -> bool {
        use clickhouse::error::Error as E;
        match e {
            E::Network(_) | E::TimedOut => true,
            E::BadResponse(m) => server_code(m).is_some_and(|c| TRANSIENT_CODES.contains(&c)),
            _ => false,
        }
    }
}

/// Escapes a string literal for ClickHouse SQL ('…').
pub(super) fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

pub(super) fn tables_sql(db: &str) -> [String; 5] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.trades (
                timestamp DateTime('UTC'), timestamp_nanos UInt32, user_id String,
                client_type String, symbol String, side String,
                quantity Decimal(18, 8), price Decimal(18, 8), trade_date Date, run_id String
            ) ENGINE = MergeTree PARTITION BY trade_date ORDER BY (trade_date, user_id, timestamp)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.trades_rejected (
                timestamp Nullable(String), user_id Nullable(String), client_type Nullable(String),
                symbol Nullable(String), side Nullable(String), quantity Nullable(String),
                price Nullable(String), reason String, source_file String, source_row UInt64,
                run_id String
            ) ENGINE = MergeTree PARTITION BY source_file ORDER BY (source_file, source_row)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.agg_trades_weekly (
                week_start_date Date, client_type String, user_id String, symbol String,
                total_volume Decimal(38, 8), total_pnl Decimal(38, 16), trade_count Int64
            ) ENGINE = MergeTree PARTITION BY week_start_date
              ORDER BY (week_start_date, client_type, user_id, symbol)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.pipeline_runs (
                run_id String, version UInt64, source String, status String,
                started_at String, finished_at String,
                rows_in UInt64, rows_valid UInt64, rows_rejected UInt64, rows_duplicate UInt64,
                agg_rows UInt64, plan_ms UInt64, extract_ms UInt64, transform_ms UInt64,
                load_ms UInt64, commit_ms UInt64, total_ms UInt64,
                rows_committed String, error_category String, error_message String,
                quality String, options String, owner String
            ) ENGINE = ReplacingMergeTree(version) ORDER BY run_id"
        ),
        // Upserted by inserting a higher version, read with FINAL: a reader
        // sees a day's old row or its new one, never neither.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.loaded_days (
                trade_date Date, week_start_date Date, raw_trades UInt8, run_id String,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version) ORDER BY trade_date"
        ),
    ]
}

/// A server, its database, and how to reach it.
pub(super) struct ClickHouse {
    /// Bound to the database: inserts name tables without it.
    pub client: Client,
    /// Without a database, to create it.
    pub admin: Client,
    pub db: String,
    url: String,
    policy: RetryPolicy,
    /// The last `pipeline_runs` row version written: versions only grow, so
    /// the latest write of a run wins.
    last_version: AtomicU64,
}

impl ClickHouse {
    pub fn open(config: &ClickHouseConfig) -> Self {
        let mut client = Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            // Servers before 20.x lack the metadata the validation reads.
            .with_validation(false);
        if let Ok(password) = std::env::var(&config.password_env)
            && !password.is_empty()
        {
            client = client.with_password(password);
        }
        Self {
            admin: client.clone(),
            client: client.with_database(&config.database),
            db: config.database.clone(),
            url: config.url.clone(),
            policy: RetryPolicy::new(config.max_attempts),
            last_version: AtomicU64::new(0),
        }
    }

    pub fn err(&self, what: &str, e: clickhouse::error::Error) -> Error {
        Error::backend(
            format!("clickhouse at {}: {what}: {e}", self.url),
            Transient.is_retriable(&e),
        )
        .with_source(e)
    }

    /// Runs `op` again on transient errors (the retry policy); permanent
    /// errors fail at once.
    pub async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = clickhouse::error::Result<T>>,
    {
        self.policy
            .run(&Transient, "clickhouse", what, op)
            .await
            .map_err(|e| self.err(what, e))
    }

    pub async fn execute(&self, what: &str, sql: &str) -> Result<()> {
        self.retry(what, || self.client.query(sql).execute()).await
    }

    /// Inserts `rows` in one request (RowBinary), retried whole on transient
    /// errors: a retry that duplicated rows is caught by the read-back.
    pub async fn insert_rows<T: RowWrite>(&self, table: &str, rows: &[T::Value<'_>]) -> Result<()> {
        self.retry(&format!("insert into {table}"), || async {
            let mut insert = self.client.insert::<T>(table).await?;
            for r in rows {
                insert.write(r).await?;
            }
            insert.end().await
        })
        .await
    }

    pub async fn count(&self, what: &str, sql: &str) -> Result<u64> {
        self.retry(what, || self.client.query(sql).fetch_one::<u64>())
            .await
    }

    /// The next `pipeline_runs` row version: microseconds since the epoch,
    /// and always above the last one written here.
    pub fn next_version(&self) -> u64 {
        let now = chrono::Utc::now().timestamp_micros() as u64;
        let mut last = self.last_version.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self
                .last_version
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// A table of the database, qualified for SQL.
    pub fn table(&self, table: Table) -> String {
        format!("{}.{table}", self.db)
    }

    /// The partitioned staging table of `table` in a run.
    pub fn stage(&self, table: Table, tag: &str) -> String {
        format!("{}.{table}_stage_{tag}", self.db)
    }

    /// Where a run's batches land first: an unpartitioned Log table, so a
    /// batch is one part whatever the number of days it spans. (Inserting
    /// batches straight into the partitioned staging table made a part per
    /// day per batch, and the server spent the run merging them.)
    pub fn flat(&self, table: Table, tag: &str) -> String {
        format!("{}.{table}_flat_{tag}", self.db)
    }

    /// Creates the database and the tables if missing, and adds the columns
    /// later versions brought to an older `pipeline_runs`.
    pub async fn create_tables(&self) -> Result<()> {
        let create = format!("CREATE DATABASE IF NOT EXISTS {}", self.db);
        self.retry("create database", || self.admin.query(&create).execute())
            .await?;
        for sql in tables_sql(&self.db) {
            self.execute("create tables", &sql).await?;
        }
        // Servers before 19.x have no ADD COLUMN IF NOT EXISTS: look first.
        let has_owner = self
            .count(
                "inspect pipeline_runs",
                &format!(
                    "SELECT count() FROM system.columns WHERE database = {} AND table = 'pipeline_runs' AND name = 'owner'",
                    literal(&self.db)
                ),
            )
            .await?;
        if has_owner == 0 {
            self.execute(
                "add pipeline_runs.owner",
                &format!(
                    "ALTER TABLE {} ADD COLUMN owner String DEFAULT ''",
                    self.table_name("pipeline_runs")
                ),
            )
            .await?;
        }
        self.backfill_loaded_days().await
    }

    /// A warehouse from before `loaded_days` records the days it holds, once:
    /// every day of `trades` (with raw trades), and the Monday of every week
    /// of `agg_trades_weekly` without such a day (without). One insert, so a
    /// crash leaves it empty and the next start does it again; two processes
    /// doing it at once write the same rows, which FINAL folds.
    async fn backfill_loaded_days(&self) -> Result<()> {
        let loaded = self.table_name("loaded_days");
        if self
            .count(
                "inspect loaded_days",
                &format!("SELECT count() FROM {loaded}"),
            )
            .await?
            > 0
        {
            return Ok(());
        }
        let distinct = |column: &str, table: Table| {
            format!("SELECT DISTINCT {column} FROM {}", self.table(table))
        };
        let (days_sql, weeks_sql) = (
            distinct("trade_date", Table::Trades),
            distinct("week_start_date", Table::AggTradesWeekly),
        );
        let days = self
            .retry("backfill loaded_days", || {
                self.client.query(&days_sql).fetch_all::<u16>()
            })
            .await?;
        let weeks = self
            .retry("backfill loaded_days", || {
                self.client.query(&weeks_sql).fetch_all::<u16>()
            })
            .await?;
        let days: BTreeSet<i32> = days.into_iter().map(i32::from).collect();
        let day_weeks: BTreeSet<i32> = days.iter().map(|d| week_start(*d)).collect();
        let mondays: BTreeSet<i32> = weeks
            .into_iter()
            .map(|w| week_start(i32::from(w)))
            .filter(|w| !day_weeks.contains(w))
            .collect();
        if days.is_empty() && mondays.is_empty() {
            return Ok(());
        }
        let version = self.next_version();
        let rows = days
            .iter()
            .map(|d| (*d, true))
            .chain(mondays.iter().map(|w| (*w, false)))
            .map(|(day, raw)| LoadedDayRow::new(day, raw, "backfill", version))
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(
            days = days.len(),
            weeks_without_days = mondays.len(),
            "clickhouse: recorded the days of a warehouse from before loaded_days"
        );
        self.insert_rows::<LoadedDayRow>("loaded_days", &rows).await
    }

    /// A table of the database by name, qualified for SQL.
    pub fn table_name(&self, name: &str) -> String {
        format!("{}.{name}", self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped_and_codes_classified() {
        assert_eq!(literal("it's a\\b"), r"'it\'s a\\b'");
        assert_eq!(
            server_code("Code: 60, e.displayText() = DB::Exception: Table x doesn't exist."),
            Some(60)
        );
        assert_eq!(server_code("no code here"), None);
        let bad = |m: &str| clickhouse::error::Error::BadResponse(m.into());
        assert!(!Transient.is_retriable(&bad(
            "Code: 53, e.displayText() = DB::Exception: Type mismatch"
        )));
        assert!(Transient.is_retriable(&bad(
            "Code: 252, e.displayText() = DB::Exception: Too many parts"
        )));
        assert!(Transient.is_retriable(&clickhouse::error::Error::TimedOut));
    }
}
