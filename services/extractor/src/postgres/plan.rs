//! Connecting, describing a relation, and cutting it into splits.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::NaiveDate;
use quarry_core::schema::INPUT_COLUMNS;
use quarry_core::{Error, Result};
use quarry_proto::SourceCursor;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

use super::{PgSource, Relation, Split};
use crate::readers::shared::map_columns;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections kept per server, database and user.
const IDLE_PER_USER: usize = 4;

/// Idle connections, reused by the next plan or split of the same server,
/// database and user: a split is one COPY, and a new connection (a server
/// process and a SCRAM exchange) for each of a few hundred splits would
/// cost more than reading them. Only a connection whose last request
/// completed comes back.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Client>>>,
}

impl Pool {
    pub(super) async fn get(&self, src: &PgSource, password_env: &str) -> Result<Client> {
        let key = src.login();
        loop {
            let idle = self
                .idle
                .lock()
                .expect("pool lock")
                .get_mut(&key)
                .and_then(Vec::pop);
            match idle {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => return connect(src, password_env).await,
            }
        }
    }

    pub(super) fn put(&self, src: &PgSource, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(src.login()).or_default();
        if list.len() < IDLE_PER_USER {
            list.push(client);
        }
    }
}

/// Opens a session in UTC with ISO dates, so cursor values and timestamps
/// come back as text that reads the same on the next connection.
async fn connect(src: &PgSource, password_env: &str) -> Result<Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&src.host)
        .port(src.port)
        .dbname(&src.db)
        .user(&src.user)
        .application_name("quarry-extractor")
        .options("-c TimeZone=UTC -c DateStyle=ISO -c standard_conforming_strings=on")
        .connect_timeout(CONNECT_TIMEOUT);
    if let Ok(p) = std::env::var(password_env) {
        config.password(p);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg_error(src, "cannot connect", e))?;
    let server = src.server();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(server = %server, error = %e, "PostgreSQL connection ended with an error");
        }
    });
    Ok(client)
}

/// A PostgreSQL error as Quarry's: a refused login or a missing privilege is
/// PermissionDenied; a missing table, column or a bad query is bad input; a
/// server that cannot be reached is a transient backend error.
pub(super) fn pg_error(src: &PgSource, what: &str, e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    let Some(db) = e.as_db_error() else {
        return Error::backend(format!("PostgreSQL at {}: {what}: {e}", src.server()), true)
            .with_source(e);
    };
    let msg = format!(
        "PostgreSQL at {} (user {}): {what}: {} ({})",
        src.server(),
        src.user,
        db.message(),
        db.code().code()
    );
    let code = db.code();
    if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
    {
        Error::permission_denied(msg)
    } else if code.code().starts_with("08") || code.code().starts_with("57") {
        Error::backend(msg, true)
    } else {
        Error::input(msg)
    }
}

/// How the timestamp column can be cut into UTC weeks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stamp {
    Tz,
    Naive,
    /// Text or anything else: no weeks in SQL.
    Untyped,
}

/// A relation's input columns, as SQL.
pub(super) struct Described {
    /// `schema.table` quoted, or `(query) AS src`.
    pub(super) from: String,
    /// The quoted column of each input column.
    pub(super) columns: [String; 7],
    pub(super) stamp: Stamp,
    /// The quoted cursor column and its type name.
    pub(super) cursor: Option<(String, String)>,
    pub(super) extra: Vec<String>,
}

impl Described {
    fn ts(&self) -> &str {
        &self.columns[0]
    }

