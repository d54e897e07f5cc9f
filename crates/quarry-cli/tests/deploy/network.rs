//! The rendered NetworkPolicies, evaluated the way a cluster's network
//! plugin does: a pod selected by a policy of a direction is isolated in
//! that direction, and a connection passes when the source's egress and the
//! destination's ingress both allow it. Checked: every Quarry pod is
//! isolated both ways; exactly the pipeline's flows reach each service's
//! gRPC port; Prometheus (namespace `monitoring`) and nobody else reaches
//! the metrics ports; every pod resolves names; only the services that talk
//! to storage, sources or the warehouse leave the cluster, on their ports;
//! the cloud's metadata server is reached only by the loader and the
//! archiver, and only with the gke-workload-identity component.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_norway::Value;

use super::manifests::{Rendered, pod_labels, pod_spec, selects_labels};
use super::s;

/// One end of a connection.
#[derive(Clone, Copy)]
enum Peer<'a> {
    /// A pod of one of the rendered workloads, in their namespace.
    Pod(&'a Value),
    /// A pod in another namespace: that namespace's name and the pod's labels.
    Elsewhere(&'a str, &'a [(&'a str, &'a str)]),
    /// An address outside the cluster.
    Outside(Ipv4Addr),
}

/// Somewhere on the internet (TEST-NET-3): a bucket, a warehouse.
const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// The GKE metadata server: where clients ask, and where GKE redirects them.
const METADATA: [(Ipv4Addr, u16); 2] = [
    (Ipv4Addr::new(169, 254, 169, 254), 80),
    (Ipv4Addr::new(169, 254, 169, 252), 988),
];

/// Whether a label selector (`matchLabels`, and `matchExpressions` with
/// `In`) selects `labels`.
fn selects(selector: &Value, labels: &dyn Fn(&str) -> Option<String>) -> bool {
    let expressions = selector["matchExpressions"]
        .as_sequence()
        .into_iter()
        .flatten();
    let mut expressions_ok = true;
    for e in expressions {
        assert_eq!(s(&e["operator"]), "In", "the check reads In only: {e:?}");
        let value = labels(s(&e["key"]));
        expressions_ok &= super::strings(&e["values"])
            .iter()
            .any(|v| value.as_deref() == Some(v));
    }
    expressions_ok
        && selector["matchLabels"]
            .as_mapping()
            .into_iter()
            .flatten()
            .all(|(k, v)| labels(s(k)).as_deref() == Some(s(v)))
}

/// Whether an `ipBlock` holds `addr` (IPv4 CIDR, less its `except` blocks).
fn holds(block: &Value, addr: Ipv4Addr) -> bool {
    let within = |cidr: &str| {
        let (net, bits) = cidr.split_once('/').expect("a CIDR");
        let net: Ipv4Addr = net.parse().expect("an IPv4 CIDR");
        let bits: u32 = bits.parse().unwrap();
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        u32::from(net) & mask == u32::from(addr) & mask
    };
    within(s(&block["cidr"]))
        && !block["except"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|e| within(s(e)))
}

fn labels_of(peer: Peer<'_>) -> impl Fn(&str) -> Option<String> + '_ {
    move |key: &str| match peer {
        Peer::Pod(w) => pod_labels(w)[key].as_str().map(str::to_string),
        Peer::Elsewhere(_, labels) => labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string()),
        Peer::Outside(_) => None,
    }
}

/// Whether one entry of a rule's `from` or `to` covers `peer`.
fn covers(entry: &Value, peer: Peer<'_>, namespace: &str) -> bool {
    if !entry["ipBlock"].is_null() {
        return matches!(peer, Peer::Outside(addr) if holds(&entry["ipBlock"], addr));
    }
    let peer_ns = match peer {
        Peer::Pod(_) => namespace,
        Peer::Elsewhere(ns, _) => ns,
        Peer::Outside(_) => return false,
    };
    let (ns_sel, pod_sel) = (&entry["namespaceSelector"], &entry["podSelector"]);
    let ns_ok = if ns_sel.is_null() {
        peer_ns == namespace
    } else {
        // Kubernetes labels every namespace with its name.
        selects(ns_sel, &|k: &str| {
            (k == "kubernetes.io/metadata.name").then(|| peer_ns.to_string())
        })
    };
    ns_ok && (pod_sel.is_null() || selects(pod_sel, &labels_of(peer)))
}

