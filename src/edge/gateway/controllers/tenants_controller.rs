//! `POST /v1/tenants` (admin token): creates a tenant and its first API key.

use actix_web::{HttpResponse, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::edge::gateway::auth::Admin;
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::state::AppState;
use crate::schemas::storage::tenant;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Lowercase letters, digits and inner hyphens, 2 to 63 characters; unique.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$")]
    pub slug: String,
    /// Display name, 1 to 200 characters; defaults to the slug.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    pub tenant_id: Uuid,
    pub slug: String,
    pub name: String,
    /// The tenant's first API key. Shown once: only its hash is stored.
    pub api_key: String,
    pub api_key_id: Uuid,
}

/// Creates a tenant (admin token required).
#[utoipa::path(
    post, path = "/v1/tenants", tag = "tenants", security(("admin_token" = [])),
    request_body = CreateTenant,
    responses(
        (status = 201, body = TenantCreated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "slug taken"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)
    )
)]
#[post("/v1/tenants")]
pub async fn create(
    _admin: Admin,
    body: web::Json<CreateTenant>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, key) = tenant::create(&state.repo, &body.slug, body.name.as_deref()).await?;
    Ok(HttpResponse::Created().json(TenantCreated {
        tenant_id: tenant.id,
        slug: tenant.slug,
        name: tenant.name,
        api_key: key.key,
        api_key_id: key.id,
    }))
}
