//! The Flight service: a run's tables arrive as `DoPut` streams and are
//! staged in the warehouse batch by batch. Every other Flight call is
//! refused.

use std::pin::Pin;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use quarry_core::{Error, Result, Table, flight};
use quarry_proto::{LoadAck, LoadCommand};
use tokio_util::task::AbortOnDropHandle;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::{Loader, wire};

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

impl Loader {
    /// Stages one `DoPut` stream: the run and table its first message's
    /// `LoadCommand` names. Returns them with the rows written.
    async fn put(&self, stream: Streaming<FlightData>) -> Result<(String, Table, u64)> {
        let mut stream = stream.map_err(FlightError::from).peekable();
        let first = Pin::new(&mut stream)
            .peek()
            .await
            .ok_or_else(|| Error::input("DoPut stream is empty"))?
            .as_ref()
            .map_err(|e| Error::input(format!("DoPut: {e}")))?;
        let descriptor = first
            .flight_descriptor
            .as_ref()
            .ok_or_else(|| Error::input("the first DoPut message has no descriptor"))?;
        let cmd: LoadCommand = flight::decode("LoadCommand", &descriptor.cmd)?;
        let table = Table::parse(&cmd.table)
            .ok_or_else(|| Error::input(format!("unknown table {:?}", cmd.table)))?;
        let mode = wire::write_mode(cmd.mode)?;
        self.touch(&cmd.run_id)?;
        // The next batches are received and decoded while the warehouse
        // writes the current one; the reader stops when `put` returns.
        let (tx, mut batches) = tokio::sync::mpsc::channel(2);
        let _reader = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut stream = FlightRecordBatchStream::new_from_flight_data(stream);
            while let Some(batch) = stream.next().await {
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    break;
                }
            }
        }));
        let mut rows = 0u64;
        while let Some(batch) = batches.recv().await {
            let batch = batch.map_err(|e| match e {
                FlightError::Tonic(s) => Error::from_status(&s),
                other => Error::input(format!("{table} stream: {other}")),
            })?;
            rows += self
                .warehouse
                .write(&cmd.run_id, table, mode, batch)
                .await?;
            self.touch(&cmd.run_id)?;
        }
        Ok((cmd.run_id, table, rows))
    }
}

#[tonic::async_trait]
impl FlightService for Loader {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let (run_id, table, rows) = self.put(request.into_inner()).await.inspect_err(|e| {
            warn!(error = %e, "DoPut failed");
            self.metrics.errors.count(e);
        })?;
        info!(run_id = %run_id, table = %table, rows, "staged");
        let ack = PutResult {
            app_metadata: LoadAck { rows }.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(ack)
        }))))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "handshake is not needed by the loader",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn do_get(
        &self,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented("the loader only accepts DoPut"))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("the loader has no actions"))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("the loader does not exchange"))
    }
}
