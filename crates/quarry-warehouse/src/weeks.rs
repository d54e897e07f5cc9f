//! Which weeks a commit replaces as the run sent them, and which it
//! recomputes from `trades` — decided once, for every backend.
//!
//! The contract: a run replaces the `trade_date` partitions of its days,
//! then every week it touches holds the aggregate of **all** of that week's
//! days: the run's and those loaded earlier. The warehouse keeps the days it
//! holds in `loaded_days` (day, week, whether its raw trades were loaded,
//! run). For each week the run touches, the days loaded earlier that the
//! run does not deliver again are its *other* days:
//! - no other days (a whole week, or a first delivery): in ETL the week is
//!   replaced by the run's own weekly rows — the partition swap of old;
//! - other days, or ELT: the week is recomputed inside the commit with SQL
//!   from the `trades` of all its days (the run's rows replace their days
//!   first). This needs every other day's raw trades in the warehouse: a
//!   day loaded without raw trades, or a day (or the week's aggregate) moved
//!   to the cold tier, fails the run before anything changes, with one line
//!   naming the days (and the restore command for archived ones). A run
//!   without raw trades cannot complete a week that already holds other
//!   days, so it is refused the same way.
//!
//! A commit that declares no days (the archiver putting partitions back, a
//! test loading batches) is a plain partition swap of what it staged.

use std::collections::{BTreeMap, BTreeSet};

use quarry_core::dates::{date_text, week_start};
use quarry_core::{Error, Result, RunMode};

use crate::RunCommit;

/// One row of `loaded_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoadedDay {
    pub day: i32,
    pub raw_trades: bool,
}

/// What the warehouse holds of some weeks, read inside the commit before
/// anything is replaced.
#[derive(Debug, Default)]
pub(crate) struct WeekState {
    /// The `loaded_days` rows of these weeks.
    pub loaded: Vec<LoadedDay>,
    /// Of those days, the ones `trades` holds rows of (not archived).
    pub hot_days: BTreeSet<i32>,
    /// Of the weeks, the ones `agg_trades_weekly` holds rows of.
    pub hot_weeks: BTreeSet<i32>,
}

/// What a commit does to the weekly aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WeekPlan {
    /// Every week the run touches (Mondays, days since the epoch).
    pub weeks: BTreeSet<i32>,
    /// The weeks recomputed from `trades`, each with the days it is folded
    /// from (after the run's days are replaced).
    pub recompute: BTreeMap<i32, BTreeSet<i32>>,
    /// The days the run delivers: recorded in `loaded_days`.
    pub run_days: BTreeSet<i32>,
    pub raw_trades: bool,
}

impl WeekPlan {
    /// The days and weeks a run covers: the days of its valid rows, and
    /// their weeks and those of the weekly rows it staged.
    pub fn covered(
        commit: &RunCommit,
        staged_weeks: &BTreeSet<i32>,
    ) -> (BTreeSet<i32>, BTreeSet<i32>) {
        let weeks = commit
            .days
            .iter()
            .map(|d| week_start(*d))
            .chain(staged_weeks.iter().copied())
            .collect();
        (commit.days.clone(), weeks)
    }

    /// Decides, from what the warehouse holds of the run's weeks, which weeks
    /// are recomputed; refuses (one line) what cannot be recomputed exactly.
    pub fn new(
        commit: &RunCommit,
        run_days: BTreeSet<i32>,
        weeks: BTreeSet<i32>,
        state: &WeekState,
    ) -> Result<Self> {
        if commit.mode == RunMode::Elt && !commit.raw_trades {
            return Err(Error::input(
                "an ELT run computes the weekly aggregate from the raw trades it loads: it cannot run without raw trades",
            ));
        }
        let mut recompute = BTreeMap::new();
        if run_days.is_empty() {
            // A commit that declares no days (a partition put back from the
            // cold tier, a test's load) replaces what it staged, as it is.
            return Ok(Self {
                weeks,
                recompute,
                run_days,
                raw_trades: commit.raw_trades,
            });
        }
        let mut without_raw = BTreeSet::new();
        let mut archived_days = BTreeSet::new();
        let mut archived_weeks = BTreeSet::new();
        for &week in &weeks {
            let in_week = |d: &i32| week_start(*d) == week;
            let other: Vec<LoadedDay> = state
                .loaded
                .iter()
                .filter(|l| in_week(&l.day) && !run_days.contains(&l.day))
                .copied()
                .collect();
            if other.is_empty() && commit.mode == RunMode::Etl {
                continue;
            }
            if !other.is_empty() && !state.hot_weeks.contains(&week) {
                archived_weeks.insert(week);
            }
            for l in &other {
                if !l.raw_trades || !commit.raw_trades {
                    without_raw.insert(l.day);
                } else if !state.hot_days.contains(&l.day) {
                    archived_days.insert(l.day);
                }
            }
            let days = other
                .iter()
                .map(|l| l.day)
                .chain(run_days.iter().copied().filter(in_week))
                .collect();
            recompute.insert(week, days);
        }
        if !without_raw.is_empty() {
            let weeks = weeks_of(&without_raw);
            let why = if commit.raw_trades {
                format!("{} was loaded without raw trades", texts(&without_raw))
            } else {
                format!(
                    "this run loads no raw trades and {} already holds {}",
                    if weeks.len() > 1 { "they" } else { "it" },
                    texts(&without_raw)
                )
            };
            return Err(Error::input(format!(
                "cannot recompute week{} {} from all its days: {why}; deliver whole weeks, \
                 or load every day with raw trades (load_raw_trades = true)",
                plural(weeks.len()),
                texts(&weeks),
            )));
        }
        if !archived_days.is_empty() || !archived_weeks.is_empty() {
            return Err(archived(&archived_days, &archived_weeks));
        }
        Ok(Self {
            weeks,
            recompute,
            run_days,
            raw_trades: commit.raw_trades,
        })
    }

