//! Queue depth gauges (`cybernetic_job_queue_depth{queue,state}`): jobs waiting or running,
//! sampled every few seconds so a scrape never queries the database.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{JobState, storage};
use crate::maintenance::{Pass, Periodic};
use crate::metrics::METRICS;
use crate::repo::{DbError, Repo};

/// The states the gauges count: a job in any other state is done.
const WAITING_OR_RUNNING: [JobState; 4] = [
    JobState::Available,
    JobState::Scheduled,
    JobState::Retryable,
    JobState::Executing,
];

/// Samples once and sets the gauges. `queues` (this node's) always have all four series, at 0
/// when empty, so a dashboard shows an idle queue as 0 rather than as missing data; another
/// queue's series exist while it holds jobs.
pub async fn sample(repo: &Repo, queues: &[String]) -> Result<(), DbError> {
    let mut tx = repo.system_tx().await?;
    let rows = storage::depth(&mut tx).await?;
    tx.commit().await?;
    METRICS.job_queue_depth.reset();
    for queue in queues {
        for state in WAITING_OR_RUNNING {
            METRICS
                .job_queue_depth
                .with_label_values(&[queue.as_str(), state.as_str()])
                .set(0);
        }
    }
    for (queue, state, n) in rows {
        METRICS
            .job_queue_depth
            .with_label_values(&[queue.as_str(), state.as_str()])
            .set(n);
    }
    Ok(())
}

/// The sampling duty. Its failures log at debug: the gauges just keep their last values.
pub struct Depth {
    pub repo: Repo,
    pub every: Duration,
    /// This node's queues (see [`sample`]).
    pub queues: Vec<String>,
}

impl Periodic for Depth {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "queue depth"
    }

    fn every(&self) -> Duration {
        self.every
    }

    fn quiet(&self) -> bool {
        true
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            sample(&self.repo, &self.queues).await?;
            Ok(Pass::Done)
        })
    }
}
