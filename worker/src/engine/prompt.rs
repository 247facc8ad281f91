//! Prompt rendering and tokenization. A chat is rendered by the model's own Jinja chat template (the
//! GGUF's `tokenizer.chat_template`, through [`rbee_template`]), tools and tool turns included; a
//! template that does not compile falls back to llama.cpp's built-in template matcher, which knows no
//! tools (a chat with tools is then refused).

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use rbee_bus::{ChatMessage, Prompt, Resume, ToolDef};
use rbee_template::{ChatTemplate, ToolSyntax};
use serde_json::{json, Value};

use super::SubmitError;

/// How this model's chats are rendered.
pub(crate) enum ChatRenderer {
    /// The GGUF's own template.
    Jinja(Box<ChatTemplate>),
    /// llama.cpp's built-in matcher (the template did not compile).
    Builtin(LlamaChatTemplate),
    /// The GGUF has no chat template: chats are refused.
    None,
}

impl ChatRenderer {
    /// The renderer for `model`: its Jinja template, else llama.cpp's matcher, else none.
    pub(crate) fn for_model(model: &LlamaModel) -> Self {
        let Ok(source) = model.meta_val_str("tokenizer.chat_template") else {
            return match model.chat_template(None) {
                Ok(t) => ChatRenderer::Builtin(t),
                Err(_) => ChatRenderer::None,
            };
        };
        let vocab = model.vocab();
        let text = |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        match ChatTemplate::new(&source, &text(vocab.bos()), &text(vocab.eos())) {
            Ok(t) => ChatRenderer::Jinja(Box::new(t)),
            Err(e) => {
                tracing::warn!(error = %e, "the model's chat template does not compile; using llama.cpp's built-in matcher (no tools)");
                match model.chat_template(None) {
                    Ok(t) => ChatRenderer::Builtin(t),
                    Err(_) => ChatRenderer::None,
                }
            }
        }
    }

    /// How this model writes tool calls (the generic syntax when its template knows none).
    pub(crate) fn tool_syntax(&self) -> Option<ToolSyntax> {
        match self {
            ChatRenderer::Jinja(t) => Some(t.tool_syntax()),
            _ => None,
        }
    }
}

/// A message as OpenAI writes it (what [`rbee_template`] takes).
fn message_json(m: &ChatMessage) -> Value {
    let mut v = json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        if m.content.is_empty() {
            v["content"] = Value::Null;
        }
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = id.as_str().into();
    }
    if let Some(name) = &m.name {
        v["name"] = name.as_str().into();
    }
    v
}

/// A tool as OpenAI writes it.
fn tool_json(t: &ToolDef) -> Value {
    let mut function = json!({"name": t.name});
    if let Some(d) = &t.description {
        function["description"] = d.as_str().into();
    }
    function["parameters"] =
        t.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    json!({"type": "function", "function": function})
}

/// Renders `prompt` to the text the model reads: chats through the chat template with the assistant
/// turn opened, plain text as is.
pub(crate) fn render(
    model: &LlamaModel,
    renderer: &ChatRenderer,
    prompt: &Prompt,
) -> Result<String, SubmitError> {
    let (messages, tools) = match prompt {
        Prompt::Text { text } => return Ok(text.clone()),
        Prompt::Chat { messages, tools } => (messages, tools),
    };
    if messages.is_empty() {
        return Err(SubmitError::Template("the chat has no messages".to_owned()));
    }
    match renderer {
        ChatRenderer::None => Err(SubmitError::Template("the model has no chat template".to_owned())),
        ChatRenderer::Jinja(template) => {
            let messages: Vec<Value> = messages.iter().map(message_json).collect();
            let tools: Vec<Value> = tools.iter().map(tool_json).collect();
            template.render(&messages, &tools, true).map_err(|e| SubmitError::Template(e.to_string()))
        }
        ChatRenderer::Builtin(template) => {
            if !tools.is_empty() || messages.iter().any(|m| !m.tool_calls.is_empty() || m.role == "tool") {
                return Err(SubmitError::Template(
                    "this model's chat template does not compile, and llama.cpp's built-in fallback knows no tools"
                        .to_owned(),
                ));
            }
            let chat = messages
                .iter()
                .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SubmitError::Template(format!("invalid chat message: {e}")))?;
            model
                .apply_chat_template(template, &chat, true)
                .map_err(|e| SubmitError::Template(format!("the chat template failed: {e}")))
        }
    }
}

/// Tokenizes rendered prompt text: BOS/EOS added as the model asks, special tokens parsed (chat
/// templates are made of them). A BOS doubled by a template that writes its own is removed.
pub(crate) fn tokenize(model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize(text.as_bytes(), true, true);
    let bos = vocab.bos();
    if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
        tokens.remove(0);
    }
    tokens
}

/// The tokens of what earlier attempts of a job generated ([`Resume`]), to decode after the prompt:
/// the longest run of its token ids (when they are ids of this vocabulary) whose text is a prefix of
/// the streamed text, then the rest of the text tokenized as plain text (no BOS, no special tokens).
pub(crate) fn resume_tokens(model: &LlamaModel, resume: &Resume) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let n_vocab = u32::try_from(vocab.n_tokens()).unwrap_or(0);
    let text = resume.text.as_bytes();
    let mut tokens = Vec::with_capacity(resume.token_ids.len());
    let mut covered = 0;
    for &id in &resume.token_ids {
        let Ok(raw) = i32::try_from(id) else { break };
        if id >= n_vocab {
            break;
        }
        let token = LlamaToken(raw);
        if vocab.is_eog(token) {
            break;
        }
        let piece = vocab.token_to_piece(token, false, None);
        if !text[covered..].starts_with(&piece) {
            break;
        }
        covered += piece.len();
        tokens.push(token);
    }
    if covered < text.len() {
        tokens.extend(vocab.tokenize(&text[covered..], false, false));
    }
    tokens
}
