//! Talking to Snowflake: the HTTP client (status checks, endpoint
//! override), statements one at a time in the session with retries,
//! transactions, results read by value as text, the error classes.

use std::time::Duration;

use async_trait::async_trait;
use quarry_core::config::SnowflakeConfig;
use quarry_core::config::is_identifier;
use quarry_core::decimal;
use quarry_core::{Error, Result, Table};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use snowflake_api::{
    AuthArgs, AuthType, CertificateArgs, PasswordArgs, QueryResult, SnowflakeApi,
    SnowflakeApiBuilder, SnowflakeApiError,
};

use super::sql::{backfill_days_sql, cluster, columns, literal, loaded_days_sql, runs_table_sql};
use super::stage::{Login, Uploader};
use crate::retry::{RetryLogic, RetryPolicy};
use crate::text_rows::Rows;

/// Snowflake error codes worth another attempt: too many statements
/// waiting for a table lock (000625), a statement that reached its timeout
/// while queued or running (000630).
pub(super) const TRANSIENT_CODES: [&str; 2] = ["000625", "000630"];

/// An HTTP answer that is not a success (the crate reads every body as
/// JSON, so statuses are checked before it does).
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status} from {path}: {body}")]
pub(super) struct HttpStatus {
    pub status: u16,
    pub path: String,
    pub body: String,
}

impl HttpStatus {
    fn transient(&self) -> bool {
        self.status >= 500 || self.status == 429 || self.status == 408
    }
}

/// Turns non-success HTTP statuses into errors that say what they were.
struct CheckStatus;

#[async_trait]
impl Middleware for CheckStatus {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let path = req.url().path().to_string();
        let resp = next.run(req, extensions).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(300);
        Err(reqwest_middleware::Error::Middleware(anyhow::Error::new(
            HttpStatus {
                status: status.as_u16(),
                path,
                body,
            },
        )))
    }
}

/// Sends the account's requests to `endpoint` (a private-link or proxy
/// host) instead of `https://<account>.snowflakecomputing.com`; other hosts
/// (result chunks in cloud storage) are left alone.
struct Endpoint {
    account_host: String,
    base: reqwest::Url,
}

#[async_trait]
impl Middleware for Endpoint {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if req
            .url()
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(&self.account_host))
        {
            let url = req.url_mut();
            let moved = url
                .set_scheme(self.base.scheme())
                .and_then(|()| url.set_host(self.base.host_str()).map_err(|_| ()))
                .and_then(|()| url.set_port(self.base.port()));
            if moved.is_err() {
                return Err(reqwest_middleware::Error::Middleware(anyhow::anyhow!(
                    "cannot send a request to {}",
                    self.base
                )));
            }
        }
        next.run(req, extensions).await
    }
}

fn http_client(config: &SnowflakeConfig) -> Result<ClientWithMiddleware> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("quarry/", env!("CARGO_PKG_VERSION")))
        .gzip(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| Error::internal(format!("snowflake: HTTP client: {e}")).with_source(e))?;
    let mut builder = reqwest_middleware::ClientBuilder::new(client);
    if !config.endpoint.is_empty() {
        let base = reqwest::Url::parse(&config.endpoint).map_err(|e| {
            Error::config(format!(
                "warehouse.snowflake.endpoint = {:?}: {e}",
                config.endpoint
            ))
        })?;
        builder = builder.with(Endpoint {
            account_host: format!("{}.snowflakecomputing.com", config.account),
            base,
        });
    }
    Ok(builder.with(CheckStatus).build())
}

