//! Node heartbeats: every `jobs.heartbeat_interval_secs` this node refreshes its `job_nodes`
//! row. The rescuer treats a node silent for `jobs.rescue_after_secs` as dead.

use std::time::Duration;

use super::storage;
use crate::repo::{DbError, Repo};
use crate::shutdown::Shutdown;

/// One heartbeat.
pub async fn beat(repo: &Repo, node: &str, queues: &[String]) -> Result<(), DbError> {
    let mut tx = repo.system_tx().await?;
    storage::heartbeat(&mut tx, node, queues).await?;
    tx.commit().await
}

pub async fn run(
    repo: Repo,
    node: String,
    queues: Vec<String>,
    every: Duration,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = beat(&repo, &node, &queues).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}
