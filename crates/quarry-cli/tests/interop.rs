//! Independent clients against the services: grpcurl (reflection, health)
//! and pyarrow.flight (DoGet of a split). scripts/test.sh installs both and
//! sets QUARRY_GRPCURL and QUARRY_PYTHON; when it has, a missing or broken
//! tool fails these tests.

mod common;

use std::process::Command;

use common::Env;
use quarry_cli::embedded::Cluster;
use quarry_core::schema::{INPUT_COLUMNS, SOURCE_ROW};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl (QUARRY_GRPCURL): scripts/test.sh runs it"]
async fn grpcurl_sees_reflection_and_health_on_every_service() {
    let grpcurl = quarry_testkit::standin("QUARRY_GRPCURL");
    let env = Env::new();
    let src = env.copy_fixture();
    let cluster = Cluster::start(&env.config).await.unwrap();
    let services = [
        (
            cluster.extractor_url.clone().unwrap(),
            "quarry.v1.ExtractorService",
        ),
        (
            cluster.transformer_url.clone().unwrap(),
            "quarry.v1.TransformerService",
        ),
        (cluster.loader_url.clone(), "quarry.v1.LoaderService"),
    ];
    for (url, service) in &services {
        let list = tokio::task::block_in_place(|| {
            run(Command::new(&grpcurl).args(["-plaintext", host(url), "list"]))
        });
        assert!(
            list.contains(service) && list.contains("grpc.health.v1.Health"),
            "{list}"
        );
        let health = tokio::task::block_in_place(|| {
            run(Command::new(&grpcurl).args([
                "-plaintext",
                "-d",
                &format!("{{\"service\":\"{service}\"}}"),
                host(url),
                "grpc.health.v1.Health/Check",
            ]))
        });
        assert!(health.contains("SERVING"), "{health}");
    }
    let plan = tokio::task::block_in_place(|| {
        run(Command::new(&grpcurl).args([
            "-plaintext",
            "-d",
            &format!("{{\"source\":{:?}}}", src.display().to_string()),
            host(&services[0].0),
            "quarry.v1.ExtractorService/Plan",
        ]))
    });
    assert!(
        plan.contains("trades_sample.csv") && plan.contains("SOURCE_FORMAT_CSV"),
        "{plan}"
    );
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pyarrow (QUARRY_PYTHON): scripts/test.sh runs it"]
async fn pyarrow_flight_reads_a_split_from_the_extractor() {
    let python = quarry_testkit::standin("QUARRY_PYTHON");
    let env = Env::new();
    let src = env.copy_fixture();
    let cluster = Cluster::start(&env.config).await.unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/flight_client.py"
    );
    let out = tokio::task::block_in_place(|| {
        run(Command::new(&python).args([
            script,
            cluster.extractor_url.as_deref().unwrap(),
            &src.display().to_string(),
        ]))
    });
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["endpoints"], 1);
    assert_eq!(got["rows"], 800);
    let mut columns = INPUT_COLUMNS.to_vec();
    columns.push(SOURCE_ROW);
    assert_eq!(got["columns"], serde_json::json!(columns));
    assert_eq!(got["first"]["user_id"], "1001");
    cluster.stop().await.unwrap();
}
