//! Resumable HTTP download with a streaming sha256.
//!
//! Bytes go to `<dest>.part`. When a `.part` is already there (an earlier run was cut off), it is
//! hashed again and the rest is asked for with `Range: bytes=N-`; a server that answers 200 instead
//! of 206 gets a clean restart. A transfer cut off mid-way is resumed the same way, a few times, with
//! a short backoff. Once complete, the sha256 is checked (a mismatch deletes the part) and the part
//! is renamed to `dest`.
//!
//! What a server sends is not trusted ([`DownloadLimits`]): an announced size over the cap or over the
//! free space of the destination's filesystem is refused before any body byte is read, a body that
//! grows past the cap is cut, and the file's first bytes are checked (for a model: the GGUF magic and
//! version) as soon as they arrive, not after the whole transfer. A refused or failed download removes
//! its part file; only a download that is dropped (the hive stopping) leaves it to resume from.
//! Redirects are followed to http(s) only, at most [`MAX_REDIRECTS`] times ([`redirect_policy`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

/// How many times one call tries (first request plus resumes) before it gives up.
const MAX_ATTEMPTS: u32 = 4;
/// Wait before the first resume; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How many redirects one request follows at most.
pub const MAX_REDIRECTS: usize = 5;
/// How many of the file's first bytes [`DownloadLimits::check_head`] is given (fewer if the file is
/// shorter).
pub const HEAD_LEN: usize = 8;

/// A check of a file's first bytes: `Err` says why the file is refused.
pub type HeadCheck = fn(&[u8]) -> Result<(), String>;

/// What a download may be.
#[derive(Debug, Clone, Copy)]
pub struct DownloadLimits {
    /// The largest file accepted, in bytes.
    pub max_bytes: u64,
    /// Also refuse a file announced larger than the free space where `dest` lies.
    pub check_free_space: bool,
    /// Checks the file's first [`HEAD_LEN`] bytes as soon as they arrived; an error refuses the file.
    pub check_head: Option<HeadCheck>,
}

impl DownloadLimits {
    /// No limit and no check (what [`download_file`] uses).
    pub const NONE: Self = Self { max_bytes: u64::MAX, check_free_space: false, check_head: None };
}

/// The redirect policy of every client the hive downloads with: http(s) targets only, at most
/// [`MAX_REDIRECTS`] hops.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            let error = format!("more than {MAX_REDIRECTS} redirects");
            attempt.error(error)
        } else if !matches!(attempt.url().scheme(), "http" | "https") {
            let error = format!("redirect to a {:?} url refused: not http or https", attempt.url().scheme());
            attempt.error(error)
        } else {
            attempt.follow()
        }
    })
}

/// How far a download has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadProgress {
    /// Bytes of the file on disk so far, including any resumed part.
    pub downloaded: u64,
    /// Size of the whole file, when the server said.
    pub total: Option<u64>,
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Where the file now lies (the `dest` asked for).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, lowercase hex.
    pub sha256: String,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The expected checksum given is not a sha256.
    #[error("expected sha256 {value:?} is not 64 hex digits")]
    InvalidChecksum {
        /// The value given.
        value: String,
    },
    /// The request or the transfer failed.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The url.
        url: String,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The url.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body was not the length the server announced.
    #[error("{url} sent {received} bytes where {expected} were announced")]
    Length {
        /// The url.
        url: String,
        /// The announced length.
        expected: u64,
        /// What arrived.
        received: u64,
    },
    /// Reading or writing the local file failed.
    #[error("io error at {}: {source}", path.display())]
    Io {
        /// The local file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A redirect was refused (a loop, too many hops, or a target that is not http(s)).
    #[error("{url}: {reason}")]
    Redirect {
        /// The url asked for.
        url: String,
        /// Why the redirect was refused.
        reason: String,
    },
    /// The file is larger than allowed, or than the free disk space; nothing of its body was kept.
    #[error("{url} is {size} bytes, over {limit}")]
    TooLarge {
        /// The url.
        url: String,
        /// Its size, announced or reached.
        size: u64,
        /// The limit, said for a person (`the 1024-byte maximum`, `the 10 bytes free on ...`).
        limit: String,
    },
    /// The file's first bytes are not what it must be; the transfer stopped there.
    #[error("{url} is refused from its first bytes: {reason}")]
    BadHead {
        /// The url.
        url: String,
        /// What the check said.
        reason: String,
    },
    /// The file arrived whole but its sha256 is not the one expected; the part was deleted.
    #[error("sha256 mismatch for {url}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The url.
        url: String,
        /// The sha256 asked for.
        expected: String,
        /// The sha256 of what arrived.
        actual: String,
    },
}

/// The file a download in progress writes to: `<dest>.part`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Downloads `url` to `dest`, resuming from `<dest>.part` when there is one, reporting progress
/// after every chunk, and checking the sha256 when `expected_sha256` is given. `bearer` goes as an
/// `Authorization: Bearer` header (reqwest drops it on a redirect to another host).
pub async fn download_file(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    dest: &Path,
    expected_sha256: Option<&str>,
    progress: impl FnMut(DownloadProgress),
) -> Result<Downloaded, DownloadError> {
    download_file_with(client, url, bearer, dest, expected_sha256, DownloadLimits::NONE, progress).await
}

