//! deploy/k8s: the base and both overlays render and validate, and what
//! both overlays must satisfy (hardened pods, ports, probes, selectors,
//! volumes, autoscaling, the CronJob), then what is particular to each: dev
//! on SQLite volumes, prod on ClickHouse and S3 with credentials from
//! Secrets.

use std::collections::BTreeMap;
use std::path::Path;

use quarry_core::Config;
use quarry_core::config::WarehouseKind;
use serde_norway::Value;

use super::manifests::{
    Rendered, container, container_config, container_env, env_value, pod_labels, pod_spec,
    quantity_mib, render, secret_file, selects_labels, volume_at,
};
use super::{UID, default_ports, host_port, listen_of, port_of, read, repo, s, strings};

#[test]
#[ignore = "needs kubectl and kubernetes-validate: scripts/test.sh runs it"]
fn k8s_base_renders_and_validates() {
    render("deploy/k8s/base");
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate: scripts/test.sh runs it"]
fn k8s_dev_overlay_sqlite_on_volumes() {
    let dir = "deploy/k8s/overlays/dev";
    let r = render(dir);
    let configs = check_cluster(&r, dir, "quarry-dev");
    // BigQuery is no dev warehouse: the gcp-key component patches the
    // archiver's own Deployment, which dev does not have.
    check_gcp_key_is_opt_in(&r, None);
    check_workload_identity(&r, dir, "quarry-dev");
    check_pod_monitor(&r, dir);
    let loader_cfg = &configs["loader"];
    assert_eq!(loader_cfg.warehouse.kind, WarehouseKind::Sqlite);

    // One SQLite writer: one loader pod, the old one gone before the new one starts.
    let loader = r.get("Deployment", "quarry-loader");
    assert_eq!(loader["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(s(&loader["spec"]["strategy"]["type"]), "Recreate");

    // The archiver opens the same SQLite file: it is a second container of
    // the loader's pod, never a pod of its own, on the same claim, which no
    // other pod can mount.
    assert!(
        r.all("Deployment")
            .iter()
            .all(|d| s(&d["metadata"]["name"]) != "quarry-archiver"),
        "an archiver pod beside the loader's"
    );
    let db_dir = loader_cfg
        .warehouse
        .sqlite
        .path
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut claims = Vec::new();
    for name in ["loader", "archiver"] {
        let (v, ro) = volume_at(loader, container(loader, name), &db_dir)
            .unwrap_or_else(|| panic!("{name}: {db_dir} not mounted"));
        assert!(!ro, "{name}: the warehouse volume is writable");
        claims.push(s(&v["persistentVolumeClaim"]["claimName"]).to_string());
    }
    assert_eq!(claims[0], claims[1]);
    let pvc = r.get("PersistentVolumeClaim", &claims[0]);
    assert_eq!(strings(&pvc["spec"]["accessModes"]), ["ReadWriteOncePod"]);
    let users: Vec<&str> = r
        .all("Deployment")
        .into_iter()
        .chain(r.all("CronJob"))
        .filter(|w| {
            pod_spec(w)["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some(&claims[0]))
        })
        .map(|w| s(&w["metadata"]["name"]))
        .collect();
    assert_eq!(users, ["quarry-loader"], "one pod on the database's claim");
    // The pod waits for the longer of the two shutdowns.
    for name in ["loader", "archiver"] {
        let (_, grace) = metrics_and_grace(&configs[name], name);
        let kill_after = pod_spec(loader)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        assert!(grace + quarry_core::grpc::SHUTDOWN_FINAL_WAIT.as_secs() + 10 <= kill_after);
    }

    // Cold partitions on their own claim.
    let cold = &configs["archiver"].archiver.cold_root;
    assert!(
        !cold.contains("://"),
        "dev cold tier is a directory: {cold}"
    );
    let (v, ro) =
        volume_at(loader, container(loader, "archiver"), cold).expect("cold root mounted");
    assert!(!ro);
    let claim = s(&v["persistentVolumeClaim"]["claimName"]);
    assert_ne!(claim, claims[0]);
    r.get("PersistentVolumeClaim", claim);
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate: scripts/test.sh runs it"]
fn k8s_prod_overlay_clickhouse_and_s3_from_secrets() {
    let dir = "deploy/k8s/overlays/prod";
    let r = render(dir);
    let configs = check_cluster(&r, dir, "quarry");
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

    check_auth_and_tls(&r, &configs);
    // The image must be set by digest before use: until then every pod names
    // a placeholder that is no valid image reference (fails at once).
    for w in r.all("Deployment").into_iter().chain(r.all("CronJob")) {
        for c in pod_spec(w)["containers"].as_sequence().unwrap() {
            let image = s(&c["image"]);
            assert!(image.starts_with("SET-THE-IMAGE/"), "{image}");
            assert!(
                image.chars().any(|ch| ch.is_ascii_uppercase()),
                "{image} is a valid reference"
            );
        }
    }
    check_gcp_key_is_opt_in(&r, Some(dir));
    check_workload_identity(&r, dir, "quarry");
    check_pod_monitor(&r, dir);

    // More than one of each stateless service; the loaders never on one node.
    let loader = r.get("Deployment", "quarry-loader");
    assert!(loader["spec"]["replicas"].as_u64().unwrap() >= 2);
    let spread = pod_spec(loader)["topologySpreadConstraints"]
        .as_sequence()
        .expect("loader topologySpreadConstraints");
    assert!(
        spread.iter().any(|c| {
            s(&c["topologyKey"]) == "kubernetes.io/hostname"
                && s(&c["whenUnsatisfiable"]) == "DoNotSchedule"
                && c["maxSkew"].as_u64() == Some(1)
                && selects_labels(&c["labelSelector"]["matchLabels"], pod_labels(loader))
        }),
        "the loaders are spread over nodes: {spread:?}"
    );
    for service in ["extractor", "transformer"] {
        let hpa = r.get("HorizontalPodAutoscaler", &format!("quarry-{service}"));
        assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    }
    // Several extractor pods on several nodes read the inputs.
    let data = r.get("PersistentVolumeClaim", "quarry-data");
    assert_eq!(strings(&data["spec"]["accessModes"]), ["ReadWriteMany"]);
}

/// A workload's pod and its container `c` run hardened: not as root but as
/// the image's user, without privilege escalation or capabilities, on a
/// read-only root with /tmp on an emptyDir, with resources set and every
/// mount backed by a volume of the pod.
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
fn check_cluster(r: &Rendered, dir: &str, namespace: &str) -> BTreeMap<&'static str, Config> {
    check_namespace(r, dir, namespace);
    let claims: Vec<&str> = r
        .all("PersistentVolumeClaim")
        .iter()
        .map(|p| s(&p["metadata"]["name"]))
        .collect();
    let ports = default_ports();
    let mut configs = BTreeMap::new();
    for (service, port) in &ports {
        configs.insert(*service, check_deployment(r, service, *port, &claims));
    }
    check_autoscalers(r);
    check_transformer_targets(r, &configs["transformer"]);
    let root = check_extractor_data(r, &configs["extractor"]);
    check_cron_job(r, &ports, root);
    super::network::check(r, namespace, false);

    // Loader and archiver open the same warehouse.
    let (l, a) = (&configs["loader"].warehouse, &configs["archiver"].warehouse);
    assert_eq!((l.kind, &l.sqlite.path), (a.kind, &a.sqlite.path));
    configs
}

/// Every document is in `namespace` and labelled part of Quarry. The
/// Namespace is not among them (deleting the overlay must not delete it and
/// the Secrets made in it): the overlay's namespace.yaml, applied on its
/// own, creates it and enforces the restricted pod security.
fn check_namespace(r: &Rendered, dir: &str, namespace: &str) {
    for d in &r.docs {
        let kind = s(&d["kind"]);
        assert_ne!(
            kind, "Namespace",
            "the overlay creates (and deletes) its namespace"
        );
        assert_eq!(
            d["metadata"]["namespace"].as_str(),
            Some(namespace),
            "{kind} namespace"
        );
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(),
            Some("quarry"),
            "{kind} {:?} label",
            d["metadata"]["name"]
        );
    }
    let ns: Value = serde_norway::from_str(&read(&format!("{dir}/namespace.yaml"))).unwrap();
    assert_eq!(s(&ns["kind"]), "Namespace");
    assert_eq!(s(&ns["metadata"]["name"]), namespace);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("restricted")
    );
}

/// The Deployment of `service`: hardened, running its binary, listening on
/// `port` with metrics, graceful shutdown and gRPC probes that fit, found
/// by its Service and PodDisruptionBudget, its volumes on the defined
/// `claims`. Returns the configuration its container loads.
fn check_deployment(r: &Rendered, service: &str, port: u16, claims: &[&str]) -> Config {
    let name = format!("quarry-{service}");
    let deploy = workload_of(r, service);
    let ctx = format!(
        "Deployment {}, container {service}",
        s(&deploy["metadata"]["name"])
    );
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
        Some(u64::from(port)),
        "{ctx}"
    );
    check_metrics_and_shutdown(&ctx, deploy, c, &config, service);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        check_probe(
            &format!("{ctx}: {probe}"),
            &c[probe],
            port,
            config.tls.enabled,
        );
    }
    check_selectors(r, &name, &ctx, deploy, cport, port);
    check_strategy_and_claims(&ctx, deploy, claims);
    config
}

