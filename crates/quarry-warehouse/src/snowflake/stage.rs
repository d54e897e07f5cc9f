//! Uploads to Snowflake stages: the client side of `PUT`.
//!
//! `PUT 'file://<name>' @<stage>` does not move data by itself: Snowflake
//! answers with where the stage lives (an S3, GCS or Azure location with
//! short-lived credentials, or a presigned URL) and, for internal stages,
//! the key material the file must be encrypted with; the client uploads.
//! `snowflake-api` 0.14 implements this only for S3 and without the
//! encryption, so the backend does it here: the PUT statement runs in a
//! session of this module's own (the crate does not hand out its session
//! token), over the crate's public `Connection` and the backend's HTTP
//! client (endpoint override and status checks included); the file is
//! encrypted the way Snowflake's connectors do it (AES-CBC with a random
//! file key, the key wrapped with AES-ECB under the stage's master key)
//! and uploaded with the metadata Snowflake reads back (`sfc-digest`,
//! wrapped key, IV, material descriptor).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};
use quarry_core::{Error, Result};
use reqwest_middleware::ClientWithMiddleware;
use serde::Deserialize;
use serde_json::{Value, json};
use snowflake_api::connection::{Connection, QueryType};

use super::client::{TRANSIENT_CODES, connection_transient, middleware_transient};
use super::crypto::{Envelope, Material, digest, encrypt};

/// How the upload session logs in.
pub(super) enum Login {
    Password(String),
    /// PEM of the key-pair's private key (a JWT per login).
    KeyPair(String),
}

/// Snowflake error codes of an expired or unknown session token: log in
/// again and repeat the statement.
const SESSION_EXPIRED: [&str; 3] = ["390112", "390114", "390111"];

/// The upload session and the uploads.
pub(super) struct Uploader {
    connection: Arc<Connection>,
    http: ClientWithMiddleware,
    account: String,
    user: String,
    warehouse: String,
    role: String,
    login: Login,
    /// `Snowflake Token="…"` of the current session.
    token: tokio::sync::Mutex<Option<String>>,
    sequence: AtomicU64,
    /// Where the account is, for messages.
    place: String,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: Value,
}

/// Where a stage's files go (`stageInfo` of a PUT answer).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StageInfo {
    pub location_type: String,
    /// `bucket/prefix/` (S3, GCS) or `container/prefix/` (Azure).
    pub location: String,
    #[serde(default)]
    pub region: Option<String>,
    /// A non-default storage endpoint (S3 FIPS, GCS or Azure hosts).
    #[serde(default)]
    pub end_point: Option<String>,
    #[serde(default)]
    pub storage_account: Option<String>,
    #[serde(default)]
    pub creds: HashMap<String, Value>,
    #[serde(default)]
    pub presigned_url: Option<String>,
}

impl StageInfo {
    fn cred(&self, key: &str) -> Option<&str> {
        self.creds
            .get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    }

