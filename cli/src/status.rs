//! `rbee status`: hives with their devices and memory, workers and recent jobs, read from the queen.
//! The queen's JSON is read as untyped values and whatever is present is shown.

use serde_json::{json, Value};

use crate::args::StatusArgs;
use crate::client::Queen;
use crate::config::Config;
use crate::render::{self, Style};

/// Width of memory bars.
const BAR_WIDTH: usize = 20;

/// Runs the command.
pub async fn run(config: &Config, args: StatusArgs) -> anyhow::Result<()> {
    let queen = Queen::new(config)?;
    let (hives, workers, jobs) =
        tokio::join!(queen.get("/v1/hives"), queen.get("/v1/workers"), queen.get("/v1/jobs?limit=10"));
    let hives = hives?;
    let workers = workers?;
    let (jobs, jobs_error) = match jobs {
        Ok(jobs) => (jobs, None),
        Err(e) => (Value::Null, Some(e.to_string())),
    };

    if args.json {
        let mut object = json!({
            "queen_url": queen.base(),
            "hives": render::list(&hives, "hives"),
            "workers": render::list(&workers, "workers"),
            "jobs": render::list(&jobs, "jobs"),
        });
        render::redact_secrets(&mut object);
        outln!("{object}");
        return Ok(());
    }

    let style = Style::stdout();
    outln!("{} {}", style.bold("queen"), queen.base());
    print_hives(&style, render::list(&hives, "hives"))?;
    print_workers(&style, render::list(&workers, "workers"))?;
    match jobs_error {
        Some(error) => outln!("{}\n  unavailable: {error}", style.bold("recent jobs")),
        None => print_jobs(&style, render::list(&jobs, "jobs"))?,
    }
    Ok(())
}

/// Hives with their devices and memory (shared with `rbee hives ls`).
pub fn print_hives(style: &Style, hives: &[Value]) -> anyhow::Result<()> {
    outln!("{} ({})", style.bold("hives"), hives.len());
    if hives.is_empty() {
        outln!("  none registered yet (hives heartbeat every few seconds)");
    }
    for hive in hives {
        let liveness = render::text(hive, &["liveness", "state"]);
        let models = hive.get("models").and_then(Value::as_array).map(Vec::len);
        let mut line = format!(
            "  {}  {}  {}",
            style.bold(render::text(hive, &["hive_id", "id"])),
            render::text(hive, &["hostname"]),
            style.state(&liveness),
        );
        if hive.get("draining").and_then(Value::as_bool) == Some(true) {
            line.push_str(&format!("  {}", style.state("draining")));
        }
        if let Some(models) = models {
            line.push_str(&format!("  {models} model(s)"));
        }
        if let Some(cpu) = hive.get("cpu").filter(|c| c.is_object()) {
            line.push_str(&style.dim(format!(
                "  {} ({} cores)",
                render::text(cpu, &["model"]),
                render::text(cpu, &["logical_cores", "physical_cores"])
            )));
        }
        outln!("{line}");
        for device in hive.get("devices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let total = render::number(device, "total_bytes");
            let free = render::number(device, "free_bytes");
            let label = format!("{} {}", render::text(device, &["id"]), render::text(device, &["name"]));
            outln!("    {}", memory_line(&render::truncate(&label, 32), total, free));
        }
        if let Some(ram) = hive.get("ram") {
            let total = render::number(ram, "total_bytes");
            let free = render::number(ram, "available_bytes").or_else(|| render::number(ram, "free_bytes"));
            outln!("    {}", memory_line("ram", total, free));
        }
        for model in hive.get("models").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(line) = load_failure_line(model) {
                outln!("    {}", style.red(line));
            }
        }
    }
    Ok(())
}

/// `model broken: failed to load 5 times in a row, refused (last: ...)` for a model its hive holds
/// off, `None` for one it spawns.
fn load_failure_line(model: &Value) -> Option<String> {
    let failures = model.get("load_failures").filter(|f| f.is_object())?;
    let count = render::number(failures, "failures").unwrap_or(0.0) as u64;
    let state = if failures.get("refused").and_then(Value::as_bool).unwrap_or(false) {
        "refused until imported or pulled again".to_owned()
    } else {
        let wait_ms = render::number(failures, "retry_at_ms").unwrap_or(0.0) as u64;
        format!("next try in {} s", wait_ms.saturating_sub(rbee_bus::now_ms()).div_ceil(1000))
    };
    Some(format!(
        "model {}: failed to load {count} time(s) in a row, {state} (last: {})",
        render::text(model, &["model_id"]),
        render::truncate(&render::text(failures, &["last_error"]), 160)
    ))
}

/// `label  [####------]  1.2 GiB / 8.0 GiB used`
fn memory_line(label: &str, total: Option<f64>, free: Option<f64>) -> String {
    match (total, free) {
        (Some(total), Some(free)) if total > 0.0 => {
            let used = (total - free).max(0.0);
            format!(
                "{label:<32}  {}  {} / {} used",
                render::bar(used / total, BAR_WIDTH),
                render::bytes(used as u64),
                render::bytes(total as u64)
            )
        }
        (Some(total), _) => format!("{label:<32}  {} total", render::bytes(total as u64)),
        _ => label.to_owned(),
    }
}

