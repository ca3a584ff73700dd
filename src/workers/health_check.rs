//! `health_check` (cron, hourly by default): measures each configured dependency (PostgreSQL
//! always; Redis and RabbitMQ when their URLs are set), stores the result in `health_checks`
//! and emits `system.health` to every tenant, in one system transaction.
//!
//! A degraded result is a successful measurement: the job completes and the event says what is
//! down. Only failing to store the result is a job error.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::ServiceUrl;
use crate::health::PROBE_TIMEOUT;
use crate::jobs::{Job, JobContext, JobResult, NewJob, Outcome, Worker, job_for};

pub const NAME: &str = "health_check";

pub struct HealthCheck;

/// A health check job (what cron inserts).
pub fn job() -> NewJob {
    job_for(&HealthCheck, json!({}))
}

impl Worker for HealthCheck {
    fn name(&self) -> &'static str {
        NAME
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
            crate::events::record_global(
                &mut tx,
                "system.health",
                &json!({"status": status, "checks": checks, "checked_at": checked_at}),
            )
            .await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        })
    }
}

/// Every configured dependency, measured in parallel, each bounded by one second.
pub async fn measure(ctx: &JobContext) -> Map<String, Value> {
    let repo = ctx.repo.clone();
    let database = timed(async move { repo.ping().await.map(|_| ()).map_err(|e| e.to_string()) });
    let redis = ctx.config.redis.url.clone();
    let rabbitmq = ctx.config.rabbitmq.url.clone();
    let (database, redis, rabbitmq) = tokio::join!(
        database,
        async move {
            match redis {
                Some(url) => Some(timed(redis_ping(url)).await),
                None => None,
            }
        },
        async move {
            match rabbitmq {
                Some(url) => Some(timed(amqp_handshake(url)).await),
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

async fn timed(check: impl Future<Output = Result<(), String>>) -> Value {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    };
    let latency_ms = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
    match outcome {
        Ok(()) => json!({"status": "ok", "latency_ms": latency_ms}),
        Err(error) => json!({"status": "unavailable", "latency_ms": latency_ms, "error": error}),
    }
}

async fn connect(url: &ServiceUrl) -> Result<TcpStream, String> {
    let target = url.host_port();
    TcpStream::connect(&target)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))
}

/// Redis answers an inline `PING` with `+PONG` (or `-NOAUTH`, which still proves it is up).
async fn redis_ping(url: ServiceUrl) -> Result<(), String> {
    let mut stream = connect(&url).await?;
    stream
        .write_all(b"PING\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
    match buf.get(..n) {
        Some(reply) if reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH") => Ok(()),
        _ => Err("unexpected answer to PING".into()),
    }
}

/// RabbitMQ answers the AMQP 0-9-1 protocol header with a `Connection.Start` method frame.
async fn amqp_handshake(url: ServiceUrl) -> Result<(), String> {
    let mut stream = connect(&url).await?;
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .map_err(|e| e.to_string())?;
    let mut frame_type = [0u8; 1];
    stream
        .read_exact(&mut frame_type)
        .await
        .map_err(|e| e.to_string())?;
    if frame_type[0] == 1 {
        Ok(())
    } else {
        Err("not an AMQP 0-9-1 server".into())
    }
}
