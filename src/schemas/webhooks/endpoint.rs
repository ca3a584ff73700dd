//! Webhook endpoints: where a tenant's notifications are POSTed, which events reach them, and
//! the secrets they are signed with.
//!
//! [`Endpoint`] — what the API shows — has no secret in it; the secrets are read only by
//! [`signing_keys`] (for the sender) and returned once by the functions that set them
//! ([`insert`], [`rotate`]), so no list or lookup can leak one by serialising a row.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{DbError, TenantConn, TenantTx};
use crate::schemas::schema::{webhook_endpoints, webhook_event_deliveries};

#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = webhook_endpoints, check_for_backend(diesel::pg::Pg))]
pub struct Endpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    /// Event filters (`episode.analyzed`, `policy.*`); empty: only policy `notify` actions.
    pub topics: Vec<String>,
    pub enabled: bool,
    /// Why the endpoint was disabled (410 Gone, failing for days, or by the API).
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// When the current run of failed deliveries began; `null` after a success.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why an endpoint the tenant switched off is disabled (created disabled, or PATCHed so).
pub const DISABLED_BY_API: &str = "disabled through the API";

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = webhook_endpoints)]
pub struct NewEndpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub topics: Vec<String>,
    pub enabled: bool,
    /// Set exactly when `enabled` is false (the table's CHECK asks for `disabled_at` then).
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub secret: String,
}

impl NewEndpoint {
    /// A new endpoint; one created disabled records that the API disabled it, as a PATCH does.
    pub fn new(
        tenant_id: Uuid,
        url: String,
        topics: Vec<String>,
        enabled: bool,
        secret: String,
    ) -> NewEndpoint {
        let (disabled_reason, disabled_at) = if enabled {
            (None, None)
        } else {
            (Some(DISABLED_BY_API.to_owned()), Some(Utc::now()))
        };
        NewEndpoint {
            id: Uuid::now_v7(),
            tenant_id,
            url,
            topics,
            enabled,
            disabled_reason,
            disabled_at,
            secret,
        }
    }
}

/// A partial change (PATCH): `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub topics: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// The secrets a delivery is signed with now: the current one, and the one a rotation replaced
/// while its overlap lasts.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    pub url: String,
    pub enabled: bool,
    pub current: String,
    pub previous: Option<String>,
}

