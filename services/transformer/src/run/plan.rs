//! The first phase of a run: it begins with the loader, then the extractor
//! plans its splits and the client hears that the run has started.

use std::sync::atomic::Ordering;
use std::time::Instant;

use quarry_core::grpc::AuthChannel;
use quarry_core::run::is_postgres_source;
use quarry_core::{Error, Result, RunStatus, flight, grpc};
use quarry_lineage::EventType;
use quarry_proto::loader_service_client::LoaderServiceClient;
use quarry_proto::{
    BeginRunRequest, ExtractCommand, ExtractPlan, ExtractTicket, ListRunsRequest, RunEvent,
    RunStarted, SourceFormat, run_event,
};
use quarry_transform::quality::FileFacts;
use tonic::transport::Channel;
use tracing::info;

use super::{Events, Run, flight_client, from_flight};

/// How many recent runs are searched for the last cursor of a source.
const CURSOR_HISTORY: u32 = 1000;

impl Run {
    /// Begins the run with the loader, with the options it runs under.
    pub(super) async fn begin(&self, loader: &mut LoaderServiceClient<AuthChannel>) -> Result<()> {
        let options_json = serde_json::json!({
            "dedup": self.dedup,
            "load_raw_trades": self.load_raw_trades,
            "mode": self.mode.as_str(),
            "format": SourceFormat::try_from(self.req.format).unwrap_or_default().as_str_name(),
            "full_refresh": self.full_refresh,
        })
        .to_string();
        let begun = loader
            .begin_run(BeginRunRequest {
                run_id: self.run_id.clone(),
                source: self.req.source.clone(),
                options_json,
            })
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        if !begun.dataset_namespace.is_empty() {
            *self.datasets.lock().expect("datasets lock") =
                (begun.dataset_namespace, begun.dataset_prefix);
        }
        self.emit_lineage(EventType::Start, None);
        Ok(())
    }

    /// The cursor value the last committed run of this PostgreSQL source
    /// read through (recorded in its quality report, committed with its
    /// data). None for other sources, for a full refresh, and when no
    /// succeeded run of the source is among the last `CURSOR_HISTORY` runs:
    /// the extractor then reads the whole source, which is slower but never
    /// wrong, as it always reads whole days.
    pub(super) async fn last_cursor(
        &self,
        loader: &mut LoaderServiceClient<AuthChannel>,
    ) -> Result<Option<String>> {
        if self.full_refresh || !is_postgres_source(&self.req.source) {
            return Ok(None);
        }
        let runs = loader
            .list_runs(ListRunsRequest {
                limit: CURSOR_HISTORY,
            })
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner()
            .runs;
        let last = runs
            .iter()
            .filter(|r| r.status == RunStatus::Succeeded.as_str() && r.source == self.req.source)
            .max_by(|a, b| a.finished_at.cmp(&b.finished_at));
        Ok(last
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.quality_json).ok())
            .and_then(|q| q["cursor"]["through"].as_str().map(str::to_string))
            .filter(|t| !t.is_empty()))
    }

    /// Plan: the extractor resolves the source and checks every file's columns
    /// before a single row is read. Records the plan, sends the `Started`
    /// event, and returns the extractor's channel, the plan and its splits.
    pub(super) async fn plan(
        &self,
        events: &Events,
        cursor_after: Option<String>,
    ) -> Result<(Channel, ExtractPlan, Vec<ExtractTicket>)> {
        let t = Instant::now();
        let extractor =
            grpc::connect_with("extractor", &self.config.extractor_url, &self.security).await?;
        let info = flight_client(extractor.clone(), &self.security)
            .get_flight_info(flight::descriptor(&ExtractCommand {
                source: self.req.source.clone(),
                format: self.req.format,
                csv: self.req.csv.clone(),
                batch_rows: 0,
                cursor_after,
            }))
            .await
            .map_err(|e| from_flight("extractor", e))?;
        let plan: ExtractPlan = flight::decode("ExtractPlan", &info.app_metadata)?;
        let tickets: Vec<ExtractTicket> = info
            .endpoint
            .iter()
            .filter_map(|ep| ep.ticket.as_ref())
            .map(|t| flight::decode("ExtractTicket", &t.ticket))
            .collect::<Result<_>>()?;
        {
            let mut m = self.measures.lock().expect("measures lock");
            m.plan_ms = t.elapsed().as_millis() as u64;
            m.files = plan
                .files
                .iter()
                .map(|f| FileFacts {
                    file: f.file.clone(),
                    format: SourceFormat::try_from(f.format)
                        .unwrap_or_default()
                        .as_str_name()
                        .trim_start_matches("SOURCE_FORMAT_")
                        .to_ascii_lowercase(),
                    size_bytes: f.size_bytes,
                    extra_columns: f.extra_columns.clone(),
                })
                .collect();
            m.skipped_files = plan
                .skipped
                .iter()
                .map(|s| (s.file.clone(), s.reason.clone()))
                .collect();
            m.cursor = plan.cursor.clone();
        }
        self.counters
            .files_total
            .store(tickets.len() as u32, Ordering::Relaxed);
        events
            .send(Ok(RunEvent {
                event: Some(run_event::Event::Started(RunStarted {
                    run_id: self.run_id.clone(),
                    plan: Some(plan.clone()),
                })),
            }))
            .await
            .map_err(|_| Error::interrupted("the client cancelled the run"))?;
        info!(source = %self.req.source, files = tickets.len(), "run started");
        Ok((extractor, plan, tickets))
    }
}
