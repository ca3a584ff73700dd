//! `policy_evaluator`: evaluates a tenant's active, in-window policies (highest priority first)
//! against one event and performs the actions of each policy it triggers, emitting
//! `policy.triggered` with what each action did.
//!
//! All of one evaluation's effects (enqueued jobs, published events, system states, the
//! `policy.triggered` events) commit in one tenant transaction, so a retried evaluation never
//! acts twice. A `notify` action renders its template against the event and enqueues the
//! notification (`notification_sender`) in that transaction too; its `to` must be one of the
//! tenant's own recipients — an enabled webhook endpoint's id, or a Telegram chat linked to
//! the tenant — or the action fails, is recorded, and nothing is sent.
//!
//! Events reach this worker through [`enqueue_for_events`], for the event relay to call with
//! each batch it publishes (before marking it published, so a crash repeats the call and the
//! unique evaluation job absorbs the repeat): it inserts one evaluation job per event of a
//! tenant that has an active, in-window policy whose `when.topics` match.
//!
//! Rules are compiled once per policy version and kept in a bounded [`RuleCache`]: an
//! evaluation reads only the policies' ids and versions unless one of them is new or changed.

pub mod compiled;
pub mod rules;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::events::payloads::{self, PolicyTriggered, SystemStateChanged, TriggeringEvent};
use crate::jobs::{
    Job, JobContext, JobResult, NewJob, Outcome, Worker, job_for, parse_args, storage,
};
use crate::repo::{DbError, Repo, TenantTx};
use crate::schemas::telegram::chat as telegram_chat;
use crate::schemas::vsm::{policy, system_state};
use crate::schemas::webhooks::endpoint as webhook_endpoint;

pub use compiled::RuleCache;
pub use rules::{RuleError, Rules, validate};

pub const NAME: &str = "policy_evaluator";

/// Weight of the compiled rules this process keeps: one unit per policy plus one per compiled
/// pattern (at most 96 KiB each), so at most about 100 MiB however the rules are written
/// (usually a few KiB per policy).
const CACHE_CAPACITY: usize = 1024;

/// This process's compiled rules, shared by every evaluation it runs.
static COMPILED: LazyLock<RuleCache> = LazyLock::new(|| RuleCache::new(CACHE_CAPACITY));

/// Events produced by policy actions carry `_policy_depth`; past this depth they trigger no
/// further evaluation, so two policies publishing each other's topics cannot loop forever.
pub const MAX_DEPTH: i64 = 3;

pub struct PolicyEvaluator;

/// One event as the relay sees it.
#[derive(Debug, Clone)]
pub struct RelayedEvent {
    /// `None` for a system-wide event (not evaluated: policies belong to tenants, and the relay
    /// may not read them across tenants).
    pub tenant_id: Option<Uuid>,
    /// The public event id, when sequenced.
    pub seq: Option<i64>,
    pub topic: String,
    pub payload: Value,
}

impl From<&crate::events::Event> for RelayedEvent {
    fn from(e: &crate::events::Event) -> Self {
        RelayedEvent {
            tenant_id: e.tenant_id,
            seq: Some(e.seq),
            topic: e.topic.clone(),
            payload: e.payload.clone(),
        }
    }
}

/// An evaluation job for `event`.
/// The evaluator's arguments: the event to evaluate the tenant's policies against.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    pub event: EventArg,
}

/// An event as the evaluator receives it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventArg {
    pub seq: Option<i64>,
    pub topic: String,
    pub payload: Value,
}

pub fn job(tenant_id: Uuid, event: &RelayedEvent) -> NewJob {
    let args = Args {
        event: EventArg {
            seq: event.seq,
            topic: event.topic.clone(),
            payload: event.payload.clone(),
        },
    };
    job_for(&PolicyEvaluator, json!(args)).tenant(tenant_id)
}

/// The evaluator subscribes to the event flow: each published batch enqueues the evaluations
/// it calls for.
impl crate::events::subscriber::Subscriber for PolicyEvaluator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_published<'a>(
        &'a self,
        repo: &'a Repo,
        events: &'a [crate::events::Event],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(async move {
            let relayed: Vec<RelayedEvent> = events.iter().map(RelayedEvent::from).collect();
            enqueue_for_events(repo, &relayed).await.map(|_| ())
        })
    }
}

