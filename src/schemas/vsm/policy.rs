//! Policies: S5's rules, evaluated against events by the policy evaluator.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{DbError, TenantConn, TenantTx};
use crate::schemas::schema::policies;

#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = policies, check_for_backend(diesel::pg::Pg))]
pub struct Policy {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub rules: serde_json::Value,
    pub active: bool,
    pub priority: i32,
    pub effective_from: Option<DateTime<Utc>>,
    pub effective_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = policies)]
pub struct NewPolicy {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub rules: serde_json::Value,
    pub active: bool,
    pub priority: i32,
    pub effective_from: Option<DateTime<Utc>>,
    pub effective_until: Option<DateTime<Utc>>,
}

pub async fn insert(conn: &mut TenantTx, new: &NewPolicy) -> Result<Policy, DbError> {
    Ok(diesel::insert_into(policies::table)
        .values(new)
        .returning(Policy::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// The policy with `id` in the current tenant.
pub async fn find(conn: &mut impl TenantConn, id: Uuid) -> Result<Policy, DbError> {
    Ok(policies::table
        .find(id)
        .select(Policy::as_select())
        .first(conn.conn())
        .await?)
}

/// One page of the current tenant's policies in id order, after `after`.
pub async fn list(
    conn: &mut impl TenantConn,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Policy>, DbError> {
    let mut query = policies::table
        .select(Policy::as_select())
        .order(policies::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(policies::id.gt(after));
    }
    Ok(query.load(conn.conn()).await?)
}

/// Replaces the editable fields of policy `id` (`NotFound` for another tenant's id).
pub async fn update(conn: &mut TenantTx, id: Uuid, new: &NewPolicy) -> Result<Policy, DbError> {
    Ok(diesel::update(policies::table.find(id))
        .set((
            policies::name.eq(&new.name),
            policies::description.eq(&new.description),
            policies::rules.eq(&new.rules),
            policies::active.eq(new.active),
            policies::priority.eq(new.priority),
            policies::effective_from.eq(new.effective_from),
            policies::effective_until.eq(new.effective_until),
            policies::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Policy::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// Deletes policy `id` (`NotFound` for another tenant's id).
pub async fn delete(conn: &mut TenantTx, id: Uuid) -> Result<(), DbError> {
    let n = diesel::delete(policies::table.find(id))
        .execute(&mut **conn)
        .await?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

/// `(id, name, updated_at)` of the tenant's active policies in their window at `now`, highest
/// priority first (name breaks ties): what the evaluator needs to find its cached rules.
pub async fn active_versions(
    conn: &mut TenantTx,
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, String, DateTime<Utc>)>, DbError> {
    Ok(policies::table
        .filter(active_at(now))
        .order((policies::priority.desc(), policies::name.asc()))
        .select((policies::id, policies::name, policies::updated_at))
        .load(&mut **conn)
        .await?)
}

/// `(id, updated_at, rules)` of the policies `ids` of the current tenant.
pub async fn rules_of(
    conn: &mut TenantTx,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, DateTime<Utc>, serde_json::Value)>, DbError> {
    Ok(policies::table
        .filter(policies::id.eq_any(ids))
        .select((policies::id, policies::updated_at, policies::rules))
        .load(&mut **conn)
        .await?)
}

/// `rules.when` of the tenant's active policies in their window at `now`: all the relay needs,
/// so it never reads (or parses) whole rule documents.
pub async fn active_whens(
    conn: &mut TenantTx,
    now: DateTime<Utc>,
) -> Result<Vec<serde_json::Value>, DbError> {
    let whens: Vec<Option<serde_json::Value>> = policies::table
        .filter(active_at(now))
        .select(policies::rules.retrieve_as_object("when").nullable())
        .load(&mut **conn)
        .await?;
    Ok(whens.into_iter().flatten().collect())
}

/// Active, and `now` inside `[effective_from, effective_until)` (an open end is unbounded).
#[diesel::dsl::auto_type]
fn active_at(now: DateTime<Utc>) -> _ {
    policies::active
        .eq(true)
        .and(
            policies::effective_from
                .is_null()
                .or(policies::effective_from.le(now)),
        )
        .and(
            policies::effective_until
                .is_null()
                .or(policies::effective_until.gt(now)),
        )
}

/// `(name, priority)` of at most `limit` of the tenant's active policies in their window at
/// `now`, highest priority first (what the bot's `/policies` lists).
pub async fn active_names(
    conn: &mut TenantTx,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, i32)>, DbError> {
    Ok(policies::table
        .filter(active_at(now))
        .order((policies::priority.desc(), policies::name.asc()))
        .select((policies::name, policies::priority))
        .limit(limit)
        .load(&mut **conn)
        .await?)
}

/// How many policies the transaction's tenant holds.
pub async fn count(conn: &mut TenantTx) -> Result<i64, DbError> {
    Ok(policies::table.count().get_result(&mut **conn).await?)
}
