//! [`ChatTemplate`]: a compiled chat template and what it can render.

use chrono::NaiveDateTime;
use minijinja::{context, Environment, Value};
use serde_json::json;

use crate::convert::{self, Caps};
use crate::env::{self, TEMPLATE_NAME};
use crate::error::TemplateError;
use crate::tools::ToolSyntax;

/// A compiled chat template plus the special tokens it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    now: Option<NaiveDateTime>,
    caps: Caps,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("caps", &self.caps)
            .field("tool_syntax", &self.tool_syntax().family)
            .finish_non_exhaustive()
    }
}

const PROBE_TEXT: &str = "rbee-probe-text";
const PROBE_TOOL: &str = "rbee_probe_tool";
const PROBE_CALL: &str = "rbee_probe_call";
const PROBE_RESULT: &str = "rbee-probe-result";

impl ChatTemplate {
    /// Compiles `source` (the GGUF's `tokenizer.chat_template`). `bos_token` and `eos_token` are
    /// token texts (e.g. `"<|im_start|>"`, `"</s>"`).
    ///
    /// Compiling also renders a few probe conversations to learn whether the template prints
    /// system messages, tools, tool calls and role `tool` messages; [`ChatTemplate::render`]
    /// rewrites what it cannot print.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        Self::build(source, bos_token, eos_token, None)
    }

    /// The same template, with `strftime_now` and `date_string` reading `now` instead of the
    /// local clock (for reproducible prompts and tests).
    pub fn with_now(self, now: NaiveDateTime) -> Result<Self, TemplateError> {
        Self::build(&self.source, &self.bos_token, &self.eos_token, Some(now))
    }

    fn build(source: &str, bos: &str, eos: &str, now: Option<NaiveDateTime>) -> Result<Self, TemplateError> {
        let env = env::build(source, now)?;
        let mut template = ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos.to_owned(),
            eos_token: eos.to_owned(),
            now,
            caps: Caps::default(),
        };
        template.caps = template.probe();
        Ok(template)
    }

    /// True when the template itself reads `tools` (so it formats tool definitions itself).
    pub fn supports_tools(&self) -> bool {
        self.caps.tools
    }

    /// True when a system message's text reaches the prompt. When not (Gemma 2 raises on it),
    /// [`ChatTemplate::render`] puts system text at the start of the next user message.
    pub fn supports_system_role(&self) -> bool {
        self.caps.system
    }

    /// True when the template prints assistant `tool_calls` and role `tool` messages itself.
    pub fn supports_tool_messages(&self) -> bool {
        self.caps.tool_calls && self.caps.tool_role
    }

    /// The tool-call syntax this model family uses, detected from the template source.
    ///
    /// A template that does not read `tools` gets the generic fallback prompt, which asks for
    /// the hermes syntax, so it is [`ToolSyntax::HERMES`] whatever the source says.
    pub fn tool_syntax(&self) -> ToolSyntax {
        if self.caps.tools {
            ToolSyntax::detect(&self.source)
        } else {
            ToolSyntax::HERMES
        }
    }

    /// The template source as compiled.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation of OpenAI-shaped `messages` with OpenAI `tools` (possibly empty).
    ///
    /// The template sees what `transformers` would give it: `messages` with string contents
    /// (null becomes `""`, text parts are joined with newlines), `function.arguments` parsed
    /// to JSON when they parse, empty `tool_calls` dropped, role `developer` read as `system`;
    /// `tools` (`none` when empty), `add_generation_prompt`, `bos_token`, `eos_token`, and
    /// `date_string` (today as `%d %b %Y`, which Llama 3.x templates print).
    ///
    /// What the template cannot print is rewritten first:
    /// * tools given but the template does not read `tools`: the generic prompt
    ///   ([`crate::GENERIC_TOOLS_PROMPT`]) is merged into the first system message (or
    ///   prepended as one), assistant `tool_calls` become `<tool_call>\n{"name": ..., "arguments":
    ///   {...}}\n</tool_call>` text in the assistant content, and each run of role `tool`
    ///   messages becomes one user message of `<tool_response>\n...\n</tool_response>` blocks;
    /// * the template reads `tools` but drops tool calls or role `tool`: those alone are rewritten so;
    /// * the template has no system role: system text goes before the next user message's, joined
    ///   by a newline.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let prepared = convert::prepare(messages, tools, &self.caps)?;
        self.render_raw(&prepared.messages, prepared.tools.as_deref(), add_generation_prompt)
    }

    /// Renders messages already in the Hugging Face shape, without any rewriting.
    pub fn render_raw(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(env::render_error)?;
        let date = env::strftime(env::now_or_local(self.now), "%d %b %Y").map_err(env::render_error)?;
        let ctx = context! {
            messages => Value::from_serialize(messages),
            tools => tools.map(Value::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            date_string => date,
        };
        template.render(ctx).map_err(env::render_error)
    }

    /// Finds what the template prints by rendering small conversations; a probe that errors counts as no.
    fn probe(&self) -> Caps {
        let prints = |messages: &[serde_json::Value], tools: Option<&[serde_json::Value]>, needle: &str| {
            self.render_raw(messages, tools, false).is_ok_and(|text| text.contains(needle))
        };
        let user = json!({"role": "user", "content": "hi"});
        let tool = json!({"type": "function", "function": {
            "name": PROBE_TOOL, "description": "probe",
            "parameters": {"type": "object", "properties": {}}}});
        // Nine characters: Mistral templates insist on it.
        let call = json!({"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function",
            "function": {"name": PROBE_CALL, "arguments": {"a": "b"}}}]});
        let result =
            json!({"role": "tool", "content": PROBE_RESULT, "tool_call_id": "call12345", "name": PROBE_CALL});
        let system = json!({"role": "system", "content": PROBE_TEXT});

        let tools_ok = prints(std::slice::from_ref(&user), Some(std::slice::from_ref(&tool)), PROBE_TOOL);
        let tools = tools_ok.then_some(std::slice::from_ref(&tool));
        let with_call = [user.clone(), call.clone()];
        let with_result = [user.clone(), call, result, json!({"role": "assistant", "content": "ok"})];
        Caps {
            system: prints(&[system, user], None, PROBE_TEXT),
            tools: tools_ok,
            tool_calls: prints(&with_call, tools, PROBE_CALL),
            tool_role: prints(&with_result, tools, PROBE_RESULT),
        }
    }
}
