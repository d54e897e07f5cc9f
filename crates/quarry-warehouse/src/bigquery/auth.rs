//! Credentials, found in the order of Google's Application Default
//! Credentials; the first source that is there is used:
//!
//! 1. an OAuth2 access token in the variable `access_token_env` names;
//! 2. a key file: `credentials_file`, else the file the variable
//!    `credentials_env` (GOOGLE_APPLICATION_CREDENTIALS) names; either a
//!    service-account key or `authorized_user` credentials, by its `type`;
//! 3. the file `gcloud auth application-default login` writes,
//!    `$CLOUDSDK_CONFIG/application_default_credentials.json` (default
//!    `~/.config/gcloud/`), if it exists;
//! 4. the metadata server (GKE Workload Identity, Compute Engine), at
//!    `GCE_METADATA_HOST` when that is set.
//!
//! yup-oauth2 fetches, caches and refreshes the tokens of 2–4. No token, key
//! or secret is ever logged.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::yup_oauth2;
use gcp_bigquery_client::yup_oauth2::authenticator::{
    ApplicationDefaultCredentialsTypes, DefaultAuthenticator,
};
use gcp_bigquery_client::yup_oauth2::authorized_user::AuthorizedUserSecret;
use quarry_core::config::BigQueryConfig;
use quarry_core::{Error, Result};

use crate::retry::{RetryLogic, RetryPolicy};

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// The metadata server's name inside Google Cloud.
const METADATA_HOST: &str = "metadata.google.internal";

/// Overrides the metadata server's host[:port], as in Google's libraries.
const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";

/// The variable yup-oauth2's metadata-server client checks first.
const GOOGLE_CREDENTIALS_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// A metadata server that does not answer must not hold a run for long
/// (outside Google Cloud its address may lead nowhere).
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts at a metadata server that cannot be reached, about half a
/// second apart and then a second (with jitter).
const METADATA_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    min_delay: Duration::from_millis(500),
    max_delay: Duration::from_secs(1),
};

/// The credentials the configuration and the environment name (see the
/// module documentation for the order).
pub(super) fn from_config(config: &BigQueryConfig) -> Result<Arc<dyn Authenticator>> {
    authenticator(choose(config, &|name| std::env::var_os(name))?)
}

/// Where the credentials come from.
enum Source {
    /// An access token handed over in a variable.
    Token(String),
    /// A key file the configuration or `credentials_env` names.
    KeyFile(PathBuf),
    /// The file of `gcloud auth application-default login`.
    Gcloud(PathBuf),
    /// The metadata server's token URL, and what was tried before it (for
    /// the error should it not answer).
    MetadataServer { url: String, tried: String },
}

/// The first source that is there; `env` reads an environment variable.
fn choose(config: &BigQueryConfig, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Source> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if !config.access_token_env.is_empty() {
        let token = var(&config.access_token_env)
            .and_then(|t| t.into_string().ok())
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                Error::config(format!(
                    "warehouse.bigquery.access_token_env names {}, which is not set",
                    config.access_token_env
                ))
            })?;
        return Ok(Source::Token(token.trim().to_string()));
    }
    if !config.credentials_file.as_os_str().is_empty() {
        return Ok(Source::KeyFile(config.credentials_file.clone()));
    }
    if let Some(path) = var(&config.credentials_env) {
        return Ok(Source::KeyFile(path.into()));
    }
    let mut tried = vec![
        "warehouse.bigquery.access_token_env and credentials_file (empty)".to_string(),
        format!(
            "the environment variable {} (not set)",
            config.credentials_env
        ),
    ];
    let gcloud_dir = var("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| Path::new(&home).join(".config/gcloud")));
    if let Some(dir) = gcloud_dir {
        let file = dir.join("application_default_credentials.json");
        if file.is_file() {
            return Ok(Source::Gcloud(file));
        }
        tried.push(format!("{} (no such file)", file.display()));
    }
    let host = var(METADATA_HOST_ENV).map(|h| h.to_string_lossy().into_owned());
    Ok(Source::MetadataServer {
        url: metadata_token_url(host.as_deref())?,
        tried: tried.join(", "),
    })
}

