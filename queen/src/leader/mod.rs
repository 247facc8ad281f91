//! One leader among several queens. The lease lives in the JetStream KV bucket
//! [`subject::LEADER_BUCKET`] ([`LeaderLease`] under [`subject::LEADER_KEY`]); the pure rules are in
//! [`lease`], this module reads and writes the entry every [`Lease::interval`] ([`run`]). While a
//! queen leads, its *term* runs ([`term`]): it said hello with its fence, serves
//! `rbee.queen.jobs.submit`, places jobs, unloads idle workers, and took over the jobs the last
//! leader left ([`takeover`]). A standby keeps its views warm (heartbeats, the job relay), serves
//! the read-only API and forwards submissions to the leader ([`crate::forward`]). Every order the
//! leader sends carries its fence ([`Leadership::order_fence`]); hives and workers refuse lower ones.
//! Without JetStream (`--no-durable-jobs`, or none on the server) a queen runs alone, unfenced.

pub mod lease;
pub mod takeover;
pub mod term;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use rbee_bus::{subject, LeaderLease, SCHEMA_VERSION};
use rbee_daemon::Tasks;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use lease::Lease;
use lease::{Action, Standing};

use crate::Queen;

/// How long a lease lasts without renewal unless `--lease-ms` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

/// How often a queen without the lease bucket tries to open it.
const REOPEN_EVERY: Duration = Duration::from_secs(2);

/// The leader checks its buckets' replicas every this many lease rounds.
const REPLICA_CHECK_ROUNDS: u64 = 4;

/// How long one read or write of the lease may take.
const KV_TIMEOUT: Duration = Duration::from_secs(2);

/// This queen's part in leadership: the lease state, the leader it last read, and the token of its
/// current term (cancelled when the term ends).
#[derive(Debug)]
pub struct Leadership {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `None`: no lease (the queen runs alone).
    lease: Option<Lease>,
    /// The lease entry last read or written.
    leader: Option<LeaderLease>,
    /// The current term's token; a fresh one per term.
    term: CancellationToken,
    /// Terms this queen started.
    terms: u64,
    /// Lease rounds done (the first decides whether a queen alone leads).
    rounds: u64,
    /// The current term is a queen's alone (no lease); its jobs are not stopped when a lease term
    /// replaces it.
    solo: bool,
    /// A standby without a lease yet (`--standby`): it does not lead alone.
    waiting: bool,
}

/// What `GET /health` says about leadership.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderReport {
    /// `leader`, `standby` or `solo` (no lease: the only queen).
    pub role: &'static str,
    /// The fence of this queen's term, while it leads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// The leading queen as last read, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderLease>,
    /// Terms this queen led.
    pub terms: u64,
}

impl Default for Leadership {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                lease: None,
                leader: None,
                term: CancellationToken::new(),
                terms: 0,
                rounds: 0,
                solo: false,
                waiting: false,
            }),
        }
    }
}

impl Leadership {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when this queen may act as the leader now: it runs alone, or holds a valid lease.
    pub fn leads(&self) -> bool {
        let state = self.lock();
        match &state.lease {
            None => !state.waiting,
            Some(lease) => lease.fence(Instant::now()).is_some(),
        }
    }

    /// The fence for an order sent now: `None` alone; the term's fence while leading; 0 (below any
    /// leader's, refused wherever a leader was seen) from a queen whose lease ran out.
    pub fn order_fence(&self) -> Option<u64> {
        let state = self.lock();
        let lease = state.lease.as_ref()?;
        Some(lease.fence(Instant::now()).unwrap_or(0))
    }

