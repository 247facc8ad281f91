//! What a hive accepts from the bus, against a real nats-server and a real hive: imports confined to
//! the import directories with answers that do not tell paths apart, and concurrent spawns that never
//! share a secure-mode pool identity.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::*;
use rbee_hive::HiveConfig;
use rbee_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// A hive (no worker binary, nothing imported at start) with its catalog under `root`.
struct TestHive {
    _server: NatsServer,
    bus: Bus,
    id: HiveId,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestHive {
    async fn start(root: &Path, edit: impl FnOnce(&mut HiveConfig)) -> Self {
        let server = NatsServer::start();
        let id: HiveId = "hive-trust".parse().expect("id");
        let mut config = HiveConfig {
            hive_id: id.clone(),
            catalog_root: root.join("catalog"),
            heartbeat_interval: Duration::from_millis(200),
            stop_deadline: Duration::from_secs(5),
            worker_nats_args: vec!["--nats-url".into(), server.url()],
            import_dirs: Vec::new(),
            ..HiveConfig::default()
        };
        edit(&mut config);
        let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
        let mut beats = bus.client().subscribe(subject::hive_heartbeat(&id)).await.expect("sub");
        let hive_bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
        let stop = CancellationToken::new();
        let task = tokio::spawn(rbee_hive::run(config, hive_bus, stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), beats.next()).await {
                break;
            }
        }
        Self { _server: server, bus, id, stop, task }
    }

