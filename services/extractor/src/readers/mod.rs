//! Reading CSV, Parquet and NDJSON files into batches of text columns.
//!
//! Every reader maps the file's columns to the input columns by name
//! (trimmed, case-insensitive, any order), reports the columns it ignores,
//! and produces `EXTRACT_SCHEMA` batches: the seven input columns as text,
//! exactly as found, plus the 1-based line or row number for lineage.
//!
//! Memory per file is bounded whatever the file holds: a CSV record or an
//! NDJSON line longer than `max_record_bytes`, or an input field longer than
//! `max_field_bytes`, fails the file with its line number instead of being
//! buffered whole. Messages quote file content only as short, escaped
//! excerpts (`quarry_core::text`).
//!
//! CSV and NDJSON files may be compressed (`compression`): the readers see
//! the decompressed text, and line numbers count its lines.
//!
//! One file per format (`csv`, `parquet`, `ndjson`); `shared` holds what
//! they have in common: opening a file, mapping its columns, building the
//! batches. This file holds the entry points, the limits and their checks.

pub mod compression;
mod csv;
mod ndjson;
mod parquet;
pub(crate) mod shared;

use std::path::Path;

use arrow::array::RecordBatch;
use quarry_core::schema::INPUT_COLUMNS;
use quarry_core::{Error, Result};
use quarry_proto::{CsvOptions, FilePlan, SourceFormat};

use crate::objects::Stores;

use self::csv::{csv_reader, read_columns, read_csv};
use self::ndjson::{ndjson_plan, read_ndjson};
use self::parquet::{parquet_builder, read_parquet};
use self::shared::BatchBuilder;

/// Called with each batch; returns false when the consumer has gone away.
pub type Emit<'a> = &'a mut dyn FnMut(RecordBatch) -> bool;

/// Size limits that bound what one file can make the extractor hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest CSV record (quoted line breaks included) or NDJSON line.
    pub max_record_bytes: usize,
    /// Longest value of an input column.
    pub max_field_bytes: usize,
}

impl Limits {
    pub fn of(config: &quarry_core::config::ExtractorConfig) -> Self {
        Self {
            max_record_bytes: config.max_record_bytes,
            max_field_bytes: config.max_field_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::of(&quarry_core::config::ExtractorConfig::default())
    }
}

/// Checks a file's header or schema without reading its data.
pub fn plan(
    stores: &Stores,
    path: &Path,
    format: SourceFormat,
    csv: &CsvOptions,
    limits: Limits,
) -> Result<FilePlan> {
    let extra = match format {
        SourceFormat::Csv | SourceFormat::Unspecified => {
            csv_reader(stores, path, csv, limits)?.mapping.extra
        }
        SourceFormat::Parquet => parquet_builder(stores, path)?.1.extra,
        SourceFormat::Ndjson => ndjson_plan(stores, path, limits)?.extra,
        SourceFormat::Postgres => return Err(not_a_file(path)),
    };
    let size_bytes = size_of(stores, path).unwrap_or(0);
    Ok(FilePlan {
        file: path.display().to_string(),
        format: format as i32,
        size_bytes,
        extra_columns: extra,
    })
}

/// The size in bytes of a file or object (as stored: compressed if it is).
pub fn size_of(stores: &Stores, path: &Path) -> Result<u64> {
    match crate::objects::url_of(path) {
        Some(url) => stores.size(&url?),
        None => std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| Error::input(format!("cannot open {}: {e}", path.display()))),
    }
}

