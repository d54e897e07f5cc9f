//! Services as processes with TLS (a CA generated here) and a bearer token:
//! calls without the right token are refused, health checks stay open, a
//! plaintext client gets nowhere, and a run with the token goes through
//! (the transformer calling the extractor and the loader over TLS too).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::Env;
use common::procs::{Stack, quarry};
use quarry_cli::client::{self, LoaderClient};
use quarry_core::grpc::{self, Security};
use quarry_core::security::Token;
use quarry_proto::loader_service_client::LoaderServiceClient;
use quarry_proto::{ListRunsRequest, RunRequest};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

const TOKEN: &str = "t0ken-for-the-tls-test";

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA, and a server certificate it signs for localhost and 127.0.0.1.
fn make_pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-server.pem")),
        key: dir.join(format!("{name}-server.key")),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// The token the services are given, for a client that has it.
fn token() -> Option<Token> {
    Some(Token::new("test token", TOKEN).unwrap())
}

fn https(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

async fn list_runs(url: &str, sec: &Security) -> Result<usize, tonic::Status> {
    let channel = grpc::connect_with("loader", url, sec).await.unwrap();
    LoaderServiceClient::new(sec.authorize(channel))
        .list_runs(ListRunsRequest { limit: 10 })
        .await
        .map(|r| r.into_inner().runs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_over_tls_require_the_token() {
    let env = Env::new();
    let sample = env.copy_fixture();
    let pki = make_pki(env.dir.path(), "quarry");
    let stack = start_secured(&env, &pki);
    let ca_pem = std::fs::read(&pki.ca).unwrap();
    let good = Security::client(Some(&ca_pem), None, token());
    let no_token = Security::client(Some(&ca_pem), None, None);
    let wrong = Security::client(
        Some(&ca_pem),
        None,
        Some(Token::new("t", "not-the-token").unwrap()),
    );
    let loader = https(stack.loader.port);

    // Health answers without a token (probes), over TLS.
    for svc in [&stack.extractor, &stack.transformer, &stack.loader] {
        let status = client::health_with(&https(svc.port), "", &no_token)
            .await
            .unwrap();
        assert_eq!(status, "SERVING", "{}", svc.name);
    }

    // The probe of a pod with TLS on (deploy/k8s/overlays/prod): `quarry
    // ping https://localhost:PORT`, configured like the service it probes.
    let probe = |port: u16| {
        let s = |p: &Path| p.display().to_string();
        quarry()
            .args([
                "ping",
                &format!("https://localhost:{port}"),
                "--timeout",
                "2",
            ])
            .env("QUARRY_TLS__ENABLED", "true")
            .env("QUARRY_TLS__CA_PATH", s(&pki.ca))
            .env("QUARRY_TLS__CERT_PATH", s(&pki.cert))
            .env("QUARRY_TLS__KEY_PATH", s(&pki.key))
            .env("QUARRY_AUTH__ENABLED", "true")
            .env("QUARRY_AUTH__TOKEN_FILE", env.dir.path().join("token"))
            .output()
            .unwrap()
    };
    for svc in [&stack.extractor, &stack.transformer, &stack.loader] {
        let out = probe(svc.port);
        assert!(
            out.status.success(),
            "{}: {}",
            svc.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    }

    // No token, or a wrong one: UNAUTHENTICATED, on every service.
    for sec in [&no_token, &wrong] {
        assert_refused_on_every_service(&stack, &sample, sec).await;
    }
    assert_eq!(list_runs(&loader, &good).await.unwrap(), 0);

    // The right token: a full run, the transformer reaching the extractor
    // and the loader over TLS with the token.
    let req = RunRequest {
        source: sample.display().to_string(),
        ..Default::default()
    };
    let summary = client::run_pipeline_with(&https(stack.transformer.port), &good, req, |_| {})
        .await
        .unwrap();
    assert_eq!(summary.stats.unwrap().rows_in, 800);
    let mut l = LoaderClient::connect_with(&loader, &good).await.unwrap();
    assert_eq!(l.list_runs(10).await.unwrap()[0].status, "succeeded");

    assert_tls_is_checked(&env, stack.loader.port, &ca_pem).await;

    // The quarry command as a client, configured like the services; the
    // token never shows in its output.
    let out = quarry_runs(&loader, &pki.ca, TOKEN);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("succeeded"), "{stdout}");
    let out = quarry_runs(&loader, &pki.ca, "wrong-token");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bearer token") && !err.contains("wrong-token"),
        "{err}"
    );

    let logs: String = [&stack.extractor, &stack.transformer, &stack.loader]
        .iter()
        .map(|s| s.log_text())
        .collect();
    assert!(!logs.contains(TOKEN), "the token appears in a log");
    stack.stop();
}

/// The three services over TLS with `pki`, each requiring the token (read
/// from a file next to the certificates).
fn start_secured(env: &Env, pki: &Pki) -> Stack {
    let token_file = env.dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let s = |p: &Path| p.display().to_string();
    let (ca, cert, key, tf) = (s(&pki.ca), s(&pki.cert), s(&pki.key), s(&token_file));
    Stack::start_with(
        env,
        &[
            ("QUARRY_TLS__ENABLED", "true"),
            ("QUARRY_TLS__CA_PATH", &ca),
            ("QUARRY_TLS__CERT_PATH", &cert),
            ("QUARRY_TLS__KEY_PATH", &key),
            ("QUARRY_AUTH__ENABLED", "true"),
            ("QUARRY_AUTH__TOKEN_FILE", &tf),
        ],
        "https",
    )
}

/// A client with the security `sec` (no token or a wrong one) is refused by
/// each service: the loader's and the extractor's calls are
/// UNAUTHENTICATED, and a run through the transformer fails naming the
/// bearer token.
async fn assert_refused_on_every_service(stack: &Stack, sample: &Path, sec: &Security) {
    let e = list_runs(&https(stack.loader.port), sec).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let req = RunRequest {
        source: sample.display().to_string(),
        ..Default::default()
    };
    let e = client::run_pipeline_with(&https(stack.transformer.port), sec, req, |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bearer token"), "{e}");
    let channel = grpc::connect_with("extractor", &https(stack.extractor.port), sec)
        .await
        .unwrap();
    let e = arrow_flight::flight_service_client::FlightServiceClient::new(sec.authorize(channel))
        .list_actions(arrow_flight::Empty {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
}

/// The loader on `port` (its certificate signed by the CA in `ca_pem`, one
/// run recorded) is reached only over TLS, trusting that CA, with the
/// certificate's names checked.
async fn assert_tls_is_checked(env: &Env, port: u16, ca_pem: &[u8]) {
    let loader = &https(port);
    // Plaintext against the TLS port fails; so does TLS trusting another CA.
    let plain = format!("http://127.0.0.1:{port}");
    assert!(client::health(&plain, "").await.is_err());
    let other = make_pki(env.dir.path(), "other");
    let other_ca = std::fs::read(&other.ca).unwrap();
    let untrusted = Security::client(Some(&other_ca), None, token());
    assert!(
        grpc::connect_with("loader", loader, &untrusted)
            .await
            .is_err()
    );

    // tls.domain: the name checked in the certificate instead of the URL's host.
    let named = Security::client(Some(ca_pem), Some("localhost"), token());
    assert_eq!(list_runs(loader, &named).await.unwrap(), 1);
    let misnamed = Security::client(Some(ca_pem), Some("elsewhere.example"), token());
    let e = grpc::connect_with("loader", loader, &misnamed)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
}

/// `quarry runs` against the loader at `loader`, configured like the
/// services (TLS trusting `ca`, auth on) and sending `token`.
fn quarry_runs(loader: &str, ca: &Path, token: &str) -> Output {
    quarry()
        .args(["runs", "--loader", loader])
        .env("QUARRY_TLS__ENABLED", "true")
        .env("QUARRY_TLS__CA_PATH", ca)
        .env("QUARRY_AUTH__ENABLED", "true")
        .env("QUARRY_TOKEN", token)
        .output()
        .unwrap()
}
