//! Periodic maintenance duties (heartbeats, staging, rescuing, pruning, cron, gauges, the
//! relay's event pruning): each is a [`Periodic`] — one pass in [`Periodic::run_once`], which
//! tests call directly — and [`spawn`] is the one loop that runs it every [`Periodic::every`]
//! until shutdown, logging failed passes. A failed pass is only logged: the next tick tries
//! again, so a database outage delays maintenance but never stops it.

use std::fmt::Display;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::shutdown::Shutdown;

/// What a successful pass found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Done until the next tick.
    Done,
    /// It stopped at a batch limit with more work due: run again at once.
    More,
}

/// One maintenance duty.
pub trait Periodic: Send + 'static {
    type Error: Display + Send;

    /// The duty's name in logs.
    fn name(&self) -> &'static str;

    /// Time between the starts of two passes (the first pass runs at once).
    fn every(&self) -> Duration;

    /// Failed passes that are expected and harmless while a dependency is away (sampling a
    /// gauge) log at debug instead of warn.
    fn quiet(&self) -> bool {
        false
    }

    /// One pass. The duty logs what it did; the loop logs failures.
    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, Self::Error>>;
}

/// Runs `duty` on its own task until `shutdown`. A pass in progress when shutdown comes is
/// finished first (passes are short transactions); abort the handle to stop at once.
pub fn spawn<P: Periodic>(duty: P, shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(run(duty, shutdown))
}

/// Stops its duty when dropped: for a duty that runs only while its owner holds a role (the
/// relay prunes only while it leads).
pub struct Scoped(JoinHandle<()>);

impl Scoped {
    /// Any task, stopped when the guard is dropped.
    pub fn new(task: JoinHandle<()>) -> Self {
        Self(task)
    }

    /// Stops the task and waits until it has stopped.
    pub async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`spawn`], stopped also when the returned guard is dropped.
pub fn spawn_scoped<P: Periodic>(duty: P, shutdown: Shutdown) -> Scoped {
    Scoped(spawn(duty, shutdown))
}

/// The loop of [`spawn`], on the caller's task.
pub async fn run<P: Periodic>(mut duty: P, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(duty.every().max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        match duty.run_once().await {
            Ok(Pass::Done) => {}
            Ok(Pass::More) => tick.reset_immediately(),
            Err(e) if duty.quiet() => {
                tracing::debug!(duty = duty.name(), error = %e, "maintenance pass failed");
            }
            Err(e) => tracing::warn!(duty = duty.name(), error = %e, "maintenance pass failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails every other pass and asks for an immediate rerun on the third.
    struct Counter(Arc<AtomicUsize>);

    impl Periodic for Counter {
        type Error = &'static str;
        fn name(&self) -> &'static str {
            "counter"
        }
        fn every(&self) -> Duration {
            Duration::from_secs(3600)
        }
        fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, &'static str>> {
            Box::pin(async move {
                let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
                match n {
                    1 => Err("first pass fails"),
                    2 => Ok(Pass::More),
                    _ => Ok(Pass::Done),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_at_once_survives_failures_reruns_on_more_and_stops_on_shutdown() {
        let passes = Arc::new(AtomicUsize::new(0));
        let shutdown = Shutdown::new();
        let handle = spawn(Counter(passes.clone()), shutdown.clone());
        // The first tick is immediate; the failed pass is logged and the next tick still
        // comes; the `More` pass reruns without waiting for the hour.
        tokio::time::sleep(Duration::from_secs(3601)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 3);
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), handle)
            .await
            .expect("the loop ends on shutdown")
            .expect("no panic");
    }
}
