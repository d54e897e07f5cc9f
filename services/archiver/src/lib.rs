//! The archiver: hot/cold tiering of date partitions (see [`tier`]).
//! `ArchiverService` archives on request, restores, lists and reports;
//! Flight `DoGet` with a [`ColdTicket`] streams a cold partition; with
//! `archiver.interval_secs > 0` the service also archives on a schedule.

mod metrics;
pub mod tier;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use quarry_core::config::LineageConfig;
use quarry_core::grpc::Security;
use quarry_core::{Config, Error, Result, Table, flight, grpc};
use quarry_lineage::{Dataset, Emitter, EventType, RunEvent};
use quarry_proto::archiver_service_server::{ArchiverService, ArchiverServiceServer};
use quarry_proto::{
    ArchiveReport, ArchiveRequest, ColdTicket, ListPartitionsRequest, ListPartitionsResponse,
    PartitionMove, RestoreRequest, StatusRequest, StatusResponse,
};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

pub use tier::Tier;

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct Archiver {
    tier: Arc<Tier>,
    /// When the last archive run ended and what it did.
    last_run: Arc<Mutex<(String, String)>>,
    metrics: Arc<metrics::Metrics>,
    security: Security,
    lineage_config: LineageConfig,
    /// Started by `serve` (it needs the runtime); off until then.
    lineage: Arc<Emitter>,
    /// The warehouse's OpenLineage namespace and table prefix.
    warehouse_datasets: (String, String),
}

const SERVICE_NAMES: [&str; 2] = [
    "arrow.flight.protocol.FlightService",
    "quarry.v1.ArchiverService",
];

impl Archiver {
    /// Opens the configured warehouse (checked) and cold storage.
    pub async fn open(config: &Config) -> Result<Self> {
        let warehouse = quarry_warehouse::open(&config.warehouse)?;
        warehouse.check_connectivity().await?;
        let cold = quarry_storage::open(&config.archiver.cold_root, &config.storage)?;
        let mut archiver = Self::new(Tier::new(warehouse, cold, config.archiver.clone()));
        archiver.lineage_config = config.lineage.clone();
        archiver.warehouse_datasets = config.warehouse.lineage_names();
        Ok(archiver)
    }

    pub fn new(tier: Tier) -> Self {
        Self {
            tier: Arc::new(tier),
            last_run: Arc::default(),
            metrics: Arc::new(metrics::Metrics::new()),
            security: Security::default(),
            lineage_config: LineageConfig::default(),
            lineage: Arc::new(Emitter::off()),
            warehouse_datasets: ("warehouse".into(), String::new()),
        }
    }

    /// Serve with TLS and the bearer-token check of `security`.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    pub fn tier(&self) -> &Arc<Tier> {
        &self.tier
    }

    pub fn routes(&self) -> Routes {
        Routes::new(
            FlightServiceServer::new(self.clone())
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
        )
        .add_service(ArchiverServiceServer::new(self.clone()))
    }

    async fn archive(&self, req: ArchiveRequest) -> Result<ArchiveReport> {
        let as_of = match req.as_of.as_str() {
            "" => None,
            s => Some(tier::parse_day("as_of", s)?),
        };
        let run_id = uuid::Uuid::now_v7().to_string();
        let job = Job::Archive(&req.table);
        if !req.dry_run {
            self.emit(&run_id, job, EventType::Start, Ok(&[]));
        }
        let result = self.tier.archive(&req.table, as_of, req.dry_run).await;
        if !req.dry_run {
            let outcome = result.as_ref().map(|(_, moves)| moves.as_slice());
            self.emit(&run_id, job, EventType::Complete, outcome);
        }
        match &result {
            Ok((_, moves)) => self.metrics.count_moves(moves),
            Err(e) => self.metrics.errors.count(e),
        }
        if !req.dry_run {
            let summary = match &result {
                Ok((_, moves)) => summarise(moves),
                Err(e) => format!("error: {e}"),
            };
            *self.last_run.lock().expect("last run") = (quarry_core::dates::now_text(), summary);
        }
        let (cutoff, moves) = result?;
        Ok(ArchiveReport { moves, cutoff })
    }

    /// Archives every `interval` until the process stops.
    fn spawn_schedule(&self, interval: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate: wait one interval
            loop {
                tick.tick().await;
                match me.archive(ArchiveRequest::default()).await {
                    Ok(r) => info!(result = %summarise(&r.moves), "scheduled archive run"),
                    Err(e) => warn!(error = %e, "scheduled archive run failed"),
                }
            }
        });
    }

    /// Emits an OpenLineage event of an archive or restore run: START, or
    /// its end (COMPLETE, or FAIL with `outcome`'s error), the rows moved
    /// written to the side they went to.
    fn emit(
        &self,
        run_id: &str,
        job: Job,
        kind: EventType,
        outcome: std::result::Result<&[PartitionMove], &Error>,
    ) {
        let (name, table) = match job {
            Job::Archive(t) => ("archive", t),
            Job::Restore(t) => ("restore", t),
        };
        let table = if table.is_empty() { "trades" } else { table };
        let kind = if outcome.is_err() {
            EventType::Fail
        } else {
            kind
        };
        let mut event = RunEvent::new(kind, run_id, self.lineage.namespace(), name);
        let (ns, prefix) = &self.warehouse_datasets;
        let hot = Dataset::new(ns.clone(), format!("{prefix}{table}"));
        let (cold_ns, cold_root) = quarry_lineage::dataset_of(self.tier.cold_root());
        let cold = Dataset::new(
            cold_ns,
            format!("{}/{table}", cold_root.trim_end_matches('/')),
        );
        let (input, mut output) = match job {
            Job::Archive(_) => (hot, cold),
            Job::Restore(_) => (cold, hot),
        };
        match outcome {
            Err(e) => event = event.with_error(&e.to_string()),
            Ok(moves) if kind == EventType::Complete => {
                let moved = ["archived", "finished", "restored"];
                let rows = moves
                    .iter()
                    .filter(|m| moved.contains(&m.outcome.as_str()))
                    .map(|m| m.rows)
                    .sum();
                output = output.with_rows_written(rows);
            }
            Ok(_) => {}
        }
        event.inputs.push(input);
        event.outputs.push(output);
        self.lineage.emit(&event);
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        self.lineage = Arc::new(Emitter::start(
            &self.lineage_config,
            &self.metrics.registry,
        )?);
        let c = self.tier.config();
        info!(addr = ?listener.local_addr().ok(), cold = %self.tier.cold_root(),
              hot_days = c.hot_days, interval_secs = c.interval_secs, "archiver listening");
        if c.interval_secs > 0 {
            self.spawn_schedule(Duration::from_secs(c.interval_secs));
        }
        let warehouse = self.tier.warehouse().clone();
        let _metrics = quarry_core::metrics::serve(
            "archiver.metrics_listen",
            &c.metrics_listen,
            self.metrics.registry.clone(),
        )
        .await?;
        // Moves are crash-safe (see `tier`): one cut short by the end of the
        // grace period is finished or redone by the next run.
        let grace = Duration::from_secs(c.shutdown_grace_secs);
        let served = grpc::serve_with_grace(
            listener,
            self.routes(),
            &SERVICE_NAMES,
            shutdown,
            grace,
            async {},
            &self.security,
        )
        .await;
        self.lineage.close().await;
        served.and(warehouse.close().await)
    }
}

