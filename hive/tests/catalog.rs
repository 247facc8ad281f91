//! Black-box tests of the hive's on-disk catalogs: worker binaries, models, and downloads from a
//! local HTTP server that supports (or ignores, or breaks off) range requests.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use rbee_bus::ModelId;
use rbee_hive::catalog::artifact::CatalogEntry;
use rbee_hive::catalog::download::part_path;
use rbee_hive::catalog::{
    download_file, CatalogError, DownloadError, ModelCatalog, ModelCatalogError, Platform, WorkerBinary,
    WorkerCatalog, WorkerType,
};
use rbee_testkit::gguf::{tiny_llama_in, TinyModelSpec};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fake_binary(dir: &Path, name: &str, content: &str) -> io::Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, content)?;
    Ok(path)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Names in `dir` (empty when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

// ------------------------------------------------------------------------------------------------
// workers

#[test]
fn worker_catalog_crud() -> TestResult {
    let tmp = TempDir::new()?;
    let catalog = WorkerCatalog::new(tmp.path().join("workers"))?;
    let file = fake_binary(tmp.path(), "cpu-llm-worker-rbee", "binary")?;
    let binary = WorkerBinary::new(WorkerType::CpuLlm, Platform::Linux, "0.1.0", &file, 6);
    assert_eq!(binary.id, "cpu-llm-worker-rbee-v0.1.0-linux");

    catalog.add(binary.clone())?;
    assert!(catalog.contains(&binary.id));
    assert_eq!(catalog.get(&binary.id)?, binary);
    assert_eq!(catalog.list(), vec![binary.clone()]);
    assert!(matches!(catalog.add(binary.clone()), Err(CatalogError::AlreadyExists { .. })));

    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(catalog.root().join(&binary.id).join("metadata.json"))?)?;
    assert_eq!(metadata["artifact"]["worker_type"], "CpuLlm");
    assert_eq!(metadata["artifact"]["platform"], "Linux");
    assert!(metadata["added_at"].is_u64() && metadata["last_accessed"].is_null());

    assert_eq!(catalog.find_by_type_and_platform(WorkerType::CpuLlm, Platform::Linux), Some(binary.clone()));
    assert_eq!(catalog.find_by_type_and_platform(WorkerType::CudaLlm, Platform::Linux), None);
    assert_eq!(catalog.find_by_type_and_platform(WorkerType::CpuLlm, Platform::MacOS), None);

    catalog.remove(&binary.id)?;
    assert!(!catalog.contains(&binary.id));
    assert!(matches!(catalog.get(&binary.id), Err(CatalogError::NotFound { .. })));
    assert!(matches!(catalog.remove(&binary.id), Err(CatalogError::NotFound { .. })));
    assert!(catalog.list().is_empty());
    assert!(file.exists(), "removing an entry leaves files outside its directory alone");
    Ok(())
}

#[test]
fn find_picks_the_newest_version_for_the_platform() -> TestResult {
    let tmp = TempDir::new()?;
    let catalog = WorkerCatalog::new(tmp.path().join("workers"))?;
    let file = fake_binary(tmp.path(), "bin", "x")?;
    for (worker_type, platform, version) in [
        (WorkerType::CpuLlm, Platform::Linux, "0.9.1"),
        (WorkerType::CpuLlm, Platform::Linux, "0.10.0"),
        (WorkerType::CpuLlm, Platform::Linux, "0.10.0-rc.1"),
        (WorkerType::CpuLlm, Platform::MacOS, "9.9.9"),
        (WorkerType::CudaLlm, Platform::Linux, "5.0.0"),
    ] {
        catalog.add(WorkerBinary::new(worker_type, platform, version, &file, 1))?;
    }
    let found = catalog.find_by_type_and_platform(WorkerType::CpuLlm, Platform::Linux);
    assert_eq!(found.map(|b| b.version).as_deref(), Some("0.10.0"));
    assert_eq!(catalog.list().len(), 5);
    Ok(())
}

