//! `quarry`: run the trades pipeline, serve its services, read its history.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressStyle};
use quarry_cli::client::{self, LoaderClient};
use quarry_cli::embedded::Cluster;
use quarry_cli::{archive, health, report};
use quarry_core::config::WarehouseKind;
use quarry_core::{Config, grpc, logging};
use quarry_proto::{
    CsvOptions, RunEvent, RunOptions, RunRecord, RunRequest, SourceFormat, TopMetric, run_event,
};
use quarry_testkit::{GenOptions, generate};

#[derive(Parser)]
#[command(
    name = "quarry",
    version,
    about = "Quarry: a trades ETL pipeline over Arrow Flight and gRPC"
)]
struct Cli {
    /// TOML configuration file (see config/quarry.toml); QUARRY_SECTION__KEY variables override it.
    #[arg(long, short, global = true, env = "QUARRY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline once: embedded (default) or on remote services.
    Run(RunArgs),
    /// Serve one service until Ctrl-C / SIGTERM.
    Serve { service: Service },
    /// List recent runs from pipeline_runs.
    Runs {
        /// Runs to list (default 20), or to compute --stats over (default all).
        #[arg(long)]
        limit: Option<u32>,
        /// Print pipeline-health figures (success rate, stage durations,
        /// rows per run, error rate by category) instead of the list.
        #[arg(long)]
        stats: bool,
        /// Only runs started at or after this date or time (UTC, e.g. 2026-11-01).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Reports read from the warehouse. Without a subcommand: writes
    /// report.html (charts, top users, quality checks, run history) and the
    /// charts as SVG files under charts/ in the output directory.
    Report {
        #[command(subcommand)]
        report: Option<Report>,
        /// Output directory (default from config: output).
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Hot/cold tiering: move old partitions to Parquet in object storage,
    /// list them, restore them. Embedded (in-process archiver) unless --archiver.
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
        /// Archiver URL (e.g. http://127.0.0.1:50054); without it one runs in-process.
        #[arg(long, global = true)]
        archiver: Option<String>,
        /// Cold storage root of the in-process archiver (default from config: cold).
        #[arg(long, global = true, value_name = "DIR|URL")]
        cold: Option<String>,
        /// SQLite database of the in-process archiver (default from config: agg_result.db).
        #[arg(long, global = true)]
        sqlite: Option<PathBuf>,
        /// Warehouse of the in-process archiver (default from config: sqlite).
        #[arg(long, global = true, value_enum)]
        warehouse: Option<WarehouseArg>,
    },
    /// Check a service's gRPC health (grpc.health.v1); exits 0 only when it
    /// reports SERVING (container health checks use it).
    Ping {
        /// The service's URL, e.g. http://127.0.0.1:50053.
        url: String,
        /// A service name to ask about (default: the whole server).
        #[arg(long, default_value = "")]
        service: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Write deterministic synthetic trades as CSV.
    Gen {
        /// Trades to write (data rows, after the header).
        #[arg(long)]
        rows: u64,
        /// The CSV file to write (its name must end in .csv).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the generator: the same seed gives the same file.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Share of invalid rows, spread over every rejection reason.
        #[arg(long, default_value_t = 0.001)]
        bad_share: f64,
        /// Distinct users (each with a fixed client type and 6 symbols).
        #[arg(long, default_value_t = 10_000)]
        users: u32,
    },
}

#[derive(Subcommand)]
enum Report {
    /// Top users of a client type by total volume or PnL (exact decimals).
    TopUsers {
        /// Client type to rank: gold, silver or bronze.
        #[arg(long, default_value = "bronze")]
        client_type: String,
        /// What to rank by: total volume or total PnL, summed over all weeks and symbols.
        #[arg(long, value_enum, default_value_t = MetricArg::Volume)]
        metric: MetricArg,
        /// Users to list.
        #[arg(long, default_value_t = 3)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum ArchiveAction {
    /// Move the partitions older than hot_days to cold storage.
    Run {
        /// Only this table (default: every table in archiver.tables).
        #[arg(long)]
        table: Option<String>,
        /// Count hot_days back from this date instead of today (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        as_of: Option<String>,
        /// Print what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Hot and cold partitions with row counts and sizes.
    List {
        /// Only this table (default: every table in archiver.tables).
        #[arg(long)]
        table: Option<String>,
    },
    /// Copy cold partitions back into the warehouse (atomic partition overwrite).
    Restore {
        /// The table to restore partitions of.
        #[arg(long, default_value = "trades")]
        table: String,
        /// First partition (YYYY-MM-DD), inclusive.
        #[arg(long, value_name = "DATE")]
        from: String,
        /// Last partition (YYYY-MM-DD), inclusive.
        #[arg(long, value_name = "DATE")]
        to: String,
    },
    /// Configuration, last run and recent events.
    Status {
        /// Events to show.
        #[arg(long, default_value_t = 20)]
        events: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MetricArg {
    Volume,
    Pnl,
}

#[derive(Clone, Copy, ValueEnum)]
enum Service {
    Extractor,
    Transformer,
    Loader,
    Archiver,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Csv,
    Parquet,
    Ndjson,
}

/// Where history and reports come from: a remote loader or the local SQLite file.
#[derive(clap::Args)]
struct Target {
    /// Loader URL (e.g. http://127.0.0.1:50053); without it the local SQLite database is read.
    #[arg(long)]
    loader: Option<String>,
    /// SQLite database to read when no loader is given (default from config: agg_result.db).
    #[arg(long)]
    sqlite: Option<PathBuf>,
    /// Warehouse to read when no loader is given (default from config: sqlite);
    /// its connection comes from config and QUARRY_WAREHOUSE__… variables.
    #[arg(long, value_enum)]
    warehouse: Option<WarehouseArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum WarehouseArg {
    Sqlite,
    Clickhouse,
    Bigquery,
    Snowflake,
}

impl From<WarehouseArg> for WarehouseKind {
    fn from(w: WarehouseArg) -> Self {
        match w {
            WarehouseArg::Sqlite => WarehouseKind::Sqlite,
            WarehouseArg::Clickhouse => WarehouseKind::Clickhouse,
            WarehouseArg::Bigquery => WarehouseKind::Bigquery,
            WarehouseArg::Snowflake => WarehouseKind::Snowflake,
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// File, directory or glob to read (default from config: data/trades.csv).
    #[arg(long)]
    source: Option<String>,
    /// Input format; by default taken from each file's extension.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// CSV delimiter (one character).
    #[arg(long)]
    delimiter: Option<char>,
    /// SQLite database of the embedded run (default from config: agg_result.db).
    #[arg(long)]
    sqlite: Option<PathBuf>,
    /// Warehouse of the embedded run (default from config: sqlite); its
    /// connection comes from config and QUARRY_WAREHOUSE__… variables.
    #[arg(long, value_enum)]
    warehouse: Option<WarehouseArg>,
    /// Directory for the report files (default from config: output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Run on remote services: the transformer's URL (e.g. http://127.0.0.1:50052).
    #[arg(long)]
    transformer: Option<String>,
    /// With --transformer: the loader to read reports from (default: config transformer.loader_url).
    #[arg(long, requires = "transformer")]
    loader: Option<String>,
    /// Drop exact duplicate rows (default from config: off).
    #[arg(long)]
    dedup: bool,
    /// Skip loading raw rows into `trades` (aggregates and rejects only).
    #[arg(long)]
    no_raw_trades: bool,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
}

/// Log levels of the commands that run services in-process: their own
/// warnings only. The services' logs would repeat what the command prints
/// (a failed run once per service); `QUARRY_LOG` brings them back.
const EMBEDDED_LOG: &str = "warn,quarry_extractor=off,quarry_transformer=off,quarry_loader=off,\
     quarry_archiver=off,quarry_warehouse=off,quarry_storage=off,quarry_core=error";

/// A command stopped by a signal: the line to print and the exit code.
#[derive(Debug)]
struct Interrupted {
    message: String,
    code: i32,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

fn main() {
    let cli = Cli::parse();
    // A served service logs at info, like the service binaries: its runs'
    // spans (which carry run_id) are info spans. Other commands stay quiet.
    let serving = matches!(cli.command, Command::Serve { .. });
    logging::init(if serving { "info" } else { EMBEDDED_LOG });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(dispatch(cli)) {
        eprintln!("quarry: {e:#}");
        let code = e.downcast_ref::<Interrupted>().map_or(1, |i| i.code);
        std::process::exit(code);
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run(args) => run(&mut config, args).await,
        Command::Serve { service } => serve(&config, service).await,
        Command::Runs {
            limit,
            stats,
            since,
            target,
        } => {
            with_loader(&mut config, target, |mut l| async move {
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
        Command::Report {
            report: None,
            output,
            target,
        } => {
            let dir = output.unwrap_or_else(|| config.run.output_dir.clone());
            let (client_type, limit) = (config.run.top_client_type.clone(), config.run.top_limit);
            with_loader(&mut config, target, |mut l| async move {
                let (top_by_volume, top_by_pnl) =
                    l.top_by_volume_and_pnl(&client_type, limit).await?;
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
        Command::Report {
            report:
                Some(Report::TopUsers {
                    client_type,
                    metric,
                    limit,
                    target,
                }),
            ..
        } => {
            let metric = match metric {
                MetricArg::Volume => TopMetric::Volume,
                MetricArg::Pnl => TopMetric::Pnl,
            };
            with_loader(&mut config, target, |mut l| async move {
                let users = l.top_users(&client_type, metric, limit).await?;
                println!("user_id,{}", client::metric_name(metric));
                for u in users {
                    println!("{},{}", u.user_id, u.value);
                }
                Ok(())
            })
            .await
        }
        Command::Archive {
            action,
            archiver,
            cold,
            sqlite,
            warehouse,
        } => {
            if let Some(c) = cold {
                config.archiver.cold_root = c;
            }
            if let Some(db) = sqlite {
                config.warehouse.sqlite.path = db;
            }
            if let Some(w) = warehouse {
                config.warehouse.kind = w.into();
            }
            archive_command(&config, archiver.as_deref(), action).await
        }
        Command::Ping {
            url,
            service,
            timeout,
        } => {
            let status = tokio::time::timeout(Duration::from_secs(timeout), async {
                let sec = grpc::Security::from_config(&config)?;
                client::health_with(&url, &service, &sec).await
            })
            .await
            .map_err(|_| anyhow::anyhow!("{url} did not answer within {timeout} s"))??;
            println!("{status}");
            if status != "SERVING" {
                bail!("{url} is {status}");
            }
            Ok(())
        }
        Command::Gen {
            rows,
            out,
            seed,
            bad_share,
            users,
        } => {
            if !(0.0..=1.0).contains(&bad_share) {
                bail!("--bad-share must be between 0 and 1");
            }
            if !out
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
            {
                bail!(
                    "quarry gen writes CSV: name the output file .csv (got {})",
                    out.display()
                );
            }
            let file = std::fs::File::create(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            let opts = GenOptions {
                rows,
                seed,
                bad_share,
                users,
            };
            generate(&opts, &mut w).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {rows} trades to {}", out.display());
            Ok(())
        }
    }
}

async fn serve(config: &Config, service: Service) -> anyhow::Result<()> {
    let sec = grpc::Security::from_config(config)?;
    match service {
        Service::Extractor => {
            let l = grpc::bind(&config.extractor.listen).await?;
            quarry_extractor::serve(&config.extractor, &sec, l, grpc::shutdown_signal()).await?
        }
        Service::Transformer => {
            let l = grpc::bind(&config.transformer.listen).await?;
            quarry_transformer::serve(&config.transformer, &sec, l, grpc::shutdown_signal()).await?
        }
        Service::Loader => {
            let l = grpc::bind(&config.loader.listen).await?;
            quarry_loader::serve(
                &config.loader,
                &config.warehouse,
                &sec,
                l,
                grpc::shutdown_signal(),
            )
            .await?
        }
        Service::Archiver => {
            let l = grpc::bind(&config.archiver.listen).await?;
            quarry_archiver::serve(config, &sec, l, grpc::shutdown_signal()).await?
        }
    }
    Ok(())
}

async fn archive_command(
    config: &Config,
    url: Option<&str>,
    action: ArchiveAction,
) -> anyhow::Result<()> {
    let db = &config.warehouse.sqlite.path;
    if url.is_none() && config.warehouse.kind == WarehouseKind::Sqlite && !db.exists() {
        bail!(
            "{} does not exist: run `quarry run` first or pass --sqlite / --archiver",
            db.display()
        );
    }
    let failed = archive::with_archiver(config, url, |mut c| async move {
        let report = match action {
            ArchiveAction::Run {
                table,
                as_of,
                dry_run,
            } => {
                let req = quarry_proto::ArchiveRequest {
                    table: table.unwrap_or_default(),
                    as_of: as_of.unwrap_or_default(),
                    dry_run,
                };
                archive::archive(&mut c, req).await?
            }
            ArchiveAction::Restore { table, from, to } => {
                let req = quarry_proto::RestoreRequest { table, from, to };
                archive::restore(&mut c, req).await?
            }
            ArchiveAction::List { table } => {
                let parts = archive::list(&mut c, &table.unwrap_or_default()).await?;
                print!("{}", archive::render_list(&parts));
                return Ok(0);
            }
            ArchiveAction::Status { events } => {
                print!("{}", archive::status(&mut c, events).await?);
                return Ok(0);
            }
        };
        print!("{}", archive::render_report(&report));
        Ok(report
            .moves
            .iter()
            .filter(|m| m.outcome == "failed")
            .count())
    })
    .await?;
    if failed > 0 {
        bail!("{failed} partition(s) failed to move; nothing was lost (see the detail column)");
    }
    Ok(())
}

/// How the command reaches services it started in-process: loopback, no
/// TLS or token, the configured client deadlines.
fn embedded_security(config: &Config) -> grpc::Security {
    let secs = std::time::Duration::from_secs;
    grpc::Security::default().with_deadlines(
        secs(config.client.connect_timeout_secs),
        secs(config.client.request_timeout_secs),
    )
}

/// Runs `f` against a remote loader, or against an in-process one over the local SQLite file.
async fn with_loader<F, Fut>(config: &mut Config, target: Target, f: F) -> anyhow::Result<()>
where
    F: FnOnce(LoaderClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if let Some(url) = target.loader {
        let sec = grpc::Security::from_config(config)?;
        return f(LoaderClient::connect_with(&url, &sec).await?).await;
    }
    if let Some(db) = target.sqlite {
        config.warehouse.sqlite.path = db;
    }
    if let Some(w) = target.warehouse {
        config.warehouse.kind = w.into();
    }
    let db = &config.warehouse.sqlite.path;
    if config.warehouse.kind == WarehouseKind::Sqlite && !db.exists() {
        bail!(
            "{} does not exist: run `quarry run` first or pass --sqlite / --loader",
            db.display()
        );
    }
    let cluster = Cluster::start_loader(config).await?;
    let result =
        f(LoaderClient::connect_with(&cluster.loader_url, &embedded_security(config)).await?).await;
    cluster.stop().await?;
    result
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

async fn run(config: &mut Config, args: RunArgs) -> anyhow::Result<()> {
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| config.run.source.clone());
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
        }),
    };

    // Remote services get the configured TLS and token; the embedded ones
    // listen on loopback in this process, without either.
    let (transformer_url, loader_url, mut cluster, sec) = match &args.transformer {
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
            if !source.contains("://") {
                // Embedded: the user's own files are readable, wherever they are.
                let root = source_root(&source);
                if !root.exists() {
                    bail!("source {source} does not exist");
                }
                config.extractor.data_roots.retain(|r| r.exists());
                config.extractor.data_roots.push(root);
            }
            let cluster = Cluster::start(config).await?;
            let t = cluster.transformer_url.clone().expect("pipeline cluster");
            let l = cluster.loader_url.clone();
            (t, l, Some(cluster), embedded_security(config))
        }
    };

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
    let mut status = String::from("running");
    if let Ok(mut loader) = LoaderClient::connect_with(loader_url, sec).await {
        for _ in 0..50 {
            match loader.get_run(&run_id).await {
                Ok(r) if r.status != "running" => {
                    status = r.status;
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(_) => break,
            }
        }
    }
    match status.as_str() {
        "succeeded" => format!(
            "run {run_id} interrupted by {sig} after its commit: the run succeeded, the report files were not written (quarry report)"
        ),
        "failed" => format!("run {run_id} interrupted by {sig}: aborted, nothing was committed"),
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

fn print_runs(runs: &[RunRecord]) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "run_id",
        "started_at",
        "status",
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
            s.rows_in.to_string(),
            s.rows_valid.to_string(),
            s.rows_rejected.to_string(),
            s.total_ms.to_string(),
            error,
        ]);
    }
    println!("{t}");
}
