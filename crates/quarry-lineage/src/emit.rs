//! Delivery of events: a bounded queue and one task that sends them in
//! order, so emitting never waits for the collector.
//!
//! - `emit` only queues: a full queue drops the event (counted, logged once).
//! - The task retries a failed delivery (`max_attempts`, backoff from 200 ms,
//!   each attempt bounded by `timeout_secs`), then drops the event (counted,
//!   logged once until a delivery succeeds again).
//! - `close` (when the service stops) gives the queued events a short,
//!   bounded time: no backoff then, and none at all once the collector has
//!   failed; what is left is counted as dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, Registry};
use quarry_core::config::{LineageConfig, LineageTransport};
use quarry_core::metrics::counter;
use quarry_core::{Error, Result};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::event::RunEvent;

/// How long `close` waits for the queue to drain.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Where the events of one process go.
pub struct Emitter {
    namespace: String,
    inner: Option<Inner>,
}

struct Inner {
    tx: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

/// What `emit`, the task and `close` share.
struct Shared {
    sent: IntCounter,
    dropped: IntCounter,
    /// Queued and not yet sent or dropped.
    pending: AtomicU64,
    closing: AtomicBool,
    /// Wakes the task from a backoff when `close` begins.
    closed: tokio::sync::Notify,
    /// Whether the last delivery failed (then a warning has been logged).
    failing: AtomicBool,
    queue_full_logged: AtomicBool,
}

enum Sink {
    Http {
        client: reqwest::Client,
        url: String,
        token: Option<String>,
    },
    File(PathBuf),
}

impl Emitter {
    /// Events go nowhere.
    pub fn off() -> Self {
        Self {
            namespace: LineageConfig::default().namespace,
            inner: None,
        }
    }

    /// Starts delivering to the configured transport; its counters go
    /// into `registry`. Needs a Tokio runtime unless the transport is off.
    pub fn start(config: &LineageConfig, registry: &Registry) -> Result<Self> {
        let sink = match config.transport {
            LineageTransport::Off => return Ok(Self::off()),
            LineageTransport::Http => {
                let token = match config.api_key_env.as_str() {
                    "" => None,
                    var => Some(std::env::var(var).map_err(|_| {
                        Error::config(format!("lineage.api_key_env names {var}, which is not set"))
                    })?),
                };
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(config.timeout_secs))
                    .build()
                    .map_err(|e| Error::internal(format!("lineage HTTP client: {e}")))?;
                Sink::Http {
                    client,
                    url: config.url.clone(),
                    token,
                }
            }
            LineageTransport::File => Sink::File(config.path.clone()),
        };
        let shared = Arc::new(Shared {
            sent: counter(
                registry,
                "quarry_lineage_events_sent_total",
                "OpenLineage events delivered",
            ),
            dropped: counter(
                registry,
                "quarry_lineage_events_dropped_total",
                "OpenLineage events dropped: queue full, or the collector failed every attempt",
            ),
            pending: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            closed: tokio::sync::Notify::new(),
            failing: AtomicBool::new(false),
            queue_full_logged: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(config.queue_events);
        let worker = tokio::spawn(deliver(rx, sink, config.max_attempts, shared.clone()));
        Ok(Self {
            namespace: config.namespace.clone(),
            inner: Some(Inner {
                tx: Mutex::new(Some(tx)),
                worker: Mutex::new(Some(worker)),
                shared,
            }),
        })
    }

    /// The namespace of the jobs whose events this emitter sends.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Queues `event`; never waits.
    pub fn emit(&self, event: &RunEvent) {
        let Some(inner) = &self.inner else { return };
        let body = serde_json::to_vec(event).expect("an event serialises");
        let tx = inner.tx.lock().expect("lineage sender lock");
        let Some(tx) = tx.as_ref() else { return };
        inner.shared.pending.fetch_add(1, Ordering::SeqCst);
        if tx.try_send(body).is_err() {
            inner.shared.pending.fetch_sub(1, Ordering::SeqCst);
            inner.shared.dropped.inc();
            if !inner.shared.queue_full_logged.swap(true, Ordering::SeqCst) {
                warn!(
                    "lineage: the event queue is full; events are dropped and counted in quarry_lineage_events_dropped_total (logged once)"
                );
            }
        }
    }

    /// Stops taking events and gives the queued ones a bounded time.
    pub async fn close(&self) {
        let Some(inner) = &self.inner else { return };
        inner.shared.closing.store(true, Ordering::SeqCst);
        // A permit if the task is not waiting yet: its next backoff ends at once.
        inner.shared.closed.notify_one();
        inner.tx.lock().expect("lineage sender lock").take();
        let worker = inner.worker.lock().expect("lineage worker lock").take();
        let Some(mut worker) = worker else { return };
        if tokio::time::timeout(CLOSE_WAIT, &mut worker).await.is_err() {
            worker.abort();
            let _ = worker.await;
        }
        let left = inner.shared.pending.swap(0, Ordering::SeqCst);
        if left > 0 {
            inner.shared.dropped.inc_by(left);
            info!(
                events = left,
                "lineage: events not delivered before shutdown were dropped"
            );
        }
    }
}

async fn deliver(
    mut rx: mpsc::Receiver<Vec<u8>>,
    sink: Sink,
    max_attempts: u32,
    shared: Arc<Shared>,
) {
    while let Some(body) = rx.recv().await {
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let closing = shared.closing.load(Ordering::SeqCst);
            if closing && shared.failing.load(Ordering::SeqCst) {
                break Err("the collector was failing when the service stopped".to_string());
            }
            match sink.send(&body).await {
                Ok(()) => break Ok(()),
                Err(e) if attempt >= max_attempts || closing => break Err(e),
                Err(_) => {
                    let backoff = FIRST_BACKOFF * 2u32.pow(attempt - 1);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shared.closed.notified() => {}
                    }
                }
            }
        };
        shared.pending.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Ok(()) => {
                shared.sent.inc();
                if shared.failing.swap(false, Ordering::SeqCst) {
                    info!(sink = %sink, "lineage: the collector takes events again");
                }
            }
            Err(e) => {
                shared.dropped.inc();
                if !shared.failing.swap(true, Ordering::SeqCst) {
                    warn!(sink = %sink, error = %e, "lineage: cannot deliver events; they are dropped and counted in quarry_lineage_events_dropped_total (logged once until it recovers)");
                }
            }
        }
    }
}

