//! Every subject rbee uses, built from typed ids, and the wildcards that match them. No other crate
//! formats a subject string.

use crate::ids::{HiveId, JobId, PullId, WorkerId};

/// Root of every rbee subject.
pub const ROOT: &str = "rbee";
/// Everything rbee publishes.
pub const ALL: &str = "rbee.>";

/// All hive heartbeats.
pub const HIVE_HEARTBEAT_ALL: &str = "rbee.hive.*.heartbeat";
/// All worker heartbeats.
pub const WORKER_HEARTBEAT_ALL: &str = "rbee.worker.*.heartbeat";
/// All worker lifecycle events.
pub const WORKER_LIFECYCLE_ALL: &str = "rbee.worker.*.lifecycle";
/// All spawn requests.
pub const HIVE_SPAWN_ALL: &str = "rbee.hive.*.spawn";
/// All stop requests.
pub const HIVE_STOP_ALL: &str = "rbee.hive.*.stop";
/// All worker listing requests.
pub const HIVE_WORKERS_ALL: &str = "rbee.hive.*.workers";
/// All model listing requests.
pub const HIVE_MODELS_ALL: &str = "rbee.hive.*.models";
/// All model import requests.
pub const HIVE_MODELS_IMPORT_ALL: &str = "rbee.hive.*.models.import";
/// All model pull requests.
pub const HIVE_MODELS_PULL_ALL: &str = "rbee.hive.*.models.pull";
/// All model removal requests.
pub const HIVE_MODELS_REMOVE_ALL: &str = "rbee.hive.*.models.remove";
/// Progress of every model pull.
pub const HIVE_PULLS_ALL: &str = "rbee.hive.*.pulls.*";
/// All device listing requests.
pub const HIVE_DEVICES_ALL: &str = "rbee.hive.*.devices";
/// All embedding requests to workers.
pub const WORKER_EMBED_ALL: &str = "rbee.worker.*.embed";
/// All job assignments.
pub const WORKER_JOBS_ALL: &str = "rbee.worker.*.jobs";
/// All token streams.
pub const JOB_TOKENS_ALL: &str = "rbee.job.*.tokens";
/// All job status events.
pub const JOB_STATUS_ALL: &str = "rbee.job.*.status";
/// All cancel requests.
pub const JOB_CANCEL_ALL: &str = "rbee.job.*.cancel";
/// Job submission to the queen over NATS.
pub const QUEEN_JOBS_SUBMIT: &str = "rbee.queen.jobs.submit";
/// Embedding requests to the queen over NATS.
pub const QUEEN_EMBED: &str = "rbee.queen.embed";
/// The queen's start announcement: every hive and worker heartbeats at once.
pub const QUEEN_HELLO: &str = "rbee.queen.hello";
/// The JetStream stream the queen keeps job history in (it holds [`JOB_STATUS_ALL`]).
pub const JOBS_STREAM: &str = "RBEE_JOBS";
/// The JetStream KV bucket of the leader lease ([`crate::LeaderLease`] under [`LEADER_KEY`]).
pub const LEADER_BUCKET: &str = "RBEE_QUEEN_LEADER";
/// The key of the lease in [`LEADER_BUCKET`].
pub const LEADER_KEY: &str = "leader";
/// The JetStream KV bucket of admitted jobs' requests ([`crate::SubmitJob`] by job id), kept until
/// the job ends, so the queen that takes over can place the queued ones and move the running ones.
pub const JOB_REQUESTS_BUCKET: &str = "RBEE_JOB_REQUESTS";

