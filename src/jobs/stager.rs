//! Stager: every poll interval, scheduled and retryable jobs whose time has come become
//! available and their queues are woken. Every node runs it; `SKIP LOCKED` keeps them from
//! contending.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::storage;
use crate::maintenance::{Pass, Periodic};
use crate::repo::{DbError, Repo};

/// Most jobs staged per run.
const BATCH: i64 = 10_000;

/// Stages due jobs once; returns how many.
pub async fn stage_once(repo: &Repo) -> Result<usize, DbError> {
    let mut tx = repo.system_tx().await?;
    let n = storage::stage(&mut tx, BATCH).await?;
    tx.commit().await?;
    Ok(n)
}

/// The stager duty, every poll interval.
pub struct Stager {
    pub repo: Repo,
    pub every: Duration,
}

impl Periodic for Stager {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "stager"
    }

    fn every(&self) -> Duration {
        self.every
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            // A full batch: more are due right now.
            Ok(if stage_once(&self.repo).await? as i64 == BATCH {
                Pass::More
            } else {
                Pass::Done
            })
        })
    }
}
