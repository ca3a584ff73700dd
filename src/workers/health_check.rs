//! `health_check` (cron, hourly by default): measures each configured dependency (PostgreSQL
//! always; Redis and RabbitMQ when their URLs are set), stores the result in `health_checks`
//! and emits `system.health` to every tenant, in one system transaction.
//!
//! A degraded result is a successful measurement: the job completes and the event says what is
//! down. Only failing to store the result is a job error.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::events::payloads::{self, SystemHealth};
use crate::health::{PROBE_TIMEOUT, Probe, ProbeError, amqp_connect, redis_ping};
use crate::jobs::{Job, JobContext, JobResult, NewJob, Outcome, Worker, job_for, parse_args};

pub const NAME: &str = "health_check";

pub struct HealthCheck;

/// A health check job (what cron inserts).
/// The health check takes no arguments.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {}

pub fn job() -> NewJob {
    job_for(&HealthCheck, json!(Args {}))
}

impl Worker for HealthCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_args(&self, args: &Value) -> Result<(), crate::jobs::ArgsError> {
        parse_args::<Args>(args).map(drop)
    }

    fn max_attempts(&self) -> i32 {
        3
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn perform<'a>(&'a self, ctx: &'a JobContext, _job: &'a Job) -> BoxFuture<'a, JobResult> {
        Box::pin(async move {
            let checks = measure(ctx).await;
            let healthy = checks
                .values()
                .all(|c| c.get("status").and_then(Value::as_str) == Some("ok"));
            let status = if healthy { "ok" } else { "degraded" };
            let mut tx = ctx.repo.system_tx().await?;
            let checked_at = crate::schemas::jobs::health_check::insert(
                &mut tx,
                status,
                &Value::Object(checks.clone()),
            )
            .await?;
            let health = SystemHealth {
                status: status.to_owned(),
                checks: Value::Object(checks),
                checked_at,
            };
            payloads::emit_global(&mut tx, &health).await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        })
    }
}

/// Every configured dependency, measured in parallel, each bounded by one second.
pub async fn measure(ctx: &JobContext) -> Map<String, Value> {
    let repo = ctx.repo.clone();
    // The readiness probe's fixed reason (the server's own text is logged, not stored).
    let database = timed(async move { Probe::check(&repo).await });
    let redis = ctx.config.redis.url.clone();
    let rabbitmq = ctx.config.rabbitmq.url.clone();
    let (database, redis, rabbitmq) = tokio::join!(
        database,
        async move {
            match redis {
                Some(url) => Some(timed(redis_ping(&url)).await),
                None => None,
            }
        },
        async move {
            match rabbitmq {
                Some(url) => Some(timed(amqp_connect(&url)).await),
                None => None,
            }
        },
    );
    let mut checks = Map::new();
    checks.insert("database".into(), database);
    if let Some(r) = redis {
        checks.insert("redis".into(), r);
    }
    if let Some(r) = rabbitmq {
        checks.insert("rabbitmq".into(), r);
    }
    checks
}

async fn timed(check: impl Future<Output = Result<(), ProbeError>>) -> Value {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout),
    };
    let latency_ms = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
    match outcome {
        Ok(()) => json!({"status": "ok", "latency_ms": latency_ms}),
        Err(error) => {
            json!({"status": "unavailable", "latency_ms": latency_ms, "error": error.to_string()})
        }
    }
}
