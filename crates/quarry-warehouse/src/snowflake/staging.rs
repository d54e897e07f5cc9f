//! A run staged in Snowflake: its batches are written into Parquet files
//! of `stage_file_kib` each and `PUT` to the table stage of a per-run
//! transient staging table (`<table>_stage_<run>`, see `stage.rs` for the
//! upload); before the read-back the last files go up and `COPY INTO` loads
//! each staging table from its stage (Snowflake loads the files in
//! parallel, skips files it already loaded and purges them); the swap is
//! ONE transaction that deletes every covered partition, copies the staged
//! rows in, folds the weeks the plan recomputes from `trades` (after the
//! run's days were replaced), records the run's days in `loaded_days` and
//! writes the run's record. Dropping a staging table drops its stage.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use quarry_core::dates::{date_text, week_start};
use quarry_core::{Error, Result, Table};

use super::client::Snowflake;
use super::files::{file_batch, file_writer};
use super::sql::{IN_CHUNK, column_names, columns, fold_sql, literal, record_sql};
use crate::RunRecord;
use crate::staging::{StagedRun, StagedWarehouse, StagingBackend};
use crate::text_rows::{self, HOT_DAY, HOT_WEEK, LOADED, date_list, days_of_weeks};
use crate::weeks::{WeekPlan, WeekState};

/// The Parquet files of an open run.
#[derive(Default)]
pub(super) struct Files {
    /// The file being filled, per table.
    open: BTreeMap<Table, ArrowWriter<Vec<u8>>>,
    /// Files PUT so far (numbers the next one).
    put: u32,
}

impl Snowflake {
    /// PUTs the file of `table` if it is full (or, with `all`, whatever it
    /// holds).
    async fn put_open_file(
        &self,
        run: &mut StagedRun<Files>,
        table: Table,
        all: bool,
    ) -> Result<()> {
        let full = run
            .pending
            .open
            .get(&table)
            .is_some_and(|w| w.bytes_written() + w.in_progress_size() >= self.file_bytes);
        if !(all || full) {
            return Ok(());
        }
        let Some(writer) = run.pending.open.remove(&table) else {
            return Ok(());
        };
        run.pending.put += 1;
        let name = format!("{table}-{:06}.parquet", run.pending.put);
        let data = writer.into_inner().map_err(|e| {
            Error::internal(format!("snowflake: staged file {name}: {e}")).with_source(e)
        })?;
        self.put_file(table, &run.tag, &name, data).await
    }

    fn loaded_days(&self) -> String {
        format!("{}.loaded_days", self.qualified)
    }

    /// `DELETE`s of the rows of `table` whose partition column is one of
    /// `values` (literals), `IN_CHUNK` values a statement.
    fn deletes(&self, table: Table, values: impl Iterator<Item = String>) -> Vec<String> {
        let values: Vec<String> = values.collect();
        values
            .chunks(IN_CHUNK)
            .map(|chunk| {
                format!(
                    "DELETE FROM {} WHERE {} IN ({})",
                    self.table(table),
                    table.partition_column(),
                    chunk.join(", ")
                )
            })
            .collect()
    }

    /// Copies the staged rows of `table` in (`filter`: a WHERE clause or
    /// nothing).
    fn insert_staged(&self, table: Table, tag: &str, filter: &str) -> String {
        let cols = column_names(table);
        format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {}{filter}",
            self.table(table),
            self.stage(table, tag)
        )
    }

    /// The weekly aggregate's part of the commit: every week of the plan is
    /// replaced — by the run's staged rows, or (recomputed weeks) by the fold
    /// of the trades of all its days — and the run's days are recorded in
    /// `loaded_days`.
    fn swap_weeks(&self, statements: &mut Vec<String>, run: &StagedRun<Files>, plan: &WeekPlan) {
        let agg = Table::AggTradesWeekly;
        let week_literal = |w: &i32| literal(&date_text(*w));
        statements.extend(self.deletes(agg, plan.weeks.iter().map(week_literal)));
        if run.staged.rows.contains_key(&agg) {
            let swapped: Vec<i32> = plan.swapped_weeks().collect();
            if plan.is_plain_swap() {
                statements.push(self.insert_staged(agg, &run.tag, ""));
            } else {
                // The staged rows of recomputed weeks are left out.
                for chunk in swapped.chunks(IN_CHUNK) {
                    let list: Vec<String> = chunk.iter().map(week_literal).collect();
                    let filter = format!(" WHERE week_start_date IN ({})", list.join(", "));
                    statements.push(self.insert_staged(agg, &run.tag, &filter));
                }
            }
        }
        // The weeks to fold, in statements of at most IN_CHUNK days.
        let run_id = literal(&run.record.run_id);
        let mut days: Vec<i32> = vec![];
        for week_days in plan.recompute.values() {
            if !days.is_empty() && days.len() + week_days.len() > IN_CHUNK {
                statements.push(self.fold(&days, &run_id));
                days.clear();
            }
            days.extend(week_days);
        }
        if !days.is_empty() {
            statements.push(self.fold(&days, &run_id));
        }
        let run_days: Vec<i32> = plan.run_days.iter().copied().collect();
        for chunk in run_days.chunks(IN_CHUNK) {
            statements.push(format!(
                "DELETE FROM {} WHERE trade_date IN ({})",
                self.loaded_days(),
                date_list(chunk.iter().copied(), literal)
            ));
            let values: Vec<String> = chunk
                .iter()
                .map(|d| {
                    format!(
                        "({}, {}, {}, {run_id})",
                        literal(&date_text(*d)),
                        literal(&date_text(week_start(*d))),
                        plan.raw_trades
                    )
                })
                .collect();
            statements.push(format!(
                "INSERT INTO {} (trade_date, week_start_date, raw_trades, run_id) VALUES {}",
                self.loaded_days(),
                values.join(", ")
            ));
        }
    }

    /// The fold of the trades of `days` (whole weeks) into `agg_trades_weekly`.
    fn fold(&self, days: &[i32], run_id: &str) -> String {
        fold_sql(
            &self.table(Table::AggTradesWeekly),
            &self.table(Table::Trades),
            &date_list(days.iter().copied(), literal),
            run_id,
        )
    }
}

