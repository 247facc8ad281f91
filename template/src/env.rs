//! The minijinja environment set up like the one `transformers` renders chat templates in.

use chrono::format::{Item, StrftimeItems};
use chrono::NaiveDateTime;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use crate::error::TemplateError;
use crate::pyjson::{self, DumpOptions};

/// Name the chat template is stored under in its environment.
pub(crate) const TEMPLATE_NAME: &str = "chat_template";

/// Marks an error as coming from the template's own `raise_exception` call.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// Builds an environment holding `source`, with `now` as the clock (`None`: the local time).
pub(crate) fn build(source: &str, now: Option<NaiveDateTime>) -> Result<Environment<'static>, TemplateError> {
    let mut env = Environment::new();
    // Hugging Face renders with trim_blocks and lstrip_blocks on, and drops one trailing newline.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", move |format: &str| strftime(now_or_local(now), format));
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source.to_owned()).map_err(compile_error)?;
    Ok(env)
}

/// The time templates see.
pub(crate) fn now_or_local(now: Option<NaiveDateTime>) -> NaiveDateTime {
    now.unwrap_or_else(|| chrono::Local::now().naive_local())
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// Python's `strftime` for the usual specifiers (`%d %b %Y %B %m %H %M ...`).
pub(crate) fn strftime(now: NaiveDateTime, format: &str) -> Result<String, Error> {
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format `{format}`"),
        ));
    }
    Ok(now.format_with_items(items.into_iter()).to_string())
}

/// `tojson` as in `transformers`: `json.dumps(value, ensure_ascii=False, indent=..., ...)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let separators = match separators.as_deref() {
        None => None,
        Some([item, key]) => Some((item.clone(), key.clone())),
        Some(_) => {
            return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings"));
        }
    };
    let json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: value is not JSON: {e}")))?;
    let options = DumpOptions {
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
        separators,
    };
    Ok(Value::from(pyjson::dumps_with(&json, &options)))
}

fn compile_error(error: Error) -> TemplateError {
    TemplateError::Compile { line: error.line(), message: describe(&error) }
}

/// Turns a rendering error into a [`TemplateError`], recognising `raise_exception`.
pub(crate) fn render_error(error: Error) -> TemplateError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return TemplateError::Raised(raised.0.clone());
        }
        cause = e.source();
    }
    if error.kind() == ErrorKind::SyntaxError {
        return compile_error(error);
    }
    TemplateError::Render { line: error.line(), message: describe(&error) }
}

fn describe(error: &Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_and_rejects() {
        let now = chrono::NaiveDate::from_ymd_opt(2025, 3, 4)
            .and_then(|d| d.and_hms_opt(9, 5, 0))
            .expect("valid date");
        assert_eq!(strftime(now, "%d %b %Y").expect("format"), "04 Mar 2025");
        assert_eq!(strftime(now, "%B %m %H:%M").expect("format"), "March 03 09:05");
        assert!(strftime(now, "%Q").is_err());
    }
}
