//! The BigQuery backend, over the REST API (`gcp-bigquery-client` for
//! queries and jobs, its authenticator trait for credentials).
//!
//! Tables live in one dataset: `trades` (DAY-partitioned on `trade_date`),
//! `agg_trades_weekly` (DAY-partitioned on `week_start_date`: one partition
//! per Monday), `trades_rejected` (clustered by `source_file`) and
//! `pipeline_runs`. A run's batches go into per-run staging tables
//! (`<table>_stage_<run>`, created `LIKE` their target, expiring after two
//! days should a crash leave them) through load jobs (newline-delimited JSON,
//! multipart upload; batches are gathered per table into jobs of up to
//! 32 MiB, the rest loaded at commit): load jobs write no streaming buffer,
//! so the rows can be deleted or replaced by DML at once. Commit checks the
//! staged row counts, then runs ONE multi-statement transaction: per table
//! `DELETE` the covered partitions and `INSERT … SELECT` from staging, plus
//! the run's `pipeline_runs` record; then it drops the staging tables. Abort
//! only drops them. `pipeline_runs` rows are written by DML too (delete and
//! insert in one transaction), never streamed.
//!
//! Amounts are exact: NUMERIC(18, 8) for quantity and price,
//! BIGNUMERIC(38, 8) / BIGNUMERIC(38, 16) for the weekly totals (NUMERIC has
//! only 9 fractional and 29 integer digits). TIMESTAMP holds microseconds, so
//! the nanoseconds below them are kept in `timestamp_extra_nanos`.
//!
//! The REST API may answer HTTP 200 with an `errors` array or a job whose
//! status carries an `errorResult`: every response is checked, and a run
//! succeeds only once the transaction's job completed without one.
//!
//! - `auth.rs`: credentials; `client.rs`: queries, load jobs and their
//!   errors; `sql.rs`: DDL and literals; `json.rs`: batches as load-job
//!   input; `staging.rs`: the staging primitives and the commit transaction
//!   (the run lifecycle itself is `crate::staging`).

mod auth;
mod client;
mod json;
mod sql;
mod staging;

use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use gcp_bigquery_client::auth::Authenticator;
use quarry_core::config::BigQueryConfig;
use quarry_core::decimal::{self, PNL_SCALE};
use quarry_core::{Error, Result, Table};

use self::client::BigQuery;
use self::sql::{RUN_COLUMNS, literal, partition_literal};
use crate::staging::{StagedRuns, StagedWarehouse};
use crate::text_rows;
use crate::{PartitionInfo, RunRecord, TopUser, TopUsersQuery, Warehouse, WeeklyTotal};

/// Opens the backend with the credentials the configuration names (see
/// `auth.rs`).
pub fn open(config: &BigQueryConfig) -> Result<Arc<dyn Warehouse>> {
    if !quarry_core::config::is_project_id(&config.project) {
        return Err(Error::config(format!(
            "warehouse.bigquery.project = {:?} is not a Google Cloud project id",
            config.project
        )));
    }
    Ok(with_authenticator(config, auth::from_config(config)?))
}

/// Opens the backend with the given credentials.
pub fn with_authenticator(
    config: &BigQueryConfig,
    auth: Arc<dyn Authenticator>,
) -> Arc<dyn Warehouse> {
    Arc::new(StagedRuns::new(BigQuery::new(config, auth)))
}

fn parse_amount(text: Option<&String>, scale: u32) -> Result<i128> {
    let t = text.map(String::as_str).unwrap_or("");
    decimal::parse_scaled(t.as_bytes(), scale)
        .map_err(|e| Error::internal(format!("bigquery returned {t:?} for a decimal: {e:?}")))
}

fn cell_i64(text: Option<&String>) -> Result<i64> {
    let t = text.map(String::as_str).unwrap_or("");
    t.parse()
        .map_err(|_| Error::internal(format!("bigquery returned {t:?} for an integer")))
}

