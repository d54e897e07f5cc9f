//! What the backends that stage a run in tables of their own (ClickHouse,
//! BigQuery, Snowflake) track while it is open: the staging tables' name
//! suffix, the rows sent per table, and the partitions the commit replaces.

use std::collections::{BTreeMap, BTreeSet};

use quarry_core::{Error, Result, Table};

use crate::WriteMode;

/// The suffix of a run's staging tables: the run id's letters and digits.
pub(crate) fn stage_tag(run_id: &str) -> Result<String> {
    let tag: String = run_id.chars().filter(char::is_ascii_alphanumeric).collect();
    if tag.is_empty() || tag.len() > 64 {
        return Err(Error::input(format!(
            "run id {run_id:?} cannot name a staging table"
        )));
    }
    Ok(tag)
}

#[derive(Debug)]
pub(crate) struct Staged {
    /// Rows sent per table.
    pub rows: BTreeMap<Table, u64>,
    /// Partitions (as text) each table's replacing writes fall in.
    pub partitions: BTreeMap<Table, BTreeSet<String>>,
    /// Whether the run replaces the rejected rows of its source files (no
    /// rejected rows were appended).
    rejected_replace: bool,
}

impl Default for Staged {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            partitions: BTreeMap::new(),
            rejected_replace: true,
        }
    }
}

impl Staged {
    /// Counts a batch of `rows` sent to `table` whose rows fall in `parts`.
    pub fn add(
        &mut self,
        table: Table,
        mode: WriteMode,
        rows: u64,
        parts: impl IntoIterator<Item = String>,
    ) {
        *self.rows.entry(table).or_default() += rows;
        let replace = mode != WriteMode::Append;
        if table == Table::TradesRejected {
            self.rejected_replace &= replace;
        } else if replace {
            self.partitions.entry(table).or_default().extend(parts);
        }
    }

    /// At commit: the run's source files join the partitions it replaces
    /// (their rows in `trades_rejected`), unless rejected rows were appended.
    pub fn cover_sources(&mut self, source_files: &[String]) {
        if self.rejected_replace {
            self.partitions
                .entry(Table::TradesRejected)
                .or_default()
                .extend(source_files.iter().cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_covered_partitions() {
        assert_eq!(stage_tag("01a2-b3_c").unwrap(), "01a2b3c");
        assert!(stage_tag("--").is_err());

        let mut s = Staged::default();
        s.add(
            Table::Trades,
            WriteMode::ReplacePartitions,
            2,
            ["2024-01-01".to_string()],
        );
        s.add(
            Table::Trades,
            WriteMode::Append,
            1,
            ["2024-01-02".to_string()],
        );
        s.add(Table::TradesRejected, WriteMode::ReplacePartitions, 1, []);
        assert_eq!(s.rows[&Table::Trades], 3);
        s.cover_sources(&["a.csv".into()]);
        assert_eq!(s.partitions[&Table::Trades].len(), 1);
        assert!(s.partitions[&Table::TradesRejected].contains("a.csv"));

        let mut s = Staged::default();
        s.add(Table::TradesRejected, WriteMode::Append, 1, []);
        s.cover_sources(&["a.csv".into()]);
        assert!(!s.partitions.contains_key(&Table::TradesRejected));
    }
}
