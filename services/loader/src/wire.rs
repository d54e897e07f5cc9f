//! The loader's gRPC edge: the warehouse's own types to and from their
//! protobuf messages. Plain functions, not `From` impls: both sides are
//! types of other crates here (the orphan rule), and neither the warehouse
//! nor the wire crate should depend on the other.

use std::collections::BTreeSet;

use quarry_core::dates::parse_date;
use quarry_core::{Error, Result, RunMode};
use quarry_proto as wire;
use quarry_warehouse::{RunCommit, RunRecord, RunStats, WeeklyTotal, WriteMode};

/// The write mode of a `LoadCommand`; unspecified means the default,
/// replace. A value this loader does not know is refused.
pub fn write_mode(mode: i32) -> Result<WriteMode> {
    match wire::WriteMode::try_from(mode) {
        Ok(wire::WriteMode::Unspecified | wire::WriteMode::ReplacePartitions) => {
            Ok(WriteMode::Replace)
        }
        Ok(wire::WriteMode::Append) => Ok(WriteMode::Append),
        Err(_) => Err(Error::input(format!("unknown write mode {mode}"))),
    }
}

/// The run mode of a commit; unspecified is ETL (what every run was before
/// the modes). A value this loader does not know is refused.
pub fn run_mode(mode: i32) -> Result<RunMode> {
    match wire::RunMode::try_from(mode) {
        Ok(wire::RunMode::Unspecified | wire::RunMode::Etl) => Ok(RunMode::Etl),
        Ok(wire::RunMode::Elt) => Ok(RunMode::Elt),
        Err(_) => Err(Error::input(format!("unknown run mode {mode}"))),
    }
}

/// What a `CommitRequest` commits; a day that is not `YYYY-MM-DD` is
/// refused, named.
pub fn commit(req: wire::CommitRequest) -> Result<RunCommit> {
    let days = req
        .days
        .iter()
        .map(|d| {
            parse_date(d).ok_or_else(|| {
                Error::input(format!(
                    "commit day {} is not a date (YYYY-MM-DD)",
                    quarry_core::text::excerpt(&format!("{d:?}"), 40)
                ))
            })
        })
        .collect::<Result<BTreeSet<i32>>>()?;
    Ok(RunCommit {
        mode: run_mode(req.mode)?,
        days,
        raw_trades: req.raw_trades,
        run_id: req.run_id,
        source_files: req.source_files,
        stats: stats(req.stats),
        quality_json: req.quality_json,
    })
}

/// The stats a request carries (none: all zero).
pub fn stats(s: Option<wire::RunStats>) -> RunStats {
    let s = s.unwrap_or_default();
    RunStats {
        rows_in: s.rows_in,
        rows_valid: s.rows_valid,
        rows_rejected: s.rows_rejected,
        rows_duplicate: s.rows_duplicate,
        agg_rows: s.agg_rows,
        plan_ms: s.plan_ms,
        extract_ms: s.extract_ms,
        transform_ms: s.transform_ms,
        load_ms: s.load_ms,
        commit_ms: s.commit_ms,
        total_ms: s.total_ms,
    }
}

fn stats_to_wire(s: RunStats) -> wire::RunStats {
    wire::RunStats {
        rows_in: s.rows_in,
        rows_valid: s.rows_valid,
        rows_rejected: s.rows_rejected,
        rows_duplicate: s.rows_duplicate,
        agg_rows: s.agg_rows,
        plan_ms: s.plan_ms,
        extract_ms: s.extract_ms,
        transform_ms: s.transform_ms,
        load_ms: s.load_ms,
        commit_ms: s.commit_ms,
        total_ms: s.total_ms,
    }
}

/// A run record as `GetRun`/`ListRuns` answer it: the status and error
/// category as their text, an absent category as "".
pub fn run(r: RunRecord) -> wire::RunRecord {
    wire::RunRecord {
        run_id: r.run_id,
        source: r.source,
        status: r.status.as_str().into(),
        started_at: r.started_at,
        finished_at: r.finished_at,
        stats: Some(stats_to_wire(r.stats)),
        rows_committed: r.rows_committed.into_iter().collect(),
        error_category: r
            .error_category
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        error_message: r.error_message,
        quality_json: r.quality_json,
        options_json: r.options_json,
        owner_json: r.owner_json,
    }
}

pub fn weekly_total(t: WeeklyTotal) -> wire::WeeklyTotal {
    wire::WeeklyTotal {
        week_start_date: t.week_start_date,
        client_type: t.client_type,
        total_volume: t.total_volume,
        total_pnl: t.total_pnl,
        trade_count: t.trade_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_stats_cross_the_edge() {
        assert_eq!(write_mode(0).unwrap(), WriteMode::Replace);
        assert_eq!(write_mode(1).unwrap(), WriteMode::Replace);
        assert_eq!(write_mode(2).unwrap(), WriteMode::Append);
        assert!(
            write_mode(7)
                .unwrap_err()
                .to_string()
                .contains("write mode 7")
        );
        let s = RunStats::from_counters(std::array::from_fn(|i| i as u64 + 1));
        assert_eq!(stats(Some(stats_to_wire(s))), s);
        assert_eq!(stats(None), RunStats::default());
    }

    #[test]
    fn commits_carry_their_mode_and_days() {
        let c = commit(wire::CommitRequest {
            run_id: "r".into(),
            mode: wire::RunMode::Elt as i32,
            days: vec!["2024-01-02".into(), "2024-01-01".into()],
            raw_trades: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.mode, RunMode::Elt);
        assert_eq!(c.days, BTreeSet::from([19_723, 19_724]));
        assert!(c.raw_trades);
        assert_eq!(run_mode(0).unwrap(), RunMode::Etl);
        assert!(run_mode(9).unwrap_err().to_string().contains("run mode 9"));
        let e = commit(wire::CommitRequest {
            days: vec!["2024-02-30".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.kind(), quarry_core::ErrorKind::Input);
        assert!(e.to_string().contains("2024-02-30"), "{e}");
    }
}
