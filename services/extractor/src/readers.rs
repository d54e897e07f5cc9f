//! Reading CSV, Parquet and NDJSON files into batches of text columns.
//!
//! Every reader maps the file's columns to the input columns by name
//! (trimmed, case-insensitive, any order), reports the columns it ignores,
//! and produces `EXTRACT_SCHEMA` batches: the seven input columns as text,
//! exactly as found, plus the 1-based line or row number for lineage.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt64Builder};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use quarry_core::schema::{EXTRACT_SCHEMA, INPUT_COLUMNS};
use quarry_core::{Error, Result};
use quarry_proto::{CsvOptions, FilePlan, SourceFormat};
use serde_json::value::RawValue;

/// Called with each batch; returns false when the consumer has gone away.
pub type Emit<'a> = &'a mut dyn FnMut(RecordBatch) -> bool;

/// Where each input column sits in a file, and what else the file has.
struct Mapping {
    index: [usize; 7],
    extra: Vec<String>,
}

fn map_columns(file: &Path, names: &[String]) -> Result<Mapping> {
    let mut index = [usize::MAX; 7];
    let mut extra = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = name
            .trim()
            .trim_start_matches('\u{feff}')
            .to_ascii_lowercase();
        match INPUT_COLUMNS.iter().position(|c| *c == key) {
            Some(k) if index[k] != usize::MAX => {
                return Err(Error::input(format!(
                    "{}: column {} appears twice",
                    file.display(),
                    INPUT_COLUMNS[k]
                )));
            }
            Some(k) => index[k] = i,
            None => extra.push(name.clone()),
        }
    }
    let missing: Vec<&str> = INPUT_COLUMNS
        .iter()
        .zip(index)
        .filter(|(_, i)| *i == usize::MAX)
        .map(|(c, _)| *c)
        .collect();
    if !missing.is_empty() {
        let mut msg = format!(
            "{}: missing required column{} {} (found: {})",
            file.display(),
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            names.join(", ")
        );
        if names.len() == 1
            && let Some(d) = [';', '\t', '|'].into_iter().find(|d| names[0].contains(*d))
        {
            msg.push_str(&format!("; the header looks {d:?}-delimited"));
        }
        return Err(Error::input(msg));
    }
    Ok(Mapping { index, extra })
}

/// Accumulates rows into `EXTRACT_SCHEMA` batches.
struct BatchBuilder {
    cols: Vec<StringBuilder>,
    rows: UInt64Builder,
    len: usize,
}

impl BatchBuilder {
    /// Sized for a full batch, so appending never reallocates.
    fn new(batch_rows: usize) -> Self {
        let mut b = Self {
            cols: Vec::new(),
            rows: UInt64Builder::new(),
            len: 0,
        };
        b.reset(batch_rows);
        b
    }

    fn reset(&mut self, batch_rows: usize) {
        // Text fields of a trade are short: a timestamp is about 20 bytes,
        // the others rarely more than 8.
        self.cols = (0..7)
            .map(|k| {
                StringBuilder::with_capacity(batch_rows, batch_rows * if k == 0 { 24 } else { 8 })
            })
            .collect();
        self.rows = UInt64Builder::with_capacity(batch_rows);
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        cols.push(Arc::new(self.rows.finish()));
        let capacity = self.len;
        self.len = 0;
        self.reset(capacity);
        Ok(RecordBatch::try_new(EXTRACT_SCHEMA.clone(), cols)?)
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::input(format!("cannot open {}: {e}", path.display())))
}

fn delimiter(opts: &CsvOptions, path: &Path) -> Result<u8> {
    match opts.delimiter.as_bytes() {
        [] if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("tsv")) =>
        {
            Ok(b'\t')
        }
        [] => Ok(b','),
        [d] if d.is_ascii() => Ok(*d),
        _ => Err(Error::input(format!(
            "CSV delimiter {:?} must be one ASCII character",
            opts.delimiter
        ))),
    }
}

/// Counts line breaks as the CSV reader pulls bytes, so a record's byte
/// offset can be turned into its 1-based line number. The csv crate's own
/// line counter skips blank lines and miscounts after CRLF line ends.
struct LineCounter<R> {
    inner: R,
    read: u64,
    newlines: Rc<RefCell<VecDeque<u64>>>,
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut q = self.newlines.borrow_mut();
        q.extend(memchr::memchr_iter(b'\n', &buf[..n]).map(|i| self.read + i as u64));
        self.read += n as u64;
        Ok(n)
    }
}

