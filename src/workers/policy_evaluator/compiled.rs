//! Compiled policy rules, kept between evaluations.
//!
//! Validating a rule document compiles its `matches` patterns; doing that for every event
//! would cost an evaluation as much as saving the policy. Entries are keyed by policy id and
//! hold the `updated_at` they were compiled from, so an updated policy is compiled again on
//! its next evaluation and a stale entry is never used. A rule that fails validation is kept
//! too (as its error), so a bad stored policy is reported, not recompiled, on every event.
//! The cache is bounded by weight, not only by count: an entry weighs 1 plus its compiled
//! patterns (each at most `REGEX_SIZE_LIMIT` + `REGEX_DFA_SIZE_LIMIT` of memory), and past
//! `capacity` the least recently used entries are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::rules::{RuleError, Rules};

/// One policy's rules as compiled, or why they could not be.
pub type Compiled = Arc<Result<Rules, RuleError>>;

struct Entry {
    updated_at: DateTime<Utc>,
    compiled: Compiled,
    weight: usize,
    last_used: u64,
}

fn weight(compiled: &Compiled) -> usize {
    1 + compiled.as_ref().as_ref().map_or(0, Rules::pattern_count)
}

struct Inner {
    entries: HashMap<Uuid, Entry>,
    /// Sum of the entries' weights.
    weight: usize,
    /// Increases on every lookup: the recency of an entry.
    tick: u64,
    /// How many times rules were compiled (for tests and diagnostics).
    compilations: u64,
}

/// Compiled rules by policy id, weighing at most `capacity` together.
pub struct RuleCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl RuleCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                weight: 0,
                tick: 0,
                compilations: 0,
            }),
        }
    }

    /// The compiled rules of policy `id` as of `updated_at`, if cached.
    pub fn get(&self, id: Uuid, updated_at: DateTime<Utc>) -> Option<Compiled> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(&id)?;
        if entry.updated_at != updated_at {
            return None;
        }
        entry.last_used = tick;
        Some(entry.compiled.clone())
    }

    /// Compiles with `compile` and caches the result for policy `id` as of `updated_at`.
    /// `compile` runs outside the lock: other evaluations are not held up by it.
    pub fn insert_with(
        &self,
        id: Uuid,
        updated_at: DateTime<Utc>,
        compile: impl FnOnce() -> Result<Rules, RuleError>,
    ) -> Compiled {
        let compiled = Arc::new(compile());
        let added = weight(&compiled);
        let mut inner = self.lock();
        inner.compilations += 1;
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(old) = inner.entries.remove(&id) {
            inner.weight -= old.weight;
        }
        // O(entries) per eviction, and only when a cache near its capacity takes a new entry.
        while !inner.entries.is_empty() && inner.weight + added > self.capacity {
            let oldest = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            if let Some(old) = oldest.and_then(|k| inner.entries.remove(&k)) {
                inner.weight -= old.weight;
            }
        }
        inner.weight += added;
        inner.entries.insert(
            id,
            Entry {
                updated_at,
                compiled: compiled.clone(),
                weight: added,
                last_used: tick,
            },
        );
        compiled
    }

    /// How many times rules were compiled into this cache.
    pub fn compilations(&self) -> u64 {
        self.lock().compilations
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data stays consistent even if a holder panicked (every update is one statement),
    /// so a poisoned lock is taken over rather than propagated.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::topic::Filters;

    fn rules() -> Result<Rules, RuleError> {
        Ok(Rules {
            topics: Filters::default(),
            condition: None,
            actions: Vec::new(),
        })
    }

    #[test]
    fn an_entry_is_reused_until_its_policy_changes_and_the_cache_stays_bounded() {
        let cache = RuleCache::new(2);
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(1);
        assert!(cache.get(a, t0).is_none());
        cache.insert_with(a, t0, rules);
        assert!(cache.get(a, t0).is_some());
        assert!(
            cache.get(a, t1).is_none(),
            "updated policy: stale entry unused"
        );
        cache.insert_with(a, t1, rules);
        assert_eq!(cache.len(), 1, "replaced, not added");
        cache.insert_with(b, t0, rules);
        // `a` was used more recently than `b`: `b` goes when `c` arrives.
        assert!(cache.get(a, t1).is_some());
        cache.insert_with(c, t0, rules);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(b, t0).is_none());
        assert!(cache.get(a, t1).is_some() && cache.get(c, t0).is_some());
        assert_eq!(cache.compilations(), 4);
    }

    #[test]
    fn compiled_patterns_count_against_the_capacity() {
        let heavy = || {
            super::super::rules::validate(
                &serde_json::json!({"when": {"topics": ["a.b"]},
                    "if": {"any": [
                        {"field": "data.s", "op": "matches", "value": "^a"},
                        {"field": "data.s", "op": "matches", "value": "^b"},
                        {"field": "data.s", "op": "matches", "value": "^c"}]},
                    "then": [{"publish": {"topic": "c.d"}}]}),
                &[] as &[&str],
                &crate::config::PoliciesConfig::default(),
            )
        };
        let cache = RuleCache::new(4);
        let (light_id, heavy_id) = (Uuid::now_v7(), Uuid::now_v7());
        let t = Utc::now();
        cache.insert_with(light_id, t, rules);
        // 1 + 3 patterns: the light entry must go to make room.
        let compiled = cache.insert_with(heavy_id, t, heavy);
        assert_eq!(compiled.as_ref().as_ref().map(Rules::pattern_count), Ok(3));
        assert_eq!(cache.len(), 1);
        assert!(cache.get(light_id, t).is_none());
        assert!(cache.get(heavy_id, t).is_some());
    }
}
