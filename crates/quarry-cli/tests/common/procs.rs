//! Services as separate `quarry serve …` processes on free loopback ports,
//! each logging to its own file; and what every test process needs: the
//! `quarry` command, signals, and waiting for an exit within a deadline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Env;

pub fn quarry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quarry"));
    c.env_remove("QUARRY_CONFIG");
    c
}

/// Sends `sig` (`TERM`, `INT`, `STOP`, …) to `child` with kill(1); `name`
/// says which process in the failure.
pub fn signal(child: &Child, sig: &str, name: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {name}");
}

/// Waits for `child` to exit, polling; after `within` it kills it and
/// returns `None`.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `quarry serve NAME` process.
pub struct Service {
    pub name: &'static str,
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    /// Starts the service and waits until it listens on `port`.
    pub fn start(name: &'static str, port: u16, vars: &[(String, String)], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = quarry()
            .args(["serve", name])
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Self {
            name,
            child,
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("{name} exited early ({status}): {}", s.log_text());
            }
            assert!(Instant::now() < deadline, "{name} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM, as an orchestrator stopping the service does.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Stops the process (SIGSTOP) without ending it: a paused source.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        signal(&self.child, sig, self.name);
    }

    /// Waits for the process to exit; fails the test after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        exit_within(&mut self.child, within).unwrap_or_else(|| {
            panic!(
                "{} still running {within:?} after SIGTERM: {}",
                self.name,
                self.log_text()
            )
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Extractor, loader and transformer processes over the environment's data
/// root and SQLite file, configured through `QUARRY_…` variables only.
pub struct Stack {
    pub extractor: Service,
    pub loader: Service,
    pub transformer: Service,
}

impl Stack {
    /// `extra` variables go to every service (e.g. shutdown grace periods).
    pub fn start(env: &Env, extra: &[(&str, &str)]) -> Self {
        Self::start_with(env, extra, "http")
    }

    /// As `start`, with `scheme` (`http` or `https`) in the service URLs.
    pub fn start_with(env: &Env, extra: &[(&str, &str)], scheme: &str) -> Self {
        let (e, t, l) = (free_port(), free_port(), free_port());
        let mut vars: Vec<(String, String)> = vec![
            ("QUARRY_EXTRACTOR__LISTEN".into(), format!("127.0.0.1:{e}")),
            (
                "QUARRY_TRANSFORMER__LISTEN".into(),
                format!("127.0.0.1:{t}"),
            ),
            ("QUARRY_LOADER__LISTEN".into(), format!("127.0.0.1:{l}")),
            (
                "QUARRY_TRANSFORMER__EXTRACTOR_URL".into(),
                format!("{scheme}://127.0.0.1:{e}"),
            ),
            (
                "QUARRY_TRANSFORMER__LOADER_URL".into(),
                format!("{scheme}://127.0.0.1:{l}"),
            ),
            (
                "QUARRY_EXTRACTOR__DATA_ROOTS".into(),
                format!("[{:?}]", env.data.display().to_string()),
            ),
            (
                "QUARRY_WAREHOUSE__SQLITE__PATH".into(),
                env.db.display().to_string(),
            ),
            (
                "QUARRY_TRANSFORMER__PROGRESS_INTERVAL_MS".into(),
                "5".into(),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let dir = env.dir.path();
        Self {
            extractor: Service::start("extractor", e, &vars, dir),
            loader: Service::start("loader", l, &vars, dir),
            transformer: Service::start("transformer", t, &vars, dir),
        }
    }

    /// Stops every service with SIGTERM; each must exit 0.
    pub fn stop(mut self) {
        for s in [&mut self.transformer, &mut self.extractor, &mut self.loader] {
            if matches!(s.child.try_wait(), Ok(None)) {
                s.terminate();
            }
            let status = s.wait_exit(Duration::from_secs(30));
            assert!(status.success(), "{} exited with {status}", s.name);
        }
    }
}

/// A CSV of generated trades under the data root, big enough that a run is
/// still streaming when a test interrupts it.
pub fn big_input(env: &Env, rows: u64) -> PathBuf {
    let big = env.data.join("big.csv");
    let opts = quarry_testkit::GenOptions {
        rows,
        ..Default::default()
    };
    quarry_testkit::generate(
        &opts,
        &mut std::io::BufWriter::new(std::fs::File::create(&big).unwrap()),
    )
    .unwrap();
    big
}
