//! What a hive accepts from the bus, against a real nats-server and a real hive: imports confined to
//! the import directories with answers that do not tell paths apart.

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
