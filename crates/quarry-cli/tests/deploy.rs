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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use quarry_cli::embedded::Cluster;
use quarry_core::Config;
use quarry_core::config::WarehouseKind;
use serde::Deserialize;
use serde_norway::Value;

/// Kubernetes versions the manifests are validated against: the oldest
/// supported (native gRPC probes, CronJob time zones and HPA v2 are GA) and
/// the newest the validator knows.
const K8S_VERSIONS: [&str; 2] = ["1.28.0", "1.37.0"];

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

fn yaml(text: &str) -> Value {
    let mut v: Value = serde_norway::from_str(text).unwrap();
    v.apply_merge().unwrap();
    v
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
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

/// `http://host:port` -> (host, port).
fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url}: expected http://host:port"));
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

// ---------------------------------------------------------------- Dockerfile

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

// ------------------------------------------------------------ docker compose

#[test]
#[ignore = "needs check-jsonschema (QUARRY_CHECK_JSONSCHEMA): scripts/test.sh runs it"]
fn compose_file_matches_the_compose_spec() {
    let cj = quarry_testkit::standin("QUARRY_CHECK_JSONSCHEMA");
    run(Command::new(cj).args([
        "--verbose",
        "--builtin-schema",
        "vendor.compose-spec",
        "docker-compose.yml",
    ]));
}

/// Compose interpolation of `${NAME}`, `${NAME:-default}` and `$$`.
fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(a) = after.strip_prefix('{') {
            let end = a.find('}').expect("unclosed ${");
            let expr = &a[..end];
            let value = match expr.split_once(":-") {
                Some((name, default)) => vars
                    .get(name)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or_else(|| default.to_string()),
                None => vars.get(expr).cloned().unwrap_or_default(),
            };
            out.push_str(&value);
            rest = &a[end + 1..];
        } else {
            panic!("bare $ in {text:?}: use ${{NAME}}");
        }
    }
    out.push_str(rest);
    out
}

fn env_file(rel: &str) -> BTreeMap<String, String> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// A compose service's environment, interpolated with `vars`.
fn compose_env(svc: &Value, vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    svc["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (s(k).to_string(), interpolate(&scalar(v), vars)))
                .collect()
        })
        .unwrap_or_default()
}

