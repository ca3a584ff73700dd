//! Rescuer (Oban's Lifeline, but within a minute instead of an hour): jobs left `executing` by
//! a node whose heartbeat is older than `jobs.rescue_after_secs` become available again (or
//! discarded if that was their last attempt), with an error recording the rescue. It runs on
//! every node, several times per `rescue_after`, so a dead node's jobs run elsewhere within
//! `rescue_after + rescue_after / 4` of its last heartbeat.

use std::time::Duration;

use uuid::Uuid;

use super::storage;
use crate::repo::{DbError, Repo};
use crate::shutdown::Shutdown;

/// Rescues once; returns the rescued jobs.
pub async fn rescue_once(repo: &Repo, after: Duration) -> Result<Vec<Uuid>, DbError> {
    let mut tx = repo.system_tx().await?;
    let rescued = storage::rescue(&mut tx, after).await?;
    tx.commit().await?;
    Ok(rescued)
}

pub async fn run(repo: Repo, after: Duration, shutdown: Shutdown) {
    let every = (after / 4).max(Duration::from_millis(250));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        match rescue_once(&repo, after).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(
                    jobs = ids.len(),
                    "rescued jobs of a node that stopped heartbeating"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rescuing jobs failed"),
        }
    }
}
