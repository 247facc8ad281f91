//! A local mirror of a Hugging Face style hub, on loopback, for `hf:` pulls without the internet:
//! `GET /api/models/ORG/REPO/tree/main` lists the files (GGUFs with their LFS sha256),
//! `GET /ORG/REPO/resolve/main/FILE` redirects to `/cdn/FILE` as the hub does, and `/cdn/FILE` serves
//! the bytes with `Range` support. The API and resolve routes want the bearer token; the first transfer
//! of one chosen file is cut off half-way, so a pull must resume to finish. Every request is recorded.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::json;
use sha2::{Digest, Sha256};

/// One request the mirror saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub path: String,
    /// The `Authorization` header.
    pub auth: Option<String>,
    /// The `Range` header.
    pub range: Option<String>,
}

/// A running mirror.
pub struct HubMirror {
    /// `http://127.0.0.1:PORT`, what `HF_ENDPOINT` is set to.
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HubMirror {
    /// What it saw so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

struct Repo {
    name: String,
    files: Vec<(String, Vec<u8>)>,
    token: String,
    cut_once: Mutex<Option<String>>,
}

/// Serves `files` as the repo `name` (`ORG/REPO`), wanting `token`; the first transfer of `cut_once`
/// stops half-way.
pub fn start(name: &str, files: Vec<(String, Vec<u8>)>, token: &str, cut_once: &str) -> HubMirror {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let repo = Arc::new(Repo {
        name: name.to_owned(),
        files,
        token: token.to_owned(),
        cut_once: Mutex::new(Some(cut_once.to_owned())),
    });
    let (base_for_thread, seen_for_thread) = (base.clone(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let (repo, seen, base) = (repo.clone(), seen_for_thread.clone(), base_for_thread.clone());
            std::thread::spawn(move || serve(stream, &repo, &seen, &base));
        }
    });
    HubMirror { base, seen }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(mut stream: TcpStream, repo: &Repo, seen: &Mutex<Vec<Seen>>, base: &str) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let (mut auth, mut range) = (None, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_owned();
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => auth = Some(value),
                "range" => range = Some(value),
                _ => {}
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
    if let Ok(mut seen) = seen.lock() {
        seen.push(Seen { path: target.clone(), auth: auth.clone(), range: range.clone() });
    }
    let path = target.split('?').next().unwrap_or("").to_owned();
    let authorized = auth.as_deref() == Some(format!("Bearer {}", repo.token).as_str());
    let file = |name: &str| repo.files.iter().find(|(n, _)| n == name).map(|(_, bytes)| bytes);

    if path == format!("/api/models/{}/tree/main", repo.name) {
        if !authorized {
            return respond(&mut stream, "401 Unauthorized", &[], b"{\"error\":\"unauthorized\"}");
        }
        let mut entries: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|(name, bytes)| {
                let mut entry =
                    json!({"type": "file", "oid": "0".repeat(40), "size": bytes.len(), "path": name});
                if name.ends_with(".gguf") {
                    let sha = hex::encode(Sha256::digest(bytes));
                    entry["lfs"] = json!({"oid": sha, "size": bytes.len(), "pointerSize": 134});
                }
                entry
            })
            .collect();
        entries.push(json!({"type": "directory", "oid": "1".repeat(40), "size": 0, "path": "docs"}));
        let body = serde_json::to_vec(&entries).expect("json");
        return respond(&mut stream, "200 OK", &[("content-type", "application/json".into())], &body);
    }
    if path.starts_with("/api/models/") {
        return respond(&mut stream, "404 Not Found", &[], b"{\"error\":\"Repository not found\"}");
    }
    if let Some(name) = path.strip_prefix(&format!("/{}/resolve/main/", repo.name)) {
        if !authorized {
            return respond(&mut stream, "401 Unauthorized", &[], b"");
        }
        if file(name).is_none() {
            return respond(&mut stream, "404 Not Found", &[], b"");
        }
        return respond(&mut stream, "302 Found", &[("location", format!("{base}/cdn/{name}"))], b"");
    }
    if let Some(name) = path.strip_prefix("/cdn/") {
        let Some(bytes) = file(name) else {
            return respond(&mut stream, "404 Not Found", &[], b"");
        };
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<usize>().ok());
        if let Some(start) = start.filter(|&s| s > 0 && s < bytes.len()) {
            let range = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
            return respond(&mut stream, "206 Partial Content", &[("content-range", range)], &bytes[start..]);
        }
        let cut = repo.cut_once.lock().ok().and_then(|mut c| c.take_if(|c| c == name)).is_some();
        if cut {
            // Announce the whole file, send half, hang up: a transfer cut off mid-way.
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", bytes.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&bytes[..bytes.len() / 2]);
            let _ = stream.flush();
            return;
        }
        return respond(&mut stream, "200 OK", &[], bytes);
    }
    respond(&mut stream, "404 Not Found", &[], b"")
}
