//! What the multi-host tests share: the CLI run on one host, children that die with the test, waits.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbee_testkit::hosts::Hosts;

/// A child killed when the test ends, however it ends.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rbee` on host `i`, stdout piped, with the project's setup and no inherited cluster settings.
pub fn rbee_on(hosts: &Hosts, i: usize) -> Command {
    let mut cmd = hosts.command(i, env!("CARGO_BIN_EXE_rbee"));
    cmd.env("RBEE_HOME", rbee_testkit::paths::workspace_root())
        .env_remove("RBEE_NATS_URL")
        .env_remove("RBEE_QUEEN_URL")
        .env_remove("RBEE_API_KEY")
        .env_remove("RBEE_ADMIN_KEY")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Polls `done` every 200 ms; fails the test after `within`.
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