    async fn import(&self, path: &Path) -> Result<ModelReply, BusError> {
        let req = ModelImportRequest { v: 1, path: path.display().to_string(), model_id: None };
        self.bus.request(subject::hive_models_import(&self.id), &req, Duration::from_secs(30)).await
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

fn refusal(result: Result<ModelReply, BusError>) -> WireError {
    match result {
        Err(e) => e.remote().cloned().unwrap_or_else(|| panic!("not a wire error: {e}")),
        Ok(reply) => panic!("imported {:?}", reply.model.model_id),
    }
}

/// The refusal's message with the path asked for taken out: what differs between two refusals
/// apart from the path.
fn shape(error: &WireError, path: &Path) -> String {
    error.error.message.replace(&format!("{:?}", path.display().to_string()), "PATH")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_are_confined_to_the_import_dirs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let allowed = tmp.path().join("models");
    let outside = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&allowed).expect("dir");
    std::fs::create_dir_all(&outside).expect("dir");
    let inside = rbee_testkit::gguf::tiny_llama_in(&allowed).expect("tiny model");
    let outside_model = rbee_testkit::gguf::tiny_llama_in(&outside).expect("tiny model");
    let dirs = vec![allowed.clone()];
    let hive = TestHive::start(tmp.path(), |c| c.import_dirs = dirs).await;

    // /etc/passwd (exists, readable, outside), a missing file outside, a GGUF outside, a symlink
    // inside pointing outside, a `..` escape: one refusal, the same words, nothing of the file.
    let link = allowed.join("link.gguf");
    std::os::unix::fs::symlink(&outside_model, &link).expect("symlink");
    let passwd = PathBuf::from("/etc/passwd");
    let dotdot = allowed.join("../elsewhere/tiny-llama.gguf");
    let missing = PathBuf::from("/nowhere/model.gguf");
    let mut shapes = Vec::new();
    for path in [&passwd, &missing, &outside_model, &link, &dotdot] {
        let error = refusal(hive.import(path).await);
        assert_eq!(error.code(), ErrorCode::InvalidParams, "{path:?}: {error}");
        assert!(error.error.message.contains("import directories"), "{path:?}: {error}");
        assert!(!error.error.message.contains("root:"), "{path:?} leaked contents: {error}");
        shapes.push(shape(&error, path));
    }
    assert!(shapes.windows(2).all(|w| w[0] == w[1]), "refusals tell paths apart: {shapes:#?}");

    // A file that is not GGUF inside: refused without its bytes.
    let junk = allowed.join("junk.gguf");
    std::fs::write(&junk, "secret-bytes here").expect("write");
    let error = refusal(hive.import(&junk).await);
    assert!(error.error.message.to_lowercase().contains("gguf"), "{error}");
    assert!(!error.error.message.contains("73 65 63") && !error.error.message.contains("0x73"), "{error}");

    // The GGUF inside is imported.
    let reply = hive.import(&inside).await.expect("import inside the allowed dir");
    assert_eq!(reply.model.model_id.as_str(), "tiny-llama");
    hive.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_import_dir_only_the_catalog_root_is_allowed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = rbee_testkit::gguf::tiny_llama_in(tmp.path()).expect("tiny model");
    let hive = TestHive::start(tmp.path(), |_| {}).await;
    let error = refusal(hive.import(&model).await);
    assert!(error.error.message.contains("catalog"), "{error}");
    hive.stop().await;
}

/// A stand-in worker binary: sleeps until it is stopped (spawn identity tests need a process, not a
/// model).
fn sleeper(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("sleeper-worker");
    std::fs::write(&path, "#!/bin/sh\nexec sleep 60\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn pool(n: usize) -> Vec<rbee_bus::security::PoolIdentity> {
    (0..n)
        .map(|i| rbee_bus::security::PoolIdentity {
            worker_id: format!("hive-trust-w{i}").parse().expect("id"),
            user: format!("worker-{i}"),
            password: format!("pw-{i}"),
            inbox_prefix: format!("_INBOX_worker-{i}"),
        })
        .collect()
}

/// Two spawns sent at once; their results.
async fn two_spawns(hive: &TestHive) -> Vec<Result<SpawnReply, BusError>> {
    let req = SpawnRequest {
        v: 1,
        model_id: "tiny-llama".parse().expect("id"),
        device: None,
        slots: Some(1),
        ctx_per_slot: Some(128),
        worker_type: None,
        worker_id: None,
        threads: Some(1),
        fence: None,
    };
    let subject = subject::hive_spawn(&hive.id);
    let t = Duration::from_secs(20);
    let (a, b) =
        tokio::join!(hive.bus.request(subject.clone(), &req, t), hive.bus.request(subject.clone(), &req, t));
    vec![a, b]
}

async fn stop_workers(hive: &TestHive, replies: &[Result<SpawnReply, BusError>]) {
    for reply in replies.iter().flatten() {
        let req =
            StopRequest { v: 1, worker_id: reply.worker_id.clone(), deadline_ms: Some(2000), fence: None };
        let _: Result<StopReply, _> =
            hive.bus.request(subject::hive_stop(&hive.id), &req, Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_spawns_never_share_a_pool_identity() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = rbee_testkit::gguf::tiny_llama_in(tmp.path()).expect("tiny model");
    let binary = sleeper(tmp.path());
    let setup = |c: &mut HiveConfig, n| {
        c.worker_binary = Some(binary.clone());
        c.import_models = vec![rbee_hive::ModelImport { path: model.clone(), id: None }];
        c.worker_pool = pool(n);
    };
    let hive = TestHive::start(&tmp.path().join("two"), |c| setup(c, 2)).await;
    for round in 0..3 {
        let replies = two_spawns(&hive).await;
        let ids: Vec<String> = replies
            .iter()
            .map(|r| r.as_ref().map(|r| r.worker_id.to_string()).unwrap_or_else(|e| format!("error: {e}")))
            .collect();
        assert!(replies.iter().all(Result::is_ok), "round {round}: {ids:?}");
        assert_ne!(ids[0], ids[1], "round {round}: one identity for two workers");
        stop_workers(&hive, &replies).await;
    }
    hive.stop().await;

    let hive = TestHive::start(&tmp.path().join("one"), |c| setup(c, 1)).await;
    let replies = two_spawns(&hive).await;
    let refused: Vec<&BusError> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{replies:?}");
    assert_eq!(refused[0].remote().map(WireError::code), Some(ErrorCode::Conflict), "{}", refused[0]);
    stop_workers(&hive, &replies).await;
    hive.stop().await;
}
