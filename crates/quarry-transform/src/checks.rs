//! Data-quality checks. Each check measures one figure of a run and compares
//! it with its configured threshold; the severity decides what a failure does
//! (`warn`: reported; `error`: the run fails before commit).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use quarry_core::config::{CheckConfig, QualityConfig, Severity};
use quarry_core::decimal::{self, SCALE};
use serde::{Deserialize, Serialize};

use crate::aggregate::Profile;
use crate::timestamp::week_start;
use crate::validate::{BatchStats, Field};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
    Skipped,
}

/// Whether the threshold is an upper or a lower bound of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Max,
    Min,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's name, as in `[transformer.quality.<check>]`.
    pub check: String,
    /// What was measured.
    pub metric: String,
    /// None when the check could not be measured (skipped).
    pub value: Option<f64>,
    pub bound: Bound,
    pub threshold: f64,
    pub severity: Severity,
    pub outcome: Outcome,
    pub detail: String,
}

impl CheckResult {
    fn judge(
        check: &str,
        metric: &str,
        value: f64,
        bound: Bound,
        cfg: CheckConfig,
        detail: String,
    ) -> Self {
        let within = match bound {
            Bound::Max => value <= cfg.threshold,
            Bound::Min => value >= cfg.threshold,
        };
        let outcome = match (cfg.severity, within) {
            (Severity::Off, _) => Outcome::Skipped,
            (_, true) => Outcome::Pass,
            (Severity::Warn, false) => Outcome::Warn,
            (Severity::Error, false) => Outcome::Fail,
        };
        Self {
            check: check.into(),
            metric: metric.into(),
            value: Some(value),
            bound,
            threshold: cfg.threshold,
            severity: cfg.severity,
            outcome,
            detail,
        }
    }

    fn skipped(check: &str, metric: &str, bound: Bound, cfg: CheckConfig, why: String) -> Self {
        Self {
            check: check.into(),
            metric: metric.into(),
            value: None,
            bound,
            threshold: cfg.threshold,
            severity: cfg.severity,
            outcome: Outcome::Skipped,
            detail: why,
        }
    }

    /// One line: `validity: valid_share = 0.42, min 0.5 (error) — …`.
    pub fn describe(&self) -> String {
        let value = self.value.map_or("n/a".into(), |v| format!("{v:.6}"));
        let bound = match self.bound {
            Bound::Max => "max",
            Bound::Min => "min",
        };
        format!(
            "{}: {} = {value}, {bound} {} ({}): {}",
            self.check,
            self.metric,
            self.threshold,
            self.severity.as_str(),
            self.detail
        )
    }
}

/// Mean trades and volume per trading day of one client type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DailyMeans {
    pub days: u32,
    pub trades_per_day: f64,
    pub volume_per_day: f64,
}

/// Per client type.
pub type ClientMeans = BTreeMap<String, DailyMeans>;

pub fn daily_means(profile: &Profile) -> ClientMeans {
    let mut out: BTreeMap<String, (u32, u64, i128)> = BTreeMap::new();
    for ((_, ct), t) in &profile.daily {
        let e = out.entry(ct.to_string()).or_default();
        e.0 += 1;
        e.1 += t.trades;
        e.2 += t.volume;
    }
    out.into_iter()
        .map(|(ct, (days, trades, volume))| {
            let d = f64::from(days.max(1));
            let means = DailyMeans {
                days,
                trades_per_day: trades as f64 / d,
                volume_per_day: decimal::to_f64(volume, SCALE) / d,
            };
            (ct, means)
        })
        .collect()
}

