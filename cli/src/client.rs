//! The queen's HTTP API as the CLI uses it: JSON in and out, `Authorization: Bearer` when a key is
//! configured, and every failure turned into a message a person can act on.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::Config;

/// How long a plain (non-streaming) request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a call to the queen failed, by kind.
#[derive(Debug, thiserror::Error)]
pub enum QueenError {
    /// Nothing listens there.
    #[error("queen not reachable at {addr} (is `rbee up` running?)")]
    Unreachable {
        /// `host:port`
        addr: String,
    },
    /// It did not answer in time.
    #[error("queen at {addr} did not answer within {} s", after.as_secs())]
    Timeout {
        /// `host:port`
        addr: String,
        /// The limit.
        after: Duration,
    },
    /// It answered with an error status.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The OpenAI-style `error.message`, or a description of the reply.
        message: String,
        /// The OpenAI-style `error.code`, when given.
        code: Option<String>,
    },
    /// Anything else on the way.
    #[error("request to the queen at {addr} failed: {message}")]
    Transport {
        /// `host:port`
        addr: String,
        /// Why.
        message: String,
    },
}

impl QueenError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            QueenError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One queen's address.
#[derive(Clone)]
struct Target {
    /// Base URL without a trailing slash (`http://127.0.0.1:7833`).
    base: String,
    /// `host:port`, for messages.
    addr: String,
}

/// A client for the queens at one or more addresses (`--queen URL,URL`): each call goes to the one
/// that answered last, and on to the next when it is unreachable or is a standby that refuses what
/// only the leader does (`not_leader`).
#[derive(Clone)]
pub struct Queen {
    targets: Vec<Target>,
    /// The target that answered last.
    preferred: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Sent as a bearer token when set.
    api_key: Option<String>,
    http: reqwest::Client,
}

impl Queen {
    /// A client for the configured queen(s).
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Self::with_url(&config.queen_url.value, config.api_key.value.clone())
    }

    /// A client for `urls`, comma-separated (`http://` is assumed when no scheme is given).
    pub fn with_url(urls: &str, api_key: Option<String>) -> anyhow::Result<Self> {
        let mut targets = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let with_scheme = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
            let parsed = reqwest::Url::parse(&with_scheme)
                .map_err(|e| anyhow::anyhow!("invalid queen url `{url}`: {e}"))?;
            let host = parsed.host_str().unwrap_or("?");
            let addr = match parsed.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            targets.push(Target { base: with_scheme.trim_end_matches('/').to_owned(), addr });
        }
        anyhow::ensure!(!targets.is_empty(), "no queen url given (`--queen URL[,URL...]`)");
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the http client: {e}"))?;
        Ok(Self { targets, preferred: Default::default(), api_key, http })
    }

    fn target(&self) -> &Target {
        let i = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }

    /// `host:port` of the queen that answered last (the first before any call).
    pub fn addr(&self) -> &str {
        &self.target().addr
    }

    /// Its base URL (`http://127.0.0.1:7833`).
    pub fn base(&self) -> &str {
        &self.target().base
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, QueenError> {
        self.json(Method::GET, path, None, REQUEST_TIMEOUT).await
    }

    /// `POST path` with a JSON body, the reply as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, QueenError> {
        self.json(Method::POST, path, Some(body), REQUEST_TIMEOUT).await
    }

    /// `DELETE path`; an empty reply is `null`.
    pub async fn delete(&self, path: &str) -> Result<Value, QueenError> {
        self.json(Method::DELETE, path, None, REQUEST_TIMEOUT).await
    }

    /// Any JSON call with its own timeout.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, QueenError> {
        let response = self.send(method, path, body, Some(timeout)).await?;
        let addr = self.addr().to_owned();
        let bytes = response.bytes().await.map_err(|e| map_error(&addr, e, timeout))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| QueenError::Transport {
            addr,
            message: format!("the reply to {path} is not JSON: {e}"),
        })
    }

    /// Sends a request and checks the status; the body is left to the caller (for event streams).
    /// Tries each address in turn from the last that answered, while one is unreachable or says it
    /// is not the leader; the first error is returned when none does.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, QueenError> {
        let start = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        let mut first_error = None;
        for k in 0..self.targets.len() {
            let i = (start + k) % self.targets.len();
            match self.send_to(&self.targets[i], method.clone(), path, body, timeout).await {
                Ok(response) => {
                    self.preferred.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) => {
                    let next = matches!(e, QueenError::Unreachable { .. })
                        || matches!(&e, QueenError::Api { code: Some(code), .. } if code == "not_leader");
                    first_error.get_or_insert(e);
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(first_error.unwrap_or(QueenError::Unreachable { addr: self.addr().to_owned() }))
    }

    async fn send_to(
        &self,
        target: &Target,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, QueenError> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", target.base));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let limit = timeout.unwrap_or(REQUEST_TIMEOUT);
        let response = request.send().await.map_err(|e| map_error(&target.addr, e, limit))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(api_error(status, &text, &method, path))
    }
}

fn map_error(addr: &str, error: reqwest::Error, after: Duration) -> QueenError {
    if error.is_connect() {
        QueenError::Unreachable { addr: addr.to_owned() }
    } else if error.is_timeout() {
        QueenError::Timeout { addr: addr.to_owned(), after }
    } else {
        QueenError::Transport { addr: addr.to_owned(), message: error_chain(&error) }
    }
}

/// An error reply as a message: the OpenAI-style `error.message` when there is one.
fn api_error(status: StatusCode, body: &str, method: &Method, path: &str) -> QueenError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_str).map(str::to_owned);
    let mut message = match error {
        Some(Value::String(text)) => text.clone(),
        Some(e) => {
            e.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| e.to_string())
        }
        None if body.trim().is_empty() => format!("the queen answered {status} to {method} {path}"),
        None => format!(
            "the queen answered {status} to {method} {path}: {}",
            crate::render::truncate(body.trim(), 200)
        ),
    };
    if status == StatusCode::UNAUTHORIZED {
        message.push_str(" (set api_key in the config file or RBEE_API_KEY)");
    } else if status == StatusCode::FORBIDDEN {
        message.push_str(" (set RBEE_ADMIN_KEY: a secure cluster's admin-key file)");
    }
    QueenError::Api { status, message, code }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Percent-encodes one path segment or query value (ids are subject tokens, so this rarely matters).
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_bodies_give_their_message() {
        let body = r#"{"error":{"message":"model `x` is unknown","type":"invalid_request_error","code":"unknown_model"}}"#;
        let e = api_error(StatusCode::NOT_FOUND, body, &Method::POST, "/v1/completions");
        assert_eq!(e.to_string(), "model `x` is unknown");
        assert!(matches!(e, QueenError::Api { code: Some(ref c), .. } if c == "unknown_model"));
        let e = api_error(StatusCode::UNAUTHORIZED, "", &Method::GET, "/v1/workers");
        assert!(e.to_string().contains("RBEE_API_KEY"), "{e}");
    }

    #[test]
    fn addresses_and_encoding() {
        let queen = Queen::with_url("127.0.0.1:7833/", None).expect("valid");
        assert_eq!(queen.addr(), "127.0.0.1:7833");
        assert_eq!(queen.base(), "http://127.0.0.1:7833");
        let two = Queen::with_url("http://198.18.0.1:7833, 198.18.0.2:7833", None).expect("valid");
        assert_eq!(two.targets.len(), 2);
        assert_eq!(two.targets[1].base, "http://198.18.0.2:7833");
        assert!(Queen::with_url(" , ", None).is_err());
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
