//! Sources in object storage: `s3://bucket/key`, `gs://bucket/prefix/` and
//! globs over keys (`s3://landing/trades/2024-05-*.csv.gz`).
//!
//! An object source must lie under one of the data roots that are URLs
//! (`data_roots = ["data", "s3://landing/trades/"]`), checked on the text of
//! the URL before any request and again on every key a listing returns;
//! anything else is refused with PermissionDenied. Objects are listed, then
//! read as streams of ranged GETs (`quarry_storage::RangeReader`): an object
//! is never held whole. Credentials come from the standard AWS and Google
//! environment and `[storage.s3]`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use quarry_core::config::StorageConfig;
use quarry_core::{Error, Result};
use quarry_storage::RangeReader;
use quarry_storage::object_store::path::Path as Key;
use quarry_storage::object_store::{ObjectStore, ObjectStoreExt};

/// Whether a source or a planned file names an object rather than a path.
pub fn is_url(source: &str) -> bool {
    source.contains("://")
}

/// `scheme://bucket/key`, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    pub scheme: String,
    pub bucket: String,
    /// The key (or key pattern, or prefix), without a leading slash.
    pub key: String,
}

impl ObjectUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::input(format!("{url}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not a URL"))?;
        if !matches!(scheme, "s3" | "gs") {
            return Err(bad(&format!(
                "unsupported scheme {scheme}:// (object sources are s3:// or gs://)"
            )));
        }
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket (expected scheme://bucket/key)"));
        }
        // `.` and `..` have no meaning in a key; refusing them keeps the
        // prefix check below a plain string comparison.
        if key.split('/').any(|s| s == "." || s == "..") {
            return Err(bad("a key may not contain . or .. segments"));
        }
        Ok(Self {
            scheme: scheme.into(),
            bucket: bucket.into(),
            key: key.trim_start_matches('/').into(),
        })
    }

    fn with_key(&self, key: &str) -> Self {
        Self {
            key: key.into(),
            ..self.clone()
        }
    }

    /// Whether this URL lies under `root` (a bucket, or a prefix ending in
    /// `/` or not: `s3://b/landing` allows `s3://b/landing/x`, not
    /// `s3://b/landing2/x`).
    fn under(&self, root: &ObjectUrl) -> bool {
        if (self.scheme.as_str(), self.bucket.as_str())
            != (root.scheme.as_str(), root.bucket.as_str())
        {
            return false;
        }
        let prefix = root.key.trim_end_matches('/');
        prefix.is_empty()
            || self.key == prefix
            || self
                .key
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The URL as a path, the form the readers name files by.
    pub fn as_path(&self) -> PathBuf {
        PathBuf::from(self.to_string())
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}/{}", self.scheme, self.bucket, self.key)
    }
}

/// The object prefixes among the data roots.
#[derive(Debug, Clone, Default)]
pub struct ObjectRoots(Vec<ObjectUrl>);

impl ObjectRoots {
    pub fn new(roots: &[String]) -> Result<Self> {
        roots
            .iter()
            .map(|r| {
                ObjectUrl::parse(r).map_err(|e| Error::config(format!("extractor.data_roots: {e}")))
            })
            .collect::<Result<Vec<_>>>()
            .map(ObjectRoots)
    }

    pub fn describe(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Refuses a URL outside every object root.
    pub fn check(&self, url: &ObjectUrl, describe_roots: impl FnOnce() -> String) -> Result<()> {
        if self.0.iter().any(|r| url.under(r)) {
            Ok(())
        } else {
            Err(Error::permission_denied(format!(
                "{url} is outside the extractor's data roots ({})",
                describe_roots()
            )))
        }
    }
}

/// One store per bucket, opened on first use with `[storage]` and the
/// standard credential environment.
#[derive(Default)]
pub struct Stores {
    storage: StorageConfig,
    open: Mutex<HashMap<(String, String), Arc<dyn ObjectStore>>>,
}

impl Stores {
    pub fn new(storage: StorageConfig) -> Self {
        Self {
            storage,
            open: Mutex::default(),
        }
    }

    pub fn store(&self, url: &ObjectUrl) -> Result<Arc<dyn ObjectStore>> {
        let key = (url.scheme.clone(), url.bucket.clone());
        let mut open = self.open.lock().expect("stores lock");
        if let Some(s) = open.get(&key) {
            return Ok(s.clone());
        }
        let location =
            quarry_storage::open(&format!("{}://{}", url.scheme, url.bucket), &self.storage)?;
        open.insert(key, location.store.clone());
        Ok(location.store)
    }

    /// The size of an object (blocking: call from a blocking thread).
    pub fn size(&self, url: &ObjectUrl) -> Result<u64> {
        let store = self.store(url)?;
        let key = Key::from(url.key.as_str());
        let meta = block_on(store.head(&key))
            .map_err(|e| quarry_storage::error(&format!("cannot open {url}"), e))?;
        Ok(meta.size)
    }

    /// The object's bytes from `start`, streamed in ranged GETs (blocking).
    pub fn reader(&self, url: &ObjectUrl, start: u64) -> Result<RangeReader> {
        let size = self.size(url)?;
        let store = self.store(url)?;
        Ok(RangeReader::new(
            store,
            Key::from(url.key.as_str()),
            start..size,
        ))
    }

