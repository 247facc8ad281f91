//! Secure mode: every process connects to NATS with its own identity (user and password), and the
//! nats-server configuration that lists those identities limits what each may publish and subscribe.
//! This module holds the identities, their roles and what each role may do ([`Permissions`]); the
//! CLI renders them into the nats-server configuration (`rbee_cli::secure::server_config`).
//!
//! What each role may do (subjects from [`crate::subject`]):
//!
//! | role | publishes | subscribes |
//! |---|---|---|
//! | queen | spawn, stop, listings and model import/pull/remove of every hive; assignments of every worker; job status and cancel; hello; the JetStream API of stream [`subject::JOBS_STREAM`] (`RBEE_JOBS`) and of KV buckets [`subject::LEADER_BUCKET`] and [`subject::JOB_REQUESTS_BUCKET`] | every heartbeat, lifecycle and pull progress event, `rbee.job.>`, job submission |
//! | hive | its own heartbeat and pull progress; lifecycle events of its own worker pool | its own spawn/stop/listing/model subjects, worker heartbeats, hello |
//! | worker | its own heartbeat; job tokens and status | its own assignment subject, job cancels, hello |
//! | observer | nothing | token streams, job status, heartbeats, lifecycle events |
//! | cli | job submission, hive listings, job cancel, the service API (`$SRV.>`) | token streams, job status, heartbeats, lifecycle events |
//!
//! Queen, hives and workers also answer requests (`allow_responses`), subscribe to the NATS service
//! API subjects of their own service name (`$SRV.PING`, `$SRV.*.rbee-hive`, ...), and every identity
//! that makes requests has its own reply inbox prefix `_INBOX_<user>`: it may subscribe (and publish,
//! for [`Bus::round_trip`](crate::Bus::round_trip)) there and nowhere else under `_INBOX`, so no identity
//! reads another's replies. The client side sets [`NatsConfig::inbox_prefix`], which
//! [`Identity::nats_config`] does.
//!
//! **Worker identities.** A worker's id is chosen when it is spawned, and NATS permissions match whole
//! subject tokens only (there is no "ids starting with the hive's prefix"). So each hive gets a pool of
//! worker identities generated ahead of time ([`SecurityConfig::add_worker_pool`]), each bound to one
//! fixed worker id (`<hive_id>-w<n>`): that identity may publish the heartbeat of exactly that id and
//! receive assignments for exactly that id, and the hive may publish lifecycle events for its pool only.
//! The hive hands a pool identity to the worker it spawns (user on the command line, password in the
//! environment, never in argv). Limits, stated plainly: a hive holds its workers' passwords, so a
//! compromised hive can act as any worker of its own pool (not of another hive); a hive runs at most
//! as many workers as its pool has identities; and job ids are not bound to workers by permissions, so
//! a worker may publish tokens and status for any job id (the queen takes them only with the attempt's
//! `attempt_key`, which no identity that may publish job events can read); likewise a cli may cancel
//! any job. Passwords are kept in
//! plain text in the generated file, which is written with mode 0600; TLS is configured separately.
//!
//! How it is wired: `rbee secure init` (and `rbee up --secure`) writes this configuration with TLS, one
//! env file per process and one pool file ([`PoolIdentity`]) per hive. A hive started with a pool
//! spawns workers with its pool's ids only and hands each its user (`--nats-user`), password and inbox
//! prefix (`RBEE_NATS_PASSWORD`, `RBEE_NATS_INBOX_PREFIX` in the environment, never in argv); every
//! daemon sets [`NatsConfig::inbox_prefix`] from `RBEE_NATS_INBOX_PREFIX`. An observer may not
//! subscribe to `rbee.>` (that would include assignments, which carry prompts): `rbee watch` subscribes
//! to the readable wildcards instead.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::connect::NatsConfig;
use crate::ids::{HiveId, WorkerId};
use crate::subject;

/// Prefix of every identity's reply inbox: `_INBOX_<user>`.
pub const INBOX_PREFIX: &str = "_INBOX_";
/// Every job subject (the queen's token relay subscribes to it; a permission, not a contract subject).
pub const JOB_ALL: &str = "rbee.job.>";

