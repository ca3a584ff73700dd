//! Events (CONTRACT §6): recorded in the caller's transaction (a transactional outbox), moved
//! out by the relay, fanned out through RabbitMQ or in-process, streamed to clients over SSE.

pub mod hub;
pub mod payloads;
pub mod rabbitmq;
pub mod relay;
pub mod store;
pub mod stream;
pub mod subscriber;
pub mod topic;

use std::sync::Arc;

use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;
use crate::health::Probe;
use crate::repo::{Conn, DbError, Prepare, Repo};
use crate::shutdown::Shutdown;

/// The channel the relay LISTENs on; `record` notifies it so the relay wakes at commit.
pub const NOTIFY_CHANNEL: &str = "vsm_events";

/// A committed, sequenced event as it travels from the relay to SSE clients. Its SSE frame is
/// rendered once, here, and shared by every client that receives it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The public id: increasing in the order the relay observed commits.
    pub seq: i64,
    /// `None` for a system-wide event every tenant receives.
    pub tenant_id: Option<Uuid>,
    pub topic: String,
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    /// `id: …\nevent: …\ndata: …\n\n`
    pub frame: Bytes,
}

impl Event {
    pub fn new(
        seq: i64,
        tenant_id: Option<Uuid>,
        topic: String,
        payload: serde_json::Value,
        occurred_at: DateTime<Utc>,
    ) -> Event {
        // serde_json's compact form escapes newlines, so the payload is one `data:` line.
        let frame = Bytes::from(format!("id: {seq}\nevent: {topic}\ndata: {payload}\n\n"));
        Event {
            seq,
            tenant_id,
            topic,
            payload,
            occurred_at,
            frame,
        }
    }
}

/// An event on the wire of the `vsm.events` exchange (documented in the README for other
/// services that bind to it).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireEvent {
    pub id: i64,
    pub tenant_id: Option<Uuid>,
    pub topic: String,
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

impl From<&Event> for WireEvent {
    fn from(e: &Event) -> Self {
        WireEvent {
            id: e.seq,
            tenant_id: e.tenant_id,
            topic: e.topic.clone(),
            payload: e.payload.clone(),
            occurred_at: e.occurred_at,
        }
    }
}

impl From<WireEvent> for Event {
    fn from(w: WireEvent) -> Self {
        Event::new(w.id, w.tenant_id, w.topic, w.payload, w.occurred_at)
    }
}

/// Events shared between the hub and every client without copying.
pub type SharedEvent = Arc<Event>;

/// What a serving process runs for events: its hub, plus the readiness probes of the fan-out.
pub struct Started {
    pub hub: hub::Hub,
    pub probes: Vec<Box<dyn Probe>>,
}

/// Starts the event machinery of a serving process: this instance's hub, its RabbitMQ consumer
/// (when `RABBITMQ_URL` is set) and a relay that leads when no other instance does.
pub async fn start(
    config: &Config,
    repo: &Repo,
    subscribers: subscriber::Subscribers,
    shutdown: &Shutdown,
) -> Result<Started, DbError> {
    let cfg = &config.events;
    let hub = hub::Hub::with_limits(
        cfg.max_connections_per_tenant,
        cfg.client_buffer,
        cfg.client_buffer_bytes,
        shutdown.clone(),
    );
    // Live clients get what happens from now on; earlier history is for Last-Event-ID replay.
    let mut tx = repo.system_tx().await?;
    hub.skip_through(store::last_seq(&mut tx).await?);
    tx.commit().await?;
    let mut probes: Vec<Box<dyn Probe>> = Vec::new();
    let fanout = match &config.rabbitmq.url {
        Some(url) => {
            let state = rabbitmq::ConsumerState::default();
            probes.push(Box::new(state.clone()));
            tokio::spawn(rabbitmq::consume(
                url.clone(),
                cfg.exchange.clone(),
                hub.clone(),
                repo.clone(),
                state,
                shutdown.clone(),
            ));
            relay::Fanout::RabbitMq(rabbitmq::Publisher::new(url.clone(), cfg.exchange.clone()))
        }
        None => relay::Fanout::InProcess(hub.clone()),
    };
    let relay = relay::Relay::new(
        repo.clone(),
        config.database.clone(),
        cfg.clone(),
        fanout,
        subscribers,
        shutdown.clone(),
    );
    tokio::spawn(relay.run());
    Ok(Started { hub, probes })
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

/// One event for [`record_many`].
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    /// `None` for a system-wide event.
    pub tenant_id: Option<Uuid>,
    pub topic: String,
    pub payload: serde_json::Value,
}

async fn insert(
    conn: &mut Conn,
    tenant_id: Option<Uuid>,
    topic: &str,
    payload: &serde_json::Value,
) -> Result<(), DbError> {
    let record = Record {
        tenant_id,
        topic: topic.to_owned(),
        payload: payload.clone(),
    };
    record_many(conn, std::slice::from_ref(&record)).await
}

/// Records a batch of events inside the caller's transaction in one statement (the job
/// engine's batched acknowledgements): the rows and the relay's wake-up at commit. Every topic
/// is validated first; one invalid topic records none. Row-level security applies as for
/// [`record`]: a tenant transaction can record only its own tenant's events.
pub async fn record_many(conn: &mut Conn, records: &[Record]) -> Result<(), DbError> {
    if records.is_empty() {
        return Ok(());
    }
    for r in records {
        topic::validate(&r.topic).map_err(|_| DbError::Validation {
            field: "topic",
            message: "must be <domain>.<action> in lowercase",
        })?;
    }
    let ids: Vec<Uuid> = records.iter().map(|_| Uuid::now_v7()).collect();
    let tenants: Vec<Option<Uuid>> = records.iter().map(|r| r.tenant_id).collect();
    let topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = records.iter().map(|r| &r.payload).collect();
    // The NOTIFY is delivered to the relay when (and only if) the transaction commits.
    diesel::sql_query(
        "WITH ins AS (
           INSERT INTO events (id, tenant_id, topic, payload)
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[])
           RETURNING 1
         )
         SELECT pg_notify($5, '') FROM (SELECT 1) one WHERE EXISTS (SELECT 1 FROM ins)",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Nullable<SqlUuid>>, _>(&tenants)
    .bind::<Array<Text>, _>(&topics)
    .bind::<Array<Jsonb>, _>(&payloads)
    .bind::<Text, _>(NOTIFY_CHANNEL)
    .prepared()
    .execute(conn)
    .await?;
    Ok(())
}
