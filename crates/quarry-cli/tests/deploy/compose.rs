//! docker-compose.yml and its ClickHouse overlay: valid by the compose spec,
//! their services agreeing with each other and with Quarry's configuration,
//! every mount writable by the user its service runs as, stop grace periods
//! that outlast the services' own, and health checks that pass only while a
//! service serves.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use quarry_cli::embedded::Cluster;
use quarry_core::Config;
use quarry_core::config::WarehouseKind;
use serde_norway::Value;

use super::{
    UID, check_jsonschema, default_ports, host_port, listen_of, read, repo, s, scalar, strings,
    yaml,
};

const OVERLAY: &str = "deploy/docker/clickhouse.yml";

#[test]
#[ignore = "needs check-jsonschema (QUARRY_CHECK_JSONSCHEMA): scripts/test.sh runs it"]
fn compose_file_matches_the_compose_spec() {
    check_jsonschema("vendor.compose-spec", "docker-compose.yml");
    check_jsonschema("vendor.compose-spec", OVERLAY);
}

#[test]
fn compose_services_agree_with_each_other_and_the_configuration() {
    let vars = BTreeMap::new();
    let doc = yaml(&read("docker-compose.yml"));
    let loader = check_compose(&doc, &vars);
    assert_eq!(loader.warehouse.kind, WarehouseKind::Sqlite);
    assert!(
        doc["services"]["clickhouse"].is_null(),
        "ClickHouse only with its overlay"
    );

    // The ClickHouse overlay switches the loader and the archiver over, and
    // is documented as one command that keeps reading .env (no --env-file).
    let merged = with_overlay(doc.clone(), yaml(&read(OVERLAY)));
    let loader = check_compose(&merged, &vars);
    assert_eq!(loader.warehouse.kind, WarehouseKind::Clickhouse);
    check_compose_clickhouse(&merged, &loader, &vars);
    let command = format!("docker compose -f docker-compose.yml -f {OVERLAY} up");
    for doc_file in ["docker-compose.yml", "deploy/README.md"] {
        let text = read(doc_file);
        assert!(
            text.contains(&command),
            "{doc_file} does not show {command}"
        );
        assert!(
            !text.contains("--env-file"),
            "{doc_file}: --env-file stops compose reading .env"
        );
    }
}

#[test]
fn compose_mounts_are_writable_by_their_users() {
    let doc = yaml(&read("docker-compose.yml"));
    assert_eq!(unwritable_mounts(&doc), Vec::<String>::new());
    let merged = with_overlay(doc.clone(), yaml(&read(OVERLAY)));
    assert_eq!(unwritable_mounts(&merged), Vec::<String>::new());

    // Each way of getting it wrong is seen.
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut d = doc.clone();
        edit(&mut d);
        unwritable_mounts(&d)
    };
    let set = |d: &mut Value, service: &str, key: &str, v: Value| {
        d["services"][service]
            .as_mapping_mut()
            .unwrap()
            .insert(key.into(), v);
    };
    // The run service without root: it cannot hand ./output over.
    let found = broken(&|d| {
        d["services"]["run"]
            .as_mapping_mut()
            .unwrap()
            .remove("user");
    });
    assert!(
        found.iter().any(|p| p.contains("run: ./output")),
        "{found:?}"
    );
    // A service as another user than the image's, on a named volume.
    let found = broken(&|d| set(d, "loader", "user", "1000:1000".into()));
    assert!(
        found.iter().any(|p| p.contains("loader: warehouse")),
        "{found:?}"
    );
    // A named volume on a directory the image does not own.
    let found = broken(&|d| {
        d["services"]["archiver"]["volumes"][1] = "cold:/var/cold".into();
    });
    assert!(
        found.iter().any(|p| p.contains("archiver: cold")),
        "{found:?}"
    );
    // A bind mount of the project for a service running as the image's user.
    let found = broken(&|d| {
        d["services"]["loader"]["volumes"][0] = ".:/srv/quarry".into();
    });
    assert!(found.iter().any(|p| p.contains("loader: .")), "{found:?}");
}

