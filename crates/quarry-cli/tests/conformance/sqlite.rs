//! The embedded SQLite backend: the contract on a real database file.

use crate::common::Env;
use crate::harness::{conformance, daily_loads, generated_rows_in_runs};
use crate::sneak::Sneak;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let env = Env::new();
    let db = env.db.clone();
    conformance(&env, Sneak::Sqlite(db)).await;
}

/// Daily, late, repeated and corrected deliveries equal one run, in ETL and
/// ELT, over the whole sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_loads_equal_one_run() {
    daily_loads(|_| Env::new()).await;
}

/// A million generated trades in 30 runs: ETL = ELT = one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_in_30_runs_equal_one_run() {
    generated_rows_in_runs(|_| Env::new(), 1_000_000, 30).await;
}
