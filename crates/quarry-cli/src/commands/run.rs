//! `quarry run`: one pipeline run, embedded or on remote services, with its
//! progress, its summary and its report files; and what is said when a
//! signal stops it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressStyle};
use quarry_cli::client::{self, LoaderClient};
use quarry_cli::embedded::Cluster;
use quarry_core::{Config, RunMode, RunStatus, grpc};
use quarry_proto::{
    CsvOptions, RunEvent, RunOptions, RunRecord, RunRequest, SourceFormat, run_event,
};

use super::args::{FormatArg, RunArgs};
use super::embedded_security;
use crate::Interrupted;

/// A source naming a day's delivery: `{today}` and `{yesterday}` become
/// that UTC date, `YYYY-MM-DD` (`landing/{yesterday}/` in a nightly job reads
/// only the files delivered for the day before). Other braces are left to
/// the source (glob alternatives).
fn with_days(source: &str, today: chrono::NaiveDate) -> String {
    let yesterday = today.pred_opt().unwrap_or(today);
    source
        .replace("{today}", &today.format("%Y-%m-%d").to_string())
        .replace("{yesterday}", &yesterday.format("%Y-%m-%d").to_string())
}

/// The directory that bounds a source: its parent, or a glob's fixed prefix.
fn source_root(source: &str) -> PathBuf {
    let fixed: &str = match source.find(['*', '?', '[']) {
        Some(i) => &source[..i],
        None => source,
    };
    let p = Path::new(fixed);
    let dir = if !fixed.ends_with('/') && (p.is_file() || fixed.len() < source.len()) {
        p.parent().unwrap_or(Path::new("."))
    } else {
        p
    };
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    }
}

/// The prefix an object source reads under: the URL up to its first glob
/// character, cut back to a `/` (`s3://b/landing/2024-*.csv` → `s3://b/landing/`).
fn object_root(source: &str) -> &str {
    match source.find(['*', '?', '[']) {
        Some(i) => source[..i].rfind('/').map_or(source, |j| &source[..=j]),
        None => source,
    }
}

fn wire_mode(mode: RunMode) -> quarry_proto::RunMode {
    match mode {
        RunMode::Etl => quarry_proto::RunMode::Etl,
        RunMode::Elt => quarry_proto::RunMode::Elt,
    }
}

/// Checks the arguments, starts the services of an embedded run, runs the
/// pipeline and reports on it; on a signal, says how the run ended.
pub(crate) async fn run(config: &mut Config, args: RunArgs) -> anyhow::Result<()> {
    // --source, else [source.postgres] when its url is set, else run.source.
    let source = args
        .source
        .clone()
        .or_else(|| config.source.postgres.source())
        .unwrap_or_else(|| config.run.source.clone());
    let source = with_days(&source, chrono::Utc::now().date_naive());
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| config.run.output_dir.clone());
    // Usage errors and a bad output location fail before any run begins.
    if source.trim().is_empty() {
        bail!("the source is empty: name a file, a directory or a glob with --source");
    }
    if let Some(d) = args.delimiter
        && !(d.is_ascii() && quarry_core::schema::is_valid_delimiter(d as u8))
    {
        bail!(
            "--delimiter {d:?} must be one ASCII character other than a quote, a line break or NUL"
        );
    }
    let mode = args.mode.map(RunMode::from);
    if mode == Some(RunMode::Elt) && args.no_raw_trades {
        bail!(
            "--mode elt computes the weekly aggregate in the warehouse from the raw trades: it cannot run with --no-raw-trades"
        );
    }
    client::check_output(&output, &config.run.top_client_type)?;
    let format = match args.format {
        None => SourceFormat::Unspecified,
        Some(FormatArg::Csv) => SourceFormat::Csv,
        Some(FormatArg::Parquet) => SourceFormat::Parquet,
        Some(FormatArg::Ndjson) => SourceFormat::Ndjson,
    };
    let request = RunRequest {
        source: source.clone(),
        format: format as i32,
        csv: args.delimiter.map(|d| CsvOptions {
            delimiter: d.to_string(),
        }),
        options: Some(RunOptions {
            dedup: args.dedup.then_some(true),
            load_raw_trades: args.no_raw_trades.then_some(false),
            mode: mode.map(|m| wire_mode(m) as i32),
            full_refresh: args.full_refresh.then_some(true),
        }),
    };

    let (transformer_url, loader_url, mut cluster, sec) = services(config, &args, &source).await?;

    let run_id = std::sync::Mutex::new(None::<String>);
    let outcome = tokio::select! {
        r = run_and_report(
            config,
            &sec,
            &transformer_url,
            &loader_url,
            request,
            &output,
            args.quiet,
            &run_id,
        ) => Ok(r),
        signal = grpc::next_signal() => Err(signal),
    };
    let result = match outcome {
        Ok(result) => result,
        Err(signal) => {
            let run_id = run_id.lock().expect("run id lock").clone();
            // A second signal ends the wait at once; the run is then marked
            // interrupted by the next loader that starts.
            tokio::select! {
                line = interrupted_run(signal, run_id, cluster.as_mut(), &loader_url, &sec) => {
                    Err(anyhow::Error::new(Interrupted { message: line, code: signal.exit_code() }))
                }
                again = grpc::next_signal() => {
                    eprintln!("quarry: interrupted twice ({}): exiting without waiting for the abort", again.name());
                    std::process::exit(again.exit_code());
                }
            }
        }
    };
    if let Some(c) = cluster {
        c.stop().await?;
    }
    result
}

