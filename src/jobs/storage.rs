//! Every statement the job engine runs, behind a narrow interface: insert, fetch, ack (complete,
//! retry, snooze, cancel, discard), stage, rescue, hand back, prune, cancel, retry, pause.
//!
//! Insertion, and the reads and changes a tenant may make to its own jobs (find, list, cancel,
//! retry, counts), take either kind of transaction ([`AnyTx`]): in a tenant transaction
//! row-level security lets a tenant insert and see only its own jobs, so an episode and its
//! analysis job commit together. Everything else is engine machinery and takes the
//! [`SystemTx`] of [`crate::repo::Repo::system_tx`].
//! Inserting an available job NOTIFYs [`NOTIFY_CHANNEL`] with the queue name; PostgreSQL
//! delivers it at commit, and never for a rolled-back insert.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Double, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz,
    Uuid as SqlUuid,
};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::JobState;
use crate::events;
use crate::repo::{AnyTx, Conn, DbError, Prepare, SystemTx};
use crate::schemas::schema::{job_cron_slots, job_nodes, job_queues, jobs};

/// Channel woken when jobs become available; the payload is the queue name.
pub const NOTIFY_CHANNEL: &str = "vsm_jobs";
/// Channel told about cancelled jobs; the payload is the job id, so the node running it can
/// stop it.
pub const CANCEL_CHANNEL: &str = "vsm_jobs_cancel";

/// Default `max_attempts` (CONTRACT §7).
pub const DEFAULT_MAX_ATTEMPTS: i32 = 20;

/// A row of `jobs`.
#[derive(Debug, Clone, Serialize, Queryable, QueryableByName, Selectable, utoipa::ToSchema)]
#[diesel(table_name = jobs, check_for_backend(diesel::pg::Pg))]
pub struct Job {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub state: JobState,
    pub queue: String,
    pub worker: String,
    #[schema(value_type = Object)]
    pub args: Value,
    /// One entry per failed attempt: `{"attempt","at","error"}`.
    #[schema(value_type = Vec<Object>)]
    pub errors: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i16,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub meta: Value,
    #[serde(skip)]
    pub unique_key: Option<String>,
    pub inserted_at: DateTime<Utc>,
    pub scheduled_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub attempted_by: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub discarded_at: Option<DateTime<Utc>>,
}

/// Uniqueness of an insert: no second job with the same worker, args (and tenant) while one
/// inserted within `period` is still in a non-final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unique {
    pub period: Duration,
}

/// A job to insert; build it with [`NewJob::new`] and the option methods.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub worker: String,
    pub queue: String,
    pub args: Value,
    /// 0 (first) to 9.
    pub priority: i16,
    pub max_attempts: i32,
    /// `None`: now.
    pub scheduled_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub meta: Value,
    /// The tenant the job acts for; `None` for system jobs.
    pub tenant_id: Option<Uuid>,
    pub unique: Option<Unique>,
}

impl NewJob {
    /// A job of `worker` with `args` (a JSON object) on the `default` queue.
    pub fn new(worker: &str, args: Value) -> Self {
        Self {
            worker: worker.to_owned(),
            queue: "default".to_owned(),
            args,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            scheduled_at: None,
            tags: Vec::new(),
            meta: Value::Object(Default::default()),
            tenant_id: None,
            unique: None,
        }
    }

    pub fn queue(mut self, queue: &str) -> Self {
        self.queue = queue.to_owned();
        self
    }

    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    pub fn max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    pub fn schedule_at(mut self, at: DateTime<Utc>) -> Self {
        self.scheduled_at = Some(at);
        self
    }

    pub fn schedule_in(self, delay: Duration) -> Self {
        self.schedule_at(super::after(delay))
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    pub fn meta(mut self, meta: Value) -> Self {
        self.meta = meta;
        self
    }

    pub fn tenant(mut self, tenant_id: Uuid) -> Self {
        self.tenant_id = Some(tenant_id);
        self
    }

    pub fn unique(mut self, period: Duration) -> Self {
        self.unique = Some(Unique { period });
        self
    }

    fn validate(&self) -> Result<(), DbError> {
        let invalid = |field, message| Err(DbError::Validation { field, message });
        if !(0..=9).contains(&self.priority) {
            return invalid("priority", "must be 0 to 9");
        }
        if self.max_attempts < 1 {
            return invalid("max_attempts", "must be at least 1");
        }
        if self.queue.is_empty() || self.queue.len() > 128 {
            return invalid("queue", "must be 1 to 128 characters");
        }
        if self.worker.is_empty() || self.worker.len() > 128 {
            return invalid("worker", "must be 1 to 128 characters");
        }
        if !self.args.is_object() {
            return invalid("args", "must be a JSON object");
        }
        Ok(())
    }

    fn is_scheduled(&self) -> bool {
        self.scheduled_at.is_some_and(|at| at > Utc::now())
    }

    /// Digest of worker, tenant and args (serde_json maps are sorted, so equal args give equal
    /// keys whatever their key order was).
    fn unique_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.worker.as_bytes());
        h.update([0]);
        h.update(self.tenant_id.map(|t| t.to_string()).unwrap_or_default());
        h.update([0]);
        h.update(self.args.to_string().as_bytes());
        hex::encode(h.finalize())
    }
}