/// [`download_file`] within `limits`. Any failure removes the part file.
pub async fn download_file_with(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    dest: &Path,
    expected_sha256: Option<&str>,
    limits: DownloadLimits,
    mut progress: impl FnMut(DownloadProgress),
) -> Result<Downloaded, DownloadError> {
    let expected = expected_sha256.map(normalize_sha256).transpose()?;
    let part = part_path(dest);
    let mut attempt = 1;
    let (size, hasher) = loop {
        match fetch_into_part(client, url, bearer, &part, &limits, &mut progress).await {
            Ok(done) => break done,
            Err(Failure::Resumable(error)) if attempt < MAX_ATTEMPTS => {
                let wait = FIRST_BACKOFF * 2u32.pow(attempt - 1);
                warn!(%url, attempt, %error, wait_ms = wait.as_millis() as u64, "download interrupted, resuming");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(Failure::Resumable(error) | Failure::Final(error)) => {
                if fs::remove_file(&part).await.is_ok() {
                    info!(%url, part = %part.display(), "partial download removed");
                }
                return Err(error);
            }
        }
    };
    let actual = hex::encode(hasher.finalize());
    if let Some(expected) = expected {
        if expected != actual {
            let _ = fs::remove_file(&part).await;
            return Err(DownloadError::ChecksumMismatch { url: url.to_owned(), expected, actual });
        }
    }
    fs::rename(&part, dest).await.map_err(|source| DownloadError::Io { path: dest.to_path_buf(), source })?;
    info!(%url, path = %dest.display(), size, sha256 = %actual, "download complete");
    Ok(Downloaded { path: dest.to_path_buf(), size, sha256: actual })
}

/// How one attempt failed: worth resuming (the part is kept) or not.
enum Failure {
    Resumable(DownloadError),
    Final(DownloadError),
}

/// One request: appends what is missing to `part`, returns the full size and the hash of it all.
async fn fetch_into_part(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    part: &Path,
    limits: &DownloadLimits,
    progress: &mut impl FnMut(DownloadProgress),
) -> Result<(u64, Sha256), Failure> {
    let io_error = |source| Failure::Final(DownloadError::Io { path: part.to_path_buf(), source });
    let http_error = |source: reqwest::Error| {
        if source.is_redirect() {
            let reason = std::error::Error::source(&source)
                .map_or_else(|| source.to_string(), |inner| inner.to_string());
            return Failure::Final(DownloadError::Redirect { url: url.to_owned(), reason });
        }
        Failure::Resumable(DownloadError::Http { url: url.to_owned(), source })
    };
    let existing = match fs::metadata(part).await {
        Ok(meta) => meta.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(io_error(error)),
    };
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(HEAD_LEN);
    if existing > 0 {
        head = hash_file(part, &mut hasher).await.map_err(io_error)?;
    }
    let mut request = client.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if existing > 0 {
        request = request.header(RANGE, format!("bytes={existing}-"));
    }
    let response = request.send().await.map_err(http_error)?;
    let status = response.status();
    let content_range = response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_content_range);
    let (append, total) = match status {
        StatusCode::PARTIAL_CONTENT if existing > 0 => match content_range {
            Some((Some(start), total)) if start == existing => (true, total),
            _ => {
                // Not the range asked for: start over on the next attempt.
                fs::remove_file(part).await.map_err(io_error)?;
                let error = DownloadError::Status { url: url.to_owned(), status: status.as_u16() };
                return Err(Failure::Resumable(error));
            }
        },
        StatusCode::RANGE_NOT_SATISFIABLE if existing > 0 => {
            if matches!(content_range, Some((None, Some(total))) if total == existing) {
                return Ok((existing, hasher));
            }
            fs::remove_file(part).await.map_err(io_error)?;
            let error = DownloadError::Status { url: url.to_owned(), status: status.as_u16() };
            return Err(Failure::Resumable(error));
        }
        StatusCode::OK => {
            if existing > 0 {
                info!(%url, existing, "server ignored the range request, restarting the download");
                hasher = Sha256::new();
                head.clear();
            }
            (false, response.content_length())
        }
        status if status.is_redirection() => {
            // A redirect the client did not follow: its target is no http(s) url (or there is none).
            let reason =
                format!("redirect (HTTP {}) to a url that is not http or https refused", status.as_u16());
            return Err(Failure::Final(DownloadError::Redirect { url: url.to_owned(), reason }));
        }
        status => {
            let error = DownloadError::Status { url: url.to_owned(), status: status.as_u16() };
            let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
            return Err(if retry { Failure::Resumable(error) } else { Failure::Final(error) });
        }
    };
    // Before any body byte is read: the announced size against the cap and the free space.
    if let Some(total) = total {
        let already = if append { existing } else { 0 };
        check_size(url, part, total, total.saturating_sub(already), limits)?;
    }
    let (mut file, mut downloaded) = if append {
        (OpenOptions::new().append(true).open(part).await.map_err(io_error)?, existing)
    } else {
        (File::create(part).await.map_err(io_error)?, 0)
    };
    let mut head_checked = head.len() >= HEAD_LEN;
    progress(DownloadProgress { downloaded, total });
    let mut body = response.bytes_stream();
    let mut cut_off = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(source) => {
                cut_off = Some(http_error(source));
                break;
            }
        };
        if !head_checked {
            let take = (HEAD_LEN - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() >= HEAD_LEN {
                check_head(url, &head, limits)?;
                head_checked = true;
            }
        }
        downloaded = downloaded.saturating_add(chunk.len() as u64);
        if downloaded > limits.max_bytes {
            let limit = format!("the {}-byte maximum", limits.max_bytes);
            return Err(Failure::Final(DownloadError::TooLarge {
                url: url.to_owned(),
                size: downloaded,
                limit,
            }));
        }
        file.write_all(&chunk).await.map_err(io_error)?;
        hasher.update(&chunk);
        if let Some(expected) = total.filter(|&total| downloaded > total) {
            drop(file);
            let _ = fs::remove_file(part).await;
            let error = DownloadError::Length { url: url.to_owned(), expected, received: downloaded };
            return Err(Failure::Final(error));
        }
        progress(DownloadProgress { downloaded, total });
    }
    file.flush().await.map_err(io_error)?;
    file.sync_all().await.map_err(io_error)?;
    if let Some(failure) = cut_off {
        return Err(failure);
    }
    if let Some(expected) = total.filter(|&total| downloaded < total) {
        let error = DownloadError::Length { url: url.to_owned(), expected, received: downloaded };
        return Err(Failure::Resumable(error));
    }
    if !head_checked {
        check_head(url, &head, limits)?;
    }
    Ok((downloaded, hasher))
}

