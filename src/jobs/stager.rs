//! Stager: every poll interval, scheduled and retryable jobs whose time has come become
//! available and their queues are woken. Every node runs it; `SKIP LOCKED` keeps them from
//! contending.

use std::time::Duration;

use super::storage;
use crate::repo::{DbError, Repo};
use crate::shutdown::Shutdown;

/// Most jobs staged per run.
const BATCH: i64 = 10_000;

/// Stages due jobs once; returns how many.
pub async fn stage_once(repo: &Repo) -> Result<usize, DbError> {
    let mut tx = repo.system_tx().await?;
    let n = storage::stage(&mut tx, BATCH).await?;
    tx.commit().await?;
    Ok(n)
}

pub async fn run(repo: Repo, every: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        match stage_once(&repo).await {
            // A full batch: more are due right now.
            Ok(n) if n as i64 == BATCH => tick.reset_immediately(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "staging scheduled jobs failed"),
        }
    }
}
