//! `episode_analyzer` (queue `analysis`): loads the episode, marks it `analyzing`, computes its
//! analysis (`{summary, keywords, sentiment{label,score}, entities{urls,emails,mentions},
//! word_count, analyzer}`) with the built-in deterministic analyzer, or with the configured
//! OpenAI-compatible LLM (`analysis.llm_url`, falling back to the built-in one on any failure),
//! then marks it `complete` and emits `episode.analyzed` in the same transaction. When its job
//! is discarded, however that happens (last attempt failed, timed out, panicked or was
//! rescued), the engine calls `on_discarded`, which marks the episode `error` and emits
//! `episode.failed`, so no episode stays `analyzing` for good.
//!
//! The slow part (the LLM call) runs outside any transaction. Re-running a job whose episode is
//! already complete does nothing, so a rescued or retried job is harmless.

pub mod builtin;
pub mod intake;
pub mod llm;

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::events::payloads::{self, EpisodeAnalyzed, EpisodeFailed};
use crate::jobs::{
    Job, JobContext, JobResult, NewJob, Outcome, Scope, Worker, job_for, parse_args,
};
use crate::repo::DbError;
use crate::schemas::vsm::episode;

pub const NAME: &str = "episode_analyzer";

pub struct EpisodeAnalyzer;

/// The analysis job of `episode_id`; insert it in the transaction that creates the episode.
/// The analyzer's arguments.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    pub episode_id: Uuid,
}

pub fn job(tenant_id: Uuid, episode_id: Uuid) -> NewJob {
    job_for(&EpisodeAnalyzer, json!(Args { episode_id })).tenant(tenant_id)
}

impl Worker for EpisodeAnalyzer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_args(&self, args: &Value) -> Result<(), crate::jobs::ArgsError> {
        parse_args::<Args>(args).map(drop)
    }

    /// Analyses one of its tenant's episodes, under that tenant's row-level security.
    fn scope(&self) -> Scope {
        Scope::Tenant
    }

    fn queue(&self) -> &'static str {
        "analysis"
    }

    fn priority(&self) -> i16 {
        1
    }

    fn max_attempts(&self) -> i32 {
        5
    }

    fn unique_for(&self) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(120)
    }

    fn perform<'a>(&'a self, ctx: &'a JobContext, job: &'a Job) -> BoxFuture<'a, JobResult> {
        Box::pin(async move {
            let Some(tenant) = job.tenant_id else {
                return Ok(Outcome::Discard(
                    "episode_analyzer jobs belong to a tenant".into(),
                ));
            };
            let Some(episode_id) = episode_of(job) else {
                return Ok(Outcome::Discard("args.episode_id must be a UUID".into()));
            };
            analyze(ctx, tenant, episode_id).await
        })
    }

    fn on_discarded<'a>(
        &'a self,
        ctx: &'a JobContext,
        job: &'a Job,
        reason: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            // A job without a tenant or episode never stood for an episode.
            let (Some(tenant), Some(episode_id)) = (job.tenant_id, episode_of(job)) else {
                return Ok(());
            };
            mark_failed(ctx, tenant, episode_id, reason).await?;
            Ok(())
        })
    }
}

fn episode_of(job: &Job) -> Option<Uuid> {
    parse_args::<Args>(&job.args).ok().map(|a| a.episode_id)
}

async fn analyze(ctx: &JobContext, tenant: Uuid, episode_id: Uuid) -> anyhow::Result<Outcome> {
    let mut tx = ctx.repo.tenant_tx(tenant).await?;
    let ep = match episode::find(&mut tx, episode_id).await {
        Ok(ep) => ep,
        Err(DbError::NotFound) => {
            return Ok(Outcome::Discard(format!(
                "episode {episode_id} does not exist"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if ep.status == episode::EpisodeStatus::Complete {
        return Ok(Outcome::Complete);
    }
    episode::set_status(&mut tx, episode_id, episode::EpisodeStatus::Analyzing).await?;
    tx.commit().await?;

    let analysis = match &ctx.config.analysis.llm_url {
        Some(url) => match llm::analyze(ctx, url, &ep.title, &ep.content).await {
            Ok(a) => a,
            Err(e) => {
                // The detail names the endpoint: it goes to the log, the tenant sees the reason.
                tracing::warn!(episode_id = %episode_id, error = %format!("{:#}", e.detail), reason = %e.reason, "LLM analysis failed; using the built-in analyzer");
                let mut a = builtin::analyze(&ep.title, &ep.content);
                a["llm_error"] = json!(e.reason);
                a
            }
        },
        None => builtin::analyze(&ep.title, &ep.content),
    };

    let mut tx = ctx.repo.tenant_tx(tenant).await?;
    episode::complete(&mut tx, episode_id, &analysis).await?;
    let analyzed = EpisodeAnalyzed {
        episode_id,
        analysis,
    };
    payloads::emit(&mut tx, tenant, &analyzed).await?;
    tx.commit().await?;
    Ok(Outcome::Complete)
}

/// Marks the episode `error` and emits `episode.failed`, in one transaction; nothing when it
/// is gone or already complete (so a repeated call emits nothing twice).
async fn mark_failed(
    ctx: &JobContext,
    tenant: Uuid,
    episode_id: Uuid,
    reason: &str,
) -> Result<(), DbError> {
    let mut tx = ctx.repo.tenant_tx(tenant).await?;
    if episode::fail(&mut tx, episode_id, reason).await? {
        let failed = EpisodeFailed {
            episode_id,
            error: reason.to_owned(),
        };
        payloads::emit(&mut tx, tenant, &failed).await?;
    }
    tx.commit().await
}
