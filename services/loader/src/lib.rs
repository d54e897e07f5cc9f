//! The loader: receives a run's tables over Flight `DoPut`, stages them in the
//! warehouse, and commits or aborts the run on request (`LoaderService`).
//! Runs are serialised: a second run waits for the first one's commit (up to
//! `begin_timeout_secs`) so two runs never interleave their commits.
//!
//! Runs are recorded with their owner (this process) and, while they stage,
//! a heartbeat. When the loader starts and before every run it begins, runs
//! left `running` by a process that is gone are recorded as failed
//! (category `interrupted`): see `quarry_warehouse::owner`.
//!
//! Shutdown (SIGTERM/SIGINT): health turns NOT_SERVING and new runs are
//! refused, but every call of the open runs is still served — their DoPut
//! streams, commits and aborts, on new connections too — until they end or
//! `shutdown_grace_secs` passes; runs still open then are aborted and
//! recorded as failed. Only then does the server stop.

mod metrics;
mod wire;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use quarry_core::config::{LoaderConfig, WarehouseConfig};
use quarry_core::grpc::Security;
use quarry_core::{Error, ErrorCategory, Result, Table, flight, grpc};
use quarry_proto::loader_service_server::{LoaderService, LoaderServiceServer};
use quarry_proto::{
    AbortRequest, AbortResponse, BeginRunRequest, BeginRunResponse, CommitRequest, CommitResponse,
    GetRunRequest, ListRunsRequest, ListRunsResponse, LoadAck, LoadCommand, RunRecord, TopMetric,
    TopUsersRequest, TopUsersResponse, WeeklyTotalsRequest, WeeklyTotalsResponse,
};
use quarry_warehouse::owner::RunOwner;
use quarry_warehouse::{Metric, RunCommit, RunFailure, RunStart, TopUsersQuery, Warehouse};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

struct OpenRun {
    _slot: OwnedSemaphorePermit,
    last_activity: Instant,
}

