//! Shared helpers of the end-to-end tests: real services on loopback ports,
//! real SQLite files in temporary directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use quarry_cli::client::{self, LoaderClient};
use quarry_cli::embedded::Cluster;
use quarry_core::Config;
use quarry_proto::{RunOptions, RunRecord, RunRequest, RunSummary};
use rusqlite::{Connection, OpenFlags};

/// The reference sample and its expected results, kept in the repository.
pub fn fixtures() -> PathBuf {
    let dir = quarry_testkit::fixtures_dir();
    assert!(
        dir.join("trades_sample.csv").exists(),
        "reference fixtures not found at {}",
        dir.display()
    );
    dir
}

/// A directory holding `data/trades.csv` (the sample), as a user has it.
pub fn user_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::copy(
        fixtures().join("trades_sample.csv"),
        dir.path().join("data/trades.csv"),
    )
    .unwrap();
    dir
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub db: PathBuf,
    pub config: Config,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let db = dir.path().join("agg_result.db");
        let mut config = Config::default();
        config.extractor.data_roots = vec![data.clone()];
        config.warehouse.sqlite.path = db.clone();
        config.transformer.progress_interval_ms = 20;
        Self {
            dir,
            data,
            db,
            config,
        }
    }

    /// Writes a file under the data root and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.data.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    pub fn copy_fixture(&self) -> PathBuf {
        let p = self.data.join("trades_sample.csv");
        std::fs::copy(fixtures().join("trades_sample.csv"), &p).unwrap();
        p
    }

    /// Runs the pipeline through freshly started services.
    pub async fn run(&self, source: &Path) -> quarry_core::Result<RunSummary> {
        self.run_with(source, RunOptions::default()).await
    }

    pub async fn run_with(
        &self,
        source: &Path,
        options: RunOptions,
    ) -> quarry_core::Result<RunSummary> {
        let cluster = Cluster::start(&self.config).await?;
        let req = RunRequest {
            source: source.display().to_string(),
            options: Some(options),
            ..Default::default()
        };
        let r =
            client::run_pipeline(cluster.transformer_url.as_deref().unwrap(), req, |_| {}).await;
        cluster.stop().await?;
        r
    }

    pub async fn runs(&self) -> Vec<RunRecord> {
        let cluster = Cluster::start_loader(&self.config).await.unwrap();
        let mut l = LoaderClient::connect(&cluster.loader_url).await.unwrap();
        let runs = l.list_runs(100).await.unwrap();
        cluster.stop().await.unwrap();
        runs
    }

    pub fn conn(&self) -> Connection {
        Connection::open_with_flags(&self.db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    /// Every row of the data tables (run_id left out), sorted: equal
    /// snapshots mean an identical warehouse.
    pub fn snapshot(&self) -> Vec<String> {
        let c = self.conn();
        let mut out = vec![];
        for (table, cols) in [
            (
                "trades",
                "timestamp, user_id, client_type, symbol, side, quote(quantity), quote(price), trade_date",
            ),
            (
                "trades_rejected",
                "timestamp, user_id, client_type, symbol, side, quantity, price, reason, source_file, source_row",
            ),
            (
                "agg_trades_weekly",
                "week_start_date, client_type, user_id, symbol, quote(total_volume), quote(total_pnl), trade_count",
            ),
        ] {
            let mut st = c
                .prepare(&format!("SELECT '{table}', {cols} FROM {table}"))
                .unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(|v| v.join("|"))
                })
                .unwrap()
                .collect::<rusqlite::Result<Vec<_>>>()
                .unwrap();
            out.extend(rows);
        }
        out.sort();
        out
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

pub const HEADER: &str = "timestamp,user_id,client_type,symbol,side,quantity,price\n";

/// A CSV of `n` valid trades spread over one week.
pub fn valid_rows(n: usize) -> String {
    let mut s = String::from(HEADER);
    for i in 0..n {
        s.push_str(&format!(
            "2024-01-0{} 1{}:00:00,{},gold,SYM{},buy,1.5,10.25\n",
            1 + i % 7,
            i % 10,
            100 + i % 50,
            i % 5
        ));
    }
    s
}

/// One row of `agg_trades_weekly`: week, client type, user, symbol, volume,
/// PnL, trade count.
pub type AggRow<T> = (String, String, String, String, T, T, i64);

/// The expected aggregate of the sample, sorted by its group key; `amount`
/// reads a volume or PnL from its text and scale.
pub fn expected_agg<T>(amount: impl Fn(&str, u32) -> T) -> Vec<AggRow<T>> {
    use quarry_core::decimal::{PNL_SCALE, SCALE};
    let mut rows: Vec<AggRow<T>> =
        csv::Reader::from_path(fixtures().join("trades_sample.expected_agg.csv"))
            .unwrap()
            .records()
            .map(|r| {
                let r = r.unwrap();
                (
                    r[0].to_string(),
                    r[1].to_string(),
                    r[2].to_string(),
                    r[3].to_string(),
                    amount(&r[4], SCALE),
                    amount(&r[5], PNL_SCALE),
                    r[6].parse().unwrap(),
                )
            })
            .collect();
    rows.sort_by(|a, b| (&a.0, &a.1, &a.2, &a.3).cmp(&(&b.0, &b.1, &b.2, &b.3)));
    rows
}

pub mod cli;
pub mod counting_proxy;
pub mod procs;
