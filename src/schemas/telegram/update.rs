//! The dedupe of inbound Telegram updates (CONTRACT §9): every accepted `update_id`, recorded
//! by the system role in the same transaction as the update's job, so a repeated delivery is
//! recognised on any instance and after restarts until it is pruned.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz};
use diesel_async::RunQueryDsl;

use crate::repo::{DbError, Prepare, SystemTx};
use crate::schemas::schema::telegram_updates;

/// Records `update_id`; `true` when it is new, `false` when it was seen before (and not yet
/// pruned). Concurrent transactions with the same id wait for each other on the primary key, so
/// exactly one of them sees `true`.
pub async fn record(conn: &mut SystemTx, update_id: i64) -> Result<bool, DbError> {
    let n = diesel::insert_into(telegram_updates::table)
        .values(telegram_updates::update_id.eq(update_id))
        .on_conflict_do_nothing()
        .execute(&mut **conn)
        .await?;
    Ok(n == 1)
}

/// Deletes up to `batch` records received before `before`; returns how many.
pub async fn prune(
    conn: &mut SystemTx,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<usize, DbError> {
    // A bounded batch, so one pass never holds a long lock on a big backlog.
    Ok(diesel::sql_query(
        "DELETE FROM telegram_updates WHERE update_id IN \
         (SELECT update_id FROM telegram_updates WHERE received_at < $1 LIMIT $2)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .prepared()
    .execute(&mut **conn)
    .await?)
}
