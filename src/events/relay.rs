//! The relay: moves committed events out of the outbox. Exactly one relay leads across all
//! instances (a session-level PostgreSQL advisory lock held on a dedicated connection); the
//! others wait and take over within `events.relay_poll_ms` when the leader's connection goes
//! (process death closes it). The leader is woken by LISTEN/NOTIFY at each commit and polls as
//! a fallback. Each step sequences new events (public ids in commit-observation order),
//! publishes every sequenced-but-unpublished event in id order, and marks them published only
//! once the fan-out confirmed them, so a crash or a broker outage at any point loses nothing.

use std::pin::pin;
use std::time::Duration;

use chrono::Utc;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::RunQueryDsl;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::hub::Hub;
use super::rabbitmq::{AmqpError, Publisher};
use super::subscriber::Subscribers;
use super::{Event, NOTIFY_CHANNEL, store, topic};
use crate::backoff::Backoff;
use crate::config::{DatabaseConfig, EventsConfig};
use crate::maintenance::{self, Pass, Periodic};
use crate::metrics::METRICS;
use crate::repo::{Conn, DbError, Repo};
use crate::shutdown::Shutdown;

/// Session advisory lock held by the leading relay ("vsm_rela").
const RELAY_LOCK: i64 = 0x7673_6d5f_7265_6c61;
/// Events per sequencing / publishing batch.
const BATCH: i64 = 500;
/// How often the leader prunes history older than the retention period.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Why the relay stopped leading or a step failed; logged, and the relay retries.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay lock connection: {0}")]
    Connect(#[from] crate::repo::ConnectError),
    #[error("relay lock connection failed: {0}")]
    LockConnection(#[source] diesel::result::Error),
    #[error("relay lock connection closed")]
    LockConnectionClosed,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("fan-out: {0}")]
    Fanout(#[from] AmqpError),
    #[error("subscriber {name}: {source}")]
    Subscriber {
        name: &'static str,
        #[source]
        source: DbError,
    },
}

/// Where published events go.
pub enum Fanout {
    /// Straight to this process's hub (no `RABBITMQ_URL`: a single instance).
    InProcess(Hub),
    /// To the `vsm.events` exchange, from where every instance's consumer takes them.
    RabbitMq(Publisher),
}

impl Fanout {
    async fn publish(&mut self, events: &[Event]) -> Result<(), AmqpError> {
        match self {
            Fanout::InProcess(hub) => {
                hub.dispatch(events.iter().cloned());
                Ok(())
            }
            Fanout::RabbitMq(publisher) => publisher.publish(events).await,
        }
    }
}

/// Backoff between a relay's failed attempts (to lead, or a step while leading).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);

pub struct Relay {
    repo: Repo,
    database: DatabaseConfig,
    events: EventsConfig,
    fanout: Fanout,
    subscribers: Subscribers,
    shutdown: Shutdown,
}

impl Relay {
    pub fn new(
        repo: Repo,
        database: DatabaseConfig,
        events: EventsConfig,
        fanout: Fanout,
        subscribers: Subscribers,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            subscribers,
            repo,
            database,
            events,
            fanout,
            shutdown,
        }
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.events.relay_poll_ms.max(10))
    }

    /// Runs until shutdown: waits for leadership, leads until the lock connection is lost, and
    /// starts over.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
        while !self.shutdown.is_triggered() {
            match self.lead().await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, "event relay stopped leading; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = self.shutdown.wait() => {}
                    }
                }
            }
        }
    }

    async fn lead(&mut self) -> Result<(), RelayError> {
        let mut conn =
            crate::repo::establish(self.database.url.expose(), self.database.connect_timeout())
                .await?;
        while !try_lock(&mut conn).await? {
            tokio::select! {
                _ = tokio::time::sleep(self.poll()) => {}
                _ = self.shutdown.wait() => return Ok(()),
            }
        }
        diesel::sql_query(format!("LISTEN {NOTIFY_CHANNEL}"))
            .execute(&mut conn)
            .await
            .map_err(RelayError::LockConnection)?;
        tracing::info!("event relay leading");
        METRICS.event_relay_leader.set(1);
        // Only the leader prunes, and only while it leads.
        let _pruner = maintenance::spawn_scoped(
            EventPruner {
                repo: self.repo.clone(),
                retention_hours: self.events.retention_hours,
            },
            self.shutdown.clone(),
        );
        let result = self.relay(&mut conn).await;
        METRICS.event_relay_leader.set(0);
        result
    }

    /// Leads until the lock connection is lost (`Err`) or shutdown (`Ok`).
    async fn relay(&mut self, conn: &mut Conn) -> Result<(), RelayError> {
        let mut notifications = pin!(conn.notifications_stream());
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
        loop {
            let more = match self.step().await {
                Ok(more) => {
                    backoff.reset();
                    more
                }
                Err(e) => {
                    // Still the leader: wait and retry the same events (nothing is marked
                    // published until the fan-out confirmed it).
                    tracing::warn!(error = %e, "event relay step failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = self.shutdown.wait() => return Ok(()),
                    }
                    continue;
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                n = notifications.next() => match n {
                    Some(Ok(_)) => {
                        // Coalesce a burst of commits into one step.
                        while let Some(Some(Ok(_))) = notifications.next().now_or_never() {}
                    }
                    // The lock connection is gone, and with it the lock: stop leading.
                    Some(Err(e)) => return Err(RelayError::LockConnection(e)),
                    None => return Err(RelayError::LockConnectionClosed),
                },
                _ = tokio::time::sleep(self.poll()) => {}
                _ = self.shutdown.wait() => return Ok(()),
            }
        }
    }

    /// Sequences and publishes one batch; `true` when a batch was full (more may be waiting).
    pub async fn step(&mut self) -> Result<bool, RelayError> {
        let mut tx = self.repo.system_tx().await?;
        let store::Sequenced {
            now: sequenced,
            unpublished: pending,
        } = store::sequence(&mut tx, BATCH).await?;
        tx.commit().await?;
        for e in &sequenced {
            METRICS
                .events_recorded
                .topic(topic::metric_label(&e.topic))
                .inc();
        }
        if pending.is_empty() {
            return Ok(sequenced.len() as i64 == BATCH);
        }
        self.fanout.publish(&pending).await?;
        // Subscribers (the policy evaluator, ...) see the events before they count as
        // published, so a crash in between hands them over again.
        for subscriber in self.subscribers.iter() {
            if let Err(source) = subscriber.on_published(&self.repo, &pending).await {
                return Err(RelayError::Subscriber {
                    name: subscriber.name(),
                    source,
                });
            }
        }
        let seqs: Vec<i64> = pending.iter().map(|e| e.seq).collect();
        let mut tx = self.repo.system_tx().await?;
        store::mark_published(&mut tx, &seqs).await?;
        tx.commit().await?;
        let now = Utc::now();
        for e in &pending {
            METRICS
                .events_published
                .topic(topic::metric_label(&e.topic))
                .inc();
            let lag = (now - e.occurred_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
            METRICS.event_relay_lag.observe(lag.max(0.0));
        }
        Ok(sequenced.len() as i64 == BATCH || pending.len() as i64 == BATCH)
    }
}

/// The leader's pruning of published history older than `events.retention_hours`.
struct EventPruner {
    repo: Repo,
    retention_hours: u64,
}

impl Periodic for EventPruner {
    type Error = DbError;

    fn name(&self) -> &'static str {
        "event pruner"
    }

    fn every(&self) -> Duration {
        PRUNE_EVERY
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, DbError>> {
        Box::pin(async move {
            let before = Utc::now()
                - chrono::Duration::hours(i64::try_from(self.retention_hours).unwrap_or(24));
            let n = prune(&self.repo, before).await?;
            if n > 0 {
                tracing::info!(pruned = n, "pruned old events");
            }
            Ok(Pass::Done)
        })
    }
}

/// Deletes published events recorded before `before`, in batches.
pub async fn prune(repo: &Repo, before: chrono::DateTime<Utc>) -> Result<usize, DbError> {
    let mut total = 0;
    loop {
        let mut tx = repo.system_tx().await?;
        let n = store::prune(&mut tx, before, 10_000).await?;
        tx.commit().await?;
        total += n;
        if n < 10_000 {
            return Ok(total);
        }
    }
}

async fn try_lock(conn: &mut Conn) -> Result<bool, RelayError> {
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let l: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(RELAY_LOCK)
        .get_result(conn)
        .await
        .map_err(RelayError::LockConnection)?;
    Ok(l.locked)
}
