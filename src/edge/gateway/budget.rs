//! Per-tenant resource caps (CONTRACT §4, `[limits]`): creating one more of a resource than
//! the tenant's cap is 409, naming the setting. A new capped resource (webhooks, linked chats)
//! adds a variant here and calls [`ensure_room`] in its create handler.

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::error::ApiError;
use crate::config::LimitsConfig;
use crate::repo::{DbError, Prepare, TenantTx};
use crate::schemas::storage::api_key;
use crate::schemas::telegram::chat;
use crate::schemas::vsm::policy;
use crate::schemas::webhooks::endpoint;

#[derive(Debug, Clone, Copy)]
pub enum Resource {
    /// Unrevoked API keys.
    ApiKeys,
    Policies,
    Webhooks,
    /// Linked Telegram chats.
    TelegramChats,
}

impl Resource {
    /// The `[limits]` key, for the error message.
    fn setting(self) -> &'static str {
        match self {
            Resource::ApiKeys => "max_api_keys_per_tenant",
            Resource::Policies => "max_policies_per_tenant",
            Resource::Webhooks => "max_webhooks_per_tenant",
            Resource::TelegramChats => "max_telegram_chats_per_tenant",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Resource::ApiKeys => "API keys",
            Resource::Policies => "policies",
            Resource::Webhooks => "webhooks",
            Resource::TelegramChats => "linked Telegram chats",
        }
    }

    fn cap(self, limits: &LimitsConfig) -> u64 {
        match self {
            Resource::ApiKeys => limits.max_api_keys_per_tenant,
            Resource::Policies => limits.max_policies_per_tenant,
            Resource::Webhooks => limits.max_webhooks_per_tenant,
            Resource::TelegramChats => limits.max_telegram_chats_per_tenant,
        }
    }

    /// How many the transaction's tenant holds.
    async fn held(self, conn: &mut TenantTx) -> Result<i64, DbError> {
        match self {
            Resource::ApiKeys => api_key::count_unrevoked(conn).await,
            Resource::Policies => policy::count(conn).await,
            Resource::Webhooks => endpoint::count(conn).await,
            Resource::TelegramChats => chat::count(conn).await,
        }
    }
}

/// Refuses one more `resource` for `tenant` when it already holds its cap. Call it inside the
/// tenant transaction that then creates the resource: the transaction-scoped advisory lock on
/// (resource, tenant) makes concurrent creates count one after the other, so none slips past.
pub async fn ensure_room(
    conn: &mut TenantTx,
    limits: &LimitsConfig,
    tenant: Uuid,
    resource: Resource,
) -> Result<(), ApiError> {
    let cap = resource.cap(limits);
    let tenant = tenant.to_string();
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
        .bind::<Text, _>(resource.setting())
        .bind::<Text, _>(&tenant)
        .prepared()
        .execute(&mut **conn)
        .await
        .map_err(DbError::from)?;
    let held = resource.held(conn).await?;
    if u64::try_from(held).unwrap_or(0) >= cap {
        return Err(ApiError::Conflict(format!(
            "this tenant already has {held} {} (limits.{} = {cap}); delete one first",
            resource.noun(),
            resource.setting()
        )));
    }
    Ok(())
}
