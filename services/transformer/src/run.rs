//! One pipeline run, from planning to commit (or abort).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow_flight::FlightClient;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use quarry_core::config::{Severity, TransformerConfig};
use quarry_core::grpc::{AuthChannel, Security};
use quarry_core::{Error, Result, Table, flight, grpc};
use quarry_proto::loader_service_client::LoaderServiceClient;
use quarry_proto::{
    AbortRequest, BeginRunRequest, CommitRequest, ExtractCommand, ExtractPlan, ExtractTicket,
    ListRunsRequest, LoadAck, LoadCommand, Progress, RunEvent, RunRequest, RunStarted, RunStats,
    RunSummary, SourceFormat, WriteMode, run_event,
};
use quarry_transform::aggregate::{Duplicates, KeyColumns, Profile};
use quarry_transform::checks::{self, CheckInput, CheckResult, ClientMeans, Outcome};
use quarry_transform::quality::{FileFacts, QualityInput};
use quarry_transform::{Aggregator, BatchStats, validate};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use tonic::Status;
use tonic::transport::Channel;
use tracing::{Instrument, info, warn};

type Events = mpsc::Sender<std::result::Result<RunEvent, Status>>;

/// Batches of one split validated at the same time.
const VALIDATION_PIPELINE: usize = 2;

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
    skipped_files: Vec<(String, String)>,
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

struct Run {
    config: TransformerConfig,
    req: RunRequest,
    run_id: String,
    dedup: bool,
    load_raw_trades: bool,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
    security: Security,
    measures: Arc<Mutex<Measures>>,
    started: Instant,
    started_at: DateTime<Utc>,
}

/// What a run gets from its service.
pub struct Context {
    pub config: TransformerConfig,
    pub security: Security,
    /// Cancelled when the service stops and its grace period is over.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
}

