//! Quarry's commands and tickets inside Arrow Flight messages.

use arrow_flight::FlightDescriptor;
use prost::Message;

use crate::error::{Error, Result};

/// A Flight descriptor whose command is an encoded Quarry message.
pub fn descriptor<M: Message>(cmd: &M) -> FlightDescriptor {
    FlightDescriptor::new_cmd(cmd.encode_to_vec())
}

/// Decodes a Quarry message from a descriptor command, ticket or metadata.
pub fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::input(format!("malformed {what}: {e}")).with_source(e))
}

/// Turns a Flight error into the status it carries (or an internal one).
pub fn flight_status(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::internal(other.to_string()),
    }
}
