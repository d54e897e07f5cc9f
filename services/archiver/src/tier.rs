//! Moving date partitions between the warehouse (hot) and Parquet in object
//! storage (cold), crash-safe and idempotent.
//!
//! Cold layout under the root, per partition directory
//! `<table>/<column>=YYYY-MM-DD/`:
//! - `part-<uuid>.parquet`: the rows (zstd);
//! - `_manifest.json`: the files, row count and checksum — the commit point
//!   of a move: only files a manifest lists are cold data;
//! - `_lease-<n>.json`: who is moving the partition, until when;
//! - `_hold.json`: a restored partition stays hot until this date.
//!
//! Events go to `_events/<table>/<time>-<id>.json`.
//!
//! A move is export → verify (read back, compare count and checksum with the
//! warehouse) → manifest → drop the hot partition → event. A failure at any
//! step leaves the rows hot, or hot and cold; the next run finds the manifest
//! (or none) and finishes (or redoes) the move, deleting files no manifest
//! lists. Two archivers never move one partition at once: leases are created
//! with a conditional put, so only one of two racing archivers gets one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use chrono::{Days, NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use quarry_core::config::ArchiverConfig;
use quarry_core::dates::{date_text, now_text, parse_date};
use quarry_core::{Error, Result, Table};
use quarry_proto::{ArchiveEvent, PartitionEntry, PartitionMove};
use quarry_storage::Location;
use quarry_warehouse::{RunCommit, RunFailure, RunStart, Warehouse, WriteMode};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The cold copy of one partition. Written last: its presence means the
/// files it lists are complete and verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub table: String,
    pub partition: String,
    pub rows: u64,
    /// Order-independent checksum of the rows (see [`checksum`]).
    pub checksum: String,
    pub files: Vec<ManifestFile>,
    pub archived_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Name inside the partition directory.
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
}

impl Manifest {
    fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    /// Unix seconds.
    expires: i64,
}

/// One line of the archive's history (`_events/`).
#[derive(Debug, Serialize, Deserialize)]
struct EventRecord {
    at: String,
    /// archived | restored | verify_failed | failed
    action: String,
    table: String,
    partition: String,
    rows: u64,
    bytes: u64,
    detail: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    until: String,
}

/// A step of a move, for fault injection in tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// After the first file of a partition is written, before the rest.
    ExportMidway,
    Export,
    Verify,
    Manifest,
    Drop,
    /// After the partition was dropped from the warehouse, before the move
    /// is reported (a crash right after the drop).
    AfterDrop,
    /// Not a failure: overwrites the first exported file with other rows
    /// before verify reads it.
    Corrupt,
}

/// Row count and order-independent checksum of `batches`: the wrapping sum
/// of the XXH3-128 hashes of each row's canonical bytes (arrow's row format,
/// the same for equal values whatever the batch layout), as hex.
pub fn checksum(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(u64, String)> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields)
        .map_err(|e| Error::internal(format!("row converter for {schema:?}: {e}")))?;
    let (mut rows, mut sum) = (0u64, 0u128);
    for b in batches {
        let converted = conv
            .convert_columns(b.columns())
            .map_err(|e| Error::internal(format!("checksum: {e}")))?;
        for r in converted.iter() {
            sum = sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(r.as_ref()));
        }
        rows += b.num_rows() as u64;
    }
    Ok((rows, format!("{sum:032x}")))
}

/// What `archive` found or did for one partition.
fn outcome(table: Table, partition: &str, outcome: &str) -> PartitionMove {
    PartitionMove {
        table: table.name().into(),
        partition: partition.into(),
        outcome: outcome.into(),
        ..Default::default()
    }
}

pub struct Tier {
    warehouse: Arc<dyn Warehouse>,
    cold: Location,
    config: ArchiverConfig,
    /// This archiver's identity in leases.
    holder: String,
    /// One archive or restore at a time in this process (scheduled or requested).
    busy: tokio::sync::Mutex<()>,
    #[cfg(test)]
    fault: std::sync::Mutex<Option<Step>>,
}