    /// The objects a source names, with their sizes: one object, every
    /// object under a prefix (`…/` or a key with objects below it), or the
    /// keys a glob matches (`*` and `?` stay within one `/` segment).
    /// Blocking: call from a blocking thread.
    pub fn list(&self, url: &ObjectUrl) -> Result<Vec<(ObjectUrl, u64)>> {
        let store = self.store(url)?;
        let listed = |prefix: &str| -> Result<Vec<(ObjectUrl, u64)>> {
            let prefix = Key::from(prefix.trim_end_matches('/'));
            let metas: Vec<_> = block_on(store.list(Some(&prefix)).try_collect::<Vec<_>>())
                .map_err(|e| quarry_storage::error(&format!("cannot list {url}"), e))?;
            Ok(metas
                .into_iter()
                .map(|m| (url.with_key(m.location.as_ref()), m.size))
                .collect())
        };
        if let Some(at) = url.key.find(['*', '?', '[']) {
            let pattern = glob::Pattern::new(&url.key)
                .map_err(|e| Error::input(format!("bad glob pattern {url}: {e}")).with_source(e))?;
            let options = glob::MatchOptions {
                require_literal_separator: true,
                require_literal_leading_dot: true,
                ..Default::default()
            };
            let dir = url.key[..at].rfind('/').map_or("", |i| &url.key[..i]);
            return Ok(listed(dir)?
                .into_iter()
                .filter(|(u, _)| pattern.matches_with(&u.key, options))
                .collect());
        }
        if !url.key.is_empty() && !url.key.ends_with('/') {
            match block_on(store.head(&Key::from(url.key.as_str()))) {
                Ok(meta) => return Ok(vec![(url.clone(), meta.size)]),
                Err(quarry_storage::object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(quarry_storage::error(&format!("cannot open {url}"), e)),
            }
        }
        listed(&url.key)
    }
}

impl Stores {
    /// An object as the Parquet reader wants it: its length, and ranges on
    /// demand (the footer, then each column chunk it reads).
    pub fn object_file(&self, url: &ObjectUrl) -> Result<ObjectFile> {
        Ok(ObjectFile {
            size: self.size(url)?,
            store: self.store(url)?,
            key: Key::from(url.key.as_str()),
            url: url.to_string(),
        })
    }
}

pub struct ObjectFile {
    store: Arc<dyn ObjectStore>,
    key: Key,
    size: u64,
    url: String,
}

impl ObjectFile {
    /// Its first bytes (up to 10), for the magic numbers.
    pub fn head(&self) -> Result<bytes::Bytes> {
        let n = self.size.min(10);
        block_on(self.store.get_range(&self.key, 0..n))
            .map_err(|e| quarry_storage::error(&format!("cannot read {}", self.url), e))
    }
}

impl parquet::file::reader::Length for ObjectFile {
    fn len(&self) -> u64 {
        self.size
    }
}

impl parquet::file::reader::ChunkReader for ObjectFile {
    type T = RangeReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<RangeReader> {
        Ok(RangeReader::new(
            self.store.clone(),
            self.key.clone(),
            start..self.size,
        ))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        block_on(
            self.store
                .get_range(&self.key, start..start + length as u64),
        )
        .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

/// Runs a future to completion from a blocking thread of the runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

/// The name of a listed object that is hidden (`.x`) or a marker such as
/// `_SUCCESS`: never read.
pub fn is_hidden(url: &ObjectUrl) -> bool {
    let name = url.key.rsplit('/').next().unwrap_or("");
    name.starts_with('.') || name.starts_with('_')
}

/// A planned file that is an object, parsed back from its path.
pub fn url_of(path: &Path) -> Option<Result<ObjectUrl>> {
    let s = path.to_str()?;
    is_url(s).then(|| ObjectUrl::parse(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_roots_contain_by_segment() {
        let u = ObjectUrl::parse("s3://landing/trades/2024-05-01.csv.gz").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str()),
            ("landing", "trades/2024-05-01.csv.gz")
        );
        assert_eq!(u.to_string(), "s3://landing/trades/2024-05-01.csv.gz");
        let roots = ObjectRoots::new(&["s3://landing/trades/".into(), "gs://b".into()]).unwrap();
        let ok = |s: &str| {
            roots
                .check(&ObjectUrl::parse(s).unwrap(), String::new)
                .is_ok()
        };
        assert!(ok("s3://landing/trades/x.csv"));
        assert!(ok("s3://landing/trades/sub/*.csv"));
        assert!(ok("s3://landing/trades"));
        assert!(ok("gs://b/anything"));
        assert!(!ok("s3://landing/trades2/x.csv"));
        assert!(!ok("s3://landing/other.csv"));
        assert!(!ok("gs://landing/trades/x.csv"));
        assert!(!ok("s3://other/trades/x.csv"));
        for bad in [
            "s3://",
            "ftp://b/k",
            "s3://b/trades/../secret.csv",
            "s3://b/./k",
        ] {
            assert!(ObjectUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(is_hidden(&ObjectUrl::parse("s3://b/p/_SUCCESS").unwrap()));
        assert!(!is_hidden(&ObjectUrl::parse("s3://b/p/t.csv").unwrap()));
    }
}
