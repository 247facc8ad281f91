//! Output constraints as llama.cpp grammars (GBNF): `response_format` (any JSON object, or JSON valid
//! against a schema) and tool calls (`tool_choice` `required` or a named function hold the whole reply
//! to calls of the tools' schemas; `auto` gets a lazy grammar that starts holding the reply once the
//! model writes its family's call opener). Schemas go through llama.cpp's own JSON-Schema converter.
//!
//! Sampling with a grammar ([`ConstrainedSampler`]) is llama.cpp's server's fast path: sample as if
//! there were no grammar, keep the token when the grammar accepts it, and only when it does not apply
//! the grammar to the whole vocabulary and sample again. Most tokens of a well-prompted reply pass, so
//! a constrained slot costs about what a free one does.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use rbee_bus::{ParamError, ResponseFormat, SamplingParams, ToolChoice, ToolDef};
use rbee_template::ToolSyntax;

/// The name the converted call rule gets (its `root` renamed), so that it can be wrapped.
const CALL_RULE: &str = "tool-call";

/// A grammar a job's reply is held to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Constraint {
    /// GBNF whose start rule is `root`.
    pub(crate) grammar: String,
    /// Lazy: the grammar applies from this text on (the text included); before it, the reply is free.
    pub(crate) trigger: Option<String>,
}

fn invalid(field: &'static str, message: String) -> ParamError {
    ParamError { field, message }
}

/// The grammar of `schema` (JSON text), or a clear error naming the part the converter cannot express.
fn schema_grammar(field: &'static str, schema: &str) -> Result<String, ParamError> {
    let cannot =
        |what: String| invalid(field, format!("the JSON Schema cannot be turned into a grammar: {what}"));
    let value: serde_json::Value = serde_json::from_str(schema).map_err(|e| cannot(e.to_string()))?;
    if let Some((at, why)) = rbee_bus::schema_lint::first_problem(&value) {
        let at = if at.is_empty() { "the schema".to_owned() } else { at };
        return Err(cannot(format!("{at}: {why}")));
    }
    // What the lint does not know the converter may still refuse; it says only that it failed.
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
        cannot(format!(
            "llama.cpp's converter refused it ({e}); supported: type, properties, required, \
             additionalProperties, items, prefixItems, enum, const, anyOf/oneOf/allOf, local $refs, \
             minItems/maxItems, minLength/maxLength, minimum/maximum, pattern, format date/time/uuid"
        ))
    })
}

/// Points every local `$ref` of `schema` (written against its own root) at the same place under
/// `prefix`, a JSON pointer to where `schema` sits in the schema that wraps it.
fn rebase_refs(schema: &mut serde_json::Value, prefix: &str) {
    match schema {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_json::Value::String(r) if key == "$ref" && r.starts_with('#') => {
                        *r = format!("#{prefix}{}", &r[1..]);
                    }
                    other => rebase_refs(other, prefix),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| rebase_refs(v, prefix)),
        _ => {}
    }
}

/// The JSON Schema (as text, keys in the order written) of one call of `tool`; `at` is the JSON
/// pointer of the call schema in the schema of all calls (empty, or `/anyOf/<i>`).
fn call_schema(tool: &ToolDef, syntax: &ToolSyntax, at: &str) -> Result<String, ParamError> {
    let name = serde_json::to_string(&tool.name).map_err(|e| invalid("tools", e.to_string()))?;
    let args = match &tool.parameters {
        Some(p) => {
            // The parameters' own `$defs` stay where they are; their references follow them.
            let mut p = p.clone();
            rebase_refs(
                &mut p,
                &format!("{at}/properties/{}", syntax.arguments_key.replace('~', "~0").replace('/', "~1")),
            );
            serde_json::to_string(&p).map_err(|e| invalid("tools", e.to_string()))?
        }
        None => r#"{"type":"object"}"#.to_owned(),
    };
    let key = serde_json::to_string(syntax.arguments_key).map_err(|e| invalid("tools", e.to_string()))?;
    Ok(format!(
        r#"{{"type":"object","properties":{{"name":{{"const":{name}}},{key}:{args}}},"required":["name",{key}],"additionalProperties":false}}"#
    ))
}

