//! Section 5, queen takeover: two `rbee-queen` processes on the bench's nats-server, one leading by
//! the lease, one standing by. The leader is SIGKILLed and the time until the standby's `/health`
//! says `leader` is measured (polled every 10 ms), against the lease's bound: a standby takes over
//! once a lease revision went unrenewed for a whole lease, read every quarter lease, so at most
//! 1.25 leases after the leader's last renewal. The killed queen then comes back as the standby and
//! the next round kills the other.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cluster::{free_port, queen_args, Env, Proc};
use crate::report::{Fig, Report, Target};
use crate::stats;

/// The section's heading.
pub const SECTION: &str = "5. Control path: queen takeover";

/// The lease the queens run with (`rbee-queen`'s default).
const LEASE: Duration = Duration::from_millis(3000);

/// Runs `rounds` takeovers on the nats-server at `nats` and records the figures.
pub async fn section(report: &mut Report, env: &Env, nats: &str, rounds: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let ports = [free_port(), free_port()];
    let start = |i: usize, round: usize| {
        let mut args = queen_args(nats, ports[i]);
        args.extend(["--queen-id".to_owned(), format!("bench-q{i}")]);
        args.extend(["--lease-ms".to_owned(), LEASE.as_millis().to_string()]);
        Proc::spawn(
            &format!("queen {i}"),
            &env.queen_bin,
            &args,
            &env.logs.join(format!("takeover-q{i}-{round}.log")),
        )
    };
    let mut queens = [Some(start(0, 0)?), None];
    wait_role(&http, ports[0], "leader", Duration::from_secs(30)).await?;
    queens[1] = Some(start(1, 0)?);
    wait_role(&http, ports[1], "standby", Duration::from_secs(30)).await?;
    let mut leader = 0;
    let mut times = Vec::new();
    for round in 0..rounds {
        let standby = 1 - leader;
        let killed = Instant::now();
        if let Some(q) = queens[leader].as_mut() {
            q.kill();
        }
        wait_role(&http, ports[standby], "leader", LEASE * 4).await?;
        let ms = killed.elapsed().as_secs_f64() * 1e3;
        println!("  SIGKILL the leader: the standby leads after {ms:.0} ms");
        times.push(ms);
        queens[leader] = Some(start(leader, round + 1)?);
        wait_role(&http, ports[leader], "standby", Duration::from_secs(30)).await?;
        leader = standby;
    }
    let bound = LEASE.as_secs_f64() * 1e3 * 1.25;
    let n = times.len();
    report.figure(
        SECTION,
        Fig::new("control.takeover.median_ms", format!("leader SIGKILL → standby leads, median of {n}"))
            .value(stats::median(&times), "ms")
            .vs(format!("the lease's bound (1.25 x the {} ms lease)", LEASE.as_millis()), bound)
            .bar(Target::AtMost(1.0)),
    );
    report.figure(
        SECTION,
        Fig::new("control.takeover.max_ms", format!("leader SIGKILL → standby leads, worst of {n}"))
            .value(times.iter().copied().fold(0.0, f64::max), "ms")
            .vs("the lease's bound", bound)
            .bar(Target::AtMost(1.0)),
    );
    Ok(())
}

async fn wait_role(http: &reqwest::Client, port: u16, want: &str, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < within {
        let health = http.get(format!("http://127.0.0.1:{port}/health")).send().await;
        if let Ok(r) = health {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["leader"]["role"] == want {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the queen on port {port} was not {want} within {within:?}")
}
