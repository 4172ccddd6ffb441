//! A tansu broker of a test's own, reachable only through a proxy (it advertises the proxy's
//! port, so every client connection — bootstrap and leader alike — goes through it).

use std::process::{Child, Command, Stdio};

use super::proxy;

pub struct Tansu {
    child: Child,
    port: u16,
    pub proxy: proxy::Proxy,
    /// `memory://tansu/`, or a SQLite engine file in `dir`.
    storage: String,
    dir: Option<tempfile::TempDir>,
}

impl Tansu {
    /// In memory: fast, and a restart comes back empty.
    pub fn behind_proxy() -> Self {
        Self::with_storage("memory://tansu/".into(), None)
    }

    /// tansu's SQLite engine in a directory of its own, maintenance (retention) every second:
    /// a restart keeps everything, as `just broker` does.
    pub fn durable() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::with_storage(
            "sqlite://tansu.db?maintenance_interval=1s".into(),
            Some(dir),
        )
    }

    fn with_storage(storage: String, dir: Option<tempfile::TempDir>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = proxy::Proxy::start(format!("127.0.0.1:{port}").parse().unwrap());
        let mut tansu = Self {
            child: Command::new("true").spawn().unwrap(),
            port,
            proxy,
            storage,
            dir,
        };
        tansu.child = tansu.start();
        tansu
    }

    /// SIGKILL the broker and start a new one on the same port and storage: in memory it comes
    /// back empty (a topic created again gets a new id), as a broker that lost its data would;
    /// durable, it comes back with everything.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = self.start();
    }

    fn start(&self) -> Child {
        let mut cmd = Command::new("tansu");
        cmd.args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{}", self.port),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{}", self.proxy.port),
            "--storage-engine",
            &self.storage,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir.path());
        }
        let child = cmd
            .spawn()
            .expect("tansu must be installed (just install-broker)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
