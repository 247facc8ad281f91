//! The Jinja environment offers what Hugging Face templates use.

use chrono::NaiveDate;
use rbee_template::{ChatTemplate, TemplateError};
use serde_json::json;

fn render(source: &str, messages: &[serde_json::Value]) -> Result<String, TemplateError> {
    ChatTemplate::new(source, "<s>", "</s>")?.render(messages, &[], true)
}

fn user(content: &str) -> serde_json::Value {
    json!({"role": "user", "content": content})
}

#[test]
fn strftime_now_and_date_string_follow_the_injected_clock() {
    let now = NaiveDate::from_ymd_opt(2024, 12, 1).and_then(|d| d.and_hms_opt(7, 8, 0)).expect("date");
    let t = ChatTemplate::new("{{ strftime_now('%d %b %Y|%B %m %H:%M') }}|{{ date_string }}", "", "")
        .expect("compile")
        .with_now(now)
        .expect("clock");
    assert_eq!(t.render(&[], &[], false).expect("render"), "01 Dec 2024|December 12 07:08|01 Dec 2024");
    let bad = ChatTemplate::new("{{ strftime_now('%Q') }}", "", "").expect("compile");
    let err = bad.render(&[], &[], false).expect_err("bad format");
    assert!(err.to_string().contains("strftime_now: unsupported format `%Q`"), "{err}");
}

#[test]
fn tojson_matches_python_json_dumps() {
    let source = "{{ messages[0] | tojson }}\n{{ messages[0] | tojson(indent=2) }}\n\
                  {{ messages[0] | tojson(ensure_ascii=true, sort_keys=true, separators=[',', ':']) }}";
    let out = render(source, &[json!({"role": "user", "content": "café <b>"})]).expect("render");
    assert_eq!(
        out,
        "{\"role\": \"user\", \"content\": \"café <b>\"}\n{\n  \"role\": \"user\",\n  \"content\": \"café <b>\"\n}\n\
         {\"content\":\"caf\\u00e9 <b>\",\"role\":\"user\"}"
    );
}

#[test]
fn python_string_and_dict_methods() {
    let source = "{% set c = messages[0].content %}{{ c.strip().upper() }}|{{ c.startswith('  a') }}|\
                  {{ c.split(',') | length }}|{{ c.lstrip().replace('a', 'A') }}|\
                  {% for k, v in messages[0].items() %}{{ k }}={{ v | trim }};{% endfor %}";
    assert_eq!(
        render(source, &[user("  a,b  ")]).expect("render"),
        "A,B|True|2|A,b  |role=user;content=a,b;"
    );
}

#[test]
fn namespace_loop_controls_and_loop_variables() {
    let source = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}\
                  {% if loop.index > 3 %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{{ loop.first }}{{ loop.last }},\
                  {% endfor %}{{ ns.n }}";
    let messages: Vec<_> = ["a", "b", "c", "d"].into_iter().map(user).collect();
    assert_eq!(render(source, &messages).expect("render"), "TrueFalse,FalseFalse,2");
}

#[test]
fn trim_and_lstrip_blocks_like_hugging_face() {
    let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
    assert_eq!(render(source, &[user("a"), user("b")]).expect("render"), "[a]\n[b]\n");
}

#[test]
fn special_tokens_and_generation_flag() {
    let out = render("{{ bos_token }}{{ add_generation_prompt }}{{ eos_token }}{{ tools is none }}", &[])
        .expect("render");
    // Booleans print the Python way, as in Jinja2.
    assert_eq!(out, "<s>True</s>True");
}

#[test]
fn chat_template_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}
