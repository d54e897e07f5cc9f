//! Serving and reaching Quarry's gRPC services.
//!
//! Every server carries the standard `grpc.health.v1` service and gRPC server
//! reflection next to its own services, so `grpcurl` and Kubernetes gRPC
//! probes work against any of them.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;

use crate::error::{Error, Result, with_sources};
pub use crate::security::{AuthChannel, Security};

/// Largest gRPC message a Quarry server or client accepts. Flight batches are
/// split into ~2 MiB messages; this leaves room for large control messages.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Serves `routes` plus health and reflection on `listener` until `shutdown` resolves.
/// `names` are the fully-qualified service names reported as SERVING.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_secure(listener, routes, names, shutdown, &Security::default()).await
}

/// As [`serve`], with TLS and the bearer-token check of `security`.
pub async fn serve_secure(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    shutdown: impl Future<Output = ()> + Send,
    security: &Security,
) -> Result<()> {
    serve_inner(
        listener,
        routes,
        names,
        std::future::pending(),
        shutdown,
        security,
    )
    .await
}

/// Serves until `shutdown` resolves; once `draining` resolves the health
/// service reports NOT_SERVING (probes and load balancers stop sending new
/// work) while every call is still served.
async fn serve_inner(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    draining: impl Future<Output = ()> + Send,
    shutdown: impl Future<Output = ()> + Send,
    security: &Security,
) -> Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    all.push(String::new());
    for name in &all {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let mark_draining = async move {
        draining.await;
        for name in &all {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        std::future::pending::<()>().await
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(quarry_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_err = |e| Error::internal(format!("reflection service: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_err)?;
    // Many deployed clients (grpcurl before 1.9, older tooling) still speak v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_err)?;
    let addr = listener.local_addr().ok();
    let mut builder = Server::builder().tcp_nodelay(true);
    if let Some(tls) = security.server_tls()? {
        builder = builder.tls_config(tls).map_err(|e| {
            Error::config(format!("tls.cert_path / tls.key_path: {e}")).with_source(e)
        })?;
    }
    let server = builder
        .layer(security.require_token())
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);
    tokio::select! {
        served = server => {
            served.map_err(|e| Error::internal(format!("gRPC server on {addr:?} failed: {e}")).with_source(e))
        }
        () = mark_draining => unreachable!("marking the drain never ends"),
    }
}

/// After the grace period and the service's clean-up, this much longer is
/// given to calls still open before the server stops waiting for them.
pub const SHUTDOWN_FINAL_WAIT: Duration = Duration::from_secs(10);

/// Like [`serve`], with a bounded shutdown: once `shutdown` resolves the
/// server reports NOT_SERVING, refuses new calls and waits up to `grace`
/// for the open ones; then `expire` runs (the service aborts its in-flight
/// work there), and calls still open [`SHUTDOWN_FINAL_WAIT`] later are
/// dropped. Returns when the server has stopped.
pub async fn serve_with_grace<E>(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    expire: E,
    security: &Security,
) -> Result<()>
where
    E: Future<Output = ()> + Send,
{
    let signal = shutdown.shared();
    let on_signal = {
        let signal = signal.clone();
        async move {
            signal.await;
            tracing::info!(
                grace_secs = grace.as_secs(),
                "shutting down: refusing new calls, waiting for open ones"
            );
        }
    };
    let watchdog = async {
        signal.clone().await;
        tokio::time::sleep(grace).await;
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "shutdown grace period over: stopping in-flight work"
        );
        expire.await;
        tokio::time::sleep(SHUTDOWN_FINAL_WAIT).await;
        tracing::warn!("calls still open after the grace period: closing them");
    };
    tokio::select! {
        served = serve_inner(listener, routes, names, signal.clone(), on_signal, security) => served,
        () = watchdog => Ok(()),
    }
}

/// Like [`serve`], for a service that drains before it stops: once
/// `shutdown` resolves the server reports NOT_SERVING but keeps serving
/// every call (new connections included) until `drained` resolves — the
/// service decides there when its open work is done or given up. Then it
/// stops taking calls and gives the open ones [`SHUTDOWN_FINAL_WAIT`].
pub async fn serve_draining(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    shutdown: impl Future<Output = ()> + Send,
    drained: impl Future<Output = ()> + Send,
    security: &Security,
) -> Result<()> {
    let drained = drained.shared();
    let watchdog = async {
        drained.clone().await;
        tokio::time::sleep(SHUTDOWN_FINAL_WAIT).await;
        tracing::warn!("calls still open after the drain: closing them");
    };
    tokio::select! {
        served = serve_inner(listener, routes, names, shutdown, drained.clone(), security) => served,
        () = watchdog => Ok(()),
    }
}

/// Binds a listen address from config, with an error naming it.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config(format!("cannot listen on {addr}: {e}")).with_source(e))
}

/// Connects to another Quarry service; `what` names it in errors.
pub async fn connect(what: &str, url: &str) -> Result<Channel> {
    connect_with(what, url, &Security::default()).await
}

/// Checks that a service URL's scheme matches `[tls]`.
pub fn check_scheme(what: &str, url: &str, security: &Security) -> Result<()> {
    match (security.tls_enabled(), url.starts_with("https://")) {
        (true, false) => Err(Error::config(format!(
            "{what} URL {url:?}: tls.enabled is true, so it must be https://"
        ))),
        (false, true) => Err(Error::config(format!(
            "{what} URL {url:?} is https:// but tls.enabled is false"
        ))),
        _ => Ok(()),
    }
}

/// Connects over TLS when `security` says so (the bearer token is attached
/// by the client: [`Security::authorize`] or [`Security::authorization`]).
///
/// Connecting includes one gRPC health call: a port that accepts TCP
/// connections but never speaks gRPC would otherwise hang the first real
/// call for ever. Connection and answer must come within the client's
/// `connect_timeout_secs`; an established connection whose peer stops
/// answering HTTP/2 pings is closed after [`KEEPALIVE_TIMEOUT`].
pub async fn connect_with(what: &str, url: &str, security: &Security) -> Result<Channel> {
    check_scheme(what, url, security)?;
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::config(format!("{what} URL {url:?}: {e}")).with_source(e))?;
    if let Some(tls) = security.client_tls() {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Error::config(format!("{what} URL {url:?}: TLS: {e}")).with_source(e))?;
    }
    let deadline = security.connect_timeout();
    let endpoint = endpoint
        .connect_timeout(deadline)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let unreachable = |detail: String| {
        Error::backend(format!("cannot reach the {what} at {url}: {detail}"), true)
    };
    let secs = deadline.as_secs_f64();
    let channel = tokio::time::timeout(deadline, endpoint.connect())
        .await
        .map_err(|_| {
            unreachable(format!(
                "no connection within {secs} s (client.connect_timeout_secs)"
            ))
        })?
        .map_err(|e| unreachable(with_sources(&e)))?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let probe = health.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(deadline, probe).await {
        Err(_) => Err(unreachable(format!(
            "no gRPC answer within {secs} s (client.connect_timeout_secs): is it a Quarry service?"
        ))),
        Ok(Err(status)) if is_transport(&status) => Err(unreachable(status_text(&status))),
        // Any gRPC answer, even NOT_SERVING, means the peer speaks gRPC.
        Ok(_) => Ok(channel),
    }
}

