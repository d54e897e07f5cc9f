//! Servers a test starts itself, to stop and restart them mid-run.

/// Builds a server's command line from its data directory and ports.
type ServerCommand = Box<dyn Fn(&std::path::Path, &[u16]) -> std::process::Command + Send>;

/// A server of the test's own on free loopback ports, with its data in a
/// temporary directory, that can be stopped and started again on that data.
pub struct OwnServer {
    name: &'static str,
    dir: tempfile::TempDir,
    /// The first one is the HTTP port `url` names.
    ports: Vec<u16>,
    command: ServerCommand,
    /// A path under `url` that answers 2xx once the server is ready.
    ready_path: &'static str,
    child: Option<std::process::Child>,
}

impl OwnServer {
    pub fn start(
        name: &'static str,
        ports: usize,
        ready_path: &'static str,
        command: impl Fn(&std::path::Path, &[u16]) -> std::process::Command + Send + 'static,
    ) -> Self {
        // Distinct free ports (held together while they are picked).
        let listeners: Vec<_> = (0..ports)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let mut s = Self {
            name,
            dir: tempfile::tempdir().unwrap(),
            ports,
            command: Box::new(command),
            ready_path,
            child: None,
        };
        s.up();
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }

    pub fn up(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = (self.command)(self.dir.path(), &self.ports)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let ready = format!("{}{}", self.url(), self.ready_path);
        while !std::process::Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &ready])
            .status()
            .unwrap()
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "own {} did not start",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: a clean shutdown keeps the data for the restart.
            let _ = std::process::Command::new("kill")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl OwnServer {
    /// Stops the server now and starts it again on the same data after
    /// `pause`, on a thread of its own; joining the thread gives it back.
    pub fn bounce(mut self, pause: std::time::Duration) -> std::thread::JoinHandle<Self> {
        self.down();
        std::thread::spawn(move || {
            std::thread::sleep(pause);
            self.up();
            self
        })
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.down();
    }
}
