//! The books of the open runs: their heartbeat, the reaper of abandoned
//! runs, the recovery of runs left `running` by dead processes, and the
//! drain at shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_core::{Error, ErrorCategory, Result};
use quarry_warehouse::RunFailure;
use quarry_warehouse::owner::RunOwner;
use tracing::warn;

use crate::{Loader, OpenRun};

impl Loader {
    /// Refreshes the heartbeat of the open runs, so loaders elsewhere can
    /// tell them from runs whose process died.
    pub(crate) fn spawn_heartbeat(&self, period: Duration) {
        let weak = Arc::downgrade(&self.runs);
        let warehouse = self.warehouse.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(runs) = weak.upgrade() else { return };
                let open: Vec<String> = runs.lock().expect("runs lock").keys().cloned().collect();
                drop(runs);
                for run_id in open {
                    if let Err(e) = warehouse.heartbeat(&run_id).await {
                        warn!(run_id = %run_id, error = %e, "could not record the run's heartbeat");
                    }
                }
            }
        });
    }

    /// Records as failed (category `interrupted`) every run left `running`
    /// by a process that is gone; returns how many. A run open here is
    /// alive; one owned on this host is alive while its process is; for the
    /// others the warehouse decides (heartbeat, or SQLite's write lock).
    pub async fn recover_interrupted(&self) -> Result<usize> {
        let mut recovered = 0;
        for run in self.warehouse.running_runs().await? {
            if self
                .runs
                .lock()
                .expect("runs lock")
                .contains_key(&run.run_id)
            {
                continue;
            }
            let owner = RunOwner::parse(&run.owner_json);
            let gone = match &owner {
                Some(o) if o.loader == self.owner.loader => true,
                Some(o) if o.is_local() => !o.process_alive(),
                _ => !self.warehouse.may_still_run(&run, self.stale_after).await?,
            };
            if !gone {
                continue;
            }
            let who = owner.map_or("its process".to_string(), |o| o.describe());
            let message = format!(
                "run interrupted: {who} stopped before the run ended; nothing of it was committed"
            );
            warn!(run_id = %run.run_id, "{message}");
            self.warehouse
                .abort(RunFailure {
                    run_id: run.run_id.clone(),
                    category: ErrorCategory::Interrupted,
                    message,
                    stats: run.stats,
                    quality_json: String::new(),
                })
                .await?;
            recovered += 1;
        }
        Ok(recovered)
    }

    /// Aborts runs whose driver went away without committing or aborting.
    pub(crate) fn spawn_reaper(&self, idle: Duration) {
        let weak = Arc::downgrade(&self.runs);
        let warehouse = self.warehouse.clone();
        let metrics = self.metrics.clone();
        let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(runs) = weak.upgrade() else { return };
                let stale: Vec<String> = {
                    let mut map = runs.lock().expect("runs lock");
                    let ids: Vec<String> = map
                        .iter()
                        .filter(|(_, r)| r.last_activity.elapsed() > idle)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in &ids {
                        map.remove(id);
                    }
                    ids
                };
                for run_id in stale {
                    let message = format!("run abandoned: no activity for {} s", idle.as_secs());
                    warn!(run_id = %run_id, "{message}");
                    metrics.aborts.inc();
                    let _ = warehouse
                        .abort(RunFailure {
                            run_id,
                            category: ErrorCategory::Interrupted,
                            message,
                            stats: Default::default(),
                            quality_json: String::new(),
                        })
                        .await;
                }
            }
        });
    }

    /// Aborts every open run (not those committing: a commit is never cut).
    /// Their next `DoPut` batch then fails, which fails the run's driver.
    pub(crate) async fn abort_open_runs(&self, message: &str) {
        let open: Vec<String> = self
            .runs
            .lock()
            .expect("runs lock")
            .drain()
            .map(|(id, _)| id)
            .collect();
        self.run_closed.notify_waiters();
        for run_id in open {
            warn!(run_id = %run_id, "{message}");
            self.metrics.aborts.inc();
            let aborted = self
                .warehouse
                .abort(RunFailure {
                    run_id: run_id.clone(),
                    category: ErrorCategory::Interrupted,
                    message: message.to_string(),
                    stats: Default::default(),
                    quality_json: String::new(),
                })
                .await;
            if let Err(e) = aborted {
                warn!(run_id = %run_id, error = %e, "could not abort the run");
            }
        }
    }

    pub(crate) fn touch(&self, run_id: &str) -> Result<()> {
        let mut runs = self.runs.lock().expect("runs lock");
        match runs.get_mut(run_id) {
            Some(r) => {
                r.last_activity = Instant::now();
                Ok(())
            }
            None => Err(Error::config(format!(
                "run {run_id} is not open on this loader (never begun, already finished, or abandoned)"
            ))),
        }
    }

    pub(crate) fn close(&self, run_id: &str) -> Option<OpenRun> {
        let closed = self.runs.lock().expect("runs lock").remove(run_id);
        self.run_closed.notify_waiters();
        closed
    }

    /// Resolves once no run is open.
    pub(crate) async fn all_runs_closed(&self) {
        loop {
            let closed = self.run_closed.notified();
            if self.runs.lock().expect("runs lock").is_empty() {
                return;
            }
            closed.await;
        }
    }
}