impl Worker for PolicyEvaluator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_args(&self, args: &Value) -> Result<(), crate::jobs::ArgsError> {
        parse_args::<Args>(args).map(drop)
    }

    fn priority(&self) -> i16 {
        2
    }

    fn max_attempts(&self) -> i32 {
        10
    }

    // `scope` stays `System`: evaluations are started by the event relay, for real events. A
    // tenant enqueueing (or retrying) one could feed its policies invented events and repeat
    // their actions at will.

    /// The relay may hand the same event over twice (after a crash); one evaluation suffices.
    fn unique_for(&self) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn perform<'a>(&'a self, ctx: &'a JobContext, job: &'a Job) -> BoxFuture<'a, JobResult> {
        Box::pin(async move {
            let Some(tenant) = job.tenant_id else {
                return Ok(Outcome::Discard(
                    "policy_evaluator jobs belong to a tenant".into(),
                ));
            };
            let args = match parse_args::<Args>(&job.args) {
                Ok(args) => args,
                Err(e) => return Ok(Outcome::Discard(e.to_string())),
            };
            let failures = evaluate(ctx, tenant, &args.event.topic, &job.args["event"]).await?;
            if failures.is_empty() {
                Ok(Outcome::Complete)
            } else {
                Ok(Outcome::Discard(failures.join("; ")))
            }
        })
    }
}

/// Evaluates every active, in-window policy of `tenant` against the event and performs the
/// actions of those it triggers, in one transaction. Returns the failed actions' errors.
pub async fn evaluate(
    ctx: &JobContext,
    tenant: Uuid,
    topic: &str,
    event: &Value,
) -> Result<Vec<String>, DbError> {
    evaluate_with(ctx, &COMPILED, tenant, topic, event).await
}

/// [`evaluate`] with compiled rules kept in `cache`.
pub async fn evaluate_with(
    ctx: &JobContext,
    cache: &RuleCache,
    tenant: Uuid,
    topic: &str,
    event: &Value,
) -> Result<Vec<String>, DbError> {
    let doc = json!({
        "topic": topic,
        "event_id": event.get("seq").cloned().unwrap_or(Value::Null),
        "data": event.get("payload").cloned().unwrap_or(Value::Null),
    });
    let depth = doc["data"]
        .get("_policy_depth")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut tx = ctx.repo.tenant_tx(tenant).await?;
    let mut failures = Vec::new();
    for (policy_id, name, compiled) in compiled_policies(ctx, cache, &mut tx).await? {
        let rules = match compiled.as_ref() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(policy_id = %policy_id, error = %e, "stored policy rules are invalid; skipped");
                continue;
            }
        };
        if !rules.triggers(topic, &doc) {
            continue;
        }
        let mut results = Vec::with_capacity(rules.actions.len());
        for action in &rules.actions {
            let result = perform(ctx, &mut tx, tenant, action, &doc, depth).await?;
            if let Err(e) = &result {
                failures.push(format!("policy {name:?}: {e}"));
            }
            results.push(match result {
                Ok(detail) => json!({"action": kind(action), "status": "ok", "result": detail}),
                Err(e) => json!({"action": kind(action), "status": "error", "error": e}),
            });
        }
        let triggered = PolicyTriggered {
            policy_id,
            policy: name.clone(),
            event: TriggeringEvent {
                id: doc["event_id"].as_i64(),
                topic: topic.to_owned(),
            },
            actions: results,
        };
        payloads::emit(&mut tx, tenant, &triggered).await?;
    }
    tx.commit().await?;
    Ok(failures)
}

fn kind(action: &rules::Action) -> &'static str {
    match action {
        rules::Action::Notify { .. } => "notify",
        rules::Action::Enqueue { .. } => "enqueue",
        rules::Action::Publish { .. } => "publish",
        rules::Action::SetState { .. } => "set_state",
    }
}

