//! The extractor: resolves sources into files and serves their rows as Arrow
//! record batches over Flight (`GetFlightInfo` → one endpoint per file,
//! `DoGet(ticket)` → the batches of one file). Only paths, object URLs and
//! PostgreSQL databases (one split per week of a table, see `postgres`)
//! under the configured data roots are served.

mod metrics;
pub mod objects;
pub mod postgres;
pub mod readers;
pub mod source;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use quarry_core::config::Config;
use quarry_core::grpc::Security;
use quarry_core::schema::EXTRACT_SCHEMA;
use quarry_core::{Error, Result, flight, grpc};
use quarry_proto::extractor_service_server::{ExtractorService, ExtractorServiceServer};
use quarry_proto::{
    CsvOptions, ExtractCommand, ExtractPlan, ExtractTicket, FilePlan, SourceFormat,
};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::source::DataRoots;

#[derive(Clone)]
pub struct Extractor {
    roots: Arc<DataRoots>,
    stores: Arc<objects::Stores>,
    batch_rows: usize,
    limits: readers::Limits,
    shutdown_grace: std::time::Duration,
    metrics_listen: String,
    metrics: Arc<metrics::Metrics>,
    security: Security,
    postgres_password_env: String,
    postgres_pool: Arc<postgres::Pool>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

impl Extractor {
    /// The extractor of `config.extractor`, reading objects with `config.storage`.
    pub fn new(config: &Config) -> Result<Self> {
        let storage = &config.storage;
        let config = &config.extractor;
        Ok(Self {
            roots: Arc::new(DataRoots::new(&config.data_roots)?),
            stores: Arc::new(objects::Stores::new(storage.clone())),
            batch_rows: config.batch_rows,
            limits: readers::Limits::of(config),
            shutdown_grace: std::time::Duration::from_secs(config.shutdown_grace_secs),
            metrics_listen: config.metrics_listen.clone(),
            metrics: Arc::new(metrics::Metrics::new()),
            security: Security::default(),
            postgres_password_env: config.postgres_password_env.clone(),
            postgres_pool: Arc::default(),
        })
    }

    /// Serve with TLS and the bearer-token check of `security`.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Resolves a command into files and checks every file's columns.
    async fn plan(&self, cmd: ExtractCommand) -> Result<(ExtractPlan, Vec<ExtractTicket>)> {
        if postgres::is_source(&cmd.source) {
            return self.plan_postgres(cmd).await;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let format = SourceFormat::try_from(cmd.format).unwrap_or(SourceFormat::Unspecified);
            let csv = cmd.csv.unwrap_or_default();
            let batch_rows = if cmd.batch_rows == 0 {
                this.batch_rows as u32
            } else {
                cmd.batch_rows
            };
            let resolved = source::resolve(&cmd.source, format, &this.roots, &this.stores)?;
            let mut plan = ExtractPlan {
                skipped: resolved.skipped,
                ..Default::default()
            };
            for s in &plan.skipped {
                info!(file = %s.file, reason = %s.reason, "skipping a file of the source");
            }
            let mut tickets = Vec::with_capacity(resolved.files.len());
            for f in resolved.files {
                let p = readers::plan(&this.stores, &f.path, f.format, &csv, this.limits)?;
                if !p.extra_columns.is_empty() {
                    info!(file = %p.file, extra = ?p.extra_columns, "schema drift: ignoring extra columns");
                }
                tickets.push(ExtractTicket {
                    file: p.file.clone(),
                    format: f.format as i32,
                    csv: Some(csv.clone()),
                    batch_rows,
                });
                plan.files.push(p);
            }
            Ok((plan, tickets))
        })
        .await
        .map_err(|e| Error::internal(format!("planning task failed: {e}")).with_source(e))?
    }

    /// Plans a PostgreSQL source: one split per UTC week (see `postgres`).
    async fn plan_postgres(
        &self,
        cmd: ExtractCommand,
    ) -> Result<(ExtractPlan, Vec<ExtractTicket>)> {
        let src = postgres::PgSource::parse(&cmd.source)?;
        self.roots.check_postgres(&src)?;
        let planned = postgres::plan(
            &src,
            cmd.cursor_after.as_deref(),
            &self.postgres_password_env,
            &self.postgres_pool,
        )
        .await?;
        if !planned.extra.is_empty() {
            info!(source = %src.url(), extra = ?planned.extra, "schema drift: ignoring extra columns");
        }
        let mut plan = ExtractPlan {
            cursor: planned.cursor,
            ..Default::default()
        };
        let mut tickets = Vec::with_capacity(planned.splits.len());
        for split in &planned.splits {
            let file = src.split_url(split);
            tickets.push(ExtractTicket {
                file: file.clone(),
                format: SourceFormat::Postgres as i32,
                csv: None,
                batch_rows: cmd.batch_rows,
            });
            plan.files.push(FilePlan {
                file,
                format: SourceFormat::Postgres as i32,
                size_bytes: 0,
                extra_columns: planned.extra.clone(),
            });
        }
        Ok((plan, tickets))
    }

    pub fn routes(&self) -> Routes {
        Routes::new(
            FlightServiceServer::new(self.clone())
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
        )
        .add_service(ExtractorServiceServer::new(self.clone()))
    }
}

const SERVICE_NAMES: [&str; 2] = [
    "arrow.flight.protocol.FlightService",
    "quarry.v1.ExtractorService",
];

