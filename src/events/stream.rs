//! One SSE client's stream (CONTRACT §6): `retry:` hint and `connected` frame, an `event: gap`
//! when its `Last-Event-ID` is older than the retained history, the replay of every later event
//! it is entitled to (read through the tenant door, a page at a time), then live events from the
//! hub, heartbeats, and a final `disconnected` frame saying why the stream ended.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::Stream;
use serde_json::json;
use tokio::time::{Interval, Sleep};
use uuid::Uuid;

use super::hub::{Hub, Subscription, TooManyStreams};
use super::store;
use super::topic::Filters;
use crate::config::EventsConfig;
use crate::metrics::METRICS;
use crate::repo::{DbError, Repo};
use crate::shutdown::Shutdown;

/// Replay page size in events; a page also stops at [`store::PAGE_BYTES`] of payload.
const PAGE: i64 = 500;
/// Frames already waiting that are coalesced into one write: a burst costs one syscall per
/// client instead of one per event, and nothing waits for it.
const COALESCE: usize = 64;
/// ...but only small frames: a chunk never grows past this by copying, and a larger frame is
/// written on its own (a zero-copy clone of the frame every client shares). The stream is
/// polled only when the connection can take more, so a client that stops reading stops the
/// replay after at most one page.
const COALESCE_BYTES: usize = 64 * 1024;

/// What a client asked for.
pub struct Request {
    pub tenant: Uuid,
    pub filters: Filters,
    pub last_event_id: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    TooMany(#[from] TooManyStreams),
    #[error(transparent)]
    Db(#[from] DbError),
}

struct State {
    repo: Repo,
    tenant: Uuid,
    filters: Filters,
    subscription: Subscription,
    queue: VecDeque<Bytes>,
    /// `Some(after)` while replaying history.
    replay_after: Option<i64>,
    /// Highest id written to this client: later duplicates are skipped.
    last_sent: i64,
    heartbeat: Interval,
    deadline: Pin<Box<Sleep>>,
    shutdown: Shutdown,
    done: bool,
}

/// Opens a stream. The hub subscription is taken *before* the replay query runs, so every event
/// is either in the replayed history or arrives live afterwards (duplicates are dropped by id).
pub async fn open(
    repo: Repo,
    hub: &Hub,
    cfg: &EventsConfig,
    shutdown: Shutdown,
    req: Request,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + 'static, OpenError> {
    let subscription = hub.subscribe(req.tenant, req.filters.clone())?;
    let mut queue = VecDeque::new();
    queue.push_back(Bytes::from(format!("retry: {}\n\n", cfg.retry_ms)));
    let topics: Vec<String> = req.filters.0.iter().map(|f| f.as_string()).collect();
    queue.push_back(frame(
        "connected",
        &json!({"topics": topics, "heartbeat_seconds": cfg.heartbeat_secs}),
    ));
    if let Some(last) = req.last_event_id {
        let mut tx = repo.tenant_tx(req.tenant).await?;
        let pruned_through = store::pruned_through(&mut tx).await?;
        tx.commit().await?;
        if last < pruned_through {
            queue.push_back(frame(
                "gap",
                &json!({"last_event_id": last, "oldest_available": pruned_through + 1}),
            ));
        }
    }
    let period = Duration::from_secs(cfg.heartbeat_secs.max(1));
    let state = State {
        repo,
        tenant: req.tenant,
        filters: req.filters,
        subscription,
        queue,
        replay_after: req.last_event_id,
        last_sent: req.last_event_id.unwrap_or(0),
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
        deadline: Box::pin(tokio::time::sleep(Duration::from_secs(cfg.max_stream_secs))),
        shutdown,
        done: false,
    };
    Ok(futures_util::stream::unfold(state, next))
}

/// A non-event frame (`connected`, `gap`, `disconnected`): it carries no `id:`, so it never
/// moves the client's Last-Event-ID.
fn frame(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn disconnected(reason: &str) -> Bytes {
    frame("disconnected", &json!({"reason": reason}))
}

async fn next(mut s: State) -> Option<(Result<Bytes, Infallible>, State)> {
    loop {
        if !s.queue.is_empty() {
            return Some((Ok(s.take_queued()), s));
        }
        if s.done {
            return None;
        }
        if let Some(after) = s.replay_after {
            match replay_page(&s.repo, s.tenant, after).await {
                Ok(page) => {
                    // An empty page is the end of history.
                    s.replay_after = page.last().map(|last| last.seq);
                    for event in page {
                        s.offer(&event);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event replay failed");
                    s.finish("error");
                }
            }
            continue;
        }
        tokio::select! {
            event = s.subscription.recv() => match event {
                Some(event) => {
                    s.offer(&event);
                    while s.queue.len() < COALESCE {
                        match s.subscription.try_recv() {
                            Some(event) => s.offer(&event),
                            None => break,
                        }
                    }
                }
                None if s.subscription.overflowed() => s.finish("overflow"),
                None => s.finish("closed"),
            },
            _ = s.heartbeat.tick() => s.queue.push_back(Bytes::from_static(b": heartbeat\n\n")),
            _ = &mut s.deadline => s.finish("max_duration"),
            _ = s.shutdown.wait() => s.finish("shutdown"),
        }
    }
}

async fn replay_page(repo: &Repo, tenant: Uuid, after: i64) -> Result<Vec<super::Event>, DbError> {
    let mut tx = repo.tenant_tx(tenant).await?;
    let page = store::after(&mut tx, after, PAGE, store::PAGE_BYTES).await?;
    tx.commit().await?;
    Ok(page)
}

impl State {
    /// The next chunk to write: the first queued frame, joined with the small frames after it
    /// up to [`COALESCE_BYTES`]. Called only with a non-empty queue.
    fn take_queued(&mut self) -> Bytes {
        let Some(first) = self.queue.pop_front() else {
            return Bytes::new();
        };
        let fits = |len: usize, next: Option<&Bytes>| {
            next.is_some_and(|next| len + next.len() <= COALESCE_BYTES)
        };
        if !fits(first.len(), self.queue.front()) {
            return first;
        }
        let mut chunk = Vec::with_capacity(COALESCE_BYTES.min(first.len() * 4));
        chunk.extend_from_slice(&first);
        while fits(chunk.len(), self.queue.front()) {
            if let Some(frame) = self.queue.pop_front() {
                chunk.extend_from_slice(&frame);
            }
        }
        Bytes::from(chunk)
    }

    fn offer(&mut self, event: &super::Event) {
        if event.seq <= self.last_sent || !self.filters.matches(&event.topic) {
            return;
        }
        // Row-level security already limits replay; live events are routed by tenant in the
        // hub. This guard keeps the promise even if either ever changed.
        if event.tenant_id.is_some_and(|t| t != self.tenant) {
            return;
        }
        self.last_sent = event.seq;
        METRICS
            .events_delivered
            .topic(super::topic::metric_label(&event.topic))
            .inc();
        self.queue.push_back(event.frame.clone());
    }

    fn finish(&mut self, reason: &str) {
        self.queue.push_back(disconnected(reason));
        self.done = true;
    }
}
