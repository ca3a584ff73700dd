//! Runs jobs: one producer per queue claims batches bounded by the queue's free concurrency,
//! each job runs as its own task (timeout enforced, panics caught), and one acknowledger writes
//! outcomes back in batches. Graceful shutdown: stop fetching, let running jobs finish within
//! the grace period, abort the rest and hand them back.
//!
//! Outcomes survive a database outage: the acknowledger keeps retrying (capped backoff) for as
//! long as the process lives, holding at most [`ACK_BACKLOG`] outcomes while producers stop
//! fetching. Only at shutdown does it give up, after the grace period; the node has stopped
//! heartbeating by then, so the rescuer runs those jobs again. A batch that fails for a reason
//! other than the connection is written row by row, so one bad outcome affects only itself.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;
use uuid::Uuid;

use super::storage::{self, Ack, AckState, Job};
use super::{JobContext, JobResult, Outcome, Registry, Worker, discard};
use crate::backoff;
use crate::config::{Config, CronEntry};
use crate::maintenance::{self, Pass, Periodic};
use crate::metrics::METRICS;
use crate::repo::{DbError, Repo};
use crate::shutdown::Shutdown;

/// Most jobs claimed by one fetch.
const FETCH_BATCH: usize = 1000;
/// Longest a producer waits for more free slots before fetching (see `gather_free_slots`).
const GATHER: Duration = Duration::from_millis(2);
/// Most outcomes written by one acknowledgement.
const ACK_BATCH: usize = 2000;
/// Most outcomes the acknowledger holds unwritten (the database refuses them); above it the
/// producers stop fetching, so an outage cannot grow memory without bound.
pub const ACK_BACKLOG: usize = 10 * ACK_BATCH;
/// Retry delays of a failed acknowledgement: from the first, doubling, to the cap (which
/// bounds how late outcomes are written after the database is back).
const ACK_RETRY_FIRST: Duration = Duration::from_millis(50);
const ACK_RETRY_CAP: Duration = Duration::from_secs(2);
/// Longest error text kept per attempt, in bytes.
pub const MAX_ERROR_LEN: usize = 8 * 1024;

/// How an engine runs; [`EngineOptions::from_config`] reads it from `[jobs]`.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// This node's id (`jobs.attempted_by`).
    pub node: String,
    /// Queues and their per-node concurrency.
    pub queues: Vec<(String, usize)>,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub rescue_after: Duration,
    pub prune_after: Duration,
    pub prune_interval: Duration,
    pub cron: Vec<CronEntry>,
    /// Time running jobs get to finish after shutdown is triggered.
    pub grace: Duration,
}

impl EngineOptions {
    /// From `[jobs]` and `server.shutdown_grace_secs`; `queues` (from `--queue`) replaces the
    /// configured queues when given.
    pub fn from_config(cfg: &Config, queues: Option<Vec<(String, usize)>>) -> Self {
        let j = &cfg.jobs;
        Self {
            node: super::node_id(),
            queues: queues
                .unwrap_or_else(|| j.queues.iter().map(|(q, n)| (q.clone(), *n)).collect()),
            poll_interval: j.poll_interval(),
            heartbeat_interval: Duration::from_secs(j.heartbeat_interval_secs),
            rescue_after: Duration::from_secs(j.rescue_after_secs),
            prune_after: Duration::from_secs(j.prune_after_days.saturating_mul(86_400)),
            prune_interval: Duration::from_secs(j.prune_interval_secs),
            cron: j.cron.clone(),
            grace: cfg.server.shutdown_grace(),
        }
    }
}

/// What the acknowledger is told.
enum AckMsg {
    Ack(Ack),
    /// Write everything received so far, trying until `deadline`, answer with how many
    /// outcomes are still unwritten, and stop.
    Stop {
        deadline: tokio::time::Instant,
        done: oneshot::Sender<usize>,
    },
}

/// One queue's runtime state on this node.
struct QueueRt {
    limit: usize,
    /// One permit per job that may run at once.
    slots: Arc<Semaphore>,
    /// Woken by NOTIFY (jobs inserted, staged, rescued, queue resumed) and by polling.
    wake: Arc<Notify>,
    /// Woken when a running job frees its slot.
    freed: Arc<Notify>,
}