#[test]
fn compose_stop_grace_outlasts_each_services_own() {
    let doc = yaml(&read("docker-compose.yml"));
    for name in default_ports().keys() {
        let config = service_config(&doc, name, &BTreeMap::new());
        assert_eq!(stop_grace_problem(&doc, name, &config), None);
        // Docker's default (10 s) would cut the service's shutdown short.
        let mut d = doc.clone();
        d["services"][*name]
            .as_mapping_mut()
            .unwrap()
            .remove("stop_grace_period");
        assert!(stop_grace_problem(&d, name, &config).is_some(), "{name}");
        d["services"][*name]["stop_grace_period"] = "10s".into();
        assert!(stop_grace_problem(&d, name, &config).is_some(), "{name}");
    }
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

/// `(source, container path, read-only)` of each short-syntax volume: a
/// source starting with `.` or `/` is a bind mount, any other a named volume.
fn mounts(svc: &Value) -> Vec<(String, String, bool)> {
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

fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/')
}

/// The mount a container path is on: `(source, path below the mount, read-only)`.
fn mount_of(svc: &Value, container: &str) -> Option<(String, String, bool)> {
    mounts(svc)
        .into_iter()
        .filter_map(|(src, c, ro)| {
            Path::new(container)
                .strip_prefix(&c)
                .ok()
                .map(|rel| (c.len(), src, rel.display().to_string(), ro))
        })
        .max_by_key(|(len, ..)| *len)
        .map(|(_, src, rel, ro)| (src, rel, ro))
}

/// Where a container path lands on the host, through the service's binds.
fn host_path(svc: &Value, container: &str) -> Option<(String, bool)> {
    let (src, rel, ro) = mount_of(svc, container).filter(|(src, ..)| is_bind(src))?;
    Some((Path::new(&src).join(rel).display().to_string(), ro))
}

/// A compose file with an overlay (`-f base -f overlay`): mappings merge key
/// by key, anything else is replaced (all the overlay needs).
fn with_overlay(base: Value, overlay: Value) -> Value {
    match (base, overlay) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(old) => with_overlay(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (_, o) => o,
    }
}

/// The directories the image creates for its user (`install -d -o UID`).
fn image_owned_dirs() -> Vec<String> {
    let df = read("deploy/docker/Dockerfile").replace("\\\n", " ");
    let owner = format!("install -d -o {UID} -g {UID}");
    df.lines()
        .filter_map(|l| l.split_once(&owner))
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every mount a service would write and cannot, as `service: source -> path
/// (why)`. A service runs as the image's user unless it says otherwise; it
/// can write a named volume mounted on a directory the image gives that
/// user (a new volume takes the directory's owner), and a bind mount of the
/// project only through `quarry-run-as-owner`, starting as root.
fn unwritable_mounts(doc: &Value) -> Vec<String> {
    let owned = image_owned_dirs();
    let named: Vec<String> = doc["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(|k| s(k).to_string()).collect())
        .unwrap_or_default();
    let mut problems = vec![];
    for (name, svc) in doc["services"].as_mapping().unwrap() {
        let name = s(name);
        if svc["image"].as_str().is_some_and(|i| !i.contains("quarry")) {
            continue; // not Quarry's image (ClickHouse's own user and volumes)
        }
        let user = svc["user"].as_str();
        let entrypoint = svc["entrypoint"]
            .as_sequence()
            .map(|_| strings(&svc["entrypoint"]));
        for (src, path, ro) in mounts(svc) {
            if ro {
                continue;
            }
            let mut why = None;
            if is_bind(&src) {
                let handed_over = user == Some("0:0")
                    && entrypoint.as_ref().is_some_and(|e| {
                        e.len() == 3
                            && e[0] == "quarry-run-as-owner"
                            && e[2] == path
                            && mount_of(svc, &e[1]).is_some_and(|(o, ..)| is_bind(&o))
                    });
                if !handed_over {
                    why = Some(
                        "a bind mount needs user 0:0 and entrypoint \
                         [quarry-run-as-owner, <bind-mounted dir>, <this path>]",
                    );
                }
            } else if !named.contains(&src) {
                why = Some("not a declared named volume");
            } else if user.is_some() {
                why = Some("the volume belongs to the image's user, the service runs as another");
            } else if !owned.contains(&path) {
                why = Some("the image does not give this directory to its user");
            }
            if let Some(why) = why {
                problems.push(format!("{name}: {src} -> {path} ({why})"));
            }
        }
    }
    problems
}

fn normal(p: &str) -> String {
    p.trim_start_matches("./").trim_end_matches('/').to_string()
}

/// Checks one configuration of the compose file (`vars` as from the shell or
/// an env file) and returns the loader's configuration.
fn check_compose(doc: &Value, vars: &BTreeMap<String, String>) -> Config {
    let ports = default_ports();
    let mut configs = BTreeMap::new();
    for (name, port) in &ports {
        configs.insert(*name, check_compose_service(doc, name, *port, vars));
    }
    check_compose_dependencies(doc, &configs, &ports);
    let root = check_compose_data_root(doc, &configs);
    check_compose_run(doc, root, &ports);
    check_compose_warehouse(doc, &configs);
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
    assert!(svc["user"].is_null(), "{ctx}: runs as the image's user");
    let config = service_config(doc, name, vars);
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
    if let Some(problem) = stop_grace_problem(doc, name, &config) {
        panic!("{ctx}: {problem}");
    }
    config
}

/// The configuration a service's environment gives.
fn service_config(doc: &Value, name: &str, vars: &BTreeMap<String, String>) -> Config {
    let env = compose_env(&doc["services"][name], vars);
    Config::load_with_env(None, env).unwrap_or_else(|e| {
        panic!("compose service {name}: its environment is not a valid configuration: {e}")
    })
}

/// On SIGTERM a service waits shutdown_grace_secs, then a little more:
/// Docker must not kill it before (its default is 10 s).
fn stop_grace_problem(doc: &Value, name: &str, config: &Config) -> Option<String> {
    let (_, grace) = crate::k8s::metrics_and_grace(config, name);
    let Some(stop) = doc["services"][name]["stop_grace_period"].as_str() else {
        return Some("no stop_grace_period: Docker kills it after 10 s".into());
    };
    let Some(kill_after) = stop.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()) else {
        return Some(format!("stop_grace_period {stop:?} is not like 300s"));
    };
    (grace + quarry_core::grpc::SHUTDOWN_FINAL_WAIT.as_secs() + 10 > kill_after)
        .then(|| format!("shutdown_grace_secs {grace} does not fit in stop_grace_period {stop}"))
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
    // It hands ./output to the owner of ./data, or to QUARRY_UID/GID.
    let entrypoint = strings(&run_svc["entrypoint"]);
    let (owner, _) = host_path(run_svc, &entrypoint[1]).expect("owner directory mounted");
    assert_eq!(normal(&owner), "data");
    for var in ["QUARRY_UID", "QUARRY_GID"] {
        assert_eq!(
            s(&run_svc["environment"][var]),
            format!("${{{var}:-}}"),
            "run: {var} passed through, empty when unset"
        );
    }
    assert_eq!(s(&run_svc["restart"]), "no", "the run is one-shot");
}

/// Loader and archiver open the same warehouse; with SQLite, a file on the
/// named volume `warehouse` both mount at the same place. The archiver's cold
/// tier is the named volume `cold`.
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
        let (src, rel, ro) = mount_of(&doc["services"][name], db)
            .unwrap_or_else(|| panic!("{name}: {db} is not on a volume"));
        assert_eq!(
            (src.as_str(), rel.as_str(), ro),
            ("warehouse", "agg_result.db", false),
            "{name}: the database file in the `warehouse` volume's top directory (WAL beside it)"
        );
    }
    let (cold, _, ro) = mount_of(&doc["services"]["archiver"], &archiver.archiver.cold_root)
        .expect("cold root on a volume");
    assert_eq!((cold.as_str(), ro), ("cold", false));
}

