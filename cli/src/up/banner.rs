//! What `rbee up` prints once the cluster serves: where the API is, where the logs are, and examples to
//! copy (curl, the OpenAI Python client, `rbee infer`, `rbee watch`). The API key is never printed:
//! the examples read it from `$RBEE_API_KEY`.

use std::path::PathBuf;

use crate::render::Style;

/// What is up.
#[derive(Debug)]
pub struct Ready {
    /// `http://127.0.0.1:7833`
    pub api: String,
    /// True when the queen is on the default port (the examples need no `--queen`).
    pub default_port: bool,
    /// The NATS server.
    pub nats_url: String,
    /// True when `rbee up` did not start NATS itself.
    pub external_nats: bool,
    /// The model served.
    pub model: String,
    /// The worker started, and its device.
    pub worker: Option<(String, String)>,
    /// The log directory.
    pub logs: PathBuf,
    /// Whether an API key is configured.
    pub api_key_set: bool,
    /// Secure mode: where the generated API key is.
    pub api_key_file: Option<PathBuf>,
    /// How to run this `rbee` from another shell (`rbee`, or its absolute path when PATH lacks it).
    pub rbee: String,
}

/// Prints the banner on stdout.
pub fn print(ready: &Ready) -> anyhow::Result<()> {
    let style = Style::stdout();
    let model = &ready.model;
    let prompt = "What is the capital of France? Answer in one sentence.";
    outln!();
    outln!("{}", style.green(style.bold("rbee is up")));
    outln!("  api      {}/v1  (OpenAI-compatible), {}/api  (Ollama-compatible)", ready.api, ready.api);
    outln!("  web      {}/  (the dashboard)", ready.api);
    let nats_note = if ready.external_nats { " (existing server)" } else { "" };
    outln!("  nats     {}{nats_note}", rbee_bus::connect::redact_url(&ready.nats_url));
    match &ready.worker {
        Some((id, device)) => outln!("  worker   {id} serving {model} on {device}"),
        None => outln!("  worker   none (--no-worker): `rbee workers spawn {model}`"),
    }
    outln!("  logs     {}/{{nats,queen,hive}}.log", ready.logs.display());
    if let Some(file) = &ready.api_key_file {
        outln!("  secure   TLS to nats, one identity per process, API key required");
        outln!(
            "           export RBEE_API_KEY=$(cat {})   (rbee commands find it by themselves)",
            file.display()
        );
    }
    outln!();
    outln!("{}", style.bold("try it"));
    let auth = if ready.api_key_set { " -H \"Authorization: Bearer $RBEE_API_KEY\"" } else { "" };
    outln!("  curl -s {}/v1/chat/completions -H 'content-type: application/json'{auth} \\", ready.api);
    outln!(
        "    -d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"{prompt}\"}}]}}'"
    );
    outln!();
    let api_key = if ready.api_key_set { "os.environ[\"RBEE_API_KEY\"]" } else { "\"unused\"" };
    if ready.api_key_set {
        outln!("  import os");
    }
    outln!("  from openai import OpenAI");
    outln!("  client = OpenAI(base_url=\"{}/v1\", api_key={api_key})", ready.api);
    outln!("  reply = client.chat.completions.create(");
    outln!("      model=\"{model}\",");
    outln!("      messages=[{{\"role\": \"user\", \"content\": \"{prompt}\"}}],");
    outln!("  )");
    outln!("  print(reply.choices[0].message.content)");
    outln!();
    let queen_flag = if ready.default_port { String::new() } else { format!(" --queen {}", ready.api) };
    let nats_flag = if ready.nats_url == crate::config::DEFAULT_NATS_URL {
        String::new()
    } else {
        format!(" --nats-url {}", rbee_bus::connect::redact_url(&ready.nats_url))
    };
    let rbee = &ready.rbee;
    outln!("  {rbee} infer{queen_flag} --chat \"{prompt}\"");
    outln!("  {rbee} status{queen_flag}");
    outln!("  {rbee} watch{nats_flag}");
    if rbee != "rbee" {
        outln!("  {}", style.dim("(`make install` puts rbee on your PATH)"));
    }
    outln!();
    outln!("{}", style.dim("press ctrl-c to stop"));
    Ok(())
}
