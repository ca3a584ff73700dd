//! Webhook endpoints (CONTRACT §4 `/v1/webhooks`, §7): where a tenant's notifications are
//! delivered, signed per Standard Webhooks. The signing secret is in the response of the
//! create and rotate-secret calls only; every other response leaves it out. A rotation keeps
//! the replaced secret signing alongside for `notifications.secret_overlap_secs`, so the
//! receiver can switch without dropping a delivery.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::budget::{self, Resource};
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::openapi::shapes;
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::edge::gateway::state::AppState;
use crate::events::topic::{self, Filter};
use crate::schemas::webhooks::endpoint::{self, Endpoint, EndpointChange, NewEndpoint};
use crate::workers::notification_sender::target_guard::Guard;
use crate::workers::notification_sender::{endpoint_url, signature};

/// Most topic filters one endpoint may list (the table's CHECK agrees).
const MAX_TOPICS: usize = 64;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    #[schema(schema_with = webhook_url)]
    pub url: String,
    /// Event filters (`episode.analyzed`, `policy.*`), at most 64. Default none: the endpoint
    /// then receives only what policy `notify` actions send it.
    #[schema(schema_with = topic_filters)]
    pub topics: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[schema(schema_with = webhook_url)]
    pub url: Option<String>,
    #[schema(schema_with = topic_filters)]
    pub topics: Option<Vec<String>>,
    /// `true` re-enables an endpoint that was disabled (by the API, a 410 or failing for days).
    pub enabled: Option<bool>,
}

/// An endpoint with its signing secret: only ever the answer to create and rotate-secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_<base64>`: shown this once; verify deliveries with it (Standard Webhooks).
    pub secret: String,
    /// Until when the replaced secret keeps signing too (rotation only).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// An absolute `http(s)` URI of at most [`endpoint_url::MAX_URL_BYTES`].
fn webhook_url() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::Custom("uri".into())))
        .pattern(Some("^https?://"))
        .max_length(Some(endpoint_url::MAX_URL_BYTES))
        .description(Some(format!(
            "`http` or `https`, at most {} bytes, no user name or password. Stored normalised.",
            endpoint_url::MAX_URL_BYTES
        )))
        .build()
}

/// At most [`MAX_TOPICS`] filters in the syntax of [`Filter::parse`].
fn topic_filters() -> utoipa::openapi::schema::Array {
    shapes::strings(topic::FILTER_PATTERN, 0, MAX_TOPICS)
}

fn guard(state: &AppState) -> Guard {
    Guard {
        allow_private: state.config.notifications.allow_private_targets,
    }
}

/// The URL as it is stored: checked, and normalised so the tenant sees where deliveries go.
fn check_url(raw: &str, state: &AppState) -> Result<String, ApiError> {
    endpoint_url::parse(raw, guard(state))
        .map(String::from)
        .map_err(|message| ApiError::Validation {
            field: "url".into(),
            message,
        })
}

fn check_topics(topics: Vec<String>) -> Result<Vec<String>, ApiError> {
    if topics.len() > MAX_TOPICS {
        return Err(ApiError::Validation {
            field: "topics".into(),
            message: format!("at most {MAX_TOPICS} filters"),
        });
    }
    for (i, t) in topics.iter().enumerate() {
        if Filter::parse(t).is_err() {
            return Err(ApiError::Validation {
                field: format!("topics[{i}]"),
                message: "must be <domain>.<action> or <domain>.* in lowercase".into(),
            });
        }
    }
    Ok(topics)
}

/// Creates an endpoint; the response carries its secret, this once.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks", security(("api_key" = [])),
    request_body = CreateWebhook,
    responses(
        (status = 201, body = WebhookWithSecret, headers(("location" = String, description = "/v1/webhooks/{id}"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "limits.max_webhooks_per_tenant reached"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[post("/v1/webhooks")]
pub async fn create(
    auth: Authenticated,
    body: web::Json<CreateWebhook>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let new = NewEndpoint::new(
        auth.tenant_id,
        check_url(&body.url, &state)?,
        check_topics(body.topics.unwrap_or_default())?,
        body.enabled.unwrap_or(true),
        signature::new_secret(),
    );
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    budget::ensure_room(
        &mut tx,
        &state.config.limits,
        auth.tenant_id,
        Resource::Webhooks,
    )
    .await?;
    let created = endpoint::insert(&mut tx, &new).await?;
    tx.commit().await?;
    Ok(super::created(
        format!("/v1/webhooks/{}", created.id),
        WebhookWithSecret {
            endpoint: created,
            secret: new.secret,
            previous_secret_expires_at: None,
        },
    ))
}

/// The tenant's endpoints (without secrets).
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks", security(("api_key" = [])),
    params(PageQuery),
    responses(
        (status = 200, body = List<Endpoint>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/webhooks")]
pub async fn index(
    auth: Authenticated,
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.page()?;
    let after = page.after_parsed::<Uuid>()?;
    let rows = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            endpoint::list(tx, after, page.limit + 1).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(List::from_rows(rows, &page, |e| e.id.to_string())))
}

/// One endpoint (without its secret).
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Endpoint),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/webhooks/{id}")]
pub async fn show(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let found = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            endpoint::find(tx, path.into_inner()).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(found))
}

/// Changes an endpoint's url, topics or enabled flag (absent fields stay).
#[utoipa::path(
    patch, path = "/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    request_body = UpdateWebhook,
    responses(
        (status = 200, body = Endpoint),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[patch("/v1/webhooks/{id}")]
pub async fn update(
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<UpdateWebhook>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let change = EndpointChange {
        url: body
            .url
            .as_deref()
            .map(|u| check_url(u, &state))
            .transpose()?,
        topics: body.topics.map(check_topics).transpose()?,
        enabled: body.enabled,
    };
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let updated = endpoint::update(&mut tx, path.into_inner(), &change).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(updated))
}

/// Deletes an endpoint.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[delete("/v1/webhooks/{id}")]
pub async fn destroy(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    endpoint::delete(&mut tx, path.into_inner()).await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Gives the endpoint a new secret (in the response, this once); the old one keeps signing
/// beside it for `notifications.secret_overlap_secs`.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = WebhookWithSecret),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[post("/v1/webhooks/{id}/rotate-secret")]
pub async fn rotate_secret(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let secret = signature::new_secret();
    let overlap = chrono::Duration::seconds(
        i64::try_from(state.config.notifications.secret_overlap_secs).unwrap_or(i64::MAX),
    );
    let until = Utc::now() + overlap;
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let rotated = endpoint::rotate(&mut tx, path.into_inner(), &secret, until).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(WebhookWithSecret {
        endpoint: rotated,
        secret,
        previous_secret_expires_at: Some(until),
    }))
}
