//! The delivery log (CONTRACT §4): a tenant lists and inspects its notifications, each with its
//! attempts (status code, latency, error, next retry), and sends a failed one again. Row-level
//! security decides what a tenant sees: another tenant's notification is 404.

use std::collections::HashMap;

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::edge::gateway::state::AppState;
use crate::repo::TenantTx;
use crate::schemas::notify::notification::{
    self, Attempt, ChannelKind, DeliveryState, Notification,
};
use crate::workers::notification_sender::{self, ATTEMPTS_SHOWN};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationFilter {
    /// telegram or webhook.
    pub channel: Option<String>,
    /// pending, sent or failed.
    pub state: Option<String>,
}

/// One notification of the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: Uuid,
    pub channel: ChannelKind,
    /// The chat id or webhook endpoint it goes to.
    pub recipient: String,
    pub state: DeliveryState,
    /// Requests made so far.
    pub attempt_count: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// Its attempts, oldest first (the newest 50 at most).
    pub attempts: Vec<Attempt>,
}

impl NotificationView {
    fn new(n: Notification, attempts: Vec<Attempt>) -> Self {
        Self {
            id: n.id,
            channel: n.channel,
            recipient: n.recipient,
            state: n.state,
            attempt_count: n.attempts,
            last_error: n.last_error,
            created_at: n.created_at,
            updated_at: n.updated_at,
            sent_at: n.sent_at,
            attempts,
        }
    }
}

fn parse<T: std::str::FromStr>(
    value: Option<&str>,
    name: &str,
    all: String,
) -> Result<Option<T>, ApiError> {
    value
        .map(str::parse::<T>)
        .transpose()
        .map_err(|_| ApiError::BadRequest(format!("{name} must be one of {all}")))
}

async fn with_attempts(
    tx: &mut TenantTx,
    rows: Vec<Notification>,
) -> Result<Vec<NotificationView>, ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|n| n.id).collect();
    let mut by_id: HashMap<Uuid, Vec<Attempt>> = HashMap::new();
    for a in notification::attempts_of(tx, &ids, ATTEMPTS_SHOWN).await? {
        by_id.entry(a.notification_id).or_default().push(a);
    }
    Ok(rows
        .into_iter()
        .map(|n| {
            let attempts = by_id.remove(&n.id).unwrap_or_default();
            NotificationView::new(n, attempts)
        })
        .collect())
}

/// The tenant's delivery log, oldest first.
#[utoipa::path(
    get, path = "/v1/notifications", tag = "notifications", security(("api_key" = [])),
    params(NotificationFilter, PageQuery),
    responses(
        (status = 200, body = List<NotificationView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/notifications")]
pub async fn index(
    auth: Authenticated,
    filter: web::Query<NotificationFilter>,
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.page()?;
    let channel = parse::<ChannelKind>(filter.channel.as_deref(), "channel", ChannelKind::names())?;
    let delivery =
        parse::<DeliveryState>(filter.state.as_deref(), "state", DeliveryState::names())?;
    let after = page.after_parsed::<Uuid>()?;
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let mut rows = notification::list(&mut tx, channel, delivery, after, page.limit + 1).await?;
    // The attempts of the extra row (only there to know whether a next page exists) are not needed.
    let extra =
        usize::try_from(page.limit).map_or(None, |l| (rows.len() > l).then(|| rows.split_off(l)));
    let mut items = with_attempts(&mut tx, rows).await?;
    tx.commit().await?;
    if let Some(extra) = extra {
        items.extend(
            extra
                .into_iter()
                .map(|n| NotificationView::new(n, Vec::new())),
        );
    }
    Ok(HttpResponse::Ok().json(List::from_rows(items, &page, |n| n.id.to_string())))
}

/// One notification with its attempts.
#[utoipa::path(
    get, path = "/v1/notifications/{id}", tag = "notifications", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = NotificationView),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/notifications/{id}")]
pub async fn show(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let Some(row) = notification::find(&mut tx, path.into_inner()).await? else {
        return Err(ApiError::NotFound("no such notification".into()));
    };
    let mut items = with_attempts(&mut tx, vec![row]).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(items.pop()))
}

/// Sends a failed notification again (a new job; earlier attempts stay in the log).
#[utoipa::path(
    post, path = "/v1/notifications/{id}/retry", tag = "notifications", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = NotificationView),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the notification has not failed"),
        (status = 429, body = ErrorBody)
    )
)]
#[post("/v1/notifications/{id}/retry")]
pub async fn retry(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let Some(row) = notification_sender::retry(&mut tx, path.into_inner()).await? else {
        return Err(ApiError::NotFound("no such notification".into()));
    };
    let mut items = with_attempts(&mut tx, vec![row]).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(items.pop()))
}
