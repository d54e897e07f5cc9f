//! Client side of a run: start it on a transformer, follow its progress,
//! then fetch its record and reports from the loader.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use quarry_core::grpc::{AuthChannel, Security};
use quarry_core::{Error, Result, RunStatus, grpc};
use quarry_proto::loader_service_client::LoaderServiceClient;
use quarry_proto::transformer_service_client::TransformerServiceClient;
use quarry_proto::{
    GetRunRequest, ListRunsRequest, RunEvent, RunRecord, RunRequest, RunSummary, TopMetric,
    TopUser, TopUsersRequest, WeeklyTotal, WeeklyTotalsRequest, run_event,
};

/// Runs the pipeline on a transformer; `on_event` sees every event.
pub async fn run_pipeline(
    transformer_url: &str,
    request: RunRequest,
    on_event: impl FnMut(&RunEvent),
) -> Result<RunSummary> {
    run_pipeline_with(transformer_url, &Security::default(), request, on_event).await
}

/// As [`run_pipeline`], over TLS and with the token of `security`.
pub async fn run_pipeline_with(
    transformer_url: &str,
    security: &Security,
    request: RunRequest,
    mut on_event: impl FnMut(&RunEvent),
) -> Result<RunSummary> {
    let channel = grpc::connect_with("transformer", transformer_url, security).await?;
    let mut client = TransformerServiceClient::new(security.authorize(channel))
        .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES);
    let failed = |s: tonic::Status| grpc::call_error("transformer", transformer_url, &s);
    let mut events = client.run(request).await.map_err(failed)?.into_inner();
    while let Some(event) = events.next().await {
        let event = event.map_err(failed)?;
        on_event(&event);
        if let Some(run_event::Event::Completed(summary)) = event.event {
            return Ok(summary);
        }
    }
    Err(Error::internal(
        "the transformer ended the run without a result",
    ))
}

/// The grpc.health.v1 status of a server (or of one of its services), e.g. `SERVING`.
pub async fn health(url: &str, service: &str) -> Result<String> {
    health_with(url, service, &Security::default()).await
}

/// As [`health`], over TLS when `security` says so (health needs no token).
pub async fn health_with(url: &str, service: &str, security: &Security) -> Result<String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = grpc::connect_with("service", url, security).await?;
    let reply = grpc::query(
        "service",
        url,
        security,
        tonic_health::pb::health_client::HealthClient::new(channel).check(
            tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            },
        ),
    )
    .await?;
    Ok(ServingStatus::try_from(reply.status)
        .map_or("UNKNOWN", |s| s.as_str_name())
        .to_string())
}

/// A loader's control service. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct LoaderClient {
    client: LoaderServiceClient<AuthChannel>,
    url: String,
    security: Security,
}

impl LoaderClient {
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &Security::default()).await
    }

    /// Connects over TLS and with the token and deadlines of `security`.
    pub async fn connect_with(url: &str, security: &Security) -> Result<Self> {
        let channel = grpc::connect_with("loader", url, security).await?;
        Ok(Self {
            client: LoaderServiceClient::new(security.authorize(channel))
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
            url: url.to_string(),
            security: security.clone(),
        })
    }

    pub async fn get_run(&mut self, run_id: &str) -> Result<RunRecord> {
        let request = GetRunRequest {
            run_id: run_id.to_string(),
        };
        grpc::query(
            "loader",
            &self.url,
            &self.security,
            self.client.get_run(request),
        )
        .await
    }

    pub async fn list_runs(&mut self, limit: u32) -> Result<Vec<RunRecord>> {
        let request = ListRunsRequest { limit };
        grpc::query(
            "loader",
            &self.url,
            &self.security,
            self.client.list_runs(request),
        )
        .await
        .map(|r| r.runs)
    }

    pub async fn top_users(
        &mut self,
        client_type: &str,
        metric: TopMetric,
        limit: u32,
    ) -> Result<Vec<TopUser>> {
        let request = TopUsersRequest {
            client_type: client_type.to_string(),
            metric: metric as i32,
            limit,
        };
        grpc::query(
            "loader",
            &self.url,
            &self.security,
            self.client.top_users(request),
        )
        .await
        .map(|r| r.users)
    }

    /// The top users of a client type by volume and by PnL, queried at the
    /// same time (the loader answers each on a core of its own).
    pub async fn top_by_volume_and_pnl(
        &self,
        client_type: &str,
        limit: u32,
    ) -> Result<(Vec<TopUser>, Vec<TopUser>)> {
        let (mut a, mut b) = (self.clone(), self.clone());
        tokio::try_join!(
            a.top_users(client_type, TopMetric::Volume, limit),
            b.top_users(client_type, TopMetric::Pnl, limit)
        )
    }

    pub async fn weekly_totals(&mut self) -> Result<Vec<WeeklyTotal>> {
        grpc::query(
            "loader",
            &self.url,
            &self.security,
            self.client.weekly_totals(WeeklyTotalsRequest {}),
        )
        .await
        .map(|r| r.totals)
    }
}

pub fn metric_name(metric: TopMetric) -> &'static str {
    match metric {
        TopMetric::Pnl => "total_pnl",
        _ => "total_volume",
    }
}