/// Largest and median relative change between consecutive periods, per
/// client type, of trades and volume: day over day (`week = false`) or week
/// over week. Periods without trades are not counted as changes.
pub fn period_changes(profile: &Profile, week: bool) -> BTreeMap<String, serde_json::Value> {
    let mut series: BTreeMap<&str, BTreeMap<i32, (f64, f64)>> = BTreeMap::new();
    for ((day, ct), t) in &profile.daily {
        let period = if week { week_start(*day) } else { *day };
        let e = series.entry(ct).or_default().entry(period).or_default();
        e.0 += t.trades as f64;
        e.1 += decimal::to_f64(t.volume, SCALE);
    }
    series
        .into_iter()
        .map(|(ct, s)| {
            let values: Vec<(f64, f64)> = s.into_values().collect();
            let change = |pick: fn(&(f64, f64)) -> f64| {
                let mut c: Vec<f64> = values
                    .windows(2)
                    .filter(|w| pick(&w[0]) > 0.0)
                    .map(|w| ((pick(&w[1]) - pick(&w[0])) / pick(&w[0])).abs())
                    .collect();
                c.sort_by(f64::total_cmp);
                serde_json::json!({
                    "max": c.last(),
                    "median": median_sorted(&c),
                })
            };
            (
                ct.to_string(),
                serde_json::json!({
                    "periods": values.len(),
                    "trades": change(|v| v.0),
                    "volume": change(|v| v.1),
                }),
            )
        })
        .collect()
}

fn median_sorted(v: &[f64]) -> Option<f64> {
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Everything the checks look at.
pub struct CheckInput<'a> {
    pub stats: &'a BatchStats,
    /// Exact duplicate rows; dropped from the aggregate when `dedup`.
    pub duplicates: u64,
    pub dedup: bool,
    /// Rows repeating an earlier row's key columns (None: not counted).
    pub key_duplicates: Option<u64>,
    /// Σ trade_count over the aggregate rows.
    pub agg_trade_count: u64,
    pub profile: &'a Profile,
    pub run_started: DateTime<Utc>,
    /// Per-day means of the earlier succeeded runs, newest first.
    pub history: &'a [ClientMeans],
}

/// Runs every check, in the order of the report.
pub fn evaluate(cfg: &QualityConfig, q: &CheckInput<'_>) -> Vec<CheckResult> {
    vec![
        completeness(cfg, q.stats),
        validity(cfg, q.stats),
        uniqueness(cfg, q),
        key_uniqueness(cfg, q),
        consistency(cfg, q),
        freshness(cfg, q),
        reconciliation(cfg, q),
    ]
}

/// Completeness: the worst critical column.
fn completeness(cfg: &QualityConfig, s: &BatchStats) -> CheckResult {
    let worst = Field::ALL
        .iter()
        .filter(|f| cfg.critical_columns.iter().any(|c| c == f.name()))
        .map(|f| (f.name(), s.missing[*f as usize]))
        .max_by_key(|(_, n)| *n);
    match worst {
        Some((column, missing)) => CheckResult::judge(
            "completeness",
            "max_missing_share",
            s.share(missing),
            Bound::Max,
            cfg.completeness,
            format!("{column}: {missing} of {} rows null or empty", s.rows_in),
        ),
        None => CheckResult::skipped(
            "completeness",
            "max_missing_share",
            Bound::Max,
            cfg.completeness,
            "no critical columns configured".into(),
        ),
    }
}

/// Validity: rows passing every rule (reasons in rejected_by_reason).
fn validity(cfg: &QualityConfig, s: &BatchStats) -> CheckResult {
    let valid_share = if s.rows_in == 0 {
        1.0
    } else {
        s.share(s.rows_valid)
    };
    CheckResult::judge(
        "validity",
        "valid_share",
        valid_share,
        Bound::Min,
        cfg.validity,
        format!(
            "{} of {} rows valid, {} rejected",
            s.rows_valid,
            s.rows_in,
            s.rows_rejected()
        ),
    )
}

/// Uniqueness: exact duplicates (dropped when deduplicating).
fn uniqueness(cfg: &QualityConfig, q: &CheckInput<'_>) -> CheckResult {
    CheckResult::judge(
        "uniqueness",
        "duplicate_share",
        q.stats.share(q.duplicates),
        Bound::Max,
        cfg.uniqueness,
        format!(
            "{} exact duplicate rows{}",
            q.duplicates,
            if q.dedup { " (dropped)" } else { "" }
        ),
    )
}

/// Key uniqueness: rows repeating an earlier row's configured key columns.
fn key_uniqueness(cfg: &QualityConfig, q: &CheckInput<'_>) -> CheckResult {
    match q.key_duplicates {
        Some(n) => CheckResult::judge(
            "key_uniqueness",
            "key_duplicate_share",
            q.stats.share(n),
            Bound::Max,
            cfg.key_uniqueness,
            format!("{n} rows repeat the key ({})", cfg.key_columns.join(", ")),
        ),
        None => CheckResult::skipped(
            "key_uniqueness",
            "key_duplicate_share",
            Bound::Max,
            cfg.key_uniqueness,
            "no key_columns configured".into(),
        ),
    }
}

