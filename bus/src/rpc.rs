//! Typed publish, request and reply over NATS. A request returns the typed reply or a [`BusError`]
//! whose kind tells no responders, timeout, permission denied, decode failure and remote errors apart.
//! [`respond_guarded`] is how a daemon answers a request: a handler that panics is answered with an
//! `internal` error at once, and the daemon goes on.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::messages::error::{ErrorBody, WireError};

/// Largest message rbee publishes; matches the nats-server default `max_payload` (1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A failed bus operation, by kind.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Nobody subscribes to the subject.
    #[error("no responders on {subject}")]
    NoResponders {
        /// The subject.
        subject: String,
    },
    /// Someone subscribes but did not answer in time.
    #[error("request on {subject} timed out after {after:?}")]
    Timeout {
        /// The subject.
        subject: String,
        /// The timeout.
        after: Duration,
    },
    /// The server refused this identity the subject.
    #[error("permission denied on {subject}")]
    PermissionDenied {
        /// The subject.
        subject: String,
    },
    /// The payload did not decode as the expected type.
    #[error("cannot decode message on {subject}: {source}")]
    Decode {
        /// The subject.
        subject: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The message is larger than the server accepts.
    #[error("message of {size} bytes on {subject} is over the {limit} byte limit")]
    TooLarge {
        /// The subject.
        subject: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The responder answered with an error.
    #[error("{subject}: {error}")]
    Remote {
        /// The subject.
        subject: String,
        /// What it said.
        error: WireError,
    },
    /// The connection failed.
    #[error("nats error on {subject}: {message}")]
    Transport {
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
}

impl BusError {
    /// The wire error, when the responder sent one.
    pub fn remote(&self) -> Option<&WireError> {
        match self {
            BusError::Remote { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Permission violations reported by the server, which arrive as events, not as call results.
#[derive(Debug, Default, Clone)]
pub struct Denials {
    recent: Arc<Mutex<VecDeque<(Instant, String)>>>,
}

impl Denials {
    pub(crate) fn record(&self, text: &str) {
        let Ok(mut recent) = self.recent.lock() else { return };
        recent.push_back((Instant::now(), text.to_owned()));
        while recent.len() > 64 {
            recent.pop_front();
        }
    }

    /// True when the server denied `subject` since `since`.
    pub fn denied_since(&self, subject: &str, since: Instant) -> bool {
        let Ok(recent) = self.recent.lock() else { return false };
        recent.iter().any(|(at, text)| *at >= since && text.contains(&format!("\"{subject}\"")))
    }

    /// How many denials were seen (for tests and metrics).
    pub fn count(&self) -> usize {
        self.recent.lock().map(|r| r.len()).unwrap_or(0)
    }
}

#[derive(Deserialize)]
struct ErrorProbe {
    error: Option<ErrorBody>,
    v: Option<u32>,
}

/// Decodes a message of type `T`.
pub fn decode<T: DeserializeOwned>(subject: &str, payload: &[u8]) -> Result<T, BusError> {
    serde_json::from_slice(payload).map_err(|source| BusError::Decode { subject: subject.to_owned(), source })
}

/// Decodes a reply: a [`WireError`] becomes [`BusError::Remote`], anything else must decode as `T`.
pub fn decode_reply<T: DeserializeOwned>(subject: &str, payload: &[u8]) -> Result<T, BusError> {
    if let Ok(ErrorProbe { error: Some(error), v }) = serde_json::from_slice::<ErrorProbe>(payload) {
        let error = WireError { v: v.unwrap_or(crate::SCHEMA_VERSION), error };
        return Err(BusError::Remote { subject: subject.to_owned(), error });
    }
    decode(subject, payload)
}

/// Serializes a message, refusing one over [`MAX_MESSAGE_BYTES`].
pub fn encode<T: Serialize>(subject: &str, message: &T) -> Result<Bytes, BusError> {
    let bytes = serde_json::to_vec(message)
        .map_err(|source| BusError::Decode { subject: subject.to_owned(), source })?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(BusError::TooLarge {
            subject: subject.to_owned(),
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(Bytes::from(bytes))
}

/// A NATS connection with rbee's typed helpers.
#[derive(Clone, Debug)]
pub struct Bus {
    client: async_nats::Client,
    denials: Arc<Denials>,
}

impl Bus {
    pub(crate) fn new(client: async_nats::Client, denials: Arc<Denials>) -> Self {
        Self { client, denials }
    }

    /// The underlying client, for subscriptions and the service API.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Permission denials seen on this connection.
    pub fn denials(&self) -> &Denials {
        &self.denials
    }

    /// Publishes a typed message.
    pub async fn publish<T: Serialize>(&self, subject: String, message: &T) -> Result<(), BusError> {
        let payload = encode(&subject, message)?;
        self.client
            .publish(subject.clone(), payload)
            .await
            .map_err(|e| BusError::Transport { subject, message: e.to_string() })
    }

    /// Sends a request and waits up to `timeout` for the typed reply.
    pub async fn request<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        subject: String,
        request: &Req,
        timeout: Duration,
    ) -> Result<Rep, BusError> {
        let payload = encode(&subject, request)?;
        let started = Instant::now();
        let req = async_nats::Request::new().payload(payload).timeout(Some(timeout));
        match self.client.send_request(subject.clone(), req).await {
            Ok(msg) => decode_reply(&subject, &msg.payload),
            Err(e) => {
                use async_nats::RequestErrorKind as K;
                // A denied request never fails by itself: the server says so in an event, and the call
                // times out. Give the real reason.
                let denied = || {
                    self.denials.denied_since(&subject, started)
                        || self
                            .denials
                            .denied_since(&subject, started.checked_sub(timeout).unwrap_or(started))
                };
                match e.kind() {
                    K::NoResponders => Err(BusError::NoResponders { subject }),
                    K::TimedOut if denied() => Err(BusError::PermissionDenied { subject }),
                    K::TimedOut => Err(BusError::Timeout { subject, after: timeout }),
                    _ => Err(BusError::Transport { subject, message: e.to_string() }),
                }
            }
        }
    }

    /// Answers a request with a typed reply or a wire error. A message without a reply subject is ignored.
    pub async fn reply<T: Serialize>(
        &self,
        request: &async_nats::Message,
        result: Result<T, WireError>,
    ) -> Result<(), BusError> {
        let Some(reply) = request.reply.clone() else { return Ok(()) };
        let payload = match &result {
            Ok(value) => encode(reply.as_str(), value)?,
            Err(error) => encode(reply.as_str(), error)?,
        };
        self.client
            .publish(reply.clone(), payload)
            .await
            .map_err(|e| BusError::Transport { subject: reply.to_string(), message: e.to_string() })
    }

    /// One request/reply round trip to the server: after it, every subscription made on this connection
    /// is known to the server (a bare flush does not guarantee that).
    pub async fn round_trip(&self) -> Result<(), BusError> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| BusError::Transport { subject: inbox.clone(), message: e.to_string() })?;
        self.client
            .publish(inbox.clone(), Bytes::new())
            .await
            .map_err(|e| BusError::Transport { subject: inbox.clone(), message: e.to_string() })?;
        use futures::StreamExt;
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(_)) => Ok(()),
            _ => Err(BusError::Timeout { subject: inbox, after: Duration::from_secs(5) }),
        }
    }
}

/// Most bytes of an error text copied into a header (the whole message is in the body).
const HEADER_TEXT_MAX: usize = 256;

/// Any text as a NATS header value: control characters (CR and LF among them, which a header value may
/// not hold and on which async-nats panics) become spaces, and it is cut to [`HEADER_TEXT_MAX`] bytes on
/// a character boundary. Every header rbee sends from a message it did not write goes through here.
pub fn header_text(text: &str) -> async_nats::HeaderValue {
    let mut clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.len() > HEADER_TEXT_MAX {
        let mut end = HEADER_TEXT_MAX;
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
    }
    clean.parse().unwrap_or_else(|_| async_nats::HeaderValue::from("error"))
}

/// Answers a NATS service-API request with a typed reply or a wire error. An error reply also carries
/// the service API's `Nats-Service-Error` headers, so standard NATS tools see it as an error.
pub async fn respond<T: Serialize>(request: &async_nats::service::Request, result: &Result<T, WireError>) {
    let payload = match result {
        Ok(value) => serde_json::to_vec(value),
        Err(error) => serde_json::to_vec(error),
    }
    .unwrap_or_default();
    let mut headers = async_nats::HeaderMap::new();
    if let Err(e) = result {
        headers.insert("Nats-Service-Error", header_text(&e.error.message));
        let code = if e.code() == crate::ErrorCode::Internal { "500" } else { "400" };
        headers.insert("Nats-Service-Error-Code", code);
    }
    if let Err(e) = request.respond_with_headers(Ok(payload.into()), headers).await {
        tracing::warn!(subject = %request.message.subject, error = %e, "cannot send reply");
    }
}

/// Runs the handler of one service-API request and answers with what it returns, which is also
/// returned. A handler that panics is answered at once with an `internal` error naming `what` (the
/// panic is logged as `request handler panicked`), so the requester does not wait for a timeout and
/// the caller's loop goes on; a reply that panics while being sent is retried without headers.
pub async fn respond_guarded<T, F>(
    request: &async_nats::service::Request,
    what: &str,
    handler: F,
) -> Result<T, WireError>
where
    T: Serialize,
    F: Future<Output = Result<T, WireError>>,
{
    let result = match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let reason = panic_text(panic.as_ref());
            tracing::error!(subject = %request.message.subject, what, panic = %reason, "request handler panicked");
            Err(WireError::new(
                crate::ErrorCode::Internal,
                format!("{what} failed inside the handler: {reason}"),
            ))
        }
    };
    if AssertUnwindSafe(respond(request, &result)).catch_unwind().await.is_err() {
        tracing::error!(subject = %request.message.subject, what, "reply panicked, sent again without headers");
        let payload = match &result {
            Ok(value) => serde_json::to_vec(value),
            Err(error) => serde_json::to_vec(error),
        };
        let _ = request.respond(Ok(payload.unwrap_or_default().into())).await;
    }
    result
}

/// The message of a panic payload (`panic!` with a literal or a formatted string); for any other
/// payload, the text "panic without a message".
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::{header_text, panic_text};

    #[test]
    fn panic_text_reads_both_payload_kinds() {
        let literal = std::panic::catch_unwind(|| panic!("plain")).expect_err("panics");
        assert_eq!(panic_text(literal.as_ref()), "plain");
        let n = 3;
        let formatted = std::panic::catch_unwind(|| panic!("n = {n}")).expect_err("panics");
        assert_eq!(panic_text(formatted.as_ref()), "n = 3");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).expect_err("panics");
        assert_eq!(panic_text(other.as_ref()), "panic without a message");
    }

    #[test]
    fn header_text_never_holds_line_breaks_and_stays_short() {
        assert_eq!(header_text("no file /a\nb\r\non hive").as_str(), "no file /a b  on hive");
        assert_eq!(header_text("tab\tand\u{7f}del").as_str(), "tab and del");
        let long = "é".repeat(300);
        let cut = header_text(&long);
        assert!(cut.as_str().len() <= 256 && cut.as_str().chars().all(|c| c == 'é'));
        assert_eq!(header_text("").as_str(), "");
    }
}
