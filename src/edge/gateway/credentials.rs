//! What a presented credential resolves to, and the caches of them: an API key (its id and
//! tenant, for [`auth`](super::auth)) and a dashboard session (its [`Principal`], for
//! [`session`](super::session)). Only found credentials are cached, keyed by the sha256 of the
//! secret; each is trusted for [`TTL`] after its lookup, the bound on a revocation or a
//! sign-out on one instance reaching the others, and at most [`MAX_ENTRIES`] are kept (moka
//! evicts the least useful entry, never everything).

use std::time::Duration;

use moka::sync::Cache;
use uuid::Uuid;

/// How long a looked-up credential is trusted; the upper bound on revocation taking effect.
pub const TTL: Duration = Duration::from_secs(5);
/// Credentials kept at most per cache (bounds memory; only valid ones, which a tenant's cap
/// bounds, count).
pub const MAX_ENTRIES: u64 = 10_000;

/// Secret's sha256 → what it resolved to, for [`TTL`], at most [`MAX_ENTRIES`]: the same
/// cache for keys ([`KeyCache`]) and sessions ([`SessionCache`]).
#[derive(Clone)]
pub struct Cached<V: Clone + Send + Sync + 'static> {
    entries: Cache<[u8; 32], V>,
}

impl<V: Clone + Send + Sync + 'static> Default for Cached<V> {
    fn default() -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(TTL)
                // Revocation finds entries by what they hold, not by the hash they are under.
                .support_invalidation_closures()
                .build(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Cached<V> {
    pub fn get(&self, hash: &[u8; 32]) -> Option<V> {
        self.entries.get(hash)
    }

    pub fn put(&self, hash: [u8; 32], found: V) {
        self.entries.insert(hash, found);
    }

    /// Forgets every entry `revoked` picks, at once on this instance (on the others within
    /// the TTL, which also bounds it should forgetting fail).
    fn forget_where(&self, what: &str, revoked: impl Fn(&V) -> bool + Send + Sync + 'static) {
        // Only fails without invalidation closures, which `default` always enables.
        if let Err(e) = self.entries.invalidate_entries_if(move |_, v| revoked(v)) {
            tracing::error!(error = %e, "could not forget a revoked {what}");
        }
    }
}

/// `(api_key_id, tenant_id)` of a valid key.
pub type Found = (Uuid, Uuid);

/// Key hash → found key.
pub type KeyCache = Cached<Found>;

impl Cached<Found> {
    /// Forgets a key at once on this instance (other instances within the TTL).
    pub fn forget(&self, api_key_id: Uuid) {
        self.forget_where("API key", move |(id, _)| *id == api_key_id);
    }
}

/// Who a session acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// A tenant's API key.
    Tenant { tenant_id: Uuid, api_key_id: Uuid },
    /// The operator (admin token): every tenant's queues, pause/resume, platform health.
    Operator,
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub csrf_token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// sha256 of the cookie's token (what sign-out closes).
    pub token_hash: [u8; 32],
    /// sha256 of the admin token an operator session was opened with.
    pub admin_token_hash: Option<Vec<u8>>,
}

impl Session {
    /// A session just opened (the operator's is checked against the admin token on each use).
    pub fn new(
        principal: Principal,
        csrf_token: String,
        expires_at: chrono::DateTime<chrono::Utc>,
        token_hash: [u8; 32],
    ) -> Self {
        Self {
            principal,
            csrf_token,
            expires_at,
            token_hash,
            admin_token_hash: None,
        }
    }
}

/// Token hash → live session.
pub type SessionCache = Cached<Session>;

impl Cached<Session> {
    /// Forgets one session at once on this instance (sign-out).
    pub fn forget(&self, token_hash: &[u8; 32]) {
        self.entries.invalidate(token_hash);
    }

    /// Forgets every session of a revoked key at once on this instance.
    pub fn forget_key(&self, api_key_id: Uuid) {
        self.forget_where("key's sessions", move |s| {
            matches!(s.principal, Principal::Tenant { api_key_id: id, .. } if id == api_key_id)
        });
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

    #[test]
    fn forget_key_drops_only_that_keys_sessions() {
        let cache = SessionCache::default();
        let tenant = Uuid::now_v7();
        let (revoked, kept) = (Uuid::now_v7(), Uuid::now_v7());
        let session = |api_key_id, n: u8| Session {
            principal: Principal::Tenant {
                tenant_id: tenant,
                api_key_id,
            },
            csrf_token: String::new(),
            expires_at: chrono::Utc::now(),
            token_hash: [n; 32],
            admin_token_hash: None,
        };
        cache.put([1; 32], session(revoked, 1));
        cache.put([2; 32], session(kept, 2));
        cache.forget_key(revoked);
        assert!(cache.entries.get(&[1; 32]).is_none());
        assert!(cache.entries.get(&[2; 32]).is_some());
    }
}
