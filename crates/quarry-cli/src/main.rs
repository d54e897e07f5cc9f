//! `quarry`: run the trades pipeline, serve its services, read its history.
//!
//! The command line is parsed here and each command handed to its module
//! under `commands/`.

mod commands;

use clap::Parser;
use quarry_core::{Config, logging};

use commands::args::{Cli, Command, Report};
use commands::{archive, history, run, serve, synthetic};

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
        eprintln!("quarry: {}", one_line(&e));
        let code = e.downcast_ref::<Interrupted>().map_or(1, |i| i.code);
        std::process::exit(code);
    }
}

/// The failure in one line: the contexts the command added, then the error.
/// A Quarry error's message already quotes its cause (it is all that crosses
/// the wire), so the chain stops there; its `source()` is for programs.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts = vec![];
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.is::<quarry_core::Error>() {
            break;
        }
    }
    parts.join(": ")
}

/// Runs the command line's command under the configuration it names.
async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run(args) => run::run(&mut config, args).await,
        Command::Serve { service } => serve::serve(&config, service).await,
        Command::Runs {
            limit,
            stats,
            since,
            target,
        } => history::runs(&mut config, target, limit, stats, since).await,
        Command::Report {
            report: None,
            output,
            target,
        } => history::report_files(&mut config, target, output).await,
        Command::Report {
            report:
                Some(Report::TopUsers {
                    client_type,
                    metric,
                    limit,
                    target,
                }),
            ..
        } => history::top_users(&mut config, target, client_type, metric, limit).await,
        Command::Archive {
            action,
            archiver,
            cold,
            sqlite,
            warehouse,
        } => archive::archive_command(&mut config, action, archiver, cold, sqlite, warehouse).await,
        Command::Ping {
            url,
            service,
            timeout,
        } => serve::ping(&config, &url, &service, timeout).await,
        Command::Gen {
            rows,
            out,
            seed,
            bad_share,
            users,
        } => synthetic::gen_trades(rows, &out, seed, bad_share, users),
    }
}
