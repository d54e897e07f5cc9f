//! Dataset names as OpenLineage names each system
//! (<https://openlineage.io/docs/spec/naming>).

/// A source, file or object as an OpenLineage dataset (namespace, name),
/// named the way OpenLineage names each system: local files under `file`,
/// objects under `s3://bucket` with the key as name, PostgreSQL tables under
/// `postgres://host:port` as `db.schema.table`.
pub fn dataset_of(source: &str) -> (String, String) {
    let source = source.split('#').next().unwrap_or(source);
    if let Some((scheme, rest)) = source.split_once("://") {
        if quarry_core::run::is_postgres_source(source) {
            return postgres_dataset(rest);
        }
        if scheme == "file" {
            return ("file".into(), rest.to_string());
        }
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        return (format!("{scheme}://{bucket}"), key.to_string());
    }
    let path = std::path::absolute(source).unwrap_or_else(|_| source.into());
    ("file".into(), path.display().to_string())
}

/// `user@host:port/db?table=public.trades` → (`postgres://host:port`,
/// `db.public.trades`); a query is named by its database and `query`.
fn postgres_dataset(rest: &str) -> (String, String) {
    let (location, params) = rest.split_once('?').unwrap_or((rest, ""));
    let location = location.rsplit_once('@').map_or(location, |(_, l)| l);
    let (server, db) = location.split_once('/').unwrap_or((location, ""));
    let server = if server.contains(':') {
        server.to_string()
    } else {
        format!("{server}:5432")
    };
    let table = params.split('&').find_map(|p| p.strip_prefix("table="));
    let name = match table {
        Some(t) if t.contains('.') => format!("{db}.{t}"),
        Some(t) => format!("{db}.public.{t}"),
        None => format!("{db}.query"),
    };
    (format!("postgres://{server}"), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_named_as_openlineage_names_their_systems() {
        assert_eq!(
            dataset_of("s3://landing/trades/2024-05-01.csv.gz"),
            ("s3://landing".into(), "trades/2024-05-01.csv.gz".into())
        );
        assert_eq!(
            dataset_of("postgresql://reader@db:6543/trading?table=public.trades#week=2024-04-29"),
            ("postgres://db:6543".into(), "trading.public.trades".into())
        );
        assert_eq!(
            dataset_of("postgresql://reader@db/trading?table=trades&cursor_column=id"),
            ("postgres://db:5432".into(), "trading.public.trades".into())
        );
        assert_eq!(
            dataset_of("postgresql://reader@db/trading?query=SELECT+1"),
            ("postgres://db:5432".into(), "trading.query".into())
        );
        assert_eq!(
            dataset_of("/srv/data/t.csv"),
            ("file".into(), "/srv/data/t.csv".into())
        );
        assert_eq!(
            dataset_of("file:///srv/cold"),
            ("file".into(), "/srv/cold".into())
        );
    }
}
