//! One SSE client's stream (CONTRACT §6): `retry:` hint and `connected` frame, an `event: gap`
//! when its `Last-Event-ID` is older than the retained history, the replay of every later event
//! it is entitled to (read through the tenant door, a page at a time), then live events from the
//! hub, heartbeats, and a final `disconnected` frame saying why the stream ended.
//!
//! The stream is a small hand-written state machine rather than an `async` block: tens of
//! thousands of them stay open at once, so what each holds while it waits is kept to its hub
//! subscription, one timer (the next heartbeat or the end of its maximum duration, whichever
//! is first) and a few words; the replay state (a database future) is boxed and exists only
//! while replaying. It is woken only when the hub queued an event matching its filter, its
//! timer fires, or the process shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::Stream;
use futures_util::future::LocalBoxFuture;
use serde_json::json;
use tokio::time::{Instant, Sleep};
use uuid::Uuid;

use super::hub::{Hub, Live, SubscribeError, Subscription};
use super::store;
use super::topic::Filters;
use crate::config::EventsConfig;
use crate::metrics::METRICS;
use crate::repo::{DbError, Repo};

/// Replay page size in events; a page also stops at [`store::PAGE_BYTES`] of payload.
const PAGE: i64 = 500;
/// Frames already waiting that are joined into one chunk: a burst costs one syscall per client
/// instead of one per event, and nothing waits for it.
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
    Subscribe(#[from] SubscribeError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Opens a stream. The hub subscription is taken *before* the replay query runs, so every event
/// is either in the replayed history or arrives live afterwards (duplicates are dropped by id).
pub async fn open(
    repo: Repo,
    hub: &Hub,
    cfg: &EventsConfig,
    req: Request,
) -> Result<EventStream, OpenError> {
    let subscription = hub.subscribe(req.tenant, req.filters)?;
    let mut queue = VecDeque::with_capacity(3);
    queue.push_back(Bytes::from(format!("retry: {}\n\n", cfg.retry_ms)));
    let topics: Vec<String> = subscription
        .filters()
        .0
        .iter()
        .map(|f| f.as_string())
        .collect();
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
    let now = Instant::now();
    let period = Duration::from_secs(cfg.heartbeat_secs.max(1));
    let deadline = after(now, Duration::from_secs(cfg.max_stream_secs));
    let next_heartbeat = after(now, period);
    Ok(EventStream {
        subscription,
        queue,
        replay: req.last_event_id.map(|after| {
            Box::new(Replay {
                repo,
                after,
                page: None,
            })
        }),
        last_sent: req.last_event_id.unwrap_or(0),
        timer: Box::pin(tokio::time::sleep_until(next_heartbeat.min(deadline))),
        next_heartbeat,
        deadline,
        period,
        done: false,
    })
}

/// One client's stream of SSE frames (see the module documentation).
pub struct EventStream {
    subscription: Subscription,
    /// Frames to write before any live event: the opening frames, a replayed page, a
    /// heartbeat, the final `disconnected`.
    queue: VecDeque<Bytes>,
    /// `Some` while replaying history.
    replay: Option<Box<Replay>>,
    /// Highest id written to this client: later duplicates are skipped.
    last_sent: i64,
    /// Fires at the next heartbeat or at the deadline, whichever is first.
    timer: Pin<Box<Sleep>>,
    next_heartbeat: Instant,
    deadline: Instant,
    period: Duration,
    done: bool,
}

/// Where a replay is: the last id read, and the page being read.
struct Replay {
    repo: Repo,
    after: i64,
    page: Option<LocalBoxFuture<'static, Result<Vec<super::Event>, DbError>>>,
}

/// `at + d`, or about thirty years from now if that is past what an `Instant` can hold (a
/// configured duration need not be sane).
fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(86400 * 365 * 30))
}

