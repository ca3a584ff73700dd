//! `GET /v1/events`: the tenant's event stream over Server-Sent Events (CONTRACT §6).

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, get, web};
use serde::Deserialize;

use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::error::ApiError;
use crate::edge::gateway::state::AppState;
use crate::events::hub::SubscribeError;
use crate::events::stream::{self, OpenError};
use crate::events::topic::Filters;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Comma-separated topics (`episode.created`) or domains (`policy.*`); none = all.
    pub topics: Option<String>,
    /// Resume after this event id (the `Last-Event-ID` header wins when both are sent).
    pub last_event_id: Option<String>,
}

/// The tenant's events as Server-Sent Events (`text/event-stream`).
#[utoipa::path(
    get, path = "/v1/events", tag = "events", security(("api_key" = [])),
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id")
    ),
    responses(
        (status = 200, content_type = "text/event-stream", description = "the event stream"),
        (status = 400, body = crate::edge::gateway::error::ErrorBody),
        (status = 401, body = crate::edge::gateway::error::ErrorBody),
        (status = 429, body = crate::edge::gateway::error::ErrorBody, description = "too many streams")
    )
)]
#[get("/v1/events")]
pub async fn events(
    req: HttpRequest,
    auth: Authenticated,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let filters = Filters::parse(query.topics.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let header = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    let last_event_id = match header.or_else(|| query.last_event_id.clone()) {
        None => None,
        Some(raw) if raw.trim().is_empty() => None,
        Some(raw) => Some(
            raw.trim()
                .parse::<i64>()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be a non-negative integer".into())
                })?,
        ),
    };
    let body = stream::open(
        state.repo.clone(),
        &state.hub,
        &state.config.events,
        stream::Request {
            tenant: auth.tenant_id,
            filters,
            last_event_id,
        },
    )
    .await
    .map_err(|e| match e {
        OpenError::Subscribe(e @ SubscribeError::TooMany(_)) => ApiError::RateLimited {
            message: e.to_string(),
            retry_after_secs: 5,
        },
        OpenError::Subscribe(e @ SubscribeError::NoRuntime) => ApiError::Internal(e.into()),
        OpenError::Db(e) => e.into(),
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        // Tell reverse proxies (nginx) not to buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        // A stream ends only when the client must reconnect (shutdown, overflow, maximum
        // duration): its connection is not kept for another request, so a draining server is
        // not held open by it and a reconnect goes to a fresh connection (another instance).
        .force_close()
        .streaming(body))
}
