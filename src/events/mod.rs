//! Events (CONTRACT §6): recorded in the caller's transaction (a transactional outbox), moved
//! out by the relay, fanned out through RabbitMQ or in-process, streamed to clients over SSE.

pub mod hub;
pub mod rabbitmq;
pub mod relay;
pub mod store;
pub mod stream;
pub mod subscriber;
pub mod topic;

use std::sync::Arc;

use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;
use crate::health::Probe;
use crate::repo::{Conn, DbError, Repo};
use crate::schemas::schema::events;
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

#[derive(Insertable)]
#[diesel(table_name = events)]
struct NewEvent<'a> {
    id: Uuid,
    tenant_id: Option<Uuid>,
    topic: &'a str,
    payload: &'a serde_json::Value,
}

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
