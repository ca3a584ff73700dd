//! The end of a discarded job's work item: once a job has become `discarded` (by the
//! acknowledger or the rescuer, for any reason), its worker's
//! [`on_discarded`](super::Worker::on_discarded) runs, so e.g. an episode whose analysis gave
//! up becomes `error` instead of staying `analyzing`. One path for every way a job is
//! discarded.

use std::time::Duration;

use uuid::Uuid;

use super::{Job, JobContext, storage};
use crate::backoff;
use crate::repo::DbError;

/// Tries per job before the hook's failure is only logged.
const TRIES: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Runs the `on_discarded` hook of each job in `ids` (already discarded and committed).
pub async fn run_hooks(ctx: &JobContext, ids: &[Uuid]) {
    for id in ids {
        run_hook(ctx, *id).await;
    }
}

async fn run_hook(ctx: &JobContext, id: Uuid) {
    let mut failures = 0;
    loop {
        let result = async {
            let Some(job) = load(ctx, id).await? else {
                return Ok(()); // pruned or deleted meanwhile: nothing left to end
            };
            let Some(worker) = ctx.registry.get(&job.worker) else {
                return Ok(());
            };
            worker.on_discarded(ctx, &job, &reason(&job)).await
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                if failures >= TRIES {
                    tracing::error!(job_id = %id, error = %format!("{e:#}"), "on_discarded failed; giving up");
                    return;
                }
                tracing::warn!(job_id = %id, error = %format!("{e:#}"), "on_discarded failed; retrying");
                tokio::time::sleep(backoff::capped(failures, FIRST_RETRY, MAX_RETRY)).await;
            }
        }
    }
}

async fn load(ctx: &JobContext, id: Uuid) -> Result<Option<Job>, DbError> {
    let mut tx = ctx.repo.system_tx().await?;
    let job = storage::find(&mut tx, id).await?;
    tx.commit().await?;
    Ok(job)
}

/// The last error kept on the job: why it was discarded.
fn reason(job: &Job) -> String {
    job.errors
        .as_array()
        .and_then(|errors| errors.last())
        .and_then(|e| e.get("error"))
        .and_then(|e| e.as_str())
        .unwrap_or("discarded")
        .to_owned()
}