#[derive(Clone)]
pub struct Loader {
    warehouse: Arc<dyn Warehouse>,
    slot: Arc<Semaphore>,
    runs: Arc<Mutex<HashMap<String, OpenRun>>>,
    /// Notified whenever a run closes (the drain waits for the last one).
    run_closed: Arc<Notify>,
    /// Set once shutdown begins: new runs are refused.
    draining: Arc<AtomicBool>,
    /// This loader instance as the owner of the runs it begins.
    owner: Arc<RunOwner>,
    begin_timeout: Duration,
    shutdown_grace: Duration,
    stale_after: Duration,
    metrics_listen: String,
    metrics: Arc<metrics::Metrics>,
    security: Security,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

fn check_run_id(run_id: &str) -> Result<()> {
    if run_id.is_empty()
        || run_id.len() > 64
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::input(format!(
            "run id {run_id:?} must be 1-64 characters of letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

impl Loader {
    pub fn new(warehouse: Arc<dyn Warehouse>, config: &LoaderConfig) -> Self {
        let loader = Self {
            warehouse,
            slot: Arc::new(Semaphore::new(1)),
            runs: Arc::new(Mutex::new(HashMap::new())),
            run_closed: Arc::new(Notify::new()),
            draining: Arc::new(AtomicBool::new(false)),
            owner: Arc::new(RunOwner::this_process(&uuid::Uuid::now_v7().to_string())),
            begin_timeout: Duration::from_secs(config.begin_timeout_secs),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            stale_after: Duration::from_secs(config.stale_run_secs),
            metrics_listen: config.metrics_listen.clone(),
            metrics: Arc::new(metrics::Metrics::new()),
            security: Security::default(),
        };
        loader.spawn_reaper(Duration::from_secs(config.run_idle_timeout_secs));
        loader.spawn_heartbeat(Duration::from_secs(config.heartbeat_secs));
        loader
    }

    /// Refreshes the heartbeat of the open runs, so loaders elsewhere can
    /// tell them from runs whose process died.
    fn spawn_heartbeat(&self, period: Duration) {
        let weak = Arc::downgrade(&self.runs);
        let warehouse = self.warehouse.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(runs) = weak.upgrade() else { return };
                let open: Vec<String> = runs.lock().expect("runs lock").keys().cloned().collect();
                drop(runs);
                for run_id in open {
                    if let Err(e) = warehouse.heartbeat(&run_id).await {
                        warn!(run_id = %run_id, error = %e, "could not record the run's heartbeat");
                    }
                }
            }
        });
    }

    /// Records as failed (category `interrupted`) every run left `running`
    /// by a process that is gone; returns how many. A run open here is
    /// alive; one owned on this host is alive while its process is; for the
    /// others the warehouse decides (heartbeat, or SQLite's write lock).
    pub async fn recover_interrupted(&self) -> Result<usize> {
        let mut recovered = 0;
        for run in self.warehouse.running_runs().await? {
            if self
                .runs
                .lock()
                .expect("runs lock")
                .contains_key(&run.run_id)
            {
                continue;
            }
            let owner = RunOwner::parse(&run.owner_json);
            let gone = match &owner {
                Some(o) if o.loader == self.owner.loader => true,
                Some(o) if o.is_local() => !o.process_alive(),
                _ => !self.warehouse.may_still_run(&run, self.stale_after).await?,
            };
            if !gone {
                continue;
            }
            let who = owner.map_or("its process".to_string(), |o| o.describe());
            let message = format!(
                "run interrupted: {who} stopped before the run ended; nothing of it was committed"
            );
            warn!(run_id = %run.run_id, "{message}");
            self.warehouse
                .abort(RunFailure {
                    run_id: run.run_id.clone(),
                    category: ErrorCategory::Interrupted,
                    message,
                    stats: run.stats,
                    quality_json: String::new(),
                })
                .await?;
            recovered += 1;
        }
        Ok(recovered)
    }

    /// Aborts runs whose driver went away without committing or aborting.
    fn spawn_reaper(&self, idle: Duration) {
        let weak = Arc::downgrade(&self.runs);
        let warehouse = self.warehouse.clone();
        let metrics = self.metrics.clone();
        let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(runs) = weak.upgrade() else { return };
                let stale: Vec<String> = {
                    let mut map = runs.lock().expect("runs lock");
                    let ids: Vec<String> = map
                        .iter()
                        .filter(|(_, r)| r.last_activity.elapsed() > idle)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in &ids {
                        map.remove(id);
                    }
                    ids
                };
                for run_id in stale {
                    let message = format!("run abandoned: no activity for {} s", idle.as_secs());
                    warn!(run_id = %run_id, "{message}");
                    metrics.aborts.inc();
                    let _ = warehouse
                        .abort(RunFailure {
                            run_id,
                            category: ErrorCategory::Interrupted,
                            message,
                            stats: Default::default(),
                            quality_json: String::new(),
                        })
                        .await;
                }
            }
        });
    }

    /// Serve with TLS and the bearer-token check of `security`.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Aborts every open run (not those committing: a commit is never cut).
    /// Their next `DoPut` batch then fails, which fails the run's driver.
    async fn abort_open_runs(&self, message: &str) {
        let open: Vec<String> = self
            .runs
            .lock()
            .expect("runs lock")
            .drain()
            .map(|(id, _)| id)
            .collect();
        self.run_closed.notify_waiters();
        for run_id in open {
            warn!(run_id = %run_id, "{message}");
            self.metrics.aborts.inc();
            let aborted = self
                .warehouse
                .abort(RunFailure {
                    run_id: run_id.clone(),
                    category: ErrorCategory::Interrupted,
                    message: message.to_string(),
                    stats: Default::default(),
                    quality_json: String::new(),
                })
                .await;
            if let Err(e) = aborted {
                warn!(run_id = %run_id, error = %e, "could not abort the run");
            }
        }
    }

    fn touch(&self, run_id: &str) -> Result<()> {
        let mut runs = self.runs.lock().expect("runs lock");
        match runs.get_mut(run_id) {
            Some(r) => {
                r.last_activity = Instant::now();
                Ok(())
            }
            None => Err(Error::Config(format!(
                "run {run_id} is not open on this loader (never begun, already finished, or abandoned)"
            ))),
        }
    }

    fn close(&self, run_id: &str) -> Option<OpenRun> {
        let closed = self.runs.lock().expect("runs lock").remove(run_id);
        self.run_closed.notify_waiters();
        closed
    }

    /// Resolves once no run is open.
    async fn all_runs_closed(&self) {
        loop {
            let closed = self.run_closed.notified();
            if self.runs.lock().expect("runs lock").is_empty() {
                return;
            }
            closed.await;
        }
    }

    pub fn routes(&self) -> Routes {
        Routes::new(
            FlightServiceServer::new(self.clone())
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
        )
        .add_service(LoaderServiceServer::new(self.clone()))
    }

    async fn put(&self, stream: Streaming<FlightData>) -> Result<(String, Table, u64)> {
        let mut stream = stream.map_err(FlightError::from).peekable();
        let first = Pin::new(&mut stream)
            .peek()
            .await
            .ok_or_else(|| Error::input("DoPut stream is empty"))?
            .as_ref()
            .map_err(|e| Error::input(format!("DoPut: {e}")))?;
        let descriptor = first
            .flight_descriptor
            .as_ref()
            .ok_or_else(|| Error::input("the first DoPut message has no descriptor"))?;
        let cmd: LoadCommand = flight::decode("LoadCommand", &descriptor.cmd)?;
        let table = Table::parse(&cmd.table)
            .ok_or_else(|| Error::input(format!("unknown table {:?}", cmd.table)))?;
        let mode = wire::write_mode(cmd.mode)?;
        self.touch(&cmd.run_id)?;
        // The next batches are received and decoded while the warehouse
        // writes the current one; the reader stops when `put` returns.
        let (tx, mut batches) = tokio::sync::mpsc::channel(2);
        let _reader = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut stream = FlightRecordBatchStream::new_from_flight_data(stream);
            while let Some(batch) = stream.next().await {
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    break;
                }
            }
        }));
        let mut rows = 0u64;
        while let Some(batch) = batches.recv().await {
            let batch = batch.map_err(|e| match e {
                FlightError::Tonic(s) => Error::from_status(&s),
                other => Error::input(format!("{table} stream: {other}")),
            })?;
            rows += self
                .warehouse
                .write(&cmd.run_id, table, mode, batch)
                .await?;
            self.touch(&cmd.run_id)?;
        }
        Ok((cmd.run_id, table, rows))
    }
}

