//! The aggregate phase of a run: the aggregate rows stream to the loader
//! (in ETL; in ELT the warehouse computes them at commit) while the
//! duplicates are counted, then the quality checks decide whether the run
//! may commit.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use quarry_core::config::Severity;
use quarry_core::grpc::AuthChannel;
use quarry_core::{Error, Result, RunMode, Table};
use quarry_proto::ListRunsRequest;
use quarry_proto::loader_service_client::LoaderServiceClient;
use quarry_transform::aggregate::AggBatches;
use quarry_transform::checks::{self, CheckInput, ClientMeans, Outcome};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{Instrument, warn};

use super::stream::{Streamed, put_table};
use super::{Run, flight_client};

impl Run {
    /// Loads the aggregate rows and runs the quality checks; fails the run
    /// if the loader did not take every row or a check at `error` failed.
    pub(super) async fn aggregate(
        &self,
        loader_channel: &Channel,
        loader: &mut LoaderServiceClient<AuthChannel>,
        streamed: Streamed,
    ) -> Result<()> {
        let Streamed {
            aggregator,
            mut rows_sent,
            load_wait,
        } = streamed;
        // Aggregates: the accumulator now holds every group.
        self.counters.set_stage("aggregating");
        let aggregator =
            Arc::try_unwrap(aggregator).map_err(|_| Error::internal("aggregator still shared"))?;
        // The duplicate count (an external sort) runs beside the aggregate
        // output, whose pace the warehouse sets.
        let (batches, duplicates, profile) = aggregator.into_batches(65_536);
        let count = tokio::task::spawn_blocking(move || duplicates.count());
        let (history, loaded) = tokio::join!(
            self.history(loader),
            self.load_aggregate(loader_channel, batches)
        );
        let (agg_rows, agg_trade_count) = match loaded? {
            Some((agg_rows, agg_trade_count)) => {
                rows_sent.insert(Table::AggTradesWeekly, agg_rows);
                (agg_rows, agg_trade_count)
            }
            // ELT: the warehouse aggregates exactly the trades it was sent.
            None => (
                0,
                rows_sent.get(&Table::Trades).copied().unwrap_or_default(),
            ),
        };
        let duplicates = count
            .await
            .map_err(|e| Error::internal(format!("aggregation task: {e}")))??;
        {
            let mut m = self.measures.lock().expect("measures lock");
            m.duplicates = duplicates;
            m.agg_rows = agg_rows;
            m.load_ms = load_wait.elapsed().as_millis() as u64;
            m.rows_staged = rows_sent
                .iter()
                .map(|(t, n)| (t.name().to_string(), *n))
                .collect();
            m.checks = checks::evaluate(
                &self.config.quality,
                &CheckInput {
                    stats: &m.stats,
                    duplicates: duplicates.exact,
                    dedup: self.dedup,
                    key_duplicates: duplicates.key,
                    agg_trade_count,
                    profile: &profile,
                    run_started: self.started_at,
                    history: &history,
                },
            );
            m.profile = profile;
            for c in m.checks.iter().filter(|c| c.outcome == Outcome::Warn) {
                warn!(check = %c.check, "quality warning: {}", c.describe());
            }
            if let Some(failed) = checks::failures(&m.checks) {
                return Err(Error::quality(failed));
            }
        }
        Ok(())
    }

    /// Streams the aggregate rows to the loader; returns how many rows it
    /// took and their Σ trade_count. None in ELT: nothing is sent, the
    /// warehouse computes the weeks inside the commit.
    async fn load_aggregate(
        &self,
        loader_channel: &Channel,
        batches: AggBatches,
    ) -> Result<Option<(u64, u64)>> {
        if self.mode == RunMode::Elt {
            return Ok(None);
        }
        let (agg_tx, agg_rx) = mpsc::channel::<RecordBatch>(4);
        let put_agg = tokio::spawn(
            put_table(
                flight_client(loader_channel.clone(), &self.security),
                self.run_id.clone(),
                Table::AggTradesWeekly,
                agg_rx,
            )
            .in_current_span(),
        );
        let produce = tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
            let (mut rows, mut trades) = (0, 0);
            for batch in batches {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                let counts = batch.column(6).as_primitive::<Int64Type>();
                trades += counts.values().iter().map(|c| *c as u64).sum::<u64>();
                if agg_tx.blocking_send(batch).is_err() {
                    break; // the put failed; its error is reported below
                }
            }
            Ok((rows, trades))
        });
        let (agg_rows, agg_trade_count) = produce
            .await
            .map_err(|e| Error::internal(format!("aggregation task: {e}")))??;
        let (_, agg_sent) = put_agg
            .await
            .map_err(|e| Error::internal(format!("DoPut task: {e}")).with_source(e))??;
        if agg_sent != agg_rows {
            return Err(Error::internal(format!(
                "loader acknowledged {agg_sent} of {agg_rows} aggregate rows"
            )));
        }
        Ok(Some((agg_rows, agg_trade_count)))
    }

    /// Per-day means of the earlier succeeded runs, newest first, for the
    /// consistency check. Runs without them (or an unreadable history) count
    /// as no history: the check is then skipped, never failed.
    async fn history(&self, loader: &mut LoaderServiceClient<AuthChannel>) -> Vec<ClientMeans> {
        let q = &self.config.quality;
        if q.consistency.severity == Severity::Off {
            return vec![];
        }
        let runs = match loader
            .list_runs(ListRunsRequest {
                limit: q.history_runs.saturating_mul(4).max(q.history_runs),
            })
            .await
        {
            Ok(r) => r.into_inner().runs,
            Err(s) => {
                warn!(error = %s.message(), "cannot read earlier runs for the consistency check");
                return vec![];
            }
        };
        runs.iter()
            .filter(|r| r.status == "succeeded" && r.run_id != self.run_id)
            .filter_map(|r| {
                let v: serde_json::Value = serde_json::from_str(&r.quality_json).ok()?;
                serde_json::from_value(v.get("profile")?.get("per_day")?.clone()).ok()
            })
            .take(q.history_runs as usize)
            .collect()
    }
}
