//! `notification_sender` (queue `notifications`): delivers one logged notification through its
//! channel and does the bookkeeping once for every channel.
//!
//! Callers [`enqueue`] a [`Message`] in their own transaction: that writes the delivery-log row
//! (`pending`) and its job together, so a committed request to notify is never lost, and a
//! rolled-back one never goes out. Each run of the job hands the message to its channel
//! ([`Channel::deliver`], one delivery attempt), which reports a [`Verdict`]; the worker then, in
//! one transaction, records the attempt (status code, latency, error, next retry), moves the
//! log row on, and emits `notification.sent` / `notification.failed`; it counts the result in
//! `cybernetic_notifications_total` and returns the job's outcome:
//!
//! | verdict      | log row                 | job                                        |
//! |--------------|-------------------------|--------------------------------------------|
//! | `Sent`       | `sent`                  | completed                                  |
//! | `Retry`      | `pending`, `not_before` | retried with backoff (failed after the last attempt) |
//! | `Failed`     | `failed`                | discarded (the dead-letter state)          |
//! | `Gone`       | `failed`                | discarded; the channel disabled its endpoint |
//! | `Throttled`  | `pending`               | snoozed until the slot, no attempt used    |
//!
//! Re-running a job whose notification is no longer `pending` does nothing, so a rescued or
//! duplicated job sends nothing twice (a crash between a peer's answer and the commit can still
//! repeat that one request: delivery is at least once). Recipients appear masked in logs and
//! events.

pub mod telegram;

use std::time::Duration;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::events::payloads::{self, NotificationFailed, NotificationOutcome, NotificationSent};
use crate::jobs::{Job, JobContext, JobResult, NewJob, Outcome, Worker, job_for, parse_args};
use crate::metrics::METRICS;
use crate::repo::{AnyTx, DbError, SystemTx, TenantTx};
use crate::schemas::notify::notification::{
    self, AttemptResult, ChannelKind, DeliveryState, NewAttempt, NewNotification, Notification,
    Progress,
};

pub const NAME: &str = "notification_sender";

/// Attempts before a notification that keeps failing for now is given up: with the default
/// `notifications.retry_base_secs` the retries span about a day and a half.
pub const MAX_ATTEMPTS: i32 = 17;

/// Longest text one message may carry (UTF-16 code units, as Telegram counts): ten of
/// Telegram's 4096-unit messages. Keeps what one job sends, and the log row, bounded.
pub const MAX_TEXT_UNITS: usize = 10 * telegram::MESSAGE_LIMIT;

/// Attempts shown per notification in the API (the newest ones).
pub const ATTEMPTS_SHOWN: i32 = 50;

/// What to send, and to whom. Stored as the log row's `message` (tagged by `channel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// A Telegram `sendMessage` (split into several when longer than Telegram allows).
    Telegram { chat_id: i64, text: String },
}

impl Message {
    pub fn channel(&self) -> ChannelKind {
        match self {
            Message::Telegram { .. } => ChannelKind::Telegram,
        }
    }

    /// The recipient as stored (and shown to its tenant).
    pub fn recipient(&self) -> String {
        match self {
            Message::Telegram { chat_id, .. } => chat_id.to_string(),
        }
    }

    /// The recipient as logs and events show it.
    pub fn masked_recipient(&self) -> String {
        mask(&self.recipient())
    }

    /// Refuses a message no channel could deliver, naming the field.
    fn check(&self) -> Result<(), DbError> {
        match self {
            Message::Telegram { text, .. } => {
                let units = text.encode_utf16().count();
                if units == 0 || units > MAX_TEXT_UNITS {
                    return Err(DbError::Validation {
                        field: "text",
                        message: "must be 1 to 40960 UTF-16 code units",
                    });
                }
                if text.contains('\0') {
                    return Err(DbError::Validation {
                        field: "text",
                        message: "must not contain the NUL character",
                    });
                }
                Ok(())
            }
        }
    }
}

/// Keeps the last three characters of a recipient: enough to tell recipients apart in a log,
/// not enough to message one.
pub fn mask(recipient: &str) -> String {
    let chars: Vec<char> = recipient.chars().collect();
    let keep = chars.len().saturating_sub(3).max(chars.len().min(1));
    let tail: String = chars[keep.min(chars.len())..].iter().collect();
    format!("***{tail}")
}