/// Performs one action in the evaluation's transaction. `Ok(Err(reason))` is an action that
/// failed for good (recorded, not retried); `Err` is a database failure (the job retries).
async fn perform(
    ctx: &JobContext,
    conn: &mut TenantTx,
    tenant: Uuid,
    action: &rules::Action,
    doc: &Value,
    depth: i64,
) -> Result<Result<Value, String>, DbError> {
    Ok(match action {
        rules::Action::Notify {
            channel,
            to,
            template,
        } => notify(conn, tenant, channel, to, &template.render(doc), doc).await?,
        // Validation already refuses a system worker; this check holds even for rules that
        // were stored before it did, or for a worker whose scope changed since.
        rules::Action::Enqueue { worker, .. } if !ctx.registry.is_tenant_scoped(worker) => Err(
            format!("enqueue: {worker:?} is not a worker a policy may enqueue"),
        ),
        // Checked at save too; args stored before that (or a worker's args changed since) are
        // refused here rather than inserted as a job that cannot run.
        rules::Action::Enqueue { worker, args } => match ctx.registry.check_args(worker, args) {
            Err(why) => Err(format!("enqueue {worker}: {why}")),
            Ok(()) => match ctx.registry.job(worker, args.clone()) {
                Some(job) => {
                    let inserted = storage::insert(conn, &job.tenant(tenant)).await?;
                    Ok(json!({"job_id": inserted.job().id}))
                }
                None => Err(format!("enqueue: no worker named {worker:?}")),
            },
        },
        rules::Action::Publish { topic, data } => {
            let mut payload = data.clone();
            if let Some(obj) = payload.as_object_mut() {
                obj.insert("_policy_depth".into(), json!(depth + 1));
            }
            crate::events::record(conn, tenant, topic, &payload).await?;
            Ok(json!({"topic": topic}))
        }
        rules::Action::SetState { system, merge } => {
            let mut state = system_state::latest(conn, *system)
                .await?
                .and_then(|s| s.state.as_object().cloned())
                .unwrap_or_default();
            for (k, v) in merge {
                state.insert(k.clone(), v.clone());
            }
            let saved =
                system_state::append(conn, tenant, *system, &Value::Object(state), None).await?;
            // A state change always comes with its event, whoever makes it.
            payloads::emit(conn, tenant, &SystemStateChanged::from(&saved)).await?;
            Ok(json!({"system": system, "version": saved.version}))
        }
    })
}

/// A `notify` action: resolves `to` among the tenant's own recipients and enqueues the
/// rendered message. A recipient that is not the tenant's is a failed action, never a send.
async fn notify(
    conn: &mut TenantTx,
    tenant: Uuid,
    channel: &str,
    to: &str,
    text: &str,
    doc: &Value,
) -> Result<Result<Value, String>, DbError> {
    use crate::workers::notification_sender::{self as sender, Message};
    let not_ours = || {
        Ok(Err(format!(
            "notify via {channel}: {} is not one of this tenant's recipients",
            mask(to)
        )))
    };
    let message = match channel {
        "webhook" => {
            let Ok(id) = to.parse::<Uuid>() else {
                return not_ours();
            };
            match webhook_endpoint::find(conn, id).await {
                Ok(e) if e.enabled => Message::Webhook {
                    endpoint_id: id,
                    topic: NOTIFY_TOPIC.to_owned(),
                    payload: json!({
                        "text": text,
                        "event": {"id": doc["event_id"], "topic": doc["topic"]},
                    }),
                },
                Ok(_) => {
                    return Ok(Err(format!(
                        "notify via webhook: endpoint {} is disabled",
                        mask(to)
                    )));
                }
                Err(DbError::NotFound) => return not_ours(),
                Err(e) => return Err(e),
            }
        }
        "telegram" => {
            let Ok(chat_id) = to.parse::<i64>() else {
                return not_ours();
            };
            match telegram_chat::find(conn, chat_id).await {
                Ok(_) => Message::Telegram {
                    chat_id,
                    text: text.to_owned(),
                },
                Err(DbError::NotFound) => return not_ours(),
                Err(e) => return Err(e),
            }
        }
        other => return Ok(Err(format!("notify: no channel named {other:?}"))),
    };
    if text.is_empty() {
        return Ok(Err(format!(
            "notify via {channel}: the template rendered to nothing"
        )));
    }
    match sender::enqueue(conn, tenant, message).await {
        Ok(id) => Ok(Ok(
            json!({"notification_id": id, "channel": channel, "to": mask(to)}),
        )),
        // Refused before any statement ran (e.g. a NUL in the rendered text): the action
        // fails, the evaluation's transaction is intact.
        Err(DbError::Validation { field, message }) => {
            Ok(Err(format!("notify via {channel}: {field} {message}")))
        }
        Err(e) => Err(e),
    }
}

/// The Standard Webhooks `type` of what a policy's `notify` sends to a webhook.
pub const NOTIFY_TOPIC: &str = "policy.notify";