/// e.g. `archived 3, failed 1`.
fn summarise(moves: &[quarry_proto::PartitionMove]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for m in moves {
        *counts.entry(m.outcome.as_str()).or_default() += 1;
    }
    if counts.is_empty() {
        return "nothing due".into();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens the warehouse and cold storage and serves the archiver until `shutdown`.
pub async fn serve(
    config: &Config,
    security: &Security,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    Archiver::open(config)
        .await?
        .with_security(security.clone())
        .serve(listener, shutdown)
        .await
}

/// The jobs of the archiver, with the table they move.
#[derive(Clone, Copy)]
enum Job<'a> {
    Archive(&'a str),
    Restore(&'a str),
}

#[tonic::async_trait]
impl ArchiverService for Archiver {
    async fn archive(
        &self,
        request: Request<ArchiveRequest>,
    ) -> std::result::Result<Response<ArchiveReport>, Status> {
        Ok(Response::new(
            Archiver::archive(self, request.into_inner()).await?,
        ))
    }

    async fn restore(
        &self,
        request: Request<RestoreRequest>,
    ) -> std::result::Result<Response<ArchiveReport>, Status> {
        let req = request.into_inner();
        let from = tier::parse_day("from", &req.from)?;
        let to = tier::parse_day("to", &req.to)?;
        if from > to {
            return Err(Error::input(format!("from {from} is after to {to}")).into());
        }
        let run_id = uuid::Uuid::now_v7().to_string();
        let job = Job::Restore(&req.table);
        self.emit(&run_id, job, EventType::Start, Ok(&[]));
        let result = self.tier.restore(&req.table, from, to).await;
        self.emit(
            &run_id,
            job,
            EventType::Complete,
            result.as_ref().map(Vec::as_slice),
        );
        let moves = result.inspect_err(|e| self.metrics.errors.count(e))?;
        self.metrics.count_moves(&moves);
        Ok(Response::new(ArchiveReport {
            moves,
            cutoff: String::new(),
        }))
    }

    async fn list_partitions(
        &self,
        request: Request<ListPartitionsRequest>,
    ) -> std::result::Result<Response<ListPartitionsResponse>, Status> {
        let partitions = self.tier.list(&request.into_inner().table).await?;
        Ok(Response::new(ListPartitionsResponse { partitions }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> std::result::Result<Response<StatusResponse>, Status> {
        let n = match request.into_inner().events {
            0 => 20,
            n => n as usize,
        };
        let c = self.tier.config();
        let (last_run_at, last_run_result) = self.last_run.lock().expect("last run").clone();
        Ok(Response::new(StatusResponse {
            cold_root: self.tier.cold_root().into(),
            hot_days: c.hot_days,
            interval_secs: c.interval_secs,
            tables: c.tables.clone(),
            last_run_at,
            last_run_result,
            events: self.tier.events(n).await?,
        }))
    }
}

const ONLY_DO_GET: &str = "the archiver serves cold partitions with DoGet(ColdTicket)";

#[tonic::async_trait]
impl FlightService for Archiver {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let ticket: ColdTicket = flight::decode("ColdTicket", &request.into_inner().ticket)?;
        let table = Table::parse(&ticket.table)
            .ok_or_else(|| Error::input(format!("unknown table {:?}", ticket.table)))?;
        let batches = self.tier.read_cold(table, &ticket.partition).await?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(table.schema())
            .build(futures::stream::iter(batches.into_iter().map(Ok)))
            .map_err(flight::flight_status);
        Ok(Response::new(stream.boxed()))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(ONLY_DO_GET))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(ONLY_DO_GET))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(ONLY_DO_GET))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(ONLY_DO_GET))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(ONLY_DO_GET))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(ONLY_DO_GET))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented(ONLY_DO_GET))
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
        Err(Status::unimplemented(ONLY_DO_GET))
    }
}