#[test]
fn entry_ids_must_be_safe_directory_names() -> TestResult {
    let tmp = TempDir::new()?;
    let catalog = WorkerCatalog::new(tmp.path().join("workers"))?;
    for bad in ["", "..", "../escape", "a/b", ".hidden", "a\\b"] {
        assert!(matches!(catalog.get(bad), Err(CatalogError::InvalidId { .. })), "{bad:?} accepted");
        assert!(matches!(catalog.remove(bad), Err(CatalogError::InvalidId { .. })), "{bad:?} accepted");
    }
    let file = fake_binary(tmp.path(), "bin", "x")?;
    let mut binary = WorkerBinary::new(WorkerType::CpuLlm, Platform::Linux, "0.1.0", &file, 1);
    binary.id = "../../etc".to_owned();
    assert!(matches!(catalog.add(binary), Err(CatalogError::InvalidId { .. })));
    assert!(catalog.register_binary(WorkerType::CpuLlm, "../1", &file).is_err());
    Ok(())
}

#[cfg(unix)]
#[test]
fn register_binary_copies_an_executable_into_place_and_replaces_older_records() -> TestResult {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let tmp = TempDir::new()?;
    let catalog = WorkerCatalog::new(tmp.path().join("workers"))?;
    let source = fake_binary(tmp.path(), "built", "#!/bin/sh\necho first\n")?;
    fs::set_permissions(&source, fs::Permissions::from_mode(0o644))?;

    let binary = catalog.register_binary(WorkerType::CpuLlm, "0.1.0", &source)?;
    let expected_id = WorkerBinary::id_for(WorkerType::CpuLlm, "0.1.0", Platform::current());
    assert_eq!(binary.id, expected_id);
    assert_eq!(binary.platform, Platform::current());
    assert_eq!(binary.path, catalog.root().join(&expected_id).join("cpu-llm-worker-rbee"));
    assert_eq!(binary.size, fs::metadata(&source)?.len());
    assert_eq!(fs::metadata(&binary.path)?.permissions().mode() & 0o755, 0o755);
    assert_eq!(fs::metadata(&source)?.permissions().mode() & 0o777, 0o644, "source left as it was");
    let output = std::process::Command::new(&binary.path).output()?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "first\n");
    assert_eq!(catalog.get(&expected_id)?, binary);

    // Same version again, new content: the record and the file are replaced.
    fs::write(&source, "#!/bin/sh\necho second, longer\n")?;
    fs::set_permissions(&source, fs::Permissions::from_mode(0o755))?;
    let replaced = catalog.register_binary(WorkerType::CpuLlm, "0.1.0", &source)?;
    assert_eq!(catalog.list(), vec![replaced.clone()]);
    assert_eq!(fs::read_to_string(&replaced.path)?, "#!/bin/sh\necho second, longer\n");
    // An executable source on the same filesystem is hard-linked, not copied.
    assert_eq!(fs::metadata(&replaced.path)?.ino(), fs::metadata(&source)?.ino());

    let (_, problems) = catalog.list_with_problems();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(names_in(&catalog.root().join(".staging")).is_empty(), "staging left over");
    assert!(catalog.register_binary(WorkerType::CpuLlm, "0.2.0", &tmp.path().join("missing")).is_err());
    Ok(())
}

