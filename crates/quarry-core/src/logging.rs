//! Log setup: human-readable by default, JSON when `QUARRY_LOG_FORMAT=json`.
//! The level comes from `QUARRY_LOG` (or `RUST_LOG`), e.g. `info` or `quarry=debug`;
//! yup-oauth2 stays at info at most (its debug records hold tokens).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(default_level: &str) {
    let filter = filter(
        &std::env::var("QUARRY_LOG")
            .or_else(|_| std::env::var("RUST_LOG"))
            .unwrap_or_else(|_| default_level.to_string()),
    );
    let json = std::env::var("QUARRY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colours only for a person at a terminal, not in files and collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests start several services in one process) is harmless.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The filter `spec` asks for, with yup-oauth2 (BigQuery's credentials)
/// never below info whatever it says: its debug records hold the bodies of
/// token requests and answers, that is, access and refresh tokens.
fn filter(spec: &str) -> EnvFilter {
    EnvFilter::new(spec).add_directive("yup_oauth2=info".parse().expect("a valid directive"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn token_requests_are_not_logged_even_at_debug() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter("debug,yup_oauth2=trace"))
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "yup_oauth2::refresh", "body: an-access-token");
            tracing::info!(target: "yup_oauth2::authenticator", "kept at info");
            tracing::debug!(target: "quarry_warehouse", "others at debug");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("an-access-token"), "{text}");
        assert!(text.contains("kept at info"), "{text}");
        assert!(text.contains("others at debug"), "{text}");
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