/// Runs the pipeline and reports on `events`; the stream ends with the
/// summary or with an error status naming the run.
pub async fn drive(context: Context, req: RunRequest, run_id: String, events: Events) {
    let Context {
        config,
        security,
        shutdown,
        metrics,
    } = context;
    metrics.runs_started.inc();
    let options = req.options.unwrap_or_default();
    let run = Run {
        dedup: options.dedup.unwrap_or(config.dedup),
        load_raw_trades: options.load_raw_trades.unwrap_or(config.load_raw_trades),
        config,
        req,
        run_id,
        counters: Arc::new(Counters::default()),
        metrics: metrics.clone(),
        security,
        measures: Arc::new(Mutex::new(Measures::default())),
        started: Instant::now(),
        started_at: Utc::now(),
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
    match outcome {
        Ok(summary) => {
            metrics.runs_succeeded.inc();
            if let Some(stats) = &summary.stats {
                metrics.observe_stages(stats);
            }
            info!(
                rows_in = summary.stats.as_ref().map(|s| s.rows_in),
                "run succeeded"
            );
            let _ = events.send(Ok(run.counters.progress(run.started))).await;
            let _ = events
                .send(Ok(RunEvent {
                    event: Some(run_event::Event::Completed(summary)),
                }))
                .await;
        }
        Err(e) => {
            warn!(category = %e.category(), error = %e, "run failed");
            metrics.runs_failed.inc();
            metrics.errors.count(&e);
            run.abort(&e).await;
            let message = format!("run {} failed ({}): {}", run.run_id, e.category(), e);
            let _ = events
                .send(Err(Status::from(e.with_message(message))))
                .await;
        }
    }
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
        })
        .to_string()
    }

    async fn loader_channel(&self) -> Result<Channel> {
        grpc::connect_with("loader", &self.config.loader_url, &self.security).await
    }

    /// Records the failure with the loader, which discards the staged data.
    async fn abort(&self, e: &Error) {
        let stats = self
            .measures
            .lock()
            .expect("measures lock")
            .run_stats(self.started);
        let req = AbortRequest {
            run_id: self.run_id.clone(),
            error_category: e.category().as_str().to_string(),
            error_message: e.to_string(),
            stats: Some(stats),
            quality_json: self.quality_json(),
        };
        match self
            .loader_channel()
            .await
            .map(|c| loader_client(c, &self.security))
        {
            Ok(mut l) => {
                if let Err(s) = l.abort(req).await {
                    warn!(error = %s.message(), "could not record the failed run with the loader");
                }
            }
            Err(err) => warn!(error = %err, "could not reach the loader to abort the run"),
        }
    }

    async fn execute(&self, events: &Events) -> Result<RunSummary> {
        // One connection carries both the control calls and the Flight streams.
        let loader_channel = self.loader_channel().await?;
        let mut loader = loader_client(loader_channel.clone(), &self.security);
        let options_json = serde_json::json!({
            "dedup": self.dedup,
            "load_raw_trades": self.load_raw_trades,
            "format": SourceFormat::try_from(self.req.format).unwrap_or_default().as_str_name(),
        })
        .to_string();
        loader
            .begin_run(BeginRunRequest {
                run_id: self.run_id.clone(),
                source: self.req.source.clone(),
                options_json,
            })
            .await
            .map_err(|s| Error::from_status(&s))?;

        // Plan: the extractor resolves the source and checks every file's columns
        // before a single row is read.
        let t = Instant::now();
        let extractor =
            grpc::connect_with("extractor", &self.config.extractor_url, &self.security).await?;
        let info = flight_client(extractor.clone(), &self.security)
            .get_flight_info(flight::descriptor(&ExtractCommand {
                source: self.req.source.clone(),
                format: self.req.format,
                csv: self.req.csv.clone(),
                batch_rows: 0,
            }))
            .await
            .map_err(|e| from_flight("extractor", e))?;
        let plan: ExtractPlan = flight::decode("ExtractPlan", &info.app_metadata)?;
        let tickets: Vec<ExtractTicket> = info
            .endpoint
            .iter()
            .filter_map(|ep| ep.ticket.as_ref())
            .map(|t| flight::decode("ExtractTicket", &t.ticket))
            .collect::<Result<_>>()?;
        {
            let mut m = self.measures.lock().expect("measures lock");
            m.plan_ms = t.elapsed().as_millis() as u64;
            m.files = plan
                .files
                .iter()
                .map(|f| FileFacts {
                    file: f.file.clone(),
                    format: SourceFormat::try_from(f.format)
                        .unwrap_or_default()
                        .as_str_name()
                        .trim_start_matches("SOURCE_FORMAT_")
                        .to_ascii_lowercase(),
                    size_bytes: f.size_bytes,
                    extra_columns: f.extra_columns.clone(),
                })
                .collect();
            m.skipped_files = plan
                .skipped
                .iter()
                .map(|s| (s.file.clone(), s.reason.clone()))
                .collect();
        }
        self.counters
            .files_total
            .store(tickets.len() as u32, Ordering::Relaxed);
        events
            .send(Ok(RunEvent {
                event: Some(run_event::Event::Started(RunStarted {
                    run_id: self.run_id.clone(),
                    plan: Some(plan.clone()),
                })),
            }))
            .await
            .map_err(|_| Error::interrupted("the client cancelled the run"))?;
        info!(source = %self.req.source, files = tickets.len(), "run started");

        // Stream: one DoPut per table stays open while the splits are read.
        let mut puts: JoinSet<Result<(Table, u64)>> = JoinSet::new();
        let mut open_put = |table: Table| {
            let (tx, rx) = mpsc::channel::<RecordBatch>(4);
            let client = flight_client(loader_channel.clone(), &self.security);
            let run_id = self.run_id.clone();
            puts.spawn(put_table(client, run_id, table, rx).in_current_span());
            tx
        };
        let trades_tx = self.load_raw_trades.then(|| open_put(Table::Trades));
        let rejected_tx = open_put(Table::TradesRejected);
        self.counters.set_stage("extracting");

        let aggregator = Arc::new(Aggregator::new(
            self.dedup,
            KeyColumns::from_names(&self.config.quality.key_columns),
        ));
        let streamed = futures::stream::iter(tickets.iter().cloned())
            .map(|ticket| {
                self.read_split(
                    extractor.clone(),
                    ticket,
                    aggregator.clone(),
                    trades_tx.clone(),
                    rejected_tx.clone(),
                )
            })
            .buffer_unordered(self.config.split_concurrency)
            .try_collect::<Vec<()>>()
            .await;
        drop((trades_tx, rejected_tx));
        let load_wait = Instant::now();
        // A closed DoPut makes the readers fail with "loader stopped"; the put's
        // own error says why, so it is reported first.
        let mut rows_sent: HashMap<Table, u64> = HashMap::new();
        let mut put_error = None;
        while let Some(joined) = puts.join_next().await {
            match joined.map_err(|e| Error::internal(format!("DoPut task: {e}")))? {
                Ok((table, rows)) => {
                    rows_sent.insert(table, rows);
                }
                Err(e) => {
                    put_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = put_error {
            return Err(e);
        }
        streamed?;

        // Aggregates: the accumulator now holds every group.
        self.counters.set_stage("aggregating");
        let aggregator =
            Arc::try_unwrap(aggregator).map_err(|_| Error::internal("aggregator still shared"))?;
        let (agg_tx, agg_rx) = mpsc::channel::<RecordBatch>(4);
        let put_agg = tokio::spawn(
            put_table(
                flight_client(loader_channel.clone(), &self.security),
                self.run_id.clone(),
                Table::AggTradesWeekly,
                agg_rx,
            )
            .in_current_span(),
        );
        // The duplicate count (an external sort) runs beside the aggregate
        // output, whose pace the warehouse sets.
        let (batches, duplicates, profile) = aggregator.into_batches(65_536);
        let count = tokio::task::spawn_blocking(move || duplicates.count());
        let produce = tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
            let (mut rows, mut trades) = (0, 0);
            for batch in batches {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                let counts = batch.column(6).as_primitive::<Int64Type>();
                trades += counts.values().iter().map(|c| *c as u64).sum::<u64>();
                if agg_tx.blocking_send(batch).is_err() {
                    break; // the put failed; its error is reported below
                }
            }
            Ok((rows, trades))
        });
        let history = self.history(&mut loader).await;
        let task = |e: tokio::task::JoinError| Error::internal(format!("aggregation task: {e}"));
        let (agg_rows, agg_trade_count) = produce.await.map_err(task)??;
        let duplicates = count.await.map_err(task)??;
        let (_, agg_sent) = put_agg
            .await
            .map_err(|e| Error::internal(format!("DoPut task: {e}")))??;
        if agg_sent != agg_rows {
            return Err(Error::internal(format!(
                "loader acknowledged {agg_sent} of {agg_rows} aggregate rows"
            )));
        }
        rows_sent.insert(Table::AggTradesWeekly, agg_rows);
        {
            let mut m = self.measures.lock().expect("measures lock");
            m.duplicates = duplicates;
            m.agg_rows = agg_rows;
            m.load_ms = load_wait.elapsed().as_millis() as u64;
            m.rows_staged = rows_sent
                .iter()
                .map(|(t, n)| (t.name().to_string(), *n))
                .collect();
            m.checks = checks::evaluate(
                &self.config.quality,
                &CheckInput {
                    stats: &m.stats,
                    duplicates: duplicates.exact,
                    dedup: self.dedup,
                    key_duplicates: duplicates.key,
                    agg_trade_count,
                    profile: &profile,
                    run_started: self.started_at,
                    history: &history,
                },
            );
            m.profile = profile;
            for c in m.checks.iter().filter(|c| c.outcome == Outcome::Warn) {
                warn!(check = %c.check, "quality warning: {}", c.describe());
            }
            if let Some(failed) = checks::failures(&m.checks) {
                return Err(Error::quality(failed));
            }
        }

        // Commit: the only point where the run becomes visible.
        self.counters.set_stage("committing");
        let t = Instant::now();
        let stats = self
            .measures
            .lock()
            .expect("measures lock")
            .run_stats(self.started);
        let committed = loader
            .commit(CommitRequest {
                run_id: self.run_id.clone(),
                source_files: plan.files.iter().map(|f| f.file.clone()).collect(),
                stats: Some(stats),
                quality_json: self.quality_json(),
            })
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        let mut m = self.measures.lock().expect("measures lock");
        m.commit_ms = t.elapsed().as_millis() as u64;
        Ok(RunSummary {
            run_id: self.run_id.clone(),
            stats: Some(m.run_stats(self.started)),
            rows_committed: committed.rows_committed,
        })
    }

    /// Per-day means of the earlier succeeded runs, newest first, for the
    /// consistency check. Runs without them (or an unreadable history) count
    /// as no history: the check is then skipped, never failed.
    async fn history(&self, loader: &mut LoaderServiceClient<AuthChannel>) -> Vec<ClientMeans> {
        let q = &self.config.quality;
        if q.consistency.severity == Severity::Off {
            return vec![];
        }
        let runs = match loader
            .list_runs(ListRunsRequest {
                limit: q.history_runs.saturating_mul(4).max(q.history_runs),
            })
            .await
        {
            Ok(r) => r.into_inner().runs,
            Err(s) => {
                warn!(error = %s.message(), "cannot read earlier runs for the consistency check");
                return vec![];
            }
        };
        runs.iter()
            .filter(|r| r.status == "succeeded" && r.run_id != self.run_id)
            .filter_map(|r| {
                let v: serde_json::Value = serde_json::from_str(&r.quality_json).ok()?;
                serde_json::from_value(v.get("profile")?.get("per_day")?.clone()).ok()
            })
            .take(q.history_runs as usize)
            .collect()
    }

    /// Reads one split, validating and aggregating each batch as it arrives.
    async fn read_split(
        &self,
        extractor: Channel,
        ticket: ExtractTicket,
        aggregator: Arc<Aggregator>,
        trades_tx: Option<mpsc::Sender<RecordBatch>>,
        rejected_tx: mpsc::Sender<RecordBatch>,
    ) -> Result<()> {
        let file: Arc<str> = ticket.file.clone().into();
        let mut client = flight_client(extractor, &self.security);
        let mut t = Instant::now();
        let batches = client
            .do_get(arrow_flight::Ticket::new(ticket.encode_to_vec()))
            .await
            .map_err(|e| from_flight("extractor", e))?;
        let stopped = || Error::internal("the loader stopped accepting data");
        // Two batches are validated and folded into the aggregate at once,
        // each on a blocking thread, so both cores work. `buffered` keeps the
        // batches in file order.
        let keep_trades = self.load_raw_trades;
        let mut processed = batches
            .map(|batch| {
                let (agg, name) = (aggregator.clone(), file.clone());
                async move {
                    let batch = batch.map_err(|e| from_flight("extractor", e))?;
                    tokio::task::spawn_blocking(move || -> Result<_> {
                        let started = Instant::now();
                        let v = validate(&batch, &name)?;
                        let trades = agg.ingest(v.trades)?;
                        Ok((
                            v.rejected,
                            v.stats,
                            keep_trades.then_some(trades),
                            started.elapsed(),
                        ))
                    })
                    .await
                    .map_err(|e| Error::internal(format!("validation task: {e}")))?
                }
            })
            .buffered(VALIDATION_PIPELINE);
        while let Some(item) = processed.next().await {
            let (rejected, stats, trades, busy) = item?;
            {
                let mut m = self.measures.lock().expect("measures lock");
                m.extract += t.elapsed();
                m.transform += busy;
                m.stats.merge(&stats);
            }
            let c = &self.counters;
            c.rows_read.fetch_add(stats.rows_in, Ordering::Relaxed);
            self.metrics.rows_in.inc_by(stats.rows_in);
            self.metrics.rows_valid.inc_by(stats.rows_valid);
            self.metrics.rows_rejected.inc_by(stats.rows_rejected());
            c.rows_valid.fetch_add(stats.rows_valid, Ordering::Relaxed);
            c.rows_rejected
                .fetch_add(stats.rows_rejected(), Ordering::Relaxed);
            if let (Some(tx), Some(trades)) = (&trades_tx, trades)
                && trades.num_rows() > 0
            {
                tx.send(trades).await.map_err(|_| stopped())?;
            }
            if let Some(r) = rejected {
                rejected_tx.send(r).await.map_err(|_| stopped())?;
            }
            t = Instant::now();
        }
        self.counters.files_done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Streams one table of a run to the loader; returns the rows it acknowledged.
async fn put_table(
    mut client: FlightClient,
    run_id: String,
    table: Table,
    rx: mpsc::Receiver<RecordBatch>,
) -> Result<(Table, u64)> {
    let descriptor = flight::descriptor(&LoadCommand {
        run_id,
        table: table.name().to_string(),
        mode: WriteMode::ReplacePartitions as i32,
    });
    let batches = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
    let data = FlightDataEncoderBuilder::new()
        .with_schema(table.schema())
        .with_flight_descriptor(Some(descriptor))
        .build(batches);
    let mut acks = client
        .do_put(data)
        .await
        .map_err(|e| from_flight(&format!("loading {table}"), e))?;
    let mut rows = 0;
    while let Some(ack) = acks.next().await {
        let ack = ack.map_err(|e| from_flight(&format!("loading {table}"), e))?;
        rows += LoadAck::decode(ack.app_metadata)
            .map_err(|e| Error::internal(format!("malformed LoadAck: {e}")))?
            .rows;
    }
    Ok((table, rows))
}
