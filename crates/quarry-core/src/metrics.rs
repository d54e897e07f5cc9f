//! Prometheus metrics: each service keeps its own registry and, when its
//! `metrics_listen` is set, serves it as text on `GET /metrics`.

use std::net::SocketAddr;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{Error, ErrorCategory, Result};

/// Buckets of the duration histograms, in seconds: 5 ms to about 20 min.
fn duration_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.005, 3.0, 12).expect("valid buckets")
}

/// Registers a counter; names are static, so a failure is a bug.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

pub fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(duration_buckets()))
        .expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("unique name");
    h
}

pub fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(duration_buckets()),
        labels,
    )
    .expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("unique name");
    h
}

/// `quarry_errors_total{category}`: failed calls or runs of a service, by
/// who is at fault. Every category is present from the start (at 0).
#[derive(Clone)]
pub struct Errors(IntCounterVec);

impl Errors {
    pub fn new(registry: &Registry) -> Self {
        let c = counter_vec(
            registry,
            "quarry_errors_total",
            "Failed calls or runs, by error category",
            &["category"],
        );
        for cat in ErrorCategory::ALL {
            c.with_label_values(&[cat.as_str()]);
        }
        Self(c)
    }

    pub fn count(&self, e: &Error) {
        self.0.with_label_values(&[e.category().as_str()]).inc();
    }
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on an inconsistent metric: a bug.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The running `/metrics` endpoint; stops when dropped.
pub struct MetricsServer {
    pub addr: SocketAddr,
    _task: AbortOnDropHandle<()>,
}

/// Serves `registry` on `GET /metrics` at `addr` (config key `key`); an
/// empty address means metrics are off.
pub async fn serve(key: &str, addr: &str, registry: Registry) -> Result<Option<MetricsServer>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::config(format!("{key} = {addr:?}: cannot listen: {e}")).with_source(e)
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("metrics address: {e}")).with_source(e))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render(&registry);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(Some(MetricsServer {
        addr,
        _task: AbortOnDropHandle::new(task),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_are_served_in_the_text_format() {
        let registry = Registry::new();
        let c = counter(&registry, "quarry_test_things_total", "Things");
        c.inc_by(3);
        let errors = Errors::new(&registry);
        errors.count(&Error::input("bad row"));
        assert!(
            serve("x.metrics_listen", "", registry.clone())
                .await
                .unwrap()
                .is_none()
        );
        let server = serve("x.metrics_listen", "127.0.0.1:0", registry)
            .await
            .unwrap()
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\nquarry_test_things_total 3\n"), "{text}");
        assert!(
            text.contains("quarry_errors_total{category=\"input\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("quarry_errors_total{category=\"quality\"} 0"),
            "{text}"
        );

        let e = serve(
            "x.metrics_listen",
            &server.addr.to_string(),
            Registry::new(),
        )
        .await
        .err()
        .unwrap();
        assert!(e.to_string().contains("x.metrics_listen"), "{e}");
    }
}
