//! docker-compose.yml: valid by the compose spec, its services agreeing
//! with each other and with Quarry's configuration (as it is and with the
//! ClickHouse env file), and health checks that pass only while a service
//! serves.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use quarry_cli::embedded::Cluster;
use quarry_core::Config;
use quarry_core::config::WarehouseKind;
use serde_norway::{Mapping, Value};

use super::{
    UID, check_jsonschema, default_ports, host_port, listen_of, read, repo, s, scalar, strings,
    yaml,
};

#[test]
#[ignore = "needs check-jsonschema (QUARRY_CHECK_JSONSCHEMA): scripts/test.sh runs it"]
fn compose_file_matches_the_compose_spec() {
    check_jsonschema("vendor.compose-spec", "docker-compose.yml");
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
        Command::new(env!("CARGO_BIN_EXE_quarry"))
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
        configs.insert(*name, check_compose_service(doc, name, *port, vars));
    }
    check_compose_dependencies(doc, &configs, &ports);
    let root = check_compose_data_root(doc, &configs);
    check_compose_run(doc, root, &ports);
    check_compose_warehouse(doc, &configs);
    check_compose_clickhouse(doc, services, &configs["loader"]);
    configs["loader"].clone()
}

/// One Quarry service of the compose file: built from the Dockerfile, run as
/// the image's user, listening on its default port (published on the host's
/// loopback) and health-checked there. Returns the configuration its
/// environment gives.
fn check_compose_service(
    doc: &Value,
    name: &str,
    port: u16,
    vars: &BTreeMap<String, String>,
) -> Config {
    let svc = &doc["services"][name];
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
    // On SIGTERM the service waits shutdown_grace_secs, then a little more:
    // Docker must not kill it before (its default is 10 s).
    let (_, grace) = crate::k8s::metrics_and_grace(&config, name);
    let stop = s(&svc["stop_grace_period"]);
    let kill_after: u64 = stop
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ctx}: stop_grace_period {stop:?} is not like 300s"));
    assert!(
        grace + quarry_core::grpc::SHUTDOWN_FINAL_WAIT.as_secs() + 10 <= kill_after,
        "{ctx}: shutdown_grace_secs {grace} does not fit in stop_grace_period {stop}"
    );
    config
}

/// The transformer finds the extractor and the loader by service name, and
/// each service waits for the healthy services it calls.
fn check_compose_dependencies(
    doc: &Value,
    configs: &BTreeMap<&str, Config>,
    ports: &BTreeMap<&str, u16>,
) {
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
}

/// The extractor reads ./data (read-only) at its data root; returns that
/// root as the container sees it.
fn check_compose_data_root<'a>(doc: &Value, configs: &'a BTreeMap<&str, Config>) -> &'a str {
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
    root
}

/// The one-shot `run` service: the sample under the extractor's data `root`
/// through the transformer and the loader, reports into ./output.
fn check_compose_run(doc: &Value, root: &str, ports: &BTreeMap<&str, u16>) {
    let extractor = &doc["services"]["extractor"];
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
}

/// Loader and archiver open the same warehouse, a writable ./agg_result.db,
/// and the archiver's cold tier is ./cold.
fn check_compose_warehouse(doc: &Value, configs: &BTreeMap<&str, Config>) {
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
}

/// ClickHouse: only in its profile, and the loader and the archiver wait for
/// it when it runs; the `loader` configuration's URL names it among
/// `services`, on a port it publishes.
fn check_compose_clickhouse(doc: &Value, services: &Mapping, loader: &Config) {
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
}
