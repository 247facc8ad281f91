//! One error type for the queen's API, mapped to HTTP status and OpenAI's error body in one place,
//! with the one mapping of a submission's refusal ([`SubmitError`]) and of a hive's answer over the
//! bus ([`ApiError::from_hive`]) to it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rbee_bus::{BusError, ErrorCode, HiveId};

use crate::jobs::admit::SubmitError;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter is out of range or malformed (400).
    #[error("{message}")]
    InvalidParams {
        /// The parameter.
        param: String,
        /// What is wrong.
        message: String,
    },
    /// The body is not what the endpoint takes (400).
    #[error("{0}")]
    BadRequest(String),
    /// No hive has the model and no worker serves it (404, `model_not_found`).
    #[error("{0}")]
    UnknownModel(String),
    /// No such job, worker or hive (404).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with what is there: an id already stored, a model in use (409).
    #[error("{0}")]
    Conflict(String),
    /// The prompt is too large (413).
    #[error("{0}")]
    PromptTooLarge(String),
    /// The request body is over the limit and was not read to its end (413, `Connection: close`: the
    /// rest of the body is still on the connection, which the server then closes, so a client must
    /// not send its next request on it).
    #[error("{0}")]
    BodyTooLarge(String),
    /// The queue is full (429, Retry-After).
    #[error("{0}")]
    QueueFull(String),
    /// Nothing can serve now (503, Retry-After).
    #[error("{0}")]
    Unavailable(String),
    /// Every hive with the model refuses it after its workers failed to load (503, no Retry-After:
    /// someone has to replace the file).
    #[error("{0}")]
    ModelFailing(String),
    /// Missing or wrong API key (401).
    #[error("missing or invalid api key")]
    Unauthorized,
    /// A valid key without the right (403): administration needs the admin key.
    #[error("{0}")]
    Forbidden(String),
    /// The job failed (500).
    #[error("{0}")]
    JobFailed(String),
    /// A standby was asked what only the leader does.
    #[error("{0}")]
    NotLeader(String),
}

impl ApiError {
    /// An invalid parameter.
    pub fn invalid(param: impl Into<String>, message: String) -> Self {
        ApiError::InvalidParams { param: param.into(), message }
    }

    /// The error a job that ended in failure maps to, by the code of its refusal.
    pub fn from_job_failure(code: Option<ErrorCode>, message: String) -> Self {
        match code {
            Some(ErrorCode::PromptTooLong) => ApiError::PromptTooLarge(message),
            Some(ErrorCode::InvalidParams) => ApiError::invalid("", message),
            Some(ErrorCode::BadRequest) => ApiError::BadRequest(message),
            Some(ErrorCode::QueueFull) => ApiError::Unavailable(message),
            Some(ErrorCode::ModelFailing) => ApiError::ModelFailing(message),
            _ => ApiError::JobFailed(message),
        }
    }

    /// A hive's answer to a request the queen sent it (spawn, stop, model import, pull, remove).
    pub fn from_hive(hive: &HiveId, e: BusError) -> Self {
        match e {
            BusError::NoResponders { .. } => {
                ApiError::NotFound(format!("no hive {hive} answers on nats (`rbee status` lists the hives)"))
            }
            BusError::Remote { error, .. } => {
                let message = error.error.message;
                match error.error.code {
                    ErrorCode::UnknownModel => ApiError::UnknownModel(message),
                    ErrorCode::NotFound => ApiError::NotFound(message),
                    ErrorCode::Conflict => ApiError::Conflict(message),
                    ErrorCode::ModelFailing => ApiError::ModelFailing(message),
                    ErrorCode::InvalidParams => {
                        ApiError::invalid(error.error.field.unwrap_or_default(), message)
                    }
                    ErrorCode::BadRequest
                    | ErrorCode::ModelDoesNotFit
                    | ErrorCode::MissingWorkerBinary
                    | ErrorCode::UnknownDevice => ApiError::BadRequest(message),
                    _ => ApiError::Unavailable(message),
                }
            }
            other => ApiError::Unavailable(format!("hive {hive}: {other}")),
        }
    }

    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::InvalidParams { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_params")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", "bad_request"),
            ApiError::UnknownModel(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "invalid_request_error", "conflict"),
            ApiError::PromptTooLarge(_) | ApiError::BodyTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "prompt_too_long")
            }
            ApiError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "queue_full"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "unavailable"),
            ApiError::ModelFailing(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "model_failing"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error", "admin_key_required"),
            ApiError::JobFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "job_failed"),
            ApiError::NotLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "not_leader"),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::InvalidParams { field, .. } => ApiError::InvalidParams { param: field, message },
            SubmitError::DuplicateId(_) => ApiError::invalid("job_id", message),
            SubmitError::PromptTooLarge(_) => ApiError::PromptTooLarge(message),
            SubmitError::UnknownModel(_) => ApiError::UnknownModel(message),
            SubmitError::QueueFull(_) => ApiError::QueueFull(message),
            SubmitError::ModelFailing(_) => ApiError::ModelFailing(message),
            SubmitError::NoLeader(_) => ApiError::NotLeader(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code) = self.parts();
        let param = match &self {
            ApiError::InvalidParams { param, .. } if !param.is_empty() => Some(param.clone()),
            _ => None,
        };
        let body = serde_json::json!({
            "error": { "message": self.to_string(), "type": kind, "param": param, "code": code }
        });
        let mut response = (status, axum::Json(body)).into_response();
        let retry = matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
        if retry && !matches!(self, ApiError::ModelFailing(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::BodyTooLarge(_)) {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_left_unread_closes_the_connection() {
        let response = ApiError::BodyTooLarge("over the limit".to_owned()).into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers().get(header::CONNECTION).map(|v| v.as_bytes()), Some(&b"close"[..]));
        // A prompt read to its end and found too long keeps the connection.
        let response = ApiError::PromptTooLarge("too long".to_owned()).into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(response.headers().get(header::CONNECTION).is_none());
    }
}
