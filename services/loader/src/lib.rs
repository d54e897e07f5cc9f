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
//!
//! `control` serves the `LoaderService` calls, `put` the Flight `DoPut`
//! streams, `runs` keeps the books of the open runs (heartbeat, reaper,
//! recovery of interrupted runs); `wire` converts to and from the protobuf
//! messages.

mod control;
mod metrics;
mod put;
mod runs;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_server::FlightServiceServer;
use quarry_core::config::{LoaderConfig, WarehouseConfig};
use quarry_core::grpc::Security;
use quarry_core::{Result, grpc};
use quarry_proto::loader_service_server::LoaderServiceServer;
use quarry_warehouse::Warehouse;
use quarry_warehouse::owner::RunOwner;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tonic::service::Routes;
use tracing::{info, warn};

/// A run open on this loader; its permit of `slot` keeps other runs from
/// beginning until it closes.
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
    /// The warehouse's OpenLineage namespace and table-name prefix, told to
    /// the transformer at the start of each run.
    datasets: Arc<(String, String)>,
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
            datasets: Arc::new(("warehouse".into(), String::new())),
        };
        loader.spawn_reaper(Duration::from_secs(config.run_idle_timeout_secs));
        loader.spawn_heartbeat(Duration::from_secs(config.heartbeat_secs));
        loader
    }

    /// Serve with TLS and the bearer-token check of `security`.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    pub fn routes(&self) -> Routes {
        Routes::new(
            FlightServiceServer::new(self.clone())
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
        )
        .add_service(LoaderServiceServer::new(self.clone()))
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
        let mut loader = Self::new(wh, config);
        loader.datasets = Arc::new(warehouse.lineage_names());
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
