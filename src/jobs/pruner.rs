//! Pruner: deletes jobs that completed, were cancelled or were discarded more than
//! `jobs.prune_after_days` ago (and cron slots as old), in batches, every
//! `jobs.prune_interval_secs`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use futures_util::future::BoxFuture;

use super::storage;
use crate::maintenance::{Pass, Periodic};
use crate::repo::{DbError, Repo};

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

/// The pruner duty: jobs final for longer than `after`, every `every`.
pub struct Pruner {
    pub repo: Repo,
    pub after: Duration,
    pub every: Duration,
}

impl Periodic for Pruner {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "job pruner"
    }

    fn every(&self) -> Duration {
        self.every
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            let before = Utc::now()
                - chrono::Duration::from_std(self.after).unwrap_or(chrono::Duration::MAX);
            let n = prune_once(&self.repo, before).await?;
            if n > 0 {
                tracing::info!(jobs = n, "pruned old jobs");
            }
            Ok(Pass::Done)
        })
    }
}
