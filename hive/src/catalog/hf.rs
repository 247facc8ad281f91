//! Models by name from a Hugging Face style hub: `hf:ORG/REPO/FILE.gguf`, `hf:ORG/REPO:QUANT` (the
//! GGUF whose name carries that quantization, `Q4_K_M` say) and `hf:ORG/REPO` (the repo's only GGUF).
//!
//! A reference resolves against the hub's layout: the file list with each file's LFS sha256 from
//! `GET <endpoint>/api/models/ORG/REPO/tree/main?recursive=true`, the bytes from
//! `<endpoint>/ORG/REPO/resolve/main/FILE`. The endpoint is `$HF_ENDPOINT` (the variable the Hugging
//! Face tools read), else the public hub; `$HF_TOKEN`, when set, goes as a bearer token and is never
//! logged or shown (this type's `Debug` hides it). Parsing and choosing are pure; [`resolve`] does the
//! one request.

use std::time::Duration;

use serde::Deserialize;

/// The public hub, used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// How long the file-list request may take (the queen waits 10 s for the pull to be accepted).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(8);
/// How many of a repo's files an error lists at most.
const LISTED_FILES: usize = 40;

/// A parsed `hf:` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfRef {
    /// `ORG/REPO`
    pub repo: String,
    /// What to pick in it.
    pub pick: Pick,
}

/// Which file of the repo a reference means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// A path in the repo (`FILE.gguf`, or `dir/FILE.gguf`).
    File(String),
    /// The GGUF whose name carries this quantization tag (`Q4_K_M`).
    Quant(String),
    /// The repo's only GGUF.
    Only,
}

/// Where the hub is and how to authenticate to it.
#[derive(Clone)]
pub struct HfEndpoint {
    /// Base URL, no trailing slash.
    pub base: String,
    /// The bearer token, from `HF_TOKEN`.
    token: Option<String>,
}

impl std::fmt::Debug for HfEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfEndpoint")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl HfEndpoint {
    /// From `HF_ENDPOINT` and `HF_TOKEN` as `env` gives them (empty values count as unset).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        let base =
            env("HF_ENDPOINT").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let token = env("HF_TOKEN").map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        Self { base: base.trim().trim_end_matches('/').to_owned(), token }
    }

    /// The bearer token, for the download request.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// A reference resolved to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The file's path in the repo.
    pub file: String,
    /// Where its bytes are.
    pub url: String,
    /// Its sha256 from the hub's LFS pointer, when the hub gave one.
    pub sha256: Option<String>,
    /// Its size, when the hub gave one.
    pub size: Option<u64>,
}

/// Why a reference did not resolve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HfError {
    /// Not of the form `hf:ORG/REPO[/FILE.gguf | :QUANT]`.
    #[error("{reference:?} is not a hub reference: {why} (use hf:ORG/REPO/FILE.gguf or hf:ORG/REPO:QUANT)")]
    Malformed {
        /// What was given.
        reference: String,
        /// What is wrong with it.
        why: String,
    },
    /// The hub did not answer, or not with a file list.
    #[error("cannot list {repo} at {endpoint}: {why}")]
    List {
        /// `ORG/REPO`
        repo: String,
        /// The hub.
        endpoint: String,
        /// What went wrong.
        why: String,
    },
    /// The hub has no such repo (HTTP 404).
    #[error("{endpoint} has no repo {repo} (no such repo, or a private one without HF_TOKEN)")]
    NoRepo {
        /// `ORG/REPO`
        repo: String,
        /// The hub.
        endpoint: String,
    },
    /// Nothing in the repo matches.
    #[error("{reference} matches no GGUF file in {repo}; it has: {}", listing(files))]
    NoMatch {
        /// What was asked for.
        reference: String,
        /// `ORG/REPO`
        repo: String,
        /// The repo's files.
        files: Vec<String>,
    },
    /// More than one file matches.
    #[error(
        "{reference} matches several GGUF files in {repo}: {}; name one with hf:{repo}/FILE",
        listing(matches)
    )]
    Ambiguous {
        /// What was asked for.
        reference: String,
        /// `ORG/REPO`
        repo: String,
        /// The files that match.
        matches: Vec<String>,
    },
}

fn listing(files: &[String]) -> String {
    if files.is_empty() {
        return "no files".into();
    }
    let mut out = files.iter().take(LISTED_FILES).cloned().collect::<Vec<_>>().join(", ");
    if files.len() > LISTED_FILES {
        out.push_str(&format!(" and {} more", files.len() - LISTED_FILES));
    }
    out
}

/// True for `hf:` references.
pub fn is_hf_ref(url: &str) -> bool {
    url.starts_with("hf:")
}