/// Freshness: the newest trade against the start of the run.
fn freshness(cfg: &QualityConfig, q: &CheckInput<'_>) -> CheckResult {
    match q.profile.newest {
        Some(newest) => {
            let newest = DateTime::from_timestamp_nanos(newest);
            let hours = (q.run_started - newest).num_seconds() as f64 / 3600.0;
            CheckResult::judge(
                "freshness",
                "lag_hours",
                hours,
                Bound::Max,
                cfg.freshness,
                format!("newest trade {}", newest.format("%Y-%m-%d %H:%M:%S UTC")),
            )
        }
        None => CheckResult::skipped(
            "freshness",
            "lag_hours",
            Bound::Max,
            cfg.freshness,
            "no valid trades".into(),
        ),
    }
}

/// Reconciliation: every row is accounted for.
fn reconciliation(cfg: &QualityConfig, q: &CheckInput<'_>) -> CheckResult {
    let s = q.stats;
    let accounted = s.rows_valid + s.rows_rejected();
    let aggregated = s.rows_valid - if q.dedup { q.duplicates } else { 0 };
    let off = s.rows_in.abs_diff(accounted) + aggregated.abs_diff(q.agg_trade_count);
    CheckResult::judge(
        "reconciliation",
        "rows_unaccounted",
        off as f64,
        Bound::Max,
        cfg.reconciliation,
        format!(
            "rows in {} = valid {} + rejected {}; aggregated rows {} = Σ trade_count {}",
            s.rows_in,
            s.rows_valid,
            s.rows_rejected(),
            aggregated,
            q.agg_trade_count
        ),
    )
}

/// Trades and volume per day, per client type, against the median of the
/// earlier runs: the largest relative deviation.
fn consistency(cfg: &QualityConfig, q: &CheckInput<'_>) -> CheckResult {
    let (check, metric) = ("consistency", "max_relative_deviation");
    let history = &q.history[..q.history.len().min(cfg.history_runs as usize)];
    if history.len() < cfg.min_history_runs.max(1) as usize {
        return CheckResult::skipped(
            check,
            metric,
            Bound::Max,
            cfg.consistency,
            format!(
                "needs {} earlier runs, found {}",
                cfg.min_history_runs.max(1),
                history.len()
            ),
        );
    }
    let now = daily_means(q.profile);
    let mut worst: Option<(f64, String)> = None;
    for (ct, m) in &now {
        for (name, value, pick) in [
            (
                "trades/day",
                m.trades_per_day,
                (|d: &DailyMeans| d.trades_per_day) as fn(&DailyMeans) -> f64,
            ),
            ("volume/day", m.volume_per_day, |d| d.volume_per_day),
        ] {
            let mut past: Vec<f64> = history.iter().filter_map(|h| h.get(ct)).map(pick).collect();
            past.sort_by(f64::total_cmp);
            let Some(median) = median_sorted(&past).filter(|m| *m > 0.0) else {
                continue;
            };
            let deviation = (value - median).abs() / median;
            if worst.as_ref().is_none_or(|(w, _)| deviation > *w) {
                worst = Some((
                    deviation,
                    format!(
                        "{ct} {name}: {value:.2} vs median {median:.2} of {} earlier runs",
                        past.len()
                    ),
                ));
            }
        }
    }
    match worst {
        Some((deviation, detail)) => CheckResult::judge(
            check,
            metric,
            deviation,
            Bound::Max,
            cfg.consistency,
            detail,
        ),
        None => CheckResult::skipped(
            check,
            metric,
            Bound::Max,
            cfg.consistency,
            "no client type in common with the earlier runs".into(),
        ),
    }
}

