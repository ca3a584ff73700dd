//! Bearer API-key authentication (CONTRACT §4). Keys are looked up by their sha256 and a found
//! key is cached briefly ([`credentials`](super::credentials)), so a revoked key stops working
//! within its TTL while a busy client costs one database round trip per TTL.
//!
//! Only found keys are cached: unknown keys cannot push known ones out. Instead, a lookup of a
//! key that is not cached first takes a token from the client address's failed-authentication
//! bucket (given back when the key is valid), so guessing keys costs the database about one
//! bucket's worth of lookups per address and then gets 429.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use uuid::Uuid;

use super::credentials::{Found, Principal};
use super::error::ApiError;
use super::lookup;
use super::observe::TenantTag;
use super::rate_limit::Decision;
use super::session;
use super::state::AppState;
use crate::schemas::storage::api_key;

/// A request authenticated by an API key, and the tenant it acts for.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    pub tenant_id: Uuid,
    pub api_key_id: Uuid,
}

/// A request carrying the admin token (`VSM_ADMIN_TOKEN`), compared in constant time.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = app_state(&req)?;
            let expected = state.config.server.admin_token.as_ref().ok_or_else(|| {
                ApiError::Forbidden("admin API disabled: VSM_ADMIN_TOKEN is not set".into())
            })?;
            if let Some(token) = bearer(&req) {
                return if is_admin_token(token, expected.expose()) {
                    Ok(Admin)
                } else {
                    Err(ApiError::Unauthorized("invalid admin token".into()))
                };
            }
            // The dashboard's operator session stands for the admin token; a tenant's does not.
            match session::from_request(&req, &state).await? {
                Some(s) if s.principal == Principal::Operator => {
                    session::check_csrf(&req, &s)?;
                    Ok(Admin)
                }
                Some(_) => Err(ApiError::Forbidden(
                    "this needs the admin token; the session is a tenant's".into(),
                )),
                None => Err(ApiError::Unauthorized(
                    "missing Authorization: Bearer <admin token>".into(),
                )),
            }
        })
    }
}

/// Constant-time comparison with the configured admin token.
pub fn is_admin_token(token: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(token.as_bytes().ct_eq(expected.as_bytes()))
}

fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no AppState")))
}

pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = app_state(&req)?;
            let (api_key_id, tenant_id) = match bearer(&req) {
                Some(token) => resolve_key(&req, &state, token).await?,
                // No Authorization header: the dashboard's session cookie, which acts as the
                // key it was opened with (and only for state changes with its CSRF token).
                None => match session::from_request(&req, &state).await? {
                    Some(s) => match s.principal {
                        Principal::Tenant {
                            tenant_id,
                            api_key_id,
                        } => {
                            session::check_csrf(&req, &s)?;
                            (api_key_id, tenant_id)
                        }
                        Principal::Operator => {
                            return Err(ApiError::Forbidden(
                                "the operator's session has no tenant: sign in with an API key"
                                    .into(),
                            ));
                        }
                    },
                    None => {
                        return Err(ApiError::Unauthorized(
                            "missing Authorization: Bearer <api key>".into(),
                        ));
                    }
                },
            };
            charge(&req, &state, api_key_id, tenant_id).await?;
            Ok(Authenticated {
                tenant_id,
                api_key_id,
            })
        })
    }
}

/// A tenant (API key, or its dashboard session), or the operator (admin token, or the
/// operator's dashboard session): for the views the operator sees across tenants.
#[derive(Debug, Clone, Copy)]
pub enum Viewer {
    Tenant(Authenticated),
    Operator,
}

impl FromRequest for Viewer {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let state = app_state(&req)?;
            let admin = state.config.server.admin_token.as_ref();
            let operator = match (bearer(&req), admin) {
                (Some(token), Some(expected)) => is_admin_token(token, expected.expose()),
                (Some(_), None) => false,
                (None, _) => session::from_request(&req, &state)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.principal == Principal::Operator),
            };
            if operator {
                return Ok(Viewer::Operator);
            }
            Authenticated::from_request(&req, &mut payload)
                .await
                .map(Viewer::Tenant)
        })
    }
}

/// `(api_key_id, tenant_id)` of a valid key, from the cache or the database.
pub async fn resolve_key(
    req: &HttpRequest,
    state: &AppState,
    token: &str,
) -> Result<(Uuid, Uuid), ApiError> {
    let hash = api_key::hash(token);
    match state.keys.get(&hash) {
        Some(found) => Ok(found),
        None => look_up(req, state, &hash).await,
    }
}

/// Tags the request with its tenant and takes one token from the key's and the tenant's bucket.
pub async fn charge(
    req: &HttpRequest,
    state: &AppState,
    api_key_id: Uuid,
    tenant_id: Uuid,
) -> Result<(), ApiError> {
    req.extensions_mut().insert(TenantTag(tenant_id));
    match state.limiter.check(api_key_id, tenant_id).await {
        Decision::Deny {
            retry_after_secs,
            by,
        } => Err(ApiError::rate_limited(by, retry_after_secs)),
        Decision::Allow => Ok(()),
    }
}

/// Looks up a key that is not cached (a paid lookup) and caches it if found.
async fn look_up(req: &HttpRequest, state: &AppState, hash: &[u8; 32]) -> Result<Found, ApiError> {
    let found = lookup::paid(req, state, async {
        Ok(state.repo.resolve_api_key(hash).await?)
    })
    .await?
    .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))?;
    state.keys.put(*hash, found);
    Ok(found)
}
