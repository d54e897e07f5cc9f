//! The Snowflake backend, over Snowflake's REST API (`snowflake-api` crate:
//! password or key-pair login, one session, statements one at a time).
//!
//! Tables are created if missing in `<database>.<schema>` (both created too):
//! amounts are NUMBER(18,8) / NUMBER(38,8) / NUMBER(38,16) (exact), dates
//! DATE, `timestamp` TIMESTAMP_NTZ(9) holding UTC, and the dated tables are
//! clustered on their partition column. A run's batches are written into
//! Parquet files of `stage_file_kib` each, `PUT` to the table stage of a
//! per-run transient staging table (`<table>_stage_<run>`, see `stage.rs`
//! for the upload); commit runs `COPY INTO` each staging table from its
//! stage (Snowflake loads the files in parallel, skips files it already
//! loaded and purges them), reads back what each staging table holds, then
//! runs ONE transaction that deletes every covered partition, copies the
//! staged rows in and writes the run's record, and drops the staging
//! tables (and with them their stages) once the COMMIT is confirmed. Abort
//! only drops them. Statements run in the session of the warehouse object;
//! PUT runs in the uploader's own session.
//!
//! Query results come back as Arrow batches of the crate's own arrow
//! version; every value is selected as text (`TO_VARCHAR`) and read by value
//! into this workspace's arrow types, so the types Snowflake picks for
//! NUMBER or TIMESTAMP results never matter and decimals stay exact.
//!
//! - `client.rs`: the HTTP client, statements and transactions, error
//!   classes; `sql.rs`: DDL, literals, run records; `files.rs`: the staged
//!   Parquet files; `stage.rs` and `crypto.rs`: the client side of PUT;
//!   `staging.rs`: the staging primitives and the commit transaction (the
//!   run lifecycle itself is `crate::staging`).

mod client;
mod crypto;
mod files;
mod sql;
mod stage;
mod staging;

use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use quarry_core::config::SnowflakeConfig;
use quarry_core::decimal::{self, PNL_SCALE, SCALE};
use quarry_core::{Error, Result, Table};

use self::client::Snowflake;
use self::sql::{exact_sum, literal, parse_timestamp, partition_text, runs_select};
use crate::staging::{StagedRuns, StagedWarehouse};
use crate::text_rows;
use crate::{PartitionInfo, RunRecord, TopUser, TopUsersQuery, Warehouse, WeeklyTotal};

/// Opens the backend; it logs in on first use with the configured
/// credentials (password from the environment variable named in config, or
/// the private key file).
pub fn open(config: &SnowflakeConfig) -> Result<Arc<dyn Warehouse>> {
    Ok(Arc::new(StagedRuns::new(Snowflake::open(config)?)))
}

fn bad_value(what: &str, v: &Option<String>) -> Error {
    Error::internal(format!("snowflake returned {v:?} for {what}"))
}

#[async_trait]
impl StagedWarehouse for Snowflake {
    async fn runs_where(
        &self,
        what: &str,
        condition: &str,
        limit: Option<u32>,
    ) -> Result<Vec<RunRecord>> {
        let rows = self
            .read(what, &runs_select(&self.qualified, condition, limit))
            .await?;
        rows.iter().map(|r| RunRecord::from_cells(r)).collect()
    }

