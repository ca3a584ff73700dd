//! Token buckets (CONTRACT §4): per API key and per tenant for every authenticated request (a
//! request takes a token from both or from neither, so minting keys buys no more capacity), and
//! per client address for lookups of keys that are not already known (failed authentication).
//! With `REDIS_URL` the buckets live in Redis (one Lua script, Redis's clock), so every instance
//! draws from the same ones; otherwise they are in-process. Redis trouble never takes the API
//! down: the limiter fails open, logs it (at most every 10 s), counts it, and `/ready` reports
//! Redis as degraded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::config::{RateLimitConfig, ServiceUrl};
use crate::health::{Probe, ProbeError};
use crate::metrics::METRICS;

/// Takes `cost` tokens from every bucket in KEYS, or from none: ARGV = cost, then rate and
/// burst per key. Tokens and last refill in Redis's clock (ms). A negative cost refunds.
/// Returns {allowed, retry_after_ms, index of the (first) refusing bucket, 1-based}.
const TOKEN_BUCKETS: &str = r#"
local cost = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tokens = {}
local retry, refused = 0, 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local have = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  have = math.min(burst, have + math.max(0, now - ts) * rate / 1000)
  tokens[i] = have
  if have < cost then
    local wait = math.ceil((cost - have) * 1000 / rate)
    if wait > retry then retry = wait end
    if refused == 0 then refused = i end
  end
end
if refused > 0 then
  return {0, retry, refused}
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  redis.call('HSET', key, 'tokens', tostring(math.min(burst, tokens[i] - cost)), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
return {1, 0, 0}
"#;

/// How long a Redis call may take before the limiter gives up and lets the request through.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Over the limit of the `by` bucket; retry after this many seconds (at least 1).
    Deny {
        retry_after_secs: u64,
        by: Scope,
    },
}

/// Which bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    ApiKey,
    Tenant,
    Address,
    /// A Telegram chat's commands.
    Chat,
}

impl Scope {
    /// For the 429 message: "rate limit exceeded for this {…}".
    pub fn describe(self) -> &'static str {
        match self {
            Scope::ApiKey => "API key",
            Scope::Tenant => "tenant",
            Scope::Address => "client address (too many unknown API keys)",
            Scope::Chat => "Telegram chat",
        }
    }
}

/// One bucket's refill rate (tokens per second) and size.
#[derive(Debug, Clone, Copy)]
struct Limit {
    rate: f64,
    burst: f64,
}

impl Limit {
    /// `None` (no limit) for a rate of 0.
    fn new(rate: f64, burst: f64) -> Option<Limit> {
        (rate > 0.0).then(|| Limit {
            rate,
            burst: burst.max(1.0),
        })
    }
}

/// A bucket to draw from: its name (the Redis key), limit and scope.
type Draw = (String, Limit, Scope);

struct Bucket {
    tokens: f64,
    at: Instant,
    /// How long after `at` the bucket is full again (and so can be forgotten).
    full_after: Duration,
}

pub struct RateLimiter {
    key: Option<Limit>,
    tenant: Option<Limit>,
    failed_auth: Option<Limit>,
    redis: Option<(Client, Script)>,
    local: Mutex<HashMap<String, Bucket>>,
    last_warning: Mutex<Option<Instant>>,
}

