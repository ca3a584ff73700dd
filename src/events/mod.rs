//! Events (CONTRACT §6): recorded in the caller's transaction (a transactional outbox), moved
//! out by the relay, fanned out through RabbitMQ or in-process, streamed to clients over SSE.

pub mod topic;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::repo::{Conn, DbError};
use crate::schemas::schema::events;

/// The channel the relay LISTENs on; `record` notifies it so the relay wakes at commit.
pub const NOTIFY_CHANNEL: &str = "vsm_events";

#[derive(Insertable)]
#[diesel(table_name = events)]
struct NewEvent<'a> {
    id: Uuid,
    tenant_id: Option<Uuid>,
    topic: &'a str,
    payload: &'a serde_json::Value,
}

/// Records an event for `tenant_id` inside the caller's transaction (`tx` from
/// [`crate::repo::Repo::tenant_tx`]): it exists if and only if that transaction commits.
/// `topic` must be `<domain>.<action>` (see [`topic::validate`]).
pub async fn record(
    conn: &mut Conn,
    tenant_id: Uuid,
    topic: &str,
    payload: &serde_json::Value,
) -> Result<(), DbError> {
    insert(conn, Some(tenant_id), topic, payload).await
}

/// Records a system-wide event that every tenant receives (e.g. `system.health`), inside a
/// [`crate::repo::Repo::system_tx`] transaction.
pub async fn record_global(
    conn: &mut Conn,
    topic: &str,
    payload: &serde_json::Value,
) -> Result<(), DbError> {
    insert(conn, None, topic, payload).await
}

async fn insert(
    conn: &mut Conn,
    tenant_id: Option<Uuid>,
    topic: &str,
    payload: &serde_json::Value,
) -> Result<(), DbError> {
    topic::validate(topic).map_err(|_| DbError::Validation {
        field: "topic",
        message: "must be <domain>.<action> in lowercase",
    })?;
    diesel::insert_into(events::table)
        .values(NewEvent {
            id: Uuid::now_v7(),
            tenant_id,
            topic,
            payload,
        })
        .execute(conn)
        .await?;
    // Delivered to the relay when (and only if) the transaction commits.
    diesel::sql_query(format!("NOTIFY {NOTIFY_CHANNEL}"))
        .execute(conn)
        .await?;
    Ok(())
}