const SERVICE_NAMES: [&str; 2] = [
    "arrow.flight.protocol.FlightService",
    "quarry.v1.LoaderService",
];

impl Loader {
    /// Opens the configured warehouse, checks that it answers, and records
    /// runs left `running` by dead processes as failed.
    pub async fn open(config: &LoaderConfig, warehouse: &WarehouseConfig) -> Result<Self> {
        let wh = quarry_warehouse::open(warehouse)?;
        wh.check_connectivity().await?;
        let loader = Self::new(wh, config);
        // Not fatal: the loader works without it, and tries again before
        // every run it begins.
        match loader.recover_interrupted().await {
            Ok(0) => {}
            Ok(n) => info!(runs = n, "recorded runs of dead processes as interrupted"),
            Err(e) => warn!(error = %e, "could not check for interrupted runs"),
        }
        Ok(loader)
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: new runs
    /// are refused while the open ones get `shutdown_grace_secs` to commit
    /// (or abort); runs still open then are aborted (their staged data
    /// discarded, recorded as failed), and the warehouse closes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        info!(addr = ?listener.local_addr().ok(), warehouse = self.warehouse.kind(), "loader listening");
        let warehouse = self.warehouse.clone();
        let _metrics = quarry_core::metrics::serve(
            "loader.metrics_listen",
            &self.metrics_listen,
            self.metrics.registry.clone(),
        )
        .await?;
        let signal = futures::FutureExt::shared(Box::pin(shutdown));
        let drained = {
            let me = self.clone();
            let signal = signal.clone();
            async move {
                signal.await;
                me.draining.store(true, Ordering::SeqCst);
                let open = me.runs.lock().expect("runs lock").len();
                info!(
                    open_runs = open,
                    grace_secs = me.shutdown_grace.as_secs(),
                    "shutting down: new runs refused, open runs may still commit"
                );
                if tokio::time::timeout(me.shutdown_grace, me.all_runs_closed())
                    .await
                    .is_err()
                {
                    warn!(
                        grace_secs = me.shutdown_grace.as_secs(),
                        "shutdown grace period over: aborting the open runs"
                    );
                    me.abort_open_runs("run aborted: the loader shut down before its commit")
                        .await;
                }
            }
        };
        let served = grpc::serve_draining(
            listener,
            self.routes(),
            &SERVICE_NAMES,
            signal,
            drained,
            &self.security,
        )
        .await;
        let closed = warehouse.close().await;
        served.and(closed)
    }
}

