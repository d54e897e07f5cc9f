//! Reading one object as a blocking stream, in ranges: memory stays at two
//! ranges whatever the object's size, and the next range is already on its
//! way while the current one is parsed.

use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Bytes per ranged GET: large enough that a request's latency is small
/// beside its transfer, small enough that two in memory do not matter.
pub const RANGE_BYTES: u64 = 8 << 20;

/// A `Read` over `range` of an object. It blocks on the runtime it was
/// created in: use it on a thread that may block (`spawn_blocking`), never
/// inside an async task.
pub struct RangeReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The next byte not yet requested, and the end of the range.
    next: u64,
    end: u64,
    range_bytes: u64,
    current: Bytes,
    pending: Option<JoinHandle<object_store::Result<Bytes>>>,
    runtime: Handle,
}

impl RangeReader {
    /// Must be called inside a Tokio runtime (the one that serves the fetches).
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, range: Range<u64>) -> Self {
        Self::with_range_bytes(store, path, range, RANGE_BYTES)
    }

    pub fn with_range_bytes(
        store: Arc<dyn ObjectStore>,
        path: Path,
        range: Range<u64>,
        range_bytes: u64,
    ) -> Self {
        let mut r = Self {
            store,
            path,
            next: range.start,
            end: range.end,
            range_bytes: range_bytes.max(1),
            current: Bytes::new(),
            pending: None,
            runtime: Handle::current(),
        };
        r.request_next();
        r
    }

    /// Starts the GET of the next range, if any is left.
    fn request_next(&mut self) {
        if self.next >= self.end {
            return;
        }
        let range = self.next..(self.next + self.range_bytes).min(self.end);
        self.next = range.end;
        let (store, path) = (self.store.clone(), self.path.clone());
        self.pending = Some(self.runtime.spawn(async move {
            let options = GetOptions::new().with_range(Some(range));
            store.get_opts(&path, options).await?.bytes().await
        }));
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            let Some(pending) = self.pending.take() else {
                return Ok(0);
            };
            let fetched = self
                .runtime
                .block_on(pending)
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            if fetched.is_empty() {
                // The object is shorter than listed: it changed under us.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} ended early: was it replaced while being read?",
                        self.path
                    ),
                ));
            }
            self.current = fetched;
            self.request_next();
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

impl Drop for RangeReader {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_an_object_range_by_range() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
        let path = Path::from("landing/t.csv");
        store
            .put(&path, PutPayload::from(data.clone()))
            .await
            .unwrap();
        let (s, p) = (store.clone(), path.clone());
        let whole = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            RangeReader::with_range_bytes(s, p, 0..100_003, 4096)
                .read_to_end(&mut out)
                .unwrap();
            out
        })
        .await
        .unwrap();
        assert_eq!(whole, data);
        // A range said to run past the object's end: never a silent short read.
        let part = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let r = RangeReader::with_range_bytes(store, path, 1000..200_000, 7000)
                .read_to_end(&mut out);
            (out, r.map_err(|e| e.to_string()))
        })
        .await
        .unwrap();
        // What came before the missing part is the object's, then an error.
        assert!(part.0.len() > 90_000 && data[1000..].starts_with(&part.0));
        assert!(part.1.is_err(), "{:?}", part.1);
    }
}
