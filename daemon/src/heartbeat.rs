//! The heartbeat loop every daemon that heartbeats runs: one beat every interval, and one at once
//! whenever its [`Notify`] is notified (the state changed, or the queen said hello on
//! `rbee.queen.hello`, which [`listen_for_hello`] turns into such a notification).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use rbee_bus::{subject, Bus};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Calls `beat` every `interval` (the first at once) and whenever `now` is notified, until `stop`.
pub async fn run<F, Fut>(interval: Duration, now: Arc<Notify>, stop: CancellationToken, mut beat: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = now.notified() => {}
        }
        beat().await;
    }
}

/// Subscribes to the queen's hello (before the daemon says it is ready, so no hello is missed).
pub async fn subscribe_hello(bus: &Bus) -> anyhow::Result<async_nats::Subscriber> {
    bus.client().subscribe(subject::QUEEN_HELLO).await.context("subscribe to queen hello")
}

/// Notifies `now` for every hello on `sub`, and raises `fence` to a new leader's, until `stop` or the
/// subscription ends. A malformed hello still asks for a heartbeat.
pub async fn listen_for_hello(
    mut sub: async_nats::Subscriber,
    now: Arc<Notify>,
    fence: Arc<crate::fence::Fence>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = sub.next() => match msg { Some(m) => m, None => return },
        };
        match rbee_bus::rpc::decode::<rbee_bus::QueenHello>(subject::QUEEN_HELLO, &msg.payload) {
            Ok(hello) => {
                if let Some(f) = hello.fence {
                    fence.raise(f);
                }
            }
            Err(e) => tracing::warn!(error = %e, "malformed queen hello"),
        }
        now.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn beats_every_interval_and_when_notified() {
        let beats = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let counted = beats.clone();
        let task = tokio::spawn(run(Duration::from_secs(10), now.clone(), stop.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(beats.load(Ordering::SeqCst), 1, "the first beat is at once");
        now.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(beats.load(Ordering::SeqCst), 2, "a notification beats now");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(beats.load(Ordering::SeqCst), 3, "then every interval");
        stop.cancel();
        task.await.expect("loop ends on stop");
    }
}
