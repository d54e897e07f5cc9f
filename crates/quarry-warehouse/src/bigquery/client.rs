//! Talking to BigQuery: queries and scripts to completion (every page),
//! load jobs (multipart upload, job ids reused on retry), job polling, and
//! the classification of its errors. The REST API may answer HTTP 200 with
//! an `errors` array or a job whose status carries an `errorResult`: every
//! response is checked.

use std::sync::Arc;
use std::time::Duration;

use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_row::TableRow;
use quarry_core::config::BigQueryConfig;
use quarry_core::{Error, Result, Table};
use serde::Serialize;

use super::auth::CredentialsError;
use super::sql::{backfill_days_sql, literal, tables_sql};
use crate::retry::{RetryLogic, RetryPolicy};

/// Error reasons worth another attempt (BigQuery's troubleshooting guide).
const TRANSIENT_REASONS: [&str; 5] = [
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "jobRateLimitExceeded",
    "jobBackendError",
];

/// How long one jobs.query / getQueryResults call waits for a job.
const WAIT_MS: i32 = 30_000;

/// A failed request, classified.
#[derive(Debug)]
pub(super) struct Fail {
    pub message: String,
    pub transient: bool,
}

impl Fail {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }

    /// From the `errors` of a response or a job's `errorResult`: transient
    /// only if every reason is.
    fn from_protos<'a>(errors: impl IntoIterator<Item = &'a ErrorProto>) -> Self {
        let mut reasons = vec![];
        let mut messages = vec![];
        for e in errors {
            reasons.push(e.reason.clone().unwrap_or_default());
            messages.push(e.message.clone().unwrap_or_default());
        }
        let transient = !reasons.is_empty()
            && reasons
                .iter()
                .all(|r| TRANSIENT_REASONS.contains(&r.as_str()));
        messages.dedup();
        Self {
            message: format!("{}: {}", reasons.join(","), messages.join("; ")),
            transient,
        }
    }

    /// From an HTTP error response body (`{"error": {code, message, errors}}`).
    fn from_http(status: u16, body: &str) -> Self {
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let message = err
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| body.chars().take(300).collect());
        let reasons: Vec<String> = err
            .and_then(|e| e.get("errors"))
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("reason")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            transient: http_transient(status.into(), &reasons),
            message: format!("HTTP {status} {}: {message}", reasons.join(",")),
        }
    }
}

fn http_transient(code: i64, reasons: &[String]) -> bool {
    code >= 500
        || code == 429
        || reasons
            .iter()
            .any(|r| TRANSIENT_REASONS.contains(&r.as_str()))
}

impl From<BQError> for Fail {
    fn from(e: BQError) -> Self {
        match &e {
            BQError::RequestError(r) => Self {
                transient: r.is_connect()
                    || r.is_timeout()
                    || r.is_request()
                    || r.status()
                        .is_some_and(|s| s.is_server_error() || s.as_u16() == 429),
                message: quarry_core::error::with_sources(r),
            },
            BQError::ResponseError { error } => {
                let reasons: Vec<String> = error
                    .error
                    .errors
                    .iter()
                    .filter_map(|m| m.get("reason").cloned())
                    .collect();
                Self {
                    transient: http_transient(error.error.code, &reasons),
                    message: format!(
                        "HTTP {} {}: {}",
                        error.error.code,
                        reasons.join(","),
                        error.error.message
                    ),
                }
            }
            // Credentials that do not work are not retried; a metadata
            // server not answering yet is.
            _ => match CredentialsError::of(&e) {
                Some(c) => Self {
                    message: c.to_string(),
                    transient: c.transient,
                },
                None => Self::permanent(e.to_string()),
            },
        }
    }
}

impl From<reqwest::Error> for Fail {
    fn from(r: reqwest::Error) -> Self {
        Self {
            transient: r.is_connect() || r.is_timeout() || r.is_request(),
            message: quarry_core::error::with_sources(&r),
        }
    }
}

/// Failures BigQuery marks transient are retried.
pub(super) struct Transient;

