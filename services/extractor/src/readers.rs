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

use std::cell::{Cell, RefCell};
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
use quarry_core::text::{excerpt, name_list};
use quarry_core::{Error, Result};
use quarry_proto::{CsvOptions, FilePlan, SourceFormat};
use serde_json::value::RawValue;

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
            None => extra.push(excerpt(name, 64)),
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
            name_list(names, 12)
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

/// Opens a regular file for reading. The type is checked before opening
/// and again on the open descriptor (opened non-blocking, so a FIFO swapped
/// in between cannot block the call).
fn open(path: &Path) -> Result<File> {
    crate::source::check_regular(path)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options
        .open(path)
        .map_err(|e| Error::input(format!("cannot open {}: {e}", path.display())))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        _ => Err(Error::input(format!(
            "{} is not a regular file: Quarry reads regular files only",
            path.display()
        ))),
    }
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
        [d] if quarry_core::schema::is_valid_delimiter(*d) => Ok(*d),
        _ => Err(Error::input(format!(
            "CSV delimiter {} must be one ASCII character other than a quote, a line break or NUL",
            excerpt(&format!("{:?}", opts.delimiter), 16)
        ))),
    }
}

/// Counts line breaks as the CSV reader pulls bytes, so a record's byte
/// offset can be turned into its 1-based line number. The csv crate's own
/// line counter skips blank lines and miscounts after CRLF line ends.
///
/// It also bounds a record: the parser asks for more bytes only when it has
/// used up the ones it has, so once it has pulled more than `max_record`
/// bytes since the current record began (`record_start`, moved on after
/// each record), that record is too long and reading stops.
struct LineCounter<R> {
    inner: R,
    read: u64,
    newlines: Rc<RefCell<VecDeque<u64>>>,
    record_start: Rc<Cell<u64>>,
    max_record: u64,
}

/// The error [`LineCounter`] stops with.
#[derive(Debug)]
struct RecordTooLong;

impl std::fmt::Display for RecordTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("record too long")
    }
}

impl std::error::Error for RecordTooLong {}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read - self.record_start.get() > self.max_record {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                RecordTooLong,
            ));
        }
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

/// A CSV file being read: the parser, line numbers, and where the current
/// record began (for the size limit).
struct CsvFile {
    rdr: CsvReader,
    lines: Lines,
    record_start: Rc<Cell<u64>>,
    mapping: Mapping,
    max_record: usize,
}

impl CsvFile {
    /// The message for a parser error: the line, and what went wrong in words.
    fn error(&mut self, path: &Path, e: &csv::Error) -> Error {
        if let csv::ErrorKind::Io(io) = e.kind()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<RecordTooLong>())
        {
            let line = self.lines.line_at(self.record_start.get());
            return Error::input(format!(
                "{} line {line}: a record is longer than {} bytes (extractor.max_record_bytes); \
                 binary data, or a quoted field whose closing quote is missing?",
                path.display(),
                self.max_record
            ));
        }
        let line = e
            .position()
            .map(|p| self.lines.line_at(p.byte()))
            .unwrap_or(0);
        Error::input(format!("{} line {line}: {e}", path.display()))
    }

    /// Moves the record-size window to the next record.
    fn next_record(&self) {
        self.record_start.set(self.rdr.position().byte());
    }
}

fn csv_reader(path: &Path, opts: &CsvOptions, limits: Limits) -> Result<CsvFile> {
    let newlines = Rc::new(RefCell::new(VecDeque::new()));
    let record_start = Rc::new(Cell::new(0));
    let counter = LineCounter {
        inner: open(path)?,
        read: 0,
        newlines: newlines.clone(),
        record_start: record_start.clone(),
        max_record: limits.max_record_bytes as u64,
    };
    let lines = Lines {
        newlines,
        passed: 0,
    };
    let rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter(opts, path)?)
        .has_headers(true)
        .flexible(true)
        .from_reader(counter);
    let mut file = CsvFile {
        rdr,
        lines,
        record_start,
        mapping: Mapping {
            index: [usize::MAX; 7],
            extra: vec![],
        },
        max_record: limits.max_record_bytes,
    };
    let header = match file.rdr.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            let e = file.error(path, &e);
            return Err(e.with_message(format!("cannot read the CSV header: {e}")));
        }
    };
    file.next_record();
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
    file.mapping = map_columns(path, &names)?;
    Ok(file)
}

