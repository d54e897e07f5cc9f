//! One pipeline run, from planning to commit (or abort).
//!
//! `drive` runs it and reports to the client; `Run::execute` goes
//! through its phases, one file each:
//! - `plan`: the run begins with the loader and the extractor plans its splits;
//! - `stream`: the splits are read, validated and folded into the aggregate
//!   while their rows stream to the loader;
//! - `aggregate`: the aggregate rows are loaded and the quality checks run;
//! - `finish`: the commit, the abort that replaces it on any error, and the
//!   last event to the client;
//! - `lineage`: the run's OpenLineage events (START, COMPLETE or FAIL).
//!
//! This file holds what the phases share: the run itself, its live counters
//! and its measures.

mod aggregate;
mod finish;
mod lineage;
mod plan;
mod stream;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::FlightClient;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use chrono::{DateTime, Utc};
use quarry_core::config::TransformerConfig;
use quarry_core::grpc::{AuthChannel, Security};
use quarry_core::{Error, Result, RunMode, grpc};
use quarry_lineage::Emitter;
use quarry_proto::loader_service_client::LoaderServiceClient;
use quarry_proto::{Progress, RunEvent, RunRequest, RunStats, RunSummary, run_event};
use quarry_transform::BatchStats;
use quarry_transform::aggregate::{Duplicates, Profile};
use quarry_transform::checks::CheckResult;
use quarry_transform::quality::{FileFacts, QualityInput};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use tonic::Status;
use tonic::transport::Channel;

type Events = mpsc::Sender<std::result::Result<RunEvent, Status>>;

/// A Flight client sending the bearer token (if any) with every call.
fn flight_client(channel: Channel, security: &Security) -> FlightClient {
    let mut client = FlightClient::new_from_inner(
        FlightServiceClient::new(channel)
            .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
    );
    if let Some((key, value)) = security.authorization() {
        // A checked token is a valid header value.
        let _ = client.add_header(key, &value);
    }
    client
}

fn loader_client(channel: Channel, security: &Security) -> LoaderServiceClient<AuthChannel> {
    LoaderServiceClient::new(security.authorize(channel))
        .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES)
}

fn from_flight(what: &str, e: FlightError) -> Error {
    match e {
        FlightError::Tonic(s) => Error::from_status(&s),
        other => Error::internal(format!("{what}: {other}")),
    }
}

/// Live counters, read by the progress ticker.
#[derive(Default)]
struct Counters {
    rows_read: AtomicU64,
    rows_valid: AtomicU64,
    rows_rejected: AtomicU64,
    files_done: AtomicU32,
    files_total: AtomicU32,
    stage: Mutex<&'static str>,
}

impl Counters {
    fn set_stage(&self, s: &'static str) {
        *self.stage.lock().expect("stage lock") = s;
    }

    fn stage(&self) -> &'static str {
        *self.stage.lock().expect("stage lock")
    }

    fn progress(&self, started: Instant) -> RunEvent {
        RunEvent {
            event: Some(run_event::Event::Progress(Progress {
                stage: self.stage.lock().expect("stage lock").to_string(),
                rows_read: self.rows_read.load(Ordering::Relaxed),
                rows_valid: self.rows_valid.load(Ordering::Relaxed),
                rows_rejected: self.rows_rejected.load(Ordering::Relaxed),
                files_done: self.files_done.load(Ordering::Relaxed),
                files_total: self.files_total.load(Ordering::Relaxed),
                elapsed_ms: started.elapsed().as_millis() as u64,
            })),
        }
    }
}

/// What the run has measured so far; sent with the commit or the abort.
#[derive(Default)]
struct Measures {
    stats: BatchStats,
    duplicates: Duplicates,
    agg_rows: u64,
    rows_staged: BTreeMap<String, u64>,
    profile: Profile,
    checks: Vec<CheckResult>,
    plan_ms: u64,
    extract: Duration,
    transform: Duration,
    load_ms: u64,
    commit_ms: u64,
    files: Vec<FileFacts>,
    /// Input rows read, per split.
    rows_by_file: BTreeMap<String, u64>,
    skipped_files: Vec<(String, String)>,
    /// The cursor range a PostgreSQL source was read over.
    cursor: Option<quarry_proto::SourceCursor>,
}