/// A text cell a spreadsheet will not run as a formula: cells starting with
/// `=`, `+`, `-`, `@`, a tab or a carriage return get a leading `'` (the
/// OWASP advice for CSV injection). Only text columns need it; the amounts
/// are numbers Quarry formats itself.
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// Writes `user_id,<metric>` rows.
pub fn write_top_csv(path: &Path, metric: TopMetric, users: &[TopUser]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| Error::internal(format!("cannot format {}: {e}", path.display()));
    w.write_record(["user_id", metric_name(metric)])
        .map_err(csv_err)?;
    for u in users {
        w.write_record([spreadsheet_safe(&u.user_id).as_ref(), &u.value])
            .map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::internal(format!("cannot format {}: {e}", path.display())))?;
    write_replacing(path, &bytes)
}

/// Writes `path` whole or not at all: into a temporary file beside it, then
/// renamed over it. A reader never sees half a report, and a report left by
/// another user (a container's uid, then your own) is replaced whenever the
/// directory is writable, where truncating it in place would be refused.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let fail = |e: std::io::Error| {
        Error::config(format!("cannot write {}: {e}", path.display())).with_source(e)
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".quarry-report-");
    // The mode a plain create gives (0666 less the umask), not the 0600 of a
    // temporary file: reports are meant to be read by others.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut file = builder.tempfile_in(dir).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// The files `quarry run` leaves in the output directory.
pub struct Reports {
    pub top_by_volume: Vec<TopUser>,
    pub top_by_pnl: Vec<TopUser>,
    pub record: RunRecord,
    pub files: Vec<PathBuf>,
}

/// Reads the run and the top users back from the warehouse (not from memory)
/// and writes the report files.
pub async fn write_reports(
    loader: &mut LoaderClient,
    run_id: &str,
    output: &Path,
    client_type: &str,
    limit: u32,
) -> Result<Reports> {
    check_output(output, client_type)?;
    let record = loader.get_run(run_id).await?;
    let (top_by_volume, top_by_pnl) = loader.top_by_volume_and_pnl(client_type, limit).await?;
    let [vol, pnl, quality] = report_files(output, client_type);
    write_top_csv(&vol, TopMetric::Volume, &top_by_volume)?;
    write_top_csv(&pnl, TopMetric::Pnl, &top_by_pnl)?;
    let json = quality_report(&record);
    write_replacing(
        &quality,
        (serde_json::to_string_pretty(&json).unwrap_or_default() + "\n").as_bytes(),
    )?;
    Ok(Reports {
        top_by_volume,
        top_by_pnl,
        record,
        files: vec![vol, pnl, quality],
    })
}

/// The files `quarry run` writes into `output`.
fn report_files(output: &Path, client_type: &str) -> [PathBuf; 3] {
    [
        output.join(format!("top_{client_type}_by_volume.csv")),
        output.join(format!("top_{client_type}_by_pnl.csv")),
        output.join("quality_report.json"),
    ]
}

/// Makes sure the report files can be written into `output`, creating the
/// directory if needed. Called before a run starts, so a bad output
/// location fails the command before anything is committed.
pub fn check_output(output: &Path, client_type: &str) -> Result<()> {
    let bad = |what: String| {
        Error::config(format!(
            "cannot write reports to {}: {what}",
            output.display()
        ))
    };
    std::fs::create_dir_all(output).map_err(|e| bad(e.to_string()))?;
    for f in report_files(output, client_type) {
        if f.exists() && !f.is_file() {
            return Err(bad(format!("{} is not a regular file", f.display())));
        }
    }
    let probe = output.join(format!(".quarry-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| bad(e.to_string()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The stored quality report of a run, with the run's own facts attached.
pub fn quality_report(record: &RunRecord) -> serde_json::Value {
    let mut json: serde_json::Value =
        serde_json::from_str(&record.quality_json).unwrap_or_else(|_| serde_json::json!({}));
    let stats = record.stats.unwrap_or_default();
    json["run"] = serde_json::json!({
        "run_id": record.run_id,
        "status": record.status,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "rows_committed": record.rows_committed,
        "timings_ms": {
            "plan": stats.plan_ms,
            "extract": stats.extract_ms,
            "transform": stats.transform_ms,
            "load": stats.load_ms,
            "commit": stats.commit_ms,
            "total": stats.total_ms,
        },
    });
    // Staged (sent by the transformer) against committed (read back by the
    // warehouse inside the commit), and the data's age at commit.
    let committed: std::collections::BTreeMap<_, _> = record.rows_committed.iter().collect();
    let staged = json["rows_staged"].clone();
    let matches = RunStatus::Succeeded.is(&record.status)
        && serde_json::to_value(&committed).is_ok_and(|c| c == staged);
    json["reconciliation"] = serde_json::json!({
        "rows_staged": staged,
        "rows_committed": committed,
        "committed_equals_staged": matches,
    });
    let newest = json["profile"]["newest_trade"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let finished = chrono::DateTime::parse_from_rfc3339(&record.finished_at).ok();
    if let (Some(newest), Some(finished)) = (newest, finished) {
        json["profile"]["lag_hours_at_commit"] =
            serde_json::json!((finished - newest).num_seconds() as f64 / 3600.0);
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report file the current user may not write (as one left by a
    /// container's uid) is replaced, readable by others, and no temporary
    /// file stays behind.
    #[cfg(unix)]
    #[test]
    fn reports_are_replaced_whole_and_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("top_bronze_by_volume.csv");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        write_replacing(&path, b"user_id,total_volume\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "user_id,total_volume\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o044,
            0o044,
            "readable by group and others: {mode:o}"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["top_bronze_by_volume.csv"]);
    }
}