fn print_workers(style: &Style, workers: &[Value]) -> anyhow::Result<()> {
    outln!("{} ({})", style.bold("workers"), workers.len());
    if workers.is_empty() {
        outln!("  none (start one with `rbee workers spawn <model>`)");
        return Ok(());
    }
    outln!("{}", worker_table(workers).join("\n"));
    Ok(())
}

/// Workers as table lines (shared with `rbee workers ls`).
pub fn worker_table(workers: &[Value]) -> Vec<String> {
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let slots = match (render::number(w, "slots_busy"), render::number(w, "slots_total")) {
                (Some(busy), Some(total)) => format!("{busy}/{total}"),
                _ => "-".to_owned(),
            };
            vec![
                render::text(w, &["worker_id", "id"]),
                render::text(w, &["model_id", "model"]),
                render::text(w, &["hive_id"]),
                render::text(w, &["device"]),
                render::text(w, &["state"]),
                render::text(w, &["liveness"]),
                slots,
                render::rate(render::number(w, "tokens_per_second")),
                unload(w),
            ]
        })
        .collect();
    render::table(
        "  ",
        &["ID", "MODEL", "HIVE", "DEVICE", "STATE", "LIVENESS", "SLOTS", "TOK/S", "UNLOAD"],
        &rows,
    )
}

/// When an idle worker unloads (`in 4m12s`), `kept` when it stays loaded, `after 5m idle` while busy.
fn unload(worker: &Value) -> String {
    let short = |seconds: f64| {
        let s = seconds.max(0.0).round() as u64;
        match (s / 3600, s / 60 % 60, s % 60) {
            (0, 0, s) => format!("{s}s"),
            (0, m, s) => format!("{m}m{s:02}s"),
            (h, m, _) => format!("{h}h{m:02}m"),
        }
    };
    match (render::number(worker, "unload_in_s"), render::number(worker, "keep_alive_s")) {
        (Some(left), _) => format!("in {}", short(left)),
        (None, Some(keep)) => format!("after {} idle", short(keep)),
        (None, None) if worker.get("keep_alive_s").is_some() => "kept".to_owned(),
        (None, None) => "-".to_owned(),
    }
}

fn print_jobs(style: &Style, jobs: &[Value]) -> anyhow::Result<()> {
    outln!("{} ({})", style.bold("recent jobs"), jobs.len());
    if jobs.is_empty() {
        outln!("  none yet (try `rbee infer \"hello\"`)");
        return Ok(());
    }
    outln!("{}", job_table(jobs).join("\n"));
    Ok(())
}

/// Jobs as table lines (shared with `rbee jobs ls`).
pub fn job_table(jobs: &[Value]) -> Vec<String> {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let usage = job.get("usage").cloned().unwrap_or(Value::Null);
            let tokens = match (
                render::number(&usage, "prompt_tokens"),
                render::number(&usage, "completion_tokens"),
            ) {
                (Some(p), Some(c)) => format!("{p}+{c}"),
                _ => "-".to_owned(),
            };
            vec![
                render::text(job, &["job_id", "id"]),
                render::text(job, &["model_id", "model"]),
                render::text(job, &["state"]),
                render::text(job, &["finish_reason"]),
                render::text(job, &["worker_id"]),
                tokens,
                render::age(render::number(job, "created_at_ms")),
            ]
        })
        .collect();
    render::table("  ", &["ID", "MODEL", "STATE", "FINISH", "WORKER", "TOKENS", "AGE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_held_off_by_their_hive_get_a_line() {
        let ok = json!({"model_id": "smollm2"});
        assert_eq!(load_failure_line(&ok), None);
        let refused = json!({"model_id": "broken", "load_failures": {"failures": 5, "last_error": "exit status: 1", "refused": true}});
        let line = load_failure_line(&refused).expect("a line");
        assert!(line.contains("broken") && line.contains("5 time(s)") && line.contains("refused"), "{line}");
        let later = rbee_bus::now_ms() + 9_500;
        let waiting = json!({"model_id": "broken", "load_failures": {"failures": 1, "last_error": "e", "retry_at_ms": later, "refused": false}});
        let line = load_failure_line(&waiting).expect("a line");
        assert!(line.contains("next try in 10 s"), "{line}");
    }

    #[test]
    fn memory_lines_tolerate_missing_figures() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        let line = memory_line("ram", Some(8.0 * gib), Some(6.0 * gib));
        assert!(line.contains("2.0 GiB / 8.0 GiB used"), "{line}");
        assert_eq!(memory_line("x", None, None), "x");
    }

    #[test]
    fn worker_rows_show_what_is_present() {
        let lines = worker_table(&[json!({"worker_id":"w1","state":"idle","slots_busy":1,"slots_total":4})]);
        assert!(
            lines[1].contains("w1") && lines[1].contains("1/4") && lines[1].contains("idle"),
            "{lines:?}"
        );
    }
}
