//! deploy/docker/Dockerfile and .dockerignore: clean by hadolint, every
//! binary built on the workspace's toolchain into an unprivileged runtime.

use std::process::Command;

use super::{UID, default_ports, read, repo, run, workspace_rust_version};

/// Every binary the workspace builds: `quarry` and one per service.
fn binaries() -> Vec<String> {
    let mut bins = vec!["quarry".to_string()];
    for e in std::fs::read_dir(repo().join("services")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        bins.push(format!("quarry-{name}"));
    }
    bins.sort();
    bins
}

#[test]
#[ignore = "needs hadolint (QUARRY_HADOLINT): scripts/test.sh runs it"]
fn dockerfile_passes_hadolint() {
    let hadolint = quarry_testkit::standin("QUARRY_HADOLINT");
    let out = run(Command::new(hadolint).arg("deploy/docker/Dockerfile"));
    assert!(out.trim().is_empty(), "hadolint findings:\n{out}");
}

#[test]
fn dockerfile_builds_every_binary_into_an_unprivileged_runtime() {
    let df = read("deploy/docker/Dockerfile");
    assert!(
        df.starts_with("# syntax=docker/dockerfile:1\n"),
        "BuildKit syntax line first"
    );
    let froms: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms,
        [
            format!("FROM rust:{}-bookworm AS build", workspace_rust_version()).as_str(),
            "FROM debian:bookworm-slim AS runtime",
        ],
        "build on the workspace's rust-version, run on the same Debian release"
    );
    assert!(df.contains("cargo build --release --locked"));
    for cache in ["target=/usr/local/cargo/registry", "target=/src/target"] {
        assert!(
            df.contains("--mount=type=cache,id=quarry-") && df.contains(cache),
            "cache mount {cache}"
        );
    }
    let runtime = &df[df.find("AS runtime").unwrap()..];
    for bin in binaries() {
        assert!(
            df.contains(&format!("target/release/{bin} "))
                || df.contains(&format!("target/release/{bin}\n")),
            "{bin} is not copied out of the build"
        );
    }
    assert!(runtime.contains("COPY --from=build /out/ /usr/local/bin/"));
    assert!(
        runtime.contains(&format!("USER {UID}:{UID}")),
        "runtime user {UID}"
    );
    assert!(runtime.contains("--no-install-recommends ca-certificates"));
    let expose = runtime
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    let exposed: Vec<u16> = expose
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let ports: Vec<u16> = default_ports().values().copied().collect();
    let mut sorted = exposed.clone();
    sorted.sort();
    let mut want = ports.clone();
    want.sort();
    assert_eq!(sorted, want, "EXPOSE the services' default ports");
    // No ENTRYPOINT: `docker run IMAGE quarry-loader …` names the binary.
    assert!(!df.contains("ENTRYPOINT"));

    let ignore = read(".dockerignore");
    for entry in [".git", "target/", "output/", "cold/", "*.db", "data/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}
