//! Counters and histograms for `GET /metrics`, in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rbee_bus::FinishReason;

use crate::jobs::job::Job;

const BUCKETS_MS: [f64; 12] =
    [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS_MS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value_ms: f64) {
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            if value_ms <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += value_ms;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {}", bound / 1000.0, self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum / 1000.0);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// The queen's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    submitted: AtomicU64,
    refused: AtomicU64,
    migrated: AtomicU64,
    tokens: AtomicU64,
    finished_stop: AtomicU64,
    finished_length: AtomicU64,
    finished_tool_calls: AtomicU64,
    finished_cancelled: AtomicU64,
    finished_error: AtomicU64,
    rejected_messages: AtomicU64,
    heartbeat_bytes: AtomicU64,
    heartbeats: AtomicU64,
    ttft: Mutex<Histogram>,
    inter_token: Mutex<Histogram>,
}

impl Metrics {
    /// A job was accepted.
    pub fn submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    /// A job was refused (queue full).
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A job moved to another worker after its worker was lost mid-stream.
    pub fn migrated(&self) {
        self.migrated.fetch_add(1, Ordering::Relaxed);
    }

    /// A malformed message was dropped.
    pub fn rejected_message(&self) {
        self.rejected_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// A heartbeat of `bytes` arrived.
    pub fn heartbeat_bytes(&self, bytes: usize) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.heartbeat_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Malformed messages dropped so far.
    pub fn rejected_count(&self) -> u64 {
        self.rejected_messages.load(Ordering::Relaxed)
    }

    /// A chunk of `n` tokens arrived for `stream`.
    pub fn tokens(&self, stream: &Job, n: u32) {
        self.tokens.fetch_add(u64::from(n), Ordering::Relaxed);
        let now = Instant::now();
        match stream.swap_last_token_at(now) {
            None => {
                let ms = now.duration_since(stream.created).as_secs_f64() * 1000.0;
                self.ttft.lock().unwrap_or_else(std::sync::PoisonError::into_inner).observe(ms);
            }
            Some(at) if n > 0 => {
                let ms = now.duration_since(at).as_secs_f64() * 1000.0 / f64::from(n);
                self.inter_token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).observe(ms);
            }
            Some(_) => {}
        }
    }

    /// A job ended.
    pub fn job_finished(&self, reason: FinishReason) {
        let counter = match reason {
            FinishReason::Stop => &self.finished_stop,
            FinishReason::Length => &self.finished_length,
            FinishReason::ToolCalls => &self.finished_tool_calls,
            FinishReason::Cancelled => &self.finished_cancelled,
            FinishReason::Error => &self.finished_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text, with the gauges passed in.
    pub fn render(&self, gauges: &[(&str, &str, String, f64)]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, labels: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {v}");
        };
        counter(
            &mut out,
            "rbee_jobs_submitted_total",
            "jobs accepted",
            "",
            self.submitted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_jobs_refused_total",
            "jobs refused because the queue was full",
            "",
            self.refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_jobs_migrated_total",
            "jobs moved to another worker after theirs was lost mid-stream",
            "",
            self.migrated.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP rbee_jobs_finished_total jobs finished, by reason\n# TYPE rbee_jobs_finished_total counter");
        for (reason, c) in [
            ("stop", &self.finished_stop),
            ("length", &self.finished_length),
            ("tool_calls", &self.finished_tool_calls),
            ("cancelled", &self.finished_cancelled),
            ("error", &self.finished_error),
        ] {
            let _ = writeln!(
                out,
                "rbee_jobs_finished_total{{reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        counter(&mut out, "rbee_tokens_total", "tokens relayed", "", self.tokens.load(Ordering::Relaxed));
        counter(
            &mut out,
            "rbee_rejected_messages_total",
            "malformed bus messages dropped",
            "",
            self.rejected_messages.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_heartbeats_total",
            "heartbeats received",
            "",
            self.heartbeats.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_heartbeat_bytes_total",
            "heartbeat bytes received",
            "",
            self.heartbeat_bytes.load(Ordering::Relaxed),
        );
        self.ttft.lock().unwrap_or_else(std::sync::PoisonError::into_inner).render(
            &mut out,
            "rbee_time_to_first_token_seconds",
            "from job creation to its first token at the queen",
        );
        self.inter_token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).render(
            &mut out,
            "rbee_inter_token_latency_seconds",
            "time between tokens of a job at the queen",
        );
        let mut last_name = "";
        for (name, help, labels, value) in gauges {
            if *name != last_name {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last_name = name;
            }
            let _ = writeln!(out, "{name}{labels} {value}");
        }
        out
    }
}
