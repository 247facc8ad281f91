//! Chat templates for rbee: renders the Hugging Face Jinja chat template that a GGUF file stores
//! as `tokenizer.chat_template` into the prompt text a model expects, the way `transformers`
//! does (trim/lstrip blocks, Python string methods, `raise_exception`, `strftime_now`, a
//! Python-style `tojson`), and knows how the common model families (hermes/Qwen, Llama 3,
//! Mistral) write tool calls, so replies can be split into text and calls. Templates that know
//! nothing of tools get a documented generic tool prompt instead. Pure Rust, no llama.cpp.
//!
//! ```
//! use rbee_template::ChatTemplate;
//! use serde_json::json;
//!
//! let source = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
//!               {% if add_generation_prompt %}<|assistant|>{% endif %}";
//! let template = ChatTemplate::new(source, "<s>", "</s>")?;
//! let prompt = template.render(&[json!({"role": "user", "content": "Hi"})], &[], true)?;
//! assert_eq!(prompt, "<|user|>Hi\n<|assistant|>");
//!
//! let reply = template.tool_syntax().split_reply(
//!     "Checking.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
//! );
//! assert_eq!(reply.content, "Checking.");
//! assert_eq!(reply.calls[0].name, "weather");
//! # Ok::<(), rbee_template::TemplateError>(())
//! ```

mod convert;
mod env;
mod error;
mod pyjson;
mod template;
mod tools;

pub use convert::GENERIC_TOOLS_PROMPT;
pub use error::{TemplateError, ToolParseError};
pub use template::ChatTemplate;
pub use tools::{ParsedCall, ParsedReply, ToolSyntax};
