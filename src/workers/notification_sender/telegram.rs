//! The Telegram channel: `sendMessage` through the Bot API at `telegram.api_base`, within
//! Telegram's limits across all instances.
//!
//! - Text longer than [`MESSAGE_LIMIT`] UTF-16 code units (how Telegram counts) is split into
//!   parts, at a newline or space near the limit when there is one, never inside a character,
//!   and the parts go out in order; the log row's progress (`{"parts_sent": n}`) remembers how
//!   many went out, so a retry continues with the next part instead of repeating the first.
//! - Every part takes a slot from the [`Limiter`] (virtual scheduling: "your turn is at T"):
//!   per chat, per group (negative chat id) and per bot, shared through Redis when
//!   `REDIS_URL` is set. A slot within [`INLINE_WAIT`] is waited for; a later
//!   one is not taken, and the job is snoozed until about then (no attempt used).
//! - A 429 pauses that chat only (its slot moves past `retry_after`, for every instance) and
//!   snoozes the job; 5xx, timeouts and refused connections are retried with backoff; other
//!   4xx (chat not found, bot blocked) are final.
//!
//! The bot token is part of every request URL, so errors are stripped of their URL
//! (`reqwest::Error::without_url`) and never name it.

pub mod api;
pub mod limiter;
pub mod split;

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::BoxFuture;
use serde_json::json;

pub use api::{BotApi, CallError};
pub use limiter::{Limiter, Slot};
pub use split::split;

use super::{Channel, Delivery, Message, Report, Verdict};
use crate::config::{ServiceUrl, TelegramConfig};
use crate::jobs::JobContext;
use crate::schemas::notify::notification::ChannelKind;

/// Telegram's longest message text, in UTF-16 code units.
pub const MESSAGE_LIMIT: usize = 4096;

/// The longest a job waits in place for its first slot; a later slot snoozes the job instead,
/// so waiting jobs do not hold the queue's concurrency.
pub const INLINE_WAIT: Duration = Duration::from_millis(1500);

pub struct TelegramChannel {
    api: Option<BotApi>,
    limiter: Limiter,
}

impl TelegramChannel {
    pub fn new(cfg: &TelegramConfig, redis: Option<&ServiceUrl>) -> Self {
        Self {
            api: BotApi::from_config(cfg),
            limiter: Limiter::new(cfg, redis),
        }
    }

    async fn send_parts(&self, api: &BotApi, chat_id: i64, text: &str, done: usize) -> Report {
        let parts = split(text, MESSAGE_LIMIT);
        let mut sent = done.min(parts.len());
        let mut latency: Option<Duration> = None;
        let progress = |sent: usize| Some(json!({ "parts_sent": sent }));
        while sent < parts.len() {
            // The first part of a run may be put off; once a message has started going out
            // its remaining parts wait for their slots here, so they stay together and in order.
            let max_wait = if latency.is_none() {
                Some(INLINE_WAIT)
            } else {
                None
            };
            match self.limiter.reserve(chat_id, max_wait).await {
                Slot::Now(wait) => tokio::time::sleep(wait).await,
                Slot::Later(at) => {
                    return Report {
                        verdict: Verdict::Throttled {
                            until: at,
                            status: None,
                            error: None,
                        },
                        latency,
                        progress: progress(sent),
                    };
                }
            }
            let started = Instant::now();
            let result = api.send_message(chat_id, &parts[sent]).await;
            let took = started.elapsed();
            latency = Some(latency.unwrap_or_default() + took);
            match result {
                Ok(status) => {
                    sent += 1;
                    if sent == parts.len() {
                        return Report {
                            verdict: Verdict::Sent { status },
                            latency,
                            progress: progress(sent),
                        };
                    }
                }
                Err(e) => {
                    let verdict = match e {
                        CallError::TooManyRequests { retry_after } => {
                            let until = Utc::now()
                                + chrono::Duration::from_std(retry_after)
                                    .unwrap_or(chrono::Duration::MAX);
                            self.limiter.pause(chat_id, retry_after).await;
                            Verdict::Throttled {
                                until,
                                status: Some(429),
                                error: Some(format!(
                                    "Telegram asked to wait {} s",
                                    retry_after.as_secs()
                                )),
                            }
                        }
                        CallError::Temporary { status, error } => Verdict::Retry {
                            status,
                            error,
                            retry_after: None,
                        },
                        CallError::Refused { status, error } => Verdict::Failed {
                            status: Some(status),
                            error,
                        },
                    };
                    return Report {
                        verdict,
                        latency,
                        progress: progress(sent),
                    };
                }
            }
        }
        // Nothing left (progress says every part went out already).
        Report {
            verdict: Verdict::Sent { status: 200 },
            latency,
            progress: progress(sent),
        }
    }
}

impl Channel for TelegramChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Telegram
    }

    fn deliver<'a>(
        &'a self,
        _ctx: &'a JobContext,
        delivery: Delivery<'a>,
    ) -> BoxFuture<'a, Report> {
        Box::pin(async move {
            let Message::Telegram { chat_id, text } = delivery.message;
            let Some(api) = &self.api else {
                // Not configured yet: kept and retried, so setting the token later sends it.
                return Report {
                    verdict: Verdict::Retry {
                        status: None,
                        error: "Telegram is not configured (telegram.bot_token)".to_owned(),
                        retry_after: None,
                    },
                    latency: None,
                    progress: None,
                };
            };
            let done = delivery
                .progress
                .get("parts_sent")
                .and_then(|v| v.as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0);
            self.send_parts(api, *chat_id, text, done).await
        })
    }
}