/// The transformer and loader URLs of the run, its in-process services if
/// it is embedded, and how to reach them. Remote services get the
/// configured TLS and token; the embedded ones listen on loopback in this
/// process, without either.
async fn services(
    config: &mut Config,
    args: &RunArgs,
    source: &str,
) -> anyhow::Result<(String, String, Option<Cluster>, grpc::Security)> {
    Ok(match &args.transformer {
        Some(url) => {
            if args.sqlite.is_some() || args.warehouse.is_some() {
                bail!(
                    "--sqlite and --warehouse apply to embedded runs; a remote loader's warehouse is set in its own config"
                );
            }
            let loader = args
                .loader
                .clone()
                .unwrap_or_else(|| config.transformer.loader_url.clone());
            let sec = grpc::Security::from_config(config)?;
            (url.clone(), loader, None, sec)
        }
        None => {
            if let Some(db) = &args.sqlite {
                config.warehouse.sqlite.path = db.clone();
            }
            if let Some(w) = args.warehouse {
                config.warehouse.kind = w.into();
            }
            // Embedded: the user's own files and objects are readable,
            // wherever they are.
            config
                .extractor
                .data_roots
                .retain(|r| r.to_string_lossy().contains("://") || r.exists());
            if quarry_core::run::is_postgres_source(source) {
                // The source's database is the root (its table or query is not part of one).
                config.extractor.data_roots.push(source.into());
            } else if source.contains("://") {
                config.extractor.data_roots.push(object_root(source).into());
            } else {
                let root = source_root(source);
                if !root.exists() {
                    bail!("source {source} does not exist");
                }
                config.extractor.data_roots.push(root);
            }
            let cluster = Cluster::start(config).await?;
            let t = cluster.transformer_url.clone().expect("pipeline cluster");
            let l = cluster.loader_url.clone();
            (t, l, Some(cluster), embedded_security(config))
        }
    })
}

