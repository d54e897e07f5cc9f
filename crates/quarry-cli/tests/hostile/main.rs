//! The `quarry` binary and service processes against hostile input and
//! rough handling: links out of the data roots, FIFOs, devices and huge
//! records, interrupted runs, unanswering ports, foreign databases, bad
//! output locations and usage errors. Every failure must be one line,
//! quick, leave the warehouse as it was, and quote no file content.
//!
//! A module per family: `inputs` (what a source may not be), `memory`
//! (records and inputs too big to hold), `interrupts` (signals and killed
//! processes mid-run) and `failures` (foreign databases, silent ports, bad
//! locations, settings and usage, and the one line of every failure
//! category).

#[path = "../common/mod.rs"]
mod common;

mod failures;
mod inputs;
mod interrupts;
mod memory;

use std::path::Path;

/// (status, error_category, error_message) of every run, newest first.
fn runs_of(db: &Path) -> Vec<(String, String, String)> {
    if !db.exists() {
        return vec![];
    }
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare(
            "SELECT status, COALESCE(error_category, ''), COALESCE(error_message, '')
             FROM pipeline_runs ORDER BY started_at DESC, run_id DESC",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}