/// Refuses a file of `total` bytes (`to_write` of them still to come) over the cap or the free space.
fn check_size(
    url: &str,
    part: &Path,
    total: u64,
    to_write: u64,
    limits: &DownloadLimits,
) -> Result<(), Failure> {
    let too_large =
        |limit| Failure::Final(DownloadError::TooLarge { url: url.to_owned(), size: total, limit });
    if total > limits.max_bytes {
        return Err(too_large(format!("the {}-byte maximum", limits.max_bytes)));
    }
    if limits.check_free_space {
        if let Some((free, mount)) = part.parent().and_then(free_space) {
            if to_write > free {
                return Err(too_large(format!("the {free} bytes free on {}", mount.display())));
            }
        }
    }
    Ok(())
}

/// Runs the head check, if any.
fn check_head(url: &str, head: &[u8], limits: &DownloadLimits) -> Result<(), Failure> {
    match limits.check_head.map(|check| check(head)) {
        Some(Err(reason)) => {
            warn!(%url, %reason, "download refused from its first bytes");
            Err(Failure::Final(DownloadError::BadHead { url: url.to_owned(), reason }))
        }
        _ => Ok(()),
    }
}

/// Bytes available to this user on the filesystem holding `dir`, and its mount point; `None` when
/// no mounted disk holds it (then the cap alone applies).
pub fn free_space(dir: &Path) -> Option<(u64, PathBuf)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|disk| dir.starts_with(disk.mount_point()))
        .max_by_key(|disk| disk.mount_point().as_os_str().len())
        .map(|disk| (disk.available_space(), disk.mount_point().to_path_buf()))
}

/// Feeds the whole file at `path` into `hasher`; returns its first [`HEAD_LEN`] bytes.
async fn hash_file(path: &Path, hasher: &mut Sha256) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::with_capacity(HEAD_LEN);
    loop {
        let read = file.read(&mut buf).await?;
        if read == 0 {
            return Ok(head);
        }
        let take = (HEAD_LEN - head.len()).min(read);
        head.extend_from_slice(&buf[..take]);
        hasher.update(&buf[..read]);
    }
}

/// Lowercases a sha256 given in hex and checks its shape.
fn normalize_sha256(value: &str) -> Result<String, DownloadError> {
    let normalized = value.trim().to_ascii_lowercase();
    if normalized.len() == 64 && normalized.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(normalized);
    }
    Err(DownloadError::InvalidChecksum { value: value.to_owned() })
}

/// Parses `bytes START-END/TOTAL` (either side may be `*`) into the start and the total.
fn parse_content_range(value: &str) -> Option<(Option<u64>, Option<u64>)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let start = match range.trim() {
        "*" => None,
        range => Some(range.split_once('-')?.0.trim().parse().ok()?),
    };
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((Some(100), Some(200))));
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((Some(0), None)));
        assert_eq!(parse_content_range("bytes */200"), Some((None, Some(200))));
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn checksums_are_normalized_and_checked() {
        let upper = "AB".repeat(32);
        assert_eq!(normalize_sha256(&upper).ok(), Some("ab".repeat(32)));
        assert!(normalize_sha256("abc").is_err());
        assert!(normalize_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn part_path_appends_a_suffix() {
        assert_eq!(part_path(Path::new("/x/model.gguf")), PathBuf::from("/x/model.gguf.part"));
    }
}