/// Line numbers of record start offsets, which only grow.
struct Lines {
    newlines: Rc<RefCell<VecDeque<u64>>>,
    passed: u64,
}

impl Lines {
    fn line_at(&mut self, byte: u64) -> u64 {
        let mut q = self.newlines.borrow_mut();
        // `<=`: after a CRLF the csv crate reports a record as starting on its LF.
        while q.front().is_some_and(|&nl| nl <= byte) {
            q.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

type CsvReader = csv::Reader<LineCounter<File>>;

fn csv_reader(path: &Path, opts: &CsvOptions) -> Result<(CsvReader, Lines, Mapping)> {
    let newlines = Rc::new(RefCell::new(VecDeque::new()));
    let counter = LineCounter {
        inner: open(path)?,
        read: 0,
        newlines: newlines.clone(),
    };
    let lines = Lines {
        newlines,
        passed: 0,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter(opts, path)?)
        .has_headers(true)
        .flexible(true)
        .from_reader(counter);
    let header = rdr
        .byte_headers()
        .map_err(|e| {
            Error::input(format!(
                "{}: cannot read the CSV header: {e}",
                path.display()
            ))
        })?
        .clone();
    if header.is_empty() {
        return Err(Error::input(format!(
            "{}: empty file, no CSV header",
            path.display()
        )));
    }
    let mut names = Vec::with_capacity(header.len());
    for field in header.iter() {
        match std::str::from_utf8(field) {
            Ok(s) if !s.contains('\0') => names.push(s.to_string()),
            _ => {
                return Err(Error::input(format!(
                    "{}: not a UTF-8 CSV file (binary data in the header line)",
                    path.display()
                )));
            }
        }
    }
    let mapping = map_columns(path, &names)?;
    Ok((rdr, lines, mapping))
}

/// Checks a file's header or schema without reading its data.
pub fn plan(path: &Path, format: SourceFormat, csv: &CsvOptions) -> Result<FilePlan> {
    let extra = match format {
        SourceFormat::Csv | SourceFormat::Unspecified => csv_reader(path, csv)?.2.extra,
        SourceFormat::Parquet => parquet_builder(path)?.1.extra,
        SourceFormat::Ndjson => ndjson_plan(path)?.extra,
    };
    let size_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(FilePlan {
        file: path.display().to_string(),
        format: format as i32,
        size_bytes,
        extra_columns: extra,
    })
}

/// Reads a whole file, emitting batches of at most `batch_rows` rows.
pub fn read(
    path: &Path,
    format: SourceFormat,
    csv: &CsvOptions,
    batch_rows: usize,
    emit: Emit<'_>,
) -> Result<()> {
    match format {
        SourceFormat::Csv | SourceFormat::Unspecified => read_csv(path, csv, batch_rows, emit),
        SourceFormat::Parquet => read_parquet(path, batch_rows, emit),
        SourceFormat::Ndjson => read_ndjson(path, batch_rows, emit),
    }
}

fn read_csv(path: &Path, opts: &CsvOptions, batch_rows: usize, emit: Emit<'_>) -> Result<()> {
    let (mut rdr, mut lines, m) = csv_reader(path, opts)?;
    let width = rdr.byte_headers().map(|h| h.len()).unwrap_or(0);
    let mut b = BatchBuilder::new(batch_rows);
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map(|p| lines.line_at(p.byte())).unwrap_or(0);
                return Err(Error::input(format!("{} line {line}: {e}", path.display())));
            }
        }
        let line = rec.position().map(|p| lines.line_at(p.byte())).unwrap_or(0);
        if rec.len() != width {
            return Err(Error::input(format!(
                "{} line {line}: expected {width} fields like the header, found {}",
                path.display(),
                rec.len()
            )));
        }
        for (k, col) in b.cols.iter_mut().enumerate() {
            let raw = &rec[m.index[k]];
            let text = std::str::from_utf8(raw).map_err(|_| {
                Error::input(format!(
                    "{} line {line}: column {} is not UTF-8 text (binary data?)",
                    path.display(),
                    INPUT_COLUMNS[k]
                ))
            })?;
            col.append_value(text);
        }
        b.rows.append_value(line);
        b.len += 1;
        if b.len == batch_rows && !emit(b.finish()?) {
            return Ok(());
        }
    }
    if b.len > 0 {
        emit(b.finish()?);
    }
    Ok(())
}

