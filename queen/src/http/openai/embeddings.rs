//! `POST /v1/embeddings`: OpenAI's request read strictly (`input` a string or a list of strings,
//! `encoding_format` float or base64, `dimensions` only the model's own, `user` logged; anything else
//! refused by name), carried out by [`crate::embed`], answered in OpenAI's shape.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use rbee_bus::{EmbedRequest, SCHEMA_VERSION};
use serde::Deserialize;
use serde_json::{json, Value};

use super::request::{model_id, refuse_unknown};
use crate::embed::{embed, EmbedFailure};
use crate::error::ApiError;
use crate::http::JsonBody;
use crate::Queen;

/// The body of `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
    user: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// `input` as texts: a string or a list of strings (token-id inputs are refused).
fn texts(input: Option<Value>) -> Result<Vec<String>, ApiError> {
    let refuse = |m: &str| ApiError::invalid("input", m.to_owned());
    match input {
        None | Some(Value::Null) => Err(refuse("is required")),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => {
                    Err(refuse("token-id inputs are not supported by rbee: send the text"))
                }
                _ => Err(refuse("must be a string or a list of strings")),
            })
            .collect(),
        Some(_) => Err(refuse("must be a string or a list of strings")),
    }
}

/// A vector as OpenAI's base64: the little-endian bytes of its f32s.
fn base64_vector(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl From<EmbedFailure> for ApiError {
    fn from(e: EmbedFailure) -> Self {
        let message = e.to_string();
        match e {
            EmbedFailure::Invalid { field, .. } => ApiError::invalid(field, message),
            EmbedFailure::UnknownModel(_) => ApiError::UnknownModel(message),
            EmbedFailure::Unavailable(_) => ApiError::Unavailable(message),
            EmbedFailure::Failed(_) => ApiError::JobFailed(message),
        }
    }
}

async fn answer(queen: &Arc<Queen>, req: EmbeddingsRequest) -> Result<Value, ApiError> {
    refuse_unknown(&req.other)?;
    let model = req.model.ok_or_else(|| ApiError::invalid("model", "is required".to_owned()))?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format {other:?} is not float or base64"),
            ));
        }
    };
    if let Some(user) = &req.user {
        tracing::debug!(user = %user, "embeddings request");
    }
    let request = EmbedRequest { v: SCHEMA_VERSION, model_id: model_id(&model)?, inputs: texts(req.input)? };
    let reply = embed(queen, request).await?;
    if let Some(d) = req.dimensions.filter(|d| *d != reply.dimensions) {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "dimensions {d} differs from the model's {}: rbee does not shorten embeddings",
                reply.dimensions
            ),
        ));
    }
    let data: Vec<Value> = reply
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 { Value::String(base64_vector(v)) } else { json!(v) };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens},
    }))
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Response {
    match answer(&queen, req).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{base64_vector, texts};

    #[test]
    fn input_is_a_string_or_strings() {
        assert_eq!(texts(Some(json!("a"))).ok(), Some(vec!["a".to_owned()]));
        assert_eq!(texts(Some(json!(["a", "b"]))).ok(), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert!(texts(Some(json!([1, 2]))).is_err());
        assert!(texts(Some(json!({"a": 1}))).is_err());
        assert!(texts(None).is_err());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 is 0x3f800000: bytes 00 00 80 3f.
        assert_eq!(base64_vector(&[1.0]), "AACAPw==");
    }
}
