use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;

use quarry_core::ErrorKind;

use super::*;
use crate::bigquery::client::BigQuery;

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// A stand-in environment: only the variables given are set.
fn env_of(vars: &[(&str, &Path)]) -> impl Fn(&str) -> Option<OsString> + use<> {
    let vars: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

/// What was chosen, as text to compare.
fn describe(source: &Source) -> String {
    match source {
        Source::Token(t) => format!("token {t}"),
        Source::KeyFile(p) => format!("key file {}", p.display()),
        Source::Gcloud(p) => format!("gcloud {}", p.display()),
        Source::MetadataServer { url, .. } => format!("metadata {url}"),
    }
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

const AUTHORIZED_USER: &str = r#"{"type": "authorized_user", "client_id": "id.apps.example",
    "client_secret": "not-a-secret", "refresh_token": "not-a-refresh-token"}"#;

const SERVICE_ACCOUNT: &str = r#"{"type": "service_account", "project_id": "p",
    "private_key": "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    "client_email": "quarry@p.iam.gserviceaccount.com",
    "token_uri": "https://oauth2.googleapis.com/token"}"#;

#[test]
fn sources_are_tried_in_the_order_of_application_default_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let gcloud = write(
        &home.join(".config/gcloud/application_default_credentials.json"),
        AUTHORIZED_USER,
    );
    let key = write(&dir.path().join("key.json"), SERVICE_ACCOUNT);
    let other_key = write(&dir.path().join("other.json"), SERVICE_ACCOUNT);
    let token = Path::new(" a-token \n");
    let all = env_of(&[
        ("QUARRY_TOKEN", token),
        ("GOOGLE_APPLICATION_CREDENTIALS", &key),
        ("HOME", &home),
    ]);
    let with_token = BigQueryConfig {
        access_token_env: "QUARRY_TOKEN".into(),
        credentials_file: other_key.clone(),
        ..Default::default()
    };
    let chosen = |config: &BigQueryConfig, env: &dyn Fn(&str) -> Option<OsString>| {
        describe(&choose(config, env).unwrap())
    };

    // The token variable first, whatever else is there.
    assert_eq!(chosen(&with_token, &all), "token a-token");
    // Then credentials_file, before the file credentials_env names.
    let with_file = BigQueryConfig {
        credentials_file: other_key.clone(),
        ..Default::default()
    };
    assert_eq!(
        chosen(&with_file, &all),
        format!("key file {}", other_key.display())
    );
    // Then the file credentials_env names, before gcloud's.
    let plain = BigQueryConfig::default();
    assert_eq!(chosen(&plain, &all), format!("key file {}", key.display()));
    // Then gcloud's file, in CLOUDSDK_CONFIG if that is set.
    let gcloud_env = env_of(&[("HOME", &home)]);
    assert_eq!(
        chosen(&plain, &gcloud_env),
        format!("gcloud {}", gcloud.display())
    );
    let sdk_dir = dir.path().join("sdk");
    let sdk_file = write(
        &sdk_dir.join("application_default_credentials.json"),
        AUTHORIZED_USER,
    );
    let sdk_env = env_of(&[("HOME", &home), ("CLOUDSDK_CONFIG", &sdk_dir)]);
    assert_eq!(
        chosen(&plain, &sdk_env),
        format!("gcloud {}", sdk_file.display())
    );
    // The metadata server last; what was tried is kept for its error.
    let bare = env_of(&[("HOME", dir.path())]);
    let source = choose(&plain, &bare).unwrap();
    assert_eq!(
        describe(&source),
        format!("metadata http://{METADATA_HOST}{TOKEN_PATH}")
    );
    let Source::MetadataServer { tried, .. } = source else {
        unreachable!()
    };
    assert!(tried.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{tried}");
    assert!(
        tried.contains("application_default_credentials.json"),
        "{tried}"
    );

    // A token variable that is named but not set is an error, not a fallback.
    let err = choose(&with_token, &gcloud_env).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("QUARRY_TOKEN"), "{err}");
}

