//! The deployment files — deploy/docker/Dockerfile, docker-compose.yml,
//! deploy/k8s (kustomize base and overlays), .github/workflows/ci.yml — checked
//! offline: by the real validators (hadolint, check-jsonschema with the
//! compose-spec and GitHub-workflow schemas, kubectl kustomize +
//! kubernetes-validate), and for what no schema sees: ports, URLs, paths and
//! volumes that must agree with each other and with Quarry's configuration
//! (every service's environment is loaded with `Config::load_with_env`).
//!
//! The validators come from the test virtualenv through QUARRY_HADOLINT,
//! QUARRY_CHECK_JSONSCHEMA, QUARRY_KUBERNETES_VALIDATE and QUARRY_KUBECTL
//! (scripts/test.sh sets them). The tests that need one are #[ignore]d for a
//! plain `cargo test`; run by the script, a missing validator fails the test
//! and so does a finding.
//!
//! A module per file or family of files: `dockerfile`, `compose`,
//! `workflow` and `k8s` (with `manifests`, the rendering and reading of
//! Kubernetes manifests, and `network`, their NetworkPolicies evaluated).

mod compose;
mod dockerfile;
mod k8s;
mod manifests;
mod network;
mod workflow;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use quarry_core::Config;
use serde_norway::Value;

/// The image's user, the uid every pod and compose service runs as.
const UID: i64 = 10001;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs a command in the repository; its output, or a failure with all of it.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Validates `file` with check-jsonschema against its built-in `schema`;
/// a finding fails the test.
fn check_jsonschema(schema: &str, file: &str) {
    let cj = quarry_testkit::standin("QUARRY_CHECK_JSONSCHEMA");
    run(Command::new(cj).args(["--verbose", "--builtin-schema", schema, file]));
}

fn yaml(text: &str) -> Value {
    let mut v: Value = serde_norway::from_str(text).unwrap();
    v.apply_merge().unwrap();
    v
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, found {v:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list, found {v:?}"))
        .iter()
        .map(|x| s(x).to_string())
        .collect()
}

/// A YAML scalar as the text an environment variable would hold.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// `http://host:port` or `https://host:port` -> (host, port).
fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or_else(|| panic!("{url}: expected http(s)://host:port"));
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':').unwrap();
    (host.to_string(), port.parse().unwrap())
}

/// The default listen port of each service (from Quarry's own defaults).
fn default_ports() -> BTreeMap<&'static str, u16> {
    let c = Config::default();
    BTreeMap::from([
        ("extractor", port_of(&c.extractor.listen)),
        ("transformer", port_of(&c.transformer.listen)),
        ("loader", port_of(&c.loader.listen)),
        ("archiver", port_of(&c.archiver.listen)),
    ])
}

fn listen_of(c: &Config, service: &str) -> String {
    match service {
        "extractor" => c.extractor.listen.clone(),
        "transformer" => c.transformer.listen.clone(),
        "loader" => c.loader.listen.clone(),
        "archiver" => c.archiver.listen.clone(),
        other => panic!("unknown service {other}"),
    }
}

fn workspace_rust_version() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"')
        .to_string()
}
