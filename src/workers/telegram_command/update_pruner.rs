//! Forgets `update_id`s older than `telegram.update_retention_hours` (at least 24 h, Telegram's
//! own retention, so a redelivered update is always still recognised), a bounded batch per
//! statement. Every serving instance runs it; deleting the same rows twice is harmless.

use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;

use crate::maintenance::{Pass, Periodic};
use crate::repo::{DbError, Repo};
use crate::schemas::telegram::update;

const BATCH: i64 = 10_000;

pub struct UpdatePruner {
    pub repo: Repo,
    pub retention: Duration,
    pub every: Duration,
}

impl Periodic for UpdatePruner {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "telegram update pruner"
    }

    fn every(&self) -> Duration {
        self.every
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            let before = Utc::now()
                - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
            let mut tx = self.repo.system_tx().await?;
            let n = update::prune(&mut tx, before, BATCH).await?;
            tx.commit().await?;
            if n > 0 {
                tracing::info!(updates = n, "forgot old Telegram update ids");
            }
            Ok(if n as i64 == BATCH {
                Pass::More
            } else {
                Pass::Done
            })
        })
    }
}
