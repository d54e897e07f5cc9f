//! Parquet files: the input columns are projected and cast to text.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{ChunkReader, Length};
use quarry_core::schema::{EXTRACT_SCHEMA, INPUT_COLUMNS};
use quarry_core::{Error, Result};

use super::CheckedEmit;
use super::shared::{Mapping, map_columns, open};
use crate::objects::{ObjectFile, Stores};

/// A Parquet file on disk or an object: what the Parquet reader reads.
pub(super) enum Input {
    File(File),
    Object(ObjectFile),
}

impl Length for Input {
    fn len(&self) -> u64 {
        match self {
            Input::File(f) => f.len(),
            Input::Object(o) => o.len(),
        }
    }
}

/// A stream of either kind of input.
pub(super) enum InputRead {
    File(<File as ChunkReader>::T),
    Object(<ObjectFile as ChunkReader>::T),
}

impl Read for InputRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            InputRead::File(r) => r.read(buf),
            InputRead::Object(r) => r.read(buf),
        }
    }
}

impl ChunkReader for Input {
    type T = InputRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<InputRead> {
        Ok(match self {
            Input::File(f) => InputRead::File(f.get_read(start)?),
            Input::Object(o) => InputRead::Object(o.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Input::File(f) => f.get_bytes(start, length),
            Input::Object(o) => o.get_bytes(start, length),
        }
    }
}

pub(super) fn parquet_builder(
    stores: &Stores,
    path: &Path,
) -> Result<(ParquetRecordBatchReaderBuilder<Input>, Mapping)> {
    let (input, codec) = match crate::objects::url_of(path) {
        Some(url) => {
            let object = stores.object_file(&url?)?;
            let head = object.head()?;
            (
                Input::Object(object),
                super::compression::check(path, &head)?,
            )
        }
        None => {
            let mut file = open(path)?;
            let codec = super::compression::detect(path, &mut file)?;
            (Input::File(file), codec)
        }
    };
    if let Some(codec) = codec {
        return Err(Error::input(format!(
            "{}: a {}-compressed Parquet file; Parquet compresses its own pages: decompress it first",
            path.display(),
            codec.name()
        )));
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(input).map_err(|e| {
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

pub(super) fn read_parquet(
    stores: &Stores,
    path: &Path,
    batch_rows: usize,
    emit: CheckedEmit<'_>,
) -> Result<()> {
    let (builder, m) = parquet_builder(stores, path)?;
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
