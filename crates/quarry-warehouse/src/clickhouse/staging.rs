//! A run staged in ClickHouse: batches into unpartitioned Log tables
//! (`<table>_flat_<run>`, one part per batch), read back by count, copied
//! server-side into partitioned staging tables of the target's structure
//! (`<table>_stage_<run>`, one part per partition), then every covered
//! partition swapped in with `ALTER TABLE … REPLACE PARTITION … FROM` (up to
//! 100 per statement). Each swap is atomic; the commit as a whole is not:
//! if it fails half-way, every partition holds either its old rows or this
//! run's complete rows, and running the run again completes it.

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use quarry_core::{Result, Table};

use super::client::{ClickHouse, literal};
use super::rows::{AggRow, RejectedRow, Rows, RunRow, TradeRow, encode};
use crate::RunRecord;
use crate::staging::{StagedRun, StagedWarehouse, StagingBackend};

/// Partition commands per ALTER statement.
const ALTER_CHUNK: usize = 100;

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

    async fn swap(&self, run: &mut StagedRun<()>, record: &RunRecord) -> Result<()> {
        for table in run.staged.rows.keys() {
            // Into the partitioned stage in big blocks: one part per day.
            self.execute(
                &format!("partition staged {table} rows"),
                &format!(
                    "INSERT INTO {} SELECT * FROM {}",
                    self.stage(*table, &run.tag),
                    self.flat(*table, &run.tag)
                ),
            )
            .await?;
        }
        for (table, parts) in &run.staged.partitions {
            let stage = self.stage(*table, &run.tag);
            let staged: BTreeSet<String> = if run.staged.rows.contains_key(table) {
                let sql = format!(
                    "SELECT DISTINCT toString({}) FROM {stage}",
                    table.partition_column()
                );
                self.retry("list staged partitions", || {
                    self.client.query(&sql).fetch_all::<String>()
                })
                .await?
                .into_iter()
                .collect()
            } else {
                BTreeSet::new()
            };
            let commands: Vec<String> = parts
                .iter()
                .map(|p| {
                    if staged.contains(p) {
                        format!("REPLACE PARTITION {} FROM {stage}", literal(p))
                    } else {
                        // Covered but empty now (e.g. a file without rejects any more).
                        format!("DROP PARTITION {}", literal(p))
                    }
                })
                .collect();
            for chunk in commands.chunks(ALTER_CHUNK) {
                self.execute(
                    &format!("replace partitions of {table}"),
                    &format!("ALTER TABLE {} {}", self.table(*table), chunk.join(", ")),
                )
                .await?;
            }
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
