//! The stream phase of a run: the splits are read from the extractor,
//! validated and folded into the aggregate (in ETL) as they arrive, while their
//! `trades` and `trades_rejected` rows stream to the loader, one DoPut per
//! table.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow_flight::FlightClient;
use arrow_flight::encode::FlightDataEncoderBuilder;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use quarry_core::{Error, Result, RunMode, Table, flight};
use quarry_proto::{ExtractTicket, LoadAck, LoadCommand, WriteMode};
use quarry_transform::aggregate::KeyColumns;
use quarry_transform::{Aggregator, validate};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tracing::Instrument;

use super::{Run, flight_client, from_flight};

/// Batches of one split validated at the same time.
const VALIDATION_PIPELINE: usize = 2;

/// What the stream phase leaves for the next one.
pub(super) struct Streamed {
    /// The accumulator, holding every group of the run.
    pub(super) aggregator: Arc<Aggregator>,
    /// Rows the loader acknowledged, per table.
    pub(super) rows_sent: HashMap<Table, u64>,
    /// When the splits were all read and the wait for the loader began.
    pub(super) load_wait: Instant,
}

impl Run {
    /// Reads every split (`split_concurrency` at a time) and streams their
    /// rows to the loader; returns once every DoPut has ended.
    pub(super) async fn stream(
        &self,
        loader_channel: &Channel,
        extractor: Channel,
        tickets: &[ExtractTicket],
    ) -> Result<Streamed> {
        // Stream: one DoPut per table stays open while the splits are read.
        let mut puts: JoinSet<Result<(Table, u64)>> = JoinSet::new();
        let mut open_put = |table: Table| {
            let (tx, rx) = mpsc::channel::<RecordBatch>(4);
            let client = flight_client(loader_channel.clone(), &self.security);
            let run_id = self.run_id.clone();
            puts.spawn(put_table(client, run_id, table, rx).in_current_span());
            tx
        };
        let trades_tx = self.load_raw_trades.then(|| open_put(Table::Trades));
        let rejected_tx = open_put(Table::TradesRejected);
        self.counters.set_stage("extracting");

        let aggregator = Aggregator::new(
            self.dedup,
            KeyColumns::from_names(&self.config.quality.key_columns),
        );
        // In ELT the warehouse computes the weeks: no groups are built, the
        // aggregator still drops or counts duplicates and keeps the days.
        let aggregator = Arc::new(match self.mode {
            RunMode::Etl => aggregator,
            RunMode::Elt => aggregator.without_groups(),
        });
        let streamed = futures::stream::iter(tickets.iter().cloned())
            .map(|ticket| {
                self.read_split(
                    extractor.clone(),
                    ticket,
                    aggregator.clone(),
                    trades_tx.clone(),
                    rejected_tx.clone(),
                )
            })
            .buffer_unordered(self.config.split_concurrency)
            .try_collect::<Vec<()>>()
            .await;
        drop((trades_tx, rejected_tx));
        let load_wait = Instant::now();
        // A closed DoPut makes the readers fail with "loader stopped"; the put's
        // own error says why, so it is reported first.
        let mut rows_sent: HashMap<Table, u64> = HashMap::new();
        let mut put_error = None;
        while let Some(joined) = puts.join_next().await {
            match joined.map_err(|e| Error::internal(format!("DoPut task: {e}")).with_source(e))? {
                Ok((table, rows)) => {
                    rows_sent.insert(table, rows);
                }
                Err(e) => {
                    put_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = put_error {
            return Err(e);
        }
        streamed?;
        Ok(Streamed {
            aggregator,
            rows_sent,
            load_wait,
        })
    }

    /// Reads one split, validating and aggregating each batch as it arrives.
    async fn read_split(
        &self,
        extractor: Channel,
        ticket: ExtractTicket,
        aggregator: Arc<Aggregator>,
        trades_tx: Option<mpsc::Sender<RecordBatch>>,
        rejected_tx: mpsc::Sender<RecordBatch>,
    ) -> Result<()> {
        let file: Arc<str> = ticket.file.clone().into();
        let mut client = flight_client(extractor, &self.security);
        let mut t = Instant::now();
        let batches = client
            .do_get(arrow_flight::Ticket::new(ticket.encode_to_vec()))
            .await
            .map_err(|e| from_flight("extractor", e))?;
        let stopped = || Error::internal("the loader stopped accepting data");
        // Two batches are validated and folded into the aggregate at once,
        // each on a blocking thread, so both cores work. `buffered` keeps the
        // batches in file order.
        let keep_trades = self.load_raw_trades;
        let mut processed = batches
            .map(|batch| {
                let (agg, name) = (aggregator.clone(), file.clone());
                async move {
                    let batch = batch.map_err(|e| from_flight("extractor", e))?;
                    tokio::task::spawn_blocking(move || -> Result<_> {
                        let started = Instant::now();
                        let v = validate(&batch, &name)?;
                        let trades = agg.ingest(v.trades)?;
                        Ok((
                            v.rejected,
                            v.stats,
                            keep_trades.then_some(trades),
                            started.elapsed(),
                        ))
                    })
                    .await
                    .map_err(|e| Error::internal(format!("validation task: {e}")).with_source(e))?
                }
            })
            .buffered(VALIDATION_PIPELINE);
        while let Some(item) = processed.next().await {
            let (rejected, stats, trades, busy) = item?;
            {
                let mut m = self.measures.lock().expect("measures lock");
                m.extract += t.elapsed();
                m.transform += busy;
                m.stats.merge(&stats);
                *m.rows_by_file.entry(file.to_string()).or_default() += stats.rows_in;
            }
            let c = &self.counters;
            c.rows_read.fetch_add(stats.rows_in, Ordering::Relaxed);
            self.metrics.rows_in.inc_by(stats.rows_in);
            self.metrics.rows_valid.inc_by(stats.rows_valid);
            self.metrics.rows_rejected.inc_by(stats.rows_rejected());
            c.rows_valid.fetch_add(stats.rows_valid, Ordering::Relaxed);
            c.rows_rejected
                .fetch_add(stats.rows_rejected(), Ordering::Relaxed);
            if let (Some(tx), Some(trades)) = (&trades_tx, trades)
                && trades.num_rows() > 0
            {
                tx.send(trades).await.map_err(|_| stopped())?;
            }
            if let Some(r) = rejected {
                rejected_tx.send(r).await.map_err(|_| stopped())?;
            }
            t = Instant::now();
        }
        self.counters.files_done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Streams one table of a run to the loader; returns the rows it acknowledged.
pub(super) async fn put_table(
    mut client: FlightClient,
    run_id: String,
    table: Table,
    rx: mpsc::Receiver<RecordBatch>,
) -> Result<(Table, u64)> {
    let descriptor = flight::descriptor(&LoadCommand {
        run_id,
        table: table.name().to_string(),
        mode: WriteMode::ReplacePartitions as i32,
    });
    let batches = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
    let data = FlightDataEncoderBuilder::new()
        .with_schema(table.schema())
        .with_flight_descriptor(Some(descriptor))
        .build(batches);
    let mut acks = client
        .do_put(data)
        .await
        .map_err(|e| from_flight(&format!("loading {table}"), e))?;
    let mut rows = 0;
    while let Some(ack) = acks.next().await {
        let ack = ack.map_err(|e| from_flight(&format!("loading {table}"), e))?;
        rows += LoadAck::decode(ack.app_metadata)
            .map_err(|e| Error::internal(format!("malformed LoadAck: {e}")).with_source(e))?
            .rows;
    }
    Ok((table, rows))
}
