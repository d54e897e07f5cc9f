//! Moving partitions out: export → verify → manifest → drop → event.

use std::collections::HashSet;

use super::{Manifest, Step, Tier, checksum, date_text_of, outcome};
use chrono::{Days, NaiveDate, Utc};
use object_store::PutMode;
use quarry_core::dates::now_text;
use quarry_core::{Error, Result, Table};
use quarry_proto::PartitionMove;

use tracing::{info, warn};

impl Tier {
    /// Hot partitions due to move: older than `hot_days` before `as_of`,
    /// not held after a restore.
    pub(super) async fn due(
        &self,
        table: Table,
        as_of: NaiveDate,
    ) -> Result<(NaiveDate, Vec<(String, u64)>)> {
        let cutoff = as_of
            .checked_sub_days(Days::new(self.config.hot_days.into()))
            .ok_or_else(|| Error::input(format!("--as-of {as_of} is too early")))?;
        let today = date_text_of(as_of);
        let mut due = vec![];
        for p in self.warehouse.list_partitions(table).await? {
            let Ok(d) = NaiveDate::parse_from_str(&p.partition, "%Y-%m-%d") else {
                continue;
            };
            if d >= cutoff {
                continue;
            }
            if let Some(until) = self.hold(table, &p.partition).await?
                && until.as_str() >= today.as_str()
            {
                continue;
            }
            due.push((p.partition, p.rows));
        }
        Ok((cutoff, due))
    }

    /// Archives every configured table (or `only`): moves the partitions
    /// older than `hot_days` before `as_of`, or with `dry_run` only lists
    /// them. A partition that fails is reported and the others go on.
    pub async fn archive(
        &self,
        only: &str,
        as_of: Option<NaiveDate>,
        dry_run: bool,
    ) -> Result<(String, Vec<PartitionMove>)> {
        let tables = self.tables(only)?;
        let as_of = as_of.unwrap_or_else(|| Utc::now().date_naive());
        let _busy = self.busy.lock().await;
        let mut moves = vec![];
        let mut cutoff = String::new();
        for table in tables {
            let (c, due) = self.due(table, as_of).await?;
            cutoff = date_text_of(c);
            for (partition, rows) in due {
                if dry_run {
                    let mut m = outcome(table, &partition, "would_archive");
                    m.rows = rows;
                    moves.push(m);
                    continue;
                }
                let m = match self.move_partition(table, &partition).await {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(table = %table, partition, error = %e, "archive failed");
                        let mut m = outcome(table, &partition, "failed");
                        m.rows = rows;
                        m.detail = e.to_string();
                        self.event("failed", table, &partition, &m).await;
                        m
                    }
                };
                moves.push(m);
            }
        }
        Ok((cutoff, moves))
    }

    /// Moves one partition under its lease.
    pub(super) async fn move_partition(
        &self,
        table: Table,
        partition: &str,
    ) -> Result<PartitionMove> {
        if !self.lease(table, partition).await? {
            let mut m = outcome(table, partition, "busy");
            m.detail = "another archiver holds the partition's lease".into();
            return Ok(m);
        }
        let result = self.move_leased(table, partition).await;
        self.release(table, partition).await;
        result
    }

    pub(super) async fn move_leased(&self, table: Table, partition: &str) -> Result<PartitionMove> {
        let schema = table.schema();
        let hot = self.warehouse.read_partition(table, partition).await?;
        let (rows, sum) = checksum(&schema, &hot)?;
        let dir = self.dir(table, partition);
        let existing = self.manifest(table, partition).await?;
        let already = existing
            .as_ref()
            .is_some_and(|m| m.rows == rows && m.checksum == sum);
        let manifest = if already {
            // An earlier move published the manifest and stopped before the drop.
            existing.expect("checked")
        } else {
            // Files of an interrupted export: no manifest lists them.
            let keep: HashSet<&str> = existing
                .iter()
                .flat_map(|m| m.files.iter().map(|f| f.name.as_str()))
                .collect();
            for n in self.names(&dir).await? {
                if n.ends_with(".parquet") && !keep.contains(n.as_str()) {
                    info!(table = %table, partition, file = %n, "deleting an orphan file");
                    self.delete(&dir.clone().join(n.as_str())).await?;
                }
            }
            let files = self.export(table, &dir, &hot).await?;
            let written = Manifest {
                table: table.name().into(),
                partition: partition.into(),
                rows,
                checksum: sum.clone(),
                files,
                archived_at: now_text(),
            };
            // Verify: the files read back must hold exactly the hot rows.
            let verified = self.read_checked(table, &written).await;
            if let Err(e) = verified.and_then(|_| self.fault(Step::Verify)) {
                for f in &written.files {
                    self.delete(&dir.clone().join(f.name.as_str())).await?;
                }
                let mut m = outcome(table, partition, "failed");
                m.rows = rows;
                m.detail = e.to_string();
                self.event("verify_failed", table, partition, &m).await;
                return Err(e);
            }
            self.fault(Step::Manifest)?;
            let json = serde_json::to_vec_pretty(&written).expect("manifest json");
            self.put(
                &dir.clone().join("_manifest.json"),
                json,
                PutMode::Overwrite,
            )
            .await?;
            // A replaced manifest's files are no longer cold data.
            if let Some(old) = &existing {
                for f in &old.files {
                    self.delete(&dir.clone().join(f.name.as_str())).await?;
                }
            }
            written
        };
        self.fault(Step::Drop)?;
        let dropped = self.warehouse.drop_partition(table, partition).await?;
        if dropped != rows {
            return Err(Error::internal(format!(
                "{table} {partition}: the warehouse dropped {dropped} rows but {rows} were archived \
                 (the partition changed during the move; the archived copy is in {}/{dir})",
                self.cold.display
            )));
        }
        self.fault(Step::AfterDrop)?;
        let mut m = outcome(
            table,
            partition,
            if already { "finished" } else { "archived" },
        );
        m.rows = rows;
        m.bytes = manifest.bytes();
        m.files = manifest.files.len() as u32;
        info!(table = %table, partition, rows, bytes = m.bytes, outcome = %m.outcome, "partition archived");
        self.event("archived", table, partition, &m).await;
        Ok(m)
    }
}
