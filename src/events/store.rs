//! All events SQL: sequencing, publishing bookkeeping, pruning (relay, as `vsm_system`) and
//! replay (SSE, through the tenant door).

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Int8, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Event;
use crate::repo::{Conn, DbError, Prepare};

/// Advisory lock serialising sequencing transactions, so ids are handed out in one order even
/// if two relays ever overlap during a failover.
const SEQUENCE_LOCK: i64 = 0x7673_6d5f_7365_7121; // "vsm_seq!"

/// Payload bytes a page read by [`after`] stops at (about 1 MiB).
pub const PAGE_BYTES: i64 = 1024 * 1024;

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = Int8)]
    seq: i64,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    tenant_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Jsonb)]
    payload: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    inserted_at: DateTime<Utc>,
}

impl From<Row> for Event {
    fn from(r: Row) -> Event {
        Event::new(r.seq, r.tenant_id, r.topic, r.payload, r.inserted_at)
    }
}

/// What one sequencing step found.
pub struct Sequenced {
    /// The events that got their public ids in this step, oldest first.
    pub now: Vec<Event>,
    /// Every sequenced event not yet confirmed published (those of this step included),
    /// oldest first.
    pub unpublished: Vec<Event>,
}

/// Gives the oldest unsequenced (committed) events their public ids, in insertion order, and
/// reads the sequenced events not yet confirmed published. Run by the relay in a system
/// transaction, in one round trip: the lock, the sequencing and the read are pipelined.
/// PostgreSQL runs them in order (the read sees what the sequencing did), and once one fails
/// the transaction refuses the rest; all three are awaited before any result is looked at, so
/// nothing is left in flight.
pub async fn sequence(conn: &mut Conn, limit: i64) -> Result<Sequenced, DbError> {
    let conn: &Conn = conn;
    let (mut lock_on, mut sequence_on, mut read_on) = (conn, conn, conn);
    let (locked, now, unpublished) = futures_util::join!(
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(SEQUENCE_LOCK)
            .prepared()
            .execute(&mut lock_on),
        diesel::sql_query(
            "UPDATE events e SET seq = s.seq, sequenced_at = clock_timestamp()
             FROM (SELECT id, nextval('event_seq') AS seq
                   FROM (SELECT id FROM events WHERE seq IS NULL ORDER BY id LIMIT $1 FOR UPDATE) b
                   ORDER BY id) s
             WHERE e.id = s.id
             RETURNING e.seq, e.tenant_id, e.topic, e.payload, e.inserted_at",
        )
        .bind::<BigInt, _>(limit)
        .prepared()
        .load::<Row>(&mut sequence_on),
        diesel::sql_query(
            "SELECT seq, tenant_id, topic, payload, inserted_at FROM events
             WHERE seq IS NOT NULL AND published_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind::<BigInt, _>(limit)
        .prepared()
        .load::<Row>(&mut read_on),
    );
    locked?;
    let mut now: Vec<Event> = now?.into_iter().map(Event::from).collect();
    now.sort_by_key(|e| e.seq);
    Ok(Sequenced {
        now,
        unpublished: unpublished?.into_iter().map(Event::from).collect(),
    })
}

pub async fn mark_published(conn: &mut Conn, seqs: &[i64]) -> Result<(), DbError> {
    diesel::sql_query(
        "UPDATE events SET published_at = clock_timestamp() WHERE seq = ANY($1) AND published_at IS NULL",
    )
    .bind::<Array<BigInt>, _>(seqs)
    .prepared()
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes published events recorded before `before` (a batch at a time) and raises the
/// retention watermark to the highest id deleted. Returns how many went.
pub async fn prune(conn: &mut Conn, before: DateTime<Utc>, limit: i64) -> Result<usize, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Pruned {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let pruned: Pruned = diesel::sql_query(
        "WITH gone AS (
           DELETE FROM events WHERE id IN (
             SELECT id FROM events WHERE inserted_at < $1 AND published_at IS NOT NULL
             ORDER BY inserted_at LIMIT $2)
           RETURNING seq),
         mark AS (
           UPDATE event_retention
           SET pruned_through = GREATEST(pruned_through, (SELECT max(seq) FROM gone))
           WHERE EXISTS (SELECT 1 FROM gone))
         SELECT count(*) AS n FROM gone",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(limit)
    .prepared()
    .get_result(conn)
    .await?;
    Ok(usize::try_from(pruned.n).unwrap_or(0))
}

/// The highest event id ever pruned: replay from below it has lost history.
pub async fn pruned_through(conn: &mut Conn) -> Result<i64, DbError> {
    #[derive(diesel::QueryableByName)]
    struct W {
        #[diesel(sql_type = BigInt)]
        pruned_through: i64,
    }
    let w: Option<W> = diesel::sql_query("SELECT pruned_through FROM event_retention")
        .prepared()
        .get_result(conn)
        .await
        .map(Some)
        .or_else(|e| match e {
            diesel::result::Error::NotFound => Ok(None),
            e => Err(e),
        })?;
    Ok(w.map_or(0, |w| w.pruned_through))
}

/// The highest event id sequenced so far (0 when none).
pub async fn last_seq(conn: &mut Conn) -> Result<i64, DbError> {
    #[derive(diesel::QueryableByName)]
    struct M {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }
    let m: M = diesel::sql_query("SELECT coalesce(max(seq), 0) AS seq FROM events")
        .prepared()
        .get_result(conn)
        .await?;
    Ok(m.seq)
}

/// Events after `after` visible in the transaction (a tenant's own and the system-wide ones
/// under row-level security; all of them for the system role), oldest first: at most
/// `max_rows`, and no more than `max_bytes` of payload past the first event (a page stops at the
/// event that reaches the budget, so one event larger than the budget still makes progress).
/// An empty page means there is nothing after `after`.
///
/// The walk goes one event at a time along the `seq` index and measures each payload as it
/// goes, so the database never reads (let alone sends) more large rows than the page holds.
pub async fn after(
    conn: &mut Conn,
    after: i64,
    max_rows: i64,
    max_bytes: i64,
) -> Result<Vec<Event>, DbError> {
    let rows: Vec<Row> = diesel::sql_query(
        "WITH RECURSIVE walk(seq, total, n) AS (
             (SELECT seq, octet_length(payload::text)::bigint, 1
              FROM events WHERE seq > $1 ORDER BY seq LIMIT 1)
           UNION ALL
             (SELECT e.seq, w.total + octet_length(e.payload::text), w.n + 1
              FROM walk w CROSS JOIN LATERAL
                (SELECT seq, payload FROM events WHERE seq > w.seq ORDER BY seq LIMIT 1) e
              WHERE w.total < $3 AND w.n < $2))
         SELECT e.seq, e.tenant_id, e.topic, e.payload, e.inserted_at
         FROM walk JOIN events e USING (seq) ORDER BY e.seq",
    )
    .bind::<BigInt, _>(after)
    .bind::<BigInt, _>(max_rows)
    .bind::<BigInt, _>(max_bytes)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(Event::from).collect())
}