    /// (bucket or container, object key of `file`).
    fn object(&self, file: &str) -> Result<(&str, String)> {
        let (bucket, prefix) = self
            .location
            .split_once('/')
            .unwrap_or((self.location.as_str(), ""));
        if bucket.is_empty() {
            return Err(Error::internal(format!(
                "snowflake named the stage location {:?}",
                self.location
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        let key = if prefix.is_empty() {
            file.to_string()
        } else {
            format!("{prefix}/{file}")
        };
        Ok((bucket, key))
    }

    /// `https://…` of `end_point` (kept as given when it names a scheme).
    fn endpoint(&self) -> Option<String> {
        let e = self.end_point.as_deref()?.trim_end_matches('/');
        if e.is_empty() {
            None
        } else if e.contains("://") {
            Some(e.to_string())
        } else {
            Some(format!("https://{e}"))
        }
    }
}

/// The metadata an upload carries, as (name without the provider's
/// prefix, value).
fn metadata(
    location_type: &str,
    digest: String,
    envelope: Option<&Envelope>,
) -> Vec<(&'static str, String)> {
    match location_type {
        "S3" => {
            let mut m = vec![("sfc-digest", digest)];
            if let Some(e) = envelope {
                m.push(("x-amz-key", e.key.clone()));
                m.push(("x-amz-iv", e.iv.clone()));
                m.push(("x-amz-matdesc", e.matdesc.clone()));
            }
            m
        }
        _ => {
            // GCS and Azure keep the envelope as one JSON document.
            let digest_key = if location_type == "AZURE" {
                "sfcdigest"
            } else {
                "sfc-digest"
            };
            let mut m = vec![(digest_key, digest)];
            if let Some(e) = envelope {
                m.push(("encryptiondata", e.encryption_data()));
                m.push(("matdesc", e.matdesc.clone()));
            }
            m
        }
    }
}

impl Uploader {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        http: ClientWithMiddleware,
        account: &str,
        user: &str,
        warehouse: &str,
        role: &str,
        login: Login,
        place: &str,
    ) -> Self {
        Self {
            connection: Arc::new(Connection::new_with_middware(http.clone())),
            http,
            account: account.to_string(),
            user: user.to_string(),
            warehouse: warehouse.to_string(),
            role: role.to_string(),
            login,
            token: tokio::sync::Mutex::new(None),
            sequence: AtomicU64::new(0),
            place: place.to_string(),
        }
    }

    fn fail(&self, what: &str, message: impl std::fmt::Display, transient: bool) -> Error {
        Error::backend(
            format!("snowflake {}: {what}: {message}", self.place),
            transient,
        )
    }

    async fn request(
        &self,
        what: &str,
        kind: QueryType,
        params: &[(&str, &str)],
        auth: Option<&str>,
        body: Value,
    ) -> Result<Answer> {
        self.connection
            .request::<Answer>(kind, &self.account, params, auth, body)
            .await
            .map_err(|e| self.fail(what, &e, connection_transient(&e)))
    }

    async fn log_in(&self) -> Result<String> {
        let mut data = json!({
            "CLIENT_APP_ID": "quarry",
            "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
            "ACCOUNT_NAME": self.account,
            "LOGIN_NAME": self.user,
            "SESSION_PARAMETERS": {"CLIENT_VALIDATE_DEFAULT_PARAMETERS": true},
        });
        match &self.login {
            Login::Password(p) => data["PASSWORD"] = json!(p),
            Login::KeyPair(pem) => {
                let who = format!(
                    "{}.{}",
                    self.account.to_uppercase(),
                    self.user.to_uppercase()
                );
                let jwt = snowflake_jwt::generate_jwt_token(pem, &who)
                    .map_err(|e| self.fail("log in for uploads", e, false))?;
                data["AUTHENTICATOR"] = json!("SNOWFLAKE_JWT");
                data["TOKEN"] = json!(jwt);
            }
        }
        let mut params = vec![];
        if !self.warehouse.is_empty() {
            params.push(("warehouse", self.warehouse.as_str()));
        }
        if !self.role.is_empty() {
            params.push(("roleName", self.role.as_str()));
        }
        let answer = self
            .request(
                "log in for uploads",
                QueryType::LoginRequest,
                &params,
                None,
                json!({ "data": data }),
            )
            .await?;
        if !answer.success {
            return Err(self.fail(
                "log in for uploads",
                answer.message.unwrap_or_default(),
                false,
            ));
        }
        let token = answer.data["token"].as_str().ok_or_else(|| {
            self.fail(
                "log in for uploads",
                "the answer has no session token",
                false,
            )
        })?;
        Ok(format!("Snowflake Token=\"{token}\""))
    }

    /// Runs `PUT` for `file` into `stage` and returns where to upload it.
    async fn put_statement(
        &self,
        stage: &str,
        file: &str,
    ) -> Result<(StageInfo, Option<Material>)> {
        let sql = format!(
            "PUT 'file://{file}' @{stage} AUTO_COMPRESS = FALSE SOURCE_COMPRESSION = NONE OVERWRITE = TRUE"
        );
        let what = format!("PUT {file}");
        let mut fresh = false;
        loop {
            let auth = {
                let mut token = self.token.lock().await;
                if token.is_none() {
                    *token = Some(self.log_in().await?);
                    fresh = true;
                }
                token.clone().expect("set above")
            };
            let body = json!({
                "sqlText": sql,
                "asyncExec": false,
                "sequenceId": self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
                "isInternal": false,
            });
            let answer = self
                .request(&what, QueryType::JsonQuery, &[], Some(&auth), body)
                .await?;
            if answer.success {
                let info: StageInfo = serde_json::from_value(answer.data["stageInfo"].clone())
                    .map_err(|e| self.fail(&what, format!("unreadable stage info: {e}"), false))?;
                let material = match &answer.data["encryptionMaterial"] {
                    Value::Null => None,
                    Value::Array(list) => list.first().cloned(),
                    one => Some(one.clone()),
                }
                .filter(|m| !m.is_null())
                .map(serde_json::from_value::<Material>)
                .transpose()
                .map_err(|e| self.fail(&what, format!("unreadable key material: {e}"), false))?;
                return Ok((info, material));
            }
            let code = answer
                .code
                .or_else(|| answer.data["errorCode"].as_str().map(String::from))
                .unwrap_or_default();
            if SESSION_EXPIRED.contains(&code.as_str()) && !fresh {
                *self.token.lock().await = None;
                continue;
            }
            let message = answer.message.unwrap_or_default();
            return Err(self.fail(
                &what,
                format!("{code}: {message}"),
                TRANSIENT_CODES.contains(&code.as_str()),
            ));
        }
    }

    /// PUTs `data` as `file` into `stage` (e.g. a table stage `db.schema.%t`),
    /// replacing a file of that name.
    pub(super) async fn put(&self, stage: &str, file: &str, data: Bytes) -> Result<()> {
        let (info, material) = self.put_statement(stage, file).await?;
        let sum = digest(&data);
        let (body, envelope) = match &material {
            Some(m) => {
                let (body, envelope) = encrypt(m, &data)?;
                (Bytes::from(body), Some(envelope))
            }
            None => (data, None),
        };
        let meta = metadata(&info.location_type, sum, envelope.as_ref());
        let what = format!("upload {file}");
        match info.location_type.as_str() {
            "S3" => upload_s3(&info, file, body, &meta)
                .await
                .map_err(|(m, transient)| self.fail(&what, m, transient)),
            "GCS" | "AZURE" => {
                let (url, auth) = http_target(&info, file)?;
                let prefix = if info.location_type == "GCS" {
                    "x-goog-meta-"
                } else {
                    "x-ms-meta-"
                };
                let mut req = self.http.put(url).body(body);
                if let Some(a) = auth {
                    req = req.bearer_auth(a);
                }
                if info.location_type == "AZURE" {
                    req = req
                        .header("x-ms-blob-type", "BlockBlob")
                        .header("x-ms-version", "2021-08-06");
                }
                for (k, v) in &meta {
                    req = req.header(format!("{prefix}{k}"), v);
                }
                req.send().await.map(drop).map_err(|e| {
                    let transient = middleware_transient(&e);
                    self.fail(&what, e, transient)
                })
            }
            other => Err(self.fail(
                &what,
                format!("stages in {other} locations are not supported (S3, GCS and Azure are)"),
                false,
            )),
        }
    }
}

/// The URL (and bearer token, if any) a GCS or Azure upload goes to.
fn http_target(info: &StageInfo, file: &str) -> Result<(reqwest::Url, Option<String>)> {
    let parse = |u: &str| {
        reqwest::Url::parse(u)
            .map_err(|e| Error::internal(format!("snowflake stage URL {u:?}: {e}")).with_source(e))
    };
    if let Some(url) = info.presigned_url.as_deref().filter(|u| !u.is_empty()) {
        return Ok((parse(url)?, None));
    }
    let (bucket, key) = info.object(file)?;
    let key = key.split('/').map(url_escape).collect::<Vec<_>>().join("/");
    if info.location_type == "GCS" {
        let token = info.cred("GCS_ACCESS_TOKEN").ok_or_else(|| {
            Error::internal("snowflake gave a GCS stage with neither a presigned URL nor a token")
        })?;
        let base = info
            .endpoint()
            .unwrap_or_else(|| "https://storage.googleapis.com".into());
        return Ok((
            parse(&format!("{base}/{bucket}/{key}"))?,
            Some(token.into()),
        ));
    }
    let account = info.storage_account.as_deref().ok_or_else(|| {
        Error::internal("snowflake gave an Azure stage without a storage account")
    })?;
    let sas = info
        .cred("AZURE_SAS_TOKEN")
        .ok_or_else(|| Error::internal("snowflake gave an Azure stage without a SAS token"))?
        .trim_start_matches('?');
    let host = info
        .end_point
        .as_deref()
        .filter(|e| !e.is_empty())
        .unwrap_or("blob.core.windows.net");
    Ok((
        parse(&format!("https://{account}.{host}/{bucket}/{key}?{sas}"))?,
        None,
    ))
}

/// Percent-encodes one path segment (unreserved characters kept).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An S3 upload with the stage's temporary credentials.
async fn upload_s3(
    info: &StageInfo,
    file: &str,
    body: Bytes,
    meta: &[(&'static str, String)],
) -> std::result::Result<(), (String, bool)> {
    let (bucket, key) = info.object(file).map_err(|e| (e.to_string(), false))?;
    let cred = |k: &str| {
        info.cred(k)
            .ok_or_else(|| (format!("the S3 stage came without {k}"), false))
    };
    let mut s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(info.region.as_deref().unwrap_or("us-east-1"))
        .with_access_key_id(cred("AWS_KEY_ID")?)
        .with_secret_access_key(cred("AWS_SECRET_KEY")?);
    if let Some(token) = info.cred("AWS_TOKEN") {
        s3 = s3.with_token(token);
    }
    if let Some(endpoint) = info.endpoint() {
        s3 = s3
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    let s3 = s3.build().map_err(|e| (e.to_string(), false))?;
    let mut attributes = Attributes::new();
    for (k, v) in meta {
        attributes.insert(Attribute::Metadata((*k).into()), v.clone().into());
    }
    let opts = PutOptions {
        attributes,
        ..Default::default()
    };
    s3.put_opts(&key.as_str().into(), PutPayload::from_bytes(body), opts)
        .await
        .map(drop)
        .map_err(|e| {
            let transient = matches!(e, object_store::Error::Generic { .. });
            (e.to_string(), transient)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snowflake::crypto::{test_decrypt, test_material};

    #[test]
    fn metadata_names_follow_each_provider() {
        let (_, env) = encrypt(&test_material(16), b"abc").unwrap();
        let names = |t: &str| -> Vec<&str> {
            metadata(t, digest(b"abc"), Some(&env))
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            names("S3"),
            ["sfc-digest", "x-amz-key", "x-amz-iv", "x-amz-matdesc"]
        );
        assert_eq!(names("GCS"), ["sfc-digest", "encryptiondata", "matdesc"]);
        assert_eq!(names("AZURE"), ["sfcdigest", "encryptiondata", "matdesc"]);
        let data: Value = serde_json::from_str(&env.encryption_data()).unwrap();
        assert_eq!(data["WrappedContentKey"]["EncryptedKey"], json!(env.key));
        assert_eq!(data["ContentEncryptionIV"], json!(env.iv));
        // SHA-256 of "abc", base64.
        assert_eq!(
            digest(b"abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert_eq!(metadata("S3", digest(b""), None).len(), 1);
    }

    #[test]
    fn stage_locations_and_targets() {
        let info: StageInfo = serde_json::from_value(json!({
            "locationType": "AZURE",
            "location": "stages/ab12/",
            "storageAccount": "sfcacct",
            "endPoint": "blob.core.windows.net",
            "creds": {"AZURE_SAS_TOKEN": "?sv=2021&sig=x%2By"},
        }))
        .unwrap();
        let (url, auth) = http_target(&info, "trades 1.parquet").unwrap();
        assert_eq!(
            url.as_str(),
            "https://sfcacct.blob.core.windows.net/stages/ab12/trades%201.parquet?sv=2021&sig=x%2By"
        );
        assert!(auth.is_none());
        let gcs: StageInfo = serde_json::from_value(json!({
            "locationType": "GCS",
            "location": "bucket-x/p/q/",
            "creds": {"GCS_ACCESS_TOKEN": "tok"},
        }))
        .unwrap();
        let (url, auth) = http_target(&gcs, "f.parquet").unwrap();
        assert_eq!(
            url.as_str(),
            "https://storage.googleapis.com/bucket-x/p/q/f.parquet"
        );
        assert_eq!(auth.as_deref(), Some("tok"));
        let presigned: StageInfo = serde_json::from_value(json!({
            "locationType": "GCS",
            "location": "DB.S.%T/",
            "creds": {},
            "presignedUrl": "http://127.0.0.1:1/fs_bucket/DB/S/%25T/f.parquet",
        }))
        .unwrap();
        assert_eq!(
            http_target(&presigned, "f.parquet").unwrap().0.as_str(),
            "http://127.0.0.1:1/fs_bucket/DB/S/%25T/f.parquet"
        );
        let no_token: StageInfo = serde_json::from_value(json!({
            "locationType": "GCS", "location": "b/", "creds": {}
        }))
        .unwrap();
        assert!(http_target(&no_token, "f").is_err());
        assert_eq!(info.object("f").unwrap(), ("stages", "ab12/f".to_string()));
    }

    /// The S3 path against the S3 stand-in, with key material: the object
    /// carries Snowflake's metadata and decrypts to the original.
    #[tokio::test]
    #[ignore = "needs the S3 stand-in (moto): scripts/test.sh runs it"]
    async fn s3_upload_carries_the_envelope() {
        let endpoint = quarry_testkit::standin("QUARRY_TEST_S3_ENDPOINT");
        let bucket = format!("sf-stage-{}", std::process::id());
        let client = reqwest::Client::new();
        client
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("the S3 stand-in answers")
            .error_for_status()
            .unwrap();
        let info: StageInfo = serde_json::from_value(json!({
            "locationType": "S3",
            "location": format!("{bucket}/stages/run1/"),
            "region": "us-east-1",
            "endPoint": endpoint,
            "creds": {"AWS_KEY_ID": "test", "AWS_SECRET_KEY": "test", "AWS_TOKEN": "session"},
        }))
        .unwrap();
        let m = test_material(16);
        let data = b"PAR1 some parquet bytes".to_vec();
        let (body, env) = encrypt(&m, &data).unwrap();
        let meta = metadata("S3", digest(&data), Some(&env));
        upload_s3(&info, "t-000001.parquet", Bytes::from(body), &meta)
            .await
            .unwrap();
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(&bucket)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let got = object_store::ObjectStoreExt::get(&store, &"stages/run1/t-000001.parquet".into())
            .await
            .unwrap();
        let h = |k: &str| {
            got.attributes
                .get(&Attribute::Metadata(k.to_string().into()))
                .unwrap_or_else(|| panic!("no x-amz-meta-{k}"))
                .to_string()
        };
        let back = Envelope {
            key: h("x-amz-key"),
            iv: h("x-amz-iv"),
            matdesc: h("x-amz-matdesc"),
            key_bits: 128,
        };
        assert_eq!(back, env);
        assert_eq!(h("sfc-digest"), digest(&data));
        let stored = got.bytes().await.unwrap();
        assert_eq!(test_decrypt(&m, &back, &stored), data);
    }
}