/// Reads a whole file, emitting batches of at most `batch_rows` rows.
pub fn read(
    stores: &Stores,
    path: &Path,
    format: SourceFormat,
    csv: &CsvOptions,
    batch_rows: usize,
    limits: Limits,
    emit: Emit<'_>,
) -> Result<()> {
    let (unit, max_field) = match format {
        SourceFormat::Parquet => ("row", limits.max_field_bytes),
        _ => ("line", limits.max_field_bytes),
    };
    // Every batch passes the field-size check on its way out.
    let mut checked = |batch: RecordBatch| -> Result<bool> {
        check_field_sizes(&batch, path, unit, max_field)?;
        Ok(emit(batch))
    };
    match format {
        SourceFormat::Csv | SourceFormat::Unspecified => {
            read_csv(stores, path, csv, batch_rows, limits, &mut checked)
        }
        SourceFormat::Parquet => read_parquet(stores, path, batch_rows, &mut checked),
        SourceFormat::Ndjson => read_ndjson(stores, path, batch_rows, limits, &mut checked),
        SourceFormat::Postgres => Err(not_a_file(path)),
    }
}

fn not_a_file(path: &Path) -> Error {
    Error::input(format!(
        "{}: the format POSTGRES is for postgresql:// sources",
        path.display()
    ))
}

/// Reads the rows of a PostgreSQL COPY stream (see `crate::postgres`),
/// named `name` in messages, with the same field-size check as files.
pub fn read_copy(
    input: impl std::io::Read,
    name: &str,
    batch_rows: usize,
    limits: Limits,
    emit: Emit<'_>,
) -> Result<()> {
    let path = Path::new(name);
    let mut checked = |batch: RecordBatch| -> Result<bool> {
        check_field_sizes(&batch, path, "row", limits.max_field_bytes)?;
        Ok(emit(batch))
    };
    read_columns(input, name, batch_rows, &mut checked)
}

