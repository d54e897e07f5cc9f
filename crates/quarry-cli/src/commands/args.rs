//! The command line: every command, its arguments and their help.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use quarry_core::RunMode;
use quarry_core::config::WarehouseKind;

#[derive(Parser)]
#[command(
    name = "quarry",
    version,
    about = "Quarry: a trades ETL pipeline over Arrow Flight and gRPC"
)]
pub(crate) struct Cli {
    /// TOML configuration file (see config/quarry.toml); QUARRY_SECTION__KEY variables override it.
    #[arg(long, short, global = true, env = "QUARRY_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum Report {
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
pub(crate) enum ArchiveAction {
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
pub(crate) enum MetricArg {
    Volume,
    Pnl,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Service {
    Extractor,
    Transformer,
    Loader,
    Archiver,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
    Etl,
    Elt,
}

impl From<ModeArg> for RunMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Etl => RunMode::Etl,
            ModeArg::Elt => RunMode::Elt,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Csv,
    Parquet,
    Ndjson,
}

/// Where history and reports come from: a remote loader or the local SQLite file.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// Loader URL (e.g. http://127.0.0.1:50053); without it the local SQLite database is read.
    #[arg(long)]
    pub(crate) loader: Option<String>,
    /// SQLite database to read when no loader is given (default from config: agg_result.db).
    #[arg(long)]
    pub(crate) sqlite: Option<PathBuf>,
    /// Warehouse to read when no loader is given (default from config: sqlite);
    /// its connection comes from config and QUARRY_WAREHOUSE__… variables.
    #[arg(long, value_enum)]
    pub(crate) warehouse: Option<WarehouseArg>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum WarehouseArg {
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
pub(crate) struct RunArgs {
    /// What to read: a file, directory or glob, an s3:// or gs:// URL, or a
    /// postgresql:// table or query (default from config: [source.postgres]
    /// when its url is set, else run.source, data/trades.csv). `{yesterday}`
    /// and `{today}` in it become that UTC date, e.g. landing/{yesterday}/.
    #[arg(long)]
    pub(crate) source: Option<String>,
    /// Input format; by default taken from each file's extension.
    #[arg(long, value_enum)]
    pub(crate) format: Option<FormatArg>,
    /// CSV delimiter (one character).
    #[arg(long)]
    pub(crate) delimiter: Option<char>,
    /// SQLite database of the embedded run (default from config: agg_result.db).
    #[arg(long)]
    pub(crate) sqlite: Option<PathBuf>,
    /// Warehouse of the embedded run (default from config: sqlite); its
    /// connection comes from config and QUARRY_WAREHOUSE__… variables.
    #[arg(long, value_enum)]
    pub(crate) warehouse: Option<WarehouseArg>,
    /// Directory for the report files (default from config: output).
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
    /// Run on remote services: the transformer's URL (e.g. http://127.0.0.1:50052).
    #[arg(long)]
    pub(crate) transformer: Option<String>,
    /// With --transformer: the loader to read reports from (default: config transformer.loader_url).
    #[arg(long, requires = "transformer")]
    pub(crate) loader: Option<String>,
    /// Drop exact duplicate rows (default from config: off).
    #[arg(long)]
    pub(crate) dedup: bool,
    /// Skip loading raw rows into `trades` (aggregates and rejects only).
    #[arg(long)]
    pub(crate) no_raw_trades: bool,
    /// Who computes the weekly aggregate: the transformer (etl) or the
    /// warehouse from the raw trades (elt); default from config: etl.
    #[arg(long, value_enum)]
    pub(crate) mode: Option<ModeArg>,
    /// A PostgreSQL source with a cursor column: read everything again
    /// instead of the rows past the last committed cursor.
    #[arg(long)]
    pub(crate) full_refresh: bool,
    /// No progress display.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}