#[derive(Insertable)]
#[diesel(table_name = jobs)]
struct JobRow<'a> {
    id: Uuid,
    tenant_id: Option<Uuid>,
    state: JobState,
    queue: &'a str,
    worker: &'a str,
    args: &'a Value,
    max_attempts: i32,
    priority: i16,
    tags: &'a Vec<String>,
    meta: &'a Value,
    unique_key: Option<String>,
    scheduled_at: Option<DateTime<Utc>>,
}

impl<'a> JobRow<'a> {
    fn from(job: &'a NewJob) -> Self {
        JobRow {
            id: Uuid::now_v7(),
            tenant_id: job.tenant_id,
            state: if job.is_scheduled() {
                JobState::Scheduled
            } else {
                JobState::Available
            },
            queue: &job.queue,
            worker: &job.worker,
            args: &job.args,
            max_attempts: job.max_attempts,
            priority: job.priority,
            tags: &job.tags,
            meta: &job.meta,
            unique_key: job.unique.map(|_| job.unique_key()),
            scheduled_at: job.scheduled_at,
        }
    }
}

/// What [`insert`] did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// A new job.
    New(Job),
    /// A unique job that already existed; nothing was inserted.
    Existing(Job),
}

impl Inserted {
    pub fn job(&self) -> &Job {
        match self {
            Inserted::New(j) | Inserted::Existing(j) => j,
        }
    }

    pub fn into_job(self) -> Job {
        match self {
            Inserted::New(j) | Inserted::Existing(j) => j,
        }
    }
}

/// Inserts one job in the caller's transaction. A unique job that already exists is returned
/// instead (`Inserted::Existing`); concurrent unique inserts are serialised by a
/// transaction-scoped advisory lock on the key, so exactly one of them inserts.
pub async fn insert(tx: &mut impl AnyTx, job: &NewJob) -> Result<Inserted, DbError> {
    insert_one(tx, job).await
}

/// [`insert`] on the connection of a transaction the caller already holds.
async fn insert_one(conn: &mut Conn, job: &NewJob) -> Result<Inserted, DbError> {
    job.validate()?;
    insert_row(conn, job, JobRow::from(job)).await
}

/// Inserts `row`, made from the validated `job` (a unique one only if no live duplicate exists).
async fn insert_row(conn: &mut Conn, job: &NewJob, row: JobRow<'_>) -> Result<Inserted, DbError> {
    if let (Some(unique), Some(key)) = (job.unique, row.unique_key.as_deref()) {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind::<Text, _>(key)
            .prepared()
            .execute(conn)
            .await?;
        let since = Utc::now() - chrono::Duration::from_std(unique.period).unwrap_or_default();
        let existing: Option<Job> = jobs::table
            .filter(jobs::unique_key.eq(key))
            .filter(jobs::inserted_at.gt(since))
            .filter(jobs::state.eq_any(JobState::LIVE))
            .select(Job::as_select())
            .first(conn)
            .await
            .optional()?;
        if let Some(existing) = existing {
            return Ok(Inserted::Existing(existing));
        }
    }
    let inserted: Job = diesel::insert_into(jobs::table)
        .values(&row)
        .returning(Job::as_returning())
        .get_result(conn)
        .await?;
    if inserted.state == JobState::Available {
        notify(conn, NOTIFY_CHANNEL, &inserted.queue).await?;
    }
    Ok(Inserted::New(inserted))
}

/// One statement per chunk of [`insert_all`] ([`Columns::insert`]): one array per column, so it
/// has the same 13 parameters however many rows it carries (a multi-row `VALUES` list had a
/// dozen per row, parsed, analysed and planned anew on every call).
const INSERT_ALL_CHUNK: usize = 1000;

/// Inserts many jobs at once in the caller's transaction: every job is validated before
/// anything is written, then the ordinary ones go in one statement per 1,000 and each unique
/// one through [`insert`]'s path (advisory lock, existing job returned). Returns the ids in
/// input order (an existing unique job's id where one was found). Each job is stored as
/// [`insert`] would store it, and each queue that got available jobs is notified once.
pub async fn insert_all(tx: &mut impl AnyTx, new_jobs: &[NewJob]) -> Result<Vec<Uuid>, DbError> {
    let conn: &mut Conn = tx;
    for job in new_jobs {
        job.validate()?;
    }
    // Ids (time-ordered) are taken in input order, so jobs of equal priority run in that order.
    let rows: Vec<JobRow> = new_jobs.iter().map(JobRow::from).collect();
    let mut ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let (unique, plain): (Vec<_>, Vec<_>) = new_jobs
        .iter()
        .zip(rows)
        .enumerate()
        .partition(|(_, (job, _))| job.unique.is_some());
    for chunk in plain.chunks(INSERT_ALL_CHUNK) {
        let mut columns = Columns::with_capacity(chunk.len());
        for (_, (job, row)) in chunk {
            columns.push(job, row);
        }
        columns.insert(conn).await?;
    }
    for (i, (job, row)) in unique {
        ids[i] = insert_row(conn, job, row).await?.job().id;
    }
    Ok(ids)
}

