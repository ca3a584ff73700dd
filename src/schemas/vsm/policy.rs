//! Policies: S5's rules, evaluated against events by the policy evaluator.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{Conn, DbError};
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

pub async fn insert(conn: &mut Conn, new: &NewPolicy) -> Result<Policy, DbError> {
    Ok(diesel::insert_into(policies::table)
        .values(new)
        .returning(Policy::as_returning())
        .get_result(conn)
        .await?)
}

/// The policy with `id` in the current tenant.
pub async fn find(conn: &mut Conn, id: Uuid) -> Result<Policy, DbError> {
    Ok(policies::table
        .find(id)
        .select(Policy::as_select())
        .first(conn)
        .await?)
}

/// One page of the current tenant's policies in id order, after `after`.
pub async fn list(
    conn: &mut Conn,
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
    Ok(query.load(conn).await?)
}

/// Replaces the editable fields of policy `id` (`NotFound` for another tenant's id).
pub async fn update(conn: &mut Conn, id: Uuid, new: &NewPolicy) -> Result<Policy, DbError> {
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
        .get_result(conn)
        .await?)
}

/// Deletes policy `id` (`NotFound` for another tenant's id).
pub async fn delete(conn: &mut Conn, id: Uuid) -> Result<(), DbError> {
    let n = diesel::delete(policies::table.find(id))
        .execute(conn)
        .await?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}
