//! Figures, each with its baseline and ratio, printed as they are measured and written at the end to
//! `BENCHMARKS.md` and `BENCHMARKS.json` (the same numbers in both).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// What the ratio (figure ÷ baseline) must stay within, when the issue sets a bar.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "ratio", rename_all = "snake_case")]
pub enum Target {
    /// The ratio must be at most this.
    AtMost(f64),
    /// The ratio must be at least this.
    AtLeast(f64),
}

impl Target {
    fn met(&self, ratio: f64) -> bool {
        match *self {
            Target::AtMost(max) => ratio <= max,
            Target::AtLeast(min) => ratio >= min,
        }
    }

    fn text(&self) -> String {
        match *self {
            Target::AtMost(max) => format!("≤ {max}x"),
            Target::AtLeast(min) => format!("≥ {min}x"),
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable key for tools (`token_path.queen_sse.p50_us`).
    pub key: String,
    /// Section number and title.
    pub section: String,
    /// What it is, for a person.
    pub label: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// What it is compared with.
    pub baseline_label: String,
    /// The baseline's value (same unit), when there is one.
    pub baseline: Option<f64>,
    /// value ÷ baseline.
    pub ratio: Option<f64>,
    /// The bar the ratio must meet, when the issue sets one.
    pub target: Option<Target>,
    /// Whether the ratio meets the target.
    pub met: Option<bool>,
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// When (UTC, ISO 8601).
    pub date: String,
    /// `git rev-parse --short HEAD`, `-dirty` when the tree has changes besides these two files.
    pub commit: String,
    /// The machine.
    pub machine: Machine,
    /// Seconds the whole run took.
    pub run_seconds: f64,
    /// 1-minute load average when the run started (other work on the machine makes figures noisy).
    pub load_average_start: f64,
    /// 1-minute load average when it ended.
    pub load_average_end: f64,
    /// Every figure, in the order measured.
    pub figures: Vec<Figure>,
    /// Per section: what was measured and what the figures say (Markdown paragraphs).
    pub notes: Vec<(String, Vec<String>)>,
    /// Raw samples and details, per section.
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The machine the run was on.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    /// CPU model name (`lscpu`).
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub logical_cpus: usize,
    /// Installed memory, in bytes.
    pub memory_bytes: u64,
    /// Kernel (`uname -sr`).
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn detect() -> Self {
        let cpu = run_text("lscpu", &[])
            .and_then(|out| {
                out.lines()
                    .find(|l| l.trim_start().starts_with("Model name:"))
                    .map(|l| l.split_once(':').map(|x| x.1).unwrap_or_default().trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
            })
            .map_or(0, |kb| kb * 1024);
        Self {
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_bytes,
            kernel: run_text("uname", &["-sr"]).map(|s| s.trim().to_owned()).unwrap_or_default(),
        }
    }
}

/// Stdout of a command, when it ran.
pub fn run_text(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit of `root`, with `-dirty` when tracked files other than the benchmark outputs changed.
pub fn commit(root: &Path) -> String {
    let root = root.display().to_string();
    let head = run_text("git", &["-C", &root, "rev-parse", "--short", "HEAD"])
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = run_text(
        "git",
        &["-C", &root, "status", "--porcelain", "--", ".", ":!BENCHMARKS.md", ":!BENCHMARKS.json"],
    )
    .is_some_and(|s| !s.trim().is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// A number shown with sensible precision.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        group(format!("{v:.0}"))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn group(digits: String) -> String {
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn with_unit(v: f64, unit: &str) -> String {
    match unit {
        "" => num(v),
        "%" => format!("{}%", num(v)),
        _ => format!("{} {unit}", num(v)),
    }
}

/// A figure to record, built with named steps:
/// `Fig::new(key, label).value(v, "µs").vs("raw NATS p50", floor).bar(Target::AtMost(1.5))`.
#[derive(Debug, Clone)]
pub struct Fig {
    key: String,
    label: String,
    value: f64,
    unit: &'static str,
    baseline_label: String,
    baseline: Option<f64>,
    target: Option<Target>,
}

impl Fig {
    /// A figure with its stable key and its label for a person.
    pub fn new(key: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            value: 0.0,
            unit: "",
            baseline_label: String::new(),
            baseline: None,
            target: None,
        }
    }

    /// Its value and unit.
    pub fn value(mut self, value: f64, unit: &'static str) -> Self {
        self.value = value;
        self.unit = unit;
        self
    }

    /// The baseline it is compared with (same unit).
    pub fn vs(mut self, label: impl Into<String>, baseline: f64) -> Self {
        self.baseline_label = label.into();
        self.baseline = Some(baseline);
        self
    }

    /// The bar its ratio to the baseline must meet.
    pub fn bar(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }
}

impl Report {
    /// Records a figure of `section` and prints it with its baseline and ratio.
    pub fn figure(&mut self, section: &str, fig: Fig) {
        let Fig { key, label, value, unit, baseline_label, baseline, target } = fig;
        let ratio = baseline.filter(|b| *b != 0.0 && b.is_finite()).map(|b| value / b);
        let met = match (ratio, target) {
            (Some(r), Some(t)) => Some(t.met(r)),
            _ => None,
        };
        let figure = Figure {
            key,
            section: section.to_owned(),
            label,
            value,
            unit: unit.to_owned(),
            baseline_label,
            baseline,
            ratio,
            target,
            met,
        };
        println!("{}", figure.line());
        self.figures.push(figure);
    }

    /// Adds a paragraph to a section's notes.
    pub fn note(&mut self, section: &str, text: impl Into<String>) {
        let text = text.into();
        match self.notes.iter_mut().find(|(s, _)| s == section) {
            Some((_, paragraphs)) => paragraphs.push(text),
            None => self.notes.push((section.to_owned(), vec![text])),
        }
    }

    /// Stores details (raw samples, configuration) of a section in the JSON.
    pub fn detail(&mut self, key: &str, value: serde_json::Value) {
        self.details.insert(key.to_owned(), value);
    }

    /// A figure already recorded, by key.
    pub fn get(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    /// The Markdown document.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let gib = self.machine.memory_bytes as f64 / (1024.0 * 1024.0 * 1024.0);
        let _ = writeln!(md, "# rbee benchmarks\n");
        let _ = writeln!(
            md,
            "Generated by `make bench` (`scripts/bench.sh` → `target/release/rbee-bench`); every number below \
             is the one the run printed. The same data, with raw samples, is in `BENCHMARKS.json`.\n"
        );
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(md, "| date | {} |", self.date);
        let _ = writeln!(md, "| commit | `{}` |", self.commit);
        let _ = writeln!(md, "| cpu | {} |", self.machine.cpu);
        let _ = writeln!(md, "| logical cpus | {} |", self.machine.logical_cpus);
        let _ = writeln!(md, "| memory | {gib:.1} GiB |");
        let _ = writeln!(md, "| kernel | {} |", self.machine.kernel);
        let _ = writeln!(md, "| run time | {:.0} s |", self.run_seconds);
        let _ = writeln!(
            md,
            "| load average (1 min) at start / end | {:.2} / {:.2} |\n",
            self.load_average_start, self.load_average_end
        );
        let _ = writeln!(
            md,
            "Every figure is shown next to a baseline measured in the same run on the same machine, and the \
             ratio figure ÷ baseline. Where the issue sets a bar the last column says whether the ratio \
             meets it (token path: at most 1.5x the raw NATS floor; end to end: at least 0.9x llama.cpp \
             driven directly, which for a time such as time to first token means at most 1/0.9 = 1.11x).\n"
        );
        let mut sections: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !sections.contains(&f.section.as_str()) {
                sections.push(&f.section);
            }
        }
        for (title, _) in &self.notes {
            if !sections.contains(&title.as_str()) {
                sections.push(title);
            }
        }
        sections.sort_unstable();
        for section in sections {
            let _ = writeln!(md, "## {section}\n");
            let figures: Vec<&Figure> = self.figures.iter().filter(|f| f.section == section).collect();
            if !figures.is_empty() {
                let _ = writeln!(md, "| figure | rbee | baseline | ratio | bar |");
                let _ = writeln!(md, "|---|---:|---|---:|---|");
                for f in figures {
                    let baseline = match f.baseline {
                        Some(b) => format!("{}: {}", f.baseline_label, with_unit(b, &f.unit)),
                        None => f.baseline_label.clone(),
                    };
                    let ratio = f.ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}x"));
                    let bar = match (f.target, f.met) {
                        (Some(t), Some(true)) => format!("{} ✅", t.text()),
                        (Some(t), Some(false)) => format!("{} ❌", t.text()),
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} |",
                        f.label,
                        with_unit(f.value, &f.unit),
                        baseline,
                        ratio,
                        bar
                    );
                }
                md.push('\n');
            }
            if let Some((_, paragraphs)) = self.notes.iter().find(|(s, _)| s == section) {
                for p in paragraphs {
                    let _ = writeln!(md, "{p}\n");
                }
            }
        }
        md
    }

    /// Writes `BENCHMARKS.md` and `BENCHMARKS.json` (through temporary files, renamed into place).
    pub fn write(&self, md_path: &Path, json_path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        let tmp = json_path.with_extension("json.tmp");
        std::fs::write(&tmp, json + "\n")?;
        std::fs::rename(&tmp, json_path)?;
        std::fs::write(md_path, self.markdown())?;
        Ok(())
    }
}

impl Figure {
    /// The line printed when it is measured.
    pub fn line(&self) -> String {
        let mut line = format!("  {:<58} {:>14}", self.label, with_unit(self.value, &self.unit));
        match self.baseline {
            Some(b) => {
                let _ = write!(line, "   vs {} {}", self.baseline_label, with_unit(b, &self.unit));
            }
            None if !self.baseline_label.is_empty() => {
                let _ = write!(line, "   ({})", self.baseline_label);
            }
            None => {}
        }
        if let Some(r) = self.ratio {
            let _ = write!(line, "   ratio {r:.2}x");
        }
        match (self.target, self.met) {
            (Some(t), Some(true)) => {
                let _ = write!(line, "  [bar {}: met]", t.text());
            }
            (Some(t), Some(false)) => {
                let _ = write!(line, "  [bar {}: MISSED]", t.text());
            }
            _ => {}
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_ratios() {
        assert_eq!(num(12345.6), "12,346");
        assert_eq!(num(123.4), "123");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(1.234), "1.23");
        let mut r = Report::default();
        r.figure("1. x", Fig::new("x.a", "a").value(300.0, "µs").vs("floor", 100.0).bar(Target::AtMost(1.5)));
        let f = r.get("x.a").expect("recorded");
        assert_eq!(f.ratio, Some(3.0));
        assert_eq!(f.met, Some(false));
        assert!(r.markdown().contains("| a | 300 µs | floor: 100 µs | 3.00x | ≤ 1.5x ❌ |"));
    }
}