impl Tier {
    pub fn new(warehouse: Arc<dyn Warehouse>, cold: Location, config: ArchiverConfig) -> Self {
        Self {
            warehouse,
            cold,
            config,
            holder: uuid::Uuid::now_v7().to_string(),
            busy: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            fault: std::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &ArchiverConfig {
        &self.config
    }

    pub fn cold_root(&self) -> &str {
        &self.cold.display
    }

    pub fn warehouse(&self) -> &Arc<dyn Warehouse> {
        &self.warehouse
    }

    /// The configured tables, or the one asked for (which must be configured).
    pub fn tables(&self, only: &str) -> Result<Vec<Table>> {
        let configured: Vec<Table> = self
            .config
            .tables
            .iter()
            .filter_map(|t| Table::parse(t))
            .collect();
        if only.is_empty() {
            return Ok(configured);
        }
        match configured.iter().find(|t| t.name() == only) {
            Some(t) => Ok(vec![*t]),
            None => Err(Error::input(format!(
                "table {only:?} is not archived (archiver.tables = {:?})",
                self.config.tables
            ))),
        }
    }

    fn dir(&self, table: Table, partition: &str) -> Path {
        self.cold.path(&[
            table.name(),
            &format!("{}={partition}", table.partition_column()),
        ])
    }

    fn store_err(&self, what: &str, path: &Path, e: object_store::Error) -> Error {
        quarry_storage::error(&format!("{what} {}/{path}", self.cold.display), e)
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>> {
        match self.cold.store.get(path).await {
            Ok(r) => {
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| self.store_err("reading", path, e))?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    Error::input(format!(
                        "{}/{path} is not a valid Quarry object: {e}",
                        self.cold.display
                    ))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("reading", path, e)),
        }
    }

    async fn put(&self, path: &Path, bytes: Vec<u8>, mode: PutMode) -> Result<()> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.cold
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
            .map(|_| ())
            .map_err(|e| self.store_err("writing", path, e))
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        match self.cold.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", path, e)),
        }
    }