/// What a process is in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The queen: the only one that spawns, stops and assigns.
    Queen,
    /// One hive.
    Hive {
        /// Its id.
        hive_id: HiveId,
    },
    /// One worker id of one hive's pool.
    Worker {
        /// The worker id this identity may speak for.
        worker_id: WorkerId,
        /// The hive that holds this identity and spawns the worker.
        hive_id: HiveId,
    },
    /// Reads token streams, job status and heartbeats; publishes nothing.
    Observer,
    /// A person's `rbee` command: submits, lists, cancels and watches.
    Cli,
}

impl Role {
    /// The user name an identity of this role gets by default.
    pub fn default_user(&self) -> String {
        match self {
            Role::Queen => "queen".to_owned(),
            Role::Hive { hive_id } => format!("hive_{hive_id}"),
            Role::Worker { worker_id, .. } => format!("worker_{worker_id}"),
            Role::Observer => "observer".to_owned(),
            Role::Cli => "cli".to_owned(),
        }
    }

    /// A short description (`worker w1 of hive h1`), for comments in generated files.
    pub fn describe(&self) -> String {
        match self {
            Role::Queen => "queen".to_owned(),
            Role::Hive { hive_id } => format!("hive {hive_id}"),
            Role::Worker { worker_id, hive_id } => format!("worker {worker_id} of hive {hive_id}"),
            Role::Observer => "observer".to_owned(),
            Role::Cli => "cli".to_owned(),
        }
    }
}

/// Why a secure configuration could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A user name or id holds characters the generator does not put in a configuration file.
    #[error("{what} {value:?} may only contain ASCII letters, digits, '-' and '_'")]
    UnsafeName {
        /// What it names.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// Two identities have the same user name.
    #[error("user {0} is listed twice")]
    DuplicateUser(String),
    /// A password given for an identity is not one the generator makes (32 to 128 letters and digits).
    #[error("the password of user {user} is not a generated one (32 to 128 ASCII letters and digits)")]
    WeakPassword {
        /// The user.
        user: String,
    },
    /// A worker id derived for a pool is not a valid id.
    #[error("cannot derive worker id for the pool of hive {hive_id}: {reason}")]
    PoolId {
        /// The hive.
        hive_id: HiveId,
        /// Why.
        reason: String,
    },
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Checks a user name or id before it goes into a configuration file: no quoting surprises, no
/// variables, no subject syntax.
fn safe_name(what: &'static str, value: &str) -> Result<(), SecurityError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SecurityError::UnsafeName { what, value: value.to_owned() })
    }
}

/// A random password: 64 hex characters from two v4 UUIDs (244 random bits from the operating
/// system's generator).
fn random_password() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// One identity: a role, a user name and its password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    role: Role,
    user: String,
    password: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("role", &self.role)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// An identity with the role's default user name and a fresh random password.
    pub fn generate(role: Role) -> Result<Self, SecurityError> {
        let user = role.default_user();
        Self::named(role, user)
    }

    /// An identity with a chosen user name (for several observers or clis) and a random password.
    pub fn named(role: Role, user: impl Into<String>) -> Result<Self, SecurityError> {
        let user = user.into();
        safe_name("user", &user)?;
        match &role {
            Role::Hive { hive_id } => safe_name("hive id", hive_id.as_str())?,
            Role::Worker { worker_id, hive_id } => {
                safe_name("worker id", worker_id.as_str())?;
                safe_name("hive id", hive_id.as_str())?;
            }
            Role::Queen | Role::Observer | Role::Cli => {}
        }
        Ok(Self { role, user, password: random_password() })
    }

    /// An identity made on another machine, with its password (a joining machine gets its hive's and
    /// workers' identities in the join file). The password must be a generated one: 32 to 128 ASCII
    /// alphanumeric characters.
    pub fn with_password(role: Role, user: impl Into<String>, password: &str) -> Result<Self, SecurityError> {
        let mut identity = Self::named(role, user)?;
        if !(32..=128).contains(&password.len()) || !password.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(SecurityError::WeakPassword { user: identity.user });
        }
        identity.password = password.to_owned();
        Ok(identity)
    }

    /// Its role.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Its user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Its password. Hand it to the process it belongs to; never log it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Its reply inbox prefix, `_INBOX_<user>`.
    pub fn inbox_prefix(&self) -> String {
        format!("{INBOX_PREFIX}{}", self.user)
    }

    /// How to connect as this identity to `urls`: user, password, inbox prefix and a connection name.
    pub fn nats_config(&self, urls: &[String]) -> NatsConfig {
        NatsConfig {
            urls: urls.to_vec(),
            user: Some(self.user.clone()),
            password: Some(self.password.clone()),
            inbox_prefix: Some(self.inbox_prefix()),
            name: Some(format!("rbee {}", self.role.describe())),
            ..NatsConfig::default()
        }
    }
}

