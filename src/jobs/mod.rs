//! The job engine (CONTRACT §7): Oban's guarantees on PostgreSQL.
//!
//! - [`storage`] holds every statement the engine runs (insert, fetch, ack, stage, rescue,
//!   prune, cancel, retry, pause); nothing else here builds SQL.
//! - [`executor`] runs one producer per queue (batch fetch with `FOR UPDATE SKIP LOCKED`,
//!   bounded by the queue's free concurrency), executes jobs as tasks (timeout, panics caught)
//!   and acknowledges their outcomes in batches.
//! - One file per maintenance duty: [`notifier`] (LISTEN/NOTIFY wake-ups and cancels),
//!   [`heartbeat`], [`rescuer`], [`stager`], [`cron`], [`pruner`], [`depth`] (queue gauges).
//! - Workers live in `src/workers/`, one file each, registered in [`crate::workers::registry`].

pub mod cron;
pub mod depth;
pub mod discard;
pub mod executor;
pub mod heartbeat;
pub mod notifier;
pub mod pruner;
pub mod rescuer;
pub mod stager;
pub mod storage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::config::Config;
use crate::repo::Repo;

pub use executor::{Engine, EngineOptions};
pub use storage::{Inserted, Job, NewJob, Unique};

crate::schemas::text_enum::text_enum! {
    /// A job's state (`jobs.state`, CHECK `jobs_state_valid`).
    pub enum JobState ("job state") {
        /// Waiting for a producer to fetch it.
        Available = "available",
        /// Waiting for its `scheduled_at` (the stager makes it available).
        Scheduled = "scheduled",
        /// Claimed by a node for its current attempt.
        Executing = "executing",
        /// Failed an attempt; waiting for its backoff (the stager makes it available).
        Retryable = "retryable",
        Completed = "completed",
        /// Out of attempts, or discarded by its worker.
        Discarded = "discarded",
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// Non-final states: a unique job in one of them blocks a duplicate.
    pub const LIVE: [JobState; 4] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Executing,
        JobState::Retryable,
    ];
}

/// How a job's attempt ended when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: the job becomes `completed`.
    Complete,
    /// Run again after this long, without using an attempt (`scheduled`).
    Snooze(Duration),
    /// Stop for good, by the job's own decision (`cancelled`), with the reason kept as an error.
    Cancel(String),
    /// Give up now whatever attempts remain (`discarded`), with the reason kept as an error.
    Discard(String),
}

/// A failed attempt: the job is retried with backoff until `max_attempts`, then discarded.
pub type JobError = anyhow::Error;

pub type JobResult = Result<Outcome, JobError>;

/// What a worker can reach while it runs.
#[derive(Clone)]
pub struct JobContext {
    pub repo: Repo,
    pub config: Arc<Config>,
    /// Shared HTTP client (LLM, webhooks).
    pub http: reqwest::Client,
    /// Every worker of this node (to build jobs for another worker, e.g. policy `enqueue`).
    pub registry: Registry,
}

impl JobContext {
    pub fn new(repo: Repo, config: Arc<Config>, registry: Registry) -> Self {
        Self {
            repo,
            config,
            http: reqwest::Client::new(),
            registry,
        }
    }
}

/// Whose work a worker does, which decides who may start its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Acts only within its job's tenant (under that tenant's row-level security): a tenant
    /// may enqueue it from a policy and retry its jobs.
    Tenant,
    /// Platform work (health checks, the evaluations the event relay starts, ...): its effects
    /// reach beyond one tenant, so only the platform enqueues or retries it.
    System,
}

