//! TLS and bearer-token authentication of Quarry's gRPC services
//! (`[tls]` and `[auth]` in the configuration).
//!
//! Servers check `authorization: Bearer <token>` on every call except the
//! gRPC health service (probes carry no token), comparing in constant time;
//! clients attach it to every call. The token is never logged: its
//! `Debug` is redacted and the metadata value is marked sensitive.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready, ready};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::config::Config;
use crate::error::{Error, Result};

/// Calls under this path need no token: Kubernetes and compose probes.
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

/// A secret bearer token.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Checks a token: visible ASCII (it travels in a header), not empty.
    pub fn new(what: &str, value: &str) -> Result<Self> {
        let value = value.trim();
        if value.is_empty() {
            return Err(Error::config(format!("{what} is empty")));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::config(format!(
                "{what} must be printable ASCII without spaces"
            )));
        }
        Ok(Self(value.into()))
    }

    /// Whether an `authorization` header value carries this token.
    fn accepts(&self, header: &[u8]) -> bool {
        let Some(scheme) = header.get(..7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(header[7..].ct_eq(self.0.as_bytes()))
    }
}

struct Inner {
    tls: bool,
    server_tls: Option<ServerTlsConfig>,
    client_tls: Option<ClientTlsConfig>,
    token: Option<Token>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Default for Inner {
    fn default() -> Self {
        let client = crate::config::ClientConfig::default();
        Self {
            tls: false,
            server_tls: None,
            client_tls: None,
            token: None,
            connect_timeout: Duration::from_secs(client.connect_timeout_secs),
            request_timeout: Duration::from_secs(client.request_timeout_secs),
        }
    }
}

/// What servers require and clients present, and the clients' deadlines
/// (`[tls]`, `[auth]`, `[client]`). `Security::default()` is plaintext
/// without authentication (the embedded runner, tests).
#[derive(Clone, Default)]
pub struct Security(Arc<Inner>);

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.0.tls)
            .field("auth", &self.0.token.is_some())
            .finish()
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::config(format!("{key} = {}: cannot read: {e}", path.display())).with_source(e)
    })
}

impl Security {
    /// Reads the certificates and the token named in `[tls]` and `[auth]`.
    /// The server certificate is optional here (clients need none); serving
    /// without it fails in [`Security::server_tls`].
    pub fn from_config(config: &Config) -> Result<Self> {
        let mut inner = Inner {
            connect_timeout: Duration::from_secs(config.client.connect_timeout_secs),
            request_timeout: Duration::from_secs(config.client.request_timeout_secs),
            ..Inner::default()
        };
        let tls = &config.tls;
        if tls.enabled {
            // Both rustls back ends are in the dependency tree; pick one for
            // the process so building a server config cannot be ambiguous.
            let _ = rustls::crypto::ring::default_provider().install_default();
            inner.tls = true;
            if tls.ca_path.as_os_str().is_empty() {
                return Err(Error::config(
                    "tls.enabled is true but tls.ca_path is empty: clients need the CA to trust",
                ));
            }
            let ca = Certificate::from_pem(read("tls.ca_path", &tls.ca_path)?);
            let mut client = ClientTlsConfig::new().ca_certificate(ca);
            if !tls.domain.is_empty() {
                client = client.domain_name(tls.domain.clone());
            }
            inner.client_tls = Some(client);
            match (
                tls.cert_path.as_os_str().is_empty(),
                tls.key_path.as_os_str().is_empty(),
            ) {
                (true, true) => {}
                (false, false) => {
                    let cert = read("tls.cert_path", &tls.cert_path)?;
                    let key = read("tls.key_path", &tls.key_path)?;
                    inner.server_tls =
                        Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)));
                }
                _ => {
                    return Err(Error::config(
                        "tls.cert_path and tls.key_path must be set together",
                    ));
                }
            }
        }
        let auth = &config.auth;
        if auth.enabled {
            inner.token = Some(if !auth.token_file.as_os_str().is_empty() {
                let raw = read("auth.token_file", &auth.token_file)?;
                let text = String::from_utf8(raw).map_err(|_| {
                    Error::config(format!(
                        "auth.token_file = {}: not UTF-8 text",
                        auth.token_file.display()
                    ))
                })?;
                Token::new(
                    &format!("the token in {}", auth.token_file.display()),
                    &text,
                )?
            } else {
                let var = &auth.token_env;
                let value = std::env::var(var).map_err(|_| {
                    Error::config(format!(
                        "auth.enabled is true but the variable {var} (auth.token_env) is not set"
                    ))
                })?;
                Token::new(&format!("the variable {var} (auth.token_env)"), &value)?
            });
        }
        Ok(Self(Arc::new(inner)))
    }

    /// Client side only, from parts (tests, tools): trust `ca_pem` (checking
    /// the server name `domain` if given) and send `token`.
    pub fn client(ca_pem: Option<&[u8]>, domain: Option<&str>, token: Option<Token>) -> Self {
        let client_tls = ca_pem.map(|pem| {
            let c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            match domain {
                Some(d) => c.domain_name(d),
                None => c,
            }
        });
        if client_tls.is_some() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        Self(Arc::new(Inner {
            tls: client_tls.is_some(),
            client_tls,
            token,
            ..Inner::default()
        }))
    }

    /// The same settings with other client deadlines.
    pub fn with_deadlines(&self, connect: Duration, request: Duration) -> Self {
        Self(Arc::new(Inner {
            tls: self.0.tls,
            server_tls: self.0.server_tls.clone(),
            client_tls: self.0.client_tls.clone(),
            token: self.0.token.clone(),
            connect_timeout: connect,
            request_timeout: request,
        }))
    }

    /// How long connecting to a service (and its first answer) may take.
    pub fn connect_timeout(&self) -> Duration {
        self.0.connect_timeout
    }

    /// How long a query call may take.
    pub fn request_timeout(&self) -> Duration {
        self.0.request_timeout
    }

    pub fn tls_enabled(&self) -> bool {
        self.0.tls
    }

    /// The server's TLS settings, or None when TLS is off.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>> {
        match (&self.0.server_tls, self.0.tls) {
            (Some(c), _) => Ok(Some(c.clone())),
            (None, false) => Ok(None),
            (None, true) => Err(Error::config(
                "tls.enabled is true but tls.cert_path / tls.key_path are empty: a server needs its certificate",
            )),
        }
    }

    pub(crate) fn client_tls(&self) -> Option<ClientTlsConfig> {
        self.0.client_tls.clone()
    }

    /// The tower layer servers put in front of every service.
    pub fn require_token(&self) -> RequireTokenLayer {
        RequireTokenLayer(self.0.token.clone())
    }

    /// The header a client sends, for clients that take raw headers (Flight).
    pub fn authorization(&self) -> Option<(&'static str, String)> {
        self.0
            .token
            .as_ref()
            .map(|t| ("authorization", format!("Bearer {}", t.0)))
    }

    /// `channel` with the token attached to every call.
    pub fn authorize(&self, channel: Channel) -> AuthChannel {
        let value = self.authorization().map(|(_, v)| {
            let mut v: MetadataValue<Ascii> =
                v.parse().expect("a checked token is a valid header value");
            v.set_sensitive(true);
            v
        });
        InterceptedService::new(channel, ClientAuth(value))
    }
}

