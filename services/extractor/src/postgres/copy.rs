//! Reading one split: `COPY (SELECT …) TO STDOUT (FORMAT csv)`, streamed.

use std::sync::Arc;

use futures::TryStreamExt;
use quarry_core::Result;
use tokio_postgres::Client;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::PgSource;
use super::plan::{Pool, describe, pg_error};
use crate::readers::{self, Emit, Limits};

/// A split's COPY stream, opened; [`Copy::read`] then parses it.
pub struct Copy {
    name: String,
    input: Box<dyn std::io::Read + Send>,
    // The stream needs its connection, which goes back to the pool once the
    // stream has been read to its end.
    client: Client,
    src: PgSource,
    pool: Arc<Pool>,
}

/// Opens the COPY stream of the split a ticket names. The ticket was
/// checked against the roots by the caller.
pub async fn read(ticket: &str, password_env: &str, pool: Arc<Pool>) -> Result<Copy> {
    let src = PgSource::parse(ticket)?;
    let split = PgSource::split_of(ticket)?;
    let client = pool.get(&src, password_env).await?;
    let d = describe(&client, &src).await?;
    let sql = format!(
        "COPY (SELECT {} FROM {} WHERE {}{}) TO STDOUT (FORMAT csv)",
        d.select_list(),
        d.from,
        d.condition(&split),
        d.order(&split)
    );
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| pg_error(&src, "cannot start reading", e))?;
    let bytes = Box::pin(stream.map_err(std::io::Error::other));
    Ok(Copy {
        name: src.split_url(&split),
        input: Box::new(SyncIoBridge::new(StreamReader::new(bytes))),
        client,
        src,
        pool,
    })
}

impl Copy {
    /// The split's name (its URL).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses the stream into batches; blocking (call it off the runtime's
    /// worker threads, e.g. in `spawn_blocking`).
    pub fn read(self, batch_rows: usize, limits: Limits, emit: Emit<'_>) -> Result<()> {
        let mut complete = true;
        let mut counted = |batch| {
            complete &= emit(batch);
            complete
        };
        readers::read_copy(self.input, &self.name, batch_rows, limits, &mut counted)?;
        if complete {
            self.pool.put(&self.src, self.client);
        }
        Ok(())
    }
}