/// How long an established connection may leave an HTTP/2 ping unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a call failed in the transport (the peer is gone or never
/// answered) rather than in the service.
fn is_transport(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && status.metadata().get("quarry-error-category").is_none()
}

fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), with_sources(source)),
        None => status.message().to_string(),
    }
}

/// The error of a call to the `what` at `url`: the service's own error as it
/// sent it, or a transport failure with the URL named.
pub fn call_error(what: &str, url: &str, status: &tonic::Status) -> Error {
    if is_transport(status) {
        Error::backend(
            format!("the {what} at {url} failed: {}", status_text(status)),
            true,
        )
        .with_source(status.clone())
    } else {
        Error::from_status(status)
    }
}

/// Awaits a short query call, failing after the client's
/// `request_timeout_secs` with the service and URL named.
pub async fn query<T>(
    what: &str,
    url: &str,
    security: &Security,
    call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    let deadline = security.request_timeout();
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(call_error(what, url, &status)),
        Err(_) => Err(Error::backend(
            format!(
                "the {what} at {url} did not answer within {} s (client.request_timeout_secs)",
                deadline.as_secs_f64()
            ),
            true,
        )),
    }
}

/// A signal asking the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The shell's convention: 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// Resolves with the next Ctrl-C or SIGTERM the process gets.
pub async fn next_signal() -> Signal {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => Signal::Interrupt,
        _ = term => Signal::Terminate,
    }
}

/// Resolves when the process gets Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    next_signal().await;
}

/// The `main` of a service binary: logging, `--config`, the configuration,
/// the security settings and the listener on the address `listen` picks,
/// then `serve` until a shutdown signal. A failure ends the process with its
/// one line on stderr, named after the binary, and exit code 1.
pub async fn service_main<Fut>(
    binary: &str,
    listen: fn(&crate::Config) -> &str,
    serve: impl FnOnce(crate::Config, Security, TcpListener) -> Fut,
) -> std::process::ExitCode
where
    Fut: Future<Output = Result<()>>,
{
    use clap::Parser;
    crate::logging::init("info");
    let args = crate::config::ServiceArgs::parse();
    let started = async {
        let config = crate::Config::load(args.config.as_deref())?;
        let security = Security::from_config(&config)?;
        let listener = bind(listen(&config)).await?;
        serve(config, security, listener).await
    };
    match started.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