/// Whether a rule's `ports` admit `port`/`protocol` at `dest` (a named
/// port is looked up among the destination pod's container ports).
fn admits(ports: &Value, port: u16, protocol: &str, dest: Peer<'_>) -> bool {
    let Some(ports) = ports.as_sequence().filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        let number = match &p["port"] {
            Value::Number(n) => n.as_u64().map(|n| n as u16),
            Value::String(name) => match dest {
                Peer::Pod(w) => named_port(w, name),
                _ => None,
            },
            Value::Null => Some(port),
            other => panic!("port {other:?}"),
        };
        proto == protocol && number == Some(port)
    })
}

/// The number of the container port called `name` in a workload's pod.
fn named_port(workload: &Value, name: &str) -> Option<u16> {
    pod_spec(workload)["containers"]
        .as_sequence()?
        .iter()
        .flat_map(|c| c["ports"].as_sequence().into_iter().flatten())
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .map(|n| n as u16)
}

struct Policies<'a> {
    all: Vec<&'a Value>,
    namespace: &'a str,
}

impl<'a> Policies<'a> {
    /// The policies of `direction` ("Ingress" or "Egress") selecting `pod`.
    fn of(&self, pod: &Value, direction: &str) -> Vec<&'a Value> {
        self.all
            .iter()
            .copied()
            .filter(|p| {
                let types: Vec<&str> = match p["spec"]["policyTypes"].as_sequence() {
                    Some(t) => t.iter().map(s).collect(),
                    None if p["spec"]["egress"].is_null() => vec!["Ingress"],
                    None => vec!["Ingress", "Egress"],
                };
                types.contains(&direction)
                    && selects(&p["spec"]["podSelector"], &labels_of(Peer::Pod(pod)))
            })
            .collect()
    }

    /// Whether `side` lets the connection through in `direction`: not
    /// isolated, or one rule covers the other end and the port.
    fn lets(
        &self,
        side: &Value,
        direction: &str,
        other: Peer<'_>,
        port: u16,
        protocol: &str,
        dest: Peer<'_>,
    ) -> bool {
        let (rules, peers) = match direction {
            "Ingress" => ("ingress", "from"),
            _ => ("egress", "to"),
        };
        let policies = self.of(side, direction);
        policies.is_empty()
            || policies.iter().any(|p| {
                p["spec"][rules]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|rule| {
                        let peer_ok = match rule[peers].as_sequence() {
                            Some(entries) if !entries.is_empty() => {
                                entries.iter().any(|e| covers(e, other, self.namespace))
                            }
                            _ => true,
                        };
                        peer_ok && admits(&rule["ports"], port, protocol, dest)
                    })
            })
    }

    /// Whether a connection from `src` to `dst` on `port` passes.
    fn allowed(&self, src: Peer<'_>, dst: Peer<'_>, port: u16, protocol: &str) -> bool {
        let out = match src {
            Peer::Pod(w) => self.lets(w, "Egress", dst, port, protocol, dst),
            _ => true,
        };
        let inn = match dst {
            Peer::Pod(w) => self.lets(w, "Ingress", src, port, protocol, dst),
            _ => true,
        };
        out && inn
    }
}

/// The connections each workload's pods may open to a Service's gRPC port
/// (on the pods it selects: in dev the archiver's is in the loader's pod).
const FLOWS: [(&str, &str); 5] = [
    ("quarry-run", "quarry-transformer"),
    ("quarry-run", "quarry-loader"),
    ("quarry-run", "quarry-archiver"),
    ("quarry-transformer", "quarry-extractor"),
    ("quarry-transformer", "quarry-loader"),
];

/// The ports each workload may reach outside the cluster: object storage
/// and PostgreSQL sources, the warehouse, the cold tier.
fn outside_ports(workload: &str) -> &'static [u16] {
    match workload {
        "quarry-extractor" => &[443, 5432, 9000],
        "quarry-loader" => &[443, 8123, 8443],
        "quarry-archiver" => &[443, 8123, 8443, 9000],
        _ => &[],
    }
}