    /// Waits until the first lease round is done (a queen alone then leads), up to `at_most`, so
    /// the API does not open as a standby that is about to lead.
    pub async fn first_round(&self, at_most: Duration) {
        let deadline = Instant::now() + at_most;
        while self.lock().rounds == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The current term's token.
    pub fn term(&self) -> CancellationToken {
        self.lock().term.clone()
    }

    /// The leader as last read (a standby forwards to it and names it in refusals).
    pub fn leader(&self) -> Option<LeaderLease> {
        self.lock().leader.clone()
    }

    /// For `GET /health`.
    pub fn report(&self) -> LeaderReport {
        let state = self.lock();
        let now = Instant::now();
        let (role, fence) = match &state.lease {
            None if state.waiting => ("standby", None),
            None => ("solo", None),
            Some(lease) => match lease.fence(now) {
                Some(fence) => ("leader", Some(fence)),
                None => ("standby", None),
            },
        };
        LeaderReport { role, fence, leader: state.leader.clone(), terms: state.terms }
    }

    /// Why a standby does not do what only the leader does, naming the leader.
    pub fn not_leader_message(&self, what: &str) -> String {
        match self.leader() {
            Some(l) => format!(
                "this queen is a standby: {what} is done by the leader, queen {} ({})",
                l.queen_id,
                if l.http.is_empty() { "no http address".to_owned() } else { l.http.join(", ") }
            ),
            None => {
                format!("this queen is a standby and no leader holds the lease yet: retry {what} shortly")
            }
        }
    }

    /// Starts the term of a queen alone (no lease).
    pub fn solo_term(&self) -> CancellationToken {
        let mut state = self.lock();
        state.solo = true;
        state.terms += 1;
        state.term.clone()
    }

    /// Marks a standby that waits for the lease bucket (it does not lead alone meanwhile).
    pub fn wait_for_lease(&self) {
        self.lock().waiting = true;
    }

    /// True while the queen runs alone (its jobs are followed to their end whatever happens).
    pub fn is_solo(&self) -> bool {
        let state = self.lock();
        state.solo && state.lease.is_none()
    }

    fn new_term(&self) -> CancellationToken {
        let mut state = self.lock();
        state.term.cancel();
        state.term = CancellationToken::new();
        state.terms += 1;
        state.term.clone()
    }

    fn end_term(&self) {
        self.lock().term.cancel();
    }
}

/// The lease bucket: one key, one value kept, on the server's file storage.
fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: subject::LEADER_BUCKET.to_owned(),
        description: "rbee: which queen leads (LeaderLease)".to_owned(),
        history: 1,
        max_value_size: 4096,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Opens (or creates) the lease bucket; `None` when JetStream cannot (the queen then runs alone).
/// When the JetStream cluster has fewer nodes than `--lease-replicas` yet, the bucket starts with
/// one replica and [`run`] raises it once enough nodes joined ([`ensure_replicas`]).
pub async fn open(queen: &Queen) -> Option<kv::Store> {
    let js = jetstream::new(queen.bus.client().clone());
    let replicas = queen.config.lease_replicas;
    let opened = match js.get_key_value(subject::LEADER_BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => match js.create_key_value(bucket_config(replicas)).await {
            Ok(store) => Ok(store),
            Err(e) if replicas > 1 => {
                tracing::warn!(error = %e, replicas, "lease bucket with one replica until more jetstream nodes join");
                js.create_key_value(bucket_config(1)).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match opened {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(error = %e, "no leader lease (jetstream kv unavailable): this queen runs alone");
            None
        }
    }
}

/// Opens the lease bucket once JetStream can (tried every [`REOPEN_EVERY`]), then takes part in
/// leadership ([`run`]); the term of the queen alone ends then (its services stop; its jobs are
/// followed to their end).
pub async fn open_later(queen: Arc<Queen>, services: Tasks, stop: CancellationToken) {
    let store = loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REOPEN_EVERY) => {}
        }
        if let Some(store) = open(&queen).await {
            break store;
        }
    };
    if let Some(requests) = crate::jobs::requests::open(&queen).await {
        let _ = queen.requests.set(requests);
    }
    tracing::info!("jetstream ready: taking part in the leader lease");
    queen.leadership.end_term();
    run(queen, store, services, stop).await;
}

