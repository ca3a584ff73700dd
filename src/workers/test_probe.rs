//! `test_probe` (test-only, `jobs.test_workers`): records each execution so end-to-end tests
//! can prove exactly-once delivery and concurrency limits across processes.
//!
//! Per execution it appends `<job id> <attempt> <jobs of this worker running in this process,
//! itself included>` to `<jobs.test_probe_dir>/<pid>.log`, then sleeps `args.sleep_ms`
//! (default 0) on attempts up to `args.sleep_attempts` (default all) — holding a pooled
//! connection meanwhile if `args.hold_connection` is true —, and fails with
//! "test_probe failed on attempt N" on attempts up to `args.fail_attempts` (default none). Each line is one
//! `write` to a file opened with `O_APPEND`, so a `kill -9`
//! never leaves half a line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;

use crate::jobs::{Job, JobContext, JobResult, Outcome, Scope, Worker};

pub const NAME: &str = "test_probe";

/// Executions of this worker running right now in this process.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

pub struct TestProbe {
    dir: Option<PathBuf>,
}

impl TestProbe {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    fn record(&self, job: &Job, running: usize) -> anyhow::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = dir.join(format!("{}.log", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        file.write_all(format!("{} {} {running}\n", job.id, job.attempt).as_bytes())
            .with_context(|| format!("write {}", path.display()))
    }
}

/// Decrements the running count however the attempt ends (done, panic, abort).
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Worker for TestProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Test-only: tests start it from tenants' policies.
    fn scope(&self) -> Scope {
        Scope::Tenant
    }

    fn perform<'a>(&'a self, ctx: &'a JobContext, job: &'a Job) -> BoxFuture<'a, JobResult> {
        Box::pin(async move {
            let running = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            let _running = Running;
            self.record(job, running)?;
            let sleep_ms = job
                .args
                .get("sleep_ms")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            let sleep_attempts = job
                .args
                .get("sleep_attempts")
                .and_then(|v| v.as_i64())
                .unwrap_or(i64::MAX);
            if sleep_ms > 0 && i64::from(job.attempt) <= sleep_attempts {
                // `hold_connection`: sleep holding a pooled connection, as a slow query would.
                let held =
                    if job.args.get("hold_connection") == Some(&serde_json::Value::Bool(true)) {
                        Some(ctx.repo.system_tx().await?)
                    } else {
                        None
                    };
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
                if let Some(tx) = held {
                    tx.rollback().await?;
                }
            }
            let fail_attempts = job
                .args
                .get("fail_attempts")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            if i64::from(job.attempt) <= fail_attempts {
                anyhow::bail!("test_probe failed on attempt {}", job.attempt);
            }
            Ok(Outcome::Complete)
        })
    }
}