impl Sink {
    async fn send(&self, body: &[u8]) -> std::result::Result<(), String> {
        match self {
            Sink::Http { client, url, token } => {
                let mut req = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec());
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", resp.status()))
                }
            }
            Sink::File(path) => {
                let mut line = body.to_vec();
                line.push(b'\n');
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                // One write per line: appends of whole lines do not interleave.
                // Tokio's file finishes a write in the background: flush waits.
                let written = match f.write_all(&line).await {
                    Ok(()) => f.flush().await,
                    Err(e) => Err(e),
                };
                written.map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Http { url, .. } => write!(f, "{url}"),
            Sink::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    fn event() -> RunEvent {
        RunEvent::new(
            EventType::Start,
            "01a23c45-47ec-7231-8c8b-a749a1043847",
            "q",
            "j",
        )
    }

    fn dropped(r: &Registry) -> u64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("quarry_lineage_events_dropped_total "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn the_file_transport_appends_one_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let config = LineageConfig {
            transport: LineageTransport::File,
            path: dir.path().join("events.ndjson"),
            ..Default::default()
        };
        let r = Registry::new();
        let emitter = Emitter::start(&config, &r).unwrap();
        emitter.emit(&event());
        emitter.emit(&event().with_error("x"));
        emitter.close().await;
        let text = std::fs::read_to_string(&config.path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["run"]["facets"]["errorMessage"]["message"], "x");
        assert_eq!(dropped(&r), 0);
    }

    #[tokio::test]
    async fn a_dead_collector_costs_no_waiting_and_its_events_are_counted() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = LineageConfig {
            transport: LineageTransport::Http,
            url: format!("http://127.0.0.1:{port}/api/v1/lineage"),
            queue_events: 2,
            ..Default::default()
        };
        let r = Registry::new();
        let emitter = Emitter::start(&config, &r).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..5 {
            emitter.emit(&event());
        }
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        emitter.close().await;
        assert!(t.elapsed() < CLOSE_WAIT + Duration::from_millis(500));
        assert_eq!(dropped(&r), 5);
    }
}
