//! Rows added to a run behind the backend's back, one way per backend: the
//! commit's read-back must notice them.

/// Adds a row to a run behind the backend's back, so that the commit's
/// read-back of what the run holds finds one row more than was sent.
pub enum Sneak {
    /// A trigger that doubles the run's first trade (a run holds SQLite's
    /// write lock, so nothing outside can write during it).
    Sqlite(std::path::PathBuf),
    /// One more row in the run's Log table.
    ClickHouse { url: String, database: String },
    /// One more row in the run's staging table (its loads run at commit).
    BigQuery {
        url: String,
        project: String,
        dataset: String,
    },
    /// One more row in the run's transient staging table (COPY runs at commit).
    Snowflake { upstream: String, database: String },
}

/// The row a sneak adds: a trade of 2024-01-05, as `trade_batch` writes.
const SNEAKED: &str = "'sneaked', 'gold', 'SYM', 'buy'";

impl Sneak {
    pub async fn before_begin(&self) {
        if let Sneak::Sqlite(db) = self {
            rusqlite::Connection::open(db)
                .unwrap()
                .execute_batch(
                    "CREATE TRIGGER sneak AFTER INSERT ON trades WHEN NEW.user_id = 'sneak-user'
                     BEGIN INSERT INTO trades (timestamp, user_id, client_type, symbol, side,
                       quantity, price, trade_date, run_id) VALUES (NEW.timestamp, 'sneaked',
                       'gold', 'SYM', 'buy', 1, 1, NEW.trade_date, NEW.run_id); END;",
                )
                .unwrap();
        }
    }

    pub async fn before_commit(&self, run_id: &str) {
        let tag: String = run_id.chars().filter(char::is_ascii_alphanumeric).collect();
        match self {
            Sneak::Sqlite(_) => {}
            Sneak::ClickHouse { url, database } => {
                let sql = format!(
                    "INSERT INTO {database}.trades_flat_{tag} (timestamp, timestamp_nanos, \
                     user_id, client_type, symbol, side, quantity, price, trade_date, run_id) \
                     VALUES ('2024-01-05 10:00:00', 0, {SNEAKED}, 1, 1, '2024-01-05', '{run_id}')"
                );
                let out = std::process::Command::new("curl")
                    .args(["-s", "--fail-with-body", "--data-binary", &sql, url])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{sql}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            Sneak::BigQuery {
                url,
                project,
                dataset,
            } => {
                let sql = format!(
                    "INSERT INTO `{project}.{dataset}.trades_stage_{tag}` (timestamp, \
                     timestamp_extra_nanos, user_id, client_type, symbol, side, quantity, price, \
                     trade_date, run_id) VALUES (TIMESTAMP '2024-01-05 10:00:00', 0, {SNEAKED}, \
                     1, 1, DATE '2024-01-05', '{run_id}')"
                );
                let body = serde_json::json!({"query": sql, "useLegacySql": false});
                let out = std::process::Command::new("curl")
                    .args(["-sf", "-H", "Content-Type: application/json", "--data"])
                    .arg(body.to_string())
                    .arg(format!("{url}/bigquery/v2/projects/{project}/queries"))
                    .output()
                    .unwrap();
                let answer = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && !answer.contains("\"errors\""),
                    "{answer}"
                );
            }
            Sneak::Snowflake { upstream, database } => {
                crate::snowflake_proxy::sql(
                    upstream,
                    &format!(
                        "INSERT INTO {database}.public.trades_stage_{tag} (timestamp, user_id, \
                         client_type, symbol, side, quantity, price, trade_date, run_id) VALUES \
                         ('2024-01-05 10:00:00', {SNEAKED}, 1, 1, '2024-01-05', '{run_id}')"
                    ),
                )
                .await;
            }
        }
    }

    pub async fn after(&self) {
        if let Sneak::Sqlite(db) = self {
            rusqlite::Connection::open(db)
                .unwrap()
                .execute_batch("DROP TRIGGER sneak")
                .unwrap();
        }
    }
}
