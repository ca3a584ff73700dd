//! Per-tenant resource caps (CONTRACT §4, `[limits]`): creating one more of a resource than
//! the tenant's cap is 409, naming the setting. A new capped resource (webhooks, linked chats)
//! adds a variant here and calls [`ensure_room`] in its create handler.

use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::error::ApiError;
use crate::config::LimitsConfig;
use crate::repo::{DbError, TenantTx};

#[derive(Debug, Clone, Copy)]
pub enum Resource {
    /// Unrevoked API keys.
    ApiKeys,
    Policies,
}

impl Resource {
    /// The `[limits]` key, for the error message.
    fn setting(self) -> &'static str {
        match self {
            Resource::ApiKeys => "max_api_keys_per_tenant",
            Resource::Policies => "max_policies_per_tenant",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Resource::ApiKeys => "API keys",
            Resource::Policies => "policies",
        }
    }

    fn cap(self, limits: &LimitsConfig) -> u64 {
        match self {
            Resource::ApiKeys => limits.max_api_keys_per_tenant,
            Resource::Policies => limits.max_policies_per_tenant,
        }
    }

    /// Counts the tenant's rows ($1); row-level security limits it to them anyway.
    fn count_sql(self) -> &'static str {
        match self {
            Resource::ApiKeys => {
                "SELECT count(*) AS n FROM api_keys WHERE tenant_id = $1::uuid AND revoked_at IS NULL"
            }
            Resource::Policies => "SELECT count(*) AS n FROM policies WHERE tenant_id = $1::uuid",
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
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
        .execute(&mut **conn)
        .await
        .map_err(DbError::from)?;
    let held = diesel::sql_query(resource.count_sql())
        .bind::<Text, _>(&tenant)
        .get_result::<Count>(&mut **conn)
        .await
        .map_err(DbError::from)?
        .n;
    if u64::try_from(held).unwrap_or(0) >= cap {
        return Err(ApiError::Conflict(format!(
            "this tenant already has {held} {} (limits.{} = {cap}); delete one first",
            resource.noun(),
            resource.setting()
        )));
    }
    Ok(())
}