/// The Deployment that runs `service`: its own, or the one whose pod holds
/// it as a second container (the dev archiver, in the loader's pod).
fn workload_of<'a>(r: &'a Rendered, service: &str) -> &'a Value {
    let found: Vec<&Value> = r
        .all("Deployment")
        .into_iter()
        .filter(|d| {
            pod_spec(d)["containers"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|c| c["name"].as_str() == Some(service))
        })
        .collect();
    assert_eq!(found.len(), 1, "one Deployment runs {service}");
    found[0]
}

/// A probe of the service on `port`: the kubelet's native gRPC probe, or
/// with TLS on (which that probe cannot speak) `quarry ping
/// https://localhost:PORT` with its own timeout under the probe's.
fn check_probe(ctx: &str, probe: &Value, port: u16, tls: bool) {
    if !tls {
        assert_eq!(
            probe["grpc"]["port"].as_u64(),
            Some(u64::from(port)),
            "{ctx}: a gRPC health probe on the service port"
        );
        return;
    }
    assert!(probe["grpc"].is_null(), "{ctx}: a gRPC probe under TLS");
    let cmd = strings(&probe["exec"]["command"]);
    assert_eq!(
        cmd[..3],
        ["quarry", "ping", &format!("https://localhost:{port}")],
        "{ctx}"
    );
    let ping_timeout: u64 = cmd
        .iter()
        .position(|a| a == "--timeout")
        .map(|i| cmd[i + 1].parse().unwrap())
        .unwrap_or(5);
    // Kubernetes' default probe timeout is 1 s.
    let timeout = probe["timeoutSeconds"].as_u64().unwrap_or(1);
    assert!(
        ping_timeout < timeout,
        "{ctx}: ping --timeout {ping_timeout} is not under timeoutSeconds {timeout}"
    );
}

