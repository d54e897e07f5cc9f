//! The cold objects of a partition directory: its manifest, its hold, its
//! Parquet files; every read of cold rows is checked against the manifest.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Step, Tier};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use quarry_core::dates::parse_date;
use quarry_core::{Error, Result, Table};

use serde::{Deserialize, Serialize};

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
    pub(super) fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Hold {
    pub until: String,
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
    let conv = RowConverter::new(fields).map_err(|e| {
        Error::internal(format!("row converter for {schema:?}: {e}")).with_source(e)
    })?;
    let (mut rows, mut sum) = (0u64, 0u128);
    for b in batches {
        let converted = conv
            .convert_columns(b.columns())
            .map_err(|e| Error::internal(format!("checksum: {e}")).with_source(e))?;
        for r in converted.iter() {
            sum = sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(r.as_ref()));
        }
        rows += b.num_rows() as u64;
    }
    Ok((rows, format!("{sum:032x}")))
}

impl Tier {
    pub(super) fn store_err(&self, what: &str, path: &Path, e: object_store::Error) -> Error {
        quarry_storage::error(&format!("{what} {}/{path}", self.cold.display), e)
    }

    pub(super) async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>> {
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

    pub(super) async fn put(&self, path: &Path, bytes: Vec<u8>, mode: PutMode) -> Result<()> {
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

    pub(super) async fn delete(&self, path: &Path) -> Result<()> {
        match self.cold.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", path, e)),
        }
    }

    /// Names of the objects directly in a partition directory.
    pub(super) async fn names(&self, dir: &Path) -> Result<Vec<String>> {
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

    pub(super) async fn hold(&self, table: Table, partition: &str) -> Result<Option<String>> {
        let hold: Option<Hold> = self
            .get_json(&self.dir(table, partition).join("_hold.json"))
            .await?;
        Ok(hold.map(|h| h.until))
    }

    /// Writes `batches` as zstd Parquet files of at most `rows_per_file`
    /// rows, without the partition column: Hive readers take it from the
    /// directory name (a copy inside the files would clash with it).
    pub(super) async fn export(
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
            .map_err(|e| Error::internal(format!("projecting {table}: {e}")).with_source(e))?;
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
                    .map_err(|e| {
                    Error::internal(format!("parquet writer: {e}")).with_source(e)
                })?;
                for b in pending.drain(..) {
                    w.write(&b).map_err(|e| {
                        Error::internal(format!("parquet write: {e}")).with_source(e)
                    })?;
                }
                let bytes = w
                    .into_inner()
                    .map_err(|e| Error::internal(format!("parquet close: {e}")).with_source(e))?;
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
                    self.fault(Step::ExportMidway)?;
                }
            }
            let Some(b) = next else { break };
            pending_rows += b.num_rows();
            pending.push(b);
        }
        self.fault(Step::Export)?;
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
    pub(super) async fn read_file(
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
    pub(super) async fn read_checked(
        &self,
        table: Table,
        manifest: &Manifest,
    ) -> Result<Vec<RecordBatch>> {
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
    pub(super) async fn cold_partitions(&self, table: Table) -> Result<BTreeMap<String, Manifest>> {
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
