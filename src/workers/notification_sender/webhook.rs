//! The webhook channel (CONTRACT §7): one signed POST per attempt to one of the tenant's
//! endpoints, following Standard Webhooks 1.0.
//!
//! - Body `{"type": topic, "timestamp": RFC 3339, "data": payload}`; the timestamp is the first
//!   attempt's and is kept in the notification's progress, so every retry sends the same bytes.
//! - `webhook-id` is `msg_<notification id>` on every attempt: the receiver's idempotency key.
//!   `webhook-timestamp` is this attempt's time; `webhook-signature` signs id, timestamp and
//!   body with the current secret, and with the replaced one too while a rotation overlaps.
//! - 2xx sent; timeouts, network errors, 5xx, 408 and 429 retried (`Retry-After` honoured up
//!   to [`MAX_RETRY_AFTER`]); other answers, 3xx included (redirects are never followed), are
//!   final; 410 disables the endpoint. An endpoint whose deliveries keep failing for
//!   `notifications.webhook_disable_after_days` is disabled too, and the failed notification
//!   says so.
//! - The target guard vets every address before a connection; a refused target is final.
//! - At most [`MAX_RESPONSE_BYTES`] of a response are read, then the connection is dropped.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use uuid::Uuid;

use super::target_guard::{self, Guard};
use super::{Channel, Delivery, Message, Report, Verdict, signature};
use crate::config::NotificationsConfig;
use crate::jobs::JobContext;
use crate::repo::DbError;
use crate::schemas::notify::notification::ChannelKind;
use crate::schemas::webhooks::endpoint;

/// Bytes of a response read before it is dropped: enough for any error page worth logging,
/// and a receiver answering gigabytes costs no memory.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Longest `Retry-After` honoured: a receiver cannot park a notification for weeks.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The Standard Webhooks message id of notification `id`.
pub fn message_id(id: Uuid) -> String {
    format!("msg_{}", id.simple())
}

pub struct WebhookChannel {
    /// `None` when the HTTP client could not be built (no TLS roots): every attempt retries
    /// with that error rather than the process refusing to start other work.
    client: Result<reqwest::Client, String>,
    guard: Guard,
    disable_after: chrono::Duration,
}

impl WebhookChannel {
    pub fn new(config: &NotificationsConfig) -> Self {
        let guard = Guard {
            allow_private: config.allow_private_targets,
        };
        let days = i64::try_from(config.webhook_disable_after_days).unwrap_or(i64::MAX / 86_400);
        Self {
            client: target_guard::client(guard, config.webhook_timeout())
                .map_err(|e| format!("webhook HTTP client: {e}")),
            guard,
            disable_after: chrono::Duration::days(days),
        }
    }
}

