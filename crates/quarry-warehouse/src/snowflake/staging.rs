//! A run staged in Snowflake: its batches are written into Parquet files
//! of `stage_file_kib` each and `PUT` to the table stage of a per-run
//! transient staging table (`<table>_stage_<run>`, see `stage.rs` for the
//! upload); before the read-back the last files go up and `COPY INTO` loads
//! each staging table from its stage (Snowflake loads the files in
//! parallel, skips files it already loaded and purges them); the swap is
//! ONE transaction that deletes every covered partition, copies the staged
//! rows in and writes the run's record. Dropping a staging table drops its
//! stage.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use quarry_core::{Error, Result, Table};

use super::client::Snowflake;
use super::files::{file_batch, file_writer};
use super::sql::{IN_CHUNK, column_names, columns, literal, record_sql};
use crate::RunRecord;
use crate::staging::{StagedRun, StagedWarehouse, StagingBackend};

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

    async fn swap(&self, run: &mut StagedRun<Files>, record: &RunRecord) -> Result<()> {
        let mut statements = vec![];
        for (table, parts) in &run.staged.partitions {
            let parts: Vec<&String> = parts.iter().collect();
            for chunk in parts.chunks(IN_CHUNK) {
                let list: Vec<String> = chunk.iter().map(|p| literal(p)).collect();
                statements.push(format!(
                    "DELETE FROM {} WHERE {} IN ({})",
                    self.table(*table),
                    table.partition_column(),
                    list.join(", ")
                ));
            }
        }
        for table in run.staged.rows.keys() {
            let cols = column_names(*table);
            statements.push(format!(
                "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
                self.table(*table),
                self.stage(*table, &run.tag)
            ));
        }
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
