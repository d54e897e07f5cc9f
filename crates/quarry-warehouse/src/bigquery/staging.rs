//! A run staged in BigQuery: per-run staging tables (`<table>_stage_<run>`,
//! created `LIKE` their target, expiring after two days should a crash
//! leave them) filled by load jobs (newline-delimited JSON gathered per
//! table into jobs of up to 32 MiB, the rest at commit): load jobs write no
//! streaming buffer, so the rows can be deleted or replaced by DML at once.
//! The swap is ONE multi-statement transaction: per table `DELETE` the
//! covered partitions and `INSERT … SELECT` from staging; the weeks the
//! plan recomputes are folded from `trades` (after the run's days were
//! replaced), the run's days recorded in `loaded_days`, and the run's
//! record written; it counts only once its job completed without an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use quarry_core::dates::{date_text, week_start};
use quarry_core::{Result, Table};

use super::client::{BigQuery, Load};
use super::json::batch_json;
use super::sql::{columns, date_literal, fold_sql, literal, partition_literal, record_sql};
use crate::RunRecord;
use crate::staging::{StagedRun, StagedWarehouse, StagingBackend};
use crate::text_rows::{self, HOT_DAY, HOT_WEEK, LOADED, date_list, days_of_weeks};
use crate::weeks::{WeekPlan, WeekState};

/// Newline-delimited JSON gathered per table before one load job takes it:
/// few, big jobs (each has seconds of overhead on BigQuery, and a table takes
/// at most 1 500 load jobs a day), with bounded memory.
const LOAD_BYTES: usize = 32 << 20;

/// Staging tables outlive a crashed run by this long at most.
const STAGE_EXPIRY: &str = "INTERVAL 2 DAY";

/// Rows of an open run not loaded yet.
pub(super) struct Loads {
    /// Makes load job ids unique across runs that reuse a run id.
    job_prefix: String,
    loads: u64,
    pending: BTreeMap<Table, Vec<u8>>,
}

impl Loads {
    /// The rows gathered for `table`, if any, as the run's next load job.
    fn take(&mut self, table: Table, tag: &str) -> Option<Load> {
        let data = self.pending.remove(&table).filter(|d| !d.is_empty())?;
        self.loads += 1;
        Some(Load {
            table_id: format!("{table}_stage_{tag}"),
            job_id: format!("{}_{table}_{}", self.job_prefix, self.loads),
            data,
        })
    }
}

impl BigQuery {
    /// The weekly aggregate's part of the commit script: every week of the
    /// plan is replaced — by the run's staged rows, or (recomputed weeks) by
    /// the fold of the trades of all its days — and the run's days are
    /// recorded in `loaded_days`.
    fn swap_weeks(&self, script: &mut String, run: &StagedRun<Loads>, plan: &WeekPlan) {
        let agg = self.table(Table::AggTradesWeekly.name());
        if !plan.weeks.is_empty() {
            let _ = writeln!(
                script,
                "DELETE FROM {agg} WHERE week_start_date IN ({});",
                date_list(plan.weeks.iter().copied(), date_literal)
            );
        }
        if run.staged.rows.contains_key(&Table::AggTradesWeekly) {
            let cols = columns(Table::AggTradesWeekly);
            let stage = self.stage(Table::AggTradesWeekly, &run.tag);
            let swapped: Vec<i32> = plan.swapped_weeks().collect();
            if plan.is_plain_swap() {
                let _ = writeln!(
                    script,
                    "INSERT INTO {agg} ({cols}) SELECT {cols} FROM {stage};"
                );
            } else if !swapped.is_empty() {
                // The staged rows of recomputed weeks are left out.
                let _ = writeln!(
                    script,
                    "INSERT INTO {agg} ({cols}) SELECT {cols} FROM {stage} \
                     WHERE week_start_date IN ({});",
                    date_list(swapped, date_literal)
                );
            }
        }
        if !plan.recompute.is_empty() {
            let days = date_list(plan.fold_days(), date_literal);
            script.push_str(&fold_sql(&agg, &self.table(Table::Trades.name()), &days));
        }
        if !plan.run_days.is_empty() {
            let loaded = self.table("loaded_days");
            let weeks: BTreeSet<i32> = plan.run_days.iter().map(|d| week_start(*d)).collect();
            let _ = writeln!(
                script,
                "DELETE FROM {loaded} WHERE week_start_date IN ({}) AND trade_date IN ({});",
                date_list(weeks, date_literal),
                date_list(plan.run_days.iter().copied(), date_literal)
            );
            let run_id = literal(&run.record.run_id);
            let values: Vec<String> = plan
                .run_days
                .iter()
                .map(|d| {
                    format!(
                        "({}, {}, {}, {run_id})",
                        date_literal(&date_text(*d)),
                        date_literal(&date_text(week_start(*d))),
                        plan.raw_trades
                    )
                })
                .collect();
            let _ = writeln!(
                script,
                "INSERT INTO {loaded} (trade_date, week_start_date, raw_trades, run_id) VALUES {};",
                values.join(", ")
            );
        }
    }
}

#[async_trait]
impl StagingBackend for BigQuery {
    type Pending = Loads;
    type Encoded = Vec<u8>;