/// `rbee.hive.<hive_id>.heartbeat`
pub fn hive_heartbeat(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.heartbeat")
}
/// `rbee.hive.<hive_id>.spawn`
pub fn hive_spawn(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.spawn")
}
/// `rbee.hive.<hive_id>.stop`
pub fn hive_stop(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.stop")
}
/// `rbee.hive.<hive_id>.workers`
pub fn hive_workers(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.workers")
}
/// `rbee.hive.<hive_id>.models`
pub fn hive_models(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.models")
}
/// `rbee.hive.<hive_id>.models.import`
pub fn hive_models_import(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.models.import")
}
/// `rbee.hive.<hive_id>.models.pull`
pub fn hive_models_pull(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.models.pull")
}
/// `rbee.hive.<hive_id>.models.remove`
pub fn hive_models_remove(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.models.remove")
}
/// `rbee.hive.<hive_id>.pulls.<pull_id>`
pub fn hive_pull(hive: &HiveId, pull: &PullId) -> String {
    format!("rbee.hive.{hive}.pulls.{pull}")
}
/// `rbee.hive.<hive_id>.devices`
pub fn hive_devices(hive: &HiveId) -> String {
    format!("rbee.hive.{hive}.devices")
}
/// `rbee.worker.<worker_id>.heartbeat`
pub fn worker_heartbeat(worker: &WorkerId) -> String {
    format!("rbee.worker.{worker}.heartbeat")
}
/// `rbee.worker.<worker_id>.jobs`
pub fn worker_jobs(worker: &WorkerId) -> String {
    format!("rbee.worker.{worker}.jobs")
}
/// `rbee.worker.<worker_id>.embed`
pub fn worker_embed(worker: &WorkerId) -> String {
    format!("rbee.worker.{worker}.embed")
}
/// `rbee.worker.<worker_id>.lifecycle`
pub fn worker_lifecycle(worker: &WorkerId) -> String {
    format!("rbee.worker.{worker}.lifecycle")
}
/// `rbee.job.<job_id>.tokens`
pub fn job_tokens(job: &JobId) -> String {
    format!("rbee.job.{job}.tokens")
}
/// `rbee.job.<job_id>.status`
pub fn job_status(job: &JobId) -> String {
    format!("rbee.job.{job}.status")
}
/// `rbee.job.<job_id>.cancel`
pub fn job_cancel(job: &JobId) -> String {
    format!("rbee.job.{job}.cancel")
}

/// The id token at `index` (0-based) of a subject such as `rbee.worker.<id>.heartbeat` (index 2).
pub fn token(subject: &str, index: usize) -> Option<&str> {
    subject.split('.').nth(index)
}

/// True when `subject` matches the NATS `pattern` (`*` one token, `>` the rest).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut sub = subject.split('.');
    loop {
        match (pat.next(), sub.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_matches_its_wildcard() {
        let h = HiveId::new("h1").expect("valid");
        let w = WorkerId::new("w1").expect("valid");
        let j = JobId::new("j1").expect("valid");
        let p = PullId::new("p1").expect("valid");
        let pairs = [
            (hive_heartbeat(&h), HIVE_HEARTBEAT_ALL),
            (hive_spawn(&h), HIVE_SPAWN_ALL),
            (hive_stop(&h), HIVE_STOP_ALL),
            (hive_workers(&h), HIVE_WORKERS_ALL),
            (hive_models(&h), HIVE_MODELS_ALL),
            (hive_devices(&h), HIVE_DEVICES_ALL),
            (hive_models_import(&h), HIVE_MODELS_IMPORT_ALL),
            (hive_models_pull(&h), HIVE_MODELS_PULL_ALL),
            (hive_models_remove(&h), HIVE_MODELS_REMOVE_ALL),
            (hive_pull(&h, &p), HIVE_PULLS_ALL),
            (worker_heartbeat(&w), WORKER_HEARTBEAT_ALL),
            (worker_jobs(&w), WORKER_JOBS_ALL),
            (worker_embed(&w), WORKER_EMBED_ALL),
            (worker_lifecycle(&w), WORKER_LIFECYCLE_ALL),
            (job_tokens(&j), JOB_TOKENS_ALL),
            (job_status(&j), JOB_STATUS_ALL),
            (job_cancel(&j), JOB_CANCEL_ALL),
        ];
        for (subject, wildcard) in &pairs {
            let wildcard = *wildcard;
            assert!(matches(wildcard, subject), "{subject} does not match {wildcard}");
            assert!(matches(ALL, subject));
            // Each builder matches only its own wildcard.
            for (_, other) in pairs.iter().filter(|(_, o)| *o != wildcard) {
                assert!(!matches(other, subject), "{subject} also matches {other}");
            }
        }
        assert_eq!(token(&worker_heartbeat(&w), 2), Some("w1"));
    }
}