    /// Whether the commit is a plain partition swap (nothing recomputed).
    pub fn is_plain_swap(&self) -> bool {
        self.recompute.is_empty()
    }

    /// The weeks replaced by the run's own weekly rows.
    pub fn swapped_weeks(&self) -> impl Iterator<Item = i32> + '_ {
        self.weeks
            .iter()
            .copied()
            .filter(|w| !self.recompute.contains_key(w))
    }

    /// Every day a recomputed week is folded from.
    pub fn fold_days(&self) -> BTreeSet<i32> {
        self.recompute.values().flatten().copied().collect()
    }
}

fn plural(n: usize) -> &'static str {
    if n > 1 { "s" } else { "" }
}

fn weeks_of(days: &BTreeSet<i32>) -> BTreeSet<i32> {
    days.iter().map(|d| week_start(*d)).collect()
}

/// `2024-01-01, 2024-01-02` (the first eight, then how many more).
pub(crate) fn texts(days: &BTreeSet<i32>) -> String {
    let shown: Vec<String> = days.iter().take(8).map(|d| date_text(*d)).collect();
    match days.len() {
        n if n > 8 => format!("{} and {} more", shown.join(", "), n - 8),
        _ => shown.join(", "),
    }
}

/// The refusal of a run whose weeks have days (or aggregates) in the cold
/// tier: they must be restored first.
fn archived(days: &BTreeSet<i32>, weeks: &BTreeSet<i32>) -> Error {
    let mut parts = Vec::new();
    let mut restores = Vec::new();
    if !days.is_empty() {
        parts.push(format!("trades {}", texts(days)));
        restores.push(restore_command("trades", days));
    }
    if !weeks.is_empty() {
        parts.push(format!("agg_trades_weekly {}", texts(weeks)));
        restores.push(restore_command("agg_trades_weekly", weeks));
    }
    Error::input(format!(
        "the weeks this run touches have partitions in the cold tier ({}): a week is only \
         recomputed from all its days, so restore them first: {}",
        parts.join("; "),
        restores.join(" && ")
    ))
}