    /// Names of the objects directly in a partition directory.
    async fn names(&self, dir: &Path) -> Result<Vec<String>> {
        let list: Vec<_> = self
            .cold
            .store
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|e| self.store_err("listing", dir, e))?;
        Ok(list
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    pub async fn manifest(&self, table: Table, partition: &str) -> Result<Option<Manifest>> {
        self.get_json(&self.dir(table, partition).join("_manifest.json"))
            .await
    }

    async fn hold(&self, table: Table, partition: &str) -> Result<Option<String>> {
        let hold: Option<Hold> = self
            .get_json(&self.dir(table, partition).join("_hold.json"))
            .await?;
        Ok(hold.map(|h| h.until))
    }

    /// Takes the partition's lease, or returns false if another archiver
    /// holds an unexpired one. Leases are numbered; a new one is created
    /// only if absent, so of two archivers replacing an expired lease one wins.
    async fn lease(&self, table: Table, partition: &str) -> Result<bool> {
        let dir = self.dir(table, partition);
        let mut seqs: Vec<u64> = self
            .names(&dir)
            .await?
            .iter()
            .filter_map(|n| {
                n.strip_prefix("_lease-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        seqs.sort_unstable();
        let now = Utc::now().timestamp();
        if let Some(&last) = seqs.last() {
            let path = dir.clone().join(format!("_lease-{last:010}.json"));
            if let Some(l) = self.get_json::<Lease>(&path).await?
                && l.expires > now
                && l.holder != self.holder
            {
                return Ok(false);
            }
        }
        let next = seqs.last().map_or(0, |s| s + 1);
        let lease = Lease {
            holder: self.holder.clone(),
            expires: now + self.config.lease_secs as i64,
        };
        let path = dir.clone().join(format!("_lease-{next:010}.json"));
        match self
            .cold
            .store
            .put_opts(
                &path,
                PutPayload::from(serde_json::to_vec(&lease).expect("lease json")),
                PutMode::Create.into(),
            )
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => return Ok(false),
            Err(e) => return Err(self.store_err("writing", &path, e)),
        }
        // Earlier leases are history now.
        for s in seqs {
            self.delete(&dir.clone().join(format!("_lease-{s:010}.json")))
                .await?;
        }
        Ok(true)
    }

    async fn release(&self, table: Table, partition: &str) {
        let dir = self.dir(table, partition);
        let Ok(names) = self.names(&dir).await else {
            return;
        };
        for n in names.iter().filter(|n| n.starts_with("_lease-")) {
            let path = dir.clone().join(n.as_str());
            if let Ok(Some(l)) = self.get_json::<Lease>(&path).await
                && l.holder == self.holder
            {
                let _ = self.delete(&path).await;
            }
        }
    }

    async fn event(&self, action: &str, table: Table, partition: &str, m: &PartitionMove) {
        let event = EventRecord {
            at: now_text(),
            action: action.into(),
            table: table.name().into(),
            partition: partition.into(),
            rows: m.rows,
            bytes: m.bytes,
            detail: m.detail.clone(),
        };
        // Names sort by time: `status` lists the newest.
        let stamp: String = event
            .at
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let path = self.cold.path(&[
            "_events",
            table.name(),
            &format!("{stamp}-{}.json", uuid::Uuid::now_v7()),
        ]);
        let json = serde_json::to_vec(&event).expect("event json");
        if let Err(e) = self.put(&path, json, PutMode::Create).await {
            warn!(error = %e, "could not record the archive event");
        }
    }

    #[cfg(test)]
    pub fn inject(&self, step: Option<Step>) {
        *self.fault.lock().unwrap() = step;
    }

    /// Fails here if a test asked for it.
    fn fault(&self, _step: &str) -> Result<()> {
        #[cfg(test)]
        {
            let f = *self.fault.lock().unwrap();
            if let Some(f) = f
                && format!("{f:?}") == _step
            {
                return Err(Error::backend(format!("injected failure at {_step}"), true));
            }
        }
        Ok(())
    }

    /// Hot partitions due to move: older than `hot_days` before `as_of`,
    /// not held after a restore.
    async fn due(&self, table: Table, as_of: NaiveDate) -> Result<(NaiveDate, Vec<(String, u64)>)> {
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
    async fn move_partition(&self, table: Table, partition: &str) -> Result<PartitionMove> {
        if !self.lease(table, partition).await? {
            let mut m = outcome(table, partition, "busy");
            m.detail = "another archiver holds the partition's lease".into();
            return Ok(m);
        }
        let result = self.move_leased(table, partition).await;
        self.release(table, partition).await;
        result
    }

    async fn move_leased(&self, table: Table, partition: &str) -> Result<PartitionMove> {
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
            if let Err(e) = verified.and_then(|_| self.fault("Verify")) {
                for f in &written.files {
                    self.delete(&dir.clone().join(f.name.as_str())).await?;
                }
                let mut m = outcome(table, partition, "failed");
                m.rows = rows;
                m.detail = e.to_string();
                self.event("verify_failed", table, partition, &m).await;
                return Err(e);
            }
            self.fault("Manifest")?;
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
        self.fault("Drop")?;
        let dropped = self.warehouse.drop_partition(table, partition).await?;
        if dropped != rows {
            return Err(Error::internal(format!(
                "{table} {partition}: the warehouse dropped {dropped} rows but {rows} were archived \
                 (the partition changed during the move; the archived copy is in {}/{dir})",
                self.cold.display
            )));
        }
        self.fault("AfterDrop")?;
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

    /// Writes `batches` as zstd Parquet files of at most `rows_per_file`
    /// rows, without the partition column: Hive readers take it from the
    /// directory name (a copy inside the files would clash with it).
    async fn export(
        &self,
        table: Table,
        dir: &Path,
        batches: &[RecordBatch],
    ) -> Result<Vec<ManifestFile>> {
        let (schema, keep) = file_columns(table);
        let schema = &schema;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("zstd level"),
            ))
            .set_max_row_group_row_count(Some(self.config.row_group_rows))
            .build();
        let mut files = vec![];
        let mut pending: Vec<RecordBatch> = vec![];
        let mut pending_rows = 0usize;
        let limit = self.config.rows_per_file;
        let projected = batches
            .iter()
            .map(|b| b.project(&keep))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::internal(format!("projecting {table}: {e}")))?;
        let mut slices = projected.iter().flat_map(|b| {
            (0..b.num_rows())
                .step_by(limit)
                .map(move |o| b.slice(o, limit.min(b.num_rows() - o)))
        });
        loop {
            let next = slices.next();
            let full = next
                .as_ref()
                .is_none_or(|b| pending_rows + b.num_rows() > limit);
            if full && pending_rows > 0 {
                let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))
                    .map_err(|e| Error::internal(format!("parquet writer: {e}")))?;
                for b in pending.drain(..) {
                    w.write(&b)
                        .map_err(|e| Error::internal(format!("parquet write: {e}")))?;
                }
                let bytes = w
                    .into_inner()
                    .map_err(|e| Error::internal(format!("parquet close: {e}")))?;
                let name = format!("part-{}.parquet", uuid::Uuid::now_v7());
                let size = bytes.len() as u64;
                self.put(&dir.clone().join(name.as_str()), bytes, PutMode::Create)
                    .await?;
                files.push(ManifestFile {
                    name,
                    rows: pending_rows as u64,
                    bytes: size,
                });
                pending_rows = 0;
                if files.len() == 1 {
                    self.fault("ExportMidway")?;
                }
            }
            let Some(b) = next else { break };
            pending_rows += b.num_rows();
            pending.push(b);
        }
        self.fault("Export")?;
        #[cfg(test)]
        if *self.fault.lock().unwrap() == Some(Step::Corrupt)
            && let (Some(f), Some(first)) = (files.first(), projected.first())
        {
            // The same schema and row count, other values (the first row
            // repeated): only the checksum can tell.
            let zeros = arrow::array::UInt32Array::from(vec![0u32; f.rows as usize]);
            let b = arrow::compute::take_record_batch(first, &zeros).unwrap();
            let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), None).unwrap();
            w.write(&b).unwrap();
            let bytes = w.into_inner().unwrap();
            self.put(
                &dir.clone().join(f.name.as_str()),
                bytes,
                PutMode::Overwrite,
            )
            .await?;
        }
        Ok(files)
    }

    /// Reads one cold file back as batches of `table.schema()`, the
    /// partition column filled in from `partition`.
    async fn read_file(
        &self,
        table: Table,
        partition: &str,
        path: &Path,
    ) -> Result<Vec<RecordBatch>> {
        let bytes: Bytes = self
            .cold
            .store
            .get(path)
            .await
            .map_err(|e| self.store_err("reading", path, e))?
            .bytes()
            .await
            .map_err(|e| self.store_err("reading", path, e))?;
        let bad = |e: &dyn std::fmt::Display| {
            Error::input(format!(
                "{}/{path} is not readable Parquet: {e}",
                self.cold.display
            ))
        };
        let day = parse_date(partition).ok_or_else(|| {
            Error::input(format!("{table} partition {partition:?} is not a date"))
        })?;
        let (file_schema, _) = file_columns(table);
        let at = partition_index(table);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| bad(&e))?
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| bad(&e))?;
        let mut out = vec![];
        for b in reader {
            let b = b.map_err(|e| bad(&e))?;
            if b.schema().fields() != file_schema.fields() {
                return Err(bad(&format!(
                    "columns {:?}, expected {:?}",
                    b.schema().fields(),
                    file_schema.fields()
                )));
            }
            let mut columns = b.columns().to_vec();
            columns.insert(
                at,
                Arc::new(arrow::array::Date32Array::from(vec![day; b.num_rows()])),
            );
            out.push(RecordBatch::try_new(table.schema(), columns).map_err(|e| bad(&e))?);
        }
        Ok(out)
    }

    /// Reads every file `manifest` lists and checks each file's row count and
    /// the partition's count and checksum against it.
    async fn read_checked(&self, table: Table, manifest: &Manifest) -> Result<Vec<RecordBatch>> {
        let partition = manifest.partition.as_str();
        let dir = self.dir(table, partition);
        let mut batches = vec![];
        for f in &manifest.files {
            let b = self
                .read_file(table, partition, &dir.clone().join(f.name.as_str()))
                .await?;
            let rows: usize = b.iter().map(|b| b.num_rows()).sum();
            if rows as u64 != f.rows {
                return Err(Error::input(format!(
                    "{}/{dir}/{}: {rows} rows, the manifest says {}",
                    self.cold.display, f.name, f.rows
                )));
            }
            batches.extend(b);
        }
        let (rows, sum) = checksum(&table.schema(), &batches)?;
        if rows != manifest.rows || sum != manifest.checksum {
            return Err(Error::input(format!(
                "{}/{dir}: the files hold {rows} rows with checksum {sum}, the manifest {} rows with {}",
                self.cold.display, manifest.rows, manifest.checksum
            )));
        }
        Ok(batches)
    }

    /// The rows of a cold partition, checked against its manifest.
    pub async fn read_cold(&self, table: Table, partition: &str) -> Result<Vec<RecordBatch>> {
        let Some(m) = self.manifest(table, partition).await? else {
            return Err(Error::input(format!(
                "{table} {partition} is not in cold storage ({})",
                self.cold.display
            )));
        };
        self.read_checked(table, &m).await
    }

    /// Cold partitions of `table` (those with a manifest).
    async fn cold_partitions(&self, table: Table) -> Result<BTreeMap<String, Manifest>> {
        let base = self.cold.path(&[table.name()]);
        let list = self
            .cold
            .store
            .list_with_delimiter(Some(&base))
            .await
            .map_err(|e| self.store_err("listing", &base, e))?;
        let prefix = format!("{}=", table.partition_column());
        let mut out = BTreeMap::new();
        for p in list.common_prefixes {
            let Some(value) = p.filename().and_then(|n| n.strip_prefix(prefix.as_str())) else {
                continue;
            };
            if let Some(m) = self.manifest(table, value).await? {
                out.insert(value.to_string(), m);
            }
        }
        Ok(out)
    }

    /// Copies the cold partitions from..=to back into the warehouse in one
    /// run (an atomic partition overwrite) and holds them hot for `hold_days`.
    pub async fn restore(
        &self,
        only: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<PartitionMove>> {
        if only.is_empty() {
            return Err(Error::input("restore needs a table"));
        }
        let table = self.tables(only)?[0];
        let _busy = self.busy.lock().await;
        let (from, to) = (date_text_of(from), date_text_of(to));
        let parts: Vec<String> = self
            .cold_partitions(table)
            .await?
            .into_keys()
            .filter(|p| *p >= from && *p <= to)
            .collect();
        let mut moves = vec![];
        if parts.is_empty() {
            return Ok(moves);
        }
        let mut leased = vec![];
        let result = async {
            for p in &parts {
                if !self.lease(table, p).await? {
                    return Err(Error::backend(
                        format!("{table} {p} is being moved by another archiver; try again later"),
                        true,
                    ));
                }
                leased.push(p.clone());
            }
            let run_id = format!("restore-{}", uuid::Uuid::now_v7());
            self.warehouse
                .begin_run(RunStart {
                    run_id: run_id.clone(),
                    source: format!("{}/{table} {from}..{to}", self.cold.display),
                    options_json: serde_json::json!({"restore": {"table": table.name(), "from": from, "to": to}}).to_string(),
                    owner_json: quarry_warehouse::owner::RunOwner::this_process("archiver").to_json(),
                })
                .await?;
            let written = async {
                for p in &parts {
                    let batches = self.read_cold(table, p).await?;
                    let mut m = outcome(table, p, "restored");
                    for b in batches {
                        m.rows += self
                            .warehouse
                            .write(&run_id, table, WriteMode::ReplacePartitions, b)
                            .await?;
                    }
                    let manifest = self.manifest(table, p).await?.expect("read above");
                    m.bytes = manifest.bytes();
                    m.files = manifest.files.len() as u32;
                    moves.push(m);
                }
                self.warehouse
                    .commit(RunCommit {
                        run_id: run_id.clone(),
                        source_files: vec![],
                        stats: Default::default(),
                        quality_json: String::new(),
                    })
                    .await
            }
            .await;
            if let Err(e) = written {
                let _ = self
                    .warehouse
                    .abort(RunFailure {
                        run_id,
                        category: e.category(),
                        message: e.to_string(),
                        stats: Default::default(),
                        quality_json: String::new(),
                    })
                    .await;
                return Err(e);
            }
            let until = date_text_of(
                Utc::now().date_naive() + Days::new(self.config.hold_days.into()),
            );
            for m in &moves {
                let hold = serde_json::to_vec(&Hold {
                    until: until.clone(),
                })
                .expect("hold json");
                self.put(
                    &self.dir(table, &m.partition).join("_hold.json"),
                    hold,
                    PutMode::Overwrite,
                )
                .await?;
                self.event("restored", table, &m.partition, m).await;
            }
            Ok(())
        }
        .await;
        for p in &leased {
            self.release(table, p).await;
        }
        result.map(|()| moves)
    }

    /// Hot and cold partitions of the configured tables (or `only`).
    pub async fn list(&self, only: &str) -> Result<Vec<PartitionEntry>> {
        let mut out = vec![];
        for table in self.tables(only)? {
            let hot: BTreeMap<String, u64> = self
                .warehouse
                .list_partitions(table)
                .await?
                .into_iter()
                .map(|p| (p.partition, p.rows))
                .collect();
            let cold = self.cold_partitions(table).await?;
            let all: BTreeSet<&String> = hot.keys().chain(cold.keys()).collect();
            for p in all {
                let m = cold.get(p);
                out.push(PartitionEntry {
                    table: table.name().into(),
                    partition: p.clone(),
                    hot_rows: hot.get(p).copied(),
                    cold_rows: m.map(|m| m.rows),
                    cold_bytes: m.map_or(0, Manifest::bytes),
                    cold_files: m.map_or(0, |m| m.files.len() as u32),
                    hold_until: if m.is_some() {
                        self.hold(table, p).await?.unwrap_or_default()
                    } else {
                        String::new()
                    },
                });
            }
        }
        Ok(out)
    }

    /// The newest `n` events, newest first.
    pub async fn events(&self, n: usize) -> Result<Vec<ArchiveEvent>> {
        let base = self.cold.path(&["_events"]);
        let mut list: Vec<_> = self
            .cold
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| self.store_err("listing", &base, e))?;
        list.sort_by(|a, b| b.location.filename().cmp(&a.location.filename()));
        let mut out = vec![];
        for meta in list.into_iter().take(n) {
            if let Some(e) = self.get_json::<EventRecord>(&meta.location).await? {
                out.push(ArchiveEvent {
                    at: e.at,
                    action: e.action,
                    table: e.table,
                    partition: e.partition,
                    rows: e.rows,
                    bytes: e.bytes,
                    detail: e.detail,
                });
            }
        }
        Ok(out)
    }
}