    async fn check_and_create(&self) -> Result<()> {
        self.connect_and_create().await
    }

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>> {
        let column = query.metric.column();
        let sum = exact_sum(column, PNL_SCALE);
        let sql = format!(
            "SELECT user_id, TO_VARCHAR({sum}) FROM {} WHERE client_type = {}
             GROUP BY user_id ORDER BY {sum} DESC, user_id ASC LIMIT {}",
            self.table(Table::AggTradesWeekly),
            literal(&query.client_type),
            query.limit
        );
        let rows = self.read("top users", &sql).await?;
        rows.into_iter()
            .map(|r| {
                let total = r.get(1).cloned().flatten().unwrap_or_default();
                let v = decimal::parse_scaled(total.as_bytes(), PNL_SCALE)
                    .map_err(|e| Error::internal(format!("snowflake returned {total:?}: {e:?}")))?;
                Ok(TopUser {
                    user_id: r.first().cloned().flatten().unwrap_or_default(),
                    value: decimal::format_scaled(v, PNL_SCALE),
                })
            })
            .collect()
    }

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>> {
        let sql = format!(
            "SELECT TO_VARCHAR(week_start_date, 'YYYY-MM-DD'), client_type,
                    TO_VARCHAR({}), TO_VARCHAR({}), TO_VARCHAR({})
             FROM {} GROUP BY week_start_date, client_type
             ORDER BY week_start_date, client_type",
            exact_sum("total_volume", SCALE),
            exact_sum("total_pnl", PNL_SCALE),
            exact_sum("trade_count", 0),
            self.table(Table::AggTradesWeekly)
        );
        let rows = self.read("weekly totals", &sql).await?;
        let norm = |t: &Option<String>| {
            let text = t.as_deref().unwrap_or_default();
            decimal::parse_scaled(text.as_bytes(), PNL_SCALE)
                .map(|v| decimal::format_scaled(v, PNL_SCALE))
                .map_err(|_| bad_value("a weekly total", t))
        };
        rows.iter()
            .map(|r| {
                Ok(WeeklyTotal {
                    week_start_date: r[0].clone().unwrap_or_default(),
                    client_type: r[1].clone().unwrap_or_default(),
                    total_volume: norm(&r[2])?,
                    total_pnl: norm(&r[3])?,
                    trade_count: r[4]
                        .as_deref()
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| bad_value("a trade count", &r[4]))?,
                })
            })
            .collect()
    }

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>> {
        let col = table.partition_column();
        let sql = format!(
            "SELECT {}, TO_VARCHAR(COUNT(*)) FROM {} GROUP BY {col} ORDER BY {col}",
            partition_text(table),
            self.table(table)
        );
        let rows = self.read("list partitions", &sql).await?;
        rows.into_iter()
            .map(|r| {
                let rows = r[1]
                    .as_deref()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| bad_value("a row count", &r[1]))?;
                Ok(PartitionInfo {
                    partition: r[0].clone().unwrap_or_default(),
                    rows,
                })
            })
            .collect()
    }

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        let filter = format!(
            "FROM {} WHERE {} = {}",
            self.table(table),
            table.partition_column(),
            literal(partition)
        );
        let dec = |c: &str, p: u32, s: u32| format!("TO_VARCHAR(CAST({c} AS NUMBER({p}, {s})))");
        let date = |c: &str| format!("TO_VARCHAR({c}, 'YYYY-MM-DD')");
        let sql = match table {
            Table::Trades => format!(
                "SELECT TO_VARCHAR(timestamp, 'YYYY-MM-DD HH24:MI:SS.FF9'), user_id, client_type,
                        symbol, side, {}, {}, {} {filter} ORDER BY timestamp, user_id",
                dec("quantity", 18, SCALE),
                dec("price", 18, SCALE),
                date("trade_date")
            ),
            Table::TradesRejected => format!(
                "SELECT timestamp, user_id, client_type, symbol, side, quantity, price, reason,
                        source_file, TO_VARCHAR(source_row) {filter} ORDER BY source_row"
            ),
            Table::AggTradesWeekly => format!(
                "SELECT {}, client_type, user_id, symbol, {}, {}, TO_VARCHAR(trade_count)
                 {filter} ORDER BY client_type, user_id, symbol",
                date("week_start_date"),
                dec("total_volume", 38, SCALE),
                dec("total_pnl", 38, PNL_SCALE)
            ),
        };
        let rows = self.read("read partition", &sql).await?;
        let timestamp = |c: &[Option<String>]| parse_timestamp(c.first()?.as_deref()?);
        text_rows::partition_batch(
            "snowflake",
            table,
            &rows,
            text_rows::Timestamp {
                cells: 1,
                parse: &timestamp,
            },
        )
    }

    async fn delete_partition(&self, table: Table, partition: &str) -> Result<u64> {
        let _t = self.tx.write().await;
        // One DELETE: atomic; Snowflake answers with the rows it deleted.
        let rows = self
            .exec_once(
                &format!("drop partition {partition} of {table}"),
                &format!(
                    "DELETE FROM {} WHERE {} = {}",
                    self.table(table),
                    table.partition_column(),
                    literal(partition)
                ),
            )
            .await?;
        let deleted = rows.first().and_then(|r| r.first().cloned().flatten());
        deleted
            .as_deref()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad_value("the rows deleted", &deleted))
    }
}
