//! Telegram (CONTRACT §9): the bot's webhook, and the tenant's linked chats.
//!
//! `POST /telegram/webhook` answers Telegram within milliseconds: it checks the secret, reads
//! the update (at most [`MAX_UPDATE_BYTES`]), and for a bot command records the `update_id` and
//! queues a `telegram_command` job in one system transaction, so a repeated `update_id` — a
//! Telegram retry, or the same update reaching another instance — is acknowledged without being
//! processed again. Everything else (edits, callbacks, membership changes, messages without a
//! command) is acknowledged and ignored. Every outcome is 200 unless the request is not from
//! Telegram (401) or not an Update (400): anything else would make Telegram resend it.
//!
//! Linking: a chat is linked to at most one tenant. A second tenant's `PUT` of a linked chat is
//! 409 "this chat is linked to another tenant" — it learns that the chat is taken (it has to,
//! or its notifications would silently go nowhere) but never whose it is; `GET` and `DELETE` of
//! it are 404 as for any other tenant's resource.

use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::budget::{self, Resource};
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::edge::gateway::rate_limit::Decision;
use crate::edge::gateway::state::AppState;
use crate::jobs::storage as jobs;
use crate::metrics::METRICS;
use crate::schemas::telegram::chat::{self, Linked, TelegramChat};
use crate::schemas::telegram::update;
use crate::workers::notification_sender;
use crate::workers::telegram_command::{self, commands, inbound};

/// Largest update body read. Telegram's updates are a few KiB (a message holds at most 4096
/// characters); this leaves room for big entity lists and refuses anything else early.
pub const MAX_UPDATE_BYTES: usize = 256 * 1024;
/// Largest `PUT /v1/telegram/chats/{chat_id}` body (a label of 200 characters fits many times).
const MAX_LINK_BODY_BYTES: usize = 16 * 1024;
const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";
/// How often a chat over its command rate may be told to slow down.
const SLOW_DOWN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// What the webhook did with an update (Telegram only looks at the status).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    pub ok: bool,
    /// processed, duplicate, ignored or rate_limited.
    pub result: &'static str,
}

fn counted(kind: &str, result: &'static str) -> &'static str {
    METRICS
        .telegram_updates
        .with_label_values(&[kind, result])
        .inc();
    result
}

/// Receives one Bot API update (set with `vsm telegram set-webhook`).
#[utoipa::path(
    post, path = "/telegram/webhook", tag = "telegram",
    params(("X-Telegram-Bot-Api-Secret-Token" = String, Header, description = "telegram.webhook_secret")),
    request_body(content = Object, description = "A Bot API Update: an object with an integer update_id"),
    responses(
        (status = 200, body = WebhookAck),
        (status = 400, body = ErrorBody, description = "not an Update"),
        (status = 401, body = ErrorBody, description = "wrong or missing secret"),
        (status = 404, body = ErrorBody, description = "Telegram is not configured"),
        (status = 413, body = ErrorBody)
    )
)]
#[post("/telegram/webhook")]
pub async fn webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tg = &state.config.telegram;
    let Some(expected) = tg.webhook_secret.as_ref().filter(|_| tg.webhook_enabled()) else {
        return Err(ApiError::NotFound("no such route".into()));
    };
    let given = req
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Digests first, so the comparison takes the same time whatever the lengths.
    let same = Sha256::digest(given).ct_eq(&Sha256::digest(expected.expose().as_bytes()));
    if !bool::from(same) {
        counted("other", "unauthorized");
        return Err(ApiError::Unauthorized(format!(
            "missing or wrong {SECRET_HEADER}"
        )));
    }
    let body = read_capped(payload, MAX_UPDATE_BYTES).await?;
    let update = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            counted("other", "bad_request");
            return Err(ApiError::BadRequest(
                "the body must be a JSON object (a Bot API Update)".into(),
            ));
        }
    };
    let Some(update_id) = update.get("update_id").and_then(serde_json::Value::as_i64) else {
        counted("other", "bad_request");
        return Err(ApiError::BadRequest("update_id must be an integer".into()));
    };
    let kind = inbound::kind(&update);
    let Some(command) = inbound::command(&update, kind, tg.bot_username.as_deref()) else {
        return Ok(ack(counted(kind, "ignored")));
    };

    let mut tx = state.repo.system_tx().await?;
    if !update::record(&mut tx, update_id).await? {
        tx.rollback().await?;
        return Ok(ack(counted(kind, "duplicate")));
    }
    let decision = state
        .limiter
        .check_chat(command.chat_id, tg.commands_per_minute, tg.command_burst)
        .await;
    let result = match decision {
        Decision::Allow => {
            jobs::insert(&mut tx, &telegram_command::job(&command)).await?;
            "processed"
        }
        Decision::Deny { .. } => {
            let told = state
                .limiter
                .check_slow_down(command.chat_id, SLOW_DOWN_WINDOW)
                .await;
            if told == Decision::Allow {
                notification_sender::enqueue_unlinked_reply(
                    &mut tx,
                    command.chat_id,
                    commands::SLOW_DOWN.to_owned(),
                )
                .await?;
            }
            "rate_limited"
        }
    };
    // The update stays recorded either way: a dropped command is not run on a redelivery.
    tx.commit().await?;
    Ok(ack(counted(kind, result)))
}