#[test]
fn broken_entries_are_reported_and_skipped() -> TestResult {
    let tmp = TempDir::new()?;
    let catalog = WorkerCatalog::new(tmp.path().join("workers"))?;
    let root = catalog.root().to_path_buf();
    let file = fake_binary(tmp.path(), "bin", "good")?;
    let good = WorkerBinary::new(WorkerType::CpuLlm, Platform::Linux, "0.1.0", &file, 4);
    catalog.add(good.clone())?;

    // Garbage metadata.
    fs::create_dir(root.join("garbage"))?;
    fs::write(root.join("garbage/metadata.json"), "{ not json")?;
    // Metadata pointing to a file that is not there.
    let gone = WorkerBinary::new(WorkerType::CudaLlm, Platform::Linux, "0.1.0", tmp.path().join("gone"), 4);
    fs::create_dir(root.join(&gone.id))?;
    let entry = CatalogEntry { artifact: gone.clone(), added_at: 1, last_accessed: None };
    fs::write(root.join(&gone.id).join("metadata.json"), serde_json::to_vec(&entry)?)?;
    // A directory whose name is not the id inside it.
    fs::create_dir(root.join("renamed"))?;
    fs::copy(root.join(&good.id).join("metadata.json"), root.join("renamed/metadata.json"))?;
    // A half-written entry: no metadata at all.
    fs::create_dir(root.join("half-written"))?;
    // A truncated artifact file.
    let short_file = fake_binary(tmp.path(), "short", "ab")?;
    let short = WorkerBinary::new(WorkerType::MetalLlm, Platform::MacOS, "0.1.0", &short_file, 2);
    catalog.add(short.clone())?;
    fs::write(&short_file, "a")?;

    let (listed, problems) = catalog.list_with_problems();
    assert_eq!(listed, vec![good.clone()]);
    assert_eq!(catalog.list(), vec![good]);
    let mut paths: Vec<_> = problems.iter().map(|p| p.path.clone()).collect();
    paths.sort();
    let mut expected: Vec<_> = ["garbage", gone.id.as_str(), "renamed", "half-written", short.id.as_str()]
        .map(|n| root.join(n))
        .into();
    expected.sort();
    assert_eq!(paths, expected, "{problems:#?}");
    assert!(problems.iter().all(|p| !p.reason.is_empty()));

    assert!(matches!(catalog.get("garbage"), Err(CatalogError::Corrupt { .. })));
    assert!(matches!(catalog.get(&gone.id), Err(CatalogError::Corrupt { .. })));
    assert_eq!(catalog.find_by_type_and_platform(WorkerType::CudaLlm, Platform::Linux), None);
    // A broken entry can still be removed.
    catalog.remove("garbage")?;
    assert_eq!(catalog.list_with_problems().1.len(), 4);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// models

fn tiny_llama_params(spec: &TinyModelSpec) -> u64 {
    let (embd, ff, vocab, layers) = (spec.embd, spec.ff, spec.vocab, spec.layers);
    let per_layer = 2 * embd + 4 * embd * embd + 3 * embd * ff;
    (2 * embd * vocab + embd + layers * per_layer) as u64
}

#[test]
fn import_local_reads_the_gguf_header_and_copies_the_file() -> TestResult {
    let tmp = TempDir::new()?;
    let model_file = tiny_llama_in(tmp.path())?;
    let catalog = ModelCatalog::new(tmp.path().join("models"))?;

    let entry = catalog.import_local(&model_file, None)?;
    assert_eq!(entry.id.as_str(), "tiny-llama");
    assert_eq!(entry.architecture, "llama");
    assert_eq!(entry.context_length, Some(512));
    assert_eq!(entry.quantization, "F32");
    assert_eq!(entry.parameter_count, tiny_llama_params(&TinyModelSpec::default()));
    let bytes = fs::read(&model_file)?;
    assert_eq!(entry.size, bytes.len() as u64);
    assert_eq!(entry.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    assert!(entry.source.starts_with("file://") && entry.source.ends_with("tiny-llama.gguf"));
    assert_eq!(entry.path, catalog.root().join("tiny-llama/tiny-llama.gguf"));
    assert_eq!(fs::read(&entry.path)?, bytes);

    assert_eq!(catalog.list(), vec![entry.clone()]);
    assert_eq!(catalog.get(&entry.id)?, entry);
    assert_eq!(catalog.path_of(&entry.id)?, entry.path);
    let again = catalog.import_local(&model_file, None);
    assert!(matches!(again, Err(ModelCatalogError::Catalog(CatalogError::AlreadyExists { .. }))));

    let other = catalog.import_local(&model_file, Some(ModelId::new("tiny-2")?))?;
    assert_eq!(catalog.list().len(), 2);
    catalog.touch(&other.id)?;
    catalog.remove(&entry.id)?;
    assert_eq!(catalog.list(), vec![other]);
    assert!(!entry.path.exists());
    assert!(names_in(&catalog.root().join(".staging")).is_empty());
    Ok(())
}

#[test]
fn import_of_the_real_model_when_present() -> TestResult {
    let model = rbee_testkit::paths::default_model();
    if !model.is_file() {
        eprintln!("skipping: {} not present", model.display());
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let catalog = ModelCatalog::new(tmp.path())?;
    let entry = catalog.import_local(&model, None)?;
    assert_eq!(entry.id.as_str(), "smollm2-135m-instruct-q4_1");
    assert_eq!((entry.architecture.as_str(), entry.quantization.as_str()), ("llama", "Q4_1"));
    assert_eq!(entry.context_length, Some(8192));
    assert!((130_000_000..140_000_000).contains(&entry.parameter_count), "{}", entry.parameter_count);
    Ok(())
}

#[test]
fn import_of_a_non_gguf_file_is_refused() -> TestResult {
    let tmp = TempDir::new()?;
    let catalog = ModelCatalog::new(tmp.path().join("models"))?;
    let text = tmp.path().join("notes.gguf");
    fs::write(&text, "these are not weights")?;
    let result = catalog.import_local(&text, None);
    assert!(matches!(result, Err(ModelCatalogError::NotGguf { .. })), "{result:?}");
    let missing = catalog.import_local(&tmp.path().join("missing.gguf"), None);
    assert!(matches!(missing, Err(ModelCatalogError::Io { .. })), "{missing:?}");
    assert!(catalog.list_with_problems() == (Vec::new(), Vec::new()));
    assert_eq!(names_in(catalog.root()), Vec::<String>::new());
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// downloads

/// A file server for one file that honours `Range: bytes=N-` unless told not to, can break off its
/// first response, and records the Range header of every request.
#[derive(Clone)]
struct FileServer {
    body: Arc<Vec<u8>>,
    ignore_range: bool,
    /// Break off the first response after this many bytes.
    cut_first_after: Option<usize>,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

impl FileServer {
    fn new(body: Vec<u8>) -> Self {
        Self { body: Arc::new(body), ignore_range: false, cut_first_after: None, ranges: Arc::default() }
    }

    async fn start(self) -> io::Result<(SocketAddr, Self)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route("/model.gguf", get(serve_file)).with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((addr, self))
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn serve_file(State(server): State<FileServer>, headers: HeaderMap) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let first = {
        let Ok(mut ranges) = server.ranges.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        ranges.push(range.clone());
        ranges.len() == 1
    };
    let len = server.body.len();
    let start = range
        .filter(|_| !server.ignore_range)
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
    let builder = match start {
        Some(start) if start >= len => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_default();
        }
        Some(start) => Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1)),
        None => Response::builder().status(StatusCode::OK),
    };
    let start = start.unwrap_or(0);
    let rest = Bytes::copy_from_slice(&server.body[start..]);
    let builder = builder.header(header::CONTENT_LENGTH, rest.len());
    let body = match server.cut_first_after.filter(|_| first) {
        Some(cut) => {
            let head = futures::stream::once(async move { Ok::<_, io::Error>(rest.slice(..cut)) });
            let fail = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(io::Error::other("connection cut by the test"))
            });
            Body::from_stream(head.chain(fail))
        }
        None => Body::from(rest),
    };
    builder.body(body).unwrap_or_default()
}

