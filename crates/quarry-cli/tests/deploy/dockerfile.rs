//! deploy/docker/Dockerfile and .dockerignore: clean by hadolint, every
//! binary built on the workspace's toolchain into an unprivileged runtime,
//! the dependencies in a layer of their own.

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
            format!("FROM rust:{}-bookworm AS chef", workspace_rust_version()).as_str(),
            "FROM chef AS planner",
            "FROM chef AS build",
            "FROM debian:bookworm-slim AS runtime",
        ],
        "build on the workspace's rust-version, run on the same Debian release"
    );
    // The dependency layer: cargo-chef (a pinned version) cooks the recipe
    // of the same packages and profile before the sources are copied, so a
    // source change rebuilds only the workspace's crates; layers, unlike
    // BuildKit cache mounts, are kept by the registry and CI caches.
    let stage = |name: &str| {
        let start = df.find(&format!(" AS {name}\n")).unwrap();
        let rest = &df[start + 1..];
        rest[..rest.find("\nFROM ").unwrap_or(rest.len())].to_string()
    };
    assert!(
        stage("chef").contains("cargo install cargo-chef --version 0.1.")
            && stage("chef").contains("--locked")
    );
    assert!(stage("planner").contains("cargo chef prepare --recipe-path recipe.json"));
    let build = stage("build").replace("\\\n", " ");
    let packages = |cmd: &str| -> Vec<String> {
        let line = build
            .lines()
            .find(|l| l.contains(cmd))
            .unwrap_or_else(|| panic!("build stage: no {cmd}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "-p")
            .map(|w| w[1].to_string())
            .collect()
    };
    let cook = "cargo chef cook --release --locked --recipe-path recipe.json";
    let compile = "cargo build --release --locked";
    assert_eq!(packages(cook), packages(compile), "cook what is built");
    let at = |text: &str| build.find(text).unwrap_or_else(|| panic!("no {text}"));
    assert!(at(cook) < at("COPY . .") && at("COPY . .") < at(compile));
    assert!(!df.contains("--mount=type=cache"));
    assert!(
        build.contains("deploy/docker/run-as-owner.sh /out/quarry-run-as-owner"),
        "the compose run's owner script is in the image"
    );
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
    for entry in [
        ".git",
        "target/",
        "output/",
        "cold/",
        "*.db",
        "data/",
        "!deploy/docker/run-as-owner.sh",
    ] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}
