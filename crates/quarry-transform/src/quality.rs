//! The data-quality report of a run, stored with it in `pipeline_runs` and
//! written to `output/quality_report.json`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::DateTime;
use serde_json::{Value, json};

use crate::aggregate::{Duplicates, Profile};
use crate::checks::{CheckResult, daily_means, period_changes};
use crate::validate::{BatchStats, Field, Reason};

/// One input file as the extractor described it.
#[derive(Debug, Clone)]
pub struct FileFacts {
    pub file: String,
    pub format: String,
    pub size_bytes: u64,
    pub extra_columns: Vec<String>,
}

pub struct QualityInput<'a> {
    pub run_id: &'a str,
    pub source: &'a str,
    pub files: &'a [FileFacts],
    /// Files of a directory or glob source that were not read, with why.
    pub skipped_files: &'a [(String, String)],
    pub stats: &'a BatchStats,
    pub duplicates: Duplicates,
    pub dedup: bool,
    pub agg_rows: u64,
    /// Rows sent to the loader per table.
    pub rows_staged: &'a BTreeMap<String, u64>,
    pub profile: &'a Profile,
    pub checks: &'a [CheckResult],
    /// A PostgreSQL source read incrementally: `{column, after, through}`.
    /// The next run of the source reads past `through`.
    pub cursor: Option<Value>,
}

pub fn report(q: &QualityInput<'_>) -> Value {
    let s = q.stats;
    let share = |n: u64| s.share(n);
    let completeness: serde_json::Map<String, Value> = Field::ALL
        .iter()
        .map(|f| {
            let missing = s.missing[*f as usize];
            (
                f.name().to_string(),
                json!({ "missing": missing, "missing_share": share(missing), "complete_share": 1.0 - share(missing) }),
            )
        })
        .collect();
    let extra: BTreeSet<&str> = q
        .files
        .iter()
        .flat_map(|f| f.extra_columns.iter().map(String::as_str))
        .collect();
    let mut report = json!({
        "run_id": q.run_id,
        "source": q.source,
        "files": q.files.iter().map(|f| json!({
            "file": f.file,
            "format": f.format,
            "size_bytes": f.size_bytes,
            "extra_columns": f.extra_columns,
        })).collect::<Vec<_>>(),
        "skipped_files": q.skipped_files.iter().map(|(file, reason)| json!({
            "file": file,
            "reason": reason,
        })).collect::<Vec<_>>(),
        "rows_in": s.rows_in,
        "rows_valid": s.rows_valid,
        "rows_rejected": s.rows_rejected(),
        "rejected_by_reason": s.rejected_by_reason(),
        // Rows not rejected by each rule (rules apply in field order; a row
        // counts against the first rule it fails).
        "pass_rate_by_rule": Reason::all_codes()
            .iter()
            .zip(s.rejected)
            .map(|(code, n)| (code.to_string(), json!(1.0 - share(n))))
            .collect::<serde_json::Map<_, _>>(),
        "valid_share": share(s.rows_valid),
        "duplicates": {
            "exact_duplicate_rows": q.duplicates.exact,
            "dropped": q.dedup && q.duplicates.exact > 0,
            "key_duplicate_rows": q.duplicates.key,
        },
        "columns": { "missing": Vec::<String>::new(), "extra": extra },
        "completeness": completeness,
        "agg_trades_weekly_rows": q.agg_rows,
        "rows_staged": q.rows_staged,
        "profile": {
            "newest_trade": q.profile.newest.map(|n| DateTime::from_timestamp_nanos(n).to_rfc3339()),
            "per_day": daily_means(q.profile),
            "day_over_day": period_changes(q.profile, false),
            "week_over_week": period_changes(q.profile, true),
        },
        "checks": q.checks,
    });
    if let Some(c) = &q.cursor {
        report["cursor"] = c.clone();
    }
    report
}
