//! Object-store access for Quarry through the `object_store` crate: a local
//! directory (the embedded default), `s3://` (AWS or any S3-compatible
//! endpoint) and `gs://` (Google Cloud Storage), behind one interface.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use quarry_core::config::StorageConfig;
use quarry_core::{Error, Result};

pub use object_store;

mod read;
pub use read::{RANGE_BYTES, RangeReader};

/// A store and the prefix inside it under which everything lives.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn object_store::ObjectStore>,
    pub prefix: Path,
    /// The root as configured, for messages.
    pub display: String,
}

impl Location {
    /// `prefix/part/part…`
    pub fn path(&self, parts: &[&str]) -> Path {
        parts
            .iter()
            .fold(self.prefix.clone(), |p, part| p.join(*part))
    }
}

/// Opens `root`: a directory (created if missing), `file:///abs/dir`,
/// `s3://bucket[/prefix]` or `gs://bucket[/prefix]`.
pub fn open(root: &str, storage: &StorageConfig) -> Result<Location> {
    let s3 = &storage.s3;
    let display = root.to_string();
    let bad = |e: object_store::Error| Error::config(format!("object store {root}: {e}"));
    let (scheme, rest) = match root.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("file", root),
    };
    match scheme {
        "file" => {
            let dir = std::path::Path::new(rest);
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(format!(
                    "cannot create the directory {}: {e}",
                    dir.display()
                ))
            })?;
            let store = LocalFileSystem::new_with_prefix(dir).map_err(bad)?;
            Ok(Location {
                store: Arc::new(store),
                prefix: Path::default(),
                display,
            })
        }
        "s3" | "gs" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::config(format!(
                    "object store {root}: no bucket (expected {scheme}://bucket/prefix)"
                )));
            }
            let url = format!("{scheme}://{bucket}");
            let store: Arc<dyn object_store::ObjectStore> = if scheme == "s3" {
                let mut b = AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_allow_http(s3.allow_http)
                    .with_virtual_hosted_style_request(s3.virtual_hosted_style);
                if !s3.endpoint.is_empty() {
                    b = b.with_endpoint(&s3.endpoint);
                }
                if !s3.region.is_empty() {
                    b = b.with_region(&s3.region);
                } else if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    b = b.with_region("us-east-1");
                }
                Arc::new(b.build().map_err(bad)?)
            } else {
                let mut b = GoogleCloudStorageBuilder::from_env().with_url(url);
                let key = &storage.gcs.service_account_path;
                if !key.as_os_str().is_empty() {
                    b = b.with_service_account_path(key.display().to_string());
                }
                Arc::new(b.build().map_err(bad)?)
            };
            let prefix = Path::parse(prefix.trim_matches('/')).map_err(|e| {
                Error::config(format!("object store {root}: bad prefix {prefix:?}: {e}"))
            })?;
            Ok(Location {
                store,
                prefix,
                display,
            })
        }
        other => Err(Error::config(format!(
            "object store {root}: unsupported scheme {other}:// (use a directory, file://, s3:// or gs://)"
        ))),
    }
}

/// An object-store error as a Quarry error: missing objects and refused
/// preconditions are the caller's to interpret; network and server errors
/// are transient.
pub fn error(what: &str, e: object_store::Error) -> Error {
    let text = e.to_string();
    // An S3 error answer is an XML document: its code and message say what
    // happened in one line, where the whole body would run over several.
    let tag = |t: &str| {
        let start = text.find(&format!("<{t}>"))? + t.len() + 2;
        let len = text[start..].find(&format!("</{t}>"))?;
        Some(&text[start..start + len])
    };
    let code = tag("Code");
    let message = match (code, tag("Message")) {
        (Some(code), Some(msg)) => format!("{what}: {msg} ({code})"),
        _ => format!(
            "{what}: {}",
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    };
    match code {
        Some("NoSuchBucket" | "NoSuchKey") => Error::input(message).with_source(e),
        Some("AccessDenied" | "AllAccessDisabled") => {
            Error::permission_denied(message).with_source(e)
        }
        _ => classify(message, e),
    }
}

/// The kind of an object-store error, by the crate's own classes.
fn classify(message: String, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let error = match e {
        E::NotFound { .. } | E::AlreadyExists { .. } | E::Precondition { .. } => {
            Error::input(message)
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } | E::NotSupported { .. } => {
            Error::config(message)
        }
        _ => Error::backend(message, true),
    };
    error.with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cold");
        let loc = open(root.to_str().unwrap(), &StorageConfig::default()).unwrap();
        assert!(root.is_dir(), "a local root is created");
        assert_eq!(loc.path(&["trades", "x"]).as_ref(), "trades/x");

        let loc = open("s3://bucket/some/prefix/", &StorageConfig::default()).unwrap();
        assert_eq!(loc.path(&["trades"]).as_ref(), "some/prefix/trades");

        let err = |root: &str| match open(root, &StorageConfig::default()) {
            Ok(_) => panic!("{root} opened"),
            Err(e) => e.to_string(),
        };
        assert!(err("s3://").contains("no bucket"));
        assert!(err("ftp://x/y").contains("unsupported scheme ftp"));
    }

    #[test]
    fn a_gcs_key_file_from_the_config_is_read_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = StorageConfig::default();
        storage.gcs.service_account_path = dir.path().join("missing.json");
        let e = match open("gs://bucket/cold", &storage) {
            Ok(_) => panic!("opened without its key file"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with("object store gs://bucket/cold:"), "{e}");
        assert!(e.contains("missing.json"), "{e}");

        let key = dir.path().join("not-a-key.json");
        std::fs::write(&key, "{}").unwrap();
        storage.gcs.service_account_path = key;
        assert!(open("gs://bucket/cold", &storage).is_err());
    }
}