/// Recipients never appear whole in logs or events: the first two characters and the length.
fn mask(to: &str) -> String {
    let shown: String = to.chars().take(2).collect();
    format!("{shown}***({} chars)", to.chars().count())
}

/// `(id, name, compiled rules)` of the tenant's active policies in their window, highest
/// priority first. Rules are read and compiled only for policies not in `cache` at their
/// current version.
async fn compiled_policies(
    ctx: &JobContext,
    cache: &RuleCache,
    conn: &mut TenantTx,
) -> Result<Vec<(Uuid, String, compiled::Compiled)>, DbError> {
    let now = Utc::now();
    let active = policy::active_versions(conn, now).await?;
    let mut found: HashMap<Uuid, compiled::Compiled> = HashMap::new();
    let mut missing = Vec::new();
    for (id, _, updated_at) in &active {
        match cache.get(*id, *updated_at) {
            Some(c) => {
                found.insert(*id, c);
            }
            None => missing.push(*id),
        }
    }
    if !missing.is_empty() {
        let rows = policy::rules_of(conn, &missing).await?;
        for (id, updated_at, raw) in rows {
            let c = cache.insert_with(id, updated_at, || {
                validate(&raw, &ctx.registry, &ctx.config.policies)
            });
            found.insert(id, c);
        }
    }
    Ok(active
        .into_iter()
        .filter_map(|(id, name, _)| found.remove(&id).map(|c| (id, name, c)))
        .collect())
}

/// Whether the event should be evaluated at all. Evaluations' own traces are not: their
/// `policy.triggered` events and the `job.*` events of `policy_evaluator` jobs (otherwise a
/// policy on `job.*` would evaluate its own evaluations forever).
fn evaluable(event: &RelayedEvent) -> bool {
    let own_job_event = event.topic.starts_with("job.")
        && event.payload.get("worker").and_then(Value::as_str) == Some(NAME);
    event.tenant_id.is_some()
        && !own_job_event
        && event.topic != "policy.triggered"
        && event
            .payload
            .get("_policy_depth")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            < MAX_DEPTH
}

/// In a tenant transaction: inserts an evaluation job for each of `events` that one of the
/// tenant's active, in-window policies listens to. Returns how many jobs were inserted.
pub async fn enqueue_for_event(
    conn: &mut TenantTx,
    tenant_id: Uuid,
    events: &[&RelayedEvent],
) -> Result<usize, DbError> {
    let listening: Vec<Rules> = policy::active_whens(conn, Utc::now())
        .await?
        .iter()
        .filter_map(topics_only)
        .collect();
    let mut inserted = 0;
    for event in events {
        if evaluable(event) && listening.iter().any(|r| r.topics.matches(&event.topic)) {
            if let storage::Inserted::New(_) = storage::insert(conn, &job(tenant_id, event)).await?
            {
                inserted += 1;
            }
        }
    }
    Ok(inserted)
}

/// Hook for the event relay: for a batch of relayed events, enqueues the evaluations they call
/// for, one tenant transaction per tenant. System-wide events are skipped.
pub async fn enqueue_for_events(repo: &Repo, events: &[RelayedEvent]) -> Result<usize, DbError> {
    let mut by_tenant: BTreeMap<Uuid, Vec<&RelayedEvent>> = BTreeMap::new();
    for e in events.iter().filter(|e| evaluable(e)) {
        if let Some(t) = e.tenant_id {
            by_tenant.entry(t).or_default().push(e);
        }
    }
    let mut inserted = 0;
    for (tenant, events) in by_tenant {
        let mut tx = repo.tenant_tx(tenant).await?;
        inserted += enqueue_for_event(&mut tx, tenant, &events).await?;
        tx.commit().await?;
    }
    Ok(inserted)
}

/// Only `when.topics` of stored rules (the rest is checked when evaluating).
fn topics_only(when: &Value) -> Option<Rules> {
    let topics = when.get("topics")?.as_array()?;
    let filters = topics
        .iter()
        .map(|t| {
            t.as_str()
                .and_then(|s| crate::events::topic::Filter::parse(s).ok())
        })
        .collect::<Option<Vec<_>>>()?;
    if filters.is_empty() {
        // An empty filter list means "every topic" to Filters; for a policy it is invalid.
        return None;
    }
    Some(Rules {
        topics: crate::events::topic::Filters(filters),
        condition: None,
        actions: Vec::new(),
    })
}