/// A name part of a repo: what the hub allows (letters, digits, `-`, `_`, `.`), never `.` or `..`.
fn valid_name(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 96
        && part != "."
        && part != ".."
        && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl HfRef {
    /// Parses `hf:ORG/REPO/FILE.gguf`, `hf:ORG/REPO:QUANT` or `hf:ORG/REPO`.
    pub fn parse(reference: &str) -> Result<Self, HfError> {
        let bad = |why: &str| HfError::Malformed { reference: reference.to_owned(), why: why.to_owned() };
        let rest = reference.strip_prefix("hf:").ok_or_else(|| bad("it does not start with hf:"))?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, quant) = match rest.split_once(':') {
            Some((path, quant)) => (path, Some(quant)),
            None => (rest, None),
        };
        let mut parts = path.split('/');
        let (org, repo) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !valid_name(org) || !valid_name(repo) {
            return Err(bad("ORG and REPO must be names of letters, digits, '-', '_' or '.'"));
        }
        let file: Vec<&str> = parts.collect();
        let pick = match (quant, file.is_empty()) {
            (Some(_), false) => return Err(bad("give a file or a quantization, not both")),
            (Some(q), true) => {
                if q.is_empty() || !q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(bad("a quantization is letters, digits and '_' (Q4_K_M)"));
                }
                Pick::Quant(q.to_owned())
            }
            (None, true) => Pick::Only,
            (None, false) => {
                if !file.iter().all(|p| valid_name(p)) {
                    return Err(bad("each part of the file path must be a plain name"));
                }
                let file = file.join("/");
                if !file.to_ascii_lowercase().ends_with(".gguf") {
                    return Err(bad("the file must be a .gguf"));
                }
                Pick::File(file)
            }
        };
        Ok(Self { repo: format!("{org}/{repo}"), pick })
    }

    /// The reference as written canonically.
    pub fn display(&self) -> String {
        match &self.pick {
            Pick::File(f) => format!("hf:{}/{f}", self.repo),
            Pick::Quant(q) => format!("hf:{}:{q}", self.repo),
            Pick::Only => format!("hf:{}", self.repo),
        }
    }
}

/// One entry of the hub's tree listing.
#[derive(Debug, Clone, Deserialize)]
pub struct TreeEntry {
    /// `file` or `directory`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Path in the repo.
    pub path: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// The LFS pointer, for large files.
    #[serde(default)]
    pub lfs: Option<LfsPointer>,
}

/// The LFS part of a tree entry: `oid` is the file's sha256.
#[derive(Debug, Clone, Deserialize)]
pub struct LfsPointer {
    /// sha256 of the content.
    pub oid: String,
    /// Size of the content.
    #[serde(default)]
    pub size: Option<u64>,
}

/// True when the file's name carries `quant` as a whole tag: `model-Q4_K_M.gguf` has `Q4_K_M` but not
/// `Q4_K`; case does not matter.
pub fn has_quant(path: &str, quant: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    let quant = quant.to_ascii_lowercase();
    let bytes = stem.as_bytes();
    stem.match_indices(&quant).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + quant.len()).copied();
        matches!(before, None | Some(b'-' | b'.' | b'_')) && matches!(after, None | Some(b'-' | b'.'))
    })
}

