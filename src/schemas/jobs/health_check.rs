//! Health checks: one row per `health_check` run, written by the system role (the table holds
//! no tenant data).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::repo::{AnyTx, DbError, SystemTx};
use crate::schemas::schema::health_checks;

/// Stores one measurement (`status` "ok" or "degraded", `checks` per dependency) and returns
/// when the database recorded it.
pub async fn insert(
    conn: &mut SystemTx,
    status: &str,
    checks: &serde_json::Value,
) -> Result<DateTime<Utc>, DbError> {
    Ok(diesel::insert_into(health_checks::table)
        .values((
            health_checks::id.eq(Uuid::now_v7()),
            health_checks::status.eq(status),
            health_checks::checks.eq(checks),
        ))
        .returning(health_checks::checked_at)
        .get_result(&mut **conn)
        .await?)
}

/// The most recent measurement, if any: `(status, checks, checked_at)` (readable by tenants
/// too: the table holds no tenant data; the dashboard and the bot's `/status` show it).
pub async fn latest(
    conn: &mut impl AnyTx,
) -> Result<Option<(String, serde_json::Value, DateTime<Utc>)>, DbError> {
    let conn: &mut crate::repo::Conn = conn;
    Ok(health_checks::table
        .order(health_checks::checked_at.desc())
        .select((
            health_checks::status,
            health_checks::checks,
            health_checks::checked_at,
        ))
        .first(conn)
        .await
        .optional()?)
}