impl Extractor {
    /// Serves on `listener` until `shutdown` resolves; open streams then get
    /// `shutdown_grace_secs` to finish before they are cut. The extractor
    /// writes nothing, so cutting a stream only fails the run reading it
    /// (which its transformer aborts).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        info!(addr = ?listener.local_addr().ok(), roots = ?self.roots, "extractor listening");
        let _metrics = quarry_core::metrics::serve(
            "extractor.metrics_listen",
            &self.metrics_listen,
            self.metrics.registry.clone(),
        )
        .await?;
        let grace = self.shutdown_grace;
        grpc::serve_with_grace(
            listener,
            self.routes(),
            &SERVICE_NAMES,
            shutdown,
            grace,
            async {},
            &self.security,
        )
        .await
    }
}

/// Checks the configuration, then serves the extractor until `shutdown` resolves.
pub async fn serve(
    config: &Config,
    security: &Security,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    Extractor::new(config)?
        .with_security(security.clone())
        .serve(listener, shutdown)
        .await
}

#[tonic::async_trait]
impl ExtractorService for Extractor {
    async fn plan(
        &self,
        request: Request<ExtractCommand>,
    ) -> std::result::Result<Response<ExtractPlan>, Status> {
        let (plan, _) = Extractor::plan(self, request.into_inner()).await?;
        Ok(Response::new(plan))
    }
}

/// What one ticket reads.
enum Input {
    File {
        path: std::path::PathBuf,
        format: SourceFormat,
        csv: CsvOptions,
    },
    Postgres(Box<postgres::Copy>),
}

impl Extractor {
    /// Opens what a ticket names. Tickets come from clients: the path, the
    /// object or the database is checked against the roots again.
    async fn input(&self, ticket: ExtractTicket) -> Result<Input> {
        if postgres::is_source(&ticket.file) {
            self.roots
                .check_postgres(&postgres::PgSource::parse(&ticket.file)?)?;
            let copy = postgres::read(
                &ticket.file,
                &self.postgres_password_env,
                self.postgres_pool.clone(),
            )
            .await?;
            return Ok(Input::Postgres(Box::new(copy)));
        }
        let path = self.roots.check(std::path::Path::new(&ticket.file))?;
        let format =
            match SourceFormat::try_from(ticket.format).unwrap_or(SourceFormat::Unspecified) {
                SourceFormat::Unspecified | SourceFormat::Postgres => {
                    source::format_of(&path).unwrap_or(SourceFormat::Csv)
                }
                f => f,
            };
        Ok(Input::File {
            path,
            format,
            csv: ticket.csv.unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl FlightService for Extractor {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let cmd: ExtractCommand = flight::decode("ExtractCommand", &request.get_ref().cmd)?;
        let source = cmd.source.clone();
        let (plan, tickets) = Extractor::plan(self, cmd).await.inspect_err(|e| {
            warn!(source = %source, error = %e, "cannot plan source");
            self.metrics.errors.count(e);
        })?;
        let total_bytes = plan.files.iter().map(|f| f.size_bytes as i64).sum();
        let mut info = FlightInfo::new()
            .try_with_schema(&EXTRACT_SCHEMA)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(request.into_inner())
            .with_total_bytes(total_bytes)
            .with_app_metadata(plan.encode_to_vec());
        for t in tickets {
            info = info
                .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(t.encode_to_vec())));
        }
        info!(source = %source, files = plan.files.len(), "planned source");
        Ok(Response::new(info))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let ticket: ExtractTicket = flight::decode("ExtractTicket", &request.get_ref().ticket)?;
        let batch_rows = match ticket.batch_rows {
            0 => self.batch_rows,
            n => n as usize,
        };
        let limits = self.limits;
        let input = self
            .input(ticket)
            .await
            .inspect_err(|e| self.metrics.errors.count(e))?;
        // A small buffer: the reader runs ahead of the network by two batches at most.
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<_, FlightError>>(2);
        let metrics = self.metrics.clone();
        let stores = self.stores.clone();
        tokio::task::spawn_blocking(move || {
            let mut complete = true;
            let emit = &mut |batch: arrow::array::RecordBatch| {
                let rows = batch.num_rows() as u64;
                let sent = tx.blocking_send(Ok(batch)).is_ok();
                if sent {
                    metrics.rows_read.inc_by(rows);
                }
                complete &= sent;
                sent
            };
            let (name, result) = match input {
                Input::File { path, format, csv } => {
                    let result =
                        readers::read(&stores, &path, format, &csv, batch_rows, limits, emit);
                    if result.is_ok()
                        && complete
                        && let Ok(bytes) = readers::size_of(&stores, &path)
                    {
                        metrics.bytes_read.inc_by(bytes);
                    }
                    (path.display().to_string(), result)
                }
                Input::Postgres(copy) => {
                    let name = copy.name().to_string();
                    (name, copy.read(batch_rows, limits, emit))
                }
            };
            if result.is_ok() && complete {
                metrics.files_read.inc();
            }
            if let Err(e) = result {
                metrics.errors.count(&e);
                warn!(file = %name, error = %e, "read failed");
                let _ = tx.blocking_send(Err(FlightError::Tonic(Box::new(e.into()))));
            }
        });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(EXTRACT_SCHEMA.clone())
            .build(batches)
            .map_err(flight::flight_status);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        let result: SchemaResult = arrow_flight::SchemaAsIpc::new(&EXTRACT_SCHEMA, &options)
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "handshake is not needed by the extractor",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "use GetFlightInfo with an ExtractCommand",
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("use GetFlightInfo"))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("the extractor is read-only"))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("the extractor has no actions"))
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
        Err(Status::unimplemented("the extractor does not exchange"))
    }
}
