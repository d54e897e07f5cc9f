//! CSV files: the delimiter, line numbers that count every line break, and
//! the bound on a record's size.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use quarry_core::schema::INPUT_COLUMNS;
use quarry_core::text::excerpt;
use quarry_core::{Error, Result};
use quarry_proto::CsvOptions;

use super::shared::{BatchBuilder, Mapping, map_columns, open_text};
use super::{CheckedEmit, Limits, flushing};
use crate::objects::Stores;

fn delimiter(opts: &CsvOptions, path: &Path) -> Result<u8> {
    match opts.delimiter.as_bytes() {
        [] if super::compression::split_name(path)
            .1
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

type CsvReader = csv::Reader<LineCounter<Box<dyn Read>>>;

/// A CSV file being read: the parser, line numbers, and where the current
/// record began (for the size limit).
pub(super) struct CsvFile {
    rdr: CsvReader,
    lines: Lines,
    record_start: Rc<Cell<u64>>,
    pub(super) mapping: Mapping,
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
        // A read error (a compressed stream cut short) has no position: it
        // struck the record that begins where the last one ended.
        let line = self
            .lines
            .line_at(e.position().map_or(self.record_start.get(), |p| p.byte()));
        Error::input(format!("{} line {line}: {e}", path.display()))
    }

    /// Moves the record-size window to the next record.
    fn next_record(&self) {
        self.record_start.set(self.rdr.position().byte());
    }
}

pub(super) fn csv_reader(
    stores: &Stores,
    path: &Path,
    opts: &CsvOptions,
    limits: Limits,
) -> Result<CsvFile> {
    let newlines = Rc::new(RefCell::new(VecDeque::new()));
    let record_start = Rc::new(Cell::new(0));
    let counter = LineCounter {
        inner: open_text(stores, path)?,
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

pub(super) fn read_csv(
    stores: &Stores,
    path: &Path,
    opts: &CsvOptions,
    batch_rows: usize,
    limits: Limits,
    emit: CheckedEmit<'_>,
) -> Result<()> {
    let mut f = csv_reader(stores, path, opts, limits)?;
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

/// Reads headerless CSV records that hold the seven input columns in order,
/// as a PostgreSQL `COPY … (FORMAT csv)` sends them, named `name` in
/// messages; `source_row` counts the records from 1. A failing stream (the
/// server or the connection) is a transient backend error.
pub(super) fn read_columns(
    input: impl std::io::Read,
    name: &str,
    batch_rows: usize,
    emit: CheckedEmit<'_>,
) -> Result<()> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut b = BatchBuilder::new(batch_rows);
    let mut rec = csv::ByteRecord::new();
    let mut row = 0u64;
    flushing(&mut b, emit, |b, emit| {
        loop {
            match rdr.read_byte_record(&mut rec) {
                Ok(true) => row += 1,
                Ok(false) => return Ok(()),
                Err(e) => {
                    return Err(Error::backend(
                        format!("{name}: reading row {} failed: {e}", row + 1),
                        true,
                    ));
                }
            }
            if rec.len() != INPUT_COLUMNS.len() {
                return Err(Error::internal(format!(
                    "{name} row {row}: COPY sent {} fields, expected {}",
                    rec.len(),
                    INPUT_COLUMNS.len()
                )));
            }
            for (k, col) in b.cols.iter_mut().enumerate() {
                let text = std::str::from_utf8(&rec[k]).map_err(|_| {
                    Error::input(format!(
                        "{name} row {row}: column {} is not UTF-8 text",
                        INPUT_COLUMNS[k]
                    ))
                })?;
                col.append_value(text);
            }
            b.rows.append_value(row);
            b.len += 1;
            if b.len == batch_rows && !emit(b.finish()?)? {
                return Ok(());
            }
        }
    })
}