fn reqwest_transient(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// A failed request through the backend's client: worth another attempt?
pub(super) fn middleware_transient(e: &reqwest_middleware::Error) -> bool {
    match e {
        reqwest_middleware::Error::Reqwest(e) => reqwest_transient(e),
        reqwest_middleware::Error::Middleware(e) => e
            .downcast_ref::<HttpStatus>()
            .is_some_and(HttpStatus::transient),
    }
}

pub(super) fn connection_transient(e: &snowflake_api::connection::ConnectionError) -> bool {
    use snowflake_api::connection::ConnectionError as C;
    match e {
        C::RequestError(e) => reqwest_transient(e),
        C::RequestMiddlewareError(e) => middleware_transient(e),
        _ => false,
    }
}

/// Connection failures, HTTP 5xx/429/408 and the lock-wait and timeout
/// codes are transient.
pub(super) struct Transient;

impl RetryLogic for Transient {
    type Error = SnowflakeApiError;

    fn is_retriable(&self, e: &SnowflakeApiError) -> bool {
        is_transient(e)
    }
}

fn is_transient(e: &SnowflakeApiError) -> bool {
    use snowflake_api::SnowflakeApiError as S;
    match e {
        S::RequestError(c) => connection_transient(c),
        // The login's error type is not public: its message tells.
        S::AuthError(a) => {
            let m = a.to_string();
            [
                "HTTP 5",
                "HTTP 429",
                "HTTP 408",
                "error sending request",
                "timed out",
            ]
            .iter()
            .any(|p| m.contains(p))
        }
        S::ApiError(code, _) => TRANSIENT_CODES.contains(&code.as_str()),
        _ => false,
    }
}

fn text_column(col: &dyn sf_arrow::Array) -> Option<Vec<Option<String>>> {
    use sf_arrow::cast::AsArray as _;
    use sf_arrow::types::{Decimal128Type as D, Int8Type, Int16Type, Int32Type, Int64Type as I64};
    let n = col.len();
    let get = |f: &dyn Fn(usize) -> String| {
        (0..n)
            .map(|i| (!col.is_null(i)).then(|| f(i)))
            .collect::<Vec<_>>()
    };
    Some(match col.data_type() {
        sf_arrow_schema::DataType::Utf8 => {
            let a = col.as_string::<i32>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Utf8View => {
            let a = col.as_string_view();
            get(&|i| a.value(i).to_string())
        }
        // Counts and flags that were not cast to text (e.g. DML results).
        sf_arrow_schema::DataType::Int8 => {
            let a = col.as_primitive::<Int8Type>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Int16 => {
            let a = col.as_primitive::<Int16Type>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Int32 => {
            let a = col.as_primitive::<Int32Type>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Int64 => {
            let a = col.as_primitive::<I64>();
            get(&|i| a.value(i).to_string())
        }
        sf_arrow_schema::DataType::Decimal128(_, s) => {
            let a = col.as_primitive::<D>();
            let s = u32::try_from(*s).ok()?;
            get(&|i| decimal::format_scaled(a.value(i), s))
        }
        _ => return None,
    })
}

/// Reads a result by value: Arrow batches (SELECT) or the JSON rowset of
/// DML statements.
fn result_rows(result: QueryResult) -> Result<Rows> {
    match result {
        QueryResult::Empty => Ok(vec![]),
        QueryResult::Json(j) => {
            let rows = j.value.as_array().cloned().unwrap_or_default();
            Ok(rows
                .iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| match c {
                                    serde_json::Value::Null => None,
                                    serde_json::Value::String(s) => Some(s.clone()),
                                    other => Some(other.to_string()),
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect())
        }
        QueryResult::Arrow(batches) => {
            let mut rows = vec![];
            for b in batches {
                let cols: Vec<Vec<Option<String>>> = b
                    .columns()
                    .iter()
                    .map(|c| {
                        text_column(c.as_ref()).ok_or_else(|| {
                            Error::internal(format!(
                                "snowflake returned a column of type {} where text was selected",
                                c.data_type()
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                for i in 0..b.num_rows() {
                    rows.push(cols.iter().map(|c| c[i].clone()).collect());
                }
            }
            Ok(rows)
        }
    }
}

/// Quarry's own errors (uploads, transactions): transient when marked so.
pub(super) struct ErrorTransient;

impl RetryLogic for ErrorTransient {
    type Error = Error;

    fn is_retriable(&self, e: &Error) -> bool {
        e.is_transient()
    }
}

/// An account, its database and schema, the session and the uploader.
pub(super) struct Snowflake {
    api: SnowflakeApi,
    uploader: Uploader,
    /// `<database>.<schema>`, validated identifiers.
    pub qualified: String,
    database: String,
    /// Where the account is, for messages.
    place: String,
    policy: RetryPolicy,
    /// A staged file is PUT once it holds this many bytes.
    pub file_bytes: usize,
    /// Held for writing while a transaction is open in the session, so
    /// reads never see its uncommitted rows.
    pub tx: tokio::sync::RwLock<()>,
    /// Held while a statement of the session is on its way.
    in_session: tokio::sync::Mutex<()>,
}

impl Snowflake {
    /// Logs in on first use with the configured credentials (password from
    /// the environment variable named in config, or the private key file).
    pub fn open(config: &SnowflakeConfig) -> Result<Self> {
        for (key, v) in [("database", &config.database), ("schema", &config.schema)] {
            if !is_identifier(v) {
                return Err(Error::config(format!(
                    "warehouse.snowflake.{key} = {v:?} is not a plain identifier"
                )));
            }
        }
        if config.account.is_empty() || config.user.is_empty() {
            return Err(Error::config(
                "warehouse.snowflake.account and warehouse.snowflake.user must be set",
            ));
        }
        let (auth_type, login) = if config.private_key_path.is_empty() {
            let password = std::env::var(&config.password_env).map_err(|_| {
                Error::config(format!(
                    "snowflake: the password variable {} (warehouse.snowflake.password_env) is not set",
                    config.password_env
                ))
            })?;
            (
                AuthType::Password(PasswordArgs {
                    password: password.clone(),
                }),
                Login::Password(password),
            )
        } else {
            let private_key_pem =
                std::fs::read_to_string(&config.private_key_path).map_err(|e| {
                    Error::config(format!(
                        "snowflake: cannot read the private key file {} (warehouse.snowflake.private_key_path): {e}",
                        config.private_key_path
                    ))
                })?;
            (
                AuthType::Certificate(CertificateArgs {
                    private_key_pem: private_key_pem.clone(),
                }),
                Login::KeyPair(private_key_pem),
            )
        };
        let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
        let auth = AuthArgs {
            account_identifier: config.account.clone(),
            warehouse: non_empty(&config.warehouse),
            database: None,
            schema: None,
            username: config.user.clone(),
            role: non_empty(&config.role),
            auth_type,
        };
        let http = http_client(config)?;
        let api = SnowflakeApiBuilder::new(auth)
            .with_client(http.clone())
            .build()
            .map_err(|e| Error::config(format!("snowflake: {e}")).with_source(e))?;
        let place = if config.endpoint.is_empty() {
            format!("account {}", config.account)
        } else {
            format!("account {} at {}", config.account, config.endpoint)
        };
        let uploader = Uploader::new(
            http,
            &config.account,
            &config.user,
            &config.warehouse,
            &config.role,
            login,
            &place,
        );
        Ok(Self {
            api,
            uploader,
            qualified: format!("{}.{}", config.database, config.schema),
            database: config.database.clone(),
            place,
            policy: RetryPolicy::new(config.max_attempts),
            file_bytes: config.stage_file_kib as usize * 1024,
            tx: tokio::sync::RwLock::new(()),
            in_session: tokio::sync::Mutex::new(()),
        })
    }

    pub fn err(&self, what: &str, e: &SnowflakeApiError) -> Error {
        Error::backend(
            format!("snowflake {}: {what}: {e}", self.place),
            is_transient(e),
        )
    }

    /// Sends one statement in the session, after any other of this process
    /// has been answered: the session's statements go one at a time, in the
    /// order of their sequence numbers (fakesnow even refuses a second one
    /// while the first runs).
    pub async fn statement(
        &self,
        sql: &str,
    ) -> std::result::Result<QueryResult, SnowflakeApiError> {
        let _one = self.in_session.lock().await;
        self.api.exec(sql).await
    }

    /// One statement, once.
    pub async fn exec_once(&self, what: &str, sql: &str) -> Result<Rows> {
        let result = self.statement(sql).await.map_err(|e| self.err(what, &e))?;
        result_rows(result)
    }

    /// One statement, run again on transient errors with capped exponential
    /// backoff and jitter; permanent errors fail at once.
    pub async fn exec(&self, what: &str, sql: &str) -> Result<Rows> {
        let result = self
            .policy
            .run(&Transient, "snowflake", what, || self.statement(sql))
            .await
            .map_err(|e| self.err(what, &e))?;
        result_rows(result)
    }

    /// A read: waits for an open transaction of this session to end.
    pub async fn read(&self, what: &str, sql: &str) -> Result<Rows> {
        let _r = self.tx.read().await;
        self.exec(what, sql).await
    }

    pub fn table(&self, table: Table) -> String {
        format!("{}.{table}", self.qualified)
    }

    pub fn stage(&self, table: Table, tag: &str) -> String {
        format!("{}.{table}_stage_{tag}", self.qualified)
    }

    /// The table stage of a staging table, as PUT and COPY name it.
    pub fn table_stage(&self, table: Table, tag: &str) -> String {
        format!("{}.%{table}_stage_{tag}", self.qualified)
    }

    /// PUTs a finished staged file, retried as a whole (a new PUT gives
    /// fresh credentials; the upload overwrites a file of the same name).
    pub async fn put_file(&self, table: Table, tag: &str, name: &str, data: Vec<u8>) -> Result<()> {
        let data = bytes::Bytes::from(data);
        let stage = self.table_stage(table, tag);
        self.policy
            .run(&ErrorTransient, "snowflake", &format!("PUT {name}"), || {
                self.uploader.put(&stage, name, data.clone())
            })
            .await
    }

    /// Runs `statements` as one transaction. A failure before COMMIT rolls
    /// back and, if transient, the whole transaction runs again. A COMMIT
    /// whose answer was lost counts only if the run's record shows
    /// `status` (written inside the transaction).
    pub async fn transaction(
        &self,
        statements: &[String],
        run_id: &str,
        status: &str,
    ) -> Result<()> {
        let _w = self.tx.write().await;
        let attempt = || async {
            self.exec_once("begin transaction", "BEGIN TRANSACTION")
                .await?;
            for s in statements {
                if let Err(e) = self.exec_once("transaction", s).await {
                    let _ = self.exec_once("rollback", "ROLLBACK").await;
                    return Err(e);
                }
            }
            match self.exec_once("commit", "COMMIT").await {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Did it commit? The record written inside says so.
                    let _ = self.exec_once("rollback", "ROLLBACK").await;
                    match self.run_status(run_id).await {
                        Ok(Some(s)) if s == status => Ok(()),
                        _ => Err(e),
                    }
                }
            }
        };
        self.policy
            .run(&ErrorTransient, "snowflake", "transaction", attempt)
            .await
    }

    pub async fn run_status(&self, run_id: &str) -> Result<Option<String>> {
        let rows = self
            .exec(
                "read run status",
                &format!(
                    "SELECT status FROM {}.pipeline_runs WHERE run_id = {}",
                    self.qualified,
                    literal(run_id)
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    pub async fn count(&self, what: &str, sql: &str) -> Result<u64> {
        let rows = self.exec(what, sql).await?;
        let text = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_else(|| "0".into());
        text.parse()
            .map_err(|_| Error::internal(format!("snowflake returned {text:?} for a count")))
    }

    /// Reaches Snowflake once (a wrong host or credentials says so at
    /// once), then creates the database, schema and tables if missing, adds
    /// the columns later versions brought to `pipeline_runs` and fills a new
    /// `loaded_days`.
    pub async fn connect_and_create(&self) -> Result<()> {
        self.exec_once("cannot connect", "SELECT 1").await?;
        self.exec(
            "create database",
            &format!("CREATE DATABASE IF NOT EXISTS {}", self.database),
        )
        .await?;
        self.exec(
            "create schema",
            &format!("CREATE SCHEMA IF NOT EXISTS {}", self.qualified),
        )
        .await?;
        for t in Table::ALL {
            self.exec(
                "create tables",
                &format!(
                    "CREATE TABLE IF NOT EXISTS {} ({}){}",
                    self.table(t),
                    columns(t),
                    cluster(t)
                ),
            )
            .await?;
        }
        self.exec("create tables", &runs_table_sql(&self.qualified))
            .await?;
        self.exec("create tables", &loaded_days_sql(&self.qualified))
            .await?;
        // pipeline_runs of an older Quarry lacks the owner column.
        self.exec(
            "add pipeline_runs.owner",
            &format!(
                "ALTER TABLE {}.pipeline_runs ADD COLUMN IF NOT EXISTS owner VARCHAR",
                self.qualified
            ),
        )
        .await?;
        // A schema of an older Quarry records the days it holds, once; the
        // look at the tiny loaded_days spares the scan of trades after.
        let days = self
            .count(
                "inspect loaded_days",
                &format!(
                    "SELECT TO_VARCHAR(COUNT(*)) FROM (SELECT 1 FROM {}.loaded_days LIMIT 1)",
                    self.qualified
                ),
            )
            .await?;
        if days == 0 {
            self.exec("backfill loaded_days", &backfill_days_sql(&self.qualified))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let api = |code: &str| SnowflakeApiError::ApiError(code.into(), "m".into());
        assert!(!is_transient(&api("002003")), "object does not exist");
        assert!(!is_transient(&api("001003")), "SQL compilation error");
        assert!(is_transient(&api("000625")));
        let status = |s: u16| {
            SnowflakeApiError::RequestError(
                snowflake_api::connection::ConnectionError::RequestMiddlewareError(
                    reqwest_middleware::Error::Middleware(anyhow::Error::new(HttpStatus {
                        status: s,
                        path: "/".into(),
                        body: String::new(),
                    })),
                ),
            )
        };
        assert!(is_transient(&status(503)));
        assert!(is_transient(&status(429)));
        assert!(!is_transient(&status(403)));
    }
}