/// Prod: every service requires the token and speaks TLS only, and the run
/// sends the token and trusts the CA; the token and the key material come
/// from required Secrets, under the key names cert-manager writes. The run
/// gets the CA, not the services' key.
fn check_auth_and_tls(r: &Rendered, configs: &BTreeMap<&'static str, Config>) {
    let mut workloads: Vec<(&Value, &str)> = configs
        .keys()
        .map(|svc| (r.get("Deployment", &format!("quarry-{svc}")), *svc))
        .collect();
    workloads.push((r.get("CronJob", "quarry-run"), "run"));
    for (w, name) in workloads {
        let c = container(w, name);
        let config = container_config(r, w, c);
        assert!(
            config.auth.enabled && config.tls.enabled,
            "{name}: auth and TLS on"
        );
        let env = container_env(r, c);
        let var = |k: &str| env_value(&env, k).unwrap_or_default();
        let from_secret = |k: &str| secret_file(w, c, var(k));
        let expect = |secret: &str, key: &str| Some((secret.to_string(), key.to_string()));
        assert_eq!(
            from_secret("QUARRY_AUTH__TOKEN_FILE"),
            expect("quarry-auth", "token"),
            "{name}"
        );
        assert_eq!(
            from_secret("QUARRY_TLS__CA_PATH"),
            expect("quarry-tls", "ca.crt"),
            "{name}"
        );
        for (k, key) in [
            ("QUARRY_TLS__CERT_PATH", "tls.crt"),
            ("QUARRY_TLS__KEY_PATH", "tls.key"),
        ] {
            if name == "run" {
                assert_eq!(var(k), "", "the run holds no server key: {k}");
            } else {
                assert_eq!(from_secret(k), expect("quarry-tls", key), "{name}: {k}");
            }
        }
        for v in pod_spec(w)["volumes"].as_sequence().unwrap() {
            if let Some(secret) = v["secret"].as_mapping() {
                let secret_name = secret.get("secretName").map(s).unwrap();
                if ["quarry-auth", "quarry-tls"].contains(&secret_name) {
                    assert_eq!(
                        secret.get("optional").and_then(Value::as_bool),
                        Some(false),
                        "{name}: {secret_name} is required"
                    );
                }
            }
        }
    }
}

