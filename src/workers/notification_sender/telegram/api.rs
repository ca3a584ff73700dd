//! A small Bot API client: `POST {api_base}/bot{token}/{method}` with a JSON body, answered by
//! `{"ok":true,"result":...}` or `{"ok":false,"error_code":N,"description":"...",
//! "parameters":{"retry_after":S}}`. Used by the channel (`sendMessage`) and by
//! `vsm telegram set-webhook|info`.
//!
//! The token is in the URL, so no error from here carries the URL: transport errors are
//! stripped of it and described by kind.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Secret, ServiceUrl, TelegramConfig};

/// Most bytes of a Bot API answer read (real answers are a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What went wrong with a call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// 429: wait this long before the next message to that chat.
    #[error("Telegram rate limit: retry after {} s", retry_after.as_secs())]
    TooManyRequests { retry_after: Duration },
    /// Worth retrying: no answer (timeout, refused connection), 5xx, or an unreadable answer.
    #[error("{error}")]
    Temporary { status: Option<u16>, error: String },
    /// Refused for good (400 chat not found, 403 bot blocked, 401 bad token, ...).
    #[error("{error}")]
    Refused { status: u16, error: String },
}

#[derive(Clone)]
pub struct BotApi {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl std::fmt::Debug for BotApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotApi").field("base", &self.base).finish()
    }
}

impl BotApi {
    /// The client, or `None` when no bot token is configured.
    pub fn from_config(cfg: &TelegramConfig) -> Option<BotApi> {
        let token = cfg.bot_token.clone()?;
        Some(BotApi::new(
            &cfg.api_base,
            token,
            Duration::from_secs(cfg.request_timeout_secs),
        ))
    }

    pub fn new(base: &ServiceUrl, token: Secret, timeout: Duration) -> BotApi {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            // Building fails only when the TLS backend cannot start; fall back to the default
            // client, whose requests then report that error.
            .unwrap_or_default();
        BotApi {
            http,
            base: base.expose().trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The server's address as shown in errors (no token).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Calls `method` with `body`; the `result` on success.
    pub async fn call(&self, method: &str, body: &Value) -> Result<Value, CallError> {
        let url = format!("{}/bot{}/{method}", self.base, self.token.expose());
        let response =
            self.http
                .post(url)
                .json(body)
                .send()
                .await
                .map_err(|e| CallError::Temporary {
                    status: None,
                    error: describe(&e),
                })?;
        let status = response.status().as_u16();
        let bytes = read_capped(response)
            .await
            .map_err(|e| CallError::Temporary {
                status: Some(status),
                error: describe(&e),
            })?;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) && answer["ok"] == json!(true) {
            return Ok(answer["result"].clone());
        }
        let description = answer["description"]
            .as_str()
            .map(|d| d.chars().take(500).collect::<String>())
            .unwrap_or_else(|| format!("HTTP {status}"));
        let error = format!("Telegram {method}: {description}");
        Err(match status {
            429 => CallError::TooManyRequests {
                retry_after: Duration::from_secs(
                    answer["parameters"]["retry_after"]
                        .as_u64()
                        .unwrap_or(1)
                        .clamp(1, 3600),
                ),
            },
            408 | 500..=599 => CallError::Temporary {
                status: Some(status),
                error,
            },
            200..=299 => CallError::Temporary {
                status: Some(status),
                error: format!("Telegram {method}: unexpected answer"),
            },
            _ => CallError::Refused { status, error },
        })
    }

    /// `sendMessage` of plain `text` to `chat_id`; the HTTP status on success.
    pub async fn send_message(&self, chat_id: i64, text: &str) -> Result<u16, CallError> {
        self.call("sendMessage", &json!({"chat_id": chat_id, "text": text}))
            .await
            .map(|_| 200)
    }
}

/// A transport error by kind, without its URL.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "answer could not be read"
    } else {
        "request failed"
    };
    // The source chain (hyper, io) names no URL; reqwest's own text would.
    let source = std::error::Error::source(e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    format!("Telegram {kind}{source}")
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(buf)
}
