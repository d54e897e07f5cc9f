//! Test only: a local HTTP proxy in front of the fakesnow stand-in.
//!
//! The Snowflake backend is pointed at it through the production
//! `warehouse.snowflake.endpoint` key. It forwards every request to
//! fakesnow unchanged and fills in the response fields fakesnow leaves out
//! but the `snowflake-api` crate requires (login: masterToken, sessionId,
//! validities, sessionInfo.roleName; queries: returned, finalRoleName,
//! version; errors: age, internalError, queryId, errorCode, sqlState). It
//! runs on a thread of its own, so separate `quarry` processes can use it
//! too. `fail_next` makes it answer the next N query requests with HTTP
//! 503 (a transient failure) without forwarding them; `puts` counts the
//! PUT statements. Stage uploads go to fakesnow directly (its presigned
//! URLs name it), unless `encrypt` is set: then the proxy plays an internal
//! stage of real Snowflake — its PUT answers carry key material, the
//! presigned URLs name the proxy, and each upload must come encrypted with
//! that key and described by GCS metadata (wrapped key, IV, material
//! descriptor, SHA-256 digest of the plain file); the proxy decrypts it,
//! checks the digest and hands the plain file to fakesnow. A malformed
//! upload is refused with HTTP 400.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};

pub struct State {
    upstream: String,
    client: reqwest::Client,
    /// Query requests still to be answered with 503.
    pub fail_next: AtomicU32,
    /// Query requests answered with 503 so far.
    pub failed: AtomicU32,
    /// Query requests received (forwarded or failed).
    pub queries: AtomicU32,
    /// PUT statements among them.
    pub puts: AtomicU32,
    /// Play an internal stage with key material (see the module comment).
    pub encrypt: AtomicBool,
    /// Encrypted uploads decrypted and handed on.
    pub decrypted: AtomicU32,
    /// This proxy's base URL.
    url: String,
    /// The `data` of every login request.
    pub logins: std::sync::Mutex<Vec<Value>>,
}

/// The stage master key of the played internal stage (AES-128).
const MASTER_KEY: [u8; 16] = *b"quarry-stage-key";

pub struct Proxy {
    pub url: String,
    pub state: Arc<State>,
}

/// Starts a proxy to `upstream` (fakesnow's base URL) on a free port.
pub fn start(upstream: &str) -> Proxy {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(State {
        upstream: upstream.trim_end_matches('/').to_string(),
        client: reqwest::Client::new(),
        fail_next: AtomicU32::new(0),
        failed: AtomicU32::new(0),
        queries: AtomicU32::new(0),
        puts: AtomicU32::new(0),
        encrypt: AtomicBool::new(false),
        decrypted: AtomicU32::new(0),
        url: url.clone(),
        logins: std::sync::Mutex::new(vec![]),
    });
    let s = state.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    Proxy { url, state }
}

fn respond(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    s: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path.starts_with("/queries/") {
        s.queries.fetch_add(1, Ordering::SeqCst);
        if serde_json::from_slice::<Value>(&body)
            .is_ok_and(|b| b["sqlText"].as_str().is_some_and(|q| q.starts_with("PUT ")))
        {
            s.puts.fetch_add(1, Ordering::SeqCst);
        }
        let fail = s
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            s.failed.fetch_add(1, Ordering::SeqCst);
            return Ok(respond(503, b"Service Unavailable".to_vec()));
        }
    }
    if path.starts_with("/session/v1/login-request")
        && let Ok(b) = serde_json::from_slice::<Value>(&body)
    {
        s.logins.lock().unwrap().push(b["data"].clone());
    }
    let encrypt = s.encrypt.load(Ordering::SeqCst);
    let body = if encrypt && path.starts_with("/fs_bucket/") {
        match decrypt_upload(&headers, &body) {
            Ok(plain) => {
                s.decrypted.fetch_add(1, Ordering::SeqCst);
                Bytes::from(plain)
            }
            Err(why) => return Ok(respond(400, why.into_bytes())),
        }
    } else {
        body
    };
    let mut fwd = s
        .client
        .request(method, format!("{}{path}", s.upstream))
        .body(body);
    for (k, v) in &headers {
        if !matches!(k.as_str(), "host" | "content-length" | "accept-encoding") {
            fwd = fwd.header(k, v);
        }
    }
    let resp = match fwd.send().await {
        Ok(r) => r,
        Err(e) => return Ok(respond(502, e.to_string().into_bytes())),
    };
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) => {
            fill_in(&path, &mut v);
            if encrypt {
                as_internal_stage(&s, &mut v);
            }
            serde_json::to_vec(&v).unwrap()
        }
        Err(_) => bytes.to_vec(),
    };
    Ok(respond(status, out))
}

/// A PUT answer as an internal stage with key material gives it; uploads
/// come to the proxy.
fn as_internal_stage(s: &State, v: &mut Value) {
    use base64::Engine;
    let d = &mut v["data"];
    let Some(url) = d["stageInfo"]["presignedUrl"].as_str() else {
        return;
    };
    let Some(rest) = url.strip_prefix(&s.upstream) else {
        return;
    };
    d["stageInfo"]["presignedUrl"] = json!(format!("{}{rest}", s.url));
    d["encryptionMaterial"] = json!({
        "queryStageMasterKey": base64::engine::general_purpose::STANDARD.encode(MASTER_KEY),
        "queryId": "01-proxy-query",
        "smkId": 7,
    });
}

