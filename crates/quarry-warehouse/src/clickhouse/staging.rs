//! A run staged in ClickHouse: batches into unpartitioned Log tables
//! (`<table>_flat_<run>`, one part per batch), read back by count, copied
//! server-side into partitioned staging tables of the target's structure
//! (`<table>_stage_<run>`, one part per partition), then every covered
//! partition swapped in with `ALTER TABLE … REPLACE PARTITION … FROM` (up to
//! 100 per statement). Each swap is atomic; the commit as a whole is not:
//! if it fails half-way, every partition holds either its old rows or this
//! run's complete rows, and running the run again completes it.
//!
//! The commit, in order: the run's days are upserted into `loaded_days`;
//! the days of `trades` and the files of `trades_rejected` are swapped in;
//! each week the [`WeekPlan`] recomputes is folded with one `INSERT … SELECT`
//! from the `trades` of its days (pruned to their partitions) into the run's
//! weekly staging table, in place of the rows the run staged for it; then
//! every week the run touches is swapped in (or dropped when it holds
//! nothing now), and the run recorded. `loaded_days` goes first so that a
//! commit stopped half-way never leaves a day out of a later run's fold
//! silently: its days are folded from `trades`, or the later run is refused
//! for rows they miss.
//!
//! `loaded_days` is a ReplacingMergeTree keyed by day and read with FINAL:
//! an upsert is one insert of higher versions, so a concurrent reader sees
//! each day's old row or its new one — never neither, as a delete (an
//! asynchronous mutation here) followed by an insert would let it.

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use quarry_core::dates::date_text;
use quarry_core::{Result, Table};

use super::client::{ClickHouse, literal};
use super::rows::{AggRow, LoadedDayRow, RejectedRow, Rows, RunRow, TradeRow, encode};
use crate::RunRecord;
use crate::staging::{StagedRun, StagedWarehouse, StagingBackend};
use crate::weeks::{LoadedDay, WeekPlan, WeekState};

/// Partition commands per ALTER statement.
const ALTER_CHUNK: usize = 100;

/// Weeks recomputed per INSERT: an insert makes a part per week, and servers
/// refuse more than 100 partitions in one (`max_partitions_per_insert_block`).
const FOLD_CHUNK: usize = 100;

const LOADED_DAYS: &str = "loaded_days";

#[async_trait]
impl StagingBackend for ClickHouse {
    type Pending = ();
    type Encoded = Rows;

    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn pending(&self, _tag: &str) {}