/// The sender's arguments: which log row to deliver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    pub notification_id: Uuid,
}

/// The job that delivers notification `id` (of `tenant`, or of nobody).
pub fn job(tenant: Option<Uuid>, id: Uuid) -> NewJob {
    let job = job_for(
        &NotificationSender::default(),
        json!(Args {
            notification_id: id
        }),
    );
    match tenant {
        Some(t) => job.tenant(t),
        None => job,
    }
}

/// Records a notification (state pending) in the tenant's delivery log and inserts its
/// notification_sender job, in the caller's transaction.
pub async fn enqueue(tx: &mut TenantTx, tenant: Uuid, message: Message) -> Result<Uuid, DbError> {
    insert(tx, Some(tenant), message).await
}

/// A reply to a Telegram chat linked to no tenant (the one refusal line of §9): sent the same
/// way, recorded in no tenant's log.
pub async fn enqueue_unlinked_reply(
    tx: &mut SystemTx,
    chat_id: i64,
    text: String,
) -> Result<Uuid, DbError> {
    insert(tx, None, Message::Telegram { chat_id, text }).await
}

async fn insert(
    tx: &mut impl AnyTx,
    tenant: Option<Uuid>,
    message: Message,
) -> Result<Uuid, DbError> {
    message.check()?;
    let id = Uuid::now_v7();
    let inserted = crate::jobs::storage::insert(tx, &job(tenant, id)).await?;
    let row = NewNotification {
        id,
        tenant_id: tenant,
        channel: message.channel(),
        recipient: message.recipient(),
        message: serde_json::to_value(&message).map_err(|_| DbError::Validation {
            field: "message",
            message: "cannot be represented as JSON",
        })?,
        job_id: Some(inserted.job().id),
    };
    notification::insert(tx, &row).await?;
    Ok(id)
}

/// Sends a failed notification again: back to `pending` with a new job. `Ok(None)` when the
/// tenant has no such notification; `Err(Conflict)` when it has not failed.
pub async fn retry(tx: &mut TenantTx, id: Uuid) -> Result<Option<Notification>, DbError> {
    let Some(row) = notification::find_for_update(tx, id).await? else {
        return Ok(None);
    };
    if row.state != DeliveryState::Failed {
        return Err(DbError::Conflict {
            what: format!(
                "notification is {}, only a failed one can be retried",
                row.state
            ),
        });
    }
    let inserted = crate::jobs::storage::insert(tx, &job(row.tenant_id, id)).await?;
    notification::update(
        tx,
        id,
        &Progress {
            state: Some(DeliveryState::Pending),
            not_before: Some(None),
            job_id: Some(Some(inserted.job().id)),
            ..Progress::default()
        },
    )
    .await?;
    notification::find(tx, id).await
}

// --- The channel seam -------------------------------------------------------------------------

/// One notification handed to its channel for one delivery attempt.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub id: Uuid,
    pub tenant: Option<Uuid>,
    pub message: &'a Message,
    /// What the channel kept from earlier runs (its own format; `{}` at first).
    pub progress: &'a Value,
    /// The number this attempt gets in the log if the channel makes a request (1-based).
    pub attempt: i32,
}

/// How one delivery attempt went, as a channel reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Delivered; `status` is the peer's answer.
    Sent { status: u16 },
    /// Failed for now (timeout, connection refused, 5xx, 408): retried with backoff, not before
    /// the peer's `Retry-After` when it sent one.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good (most 4xx): not retried.
    Failed { status: Option<u16>, error: String },
    /// The endpoint is gone (410): not retried. The channel disables the endpoint itself
    /// before reporting this.
    Gone { status: u16, error: String },
    /// Not now: run again at `until` without using an attempt — the channel's rate limit gave
    /// it a later slot (no request made), or the peer answered 429 (`status` set).
    Throttled {
        until: DateTime<Utc>,
        status: Option<u16>,
        error: Option<String>,
    },
}

impl Verdict {
    /// The `result` label of `cybernetic_notifications_total`.
    pub fn metric_result(&self) -> &'static str {
        match self {
            Verdict::Sent { .. } => "sent",
            Verdict::Retry { .. } => "retry",
            Verdict::Failed { .. } | Verdict::Gone { .. } => "failed",
            Verdict::Throttled { .. } => "throttled",
        }
    }
}