/// The failed `error` checks, one line each; None if the run may commit.
pub fn failures(results: &[CheckResult]) -> Option<String> {
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .map(CheckResult::describe)
        .collect();
    (!failed.is_empty()).then(|| format!("quality check failed: {}", failed.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::DayTotals;

    fn stats(rows_in: u64, valid: u64, missing_user: u64) -> BatchStats {
        let mut s = BatchStats {
            rows_in,
            rows_valid: valid,
            ..Default::default()
        };
        s.rejected[0] = rows_in - valid;
        s.missing[Field::UserId as usize] = missing_user;
        s
    }

    fn profile(days: &[(i32, &'static str, u64, i128)], newest: Option<i64>) -> Profile {
        Profile {
            daily: days
                .iter()
                .map(|&(d, ct, trades, volume)| ((d, ct), DayTotals { trades, volume }))
                .collect(),
            newest,
        }
    }

    fn input<'a>(
        s: &'a BatchStats,
        p: &'a Profile,
        history: &'a [ClientMeans],
        agg_trade_count: u64,
    ) -> CheckInput<'a> {
        CheckInput {
            stats: s,
            duplicates: 0,
            dedup: false,
            key_duplicates: None,
            agg_trade_count,
            profile: p,
            run_started: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            history,
        }
    }

    fn outcome(results: &[CheckResult], check: &str) -> Outcome {
        results.iter().find(|r| r.check == check).unwrap().outcome
    }

    fn cfg_with(f: impl FnOnce(&mut QualityConfig)) -> QualityConfig {
        let mut c = QualityConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn a_check_passes_warns_and_errors_at_its_threshold() {
        let p = profile(&[], None);
        let s = stats(100, 50, 0);
        for (severity, threshold, expected) in [
            (Severity::Error, 0.5, Outcome::Pass), // exactly at the bound
            (Severity::Warn, 0.51, Outcome::Warn),
            (Severity::Error, 0.51, Outcome::Fail),
            (Severity::Off, 0.51, Outcome::Skipped),
        ] {
            let c = cfg_with(|c| c.validity = CheckConfig::new(severity, threshold));
            let r = evaluate(&c, &input(&s, &p, &[], 50));
            assert_eq!(
                outcome(&r, "validity"),
                expected,
                "{severity:?} {threshold}"
            );
            assert_eq!(failures(&r).is_some(), expected == Outcome::Fail);
        }
        let c = cfg_with(|c| c.validity = CheckConfig::new(Severity::Error, 0.9));
        let msg = failures(&evaluate(&c, &input(&s, &p, &[], 50))).unwrap();
        assert!(
            msg.contains("validity: valid_share = 0.500000, min 0.9 (error)"),
            "{msg}"
        );
    }

    /// Every check, with an input that measures `value`: at the threshold it
    /// passes, beyond it it warns or fails by severity, and `off` skips it.
    #[test]
    fn every_check_passes_warns_and_errors_at_its_threshold() {
        type Setup = fn(&mut QualityConfig, CheckConfig);
        let cases: [(&str, f64, f64, Setup); 7] = [
            // (check, measured value, a threshold beyond it, how to set it)
            ("completeness", 0.07, 0.06, |c, k| c.completeness = k),
            ("validity", 0.9, 0.95, |c, k| c.validity = k),
            ("uniqueness", 0.01, 0.005, |c, k| c.uniqueness = k),
            ("key_uniqueness", 0.03, 0.02, |c, k| c.key_uniqueness = k),
            ("consistency", 3.0, 2.0, |c, k| c.consistency = k),
            ("freshness", 5.0, 4.0, |c, k| c.freshness = k),
            ("reconciliation", 1.0, 0.0, |c, k| c.reconciliation = k),
        ];
        let s = stats(100, 90, 7);
        let p = profile(
            &[(19_000, "gold", 400, 100_000_000)],
            Some(1_700_000_000_000_000_000 - 5 * 3_600_000_000_000),
        );
        let history: Vec<ClientMeans> = [100, 100, 100]
            .iter()
            .map(|t| daily_means(&profile(&[(19_000, "gold", *t, 100_000_000)], None)))
            .collect();
        let mut i = input(&s, &p, &history, 89); // one aggregated row short
        i.duplicates = 1;
        i.key_duplicates = Some(3);
        for (check, value, beyond, set) in cases {
            for (severity, threshold, expected) in [
                (Severity::Error, value, Outcome::Pass),
                (Severity::Warn, beyond, Outcome::Warn),
                (Severity::Error, beyond, Outcome::Fail),
                (Severity::Off, beyond, Outcome::Skipped),
            ] {
                let mut c = QualityConfig {
                    key_columns: vec!["user_id".into()],
                    ..Default::default()
                };
                set(&mut c, CheckConfig::new(severity, threshold));
                let r = evaluate(&c, &i);
                let got = r.iter().find(|x| x.check == check).unwrap();
                assert_eq!(
                    got.outcome, expected,
                    "{check} {severity:?} {threshold}: {got:?}"
                );
                if severity != Severity::Off {
                    assert!((got.value.unwrap() - value).abs() < 1e-9, "{got:?}");
                }
            }
        }
    }

    #[test]
    fn completeness_uniqueness_and_freshness_measure_their_figures() {
        let p = profile(&[], Some(1_700_000_000_000_000_000 - 5 * 3_600_000_000_000));
        let s = stats(100, 100, 7);
        let c = cfg_with(|c| {
            c.completeness = CheckConfig::new(Severity::Error, 0.05);
            c.freshness = CheckConfig::new(Severity::Warn, 4.0);
            c.key_columns = vec!["user_id".into()];
        });
        let mut i = input(&s, &p, &[], 100);
        i.duplicates = 1;
        i.key_duplicates = Some(3);
        let r = evaluate(&c, &i);
        let get = |n: &str| r.iter().find(|x| x.check == n).unwrap().clone();
        assert_eq!(get("completeness").value, Some(0.07));
        assert!(get("completeness").detail.starts_with("user_id"));
        assert_eq!(get("completeness").outcome, Outcome::Fail);
        assert_eq!(get("uniqueness").value, Some(0.01));
        assert_eq!(get("uniqueness").outcome, Outcome::Pass);
        assert_eq!(get("key_uniqueness").value, Some(0.03));
        assert_eq!(get("key_uniqueness").outcome, Outcome::Warn);
        assert_eq!(get("freshness").value, Some(5.0));
        assert_eq!(get("freshness").outcome, Outcome::Warn);
    }

    #[test]
    fn reconciliation_counts_rows_unaccounted_for() {
        let p = profile(&[], None);
        let s = stats(10, 8, 0);
        let c = QualityConfig::default();
        assert_eq!(
            outcome(&evaluate(&c, &input(&s, &p, &[], 8)), "reconciliation"),
            Outcome::Pass
        );
        let r = evaluate(&c, &input(&s, &p, &[], 7));
        assert_eq!(outcome(&r, "reconciliation"), Outcome::Fail);
        assert!(
            failures(&r)
                .unwrap()
                .contains("rows_unaccounted = 1.000000")
        );
    }

    #[test]
    fn consistency_compares_with_earlier_runs_once_there_are_enough() {
        let day = |trades| profile(&[(19_000, "gold", trades, 100_000_000)], None);
        let means = |p: &Profile| daily_means(p);
        let history: Vec<ClientMeans> = [100, 110, 90].iter().map(|t| means(&day(*t))).collect();
        let s = stats(1, 1, 0);
        let c = QualityConfig::default(); // warn above ±50%, 3 runs needed
        let normal = day(120);
        let r = evaluate(&c, &input(&s, &normal, &history, 1));
        assert_eq!(outcome(&r, "consistency"), Outcome::Pass);
        let spike = day(400);
        let r = evaluate(&c, &input(&s, &spike, &history, 1));
        let check = r.iter().find(|x| x.check == "consistency").unwrap();
        assert_eq!(check.outcome, Outcome::Warn);
        assert_eq!(check.value, Some(3.0)); // 400 vs median 100
        assert!(check.detail.contains("gold trades/day"), "{}", check.detail);
        let r = evaluate(&c, &input(&s, &spike, &history[..2], 1));
        assert_eq!(outcome(&r, "consistency"), Outcome::Skipped);
    }

    #[test]
    fn period_changes_are_relative_to_the_previous_period() {
        // 2022-01-03 is a Monday (day 18995).
        let p = profile(
            &[
                (18_995, "gold", 10, 100_000_000),
                (18_996, "gold", 20, 100_000_000),
                (19_002, "gold", 15, 100_000_000),
            ],
            None,
        );
        let days = period_changes(&p, false);
        assert_eq!(days["gold"]["trades"]["max"], 1.0);
        let weeks = period_changes(&p, true);
        assert_eq!(weeks["gold"]["periods"], 2);
        assert_eq!(weeks["gold"]["trades"]["max"], 0.5);
    }
}
