//! Policies: S5's rules, evaluated against events by the policy evaluator.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{Conn, DbError};
use crate::schemas::schema::policies;

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = policies, check_for_backend(diesel::pg::Pg))]
pub struct Policy {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
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