/// The token URL of the metadata server at `host` (host[:port], from
/// GCE_METADATA_HOST), or at its usual name.
fn metadata_token_url(host: Option<&str>) -> Result<String> {
    let host = host.map(str::trim).filter(|h| !h.is_empty());
    if let Some(h) = host
        && (h.contains(['/', '@', '?', '#']) || h.contains(char::is_whitespace))
    {
        return Err(Error::config(format!(
            "{METADATA_HOST_ENV} = {h:?} is not a host or host:port"
        )));
    }
    let host = host.unwrap_or(METADATA_HOST);
    Ok(format!(
        "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    ))
}

fn authenticator(source: Source) -> Result<Arc<dyn Authenticator>> {
    let flow = match source {
        Source::Token(token) => return Ok(Arc::new(EnvToken(token))),
        Source::KeyFile(path) | Source::Gcloud(path) => read_key_file(&path)?,
        Source::MetadataServer { url, tried } => Flow::MetadataServer { url, tried },
    };
    Ok(Arc::new(YupToken {
        flow: Arc::new(flow),
        auth: Arc::new(tokio::sync::OnceCell::new()),
    }))
}

/// A service-account key or `authorized_user` credentials, told apart by
/// their `type`.
fn read_key_file(path: &Path) -> Result<Flow> {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let bytes = std::fs::read(path).map_err(|e| {
        Error::config(format!(
            "cannot read the BigQuery credentials file {}: {e}",
            path.display()
        ))
    })?;
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::config(format!(
            "{} is not a Google credentials file: {e}",
            path.display()
        ))
    };
    let kind = serde_json::from_slice::<Kind>(&bytes)
        .map_err(|e| unreadable(&e))?
        .kind;
    match kind.as_deref() {
        Some("service_account") => yup_oauth2::parse_service_account_key(&bytes)
            .map(Flow::ServiceAccount)
            .map_err(|e| unreadable(&e)),
        Some("authorized_user") => serde_json::from_slice::<AuthorizedUserSecret>(&bytes)
            .map(Flow::AuthorizedUser)
            .map_err(|e| unreadable(&e)),
        other => Err(Error::config(format!(
            "{}: credentials of type {:?} are not supported; expected a \
             \"service_account\" key or \"authorized_user\" credentials",
            path.display(),
            other.unwrap_or("(none)")
        ))),
    }
}

/// How yup-oauth2 gets the tokens.
enum Flow {
    ServiceAccount(yup_oauth2::ServiceAccountKey),
    AuthorizedUser(AuthorizedUserSecret),
    MetadataServer { url: String, tried: String },
}

impl Flow {
    /// yup-oauth2's builders are async, opening the backend is not: built at
    /// the first token.
    async fn build(&self) -> std::result::Result<DefaultAuthenticator, BQError> {
        match self {
            Self::ServiceAccount(key) => {
                yup_oauth2::ServiceAccountAuthenticator::builder(key.clone())
                    .build()
                    .await
                    .map_err(BQError::InvalidServiceAccountAuthenticator)
            }
            Self::AuthorizedUser(secret) => {
                yup_oauth2::AuthorizedUserAuthenticator::builder(secret.clone())
                    .build()
                    .await
                    .map_err(BQError::InvalidAuthorizedUserAuthenticator)
            }
            Self::MetadataServer { url, tried } => {
                let opts = yup_oauth2::ApplicationDefaultCredentialsFlowOpts {
                    metadata_url: Some(url.clone()),
                };
                match yup_oauth2::ApplicationDefaultCredentialsAuthenticator::builder(opts).await {
                    ApplicationDefaultCredentialsTypes::InstanceMetadata(builder) => builder
                        .with_timeout(METADATA_TIMEOUT)
                        .build()
                        .await
                        .map_err(BQError::InvalidApplicationDefaultCredentialsAuthenticator),
                    // yup-oauth2 takes a key file instead whenever this
                    // variable is set, even empty; here it is not the key
                    // file chosen (empty, or credentials_env names another).
                    ApplicationDefaultCredentialsTypes::ServiceAccount(_) => {
                        Err(CredentialsError::bq(
                            format!(
                                "no BigQuery credentials: tried {tried}; the metadata server \
                                 is not asked while the environment variable \
                                 {GOOGLE_CREDENTIALS_ENV} is set: unset it, or name it in \
                                 warehouse.bigquery.credentials_env"
                            ),
                            false,
                        ))
                    }
                }
            }
        }
    }

    /// An access token, from yup-oauth2's cache while it is fresh.
    async fn token(&self, auth: &DefaultAuthenticator) -> std::result::Result<String, BQError> {
        // GKE's metadata server may not answer in a pod's first seconds;
        // Google's libraries ask again too, and the connection check at
        // start makes one attempt only.
        let token = METADATA_RETRY
            .run(
                &MetadataUnreachable(self),
                "bigquery",
                "token from the metadata server",
                || auth.token(&[SCOPE]),
            )
            .await
            .map_err(|e| self.token_error(e))?;
        token.token().map(str::to_string).ok_or(BQError::NoToken)
    }

    /// The metadata server could not be reached (rather than refusing).
    fn unreachable(&self, e: &yup_oauth2::Error) -> bool {
        matches!(self, Self::MetadataServer { .. })
            && matches!(
                e,
                yup_oauth2::Error::HttpError(_) | yup_oauth2::Error::HttpClientError(_)
            )
    }

    /// A failed token request. The metadata server is the last resort: its
    /// error says what was tried before it.
    fn token_error(&self, e: yup_oauth2::Error) -> BQError {
        // Not reachable stays worth another attempt later.
        let transient = self.unreachable(&e);
        let Self::MetadataServer { url, tried } = self else {
            return e.into();
        };
        let host = url.split("/computeMetadata").next().unwrap_or(url);
        // yup-oauth2's text stops at "client error (Connect)": the causes
        // say what happened.
        let cause = quarry_core::error::with_sources(&e);
        CredentialsError::bq(
            format!(
                "no BigQuery credentials: tried {tried}, and the metadata server at \
                 {host} gave no token: {cause}"
            ),
            transient,
        )
    }
}

/// Only a metadata server that cannot be reached is asked again; errors of
/// the other flows, and refusals, are final.
struct MetadataUnreachable<'a>(&'a Flow);