/// `(host, container)` of each bind mount of the current directory tree.
fn binds(svc: &Value) -> Vec<(String, String, bool)> {
    svc["volumes"]
        .as_sequence()
        .map(|vs| {
            vs.iter()
                .map(|v| {
                    let parts: Vec<&str> = s(v).split(':').collect();
                    let ro = parts.get(2) == Some(&"ro");
                    (parts[0].to_string(), parts[1].to_string(), ro)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where a container path lands on the host, through the service's binds.
fn host_path(svc: &Value, container: &str) -> Option<(String, bool)> {
    binds(svc)
        .into_iter()
        .filter(|(h, _, _)| h.starts_with('.'))
        .filter_map(|(h, c, ro)| {
            Path::new(container)
                .strip_prefix(&c)
                .ok()
                .map(|rel| (c.len(), Path::new(&h).join(rel), ro))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, p, ro)| (p.display().to_string(), ro))
}

fn normal(p: &str) -> String {
    p.trim_start_matches("./").trim_end_matches('/').to_string()
}

/// Checks one configuration of the compose file (`vars` as from the shell or
/// an env file) and returns the loader's configuration.
fn check_compose(doc: &Value, vars: &BTreeMap<String, String>) -> Config {
    let services = doc["services"].as_mapping().unwrap();
    let ports = default_ports();
    let mut configs = BTreeMap::new();
    for (name, port) in &ports {
        let svc = &doc["services"][*name];
        assert!(svc.is_mapping(), "compose service {name} missing");
        let ctx = format!("compose service {name}");
        assert_eq!(
            strings(&svc["command"]),
            [format!("quarry-{name}")],
            "{ctx}: command"
        );
        assert_eq!(s(&svc["build"]["dockerfile"]), "deploy/docker/Dockerfile");
        assert_eq!(s(&svc["build"]["context"]), ".");
        assert_eq!(
            interpolate(s(&svc["user"]), vars),
            format!("{UID}:{UID}"),
            "{ctx}: runs as the image's user unless QUARRY_UID/GID say otherwise"
        );
        let env = compose_env(svc, vars);
        let config = Config::load_with_env(None, env.clone())
            .unwrap_or_else(|e| panic!("{ctx}: its environment is not a valid configuration: {e}"));
        let listen = listen_of(&config, name);
        assert_eq!(listen, format!("0.0.0.0:{port}"), "{ctx}: listen address");
        // The health check asks that port's gRPC health service.
        assert_eq!(
            strings(&svc["healthcheck"]["test"]),
            [
                "CMD",
                "quarry",
                "ping",
                &format!("http://127.0.0.1:{port}"),
                "--timeout",
                "3"
            ],
            "{ctx}: health check"
        );
        assert!(
            strings(&svc["ports"]).contains(&format!("127.0.0.1:{port}:{port}")),
            "{ctx}: port {port} published on the host's loopback"
        );
        configs.insert(*name, config);
    }

    // The transformer finds the other two by service name.
    let t = &configs["transformer"].transformer;
    for (url, target) in [(&t.extractor_url, "extractor"), (&t.loader_url, "loader")] {
        assert_eq!(host_port(url), (target.to_string(), ports[target]));
    }
    for (name, deps) in [
        ("transformer", vec!["extractor", "loader"]),
        ("archiver", vec!["loader"]),
        ("run", vec!["extractor", "transformer", "loader"]),
    ] {
        for d in deps {
            assert_eq!(
                s(&doc["services"][name]["depends_on"][d]["condition"]),
                "service_healthy",
                "{name} waits for a healthy {d}"
            );
        }
    }

    // The extractor reads ./data at its data root.
    let extractor = &doc["services"]["extractor"];
    let roots = &configs["extractor"].extractor.data_roots;
    assert_eq!(roots.len(), 1);
    let root = roots[0].to_str().unwrap();
    let (host_root, ro) = host_path(extractor, root).expect("extractor data root mounted");
    assert_eq!(
        (normal(&host_root).as_str(), ro),
        ("data", true),
        "extractor data root"
    );

    // The run: the sample through the services, reports into ./output.
    let run_svc = &doc["services"]["run"];
    let cmd = strings(&run_svc["command"]);
    let arg = |flag: &str| -> String {
        let i = cmd
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("run: no {flag}"));
        cmd[i + 1].clone()
    };
    assert_eq!(cmd[..2], ["quarry", "run"]);
    assert_eq!(
        host_port(&arg("--transformer")),
        ("transformer".into(), ports["transformer"])
    );
    assert_eq!(
        host_port(&arg("--loader")),
        ("loader".into(), ports["loader"])
    );
    let source = arg("--source");
    assert!(
        source.starts_with(&format!("{root}/")),
        "--source {source} outside the data root {root}"
    );
    let (host_src, _) = host_path(extractor, &source).unwrap();
    assert_eq!(normal(&host_src), "data/trades.csv");
    assert!(repo().join(&host_src).is_file());
    let (out_dir, ro) = host_path(run_svc, &arg("--output")).expect("--output on a bind mount");
    assert!(!ro);
    assert_eq!(normal(&out_dir), "output");
    assert_eq!(s(&run_svc["restart"]), "no", "the run is one-shot");

    // Loader and archiver open the same warehouse.
    let loader = &configs["loader"];
    let archiver = &configs["archiver"];
    assert_eq!(loader.warehouse.kind, archiver.warehouse.kind);
    assert_eq!(loader.warehouse.sqlite.path, archiver.warehouse.sqlite.path);
    assert_eq!(
        loader.warehouse.clickhouse.url,
        archiver.warehouse.clickhouse.url
    );
    let db = loader.warehouse.sqlite.path.to_str().unwrap();
    for name in ["loader", "archiver"] {
        let (host_db, ro) = host_path(&doc["services"][name], db)
            .unwrap_or_else(|| panic!("{name}: {db} is not on a bind mount"));
        assert!(!ro);
        assert_eq!(
            normal(&host_db),
            "agg_result.db",
            "{name}: warehouse file on the host"
        );
    }
    let (cold, _) = host_path(&doc["services"]["archiver"], &archiver.archiver.cold_root)
        .expect("cold root on a bind mount");
    assert_eq!(normal(&cold), "cold");

    // ClickHouse: only in its profile, and the loader waits for it when it runs.
    let ch = &doc["services"]["clickhouse"];
    assert_eq!(strings(&ch["profiles"]), ["clickhouse"]);
    assert!(ch["healthcheck"]["test"].is_sequence());
    for name in ["loader", "archiver"] {
        let dep = &doc["services"][name]["depends_on"]["clickhouse"];
        assert_eq!(s(&dep["condition"]), "service_healthy");
        assert_eq!(
            dep["required"].as_bool(),
            Some(false),
            "{name}: clickhouse is optional"
        );
    }
    let (ch_host, ch_port) = host_port(&loader.warehouse.clickhouse.url);
    assert!(
        services.contains_key(ch_host.as_str()),
        "ClickHouse URL names a compose service"
    );
    assert!(
        strings(&ch["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{ch_port}")))
    );
    loader.clone()
}

#[test]
fn compose_services_agree_with_each_other_and_the_configuration() {
    let doc = yaml(&read("docker-compose.yml"));
    let loader = check_compose(&doc, &BTreeMap::new());
    assert_eq!(loader.warehouse.kind, WarehouseKind::Sqlite);

    // The ClickHouse variant: the env file enables the profile and switches the
    // loader and the archiver over.
    let vars = env_file("deploy/docker/clickhouse.env");
    assert_eq!(
        vars.get("COMPOSE_PROFILES").map(String::as_str),
        Some("clickhouse")
    );
    let loader = check_compose(&doc, &vars);
    assert_eq!(loader.warehouse.kind, WarehouseKind::Clickhouse);
    let ch = &doc["services"]["clickhouse"]["environment"];
    assert_eq!(
        interpolate(s(&ch["CLICKHOUSE_USER"]), &vars),
        loader.warehouse.clickhouse.user
    );
    assert_eq!(
        interpolate(s(&ch["CLICKHOUSE_DB"]), &vars),
        loader.warehouse.clickhouse.database
    );
    let password_var = &loader.warehouse.clickhouse.password_env;
    let loader_env = compose_env(&doc["services"]["loader"], &vars);
    assert_eq!(
        loader_env.get(password_var.as_str()),
        Some(&interpolate(s(&ch["CLICKHOUSE_PASSWORD"]), &vars)),
        "the loader's {password_var} is the server's password"
    );
}

/// The compose health checks, run as written (only the address swapped for
/// that of live services): they pass while a service serves, fail once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_health_checks_pass_only_while_the_service_serves() {
    let doc = yaml(&read("docker-compose.yml"));
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.extractor.data_roots = vec![dir.path().to_path_buf()];
    config.warehouse.sqlite.path = dir.path().join("agg_result.db");
    let cluster = Cluster::start(&config).await.unwrap();
    let live = [
        ("extractor", cluster.extractor_url.clone().unwrap()),
        ("transformer", cluster.transformer_url.clone().unwrap()),
        ("loader", cluster.loader_url.clone()),
    ];
    let check = |service: &str, url: &str| {
        let argv = strings(&doc["services"][service]["healthcheck"]["test"]);
        assert_eq!(
            argv[..2],
            ["CMD", "quarry"],
            "{service}: the image's quarry CLI"
        );
        let in_compose = format!("http://127.0.0.1:{}", default_ports()[service]);
        let args: Vec<&str> = argv[2..]
            .iter()
            .map(|a| if *a == in_compose { url } else { a.as_str() })
            .collect();
        assert!(
            args.contains(&url),
            "{service}: {argv:?} does not use {in_compose}"
        );
        std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(&args)
            .output()
            .unwrap()
    };
    for (service, url) in &live {
        let out = check(service, url);
        assert!(
            out.status.success(),
            "{service}: health check failed on a serving service: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster.stop().await.unwrap();
    for (service, url) in &live {
        let out = check(service, url);
        assert!(
            !out.status.success(),
            "{service}: health check passed with nothing listening"
        );
    }
}

// ------------------------------------------------------------ GitHub Actions

#[test]
#[ignore = "needs check-jsonschema (QUARRY_CHECK_JSONSCHEMA): scripts/test.sh runs it"]
fn workflow_matches_the_github_schema() {
    let cj = quarry_testkit::standin("QUARRY_CHECK_JSONSCHEMA");
    run(Command::new(cj).args([
        "--verbose",
        "--builtin-schema",
        "vendor.github-workflows",
        ".github/workflows/ci.yml",
    ]));
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

// ---------------------------------------------------------------- Kubernetes

/// A rendered overlay: its documents, by kind and name.
struct Rendered {
    docs: Vec<Value>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }
}

/// Renders an overlay with kubectl kustomize and validates it with
/// kubernetes-validate --strict.
fn render(dir: &str) -> Rendered {
    let kubectl = quarry_testkit::standin("QUARRY_KUBECTL");
    let kv = quarry_testkit::standin("QUARRY_KUBERNETES_VALIDATE");
    let text = run(Command::new(kubectl).args(["kustomize", dir]));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, &text).unwrap();
    for version in K8S_VERSIONS {
        let out = run(Command::new(&kv)
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file));
        assert!(
            !out.contains("WARN") && !out.contains("ERROR"),
            "{dir} against {version}:\n{out}"
        );
    }
    Rendered {
        docs: yaml_docs(&text),
    }
}

fn pod_spec(workload: &Value) -> &Value {
    match s(&workload["kind"]) {
        "CronJob" => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &workload["spec"]["template"]["spec"],
    }
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume mounted at `path` in a container (longest matching mount).
fn volume_at<'a>(workload: &'a Value, c: &Value, path: &str) -> Option<(&'a Value, bool)> {
    let mount = c["volumeMounts"]
        .as_sequence()?
        .iter()
        .filter(|m| Path::new(path).starts_with(s(&m["mountPath"])))
        .max_by_key(|m| s(&m["mountPath"]).len())?;
    let name = s(&mount["name"]);
    let volume = pod_spec(workload)["volumes"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"].as_str() == Some(name))?;
    Some((volume, mount["readOnly"].as_bool().unwrap_or(false)))
}

/// The configuration a container sees: the mounted quarry.toml, then the
/// variables of its ConfigMaps and plain `env` values (Secret values are
/// not known here and keep the file's settings).
fn container_config(r: &Rendered, workload: &Value, c: &Value) -> Config {
    let mut env: Vec<(String, String)> = Vec::new();
    for from in c["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            let cm = r.get("ConfigMap", name);
            for (k, v) in cm["data"].as_mapping().unwrap() {
                env.push((s(k).to_string(), scalar(v)));
            }
        }
    }
    for e in c["env"].as_sequence().into_iter().flatten() {
        if let Some(v) = e["value"].as_str() {
            env.push((s(&e["name"]).to_string(), v.to_string()));
        }
    }
    let config_path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "QUARRY_CONFIG")
        .map(|(_, v)| v.clone())
        .expect("QUARRY_CONFIG");
    let (volume, _) = volume_at(workload, c, &config_path).expect("config file mounted");
    let cm = r.get("ConfigMap", s(&volume["configMap"]["name"]));
    let file = Path::new(&config_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(file);
    std::fs::write(&path, s(&cm["data"][file])).unwrap();
    Config::load_with_env(Some(&path), env)
        .unwrap_or_else(|e| panic!("{}: configuration: {e}", s(&workload["metadata"]["name"])))
}

fn quantity_mib(q: &str) -> u64 {
    if let Some(g) = q.strip_suffix("Gi") {
        g.parse::<u64>().unwrap() * 1024
    } else if let Some(m) = q.strip_suffix("Mi") {
        m.parse().unwrap()
    } else {
        panic!("memory quantity {q}: use Mi or Gi")
    }
}

fn check_hardened(ctx: &str, workload: &Value, c: &Value) {
    let pod = pod_spec(workload);
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true), "{ctx}");
    assert_eq!(psc["runAsUser"].as_i64(), Some(UID), "{ctx}");
    assert_eq!(s(&psc["seccompProfile"]["type"]), "RuntimeDefault", "{ctx}");
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{ctx}"
    );
    assert_eq!(pod["enableServiceLinks"].as_bool(), Some(false), "{ctx}");
    let sc = &c["securityContext"];
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{ctx}"
    );
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{ctx}");
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true), "{ctx}");
    assert_eq!(sc["runAsUser"].as_i64(), Some(UID), "{ctx}");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{ctx}");
    assert_eq!(s(&sc["seccompProfile"]["type"]), "RuntimeDefault", "{ctx}");
    // Read-only root: scratch space on an emptyDir.
    let (tmp, ro) = volume_at(workload, c, "/tmp").unwrap_or_else(|| panic!("{ctx}: /tmp"));
    assert!(
        tmp["emptyDir"].is_mapping() && !ro,
        "{ctx}: /tmp is a writable emptyDir"
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string(),
                "{ctx}: resources.{kind}.{res}"
            );
        }
    }
    // Every mount names a volume of the pod.
    for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
        let p = s(&m["mountPath"]);
        assert!(
            volume_at(workload, c, p).is_some(),
            "{ctx}: mount {p} has no volume"
        );
    }
}

