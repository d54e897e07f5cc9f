//! PostgreSQL sources: `postgresql://user@host:5432/db?table=public.trades`,
//! or `?query=SELECT …`, optionally with `&cursor_column=updated_at`.
//!
//! How a source is read (`plan.rs`, `copy.rs`):
//! - **Plan.** One connection describes the relation (`SELECT * … LIMIT 0`),
//!   maps its columns to the input columns by name as for files, and lists the
//!   weeks (Monday to Sunday, UTC: the weeks Quarry aggregates by) its rows
//!   fall in. Each week is one split, so one Flight endpoint; rows whose
//!   timestamp is NULL or infinite form one more split. A week is always read
//!   whole: its days reach the warehouse complete within one run, which is
//!   what the partition overwrite needs.
//! - **Incremental.** With a cursor column the plan also reads the highest
//!   cursor value (`through`) and lists only the weeks of the rows whose
//!   cursor is in (`after`, `through`]: the weeks that changed since the last
//!   committed run, read whole again. The transformer passes `after` (the `through` of the
//!   last succeeded run of the same source) and records the new range in the
//!   run's quality report, which the loader commits in the same transaction as
//!   the run's data: a failed run leaves the cursor where it was.
//! - **Read.** A split is `COPY (SELECT <the seven columns as text> … WHERE
//!   <its week>) TO STDOUT (FORMAT csv)`, streamed and parsed into the same text
//!   batches as a CSV file, so the values take the files' validation path:
//!   numeric as its exact digits, timestamptz converted to UTC first.
//!
//! A split's name (its ticket, and `source_file` of its rejected rows) is the
//! source URL with the split as fragment: `…#week=2024-04-29`. Reading a
//! week again replaces that week's rejected rows, like reading a file again.
//! A timestamp column that is not `timestamp`/`timestamptz` cannot be cut into
//! weeks in SQL: such a source is one split (`#rows=all`) and cannot be read
//! incrementally. Connections are pooled (`Pool`): a table of a few years is
//! a few hundred splits.

mod copy;
mod plan;

use chrono::{Datelike, NaiveDate};
use quarry_core::{Error, Result};
use url::Url;

pub use copy::{Copy, read};
pub use plan::{Planned, Pool, plan};

pub use quarry_core::run::is_postgres_source as is_source;

/// What a PostgreSQL source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// A table or view, named as in SQL (`public.trades`).
    Table(String),
    /// A SELECT statement.
    Query(String),
}

/// A parsed `postgresql://` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSource {
    pub host: String,
    pub port: u16,
    pub db: String,
    pub user: String,
    pub relation: Relation,
    pub cursor_column: Option<String>,
}

/// One split of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// The rows of one week (Monday to Sunday, UTC), by its Monday.
    Week(NaiveDate),
    /// The rows whose timestamp is NULL or infinite; for an incremental read
    /// only those whose cursor is in (after, through].
    NoWeek {
        after: Option<String>,
        through: Option<String>,
    },
    /// Every row (the timestamp column has no type to cut weeks by).
    All,
}

const PARAMS: &str = "table, query, cursor_column";