/// ClickHouse (with the overlay): the loader and the archiver wait for its
/// health check, the loader's URL names it on a port it publishes, and the
/// loader logs in with the server's user, database and password.
fn check_compose_clickhouse(doc: &Value, loader: &Config, vars: &BTreeMap<String, String>) {
    let ch = &doc["services"]["clickhouse"];
    assert!(ch["healthcheck"]["test"].is_sequence());
    for name in ["loader", "archiver"] {
        let dep = &doc["services"][name]["depends_on"]["clickhouse"];
        assert_eq!(s(&dep["condition"]), "service_healthy", "{name}");
    }
    let (ch_host, ch_port) = host_port(&loader.warehouse.clickhouse.url);
    assert_eq!(
        ch_host, "clickhouse",
        "ClickHouse URL names the compose service"
    );
    assert!(
        strings(&ch["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{ch_port}")))
    );
    let env = &ch["environment"];
    assert_eq!(
        interpolate(s(&env["CLICKHOUSE_USER"]), vars),
        loader.warehouse.clickhouse.user
    );
    assert_eq!(
        interpolate(s(&env["CLICKHOUSE_DB"]), vars),
        loader.warehouse.clickhouse.database
    );
    let password_var = &loader.warehouse.clickhouse.password_env;
    assert_eq!(
        compose_env(&doc["services"]["loader"], vars).get(password_var.as_str()),
        Some(&interpolate(s(&env["CLICKHOUSE_PASSWORD"]), vars)),
        "the loader's {password_var} is the server's password"
    );
}