impl Measures {
    fn run_stats(&self, started: Instant) -> RunStats {
        RunStats {
            rows_in: self.stats.rows_in,
            rows_valid: self.stats.rows_valid,
            rows_rejected: self.stats.rows_rejected(),
            rows_duplicate: self.duplicates.exact,
            agg_rows: self.agg_rows,
            plan_ms: self.plan_ms,
            extract_ms: self.extract.as_millis() as u64,
            transform_ms: self.transform.as_millis() as u64,
            load_ms: self.load_ms,
            commit_ms: self.commit_ms,
            total_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// The options a run goes by: the request's, else the configured ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub dedup: bool,
    pub load_raw_trades: bool,
    pub mode: RunMode,
    /// Ignore the stored cursor of a PostgreSQL source.
    pub full_refresh: bool,
}

impl Options {
    /// The effective options of a request; refuses (before the run begins)
    /// a mode this transformer does not know and an ELT run without raw
    /// trades, whose weekly aggregate could not be computed.
    pub fn of(req: &RunRequest, config: &TransformerConfig) -> Result<Self> {
        let o = req.options.unwrap_or_default();
        let mode = match o.mode.map(quarry_proto::RunMode::try_from) {
            None | Some(Ok(quarry_proto::RunMode::Unspecified)) => config.mode,
            Some(Ok(quarry_proto::RunMode::Etl)) => RunMode::Etl,
            Some(Ok(quarry_proto::RunMode::Elt)) => RunMode::Elt,
            Some(Err(_)) => {
                return Err(Error::input(format!(
                    "unknown run mode {}",
                    o.mode.unwrap_or_default()
                )));
            }
        };
        let options = Self {
            dedup: o.dedup.unwrap_or(config.dedup),
            load_raw_trades: o.load_raw_trades.unwrap_or(config.load_raw_trades),
            mode,
            full_refresh: o.full_refresh.unwrap_or(false),
        };
        if options.mode == RunMode::Elt && !options.load_raw_trades {
            return Err(Error::input(
                "an ELT run computes the weekly aggregate in the warehouse from the raw trades it loads: \
                 it cannot run without raw trades (mode elt with load_raw_trades off)",
            ));
        }
        Ok(options)
    }
}

struct Run {
    config: TransformerConfig,
    req: RunRequest,
    run_id: String,
    dedup: bool,
    load_raw_trades: bool,
    mode: RunMode,
    full_refresh: bool,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
    security: Security,
    measures: Arc<Mutex<Measures>>,
    started: Instant,
    started_at: DateTime<Utc>,
    lineage: Arc<Emitter>,
    /// The warehouse's OpenLineage namespace and table prefix (the loader's).
    datasets: Mutex<(String, String)>,
    /// Whether START has been emitted.
    lineage_started: AtomicBool,
}

/// What a run gets from its service.
pub struct Context {
    pub config: TransformerConfig,
    pub security: Security,
    /// Cancelled when the service stops and its grace period is over.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub lineage: Arc<Emitter>,
}

/// Runs the pipeline and reports on `events`; the stream ends with the
/// summary or with an error status naming the run.
pub async fn drive(
    context: Context,
    req: RunRequest,
    options: Options,
    run_id: String,
    events: Events,
) {
    let Context {
        config,
        security,
        shutdown,
        metrics,
        lineage,
    } = context;
    metrics.runs_started.inc();
    let run = Run {
        dedup: options.dedup,
        load_raw_trades: options.load_raw_trades,
        mode: options.mode,
        full_refresh: options.full_refresh,
        config,
        req,
        run_id,
        counters: Arc::new(Counters::default()),
        metrics,
        security,
        measures: Arc::new(Mutex::new(Measures::default())),
        started: Instant::now(),
        started_at: Utc::now(),
        lineage,
        datasets: Mutex::new(("warehouse".into(), String::new())),
        lineage_started: AtomicBool::new(false),
    };
    run.counters.set_stage("planning");
    let ticker = {
        let (counters, events, started) = (run.counters.clone(), events.clone(), run.started);
        let period = Duration::from_millis(run.config.progress_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if events.send(Ok(counters.progress(started))).await.is_err() {
                    return;
                }
            }
        })
    };
    let outcome = tokio::select! {
        r = run.execute(&events) => r,
        // The client went away: stop and abort rather than commit
        // unobserved. Once the commit is requested the loader decides the
        // outcome (an abort then would record a committed run as failed):
        // wait for it, as for a shutdown.
        _ = async {
            events.closed().await;
            if run.counters.stage() == "committing" {
                std::future::pending::<()>().await;
            }
        } => Err(Error::interrupted("the client cancelled the run")),
        // The service is stopping and the grace period is over.
        _ = async {
            shutdown.cancelled().await;
            if run.counters.stage() == "committing" {
                std::future::pending::<()>().await;
            }
        } => Err(Error::interrupted(
            "the transformer shut down before the run finished; nothing was committed",
        )),
    };
    ticker.abort();
    run.report(outcome, &events).await;
}