/// The columns of one chunk's statement ([`Columns::insert`]).
struct Columns<'a> {
    id: Vec<Uuid>,
    tenant_id: Vec<Option<Uuid>>,
    state: Vec<&'static str>,
    queue: Vec<&'a str>,
    worker: Vec<&'a str>,
    // Empty objects and lists travel as NULL and become the column's default in the
    // statement: PostgreSQL then skips decoding them row by row (jsonb arrives as JSON text
    // and is parsed, and a tag list is an array literal to parse).
    args: Vec<Option<&'a Value>>,
    max_attempts: Vec<i32>,
    priority: Vec<i16>,
    tags: Vec<Option<String>>,
    meta: Vec<Option<&'a Value>>,
    scheduled_at: Vec<Option<DateTime<Utc>>>,
    /// The queues that get available jobs.
    wake: std::collections::BTreeSet<&'a str>,
}

impl<'a> Columns<'a> {
    fn with_capacity(n: usize) -> Self {
        Columns {
            id: Vec::with_capacity(n),
            tenant_id: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            queue: Vec::with_capacity(n),
            worker: Vec::with_capacity(n),
            args: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
            tags: Vec::with_capacity(n),
            meta: Vec::with_capacity(n),
            scheduled_at: Vec::with_capacity(n),
            wake: Default::default(),
        }
    }

    fn push(&mut self, job: &'a NewJob, row: &JobRow<'a>) {
        self.id.push(row.id);
        self.tenant_id.push(row.tenant_id);
        self.state.push(row.state.as_str());
        self.queue.push(row.queue);
        self.worker.push(row.worker);
        self.args.push(non_empty(row.args));
        self.max_attempts.push(row.max_attempts);
        self.priority.push(row.priority);
        self.tags
            .push((!job.tags.is_empty()).then(|| text_array_literal(&job.tags)));
        self.meta.push(non_empty(row.meta));
        self.scheduled_at.push(row.scheduled_at);
        if row.state == JobState::Available {
            self.wake.insert(row.queue);
        }
    }

    /// The chunk's one statement. Columns left out take their defaults, as in [`insert`]; a
    /// NULL `scheduled_at` is `now()`, the column's default, and NULL args, meta and tags are
    /// empty (see [`Columns`]). Tags come as array literals
    /// (`{"a","b"}`) cast per row, since PostgreSQL arrays cannot be ragged. The same statement
    /// NOTIFYs the queues that got available jobs, saving a round trip; PostgreSQL folds a
    /// transaction's identical notifications into one. Prepared: its text never varies, so
    /// after the first chunk on a connection each costs one Bind/Execute.
    async fn insert(self, conn: &mut Conn) -> Result<(), DbError> {
        let wake: Vec<&str> = self.wake.iter().copied().collect();
        diesel::sql_query(
            "WITH inserted AS (
               INSERT INTO jobs (id, tenant_id, state, queue, worker, args, max_attempts, priority,
                                 tags, meta, scheduled_at)
               SELECT id, tenant_id, state, queue, worker, coalesce(args, '{}'), max_attempts,
                      priority, coalesce(tags::text[], '{}'), coalesce(meta, '{}'),
                      coalesce(scheduled_at, now())
               FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                           $6::jsonb[], $7::int4[], $8::int2[], $9::text[], $10::jsonb[],
                           $11::timestamptz[])
                 AS t(id, tenant_id, state, queue, worker, args, max_attempts, priority, tags,
                      meta, scheduled_at)
             )
             SELECT pg_notify($12, queue) FROM unnest($13::text[]) AS queue",
        )
        .bind::<Array<SqlUuid>, _>(&self.id)
        .bind::<Array<Nullable<SqlUuid>>, _>(&self.tenant_id)
        .bind::<Array<Text>, _>(&self.state)
        .bind::<Array<Text>, _>(&self.queue)
        .bind::<Array<Text>, _>(&self.worker)
        .bind::<Array<Nullable<Jsonb>>, _>(&self.args)
        .bind::<Array<Integer>, _>(&self.max_attempts)
        .bind::<Array<SmallInt>, _>(&self.priority)
        .bind::<Array<Nullable<Text>>, _>(&self.tags)
        .bind::<Array<Nullable<Jsonb>>, _>(&self.meta)
        .bind::<Array<Nullable<Timestamptz>>, _>(&self.scheduled_at)
        .bind::<Text, _>(NOTIFY_CHANNEL)
        .bind::<Array<Text>, _>(&wake)
        .prepared()
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// `value` unless it is an empty object, which the statement stores as `{}`.
fn non_empty(value: &Value) -> Option<&Value> {
    match value {
        Value::Object(map) if map.is_empty() => None,
        other => Some(other),
    }
}

