//! Percentiles, medians, what `/proc` says about a process (CPU time, resident memory), and the load
//! other processes put on the machine.

use std::time::Duration;

/// Distribution of a sample.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Summary {
    /// Values.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarizes `values` (any order). All zero when empty.
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Self {
            n: v.len(),
            p50: percentile_sorted(&v, 50.0),
            p99: percentile_sorted(&v, 99.0),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// Nearest-rank percentile of a sorted, non-empty slice.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `values` (mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Microseconds in a duration, as a float.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Milliseconds in a duration, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
#[allow(unsafe_code)]
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU time (user + system) a process has used so far, in seconds; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at indices 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory of a process, in bytes (0 when unknown).
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:").unwrap_or(0)
}

/// Sends `signal` to `pid`; true when delivered.
#[allow(unsafe_code)]
pub fn signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with a positive pid and a valid signal number has no memory effects.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// CPU seconds the whole machine has spent busy (`/proc/stat`: everything but idle and iowait).
pub fn system_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = stat.lines().next() else { return 0.0 };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    busy / clock_ticks_per_second()
}

/// CPU seconds used by `root` and every process below it, reaped children included.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let mut procs: Vec<(u32, u32, f64)> = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After the name: ppid is index 1; utime, stime, cutime, cstime are 11..=14.
        let ppid: u32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        let ticks: f64 = (11..=14).filter_map(|i| fields.get(i).and_then(|t| t.parse::<f64>().ok())).sum();
        procs.push((pid, ppid, ticks));
    }
    let mut total = 0.0;
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, ticks) in &procs {
            if *pid == parent {
                total += ticks;
            }
            if *ppid == parent && *pid != parent {
                frontier.push(*pid);
            }
        }
    }
    total / clock_ticks_per_second()
}

/// Measures how much CPU processes outside this run (other users of the machine) take.
#[derive(Debug, Clone, Copy)]
pub struct ForeignLoad {
    busy: f64,
    tree: f64,
    at: std::time::Instant,
}

impl ForeignLoad {
    /// Starts measuring now.
    pub fn start() -> Self {
        Self {
            busy: system_busy_seconds(),
            tree: tree_cpu_seconds(std::process::id()),
            at: std::time::Instant::now(),
        }
    }

    /// Average cores used since the start by processes that are not this one or its descendants.
    pub fn cores(&self) -> f64 {
        let wall = self.at.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let foreign =
            (system_busy_seconds() - self.busy) - (tree_cpu_seconds(std::process::id()) - self.tree);
        (foreign / wall).max(0.0)
    }
}

/// Above this many cores of CPU taken by other processes during a direct/queen pair, the pair is
/// measured again (llama.cpp's threads on a 2-core machine slow down many times over when anything else
/// runs): other users of the machine, not rbee, would decide the figures otherwise.
pub const FOREIGN_MAX_CORES: f64 = 0.25;

/// Waits (up to `within`) for a second in which other processes take less than [`FOREIGN_MAX_CORES`].
pub async fn wait_quiet(within: Duration) -> f64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let meter = ForeignLoad::start();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cores = meter.cores();
        if cores < FOREIGN_MAX_CORES || std::time::Instant::now() > deadline {
            return cores;
        }
    }
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.p50, s.p99, s.min, s.max, s.n), (50.0, 99.0, 1.0, 100.0, 100));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_bytes(pid) > 0);
        assert!(load_average() >= 0.0);
        assert!(system_busy_seconds() > 0.0);
        assert!(tree_cpu_seconds(pid) >= cpu_seconds(pid).unwrap_or(0.0) - 0.011);
        assert!(ForeignLoad::start().cores() >= 0.0);
    }
}