/// Attaches the bearer token (if any) to every request.
#[derive(Clone)]
pub struct ClientAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the bearer token.
pub type AuthChannel = InterceptedService<Channel, ClientAuth>;

/// Refuses calls without the token with `UNAUTHENTICATED` (no token
/// configured: lets everything through).
#[derive(Clone)]
pub struct RequireTokenLayer(Option<Token>);

impl<S> tower_layer::Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            token: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequireToken<S> {
    inner: S,
    token: Option<Token>,
}

impl<S, B> tower_service::Service<http::Request<B>> for RequireToken<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<std::result::Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let allowed = match &self.token {
            None => true,
            Some(token) => {
                request.uri().path().starts_with(OPEN_PREFIX)
                    || request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .is_some_and(|h| token.accepts(h.as_bytes()))
            }
        };
        if allowed {
            return Either::Left(self.inner.call(request));
        }
        tracing::warn!(
            path = request.uri().path(),
            "refused a call without a valid bearer token"
        );
        let status = Status::unauthenticated("missing or invalid bearer token");
        Either::Right(ready(Ok(status.into_http())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let t = Token::new("t", " s3cret-token\n").unwrap();
        assert!(t.accepts(b"Bearer s3cret-token"));
        assert!(t.accepts(b"bearer s3cret-token"));
        assert!(!t.accepts(b"Bearer s3cret-tokem"));
        assert!(!t.accepts(b"Bearer s3cret-token2"));
        assert!(!t.accepts(b"Basic s3cret-token"));
        assert!(!t.accepts(b"Bearer"));
        assert!(!t.accepts(b""));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(Token::new("t", "  ").is_err());
        assert!(Token::new("t", "two words").is_err());
        let sec = Security::client(None, None, Some(t));
        assert!(!format!("{sec:?}").contains("s3cret"));
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let mut c = Config::default();
        c.auth.enabled = true;
        c.auth.token_env = "QUARRY_TEST_TOKEN_THAT_IS_NOT_SET".into();
        let e = Security::from_config(&c).unwrap_err().to_string();
        assert!(
            e.contains("QUARRY_TEST_TOKEN_THAT_IS_NOT_SET") && e.contains("auth.token_env"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "abc123\n").unwrap();
        c.auth.token_file = f;
        let s = Security::from_config(&c).unwrap();
        assert_eq!(s.authorization().unwrap().1, "Bearer abc123");

        let mut c = Config::default();
        c.tls.enabled = true;
        let e = Security::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("tls.ca_path"), "{e}");
        c.tls.ca_path = dir.path().join("missing.pem");
        let e = Security::from_config(&c).unwrap_err().to_string();
        assert!(
            e.contains("tls.ca_path") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
