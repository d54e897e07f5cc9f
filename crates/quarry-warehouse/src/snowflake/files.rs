//! A run's batches as the Parquet files staged for `COPY INTO`: the
//! table's columns plus `run_id`, timestamps without a zone (the
//! TIMESTAMP_NTZ columns hold UTC), Snappy, row groups of 128 Ki rows.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use quarry_core::{Error, Result, Table};

/// Rows per row group of a staged file.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The Parquet schema of a table's staged files: its columns plus `run_id`,
/// timestamps without a zone (the TIMESTAMP_NTZ columns hold UTC).
pub(super) fn file_schema(table: Table) -> Arc<Schema> {
    let mut fields: Vec<Field> = table
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(unit, Some(_)) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(*unit, None)),
            _ => f.as_ref().clone(),
        })
        .collect();
    fields.push(Field::new("run_id", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// `batch` in the staged files' schema.
pub(super) fn file_batch(table: Table, batch: &RecordBatch, run_id: &str) -> Result<RecordBatch> {
    let schema = file_schema(table);
    let mut cols: Vec<ArrayRef> = vec![];
    for (col, field) in batch.columns().iter().zip(schema.fields()) {
        cols.push(if col.data_type() == field.data_type() {
            col.clone()
        } else {
            // Only the timestamp's zone differs: same values.
            arrow::compute::cast(col, field.data_type())?
        });
    }
    cols.push(Arc::new(StringArray::from(vec![run_id; batch.num_rows()])));
    Ok(RecordBatch::try_new(schema, cols)?)
}

pub(super) fn file_writer(table: Table) -> Result<ArrowWriter<Vec<u8>>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    ArrowWriter::try_new(Vec::new(), file_schema(table), Some(props)).map_err(|e| {
        Error::internal(format!("snowflake: staged file of {table}: {e}")).with_source(e)
    })
}
