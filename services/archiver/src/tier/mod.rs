//! Moving date partitions between the warehouse (hot) and Parquet in object
//! storage (cold), crash-safe and idempotent.
//!
//! Cold layout under the root, per partition directory
//! `<table>/<column>=YYYY-MM-DD/`:
//! - `part-<uuid>.parquet`: the rows (zstd);
//! - `_manifest.json`: the files, row count and checksum — the commit point
//!   of a move: only files a manifest lists are cold data;
//! - `_lease-<n>.json`: who is moving the partition, until when;
//! - `_hold.json`: a restored partition stays hot until this date.
//!
//! Events go to `_events/<table>/<time>-<id>.json`.
//!
//! A move is export → verify (read back, compare count and checksum with the
//! warehouse) → manifest → drop the hot partition → event. A failure at any
//! step leaves the rows hot, or hot and cold; the next run finds the manifest
//! (or none) and finishes (or redoes) the move, deleting files no manifest
//! lists. Two archivers never move one partition at once: leases are created
//! with a conditional put, so only one of two racing archivers gets one.
//!
//! - `store.rs`: the cold objects (manifests, holds, Parquet files) and
//!   their checked reads;
//! - `lease.rs`: who moves a partition;
//! - `archive.rs`: moving partitions out; `restore.rs`: bringing them back.

mod archive;
mod lease;
mod restore;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode};
use quarry_core::config::ArchiverConfig;
use quarry_core::dates::{date_text, now_text, parse_date};
use quarry_core::{Error, Result, Table};
use quarry_proto::{ArchiveEvent, PartitionEntry, PartitionMove};
use quarry_storage::Location;
use quarry_warehouse::Warehouse;
use serde::{Deserialize, Serialize};
use tracing::warn;

pub use store::{Manifest, ManifestFile, checksum};

/// One line of the archive's history (`_events/`).
#[derive(Debug, Serialize, Deserialize)]
struct EventRecord {
    at: String,
    /// archived | restored | verify_failed | failed
    action: String,
    table: String,
    partition: String,
    rows: u64,
    bytes: u64,
    detail: String,
}

/// A step of a move, where tests inject faults (compiled in always, so a
/// renamed step breaks the build of the tests, never silently disables them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// After the first file of a partition is written, before the rest.
    ExportMidway,
    Export,
    Verify,
    Manifest,
    Drop,
    /// After the partition was dropped from the warehouse, before the move
    /// is reported (a crash right after the drop).
    AfterDrop,
    /// Not a failure: overwrites the first exported file with other rows
    /// before verify reads it.
    Corrupt,
}

/// What `archive` found or did for one partition.
pub(super) fn outcome(table: Table, partition: &str, outcome: &str) -> PartitionMove {
    PartitionMove {
        table: table.name().into(),
        partition: partition.into(),
        outcome: outcome.into(),
        ..Default::default()
    }
}

pub struct Tier {
    warehouse: Arc<dyn Warehouse>,
    cold: Location,
    config: ArchiverConfig,
    /// This archiver's identity in leases.
    holder: String,
    /// One archive or restore at a time in this process (scheduled or requested).
    busy: tokio::sync::Mutex<()>,
    #[cfg(test)]
    fault: std::sync::Mutex<Option<Step>>,
}