/// No container of the overlay names a Google key file; with the gcp-key
/// component added to `dir` (if given), the loader and the archiver (only)
/// get `GOOGLE_APPLICATION_CREDENTIALS` pointing at `key.json` of the
/// required Secret quarry-bigquery.
fn check_gcp_key_is_opt_in(r: &Rendered, dir: Option<&str>) {
    const VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";
    let keyed = |r: &Rendered| -> Vec<String> {
        let mut names = Vec::new();
        for w in r.all("Deployment").into_iter().chain(r.all("CronJob")) {
            for c in pod_spec(w)["containers"].as_sequence().unwrap() {
                let env = container_env(r, c);
                if let Some(path) = env_value(&env, VAR) {
                    let from = secret_file(w, c, path);
                    assert_eq!(
                        from,
                        Some(("quarry-bigquery".to_string(), "key.json".to_string())),
                        "{VAR} = {path}"
                    );
                    names.push(s(&c["name"]).to_string());
                }
            }
        }
        names
    };
    assert_eq!(
        keyed(r),
        Vec::<String>::new(),
        "{VAR} without the gcp-key component"
    );
    if let Some(dir) = dir {
        let with_key = render_with_component(dir, "gcp-key");
        assert_eq!(keyed(&with_key), ["archiver", "loader"]);
    }
}

/// The gke-workload-identity component: the ServiceAccount of every pod
/// names a Google service account (a placeholder until set), and the loader
/// and the archiver, no other pod, reach the metadata server; without it
/// the account names none and nobody reaches it.
fn check_workload_identity(r: &Rendered, dir: &str, namespace: &str) {
    const ANNOTATION: &str = "iam.gke.io/gcp-service-account";
    let annotation = |r: &Rendered| {
        r.get("ServiceAccount", "quarry")["metadata"]["annotations"][ANNOTATION]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(annotation(r), None);
    let with = render_with_component(dir, "gke-workload-identity");
    let gsa = annotation(&with).expect("the Google service account annotation");
    assert!(!gsa.contains('@'), "{gsa}: a placeholder, not an address");
    for w in with
        .all("Deployment")
        .into_iter()
        .chain(with.all("CronJob"))
    {
        assert_eq!(s(&pod_spec(w)["serviceAccountName"]), "quarry");
    }
    super::network::check(&with, namespace, true);
}

/// An overlay with one of `deploy/k8s/components` added: a kustomization of
/// both in a temporary directory (kustomize takes only relative paths).
fn render_with_component(dir: &str, component: &str) -> Rendered {
    let tmp = tempfile::tempdir().unwrap();
    let up = "../".repeat(tmp.path().components().count() - 1);
    let rel = |p: &str| {
        let abs = repo().join(p);
        format!("{up}{}", abs.display().to_string().trim_start_matches('/'))
    };
    std::fs::write(
        tmp.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [{}]\ncomponents: [{}]\n",
            rel(dir),
            rel(&format!("deploy/k8s/components/{component}"))
        ),
    )
    .unwrap();
    render(tmp.path().to_str().unwrap())
}