/// `tags` as a PostgreSQL array literal, every element quoted (so `NULL`, commas, braces and
/// spaces stay text) with `"` and `\` escaped.
fn text_array_literal(tags: &[String]) -> String {
    let mut literal = String::with_capacity(2 + tags.iter().map(|t| t.len() + 3).sum::<usize>());
    literal.push('{');
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in tag.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

async fn notify(conn: &mut Conn, channel: &str, payload: &str) -> Result<(), DbError> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(channel)
        .bind::<Text, _>(payload)
        .prepared()
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims up to `limit` available jobs of `queue` for `node`, highest priority (lowest number)
/// first, unless the queue is paused. `FOR UPDATE SKIP LOCKED` lets any number of nodes fetch
/// at once without blocking each other or claiming a job twice; each claim uses an attempt.
pub async fn fetch(
    tx: &mut SystemTx,
    queue: &str,
    limit: usize,
    node: &str,
) -> Result<Vec<Job>, DbError> {
    let conn: &mut Conn = tx;
    let mut fetched: Vec<Job> = diesel::sql_query(
        "WITH next AS (
           SELECT id FROM jobs
           WHERE state = 'available' AND queue = $1
             AND NOT EXISTS (SELECT 1 FROM job_queues q WHERE q.name = $1 AND q.paused)
           ORDER BY priority, scheduled_at, id
           LIMIT $2
           FOR UPDATE SKIP LOCKED
         )
         UPDATE jobs j
         SET state = 'executing', attempt = j.attempt + 1, attempted_at = now(), attempted_by = $3
         FROM next WHERE j.id = next.id
         RETURNING j.*",
    )
    .bind::<Text, _>(queue)
    .bind::<BigInt, _>(limit as i64)
    .bind::<Text, _>(node)
    .prepared()
    .load(conn)
    .await?;
    fetched.sort_by(|a, b| {
        (a.priority, a.scheduled_at, a.id).cmp(&(b.priority, b.scheduled_at, b.id))
    });
    Ok(fetched)
}

/// How an attempt ended, as the acknowledgement records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckState {
    Completed,
    /// Failed; retried at `scheduled_at`.
    Retryable,
    Discarded,
    Cancelled,
    /// Scheduled again at `scheduled_at` with the attempt refunded.
    Snoozed,
}

impl AckState {
    pub fn as_str(self) -> &'static str {
        match self {
            AckState::Completed => "completed",
            AckState::Retryable => "retryable",
            AckState::Discarded => "discarded",
            AckState::Cancelled => "cancelled",
            AckState::Snoozed => "snoozed",
        }
    }
}

/// One finished attempt to acknowledge.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: Uuid,
    /// The attempt that ran: a stale acknowledgement (the job was rescued or cancelled
    /// meanwhile) changes nothing.
    pub attempt: i32,
    pub state: AckState,
    /// For `Retryable` and `Snoozed`.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Kept in the job's `errors` (and the task log).
    pub error: Option<String>,
    pub duration_ms: i64,
    /// Whether the job belongs to a tenant (its attempt goes to `task_log`).
    pub tenant: bool,
}

/// The statements that record finished attempts, shared by [`ack`] and [`rescue`] so a job
/// ends the same way whoever ends it: a `task_log` row per tenant job, and the
/// `job.completed` / `job.discarded` event for it ([`job_event!`], recorded through
/// [`events::record_many`], which owns the events table and the relay's wake-up). They read
/// the CTE `done(id, tenant_id, worker, queue, attempt, outcome, duration_ms, error)`;
/// `$enabled` is a SQL boolean that can skip both.
macro_rules! record_attempts {
    ($enabled:literal) => {
        concat!(
            "logged AS (
               INSERT INTO task_log (tenant_id, job_id, worker, queue, attempt, state, duration_ms, error)
               SELECT tenant_id, id, worker, queue, attempt, outcome, duration_ms, error
               FROM done WHERE tenant_id IS NOT NULL AND ",
            $enabled,
            "
             )"
        )
    };
}

/// The event of one `done` row as an [`events::Record`] in JSON, or NULL when it has none.
macro_rules! job_event {
    ($enabled:literal) => {
        concat!(
            "CASE WHEN tenant_id IS NOT NULL AND ",
            $enabled,
            " AND outcome IN ('completed', 'discarded') THEN jsonb_build_object(
               'tenant_id', tenant_id, 'topic', 'job.' || outcome,
               'payload', jsonb_build_object('job_id', id, 'worker', worker, 'queue', queue,
                                             'attempt', attempt, 'error', error)) END"
        )
    };
}

/// The events `ack` or `rescue` collected as JSON (see [`job_event!`]).
fn job_events(events: Value) -> Result<Vec<events::Record>, DbError> {
    serde_json::from_value(events).map_err(|e| DbError::Unavailable(format!("job events: {e}")))
}

/// What [`ack`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Acked {
    /// Jobs updated (stale acknowledgements update nothing).
    pub updated: usize,
    /// Those of them that became `discarded` (their worker's `on_discarded` is due).
    pub discarded: Vec<Uuid>,
}

