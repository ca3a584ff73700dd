//! Pruner: deletes jobs that completed, were cancelled or were discarded more than
//! `jobs.prune_after_days` ago (and cron slots as old), in batches, every
//! `jobs.prune_interval_secs`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::storage;
use crate::repo::{DbError, Repo};
use crate::shutdown::Shutdown;

/// Rows deleted per statement, so one run never holds locks for long.
const BATCH: i64 = 10_000;

/// Deletes every final job that ended before `before`; returns how many.
pub async fn prune_once(repo: &Repo, before: DateTime<Utc>) -> Result<usize, DbError> {
    let mut total = 0;
    loop {
        let mut tx = repo.system_tx().await?;
        let n = storage::prune(&mut tx, before, BATCH).await?;
        tx.commit().await?;
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

pub async fn run(repo: Repo, after: Duration, every: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let before =
            Utc::now() - chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        match prune_once(&repo, before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "pruned old jobs"),
            Err(e) => tracing::warn!(error = %e, "pruning jobs failed"),
        }
    }
}