/// The plain file of an encrypted GCS-style upload, checked against its
/// metadata.
fn decrypt_upload(headers: &hyper::HeaderMap, body: &[u8]) -> Result<Vec<u8>, String> {
    use aes::cipher::block_padding::Pkcs7;
    use aes::cipher::{BlockModeDecrypt, KeyInit, KeyIvInit};
    use base64::Engine;
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::STANDARD;
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("no {k} header"))
    };
    let data: Value = serde_json::from_str(header("x-goog-meta-encryptiondata")?)
        .map_err(|e| format!("encryptiondata: {e}"))?;
    let matdesc: Value = serde_json::from_str(header("x-goog-meta-matdesc")?)
        .map_err(|e| format!("matdesc: {e}"))?;
    if matdesc != json!({"queryId": "01-proxy-query", "smkId": "7", "keySize": "128"}) {
        return Err(format!("unexpected material descriptor {matdesc}"));
    }
    let field = |v: &Value| -> Result<Vec<u8>, String> {
        b64.decode(v.as_str().ok_or("missing field")?)
            .map_err(|e| e.to_string())
    };
    let wrapped = field(&data["WrappedContentKey"]["EncryptedKey"])?;
    let iv = field(&data["ContentEncryptionIV"])?;
    let key = ecb::Decryptor::<aes::Aes128>::new_from_slice(&MASTER_KEY)
        .unwrap()
        .decrypt_padded_vec::<Pkcs7>(&wrapped)
        .map_err(|_| "the wrapped key does not decrypt".to_string())?;
    let plain = cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, &iv)
        .map_err(|_| "bad key or IV length".to_string())?
        .decrypt_padded_vec::<Pkcs7>(body)
        .map_err(|_| "the file does not decrypt".to_string())?;
    if header("x-goog-meta-sfc-digest")? != b64.encode(sha2::Sha256::digest(&plain)) {
        return Err("sfc-digest does not match the plain file".into());
    }
    if !plain.starts_with(b"PAR1") {
        return Err("the plain file is not Parquet".into());
    }
    Ok(plain)
}

fn default(v: &mut Value, key: &str, value: Value) {
    if let Some(o) = v.as_object_mut() {
        let e = o.entry(key).or_insert(Value::Null);
        if e.is_null() {
            *e = value;
        }
    }
}

/// Adds what fakesnow leaves out of its answers.
fn fill_in(path: &str, v: &mut Value) {
    let success = v["success"].as_bool().unwrap_or(false);
    if path.starts_with("/session/v1/login-request") && success {
        let d = &mut v["data"];
        let token = d["token"].clone();
        default(d, "masterToken", token);
        default(d, "sessionId", json!(1));
        default(d, "validityInSeconds", json!(3600));
        default(d, "masterValidityInSeconds", json!(14400));
        default(d, "sessionInfo", json!({}));
        default(&mut d["sessionInfo"], "roleName", json!("SYSADMIN"));
    } else if path.starts_with("/queries/v1/query-request") {
        if success {
            let d = &mut v["data"];
            let returned = d["rowset"]
                .as_array()
                .map(|r| json!(r.len()))
                .unwrap_or_else(|| d["total"].clone());
            default(d, "returned", returned);
            default(d, "finalRoleName", json!("SYSADMIN"));
            default(d, "version", json!(1));
            default(d, "parameters", json!([]));
            default(d, "queryId", json!(""));
        } else {
            let code = v["code"].clone();
            if v["data"].is_null() {
                v["data"] = json!({});
            }
            let d = &mut v["data"];
            default(d, "age", json!(0));
            default(d, "internalError", json!(false));
            default(d, "queryId", json!(""));
            default(d, "errorCode", code);
            default(d, "sqlState", json!(""));
        }
    }
}

/// Tables of `database`.PUBLIC, straight from fakesnow (its own session).
pub async fn tables(upstream: &str, database: &str) -> Vec<String> {
    let resp = sql(
        upstream,
        &format!(
            "SELECT table_name FROM {database}.information_schema.tables \
             WHERE table_schema = 'PUBLIC' ORDER BY table_name"
        ),
    )
    .await;
    use base64::Engine;
    let b64 = resp["data"]["rowsetBase64"].as_str().unwrap_or_default();
    if b64.is_empty() {
        return vec![];
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let mut out = vec![];
    for b in reader {
        let b = b.unwrap();
        let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let col = arrow::array::AsArray::as_string::<i32>(&col);
        out.extend(col.iter().map(|v| v.unwrap_or_default().to_string()));
    }
    out
}

/// Runs one statement on fakesnow directly (a session of its own); fails
/// the test unless it succeeds. Returns the response.
pub async fn sql(upstream: &str, sql: &str) -> Value {
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{upstream}/session/v1/login-request"))
        .json(&json!({"data": {"SESSION_PARAMETERS": {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["data"]["token"].as_str().unwrap().to_string();
    let resp: Value = client
        .post(format!("{upstream}/queries/v1/query-request"))
        .header("Authorization", format!("Snowflake Token=\"{token}\""))
        .json(&json!({"sqlText": sql}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["success"], json!(true), "{sql}: {resp}");
    resp
}

/// Points a warehouse configuration at Snowflake through `proxy`, with a
/// database of its own (fakesnow keeps one in-memory store for everyone).
pub fn configure(config: &mut quarry_core::config::WarehouseConfig, proxy: &Proxy, database: &str) {
    config.kind = quarry_core::config::WarehouseKind::Snowflake;
    let sf = &mut config.snowflake;
    sf.account = "quarry-test".into();
    sf.user = "quarry".into();
    sf.endpoint = proxy.url.clone();
    sf.database = database.into();
}
