//! System states S1–S5. An update never changes a row: it appends `version + 1`, so the history
//! of every system is kept and concurrent writers cannot silently overwrite each other (the
//! unique `(tenant_id, system, version)` index turns a race into a `Conflict`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{DbError, TenantConn, TenantTx};
use crate::schemas::schema::system_states;

/// Names of the five systems, indexed by `system - 1`.
pub const SYSTEM_NAMES: [&str; 5] = [
    "Operations",
    "Coordination",
    "Control",
    "Intelligence",
    "Policy",
];

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = system_states, check_for_backend(diesel::pg::Pg))]
pub struct SystemState {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub system: i16,
    pub state: serde_json::Value,
    pub version: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = system_states)]
struct NewSystemState<'a> {
    id: Uuid,
    tenant_id: Uuid,
    system: i16,
    state: &'a serde_json::Value,
    version: i32,
}

/// The latest state of `system`, if it was ever set.
pub async fn latest(
    conn: &mut impl TenantConn,
    system: i16,
) -> Result<Option<SystemState>, DbError> {
    Ok(system_states::table
        .filter(system_states::system.eq(system))
        .order(system_states::version.desc())
        .select(SystemState::as_select())
        .first(conn.conn())
        .await
        .optional()?)
}

/// Appends a new state for `system`. With `expected_version`, the write only happens if the
/// latest version is exactly that (0 = never set); otherwise `Conflict`.
pub async fn append(
    conn: &mut TenantTx,
    tenant_id: Uuid,
    system: i16,
    state: &serde_json::Value,
    expected_version: Option<i32>,
) -> Result<SystemState, DbError> {
    let current = latest(conn, system).await?.map_or(0, |s| s.version);
    if let Some(expected) = expected_version
        && expected != current
    {
        return Err(DbError::Conflict {
            what: format!("expected version {expected} but the current version is {current}"),
        });
    }
    Ok(diesel::insert_into(system_states::table)
        .values(NewSystemState {
            id: Uuid::now_v7(),
            tenant_id,
            system,
            state,
            version: current + 1,
        })
        .returning(SystemState::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// The latest state of every system that was ever set.
pub async fn latest_all(conn: &mut impl TenantConn) -> Result<Vec<SystemState>, DbError> {
    Ok(system_states::table
        .distinct_on(system_states::system)
        .order((system_states::system, system_states::version.desc()))
        .select(SystemState::as_select())
        .load(conn.conn())
        .await?)
}

/// States of `system` older than version `before` (all when `None`), newest first.
pub async fn history(
    conn: &mut impl TenantConn,
    system: i16,
    before: Option<i32>,
    limit: i64,
) -> Result<Vec<SystemState>, DbError> {
    let mut query = system_states::table
        .filter(system_states::system.eq(system))
        .order(system_states::version.desc())
        .select(SystemState::as_select())
        .limit(limit)
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(system_states::version.lt(before));
    }
    Ok(query.load(conn.conn()).await?)
}