/// Records a batch of outcomes in one statement: updates the jobs still executing this attempt
/// on `node`, appends errors, writes `task_log` rows for tenant jobs and `job.completed` /
/// `job.discarded` events for them.
pub async fn ack(tx: &mut SystemTx, node: &str, acks: &[Ack]) -> Result<Acked, DbError> {
    let conn: &mut Conn = tx;
    if acks.is_empty() {
        return Ok(Acked::default());
    }
    #[derive(QueryableByName)]
    struct Updated {
        #[diesel(sql_type = BigInt)]
        updated: i64,
        #[diesel(sql_type = Jsonb)]
        events: Value,
        #[diesel(sql_type = Array<SqlUuid>)]
        discarded: Vec<Uuid>,
    }
    let ids: Vec<Uuid> = acks.iter().map(|a| a.id).collect();
    let attempts: Vec<i32> = acks.iter().map(|a| a.attempt).collect();
    let states: Vec<&str> = acks.iter().map(|a| a.state.as_str()).collect();
    let scheduled: Vec<Option<DateTime<Utc>>> = acks.iter().map(|a| a.scheduled_at).collect();
    let errors: Vec<Option<&str>> = acks.iter().map(|a| a.error.as_deref()).collect();
    let durations: Vec<i64> = acks.iter().map(|a| a.duration_ms.max(0)).collect();
    let any_tenant = acks.iter().any(|a| a.tenant);
    // Completions without errors (the common case) skip the per-row CASE work on errors/meta;
    // the statement is one UPDATE either way.
    let result: Updated = diesel::sql_query(concat!(
        "WITH v AS (
           SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::timestamptz[], $5::text[], $6::int8[])
             AS v(id, attempt, outcome, scheduled_at, error, duration_ms)
         ),
         done AS (
           UPDATE jobs j SET
             state = CASE v.outcome WHEN 'snoozed' THEN 'scheduled' ELSE v.outcome END,
             attempt = CASE WHEN v.outcome = 'snoozed' THEN j.attempt - 1 ELSE j.attempt END,
             scheduled_at = coalesce(v.scheduled_at, j.scheduled_at),
             completed_at = CASE WHEN v.outcome = 'completed' THEN now() END,
             cancelled_at = CASE WHEN v.outcome = 'cancelled' THEN now() END,
             discarded_at = CASE WHEN v.outcome = 'discarded' THEN now() END,
             errors = CASE WHEN v.error IS NULL THEN j.errors
               ELSE j.errors || jsonb_build_array(jsonb_build_object(
                 'attempt', j.attempt, 'at', now(), 'error', v.error)) END,
             meta = CASE WHEN v.outcome = 'snoozed'
               THEN jsonb_set(j.meta, '{snoozed}', to_jsonb(coalesce((j.meta->>'snoozed')::int, 0) + 1))
               ELSE j.meta END
           FROM v
           WHERE j.id = v.id AND j.state = 'executing' AND j.attempt = v.attempt AND j.attempted_by = $7
           RETURNING j.id, j.tenant_id, j.worker, j.queue, v.attempt, v.outcome, v.duration_ms, v.error
         ),
         ",
        record_attempts!("$8"),
        "
         SELECT (SELECT count(*) FROM done) AS updated,
                (SELECT coalesce(jsonb_agg(e), '[]') FROM (SELECT ",
        job_event!("$8"),
        " AS e FROM done) ev WHERE e IS NOT NULL) AS events,
                (SELECT coalesce(array_agg(id), '{}') FROM done WHERE outcome = 'discarded') AS discarded"
    ))
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Integer>, _>(&attempts)
    .bind::<Array<Text>, _>(&states)
    .bind::<Array<Nullable<Timestamptz>>, _>(&scheduled)
    .bind::<Array<Nullable<Text>>, _>(&errors)
    .bind::<Array<BigInt>, _>(&durations)
    .bind::<Text, _>(node)
    .bind::<Bool, _>(any_tenant)
    .prepared()
    .get_result(conn)
    .await?;
    events::record_many(conn, &job_events(result.events)?).await?;
    Ok(Acked {
        updated: result.updated as usize,
        discarded: result.discarded,
    })
}

/// Makes scheduled and retryable jobs whose time has come available (up to `limit`), and
/// wakes their queues. Returns how many were staged.
pub async fn stage(tx: &mut SystemTx, limit: i64) -> Result<usize, DbError> {
    let conn: &mut Conn = tx;
    #[derive(QueryableByName)]
    struct Staged {
        #[diesel(sql_type = Text)]
        queue: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let staged: Vec<Staged> = diesel::sql_query(
        "WITH due AS (
           SELECT id FROM jobs
           WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now()
           ORDER BY scheduled_at LIMIT $1
           FOR UPDATE SKIP LOCKED
         ), staged AS (
           UPDATE jobs j SET state = 'available' FROM due WHERE j.id = due.id RETURNING j.queue
         )
         SELECT queue, count(*) AS n FROM staged GROUP BY queue",
    )
    .bind::<BigInt, _>(limit)
    .prepared()
    .load(conn)
    .await?;
    for s in &staged {
        notify(conn, NOTIFY_CHANNEL, &s.queue).await?;
    }
    Ok(staged.iter().map(|s| s.n as usize).sum())
}