impl RetryLogic for Transient {
    type Error = Fail;

    fn is_retriable(&self, f: &Fail) -> bool {
        f.transient
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a query returned: rows of nullable text cells, and the rows a DML
/// statement touched.
pub(super) struct QueryOut {
    pub rows: Vec<Vec<Option<String>>>,
    pub affected: Option<u64>,
}

fn cells(rows: Option<Vec<TableRow>>) -> impl Iterator<Item = Vec<Option<String>>> {
    rows.unwrap_or_default().into_iter().map(|r| {
        r.columns
            .unwrap_or_default()
            .into_iter()
            .map(|c| match c.value {
                Some(serde_json::Value::String(s)) => Some(s),
                Some(serde_json::Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            })
            .collect()
    })
}

#[derive(Serialize)]

/// One load job's worth of rows for a staging table.
pub(super) struct Load {
    pub table_id: String,
    pub job_id: String,
    pub data: Vec<u8>,
}

/// A project's dataset and how to reach it.
pub(super) struct BigQuery {
    pub project: String,
    pub dataset: String,
    location: String,
    api_url: String,
    policy: RetryPolicy,
    auth: Arc<dyn Authenticator>,
    client: tokio::sync::OnceCell<gcp_bigquery_client::Client>,
    http: reqwest::Client,
}

impl BigQuery {
    pub fn new(config: &BigQueryConfig, auth: Arc<dyn Authenticator>) -> Self {
        Self {
            project: config.project.clone(),
            dataset: config.dataset.clone(),
            location: config.location.clone(),
            api_url: config.api_url.trim_end_matches('/').to_string(),
            policy: RetryPolicy::new(config.max_attempts),
            auth,
            client: tokio::sync::OnceCell::new(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn client(&self) -> std::result::Result<&gcp_bigquery_client::Client, Fail> {
        self.client
            .get_or_try_init(|| async {
                gcp_bigquery_client::client_builder::ClientBuilder::new()
                    .with_v2_base_url(format!("{}/bigquery/v2", self.api_url))
                    .with_client(self.http.clone())
                    .build_from_authenticator(self.auth.clone())
                    .await
            })
            .await
            .map_err(Fail::from)
    }

    /// A table of the dataset, quoted for SQL.
    pub fn table(&self, name: &str) -> String {
        format!("`{}.{}.{name}`", self.project, self.dataset)
    }

    pub fn stage(&self, table: Table, tag: &str) -> String {
        self.table(&format!("{table}_stage_{tag}"))
    }

    pub fn err(&self, what: &str, f: Fail) -> Error {
        // One line, whatever the backend's message holds.
        let message = f.message.split_whitespace().collect::<Vec<_>>().join(" ");
        Error::backend(
            format!(
                "bigquery {}.{} at {}: {what}: {message}",
                self.project, self.dataset, self.api_url
            ),
            f.transient,
        )
    }

    /// Runs `op` again on transient errors (the retry policy); permanent
    /// errors fail at once.
    pub async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Fail>>,
    {
        self.policy
            .run(&Transient, "bigquery", what, op)
            .await
            .map_err(|f| self.err(what, f))
    }

    /// One query or script, to completion, every page of its result.
    pub async fn query_once(&self, sql: &str) -> std::result::Result<QueryOut, Fail> {
        let client = self.client().await?;
        let mut req = QueryRequest::new(sql);
        req.use_legacy_sql = false;
        req.location = Some(self.location.clone());
        req.timeout_ms = Some(WAIT_MS);
        let resp = client.job().query(&self.project, req).await?;
        if let Some(errors) = resp.errors.as_ref().filter(|e| !e.is_empty()) {
            return Err(Fail::from_protos(errors));
        }
        let mut rows: Vec<Vec<Option<String>>> = cells(resp.rows).collect();
        let mut affected = resp.num_dml_affected_rows.and_then(|n| n.parse().ok());
        let mut complete = resp.job_complete == Some(true);
        let mut page_token = resp.page_token;
        if complete && page_token.is_none() {
            return Ok(QueryOut { rows, affected });
        }
        let job_id = resp
            .job_reference
            .and_then(|r| r.job_id)
            .ok_or_else(|| Fail::permanent("the query response names no job"))?;
        while !complete || page_token.is_some() {
            let r = client
                .job()
                .get_query_results(
                    &self.project,
                    &job_id,
                    GetQueryResultsParameters {
                        location: Some(self.location.clone()),
                        page_token: page_token.clone(),
                        timeout_ms: Some(WAIT_MS),
                        ..Default::default()
                    },
                )
                .await?;
            if let Some(errors) = r.errors.as_ref().filter(|e| !e.is_empty()) {
                return Err(Fail::from_protos(errors));
            }
            if r.job_complete != Some(true) {
                continue;
            }
            if !complete {
                // The first complete answer repeats the first page.
                rows.clear();
                complete = true;
            }
            rows.extend(cells(r.rows));
            affected = affected.or(r.num_dml_affected_rows.and_then(|n| n.parse().ok()));
            page_token = r.page_token;
        }
        Ok(QueryOut { rows, affected })
    }

    pub async fn query(&self, what: &str, sql: &str) -> Result<QueryOut> {
        self.retry(what, || self.query_once(sql)).await
    }

    pub async fn rows(&self, what: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        Ok(self.query(what, sql).await?.rows)
    }

    pub async fn count(&self, what: &str, sql: &str) -> Result<u64> {
        let rows = self.rows(what, sql).await?;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::internal(format!("bigquery: {what}: no count returned")))
    }

    /// Loads newline-delimited JSON into `table_id` (appending) with one load
    /// job, uploaded in the request (multipart), and waits for it; returns
    /// the rows the job wrote. A retry reuses the job id, so a job that was
    /// created before the connection broke is waited for, not run twice.
    async fn load_once(
        &self,
        table_id: &str,
        job_id: &str,
        data: &[u8],
    ) -> std::result::Result<u64, Fail> {
        let token = self.auth.access_token().await?;
        let job = serde_json::json!({
            "jobReference": {
                "projectId": self.project,
                "jobId": job_id,
                "location": self.location,
            },
            "configuration": {"load": {
                "destinationTable": {
                    "projectId": self.project,
                    "datasetId": self.dataset,
                    "tableId": table_id,
                },
                "sourceFormat": "NEWLINE_DELIMITED_JSON",
                "writeDisposition": "WRITE_APPEND",
                "createDisposition": "CREATE_NEVER",
            }},
        });
        let boundary = format!("quarry_{job_id}");
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{job}\r\n\
             --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let mut body = Vec::with_capacity(head.len() + data.len() + tail.len());
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(tail.as_bytes());
        let resp = self
            .http
            .post(format!(
                "{}/upload/bigquery/v2/projects/{}/jobs?uploadType=multipart",
                self.api_url, self.project
            ))
            .bearer_auth(token)
            .header(
                "Content-Type",
                format!("multipart/related; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let started_id = if status == 409 {
            // Created by an earlier attempt whose answer was lost.
            job_id.to_string()
        } else if (200..300).contains(&status) {
            let job: Job = serde_json::from_str(&text)
                .map_err(|e| Fail::permanent(format!("unreadable load job answer: {e}")))?;
            job.job_reference
                .and_then(|r| r.job_id)
                .unwrap_or_else(|| job_id.to_string())
        } else {
            return Err(Fail::from_http(status, &text));
        };
        self.wait_for_job(&started_id).await
    }

    /// Runs one load job, retried (with the same job id) on transient errors.
    pub async fn load(&self, load: &Load) -> Result<()> {
        // What the staging table holds is checked once, at commit: the
        // emulator reports the table's total as a job's outputRows.
        let started = std::time::Instant::now();
        self.retry(&format!("load into {}", load.table_id), || {
            self.load_once(&load.table_id, &load.job_id, &load.data)
        })
        .await?;
        tracing::debug!(
            job_id = %load.job_id,
            rows = load.data.iter().filter(|b| **b == b'\n').count(),
            bytes = load.data.len(),
            ms = started.elapsed().as_millis() as u64,
            "bigquery: loaded"
        );
        Ok(())
    }

    /// Polls a job until it is done; its `errorResult` fails it. Returns the
    /// rows a load job wrote.
    async fn wait_for_job(&self, job_id: &str) -> std::result::Result<u64, Fail> {
        let client = self.client().await?;
        let mut pause = Duration::from_millis(50);
        loop {
            let job = client
                .job()
                .get_job(&self.project, job_id, Some(&self.location))
                .await?;
            let status = job.status.unwrap_or_default();
            if status.state.as_deref() == Some("DONE") {
                if let Some(e) = status.error_result {
                    return Err(Fail::from_protos(std::iter::once(&e)));
                }
                return Ok(job
                    .statistics
                    .and_then(|s| s.load)
                    .and_then(|l| l.output_rows)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Reaches BigQuery once (a wrong endpoint, credentials or project
    /// says so at once), then creates the dataset and the tables if missing,
    /// adds the columns later versions brought to `pipeline_runs` and fills
    /// a new `loaded_days`.
    pub async fn connect_and_create(&self) -> Result<()> {
        self.query_once("SELECT 1")
            .await
            .map_err(|f| self.err("cannot connect", f))?;
        // Created only when missing: creating needs more than writing into it.
        let exists = self
            .retry("look up dataset", || async {
                let client = self.client().await?;
                match client.dataset().get(&self.project, &self.dataset).await {
                    Ok(_) => Ok(true),
                    Err(BQError::ResponseError { error }) if error.error.code == 404 => Ok(false),
                    Err(e) => Err(Fail::from(e)),
                }
            })
            .await?;
        if !exists {
            let create = format!(
                "CREATE SCHEMA IF NOT EXISTS `{}.{}` OPTIONS (location = {})",
                self.project,
                self.dataset,
                literal(&self.location)
            );
            self.query("create dataset", &create).await?;
        }
        let ds = format!("`{}.{}`", self.project, self.dataset);
        for sql in tables_sql(&ds) {
            self.query("create tables", &sql).await?;
        }
        // A dataset of an older Quarry records the days it holds, once; the
        // look at the tiny loaded_days spares the scan of trades after.
        let days = self
            .count(
                "inspect loaded_days",
                &format!(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM {} LIMIT 1)",
                    self.table("loaded_days")
                ),
            )
            .await?;
        if days == 0 {
            self.query("backfill loaded_days", &backfill_days_sql(&ds))
                .await?;
        }
        // pipeline_runs of an older Quarry lacks the owner column.
        self.query(
            "add pipeline_runs.owner",
            &format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS owner STRING",
                self.table("pipeline_runs")
            ),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let proto = |reason: &str| ErrorProto {
            reason: Some(reason.into()),
            message: Some(format!("{reason} happened")),
            ..Default::default()
        };
        assert!(Fail::from_protos(&[proto("rateLimitExceeded")]).transient);
        assert!(Fail::from_protos(&[proto("backendError")]).transient);
        let f = Fail::from_protos(&[proto("notFound")]);
        assert!(!f.transient);
        assert!(f.message.contains("notFound happened"), "{}", f.message);
        assert!(!Fail::from_protos(&[proto("invalidQuery"), proto("backendError")]).transient);
        assert!(Fail::from_http(503, "<html>unavailable</html>").transient);
        assert!(Fail::from_http(429, "{}").transient);
        let f = Fail::from_http(
            403,
            r#"{"error":{"code":403,"message":"Access Denied","errors":[{"reason":"accessDenied"}]}}"#,
        );
        assert!(!f.transient);
        assert!(f.message.contains("Access Denied"), "{}", f.message);
        assert!(
            Fail::from_http(
                403,
                r#"{"error":{"code":403,"message":"Exceeded rate limits","errors":[{"reason":"rateLimitExceeded"}]}}"#,
            )
            .transient
        );
    }
}
