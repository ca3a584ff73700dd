//! Queue depth gauges (`cybernetic_job_queue_depth{queue,state}`): jobs waiting or running,
//! sampled every few seconds so a scrape never queries the database.

use std::time::Duration;

use super::storage;
use crate::metrics::METRICS;
use crate::repo::{DbError, Repo};
use crate::shutdown::Shutdown;

/// Samples once and sets the gauges.
pub async fn sample(repo: &Repo) -> Result<(), DbError> {
    let mut tx = repo.system_tx().await?;
    let rows = storage::depth(&mut tx).await?;
    tx.commit().await?;
    METRICS.job_queue_depth.reset();
    for (queue, state, n) in rows {
        METRICS
            .job_queue_depth
            .with_label_values(&[queue.as_str(), state.as_str()])
            .set(n);
    }
    Ok(())
}

pub async fn run(repo: Repo, every: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sample(&repo).await {
            tracing::debug!(error = %e, "sampling queue depth failed");
        }
    }
}