/// Position of the partition column in `table.schema()`.
fn partition_index(table: Table) -> usize {
    table
        .schema()
        .index_of(table.partition_column())
        .expect("the partition column is in the schema")
}

/// The schema of a cold file (the table's without its partition column) and
/// the indices of its columns in the table's schema.
fn file_columns(table: Table) -> (SchemaRef, Vec<usize>) {
    let at = partition_index(table);
    let keep: Vec<usize> = (0..table.schema().fields().len())
        .filter(|&i| i != at)
        .collect();
    let schema = table
        .schema()
        .project(&keep)
        .expect("indices of the schema");
    (Arc::new(schema), keep)
}

fn date_text_of(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Parses a `YYYY-MM-DD` option.
pub fn parse_day(what: &str, s: &str) -> Result<NaiveDate> {
    parse_date(s)
        .map(|days| {
            NaiveDate::parse_from_str(&date_text(days), "%Y-%m-%d").expect("formatted date")
        })
        .ok_or_else(|| Error::input(format!("{what} {s:?} is not a date like 2024-01-31")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Decimal128Array, StringArray, TimestampNanosecondArray};
    use quarry_core::schema::QUANTITY_TYPE;
    use quarry_warehouse::sqlite::SqliteWarehouse;

    const DAY0: i32 = 19_723; // 2024-01-01

    /// Trades of `days` days from 2024-01-01, `per_day` rows each.
    fn trades(days: i32, per_day: i32) -> Vec<RecordBatch> {
        (0..days)
            .map(|d| {
                let n = per_day as usize;
                let day = DAY0 + d;
                let ns = |i: i32| (day as i64 * 86_400 + i as i64 * 60) * 1_000_000_000;
                let dec = |f: fn(i32) -> i128| {
                    Arc::new(
                        Decimal128Array::from((0..per_day).map(f).collect::<Vec<_>>())
                            .with_data_type(QUANTITY_TYPE),
                    )
                };
                RecordBatch::try_new(
                    Table::Trades.schema(),
                    vec![
                        Arc::new(
                            TimestampNanosecondArray::from(
                                (0..per_day).map(ns).collect::<Vec<_>>(),
                            )
                            .with_timezone("UTC"),
                        ),
                        Arc::new(StringArray::from(
                            (0..per_day)
                                .map(|i| format!("u{}", i % 7))
                                .collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from(vec!["bronze"; n])),
                        Arc::new(StringArray::from(vec!["AAPL"; n])),
                        Arc::new(StringArray::from(
                            (0..per_day)
                                .map(|i| if i % 2 == 0 { "buy" } else { "sell" })
                                .collect::<Vec<_>>(),
                        )),
                        dec(|i| (i as i128 + 1) * 100_000_000),
                        dec(|i| 12_345_678_901 + i as i128),
                        Arc::new(Date32Array::from(vec![day; n])),
                    ],
                )
                .unwrap()
            })
            .collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        db: std::path::PathBuf,
        cold: std::path::PathBuf,
        original: Vec<RecordBatch>,
    }

    impl Fixture {
        /// Six days of trades committed into a fresh SQLite warehouse.
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("w.db");
            let cold = dir.path().join("cold");
            let original = trades(6, 50);
            let wh = SqliteWarehouse::open(&db).unwrap();
            wh.check_connectivity().await.unwrap();
            wh.begin_run(RunStart {
                run_id: "load".into(),
                source: "test".into(),
                options_json: "{}".into(),
                owner_json: quarry_warehouse::owner::RunOwner::this_process("archiver").to_json(),
            })
            .await
            .unwrap();
            for b in &original {
                wh.write(
                    "load",
                    Table::Trades,
                    WriteMode::ReplacePartitions,
                    b.clone(),
                )
                .await
                .unwrap();
            }
            wh.commit(RunCommit {
                run_id: "load".into(),
                source_files: vec![],
                stats: Default::default(),
                quality_json: String::new(),
            })
            .await
            .unwrap();
            wh.close().await.unwrap();
            Self {
                _dir: dir,
                db,
                cold,
                original,
            }
        }

        /// An archiver over the fixture's warehouse and cold directory;
        /// hot_days = 2 and small files, so a partition spans several.
        fn tier(&self) -> Tier {
            let wh = Arc::new(SqliteWarehouse::open(&self.db).unwrap());
            let cold =
                quarry_storage::open(self.cold.to_str().unwrap(), &Default::default()).unwrap();
            let config = ArchiverConfig {
                hot_days: 2,
                rows_per_file: 20,
                row_group_rows: 8,
                ..Default::default()
            };
            Tier::new(wh, cold, config)
        }
    }

    /// 2024-01-06: with hot_days = 2, the days before 01-04 (three) are due.
    fn as_of() -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(2024, 1, 6)
    }

    /// Rows as sorted text, so that expected values do not come from the
    /// archiver's own checksum.
    fn rows_text(batches: &[RecordBatch]) -> Vec<String> {
        let mut rows = quarry_testkit::rows_text(batches);
        rows.sort();
        rows
    }

    /// Every row, hot and cold (as the manifests list them), as text.
    async fn everything(t: &Tier) -> Vec<String> {
        let mut all = vec![];
        for p in t.warehouse.list_partitions(Table::Trades).await.unwrap() {
            all.extend(
                t.warehouse
                    .read_partition(Table::Trades, &p.partition)
                    .await
                    .unwrap(),
            );
        }
        for p in t.cold_partitions(Table::Trades).await.unwrap().keys() {
            all.extend(t.read_cold(Table::Trades, p).await.unwrap());
        }
        rows_text(&all)
    }

    /// (partition, outcome) of each move.
    fn outcomes(moves: &[PartitionMove]) -> Vec<(String, String)> {
        moves
            .iter()
            .map(|m| (m.partition.clone(), m.outcome.clone()))
            .collect()
    }

    /// The three due days with one outcome each.
    fn due_days(outcome: &str) -> Vec<(String, String)> {
        ["2024-01-01", "2024-01-02", "2024-01-03"]
            .iter()
            .map(|d| (d.to_string(), outcome.to_string()))
            .collect()
    }

    async fn hot_days(t: &Tier) -> Vec<String> {
        let parts = t.warehouse.list_partitions(Table::Trades).await.unwrap();
        parts.into_iter().map(|p| p.partition).collect()
    }

    /// Parquet files in a partition directory that no manifest lists.
    async fn orphans(t: &Tier, partition: &str) -> Vec<String> {
        let dir = t.dir(Table::Trades, partition);
        let listed: Vec<String> = t
            .manifest(Table::Trades, partition)
            .await
            .unwrap()
            .map(|m| m.files.into_iter().map(|f| f.name).collect())
            .unwrap_or_default();
        t.names(&dir)
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(".parquet") && !listed.contains(n))
            .collect()
    }

    #[tokio::test]
    async fn old_partitions_move_and_come_back() {
        let f = Fixture::new().await;
        let t = f.tier();
        let want = rows_text(&f.original);

        let (cutoff, dry) = t.archive("", as_of(), true).await.unwrap();
        assert_eq!(cutoff, "2024-01-04");
        assert_eq!(dry.len(), 3);
        assert!(
            dry.iter()
                .all(|m| m.outcome == "would_archive" && m.rows == 50)
        );
        assert_eq!(hot_days(&t).await.len(), 6, "a dry run moves nothing");

        let (_, moves) = t.archive("trades", as_of(), false).await.unwrap();
        let outcomes: Vec<_> = moves.iter().map(|m| m.outcome.as_str()).collect();
        assert_eq!(outcomes, ["archived"; 3]);
        assert!(
            moves.iter().all(|m| m.files == 3 && m.bytes > 0),
            "{moves:?}"
        );
        assert_eq!(
            hot_days(&t).await,
            ["2024-01-04", "2024-01-05", "2024-01-06"]
        );
        assert!(
            everything(&t).await == want,
            "hot + cold = the original rows"
        );

        // Nothing is due any more; a second run changes nothing.
        let (_, again) = t.archive("", as_of(), false).await.unwrap();
        assert!(again.is_empty(), "{again:?}");

        let listed = t.list("").await.unwrap();
        assert_eq!(listed.len(), 6);
        assert_eq!(listed.iter().filter(|p| p.cold_rows == Some(50)).count(), 3);

        // Restore all three: the warehouse is as before, and held hot.
        let restored = t
            .restore(
                "trades",
                NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
                NaiveDate::from_ymd_opt(2024, 1, 3).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(restored.len(), 3);
        let mut hot = vec![];
        for p in hot_days(&t).await {
            hot.extend(t.warehouse.read_partition(Table::Trades, &p).await.unwrap());
        }
        assert_eq!(rows_text(&hot), want);
        let (_, held) = t.archive("", as_of(), true).await.unwrap();
        assert!(held.is_empty(), "restored partitions are held: {held:?}");

        let events = t.events(10).await.unwrap();
        assert_eq!(events.len(), 6);
        assert_eq!(events[0].action, "restored");
    }

    #[tokio::test]
    async fn a_failure_at_any_step_loses_nothing_and_the_next_run_finishes() {
        for step in [
            Step::ExportMidway,
            Step::Export,
            Step::Verify,
            Step::Manifest,
            Step::Drop,
            Step::AfterDrop,
        ] {
            let f = Fixture::new().await;
            let t = f.tier();
            let want = rows_text(&f.original);
            assert_eq!(want.len(), 300);
            t.inject(Some(step));
            let (_, moves) = t.archive("", as_of(), false).await.unwrap();
            assert_eq!(outcomes(&moves), due_days("failed"), "{step:?}");
            assert!(
                moves.iter().all(|m| m.detail.contains("injected failure")),
                "{step:?}: {moves:?}"
            );
            // Every row is hot or cold (or both), never neither; cold holds
            // only published copies.
            let dropped = step == Step::AfterDrop;
            assert_eq!(
                hot_days(&t).await.len(),
                if dropped { 3 } else { 6 },
                "{step:?}"
            );
            let cold = t.cold_partitions(Table::Trades).await.unwrap();
            let published = matches!(step, Step::Drop | Step::AfterDrop);
            assert_eq!(cold.len(), if published { 3 } else { 0 }, "{step:?}");
            // Rows of a published but not yet dropped partition are in
            // both tiers: none is missing.
            let mut seen = everything(&t).await;
            seen.dedup();
            assert!(seen == want, "{step:?}: rows lost by the failure");

            // The next run finishes the job: the three days end up cold,
            // exactly once, with no file left that no manifest lists.
            t.inject(None);
            let (_, moves) = t.archive("", as_of(), false).await.unwrap();
            let expected = match step {
                Step::Drop => due_days("finished"),
                // Dropped already: nothing is due any more.
                Step::AfterDrop => vec![],
                _ => due_days("archived"),
            };
            assert_eq!(outcomes(&moves), expected, "{step:?}");
            assert_eq!(
                hot_days(&t).await,
                ["2024-01-04", "2024-01-05", "2024-01-06"],
                "{step:?}"
            );
            assert_eq!(
                t.cold_partitions(Table::Trades).await.unwrap().len(),
                3,
                "{step:?}"
            );
            assert!(
                everything(&t).await == want,
                "{step:?}: rows lost or doubled"
            );
            for p in ["2024-01-01", "2024-01-02", "2024-01-03"] {
                assert!(orphans(&t, p).await.is_empty(), "{step:?}: orphans in {p}");
            }
        }
    }

    /// An archiver killed while it held a lease never releases it: the
    /// partition is busy for others until the lease expires, then the next
    /// archiver takes it over and finishes the move.
    #[tokio::test]
    async fn a_lease_left_by_a_killed_archiver_expires() {
        let f = Fixture::new().await;
        let mut killed = f.tier();
        killed.config.lease_secs = 1;
        assert!(killed.lease(Table::Trades, "2024-01-01").await.unwrap());
        drop(killed);
        let t = f.tier();
        let (_, moves) = t.archive("", as_of(), false).await.unwrap();
        assert_eq!(
            outcomes(&moves),
            [
                ("2024-01-01".to_string(), "busy".to_string()),
                ("2024-01-02".to_string(), "archived".to_string()),
                ("2024-01-03".to_string(), "archived".to_string()),
            ]
        );
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let (_, moves) = t.archive("", as_of(), false).await.unwrap();
        assert_eq!(
            outcomes(&moves),
            [("2024-01-01".to_string(), "archived".to_string())]
        );
        assert!(everything(&t).await == rows_text(&f.original));
    }

    #[tokio::test]
    async fn a_corrupted_cold_file_is_caught_and_the_partition_stays_hot() {
        let f = Fixture::new().await;
        let t = f.tier();
        t.inject(Some(Step::Corrupt));
        let (_, moves) = t.archive("", as_of(), false).await.unwrap();
        assert!(
            moves
                .iter()
                .all(|m| m.outcome == "failed" && m.detail.contains("checksum")),
            "{moves:?}"
        );
        assert_eq!(hot_days(&t).await.len(), 6);
        assert!(t.cold_partitions(Table::Trades).await.unwrap().is_empty());
        assert!(
            orphans(&t, "2024-01-01").await.is_empty(),
            "bad files deleted"
        );
        let events = t.events(10).await.unwrap();
        assert!(events.iter().any(|e| e.action == "verify_failed"));
    }

    #[tokio::test]
    async fn a_second_archiver_backs_off_a_leased_partition() {
        let f = Fixture::new().await;
        let (a, b) = (f.tier(), f.tier());
        assert!(a.lease(Table::Trades, "2024-01-01").await.unwrap());
        assert!(!b.lease(Table::Trades, "2024-01-01").await.unwrap());
        let (_, moves) = b.archive("", as_of(), false).await.unwrap();
        let outcomes: Vec<_> = moves.iter().map(|m| m.outcome.as_str()).collect();
        assert_eq!(outcomes, ["busy", "archived", "archived"]);
        a.release(Table::Trades, "2024-01-01").await;
        let (_, moves) = b.archive("", as_of(), false).await.unwrap();
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].outcome, "archived");
    }
}
