//! Credentials: a service-account key (its tokens fetched and refreshed by
//! the service-account flow) or an access token handed over in a variable.
//! Neither is ever logged.

use std::sync::Arc;

use async_trait::async_trait;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::yup_oauth2;
use quarry_core::config::BigQueryConfig;
use quarry_core::{Error, Result};

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// Access tokens of a service account (JSON key), refreshed before they expire.
#[derive(Clone)]
struct ServiceAccountToken {
    key: Arc<yup_oauth2::ServiceAccountKey>,
    auth: Arc<tokio::sync::OnceCell<yup_oauth2::authenticator::DefaultAuthenticator>>,
}

#[async_trait]
impl Authenticator for ServiceAccountToken {
    async fn access_token(&self) -> std::result::Result<String, BQError> {
        let auth = self
            .auth
            .get_or_try_init(|| {
                yup_oauth2::ServiceAccountAuthenticator::builder((*self.key).clone()).build()
            })
            .await
            .map_err(BQError::InvalidServiceAccountAuthenticator)?;
        let token = auth.token(&[SCOPE]).await?;
        token.token().map(str::to_string).ok_or(BQError::NoToken)
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

/// The credentials the configuration names: an access token from
/// `access_token_env`, else the service-account key file
/// (`credentials_file`, else the file `credentials_env` names).
pub(super) fn from_config(config: &BigQueryConfig) -> Result<Arc<dyn Authenticator>> {
    Ok(if !config.access_token_env.is_empty() {
        let token = std::env::var(&config.access_token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                Error::config(format!(
                    "warehouse.bigquery.access_token_env names {}, which is not set",
                    config.access_token_env
                ))
            })?;
        Arc::new(EnvToken(token.trim().to_string()))
    } else {
        let path = if config.credentials_file.as_os_str().is_empty() {
            std::env::var_os(&config.credentials_env)
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
                .ok_or_else(|| {
                    Error::config(format!(
                        "no BigQuery credentials: set warehouse.bigquery.credentials_file, \
                         the environment variable {} (a service-account key file), \
                         or warehouse.bigquery.access_token_env",
                        config.credentials_env
                    ))
                })?
        } else {
            config.credentials_file.clone()
        };
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::config(format!(
                "cannot read the BigQuery service-account key {}: {e}",
                path.display()
            ))
        })?;
        let key = yup_oauth2::parse_service_account_key(bytes).map_err(|e| {
            Error::config(format!(
                "{} is not a service-account key: {e}",
                path.display()
            ))
        })?;
        Arc::new(ServiceAccountToken {
            key: Arc::new(key),
            auth: Arc::new(tokio::sync::OnceCell::new()),
        })
    })
}
