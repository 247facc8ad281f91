//! What the CLI's tests share: ports, reading a child's output with timeouts, and checking that a
//! stopped `rbee up` left no process behind.

#![allow(dead_code)] // each test binary uses its own part

pub mod hosts;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port")
}

/// Reads the lines of every stream on threads, into one channel, so a test can wait with a timeout.
pub fn lines_of(streams: Vec<Box<dyn std::io::Read + Send>>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    for stream in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Collects lines until one contains `needle`; panics with what came when `within` passes first.
pub fn read_until(rx: &mpsc::Receiver<String>, needle: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no line with {needle:?} within {within:?}:\n{}", lines.join("\n")));
        let done = line.contains(needle);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// True while `pid` runs (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or_default().starts_with('Z'))
        .unwrap_or(false)
}

/// Every process whose command line matches.
pub fn pids_where(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            matches(&String::from_utf8_lossy(&cmd))
        })
        .collect()
}

/// Ctrl-C (SIGINT) to `up`; asserts it exits within `within` and that none of `pids` survives it.
pub fn interrupt_and_check(up: &mut Child, pids: Vec<u32>, within: Duration) {
    let sigint = Command::new("kill").args(["-INT", &up.id().to_string()]).status().expect("kill");
    assert!(sigint.success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = up.try_wait().expect("wait") {
            break status;
        }
        assert!(stopped.elapsed() < within, "rbee up did not stop within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("rbee up stopped in {:?} ({status})", stopped.elapsed());
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left running after ctrl-c: {left:?}");
}
