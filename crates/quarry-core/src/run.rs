//! The states and modes of a run, as every service records and reports them.

use std::fmt;

/// Where a run is: `pipeline_runs.status`, and the `status` of the gRPC run
/// records (as the text of [`RunStatus::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RunStatus {
    /// Begun and not finished: staging, or committing.
    #[default]
    Running,
    Succeeded,
    Failed,
}

impl RunStatus {
    pub const ALL: [RunStatus; 3] = [Self::Running, Self::Succeeded, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether `text` (a status as stored or sent) is this status.
    pub fn is(self, text: &str) -> bool {
        text == self.as_str()
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who computes the weekly aggregate of a run: the transformer (`etl`), or
/// the warehouse with SQL inside the commit (`elt`). Both give identical
/// tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    #[default]
    Etl,
    Elt,
}

impl RunMode {
    pub const ALL: [RunMode; 2] = [Self::Etl, Self::Elt];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Etl => "etl",
            Self::Elt => "elt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for RunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a run's source is a PostgreSQL table or query
/// (`postgresql://…` or `postgres://…`), which the extractor reads by day
/// and, with a cursor column, incrementally.
pub fn is_postgres_source(source: &str) -> bool {
    let s = source.trim_start().as_bytes();
    [&b"postgresql://"[..], b"postgres://"]
        .iter()
        .any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_as_text() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert!(s.is(&s.to_string()));
        }
        assert_eq!(RunStatus::parse("done"), None);
        for m in RunMode::ALL {
            assert_eq!(RunMode::parse(m.as_str()), Some(m));
        }
    }
}