/// Checks a file's header or schema without reading its data.
pub fn plan(
    path: &Path,
    format: SourceFormat,
    csv: &CsvOptions,
    limits: Limits,
) -> Result<FilePlan> {
    let extra = match format {
        SourceFormat::Csv | SourceFormat::Unspecified => {
            csv_reader(path, csv, limits)?.mapping.extra
        }
        SourceFormat::Parquet => parquet_builder(path)?.1.extra,
        SourceFormat::Ndjson => ndjson_plan(path, limits)?.extra,
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
            read_csv(path, csv, batch_rows, limits, &mut checked)
        }
        SourceFormat::Parquet => read_parquet(path, batch_rows, &mut checked),
        SourceFormat::Ndjson => read_ndjson(path, batch_rows, limits, &mut checked),
    }
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

fn read_csv(
    path: &Path,
    opts: &CsvOptions,
    batch_rows: usize,
    limits: Limits,
    emit: CheckedEmit<'_>,
) -> Result<()> {
    let mut f = csv_reader(path, opts, limits)?;
    let width = f.rdr.byte_headers().map(|h| h.len()).unwrap_or(0);
    let m = std::mem::replace(
        &mut f.mapping,
        Mapping {
            index: [usize::MAX; 7],
            extra: vec![],
        },
    );
    let mut b = BatchBuilder::new(batch_rows);
    let mut rec = csv::ByteRecord::new();
    flushing(&mut b, emit, |b, emit| {
        loop {
            match f.rdr.read_byte_record(&mut rec) {
                Ok(true) => f.next_record(),
                Ok(false) => return Ok(()),
                Err(e) => return Err(f.error(path, &e)),
            }
            let line = rec
                .position()
                .map(|p| f.lines.line_at(p.byte()))
                .unwrap_or(0);
            if rec.len() != width {
                let spans_lines = rec.iter().any(|field| field.contains(&b'\n'));
                return Err(Error::input(if spans_lines {
                    format!(
                        "{} line {line}: a quoted field runs over several lines and leaves {} fields where the header has {width}: is a closing quote missing?",
                        path.display(),
                        rec.len()
                    )
                } else {
                    format!(
                        "{} line {line}: expected {width} fields like the header, found {}",
                        path.display(),
                        rec.len()
                    )
                }));
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
            if b.len == batch_rows && !emit(b.finish()?)? {
                return Ok(());
            }
        }
    })
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

fn read_parquet(path: &Path, batch_rows: usize, emit: CheckedEmit<'_>) -> Result<()> {
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
        if !emit(RecordBatch::try_new(EXTRACT_SCHEMA.clone(), cols)?)? {
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

/// The lines of a file with their 1-based numbers, each at most
/// `max_bytes` long (longer lines fail instead of being buffered).
fn lines(path: &Path, max_bytes: usize) -> Result<impl Iterator<Item = Result<(u64, String)>>> {
    let display = path.display().to_string();
    let mut reader = BufReader::with_capacity(1 << 20, open(path)?);
    let mut n = 0u64;
    let mut buf = Vec::new();
    Ok(std::iter::from_fn(move || {
        buf.clear();
        n += 1;
        let read = (&mut reader)
            .take(max_bytes as u64 + 2)
            .read_until(b'\n', &mut buf);
        match read {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                return Some(Err(Error::input(format!(
                    "{display} line {n}: cannot read: {e}"
                ))));
            }
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.len() > max_bytes {
            return Some(Err(Error::input(format!(
                "{display} line {n}: longer than {max_bytes} bytes (extractor.max_record_bytes)"
            ))));
        }
        Some(match std::str::from_utf8(&buf) {
            Ok(text) => Ok((n, text.to_string())),
            Err(_) => Err(Error::input(format!(
                "{display} line {n}: not UTF-8 text (binary data?)"
            ))),
        })
    }))
}

fn ndjson_plan(path: &Path, limits: Limits) -> Result<Mapping> {
    for item in lines(path, limits.max_record_bytes)? {
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

fn read_ndjson(
    path: &Path,
    batch_rows: usize,
    limits: Limits,
    emit: CheckedEmit<'_>,
) -> Result<()> {
    let mut b = BatchBuilder::new(batch_rows);
    let lines = lines(path, limits.max_record_bytes)?;
    flushing(&mut b, emit, |b, emit| {
        for item in lines {
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
                    values[k] = if text == "null" {
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
            if b.len == batch_rows && !emit(b.finish()?)? {
                return Ok(());
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;

    use super::*;

    fn read_all(path: &Path, format: SourceFormat) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        read(
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
            read(p, f, &CsvOptions::default(), 1000, limits, &mut |b| {
                n += b.num_rows();
                true
            })
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
        let e = plan(&wide, SourceFormat::Csv, &CsvOptions::default(), small)
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
