//! Resumable HTTP download with a streaming sha256.
//!
//! Bytes go to `<dest>.part`. When a `.part` is already there (an earlier run was cut off), it is
//! hashed again and the rest is asked for with `Range: bytes=N-`; a server that answers 200 instead
//! of 206 gets a clean restart. A transfer cut off mid-way is resumed the same way, a few times, with
//! a short backoff. Once complete, the sha256 is checked (a mismatch deletes the part) and the part
//! is renamed to `dest`.

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
    mut progress: impl FnMut(DownloadProgress),
) -> Result<Downloaded, DownloadError> {
    let expected = expected_sha256.map(normalize_sha256).transpose()?;
    let part = part_path(dest);
    let mut attempt = 1;
    let (size, hasher) = loop {
        match fetch_into_part(client, url, bearer, &part, &mut progress).await {
            Ok(done) => break done,
            Err(Failure::Resumable(error)) if attempt < MAX_ATTEMPTS => {
                let wait = FIRST_BACKOFF * 2u32.pow(attempt - 1);
                warn!(%url, attempt, %error, wait_ms = wait.as_millis() as u64, "download interrupted, resuming");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(Failure::Resumable(error) | Failure::Final(error)) => return Err(error),
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
    progress: &mut impl FnMut(DownloadProgress),
) -> Result<(u64, Sha256), Failure> {
    let io_error = |source| Failure::Final(DownloadError::Io { path: part.to_path_buf(), source });
    let http_error = |source| Failure::Resumable(DownloadError::Http { url: url.to_owned(), source });
    let existing = match fs::metadata(part).await {
        Ok(meta) => meta.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(io_error(error)),
    };
    let mut hasher = Sha256::new();
    if existing > 0 {
        hash_file(part, &mut hasher).await.map_err(io_error)?;
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
    let (mut file, mut downloaded, total) = match status {
        StatusCode::PARTIAL_CONTENT if existing > 0 => match content_range {
            Some((Some(start), total)) if start == existing => {
                let file = OpenOptions::new().append(true).open(part).await.map_err(io_error)?;
                (file, existing, total)
            }
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
            }
            (File::create(part).await.map_err(io_error)?, 0, response.content_length())
        }
        status => {
            let error = DownloadError::Status { url: url.to_owned(), status: status.as_u16() };
            let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
            return Err(if retry { Failure::Resumable(error) } else { Failure::Final(error) });
        }
    };
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
        file.write_all(&chunk).await.map_err(io_error)?;
        hasher.update(&chunk);
        downloaded += chunk.len() as u64;
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
    Ok((downloaded, hasher))
}

/// Feeds the whole file at `path` into `hasher`.
async fn hash_file(path: &Path, hasher: &mut Sha256) -> std::io::Result<()> {
    let mut file = File::open(path).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buf).await?;
        if read == 0 {
            return Ok(());
        }
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