/// Opens the configured warehouse, checks it, and serves the loader until `shutdown`.
pub async fn serve(
    config: &LoaderConfig,
    warehouse: &WarehouseConfig,
    security: &Security,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    Loader::open(config, warehouse)
        .await?
        .with_security(security.clone())
        .serve(listener, shutdown)
        .await
}

#[tonic::async_trait]
impl LoaderService for Loader {
    async fn begin_run(
        &self,
        request: Request<BeginRunRequest>,
    ) -> std::result::Result<Response<BeginRunResponse>, Status> {
        let req = request.into_inner();
        check_run_id(&req.run_id)?;
        let span = info_span!("run", run_id = %req.run_id);
        async {
            if self.draining.load(Ordering::SeqCst) {
                return Err(Error::backend(
                    "the loader is shutting down: it takes no new runs; try another loader or later",
                    true,
                ));
            }
            let slot = tokio::time::timeout(self.begin_timeout, self.slot.clone().acquire_owned())
                .await
                .map_err(|_| {
                    Error::backend(
                        format!(
                            "the warehouse is busy with another run for over {} s; try again later",
                            self.begin_timeout.as_secs()
                        ),
                        true,
                    )
                })?
                .map_err(|_| Error::internal("loader is shutting down"))?;
            // Runs of dead processes are settled before a new one begins, so
            // the history never shows one running for ever.
            if let Err(e) = self.recover_interrupted().await {
                warn!(error = %e, "could not check for interrupted runs");
            }
            self.warehouse
                .begin_run(RunStart {
                    run_id: req.run_id.clone(),
                    source: req.source.clone(),
                    options_json: req.options_json.clone(),
                    owner_json: self.owner.to_json(),
                })
                .await?;
            self.runs.lock().expect("runs lock").insert(
                req.run_id.clone(),
                OpenRun {
                    _slot: slot,
                    last_activity: Instant::now(),
                },
            );
            info!(source = %req.source, "run begun");
            Ok::<_, Error>(Response::new(BeginRunResponse {}))
        }
        .instrument(span)
        .await
        .inspect_err(|e| self.metrics.errors.count(e))
        .map_err(Into::into)
    }

    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> std::result::Result<Response<CommitResponse>, Status> {
        let req = request.into_inner();
        let span = info_span!("run", run_id = %req.run_id);
        async {
            let started = Instant::now();
            let open = self.close(&req.run_id).ok_or_else(|| {
                Error::Config(format!("run {} is not open on this loader", req.run_id))
            })?;
            let result = self
                .warehouse
                .commit(RunCommit {
                    run_id: req.run_id.clone(),
                    source_files: req.source_files.clone(),
                    stats: wire::stats(req.stats),
                    quality_json: req.quality_json.clone(),
                })
                .await;
            drop(open); // the next run may begin
            let rows = result.inspect_err(|e| warn!(error = %e, "commit failed"))?;
            info!(rows = ?rows, "run committed");
            self.metrics.commits.inc();
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            for (table, n) in &rows {
                self.metrics
                    .rows_loaded
                    .with_label_values(&[table.as_str()])
                    .inc_by(*n);
            }
            Ok::<_, Error>(Response::new(CommitResponse {
                rows_committed: rows.into_iter().collect(),
                commit_ms: started.elapsed().as_millis() as u64,
            }))
        }
        .instrument(span)
        .await
        .inspect_err(|e| self.metrics.errors.count(e))
        .map_err(Into::into)
    }

