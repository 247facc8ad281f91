//! Errors of compiling and rendering a chat template, and of parsing tool calls.

use thiserror::Error;

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// The template source is not valid Jinja.
    #[error("chat template does not compile{}: {message}", at_line(*line))]
    Compile {
        /// 1-based line of the template where the error was found, when known.
        line: Option<usize>,
        /// What the parser complained about.
        message: String,
    },
    /// The template itself called `raise_exception(message)`, usually because it rejects the conversation.
    #[error("chat template raised an exception: {0}")]
    Raised(String),
    /// Rendering failed for another reason (a type error, an unknown filter, ...).
    #[error("chat template failed to render{}: {message}", at_line(*line))]
    Render {
        /// 1-based line of the template where rendering failed, when known.
        line: Option<usize>,
        /// What went wrong.
        message: String,
    },
    /// A message has a role other than system, developer, user, assistant or tool.
    #[error("message {index} has unknown role `{role}` (expected system, user, assistant or tool)")]
    UnknownRole {
        /// Position of the message in the conversation.
        index: usize,
        /// The role it had.
        role: String,
    },
    /// A message is not shaped like an OpenAI chat message.
    #[error("message {index} is invalid: {reason}")]
    BadMessage {
        /// Position of the message in the conversation.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A tool definition is not shaped like an OpenAI tool.
    #[error("tool {index} is invalid: {reason}")]
    BadTool {
        /// Position of the tool in the list.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

/// Why the text of a tool call could not be read as calls.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ToolParseError {
    /// There was no JSON after the opener.
    #[error("tool call is empty")]
    Empty,
    /// The text is not valid JSON (or has text after the JSON).
    #[error("tool call is not valid JSON: {0}")]
    Json(String),
    /// The JSON is not an object with a string `name`.
    #[error("tool call has no string `name`: {0}")]
    NoName(String),
    /// The arguments are a string that is not JSON.
    #[error("arguments of tool call `{name}` are not JSON: {message}")]
    BadArguments {
        /// Name of the called tool.
        name: String,
        /// What the JSON parser said.
        message: String,
    },
}
