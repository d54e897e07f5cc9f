//! Rendered Kubernetes manifests: an overlay through kubectl kustomize and
//! kubernetes-validate, and what a workload's pod and containers see
//! (volumes, mounts and the configuration they load).

use std::path::Path;
use std::process::Command;

use quarry_core::Config;
use serde::Deserialize;
use serde_norway::Value;

use super::{run, s, scalar};

/// Kubernetes versions the manifests are validated against: the oldest
/// supported (native gRPC probes, CronJob time zones and HPA v2 are GA) and
/// the newest the validator knows.
const K8S_VERSIONS: [&str; 2] = ["1.28.0", "1.37.0"];

/// A rendered overlay: its documents, by kind and name.
pub struct Rendered {
    pub docs: Vec<Value>,
}

impl Rendered {
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    }

    pub fn get(&self, kind: &str, name: &str) -> &Value {
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
pub fn render(dir: &str) -> Rendered {
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
        // The validator knows no CRDs: the Prometheus operator's PodMonitor
        // (an optional component) is read by the tests instead.
        let findings: Vec<&str> = out
            .lines()
            .filter(|l| !l.contains("Couldn't find schema for kind PodMonitor with api version monitoring.coreos.com/v1"))
            .collect();
        assert!(
            !findings
                .iter()
                .any(|l| l.contains("WARN") || l.contains("ERROR")),
            "{dir} against {version}:\n{out}"
        );
    }
    Rendered {
        docs: yaml_docs(&text),
    }
}

/// The pod template of a workload (a Deployment or a CronJob).
pub fn pod_spec(workload: &Value) -> &Value {
    match s(&workload["kind"]) {
        "CronJob" => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &workload["spec"]["template"]["spec"],
    }
}

/// The labels of a workload's pods (a Deployment or a CronJob).
pub fn pod_labels(workload: &Value) -> &Value {
    match s(&workload["kind"]) {
        "CronJob" => &workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
        _ => &workload["spec"]["template"]["metadata"]["labels"],
    }
}

/// Whether a `matchLabels` map selects pods labelled `labels`.
pub fn selects_labels(match_labels: &Value, labels: &Value) -> bool {
    match_labels
        .as_mapping()
        .unwrap_or_else(|| panic!("matchLabels {match_labels:?}"))
        .iter()
        .all(|(k, v)| labels[s(k)].as_str() == Some(s(v)))
}

/// The value `env` (as `container_env` gives it) ends up with for `name`.
pub fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The container `name` of a workload's pod.
pub fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume mounted at `path` in a container (longest matching mount).
pub fn volume_at<'a>(workload: &'a Value, c: &Value, path: &str) -> Option<(&'a Value, bool)> {
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

/// The Secret and key a file at `path` of container `c` comes from, when it
/// lies in a mounted Secret volume that projects that key.
pub fn secret_file(workload: &Value, c: &Value, path: &str) -> Option<(String, String)> {
    let (volume, _) = volume_at(workload, c, path)?;
    let secret = volume["secret"].as_mapping()?;
    let mount = c["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|m| m["name"] == volume["name"])?;
    let rel = Path::new(path)
        .strip_prefix(s(&mount["mountPath"]))
        .ok()?
        .to_str()?;
    let key = match secret.get("items").and_then(Value::as_sequence) {
        Some(items) => s(&items.iter().find(|i| i["path"].as_str() == Some(rel))?["key"]),
        None => rel,
    };
    let name = s(secret.get("secretName")?).to_string();
    Some((name, key.to_string()))
}

/// The environment of a container from its ConfigMaps and plain `env`
/// values, in order (a later value wins).
pub fn container_env(r: &Rendered, c: &Value) -> Vec<(String, String)> {
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
    env
}

/// The configuration a container sees: the mounted quarry.toml, then the
/// variables of its ConfigMaps and plain `env` values (Secret values are
/// not known here and keep the file's settings). A path to a file a mounted
/// Secret provides is replaced by an empty stand-in file, so the settings
/// that must name existing files (TLS) load.
pub fn container_config(r: &Rendered, workload: &Value, c: &Value) -> Config {
    let mut env = container_env(r, c);
    let config_path = env_value(&env, "QUARRY_CONFIG")
        .expect("QUARRY_CONFIG")
        .to_string();
    let secrets = tempfile::tempdir().unwrap();
    for (_, v) in env.iter_mut() {
        if v.starts_with('/') && secret_file(workload, c, v).is_some() {
            let stand_in = secrets.path().join(v.trim_start_matches('/'));
            std::fs::create_dir_all(stand_in.parent().unwrap()).unwrap();
            std::fs::write(&stand_in, "").unwrap();
            *v = stand_in.to_str().unwrap().to_string();
        }
    }
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

/// A memory quantity (`512Mi`, `1Gi`) in MiB.
pub fn quantity_mib(q: &str) -> u64 {
    if let Some(g) = q.strip_suffix("Gi") {
        g.parse::<u64>().unwrap() * 1024
    } else if let Some(m) = q.strip_suffix("Mi") {
        m.parse().unwrap()
    } else {
        panic!("memory quantity {q}: use Mi or Gi")
    }
}

/// The documents of a YAML stream, empty ones left out.
fn yaml_docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}
