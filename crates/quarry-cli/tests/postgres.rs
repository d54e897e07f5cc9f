//! PostgreSQL sources through the real `quarry` binary, against the
//! PostgreSQL server scripts/test.sh starts: a text table gives what the
//! sample file gives; a typed table is read by UTC week, incrementally past
//! a cursor committed with the run, exactly (numeric(38,18)), by a role that
//! may only SELECT, and with bounded memory at 1M rows.

mod common;

use std::time::Duration;

use common::cli::{one_line_error, peak_of_run, quarry_ok, run_within};
use common::{Env, fixtures};
use futures::SinkExt;
use serde_json::Value;

const READER_PASSWORD: &str = "reader-secret";

/// A database of its own on the stand-in, and a login role that may only
/// read its tables.
struct Pg {
    rt: tokio::runtime::Runtime,
    admin: tokio_postgres::Client,
    server: String,
    db: String,
    reader: String,
}

async fn connect(url: &str, password: &str) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.password(password);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

impl Pg {
    fn new(tag: &str) -> Self {
        let url = quarry_testkit::standin("QUARRY_TEST_POSTGRES_URL");
        let password = quarry_testkit::standin("QUARRY_TEST_POSTGRES_PASSWORD");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let db = format!("quarry_{tag}_{}", std::process::id());
        let reader = format!("reader_{tag}_{}", std::process::id());
        let server = url.rsplit_once('/').unwrap().0.to_string();
        let admin = rt.block_on(async {
            let c = connect(&url, &password).await;
            // One statement per call: CREATE DATABASE cannot run in a transaction.
            for sql in [
                format!("DROP DATABASE IF EXISTS {db}"),
                format!("CREATE DATABASE {db}"),
                format!("DROP ROLE IF EXISTS {reader}"),
                format!("CREATE ROLE {reader} LOGIN PASSWORD '{READER_PASSWORD}'"),
            ] {
                c.batch_execute(&sql).await.unwrap();
            }
            let admin = connect(&format!("{server}/{db}"), &password).await;
            // Tables the tests create are readable by the reader, and nothing more.
            admin
                .batch_execute(&format!(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {reader};"
                ))
                .await
                .unwrap();
            admin
        });
        Self {
            rt,
            admin,
            server,
            db,
            reader,
        }
    }

    fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.admin.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    fn copy_in(&self, sql: &str, data: &[u8]) {
        self.rt.block_on(async {
            let sink = self.admin.copy_in(sql).await.unwrap();
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::copy_from_slice(data))
                .await
                .unwrap();
            sink.close().await.unwrap();
        });
    }

    /// The source URL of `params` (`table=…&cursor_column=…`), as the reader.
    fn source(&self, params: &str) -> String {
        let server = self.server.replace("postgresql://quarry@", "");
        format!("postgresql://{}@{server}/{}?{params}", self.reader, self.db)
    }

    /// Runs `quarry ARGS` in `env` with the reader's password in PGPASSWORD.
    fn run(&self, env: &Env, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
        let mut all = vec![("PGPASSWORD", READER_PASSWORD)];
        all.extend_from_slice(vars);
        run_within(env.dir.path(), args, &all, Duration::from_secs(300))
    }

    fn run_ok(&self, env: &Env, args: &[&str], vars: &[(&str, &str)]) {
        let out = self.run(env, args, vars);
        assert!(
            out.status.success(),
            "quarry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn quality(env: &Env) -> Value {
    let text = std::fs::read_to_string(env.dir.path().join("output/quality_report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The files (splits) a run read, by their fragment.
fn splits(report: &Value) -> Vec<String> {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = f["file"].as_str().unwrap();
            name.split_once('#').unwrap().1.to_string()
        })
        .collect()
}

fn reports(env: &Env) -> Vec<String> {
    ["top_bronze_by_volume.csv", "top_bronze_by_pnl.csv"]
        .iter()
        .map(|f| std::fs::read_to_string(env.dir.path().join("output").join(f)).unwrap())
        .collect()
}

/// Every table of `env`, with the rejected rows' source and row left out.
fn tables(env: &Env) -> Vec<String> {
    env.snapshot()
        .into_iter()
        .map(|r| {
            let cols: Vec<&str> = r.split('|').collect();
            if cols[0].contains("\"trades_rejected\"") {
                cols[..9].join("|")
            } else {
                r
            }
        })
        .collect()
}

#[test]
#[ignore = "needs the PostgreSQL stand-in: scripts/test.sh runs it"]
fn a_text_table_gives_the_tables_and_reports_of_the_sample_file() {
    let plain = Env::new();
    plain.copy_fixture();
    quarry_ok(
        plain.dir.path(),
        &["run", "-q", "--source", "data/trades_sample.csv"],
    );

    let pg = Pg::new("text");
    pg.exec(
        "CREATE TABLE raw_trades (\"Timestamp\" text, user_id text, client_type text, symbol text,
         side text, quantity text, price text, note text)",
    );
    let sample = std::fs::read(fixtures().join("trades_sample.csv")).unwrap();
    pg.copy_in(
        "COPY raw_trades (\"Timestamp\", user_id, client_type, symbol, side, quantity, price) \
         FROM STDIN (FORMAT csv, HEADER true)",
        &sample,
    );
    let env = Env::new();
    let source = pg.source("table=public.raw_trades");
    pg.run_ok(&env, &["run", "-q", "--source", &source], &[]);

    let (got, want) = (tables(&env), tables(&plain));
    let diff: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
    let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
    assert!(
        diff.is_empty() && missing.is_empty() && got.len() == want.len(),
        "extra {diff:?}, missing {missing:?}"
    );
    assert_eq!(reports(&env), reports(&plain));
    let q = quality(&env);
    // A text timestamp cannot be cut into days in SQL: one split.
    assert_eq!(splits(&q), ["rows=all"]);
    assert_eq!(q["columns"]["extra"], serde_json::json!(["note"]));
    let labels = env.count(&format!(
        "SELECT count(*) FROM trades_rejected WHERE source_file = '{source}#rows=all'"
    ));
    assert_eq!(labels, env.count("SELECT count(*) FROM trades_rejected"));
    assert!(labels > 0);

    // The same rows named by [source.postgres] keys (here from the
    // environment) instead of --source, with a query to encode.
    let keyed = Env::new();
    let url = pg.source("").trim_end_matches('?').to_string();
    let query = "SELECT * FROM raw_trades WHERE note IS NULL OR note <> '&#?'";
    pg.run_ok(
        &keyed,
        &["run", "-q"],
        &[
            ("QUARRY_SOURCE__POSTGRES__URL", &url),
            ("QUARRY_SOURCE__POSTGRES__QUERY", query),
        ],
    );
    assert_eq!(tables(&keyed), want);
    assert_eq!(reports(&keyed), reports(&plain));
    assert!(
        quality(&keyed)["source"]
            .as_str()
            .unwrap()
            .contains("query=SELECT")
    );
}

/// Typed trades over `days` days from 2024-03-04 (a Monday), `per_day` rows
/// each, with ids from `first_id`.
fn typed_rows(first_id: i64, days: i64, per_day: i64, day0: i64) -> String {
    format!(
        "INSERT INTO trades (id, \"timestamp\", user_id, client_type, symbol, side, quantity, price)
         SELECT {first_id} + g,
                timestamptz '2024-03-04 00:00:00+00' + ({day0} + g / {per_day}) * interval '1 day'
                    + (g % {per_day}) * (86399 / {per_day}) * interval '1 second',
                (3001 + g % 7)::text,
                (ARRAY['gold','silver','bronze'])[1 + g % 3],
                (ARRAY['AAPL','MSFT','TSLA'])[1 + (g + g / 3) % 3],
                CASE WHEN g % 2 = 0 THEN 'buy' ELSE 'sell' END,
                (1 + g % 13) + (g % 100) / 100.0,
                (100 + g % 50) + (g % 10000) / 10000.0
         FROM generate_series(0, {days} * {per_day} - 1) AS g;"
    )
}

const TYPED: &str = "CREATE TABLE trades (
    id bigint PRIMARY KEY,
    \"timestamp\" timestamptz,
    user_id text,
    client_type text,
    symbol text,
    side text,
    quantity numeric(38,18),
    price numeric(38,18),
    updated_at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX ON trades (\"timestamp\");";

/// Every table, with the label of the split of rows without a week reduced
/// to `none` (it names the cursor range of an incremental read).
fn tables_by_week(env: &Env) -> Vec<String> {
    env.snapshot()
        .into_iter()
        .map(|r| match r.find("#week=none") {
            Some(i) => {
                let end = r[i..].find('|').map_or(r.len(), |j| i + j);
                format!("{}#week=none{}", &r[..i], &r[end..])
            }
            None => r,
        })
        .collect()
}

#[test]
#[ignore = "needs the PostgreSQL stand-in: scripts/test.sh runs it"]
fn a_typed_table_is_read_by_week_and_incrementally_past_the_committed_cursor() {
    let pg = Pg::new("incr");
    pg.exec(TYPED);
    // Three weeks: 2024-03-04 to 2024-03-24.
    pg.exec(&typed_rows(1, 21, 20, 0));
    let source = pg.source("table=trades&cursor_column=id");
    let env = Env::new();
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut all = vec!["run", "-q", "--source", &source];
        all.extend_from_slice(args);
        pg.run_ok(&env, &all, vars);
        quality(&env)
    };

    // A first run reads every week, and records the cursor it read through.
    let q = run(&[], &[]);
    assert_eq!(
        splits(&q),
        [
            "week=2024-03-04",
            "week=2024-03-11",
            "week=2024-03-18",
            "week=none"
        ]
    );
    assert_eq!(
        q["cursor"],
        serde_json::json!({"column": "id", "after": null, "through": "420"})
    );
    assert_eq!(env.count("SELECT count(*) FROM trades"), 420);

    // New rows in two existing weeks and in a new one, a row without a
    // timestamp, and numeric(38,18) values: a large exact one and one with
    // more decimal places than Quarry keeps (rejected with its digits).
    pg.exec(&typed_rows(1000, 1, 5, 4));
    pg.exec(&typed_rows(2000, 1, 5, 21));
    pg.exec(
        "INSERT INTO trades (id, \"timestamp\", user_id, client_type, symbol, side, quantity, price) VALUES
         (3000, NULL, '3001', 'gold', 'AAPL', 'buy', 1, 1),
         (3001, '2024-03-15 10:00:00+02', '9001', 'bronze', 'AAPL', 'sell', 1234567890.12345678, 0.00000001),
         (3002, '2024-03-15 23:30:00-05', '9001', 'bronze', 'AAPL', 'sell', 0.00000001, 1),
         (3003, '2024-03-15 12:00:00+00', '9002', 'bronze', 'AAPL', 'buy', 0.123456789012345678, 2);",
    );
    let q = run(&[], &[]);
    // Only the changed weeks are read, whole: not the week of 2024-03-18.
    assert_eq!(
        splits(&q),
        [
            "week=2024-03-04",
            "week=2024-03-11",
            "week=2024-03-25",
            "week=none&after=420&through=3003",
        ]
    );
    assert_eq!(q["cursor"]["after"], "420");
    assert_eq!(q["cursor"]["through"], "3003");
    let rejected: Vec<(String, String)> = env
        .conn()
        .prepare("SELECT quantity, reason FROM trades_rejected ORDER BY quantity")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        rejected,
        [
            (
                "0.123456789012345678".to_string(),
                "quantity_invalid".to_string()
            ),
            // The text of the numeric(38,18) value, as PostgreSQL prints it.
            ("1.000000000000000000".into(), "timestamp_missing".into()),
        ]
    );
    // Exact sums of numeric(38,18) values, in the report files.
    let by_volume = &reports(&env)[0];
    assert!(
        by_volume.contains("\n9001,1234567890.12345679\n"),
        "{by_volume}"
    );

    // The same warehouse as one full read of the final table.
    let full = Env::new();
    pg.run_ok(
        &full,
        &["run", "-q", "--source", &source, "--full-refresh"],
        &[],
    );
    assert_eq!(tables_by_week(&env), tables_by_week(&full));
    assert_eq!(reports(&env), reports(&full));

    // Nothing new: no split is read, the warehouse stays as it is.
    let before = env.snapshot();
    let q = run(&[], &[]);
    assert_eq!(splits(&q), Vec::<String>::new());
    assert_eq!(q["cursor"]["after"], "3003");
    assert_eq!(env.snapshot(), before);

    // A run that fails after reading (a new week of invalid rows only: the
    // validity check stops it before its commit) leaves the cursor where it was: the next run reads the
    // same rows again, and nothing is skipped.
    pg.exec(
        "INSERT INTO trades (id, \"timestamp\", user_id, client_type, symbol, side, quantity, price)
         SELECT 4000 + g, '2024-04-01 09:00:00+00', '3001', 'gold', 'AAPL', 'hold', 1, 1
         FROM generate_series(1, 20) AS g;",
    );
    let out = pg.run(&env, &["run", "-q", "--source", &source], &[]);
    one_line_error(&out, &["validity"]);
    assert_eq!(env.snapshot(), before);
    let q = run(
        &[],
        &[("QUARRY_TRANSFORMER__QUALITY__VALIDITY__SEVERITY", "warn")],
    );
    assert_eq!(q["cursor"]["after"], "3003");
    assert_eq!(q["cursor"]["through"], "4020");
    assert_eq!(
        env.count("SELECT count(*) FROM trades_rejected WHERE reason = 'side_invalid'"),
        20
    );
}