fn ack(result: &'static str) -> HttpResponse {
    HttpResponse::Ok().json(WebhookAck { ok: true, result })
}

/// The request body, refused with 413 past `max` bytes (by its declared length at once).
async fn read_capped(mut payload: web::Payload, max: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("an update is at most {max} bytes"));
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkChat {
    /// What to call the chat; 1 to 200 characters.
    pub label: Option<String>,
}

/// Links a Telegram chat to the caller's tenant (201), or relabels it when it already is (200).
#[utoipa::path(
    put, path = "/v1/telegram/chats/{chat_id}", tag = "telegram", security(("api_key" = [])),
    params(("chat_id" = i64, Path, description = "Telegram's chat id")),
    request_body(content = LinkChat, description = "optional"),
    responses(
        (status = 200, body = TelegramChat, description = "already linked; label replaced"),
        (status = 201, body = TelegramChat, description = "linked"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "linked to another tenant, or limits.max_telegram_chats_per_tenant reached"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[put("/v1/telegram/chats/{chat_id}")]
pub async fn link(
    auth: Authenticated,
    path: web::Path<i64>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let chat_id = path.into_inner();
    let label = link_body(payload).await?.label;
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    if chat::resolve(&mut tx, chat_id).await? != Some(auth.tenant_id) {
        budget::ensure_room(
            &mut tx,
            &state.config.limits,
            auth.tenant_id,
            Resource::TelegramChats,
        )
        .await?;
    }
    let linked = chat::link(&mut tx, chat_id, label.as_deref()).await?;
    tx.commit().await?;
    Ok(match linked {
        Linked::Created(c) => HttpResponse::Created().json(c),
        Linked::Updated(c) => HttpResponse::Ok().json(c),
    })
}

/// The optional `LinkChat` body: none (or an empty one) means no label. Read by hand because
/// actix's `Option<Json<_>>` turns a malformed body into `None`, which would silently drop it.
async fn link_body(payload: web::Payload) -> Result<LinkChat, ApiError> {
    let body = read_capped(payload, MAX_LINK_BODY_BYTES).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(LinkChat::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        if e.is_data() {
            ApiError::Validation {
                field: "body".into(),
                message: e.to_string(),
            }
        } else {
            ApiError::BadRequest(format!("invalid JSON body: {e}"))
        }
    })
}

/// Unlinks one of the caller's tenant's chats (404 when it is not the tenant's).
#[utoipa::path(
    delete, path = "/v1/telegram/chats/{chat_id}", tag = "telegram", security(("api_key" = [])),
    params(("chat_id" = i64, Path)),
    responses(
        (status = 204, description = "unlinked"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[delete("/v1/telegram/chats/{chat_id}")]
pub async fn unlink(
    auth: Authenticated,
    path: web::Path<i64>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    chat::unlink(&mut tx, path.into_inner()).await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's tenant's linked chats, by chat id.
#[utoipa::path(
    get, path = "/v1/telegram/chats", tag = "telegram", security(("api_key" = [])),
    params(PageQuery),
    responses(
        (status = 200, body = List<TelegramChat>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/telegram/chats")]
pub async fn index(
    auth: Authenticated,
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.page()?;
    let after = page.after_parsed::<i64>()?;
    let rows = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            chat::list(tx, after, page.limit + 1).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(List::from_rows(rows, &page, |c| c.chat_id.to_string())))
}
