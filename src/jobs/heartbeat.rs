//! Node heartbeats: every `jobs.heartbeat_interval_secs` this node refreshes its `job_nodes`
//! row. The rescuer treats a node silent for `jobs.rescue_after_secs` as dead.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::storage;
use crate::maintenance::{Pass, Periodic};
use crate::repo::{DbError, Repo};

/// One heartbeat.
pub async fn beat(repo: &Repo, node: &str, queues: &[String]) -> Result<(), DbError> {
    let mut tx = repo.system_tx().await?;
    storage::heartbeat(&mut tx, node, queues).await?;
    tx.commit().await
}

/// The heartbeat duty of one node.
pub struct Heartbeat {
    pub repo: Repo,
    pub node: String,
    pub queues: Vec<String>,
    pub every: Duration,
}

impl Periodic for Heartbeat {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn every(&self) -> Duration {
        self.every
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            beat(&self.repo, &self.node, &self.queues).await?;
            Ok(Pass::Done)
        })
    }
}
