//! The delivery log: `notifications` (one row per message to send) and `notification_attempts`
//! (one row per request made to deliver it).
//!
//! Functions take any transaction ([`AnyTx`]): a tenant's notifications are reached through its
//! [`crate::repo::TenantTx`] (row-level security shows only its own rows), the replies to chats
//! linked to no tenant (`tenant_id` NULL) through a [`crate::repo::SystemTx`], whose policy shows
//! only those.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::repo::{AnyTx, DbError};
use crate::schemas::schema::{notification_attempts, notifications};
use crate::schemas::text_enum::text_enum;

text_enum! {
    /// How a notification travels (`notifications.channel`, CHECK `notifications_channel_valid`).
    pub enum ChannelKind ("channel") {
        /// Telegram Bot API `sendMessage`.
        Telegram = "telegram",
        /// A tenant's signed webhook endpoint.
        Webhook = "webhook",
    }
}

text_enum! {
    /// Where a notification stands (`notifications.state`, CHECK `notifications_state_valid`).
    pub enum DeliveryState ("notification state") {
        /// Waiting for (another) attempt.
        Pending = "pending",
        /// Delivered.
        Sent = "sent",
        /// Given up: a final refusal, or out of attempts. `POST /v1/notifications/{id}/retry`
        /// sends it again.
        Failed = "failed",
    }
}

text_enum! {
    /// What one attempt came to (`notification_attempts.result`).
    pub enum AttemptResult ("attempt result") {
        Sent = "sent",
        /// Failed for now; tried again later.
        Retry = "retry",
        /// Refused for good.
        Failed = "failed",
        /// The endpoint no longer exists (410 Gone); refused for good.
        Gone = "gone",
        /// The peer asked to slow down (429); tried again later without using an attempt.
        Throttled = "throttled",
    }
}

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = notifications, check_for_backend(diesel::pg::Pg))]
pub struct Notification {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub channel: ChannelKind,
    pub recipient: String,
    pub message: Value,
    pub state: DeliveryState,
    pub attempts: i32,
    pub progress: Value,
    pub job_id: Option<Uuid>,
    pub not_before: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = notifications)]
pub struct NewNotification {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub channel: ChannelKind,
    pub recipient: String,
    pub message: Value,
    pub job_id: Option<Uuid>,
}

/// One attempt as the API shows it.
#[derive(Debug, Clone, Serialize, Queryable, Selectable, ToSchema)]
#[diesel(table_name = notification_attempts, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    #[serde(skip)]
    pub notification_id: Uuid,
    pub attempt: i32,
    pub result: AttemptResult,
    /// The peer's HTTP status, when it answered.
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    /// When the next attempt is due, if there is one.
    pub next_retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = notification_attempts)]
pub struct NewAttempt {
    pub id: Uuid,
    pub notification_id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub attempt: i32,
    pub result: AttemptResult,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// What the sender writes back after one run of a notification's job.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = notifications)]
pub struct Progress {
    pub state: Option<DeliveryState>,
    pub attempts: Option<i32>,
    pub progress: Option<Value>,
    /// `Some(None)` clears it.
    pub not_before: Option<Option<DateTime<Utc>>>,
    pub last_error: Option<Option<String>>,
    pub sent_at: Option<Option<DateTime<Utc>>>,
    pub job_id: Option<Option<Uuid>>,
}

pub async fn insert(tx: &mut impl AnyTx, new: &NewNotification) -> Result<Notification, DbError> {
    Ok(diesel::insert_into(notifications::table)
        .values(new)
        .returning(Notification::as_returning())
        .get_result(&mut **tx)
        .await?)
}

pub async fn find(tx: &mut impl AnyTx, id: Uuid) -> Result<Option<Notification>, DbError> {
    Ok(notifications::table
        .find(id)
        .select(Notification::as_select())
        .first(&mut **tx)
        .await
        .optional()?)
}

/// [`find`], holding the row's lock until the transaction ends (a retry request and the
/// sender's bookkeeping do not interleave).
pub async fn find_for_update(
    tx: &mut impl AnyTx,
    id: Uuid,
) -> Result<Option<Notification>, DbError> {
    Ok(notifications::table
        .find(id)
        .select(Notification::as_select())
        .for_update()
        .first(&mut **tx)
        .await
        .optional()?)
}

pub async fn update(tx: &mut impl AnyTx, id: Uuid, change: &Progress) -> Result<(), DbError> {
    diesel::update(notifications::table.find(id))
        .set((change, notifications::updated_at.eq(diesel::dsl::now)))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn insert_attempt(tx: &mut impl AnyTx, new: &NewAttempt) -> Result<(), DbError> {
    diesel::insert_into(notification_attempts::table)
        .values(new)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A page of the log, oldest first after `after`.
pub async fn list(
    tx: &mut impl AnyTx,
    channel: Option<ChannelKind>,
    state: Option<DeliveryState>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Notification>, DbError> {
    let mut query = notifications::table
        .select(Notification::as_select())
        .order(notifications::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(channel) = channel {
        query = query.filter(notifications::channel.eq(channel));
    }
    if let Some(state) = state {
        query = query.filter(notifications::state.eq(state));
    }
    if let Some(after) = after {
        query = query.filter(notifications::id.gt(after));
    }
    Ok(query.load(&mut **tx).await?)
}

/// The attempts of `ids`, in order, newest `per_notification` of each at most (a notification
/// retried for a day has a few dozen; the cap keeps a page's size bounded whatever happened).
pub async fn attempts_of(
    tx: &mut impl AnyTx,
    ids: &[Uuid],
    per_notification: i32,
) -> Result<Vec<Attempt>, DbError> {
    // `attempt` counts up per notification, so the newest N are those above attempts - N.
    let rows: Vec<(Attempt, i32)> = notification_attempts::table
        .inner_join(notifications::table)
        .filter(notification_attempts::notification_id.eq_any(ids))
        .filter(notification_attempts::attempt.gt(notifications::attempts - per_notification))
        .order((
            notification_attempts::notification_id.asc(),
            notification_attempts::attempt.asc(),
            notification_attempts::id.asc(),
        ))
        .select((Attempt::as_select(), notifications::attempts))
        .load(&mut **tx)
        .await?;
    Ok(rows.into_iter().map(|(a, _)| a).collect())
}
