//! Rescuer (Oban's Lifeline, but within a minute instead of an hour): jobs left `executing` by
//! a dead node — its heartbeat older than `jobs.rescue_after_secs` **and** its liveness lock
//! free (see `heartbeat.rs`: a busy node whose session lives is never dead) — become available again (or
//! discarded if that was their last attempt), with an error recording the rescue. It runs on
//! every node, several times per `rescue_after`, so a dead node's jobs run elsewhere within
//! `rescue_after + rescue_after / 4` of its last heartbeat. A job it discards gets its worker's
//! `on_discarded` hook like any other discarded job.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::storage::{self, Rescued};
use super::{JobContext, discard};
use crate::maintenance::{Pass, Periodic};
use crate::repo::{DbError, Repo};

/// Rescues once; returns the rescued jobs. Does not run `on_discarded` hooks (see
/// [`rescue_and_end`]).
pub async fn rescue_once(repo: &Repo, after: Duration) -> Result<Vec<Rescued>, DbError> {
    let mut tx = repo.system_tx().await?;
    let rescued = storage::rescue(&mut tx, after).await?;
    tx.commit().await?;
    Ok(rescued)
}

/// Rescues once and runs the `on_discarded` hooks of the jobs it discarded.
pub async fn rescue_and_end(ctx: &JobContext, after: Duration) -> Result<Vec<Rescued>, DbError> {
    let rescued = rescue_once(&ctx.repo, after).await?;
    let discarded: Vec<_> = rescued
        .iter()
        .filter(|r| r.discarded)
        .map(|r| r.id)
        .collect();
    discard::run_hooks(ctx, &discarded).await;
    Ok(rescued)
}

/// The rescuer duty: several passes per `after`, so a dead node's jobs run again within
/// `after + after / 4`.
pub struct Rescuer {
    pub ctx: JobContext,
    pub after: Duration,
}

impl Periodic for Rescuer {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "rescuer"
    }

    fn every(&self) -> Duration {
        (self.after / 4).max(Duration::from_millis(250))
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            let jobs = rescue_and_end(&self.ctx, self.after).await?;
            if !jobs.is_empty() {
                tracing::warn!(
                    jobs = jobs.len(),
                    "rescued jobs of a node that stopped heartbeating"
                );
            }
            Ok(Pass::Done)
        })
    }
}