/// The advisory-lock key of a node (an SQL expression over the node id `$e`): a 64-bit hash,
/// so two node ids sharing a key is a 2^-64 chance per pair, and the namespace keeps it apart
/// from the other advisory locks' keys.
macro_rules! node_lock_key {
    ($e:literal) => {
        concat!("hashtextextended('vsm.job_node:' || ", $e, ", 0)")
    };
}

/// The advisory locks held in this database right now, as the bigint keys they were taken
/// with (`pg_locks` splits a bigint key into classid, objid; objsubid 1 marks that form).
macro_rules! held_locks {
    () => {
        "held AS (
           SELECT (l.classid::int8 << 32) | l.objid::int8 AS key FROM pg_locks l
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    };
}

/// Takes `node`'s liveness lock for this session, if no other session holds it: while the
/// session lives the rescuer leaves the node's jobs alone, however stale its heartbeat row.
/// `false` when another session holds it (a previous session of this node the server has not
/// closed yet, or a second process wrongly given the same node id).
pub async fn try_hold_node_lock(conn: &mut Conn, node: &str) -> Result<bool, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let row: Row = diesel::sql_query(concat!(
        "SELECT pg_try_advisory_lock(",
        node_lock_key!("$1"),
        ") AS locked"
    ))
    .bind::<Text, _>(node)
    .prepared()
    .get_result(conn)
    .await?;
    Ok(row.locked)
}

/// Whether some session holds `node`'s liveness lock (what the rescuer looks at).
pub async fn node_lock_held(conn: &mut Conn, node: &str) -> Result<bool, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        held: bool,
    }
    let row: Row = diesel::sql_query(concat!(
        "WITH ",
        held_locks!(),
        " SELECT EXISTS (SELECT 1 FROM held WHERE key = ",
        node_lock_key!("$1"),
        ") AS held"
    ))
    .bind::<Text, _>(node)
    .prepared()
    .get_result(conn)
    .await?;
    Ok(row.held)
}