impl PgSource {
    /// Parses a source URL (a split fragment is ignored; see [`PgSource::split_of`]).
    pub fn parse(source: &str) -> Result<Self> {
        let bad =
            |why: String| Error::input(format!("PostgreSQL source {}: {why}", redact(source)));
        let url = Url::parse(source.trim()).map_err(|e| bad(e.to_string()))?;
        if url.password().is_some() {
            return Err(bad(
                "a password in the source URL is refused (runs record their source): \
                 set it in the extractor's environment (extractor.postgres_password_env, default PGPASSWORD)"
                    .into(),
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .to_ascii_lowercase();
        let decode = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| bad(format!("{s:?} is not valid percent-encoded UTF-8")))
        };
        let user = match url.username() {
            "" => return Err(bad("no user: write postgresql://USER@host:5432/db?…".into())),
            u => decode(u)?,
        };
        let db = match url.path().trim_start_matches('/') {
            "" => {
                return Err(bad(
                    "no database: write postgresql://user@host:5432/DB?…".into()
                ));
            }
            d if d.contains('/') => return Err(bad(format!("{d:?} is not a database name"))),
            d => decode(d)?,
        };
        let (mut table, mut query, mut cursor_column) = (None, None, None);
        for (k, v) in url.query_pairs() {
            let slot = match k.as_ref() {
                "table" => &mut table,
                "query" => &mut query,
                "cursor_column" => &mut cursor_column,
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?} (known: {PARAMS})"
                    )));
                }
            };
            if slot.replace(v.trim().to_string()).is_some() {
                return Err(bad(format!("parameter {k} given twice")));
            }
        }
        let relation = match (table, query) {
            (Some(t), None) if !t.is_empty() => Relation::Table(t),
            (None, Some(q)) if !q.is_empty() => {
                Relation::Query(q.trim_end_matches([';', ' ', '\n', '\t']).to_string())
            }
            _ => {
                return Err(bad(
                    "name exactly one of ?table=schema.table or ?query=SELECT…".into(),
                ));
            }
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(5432),
            db,
            user,
            relation,
            cursor_column: cursor_column.filter(|c| !c.is_empty()),
        })
    }

    /// The source as one canonical URL: what runs record and splits extend.
    pub fn url(&self) -> String {
        let mut url = Url::parse(&format!("postgresql://{}:{}", self.host, self.port))
            .expect("host and port form a URL");
        url.set_username(&self.user)
            .expect("a URL with a host takes a user");
        url.set_path(&self.db);
        {
            let mut q = url.query_pairs_mut();
            match &self.relation {
                Relation::Table(t) => q.append_pair("table", t),
                Relation::Query(s) => q.append_pair("query", s),
            };
            if let Some(c) = &self.cursor_column {
                q.append_pair("cursor_column", c);
            }
        }
        url.to_string()
    }

    /// The name of one split: the URL with the split as fragment.
    pub fn split_url(&self, split: &Split) -> String {
        let fragment = match split {
            Split::Week(d) => format!("week={d}"),
            Split::All => "rows=all".into(),
            Split::NoWeek { after, through } => {
                let mut f = url::form_urlencoded::Serializer::new(String::new());
                f.append_pair("week", "none");
                if let Some(a) = after {
                    f.append_pair("after", a);
                }
                if let Some(t) = through {
                    f.append_pair("through", t);
                }
                f.finish()
            }
        };
        format!("{}#{fragment}", self.url())
    }

    /// The split a ticket names (`…#week=2024-04-29`).
    pub fn split_of(ticket: &str) -> Result<Split> {
        let bad = || {
            Error::input(format!(
                "{}: not a split of a PostgreSQL source",
                redact(ticket)
            ))
        };
        let fragment = Url::parse(ticket.trim())
            .ok()
            .and_then(|u| u.fragment().map(str::to_string))
            .ok_or_else(bad)?;
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(fragment.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match (pairs.first().map(|(k, _)| k.as_str()), get("week")) {
            (Some("rows"), _) if get("rows").as_deref() == Some("all") => Ok(Split::All),
            (Some("week"), Some(d)) if d == "none" => Ok(Split::NoWeek {
                after: get("after"),
                through: get("through"),
            }),
            (Some("week"), Some(d)) => NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                .ok()
                .filter(|d| d.weekday() == chrono::Weekday::Mon)
                .map(Split::Week)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// `user@host:port/db`: who logs in where.
    fn login(&self) -> String {
        format!("{}@{}", self.user, self.server())
    }

    /// `host:port/db`, for messages.
    pub fn server(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.db)
    }
}

/// The databases an extractor may read: `postgresql://host:port/db` entries
/// of `data_roots` (user, table and query are not part of a root), kept as
/// [`PgSource::server`] text.
#[derive(Debug, Clone, Default)]
pub struct PgRoots(Vec<String>);

impl PgRoots {
    pub fn new(roots: &[String]) -> Result<Self> {
        roots
            .iter()
            .map(|r| {
                let bad = |why: &str| {
                    Error::config(format!("extractor.data_roots: {}: {why}", redact(r)))
                };
                let url = Url::parse(r).map_err(|e| bad(&e.to_string()))?;
                let db = url.path().trim_start_matches('/');
                if db.is_empty() || db.contains('/') {
                    return Err(bad("name one database: postgresql://host:5432/db"));
                }
                let host = url.host_str().ok_or_else(|| bad("no host"))?;
                let db = percent_decode(db).ok_or_else(|| bad("bad percent-encoding"))?;
                Ok(format!(
                    "{}:{}/{db}",
                    host.to_ascii_lowercase(),
                    url.port().unwrap_or(5432)
                ))
            })
            .collect::<Result<_>>()
            .map(PgRoots)
    }

    /// Refuses a source whose database is not a root.
    pub fn check(&self, source: &PgSource, roots: impl FnOnce() -> String) -> Result<()> {
        if self.0.contains(&source.server()) {
            return Ok(());
        }
        Err(Error::permission_denied(format!(
            "PostgreSQL database {} is outside the extractor's data roots ({})",
            source.server(),
            roots()
        )))
    }

    pub fn describe(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(|r| format!("postgresql://{r}"))
    }
}

/// A source for messages: a password, if one was given, is masked.
fn redact(source: &str) -> String {
    match Url::parse(source.trim()) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => source.trim().to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources_and_names_their_splits() {
        let s = PgSource::parse(
            "postgresql://reader@DB.internal:6543/trading?table=public.trades&cursor_column=updated_at",
        )
        .unwrap();
        assert_eq!(s.host, "db.internal");
        assert_eq!(
            (s.port, s.db.as_str(), s.user.as_str()),
            (6543, "trading", "reader")
        );
        assert_eq!(s.relation, Relation::Table("public.trades".into()));
        assert_eq!(s.cursor_column.as_deref(), Some("updated_at"));
        let week = Split::Week(NaiveDate::from_ymd_opt(2024, 4, 29).unwrap());
        let name = s.split_url(&week);
        assert!(name.ends_with("#week=2024-04-29"), "{name}");
        assert_eq!(PgSource::parse(&name).unwrap(), s);
        assert_eq!(PgSource::split_of(&name).unwrap(), week);
        // Weeks start on Mondays.
        assert!(PgSource::split_of(&name.replace("04-29", "04-30")).is_err());
        let rest = Split::NoWeek {
            after: Some("2024-05-01 10:00:00+00".into()),
            through: Some("2024-05-02 00:00:00+00".into()),
        };
        assert_eq!(PgSource::split_of(&s.split_url(&rest)).unwrap(), rest);
        assert_eq!(
            PgSource::split_of(&s.split_url(&Split::All)).unwrap(),
            Split::All
        );

        let q = PgSource::parse("postgres://u@h/db?query=SELECT%20*%20FROM%20t%3B").unwrap();
        assert_eq!(
            (q.port, q.relation),
            (5432, Relation::Query("SELECT * FROM t".into()))
        );
    }

    #[test]
    fn refuses_passwords_unknown_parameters_and_foreign_databases() {
        for (source, says) in [
            (
                "postgresql://u:secret@h/db?table=t",
                "password in the source URL",
            ),
            (
                "postgresql://u@h/db?table=t&limit=3",
                "unknown parameter \"limit\"",
            ),
            ("postgresql://u@h/db", "exactly one of"),
            (
                "postgresql://u@h/db?table=t&query=SELECT%201",
                "exactly one of",
            ),
            ("postgresql://h/db?table=t", "no user"),
            ("postgresql://u@h/?table=t", "no database"),
        ] {
            let e = PgSource::parse(source).unwrap_err().to_string();
            assert!(e.contains(says), "{source}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let roots = PgRoots::new(&["postgresql://h:5432/db".into()]).unwrap();
        let ok = PgSource::parse("postgresql://u@H/db?table=t").unwrap();
        roots.check(&ok, String::new).unwrap();
        let other = PgSource::parse("postgresql://u@h/other?table=t").unwrap();
        let e = roots.check(&other, String::new).unwrap_err();
        assert_eq!(e.kind(), quarry_core::ErrorKind::PermissionDenied);
    }
}