fn parquet_builder(path: &Path) -> Result<(ParquetRecordBatchReaderBuilder<File>, Mapping)> {
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

fn read_parquet(path: &Path, batch_rows: usize, emit: Emit<'_>) -> Result<()> {
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
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
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
        if !emit(RecordBatch::try_new(EXTRACT_SCHEMA.clone(), cols)?) {
            return Ok(());
        }
    }
    Ok(())
}

fn parse_object<'a>(
    path: &Path,
    line_no: u64,
    line: &'a str,
) -> Result<HashMap<String, &'a RawValue>> {
    serde_json::from_str(line).map_err(|e| {
        Error::input(format!(
            "{} line {line_no}: not a JSON object: {e}",
            path.display()
        ))
    })
}

fn lines(path: &Path) -> Result<impl Iterator<Item = Result<(u64, String)>>> {
    let display = path.display().to_string();
    Ok(BufReader::with_capacity(1 << 20, open(path)?)
        .lines()
        .enumerate()
        .map(move |(i, l)| {
            let n = i as u64 + 1;
            l.map(|l| (n, l)).map_err(|e| {
                Error::input(format!(
                    "{display} line {n}: cannot read the line (not UTF-8 text?): {e}"
                ))
            })
        }))
}

fn ndjson_plan(path: &Path) -> Result<Mapping> {
    for item in lines(path)? {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let obj = parse_object(path, n, &line)?;
        let mut names: Vec<String> = obj.keys().cloned().collect();
        names.sort();
        return map_columns(path, &names);
    }
    Err(Error::input(format!(
        "{}: empty file, no JSON records",
        path.display()
    )))
}

fn read_ndjson(path: &Path, batch_rows: usize, emit: Emit<'_>) -> Result<()> {
    let mut b = BatchBuilder::new(batch_rows);
    for item in lines(path)? {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let obj = parse_object(path, n, &line)?;
        let mut values: [Option<String>; 7] = Default::default();
        for (key, raw) in &obj {
            let key = key.trim().to_ascii_lowercase();
            if let Some(k) = INPUT_COLUMNS.iter().position(|c| *c == key) {
                let text = raw.get();
                values[k] =
                    if text == "null" {
                        None
                    } else if text.starts_with('"') {
                        Some(serde_json::from_str::<String>(text).map_err(|e| {
                            Error::input(format!("{} line {n}: {e}", path.display()))
                        })?)
                    } else {
                        // Numbers keep their exact text (no float round trip).
                        Some(text.to_string())
                    };
            }
        }
        for (col, v) in b.cols.iter_mut().zip(&values) {
            col.append_option(v.as_deref());
        }
        b.rows.append_value(n);
        b.len += 1;
        if b.len == batch_rows && !emit(b.finish()?) {
            return Ok(());
        }
    }
    if b.len > 0 {
        emit(b.finish()?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;

    use super::*;

    fn read_all(path: &Path, format: SourceFormat) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        read(path, format, &CsvOptions::default(), 2, &mut |b| {
            out.push(b);
            true
        })?;
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
        let plan = plan(&p, SourceFormat::Csv, &CsvOptions::default()).unwrap();
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
        let e = plan(&p, SourceFormat::Csv, &CsvOptions::default())
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
        let e = plan(&p, SourceFormat::Csv, &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("';'-delimited"), "{e}");

        let bin = dir.path().join("b.csv");
        std::fs::write(
            &bin,
            [0x89u8, b'P', b'N', b'G', 0, 0xff, 0xfe, b'\n', 1, 2, 3],
        )
        .unwrap();
        let e = plan(&bin, SourceFormat::Csv, &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.csv") && e.contains("binary"), "{e}");

        let pq = dir.path().join("t.parquet");
        std::fs::write(&pq, b"PAR1 this is not really parquet").unwrap();
        let e = plan(&pq, SourceFormat::Parquet, &CsvOptions::default())
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
            plan(&p, SourceFormat::Ndjson, &CsvOptions::default())
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
}
