//! What a queen is told at start.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything a queen needs to run.
#[derive(Clone)]
pub struct QueenConfig {
    /// Where the HTTP API listens; 127.0.0.1:7833 by default.
    pub http_addr: SocketAddr,
    /// More addresses the same API listens on (a machine's cluster address next to 127.0.0.1).
    pub also_http_addrs: Vec<SocketAddr>,
    /// Bearer key required on the HTTP API, when set.
    pub api_key: Option<String>,
    /// When set, the only key that may administer (spawn and stop workers, import, pull and remove
    /// models); it may also do everything the API key does.
    pub admin_key: Option<String>,
    /// Jobs that may wait for a slot or a spawn at once; more are refused (429).
    pub queue_capacity: usize,
    /// Longest a job waits in the queue before it fails.
    pub queue_timeout: Duration,
    /// Longest a spawned worker may take to become ready.
    pub spawn_timeout: Duration,
    /// Finished jobs kept in memory (and looked up from JetStream after a restart).
    pub max_finished_jobs: usize,
    /// Age after which finished jobs are forgotten.
    pub finished_job_ttl: Duration,
    /// Bytes the JetStream job history may hold; the oldest events go first.
    pub job_history_max_bytes: u64,
    /// Largest prompt accepted, in bytes (a cheap bound before tokenizing; workers refuse prompts longer
    /// than their context).
    pub max_prompt_bytes: usize,
    /// Keep job status events in a JetStream stream, so job history survives a restart.
    pub durable_jobs: bool,
    /// At shutdown, how long jobs placed by this queen may take to end before the queen stops
    /// following them (a job still queued then fails; one on a worker goes on there).
    pub drain_deadline: Duration,
    /// How long an idle worker stays loaded unless told otherwise ([`crate::keep_alive`]).
    pub keep_alive: crate::keep_alive::KeepAlive,
    /// This queen's name in the leader lease (several queens need distinct ones).
    pub queen_id: String,
    /// How long the leader lease lasts without a renewal ([`crate::leader`]).
    pub lease: std::time::Duration,
    /// Never lead without the lease (a standby started next to a leader): while the lease bucket
    /// cannot be opened, wait instead of running alone.
    pub standby: bool,
    /// Replicas of the lease and job-request buckets (up to the JetStream nodes of the cluster).
    pub lease_replicas: usize,
    /// Prefer the worker whose slots hold the longest prefix of a prompt ([`crate::scheduler`]); off,
    /// placement goes by load only (the baseline `make bench` measures prefix routing against).
    pub prefix_routing: bool,
}

impl QueenConfig {
    /// The fingerprints placement compares with what workers hold: those of `prompt`, or none when
    /// prefix routing is off.
    pub fn prompt_prefix(&self, prompt: &rbee_bus::Prompt) -> Vec<u64> {
        if self.prefix_routing {
            rbee_bus::prefix::fingerprints(prompt)
        } else {
            Vec::new()
        }
    }

    /// The URLs of the HTTP API, as the leader lease advertises them.
    pub fn advertised_urls(&self) -> Vec<String> {
        std::iter::once(self.http_addr)
            .chain(self.also_http_addrs.iter().copied())
            .map(|addr| format!("http://{addr}"))
            .collect()
    }
}

impl std::fmt::Debug for QueenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueenConfig")
            .field("http_addr", &self.http_addr)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_timeout", &self.queue_timeout)
            .field("durable_jobs", &self.durable_jobs)
            .field("drain_deadline", &self.drain_deadline)
            .field("keep_alive", &self.keep_alive)
            .field("queen_id", &self.queen_id)
            .field("lease", &self.lease)
            .field("prefix_routing", &self.prefix_routing)
            .finish_non_exhaustive()
    }
}

impl Default for QueenConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7833)),
            also_http_addrs: Vec::new(),
            api_key: None,
            admin_key: None,
            queue_capacity: 256,
            queue_timeout: Duration::from_secs(120),
            spawn_timeout: Duration::from_secs(120),
            max_finished_jobs: 10_000,
            finished_job_ttl: Duration::from_secs(24 * 3600),
            job_history_max_bytes: 256 * 1024 * 1024,
            max_prompt_bytes: 512 * 1024,
            durable_jobs: true,
            drain_deadline: Duration::from_secs(10),
            keep_alive: crate::keep_alive::DEFAULT_KEEP_ALIVE,
            queen_id: "queen".to_owned(),
            lease: crate::leader::DEFAULT_LEASE,
            lease_replicas: 1,
            standby: false,
            prefix_routing: true,
        }
    }
}
