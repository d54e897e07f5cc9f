//! NDJSON files: one JSON object per line; numbers keep their exact text.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use quarry_core::schema::INPUT_COLUMNS;
use quarry_core::{Error, Result};
use serde_json::value::RawValue;

use super::shared::{BatchBuilder, Mapping, map_columns, open_text};
use super::{CheckedEmit, Limits, flushing};
use crate::objects::Stores;

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
fn lines(
    stores: &Stores,
    path: &Path,
    max_bytes: usize,
) -> Result<impl Iterator<Item = Result<(u64, String)>>> {
    let display = path.display().to_string();
    let mut reader = BufReader::with_capacity(1 << 20, open_text(stores, path)?);
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

pub(super) fn ndjson_plan(stores: &Stores, path: &Path, limits: Limits) -> Result<Mapping> {
    for item in lines(stores, path, limits.max_record_bytes)? {
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

pub(super) fn read_ndjson(
    stores: &Stores,
    path: &Path,
    batch_rows: usize,
    limits: Limits,
    emit: CheckedEmit<'_>,
) -> Result<()> {
    let mut b = BatchBuilder::new(batch_rows);
    let lines = lines(stores, path, limits.max_record_bytes)?;
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