#[test]
#[ignore = "needs the PostgreSQL stand-in: scripts/test.sh runs it"]
fn bad_credentials_privileges_and_columns_fail_in_one_line_and_change_nothing() {
    let pg = Pg::new("errors");
    pg.exec(TYPED);
    pg.exec(&typed_rows(1, 2, 10, 0));
    pg.exec("CREATE TABLE secret (LIKE trades); REVOKE SELECT ON secret FROM PUBLIC;");
    pg.exec(&format!("REVOKE SELECT ON secret FROM {}", pg.reader));
    pg.exec("CREATE TABLE no_price AS SELECT id, \"timestamp\", user_id, client_type, symbol, side, quantity FROM trades");
    let env = Env::new();
    let fail = |source: &str, vars: &[(&str, &str)], needles: &[&str]| {
        let out = pg.run(&env, &["run", "-q", "--source", source], vars);
        let line = one_line_error(&out, needles);
        assert!(!line.contains(READER_PASSWORD), "{line}");
    };
    let good = pg.source("table=trades");
    fail(
        &good,
        &[("PGPASSWORD", "wrong")],
        &["password authentication failed", &pg.reader],
    );
    fail(
        &pg.source("table=secret"),
        &[],
        &["permission denied", "secret"],
    );
    fail(
        &pg.source("table=no_price"),
        &[],
        &["missing required column price"],
    );
    fail(
        &pg.source("table=nowhere"),
        &[],
        &["no table or view nowhere"],
    );
    fail(
        &pg.source("table=trades&cursor_column=symbol"),
        &[],
        &["cursor column symbol is text"],
    );
    let with_password = good.replace(
        &format!("{}@", pg.reader),
        &format!("{}:{READER_PASSWORD}@", pg.reader),
    );
    fail(
        &with_password,
        &[],
        &["password in the source URL is refused"],
    );
    assert!(!env.db.exists() || env.count("SELECT count(*) FROM trades") == 0);
}