/// Records that `node` is alive and which queues it runs (on a system transaction, or the
/// heartbeat's own system connection).
pub async fn heartbeat(conn: &mut Conn, node: &str, queues: &[String]) -> Result<(), DbError> {
    diesel::insert_into(job_nodes::table)
        .values((job_nodes::id.eq(node), job_nodes::queues.eq(queues)))
        .on_conflict(job_nodes::id)
        .do_update()
        .set((
            job_nodes::heartbeat_at.eq(diesel::dsl::now),
            job_nodes::queues.eq(queues),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes `node` (it stopped cleanly).
pub async fn remove_node(tx: &mut SystemTx, node: &str) -> Result<(), DbError> {
    let conn: &mut Conn = tx;
    diesel::delete(job_nodes::table.find(node))
        .execute(conn)
        .await?;
    Ok(())
}

/// A job [`rescue`] took from a silent node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    pub id: Uuid,
    /// That was its last attempt: it is `discarded` (its worker's `on_discarded` is due), not
    /// `available`.
    pub discarded: bool,
}

/// Hands executing jobs of dead nodes — silent for longer than `after` **and** not holding
/// their liveness lock ([`try_hold_node_lock`]) — to other nodes: `available`
/// again (the attempt they used stays used; an error says why), or `discarded` when that was
/// their last attempt. Each rescued attempt is recorded like an acknowledged one (task log,
/// `job.discarded` event), through the same statements. Forgets those nodes.
pub async fn rescue(tx: &mut SystemTx, after: Duration) -> Result<Vec<Rescued>, DbError> {
    let conn: &mut Conn = tx;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        queue: String,
        #[diesel(sql_type = Text)]
        outcome: JobState,
        #[diesel(sql_type = Nullable<Jsonb>)]
        event: Option<Value>,
    }
    let rescued: Vec<Row> = diesel::sql_query(concat!(
        "WITH ",
        held_locks!(),
        ",
         done AS (
           UPDATE jobs j SET
             state = CASE WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'available' END,
             discarded_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
             scheduled_at = now(),
             errors = j.errors || jsonb_build_array(jsonb_build_object(
               'attempt', j.attempt, 'at', now(),
               'error', 'rescued: node ' || coalesce(j.attempted_by, '?') || ' stopped heartbeating'))
           WHERE j.state = 'executing' AND NOT EXISTS (
             SELECT 1 FROM job_nodes n
             WHERE n.id = j.attempted_by AND n.heartbeat_at > now() - make_interval(secs => $1))
           AND NOT EXISTS (SELECT 1 FROM held WHERE held.key = ",
        node_lock_key!("j.attempted_by"),
        ")
           RETURNING j.id, j.tenant_id, j.worker, j.queue, j.attempt,
             CASE WHEN j.state = 'discarded' THEN 'discarded' ELSE 'retryable' END AS outcome,
             greatest(0, extract(epoch FROM now() - coalesce(j.attempted_at, now())) * 1000)::int8
               AS duration_ms,
             'rescued: node ' || coalesce(j.attempted_by, '?') || ' stopped heartbeating' AS error
         ),
         ",
        record_attempts!("true"),
        "
         SELECT id, queue, outcome, ",
        job_event!("true"),
        " AS event FROM done"
    ))
    .bind::<Double, _>(after.as_secs_f64())
    .prepared()
    .load(conn)
    .await?;
    diesel::sql_query(concat!(
        "WITH ",
        held_locks!(),
        " DELETE FROM job_nodes n WHERE n.heartbeat_at <= now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM held WHERE held.key = ",
        node_lock_key!("n.id"),
        ")"
    ))
    .bind::<Double, _>(after.as_secs_f64())
    .prepared()
    .execute(conn)
    .await?;
    let queues: std::collections::BTreeSet<&str> = rescued
        .iter()
        .filter(|r| r.outcome != JobState::Discarded)
        .map(|r| r.queue.as_str())
        .collect();
    for queue in queues {
        notify(conn, NOTIFY_CHANNEL, queue).await?;
    }
    let events = rescued.iter().filter_map(|r| r.event.clone()).collect();
    events::record_many(conn, &job_events(Value::Array(events))?).await?;
    Ok(rescued
        .into_iter()
        .map(|r| Rescued {
            id: r.id,
            discarded: r.outcome == JobState::Discarded,
        })
        .collect())
}

/// Gives back every job `node` still holds (shutdown after the grace period): `available`
/// again with the attempt refunded, since the node itself interrupted it; `meta.handed_back`
/// counts how often. Returns how many.
pub async fn hand_back(tx: &mut SystemTx, node: &str) -> Result<usize, DbError> {
    let conn: &mut Conn = tx;
    #[derive(QueryableByName)]
    struct Back {
        #[diesel(sql_type = Text)]
        queue: String,
    }
    let back: Vec<Back> = diesel::sql_query(
        "UPDATE jobs SET state = 'available', attempt = greatest(attempt - 1, 0), scheduled_at = now(),
           meta = jsonb_set(meta, '{handed_back}', to_jsonb(coalesce((meta->>'handed_back')::int, 0) + 1))
         WHERE state = 'executing' AND attempted_by = $1
         RETURNING queue",
    )
    .bind::<Text, _>(node)
    .prepared()
    .load(conn)
    .await?;
    let queues: std::collections::BTreeSet<&str> = back.iter().map(|b| b.queue.as_str()).collect();
    for queue in queues {
        notify(conn, NOTIFY_CHANNEL, queue).await?;
    }
    Ok(back.len())
}

/// Deletes up to `limit` jobs that ended (completed, cancelled, discarded) before `before`.
pub async fn prune(tx: &mut SystemTx, before: DateTime<Utc>, limit: i64) -> Result<usize, DbError> {
    let conn: &mut Conn = tx;
    let deleted = diesel::sql_query(
        "DELETE FROM jobs WHERE id IN (
           SELECT id FROM jobs
           WHERE state IN ('completed', 'cancelled', 'discarded')
             AND coalesce(completed_at, cancelled_at, discarded_at) < $1
           LIMIT $2)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(limit)
    .prepared()
    .execute(conn)
    .await?;
    diesel::delete(job_cron_slots::table.filter(job_cron_slots::slot.lt(before)))
        .execute(conn)
        .await?;
    Ok(deleted)
}

/// Cancels a job that has not ended. An executing job is stopped by the node running it (told
/// through [`CANCEL_CHANNEL`]); its late outcome is ignored. `None` when there is no such job
/// (or, in a tenant transaction, it is another tenant's) or it had already ended.
pub async fn cancel(tx: &mut impl AnyTx, id: Uuid) -> Result<Option<Job>, DbError> {
    let conn: &mut Conn = tx;
    let job: Option<Job> = diesel::update(jobs::table.find(id))
        .filter(jobs::state.eq_any(JobState::LIVE))
        .set((
            jobs::state.eq(JobState::Cancelled),
            jobs::cancelled_at.eq(diesel::dsl::now),
        ))
        .returning(Job::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(job) = &job {
        notify(conn, CANCEL_CHANNEL, &job.id.to_string()).await?;
    }
    Ok(job)
}

/// Those of `ids` that have been cancelled (the polling fallback for missed cancel
/// notifications).
pub async fn cancelled_among(tx: &mut SystemTx, ids: &[Uuid]) -> Result<Vec<Uuid>, DbError> {
    let conn: &mut Conn = tx;
    Ok(jobs::table
        .filter(jobs::id.eq_any(ids))
        .filter(jobs::state.eq(JobState::Cancelled))
        .select(jobs::id)
        .load(conn)
        .await?)
}

/// Makes a job that is not executing available now (a discarded job gets one more attempt).
pub async fn retry(tx: &mut impl AnyTx, id: Uuid) -> Result<Option<Job>, DbError> {
    let conn: &mut Conn = tx;
    let job: Option<Job> = diesel::sql_query(
        "UPDATE jobs SET state = 'available', scheduled_at = now(),
           max_attempts = greatest(max_attempts, attempt + 1),
           completed_at = NULL, cancelled_at = NULL, discarded_at = NULL
         WHERE id = $1 AND state <> 'executing' AND state <> 'available'
         RETURNING *",
    )
    .bind::<SqlUuid, _>(id)
    .prepared()
    .get_result(conn)
    .await
    .optional()?;
    if let Some(job) = &job {
        notify(conn, NOTIFY_CHANNEL, &job.queue).await?;
    }
    Ok(job)
}

/// The job with `id` (in a tenant transaction: only that tenant's).
pub async fn find(tx: &mut impl AnyTx, id: Uuid) -> Result<Option<Job>, DbError> {
    let conn: &mut Conn = tx;
    Ok(jobs::table
        .find(id)
        .select(Job::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Pauses or resumes `queue` on every node, durably. Resuming wakes the queue.
pub async fn set_paused(tx: &mut SystemTx, queue: &str, paused: bool) -> Result<(), DbError> {
    let conn: &mut Conn = tx;
    diesel::insert_into(job_queues::table)
        .values((job_queues::name.eq(queue), job_queues::paused.eq(paused)))
        .on_conflict(job_queues::name)
        .do_update()
        .set((
            job_queues::paused.eq(paused),
            job_queues::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    if !paused {
        notify(conn, NOTIFY_CHANNEL, queue).await?;
    }
    Ok(())
}

/// Whether `queue` is paused.
pub async fn is_paused(tx: &mut SystemTx, queue: &str) -> Result<bool, DbError> {
    let conn: &mut Conn = tx;
    Ok(job_queues::table
        .find(queue)
        .select(job_queues::paused)
        .first(conn)
        .await
        .optional()?
        .unwrap_or(false))
}

/// Claims cron slot (`name`, `slot`) and inserts `job` for it; `None` when another node
/// already claimed the slot (the primary key decides, so a slot fires once cluster-wide).
pub async fn insert_cron(
    tx: &mut SystemTx,
    name: &str,
    slot: DateTime<Utc>,
    job: &NewJob,
) -> Result<Option<Uuid>, DbError> {
    let conn: &mut Conn = tx;
    let claimed = diesel::insert_into(job_cron_slots::table)
        .values((job_cron_slots::name.eq(name), job_cron_slots::slot.eq(slot)))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if claimed == 0 {
        return Ok(None);
    }
    let id = insert_one(conn, job).await?.job().id;
    diesel::update(job_cron_slots::table.find((name, slot)))
        .set(job_cron_slots::job_id.eq(id))
        .execute(conn)
        .await?;
    Ok(Some(id))
}

/// Jobs waiting or running, by queue and state (for the depth gauges).
pub async fn depth(tx: &mut SystemTx) -> Result<Vec<(String, JobState, i64)>, DbError> {
    let conn: &mut Conn = tx;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        queue: String,
        #[diesel(sql_type = Text)]
        state: JobState,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT queue, state, count(*) AS n FROM jobs
         WHERE state IN ('available', 'scheduled', 'retryable', 'executing')
         GROUP BY queue, state",
    )
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.queue, r.state, r.n)).collect())
}

/// One page of the jobs visible in the transaction (a tenant's own, under row-level security),
/// newest first, optionally by queue, state and worker.
pub async fn list(
    tx: &mut impl AnyTx,
    queue: Option<&str>,
    job_state: Option<JobState>,
    worker: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Job>, DbError> {
    let conn: &mut Conn = tx;
    let mut query = jobs::table
        .select(Job::as_select())
        .order(jobs::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(queue) = queue {
        query = query.filter(jobs::queue.eq(queue.to_owned()));
    }
    if let Some(job_state) = job_state {
        query = query.filter(jobs::state.eq(job_state));
    }
    if let Some(worker) = worker {
        query = query.filter(jobs::worker.eq(worker.to_owned()));
    }
    if let Some(before) = before {
        query = query.filter(jobs::id.lt(before));
    }
    Ok(query.load(conn).await?)
}

/// Job counts by queue and state, over every state, of the jobs visible in the transaction.
pub async fn counts(tx: &mut impl AnyTx) -> Result<Vec<(String, JobState, i64)>, DbError> {
    let conn: &mut Conn = tx;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        queue: String,
        #[diesel(sql_type = Text)]
        state: JobState,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let rows: Vec<Row> =
        diesel::sql_query("SELECT queue, state, count(*) AS n FROM jobs GROUP BY queue, state")
            .prepared()
            .load(conn)
            .await?;
    Ok(rows.into_iter().map(|r| (r.queue, r.state, r.n)).collect())
}

/// Queues that are paused cluster-wide.
pub async fn paused_queues(tx: &mut impl AnyTx) -> Result<Vec<String>, DbError> {
    let conn: &mut Conn = tx;
    Ok(job_queues::table
        .filter(job_queues::paused.eq(true))
        .select(job_queues::name)
        .load(conn)
        .await?)
}