/// In-process buckets kept before idle (full) ones are forgotten.
const LOCAL_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// Builds the limiter; with a Redis URL it connects in the background and keeps
    /// reconnecting, so a Redis that is down at start-up does not stop the server.
    pub fn new(cfg: &RateLimitConfig, redis: Option<&ServiceUrl>) -> Result<RateLimiter, String> {
        let redis = match redis {
            None => None,
            Some(url) => {
                // Fails open while Redis is away (see `crate::redis`).
                let client = crate::redis::background_client(url, REDIS_TIMEOUT)?;
                Some((client, Script::from_lua(TOKEN_BUCKETS)))
            }
        };
        // `requests_per_second = 0` lifts request limiting altogether (benchmarks, tests).
        let requests_limited = cfg.requests_per_second > 0.0;
        Ok(RateLimiter {
            key: Limit::new(cfg.requests_per_second, cfg.burst),
            tenant: Limit::new(cfg.tenant_requests_per_second, cfg.tenant_burst)
                .filter(|_| requests_limited),
            failed_auth: Limit::new(cfg.failed_auth_per_second, cfg.failed_auth_burst),
            redis,
            local: Mutex::new(HashMap::new()),
            last_warning: Mutex::new(None),
        })
    }

    /// One authenticated request: a token from the key's bucket and the tenant's, or neither.
    pub async fn check(&self, api_key: Uuid, tenant: Uuid) -> Decision {
        let mut draws = Vec::with_capacity(2);
        if let Some(limit) = self.key {
            draws.push((format!("vsm:ratelimit:{api_key}"), limit, Scope::ApiKey));
        }
        if let Some(limit) = self.tenant {
            draws.push((
                format!("vsm:ratelimit:tenant:{tenant}"),
                limit,
                Scope::Tenant,
            ));
        }
        self.take(&draws, 1.0).await
    }

    /// Before looking up a key that is not already known: a token from the client address's
    /// bucket (see `client_addr::bucket_name`). Deny means the lookup must not happen.
    pub async fn check_lookup(&self, address: &str) -> Decision {
        self.take(&self.address_draw(address), 1.0).await
    }

    /// The lookup found a valid key: gives its token back, so only failures drain the bucket.
    pub async fn refund_lookup(&self, address: &str) {
        self.take(&self.address_draw(address), -1.0).await;
    }

    /// One bot command from Telegram chat `chat`: a token from the chat's bucket, refilled at
    /// `per_minute` and holding `burst` (0 per minute: no limit).
    pub async fn check_chat(&self, chat: i64, per_minute: f64, burst: f64) -> Decision {
        let draws: Vec<Draw> = Limit::new(per_minute / 60.0, burst)
            .map(|limit| (format!("vsm:ratelimit:tgchat:{chat}"), limit, Scope::Chat))
            .into_iter()
            .collect();
        self.take(&draws, 1.0).await
    }

    /// Whether chat `chat` may be told to slow down now: one token per `window`, so a chat
    /// flooding commands gets at most one such reply per window, on every instance together.
    pub async fn check_slow_down(&self, chat: i64, window: Duration) -> Decision {
        let rate = 1.0 / window.as_secs_f64().max(1.0);
        let draws: Vec<Draw> = Limit::new(rate, 1.0)
            .map(|limit| (format!("vsm:ratelimit:tgslow:{chat}"), limit, Scope::Chat))
            .into_iter()
            .collect();
        self.take(&draws, 1.0).await
    }

    fn address_draw(&self, address: &str) -> Vec<Draw> {
        self.failed_auth
            .map(|limit| {
                (
                    format!("vsm:ratelimit:auth:{address}"),
                    limit,
                    Scope::Address,
                )
            })
            .into_iter()
            .collect()
    }

    async fn take(&self, draws: &[Draw], cost: f64) -> Decision {
        if draws.is_empty() {
            return Decision::Allow;
        }
        match &self.redis {
            Some((client, script)) => match self.take_redis(client, script, draws, cost).await {
                Ok(decision) => decision,
                Err(e) => {
                    METRICS.rate_limiter_errors.inc();
                    self.warn(&e);
                    Decision::Allow
                }
            },
            None => self.take_local(draws, cost),
        }
    }

    async fn take_redis(
        &self,
        client: &Client,
        script: &Script,
        draws: &[Draw],
        cost: f64,
    ) -> Result<Decision, String> {
        if !client.is_connected() {
            return Err("Redis is not connected".to_owned());
        }
        let keys: Vec<String> = draws.iter().map(|(name, _, _)| name.clone()).collect();
        let mut args = vec![cost.to_string()];
        for (_, limit, _) in draws {
            args.push(limit.rate.to_string());
            args.push(limit.burst.to_string());
        }
        let call = script.evalsha_with_reload::<Vec<i64>, _, _>(client, keys, args);
        let reply = tokio::time::timeout(REDIS_TIMEOUT, call)
            .await
            .map_err(|_| "Redis did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(match reply.as_slice() {
            [1, ..] => Decision::Allow,
            [_, retry_ms, refused] => {
                let by = usize::try_from(*refused - 1)
                    .ok()
                    .and_then(|i| draws.get(i))
                    .map(|(_, _, scope)| *scope)
                    .ok_or_else(|| format!("unexpected limiter reply {reply:?}"))?;
                Decision::Deny {
                    retry_after_secs: (*retry_ms as u64).div_ceil(1000).max(1),
                    by,
                }
            }
            _ => return Err(format!("unexpected limiter reply {reply:?}")),
        })
    }

    fn take_local(&self, draws: &[Draw], cost: f64) -> Decision {
        let mut buckets = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > LOCAL_BUCKETS {
            // Idle buckets are full anyway: forgetting them changes nothing.
            buckets.retain(|_, b| b.at.elapsed() < b.full_after);
        }
        let now = Instant::now();
        let mut refill = |name: &str, limit: &Limit| {
            let bucket = buckets.entry(name.to_owned()).or_insert(Bucket {
                tokens: limit.burst,
                at: now,
                full_after: Duration::ZERO,
            });
            let gained = now.duration_since(bucket.at).as_secs_f64() * limit.rate;
            bucket.tokens = (bucket.tokens + gained).min(limit.burst);
            bucket.at = now;
            bucket.tokens
        };
        let mut refused: Option<(f64, Scope)> = None;
        for (name, limit, scope) in draws {
            let tokens = refill(name, limit);
            if tokens < cost {
                let wait = (cost - tokens) / limit.rate;
                if refused.is_none_or(|(w, _)| wait > w) {
                    refused = Some((wait, refused.map_or(*scope, |(_, s)| s)));
                }
            }
        }
        if let Some((wait, by)) = refused {
            return Decision::Deny {
                retry_after_secs: (wait.ceil() as u64).max(1),
                by,
            };
        }
        for (name, limit, _) in draws {
            if let Some(bucket) = buckets.get_mut(name) {
                bucket.tokens = (bucket.tokens - cost).min(limit.burst);
                let missing = (limit.burst - bucket.tokens).max(0.0);
                bucket.full_after = Duration::from_secs_f64(missing / limit.rate);
            }
        }
        Decision::Allow
    }

    fn warn(&self, error: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(%error, "rate limiter cannot reach Redis; letting requests through");
        }
    }

    /// The Redis readiness check, when Redis is configured.
    pub fn probe(&self) -> Option<RedisProbe> {
        self.redis.as_ref().map(|(c, _)| RedisProbe(c.clone()))
    }
}