/// The body's timestamp: the first attempt's, as kept in progress.
fn first_timestamp(progress: &Value, now: DateTime<Utc>) -> String {
    progress
        .get("timestamp")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| now.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// `Retry-After` as seconds or an HTTP date, capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match raw.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(raw.trim())
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// What an answer's status means for the notification.
fn verdict_for(status: u16, headers: &reqwest::header::HeaderMap) -> Verdict {
    match status {
        200..=299 => Verdict::Sent { status },
        408 | 429 | 500..=599 => Verdict::Retry {
            status: Some(status),
            error: format!("endpoint answered {status}"),
            retry_after: retry_after(headers),
        },
        410 => Verdict::Gone {
            status,
            error: "endpoint answered 410 Gone; endpoint disabled".into(),
        },
        300..=399 => Verdict::Failed {
            status: Some(status),
            error: format!("endpoint answered {status}; redirects are not followed"),
        },
        _ => Verdict::Failed {
            status: Some(status),
            error: format!("endpoint answered {status}"),
        },
    }
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of the body and drops the rest with the connection.
async fn drain_capped(mut response: reqwest::Response) {
    let mut read = 0usize;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}

/// Describes a failed request without the URL (it may carry a tenant's token in its query).
fn describe(err: reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".into()
    } else if err.is_connect() {
        "could not connect".into()
    } else {
        format!("request failed: {}", err.without_url())
    }
}

fn no_request(verdict: Verdict) -> Report {
    Report {
        verdict,
        latency: None,
        progress: None,
    }
}

impl WebhookChannel {
    async fn attempt(&self, ctx: &JobContext, d: &Delivery<'_>) -> Result<Report, DbError> {
        let Message::Webhook {
            endpoint_id,
            topic,
            payload,
        } = d.message
        else {
            return Ok(no_request(Verdict::Failed {
                status: None,
                error: "not a webhook message".into(),
            }));
        };
        let Some(tenant) = d.tenant else {
            return Ok(no_request(Verdict::Failed {
                status: None,
                error: "a webhook belongs to a tenant".into(),
            }));
        };
        let now = Utc::now();
        let keys = {
            let mut tx = ctx.repo.tenant_tx(tenant).await?;
            let keys = endpoint::signing_keys(&mut tx, *endpoint_id, now).await;
            tx.commit().await?;
            match keys {
                Ok(k) => k,
                Err(DbError::NotFound) => {
                    return Ok(no_request(Verdict::Failed {
                        status: None,
                        error: "the webhook endpoint was deleted".into(),
                    }));
                }
                Err(e) => return Err(e),
            }
        };
        if !keys.enabled {
            return Ok(no_request(Verdict::Failed {
                status: None,
                error: "the webhook endpoint is disabled".into(),
            }));
        }
        let url = match url::Url::parse(&keys.url) {
            Ok(u) => u,
            Err(e) => {
                return Ok(no_request(Verdict::Failed {
                    status: None,
                    error: format!("invalid endpoint url: {e}"),
                }));
            }
        };
        if let Err(refused) = self.guard.check_literal(&url) {
            return Ok(no_request(Verdict::Failed {
                status: None,
                error: refused.to_string(),
            }));
        }
        let client = match &self.client {
            Ok(c) => c,
            Err(e) => {
                return Ok(no_request(Verdict::Retry {
                    status: None,
                    error: e.clone(),
                    retry_after: None,
                }));
            }
        };

        let timestamp = first_timestamp(d.progress, now);
        let body = json!({"type": topic, "timestamp": timestamp, "data": payload}).to_string();
        let msg_id = message_id(d.id);
        let ts = now.timestamp();
        let mut secrets = vec![keys.current.as_str()];
        secrets.extend(keys.previous.as_deref());
        let signed = match signature::header(&secrets, &msg_id, ts, body.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                return Ok(no_request(Verdict::Failed {
                    status: None,
                    error: e.to_string(),
                }));
            }
        };

        let started = Instant::now();
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signed)
            .body(body)
            .send()
            .await;
        let verdict = match sent {
            Ok(response) => {
                let v = verdict_for(response.status().as_u16(), response.headers());
                drain_capped(response).await;
                v
            }
            Err(e) => match target_guard::refusal(&e) {
                Some(refused) => Verdict::Failed {
                    status: None,
                    error: refused.to_string(),
                },
                None => Verdict::Retry {
                    status: None,
                    error: describe(e),
                    retry_after: None,
                },
            },
        };
        let latency = started.elapsed();
        let verdict = self
            .endpoint_bookkeeping(ctx, tenant, *endpoint_id, verdict)
            .await?;
        Ok(Report {
            verdict,
            latency: Some(latency),
            progress: Some(json!({"timestamp": timestamp})),
        })
    }

    /// Keeps the endpoint's state in step with the attempt: a success ends its run of
    /// failures; 410 disables it; a temporary failure extends the run, and past
    /// `disable_after` disables it and makes this notification's failure final.
    async fn endpoint_bookkeeping(
        &self,
        ctx: &JobContext,
        tenant: Uuid,
        id: Uuid,
        verdict: Verdict,
    ) -> Result<Verdict, DbError> {
        let mut tx = ctx.repo.tenant_tx(tenant).await?;
        let verdict = match verdict {
            Verdict::Sent { .. } => {
                endpoint::record_success(&mut tx, id).await?;
                verdict
            }
            Verdict::Gone { .. } => {
                endpoint::disable(&mut tx, id, "the endpoint answered 410 Gone").await?;
                verdict
            }
            Verdict::Retry { status, error, .. }
                if Utc::now() - endpoint::record_failure(&mut tx, id, Utc::now()).await?
                    >= self.disable_after =>
            {
                let reason = format!(
                    "every delivery failed for {} days",
                    self.disable_after.num_days()
                );
                endpoint::disable(&mut tx, id, &reason).await?;
                Verdict::Failed {
                    status,
                    error: format!("{error}; endpoint disabled: {reason}"),
                }
            }
            other => other,
        };
        tx.commit().await?;
        Ok(verdict)
    }
}

impl Channel for WebhookChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Webhook
    }

    fn deliver<'a>(&'a self, ctx: &'a JobContext, delivery: Delivery<'a>) -> BoxFuture<'a, Report> {
        Box::pin(async move {
            match self.attempt(ctx, &delivery).await {
                Ok(report) => report,
                // The database is out: nothing was sent (or it was, and the receiver's
                // idempotency key absorbs the repeat); try again later.
                Err(e) => no_request(Verdict::Retry {
                    status: None,
                    error: format!("database: {e}"),
                    retry_after: None,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::*;

    #[test]
    fn statuses_map_to_the_contracts_verdicts() {
        let h = HeaderMap::new();
        assert!(matches!(verdict_for(200, &h), Verdict::Sent { .. }));
        assert!(matches!(verdict_for(204, &h), Verdict::Sent { .. }));
        for s in [408, 429, 500, 502, 503] {
            assert!(matches!(verdict_for(s, &h), Verdict::Retry { .. }), "{s}");
        }
        for s in [301, 302, 307, 400, 401, 403, 404, 422] {
            assert!(matches!(verdict_for(s, &h), Verdict::Failed { .. }), "{s}");
        }
        assert!(matches!(verdict_for(410, &h), Verdict::Gone { .. }));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("30"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn the_message_id_is_the_notifications() {
        let id = Uuid::now_v7();
        assert_eq!(message_id(id), message_id(id));
        assert!(message_id(id).starts_with("msg_"));
    }
}
