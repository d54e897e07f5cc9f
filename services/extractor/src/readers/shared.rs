//! What the readers of every format share: opening a file, mapping its
//! columns to the input columns, and building `EXTRACT_SCHEMA` batches.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt64Builder};
use quarry_core::schema::{EXTRACT_SCHEMA, INPUT_COLUMNS};
use quarry_core::text::{excerpt, name_list};
use quarry_core::{Error, Result};

use crate::objects::Stores;

/// Where each input column sits in a file, and what else the file has.
pub(crate) struct Mapping {
    pub(crate) index: [usize; 7],
    pub(crate) extra: Vec<String>,
}

pub(crate) fn map_columns(file: &Path, names: &[String]) -> Result<Mapping> {
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
pub(super) struct BatchBuilder {
    pub(super) cols: Vec<StringBuilder>,
    pub(super) rows: UInt64Builder,
    pub(super) len: usize,
}

impl BatchBuilder {
    /// Sized for a full batch, so appending never reallocates.
    pub(super) fn new(batch_rows: usize) -> Self {
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

    pub(super) fn finish(&mut self) -> Result<RecordBatch> {
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

/// Opens a text file or object (CSV, NDJSON) for reading, decompressed if
/// it is compressed.
pub(super) fn open_text(stores: &Stores, path: &Path) -> Result<Box<dyn std::io::Read>> {
    match crate::objects::url_of(path) {
        Some(url) => super::compression::decoded(path, stores.reader(&url?, 0)?),
        None => super::compression::decoded(path, open(path)?),
    }
}

/// Opens a regular file for reading. The type is checked before opening
/// and again on the open descriptor (opened non-blocking, so a FIFO swapped
/// in between cannot block the call).
pub(super) fn open(path: &Path) -> Result<File> {
    crate::source::check_regular(path)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options
        .open(path)
        .map_err(|e| Error::input(format!("cannot open {}: {e}", path.display())).with_source(e))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        _ => Err(Error::input(format!(
            "{} is not a regular file: Quarry reads regular files only",
            path.display()
        ))),
    }
}