fn tiny_model_bytes(dir: &Path) -> io::Result<Vec<u8>> {
    fs::read(tiny_llama_in(dir)?)
}

#[tokio::test]
async fn download_stores_the_model_with_its_sha256() -> TestResult {
    let tmp = TempDir::new()?;
    let bytes = tiny_model_bytes(tmp.path())?;
    let (addr, server) = FileServer::new(bytes.clone()).start().await?;
    let catalog = ModelCatalog::new(tmp.path().join("models"))?;
    let sha = sha256_hex(&bytes);
    let mut last = None;
    let id = ModelId::new("tiny")?;
    let url = format!("http://{addr}/model.gguf");
    let entry =
        catalog.download(&url, None, id.clone(), Some(&sha.to_uppercase()), |p| last = Some(p)).await?;

    assert_eq!(entry.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!((entry.architecture.as_str(), entry.size), ("llama", bytes.len() as u64));
    assert_eq!(entry.source, url);
    assert_eq!(fs::read(&entry.path)?, bytes);
    let last = last.ok_or("no progress reported")?;
    assert_eq!((last.downloaded, last.total), (bytes.len() as u64, Some(bytes.len() as u64)));
    assert_eq!(catalog.list(), vec![entry]);
    assert_eq!(server.ranges(), vec![None]);
    assert!(names_in(&catalog.root().join(".downloads")).is_empty());
    let again = catalog.download(&url, None, id, None, |_| {}).await;
    assert!(matches!(again, Err(ModelCatalogError::Catalog(CatalogError::AlreadyExists { .. }))));
    Ok(())
}

#[test]
fn a_model_download_can_be_spawned() -> TestResult {
    fn assert_send<T: Send>(_: &T) {}
    let tmp = TempDir::new()?;
    let catalog = ModelCatalog::new(tmp.path())?;
    let download = catalog.download("http://127.0.0.1:9/x", None, ModelId::new("x")?, None, |_| {});
    assert_send(&download);
    Ok(())
}

#[tokio::test]
async fn download_with_the_wrong_sha256_leaves_nothing_behind() -> TestResult {
    let tmp = TempDir::new()?;
    let bytes = tiny_model_bytes(tmp.path())?;
    let (addr, _server) = FileServer::new(bytes.clone()).start().await?;
    let catalog = ModelCatalog::new(tmp.path().join("models"))?;
    let wrong = "0".repeat(64);
    let url = format!("http://{addr}/model.gguf");
    let result = catalog.download(&url, None, ModelId::new("tiny")?, Some(&wrong), |_| {}).await;
    match result {
        Err(ModelCatalogError::Download(DownloadError::ChecksumMismatch { expected, actual, .. })) => {
            assert_eq!((expected, actual), (wrong, sha256_hex(&bytes)));
        }
        other => return Err(format!("expected a checksum mismatch, got {other:?}").into()),
    }
    assert!(catalog.list_with_problems() == (Vec::new(), Vec::new()));
    assert!(names_in(&catalog.root().join(".downloads")).is_empty());
    assert!(!catalog.contains(&ModelId::new("tiny")?));
    Ok(())
}

#[tokio::test]
async fn a_cut_off_download_resumes_with_a_range_request() -> TestResult {
    let tmp = TempDir::new()?;
    let bytes = tiny_model_bytes(tmp.path())?;
    let cut = 100_000;
    assert!(bytes.len() > cut);
    let mut server = FileServer::new(bytes.clone());
    server.cut_first_after = Some(cut);
    let (addr, server) = server.start().await?;
    let catalog = ModelCatalog::new(tmp.path().join("models"))?;
    let sha = sha256_hex(&bytes);
    let url = format!("http://{addr}/model.gguf");
    let entry = catalog.download(&url, None, ModelId::new("tiny")?, Some(&sha), |_| {}).await?;

    assert_eq!(entry.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(fs::read(&entry.path)?, bytes);
    let ranges = server.ranges();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let resumed_at: usize = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .ok_or("second request carried no Range header")?;
    assert!(resumed_at > 0 && resumed_at <= cut, "resumed at {resumed_at}");
    Ok(())
}

#[tokio::test]
async fn download_file_resumes_an_existing_part_and_restarts_when_range_is_ignored() -> TestResult {
    let tmp = TempDir::new()?;
    let bytes: Vec<u8> = (0..50_000u32).flat_map(|n| n.to_le_bytes()).collect();
    let sha = sha256_hex(&bytes);
    let client = reqwest::Client::new();

    // A part left by an earlier run: only the rest is fetched.
    let (addr, server) = FileServer::new(bytes.clone()).start().await?;
    let dest = tmp.path().join("a.bin");
    fs::write(part_path(&dest), &bytes[..1234])?;
    let url = format!("http://{addr}/model.gguf");
    let done = download_file(&client, &url, None, &dest, Some(&sha), |_| {}).await?;
    assert_eq!((done.sha256.as_str(), done.size), (sha.as_str(), bytes.len() as u64));
    assert_eq!(server.ranges(), vec![Some("bytes=1234-".to_owned())]);
    assert_eq!(fs::read(&dest)?, bytes);
    assert!(!part_path(&dest).exists());

    // A part that is already complete: the server answers 416 and the part is used as is.
    let dest = tmp.path().join("complete.bin");
    fs::write(part_path(&dest), &bytes)?;
    let done = download_file(&client, &url, None, &dest, Some(&sha), |_| {}).await?;
    assert_eq!(done.sha256, sha);

    // A server that ignores Range: the stale part is thrown away, not glued to a full body.
    let mut ignoring = FileServer::new(bytes.clone());
    ignoring.ignore_range = true;
    let (addr, ignoring) = ignoring.start().await?;
    let dest = tmp.path().join("b.bin");
    fs::write(part_path(&dest), b"stale bytes from some other file")?;
    let url = format!("http://{addr}/model.gguf");
    let done = download_file(&client, &url, None, &dest, Some(&sha), |_| {}).await?;
    assert_eq!(done.sha256, sha);
    assert_eq!(fs::read(&dest)?, bytes);
    assert_eq!(ignoring.ranges().len(), 1);
    Ok(())
}

#[tokio::test]
async fn downloads_of_missing_or_non_gguf_files_are_refused() -> TestResult {
    let tmp = TempDir::new()?;
    let (addr, _server) = FileServer::new(b"<html>not a model</html>".to_vec()).start().await?;
    let catalog = ModelCatalog::new(tmp.path().join("models"))?;

    let missing =
        catalog.download(&format!("http://{addr}/nope"), None, ModelId::new("m")?, None, |_| {}).await;
    assert!(matches!(missing, Err(ModelCatalogError::Download(DownloadError::Status { status: 404, .. }))));

    let url = format!("http://{addr}/model.gguf");
    let not_gguf = catalog.download(&url, None, ModelId::new("m")?, None, |_| {}).await;
    // Refused from its first bytes, before the rest (see the hostile servers below).
    assert!(
        matches!(not_gguf, Err(ModelCatalogError::Download(DownloadError::BadHead { .. }))),
        "{not_gguf:?}"
    );
    assert!(catalog.list_with_problems() == (Vec::new(), Vec::new()));
    assert!(names_in(&catalog.root().join(".downloads")).is_empty());
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// hostile servers: bodies that are not GGUF, sizes over the cap, redirect loops and odd schemes

/// Counts the body bytes the server has produced so far.
#[derive(Clone, Default)]
struct Produced(Arc<std::sync::atomic::AtomicU64>);

impl Produced {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `total` bytes of `fill` in 64 KiB chunks, produced lazily (counted as they are handed to hyper),
/// announced as `announce` bytes.
fn counted_body(produced: &Produced, total: u64, announce: u64, fill: u8) -> Response {
    const CHUNK: u64 = 64 << 10;
    let produced = produced.clone();
    let chunks = futures::stream::iter((0..total.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(total - i * CHUNK);
        produced.0.fetch_add(len, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, io::Error>(Bytes::from(vec![fill; len as usize]))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, announce)
        .body(Body::from_stream(chunks))
        .unwrap_or_default()
}

async fn hostile_server(produced: Produced) -> io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let redirect = |to: &'static str| {
        move || async move {
            Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, to)
                .body(Body::empty())
                .unwrap_or_default()
        }
    };
    let junk = produced.clone();
    let big = produced.clone();
    let huge = produced;
    let app = Router::new()
        .route("/junk.gguf", get(move || async move { counted_body(&junk, 64 << 20, 64 << 20, b'x') }))
        .route("/big.gguf", get(move || async move { counted_body(&big, 2 << 20, 2 << 20, 0) }))
        .route("/huge.gguf", get(move || async move { counted_body(&huge, 1 << 20, 1 << 60, 0) }))
        .route("/loop.gguf", get(redirect("/loop.gguf")))
        .route("/ftp.gguf", get(redirect("ftp://127.0.0.1/model.gguf")))
        .route("/file.gguf", get(redirect("file:///etc/passwd")));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Nothing left under the catalog: no entry, no part file, no staging.
fn assert_nothing_left(catalog: &ModelCatalog) {
    assert!(catalog.list_with_problems() == (Vec::new(), Vec::new()));
    assert!(
        names_in(&catalog.root().join(".downloads")).is_empty(),
        "{:?}",
        names_in(&catalog.root().join(".downloads"))
    );
}

#[tokio::test]
async fn a_body_that_is_not_gguf_is_refused_from_its_first_bytes() -> TestResult {
    let tmp = TempDir::new()?;
    let produced = Produced::default();
    let addr = hostile_server(produced.clone()).await?;
    let catalog = ModelCatalog::new(tmp.path().join("models"))?;
    let url = format!("http://{addr}/junk.gguf");
    let result = catalog.download(&url, None, ModelId::new("junk")?, None, |_| {}).await;
    match &result {
        Err(ModelCatalogError::Download(DownloadError::BadHead { reason, .. })) => {
            assert!(reason.contains("GGUF magic") && !reason.contains("xxxx"), "{reason}");
        }
        other => return Err(format!("expected a refusal from the first bytes, got {other:?}").into()),
    }
    // The server made 64 MiB; what it got to produce before the hive hung up is socket buffers' worth.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(produced.get() < 16 << 20, "the server produced {} bytes", produced.get());
    assert_nothing_left(&catalog);
    Ok(())
}

#[tokio::test]
async fn a_size_over_the_cap_or_the_free_space_is_refused_before_the_body() -> TestResult {
    let tmp = TempDir::new()?;
    let addr = hostile_server(Produced::default()).await?;
    let capped = ModelCatalog::new(tmp.path().join("models"))?.with_max_download(1 << 20);
    let url = format!("http://{addr}/big.gguf");
    let result = capped.download(&url, None, ModelId::new("big")?, None, |_| {}).await;
    match &result {
        Err(ModelCatalogError::Download(DownloadError::TooLarge { size, limit, .. })) => {
            assert_eq!(*size, 2 << 20);
            assert!(limit.contains("1048576-byte maximum"), "{limit}");
        }
        other => return Err(format!("expected too large, got {other:?}").into()),
    }
    assert_nothing_left(&capped);

    // No cap, but 2^60 bytes fit no disk.
    let uncapped = ModelCatalog::new(tmp.path().join("other"))?.with_max_download(u64::MAX);
    let url = format!("http://{addr}/huge.gguf");
    let result = uncapped.download(&url, None, ModelId::new("huge")?, None, |_| {}).await;
    match &result {
        Err(ModelCatalogError::Download(DownloadError::TooLarge { limit, .. })) => {
            assert!(limit.contains("free on"), "{limit}");
        }
        other => return Err(format!("expected too large for the disk, got {other:?}").into()),
    }
    assert_nothing_left(&uncapped);
    Ok(())
}

#[tokio::test]
async fn redirect_loops_and_redirects_off_http_are_refused() -> TestResult {
    let tmp = TempDir::new()?;
    let addr = hostile_server(Produced::default()).await?;
    let catalog = ModelCatalog::new(tmp.path().join("models"))?;
    for (path, expect) in [("loop", "redirects"), ("ftp", "not http"), ("file", "not http")] {
        let url = format!("http://{addr}/{path}.gguf");
        let started = std::time::Instant::now();
        let result = catalog.download(&url, None, ModelId::new(path)?, None, |_| {}).await;
        match &result {
            Err(ModelCatalogError::Download(DownloadError::Redirect { reason, .. })) => {
                assert!(reason.contains(expect), "{path}: {reason}");
            }
            other => return Err(format!("{path}: expected a refused redirect, got {other:?}").into()),
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{path}: retried a refused redirect");
        assert_nothing_left(&catalog);
    }
    Ok(())
}