impl Run {
    fn quality_json(&self) -> String {
        let m = self.measures.lock().expect("measures lock");
        quarry_transform::quality::report(&QualityInput {
            run_id: &self.run_id,
            source: &self.req.source,
            files: &m.files,
            skipped_files: &m.skipped_files,
            stats: &m.stats,
            duplicates: m.duplicates,
            dedup: self.dedup,
            agg_rows: m.agg_rows,
            rows_staged: &m.rows_staged,
            profile: &m.profile,
            checks: &m.checks,
            cursor: m.cursor.as_ref().map(|c| {
                let text = |v: &str| (!v.is_empty()).then(|| v.to_string());
                serde_json::json!({
                    "column": c.column,
                    "after": text(&c.after),
                    "through": text(&c.through),
                })
            }),
        })
        .to_string()
    }

    async fn loader_channel(&self) -> Result<Channel> {
        grpc::connect_with("loader", &self.config.loader_url, &self.security).await
    }

    /// Runs the phases in order; the first error ends the run, which the
    /// caller then aborts.
    async fn execute(&self, events: &Events) -> Result<RunSummary> {
        // One connection carries both the control calls and the Flight streams.
        let loader_channel = self.loader_channel().await?;
        let mut loader = loader_client(loader_channel.clone(), &self.security);
        self.begin(&mut loader).await?;
        let cursor_after = self.last_cursor(&mut loader).await?;
        let (extractor, plan, tickets) = self.plan(events, cursor_after).await?;
        let streamed = self.stream(&loader_channel, extractor, &tickets).await?;
        self.aggregate(&loader_channel, &mut loader, streamed)
            .await?;
        self.commit(&mut loader, &plan).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_proto::RunOptions;

    fn options(o: RunOptions, config: &TransformerConfig) -> Result<Options> {
        let req = RunRequest {
            options: Some(o),
            ..Default::default()
        };
        Options::of(&req, config)
    }

    #[test]
    fn the_request_overrides_the_configured_mode_and_elt_needs_raw_trades() {
        let mut config = TransformerConfig::default();
        let none = RunOptions::default();
        assert_eq!(options(none, &config).unwrap().mode, RunMode::Etl);
        let elt = RunOptions {
            mode: Some(quarry_proto::RunMode::Elt as i32),
            ..none
        };
        assert_eq!(options(elt, &config).unwrap().mode, RunMode::Elt);
        config.mode = RunMode::Elt;
        let unspecified = RunOptions {
            mode: Some(quarry_proto::RunMode::Unspecified as i32),
            ..none
        };
        assert_eq!(options(unspecified, &config).unwrap().mode, RunMode::Elt);

        let no_raw = RunOptions {
            load_raw_trades: Some(false),
            ..elt
        };
        let e = options(no_raw, &config).unwrap_err();
        assert_eq!(e.kind(), quarry_core::ErrorKind::Input);
        assert!(e.to_string().contains("without raw trades"), "{e}");
        let e = options(
            RunOptions {
                mode: Some(7),
                ..none
            },
            &config,
        )
        .unwrap_err();
        assert!(e.to_string().contains("run mode 7"), "{e}");
    }
}