    /// The seven input columns as text: timestamps as ISO 8601 in UTC
    /// (infinite ones as `infinity`, which validation rejects), everything
    /// else as PostgreSQL prints it (numeric with all its digits).
    pub(super) fn select_list(&self) -> String {
        let ts = self.ts();
        let stamp = match self.stamp {
            Stamp::Tz => format!(
                "CASE WHEN isfinite({ts}) THEN to_char({ts} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') ELSE {ts}::text END"
            ),
            Stamp::Naive => format!(
                "CASE WHEN isfinite({ts}) THEN to_char({ts}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') ELSE {ts}::text END"
            ),
            Stamp::Untyped => format!("{ts}::text"),
        };
        std::iter::once(stamp)
            .chain(self.columns[1..].iter().map(|c| format!("{c}::text")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The SQL condition that selects a split's rows.
    pub(super) fn condition(&self, split: &Split) -> String {
        let ts = self.ts();
        match split {
            Split::All => "TRUE".into(),
            Split::Week(d) => {
                let next = *d + chrono::Days::new(7);
                let (from, to) = match self.stamp {
                    Stamp::Tz => (
                        format!("'{d} 00:00:00+00'::timestamptz"),
                        format!("'{next} 00:00:00+00'::timestamptz"),
                    ),
                    _ => (format!("'{d}'::timestamp"), format!("'{next}'::timestamp")),
                };
                format!("{ts} >= {from} AND {ts} < {to}")
            }
            Split::NoWeek { after, through } => {
                let mut c = format!("({ts} IS NULL OR NOT isfinite({ts}))");
                c.push_str(&self.cursor_range(after.as_deref(), through.as_deref()));
                c
            }
        }
    }

    /// ` AND cursor > after AND cursor <= through`, for the bounds given.
    fn cursor_range(&self, after: Option<&str>, through: Option<&str>) -> String {
        let Some((col, ty)) = &self.cursor else {
            return String::new();
        };
        let mut c = String::new();
        if let Some(a) = after {
            c.push_str(&format!(" AND {col} > {}::{ty}", literal(a)));
        }
        if let Some(t) = through {
            c.push_str(&format!(" AND {col} <= {}::{ty}", literal(t)));
        }
        c
    }

    /// Rows in a stable order within a split: by time, then by cursor.
    pub(super) fn order(&self, split: &Split) -> String {
        match (split, &self.cursor) {
            (Split::All, _) => String::new(),
            (_, Some((c, _))) => format!(" ORDER BY {}, {c}", self.ts()),
            (_, None) => format!(" ORDER BY {}", self.ts()),
        }
    }
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string (standard_conforming_strings is on).
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Describes the relation of `src` without reading rows.
pub(super) async fn describe(client: &Client, src: &PgSource) -> Result<Described> {
    let name = src.url();
    let from = match &src.relation {
        Relation::Table(t) => {
            let row = client
                .query_opt(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
                    &[t],
                )
                .await
                .map_err(|e| pg_error(src, &format!("cannot look up table {t}"), e))?;
            row.map(|r| r.get::<_, String>(0)).ok_or_else(|| {
                Error::input(format!(
                    "{name}: no table or view {t} in database {} (or user {} cannot see it)",
                    src.db, src.user
                ))
            })?
        }
        Relation::Query(q) => format!("({q}) AS src"),
    };
    let stmt = client
        .prepare(&format!("SELECT * FROM {from} LIMIT 0"))
        .await
        .map_err(|e| pg_error(src, "cannot describe the source", e))?;
    let names: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let mapping = map_columns(Path::new(&name), &names)?;
    let columns = mapping.index.map(|i| ident(&names[i]));
    let stamp = match *stmt.columns()[mapping.index[0]].type_() {
        Type::TIMESTAMPTZ => Stamp::Tz,
        Type::TIMESTAMP => Stamp::Naive,
        _ => Stamp::Untyped,
    };
    let cursor = match &src.cursor_column {
        None => None,
        Some(want) => {
            let col = stmt
                .columns()
                .iter()
                .find(|c| c.name().trim().eq_ignore_ascii_case(want.trim()))
                .ok_or_else(|| {
                    Error::input(format!(
                        "{name}: no cursor column {want} (columns: {})",
                        names.join(", ")
                    ))
                })?;
            let ty = col.type_();
            if ![
                Type::INT2,
                Type::INT4,
                Type::INT8,
                Type::NUMERIC,
                Type::DATE,
                Type::TIMESTAMP,
                Type::TIMESTAMPTZ,
            ]
            .contains(ty)
            {
                return Err(Error::input(format!(
                    "{name}: cursor column {} is {ty}: a cursor must be an integer, numeric, date or timestamp column",
                    col.name()
                )));
            }
            if stamp == Stamp::Untyped {
                return Err(Error::input(format!(
                    "{name}: an incremental read re-reads whole UTC weeks, so its {} column must be timestamp or timestamptz (it is {})",
                    INPUT_COLUMNS[0],
                    stmt.columns()[mapping.index[0]].type_()
                )));
            }
            Some((ident(col.name()), ty.name().to_string()))
        }
    };
    Ok(Described {
        from,
        columns,
        stamp,
        cursor,
        extra: mapping.extra,
    })
}

/// What a plan found: the splits, the columns the source has beside the
/// input columns, and the cursor range the run reads.
pub struct Planned {
    pub splits: Vec<Split>,
    pub extra: Vec<String>,
    pub cursor: Option<SourceCursor>,
}

/// Plans a source: one split per UTC week of its rows (of the changed rows'
/// weeks, past `after`), and one for rows without a week.
pub async fn plan(
    src: &PgSource,
    after: Option<&str>,
    password_env: &str,
    pool: &Pool,
) -> Result<Planned> {
    let client = pool.get(src, password_env).await?;
    let planned = plan_on(&client, src, after).await?;
    pool.put(src, client);
    Ok(planned)
}

async fn plan_on(client: &Client, src: &PgSource, after: Option<&str>) -> Result<Planned> {
    let d = describe(client, src).await?;
    if d.stamp == Stamp::Untyped {
        return Ok(Planned {
            splits: vec![Split::All],
            extra: d.extra,
            cursor: None,
        });
    }
    let (after, through) = match &d.cursor {
        None => (None, None),
        Some((col, _)) => {
            let through: Option<String> = client
                .query_one(&format!("SELECT max({col})::text FROM {}", d.from), &[])
                .await
                .map_err(|e| pg_error(src, "cannot read the highest cursor value", e))?
                .get(0);
            (after.map(str::to_string), through)
        }
    };
    let cursor = src.cursor_column.as_ref().map(|c| SourceCursor {
        column: c.clone(),
        after: after.clone().unwrap_or_default(),
        through: through.clone().unwrap_or_default(),
    });
    // Nothing past the last cursor (or an empty table): nothing to read.
    if d.cursor.is_some() && (through.is_none() || after.is_some() && after == through) {
        return Ok(Planned {
            splits: vec![],
            extra: d.extra,
            cursor,
        });
    }
    let ts = d.ts();
    // ISO weeks: date_trunc('week', …) is the Monday.
    let week = match d.stamp {
        Stamp::Tz => format!("date_trunc('week', {ts} AT TIME ZONE 'UTC')::date"),
        _ => format!("date_trunc('week', {ts})::date"),
    };
    // A full read takes every week; an incremental one the weeks of the rows
    // past the cursor (and not past `through`, the bound this run records).
    let range = if after.is_some() {
        d.cursor_range(after.as_deref(), through.as_deref())
    } else {
        String::new()
    };
    let weeks = client
        .query(
            &format!(
                "SELECT DISTINCT {week}::text FROM {} WHERE isfinite({ts}){range} ORDER BY 1",
                d.from
            ),
            &[],
        )
        .await
        .map_err(|e| pg_error(src, "cannot list the weeks of the source", e))?;
    let mut splits = weeks
        .iter()
        .map(|r| {
            let text: String = r.get(0);
            NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                .map(Split::Week)
                .map_err(|_| Error::internal(format!("PostgreSQL returned the week {text:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // Rows without a week: a full read takes them all; an incremental one
    // those past the cursor.
    splits.push(Split::NoWeek {
        through: after.as_ref().and(through),
        after,
    });
    Ok(Planned {
        splits,
        extra: d.extra,
        cursor,
    })
}
