//! .github/workflows/ci.yml: valid by the GitHub-workflow schema, running
//! the suite as the README does, building the image and keeping the results.

use serde_norway::Value;

use super::{check_jsonschema, read, s, workspace_rust_version, yaml};

#[test]
#[ignore = "needs check-jsonschema (QUARRY_CHECK_JSONSCHEMA): scripts/test.sh runs it"]
fn workflow_matches_the_github_schema() {
    check_jsonschema("vendor.github-workflows", ".github/workflows/ci.yml");
}

#[test]
fn workflow_runs_the_suite_builds_the_image_and_keeps_the_results() {
    let wf = yaml(&read(".github/workflows/ci.yml"));
    let jobs = wf["jobs"].as_mapping().unwrap();
    let steps = |job: &str| -> Vec<Value> {
        wf["jobs"][job]["steps"]
            .as_sequence()
            .unwrap_or_else(|| panic!("job {job} has no steps"))
            .clone()
    };
    let runs = |job: &str| -> String {
        steps(job)
            .iter()
            .filter_map(|st| st["run"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let uses = |job: &str| -> Vec<String> {
        steps(job)
            .iter()
            .filter_map(|st| st["uses"].as_str().map(str::to_string))
            .collect()
    };
    for job in ["fmt", "clippy", "test", "image"] {
        assert!(jobs.contains_key(job), "job {job}");
        assert!(uses(job).contains(&"actions/checkout@v4".to_string()));
    }
    let rust_image = format!("rust:{}-bookworm", workspace_rust_version());
    for job in ["fmt", "clippy", "test"] {
        assert_eq!(
            s(&wf["jobs"][job]["container"]),
            rust_image,
            "{job}: toolchain"
        );
    }
    assert!(runs("fmt").contains("cargo fmt --all --check"));
    assert!(
        runs("clippy").contains("cargo clippy --workspace --all-targets --locked -- -D warnings")
    );
    assert!(runs("test").lines().any(|l| l.trim() == "scripts/test.sh"));
    // The README's test command, unchanged.
    assert!(read(".ci/run").contains("exec scripts/test.sh"));
    for job in ["clippy", "test"] {
        assert!(
            uses(job)
                .iter()
                .any(|u| u.starts_with("Swatinem/rust-cache@")),
            "{job}: cargo cache"
        );
    }
    let build = steps("image")
        .into_iter()
        .find(|st| {
            st["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("docker/build-push-action@"))
        })
        .expect("image build step");
    assert_eq!(s(&build["with"]["file"]), "deploy/docker/Dockerfile");
    assert!(runs("image").contains("docker compose up --no-build --exit-code-from run"));
    let upload = steps("image")
        .into_iter()
        .find(|st| st["uses"].as_str() == Some("actions/upload-artifact@v4"))
        .expect("artifact upload");
    let paths: Vec<&str> = s(&upload["with"]["path"]).lines().map(str::trim).collect();
    assert!(
        paths.contains(&"agg_result.db") && paths.contains(&"output/"),
        "{paths:?}"
    );
}
