//! The ClickHouse backend, over the HTTP interface (`clickhouse` crate,
//! RowBinary, which old and new servers accept).
//!
//! Tables are MergeTree, partitioned by their partition column (`trade_date`,
//! `week_start_date`: DATE; `source_file` for the quarantine); a run is
//! staged as `staging.rs` describes, through the one run lifecycle of
//! `crate::staging`. Amounts are Decimal(18,8) / Decimal(38,8) /
//! Decimal(38,16): exact. `timestamp` is DateTime('UTC') plus
//! `timestamp_nanos` (UInt32), since servers before 20.1 have no DateTime64.
//! Runs are rows of a ReplacingMergeTree keyed by run_id (latest version
//! wins); so are the days the warehouse holds (`loaded_days`, keyed by day;
//! `raw_trades` is UInt8, since servers before 21.12 have no Bool). A
//! warehouse from before `loaded_days` has it filled once from `trades` and
//! `agg_trades_weekly` when the tables are created.
//!
//! - `client.rs`: the connection, statements with retries, error classes,
//!   literals and DDL;
//! - `rows.rs`: the tables' rows to insert and read back;
//! - `staging.rs`: the staging primitives and the partition swap.

mod client;
mod rows;
mod staging;

use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use quarry_core::config::ClickHouseConfig;
use quarry_core::decimal::{self, PNL_SCALE};
use quarry_core::{Error, Result, Table};

use self::client::{ClickHouse, literal};
use self::rows::{AggRow, RejectedRow, RunRow, TradeOut, push_agg, push_rejected, push_trade};
use crate::arrow_rows::PartitionBuilder;
use crate::staging::{StagedRuns, StagedWarehouse};
use crate::{PartitionInfo, RunRecord, TopUser, TopUsersQuery, Warehouse, WeeklyTotal};

/// Opens the ClickHouse backend (it connects on first use).
pub fn open(config: &ClickHouseConfig) -> Arc<dyn Warehouse> {
    Arc::new(StagedRuns::new(ClickHouse::open(config)))
}

/// Exact decimal text from a sum ClickHouse returned as text.
fn exact(text: &str) -> Result<String> {
    decimal::parse_scaled(text.as_bytes(), PNL_SCALE)
        .map(|v| decimal::format_scaled(v, PNL_SCALE))
        .map_err(|e| Error::internal(format!("clickhouse returned {text:?}: {e:?}")))
}

#[async_trait]
impl StagedWarehouse for ClickHouse {
    async fn runs_where(
        &self,
        what: &str,
        condition: &str,
        limit: Option<u32>,
    ) -> Result<Vec<RunRecord>> {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE {condition} ORDER BY started_at DESC, run_id DESC{limit}",
            self.table_name("pipeline_runs")
        );
        let rows = self
            .retry(what, || self.client.query(&sql).fetch_all::<RunRow>())
            .await?;
        rows.into_iter().map(RunRow::record).collect()
    }

    async fn check_and_create(&self) -> Result<()> {
        // One attempt: a wrong URL or credentials should say so at once.
        self.admin
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .map_err(|e| self.err("cannot connect", e))?;
        self.create_tables().await
    }

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>> {
        let column = query.metric.column();
        let sql = format!(
            "SELECT user_id, toString(sum({column})) FROM {}
             WHERE client_type = {} GROUP BY user_id ORDER BY sum({column}) DESC, user_id ASC LIMIT {}",
            self.table(Table::AggTradesWeekly),
            literal(&query.client_type),
            query.limit
        );
        let rows = self
            .retry("top users", || {
                self.client.query(&sql).fetch_all::<(String, String)>()
            })
            .await?;
        rows.into_iter()
            .map(|(user_id, total)| {
                Ok(TopUser {
                    user_id,
                    value: exact(&total)?,
                })
            })
            .collect()
    }

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>> {
        // Ordered by name: older servers read `ORDER BY 1` as a constant.
        let sql = format!(
            "SELECT toString(week_start_date), client_type, toString(sum(total_volume)),
                    toString(sum(total_pnl)), toUInt64(sum(trade_count))
             FROM {} GROUP BY week_start_date, client_type
             ORDER BY week_start_date, client_type",
            self.table(Table::AggTradesWeekly)
        );
        let rows = self
            .retry("weekly totals", || {
                self.client
                    .query(&sql)
                    .fetch_all::<(String, String, String, String, u64)>()
            })
            .await?;
        rows.into_iter()
            .map(|(week, ct, vol, pnl, n)| {
                Ok(WeeklyTotal {
                    week_start_date: week,
                    client_type: ct,
                    total_volume: exact(&vol)?,
                    total_pnl: exact(&pnl)?,
                    trade_count: n,
                })
            })
            .collect()
    }

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>> {
        let col = table.partition_column();
        let sql = format!(
            "SELECT toString({col}), count() FROM {} GROUP BY {col} ORDER BY {col}",
            self.table(table)
        );
        let rows = self
            .retry("list partitions", || {
                self.client.query(&sql).fetch_all::<(String, u64)>()
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(partition, rows)| PartitionInfo { partition, rows })
            .collect())
    }

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        let filter = format!(
            "FROM {} WHERE {} = {}",
            self.table(table),
            table.partition_column(),
            literal(partition)
        );
        let mut out = PartitionBuilder::new(table);
        match table {
            Table::Trades => {
                let sql =
                    format!("SELECT ?fields {filter} ORDER BY timestamp, timestamp_nanos, user_id");
                let rows = self
                    .retry("read partition", || {
                        self.client.query(&sql).fetch_all::<TradeOut>()
                    })
                    .await?;
                rows.iter().for_each(|r| push_trade(&mut out, r));
            }
            Table::TradesRejected => {
                let sql = format!("SELECT ?fields {filter} ORDER BY source_row");
                let rows = self
                    .retry("read partition", || {
                        self.client.query(&sql).fetch_all::<RejectedRow>()
                    })
                    .await?;
                rows.iter().for_each(|r| push_rejected(&mut out, r));
            }
            Table::AggTradesWeekly => {
                let sql = format!("SELECT ?fields {filter} ORDER BY client_type, user_id, symbol");
                let rows = self
                    .retry("read partition", || {
                        self.client.query(&sql).fetch_all::<AggRow>()
                    })
                    .await?;
                rows.iter().for_each(|r| push_agg(&mut out, r));
            }
        }
        Ok(out.finish()?.into_iter().collect())
    }

    async fn delete_partition(&self, table: Table, partition: &str) -> Result<u64> {
        let rows = self
            .count(
                "count partition rows",
                &format!(
                    "SELECT count() FROM {} WHERE {} = {}",
                    self.table(table),
                    table.partition_column(),
                    literal(partition)
                ),
            )
            .await?;
        self.execute(
            &format!("drop partition {partition} of {table}"),
            &format!(
                "ALTER TABLE {} DROP PARTITION {}",
                self.table(table),
                literal(partition)
            ),
        )
        .await?;
        Ok(rows)
    }
}