/// The PodMonitor is optional (the operator's CRDs may be missing); with
/// the prometheus-operator component it scrapes the metrics port, by name,
/// of every service's pods.
fn check_pod_monitor(r: &Rendered, dir: &str) {
    assert!(
        r.all("PodMonitor").is_empty(),
        "a PodMonitor without the component"
    );
    let with = render_with_component(dir, "prometheus-operator");
    let monitors = with.all("PodMonitor");
    assert_eq!(monitors.len(), 1, "one PodMonitor");
    let m = monitors[0];
    let endpoints = m["spec"]["podMetricsEndpoints"].as_sequence().unwrap();
    for deploy in with.all("Deployment") {
        let name = s(&deploy["metadata"]["name"]);
        assert!(
            selects_labels(&m["spec"]["selector"]["matchLabels"], pod_labels(deploy)),
            "the PodMonitor does not select {name}"
        );
        let ports: Vec<&str> = pod_spec(deploy)["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_sequence().unwrap())
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(
            endpoints.iter().any(|e| ports.contains(&s(&e["port"]))
                && e["path"].as_str().unwrap_or("/metrics") == "/metrics"),
            "{name}: no scraped port among {ports:?}"
        );
    }
}

/// Scheme of a URL a client of `config` uses: https exactly when TLS is on.
fn check_scheme(ctx: &str, url: &str, config: &Config) {
    let scheme = if config.tls.enabled {
        "https://"
    } else {
        "http://"
    };
    assert!(
        url.starts_with(scheme),
        "{ctx}: {url} (TLS {})",
        config.tls.enabled
    );
}

/// The metrics address and shutdown grace period `config` gives `service`.
pub(crate) fn metrics_and_grace<'a>(config: &'a Config, service: &str) -> (&'a String, u64) {
    match service {
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
    }
}

/// Metrics: the configured port is the container's `metrics` port and the
/// one the scrape annotation names. Shutdown: the grace period fits in the
/// pod's termination grace period.
fn check_metrics_and_shutdown(
    ctx: &str,
    deploy: &Value,
    c: &Value,
    config: &Config,
    service: &str,
) {
    let (metrics_listen, grace) = metrics_and_grace(config, service);
    assert!(!metrics_listen.is_empty(), "{ctx}: metrics are off");
    let metrics_port = u64::from(port_of(metrics_listen));
    assert!(
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(metrics_port)),
        "{ctx}: no container port {metrics_port} for metrics"
    );
    // The scrape annotation names one port per pod: the pod's own service's
    // (a second container is scraped through its Service or a PodMonitor).
    if s(&deploy["metadata"]["name"]) == format!("quarry-{service}") {
        let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(metrics_port.to_string().as_str()),
            "{ctx}: scrape annotation"
        );
    }
    // On SIGTERM the service waits shutdown_grace_secs, aborts what is
    // in flight and waits a little more: all before the kubelet kills it.
    let kill_after = pod_spec(deploy)["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(
        grace + quarry_core::grpc::SHUTDOWN_FINAL_WAIT.as_secs() + 10 <= kill_after,
        "{ctx}: shutdown_grace_secs {grace} does not fit in terminationGracePeriodSeconds {kill_after}"
    );
}

