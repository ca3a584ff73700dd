//! Bearer API-key authentication (CONTRACT §4). Keys are looked up by their sha256 and a found
//! key is cached briefly, so a revoked key stops working within [`KEY_CACHE_TTL`] while a busy
//! client costs one database round trip per TTL.
//!
//! Only found keys are cached: unknown keys cannot push known ones out. Instead, a lookup of a
//! key that is not cached first takes a token from the client address's failed-authentication
//! bucket (given back when the key is valid), so guessing keys costs the database about one
//! bucket's worth of lookups per address and then gets 429.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use moka::sync::Cache;
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
const MAX_ENTRIES: u64 = 10_000;

/// A request authenticated by an API key, and the tenant it acts for.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    pub tenant_id: Uuid,
    pub api_key_id: Uuid,
}

/// `(api_key_id, tenant_id)` of a valid key.
type Found = (Uuid, Uuid);

/// Key hash → found key, expiring [`KEY_CACHE_TTL`] after the lookup and bounded to
/// [`MAX_ENTRIES`] (moka evicts the least useful entry, never everything).
#[derive(Clone)]
pub struct KeyCache {
    entries: Cache<[u8; 32], Found>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(KEY_CACHE_TTL)
                // `forget` finds entries by key id, not by the hash they are stored under.
                .support_invalidation_closures()
                .build(),
        }
    }
}

impl KeyCache {
    /// Forgets a key at once on this instance (other instances within the TTL).
    pub fn forget(&self, api_key_id: Uuid) {
        // Only fails when invalidation closures are not enabled, which `default` always does;
        // the TTL still bounds how long a revoked key is served.
        if let Err(e) = self
            .entries
            .invalidate_entries_if(move |_, (id, _)| *id == api_key_id)
        {
            tracing::error!(error = %e, "could not forget a revoked API key");
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Found> {
        self.entries.get(hash)
    }

    fn put(&self, hash: [u8; 32], found: Found) {
        self.entries.insert(hash, found);
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

    fn hash(i: u64) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&i.to_be_bytes());
        h
    }

    #[test]
    fn a_full_cache_stays_bounded_and_keeps_most_keys() {
        let cache = KeyCache::default();
        for i in 0..MAX_ENTRIES + 50 {
            cache.put(hash(i), (Uuid::now_v7(), Uuid::now_v7()));
        }
        cache.entries.run_pending_tasks();
        let count = cache.entries.entry_count();
        assert!(count <= MAX_ENTRIES, "{count}");
        // Evicted one at a time, never cleared wholesale.
        assert!(count >= MAX_ENTRIES - 100, "{count}");
    }

    #[test]
    fn forget_drops_every_entry_of_that_key_at_once() {
        let cache = KeyCache::default();
        let (revoked, kept) = (Uuid::now_v7(), Uuid::now_v7());
        let tenant = Uuid::now_v7();
        cache.put(hash(1), (revoked, tenant));
        cache.put(hash(2), (kept, tenant));
        cache.forget(revoked);
        assert_eq!(cache.get(&hash(1)), None);
        assert_eq!(cache.get(&hash(2)), Some((kept, tenant)));
        // A later lookup of the same key caches it again.
        cache.put(hash(1), (revoked, tenant));
        assert_eq!(cache.get(&hash(1)), Some((revoked, tenant)));
    }
}
