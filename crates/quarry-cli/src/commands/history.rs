//! The commands that read the warehouse through a loader: `runs`, `report`
//! and `report top-users`.

use std::path::PathBuf;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use quarry_cli::{client, health, report};
use quarry_core::{Config, RunMode};
use quarry_proto::{RunRecord, TopMetric};

use super::args::{MetricArg, Target};
use super::with_loader;

/// `quarry runs`: the recent runs, or their health figures (`--stats`).
pub(crate) async fn runs(
    config: &mut Config,
    target: Target,
    limit: Option<u32>,
    stats: bool,
    since: Option<String>,
) -> anyhow::Result<()> {
    with_loader(config, target, |mut l| async move {
        let limit = limit.unwrap_or(if stats { u32::MAX } else { 20 });
        let runs = l.list_runs(limit).await?;
        if stats {
            println!(
                "{}",
                health::render(&health::health(&runs, since.as_deref()))
            );
        } else {
            let since = since.as_deref();
            let runs: Vec<_> = runs
                .into_iter()
                .filter(|r| since.is_none_or(|s| r.started_at.as_str() >= s))
                .collect();
            print_runs(&runs);
        }
        Ok(())
    })
    .await
}

/// `quarry report`: the report files, written to `output` (by default the
/// configured output directory).
pub(crate) async fn report_files(
    config: &mut Config,
    target: Target,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = output.unwrap_or_else(|| config.run.output_dir.clone());
    let (client_type, limit) = (config.run.top_client_type.clone(), config.run.top_limit);
    with_loader(config, target, |mut l| async move {
        let (top_by_volume, top_by_pnl) = l.top_by_volume_and_pnl(&client_type, limit).await?;
        let data = report::ReportData {
            weekly: l.weekly_totals().await?,
            top_by_volume,
            top_by_pnl,
            top_client_type: client_type,
            runs: l.list_runs(30).await?,
        };
        let now = chrono::Utc::now()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string();
        for path in report::write(&dir, &data, &now)? {
            println!("wrote {}", path.display());
        }
        Ok(())
    })
    .await
}

/// `quarry report top-users`: the top users as CSV lines.
pub(crate) async fn top_users(
    config: &mut Config,
    target: Target,
    client_type: String,
    metric: MetricArg,
    limit: u32,
) -> anyhow::Result<()> {
    let metric = match metric {
        MetricArg::Volume => TopMetric::Volume,
        MetricArg::Pnl => TopMetric::Pnl,
    };
    with_loader(config, target, |mut l| async move {
        let users = l.top_users(&client_type, metric, limit).await?;
        println!("user_id,{}", client::metric_name(metric));
        for u in users {
            println!("{},{}", u.user_id, u.value);
        }
        Ok(())
    })
    .await
}

/// The mode a run was recorded with (its options); runs from before the
/// modes computed their aggregate in the transformer: etl.
fn run_mode(r: &RunRecord) -> RunMode {
    serde_json::from_str::<serde_json::Value>(&r.options_json)
        .ok()
        .and_then(|o| o["mode"].as_str().and_then(RunMode::parse))
        .unwrap_or_default()
}

fn print_runs(runs: &[RunRecord]) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "run_id",
        "started_at",
        "status",
        "mode",
        "rows_in",
        "valid",
        "rejected",
        "total_ms",
        "error",
    ]);
    for r in runs {
        let s = r.stats.unwrap_or_default();
        let error = if r.error_category.is_empty() {
            String::new()
        } else {
            let mut m = format!("{}: {}", r.error_category, r.error_message);
            if m.len() > 80 {
                m.truncate(m.char_indices().nth(77).map(|(i, _)| i).unwrap_or(m.len()));
                m.push_str("...");
            }
            m
        };
        t.add_row(vec![
            r.run_id.clone(),
            r.started_at.clone(),
            r.status.clone(),
            run_mode(r).to_string(),
            s.rows_in.to_string(),
            s.rows_valid.to_string(),
            s.rows_rejected.to_string(),
            s.total_ms.to_string(),
            error,
        ]);
    }
    println!("{t}");
}