pub async fn insert(conn: &mut TenantTx, new: &NewEndpoint) -> Result<Endpoint, DbError> {
    Ok(diesel::insert_into(webhook_endpoints::table)
        .values(new)
        .returning(Endpoint::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// The endpoint with `id` in the current tenant (`NotFound` for another tenant's id).
pub async fn find(conn: &mut impl TenantConn, id: Uuid) -> Result<Endpoint, DbError> {
    Ok(webhook_endpoints::table
        .find(id)
        .select(Endpoint::as_select())
        .first(conn.conn())
        .await?)
}

/// One page of the current tenant's endpoints in id order, after `after`.
pub async fn list(
    conn: &mut impl TenantConn,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Endpoint>, DbError> {
    let mut query = webhook_endpoints::table
        .select(Endpoint::as_select())
        .order(webhook_endpoints::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(webhook_endpoints::id.gt(after));
    }
    Ok(query.load(conn.conn()).await?)
}

/// The current tenant's enabled endpoints that listen to events (non-empty `topics`): what
/// the event subscriber matches a batch against. At most `limits.max_webhooks_per_tenant`.
pub async fn subscribed(conn: &mut TenantTx) -> Result<Vec<(Uuid, Vec<String>)>, DbError> {
    Ok(webhook_endpoints::table
        .filter(webhook_endpoints::enabled.eq(true))
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "cardinality(topics) > 0",
        ))
        .order(webhook_endpoints::id.asc())
        .select((webhook_endpoints::id, webhook_endpoints::topics))
        .load(&mut **conn)
        .await?)
}

/// Applies `change` to endpoint `id`. Enabling clears the reason it was disabled and its run of
/// failures; disabling records that the API did it.
pub async fn update(
    conn: &mut TenantTx,
    id: Uuid,
    change: &EndpointChange,
) -> Result<Endpoint, DbError> {
    let current = find(conn, id).await?;
    let url = change.url.clone().unwrap_or(current.url);
    let topics = change.topics.clone().unwrap_or(current.topics);
    let enabled = change.enabled.unwrap_or(current.enabled);
    let (reason, at, failing_since) = match (current.enabled, enabled) {
        (_, true) => (
            None,
            None,
            if current.enabled {
                current.failing_since
            } else {
                None
            },
        ),
        (true, false) => (
            Some(DISABLED_BY_API.to_owned()),
            Some(Utc::now()),
            current.failing_since,
        ),
        (false, false) => (
            current.disabled_reason,
            current.disabled_at,
            current.failing_since,
        ),
    };
    Ok(diesel::update(webhook_endpoints::table.find(id))
        .set((
            webhook_endpoints::url.eq(url),
            webhook_endpoints::topics.eq(topics),
            webhook_endpoints::enabled.eq(enabled),
            webhook_endpoints::disabled_reason.eq(reason),
            webhook_endpoints::disabled_at.eq(at),
            webhook_endpoints::failing_since.eq(failing_since),
            webhook_endpoints::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Endpoint::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// Deletes endpoint `id` (`NotFound` for another tenant's id).
pub async fn delete(conn: &mut TenantTx, id: Uuid) -> Result<(), DbError> {
    let n = diesel::delete(webhook_endpoints::table.find(id))
        .execute(&mut **conn)
        .await?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

/// Makes `secret` the current secret of endpoint `id`; the replaced one keeps signing until
/// `previous_until`. A rotation during an overlap drops the older previous secret.
pub async fn rotate(
    conn: &mut TenantTx,
    id: Uuid,
    secret: &str,
    previous_until: DateTime<Utc>,
) -> Result<Endpoint, DbError> {
    Ok(diesel::update(webhook_endpoints::table.find(id))
        .set((
            webhook_endpoints::previous_secret.eq(webhook_endpoints::secret.nullable()),
            webhook_endpoints::previous_expires_at.eq(Some(previous_until)),
            webhook_endpoints::secret.eq(secret),
            webhook_endpoints::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Endpoint::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// The url, state and secrets of endpoint `id` as of `now`.
pub async fn signing_keys(
    conn: &mut TenantTx,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<SigningKeys, DbError> {
    let (url, enabled, current, previous, until): (
        String,
        bool,
        String,
        Option<String>,
        Option<DateTime<Utc>>,
    ) = webhook_endpoints::table
        .find(id)
        .select((
            webhook_endpoints::url,
            webhook_endpoints::enabled,
            webhook_endpoints::secret,
            webhook_endpoints::previous_secret,
            webhook_endpoints::previous_expires_at,
        ))
        .first(&mut **conn)
        .await?;
    let previous = previous.filter(|_| until.is_some_and(|u| u > now));
    Ok(SigningKeys {
        url,
        enabled,
        current,
        previous,
    })
}

/// Disables endpoint `id` with `reason`, unless it already is. Returns whether it changed.
pub async fn disable(conn: &mut TenantTx, id: Uuid, reason: &str) -> Result<bool, DbError> {
    let n = diesel::update(
        webhook_endpoints::table
            .find(id)
            .filter(webhook_endpoints::enabled.eq(true)),
    )
    .set((
        webhook_endpoints::enabled.eq(false),
        webhook_endpoints::disabled_reason.eq(reason),
        webhook_endpoints::disabled_at.eq(diesel::dsl::now),
        webhook_endpoints::updated_at.eq(diesel::dsl::now),
    ))
    .execute(&mut **conn)
    .await?;
    Ok(n > 0)
}

/// A delivery to `id` succeeded: its run of failures ends.
pub async fn record_success(conn: &mut TenantTx, id: Uuid) -> Result<(), DbError> {
    diesel::update(
        webhook_endpoints::table
            .find(id)
            .filter(webhook_endpoints::failing_since.is_not_null()),
    )
    .set(webhook_endpoints::failing_since.eq(None::<DateTime<Utc>>))
    .execute(&mut **conn)
    .await?;
    Ok(())
}

/// A delivery attempt to `id` failed at `now`: returns when its run of failures began.
pub async fn record_failure(
    conn: &mut TenantTx,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, DbError> {
    Ok(diesel::update(webhook_endpoints::table.find(id))
        .set(
            webhook_endpoints::failing_since.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >("COALESCE(failing_since, ")
            .bind::<diesel::sql_types::Timestamptz, _>(now)
            .sql(")")),
        )
        .returning(webhook_endpoints::failing_since.assume_not_null())
        .get_result(&mut **conn)
        .await?)
}

/// How many endpoints the transaction's tenant holds.
pub async fn count(conn: &mut TenantTx) -> Result<i64, DbError> {
    Ok(webhook_endpoints::table
        .count()
        .get_result(&mut **conn)
        .await?)
}

/// Claims (endpoint, event) before its notification is enqueued in the same transaction: `true` the first time, `false` when the event
/// was already handed to the endpoint (the relay repeats a batch after a crash).
pub async fn claim_event(
    conn: &mut TenantTx,
    tenant: Uuid,
    endpoint: Uuid,
    event_seq: i64,
) -> Result<bool, DbError> {
    let n = diesel::insert_into(webhook_event_deliveries::table)
        .values((
            webhook_event_deliveries::endpoint_id.eq(endpoint),
            webhook_event_deliveries::event_seq.eq(event_seq),
            webhook_event_deliveries::tenant_id.eq(tenant),
        ))
        .on_conflict_do_nothing()
        .execute(&mut **conn)
        .await?;
    Ok(n > 0)
}

/// How long a claim is kept: the relay repeats a batch only until it is marked published
/// (seconds, or the length of an outage), and events themselves are kept a day.
const CLAIM_RETENTION_HOURS: i64 = 48;

/// Drops the current tenant's claims older than the retention, so the table stays the size of
/// two days of deliveries.
pub async fn prune_claims(conn: &mut TenantTx) -> Result<usize, DbError> {
    Ok(diesel::delete(
        webhook_event_deliveries::table.filter(
            webhook_event_deliveries::inserted_at
                .lt(Utc::now() - chrono::Duration::hours(CLAIM_RETENTION_HOURS)),
        ),
    )
    .execute(&mut **conn)
    .await?)
}
