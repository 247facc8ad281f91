//! Prompt rendering (the model's own chat template) and tokenization.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use rbee_bus::Prompt;

use super::SubmitError;

/// Renders `prompt` to the text the model reads: chats through the GGUF's chat template with the
/// assistant turn opened, plain text as is.
pub(crate) fn render(
    model: &LlamaModel,
    template: Option<&LlamaChatTemplate>,
    prompt: &Prompt,
) -> Result<String, SubmitError> {
    match prompt {
        Prompt::Text { text } => Ok(text.clone()),
        Prompt::Chat { messages } => {
            let template =
                template.ok_or_else(|| SubmitError::Template("the model has no chat template".to_owned()))?;
            if messages.is_empty() {
                return Err(SubmitError::Template("the chat has no messages".to_owned()));
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