impl RetryLogic for MetadataUnreachable<'_> {
    type Error = yup_oauth2::Error;

    fn is_retriable(&self, e: &yup_oauth2::Error) -> bool {
        self.0.unreachable(e)
    }
}

/// Tokens from yup-oauth2, which caches them and refreshes them before they
/// expire.
#[derive(Clone)]
struct YupToken {
    flow: Arc<Flow>,
    auth: Arc<tokio::sync::OnceCell<DefaultAuthenticator>>,
}

#[async_trait]
impl Authenticator for YupToken {
    async fn access_token(&self) -> std::result::Result<String, BQError> {
        let auth = self.auth.get_or_try_init(|| self.flow.build()).await?;
        self.flow.token(auth).await
    }
}

/// An OAuth2 access token handed over in an environment variable.
#[derive(Clone)]
struct EnvToken(String);

#[async_trait]
impl Authenticator for EnvToken {
    async fn access_token(&self) -> std::result::Result<String, BQError> {
        Ok(self.0.clone())
    }
}

/// No credentials could be had: the message says why, and whether another
/// attempt may do better. It travels inside a `BQError` (the authenticator
/// trait's error type) to `client.rs`, which reads it back.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct CredentialsError {
    message: String,
    pub transient: bool,
}

impl CredentialsError {
    fn bq(message: String, transient: bool) -> BQError {
        BQError::InvalidApplicationDefaultCredentialsAuthenticator(std::io::Error::other(Self {
            message,
            transient,
        }))
    }

    /// The error `e` carries, if it is one.
    pub(super) fn of(e: &BQError) -> Option<&Self> {
        match e {
            BQError::InvalidApplicationDefaultCredentialsAuthenticator(io) => {
                io.get_ref()?.downcast_ref()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
