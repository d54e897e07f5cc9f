//! `[lineage]`: where the OpenLineage events of runs, archive moves and
//! restores go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How events leave the process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineageTransport {
    /// No events.
    #[default]
    Off,
    /// POST of each event as JSON to `url` (Marquez: `…/api/v1/lineage`).
    Http,
    /// Each event as one JSON line appended to `path`.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LineageConfig {
    pub transport: LineageTransport,
    /// The collector's endpoint, e.g. `http://marquez:5000/api/v1/lineage`.
    pub url: String,
    /// An environment variable holding a bearer token for the collector.
    pub api_key_env: String,
    /// The NDJSON file of the `file` transport.
    pub path: PathBuf,
    /// The namespace of Quarry's jobs.
    pub namespace: String,
    /// Events waiting for the collector; past this many, new ones are
    /// dropped (and counted) rather than slow a run down.
    pub queue_events: usize,
    /// Seconds one delivery may take.
    pub timeout_secs: u64,
    /// Deliveries of one event before it is dropped.
    pub max_attempts: u32,
}

impl Default for LineageConfig {
    fn default() -> Self {
        Self {
            transport: LineageTransport::Off,
            url: String::new(),
            api_key_env: String::new(),
            path: PathBuf::new(),
            namespace: "quarry".into(),
            queue_events: 1000,
            timeout_secs: 5,
            max_attempts: 3,
        }
    }
}

impl LineageConfig {
    pub(super) fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::config(format!("lineage: {why}")));
        match self.transport {
            LineageTransport::Http
                if !(self.url.starts_with("http://") || self.url.starts_with("https://")) =>
            {
                return bad("transport http needs url = \"http(s)://collector/api/v1/lineage\"");
            }
            LineageTransport::File if self.path.as_os_str().is_empty() => {
                return bad("transport file needs path");
            }
            _ => {}
        }
        if self.namespace.trim().is_empty() {
            return bad("namespace is empty");
        }
        if self.queue_events == 0 || self.timeout_secs == 0 || self.max_attempts == 0 {
            return bad("queue_events, timeout_secs and max_attempts must be positive");
        }
        Ok(())
    }
}