struct Inner {
    repo: Repo,
    ctx: JobContext,
    registry: Registry,
    opts: EngineOptions,
    queues: HashMap<String, QueueRt>,
    /// Jobs running on this node, so a cancel can stop them.
    running: Mutex<HashMap<Uuid, AbortHandle>>,
    /// Outcomes the acknowledger holds unwritten; producers pause above [`ACK_BACKLOG`].
    backlog: AtomicUsize,
}

/// A node's job engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn new(repo: Repo, config: Arc<Config>, registry: Registry, opts: EngineOptions) -> Self {
        let queues = opts
            .queues
            .iter()
            .map(|(name, limit)| {
                let limit = (*limit).max(1);
                (
                    name.clone(),
                    QueueRt {
                        limit,
                        slots: Arc::new(Semaphore::new(limit)),
                        wake: Arc::new(Notify::new()),
                        freed: Arc::new(Notify::new()),
                    },
                )
            })
            .collect();
        let ctx = JobContext::new(repo.clone(), config, registry.clone());
        Engine {
            inner: Arc::new(Inner {
                repo,
                ctx,
                registry,
                opts,
                queues,
                running: Mutex::new(HashMap::new()),
                backlog: AtomicUsize::new(0),
            }),
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.opts.node
    }

    pub fn repo(&self) -> &Repo {
        &self.inner.repo
    }

    /// Runs until `shutdown` is triggered, then shuts down gracefully and returns. Fails only
    /// when the node cannot register itself at start.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), DbError> {
        let inner = self.inner.clone();
        let queue_names: Vec<String> = inner.opts.queues.iter().map(|(q, _)| q.clone()).collect();
        super::heartbeat::beat(&inner.repo, &inner.opts.node, &queue_names).await?;
        tracing::info!(node = %inner.opts.node, queues = ?inner.opts.queues, "job engine started");

        let (ack_tx, ack_rx) = mpsc::channel::<AckMsg>(4 * ACK_BATCH);
        let acker = tokio::spawn(acknowledge(inner.clone(), ack_rx));

        let mut services = Vec::new();
        let wakes: HashMap<String, Arc<Notify>> = inner
            .queues
            .iter()
            .map(|(q, rt)| (q.clone(), rt.wake.clone()))
            .collect();
        let cancel_target = inner.clone();
        services.push(tokio::spawn(super::notifier::run(
            inner.repo.clone(),
            wakes,
            Box::new(move |id| cancel_target.stop_running(id)),
            shutdown.clone(),
        )));
        services.push(maintenance::spawn(
            CancelWatch(inner.clone()),
            shutdown.clone(),
        ));
        // Not stopped by the shutdown: the node is alive while it drains (see heartbeat.rs).
        let heartbeat = maintenance::Scoped::new(tokio::spawn(
            super::heartbeat::Heartbeat {
                repo: inner.repo.clone(),
                node: inner.opts.node.clone(),
                queues: queue_names,
                every: inner.opts.heartbeat_interval,
                rescue_after: inner.opts.rescue_after,
            }
            .run(),
        ));
        services.push(maintenance::spawn(
            super::stager::Stager {
                repo: inner.repo.clone(),
                every: inner.opts.poll_interval,
            },
            shutdown.clone(),
        ));
        services.push(maintenance::spawn(
            super::rescuer::Rescuer {
                ctx: inner.ctx.clone(),
                after: inner.opts.rescue_after,
            },
            shutdown.clone(),
        ));
        services.push(maintenance::spawn(
            super::pruner::Pruner {
                repo: inner.repo.clone(),
                after: inner.opts.prune_after,
                every: inner.opts.prune_interval,
            },
            shutdown.clone(),
        ));
        if let Some(cron) = super::cron::CronTicker::new(
            inner.repo.clone(),
            inner.registry.clone(),
            inner.opts.cron.clone(),
        ) {
            services.push(maintenance::spawn(cron, shutdown.clone()));
        }
        services.push(maintenance::spawn(
            super::depth::Depth {
                repo: inner.repo.clone(),
                every: Duration::from_secs(5),
                queues: inner.queues.keys().cloned().collect(),
            },
            shutdown.clone(),
        ));

        let producers: Vec<_> = inner
            .queues
            .keys()
            .map(|q| {
                tokio::spawn(produce(
                    inner.clone(),
                    q.clone(),
                    ack_tx.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();

        shutdown.wait().await;
        tracing::info!(node = %inner.opts.node, "job engine stopping: no new jobs, waiting for running ones");
        for p in producers {
            let _ = p.await;
        }
        if tokio::time::timeout(inner.opts.grace, inner.idle())
            .await
            .is_err()
        {
            let stopped = inner.stop_all_running();
            tracing::warn!(
                jobs = stopped,
                "grace period over: stopping running jobs and handing them back"
            );
            let _ = tokio::time::timeout(Duration::from_secs(2), inner.idle()).await;
        }
        let (done_tx, done_rx) = oneshot::channel();
        let stop = AckMsg::Stop {
            deadline: tokio::time::Instant::now() + inner.opts.grace,
            done: done_tx,
        };
        // With the backlog full the acknowledger takes nothing from the channel, so even the
        // stop request may not get in: bound the wait by the grace period too.
        let unwritten = match tokio::time::timeout(inner.opts.grace, ack_tx.send(stop)).await {
            Ok(Ok(())) => done_rx.await.unwrap_or(0),
            Ok(Err(_)) => 0,
            Err(_) => {
                acker.abort();
                inner.backlog.load(Ordering::Relaxed).max(1)
            }
        };
        let _ = acker.await;
        if unwritten > 0 {
            // The heartbeat stops below: if the hand-back fails too, the node's row goes stale,
            // its lock is free, and any node's rescuer runs these jobs again.
            tracing::error!(
                jobs = unwritten,
                "stopping with outcomes the database did not take; the jobs will run again"
            );
        }
        // Stop beating first, so no beat re-adds the row hand_back_and_leave removes.
        heartbeat.stop().await;
        match hand_back_and_leave(&inner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "handed unfinished jobs back"),
            Err(e) => tracing::warn!(error = %e, "could not hand jobs back; the rescuer will"),
        }
        for s in services {
            s.abort();
        }
        tracing::info!(node = %inner.opts.node, "job engine stopped");
        Ok(())
    }

    /// Test and tooling helper: stages due jobs, then claims and runs every available job of
    /// `queue` one at a time on this task, acknowledging each at once, until none is left.
    /// Returns how many attempts ran. It executes exactly as the producers do (timeout, panic
    /// capture, backoff, outcome mapping).
    pub async fn drain(&self, queue: &str) -> Result<usize, DbError> {
        let inner = &self.inner;
        let mut ran = 0;
        loop {
            let mut tx = inner.repo.system_tx().await?;
            storage::stage(&mut tx, 10_000).await?;
            let jobs = storage::fetch(&mut tx, queue, 100, &inner.opts.node).await?;
            tx.commit().await?;
            if jobs.is_empty() {
                return Ok(ran);
            }
            for job in jobs {
                let mut acks = vec![execute(inner, &job).await];
                let mut discarded = Vec::new();
                let written =
                    record_outcomes(&inner.repo, &inner.opts.node, &mut acks, &mut discarded).await;
                discard::run_hooks(&inner.ctx, &discarded).await;
                written?;
                ran += 1;
            }
        }
    }
}

impl Inner {
    /// Aborts the job `id` if it runs here (it was cancelled).
    fn stop_running(&self, id: Uuid) {
        if let Some(handle) = lock(&self.running).remove(&id) {
            handle.abort();
            tracing::info!(job_id = %id, "cancelled job stopped");
        }
    }

    fn stop_all_running(&self) -> usize {
        let mut running = lock(&self.running);
        let n = running.len();
        for (_, handle) in running.drain() {
            handle.abort();
        }
        n
    }

    /// Resolves when no job runs on this node.
    async fn idle(&self) {
        for rt in self.queues.values() {
            if let Ok(all) = rt.slots.acquire_many(rt.limit as u32).await {
                drop(all);
            }
        }
    }
}

/// Every poll interval, stops running jobs that were cancelled: the fallback for a cancel
/// NOTIFY missed while the listener was (re)connecting. Quiet: the notifier already reports
/// the outage.
struct CancelWatch(Arc<Inner>);

impl Periodic for CancelWatch {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "cancel watch"
    }

    fn every(&self) -> Duration {
        self.0.opts.poll_interval
    }

    fn quiet(&self) -> bool {
        true
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            let inner = &self.0;
            let ids: Vec<Uuid> = lock(&inner.running).keys().copied().collect();
            if ids.is_empty() {
                return Ok(Pass::Done);
            }
            let mut tx = inner.repo.system_tx().await?;
            let found = storage::cancelled_among(&mut tx, &ids).await?;
            tx.commit().await?;
            found.into_iter().for_each(|id| inner.stop_running(id));
            Ok(Pass::Done)
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts and
    // removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn hand_back_and_leave(inner: &Inner) -> Result<usize, DbError> {
    let mut tx = inner.repo.system_tx().await?;
    let n = storage::hand_back(&mut tx, &inner.opts.node).await?;
    storage::remove_node(&mut tx, &inner.opts.node).await?;
    tx.commit().await?;
    Ok(n)
}

/// The producer of one queue: fetch while there is work and a free slot, otherwise sleep until
/// a NOTIFY, a poll tick, or (when the last fetch was full) a freed slot.
async fn produce(
    inner: Arc<Inner>,
    queue: String,
    ack_tx: mpsc::Sender<AckMsg>,
    shutdown: Shutdown,
) {
    let Some(rt) = inner.queues.get(&queue) else {
        return;
    };
    let mut poll = tokio::time::interval(inner.opts.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut more = true;
    let mut failures = 0u32;
    loop {
        if shutdown.is_triggered() {
            return;
        }
        let free = rt.slots.available_permits();
        // While the acknowledger cannot write outcomes, running more jobs only piles them up.
        let backlogged = inner.backlog.load(Ordering::Relaxed) >= ACK_BACKLOG;
        if more && free > 0 && !backlogged {
            match fetch(&inner, &queue, free.min(FETCH_BATCH)).await {
                Ok(jobs) => {
                    failures = 0;
                    more = jobs.len() == free.min(FETCH_BATCH);
                    for job in jobs {
                        spawn_job(&inner, rt, job, ack_tx.clone());
                    }
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    more = false;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(queue = %queue, error = %e, "fetching jobs failed; retrying at the next poll");
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = rt.wake.notified() => more = true,
            _ = poll.tick() => more = true,
            _ = rt.freed.notified(), if more => gather_free_slots(rt).await,
        }
    }
}

/// After a slot frees up in a saturated queue, waits briefly (at most [`GATHER`]) until half
/// the queue's slots are free, so the next fetch claims a batch instead of a single job: with
/// short jobs, fetching per freed slot would cost a round trip per job.
async fn gather_free_slots(rt: &QueueRt) {
    let want = rt.limit.div_ceil(2);
    let deadline = tokio::time::Instant::now() + GATHER;
    while rt.slots.available_permits() < want {
        if tokio::time::timeout_at(deadline, rt.freed.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn fetch(inner: &Inner, queue: &str, limit: usize) -> Result<Vec<Job>, DbError> {
    let mut tx = inner.repo.system_tx().await?;
    let jobs = storage::fetch(&mut tx, queue, limit, &inner.opts.node).await?;
    tx.commit().await?;
    Ok(jobs)
}

/// Frees a job's slot and forgets it when its task ends, however it ends (done, aborted).
struct Slot {
    inner: Arc<Inner>,
    id: Uuid,
    _permit: tokio::sync::OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.inner.running).remove(&self.id);
        self.freed.notify_one();
    }
}

fn spawn_job(inner: &Arc<Inner>, rt: &QueueRt, job: Job, ack_tx: mpsc::Sender<AckMsg>) {
    // Only this producer takes permits, and it fetched no more jobs than were free.
    let Ok(permit) = rt.slots.clone().try_acquire_owned() else {
        tracing::error!(job_id = %job.id, "no free slot for a fetched job; the rescuer will return it");
        return;
    };
    let id = job.id;
    let slot = Slot {
        inner: inner.clone(),
        id,
        _permit: permit,
        freed: rt.freed.clone(),
    };
    let task_inner = inner.clone();
    // Hold the map while spawning so the task cannot finish and remove itself before it is in.
    let mut running = lock(&inner.running);
    let handle = tokio::spawn(async move {
        let _slot = slot;
        let ack = execute(&task_inner, &job).await;
        let _ = ack_tx.send(AckMsg::Ack(ack)).await;
    });
    running.insert(id, handle.abort_handle());
}

/// Runs one attempt and turns its result into the acknowledgement to write.
async fn execute(inner: &Inner, job: &Job) -> Ack {
    let worker = inner.registry.get(&job.worker);
    if let Some(attempted) = job.attempted_at {
        let waited = (attempted - job.scheduled_at).to_std().unwrap_or_default();
        METRICS
            .job_queue_time
            .with_label_values(&[&job.queue, &job.worker])
            .observe(waited.as_secs_f64());
    }
    let started = Instant::now();
    let result = run_worker(worker.as_deref(), &inner.ctx, job).await;
    let elapsed = started.elapsed();
    let backoff = worker
        .as_ref()
        .map(|w| w.backoff(job.attempt))
        .unwrap_or_else(|| backoff::exponential(job.attempt));
    let ack = to_ack(job, result, elapsed, backoff);
    METRICS
        .jobs
        .with_label_values(&[&job.queue, &job.worker, ack.state.as_str()])
        .inc();
    METRICS
        .job_duration
        .with_label_values(&[&job.queue, &job.worker])
        .observe(elapsed.as_secs_f64());
    if let Some(error) = &ack.error {
        tracing::warn!(job_id = %job.id, worker = %job.worker, attempt = job.attempt, state = ack.state.as_str(), error = %error, "job attempt failed");
    }
    ack
}

async fn run_worker(worker: Option<&dyn Worker>, ctx: &JobContext, job: &Job) -> JobResult {
    let Some(worker) = worker else {
        return Err(anyhow::anyhow!(
            "no worker named {:?} is registered on this node",
            job.worker
        ));
    };
    let timeout = worker.timeout();
    let attempt = AssertUnwindSafe(tokio::time::timeout(timeout, worker.perform(ctx, job)));
    match attempt.catch_unwind().await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(anyhow::anyhow!(
            "timed out after {:.3}s",
            timeout.as_secs_f64()
        )),
        Err(panic) => Err(anyhow::anyhow!(
            "panicked: {}",
            panic_message(panic.as_ref())
        )),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// Maps an attempt's result to the state the job moves to.
pub fn to_ack(job: &Job, result: JobResult, elapsed: Duration, backoff: Duration) -> Ack {
    let (state, scheduled_at, error) = match result {
        Ok(Outcome::Complete) => (AckState::Completed, None, None),
        Ok(Outcome::Snooze(d)) => (AckState::Snoozed, Some(super::after(d)), None),
        Ok(Outcome::Cancel(reason)) => (AckState::Cancelled, None, Some(reason)),
        Ok(Outcome::Discard(reason)) => (AckState::Discarded, None, Some(reason)),
        Err(e) if job.attempt >= job.max_attempts => {
            (AckState::Discarded, None, Some(format!("{e:#}")))
        }
        Err(e) => (
            AckState::Retryable,
            Some(super::after(backoff)),
            Some(format!("{e:#}")),
        ),
    };
    Ack {
        id: job.id,
        attempt: job.attempt,
        state,
        scheduled_at,
        error: error.map(|e| sanitize_error(&e)),
        duration_ms: elapsed.as_millis().min(i64::MAX as u128) as i64,
        tenant: job.tenant_id.is_some(),
    }
}

/// An error text PostgreSQL can store and a reader can use: without NUL characters (text
/// columns refuse them) and at most [`MAX_ERROR_LEN`] bytes, cut at a character boundary.
pub fn sanitize_error(text: &str) -> String {
    let mut clean: String = text.chars().filter(|c| *c != '\0').collect();
    if clean.len() > MAX_ERROR_LEN {
        const MARK: &str = " …(truncated)";
        let mut cut = MAX_ERROR_LEN - MARK.len();
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
        clean.push_str(MARK);
    }
    clean
}

/// The shutdown request the acknowledger received, if any.
type StopRequest = Option<(tokio::time::Instant, oneshot::Sender<usize>)>;

/// Writes outcomes in batches: whatever arrived while the previous batch was being written goes
/// in the next. A failed write is retried with capped backoff for as long as the process runs
/// (the jobs stay `executing` meanwhile; nothing is dropped), while new outcomes keep joining
/// the backlog up to [`ACK_BACKLOG`]. After a stop request it tries until the request's
/// deadline, then reports what is left.
async fn acknowledge(inner: Arc<Inner>, mut rx: mpsc::Receiver<AckMsg>) {
    let mut pending: Vec<Ack> = Vec::new();
    let mut stop: StopRequest = None;
    let mut failures = 0u32;
    loop {
        take_arrived(&mut rx, &mut pending, &mut stop);
        if pending.is_empty() {
            if let Some((_, done)) = stop.take() {
                let _ = done.send(0);
                return;
            }
            match rx.recv().await {
                Some(msg) => receive(msg, &mut pending, &mut stop),
                None => return,
            }
            continue;
        }
        inner.backlog.store(pending.len(), Ordering::Relaxed);
        let mut discarded = Vec::new();
        let written =
            record_outcomes(&inner.repo, &inner.opts.node, &mut pending, &mut discarded).await;
        inner.backlog.store(pending.len(), Ordering::Relaxed);
        spawn_hooks(&inner, discarded);
        match written {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, "acknowledging jobs works again");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(failures, jobs = pending.len(), error = %e, "acknowledging jobs failed; retrying");
                }
                let mut until = tokio::time::Instant::now()
                    + backoff::capped(failures, ACK_RETRY_FIRST, ACK_RETRY_CAP);
                if let Some((deadline, _)) = &stop {
                    if tokio::time::Instant::now() >= *deadline {
                        if let Some((_, done)) = stop.take() {
                            let _ = done.send(pending.len());
                        }
                        return;
                    }
                    until = until.min(*deadline);
                }
                wait_taking_outcomes(&mut rx, &mut pending, &mut stop, until).await;
            }
        }
    }
}

fn receive(msg: AckMsg, pending: &mut Vec<Ack>, stop: &mut StopRequest) {
    match msg {
        AckMsg::Ack(a) => pending.push(a),
        AckMsg::Stop { deadline, done } => *stop = Some((deadline, done)),
    }
}

/// Moves outcomes that have already arrived into `pending`, up to the backlog cap.
fn take_arrived(rx: &mut mpsc::Receiver<AckMsg>, pending: &mut Vec<Ack>, stop: &mut StopRequest) {
    while pending.len() < ACK_BACKLOG {
        match rx.try_recv() {
            Ok(msg) => receive(msg, pending, stop),
            Err(_) => return,
        }
    }
}

/// Sleeps until `until`, meanwhile taking new outcomes while the backlog is under its cap
/// (above it, finished jobs wait to hand over their outcome, holding their slots).
async fn wait_taking_outcomes(
    rx: &mut mpsc::Receiver<AckMsg>,
    pending: &mut Vec<Ack>,
    stop: &mut StopRequest,
    until: tokio::time::Instant,
) {
    let mut open = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return,
            msg = rx.recv(), if open && pending.len() < ACK_BACKLOG => match msg {
                Some(msg) => receive(msg, pending, stop),
                None => open = false,
            },
        }
    }
}

fn spawn_hooks(inner: &Arc<Inner>, discarded: Vec<Uuid>) {
    if discarded.is_empty() {
        return;
    }
    let ctx = inner.ctx.clone();
    tokio::spawn(async move { discard::run_hooks(&ctx, &discarded).await });
}

/// Writes `acks` (at most [`ACK_BATCH`] per statement), removing each written one, and adds
/// the jobs that became discarded to `discarded`. A batch failing for a reason other than the
/// connection is written row by row, so only a bad row is affected, and that one is recorded
/// again with its error text replaced. Fails (leaving the unwritten ones in `acks`) only when
/// the database cannot be reached.
pub async fn record_outcomes(
    repo: &Repo,
    node: &str,
    acks: &mut Vec<Ack>,
    discarded: &mut Vec<Uuid>,
) -> Result<(), DbError> {
    while !acks.is_empty() {
        let n = acks.len().min(ACK_BATCH);
        match write_acks(repo, node, &acks[..n]).await {
            Ok(d) => discarded.extend(d),
            Err(e) if is_transient(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(jobs = n, error = %e, "a batch of outcomes was refused; writing them one by one");
                for i in 0..n {
                    match write_one(repo, node, &acks[i]).await {
                        Ok(d) => discarded.extend(d),
                        Err(e) => {
                            acks.drain(..i);
                            return Err(e);
                        }
                    }
                }
            }
        }
        acks.drain(..n);
    }
    Ok(())
}

/// Writes one outcome; if the database refuses it (not the connection), writes it again with
/// an error text that cannot be at fault, so the job still ends in the state its attempt
/// reached.
async fn write_one(repo: &Repo, node: &str, ack: &Ack) -> Result<Vec<Uuid>, DbError> {
    match write_acks(repo, node, std::slice::from_ref(ack)).await {
        Err(e) if !is_transient(&e) => {
            tracing::error!(job_id = %ack.id, error = %e, "an outcome was refused; recording it without its error text");
            let mut plain = ack.clone();
            plain.error = Some(sanitize_error(&format!(
                "(the error text could not be stored: {e})"
            )));
            write_acks(repo, node, std::slice::from_ref(&plain)).await
        }
        other => other,
    }
}

async fn write_acks(repo: &Repo, node: &str, acks: &[Ack]) -> Result<Vec<Uuid>, DbError> {
    let mut tx = repo.system_tx().await?;
    let acked = storage::ack(&mut tx, node, acks).await?;
    tx.commit().await?;
    Ok(acked.discarded)
}

/// Whether `e` says the database could not be reached or the connection broke (retry the same
/// write later) rather than that the data was refused (isolate the bad row).
fn is_transient(e: &DbError) -> bool {
    use diesel::result::{DatabaseErrorKind as Kind, Error as DieselError};
    match e {
        DbError::Unavailable(_) => true,
        DbError::NotFound | DbError::Validation { .. } | DbError::Conflict { .. } => false,
        DbError::Other(DieselError::DatabaseError(kind, info)) => match kind {
            Kind::UnableToSendCommand | Kind::ClosedConnection | Kind::SerializationFailure => true,
            Kind::Unknown => {
                let m = info.message();
                m.contains("connection") || m.contains("shutting down") || m.contains("recovery")
            }
            _ => false,
        },
        // Pool, transaction-manager and protocol failures: not the rows' fault.
        DbError::Other(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack() -> Ack {
        Ack {
            id: Uuid::now_v7(),
            attempt: 1,
            state: AckState::Completed,
            scheduled_at: None,
            error: None,
            duration_ms: 0,
            tenant: false,
        }
    }

    #[tokio::test]
    async fn the_backlog_stops_taking_outcomes_at_its_cap() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut pending: Vec<Ack> = (0..ACK_BACKLOG - 1).map(|_| ack()).collect();
        let mut stop = None;
        for _ in 0..3 {
            tx.send(AckMsg::Ack(ack())).await.ok();
        }
        take_arrived(&mut rx, &mut pending, &mut stop);
        assert_eq!(pending.len(), ACK_BACKLOG);
        let until = tokio::time::Instant::now() + Duration::from_millis(20);
        wait_taking_outcomes(&mut rx, &mut pending, &mut stop, until).await;
        assert_eq!(
            pending.len(),
            ACK_BACKLOG,
            "nothing more joins a full backlog"
        );
        assert_eq!(rx.len(), 2, "the rest wait in the channel");
        pending.truncate(ACK_BACKLOG - 2);
        let until = tokio::time::Instant::now() + Duration::from_millis(20);
        wait_taking_outcomes(&mut rx, &mut pending, &mut stop, until).await;
        assert_eq!(pending.len(), ACK_BACKLOG);
        assert!(rx.is_empty());
    }

    #[test]
    fn error_texts_lose_nul_and_are_capped_at_a_char_boundary() {
        assert_eq!(sanitize_error("a\0b\0"), "ab");
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = sanitize_error(&long);
        assert!(cut.len() <= MAX_ERROR_LEN);
        assert!(cut.ends_with("(truncated)"));
        assert_eq!(sanitize_error("short"), "short");
    }

    #[test]
    fn connection_failures_are_retried_and_refused_data_is_isolated() {
        assert!(is_transient(&DbError::Unavailable("down".into())));
        assert!(!is_transient(&DbError::Validation {
            field: "body",
            message: "text must not contain the NUL character",
        }));
    }
}
