//! `POST /v1/api-keys` and `DELETE /v1/api-keys/{id}`: a tenant issues and revokes its keys.
//! A tenant holds at most `limits.max_api_keys_per_tenant` unrevoked keys.
//! A revoked key stops working at once on this instance and within the key-cache TTL (5 s)
//! everywhere.

use actix_web::{HttpResponse, delete, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::budget::{self, Resource};
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::state::AppState;
use crate::schemas::storage::api_key;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A label to tell keys apart (default `default`).
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    pub id: Uuid,
    pub name: String,
    /// The key. Shown once: only its hash is stored.
    pub key: String,
}

/// Issues a new API key for the caller's tenant.
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys", security(("api_key" = [])),
    request_body(content = CreateApiKey, description = "optional"),
    responses(
        (status = 201, body = ApiKeyCreated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "limits.max_api_keys_per_tenant reached"),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[post("/v1/api-keys")]
pub async fn create(
    auth: Authenticated,
    body: Option<web::Json<CreateApiKey>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = body
        .and_then(|b| b.into_inner().name)
        .unwrap_or_else(|| "default".to_owned());
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    budget::ensure_room(
        &mut tx,
        &state.config.limits,
        auth.tenant_id,
        Resource::ApiKeys,
    )
    .await?;
    let key = api_key::issue(&mut tx, auth.tenant_id, &name).await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(ApiKeyCreated {
        id: key.id,
        name,
        key: key.key,
    }))
}

/// Revokes one of the caller's tenant's keys (404 for another tenant's key).
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "api-keys", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "revoked"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[delete("/v1/api-keys/{id}")]
pub async fn revoke(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    api_key::revoke(&mut tx, id).await?;
    tx.commit().await?;
    state.keys.forget(id);
    state.sessions.forget_key(id);
    Ok(HttpResponse::NoContent().finish())
}