/// `/ready`'s Redis check. Redis is not critical (the limiter fails open), so its failure shows
/// as `degraded` without turning the instance unready.
pub struct RedisProbe(Client);

impl Probe for RedisProbe {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn critical(&self) -> bool {
        false
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProbeError>> {
        Box::pin(crate::health::redis_ping_client(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(key: (f64, f64), tenant: (f64, f64)) -> RateLimiter {
        RateLimiter::new(
            &RateLimitConfig {
                requests_per_second: key.0,
                burst: key.1,
                tenant_requests_per_second: tenant.0,
                tenant_burst: tenant.1,
                failed_auth_per_second: 1.0,
                failed_auth_burst: 2.0,
            },
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_key_bucket_allows_the_burst_then_refills_at_the_rate() {
        let limiter = limiter((10.0, 3.0), (0.0, 0.0));
        let (key, tenant) = (Uuid::now_v7(), Uuid::now_v7());
        for _ in 0..3 {
            assert_eq!(limiter.check(key, tenant).await, Decision::Allow);
        }
        assert_eq!(
            limiter.check(key, tenant).await,
            Decision::Deny {
                retry_after_secs: 1,
                by: Scope::ApiKey
            }
        );
        assert_eq!(limiter.check(Uuid::now_v7(), tenant).await, Decision::Allow);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(limiter.check(key, tenant).await, Decision::Allow);
    }

    #[tokio::test]
    async fn a_tenant_bucket_is_shared_by_its_keys_and_a_refusal_takes_nothing() {
        let limiter = limiter((100.0, 100.0), (0.001, 4.0));
        let tenant = Uuid::now_v7();
        let keys: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        for key in &keys {
            assert_eq!(limiter.check(*key, tenant).await, Decision::Allow);
        }
        for key in &keys {
            assert!(matches!(
                limiter.check(*key, tenant).await,
                Decision::Deny {
                    by: Scope::Tenant,
                    ..
                }
            ));
        }
        // Another tenant is unaffected.
        assert_eq!(
            limiter.check(keys[0], Uuid::now_v7()).await,
            Decision::Allow
        );
    }

    #[tokio::test]
    async fn refunded_lookups_do_not_drain_an_address() {
        let limiter = limiter((0.0, 0.0), (0.0, 0.0));
        for _ in 0..10 {
            assert_eq!(limiter.check_lookup("192.0.2.1").await, Decision::Allow);
            limiter.refund_lookup("192.0.2.1").await;
        }
        assert_eq!(limiter.check_lookup("192.0.2.1").await, Decision::Allow);
        assert_eq!(limiter.check_lookup("192.0.2.1").await, Decision::Allow);
        assert!(matches!(
            limiter.check_lookup("192.0.2.1").await,
            Decision::Deny {
                by: Scope::Address,
                ..
            }
        ));
        assert_eq!(limiter.check_lookup("192.0.2.2").await, Decision::Allow);
    }
}
