//! Telegram's sending limits across every instance, by virtual scheduling: each limited key
//! (the chat, the group when the chat id is negative, the bot) keeps the time its next message
//! may go ("your turn is at T"). Reserving a slot takes the latest of those times (and now),
//! and moves every key's time one interval past it; the caller waits until the slot and sends.
//! So senders queue up in reservation order instead of retrying and colliding.
//!
//! With `REDIS_URL` the keys live in Redis (one Lua script reserves on all of them atomically,
//! timed by Redis' clock, so instances with skewed clocks agree); without it, or while Redis is
//! unreachable, in this process.
//!
//! A 429 `retry_after` pauses a chat by moving its key's time past the pause.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;

use crate::config::{ServiceUrl, TelegramConfig};

const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// In-process keys kept before the ones already in the past are forgotten.
const LOCAL_KEYS: usize = 100_000;

/// Reserves a slot for one message. KEYS: the chat's (and the group's) next-free time, with
/// their intervals in ARGV[4..]. The bot-wide limit is a grid of cells `ARGV[2] .. n`, each
/// `ARGV[3]` ms long and holding one message, so a reservation far ahead for one chat does not
/// hold other chats back. Nothing is taken when the slot is more than ARGV[1] ms away
/// (-1: whatever the wait). Returns {taken, wait_ms}.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_wait = tonumber(ARGV[1])
local cell_ms = tonumber(ARGV[3])
local slot = now
for i, key in ipairs(KEYS) do
  local next_at = tonumber(redis.call('GET', key) or '0')
  if next_at > slot then slot = next_at end
end
local cell = math.ceil(slot / cell_ms)
local found = false
for i = 0, 5000 do
  if redis.call('EXISTS', ARGV[2] .. (cell + i)) == 0 then
    cell = cell + i
    found = true
    break
  end
end
if not found then return {0, 5001 * cell_ms} end
slot = math.max(slot, cell * cell_ms)
local wait = slot - now
if max_wait >= 0 and wait > max_wait then
  return {0, wait}
end
redis.call('SET', ARGV[2] .. cell, 1, 'PX', wait + cell_ms + 1000)
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[i + 3])
  redis.call('SET', key, slot + interval, 'PX', wait + interval + 1000)
end
return {1, wait}
"#;

/// Moves KEYS[1]'s time to at least now + ARGV[1] ms.
const PAUSE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_at = now + tonumber(ARGV[1])
local next_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_at > next_at then
  redis.call('SET', KEYS[1], until_at, 'PX', tonumber(ARGV[1]) + 1000)
end
return 1
"#;

/// A reservation's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slot {
    /// Taken: send after waiting this long.
    Now(Duration),
    /// Not taken: the earliest slot is about then, beyond the caller's wait.
    Later(DateTime<Utc>),
}

pub struct Limiter {
    /// Key prefix: the bot's id (the token's part before `:`, which is public), so two bots
    /// sharing a Redis do not share limits.
    prefix: String,
    chat_interval: Duration,
    group_interval: Duration,
    bot_interval: Duration,
    redis: Option<(Client, Script, Script)>,
    local: Mutex<Local>,
    /// Origin of the in-process bot cells.
    epoch: Instant,
}

/// The in-process state: next-free times per chat and group, and the bot's taken cells.
#[derive(Default)]
struct Local {
    next: HashMap<String, Instant>,
    cells: std::collections::BTreeSet<u64>,
}

impl Limiter {
    pub fn new(cfg: &TelegramConfig, redis: Option<&ServiceUrl>) -> Limiter {
        let bot = cfg
            .bot_token
            .as_ref()
            .and_then(|t| t.expose().split(':').next().map(str::to_owned))
            .filter(|id| id.chars().all(|c| c.is_ascii_digit()) && !id.is_empty())
            .unwrap_or_else(|| "bot".to_owned());
        Limiter {
            prefix: format!("vsm:telegram:{bot}"),
            chat_interval: Duration::from_millis(cfg.per_chat_interval_ms),
            group_interval: Duration::from_secs(60) / cfg.per_group_per_minute.max(1),
            bot_interval: Duration::from_secs(1) / cfg.per_bot_per_second.max(1),
            redis: redis.and_then(connect),
            local: Mutex::new(Local::default()),
            epoch: Instant::now(),
        }
    }

    fn keys(&self, chat_id: i64) -> Vec<(String, Duration)> {
        let mut keys = vec![(
            format!("{}:chat:{chat_id}", self.prefix),
            self.chat_interval,
        )];
        if chat_id < 0 {
            keys.push((
                format!("{}:group:{chat_id}", self.prefix),
                self.group_interval,
            ));
        }
        keys
    }

