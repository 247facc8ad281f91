//! Hosts of their own for multi-machine tests: Linux network namespaces linked only to each other.
//!
//! [`Hosts::create`] makes `n` hosts (`<prefix>-h1` ... `<prefix>-hN`) and one more namespace holding a
//! bridge; each host gets a veth pair whose far end is on the bridge, the address `198.18.0.<i>/24`
//! (198.18.0.0/15 is set aside for benchmark networks) and its own loopback. No namespace has a route
//! out or any NAT: traffic can only go from host to host. The harness can cut a host's link and
//! restore it (a partition), add delay with `tc netem` (a LAN, Wi-Fi), and kill every process of a
//! host at once (a machine lost). Dropping it kills every process in the namespaces and deletes them,
//! also when a test fails. Creating it needs root and `ip`: without them [`Hosts::create`] says why,
//! and tests skip with that message.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// The first three octets of every host's address.
pub const SUBNET: &str = "198.18.0";

/// A set of hosts; see the module documentation.
#[derive(Debug)]
pub struct Hosts {
    prefix: String,
    n: usize,
}

impl Hosts {
    /// Makes `n` hosts (1 to 200) linked by one bridge. Fails, saying why, without root or `ip`.
    pub fn create(n: usize) -> anyhow::Result<Hosts> {
        if !(1..=200).contains(&n) {
            bail!("{n} hosts: between 1 and 200");
        }
        if !is_root() {
            bail!("network namespaces need root");
        }
        if which("ip").is_none() {
            bail!("`ip` (iproute2) is not installed");
        }
        // Short (interface names are at most 15 bytes) and unique per test process.
        let prefix = format!("rb{}", std::process::id() % 100_000);
        let hosts = Hosts { prefix, n };
        hosts.remove_namespaces();
        hosts.build().context("cannot build the test hosts")?;
        Ok(hosts)
    }

    fn build(&self) -> anyhow::Result<()> {
        let bridge = self.bridge_ns();
        ip(&["netns", "add", &bridge])?;
        ip_in(&bridge, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&bridge, &["link", "set", "br0", "up"])?;
        for i in 1..=self.n {
            let ns = self.namespace(i);
            let (inner, outer) = (format!("{}h{i}", self.prefix), format!("{}b{i}", self.prefix));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &inner, "type", "veth", "peer", "name", &outer])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "netns", &bridge])?;
            ip_in(&ns, &["link", "set", &inner, "name", "eth0"])?;
            ip_in(&ns, &["addr", "add", &format!("{}/24", self.addr(i)), "dev", "eth0"])?;
            ip_in(&ns, &["link", "set", "eth0", "up"])?;
            ip_in(&ns, &["link", "set", "lo", "up"])?;
            ip_in(&bridge, &["link", "set", &outer, "master", "br0"])?;
            ip_in(&bridge, &["link", "set", &outer, "up"])?;
        }
        Ok(())
    }

    /// Hosts made.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when there are none (never: at least one is made).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The namespace of host `i` (from 1).
    pub fn namespace(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// The address of host `i` (from 1): `198.18.0.<i>`.
    pub fn addr(&self, i: usize) -> String {
        format!("{SUBNET}.{i}")
    }

    /// A command that runs `program` on host `i` (`ip netns exec`).
    pub fn command(&self, i: usize, program: impl Into<PathBuf>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns").arg("exec").arg(self.namespace(i)).arg(program.into());
        cmd
    }

    /// Runs `curl` on host `i` with `args`; its stdout, or an error with its stderr.
    pub fn curl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(i, "curl").args(["-sS", "--max-time", "120"]).args(args).output()?;
        if !out.status.success() {
            bail!("curl {args:?} on host {i}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// True when a TCP connection from host `from` to `addr:port` opens within 2 s.
    pub fn can_connect(&self, from: usize, addr: &str, port: u16) -> bool {
        self.command(from, "timeout")
            .args(["2", "bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Cuts host `i`'s link (its end on the bridge goes down): a partition.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip_in(&self.bridge_ns(), &["link", "set", &format!("{}b{i}", self.prefix), "down"])
    }

    /// Restores host `i`'s link.
    pub fn restore(&self, i: usize) -> anyhow::Result<()> {
        ip_in(&self.bridge_ns(), &["link", "set", &format!("{}b{i}", self.prefix), "up"])
    }

    /// Adds `delay` to everything host `i` sends (`tc netem`); false when `tc` or netem is missing.
    pub fn delay(&self, i: usize, delay: Duration) -> bool {
        let ms = format!("{}ms", delay.as_millis());
        let status = Command::new("ip")
            .args(["netns", "exec", &self.namespace(i), "tc", "qdisc", "replace", "dev", "eth0", "root"])
            .args(["netem", "delay", &ms])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        status.is_ok_and(|s| s.success())
    }

    /// Pids of every process on host `i`.
    pub fn pids(&self, i: usize) -> Vec<i32> {
        pids_of(&self.namespace(i))
    }

    /// Kills every process of host `i` at once (SIGKILL): the machine is lost. Returns how many.
    pub fn kill_host(&self, i: usize) -> usize {
        let pids = self.pids(i);
        for pid in &pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        pids.len()
    }

    fn remove_namespaces(&self) {
        let mut names: Vec<String> = (1..=self.n).map(|i| self.namespace(i)).collect();
        names.push(self.bridge_ns());
        for ns in &names {
            for pid in pids_of(ns) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        for ns in &names {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove_namespaces();
    }
}

fn pids_of(ns: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two hosts reach each other, a cut link parts them and a restored one joins them again, and
    /// nothing is left behind.
    #[test]
    fn hosts_reach_each_other_and_can_be_parted() {
        let hosts = match Hosts::create(2) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("skipping: {e:#}");
                return;
            }
        };
        // A listener on host 2 (the project's nats-server), reached from host 1.
        let mut server = hosts
            .command(2, crate::paths::nats_server_bin())
            .args(["-a", &hosts.addr(2), "-p", "4222"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on host 2");
        let up = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            hosts.can_connect(2, &hosts.addr(2), 4222)
        });
        assert!(up, "nats-server did not listen on host 2");
        assert!(hosts.can_connect(1, &hosts.addr(2), 4222), "host 1 cannot reach host 2");
        assert!(!hosts.can_connect(1, "127.0.0.1", 4222), "host 1's loopback is host 2's");
        hosts.cut(2).expect("cut");
        assert!(!hosts.can_connect(1, &hosts.addr(2), 4222), "a cut host is still reachable");
        hosts.restore(2).expect("restore");
        let back = (0..20).any(|_| hosts.can_connect(1, &hosts.addr(2), 4222));
        assert!(back, "a restored host is not reachable");
        assert_eq!(hosts.kill_host(2), 1, "the one process of host 2 is killed");
        let _ = server.wait();
        // No route out: only the subnet is reachable.
        let route = hosts.command(1, "ip").args(["route"]).output().expect("ip route");
        let routes = String::from_utf8_lossy(&route.stdout);
        assert!(!routes.contains("default"), "a host has a route out: {routes}");
        let ns = hosts.namespace(1);
        drop(hosts);
        let list = Command::new("ip").args(["netns", "list"]).output().expect("list");
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&ns), "namespaces left behind");
    }
}
