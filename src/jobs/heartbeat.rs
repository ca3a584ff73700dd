//! Node liveness, which the rescuer reads to tell a dead node from a busy one.
//!
//! A node proves it is alive two ways, both on **one dedicated connection** of its own (not
//! from the pool, so jobs holding every pooled connection cannot silence it):
//!
//! - every `jobs.heartbeat_interval_secs` it refreshes its `job_nodes` row (`heartbeat_at`);
//! - the session holds the node's advisory lock (`storage::try_hold_node_lock`), a signal the
//!   database itself keeps: it is released the moment the session ends — the process was
//!   killed (the kernel closes its socket), or the server closed the session.
//!
//! The rescuer treats a node as dead only when its heartbeat is older than
//! `jobs.rescue_after_secs` **and** its lock is free. So a node whose heartbeat statements
//! stall (a slow database, a blocked row) keeps its jobs while its session lives, and a node
//! whose heartbeat connection drops while the process lives has the whole rescue window to
//! reconnect (with backoff from 200 ms, capped at the heartbeat interval), retake the lock
//! and beat again.
//!
//! A host that vanishes without closing its socket would leave the server holding the lock
//! until TCP keepalive noticed (hours): the session therefore sets `idle_session_timeout` to
//! the rescue window, so the server itself ends a session that has sent nothing for that
//! long (an alive node sends a heartbeat every interval, far more often), and
//! `statement_timeout` so a stuck beat fails and the session is reopened.
//!
//! The heartbeat runs until the engine has finished its graceful stop (the executor aborts it
//! just before handing unfinished jobs back), so a draining node is not rescued either.

use std::time::Duration;

use super::storage;
use crate::backoff::Backoff;
use crate::repo::{DbError, Repo, SystemConn};

/// `application_name` of the heartbeat session (`pg_stat_activity` shows whose it is).
pub const APPLICATION_NAME: &str = "vsm job heartbeat";

/// One heartbeat through the pool (the node's first, at start, before its own connection).
pub async fn beat(repo: &Repo, node: &str, queues: &[String]) -> Result<(), DbError> {
    let mut tx = repo.system_tx().await?;
    storage::heartbeat(&mut tx, node, queues).await?;
    tx.commit().await
}

/// The heartbeat of one node.
pub struct Heartbeat {
    pub repo: Repo,
    pub node: String,
    pub queues: Vec<String>,
    pub every: Duration,
    /// The rescue window: the server closes the session after this long without a beat.
    pub rescue_after: Duration,
}

impl Heartbeat {
    /// Beats until the task is aborted, reopening the connection with backoff when it fails.
    pub async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(200), self.every);
        loop {
            let why = self.session(&mut backoff).await;
            tracing::warn!(node = %self.node, error = %why, "heartbeat connection lost; reconnecting");
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// One session: connect, then hold the lock and beat every interval until a statement
    /// fails; returns why.
    async fn session(&self, backoff: &mut Backoff) -> DbError {
        let mut conn = match self.connect().await {
            Ok(conn) => conn,
            Err(e) => return e,
        };
        let mut locked = false;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !locked {
                // Until the lock is ours (an old session of ours may linger on the server
                // for a moment) the fresh heartbeat alone keeps the node alive.
                locked = match storage::try_hold_node_lock(&mut conn, &self.node).await {
                    Ok(locked) => locked,
                    Err(e) => return e,
                };
                if !locked {
                    tracing::warn!(node = %self.node, "another session holds this node's liveness lock");
                }
            }
            if let Err(e) = storage::heartbeat(&mut conn, &self.node, &self.queues).await {
                return e;
            }
            backoff.reset();
        }
    }

    async fn connect(&self) -> Result<SystemConn, DbError> {
        let window_ms = self.rescue_after.as_millis().to_string();
        let statement_ms = (self.rescue_after / 2).as_millis().max(1000).to_string();
        self.repo
            .dedicated_system_conn(&[
                ("application_name", APPLICATION_NAME.to_owned()),
                ("idle_session_timeout", window_ms),
                ("statement_timeout", statement_ms),
            ])
            .await
    }
}