    /// Reserves the next slot for a message to `chat_id` if it is at most `max_wait` away
    /// (`None`: however far).
    pub async fn reserve(&self, chat_id: i64, max_wait: Option<Duration>) -> Slot {
        let keys = self.keys(chat_id);
        if let Some((client, reserve, _)) = &self.redis
            && client.is_connected()
        {
            let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
            let mut args = vec![
                max_wait.map_or(-1, |w| w.as_millis() as i64).to_string(),
                format!("{}:bot:", self.prefix),
                self.bot_interval.as_millis().max(1).to_string(),
            ];
            args.extend(keys.iter().map(|(_, i)| i.as_millis().to_string()));
            let call = reserve.evalsha_with_reload::<Vec<i64>, _, _>(client, names, args);
            match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok(reply)) => match reply.as_slice() {
                    [1, wait] => return Slot::Now(ms(*wait)),
                    [0, wait] => return Slot::Later(Utc::now() + chrono_ms(*wait)),
                    _ => tracing::warn!(?reply, "unexpected Telegram limiter reply"),
                },
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Telegram limiter: Redis failed, limiting in-process")
                }
                Err(_) => tracing::warn!("Telegram limiter: Redis timed out, limiting in-process"),
            }
        }
        self.reserve_local(&keys, max_wait)
    }

    fn reserve_local(&self, keys: &[(String, Duration)], max_wait: Option<Duration>) -> Slot {
        let now = Instant::now();
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.next.len() > LOCAL_KEYS {
            local.next.retain(|_, at| *at > now);
        }
        let earliest = keys
            .iter()
            .filter_map(|(k, _)| local.next.get(k).copied())
            .fold(now, Instant::max);
        // Bot-wide cells count from this limiter's creation.
        let cell_ms = self.bot_interval.as_millis().max(1) as u64;
        let since = |at: Instant| at.saturating_duration_since(self.epoch).as_millis() as u64;
        let current = since(now) / cell_ms;
        while local.cells.first().is_some_and(|c| *c < current) {
            local.cells.pop_first();
        }
        let mut cell = since(earliest).div_ceil(cell_ms);
        while local.cells.contains(&cell) {
            cell += 1;
        }
        let slot = (self.epoch + Duration::from_millis(cell * cell_ms)).max(earliest);
        let wait = slot - now;
        if max_wait.is_some_and(|m| wait > m) {
            return Slot::Later(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default());
        }
        local.cells.insert(cell);
        for (k, interval) in keys {
            local.next.insert(k.clone(), slot + *interval);
        }
        Slot::Now(wait)
    }

    /// Holds every message to `chat_id` back for `pause` (Telegram's `retry_after`).
    pub async fn pause(&self, chat_id: i64, pause: Duration) {
        let key = format!("{}:chat:{chat_id}", self.prefix);
        if let Some((client, _, script)) = &self.redis
            && client.is_connected()
        {
            let call = script.evalsha_with_reload::<i64, _, _>(
                client,
                vec![key.clone()],
                vec![pause.as_millis().to_string()],
            );
            match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Telegram limiter: Redis failed, pausing in-process")
                }
                Err(_) => tracing::warn!("Telegram limiter: Redis timed out, pausing in-process"),
            }
        }
        let until = Instant::now() + pause;
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let at = local.next.entry(key).or_insert(until);
        *at = (*at).max(until);
    }
}

fn ms(n: i64) -> Duration {
    Duration::from_millis(u64::try_from(n).unwrap_or(0))
}

fn chrono_ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n.max(0))
}

/// A Redis client that connects (and reconnects) in the background; the limiter works
/// in-process meanwhile, and altogether with a URL fred cannot use.
fn connect(url: &ServiceUrl) -> Option<(Client, Script, Script)> {
    match crate::redis::background_client(url, REDIS_TIMEOUT) {
        Ok(client) => Some((client, Script::from_lua(RESERVE), Script::from_lua(PAUSE))),
        Err(e) => {
            tracing::warn!(error = %e, "Telegram limits are in-process");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(chat_ms: u64) -> Limiter {
        let cfg = TelegramConfig {
            per_chat_interval_ms: chat_ms,
            per_bot_per_second: 1000,
            ..TelegramConfig::default()
        };
        Limiter::new(&cfg, None)
    }

    #[tokio::test]
    async fn slots_of_one_chat_are_an_interval_apart() {
        let l = limiter(1000);
        assert_eq!(l.reserve(1, None).await, Slot::Now(Duration::ZERO));
        let Slot::Now(second) = l.reserve(1, None).await else {
            panic!("no wait limit")
        };
        assert!(second > Duration::from_millis(900), "{second:?}");
        // Another chat is not held back by the first.
        let Slot::Now(other) = l.reserve(2, None).await else {
            panic!()
        };
        assert!(other < Duration::from_millis(100));
        // A slot beyond the caller's wait is not taken.
        assert!(matches!(
            l.reserve(1, Some(Duration::from_millis(10))).await,
            Slot::Later(_)
        ));
    }

    #[tokio::test]
    async fn the_bot_limit_spaces_messages_to_different_chats() {
        let cfg = TelegramConfig {
            per_chat_interval_ms: 1,
            per_bot_per_second: 10,
            ..TelegramConfig::default()
        };
        let l = Limiter::new(&cfg, None);
        let mut waits = Vec::new();
        for chat in 0..5 {
            let Slot::Now(w) = l.reserve(chat, None).await else {
                panic!()
            };
            waits.push(w);
        }
        // One message per 100 ms cell: the fifth waits about 400 ms.
        assert!(waits[4] >= Duration::from_millis(300), "{waits:?}");
    }

    #[tokio::test]
    async fn a_pause_holds_only_that_chat() {
        let l = limiter(1);
        l.pause(5, Duration::from_secs(3)).await;
        assert!(matches!(
            l.reserve(5, Some(Duration::from_secs(1))).await,
            Slot::Later(_)
        ));
        assert!(matches!(
            l.reserve(6, Some(Duration::from_secs(1))).await,
            Slot::Now(_)
        ));
    }

    #[tokio::test]
    async fn groups_have_their_own_slower_limit() {
        let cfg = TelegramConfig {
            per_chat_interval_ms: 1,
            per_group_per_minute: 20,
            per_bot_per_second: 1000,
            ..TelegramConfig::default()
        };
        let l = Limiter::new(&cfg, None);
        l.reserve(-100, None).await;
        let Slot::Now(wait) = l.reserve(-100, None).await else {
            panic!()
        };
        assert!(wait > Duration::from_millis(2900), "{wait:?}");
    }
}
