//! Telegram chats linked to tenants (CONTRACT §9): a linked chat may run the bot's commands on
//! its tenant's data and receive its tenant's `notify` messages. A chat is linked to at most one
//! tenant (`chat_id` is the primary key); another tenant's attempt to link it is a conflict that
//! names nobody.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{AnyTx, DbError, Prepare, TELEGRAM_CHAT_TAKEN, TenantConn, TenantTx};
use crate::schemas::schema::telegram_chats;

#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = telegram_chats, check_for_backend(diesel::pg::Pg))]
pub struct TelegramChat {
    /// Telegram's chat id (negative for groups and channels).
    pub chat_id: i64,
    pub tenant_id: Uuid,
    /// What the tenant calls this chat; 1 to 200 characters.
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What [`link`] did.
#[derive(Debug)]
pub enum Linked {
    /// The chat was not linked; now it is linked to this tenant.
    Created(TelegramChat),
    /// The chat was already this tenant's; its label is replaced.
    Updated(TelegramChat),
}

/// The tenant a chat is linked to, whichever tenant (or none) the transaction acts for: the
/// `vsm_resolve_telegram_chat` function is the one reader of the link across tenants and
/// returns nothing but the tenant id.
pub async fn resolve(conn: &mut impl AnyTx, chat_id: i64) -> Result<Option<Uuid>, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Nullable<SqlUuid>)]
        tenant_id: Option<Uuid>,
    }
    let row: Row = diesel::sql_query("SELECT vsm_resolve_telegram_chat($1) AS tenant_id")
        .bind::<BigInt, _>(chat_id)
        .prepared()
        .get_result(&mut **conn)
        .await?;
    Ok(row.tenant_id)
}

/// Links `chat_id` to the transaction's tenant with `label`, or relabels it when it already is
/// the tenant's. A chat linked to another tenant is `Conflict` (the same answer a concurrent
/// link racing this one gets from the primary key).
pub async fn link(
    conn: &mut TenantTx,
    chat_id: i64,
    label: Option<&str>,
) -> Result<Linked, DbError> {
    let tenant = conn.tenant_id();
    match resolve(conn, chat_id).await? {
        Some(owner) if owner != tenant => Err(DbError::Conflict {
            what: TELEGRAM_CHAT_TAKEN.to_owned(),
        }),
        Some(_) => {
            let chat = diesel::update(telegram_chats::table.find(chat_id))
                .set((
                    telegram_chats::label.eq(label),
                    telegram_chats::updated_at.eq(Utc::now()),
                ))
                .returning(TelegramChat::as_returning())
                .get_result(&mut **conn)
                .await?;
            Ok(Linked::Updated(chat))
        }
        None => {
            let chat = diesel::insert_into(telegram_chats::table)
                .values((
                    telegram_chats::chat_id.eq(chat_id),
                    telegram_chats::tenant_id.eq(tenant),
                    telegram_chats::label.eq(label),
                ))
                .returning(TelegramChat::as_returning())
                .get_result(&mut **conn)
                .await?;
            Ok(Linked::Created(chat))
        }
    }
}

/// The tenant's chat `chat_id` (`NotFound` when it is unlinked or another tenant's).
pub async fn find(conn: &mut TenantTx, chat_id: i64) -> Result<TelegramChat, DbError> {
    Ok(telegram_chats::table
        .find(chat_id)
        .select(TelegramChat::as_select())
        .first(&mut **conn)
        .await?)
}

/// Unlinks the tenant's chat; `NotFound` when it is not the tenant's.
pub async fn unlink(conn: &mut TenantTx, chat_id: i64) -> Result<(), DbError> {
    let n = diesel::delete(telegram_chats::table.find(chat_id))
        .execute(&mut **conn)
        .await?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

/// One page of the tenant's chats in `chat_id` order, after `after`.
pub async fn list(
    conn: &mut impl TenantConn,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<TelegramChat>, DbError> {
    let mut query = telegram_chats::table
        .select(TelegramChat::as_select())
        .order(telegram_chats::chat_id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(telegram_chats::chat_id.gt(after));
    }
    Ok(query.load(conn.conn()).await?)
}

/// How many chats the transaction's tenant has linked.
pub async fn count(conn: &mut TenantTx) -> Result<i64, DbError> {
    Ok(telegram_chats::table
        .count()
        .get_result(&mut **conn)
        .await?)
}