    async fn abort(
        &self,
        request: Request<AbortRequest>,
    ) -> std::result::Result<Response<AbortResponse>, Status> {
        let req = request.into_inner();
        check_run_id(&req.run_id)?;
        let span = info_span!("run", run_id = %req.run_id);
        async {
            let open = self.close(&req.run_id);
            let category =
                ErrorCategory::parse(&req.error_category).unwrap_or(ErrorCategory::Internal);
            let result = self
                .warehouse
                .abort(RunFailure {
                    run_id: req.run_id.clone(),
                    category,
                    message: req.error_message.clone(),
                    stats: wire::stats(req.stats),
                    quality_json: req.quality_json.clone(),
                })
                .await;
            drop(open);
            result?;
            self.metrics.aborts.inc();
            warn!(category = %category, error = %req.error_message, "run aborted");
            Ok::<_, Error>(Response::new(AbortResponse {}))
        }
        .instrument(span)
        .await
        .inspect_err(|e| self.metrics.errors.count(e))
        .map_err(Into::into)
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> std::result::Result<Response<ListRunsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 20,
            n => n,
        };
        let runs = self.warehouse.list_runs(limit).await?;
        Ok(Response::new(ListRunsResponse {
            runs: runs.into_iter().map(wire::run).collect(),
        }))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> std::result::Result<Response<RunRecord>, Status> {
        let run_id = request.into_inner().run_id;
        match self.warehouse.get_run(&run_id).await? {
            Some(r) => Ok(Response::new(wire::run(r))),
            None => Err(Status::not_found(format!("no run {run_id}"))),
        }
    }

    async fn top_users(
        &self,
        request: Request<TopUsersRequest>,
    ) -> std::result::Result<Response<TopUsersResponse>, Status> {
        let req = request.into_inner();
        let metric = match TopMetric::try_from(req.metric) {
            Ok(TopMetric::Pnl) => Metric::Pnl,
            Ok(TopMetric::Volume) | Ok(TopMetric::Unspecified) => Metric::Volume,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown metric {}",
                    req.metric
                )));
            }
        };
        let client_type = req.client_type.trim().to_ascii_lowercase();
        if !["gold", "silver", "bronze"].contains(&client_type.as_str()) {
            return Err(Status::invalid_argument(format!(
                "client type {:?} is not gold, silver or bronze",
                req.client_type
            )));
        }
        let users = self
            .warehouse
            .top_users(&TopUsersQuery {
                client_type,
                metric,
                limit: if req.limit == 0 { 3 } else { req.limit },
            })
            .await?;
        Ok(Response::new(TopUsersResponse {
            users: users
                .into_iter()
                .map(|u| quarry_proto::TopUser {
                    user_id: u.user_id,
                    value: u.value,
                })
                .collect(),
        }))
    }

    async fn weekly_totals(
        &self,
        _request: Request<WeeklyTotalsRequest>,
    ) -> std::result::Result<Response<WeeklyTotalsResponse>, Status> {
        let totals = self.warehouse.weekly_totals().await?;
        Ok(Response::new(WeeklyTotalsResponse {
            totals: totals.into_iter().map(wire::weekly_total).collect(),
        }))
    }
}

#[tonic::async_trait]
impl FlightService for Loader {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let (run_id, table, rows) = self.put(request.into_inner()).await.inspect_err(|e| {
            warn!(error = %e, "DoPut failed");
            self.metrics.errors.count(e);
        })?;
        info!(run_id = %run_id, table = %table, rows, "staged");
        let ack = PutResult {
            app_metadata: LoadAck { rows }.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(ack)
        }))))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "handshake is not needed by the loader",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn do_get(
        &self,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("the loader has no actions"))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("the loader does not exchange"))
    }
}
