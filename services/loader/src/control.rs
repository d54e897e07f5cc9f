//! The `LoaderService`: runs begin, commit and abort here, and the run
//! history and the aggregates are read back.

use std::sync::atomic::Ordering;
use std::time::Instant;

use quarry_core::{Error, ErrorCategory, Result};
use quarry_proto::loader_service_server::LoaderService;
use quarry_proto::{
    AbortRequest, AbortResponse, BeginRunRequest, BeginRunResponse, CommitRequest, CommitResponse,
    GetRunRequest, ListRunsRequest, ListRunsResponse, RunRecord, TopMetric, TopUsersRequest,
    TopUsersResponse, WeeklyTotalsRequest, WeeklyTotalsResponse,
};
use quarry_warehouse::{Metric, RunFailure, RunStart, TopUsersQuery};
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span, warn};

use crate::{Loader, OpenRun, wire};

fn check_run_id(run_id: &str) -> Result<()> {
    if run_id.is_empty()
        || run_id.len() > 64
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::input(format!(
            "run id {run_id:?} must be 1-64 characters of letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl LoaderService for Loader {
    async fn begin_run(
        &self,
        request: Request<BeginRunRequest>,
    ) -> std::result::Result<Response<BeginRunResponse>, Status> {
        let req = request.into_inner();
        check_run_id(&req.run_id)?;
        let span = info_span!("run", run_id = %req.run_id);
        async {
            if self.draining.load(Ordering::SeqCst) {
                return Err(Error::backend(
                    "the loader is shutting down: it takes no new runs; try another loader or later",
                    true,
                ));
            }
            let slot = tokio::time::timeout(self.begin_timeout, self.slot.clone().acquire_owned())
                .await
                .map_err(|_| {
                    Error::backend(
                        format!(
                            "the warehouse is busy with another run for over {} s; try again later",
                            self.begin_timeout.as_secs()
                        ),
                        true,
                    )
                })?
                .map_err(|_| Error::internal("loader is shutting down"))?;
            // Runs of dead processes are settled before a new one begins, so
            // the history never shows one running for ever.
            if let Err(e) = self.recover_interrupted().await {
                warn!(error = %e, "could not check for interrupted runs");
            }
            self.warehouse
                .begin_run(RunStart {
                    run_id: req.run_id.clone(),
                    source: req.source.clone(),
                    options_json: req.options_json.clone(),
                    owner_json: self.owner.to_json(),
                })
                .await?;
            self.runs.lock().expect("runs lock").insert(
                req.run_id.clone(),
                OpenRun {
                    _slot: slot,
                    last_activity: Instant::now(),
                },
            );
            info!(source = %req.source, "run begun");
            let (dataset_namespace, dataset_prefix) = self.datasets.as_ref().clone();
            Ok::<_, Error>(Response::new(BeginRunResponse {
                dataset_namespace,
                dataset_prefix,
            }))
        }
        .instrument(span)
        .await
        .inspect_err(|e| self.metrics.errors.count(e))
        .map_err(Into::into)
    }

    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> std::result::Result<Response<CommitResponse>, Status> {
        let req = request.into_inner();
        let span = info_span!("run", run_id = %req.run_id);
        async {
            let started = Instant::now();
            // A malformed request leaves the run open: its driver aborts it.
            let run_id = req.run_id.clone();
            let commit = wire::commit(req)?;
            let open = self
                .close(&run_id)
                .ok_or_else(|| Error::config(format!("run {run_id} is not open on this loader")))?;
            let result = self.warehouse.commit(commit).await;
            drop(open); // the next run may begin
            let rows = result.inspect_err(|e| warn!(error = %e, "commit failed"))?;
            info!(rows = ?rows, "run committed");
            self.metrics.commits.inc();
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            for (table, n) in &rows {
                self.metrics
                    .rows_loaded
                    .with_label_values(&[table.as_str()])
                    .inc_by(*n);
            }
            Ok::<_, Error>(Response::new(CommitResponse {
                rows_committed: rows.into_iter().collect(),
                commit_ms: started.elapsed().as_millis() as u64,
            }))
        }
        .instrument(span)
        .await
        .inspect_err(|e| self.metrics.errors.count(e))
        .map_err(Into::into)
    }

    async fn abort(
        &self,
        request: Request<AbortRequest>,
    ) -> std::result::Result<Response<AbortResponse>, Status> {
        let req = request.into_inner();
        check_run_id(&req.run_id)?;
        let span = info_span!("run", run_id = %req.run_id);
        async {
            let open = self.close(&req.run_id);
            let category =
                ErrorCategory::parse(&req.error_category).unwrap_or(ErrorCategory::Internal);
            let result = self
                .warehouse
                .abort(RunFailure {
                    run_id: req.run_id.clone(),
                    category,
                    message: req.error_message.clone(),
                    stats: wire::stats(req.stats),
                    quality_json: req.quality_json.clone(),
                })
                .await;
            drop(open);
            result?;
            self.metrics.aborts.inc();
            warn!(category = %category, error = %req.error_message, "run aborted");
            Ok::<_, Error>(Response::new(AbortResponse {}))
        }
        .instrument(span)
        .await
        .inspect_err(|e| self.metrics.errors.count(e))
        .map_err(Into::into)
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> std::result::Result<Response<ListRunsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 20,
            n => n,
        };
        let runs = self.warehouse.list_runs(limit).await?;
        Ok(Response::new(ListRunsResponse {
            runs: runs.into_iter().map(wire::run).collect(),
        }))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> std::result::Result<Response<RunRecord>, Status> {
        let run_id = request.into_inner().run_id;
        match self.warehouse.get_run(&run_id).await? {
            Some(r) => Ok(Response::new(wire::run(r))),
            None => Err(Status::not_found(format!("no run {run_id}"))),
        }
    }

    async fn top_users(
        &self,
        request: Request<TopUsersRequest>,
    ) -> std::result::Result<Response<TopUsersResponse>, Status> {
        let req = request.into_inner();
        let metric = match TopMetric::try_from(req.metric) {
            Ok(TopMetric::Pnl) => Metric::Pnl,
            Ok(TopMetric::Volume) | Ok(TopMetric::Unspecified) => Metric::Volume,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown metric {}",
                    req.metric
                )));
            }
        };
        let client_type = req.client_type.trim().to_ascii_lowercase();
        if !["gold", "silver", "bronze"].contains(&client_type.as_str()) {
            return Err(Status::invalid_argument(format!(
                "client type {:?} is not gold, silver or bronze",
                req.client_type
            )));
        }
        let users = self
            .warehouse
            .top_users(&TopUsersQuery {
                client_type,
                metric,
                limit: if req.limit == 0 { 3 } else { req.limit },
            })
            .await?;
        Ok(Response::new(TopUsersResponse {
            users: users
                .into_iter()
                .map(|u| quarry_proto::TopUser {
                    user_id: u.user_id,
                    value: u.value,
                })
                .collect(),
        }))
    }

    async fn weekly_totals(
        &self,
        _request: Request<WeeklyTotalsRequest>,
    ) -> std::result::Result<Response<WeeklyTotalsResponse>, Status> {
        let totals = self.warehouse.weekly_totals().await?;
        Ok(Response::new(WeeklyTotalsResponse {
            totals: totals.into_iter().map(wire::weekly_total).collect(),
        }))
    }
}