/// What one identity may publish and subscribe to. An empty publish list means nothing at all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Subjects (with wildcards) it may publish to.
    pub publish: Vec<String>,
    /// Subjects (with wildcards) it may subscribe to; a subscription must lie inside one of them.
    pub subscribe: Vec<String>,
    /// May answer requests it received (publish to their reply subjects, once each).
    pub allow_responses: bool,
}

impl Permissions {
    /// True when a message published on `subject` (no wildcards) is allowed, as nats-server decides
    /// it (replies through `allow_responses` aside).
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| subject::matches(p, subject))
    }

    /// True when a subscription to `pattern` (wildcards allowed) is allowed: it must match no more
    /// than one of the allowed patterns does.
    pub fn may_subscribe(&self, pattern: &str) -> bool {
        self.subscribe.iter().any(|allowed| within(pattern, allowed))
    }
}

/// True when every subject `pattern` matches is matched by `allowed`.
pub fn within(pattern: &str, allowed: &str) -> bool {
    let mut p = pattern.split('.');
    let mut a = allowed.split('.');
    loop {
        match (p.next(), a.next()) {
            (Some(_), Some(">")) => return true,
            (Some(">"), Some(_)) => return false,
            (Some(_), Some("*")) => {}
            (Some("*"), Some(_)) => return false,
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The service API subjects a process registered under `service` answers on.
fn service_api(service: &str) -> Vec<String> {
    let mut out: Vec<String> = ["PING", "INFO", "STATS"].iter().map(|v| format!("$SRV.{v}")).collect();
    out.push(format!("$SRV.*.{service}"));
    out.push(format!("$SRV.*.{service}.*"));
    out
}

/// The JetStream API subjects for one stream the queen keeps: info, create, update, direct and
/// message gets, and its own (ordered) consumers. Not delete or purge.
fn stream_api(s: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.STREAM.CREATE.{s}"),
        format!("$JS.API.STREAM.UPDATE.{s}"),
        format!("$JS.API.STREAM.MSG.GET.{s}"),
        format!("$JS.API.DIRECT.GET.{s}"),
        format!("$JS.API.DIRECT.GET.{s}.>"),
        format!("$JS.API.CONSUMER.CREATE.{s}"),
        format!("$JS.API.CONSUMER.CREATE.{s}.>"),
        format!("$JS.API.CONSUMER.INFO.{s}.*"),
        format!("$JS.API.CONSUMER.DELETE.{s}.*"),
    ]
}

/// The JetStream API subjects the queen uses for its job history ([`stream_api`] of the stream,
/// with pull and ack of its consumers).
fn jobs_stream_api() -> Vec<String> {
    let s = subject::JOBS_STREAM;
    let mut out = vec!["$JS.API.INFO".to_owned()];
    out.extend(stream_api(s));
    out.extend([format!("$JS.API.CONSUMER.MSG.NEXT.{s}.*"), format!("$JS.ACK.{s}.>")]);
    out
}

/// The JetStream KV subjects the queen uses for the leader lease and the requests of jobs not yet
/// ended: [`stream_api`] of each bucket's stream, the flow control of its consumers (listing keys)
/// and its keys. Not deleting a bucket.
fn queen_kv_api() -> Vec<String> {
    let mut out = Vec::new();
    for bucket in [subject::LEADER_BUCKET, subject::JOB_REQUESTS_BUCKET] {
        let s = format!("KV_{bucket}");
        out.extend(stream_api(&s));
        out.extend([format!("$JS.FC.{s}.>"), format!("$KV.{bucket}.>")]);
    }
    out
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Every identity of one cluster, from which the nats-server configuration is generated.
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    identities: Vec<Identity>,
}

/// One worker identity of a hive's pool, as the hive reads it from its pool file (JSON, mode 0600): the
/// hive starts the worker as `worker_id` with this user, password and inbox prefix.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolIdentity {
    /// The worker id this identity is bound to.
    pub worker_id: WorkerId,
    /// NATS user.
    pub user: String,
    /// NATS password.
    pub password: String,
    /// Reply inbox prefix.
    pub inbox_prefix: String,
}

impl std::fmt::Debug for PoolIdentity {
    // The password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolIdentity")
            .field("worker_id", &self.worker_id)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

/// Reads a pool file written by [`SecurityConfig::write_pool`].
pub fn read_pool(path: &Path) -> Result<Vec<PoolIdentity>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a worker pool file: {e}", path.display()))
}

impl SecurityConfig {
    /// No identities yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an identity with a fresh password under the role's default user name; returns it.
    pub fn add(&mut self, role: Role) -> Result<&Identity, SecurityError> {
        self.push(Identity::generate(role)?)
    }

    /// Adds an identity under a chosen user name; returns it.
    pub fn add_named(&mut self, role: Role, user: &str) -> Result<&Identity, SecurityError> {
        self.push(Identity::named(role, user)?)
    }

    /// Adds an identity made elsewhere (for example one kept from an earlier generation, so running
    /// processes keep their passwords).
    pub fn push(&mut self, identity: Identity) -> Result<&Identity, SecurityError> {
        if self.identities.iter().any(|i| i.user == identity.user) {
            return Err(SecurityError::DuplicateUser(identity.user));
        }
        self.identities.push(identity);
        Ok(self.identities.last().expect("just pushed"))
    }

    /// Adds `count` worker identities for `hive_id`, bound to the worker ids `<hive_id>-w0`,
    /// `<hive_id>-w1`, ...; returns those ids. The hive must spawn its workers with these ids.
    pub fn add_worker_pool(
        &mut self,
        hive_id: &HiveId,
        count: usize,
    ) -> Result<Vec<WorkerId>, SecurityError> {
        let mut ids = Vec::with_capacity(count);
        for n in 0..count {
            let worker_id = WorkerId::new(format!("{hive_id}-w{n}"))
                .map_err(|e| SecurityError::PoolId { hive_id: hive_id.clone(), reason: e.to_string() })?;
            self.add(Role::Worker { worker_id: worker_id.clone(), hive_id: hive_id.clone() })?;
            ids.push(worker_id);
        }
        Ok(ids)
    }

    /// Every identity.
    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    /// The identity with this user name.
    pub fn identity(&self, user: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.user == user)
    }

    /// The first identity with this role.
    pub fn by_role(&self, role: &Role) -> Option<&Identity> {
        self.identities.iter().find(|i| &i.role == role)
    }

    /// The worker identities of one hive's pool.
    pub fn worker_pool(&self, hive_id: &HiveId) -> Vec<&Identity> {
        self.identities
            .iter()
            .filter(|i| matches!(&i.role, Role::Worker { hive_id: h, .. } if h == hive_id))
            .collect()
    }

    /// What `identity` may do in this cluster (a hive's rights depend on its worker pool).
    pub fn permissions(&self, identity: &Identity) -> Permissions {
        let inbox = format!("{}.>", identity.inbox_prefix());
        let watch = strings(&[
            subject::JOB_TOKENS_ALL,
            subject::JOB_STATUS_ALL,
            subject::HIVE_HEARTBEAT_ALL,
            subject::WORKER_HEARTBEAT_ALL,
            subject::WORKER_LIFECYCLE_ALL,
        ]);
        match &identity.role {
            Role::Queen => {
                let mut publish = strings(&[
                    subject::HIVE_SPAWN_ALL,
                    subject::HIVE_STOP_ALL,
                    subject::HIVE_WORKERS_ALL,
                    subject::HIVE_MODELS_ALL,
                    subject::HIVE_DEVICES_ALL,
                    subject::HIVE_MODELS_IMPORT_ALL,
                    subject::HIVE_MODELS_PULL_ALL,
                    subject::HIVE_MODELS_REMOVE_ALL,
                    subject::WORKER_JOBS_ALL,
                    subject::WORKER_EMBED_ALL,
                    subject::JOB_STATUS_ALL,
                    subject::JOB_CANCEL_ALL,
                    subject::QUEEN_HELLO,
                ]);
                publish.extend(jobs_stream_api());
                publish.extend(queen_kv_api());
                publish.push(inbox.clone());
                let mut subscribe = strings(&[
                    subject::HIVE_HEARTBEAT_ALL,
                    subject::WORKER_HEARTBEAT_ALL,
                    subject::WORKER_LIFECYCLE_ALL,
                    subject::HIVE_PULLS_ALL,
                    JOB_ALL,
                    subject::QUEEN_JOBS_SUBMIT,
                    subject::QUEEN_EMBED,
                ]);
                subscribe.extend(service_api("rbee-queen"));
                subscribe.push(inbox);
                Permissions { publish, subscribe, allow_responses: true }
            }
            Role::Hive { hive_id } => {
                let mut publish =
                    vec![subject::hive_heartbeat(hive_id), format!("rbee.hive.{hive_id}.pulls.*")];
                for worker in self.worker_pool(hive_id) {
                    if let Role::Worker { worker_id, .. } = &worker.role {
                        publish.push(subject::worker_lifecycle(worker_id));
                    }
                }
                publish.push(inbox.clone());
                let mut subscribe = vec![
                    subject::hive_spawn(hive_id),
                    subject::hive_stop(hive_id),
                    subject::hive_workers(hive_id),
                    subject::hive_models(hive_id),
                    subject::hive_devices(hive_id),
                    subject::hive_models_import(hive_id),
                    subject::hive_models_pull(hive_id),
                    subject::hive_models_remove(hive_id),
                    subject::WORKER_HEARTBEAT_ALL.to_owned(),
                    subject::QUEEN_HELLO.to_owned(),
                ];
                subscribe.extend(service_api("rbee-hive"));
                subscribe.push(inbox);
                Permissions { publish, subscribe, allow_responses: true }
            }
            Role::Worker { worker_id, .. } => {
                let publish = vec![
                    subject::worker_heartbeat(worker_id),
                    subject::JOB_TOKENS_ALL.to_owned(),
                    subject::JOB_STATUS_ALL.to_owned(),
                    inbox.clone(),
                ];
                let mut subscribe = vec![
                    subject::worker_jobs(worker_id),
                    subject::worker_embed(worker_id),
                    subject::JOB_CANCEL_ALL.to_owned(),
                    subject::QUEEN_HELLO.to_owned(),
                ];
                subscribe.extend(service_api("rbee-worker"));
                subscribe.push(inbox);
                Permissions { publish, subscribe, allow_responses: true }
            }
            Role::Observer => Permissions { publish: Vec::new(), subscribe: watch, allow_responses: false },
            Role::Cli => {
                let mut publish = strings(&[
                    subject::QUEEN_JOBS_SUBMIT,
                    subject::QUEEN_EMBED,
                    subject::HIVE_WORKERS_ALL,
                    subject::HIVE_MODELS_ALL,
                    subject::HIVE_DEVICES_ALL,
                    subject::JOB_CANCEL_ALL,
                    "$SRV.>",
                ]);
                publish.push(inbox.clone());
                let mut subscribe = watch;
                subscribe.push(inbox);
                Permissions { publish, subscribe, allow_responses: false }
            }
        }
    }

    /// The worker identities of `hive_id`'s pool, as its pool file lists them.
    pub fn pool_identities(&self, hive_id: &HiveId) -> Vec<PoolIdentity> {
        self.worker_pool(hive_id)
            .into_iter()
            .filter_map(|i| match &i.role {
                Role::Worker { worker_id, .. } => Some(PoolIdentity {
                    worker_id: worker_id.clone(),
                    user: i.user.clone(),
                    password: i.password.clone(),
                    inbox_prefix: i.inbox_prefix(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Writes `hive_id`'s pool file to `path` (mode 0600).
    pub fn write_pool(&self, hive_id: &HiveId, path: &Path) -> Result<(), SecurityError> {
        let text = serde_json::to_string_pretty(&self.pool_identities(hive_id)).unwrap_or_default();
        write_private(path, text.as_bytes())
            .map_err(|source| SecurityError::Write { path: path.to_path_buf(), source })
    }
}

/// Writes `bytes` to `path` readable by the owner only (mode 0600 on Unix).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> (SecurityConfig, HiveId, Vec<WorkerId>) {
        let mut c = SecurityConfig::new();
        let hive: HiveId = "h1".parse().expect("id");
        c.add(Role::Queen).expect("queen");
        c.add(Role::Hive { hive_id: hive.clone() }).expect("hive");
        let pool = c.add_worker_pool(&hive, 2).expect("pool");
        c.add(Role::Observer).expect("observer");
        c.add(Role::Cli).expect("cli");
        (c, hive, pool)
    }

    #[test]
    fn only_the_queen_spawns_stops_and_assigns() {
        let (c, hive, pool) = cluster();
        let control = [subject::hive_spawn(&hive), subject::hive_stop(&hive), subject::worker_jobs(&pool[0])];
        for identity in c.identities() {
            let p = c.permissions(identity);
            for s in &control {
                assert_eq!(p.may_publish(s), identity.role == Role::Queen, "{} on {s}", identity.user());
            }
        }
    }

    #[test]
    fn workers_speak_only_for_themselves() {
        let (c, hive, pool) = cluster();
        let w0 = c.by_role(&Role::Worker { worker_id: pool[0].clone(), hive_id: hive.clone() }).expect("w0");
        let p = c.permissions(w0);
        assert!(p.may_publish(&subject::worker_heartbeat(&pool[0])));
        assert!(!p.may_publish(&subject::worker_heartbeat(&pool[1])));
        assert!(p.may_subscribe(&subject::worker_jobs(&pool[0])));
        assert!(!p.may_subscribe(&subject::worker_jobs(&pool[1])));
        assert!(!p.may_subscribe(subject::WORKER_JOBS_ALL));
        let h = c.permissions(c.by_role(&Role::Hive { hive_id: hive.clone() }).expect("hive"));
        assert!(h.may_publish(&subject::worker_lifecycle(&pool[1])));
        assert!(!h.may_publish(&subject::worker_lifecycle(&"other".parse().expect("id"))));
        assert!(!h.may_publish(&subject::hive_heartbeat(&"h2".parse().expect("id"))));
    }

    #[test]
    fn observers_publish_nothing_and_inboxes_are_private() {
        let (c, _, _) = cluster();
        let o = c.permissions(c.by_role(&Role::Observer).expect("observer"));
        assert!(o.publish.is_empty());
        assert!(o.may_subscribe(subject::JOB_TOKENS_ALL));
        assert!(!o.may_subscribe(subject::ALL));
        for identity in c.identities() {
            let p = c.permissions(identity);
            assert!(!p.may_subscribe("_INBOX.>"), "{}", identity.user());
            assert!(!p.may_subscribe(">"), "{}", identity.user());
            for other in c.identities().iter().filter(|o| o.user() != identity.user()) {
                let theirs = format!("{}.>", other.inbox_prefix());
                assert!(!p.may_subscribe(&theirs), "{} may read {theirs}", identity.user());
            }
        }
    }

    #[test]
    fn within_follows_nats_subset_rules() {
        assert!(within("a.b", "a.*"));
        assert!(within("a.*", "a.*"));
        assert!(!within("a.>", "a.*"));
        assert!(within("a.b.c", "a.>"));
        assert!(!within("a", "a.>"));
        assert!(!within("a.*", "a.b"));
    }

    #[test]
    fn debug_hides_passwords_and_names_are_checked() {
        let (c, _, _) = cluster();
        for identity in c.identities() {
            assert_eq!(identity.password().len(), 64);
            assert!(!format!("{identity:?}").contains(identity.password()));
        }
        assert!(Identity::named(Role::Cli, "bad\"name").is_err());
        let mut dup = c.clone();
        assert!(matches!(dup.add(Role::Queen), Err(SecurityError::DuplicateUser(_))));
    }
}
