//! Parquet files: the input columns are projected and cast to text.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use quarry_core::schema::{EXTRACT_SCHEMA, INPUT_COLUMNS};
use quarry_core::{Error, Result};

use super::CheckedEmit;
use super::shared::{Mapping, map_columns, open};

pub(super) fn parquet_builder(
    path: &Path,
) -> Result<(ParquetRecordBatchReaderBuilder<File>, Mapping)> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(|e| {
        Error::input(format!(
            "{}: not a readable Parquet file: {e}",
            path.display()
        ))
    })?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mapping = map_columns(path, &names)?;
    Ok((builder, mapping))
}

pub(super) fn read_parquet(path: &Path, batch_rows: usize, emit: CheckedEmit<'_>) -> Result<()> {
    let (builder, m) = parquet_builder(path)?;
    let names: Vec<String> = m
        .index
        .iter()
        .map(|i| builder.schema().field(*i).name().clone())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), m.index);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| Error::input(format!("{}: {e}", path.display())).with_source(e))?;
    let mut next_row: u64 = 1;
    for batch in reader {
        let batch = batch.map_err(|e| {
            Error::input(format!(
                "{}: corrupt Parquet data near row {next_row}: {e}",
                path.display()
            ))
        })?;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(8);
        for (k, name) in names.iter().enumerate() {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| Error::internal(format!("projected column {name} missing")))?;
            let text = cast(col, &DataType::Utf8).map_err(|e| {
                Error::input(format!(
                    "{}: column {} of type {} cannot be read as text: {e}",
                    path.display(),
                    INPUT_COLUMNS[k],
                    col.data_type()
                ))
            })?;
            cols.push(text);
        }
        let n = batch.num_rows() as u64;
        cols.push(Arc::new(arrow::array::UInt64Array::from_iter_values(
            next_row..next_row + n,
        )));
        next_row += n;
        if !emit(RecordBatch::try_new(EXTRACT_SCHEMA.clone(), cols)?)? {
            return Ok(());
        }
    }
    Ok(())
}