/// A channel's report of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub verdict: Verdict,
    /// How long the request took; `None` when no request was made (throttled beforehand),
    /// in which case no attempt is logged.
    pub latency: Option<Duration>,
    /// Progress to keep for the next run (e.g. how many parts of a split message went out);
    /// `None` keeps what there was.
    pub progress: Option<Value>,
}

/// One way of delivering messages. A channel makes at most one delivery attempt per call and
/// reports it; it never touches the delivery log, the job or the events: the worker does that
/// bookkeeping once for all channels.
pub trait Channel: Send + Sync {
    fn kind(&self) -> ChannelKind;

    fn deliver<'a>(&'a self, ctx: &'a JobContext, delivery: Delivery<'a>) -> BoxFuture<'a, Report>;
}

// --- The worker -------------------------------------------------------------------------------

/// The worker, with one channel per [`ChannelKind`].
pub struct NotificationSender {
    telegram: telegram::TelegramChannel,
    retry_base: Duration,
}

impl Default for NotificationSender {
    fn default() -> Self {
        Self::new(&crate::config::Config::default())
    }
}

impl NotificationSender {
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            telegram: telegram::TelegramChannel::new(&config.telegram, config.redis.url.as_ref()),
            retry_base: Duration::from_secs(config.notifications.retry_base_secs),
        }
    }

    fn channel(&self, message: &Message) -> &dyn Channel {
        match message {
            Message::Telegram { .. } => &self.telegram,
        }
    }

    /// The retry delay without jitter (what the log shows as the next retry).
    fn backoff_base(&self, attempt: i32) -> Duration {
        let exp = attempt.clamp(0, 20) as u32;
        self.retry_base + Duration::from_secs(2u64.pow(exp))
    }
}

impl Worker for NotificationSender {
    fn name(&self) -> &'static str {
        NAME
    }

    fn queue(&self) -> &'static str {
        "notifications"
    }

    fn max_attempts(&self) -> i32 {
        MAX_ATTEMPTS
    }

    /// One attempt sends at most ten parts, each within the request timeout.
    fn timeout(&self) -> Duration {
        Duration::from_secs(180)
    }

    fn backoff(&self, attempt: i32) -> Duration {
        let base = self.backoff_base(attempt).as_secs_f64();
        let jitter = 1.0
            + rand::Rng::random_range(
                &mut rand::rng(),
                -crate::backoff::JITTER..=crate::backoff::JITTER,
            );
        Duration::from_secs_f64(base * jitter)
    }

    fn check_args(&self, args: &Value) -> Result<(), crate::jobs::ArgsError> {
        parse_args::<Args>(args).map(drop)
    }

    fn perform<'a>(&'a self, ctx: &'a JobContext, job: &'a Job) -> BoxFuture<'a, JobResult> {
        Box::pin(async move {
            let args = match parse_args::<Args>(&job.args) {
                Ok(args) => args,
                Err(e) => return Ok(Outcome::Discard(e.to_string())),
            };
            self.run(ctx, job, args.notification_id).await
        })
    }

    fn on_discarded<'a>(
        &'a self,
        ctx: &'a JobContext,
        job: &'a Job,
        reason: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let Ok(args) = parse_args::<Args>(&job.args) else {
                return Ok(());
            };
            let id = args.notification_id;
            match job.tenant_id {
                Some(t) => {
                    let mut tx = ctx.repo.tenant_tx(t).await?;
                    give_up(&mut tx, id, job.id, reason).await?;
                    tx.commit().await?;
                }
                None => {
                    let mut tx = ctx.repo.system_tx().await?;
                    give_up(&mut tx, id, job.id, reason).await?;
                    tx.commit().await?;
                }
            }
            Ok(())
        })
    }
}

/// Marks notification `id` failed after its job `job_id` was discarded, unless it is done or
/// another job delivers it now.
async fn give_up(tx: &mut impl AnyTx, id: Uuid, job_id: Uuid, reason: &str) -> Result<(), DbError> {
    let Some(row) = notification::find_for_update(tx, id).await? else {
        return Ok(());
    };
    // Only the job currently delivering it may end it: a retried notification has a new job,
    // and a sent or already failed one is done.
    if row.state != DeliveryState::Pending || row.job_id != Some(job_id) {
        return Ok(());
    }
    let error = format!("gave up: {reason}");
    notification::update(
        tx,
        row.id,
        &Progress {
            state: Some(DeliveryState::Failed),
            last_error: Some(Some(error.clone())),
            ..Progress::default()
        },
    )
    .await?;
    if let Some(tenant) = row.tenant_id {
        let outcome = outcome_of(&row, row.attempts, None, Some(error));
        payloads::emit(tx, tenant, &NotificationFailed(outcome)).await?;
    }
    Ok(())
}