/// Renames the start rule of a converted grammar, so that another `root` can wrap it.
fn rename_root(grammar: &str, to: &str) -> String {
    grammar
        .lines()
        .map(|line| match line.strip_prefix("root ::=") {
            Some(rest) => format!("{to} ::={rest}"),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A GBNF string literal.
fn literal(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The grammar of a reply made of calls of `tools` in `syntax`: one call, or with `parallel` one or
/// more.
fn calls_grammar(tools: &[&ToolDef], syntax: &ToolSyntax, parallel: bool) -> Result<String, ParamError> {
    let single = tools.len() == 1;
    let alternatives = tools
        .iter()
        .enumerate()
        .map(|(i, t)| call_schema(t, syntax, &if single { String::new() } else { format!("/anyOf/{i}") }))
        .collect::<Result<Vec<_>, _>>()?;
    let schema = if alternatives.len() == 1 {
        alternatives.into_iter().next().unwrap_or_default()
    } else {
        format!(r#"{{"anyOf":[{}]}}"#, alternatives.join(","))
    };
    let call = rename_root(&schema_grammar("tools", &schema)?, CALL_RULE);
    let opener = literal(syntax.opener);
    let root = if syntax.list {
        let more = if parallel { format!(" (\",\" ws {CALL_RULE})*") } else { String::new() };
        format!("root ::= {opener} ws \"[\" ws {CALL_RULE}{more} ws \"]\"")
    } else {
        let block = match syntax.closer {
            Some(closer) => format!("{opener} \"\\n\"? {CALL_RULE} \"\\n\"? {}", literal(closer)),
            None => format!("{opener} {CALL_RULE}"),
        };
        // The opener may be the start of the call's JSON itself (llama 3's `{"`): then the block is
        // the JSON alone.
        let block = if syntax.opener_in_body { CALL_RULE.to_owned() } else { block };
        if parallel && syntax.closer.is_some() {
            format!("root ::= call-block (ws call-block)*\ncall-block ::= {block}")
        } else {
            format!("root ::= {block}")
        }
    };
    // `ws` comes with every converted grammar; define it only when the converter did not.
    let ws = if call.lines().any(|l| l.starts_with("ws ::=")) { "" } else { "\nws ::= [ \\t\\n]*" };
    Ok(format!("{root}\n{call}{ws}"))
}

/// The constraint a job's params ask for, if any; `tools` are the tools the model may call and its
/// family's syntax (none when it may not call any). Params must be validated
/// ([`SamplingParams::validate_for`]).
pub(crate) fn for_job(
    params: &SamplingParams,
    tools: Option<(&[ToolDef], &ToolSyntax)>,
) -> Result<Option<Constraint>, ParamError> {
    if let Some((tools, syntax)) = tools.filter(|(t, _)| !t.is_empty()) {
        let all: Vec<&ToolDef> = tools.iter().collect();
        return match &params.tool_choice {
            ToolChoice::None => Ok(None),
            ToolChoice::Required => Ok(Some(Constraint {
                grammar: calls_grammar(&all, syntax, params.parallel_tool_calls)?,
                trigger: None,
            })),
            ToolChoice::Function { name } => {
                let named: Vec<&ToolDef> = tools.iter().filter(|t| &t.name == name).collect();
                Ok(Some(Constraint { grammar: calls_grammar(&named, syntax, false)?, trigger: None }))
            }
            ToolChoice::Auto => Ok(Some(Constraint {
                grammar: calls_grammar(&all, syntax, params.parallel_tool_calls)?,
                trigger: Some(syntax.opener.to_owned()),
            })),
        };
    }
    match &params.response_format {
        ResponseFormat::Text => Ok(None),
        ResponseFormat::JsonObject => Ok(Some(Constraint {
            grammar: schema_grammar("response_format", r#"{"type":"object"}"#)?,
            trigger: None,
        })),
        ResponseFormat::JsonSchema { schema, .. } => {
            let text =
                serde_json::to_string(schema).map_err(|e| invalid("response_format", e.to_string()))?;
            Ok(Some(Constraint { grammar: schema_grammar("response_format", &text)?, trigger: None }))
        }
    }
}

/// A sampler chain plus an optional grammar, sampled the fast way (see the module docs).
pub(crate) struct ConstrainedSampler {
    chain: LlamaSampler,
    grammar: Option<LlamaSampler>,
}

impl ConstrainedSampler {
    /// The chain alone, or the chain held to `constraint` (compiled for `model`'s vocabulary).
    pub(crate) fn new(
        chain: LlamaSampler,
        model: &LlamaModel,
        constraint: Option<&Constraint>,
    ) -> Result<Self, ParamError> {
        let grammar =
            match constraint {
                None => None,
                Some(c) => {
                    let built = match &c.trigger {
                        None => LlamaSampler::grammar(model, &c.grammar, "root"),
                        Some(word) => {
                            LlamaSampler::grammar_lazy(model, &c.grammar, "root", [word.as_bytes()], &[])
                        }
                    };
                    Some(built.map_err(|e| {
                        invalid("response_format", format!("the grammar does not compile: {e}"))
                    })?)
                }
            };
        Ok(Self { chain, grammar })
    }

    /// Has the chain take tokens generated before (a resumed job's), as if sampled here; only for a
    /// job without a grammar (whose state could not take tokens it did not choose).
    pub(crate) fn accept_resumed(&mut self, tokens: &[LlamaToken]) {
        if self.grammar.is_none() {
            for &token in tokens {
                self.chain.accept(token);
            }
        }
    }

    /// Samples the token at batch index `idx`; both samplers have accepted it on return.
    pub(crate) fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        let Some(grammar) = self.grammar.as_mut() else {
            return self.chain.sample(ctx, idx);
        };
        // Fast path: the free choice, if the grammar allows it. `sample` has the chain accept it, so
        // the chain's state is only advanced here once the token is final.
        let logits = ctx.get_logits_ith(idx);
        let mut free = LlamaTokenDataArray::from_iter(ctx.candidates_ith(idx), false);
        self.chain.apply(&mut free);
        if let Some(token) = free.selected_token() {
            let logit = usize::try_from(token.0).ok().and_then(|i| logits.get(i)).copied().unwrap_or(0.0);
            let mut single = LlamaTokenDataArray::new(
                vec![llama_cpp_2::token::data::LlamaTokenData::new(token, logit, 0.0)],
                false,
            );
            grammar.apply(&mut single);
            if single.data.first().is_some_and(|d| d.logit().is_finite()) {
                grammar.accept(token);
                self.chain.accept(token);
                return token;
            }
        }
        // Slow path: mask the vocabulary by the grammar, then let the chain choose among the rest.
        let mut all = LlamaTokenDataArray::from_iter(ctx.candidates_ith(idx), false);
        grammar.apply(&mut all);
        self.chain.apply(&mut all);
        let token = all.selected_token().unwrap_or_else(|| {
            // The chain always selects (it ends in greedy or dist); if it did not, take the best allowed.
            all.data.iter().max_by(|a, b| a.logit().total_cmp(&b.logit())).map_or(LlamaToken(0), |d| d.id())
        });
        grammar.accept(token);
        self.chain.accept(token);
        token
    }
}

#[cfg(test)]
mod tests {
    use super::{literal, rename_root};

    #[test]
    fn literals_escape_what_gbnf_needs() {
        assert_eq!(literal("<tool_call>\n"), r#""<tool_call>\n""#);
        assert_eq!(literal(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn tool_parameters_with_defs_convert_inside_the_call_schema() {
        let params = serde_json::json!({
            "type": "object",
            "properties": {"where": {"$ref": "#/$defs/place"}},
            "required": ["where"],
            "$defs": {"place": {"type": "object", "properties": {"city": {"type": "string"}}}}
        });
        let tool = |name: &str| rbee_bus::ToolDef {
            name: name.into(),
            description: None,
            parameters: Some(params.clone()),
        };
        let (a, b) = (tool("a"), tool("b"));
        for tools in [vec![&a], vec![&a, &b]] {
            let grammar = super::calls_grammar(&tools, &rbee_template::ToolSyntax::HERMES, true);
            assert!(grammar.is_ok(), "{} tools: {grammar:?}", tools.len());
        }
    }

    /// The lint and llama.cpp's converter agree: what the lint passes converts, what it flags fails.
    #[test]
    fn the_schema_lint_agrees_with_the_converter() {
        use rbee_bus::schema_lint::first_problem;
        use serde_json::json;
        let good = json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}, "b": {"type": "string", "pattern": "^[a-z]+$"}}, "$defs": {"x": {"type": "integer"}}});
        assert_eq!(first_problem(&good), None);
        assert!(llama_cpp_2::json_schema_to_grammar(&good.to_string()).is_ok());
        for bad in [
            json!({"properties": {"a": {"$ref": "#/$defs/missing"}}}),
            json!({"properties": {"a": {"type": "strin"}}}),
        ] {
            assert!(first_problem(&bad).is_some(), "{bad}");
            assert!(
                llama_cpp_2::json_schema_to_grammar(&bad.to_string()).is_err(),
                "the converter took {bad}"
            );
        }
    }

    #[test]
    fn only_the_start_rule_is_renamed() {
        let g = "root ::= object\nobject ::= \"{\" ws \"}\"\nroots ::= \"x\"";
        assert_eq!(rename_root(g, "call"), "call ::= object\nobject ::= \"{\" ws \"}\"\nroots ::= \"x\"");
    }
}