/// After a signal: the run's client stream is gone, so its transformer
/// aborts it (or, if the commit had begun, lets it finish). Waits for that
/// and says how the run ended.
async fn interrupted_run(
    signal: grpc::Signal,
    run_id: Option<String>,
    cluster: Option<&mut Cluster>,
    loader_url: &str,
    sec: &grpc::Security,
) -> String {
    let sig = signal.name();
    let Some(run_id) = run_id else {
        return format!("interrupted by {sig} while the run was planned: nothing was committed");
    };
    if let Some(c) = cluster
        && let Err(e) = c.stop_transformer().await
    {
        return format!("run {run_id} interrupted by {sig}: {e}");
    }
    // A remote transformer aborts on its own time: look for a few seconds.
    let mut status = Some(RunStatus::Running);
    if let Ok(mut loader) = LoaderClient::connect_with(loader_url, sec).await {
        for _ in 0..50 {
            match loader.get_run(&run_id).await {
                Ok(r) if !RunStatus::Running.is(&r.status) => {
                    status = RunStatus::parse(&r.status);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(_) => break,
            }
        }
    }
    match status {
        Some(RunStatus::Succeeded) => format!(
            "run {run_id} interrupted by {sig} after its commit: the run succeeded, the report files were not written (quarry report)"
        ),
        Some(RunStatus::Failed) => {
            format!("run {run_id} interrupted by {sig}: aborted, nothing was committed")
        }
        _ => format!(
            "run {run_id} interrupted by {sig}: its transformer is aborting it; nothing is committed"
        ),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_and_report(
    config: &Config,
    sec: &grpc::Security,
    transformer_url: &str,
    loader_url: &str,
    request: RunRequest,
    output: &Path,
    quiet: bool,
    run_id: &std::sync::Mutex<Option<String>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = if quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new_spinner();
        b.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("template"));
        b.enable_steady_tick(Duration::from_millis(120));
        b
    };
    let summary = client::run_pipeline_with(transformer_url, sec, request, |e: &RunEvent| match &e
        .event
    {
        Some(run_event::Event::Started(s)) => {
            *run_id.lock().expect("run id lock") = Some(s.run_id.clone());
            bar.set_message(format!("run {} started", s.run_id));
        }
        Some(run_event::Event::Progress(p)) => {
            let secs = (p.elapsed_ms as f64 / 1000.0).max(0.001);
            bar.set_message(format!(
                "{}: {} rows ({}/s), {} valid, {} rejected, files {}/{}",
                p.stage,
                p.rows_read,
                human(p.rows_read as f64 / secs),
                p.rows_valid,
                p.rows_rejected,
                p.files_done,
                p.files_total
            ));
        }
        _ => {}
    })
    .await;
    bar.finish_and_clear();
    let summary = summary?;
    let reports = async {
        let mut loader = LoaderClient::connect_with(loader_url, sec).await?;
        client::write_reports(
            &mut loader,
            &summary.run_id,
            output,
            &config.run.top_client_type,
            config.run.top_limit,
        )
        .await
    }
    .await
    .with_context(|| {
        format!(
            "run {} succeeded, but its report files were not written (`quarry report` reads the results again)",
            summary.run_id
        )
    })?;
    print_summary(&reports.record, started.elapsed());
    println!(
        "\nTop {} {} users by volume:",
        config.run.top_limit, config.run.top_client_type
    );
    for u in &reports.top_by_volume {
        println!("  {:<12} {}", u.user_id, u.value);
    }
    println!(
        "Top {} {} users by PnL:",
        config.run.top_limit, config.run.top_client_type
    );
    for u in &reports.top_by_pnl {
        println!("  {:<12} {}", u.user_id, u.value);
    }
    println!();
    for f in &reports.files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn print_summary(r: &RunRecord, wall: Duration) {
    let s = r.stats.unwrap_or_default();
    let quality: serde_json::Value = serde_json::from_str(&r.quality_json).unwrap_or_default();
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![
            Cell::new(k),
            Cell::new(v).set_alignment(CellAlignment::Right),
        ]);
    };
    row("rows read", s.rows_in.to_string());
    row("valid", s.rows_valid.to_string());
    row("rejected", s.rows_rejected.to_string());
    if let Some(reasons) = quality["rejected_by_reason"].as_object() {
        for (reason, n) in reasons {
            row(&format!("  {reason}"), n.to_string());
        }
    }
    row("exact duplicates", s.rows_duplicate.to_string());
    for (table, n) in &r.rows_committed {
        row(&format!("{table} rows committed"), n.to_string());
    }
    let secs = wall.as_secs_f64().max(0.001);
    row("wall time", format!("{secs:.2} s"));
    row(
        "throughput",
        format!("{} rows/s", human(s.rows_in as f64 / secs)),
    );
    row(
        "stage ms (plan/extract/transform/load/commit)",
        format!(
            "{}/{}/{}/{}/{}",
            s.plan_ms, s.extract_ms, s.transform_ms, s.load_ms, s.commit_ms
        ),
    );
    if let Some(checks) = quality["checks"].as_array() {
        let count = |o: &str| checks.iter().filter(|c| c["outcome"] == o).count();
        row(
            "quality checks (pass/warn/fail/skipped)",
            format!(
                "{}/{}/{}/{}",
                count("pass"),
                count("warn"),
                count("fail"),
                count("skipped")
            ),
        );
    }
    println!("Run {} {}", r.run_id, r.status);
    println!("{t}");
    for c in quality["checks"].as_array().into_iter().flatten() {
        if c["outcome"] == "warn" {
            println!(
                "quality warning: {}: {} = {}, {} {}: {}",
                c["check"].as_str().unwrap_or_default(),
                c["metric"].as_str().unwrap_or_default(),
                c["value"]
                    .as_f64()
                    .map_or("n/a".into(), |v| format!("{v:.6}")),
                c["bound"].as_str().unwrap_or_default(),
                c["threshold"],
                c["detail"].as_str().unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_placeholders_become_utc_dates_and_other_braces_stay() {
        let day = chrono::NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        assert_eq!(
            with_days("/srv/quarry/data/landing/{yesterday}", day),
            "/srv/quarry/data/landing/2024-02-29"
        );
        assert_eq!(
            with_days("s3://b/landing/{today}/*.{csv,parquet}", day),
            "s3://b/landing/2024-03-01/*.{csv,parquet}"
        );
        assert_eq!(with_days("data/trades.csv", day), "data/trades.csv");
    }
}