/// One kind of job. A worker declares its name, queue, priority, attempts and uniqueness next
/// to its code (a `job(..) -> NewJob` constructor in its file) and is registered in
/// [`crate::workers::registry`].
pub trait Worker: Send + Sync + 'static {
    /// The `worker` column value; unique in the registry.
    fn name(&self) -> &'static str;

    /// Queue its jobs go to. Default `default`.
    fn queue(&self) -> &'static str {
        "default"
    }

    /// Priority of its jobs, 0 (first) to 9. Default 0.
    fn priority(&self) -> i16 {
        0
    }

    /// Attempts before a failing job is discarded. Default 20.
    fn max_attempts(&self) -> i32 {
        storage::DEFAULT_MAX_ATTEMPTS
    }

    /// `Some(period)`: a job with the same args (and tenant) inserted within `period` and not
    /// yet final is returned instead of inserting another. Default none.
    fn unique_for(&self) -> Option<Duration> {
        None
    }

    /// Longest one attempt may run; then it fails with a timeout error. Default 5 minutes.
    fn timeout(&self) -> Duration {
        Duration::from_secs(300)
    }

    /// Whose work it does. Default [`Scope::System`], so a new worker is out of tenants' reach
    /// until it says otherwise.
    fn scope(&self) -> Scope {
        Scope::System
    }

    /// Delay before retrying after failed attempt number `attempt` (1-based).
    fn backoff(&self, attempt: i32) -> Duration {
        crate::backoff::exponential(attempt)
    }

    /// Whether `args` fit this worker's arguments type (each worker has one serde struct,
    /// parsed with [`parse_args`]). Checked wherever args come from outside the worker's own
    /// `job(..)` constructor — a policy's `enqueue` (at save and at insert), a cron entry (at
    /// start) — so a job that cannot run is refused, not inserted. Default: any args.
    fn check_args(&self, args: &serde_json::Value) -> Result<(), ArgsError> {
        let _ = args;
        Ok(())
    }

    /// Runs one attempt.
    fn perform<'a>(&'a self, ctx: &'a JobContext, job: &'a Job) -> BoxFuture<'a, JobResult>;

    /// Called once `job` has become `discarded`, whichever path got it there (an error, timeout
    /// or panic on its last attempt, an `Outcome::Discard`, the rescuer), after that is
    /// committed, so the worker can end the work item the job stands for. `reason` is the last
    /// error kept on the job. An error is retried a few times, so this must be idempotent.
    /// Default: nothing.
    fn on_discarded<'a>(
        &'a self,
        ctx: &'a JobContext,
        job: &'a Job,
        reason: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        let _ = (ctx, job, reason);
        Box::pin(async { Ok(()) })
    }
}

/// The workers a node can run, by name.
#[derive(Default, Clone)]
pub struct Registry {
    workers: HashMap<&'static str, Arc<dyn Worker>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a worker; a second worker with the same name replaces the first.
    pub fn register(&mut self, worker: impl Worker) -> &mut Self {
        self.workers.insert(worker.name(), Arc::new(worker));
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Worker>> {
        self.workers.get(name).cloned()
    }

    /// A job of the worker named `name` with its declared queue, priority, attempts and
    /// uniqueness; `None` when no such worker is registered.
    pub fn job(&self, name: &str, args: serde_json::Value) -> Option<NewJob> {
        self.get(name).map(|w| job_for(w.as_ref(), args))
    }

    /// Whether `args` fit the worker named `name` (`Err` for unknown names too).
    pub fn check_args(&self, name: &str, args: &serde_json::Value) -> Result<(), ArgsError> {
        match self.get(name) {
            Some(w) => w.check_args(args),
            None => Err(ArgsError {
                path: "worker".to_owned(),
                message: format!("no worker named {name:?}"),
            }),
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.workers.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Whether a tenant may start jobs of the worker named `name` (false for unknown names).
    pub fn is_tenant_scoped(&self, name: &str) -> bool {
        self.get(name).is_some_and(|w| w.scope() == Scope::Tenant)
    }

    /// Names of the workers a tenant may start (a policy's `enqueue`, a job retry), sorted.
    pub fn tenant_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .workers
            .iter()
            .filter(|(_, w)| w.scope() == Scope::Tenant)
            .map(|(n, _)| *n)
            .collect();
        names.sort_unstable();
        names
    }
}

/// Why args do not fit a worker: where (`args` or `args.<field>`, so callers can prefix their
/// own path, e.g. `rules.then[0].enqueue.`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ArgsError {
    pub path: String,
    pub message: String,
}

/// A worker's arguments from a job's `args`, or why they do not fit.
pub fn parse_args<A: serde::de::DeserializeOwned>(
    args: &serde_json::Value,
) -> Result<A, ArgsError> {
    serde_path_to_error::deserialize(args).map_err(|e| ArgsError {
        path: match e.path().to_string() {
            path if path == "." => "args".to_owned(),
            path => format!("args.{path}"),
        },
        message: e.inner().to_string(),
    })
}

/// A job of `worker` with its declared queue, priority, attempts and uniqueness.
pub fn job_for(worker: &dyn Worker, args: serde_json::Value) -> NewJob {
    let job = NewJob::new(worker.name(), args)
        .queue(worker.queue())
        .priority(worker.priority())
        .max_attempts(worker.max_attempts());
    match worker.unique_for() {
        Some(period) => job.unique(period),
        None => job,
    }
}

/// A time `d` from now.
pub fn after(d: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// This node's identity in `job_nodes` and `jobs.attempted_by`: host, pid and a random suffix,
/// so a restarted process is a new node.
pub fn node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    // The tail of a v7 UUID is random.
    let suffix = Uuid::now_v7().simple().to_string();
    format!("{host}.{}.{}", std::process::id(), &suffix[24..])
}