#[async_trait]
impl StagingBackend for Snowflake {
    type Pending = Files;
    type Encoded = RecordBatch;

    fn name(&self) -> &'static str {
        "snowflake"
    }

    fn pending(&self, _tag: &str) -> Files {
        Files::default()
    }

    async fn create_stages(&self, tag: &str) -> Result<()> {
        for t in Table::ALL {
            self.exec(
                "create staging table",
                &format!(
                    "CREATE TRANSIENT TABLE {} ({})",
                    self.stage(t, tag),
                    columns(t)
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn drop_stages(&self, tag: &str) -> Result<()> {
        for t in Table::ALL {
            self.exec(
                "drop staging table",
                &format!("DROP TABLE IF EXISTS {}", self.stage(t, tag)),
            )
            .await?;
        }
        Ok(())
    }

    fn encode(&self, table: Table, batch: &RecordBatch, run_id: &str) -> Result<RecordBatch> {
        file_batch(table, batch, run_id)
    }

    async fn stage(
        &self,
        run: &mut StagedRun<Files>,
        table: Table,
        rows: RecordBatch,
    ) -> Result<()> {
        let writer = match run.pending.open.entry(table) {
            std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(file_writer(table)?),
        };
        writer.write(&rows).map_err(|e| {
            Error::internal(format!("snowflake: staged file of {table}: {e}")).with_source(e)
        })?;
        self.put_open_file(run, table, false).await
    }

    async fn flush(&self, run: &mut StagedRun<Files>) -> Result<()> {
        // The last, partly filled files go up first.
        for table in Table::ALL {
            self.put_open_file(run, table, true).await?;
        }
        for table in run.staged.rows.keys() {
            // Loads every file of the stage; a file already loaded (an
            // answer lost and the COPY repeated) is skipped by Snowflake.
            self.exec(
                &format!("copy staged files of {table}"),
                &format!(
                    "COPY INTO {} FROM @{} FILE_FORMAT = (TYPE = PARQUET) \
                     MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE PURGE = TRUE",
                    self.stage(*table, &run.tag),
                    self.table_stage(*table, &run.tag)
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn count_staged(&self, tag: &str, table: Table) -> Result<u64> {
        self.count(
            "read back staged rows",
            &format!(
                "SELECT TO_VARCHAR(COUNT(*)) FROM {}",
                self.stage(table, tag)
            ),
        )
        .await
    }

    async fn week_state(&self, weeks: &BTreeSet<i32>) -> Result<WeekState> {
        if weeks.is_empty() {
            return Ok(WeekState::default());
        }
        // One query, each part pruned to the weeks' dates.
        let date = |c: &str| format!("TO_VARCHAR({c}, 'YYYY-MM-DD')");
        let sql = format!(
            "SELECT '{LOADED}', {day}, TO_VARCHAR(raw_trades)
             FROM {loaded} WHERE week_start_date IN ({weeks})
             UNION ALL
             SELECT '{HOT_DAY}', {day}, NULL
             FROM {trades} WHERE trade_date IN ({days}) GROUP BY trade_date
             UNION ALL
             SELECT '{HOT_WEEK}', {week}, NULL
             FROM {agg} WHERE week_start_date IN ({weeks}) GROUP BY week_start_date",
            day = date("trade_date"),
            week = date("week_start_date"),
            loaded = self.loaded_days(),
            trades = self.table(Table::Trades),
            agg = self.table(Table::AggTradesWeekly),
            weeks = date_list(weeks.iter().copied(), literal),
            days = date_list(days_of_weeks(weeks), literal),
        );
        let rows = self.read("read the days of the run's weeks", &sql).await?;
        text_rows::week_state("snowflake", &rows)
    }

    async fn swap(
        &self,
        run: &mut StagedRun<Files>,
        plan: &WeekPlan,
        record: &RunRecord,
    ) -> Result<()> {
        let mut statements = vec![];
        // The trades first: the recomputed weeks are folded from them.
        for table in [Table::Trades, Table::TradesRejected] {
            if let Some(parts) = run.staged.partitions.get(&table) {
                statements.extend(self.deletes(table, parts.iter().map(|p| literal(p))));
            }
            if run.staged.rows.contains_key(&table) {
                statements.push(self.insert_staged(table, &run.tag, ""));
            }
        }
        self.swap_weeks(&mut statements, run, plan);
        statements.extend(record_sql(&self.qualified, record));
        self.transaction(&statements, &record.run_id, record.status.as_str())
            .await
    }

    async fn record(&self, record: &RunRecord) -> Result<()> {
        let statements = record_sql(&self.qualified, record);
        self.transaction(&statements, &record.run_id, record.status.as_str())
            .await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let condition = format!("run_id = {}", literal(run_id));
        Ok(self
            .runs_where("get run", &condition, Some(1))
            .await?
            .into_iter()
            .next())
    }
}