impl Tier {
    pub fn new(warehouse: Arc<dyn Warehouse>, cold: Location, config: ArchiverConfig) -> Self {
        Self {
            warehouse,
            cold,
            config,
            holder: uuid::Uuid::now_v7().to_string(),
            busy: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            fault: std::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &ArchiverConfig {
        &self.config
    }

    pub fn cold_root(&self) -> &str {
        &self.cold.display
    }

    pub fn warehouse(&self) -> &Arc<dyn Warehouse> {
        &self.warehouse
    }

    /// The configured tables, or the one asked for (which must be configured).
    pub fn tables(&self, only: &str) -> Result<Vec<Table>> {
        let configured: Vec<Table> = self
            .config
            .tables
            .iter()
            .filter_map(|t| Table::parse(t))
            .collect();
        if only.is_empty() {
            return Ok(configured);
        }
        match configured.iter().find(|t| t.name() == only) {
            Some(t) => Ok(vec![*t]),
            None => Err(Error::input(format!(
                "table {only:?} is not archived (archiver.tables = {:?})",
                self.config.tables
            ))),
        }
    }

    fn dir(&self, table: Table, partition: &str) -> Path {
        self.cold.path(&[
            table.name(),
            &format!("{}={partition}", table.partition_column()),
        ])
    }

    async fn event(&self, action: &str, table: Table, partition: &str, m: &PartitionMove) {
        let event = EventRecord {
            at: now_text(),
            action: action.into(),
            table: table.name().into(),
            partition: partition.into(),
            rows: m.rows,
            bytes: m.bytes,
            detail: m.detail.clone(),
        };
        // Names sort by time: `status` lists the newest.
        let stamp: String = event
            .at
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let path = self.cold.path(&[
            "_events",
            table.name(),
            &format!("{stamp}-{}.json", uuid::Uuid::now_v7()),
        ]);
        let json = serde_json::to_vec(&event).expect("event json");
        if let Err(e) = self.put(&path, json, PutMode::Create).await {
            warn!(error = %e, "could not record the archive event");
        }
    }

    #[cfg(test)]
    pub fn inject(&self, step: Option<Step>) {
        *self.fault.lock().unwrap() = step;
    }

    /// Fails here if a test asked for it.
    pub(super) fn fault(&self, _step: Step) -> Result<()> {
        #[cfg(test)]
        if *self.fault.lock().unwrap() == Some(_step) {
            return Err(Error::backend(
                format!("injected failure at {_step:?}"),
                true,
            ));
        }
        Ok(())
    }

    /// Hot and cold partitions of the configured tables (or `only`).
    pub async fn list(&self, only: &str) -> Result<Vec<PartitionEntry>> {
        let mut out = vec![];
        for table in self.tables(only)? {
            let hot: BTreeMap<String, u64> = self
                .warehouse
                .list_partitions(table)
                .await?
                .into_iter()
                .map(|p| (p.partition, p.rows))
                .collect();
            let cold = self.cold_partitions(table).await?;
            let all: BTreeSet<&String> = hot.keys().chain(cold.keys()).collect();
            for p in all {
                let m = cold.get(p);
                out.push(PartitionEntry {
                    table: table.name().into(),
                    partition: p.clone(),
                    hot_rows: hot.get(p).copied(),
                    cold_rows: m.map(|m| m.rows),
                    cold_bytes: m.map_or(0, Manifest::bytes),
                    cold_files: m.map_or(0, |m| m.files.len() as u32),
                    hold_until: if m.is_some() {
                        self.hold(table, p).await?.unwrap_or_default()
                    } else {
                        String::new()
                    },
                });
            }
        }
        Ok(out)
    }

    /// The newest `n` events, newest first.
    pub async fn events(&self, n: usize) -> Result<Vec<ArchiveEvent>> {
        let base = self.cold.path(&["_events"]);
        let mut list: Vec<_> = self
            .cold
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| self.store_err("listing", &base, e))?;
        list.sort_by(|a, b| b.location.filename().cmp(&a.location.filename()));
        let mut out = vec![];
        for meta in list.into_iter().take(n) {
            if let Some(e) = self.get_json::<EventRecord>(&meta.location).await? {
                out.push(ArchiveEvent {
                    at: e.at,
                    action: e.action,
                    table: e.table,
                    partition: e.partition,
                    rows: e.rows,
                    bytes: e.bytes,
                    detail: e.detail,
                });
            }
        }
        Ok(out)
    }
}

pub(super) fn date_text_of(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Parses a `YYYY-MM-DD` option.
pub fn parse_day(what: &str, s: &str) -> Result<NaiveDate> {
    parse_date(s)
        .map(|days| {
            NaiveDate::parse_from_str(&date_text(days), "%Y-%m-%d").expect("formatted date")
        })
        .ok_or_else(|| Error::input(format!("{what} {s:?} is not a date like 2024-01-31")))
}
