//! `POST /api/pull`: rbee's pull under Ollama's names and progress lines. Ollama pulls GGUF files from
//! Hugging Face as `hf.co/ORG/REPO:QUANT`; rbee takes those (and `huggingface.co/...`, and its own
//! `hf:` references), and refuses Ollama-library names, which have no GGUF to fetch outside Ollama's
//! registry. Progress comes as NDJSON: `{"status":"pulling manifest"}`, then `{"status":"downloading",
//! "digest","total","completed"}` lines, then `{"status":"success","model":ID}`, or `{"error": ...}`;
//! with `stream: false`, only the last. An administrative route: with an admin key set, it needs it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, OllamaError};
use crate::error::ApiError;
use crate::http::models::{start_pull, PullStep};
use crate::Queen;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullBody {
    #[serde(alias = "name")]
    model: String,
    #[serde(default)]
    insecure: bool,
    stream: Option<bool>,
}

/// The hub reference of an Ollama model name, or why there is none.
fn hub_reference(name: &str) -> Result<String, ApiError> {
    for prefix in ["hf.co/", "huggingface.co/", "https://hf.co/", "https://huggingface.co/"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return Ok(format!("hf:{rest}"));
        }
    }
    if name.starts_with("hf:") {
        return Ok(name.to_owned());
    }
    Err(ApiError::invalid(
        "model",
        format!(
            "{name:?} is a name in Ollama's own library, which rbee cannot fetch: name a GGUF on Hugging \
             Face as hf.co/ORG/REPO:QUANT (as `ollama pull` takes them)"
        ),
    ))
}

fn line(step: &PullStep) -> Value {
    match step {
        PullStep::Progress { downloaded, total } => {
            json!({"status": "downloading", "total": total, "completed": downloaded})
        }
        PullStep::Done(model) => json!({"status": "success", "model": model["model_id"]}),
        PullStep::Failed { message, .. } => json!({"error": message}),
    }
}

/// `POST /api/pull`
pub async fn pull(State(queen): State<Arc<Queen>>, bytes: Bytes) -> Result<Response, OllamaError> {
    let req: PullBody = body(&bytes)?;
    if req.insecure {
        return Err(ApiError::invalid("insecure", "rbee checks every download's TLS".to_owned()).into());
    }
    let url = hub_reference(&req.model)?;
    let (model, steps) = start_pull(&queen, None, url, None, None).await?;
    if req.stream == Some(false) {
        let mut steps = Box::pin(steps);
        while let Some(step) = steps.next().await {
            match step {
                PullStep::Progress { .. } => {}
                PullStep::Done(_) => return Ok(Json(line(&step)).into_response()),
                PullStep::Failed { message, .. } => return Err(ApiError::Unavailable(message).into()),
            }
        }
        return Err(ApiError::Unavailable(format!("the pull of {model} ended without a word")).into());
    }
    let first = futures::stream::once(std::future::ready(json!({"status": "pulling manifest"})));
    let digest = model.to_string();
    let lines = first.chain(steps.map(move |step| {
        let mut l = line(&step);
        if matches!(step, PullStep::Progress { .. }) {
            l["digest"] = json!(digest);
        }
        l
    }));
    let body = lines.map(|l| Ok::<_, std::convert::Infallible>(format!("{l}\n")));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ollama_hub_names_become_hub_references() {
        assert_eq!(super::hub_reference("hf.co/org/repo:Q4_K_M").ok().as_deref(), Some("hf:org/repo:Q4_K_M"));
        assert_eq!(super::hub_reference("huggingface.co/org/repo").ok().as_deref(), Some("hf:org/repo"));
        assert_eq!(super::hub_reference("hf:org/repo:Q8_0").ok().as_deref(), Some("hf:org/repo:Q8_0"));
        let refused = super::hub_reference("llama3.2:1b").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("hf.co/ORG/REPO:QUANT"), "{refused}");
    }
}
