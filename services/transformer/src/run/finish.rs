//! The end of a run: the commit, the abort that replaces it on any error,
//! and the last event the client hears.

use std::collections::BTreeSet;
use std::time::Instant;

use quarry_core::dates::date_text;
use quarry_core::grpc::AuthChannel;
use quarry_core::{Error, Result, RunMode};
use quarry_lineage::EventType;
use quarry_proto::loader_service_client::LoaderServiceClient;
use quarry_proto::{AbortRequest, CommitRequest, ExtractPlan, RunEvent, RunSummary, run_event};
use tonic::Status;
use tracing::{info, warn};

use super::{Events, Run, loader_client};

impl Run {
    /// Commit: the only point where the run becomes visible.
    pub(super) async fn commit(
        &self,
        loader: &mut LoaderServiceClient<AuthChannel>,
        plan: &ExtractPlan,
    ) -> Result<RunSummary> {
        self.counters.set_stage("committing");
        let t = Instant::now();
        let (stats, days) = {
            let m = self.measures.lock().expect("measures lock");
            // The days of the valid rows (a dropped duplicate shares its
            // day with the row kept): the partitions the commit replaces.
            let days: BTreeSet<i32> = m.profile.daily.keys().map(|(day, _)| *day).collect();
            (m.run_stats(self.started), days)
        };
        let mode = match self.mode {
            RunMode::Etl => quarry_proto::RunMode::Etl,
            RunMode::Elt => quarry_proto::RunMode::Elt,
        };
        let committed = loader
            .commit(CommitRequest {
                run_id: self.run_id.clone(),
                source_files: plan.files.iter().map(|f| f.file.clone()).collect(),
                stats: Some(stats),
                quality_json: self.quality_json(),
                mode: mode as i32,
                days: days.into_iter().map(date_text).collect(),
                raw_trades: self.load_raw_trades,
            })
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        let mut m = self.measures.lock().expect("measures lock");
        m.commit_ms = t.elapsed().as_millis() as u64;
        Ok(RunSummary {
            run_id: self.run_id.clone(),
            stats: Some(m.run_stats(self.started)),
            rows_committed: committed.rows_committed,
        })
    }

    /// Records the failure with the loader, which discards the staged data.
    async fn abort(&self, e: &Error) {
        let stats = self
            .measures
            .lock()
            .expect("measures lock")
            .run_stats(self.started);
        let req = AbortRequest {
            run_id: self.run_id.clone(),
            error_category: e.category().as_str().to_string(),
            error_message: e.to_string(),
            stats: Some(stats),
            quality_json: self.quality_json(),
        };
        match self
            .loader_channel()
            .await
            .map(|c| loader_client(c, &self.security))
        {
            Ok(mut l) => {
                if let Err(s) = l.abort(req).await {
                    warn!(error = %s.message(), "could not record the failed run with the loader");
                }
            }
            Err(err) => warn!(error = %err, "could not reach the loader to abort the run"),
        }
    }

    /// Sends the run's last events: the final progress and the summary, or
    /// the error naming the run (after the abort is recorded).
    pub(super) async fn report(&self, outcome: Result<RunSummary>, events: &Events) {
        match outcome {
            Ok(summary) => {
                self.metrics.runs_succeeded.inc();
                if let Some(stats) = &summary.stats {
                    self.metrics.observe_stages(stats);
                }
                info!(
                    rows_in = summary.stats.as_ref().map(|s| s.rows_in),
                    "run succeeded"
                );
                self.emit_lineage(EventType::Complete, None);
                let _ = events.send(Ok(self.counters.progress(self.started))).await;
                let _ = events
                    .send(Ok(RunEvent {
                        event: Some(run_event::Event::Completed(summary)),
                    }))
                    .await;
            }
            Err(e) => {
                warn!(category = %e.category(), error = %e, "run failed");
                self.metrics.runs_failed.inc();
                self.metrics.errors.count(&e);
                self.abort(&e).await;
                let message = format!("run {} failed ({}): {}", self.run_id, e.category(), e);
                self.emit_lineage(EventType::Fail, Some(&message));
                let _ = events
                    .send(Err(Status::from(e.with_message(message))))
                    .await;
            }
        }
    }
}