/// Takes part in leadership until `stop`: a first read and write at once (a queen alone leads
/// within a round trip), then one every [`Lease::interval`]. At `stop` a leader deletes its lease,
/// so a standby (or this queen restarted) takes over without waiting it out.
pub async fn run(queen: Arc<Queen>, store: kv::Store, services: Tasks, stop: CancellationToken) {
    let mut lease = Lease::new(queen.config.lease);
    queen.leadership.lock().lease = Some(lease.clone());
    let mut rounds = 0u64;
    loop {
        let was_leading = queen.leadership.leads();
        step(&queen, &store, &services, &mut lease).await;
        if queen.config.lease_replicas > 1 && rounds % REPLICA_CHECK_ROUNDS == 0 && queen.leadership.leads() {
            for bucket in [subject::LEADER_BUCKET, subject::JOB_REQUESTS_BUCKET] {
                ensure_replicas(&queen, bucket).await;
            }
        }
        rounds += 1;
        queen.leadership.lock().rounds = rounds;
        if was_leading && !queen.leadership.leads() {
            tracing::warn!("leader lease lost: this queen is a standby now");
            queen.leadership.end_term();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(lease.interval()) => {}
        }
    }
    if let (Standing::Leader { revision, .. }, true) = (lease.standing(), queen.leadership.leads()) {
        match tokio::time::timeout(
            KV_TIMEOUT,
            store.delete_expect_revision(subject::LEADER_KEY, Some(*revision)),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!("leader lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the leader lease"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
    queen.leadership.end_term();
}

/// One read (a standby's) and the write it calls for.
async fn step(queen: &Arc<Queen>, store: &kv::Store, services: &Tasks, lease: &mut Lease) {
    let leading = matches!(lease.standing(), Standing::Leader { .. }) && !lease.expired(Instant::now());
    let entry = if leading { Read::Absent } else { read(store).await };
    let seen = match &entry {
        Read::Live(revision, value) => {
            queen.leadership.lock().leader = value.clone();
            Some(*revision)
        }
        Read::Absent if leading => None,
        Read::Absent => {
            queen.leadership.lock().leader = None;
            None
        }
        Read::Failed => {
            publish(queen, lease);
            return;
        }
    };
    let action = lease.next(seen, Instant::now());
    let fence = match lease.standing() {
        Standing::Leader { fence, .. } => *fence,
        Standing::Standby { .. } => 0,
    };
    let sent = Instant::now();
    let value = value_of(queen, lease, fence);
    let written = match action {
        Action::Wait => {
            publish(queen, lease);
            return;
        }
        Action::Create => timed(store.create(subject::LEADER_KEY, value)).await.map_err(|e| e.to_string()),
        Action::TakeOver { revision } | Action::Renew { revision } => {
            match tokio::time::timeout(KV_TIMEOUT, store.update(subject::LEADER_KEY, value, revision)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    if lease.lost() {
                        tracing::warn!("another queen took the leader lease");
                    }
                    publish(queen, lease);
                    return;
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        }
    };
    match written {
        Ok(revision) => {
            if lease.written(revision, sent) {
                let Standing::Leader { fence, .. } = lease.standing().clone() else { return };
                tracing::info!(fence, "this queen leads now");
                publish(queen, lease);
                // The term's first write carried fence 0: write the fence at once for readers.
                let value = value_of(queen, lease, fence);
                if let Ok(Ok(r)) =
                    tokio::time::timeout(KV_TIMEOUT, store.update(subject::LEADER_KEY, value, revision)).await
                {
                    lease.written(r, sent);
                }
                publish(queen, lease);
                let token = queen.leadership.new_term();
                term::start(queen.clone(), services, Some(fence), token).await;
                return;
            }
        }
        Err(e) => {
            if !matches!(action, Action::Create) || !e.contains("exist") {
                tracing::warn!(error = %e, ?action, "leader lease write failed");
            }
        }
    }
    publish(queen, lease);
}

/// Raises a KV bucket's stream to `--lease-replicas` when it has fewer and the JetStream cluster
/// now has the nodes (a cluster of several machines starts with the first one alone).
async fn ensure_replicas(queen: &Queen, bucket: &str) {
    let js = jetstream::new(queen.bus.client().clone());
    let name = format!("KV_{bucket}");
    let Ok(Ok(mut stream)) = tokio::time::timeout(KV_TIMEOUT, js.get_stream(&name)).await else { return };
    let Ok(info) = stream.info().await else { return };
    let want = queen.config.lease_replicas;
    let have = info.config.num_replicas;
    if have >= want {
        return;
    }
    let mut config = info.config.clone();
    config.num_replicas = want;
    match tokio::time::timeout(KV_TIMEOUT, js.update_stream(config)).await {
        Ok(Ok(_)) => tracing::info!(bucket, replicas = want, "bucket replicated across jetstream nodes"),
        Ok(Err(e)) => tracing::debug!(bucket, have, want, error = %e, "bucket not replicated yet"),
        Err(_) => tracing::debug!(bucket, "replicating the bucket timed out"),
    }
}

async fn timed<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(KV_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Shares the lease state with the rest of the queen (and the lease entry while leading).
fn publish(queen: &Queen, lease: &Lease) {
    let mut state = queen.leadership.lock();
    if let Standing::Leader { fence, .. } = lease.standing() {
        state.leader = Some(lease_value(queen, lease, *fence));
    }
    state.lease = Some(lease.clone());
}

enum Read {
    /// A lease entry at this revision (its value, when readable).
    Live(u64, Option<LeaderLease>),
    /// No lease: never written, deleted, or purged.
    Absent,
    /// The read failed (nothing is decided on it).
    Failed,
}

async fn read(store: &kv::Store) -> Read {
    match tokio::time::timeout(KV_TIMEOUT, store.entry(subject::LEADER_KEY)).await {
        Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put => {
            Read::Live(entry.revision, serde_json::from_slice(&entry.value).ok())
        }
        Ok(Ok(_)) => Read::Absent,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the leader lease");
            Read::Failed
        }
        Err(_) => {
            tracing::warn!("reading the leader lease timed out");
            Read::Failed
        }
    }
}

fn lease_value(queen: &Queen, lease: &Lease, fence: u64) -> LeaderLease {
    LeaderLease {
        v: SCHEMA_VERSION,
        queen_id: queen.config.queen_id.clone(),
        epoch: queen.stamper.epoch().to_owned(),
        fence,
        http: queen.config.advertised_urls(),
        lease_ms: lease.ttl.as_millis() as u64,
        renewed_at_ms: rbee_bus::now_ms(),
    }
}

fn value_of(queen: &Queen, lease: &Lease, fence: u64) -> Bytes {
    Bytes::from(serde_json::to_vec(&lease_value(queen, lease, fence)).unwrap_or_default())
}