/// A non-event frame (`connected`, `gap`, `disconnected`): it carries no `id:`, so it never
/// moves the client's Last-Event-ID.
fn frame(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn disconnected(reason: &str) -> Bytes {
    frame("disconnected", &json!({"reason": reason}))
}

async fn replay_page(repo: Repo, tenant: Uuid, after: i64) -> Result<Vec<super::Event>, DbError> {
    let mut tx = repo.tenant_tx(tenant).await?;
    let page = store::after(&mut tx, after, PAGE, store::PAGE_BYTES).await?;
    tx.commit().await?;
    Ok(page)
}

/// Frames joined into one write: at most [`COALESCE`] of them and, past the first, at most
/// [`COALESCE_BYTES`]. A lone frame is passed on as it is (the shared frame, no copy).
#[derive(Default)]
struct Chunk {
    first: Option<Bytes>,
    /// The first frame and those after it, once there is more than one.
    joined: Vec<u8>,
    frames: usize,
}

impl Chunk {
    /// Adds `frame` if it fits (the first always does); `false` once the chunk is full.
    fn push(&mut self, frame: &Bytes) -> bool {
        if self.frames >= COALESCE {
            return false;
        }
        match &self.first {
            None => self.first = Some(frame.clone()),
            Some(head) => {
                let len = if self.joined.is_empty() {
                    head.len()
                } else {
                    self.joined.len()
                };
                if len + frame.len() > COALESCE_BYTES {
                    return false;
                }
                if self.joined.is_empty() {
                    self.joined.reserve(COALESCE_BYTES.min(len * 4));
                    self.joined.extend_from_slice(head);
                }
                self.joined.extend_from_slice(frame);
            }
        }
        self.frames += 1;
        true
    }

    /// What to write, if any frame was added.
    fn into_bytes(self) -> Option<Bytes> {
        if self.joined.is_empty() {
            self.first
        } else {
            Some(Bytes::from(self.joined))
        }
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let s = self.get_mut();
        loop {
            if !s.queue.is_empty() {
                return Poll::Ready(Some(Ok(s.take_queued())));
            }
            if s.done {
                return Poll::Ready(None);
            }
            if s.replay.is_some() {
                match s.poll_replay(cx) {
                    Poll::Ready(()) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if let Poll::Ready(chunk) = s.poll_live(cx) {
                match chunk {
                    Some(chunk) => return Poll::Ready(Some(Ok(chunk))),
                    None => continue,
                }
            }
            // Nothing live: the timer decides.
            if s.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= s.deadline {
                s.finish("max_duration");
                continue;
            }
            if now >= s.next_heartbeat {
                s.queue.push_back(Bytes::from_static(b": heartbeat\n\n"));
                s.next_heartbeat = after(now, s.period);
            }
            let at = s.next_heartbeat.min(s.deadline);
            s.timer.as_mut().reset(at);
        }
    }
}

impl EventStream {
    /// Reads the next replay page into the queue; the end of history ends the replay.
    fn poll_replay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(replay) = self.replay.as_mut() else {
            return Poll::Ready(());
        };
        let tenant = self.subscription.tenant();
        let page = replay.page.get_or_insert_with(|| {
            Box::pin(replay_page(replay.repo.clone(), tenant, replay.after))
        });
        let result = match page.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        replay.page = None;
        match result {
            // An empty page is the end of history.
            Ok(page) => match page.last() {
                Some(last) => {
                    replay.after = last.seq;
                    for event in &page {
                        if let Some(frame) = self.accept(event) {
                            METRICS
                                .events_delivered
                                .topic(super::topic::metric_label(&event.topic))
                                .inc();
                            self.queue.push_back(frame);
                        }
                    }
                }
                None => self.replay = None,
            },
            Err(e) => {
                tracing::warn!(error = %e, "event replay failed");
                self.finish("error");
            }
        }
        Poll::Ready(())
    }

    /// Live events the hub queued for this stream, joined into one chunk (`Some`); `None`
    /// when the stream ended (its final frame is queued); `Pending` with nothing waiting.
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut chunk = Chunk::default();
        let (tenant, mut last_sent) = (self.subscription.tenant(), self.last_sent);
        let live = self.subscription.poll_take(cx, |event| {
            if event.seq <= last_sent || event.tenant_id.is_some_and(|t| t != tenant) {
                // Already replayed; or (never, the hub routes by tenant) another tenant's.
                return true;
            }
            if !chunk.push(&event.frame) {
                return false;
            }
            last_sent = event.seq;
            true
        });
        self.last_sent = last_sent;
        match live {
            Poll::Pending => Poll::Pending,
            // `None` when every event taken was a duplicate: look again.
            Poll::Ready(Live::Taken) => Poll::Ready(chunk.into_bytes()),
            Poll::Ready(Live::Overflowed) => {
                self.finish("overflow");
                Poll::Ready(None)
            }
            Poll::Ready(Live::Shutdown) => {
                self.finish("shutdown");
                Poll::Ready(None)
            }
        }
    }

    /// The frame of a replayed event this client is to get, if any.
    fn accept(&mut self, event: &super::Event) -> Option<Bytes> {
        if event.seq <= self.last_sent || !self.subscription.filters().matches(&event.topic) {
            return None;
        }
        // Row-level security already limits replay; live events are routed by tenant in the
        // hub. This guard keeps the promise even if either ever changed.
        if event
            .tenant_id
            .is_some_and(|t| t != self.subscription.tenant())
        {
            return None;
        }
        self.last_sent = event.seq;
        Some(event.frame.clone())
    }

    /// The next chunk to write: the queued frames that fit in one [`Chunk`]. Called only with a
    /// non-empty queue.
    fn take_queued(&mut self) -> Bytes {
        let mut chunk = Chunk::default();
        while let Some(frame) = self.queue.front() {
            if !chunk.push(frame) {
                break;
            }
            self.queue.pop_front();
        }
        if self.queue.is_empty() {
            // Rarely used once live: hold no allocation while waiting.
            self.queue = VecDeque::new();
        }
        chunk.into_bytes().unwrap_or_default()
    }

    fn finish(&mut self, reason: &str) {
        self.queue.push_back(disconnected(reason));
        self.done = true;
    }
}