/// Runs a reader that fills `b` and emits full batches; then emits the last,
/// partial batch — also when the reader fails, so the rows read before the
/// error reach the run (and its counts) before the error does.
fn flushing(
    b: &mut BatchBuilder,
    emit: CheckedEmit<'_>,
    body: impl FnOnce(&mut BatchBuilder, CheckedEmit<'_>) -> Result<()>,
) -> Result<()> {
    let result = body(b, &mut *emit);
    if b.len > 0 {
        let flushed = emit(b.finish()?);
        result?;
        flushed?;
        return Ok(());
    }
    result
}

/// Like [`Emit`], failing when a batch breaks a limit.
type CheckedEmit<'a> = &'a mut dyn FnMut(RecordBatch) -> Result<bool>;

/// Fails on the first input value longer than `max` bytes, naming its
/// line (or row) and column.
fn check_field_sizes(batch: &RecordBatch, path: &Path, unit: &str, max: usize) -> Result<()> {
    use arrow::array::AsArray;
    let rows = batch
        .column(7)
        .as_primitive::<arrow::datatypes::UInt64Type>();
    for (k, col) in batch.columns()[..7].iter().enumerate() {
        let offsets = col.as_string::<i32>().offsets();
        if let Some(i) = offsets
            .windows(2)
            .position(|w| (w[1] - w[0]) as usize > max)
        {
            return Err(Error::input(format!(
                "{} {unit} {}: {} holds {} bytes, more than {max} (extractor.max_field_bytes)",
                path.display(),
                rows.value(i),
                INPUT_COLUMNS[k],
                offsets[i + 1] - offsets[i]
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;

    use super::*;

    fn read_all(path: &Path, format: SourceFormat) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        read(
            &Stores::default(),
            path,
            format,
            &CsvOptions::default(),
            2,
            Limits::default(),
            &mut |b| {
                out.push(b);
                true
            },
        )?;
        Ok(out)
    }

    fn source_rows(batches: &[RecordBatch]) -> Vec<u64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column(7)
                    .as_primitive::<arrow::datatypes::UInt64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn cell(batches: &[RecordBatch], col: usize, row: usize) -> Option<String> {
        let mut r = row;
        for b in batches {
            if r < b.num_rows() {
                let a = b.column(col).as_string::<i32>();
                return (!arrow::array::Array::is_null(a, r)).then(|| a.value(r).to_string());
            }
            r -= b.num_rows();
        }
        panic!("no row {row}");
    }

    #[test]
    fn csv_with_bom_crlf_quotes_and_any_column_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(
            &p,
            "\u{feff}Price,SIDE,symbol,quantity,client_type,user_id,timestamp,note\r\n\
             1.5,buy,AAPL,2,gold,1,2023-01-02 00:00:00,\"a, \"\"quoted\"\"\r\nnote\"\r\n\
             2,sell,MSFT,3,silver,2,2023-01-03 00:00:00,\r\n\
             3,sell,X,4,bronze,3,,\r\n",
        )
        .unwrap();
        let plan = plan(
            &Stores::default(),
            &p,
            SourceFormat::Csv,
            &CsvOptions::default(),
            Limits::default(),
        )
        .unwrap();
        assert_eq!(plan.extra_columns, ["note"]);
        let b = read_all(&p, SourceFormat::Csv).unwrap();
        assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(cell(&b, 0, 0).unwrap(), "2023-01-02 00:00:00");
        assert_eq!(cell(&b, 6, 1).unwrap(), "2");
        assert_eq!(cell(&b, 0, 2).unwrap(), "");
        // Line numbers count the header and the quoted line break.
        let rows = source_rows(&b);
        assert_eq!(rows, [2, 4, 5]);

        let lf = dir.path().join("lf.csv");
        std::fs::write(&lf, "timestamp,user_id,client_type,symbol,side,quantity,price\n1,2,3,4,5,6,7\n\n1,2,3,4,5,6,7\n").unwrap();
        let b = read_all(&lf, SourceFormat::Csv).unwrap();
        let rows = source_rows(&b);
        assert_eq!(rows, [2, 4]);
    }

    #[test]
    fn missing_columns_and_binary_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        std::fs::write(&p, "timestamp,user_id,client_type,symbol,side,quantity\n").unwrap();
        let e = plan(
            &Stores::default(),
            &p,
            SourceFormat::Csv,
            &CsvOptions::default(),
            Limits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("m.csv") && e.contains("missing required column price"),
            "{e}"
        );

        std::fs::write(
            &p,
            "timestamp;user_id;client_type;symbol;side;quantity;price\n",
        )
        .unwrap();
        let e = plan(
            &Stores::default(),
            &p,
            SourceFormat::Csv,
            &CsvOptions::default(),
            Limits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("';'-delimited"), "{e}");

        let bin = dir.path().join("b.csv");
        std::fs::write(
            &bin,
            [0x89u8, b'P', b'N', b'G', 0, 0xff, 0xfe, b'\n', 1, 2, 3],
        )
        .unwrap();
        let e = plan(
            &Stores::default(),
            &bin,
            SourceFormat::Csv,
            &CsvOptions::default(),
            Limits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("b.csv") && e.contains("binary"), "{e}");

        let pq = dir.path().join("t.parquet");
        std::fs::write(&pq, b"PAR1 this is not really parquet").unwrap();
        let e = plan(
            &Stores::default(),
            &pq,
            SourceFormat::Parquet,
            &CsvOptions::default(),
            Limits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("t.parquet") && e.contains("Parquet"), "{e}");
    }

    #[test]
    fn ndjson_keeps_number_text_and_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.ndjson");
        std::fs::write(
            &p,
            "{\"timestamp\":\"2023-01-02 00:00:00\",\"user_id\":3003,\"client_type\":\"gold\",\"symbol\":\"A\",\"side\":\"buy\",\"quantity\":0.12345678,\"price\":1e2,\"x\":1}\n\
             \n\
             {\"TIMESTAMP\":null,\"user_id\":\"7\",\"client_type\":\"gold\",\"symbol\":\"A\",\"side\":\"buy\",\"quantity\":1,\"price\":2}\n",
        )
        .unwrap();
        assert_eq!(
            plan(
                &Stores::default(),
                &p,
                SourceFormat::Ndjson,
                &CsvOptions::default(),
                Limits::default()
            )
            .unwrap()
            .extra_columns,
            ["x"]
        );
        let b = read_all(&p, SourceFormat::Ndjson).unwrap();
        assert_eq!(cell(&b, 1, 0).unwrap(), "3003");
        assert_eq!(cell(&b, 5, 0).unwrap(), "0.12345678");
        assert_eq!(cell(&b, 6, 0).unwrap(), "1e2");
        assert_eq!(cell(&b, 0, 1), None);
        std::fs::write(&p, "{\"timestamp\": oops}\n").unwrap();
        let e = read_all(&p, SourceFormat::Ndjson).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("t.ndjson"), "{e}");
    }

    #[test]
    fn records_and_fields_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let small = Limits {
            max_record_bytes: 4096,
            max_field_bytes: 100,
        };
        let read_with = |p: &Path, f: SourceFormat, limits: Limits| {
            let mut n = 0;
            read(
                &Stores::default(),
                p,
                f,
                &CsvOptions::default(),
                1000,
                limits,
                &mut |b| {
                    n += b.num_rows();
                    true
                },
            )
            .map(|_| n)
        };
        let error = |p: &Path, f: SourceFormat| read_with(p, f, small).unwrap_err().to_string();
        let header = "timestamp,user_id,client_type,symbol,side,quantity,price\n";
        let row = "2023-01-02 00:00:00,1,gold,A,buy,1,2\n";

        // A line of binary zeros with no line break: stops at the limit.
        let zeros = dir.path().join("zeros.csv");
        let mut text = header.to_string() + row;
        text.push_str(&"\0".repeat(100_000));
        std::fs::write(&zeros, &text).unwrap();
        let e = error(&zeros, SourceFormat::Csv);
        assert!(
            e.contains("zeros.csv line 3") && e.contains("longer than 4096 bytes"),
            "{e}"
        );

        // A quote never closed: named as such, with its line.
        let open_quote = dir.path().join("q.csv");
        std::fs::write(
            &open_quote,
            format!("{header}{row}2023-01-02 00:00:00,\"1,gold,A,buy,1,2\n{row}"),
        )
        .unwrap();
        let e = error(&open_quote, SourceFormat::Csv);
        assert!(
            e.contains("q.csv line 3") && e.contains("closing quote"),
            "{e}"
        );

        // A header that is all one huge column name: bounded in the error.
        let wide = dir.path().join("wide.csv");
        std::fs::write(&wide, format!("{}\n", "x".repeat(3000))).unwrap();
        let e = plan(
            &Stores::default(),
            &wide,
            SourceFormat::Csv,
            &CsvOptions::default(),
            small,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("missing required column") && e.len() < 600,
            "{}",
            e.len()
        );

        // A field over the field limit, in CSV and NDJSON.
        let big = dir.path().join("big.csv");
        std::fs::write(
            &big,
            format!(
                "{header}{row}2023-01-02 00:00:00,{},gold,A,buy,1,2\n",
                "u".repeat(200)
            ),
        )
        .unwrap();
        let e = error(&big, SourceFormat::Csv);
        assert!(e.contains("big.csv line 3: user_id holds 200 bytes"), "{e}");
        let nd = dir.path().join("big.ndjson");
        std::fs::write(
            &nd,
            format!("{{\"timestamp\":\"t\",\"user_id\":\"{}\",\"client_type\":\"g\",\"symbol\":\"A\",\"side\":\"buy\",\"quantity\":1,\"price\":2}}\n", "u".repeat(200)),
        )
        .unwrap();
        let e = error(&nd, SourceFormat::Ndjson);
        assert!(
            e.contains("big.ndjson line 1: user_id holds 200 bytes"),
            "{e}"
        );
        std::fs::write(&nd, "x".repeat(5000)).unwrap();
        let e = error(&nd, SourceFormat::Ndjson);
        assert!(
            e.contains("big.ndjson line 1: longer than 4096 bytes"),
            "{e}"
        );

        // Within the limits everything is read.
        assert_eq!(
            read_with(&big, SourceFormat::Csv, Limits::default()).unwrap(),
            2
        );
    }
}
