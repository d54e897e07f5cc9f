//! The embedded SQLite backend: the contract on a real database file.

use crate::common::Env;
use crate::harness::conformance;
use crate::sneak::Sneak;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let env = Env::new();
    let db = env.db.clone();
    conformance(&env, Sneak::Sqlite(db)).await;
}