/// `metadata_server`: whether the loader and the archiver must reach the
/// GKE metadata server (with the gke-workload-identity component).
pub fn check(r: &Rendered, namespace: &str, metadata_server: bool) {
    let policies = Policies {
        all: r.all("NetworkPolicy"),
        namespace,
    };
    let workloads: BTreeMap<&str, &Value> = r
        .all("Deployment")
        .into_iter()
        .chain(r.all("CronJob"))
        .map(|w| (s(&w["metadata"]["name"]), w))
        .collect();
    assert!(workloads.contains_key("quarry-run"), "{workloads:?}");
    let services = services(r, &workloads);
    let prometheus = Peer::Elsewhere("monitoring", &[("app.kubernetes.io/name", "prometheus")]);
    let stranger = Peer::Elsewhere("default", &[("app.kubernetes.io/name", "prometheus")]);
    let dns = Peer::Elsewhere("kube-system", &[("k8s-app", "kube-dns")]);
    for (name, w) in &workloads {
        for direction in ["Ingress", "Egress"] {
            assert!(
                !policies.of(w, direction).is_empty(),
                "{name}: no NetworkPolicy isolates its {direction}"
            );
        }
        for protocol in ["UDP", "TCP"] {
            assert!(
                policies.allowed(Peer::Pod(w), dns, 53, protocol),
                "{name} cannot resolve names (DNS {protocol}/53)"
            );
        }
        for port in [80, 443, 988, 5432, 8123, 8443, 9000] {
            assert_eq!(
                policies.allowed(Peer::Pod(w), Peer::Outside(INTERNET), port, "TCP"),
                outside_ports(name).contains(&port),
                "{name} -> outside :{port}"
            );
        }
        let needs_tokens = ["quarry-loader", "quarry-archiver"].contains(name);
        // Exactly those two address:port pairs, not their neighbours.
        for (addr, _) in METADATA {
            for (_, port) in METADATA {
                let neighbour = Ipv4Addr::from(u32::from(addr) + 1);
                assert_eq!(
                    policies.allowed(Peer::Pod(w), Peer::Outside(addr), port, "TCP"),
                    metadata_server && needs_tokens && METADATA.contains(&(addr, port)),
                    "{name} -> metadata server {addr}:{port}"
                );
                assert!(
                    !policies.allowed(Peer::Pod(w), Peer::Outside(neighbour), port, "TCP"),
                    "{name} -> {neighbour}:{port}"
                );
            }
        }
        for svc in &services {
            let expected = FLOWS.contains(&(*name, svc.name));
            assert_eq!(
                policies.allowed(Peer::Pod(w), Peer::Pod(svc.pods), svc.grpc, "TCP"),
                expected,
                "{name} -> {}:grpc ({})",
                svc.name,
                svc.grpc
            );
            assert!(
                !policies.allowed(Peer::Pod(w), Peer::Pod(svc.pods), svc.metrics, "TCP"),
                "{name} -> {}:metrics ({})",
                svc.name,
                svc.metrics
            );
        }
    }
    for svc in &services {
        let (name, dst) = (svc.name, Peer::Pod(svc.pods));
        assert!(
            FLOWS.iter().any(|(_, to)| *to == name),
            "Service {name}: nobody may reach it"
        );
        assert!(
            policies.allowed(prometheus, dst, svc.metrics, "TCP"),
            "{name}: Prometheus cannot scrape :{}",
            svc.metrics
        );
        assert!(
            !policies.allowed(stranger, dst, svc.metrics, "TCP"),
            "{name}: another namespace reaches :{}",
            svc.metrics
        );
        assert!(
            !policies.allowed(prometheus, dst, svc.grpc, "TCP"),
            "{name}: the monitoring namespace reaches gRPC :{}",
            svc.grpc
        );
    }
}

/// A Service of Quarry's: the workload whose pods it selects, and the
/// container ports its `grpc` and `metrics` ports lead to there.
struct Service<'a> {
    name: &'a str,
    pods: &'a Value,
    grpc: u16,
    metrics: u16,
}

fn services<'a>(r: &'a Rendered, workloads: &BTreeMap<&str, &'a Value>) -> Vec<Service<'a>> {
    r.all("Service")
        .into_iter()
        .map(|svc| {
            let name = s(&svc["metadata"]["name"]);
            let selected: Vec<&Value> = workloads
                .values()
                .copied()
                .filter(|w| selects_labels(&svc["spec"]["selector"], pod_labels(w)))
                .collect();
            assert_eq!(
                selected.len(),
                1,
                "Service {name} selects one workload's pods"
            );
            let pods = selected[0];
            let target = |port_name: &str| -> u16 {
                let p = svc["spec"]["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"].as_str() == Some(port_name))
                    .unwrap_or_else(|| panic!("Service {name}: no {port_name} port"));
                match &p["targetPort"] {
                    Value::String(n) => {
                        named_port(pods, n).unwrap_or_else(|| panic!("{name}: port {n}"))
                    }
                    Value::Number(n) => n.as_u64().unwrap() as u16,
                    _ => p["port"].as_u64().unwrap() as u16,
                }
            };
            Service {
                name,
                pods,
                grpc: target("grpc"),
                metrics: target("metrics"),
            }
        })
        .collect()
}