    fn name(&self) -> &'static str {
        "bigquery"
    }

    fn pending(&self, tag: &str) -> Loads {
        Loads {
            job_prefix: format!("quarry_{tag}_{}", chrono::Utc::now().timestamp_micros()),
            loads: 0,
            pending: BTreeMap::new(),
        }
    }

    async fn create_stages(&self, tag: &str) -> Result<()> {
        let expiry = format!("TIMESTAMP_ADD(CURRENT_TIMESTAMP(), {STAGE_EXPIRY})");
        for t in Table::ALL {
            self.query(
                "create staging table",
                &format!(
                    "CREATE TABLE {} LIKE {} OPTIONS (expiration_timestamp = {expiry})",
                    self.stage(t, tag),
                    self.table(t.name())
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn drop_stages(&self, tag: &str) -> Result<()> {
        for t in Table::ALL {
            self.query(
                "drop staging table",
                &format!("DROP TABLE IF EXISTS {}", self.stage(t, tag)),
            )
            .await?;
        }
        Ok(())
    }

    fn encode(&self, table: Table, batch: &RecordBatch, run_id: &str) -> Result<Vec<u8>> {
        batch_json(table, batch, run_id)
    }

    async fn stage(&self, run: &mut StagedRun<Loads>, table: Table, data: Vec<u8>) -> Result<()> {
        let pending = run.pending.pending.entry(table).or_default();
        pending.extend_from_slice(&data);
        if pending.len() >= LOAD_BYTES
            && let Some(load) = run.pending.take(table, &run.tag)
        {
            self.load(&load).await?;
        }
        Ok(())
    }

    async fn flush(&self, run: &mut StagedRun<Loads>) -> Result<()> {
        for table in Table::ALL {
            if let Some(load) = run.pending.take(table, &run.tag) {
                self.load(&load).await?;
            }
        }
        Ok(())
    }

    async fn count_staged(&self, tag: &str, table: Table) -> Result<u64> {
        self.count(
            "read back staged rows",
            &format!("SELECT COUNT(*) FROM {}", self.stage(table, tag)),
        )
        .await
    }

    async fn week_state(&self, weeks: &BTreeSet<i32>) -> Result<WeekState> {
        if weeks.is_empty() {
            return Ok(WeekState::default());
        }
        // One query, each part pruned to the weeks' partitions.
        let sql = format!(
            "SELECT '{LOADED}', CAST(trade_date AS STRING), CAST(raw_trades AS STRING)
             FROM {loaded} WHERE week_start_date IN ({weeks})
             UNION ALL
             SELECT '{HOT_DAY}', CAST(trade_date AS STRING), CAST(NULL AS STRING)
             FROM {trades} WHERE trade_date IN ({days}) GROUP BY trade_date
             UNION ALL
             SELECT '{HOT_WEEK}', CAST(week_start_date AS STRING), CAST(NULL AS STRING)
             FROM {agg} WHERE week_start_date IN ({weeks}) GROUP BY week_start_date",
            loaded = self.table("loaded_days"),
            trades = self.table(Table::Trades.name()),
            agg = self.table(Table::AggTradesWeekly.name()),
            weeks = date_list(weeks.iter().copied(), date_literal),
            days = date_list(days_of_weeks(weeks), date_literal),
        );
        let rows = self.rows("read the days of the run's weeks", &sql).await?;
        text_rows::week_state("bigquery", &rows)
    }

    async fn swap(
        &self,
        run: &mut StagedRun<Loads>,
        plan: &WeekPlan,
        record: &RunRecord,
    ) -> Result<()> {
        let mut script = String::from("BEGIN TRANSACTION;\n");
        // The trades first: the recomputed weeks are folded from them.
        for table in [Table::Trades, Table::TradesRejected] {
            let target = self.table(table.name());
            if let Some(parts) = run.staged.partitions.get(&table).filter(|p| !p.is_empty()) {
                let list = parts
                    .iter()
                    .map(|p| partition_literal(table, p))
                    .collect::<Result<Vec<_>>>()?
                    .join(", ");
                let _ = writeln!(
                    script,
                    "DELETE FROM {target} WHERE {} IN ({list});",
                    table.partition_column()
                );
            }
            if run.staged.rows.contains_key(&table) {
                let cols = columns(table);
                let _ = writeln!(
                    script,
                    "INSERT INTO {target} ({cols}) SELECT {cols} FROM {};",
                    self.stage(table, &run.tag)
                );
            }
        }
        self.swap_weeks(&mut script, run, plan);
        script.push_str(&record_sql(&self.table("pipeline_runs"), record));
        script.push_str("COMMIT TRANSACTION;");
        // Confirmed only when the script's job completed without an error.
        self.query("commit (transaction)", &script)
            .await
            .map(|_| ())
    }

    async fn record(&self, record: &RunRecord) -> Result<()> {
        let sql = format!(
            "BEGIN TRANSACTION;\n{}COMMIT TRANSACTION;",
            record_sql(&self.table("pipeline_runs"), record)
        );
        self.query("record run", &sql).await.map(|_| ())
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let runs = self
            .runs_where("get run", &format!("run_id = {}", literal(run_id)), None)
            .await?;
        Ok(runs.into_iter().next())
    }
}