#[test]
fn gce_metadata_host_overrides_the_metadata_server() {
    let default = format!("http://metadata.google.internal{TOKEN_PATH}");
    assert_eq!(metadata_token_url(None).unwrap(), default);
    assert_eq!(metadata_token_url(Some(" ")).unwrap(), default);
    assert_eq!(
        metadata_token_url(Some("127.0.0.1:8080")).unwrap(),
        format!("http://127.0.0.1:8080{TOKEN_PATH}")
    );
    assert_eq!(
        metadata_token_url(Some("169.254.169.254")).unwrap(),
        format!("http://169.254.169.254{TOKEN_PATH}")
    );
    for bad in ["http://127.0.0.1", "host/path", "a b"] {
        let err = metadata_token_url(Some(bad)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("GCE_METADATA_HOST"), "{err}");
    }
    // Read from the environment.
    let env = env_of(&[("GCE_METADATA_HOST", Path::new("10.0.0.1:80"))]);
    let source = choose(&BigQueryConfig::default(), &env).unwrap();
    assert_eq!(
        describe(&source),
        format!("metadata http://10.0.0.1:80{TOKEN_PATH}")
    );
}

#[test]
fn key_files_are_told_apart_by_their_type() {
    let dir = tempfile::tempdir().unwrap();
    let user = write(&dir.path().join("user.json"), AUTHORIZED_USER);
    let Flow::AuthorizedUser(secret) = read_key_file(&user).unwrap() else {
        panic!("not read as authorized_user credentials");
    };
    assert_eq!(secret.client_id, "id.apps.example");
    assert_eq!(secret.refresh_token, "not-a-refresh-token");

    let key = write(&dir.path().join("key.json"), SERVICE_ACCOUNT);
    let Flow::ServiceAccount(key) = read_key_file(&key).unwrap() else {
        panic!("not read as a service-account key");
    };
    assert_eq!(key.client_email, "quarry@p.iam.gserviceaccount.com");

    // Both through the whole choice.
    for file in [&user, &dir.path().join("key.json")] {
        let env = env_of(&[("GOOGLE_APPLICATION_CREDENTIALS", file)]);
        let source = choose(&BigQueryConfig::default(), &env).unwrap();
        assert!(authenticator(source).is_ok());
    }
}

#[test]
fn other_credentials_are_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "federated.json",
            r#"{"type": "external_account", "audience": "x"}"#,
            "\"external_account\"",
        ),
        ("untyped.json", r#"{"client_id": "x"}"#, "(none)"),
        ("broken.json", "{not json", "not a Google credentials file"),
        (
            "partial.json",
            r#"{"type": "authorized_user", "client_id": "x"}"#,
            "client_secret",
        ),
    ];
    for (name, text, says) in cases {
        let file = write(&dir.path().join(name), text);
        let err = read_key_file(&file).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Config, "{name}");
        assert!(err.message().contains(&*file.to_string_lossy()), "{err}");
        assert!(err.message().contains(says), "{err}");
    }
    let missing = dir.path().join("missing.json");
    let err = read_key_file(&missing).err().unwrap();
    assert!(err.message().contains(&*missing.to_string_lossy()), "{err}");
}

/// A stand-in HTTP/1.1 server on 127.0.0.1, in a thread: it keeps each
/// request's head (request line and headers) and answers with
/// `answer(head)`, a status and a JSON body.
struct FakeHttp {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl FakeHttp {
    fn start(answer: fn(&str) -> (u16, String)) -> Self {
        Self::start_at(0, answer)
    }

