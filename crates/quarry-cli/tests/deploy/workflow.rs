//! .github/workflows/ci.yml: valid by the GitHub-workflow schema, running
//! the suite as the README does, building the image and keeping the results.

use serde_norway::Value;

use super::{check_jsonschema, read, s, strings, workspace_rust_version, yaml};

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
    // The first step of `job` using the action `action` (`owner/name@`).
    let step_using = |job: &str, action: &str| -> Value {
        steps(job)
            .into_iter()
            .find(|st| st["uses"].as_str().is_some_and(|u| u.starts_with(action)))
            .unwrap_or_else(|| panic!("{job}: no step uses {action}"))
    };
    let uses = |job: &str| -> Vec<String> {
        steps(job)
            .iter()
            .filter_map(|st| st["uses"].as_str().map(str::to_string))
            .collect()
    };
    // fmt and clippy run once, inside scripts/test.sh.
    assert_eq!(
        jobs.keys().map(s).collect::<Vec<_>>(),
        ["test", "image", "publish"],
        "jobs"
    );
    for job in ["test", "image", "publish"] {
        assert!(
            !runs(job).contains("cargo fmt") && !runs(job).contains("cargo clippy"),
            "{job}: fmt and clippy run in scripts/test.sh"
        );
        // Every action pinned to a commit, and no checkout keeps its token.
        for st in steps(job) {
            let Some(action) = st["uses"].as_str() else {
                continue;
            };
            let (_, rev) = action.split_once('@').unwrap();
            assert!(
                rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()),
                "{job}: {action} is not pinned to a commit"
            );
            if action.starts_with("actions/checkout@") {
                assert_eq!(
                    st["with"]["persist-credentials"].as_bool(),
                    Some(false),
                    "{job}: checkout keeps its credentials"
                );
            }
        }
        assert!(
            uses(job).iter().any(|u| u.starts_with("actions/checkout@")),
            "{job}: checkout"
        );
    }
    let rust_image = format!("rust:{}-bookworm", workspace_rust_version());
    assert_eq!(s(&wf["jobs"]["test"]["container"]), rust_image, "toolchain");
    assert!(runs("test").lines().any(|l| l.trim() == "scripts/test.sh"));
    let test_sh = read("scripts/test.sh");
    assert!(test_sh.contains("cargo fmt --all --check"));
    assert!(test_sh.contains("cargo clippy --workspace --all-targets --locked -- -D warnings"));
    // The README's test command, unchanged.
    assert!(read(".ci/run").contains("exec scripts/test.sh"));
    assert!(
        uses("test")
            .iter()
            .any(|u| u.starts_with("Swatinem/rust-cache@")),
        "test: cargo cache"
    );
    // Inside a container job, `github.workspace` is the runner's path: a
    // target directory named by it is never where rust-cache looks.
    let target = s(&wf["jobs"]["test"]["env"]["CARGO_TARGET_DIR"]);
    assert!(
        !target.starts_with('/') && !target.contains("${{"),
        "CARGO_TARGET_DIR {target}: relative to the checkout"
    );
    let cached = step_using("test", "actions/cache@");
    let cached = s(&cached["with"]["path"]).to_string();
    for venv in [
        "venv",
        "venv-s3",
        "venv-bigquery",
        "venv-snowflake",
        "bench-venv",
    ] {
        assert!(
            cached
                .lines()
                .any(|l| l.trim().ends_with(&format!("/{venv}"))),
            "{venv} is not cached"
        );
    }
    let build = step_using("image", "docker/build-push-action@");
    assert_eq!(s(&build["with"]["file"]), "deploy/docker/Dockerfile");
    assert!(runs("image").contains("docker compose up --no-build --exit-code-from run"));
    // The image goes to the registry from main only, after the suite and
    // the compose run passed, with the one permission it needs, and the
    // reference by digest is reported.
    let publish = &wf["jobs"]["publish"];
    assert!(s(&publish["if"]).contains("github.ref == 'refs/heads/main'"));
    assert_eq!(strings(&publish["needs"]), ["test", "image"]);
    assert_eq!(s(&publish["permissions"]["packages"]), "write");
    let push = step_using("publish", "docker/build-push-action@");
    assert_eq!(push["with"]["push"].as_bool(), Some(true));
    assert!(s(&push["with"]["tags"]).contains("${{ github.sha }}"));
    let id = s(&push["id"]);
    assert!(
        runs("publish").contains("GITHUB_STEP_SUMMARY")
            && steps("publish")
                .iter()
                .any(|st| st["env"]["DIGEST"].as_str()
                    == Some(&format!("${{{{ steps.{id}.outputs.digest }}}}"))),
        "publish: the digest is reported"
    );

    // The compose run as a user would start it: no ids exported, and the
    // reports are the runner's own.
    assert!(!runs("image").contains("QUARRY_UID"));
    assert!(runs("image").contains("test -w output/quality_report.json"));
    // The artifact only once the loader has stopped and checkpointed its WAL,
    // copied out of the `warehouse` volume before the volumes are removed.
    let image = steps("image");
    // The index of the first step whose `key` ("run" or "uses") contains `text`.
    let at = |key: &str, text: &str| {
        image
            .iter()
            .position(|st| st[key].as_str().is_some_and(|v| v.contains(text)))
            .unwrap_or_else(|| panic!("image: no step with {key} {text:?}"))
    };
    let stop = at("run", "docker compose stop");
    let copy = at(
        "run",
        "docker compose cp loader:/srv/quarry/warehouse ./warehouse",
    );
    let wal = at("run", "test ! -s warehouse/agg_result.db-wal");
    let upload = at("uses", "actions/upload-artifact@");
    let down = at("run", "docker compose down --volumes");
    assert!(
        stop < copy && copy < wal && wal < upload && upload < down,
        "stop {stop}, copy {copy}, WAL check {wal}, upload {upload}, down {down}"
    );
    for step in [stop, copy, wal, down] {
        assert_eq!(
            s(&image[step]["if"]),
            "always()",
            "step {step} runs after a failure"
        );
    }
    let id = s(&image[wal]["id"]);
    assert!(
        s(&image[upload]["if"]).contains(&format!("steps.{id}.outcome == 'success'")),
        "the upload waits for the WAL check"
    );
    let paths: Vec<&str> = s(&image[upload]["with"]["path"])
        .lines()
        .map(str::trim)
        .collect();
    assert!(
        paths.contains(&"warehouse/agg_result.db") && paths.contains(&"output/"),
        "{paths:?}"
    );
}