#[async_trait]
impl StagedWarehouse for BigQuery {
    async fn runs_where(
        &self,
        what: &str,
        condition: &str,
        limit: Option<u32>,
    ) -> Result<Vec<RunRecord>> {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM {} WHERE {condition} ORDER BY started_at DESC, run_id DESC{limit}",
            self.table("pipeline_runs")
        );
        let rows = self.rows(what, &sql).await?;
        rows.iter().map(|r| RunRecord::from_cells(r)).collect()
    }

    async fn check_and_create(&self) -> Result<()> {
        self.connect_and_create().await
    }

    async fn top_users(&self, query: &TopUsersQuery) -> Result<Vec<TopUser>> {
        let column = query.metric.column();
        let sql = format!(
            "SELECT user_id, CAST(SUM({column}) AS STRING) FROM {}
             WHERE client_type = {} GROUP BY user_id
             ORDER BY SUM({column}) DESC, user_id ASC LIMIT {}",
            self.table("agg_trades_weekly"),
            literal(&query.client_type),
            query.limit
        );
        let rows = self.rows("top users", &sql).await?;
        let totals = rows
            .iter()
            .map(|r| {
                Ok((
                    r.first().cloned().flatten().unwrap_or_default(),
                    parse_amount(r.get(1).and_then(Option::as_ref), PNL_SCALE)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        // Ranked again on the exact values: the order is the contract.
        Ok(crate::rank_top_users(totals, query.limit, PNL_SCALE))
    }

    async fn weekly_totals(&self) -> Result<Vec<WeeklyTotal>> {
        let sql = format!(
            "SELECT CAST(week_start_date AS STRING), client_type,
                    CAST(SUM(total_volume) AS STRING), CAST(SUM(total_pnl) AS STRING),
                    SUM(trade_count)
             FROM {} GROUP BY week_start_date, client_type ORDER BY 1, 2",
            self.table("agg_trades_weekly")
        );
        let rows = self.rows("weekly totals", &sql).await?;
        rows.iter()
            .map(|r| {
                let amount = |i: usize| {
                    parse_amount(r.get(i).and_then(Option::as_ref), PNL_SCALE)
                        .map(|v| decimal::format_scaled(v, PNL_SCALE))
                };
                Ok(WeeklyTotal {
                    week_start_date: r.first().cloned().flatten().unwrap_or_default(),
                    client_type: r.get(1).cloned().flatten().unwrap_or_default(),
                    total_volume: amount(2)?,
                    total_pnl: amount(3)?,
                    trade_count: cell_i64(r.get(4).and_then(Option::as_ref))? as u64,
                })
            })
            .collect()
    }

    async fn list_partitions(&self, table: Table) -> Result<Vec<PartitionInfo>> {
        let col = table.partition_column();
        let sql = format!(
            "SELECT CAST({col} AS STRING), COUNT(*) FROM {} GROUP BY {col} ORDER BY {col}",
            self.table(table.name())
        );
        let rows = self.rows("list partitions", &sql).await?;
        rows.iter()
            .map(|r| {
                Ok(PartitionInfo {
                    partition: r.first().cloned().flatten().unwrap_or_default(),
                    rows: cell_i64(r.get(1).and_then(Option::as_ref))? as u64,
                })
            })
            .collect()
    }

    async fn read_partition(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        let filter = format!(
            "FROM {} WHERE {} = {}",
            self.table(table.name()),
            table.partition_column(),
            partition_literal(table, partition)?
        );
        let sql = match table {
            Table::Trades => format!(
                "SELECT UNIX_MICROS(timestamp), timestamp_extra_nanos, user_id, client_type,
                        symbol, side, CAST(quantity AS STRING), CAST(price AS STRING),
                        CAST(trade_date AS STRING)
                 {filter} ORDER BY timestamp, timestamp_extra_nanos, user_id"
            ),
            Table::TradesRejected => format!(
                "SELECT timestamp, user_id, client_type, symbol, side, quantity, price,
                        reason, source_file, source_row
                 {filter} ORDER BY source_row"
            ),
            Table::AggTradesWeekly => format!(
                "SELECT CAST(week_start_date AS STRING), client_type, user_id, symbol,
                        CAST(total_volume AS STRING), CAST(total_pnl AS STRING), trade_count
                 {filter} ORDER BY client_type, user_id, symbol"
            ),
        };
        let rows = self.rows("read partition", &sql).await?;
        // Microseconds and the nanoseconds beyond them, in two cells.
        let nanos = |c: &[Option<String>]| {
            let n = |i: usize| c.get(i)?.as_deref()?.parse::<i64>().ok();
            n(0)?.checked_mul(1000)?.checked_add(n(1)?)
        };
        text_rows::partition_batch(
            "bigquery",
            table,
            &rows,
            text_rows::Timestamp {
                cells: 2,
                parse: &nanos,
            },
        )
    }

    async fn delete_partition(&self, table: Table, partition: &str) -> Result<u64> {
        let condition = format!(
            "{} = {}",
            table.partition_column(),
            partition_literal(table, partition)?
        );
        let out = self
            .query(
                &format!("drop partition {partition} of {table}"),
                &format!("DELETE FROM {} WHERE {condition}", self.table(table.name())),
            )
            .await?;
        out.affected.ok_or_else(|| {
            Error::internal(format!(
                "bigquery: the delete of partition {partition} of {table} reported no row count"
            ))
        })
    }
}