    fn start_at(port: u16, answer: fn(&str) -> (u16, String)) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(vec![]));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(head) = read_request(&stream) else {
                    continue;
                };
                let (status, body) = answer(&head);
                seen.lock().unwrap().push(head);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Stand-in\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// The head of one request; its body is read and dropped.
fn read_request(stream: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
        head.push_str(&line);
    }
    reader.read_exact(&mut vec![0; length]).ok()?;
    Some(head)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The metadata server: the token only to requests that carry
/// `Metadata-Flavor: Google` (as Google's refuses others).
fn metadata_server(head: &str) -> (u16, String) {
    if header(head, "Metadata-Flavor") != Some("Google") {
        return (
            403,
            r#"{"error": "Missing Metadata-Flavor:Google header."}"#.into(),
        );
    }
    if !head.starts_with(&format!("GET {TOKEN_PATH}")) {
        return (404, r#"{"error": "not found"}"#.into());
    }
    let token =
        r#"{"access_token":"from-the-metadata-server","expires_in":3599,"token_type":"Bearer"}"#;
    (200, token.into())
}

/// The metadata server's credentials, chosen with nothing else there.
fn metadata_credentials(
    config: &BigQueryConfig,
    metadata_host: &str,
) -> (tempfile::TempDir, Arc<dyn Authenticator>) {
    let home = tempfile::tempdir().unwrap();
    let env = env_of(&[
        ("HOME", home.path()),
        ("GCE_METADATA_HOST", Path::new(metadata_host)),
    ]);
    let source = choose(config, &env).unwrap();
    assert!(matches!(source, Source::MetadataServer { .. }));
    (home, authenticator(source).unwrap())
}

#[tokio::test]
async fn the_metadata_server_hands_out_the_token() {
    let server = FakeHttp::start(metadata_server);
    // The stand-in refuses requests without the header.
    let bare = reqwest::get(format!("http://{}{TOKEN_PATH}", server.addr))
        .await
        .unwrap();
    assert_eq!(bare.status(), 403);

    let (_home, auth) = metadata_credentials(&BigQueryConfig::default(), &server.addr.to_string());
    let token = auth.access_token().await.unwrap();
    assert_eq!(token, "from-the-metadata-server");
    // Kept until it nears expiry: no second request.
    assert_eq!(auth.access_token().await.unwrap(), token);

    let heads = server.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let asked = &heads[1];
    assert_eq!(header(asked, "Metadata-Flavor"), Some("Google"), "{asked}");
    assert!(
        asked.starts_with(&format!("GET {TOKEN_PATH}?scopes={SCOPE} ")),
        "{asked}"
    );
}

#[tokio::test]
async fn the_metadata_server_token_reaches_bigquery() {
    let metadata = FakeHttp::start(metadata_server);
    let bigquery = FakeHttp::start(|_| {
        let rows = r#"{"kind": "bigquery#queryResponse", "jobComplete": true,
            "rows": [{"f": [{"v": "1"}]}]}"#;
        (200, rows.into())
    });
    let config = BigQueryConfig {
        project: "quarry-test".into(),
        api_url: format!("http://{}", bigquery.addr),
        ..Default::default()
    };
    let (_home, auth) = metadata_credentials(&config, &metadata.addr.to_string());
    let rows = BigQuery::new(&config, auth)
        .rows("a query", "SELECT 1")
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![Some("1".to_string())]]);

    let heads = bigquery.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("POST /bigquery/v2/projects/quarry-test/queries "),
        "{}",
        heads[0]
    );
    assert_eq!(
        header(&heads[0], "Authorization"),
        Some("Bearer from-the-metadata-server")
    );
}

#[tokio::test]
async fn a_metadata_server_that_starts_late_is_asked_again() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        FakeHttp::start_at(port, metadata_server)
    });
    let (_home, auth) =
        metadata_credentials(&BigQueryConfig::default(), &format!("127.0.0.1:{port}"));
    assert_eq!(
        auth.access_token().await.unwrap(),
        "from-the-metadata-server"
    );
    assert_eq!(late.join().unwrap().heads().len(), 1);
}

#[tokio::test]
async fn a_metadata_server_not_answering_says_what_was_tried() {
    // A port nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = BigQueryConfig {
        project: "quarry-test".into(),
        api_url: "http://127.0.0.1:9".into(),
        max_attempts: 1,
        ..Default::default()
    };
    let (home, auth) = metadata_credentials(&config, &addr.to_string());
    let err = BigQuery::new(&config, auth)
        .rows("a query", "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend { transient: true }, "{err}");
    let message = err.message();
    for says in [
        "no BigQuery credentials",
        "access_token_env",
        "credentials_file",
        "GOOGLE_APPLICATION_CREDENTIALS",
        &home
            .path()
            .join(".config/gcloud/application_default_credentials.json")
            .display()
            .to_string(),
        &format!("metadata server at http://{addr}"),
        "refused",
    ] {
        assert!(message.contains(says), "{says:?} missing: {message}");
    }
}