/// Selectors: the Deployment, the Service `name` (on `port`, targeting the
/// container port `cport`) and the PodDisruptionBudget `name` find the pods.
fn check_selectors(r: &Rendered, name: &str, ctx: &str, deploy: &Value, cport: &Value, port: u16) {
    let selects = |sel: &Value| selects_labels(sel, pod_labels(deploy));
    assert!(
        selects(&deploy["spec"]["selector"]["matchLabels"]),
        "{ctx}: selector"
    );
    let svc = r.get("Service", name);
    assert!(
        selects(&svc["spec"]["selector"]),
        "Service {name} selects the pods"
    );
    assert_eq!(
        svc["spec"]["ports"][0]["port"].as_u64(),
        Some(u64::from(port))
    );
    assert_eq!(s(&svc["spec"]["ports"][0]["targetPort"]), s(&cport["name"]));
    // The metrics port too, under the container port's name.
    let metrics = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .unwrap_or_else(|| panic!("Service {name}: no metrics port"));
    let target = s(&metrics["targetPort"]);
    let container_metrics = pod_spec(deploy)["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|c| c["ports"].as_sequence().unwrap())
        .find(|p| p["name"].as_str() == Some(target))
        .and_then(|p| p["containerPort"].as_u64());
    assert_eq!(
        metrics["port"].as_u64(),
        container_metrics,
        "Service {name}: metrics port {target}"
    );
    // The budget is the pod's (a second container shares its pod's).
    let pdb = r.get("PodDisruptionBudget", s(&deploy["metadata"]["name"]));
    assert!(
        selects(&pdb["spec"]["selector"]["matchLabels"]),
        "PDB {name} selects the pods"
    );
}

/// A Recreate strategy carries no rolling-update parameters, and every
/// claim the pod mounts is one of `claims`.
fn check_strategy_and_claims(ctx: &str, deploy: &Value, claims: &[&str]) {
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
}

/// Extractor and transformer scale on CPU, within 1 GiB each.
fn check_autoscalers(r: &Rendered) {
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
}

/// The transformer (configured by `transformer`) reaches the others through
/// their Services.
fn check_transformer_targets(r: &Rendered, transformer: &Config) {
    let t = &transformer.transformer;
    for (url, target) in [(&t.extractor_url, "extractor"), (&t.loader_url, "loader")] {
        check_scheme("transformer", url, transformer);
        let (host, port) = host_port(url);
        let svc = r.get("Service", &host);
        assert_eq!(
            svc["spec"]["ports"][0]["port"].as_u64(),
            Some(u64::from(port))
        );
        assert_eq!(host, format!("quarry-{target}"));
    }
}

/// The extractor (configured by `extractor`) reads its data root from the
/// input claim; returns that root.
fn check_extractor_data<'a>(r: &Rendered, extractor: &'a Config) -> &'a str {
    let deploy = r.get("Deployment", "quarry-extractor");
    let roots = &extractor.extractor.data_roots;
    assert_eq!(roots.len(), 1);
    let root = roots[0].to_str().unwrap();
    let (data, _) = volume_at(deploy, container(deploy, "extractor"), root).unwrap();
    assert_eq!(
        s(&data["persistentVolumeClaim"]["claimName"]),
        "quarry-data"
    );
    root
}

/// The CronJob runs the pipeline against the Services, on data under the
/// extractor's data `root`, its reports into an emptyDir.
fn check_cron_job(r: &Rendered, ports: &BTreeMap<&str, u16>, root: &str) {
    let cron = r.get("CronJob", "quarry-run");
    assert_eq!(s(&cron["spec"]["concurrencyPolicy"]), "Forbid");
    assert!(cron["spec"]["schedule"].is_string());
    let c = container(cron, "run");
    check_hardened("CronJob quarry-run", cron, c);
    let config = container_config(r, cron, c);
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
        check_scheme("CronJob", &arg(flag), &config);
        assert_eq!(
            host_port(&arg(flag)),
            (format!("quarry-{target}"), ports[target])
        );
    }
    // Incremental: yesterday's landing folder only, never the whole root
    // (which holds days already loaded or archived).
    let source = arg("--source");
    assert_eq!(
        Path::new(&source).strip_prefix(root).ok(),
        Some(Path::new("landing/{yesterday}")),
        "CronJob --source {source}: not the day's folder under {root}"
    );
    let limit = c["resources"]["limits"]["memory"].as_str().unwrap();
    let mib: u64 = limit.strip_suffix("Mi").unwrap().parse().unwrap();
    assert!(
        mib >= 4 * 14,
        "CronJob memory limit {limit}: the client's peak was 14 MiB"
    );
    let (out, ro) = volume_at(cron, c, &arg("--output")).expect("CronJob --output volume");
    assert!(out["emptyDir"].is_mapping() && !ro);
}