/// Everything both overlays must satisfy; returns the configuration of each service.
fn check_cluster(r: &Rendered, namespace: &str) -> BTreeMap<&'static str, Config> {
    for d in &r.docs {
        let kind = s(&d["kind"]);
        if kind != "Namespace" {
            assert_eq!(
                d["metadata"]["namespace"].as_str(),
                Some(namespace),
                "{kind} namespace"
            );
        }
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(),
            Some("quarry"),
            "{kind} {:?} label",
            d["metadata"]["name"]
        );
    }
    let ns = r.get("Namespace", namespace);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("restricted")
    );
    let claims: Vec<&str> = r
        .all("PersistentVolumeClaim")
        .iter()
        .map(|p| s(&p["metadata"]["name"]))
        .collect();
    let ports = default_ports();
    let mut configs = BTreeMap::new();
    for (service, port) in &ports {
        let name = format!("quarry-{service}");
        let ctx = format!("Deployment {name}");
        let deploy = r.get("Deployment", &name);
        let c = container(deploy, service);
        assert_eq!(strings(&c["command"]), [name.as_str()], "{ctx}: command");
        check_hardened(&ctx, deploy, c);
        let config = container_config(r, deploy, c);
        assert_eq!(
            listen_of(&config, service),
            format!("0.0.0.0:{port}"),
            "{ctx}: listen"
        );
        let cport = &c["ports"][0];
        assert_eq!(
            cport["containerPort"].as_u64(),
            Some(u64::from(*port)),
            "{ctx}"
        );
        // Metrics: the configured port is the container's `metrics` port and
        // the one the scrape annotation names.
        let (metrics_listen, grace) = match *service {
            "extractor" => (
                &config.extractor.metrics_listen,
                config.extractor.shutdown_grace_secs,
            ),
            "transformer" => (
                &config.transformer.metrics_listen,
                config.transformer.shutdown_grace_secs,
            ),
            "loader" => (
                &config.loader.metrics_listen,
                config.loader.shutdown_grace_secs,
            ),
            _ => (
                &config.archiver.metrics_listen,
                config.archiver.shutdown_grace_secs,
            ),
        };
        let metrics_port = c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some("metrics"))
            .and_then(|p| p["containerPort"].as_u64());
        assert!(!metrics_listen.is_empty(), "{ctx}: metrics are off");
        assert_eq!(
            metrics_port,
            Some(u64::from(port_of(metrics_listen))),
            "{ctx}: metrics port"
        );
        let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            metrics_port.map(|p| p.to_string()).as_deref(),
            "{ctx}: scrape annotation"
        );
        // On SIGTERM the service waits shutdown_grace_secs, aborts what is
        // in flight and waits a little more: all before the kubelet kills it.
        let kill_after = pod_spec(deploy)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        assert!(
            grace + quarry_core::grpc::SHUTDOWN_FINAL_WAIT.as_secs() + 10 <= kill_after,
            "{ctx}: shutdown_grace_secs {grace} does not fit in terminationGracePeriodSeconds {kill_after}"
        );
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(
                c[probe]["grpc"]["port"].as_u64(),
                Some(u64::from(*port)),
                "{ctx}: {probe} is a gRPC health probe on the service port"
            );
        }
        // Selectors: the Service and the PodDisruptionBudget find the pods.
        let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
        let selects = |sel: &Value| {
            sel.as_mapping()
                .unwrap()
                .iter()
                .all(|(k, v)| pod_labels[s(k)].as_str() == Some(s(v)))
        };
        assert!(
            selects(&deploy["spec"]["selector"]["matchLabels"]),
            "{ctx}: selector"
        );
        let svc = r.get("Service", &name);
        assert!(
            selects(&svc["spec"]["selector"]),
            "Service {name} selects the pods"
        );
        assert_eq!(
            svc["spec"]["ports"][0]["port"].as_u64(),
            Some(u64::from(*port))
        );
        assert_eq!(s(&svc["spec"]["ports"][0]["targetPort"]), s(&cport["name"]));
        let pdb = r.get("PodDisruptionBudget", &name);
        assert!(
            selects(&pdb["spec"]["selector"]["matchLabels"]),
            "PDB {name} selects the pods"
        );
        // Recreate must not carry rolling-update parameters (the API refuses them).
        let strategy = &deploy["spec"]["strategy"];
        if strategy["type"].as_str() == Some("Recreate") {
            assert!(
                strategy["rollingUpdate"].is_null(),
                "{ctx}: Recreate with rollingUpdate"
            );
        }
        for v in pod_spec(deploy)["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                assert!(
                    claims.contains(&claim),
                    "{ctx}: claim {claim} is not defined"
                );
            }
        }
        configs.insert(*service, config);
    }

    // Extractor and transformer scale on CPU, within 1 GiB each.
    for service in ["extractor", "transformer"] {
        let name = format!("quarry-{service}");
        let hpa = r.get("HorizontalPodAutoscaler", &name);
        assert_eq!(s(&hpa["apiVersion"]), "autoscaling/v2");
        assert_eq!(s(&hpa["spec"]["scaleTargetRef"]["name"]), name);
        assert_eq!(s(&hpa["spec"]["metrics"][0]["resource"]["name"]), "cpu");
        let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
        assert!(min >= 1 && min <= hpa["spec"]["maxReplicas"].as_u64().unwrap());
        let deploy = r.get("Deployment", &name);
        assert!(
            deploy["spec"]["replicas"].is_null(),
            "{name}: the HPA owns replicas"
        );
        let limit = s(&container(deploy, service)["resources"]["limits"]["memory"]);
        assert!(quantity_mib(limit) <= 1024, "{name}: memory limit {limit}");
    }

    // The transformer reaches the others through their Services.
    let t = &configs["transformer"].transformer;
    for (url, target) in [(&t.extractor_url, "extractor"), (&t.loader_url, "loader")] {
        let (host, port) = host_port(url);
        let svc = r.get("Service", &host);
        assert_eq!(
            svc["spec"]["ports"][0]["port"].as_u64(),
            Some(u64::from(port))
        );
        assert_eq!(host, format!("quarry-{target}"));
    }

    // The extractor reads its data root from the input claim.
    let extractor = r.get("Deployment", "quarry-extractor");
    let roots = &configs["extractor"].extractor.data_roots;
    assert_eq!(roots.len(), 1);
    let root = roots[0].to_str().unwrap();
    let (data, _) = volume_at(extractor, container(extractor, "extractor"), root).unwrap();
    assert_eq!(
        s(&data["persistentVolumeClaim"]["claimName"]),
        "quarry-data"
    );

    // The CronJob runs the pipeline against the Services, on data the extractor sees.
    let cron = r.get("CronJob", "quarry-run");
    assert_eq!(s(&cron["spec"]["concurrencyPolicy"]), "Forbid");
    assert!(cron["spec"]["schedule"].is_string());
    let c = container(cron, "run");
    check_hardened("CronJob quarry-run", cron, c);
    container_config(r, cron, c);
    let cmd = strings(&c["command"]);
    assert_eq!(cmd[..2], ["quarry", "run"]);
    let arg = |flag: &str| {
        let i = cmd
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("CronJob: no {flag}"));
        cmd[i + 1].clone()
    };
    for (flag, target) in [("--transformer", "transformer"), ("--loader", "loader")] {
        assert_eq!(
            host_port(&arg(flag)),
            (format!("quarry-{target}"), ports[target])
        );
    }
    assert!(
        Path::new(&arg("--source")).starts_with(root),
        "CronJob --source outside {root}"
    );
    let (out, ro) = volume_at(cron, c, &arg("--output")).expect("CronJob --output volume");
    assert!(out["emptyDir"].is_mapping() && !ro);

    // Loader and archiver open the same warehouse.
    let (l, a) = (&configs["loader"].warehouse, &configs["archiver"].warehouse);
    assert_eq!((l.kind, &l.sqlite.path), (a.kind, &a.sqlite.path));
    configs
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate: scripts/test.sh runs it"]
fn k8s_base_renders_and_validates() {
    render("deploy/k8s/base");
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate: scripts/test.sh runs it"]
fn k8s_dev_overlay_sqlite_on_volumes() {
    let r = render("deploy/k8s/overlays/dev");
    let configs = check_cluster(&r, "quarry-dev");
    let loader_cfg = &configs["loader"];
    assert_eq!(loader_cfg.warehouse.kind, WarehouseKind::Sqlite);

    // One SQLite writer: one loader pod, the old one gone before the new one starts.
    let loader = r.get("Deployment", "quarry-loader");
    assert_eq!(loader["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(s(&loader["spec"]["strategy"]["type"]), "Recreate");

    // The database's directory is the same claim in the loader and the archiver.
    let db_dir = loader_cfg
        .warehouse
        .sqlite
        .path
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let archiver = r.get("Deployment", "quarry-archiver");
    let mut claims = Vec::new();
    for (deploy, name) in [(loader, "loader"), (archiver, "archiver")] {
        let (v, ro) = volume_at(deploy, container(deploy, name), &db_dir)
            .unwrap_or_else(|| panic!("{name}: {db_dir} not mounted"));
        assert!(!ro, "{name}: the warehouse volume is writable");
        claims.push(s(&v["persistentVolumeClaim"]["claimName"]).to_string());
    }
    assert_eq!(claims[0], claims[1]);
    let pvc = r.get("PersistentVolumeClaim", &claims[0]);
    assert_eq!(strings(&pvc["spec"]["accessModes"]), ["ReadWriteOnce"]);
    // ReadWriteOnce: both pods on one node.
    let term = &pod_spec(archiver)["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        [0];
    assert_eq!(s(&term["topologyKey"]), "kubernetes.io/hostname");
    let loader_labels = &loader["spec"]["template"]["metadata"]["labels"];
    for (k, v) in term["labelSelector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            loader_labels[s(k)].as_str(),
            Some(s(v)),
            "archiver affinity selects the loader"
        );
    }

    // Cold partitions on their own claim.
    let cold = &configs["archiver"].archiver.cold_root;
    assert!(
        !cold.contains("://"),
        "dev cold tier is a directory: {cold}"
    );
    let (v, ro) =
        volume_at(archiver, container(archiver, "archiver"), cold).expect("cold root mounted");
    assert!(!ro);
    let claim = s(&v["persistentVolumeClaim"]["claimName"]);
    assert_ne!(claim, claims[0]);
    r.get("PersistentVolumeClaim", claim);
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate: scripts/test.sh runs it"]
fn k8s_prod_overlay_clickhouse_and_s3_from_secrets() {
    let r = render("deploy/k8s/overlays/prod");
    let configs = check_cluster(&r, "quarry");
    assert_eq!(configs["loader"].warehouse.kind, WarehouseKind::Clickhouse);
    assert_eq!(
        configs["archiver"].warehouse.kind,
        WarehouseKind::Clickhouse
    );

    let secret_ref = |c: &Value, var: &str| -> (String, String, bool) {
        let e = c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(var))
            .unwrap_or_else(|| panic!("no {var}"));
        let r = &e["valueFrom"]["secretKeyRef"];
        (
            s(&r["name"]).into(),
            s(&r["key"]).into(),
            r["optional"].as_bool().unwrap_or(false),
        )
    };
    for service in ["loader", "archiver"] {
        let deploy = r.get("Deployment", &format!("quarry-{service}"));
        let c = container(deploy, service);
        let password_var = &configs[service].warehouse.clickhouse.password_env;
        for (var, key) in [
            ("QUARRY_WAREHOUSE__CLICKHOUSE__URL", "url"),
            ("QUARRY_WAREHOUSE__CLICKHOUSE__USER", "user"),
            (password_var.as_str(), "password"),
        ] {
            assert_eq!(
                secret_ref(c, var),
                ("quarry-clickhouse".into(), key.into(), false),
                "{service}: {var} from the Secret, required"
            );
        }
    }
    // The cold tier (s3:// root and AWS credentials) from a required Secret.
    let archiver = r.get("Deployment", "quarry-archiver");
    let from = &container(archiver, "archiver")["envFrom"];
    let secret = from
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|f| f["secretRef"].as_mapping())
        .expect("archiver envFrom secretRef");
    assert_eq!(secret.get("name").map(s), Some("quarry-object-store"));
    assert_eq!(secret.get("optional").and_then(Value::as_bool), Some(false));

    // More than one of each stateless service.
    assert!(
        r.get("Deployment", "quarry-loader")["spec"]["replicas"]
            .as_u64()
            .unwrap()
            >= 2
    );
    for service in ["extractor", "transformer"] {
        let hpa = r.get("HorizontalPodAutoscaler", &format!("quarry-{service}"));
        assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    }
    // Several extractor pods on several nodes read the inputs.
    let data = r.get("PersistentVolumeClaim", "quarry-data");
    assert_eq!(strings(&data["spec"]["accessModes"]), ["ReadWriteMany"]);
}
