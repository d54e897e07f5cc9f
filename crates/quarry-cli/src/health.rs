//! Pipeline-health figures over the recorded runs (`quarry runs --stats`).

use std::collections::BTreeMap;

use quarry_core::{ErrorCategory, RunStatus};
use quarry_proto::RunRecord;
use serde::Serialize;

/// Mean, median and maximum of one duration or count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            mean: v.iter().sum::<f64>() / n as f64,
            median,
            max: v[n - 1],
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Health {
    pub runs: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub running: usize,
    /// succeeded / (succeeded + failed); None before any run finished.
    pub success_rate: Option<f64>,
    /// Failed runs per error category, as a share of the finished runs;
    /// every category is listed.
    pub error_rate: BTreeMap<&'static str, f64>,
    /// Per stage (plan, extract, transform, load, commit, total), in ms, over
    /// the succeeded runs.
    pub stage_ms: Vec<(&'static str, Summary)>,
    /// Rows read per succeeded run.
    pub rows_in: Option<Summary>,
    pub rows_in_total: u64,
}

/// Figures over `runs` started at or after `since` (a date or RFC 3339 time,
/// compared as text: the stored times are UTC RFC 3339).
pub fn health(runs: &[RunRecord], since: Option<&str>) -> Health {
    let runs: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| since.is_none_or(|s| r.started_at.as_str() >= s))
        .collect();
    let count = |status: RunStatus| runs.iter().filter(|r| status.is(&r.status)).count();
    let (succeeded, failed) = (count(RunStatus::Succeeded), count(RunStatus::Failed));
    let finished = succeeded + failed;
    let ok: Vec<_> = runs
        .iter()
        .filter(|r| RunStatus::Succeeded.is(&r.status))
        .map(|r| r.stats.unwrap_or_default())
        .collect();
    let stage = |pick: fn(&quarry_proto::RunStats) -> u64| {
        Summary::of(ok.iter().map(|s| pick(s) as f64).collect())
    };
    let stage_ms = [
        ("plan", stage(|s| s.plan_ms)),
        ("extract", stage(|s| s.extract_ms)),
        ("transform", stage(|s| s.transform_ms)),
        ("load", stage(|s| s.load_ms)),
        ("commit", stage(|s| s.commit_ms)),
        ("total", stage(|s| s.total_ms)),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    Health {
        runs: runs.len(),
        succeeded,
        failed,
        running: count(RunStatus::Running),
        success_rate: (finished > 0).then(|| succeeded as f64 / finished as f64),
        error_rate: ErrorCategory::ALL
            .iter()
            .map(|c| {
                let n = runs
                    .iter()
                    .filter(|r| RunStatus::Failed.is(&r.status) && r.error_category == c.as_str())
                    .count();
                (
                    c.as_str(),
                    if finished > 0 {
                        n as f64 / finished as f64
                    } else {
                        0.0
                    },
                )
            })
            .collect(),
        stage_ms,
        rows_in: stage(|s| s.rows_in),
        rows_in_total: ok.iter().map(|s| s.rows_in).sum(),
    }
}

/// The figures as a table.
pub fn render(h: &Health) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(vec!["figure", "value"]);
    let pct = |v: f64| format!("{:.1}%", v * 100.0);
    t.add_row(vec![
        "runs (succeeded / failed / running)".to_string(),
        format!(
            "{} ({} / {} / {})",
            h.runs, h.succeeded, h.failed, h.running
        ),
    ]);
    t.add_row(vec![
        "success rate".to_string(),
        h.success_rate.map_or("n/a".into(), pct),
    ]);
    for (category, rate) in &h.error_rate {
        t.add_row(vec![format!("error rate: {category}"), pct(*rate)]);
    }
    for (stage, s) in &h.stage_ms {
        t.add_row(vec![
            format!("{stage} ms (mean / median / max)"),
            format!("{:.0} / {:.0} / {:.0}", s.mean, s.median, s.max),
        ]);
    }
    if let Some(r) = h.rows_in {
        t.add_row(vec![
            "rows per run (mean / median / max)".to_string(),
            format!("{:.0} / {:.0} / {:.0}", r.mean, r.median, r.max),
        ]);
    }
    t.add_row(vec![
        "rows processed (succeeded runs)".to_string(),
        h.rows_in_total.to_string(),
    ]);
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: &str, started: &str, category: &str, total_ms: u64) -> RunRecord {
        RunRecord {
            status: status.into(),
            started_at: started.into(),
            error_category: category.into(),
            stats: Some(quarry_proto::RunStats {
                rows_in: 10,
                total_ms,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rates_and_durations_over_the_selected_runs() {
        let runs = [
            run("succeeded", "2026-01-01T10:00:00.000Z", "", 100),
            run("succeeded", "2026-01-02T10:00:00.000Z", "", 300),
            run("failed", "2026-01-02T11:00:00.000Z", "quality", 50),
            run("failed", "2026-01-03T11:00:00.000Z", "input", 5),
            run("running", "2026-01-03T12:00:00.000Z", "", 0),
        ];
        let h = health(&runs, None);
        assert_eq!((h.runs, h.succeeded, h.failed, h.running), (5, 2, 2, 1));
        assert_eq!(h.success_rate, Some(0.5));
        assert_eq!(h.error_rate["quality"], 0.25);
        assert_eq!(h.error_rate["backend"], 0.0);
        let total = |h: &Health| h.stage_ms.iter().find(|s| s.0 == "total").unwrap().1;
        assert_eq!(
            total(&h),
            Summary {
                mean: 200.0,
                median: 200.0,
                max: 300.0
            }
        );
        assert_eq!(h.rows_in_total, 20);

        let h = health(&runs, Some("2026-01-02"));
        assert_eq!((h.runs, h.succeeded, h.failed), (4, 1, 2));
        assert_eq!(total(&h).max, 300.0);
        let text = render(&h);
        assert!(
            text.contains("success rate") && text.contains("33.3%"),
            "{text}"
        );

        let none = health(&runs, Some("2027-01-01"));
        assert_eq!(none.success_rate, None);
        assert!(none.stage_ms.is_empty());
    }
}
