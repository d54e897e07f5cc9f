//! The transformer drives a run: it asks the extractor for the splits of a
//! source, validates and aggregates their batches as they stream in (bounded
//! concurrency, memory bounded by the number of groups), pushes `trades`,
//! `trades_rejected` and `agg_trades_weekly` to the loader with Flight
//! `DoPut`, then commits — or aborts on any error, so a failed run leaves
//! the warehouse as it was. In ELT mode it builds and sends no aggregate:
//! the warehouse computes the weeks from `trades` inside the commit.
//!
//! Shutdown (SIGTERM/SIGINT): new runs are refused; in-flight runs get
//! `shutdown_grace_secs` to finish, then they are aborted through the loader
//! (never a partial commit) and reported failed to their clients.

mod metrics;
mod run;

use std::sync::Arc;

use quarry_core::Config;
use quarry_core::config::{LineageConfig, TransformerConfig};
use quarry_core::grpc::Security;
use quarry_core::{Result, grpc};
use quarry_lineage::Emitter;
use quarry_proto::transformer_service_server::{TransformerService, TransformerServiceServer};
use quarry_proto::{RunEvent, RunRequest};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span};

#[derive(Clone)]
pub struct Transformer {
    config: TransformerConfig,
    /// The in-flight runs, and the signal that aborts them.
    runs: TaskTracker,
    abort_runs: CancellationToken,
    metrics: Arc<metrics::Metrics>,
    security: Security,
    lineage_config: LineageConfig,
    /// Started by `serve` (it needs the runtime); off until then.
    lineage: Arc<Emitter>,
}

impl Transformer {
    pub fn new(config: TransformerConfig) -> Self {
        Self {
            config,
            runs: TaskTracker::new(),
            abort_runs: CancellationToken::new(),
            metrics: Arc::new(metrics::Metrics::new()),
            security: Security::default(),
            lineage_config: LineageConfig::default(),
            lineage: Arc::new(Emitter::off()),
        }
    }

    /// Emit the OpenLineage events of runs as `config` says.
    pub fn with_lineage(mut self, config: &LineageConfig) -> Self {
        self.lineage_config = config.clone();
        self
    }

    /// Serve with TLS and the bearer-token check of `security`.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    pub fn routes(&self) -> Routes {
        Routes::new(
            TransformerServiceServer::new(self.clone())
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
        )
    }
}

impl Transformer {
    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        info!(
            addr = ?listener.local_addr().ok(),
            extractor = %self.config.extractor_url,
            loader = %self.config.loader_url,
            "transformer listening"
        );
        grpc::check_scheme(
            "transformer.extractor_url",
            &self.config.extractor_url,
            &self.security,
        )?;
        grpc::check_scheme(
            "transformer.loader_url",
            &self.config.loader_url,
            &self.security,
        )?;
        let _metrics = quarry_core::metrics::serve(
            "transformer.metrics_listen",
            &self.config.metrics_listen,
            self.metrics.registry.clone(),
        )
        .await?;
        self.lineage = Arc::new(Emitter::start(
            &self.lineage_config,
            &self.metrics.registry,
        )?);
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let abort_runs = self.abort_runs.clone();
        let served = grpc::serve_with_grace(
            listener,
            self.routes(),
            &["quarry.v1.TransformerService"],
            shutdown,
            grace,
            async move { abort_runs.cancel() },
            &self.security,
        )
        .await;
        // A run whose client went away is not waited for by the server: let
        // it finish its abort (or commit) before the process exits.
        self.runs.close();
        if !self.runs.is_empty() {
            info!(runs = self.runs.len(), "waiting for runs to finish");
            let finished =
                tokio::time::timeout(grace + grpc::SHUTDOWN_FINAL_WAIT, self.runs.wait()).await;
            if finished.is_err() {
                self.abort_runs.cancel();
                let _ = tokio::time::timeout(grpc::SHUTDOWN_FINAL_WAIT, self.runs.wait()).await;
            }
        }
        self.lineage.close().await;
        served
    }
}

/// Serves the transformer of `config` on `listener` until `shutdown` resolves.
pub async fn serve(
    config: &Config,
    security: &Security,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    Transformer::new(config.transformer.clone())
        .with_security(security.clone())
        .with_lineage(&config.lineage)
        .serve(listener, shutdown)
        .await
}

/// Usage errors of a run request: refused before a run begins.
fn check_request(req: &RunRequest) -> Result<()> {
    use quarry_core::Error;
    if req.source.trim().is_empty() {
        return Err(Error::input(
            "the source is empty: name a file, a directory or a glob",
        ));
    }
    if quarry_proto::SourceFormat::try_from(req.format).is_err() {
        return Err(Error::input(format!(
            "unknown source format {}",
            req.format
        )));
    }
    if let Some(csv) = &req.csv {
        match csv.delimiter.as_bytes() {
            [] => {}
            [d] if quarry_core::schema::is_valid_delimiter(*d) => {}
            _ => {
                return Err(Error::input(format!(
                    "CSV delimiter {} must be one ASCII character other than a quote, a line break or NUL",
                    quarry_core::text::excerpt(&format!("{:?}", csv.delimiter), 16)
                )));
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl TransformerService for Transformer {
    type RunStream = ReceiverStream<std::result::Result<RunEvent, Status>>;

    async fn run(
        &self,
        request: Request<RunRequest>,
    ) -> std::result::Result<Response<Self::RunStream>, Status> {
        let req = request.into_inner();
        // A request that cannot run is refused before a run is recorded.
        check_request(&req)?;
        let options = run::Options::of(&req, &self.config)?;
        let run_id = uuid::Uuid::now_v7().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let span = info_span!("run", run_id = %run_id);
        let context = run::Context {
            config: self.config.clone(),
            security: self.security.clone(),
            shutdown: self.abort_runs.clone(),
            metrics: self.metrics.clone(),
            lineage: self.lineage.clone(),
        };
        self.runs
            .spawn(run::drive(context, req, options, run_id, tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
