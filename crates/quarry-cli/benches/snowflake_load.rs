//! The Snowflake backend's load rate against the fakesnow stand-in, through
//! the whole pipeline (PUT of Parquet files, COPY INTO, the commit
//! transaction). Needs the stand-in scripts/standins.sh starts:
//!
//! ```sh
//! . scripts/standins.sh; start_snowflake   # exports QUARRY_TEST_SNOWFLAKE_URL
//! cargo bench -p quarry-cli --bench snowflake_load -- 1000000
//! ```
//!
//! fakesnow's COPY is DuckDB reading Parquet: the number says how fast
//! Quarry stages a run, little about real Snowflake.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/snowflake_proxy/mod.rs"]
mod snowflake_proxy;

use common::Env;
use quarry_core::Table;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; the first number is the input size.
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let url = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_URL");
    let proxy = snowflake_proxy::start(&url);
    let mut env = Env::new();
    let database = format!("quarry_rate_{}", std::process::id());
    snowflake_proxy::configure(&mut env.config.warehouse, &proxy, &database);
    let mut csv = vec![];
    quarry_testkit::generate(
        &quarry_testkit::GenOptions {
            rows,
            ..Default::default()
        },
        &mut csv,
    )
    .unwrap();
    let src = env.write("gen.csv", csv);
    let started = std::time::Instant::now();
    env.run(&src).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let wh = quarry_warehouse::open(&env.config.warehouse).unwrap();
    let mut loaded = 0;
    for t in Table::ALL {
        loaded += wh
            .list_partitions(t)
            .await
            .unwrap()
            .iter()
            .map(|p| p.rows)
            .sum::<u64>();
    }
    println!(
        "snowflake load: {rows} input rows, {loaded} rows loaded into 3 tables in {secs:.1} s = {:.0} rows/s",
        loaded as f64 / secs
    );
}