#[test]
#[ignore = "needs the PostgreSQL stand-in: scripts/test.sh runs it"]
fn a_million_row_table_is_read_with_bounded_memory() {
    let pg = Pg::new("big");
    pg.exec(TYPED);
    pg.exec(&typed_rows(1, 50, 20_000, 0));
    let env = Env::new();
    // The same rows as a CSV file, which Quarry streams: the yardstick.
    let csv = pg.rt.block_on(async {
        let out = pg
            .admin
            .copy_out(
                "COPY (SELECT to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS \"timestamp\", user_id, client_type, symbol, side, quantity, price \
                 FROM trades) TO STDOUT (FORMAT csv, HEADER true)",
            )
            .await
            .unwrap();
        futures::pin_mut!(out);
        let mut bytes = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut out).await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        bytes
    });
    let file = env.write("trades.csv", &csv);
    let peak_of = |source: &str, db: &str| {
        peak_of_run(
            env.dir.path(),
            &[("PGPASSWORD", READER_PASSWORD)],
            source,
            db,
        )
    };
    let file_peak = peak_of(&file.display().to_string(), "file.db");
    let pg_peak = peak_of(&pg.source("table=trades"), "pg.db");
    let q = quality(&env);
    assert_eq!(q["rows_in"], 1_000_000);
    // 50 days from a Monday: 8 weeks, and the split of rows without one.
    assert_eq!(splits(&q).len(), 9);
    // A run that held the table (95 MB as CSV text, more as Arrow strings)
    // would be far above one that streams the same rows from a file.
    assert!(
        pg_peak < file_peak + file_peak / 2,
        "peak RSS from PostgreSQL {pg_peak} KiB, from the file {file_peak} KiB"
    );
    assert!(pg_peak < 256 * 1024, "peak RSS {pg_peak} KiB");
}

#[test]
#[ignore = "needs the PostgreSQL stand-in: scripts/test.sh runs it"]
fn served_services_read_only_the_databases_in_the_extractors_roots() {
    let pg = Pg::new("served");
    pg.exec(TYPED);
    pg.exec(&typed_rows(1, 3, 10, 0));
    let env = Env::new();
    let server = pg.server.replace("postgresql://quarry@", "");
    let roots = format!(
        "[{:?}, \"postgresql://{server}/{}\"]",
        env.data.display().to_string(),
        pg.db
    );
    let stack = common::procs::Stack::start(
        &env,
        &[
            ("QUARRY_EXTRACTOR__DATA_ROOTS", roots.as_str()),
            ("PGPASSWORD", READER_PASSWORD),
        ],
    );
    let (transformer, loader) = (stack.transformer.url(), stack.loader.url());
    let source = pg.source("table=trades&cursor_column=id");
    let args = [
        "run",
        "-q",
        "--transformer",
        &transformer,
        "--loader",
        &loader,
        "--source",
    ];
    let out = pg.run(&env, &[&args[..], &[source.as_str()]].concat(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.count("SELECT count(*) FROM trades"), 30);
    // Another database of the same server is outside the roots.
    let other = source.replace(&format!("/{}?", pg.db), "/postgres?");
    let out = pg.run(&env, &[&args[..], &[other.as_str()]].concat(), &[]);
    one_line_error(&out, &["outside the extractor's data roots", "/postgres"]);
    assert_eq!(env.count("SELECT count(*) FROM trades"), 30);
    stack.stop();
}
