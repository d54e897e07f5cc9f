//! Test only: an HTTP/1.1 reverse proxy that counts the requests a backend
//! sends to a stand-in, so a test can prove a retry happened (or did not)
//! by counting attempts instead of timing them. A request the upstream does
//! not take (it is down) is counted as refused and its connection closed
//! without an answer, so the client sees the network error it would see
//! against the stopped server itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

#[derive(Default)]
struct Counts {
    requests: AtomicU32,
    refused: AtomicU32,
}

pub struct CountingProxy {
    pub url: String,
    counts: Arc<Counts>,
}

impl CountingProxy {
    /// Starts the proxy (on a thread of its own) in front of `upstream`.
    pub fn start(upstream: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(Counts::default());
        let (c, upstream) = (counts.clone(), upstream.trim_end_matches('/').to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let client = reqwest::Client::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (c, client, upstream) = (c.clone(), client.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            forward(c.clone(), client.clone(), upstream.clone(), req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        Self { url, counts }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u32 {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// Requests that found the upstream unreachable.
    pub fn refused(&self) -> u32 {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

/// The upstream was not reachable: the connection is dropped unanswered.
#[derive(Debug)]
struct Unreachable;

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream unreachable")
    }
}

impl std::error::Error for Unreachable {}

async fn forward(
    counts: Arc<Counts>,
    client: reqwest::Client,
    upstream: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Unreachable> {
    counts.requests.fetch_add(1, Ordering::SeqCst);
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    headers.remove(hyper::header::HOST);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let sent = client
        .request(method, format!("{upstream}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(a) => a,
        Err(_) => {
            counts.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Unreachable);
        }
    };
    let mut out = Response::builder().status(answer.status());
    for (k, v) in answer.headers() {
        if k != hyper::header::TRANSFER_ENCODING && k != hyper::header::CONTENT_LENGTH {
            out = out.header(k, v);
        }
    }
    let bytes = answer.bytes().await.map_err(|_| Unreachable)?;
    Ok(out.body(Full::new(bytes)).unwrap())
}
