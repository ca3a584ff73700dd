//! Per-API-key token bucket (CONTRACT §4). With `REDIS_URL` the bucket lives in Redis (one Lua
//! script, Redis's clock), so every instance draws from the same bucket; otherwise it is
//! in-process. Redis trouble never takes the API down: the limiter fails open, logs it (at
//! most every 10 s), counts it, and `/ready` reports Redis as degraded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::scripts::Script;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::config::{RateLimitConfig, ServiceUrl};
use crate::health::Probe;
use crate::metrics::METRICS;

/// Tokens and last refill in Redis's clock (ms); returns {allowed, retry_after_ms}.
const TOKEN_BUCKET: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed, retry = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, retry}
"#;

/// How long a Redis call may take before the limiter gives up and lets the request through.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Over the limit; retry after this many seconds (at least 1).
    Deny {
        retry_after_secs: u64,
    },
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    redis: Option<(Client, Script)>,
    local: Mutex<HashMap<Uuid, Bucket>>,
    last_warning: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// Builds the limiter; with a Redis URL it connects in the background and keeps
    /// reconnecting, so a Redis that is down at start-up does not stop the server.
    pub fn new(cfg: &RateLimitConfig, redis: Option<&ServiceUrl>) -> Result<RateLimiter, String> {
        let redis = match redis {
            None => None,
            Some(url) => {
                let config = RedisConfig::from_url(url.expose())
                    .map_err(|e| format!("invalid Redis URL {url}: {e}"))?;
                let client = fred::types::Builder::from_config(config)
                    .with_connection_config(|c| {
                        c.connection_timeout = Duration::from_secs(1);
                        c.max_command_attempts = 1;
                    })
                    .with_performance_config(|p| p.default_command_timeout = REDIS_TIMEOUT)
                    .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
                    .build()
                    .map_err(|e| format!("cannot configure Redis client: {e}"))?;
                // Connects (and reconnects) in the background; the limiter fails open meanwhile.
                drop(client.connect());
                Some((client, Script::from_lua(TOKEN_BUCKET)))
            }
        };
        Ok(RateLimiter {
            rate: cfg.requests_per_second,
            burst: cfg.burst.max(1.0),
            redis,
            local: Mutex::new(HashMap::new()),
            last_warning: Mutex::new(None),
        })
    }

    /// Takes one token from `key`'s bucket.
    pub async fn check(&self, key: Uuid) -> Decision {
        if self.rate <= 0.0 {
            return Decision::Allow;
        }
        match &self.redis {
            Some((client, script)) => match self.check_redis(client, script, key).await {
                Ok(decision) => decision,
                Err(e) => {
                    METRICS.rate_limiter_errors.inc();
                    self.warn(&e);
                    Decision::Allow
                }
            },
            None => self.check_local(key),
        }
    }

    async fn check_redis(
        &self,
        client: &Client,
        script: &Script,
        key: Uuid,
    ) -> Result<Decision, String> {
        if !client.is_connected() {
            return Err("Redis is not connected".to_owned());
        }
        let call = script.evalsha_with_reload::<Vec<i64>, _, _>(
            client,
            format!("vsm:ratelimit:{key}"),
            vec![self.rate.to_string(), self.burst.to_string()],
        );
        let reply = tokio::time::timeout(REDIS_TIMEOUT, call)
            .await
            .map_err(|_| "Redis did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(match reply.as_slice() {
            [1, ..] => Decision::Allow,
            [_, retry_ms] => Decision::Deny {
                retry_after_secs: (*retry_ms as u64).div_ceil(1000).max(1),
            },
            _ => return Err(format!("unexpected limiter reply {reply:?}")),
        })
    }

    fn check_local(&self, key: Uuid) -> Decision {
        let mut buckets = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Idle buckets are full anyway: forgetting them changes nothing.
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| b.at.elapsed() < full_after);
        }
        let now = Instant::now();
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Decision::Allow
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Decision::Deny {
                retry_after_secs: (wait.ceil() as u64).max(1),
            }
        }
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

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if !self.0.is_connected() {
                return Err("not connected".to_owned());
            }
            self.0.ping::<String>(None).await.map(|_| ()).map_err(|e| {
                tracing::warn!(error = %e, "readiness: Redis does not answer");
                "ping failed".to_owned()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_bucket_allows_the_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(
            &RateLimitConfig {
                requests_per_second: 10.0,
                burst: 3.0,
            },
            None,
        )
        .unwrap();
        let key = Uuid::now_v7();
        for _ in 0..3 {
            assert_eq!(limiter.check_local(key), Decision::Allow);
        }
        assert!(matches!(
            limiter.check_local(key),
            Decision::Deny {
                retry_after_secs: 1
            }
        ));
        assert_eq!(limiter.check_local(Uuid::now_v7()), Decision::Allow);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(limiter.check_local(key), Decision::Allow);
    }
}
