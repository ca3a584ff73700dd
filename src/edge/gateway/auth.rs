//! Bearer API-key authentication (CONTRACT §4). Keys are looked up by their sha256 and a found
//! key is cached briefly, so a revoked key stops working within [`KEY_CACHE_TTL`] while a busy
//! client costs one database round trip per TTL.
//!
//! Only found keys are cached: unknown keys cannot push known ones out. Instead, a lookup of a
//! key that is not cached first takes a token from the client address's failed-authentication
//! bucket (given back when the key is valid), so guessing keys costs the database about one
//! bucket's worth of lookups per address and then gets 429.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use uuid::Uuid;

use super::AppState;
use super::client_addr;
use super::error::ApiError;
use super::observe::TenantTag;
use super::rate_limit::Decision;
use crate::schemas::storage::api_key;

/// How long a key lookup is trusted; the upper bound on revocation taking effect.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Found keys kept at most (bounds memory; only valid keys, which a tenant's cap bounds, count).
const MAX_ENTRIES: usize = 10_000;

/// A request authenticated by an API key, and the tenant it acts for.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    pub tenant_id: Uuid,
    pub api_key_id: Uuid,
}

/// `(api_key_id, tenant_id)` of a valid key.
type Found = (Uuid, Uuid);
/// Key hash → found key and when it was looked up.
type Entries = HashMap<[u8; 32], (Found, Instant)>;

#[derive(Clone, Default)]
pub struct KeyCache {
    entries: Arc<Mutex<Entries>>,
}

impl KeyCache {
    /// Forgets a key at once on this instance (other instances within the TTL).
    pub fn forget(&self, api_key_id: Uuid) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, ((id, _), _)| *id != api_key_id);
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Found> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(found, _)| *found)
    }

    fn put(&self, hash: [u8; 32], found: Found) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
        }
        if entries.len() >= MAX_ENTRIES {
            // Still full of live keys: make room for this one; the evicted key is looked up
            // again on its next request (never cleared wholesale).
            if let Some(victim) = entries.keys().next().copied() {
                entries.remove(&victim);
            }
        }
        entries.insert(hash, (found, Instant::now()));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
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
            let (api_key_id, tenant_id) = match state.keys.get(&hash) {
                Some(found) => found,
                None => lookup(&req, &state, &hash).await?,
            };
            req.extensions_mut().insert(TenantTag(tenant_id));
            if let Decision::Deny {
                retry_after_secs,
                by,
            } = state.limiter.check(api_key_id, tenant_id).await
            {
                return Err(rate_limited(by, retry_after_secs));
            }
            Ok(Authenticated {
                tenant_id,
                api_key_id,
            })
        })
    }
}

/// Looks up a key that is not cached, paying with a token of the client address's bucket.
async fn lookup(req: &HttpRequest, state: &AppState, hash: &[u8; 32]) -> Result<Found, ApiError> {
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let ip = client_addr::client_ip(
        req.peer_addr().map(|a| a.ip()),
        &forwarded,
        &state.config.server.trusted_proxies,
    );
    let address = client_addr::bucket_name(ip);
    if let Decision::Deny {
        retry_after_secs,
        by,
    } = state.limiter.check_lookup(&address).await
    {
        return Err(rate_limited(by, retry_after_secs));
    }
    match state.repo.resolve_api_key(hash).await? {
        Some(found) => {
            state.limiter.refund_lookup(&address).await;
            state.keys.put(*hash, found);
            Ok(found)
        }
        None => Err(ApiError::Unauthorized("invalid API key".into())),
    }
}

fn rate_limited(by: super::rate_limit::Scope, retry_after_secs: u64) -> ApiError {
    ApiError::RateLimited {
        message: format!("rate limit exceeded for this {}", by.describe()),
        retry_after_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_drops_expired_or_single_entries_never_everything() {
        let cache = KeyCache::default();
        let hash = |i: usize| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_be_bytes());
            h
        };
        let kept = (Uuid::now_v7(), Uuid::now_v7());
        cache.put(hash(0), kept);
        for i in 1..MAX_ENTRIES + 50 {
            cache.put(hash(i), (Uuid::now_v7(), Uuid::now_v7()));
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        // 49 of 10,049 live keys were evicted one at a time; the newest are all there.
        assert!(cache.get(&hash(MAX_ENTRIES + 49)).is_some());
        let live = (1..MAX_ENTRIES + 50)
            .filter(|i| cache.get(&hash(*i)).is_some())
            .count();
        assert!(live >= MAX_ENTRIES - 1, "{live}");
    }
}