fn restore_command(table: &str, partitions: &BTreeSet<i32>) -> String {
    let first = partitions.first().copied().unwrap_or_default();
    let last = partitions.last().copied().unwrap_or_default();
    format!(
        "quarry archive restore --table {table} --from {} --to {}",
        date_text(first),
        date_text(last)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunStats;
    use quarry_core::dates::parse_date;

    fn d(text: &str) -> i32 {
        parse_date(text).unwrap()
    }

    fn set(days: &[&str]) -> BTreeSet<i32> {
        days.iter().map(|t| d(t)).collect()
    }

    fn commit(mode: RunMode, days: &[&str], raw_trades: bool) -> RunCommit {
        RunCommit {
            run_id: "r".into(),
            source_files: vec![],
            stats: RunStats::default(),
            quality_json: String::new(),
            mode,
            days: set(days),
            raw_trades,
        }
    }

    fn plan(c: &RunCommit, state: &WeekState) -> Result<WeekPlan> {
        let (days, weeks) = WeekPlan::covered(c, &BTreeSet::new());
        WeekPlan::new(c, days, weeks, state)
    }

    fn state(loaded: &[(&str, bool)]) -> WeekState {
        let loaded: Vec<LoadedDay> = loaded
            .iter()
            .map(|(t, raw_trades)| LoadedDay {
                day: d(t),
                raw_trades: *raw_trades,
            })
            .collect();
        WeekState {
            hot_days: loaded
                .iter()
                .filter(|l| l.raw_trades)
                .map(|l| l.day)
                .collect(),
            hot_weeks: loaded.iter().map(|l| week_start(l.day)).collect(),
            loaded,
        }
    }

    #[test]
    fn a_first_delivery_or_a_whole_week_again_is_a_plain_swap_in_etl() {
        // Mon 2024-01-01 .. Wed 2024-01-03, and Mon 2024-01-08.
        let c = commit(
            RunMode::Etl,
            &["2024-01-01", "2024-01-03", "2024-01-08"],
            true,
        );
        let p = plan(&c, &WeekState::default()).unwrap();
        assert!(p.is_plain_swap());
        assert_eq!(p.weeks, set(&["2024-01-01", "2024-01-08"]));
        let again = plan(&c, &state(&[("2024-01-01", true), ("2024-01-03", true)])).unwrap();
        assert!(again.is_plain_swap());
    }

    #[test]
    fn weeks_with_other_days_are_recomputed_from_all_their_days() {
        let c = commit(RunMode::Etl, &["2024-01-03", "2024-01-08"], true);
        let s = state(&[
            ("2024-01-01", true),
            ("2024-01-03", true),
            ("2023-12-31", true),
        ]);
        let p = plan(&c, &s).unwrap();
        assert_eq!(p.recompute.len(), 1);
        assert_eq!(
            p.recompute[&d("2024-01-01")],
            set(&["2024-01-01", "2024-01-03"])
        );
        assert_eq!(p.swapped_weeks().collect::<Vec<_>>(), vec![d("2024-01-08")]);

        // ELT recomputes every week it touches.
        let c = commit(RunMode::Elt, &["2024-01-03", "2024-01-08"], true);
        let p = plan(&c, &s).unwrap();
        assert_eq!(p.recompute[&d("2024-01-08")], set(&["2024-01-08"]));
        assert_eq!(
            p.fold_days(),
            set(&["2024-01-01", "2024-01-03", "2024-01-08"])
        );
    }

    #[test]
    fn a_commit_without_days_puts_back_what_it_staged() {
        let c = RunCommit::default();
        let s = state(&[("2024-01-01", true), ("2024-01-02", true)]);
        let (days, weeks) = WeekPlan::covered(&c, &set(&["2024-01-01"]));
        let p = WeekPlan::new(&c, days, weeks, &s).unwrap();
        assert!(p.is_plain_swap() && p.run_days.is_empty());
        assert_eq!(p.swapped_weeks().collect::<Vec<_>>(), vec![d("2024-01-01")]);
    }

    #[test]
    fn what_cannot_be_recomputed_is_refused_in_one_line() {
        let no_raw = commit(RunMode::Etl, &["2024-01-03"], false);
        let e = plan(&no_raw, &state(&[("2024-01-01", true)])).unwrap_err();
        assert!(e.message().contains("2024-01-01"), "{e}");
        assert!(!e.message().contains('\n'));
        // Alone in its week, a run without raw trades is a plain swap.
        assert!(
            plan(&no_raw, &WeekState::default())
                .unwrap()
                .is_plain_swap()
        );

        let c = commit(RunMode::Etl, &["2024-01-03"], true);
        let e = plan(&c, &state(&[("2024-01-02", false)])).unwrap_err();
        assert!(
            e.message()
                .contains("2024-01-02 was loaded without raw trades"),
            "{e}"
        );

        let elt = commit(RunMode::Elt, &["2024-01-03"], false);
        assert!(plan(&elt, &WeekState::default()).is_err());

        // Archived days: named, with the command that brings them back.
        let mut s = state(&[("2024-01-01", true), ("2024-01-02", true)]);
        s.hot_days.clear();
        let e = plan(&c, &s).unwrap_err();
        assert!(
            e.message().contains("trades 2024-01-01, 2024-01-02")
                && e.message().contains(
                    "quarry archive restore --table trades --from 2024-01-01 --to 2024-01-02"
                ),
            "{e}"
        );
        let mut s = state(&[("2024-01-01", true)]);
        s.hot_weeks.clear();
        let e = plan(&c, &s).unwrap_err();
        assert!(e.message().contains("agg_trades_weekly 2024-01-01"), "{e}");
    }
}