/// Picks the file a reference means among the repo's entries.
pub fn choose<'a>(reference: &HfRef, entries: &'a [TreeEntry]) -> Result<&'a TreeEntry, HfError> {
    let files: Vec<&TreeEntry> = entries.iter().filter(|e| e.kind != "directory").collect();
    let ggufs: Vec<&TreeEntry> =
        files.iter().copied().filter(|e| e.path.to_ascii_lowercase().ends_with(".gguf")).collect();
    let matches: Vec<&TreeEntry> = match &reference.pick {
        Pick::File(file) => ggufs.iter().copied().filter(|e| &e.path == file).collect(),
        Pick::Quant(quant) => ggufs.iter().copied().filter(|e| has_quant(&e.path, quant)).collect(),
        Pick::Only => ggufs.clone(),
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(HfError::NoMatch {
            reference: reference.display(),
            repo: reference.repo.clone(),
            files: files.iter().map(|e| e.path.clone()).collect(),
        }),
        several => Err(HfError::Ambiguous {
            reference: reference.display(),
            repo: reference.repo.clone(),
            matches: several.iter().map(|e| e.path.clone()).collect(),
        }),
    }
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay).
fn encode_segment(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(path: &str) -> String {
    path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// Where the bytes of `file` in `repo` are.
pub fn resolve_url(endpoint: &HfEndpoint, repo: &str, file: &str) -> String {
    format!("{}/{}/resolve/main/{}", endpoint.base, encode_path(repo), encode_path(file))
}

/// Lists the repo and picks the file a reference means.
pub async fn resolve(
    client: &reqwest::Client,
    endpoint: &HfEndpoint,
    reference: &HfRef,
) -> Result<Resolved, HfError> {
    let list_error =
        |why: String| HfError::List { repo: reference.repo.clone(), endpoint: endpoint.base.clone(), why };
    let url =
        format!("{}/api/models/{}/tree/main?recursive=true", endpoint.base, encode_path(&reference.repo));
    let mut request = client.get(&url).timeout(LIST_TIMEOUT);
    if let Some(token) = endpoint.token() {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| list_error(format!("request failed: {e}")))?;
    let status = response.status();
    if status.as_u16() == 404 {
        return Err(HfError::NoRepo { repo: reference.repo.clone(), endpoint: endpoint.base.clone() });
    }
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => " (a private or gated repo: set HF_TOKEN for the hive)",
            _ => "",
        };
        return Err(list_error(format!("HTTP {}{hint}", status.as_u16())));
    }
    let entries: Vec<TreeEntry> =
        response.json().await.map_err(|e| list_error(format!("not a file list: {e}")))?;
    let entry = choose(reference, &entries)?;
    let sha256 = entry
        .lfs
        .as_ref()
        .map(|lfs| lfs.oid.to_ascii_lowercase())
        .filter(|oid| oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_hexdigit()));
    Ok(Resolved {
        file: entry.path.clone(),
        url: resolve_url(endpoint, &reference.repo, &entry.path),
        sha256,
        size: entry.lfs.as_ref().and_then(|l| l.size).or(entry.size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> TreeEntry {
        TreeEntry { kind: "file".into(), path: path.into(), size: Some(1), lfs: None }
    }

    #[test]
    fn references_parse() {
        let r = HfRef::parse("hf:bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M").expect("quant");
        assert_eq!(r.repo, "bartowski/Llama-3.2-1B-Instruct-GGUF");
        assert_eq!(r.pick, Pick::Quant("Q4_K_M".into()));
        let r = HfRef::parse("hf:org/repo/sub/model.Q8_0.gguf").expect("file");
        assert_eq!(r.pick, Pick::File("sub/model.Q8_0.gguf".into()));
        assert_eq!(HfRef::parse("hf:org/repo").expect("only").pick, Pick::Only);
        for bad in [
            "hf:",
            "hf:org",
            "hf:org/",
            "hf:../repo/x.gguf",
            "hf:org/repo/../x.gguf",
            "hf:org/repo/model.bin",
            "hf:org/repo/x.gguf:Q4",
            "hf:org/repo:",
            "hf:org/repo:Q4 K",
            "hf:org/re po",
            "http://x/y.gguf",
        ] {
            assert!(matches!(HfRef::parse(bad), Err(HfError::Malformed { .. })), "{bad} must be refused");
        }
    }

    #[test]
    fn quant_tags_match_whole() {
        assert!(has_quant("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"));
        assert!(has_quant("smollm2.q4_k_m.gguf", "Q4_K_M"));
        assert!(!has_quant("model-Q4_K_M.gguf", "Q4_K"));
        assert!(!has_quant("model-IQ4_XS.gguf", "Q4_XS"));
        assert!(has_quant("model-Q4_K_M-00001-of-00002.gguf", "Q4_K_M"));
    }

    #[test]
    fn choosing_names_what_the_repo_has() {
        let entries = vec![
            entry("README.md"),
            entry("m-Q4_K_M.gguf"),
            entry("m-Q4_K_S.gguf"),
            entry("m-Q8_0.gguf"),
            TreeEntry { kind: "directory".into(), path: "sub".into(), size: None, lfs: None },
        ];
        let quant = |q: &str| HfRef { repo: "o/r".into(), pick: Pick::Quant(q.into()) };
        assert_eq!(choose(&quant("q8_0"), &entries).expect("one").path, "m-Q8_0.gguf");
        match choose(&quant("Q5_K_M"), &entries) {
            Err(e @ HfError::NoMatch { .. }) => {
                let text = e.to_string();
                assert!(text.contains("m-Q4_K_M.gguf") && text.contains("README.md"), "{text}");
            }
            other => panic!("expected no match, got {other:?}"),
        }
        let only = HfRef { repo: "o/r".into(), pick: Pick::Only };
        match choose(&only, &entries) {
            Err(e @ HfError::Ambiguous { .. }) => assert!(e.to_string().contains("m-Q4_K_S.gguf")),
            other => panic!("expected ambiguous, got {other:?}"),
        }
        let file = HfRef { repo: "o/r".into(), pick: Pick::File("m-Q4_K_S.gguf".into()) };
        assert_eq!(choose(&file, &entries).expect("file").path, "m-Q4_K_S.gguf");
    }

    #[test]
    fn the_endpoint_comes_from_the_environment_and_hides_the_token() {
        let e = HfEndpoint::from_env(|_| None);
        assert_eq!(e.base, DEFAULT_ENDPOINT);
        assert_eq!(e.token(), None);
        let e = HfEndpoint::from_env(|k| match k {
            "HF_ENDPOINT" => Some("http://127.0.0.1:9/".into()),
            "HF_TOKEN" => Some("hf_secret".into()),
            _ => None,
        });
        assert_eq!(e.base, "http://127.0.0.1:9");
        assert_eq!(e.token(), Some("hf_secret"));
        assert!(!format!("{e:?}").contains("hf_secret"));
        assert_eq!(
            resolve_url(&e, "o/r", "sub/a b.gguf"),
            "http://127.0.0.1:9/o/r/resolve/main/sub/a%20b.gguf"
        );
    }
}