fn outcome_of(
    row: &Notification,
    attempt: i32,
    status: Option<u16>,
    error: Option<String>,
) -> NotificationOutcome {
    NotificationOutcome {
        notification_id: row.id,
        channel: row.channel.as_str().to_owned(),
        to: mask(&row.recipient),
        attempt,
        status_code: status.map(i32::from),
        error,
    }
}

fn until(t: DateTime<Utc>) -> Duration {
    (t - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

impl NotificationSender {
    async fn run(&self, ctx: &JobContext, job: &Job, id: Uuid) -> JobResult {
        let row = match job.tenant_id {
            Some(t) => {
                let mut tx = ctx.repo.tenant_tx(t).await?;
                notification::find(&mut tx, id).await?
            }
            None => {
                let mut tx = ctx.repo.system_tx().await?;
                notification::find(&mut tx, id).await?
            }
        };
        let Some(row) = row else {
            // Its tenant was deleted (the log row cascades): nothing to send.
            return Ok(Outcome::Complete);
        };
        if row.state != DeliveryState::Pending {
            return Ok(Outcome::Complete);
        }
        if let Some(t) = row.not_before
            && t > Utc::now()
        {
            return Ok(Outcome::Snooze(until(t)));
        }
        let message: Message = match serde_json::from_value(row.message.clone()) {
            Ok(m) => m,
            Err(e) => {
                let verdict = Verdict::Failed {
                    status: None,
                    error: format!("unreadable message: {e}"),
                };
                let report = Report {
                    verdict,
                    latency: None,
                    progress: None,
                };
                return self.record(ctx, job, &row, report).await;
            }
        };
        let channel = self.channel(&message);
        let report = channel
            .deliver(
                ctx,
                Delivery {
                    id,
                    tenant: row.tenant_id,
                    message: &message,
                    progress: &row.progress,
                    attempt: row.attempts + 1,
                },
            )
            .await;
        self.record(ctx, job, &row, report).await
    }

    /// The bookkeeping of one attempt, the same for every channel.
    async fn record(
        &self,
        ctx: &JobContext,
        job: &Job,
        row: &Notification,
        report: Report,
    ) -> JobResult {
        let now = Utc::now();
        let last_job_attempt = job.attempt >= job.max_attempts;
        // Out of attempts, a temporary failure becomes the final one.
        let verdict = match report.verdict {
            Verdict::Retry { status, error, .. } if last_job_attempt => Verdict::Failed {
                status,
                error: format!("{error} (after {} attempts)", job.attempt),
            },
            v => v,
        };
        let requested = report.latency.is_some();
        let attempt = if requested {
            row.attempts + 1
        } else {
            row.attempts
        };
        let mut change = Progress {
            attempts: Some(attempt),
            progress: report.progress,
            ..Progress::default()
        };
        let (result, status, error, next_retry, outcome) = match &verdict {
            Verdict::Sent { status } => {
                change.state = Some(DeliveryState::Sent);
                change.sent_at = Some(Some(now));
                change.last_error = Some(None);
                change.not_before = Some(None);
                (
                    AttemptResult::Sent,
                    Some(*status),
                    None,
                    None,
                    Outcome::Complete,
                )
            }
            Verdict::Retry {
                status,
                error,
                retry_after,
            } => {
                let not_before = retry_after.map(|d| crate::jobs::after(d));
                let backoff = crate::jobs::after(self.backoff_base(job.attempt));
                change.not_before = Some(not_before);
                change.last_error = Some(Some(error.clone()));
                let next = not_before.map_or(backoff, |t| t.max(backoff));
                (
                    AttemptResult::Retry,
                    *status,
                    Some(error.clone()),
                    Some(next),
                    Outcome::Complete, // replaced by the error below
                )
            }
            Verdict::Failed { status, error } => {
                change.state = Some(DeliveryState::Failed);
                change.last_error = Some(Some(error.clone()));
                let outcome = Outcome::Discard(error.clone());
                (
                    AttemptResult::Failed,
                    *status,
                    Some(error.clone()),
                    None,
                    outcome,
                )
            }
            Verdict::Gone { status, error } => {
                change.state = Some(DeliveryState::Failed);
                change.last_error = Some(Some(error.clone()));
                let outcome = Outcome::Discard(error.clone());
                (
                    AttemptResult::Gone,
                    Some(*status),
                    Some(error.clone()),
                    None,
                    outcome,
                )
            }
            Verdict::Throttled {
                until: at,
                status,
                error,
            } => (
                AttemptResult::Throttled,
                *status,
                error.clone(),
                Some(*at),
                Outcome::Snooze(until(*at)),
            ),
        };

        let entry = Entry {
            row,
            attempt,
            requested,
            latency: report.latency,
            result,
            status,
            error: error.clone(),
            next_retry,
            change,
        };
        let written = match row.tenant_id {
            Some(t) => {
                let mut tx = ctx.repo.tenant_tx(t).await?;
                let written = write(&mut tx, &entry).await?;
                tx.commit().await?;
                written
            }
            None => {
                let mut tx = ctx.repo.system_tx().await?;
                let written = write(&mut tx, &entry).await?;
                tx.commit().await?;
                written
            }
        };
        if !written {
            // Finished meanwhile by another run: keep what it wrote.
            return Ok(Outcome::Complete);
        }

        let channel = row.channel.as_str();
        METRICS
            .notifications
            .with_label_values(&[channel, verdict.metric_result()])
            .inc();
        if let Some(latency) = report.latency {
            METRICS
                .notification_delivery
                .with_label_values(&[channel])
                .observe(latency.as_secs_f64());
        }
        let to = mask(&row.recipient);
        match &verdict {
            Verdict::Sent { .. } => {
                tracing::info!(notification = %row.id, channel, to, attempt, "notification sent")
            }
            Verdict::Retry { error, .. } => {
                tracing::warn!(notification = %row.id, channel, to, attempt, error, "notification failed, will retry");
                return Err(anyhow!("{error}"));
            }
            Verdict::Failed { error, .. } | Verdict::Gone { error, .. } => {
                tracing::warn!(notification = %row.id, channel, to, attempt, error, "notification failed for good")
            }
            Verdict::Throttled { until, .. } => {
                tracing::debug!(notification = %row.id, channel, to, %until, "notification throttled")
            }
        }
        Ok(outcome)
    }
}

/// One attempt's bookkeeping, ready to write.
struct Entry<'a> {
    row: &'a Notification,
    attempt: i32,
    requested: bool,
    latency: Option<Duration>,
    result: AttemptResult,
    status: Option<u16>,
    error: Option<String>,
    next_retry: Option<DateTime<Utc>>,
    change: Progress,
}

/// Writes the attempt row, the log row's new state and its event in `tx`; `false` when the
/// notification is no longer pending (another run finished it) and nothing was written.
async fn write(tx: &mut impl AnyTx, e: &Entry<'_>) -> Result<bool, DbError> {
    let row = e.row;
    let Some(current) = notification::find_for_update(tx, row.id).await? else {
        return Ok(false);
    };
    if current.state != DeliveryState::Pending {
        return Ok(false);
    }
    if e.requested {
        let latency_ms = e
            .latency
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        notification::insert_attempt(
            tx,
            &NewAttempt {
                id: Uuid::now_v7(),
                notification_id: row.id,
                tenant_id: row.tenant_id,
                attempt: e.attempt,
                result: e.result,
                status_code: e.status.map(i32::from),
                latency_ms,
                error: e.error.clone(),
                next_retry_at: e.next_retry,
            },
        )
        .await?;
    }
    notification::update(tx, row.id, &e.change).await?;
    if let Some(tenant) = row.tenant_id {
        let outcome = || outcome_of(row, e.attempt, e.status, e.error.clone());
        match e.result {
            AttemptResult::Sent => payloads::emit(tx, tenant, &NotificationSent(outcome())).await?,
            AttemptResult::Failed | AttemptResult::Gone => {
                payloads::emit(tx, tenant, &NotificationFailed(outcome())).await?
            }
            AttemptResult::Retry | AttemptResult::Throttled => {}
        }
    }
    Ok(true)
}
