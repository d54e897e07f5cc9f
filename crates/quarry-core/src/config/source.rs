//! `[source.postgres]`: a PostgreSQL table or query as the default source of
//! `quarry run`, written as keys instead of one URL.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub postgres: PostgresSourceConfig,
}

/// The keys of a `postgresql://` source URL. The password is not among them:
/// the extractor, the process that connects, reads it from its own
/// environment (`extractor.postgres_password_env`), because the source URL
/// travels in commands and is recorded with every run and rejected row.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSourceConfig {
    /// `postgresql://user@host:5432/db`; empty = not used.
    pub url: String,
    /// A table or view (`public.trades`) ...
    pub table: String,
    /// ... or a SELECT statement.
    pub query: String,
    /// Reads only rows past the last committed value of this column.
    pub cursor_column: String,
}

impl SourceConfig {
    pub(super) fn validate(&self) -> Result<()> {
        self.postgres.validate()
    }
}

impl PostgresSourceConfig {
    /// The source URL these keys describe, if `url` is set.
    pub fn source(&self) -> Option<String> {
        if self.url.trim().is_empty() {
            return None;
        }
        let mut params = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("table", &self.table),
            ("query", &self.query),
            ("cursor_column", &self.cursor_column),
        ] {
            if !value.trim().is_empty() {
                params.append_pair(key, value.trim());
            }
        }
        Some(format!("{}?{}", self.url.trim(), params.finish()))
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::config(format!("source.postgres: {why}")));
        let url = self.url.trim();
        if url.is_empty() {
            if [&self.table, &self.query, &self.cursor_column]
                .iter()
                .any(|v| !v.trim().is_empty())
            {
                return bad(
                    "table, query and cursor_column need url (postgresql://user@host:5432/db)",
                );
            }
            return Ok(());
        }
        let parsed = match url::Url::parse(url) {
            Ok(u) if crate::run::is_postgres_source(url) => u,
            _ => return bad("url must look like postgresql://user@host:5432/db"),
        };
        if parsed.password().is_some() {
            return bad(
                "url holds a password, which would be recorded with every run: \
                 set it in the extractor's environment (extractor.postgres_password_env)",
            );
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return bad("url takes no ?parameters: use the table, query and cursor_column keys");
        }
        if self.table.trim().is_empty() == self.query.trim().is_empty() {
            return bad("set exactly one of table and query");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(url: &str, table: &str, query: &str, cursor: &str) -> PostgresSourceConfig {
        PostgresSourceConfig {
            url: url.into(),
            table: table.into(),
            query: query.into(),
            cursor_column: cursor.into(),
        }
    }

    #[test]
    fn keys_become_one_source_url_with_encoded_parameters() {
        let c = pg(
            "postgresql://reader@db:5432/trading",
            "",
            "SELECT * FROM t WHERE a = 'x&y'",
            "id",
        );
        c.validate().unwrap();
        assert_eq!(
            c.source().unwrap(),
            "postgresql://reader@db:5432/trading?query=SELECT+*+FROM+t+WHERE+a+%3D+%27x%26y%27&cursor_column=id"
        );
        let c = pg("postgresql://reader@db/trading", "public.trades", "", "");
        assert_eq!(
            c.source().unwrap(),
            "postgresql://reader@db/trading?table=public.trades"
        );
        assert_eq!(pg("", "", "", "").source(), None);
    }

    #[test]
    fn incomplete_or_unsafe_keys_are_refused() {
        for (c, needle) in [
            (pg("", "t", "", ""), "need url"),
            (pg("mysql://u@h/d", "t", "", ""), "must look like"),
            (
                pg("postgresql://u:secret@h/d", "t", "", ""),
                "holds a password",
            ),
            (
                pg("postgresql://u@h/d?table=t", "", "", ""),
                "no ?parameters",
            ),
            (pg("postgresql://u@h/d", "", "", ""), "exactly one"),
            (pg("postgresql://u@h/d", "t", "SELECT 1", ""), "exactly one"),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