    async fn create_stages(&self, tag: &str) -> Result<()> {
        for t in Table::ALL {
            let target = self.table(t);
            self.execute(
                "create staging table",
                &format!("CREATE TABLE {} AS {target}", self.stage(t, tag)),
            )
            .await?;
            self.execute(
                "create staging table",
                &format!(
                    "CREATE TABLE {} AS {target} ENGINE = Log",
                    self.flat(t, tag)
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn drop_stages(&self, tag: &str) -> Result<()> {
        for t in Table::ALL {
            for name in [self.stage(t, tag), self.flat(t, tag)] {
                self.execute(
                    "drop staging table",
                    &format!("DROP TABLE IF EXISTS {name}"),
                )
                .await?;
            }
        }
        Ok(())
    }

    fn encode(&self, table: Table, batch: &RecordBatch, run_id: &str) -> Result<Rows> {
        encode(table, batch, run_id)
    }

    async fn stage(&self, run: &mut StagedRun<()>, table: Table, rows: Rows) -> Result<()> {
        // The client is bound to the database: inserts name the table alone.
        let flat = format!("{table}_flat_{}", run.tag);
        match rows {
            Rows::Trades(r) => self.insert_rows::<TradeRow>(&flat, &r).await,
            Rows::Rejected(r) => self.insert_rows::<RejectedRow>(&flat, &r).await,
            Rows::Agg(r) => self.insert_rows::<AggRow>(&flat, &r).await,
        }
    }

    async fn flush(&self, _run: &mut StagedRun<()>) -> Result<()> {
        Ok(())
    }

    async fn count_staged(&self, tag: &str, table: Table) -> Result<u64> {
        self.count(
            "read back staged rows",
            &format!("SELECT count() FROM {}", self.flat(table, tag)),
        )
        .await
    }

    async fn week_state(&self, weeks: &BTreeSet<i32>) -> Result<WeekState> {
        if weeks.is_empty() {
            return Ok(WeekState::default());
        }
        // Every day of the weeks: the primary key (trade_date) prunes the read.
        let sql = format!(
            "SELECT trade_date, raw_trades FROM {} FINAL
             WHERE trade_date IN ({}) AND week_start_date IN ({})",
            self.table_name(LOADED_DAYS),
            date_list(weeks.iter().flat_map(|w| *w..*w + 7)),
            date_list(weeks.iter().copied()),
        );
        let loaded: Vec<LoadedDay> = self
            .retry("read loaded_days", || {
                self.client.query(&sql).fetch_all::<(u16, u8)>()
            })
            .await?
            .into_iter()
            .map(|(day, raw)| LoadedDay {
                day: i32::from(day),
                raw_trades: raw != 0,
            })
            .collect();
        let hot_days = if loaded.is_empty() {
            BTreeSet::new()
        } else {
            self.distinct_dates(
                Table::Trades,
                loaded.iter().map(|l| l.day),
                "find the hot days",
            )
            .await?
        };
        let hot_weeks = self
            .distinct_dates(
                Table::AggTradesWeekly,
                weeks.iter().copied(),
                "find the hot weeks",
            )
            .await?;
        Ok(WeekState {
            loaded,
            hot_days,
            hot_weeks,
        })
    }

    async fn swap(
        &self,
        run: &mut StagedRun<()>,
        plan: &WeekPlan,
        record: &RunRecord,
    ) -> Result<()> {
        let tag = &run.tag;
        for table in run.staged.rows.keys() {
            // Into the partitioned stage in big blocks: one part per day.
            self.execute(
                &format!("partition staged {table} rows"),
                &format!(
                    "INSERT INTO {} SELECT * FROM {}",
                    self.stage(*table, tag),
                    self.flat(*table, tag)
                ),
            )
            .await?;
        }
        // Before anything is replaced: if the commit stops half-way, a later
        // run of these weeks counts the days as loaded, and folds them from
        // `trades` or is refused for their missing rows — never leaves them
        // out of a week silently.
        self.record_days(plan, &record.run_id).await?;
        // `trades` first: the recomputed weeks fold the run's days from it.
        for (table, parts) in &run.staged.partitions {
            if *table != Table::AggTradesWeekly {
                let staged = self
                    .staged_partitions(*table, tag, run.staged.rows.contains_key(table))
                    .await?;
                self.replace_partitions(*table, tag, parts, &staged).await?;
            }
        }
        if !plan.weeks.is_empty() {
            let agg = Table::AggTradesWeekly;
            if !plan.recompute.is_empty() {
                self.fold_weeks(tag, plan).await?;
            }
            let has_rows = run.staged.rows.contains_key(&agg) || !plan.recompute.is_empty();
            let staged = self.staged_partitions(agg, tag, has_rows).await?;
            let weeks: BTreeSet<String> = plan.weeks.iter().map(|w| date_text(*w)).collect();
            self.replace_partitions(agg, tag, &weeks, &staged).await?;
        }
        self.record(record).await
    }

    async fn record(&self, record: &RunRecord) -> Result<()> {
        let row = RunRow::new(record, self.next_version());
        self.insert_rows::<RunRow>("pipeline_runs", std::slice::from_ref(&row))
            .await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        self.runs_where("get run", &format!("run_id = {}", literal(run_id)), None)
            .await
            .map(|r| r.into_iter().next())
    }
}

/// `'2024-01-01', '2024-01-02'`: dates for an `IN (…)` list.
fn date_list(days: impl IntoIterator<Item = i32>) -> String {
    let days: BTreeSet<i32> = days.into_iter().collect();
    let texts: Vec<String> = days.into_iter().map(|d| literal(&date_text(d))).collect();
    texts.join(", ")
}

impl ClickHouse {
    /// Which of `dates` the partition column of `table` holds rows of (a
    /// read of their partitions only).
    async fn distinct_dates(
        &self,
        table: Table,
        dates: impl IntoIterator<Item = i32>,
        what: &str,
    ) -> Result<BTreeSet<i32>> {
        let col = table.partition_column();
        let sql = format!(
            "SELECT DISTINCT {col} FROM {} WHERE {col} IN ({})",
            self.table(table),
            date_list(dates)
        );
        let held = self
            .retry(what, || self.client.query(&sql).fetch_all::<u16>())
            .await?;
        Ok(held.into_iter().map(i32::from).collect())
    }

    /// The partitions (as text) the run's staging table of `table` holds;
    /// none without asking when nothing was staged.
    async fn staged_partitions(
        &self,
        table: Table,
        tag: &str,
        has_rows: bool,
    ) -> Result<BTreeSet<String>> {
        if !has_rows {
            return Ok(BTreeSet::new());
        }
        let sql = format!(
            "SELECT DISTINCT toString({}) FROM {}",
            table.partition_column(),
            self.stage(table, tag)
        );
        Ok(self
            .retry("list staged partitions", || {
                self.client.query(&sql).fetch_all::<String>()
            })
            .await?
            .into_iter()
            .collect())
    }

    /// Swaps `parts` of `table` in from the run's staging table; those it
    /// does not hold are dropped (covered, but empty now: a file without
    /// rejects any more, a week whose days hold no trades).
    async fn replace_partitions(
        &self,
        table: Table,
        tag: &str,
        parts: &BTreeSet<String>,
        staged: &BTreeSet<String>,
    ) -> Result<()> {
        let stage = self.stage(table, tag);
        let commands: Vec<String> = parts
            .iter()
            .map(|p| {
                if staged.contains(p) {
                    format!("REPLACE PARTITION {} FROM {stage}", literal(p))
                } else {
                    format!("DROP PARTITION {}", literal(p))
                }
            })
            .collect();
        for chunk in commands.chunks(ALTER_CHUNK) {
            self.execute(
                &format!("replace partitions of {table}"),
                &format!("ALTER TABLE {} {}", self.table(table), chunk.join(", ")),
            )
            .await?;
        }
        Ok(())
    }

    /// Puts into the run's weekly staging table, for each week of
    /// `plan.recompute`, the exact aggregate of the `trades` of its days (in
    /// place of the weekly rows the run staged for it). The products are
    /// taken in Decimal(38, 16), exact for any two Decimal(18, 8); the sums
    /// keep the columns' types (Decimal(38, 8), Decimal(38, 16)).
    async fn fold_weeks(&self, tag: &str, plan: &WeekPlan) -> Result<()> {
        let stage = self.stage(Table::AggTradesWeekly, tag);
        let weeks: Vec<(&i32, &BTreeSet<i32>)> = plan.recompute.iter().collect();
        for chunk in weeks.chunks(FOLD_CHUNK) {
            let clear = format!(
                "ALTER TABLE {stage} {}",
                chunk
                    .iter()
                    .map(|(w, _)| format!("DROP PARTITION {}", literal(&date_text(**w))))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let days: BTreeSet<i32> = chunk.iter().flat_map(|(_, d)| d.iter().copied()).collect();
            // Every day of a recomputed week lies in it: its Monday is the week.
            let fold = (!days.is_empty()).then(|| {
                format!(
                    "INSERT INTO {stage} (week_start_date, client_type, user_id, symbol,
                         total_volume, total_pnl, trade_count)
                     SELECT toMonday(trade_date) AS week, client_type, user_id, symbol,
                         sum(quantity), sum(if(side = 'sell', amount, -amount)),
                         toInt64(count())
                     FROM (
                         SELECT trade_date, client_type, user_id, symbol, side, quantity,
                             toDecimal128(quantity, 8) * toDecimal128(price, 8) AS amount
                         FROM {} WHERE trade_date IN ({})
                     )
                     GROUP BY week, client_type, user_id, symbol",
                    self.table(Table::Trades),
                    date_list(days)
                )
            });
            // Cleared on every attempt: a retried insert that had landed
            // would count its trades twice.
            self.retry("recompute weeks", || async {
                self.client.query(&clear).execute().await?;
                match &fold {
                    Some(fold) => self.client.query(fold).execute().await,
                    None => Ok(()),
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Upserts the run's days into `loaded_days` (a higher version).
    async fn record_days(&self, plan: &WeekPlan, run_id: &str) -> Result<()> {
        if plan.run_days.is_empty() {
            return Ok(());
        }
        let version = self.next_version();
        let rows = plan
            .run_days
            .iter()
            .map(|d| LoadedDayRow::new(*d, plan.raw_trades, run_id, version))
            .collect::<Result<Vec<_>>>()?;
        self.insert_rows::<LoadedDayRow>(LOADED_DAYS, &rows).await
    }
}
