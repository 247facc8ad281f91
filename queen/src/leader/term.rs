//! What a queen does while it leads, started at the start of each term and stopped with its token:
//! it says hello with its fence (every hive and worker heartbeats at once and refuses lower fences
//! from then on), takes over the jobs the last leader left ([`super::takeover`]), serves
//! `rbee.queen.jobs.submit` and `rbee.queen.embed` (leader only: a standby forwards to it), and
//! unloads idle workers. The placement loops of its jobs end with the term as well
//! ([`crate::jobs::dispatch::drive`]).

use std::sync::Arc;

use rbee_bus::{subject, QueenHello, SCHEMA_VERSION};
use rbee_daemon::Tasks;
use tokio_util::sync::CancellationToken;

use crate::Queen;

/// Starts a term with `fence` (`None`: a queen alone) on `services`, until `term` is cancelled.
pub async fn start(queen: Arc<Queen>, services: &Tasks, fence: Option<u64>, term: CancellationToken) {
    let hello = QueenHello { v: SCHEMA_VERSION, meta: queen.stamper.next(), fence };
    if let Err(e) = queen.bus.publish(subject::QUEEN_HELLO.to_owned(), &hello).await {
        tracing::warn!(error = %e, "cannot say hello");
    }
    // Submission stops with the term, or as soon as the queen starts draining.
    let submit_stop = CancellationToken::new();
    let (until, stop, draining) = (submit_stop.clone(), term.clone(), queen.draining.clone());
    services.spawn("submission term", async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = draining.cancelled() => {}
        }
        until.cancel();
    });
    if let Err(e) = crate::submit::serve(queen.clone(), services, submit_stop).await {
        tracing::error!(error = format!("{e:#}"), "cannot serve job submission over nats");
    }
    services.spawn("unload", crate::unload::run(queen.clone(), term.clone()));
    if fence.is_some() {
        let adopting = queen.clone();
        services.spawn("takeover", async move { super::takeover::adopt(&adopting).await });
    }
}
