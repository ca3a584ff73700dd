//! Bearer API-key authentication (CONTRACT §4). Keys are looked up by their sha256 and the
//! answer (including "no such key") is cached briefly, so a revoked key stops working within
//! [`KEY_CACHE_TTL`] while a busy client costs one database round trip per TTL.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::observe::TenantTag;
use super::rate_limit::Decision;
use crate::schemas::storage::api_key;

/// How long a key lookup is trusted; the upper bound on revocation taking effect.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Entries kept before the cache is cleared wholesale (bounds memory under key-guessing).
const MAX_ENTRIES: usize = 10_000;

/// A request authenticated by an API key, and the tenant it acts for.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    pub tenant_id: Uuid,
    pub api_key_id: Uuid,
}

/// `(api_key_id, tenant_id)`, or `None` for an unknown or revoked key.
type Lookup = Option<(Uuid, Uuid)>;
/// Key hash → lookup and when it was made.
type Entries = HashMap<[u8; 32], (Lookup, Instant)>;

#[derive(Clone, Default)]
pub struct KeyCache {
    entries: Arc<Mutex<Entries>>,
}

impl KeyCache {
    /// Forgets a key at once on this instance (other instances within the TTL).
    pub fn forget(&self, api_key_id: Uuid) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (lookup, _)| lookup.is_none_or(|(id, _)| id != api_key_id));
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Lookup> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(lookup, _)| *lookup)
    }

    fn put(&self, hash: [u8; 32], lookup: Lookup) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (lookup, Instant::now()));
    }
}

/// A request carrying the admin token (`VSM_ADMIN_TOKEN`), compared in constant time.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        use subtle::ConstantTimeEq;
        let result = (|| {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no AppState")))?;
            let expected = state.config.server.admin_token.as_ref().ok_or_else(|| {
                ApiError::Forbidden("admin API disabled: VSM_ADMIN_TOKEN is not set".into())
            })?;
            let token = bearer(req).ok_or_else(|| {
                ApiError::Unauthorized("missing Authorization: Bearer <admin token>".into())
            })?;
            if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) {
                Ok(Admin)
            } else {
                Err(ApiError::Unauthorized("invalid admin token".into()))
            }
        })();
        std::future::ready(result)
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
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
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no AppState")))?
                .clone();
            let token = bearer(&req).ok_or_else(|| {
                ApiError::Unauthorized("missing Authorization: Bearer <api key>".into())
            })?;
            let hash = api_key::hash(token);
            let lookup = match state.keys.get(&hash) {
                Some(lookup) => lookup,
                None => {
                    let lookup = state.repo.resolve_api_key(&hash).await?;
                    state.keys.put(hash, lookup);
                    lookup
                }
            };
            let (api_key_id, tenant_id) =
                lookup.ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))?;
            req.extensions_mut().insert(TenantTag(tenant_id));
            if let Decision::Deny { retry_after_secs } = state.limiter.check(api_key_id).await {
                return Err(ApiError::RateLimited {
                    message: "rate limit exceeded for this API key".into(),
                    retry_after_secs,
                });
            }
            Ok(Authenticated {
                tenant_id,
                api_key_id,
            })
        })
    }
}
