//! The local hub: this instance's SSE subscribers, by tenant. Events reach it from the relay
//! (in-process mode) or from this instance's RabbitMQ consumer, and it hands each one to the
//! matching subscribers' bounded buffers. A subscriber whose buffer is full is dropped and told
//! why (`overflow`): one slow client never holds up the others or grows memory. A buffer is
//! bounded twice: in events and in bytes of frames (a few hundred large events are as bad as a
//! million small ones).
//!
//! Fan-out is per thread, not per client. Subscribers are grouped by the thread that opened
//! them (an actix worker, which also polls their streams). [`Hub::dispatch`] hands each batch
//! of events to each group's distributor task once (one cross-thread wake-up per worker per
//! batch); the distributor, running on that worker, queues every event only for the streams
//! whose tenant and filters match, and wakes only those, locally. A stream with nothing new for
//! its filter is not woken at all. Events travel as one shared [`SharedEvent`] (its frame
//! rendered once), so a queued event costs a pointer per subscriber.
//!
//! A distributor's backlog is bounded too, at `STALLED` (16) subscribers' buffers: a worker that
//! far behind is stalled, not busy, and it lets go of every subscriber it serves (each ends
//! with `overflow` and resumes by Last-Event-ID from the database) instead of holding every
//! event since it stalled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::topic::{self, Filters};
use super::{Event, SharedEvent};
use crate::metrics::METRICS;
use crate::shutdown::Shutdown;

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// One group per thread that has open streams.
    groups: Mutex<Vec<Link>>,
    /// Open streams per tenant, for the connection cap.
    counts: Mutex<HashMap<Uuid, usize>>,
    max_per_tenant: usize,
    limits: Limits,
    /// Ends every stream with `shutdown` when triggered (through the distributors).
    shutdown: Shutdown,
    /// Highest id handed out so far: events at or below it are duplicates (a republish after a
    /// relay failover, or a catch-up overlapping live delivery).
    last_seq: AtomicI64,
}

#[derive(Clone, Copy)]
struct Limits {
    /// Events a subscriber may have waiting.
    buffer: usize,
    /// Bytes of frames a subscriber may have waiting.
    buffer_bytes: usize,
}

/// A group's distributor may have this many subscribers' buffers of events waiting (in events
/// and in bytes) before its worker counts as stalled. Well above one buffer: a worker busy
/// writing to thousands of clients is briefly behind, and cutting them all off for that would
/// send them all back to replay from the database at once.
const STALLED: usize = 16;

/// The hub's end of one group: where its distributor takes batches from.
struct Link {
    thread: ThreadId,
    group: Arc<Group>,
    tx: mpsc::UnboundedSender<Batch>,
}

impl Link {
    /// Sends `batch` to the group's distributor unless that would put it over `limits`, in
    /// which case the group lets go of all its subscribers instead. `false` once the
    /// distributor is gone.
    fn send(&self, batch: &Batch, limits: Limits) -> bool {
        if self.group.backlog.would_exceed(batch, limits) {
            self.group.overflow();
            return !self.tx.is_closed();
        }
        self.group.backlog.add(batch);
        self.tx.send(batch.clone()).is_ok()
    }
}

/// Events (and bytes of their frames) handed to a group's distributor and not yet offered.
#[derive(Default)]
struct Backlog {
    events: AtomicUsize,
    bytes: AtomicUsize,
}

impl Backlog {
    fn would_exceed(&self, batch: &Batch, limits: Limits) -> bool {
        let (waiting, waiting_bytes) = (
            self.events.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        );
        // As for a subscriber's buffer: whatever is waiting, one batch always fits.
        waiting > 0
            && (waiting + batch.events.len() > limits.buffer.saturating_mul(STALLED)
                || waiting_bytes + batch.bytes > limits.buffer_bytes.saturating_mul(STALLED))
    }

    fn add(&self, batch: &Batch) {
        self.events.fetch_add(batch.events.len(), Ordering::AcqRel);
        self.bytes.fetch_add(batch.bytes, Ordering::AcqRel);
    }

    fn sub(&self, batch: &Batch) {
        self.events.fetch_sub(batch.events.len(), Ordering::AcqRel);
        self.bytes.fetch_sub(batch.bytes, Ordering::AcqRel);
    }
}

/// Events in id order, shared by every group, with the bytes of their frames (counted once,
/// as the hub dispatches them).
#[derive(Clone)]
struct Batch {
    events: Arc<[SharedEvent]>,
    bytes: usize,
}

/// The subscribers opened on one thread, by tenant.
#[derive(Default)]
struct Group {
    tenants: Mutex<HashMap<Uuid, Vec<Arc<Slot>>>>,
    backlog: Backlog,
}

/// One subscriber, as the distributor sees it. Only its own distributor and its own stream
/// (normally both on the same thread) take its lock.
struct Slot {
    filters: Filters,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// Events waiting to be written (empty, it holds no allocation).
    queue: VecDeque<SharedEvent>,
    /// Bytes of the frames in `queue`.
    bytes: usize,
    /// The stream's waker while it waits for events.
    waker: Option<Waker>,
    /// The hub let go of this subscriber because its buffer was full.
    overflowed: bool,
    /// The process is shutting down.
    shutdown: bool,
}

impl SlotState {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Refused subscription: the tenant already has the maximum number of streams open.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many event streams open for this tenant (limit {0})")]
    TooMany(usize),
    /// Subscribing happens inside a Tokio runtime (a request handler); anything else is a bug.
    #[error("event streams can only be opened inside a Tokio runtime")]
    NoRuntime,
}

/// What [`Subscription::poll_take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Live {
    /// At least one event was handed over.
    Taken,
    /// Nothing left, and the hub let go of this subscriber because its buffer was full.
    Overflowed,
    /// The process is shutting down.
    Shutdown,
}

/// One SSE client's end: its events, and whether the hub cut it off for overflowing.
pub struct Subscription {
    slot: Arc<Slot>,
    group: Arc<Group>,
    hub: Hub,
    tenant: Uuid,
}

impl Subscription {
    pub fn tenant(&self) -> Uuid {
        self.tenant
    }

    pub fn filters(&self) -> &Filters {
        &self.slot.filters
    }

    pub fn overflowed(&self) -> bool {
        lock(&self.slot.state).overflowed
    }

    /// Hands the waiting events, oldest first, to `take` for as long as it accepts them (an
    /// event it refuses stays first in line); `take` must accept the first one. With nothing
    /// waiting, it registers the task to be woken by the next matching event.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&SharedEvent) -> bool,
    ) -> Poll<Live> {
        let mut s = lock(&self.slot.state);
        if s.shutdown {
            return Poll::Ready(Live::Shutdown);
        }
        let mut taken = false;
        while let Some(event) = s.queue.front() {
            if !take(event) {
                break;
            }
            s.bytes = s.bytes.saturating_sub(event.frame.len());
            s.queue.pop_front();
            taken = true;
        }
        if taken {
            if s.queue.is_empty() && s.queue.capacity() > SHRINK_ABOVE {
                // A burst is over: give its room back rather than keep it for the stream's life.
                s.queue = VecDeque::new();
            }
            return Poll::Ready(Live::Taken);
        }
        if s.overflowed {
            return Poll::Ready(Live::Overflowed);
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The next event; `None` once the hub has let go of this subscriber (see `overflowed`)
    /// or the process is shutting down.
    pub async fn recv(&mut self) -> Option<SharedEvent> {
        std::future::poll_fn(|cx| {
            let mut got = None;
            self.poll_take(cx, |e| {
                let first = got.is_none();
                if first {
                    got = Some(e.clone());
                }
                first
            })
            .map(|_| got.take())
        })
        .await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<SharedEvent> {
        let mut s = lock(&self.slot.state);
        let event = s.queue.pop_front()?;
        s.bytes = s.bytes.saturating_sub(event.frame.len());
        Some(event)
    }
}

/// Queue capacity (events) a subscriber keeps after it has caught up.
const SHRINK_ABOVE: usize = 16;

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self);
    }
}

impl Hub {
    /// A hub with the default byte bound per subscriber (`events.client_buffer_bytes`) and a
    /// shutdown of its own.
    pub fn new(max_per_tenant: usize, buffer: usize) -> Hub {
        let bytes = crate::config::EventsConfig::default().client_buffer_bytes;
        Hub::with_limits(max_per_tenant, buffer, bytes, Shutdown::new())
    }

    /// `buffer` events and `buffer_bytes` bytes of frames may wait per subscriber; one event is
    /// always let through, however large, so a client can make progress. When `shutdown` is
    /// triggered every subscriber learns it (`Live::Shutdown`).
    pub fn with_limits(
        max_per_tenant: usize,
        buffer: usize,
        buffer_bytes: usize,
        shutdown: Shutdown,
    ) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                groups: Mutex::new(Vec::new()),
                counts: Mutex::new(HashMap::new()),
                max_per_tenant,
                limits: Limits {
                    buffer: buffer.max(1),
                    buffer_bytes,
                },
                shutdown,
                last_seq: AtomicI64::new(0),
            }),
        }
    }

    /// Registers a subscriber for `tenant`'s events matching `filters`, in the group of the
    /// calling thread (started on first use, with its distributor on the current runtime).
    pub fn subscribe(
        &self,
        tenant: Uuid,
        filters: Filters,
    ) -> Result<Subscription, SubscribeError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SubscribeError::NoRuntime)?;
        {
            let mut counts = lock(&self.inner.counts);
            let n = counts.entry(tenant).or_insert(0);
            if *n >= self.inner.max_per_tenant {
                return Err(SubscribeError::TooMany(self.inner.max_per_tenant));
            }
            *n += 1;
        }
        let slot = Arc::new(Slot {
            filters,
            state: Mutex::new(SlotState::default()),
        });
        let thread = std::thread::current().id();
        let group = {
            let mut groups = lock(&self.inner.groups);
            let group = match groups.iter().find(|l| l.thread == thread) {
                Some(link) => link.group.clone(),
                None => {
                    let group = Arc::new(Group::default());
                    let (tx, rx) = mpsc::unbounded_channel();
                    runtime.spawn(distribute(
                        group.clone(),
                        rx,
                        self.inner.limits,
                        self.inner.shutdown.clone(),
                    ));
                    groups.push(Link {
                        thread,
                        group: group.clone(),
                        tx,
                    });
                    group
                }
            };
            lock(&group.tenants)
                .entry(tenant)
                .or_default()
                .push(slot.clone());
            group
        };
        // After joining the group: a shutdown from now on reaches this slot through the
        // distributor, an earlier one is seen here.
        if self.inner.shutdown.is_triggered() {
            lock(&slot.state).shutdown = true;
        }
        METRICS.sse_connections.inc();
        Ok(Subscription {
            slot,
            group,
            hub: self.clone(),
            tenant,
        })
    }

    fn remove(&self, sub: &Subscription) {
        {
            let mut groups = lock(&self.inner.groups);
            let mut tenants = lock(&sub.group.tenants);
            if let Some(slots) = tenants.get_mut(&sub.tenant) {
                slots.retain(|s| !Arc::ptr_eq(s, &sub.slot));
                if slots.is_empty() {
                    tenants.remove(&sub.tenant);
                }
            }
            if tenants.is_empty() {
                // Dropping the link's sender ends the group's distributor.
                groups.retain(|l| !Arc::ptr_eq(&l.group, &sub.group));
            }
        }
        let mut counts = lock(&self.inner.counts);
        if let Some(n) = counts.get_mut(&sub.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&sub.tenant);
            }
        }
        METRICS.sse_connections.dec();
    }

    /// Hands events (in id order) to their subscribers, skipping ids already handed out.
    pub fn dispatch(&self, events: impl IntoIterator<Item = Event>) {
        // Under the groups lock, so concurrent dispatchers cannot reorder batches.
        let mut groups = lock(&self.inner.groups);
        let batch: Vec<SharedEvent> = events
            .into_iter()
            .filter(|e| self.inner.last_seq.fetch_max(e.seq, Ordering::AcqRel) < e.seq)
            .map(Arc::new)
            .collect();
        if batch.is_empty() {
            return;
        }
        let batch = Batch {
            bytes: batch.iter().map(|e| e.frame.len()).sum(),
            events: batch.into(),
        };
        // A group whose distributor is gone (its runtime ended) is forgotten.
        groups.retain(|l| l.send(&batch, self.inner.limits));
    }

    /// The highest event id handed out (the consumer's catch-up point after a reconnect).
    pub fn last_seq(&self) -> i64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }

    /// Starts de-duplication at `seq`: events up to it are taken as already delivered (set at
    /// start-up to the current head, so a new instance does not replay history to live clients).
    pub fn skip_through(&self, seq: i64) {
        self.inner.last_seq.fetch_max(seq, Ordering::AcqRel);
    }
}

/// A group's distributor: runs on the runtime of the thread whose streams it serves, so the
/// wake-ups it makes are local. Ends when the hub drops the group's link.
async fn distribute(
    group: Arc<Group>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    limits: Limits,
    shutdown: Shutdown,
) {
    let mut stopping = std::pin::pin!(shutdown.wait());
    let mut stopped = false;
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    group.offer(&batch.events, limits);
                    group.backlog.sub(&batch);
                }
                None => return,
            },
            () = &mut stopping, if !stopped => {
                stopped = true;
                group.shut_down();
            }
        }
    }
}

impl Group {
    fn offer(&self, batch: &[SharedEvent], limits: Limits) {
        let mut tenants = lock(&self.tenants);
        for event in batch {
            let mut queued = 0;
            match event.tenant_id {
                Some(tenant) => {
                    if let Some(slots) = tenants.get_mut(&tenant) {
                        queued += offer(slots, event, limits);
                        if slots.is_empty() {
                            tenants.remove(&tenant);
                        }
                    }
                }
                None => {
                    for slots in tenants.values_mut() {
                        queued += offer(slots, event, limits);
                    }
                    tenants.retain(|_, slots| !slots.is_empty());
                }
            }
            if queued > 0 {
                METRICS
                    .events_delivered
                    .topic(topic::metric_label(&event.topic))
                    .inc_by(queued);
            }
        }
    }

    /// Lets go of every subscriber: each drains what it has, then ends with `overflow`.
    fn overflow(&self) {
        for slot in lock(&self.tenants).drain().flat_map(|(_, slots)| slots) {
            let mut s = lock(&slot.state);
            s.overflowed = true;
            s.wake();
        }
    }

    fn shut_down(&self) {
        for slot in lock(&self.tenants).values().flatten() {
            let mut s = lock(&slot.state);
            s.shutdown = true;
            s.wake();
        }
    }
}

/// Queues `event` for each of `slots` whose filters match and wakes them; a slot whose buffer
/// is full is marked overflowed and let go (its stream drains what it has, then ends with
/// `overflow` and the client resumes by Last-Event-ID). Returns how many queued it.
fn offer(slots: &mut Vec<Arc<Slot>>, event: &SharedEvent, limits: Limits) -> u64 {
    let size = event.frame.len();
    let mut queued = 0;
    slots.retain(|slot| {
        if !slot.filters.matches(&event.topic) {
            return true;
        }
        let mut s = lock(&slot.state);
        if s.queue.len() >= limits.buffer || (s.bytes > 0 && s.bytes + size > limits.buffer_bytes) {
            s.overflowed = true;
            s.wake();
            return false;
        }
        s.queue.push_back(event.clone());
        s.bytes += size;
        s.wake();
        queued += 1;
        true
    });
    queued
}

// A poisoned lock only means another thread panicked mid-update of a plain map; the data is
// still consistent enough to keep serving, so recover it rather than cascade the panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn ev(seq: i64, tenant: Option<Uuid>, topic: &str) -> Event {
        Event::new(seq, tenant, topic.into(), json!({"n": seq}), Utc::now())
    }

    /// Delivery is asynchronous (through the group's distributor): a marker event every
    /// subscriber takes shows that nothing else was queued before it.
    async fn next_is_marker(s: &mut Subscription, marker: i64) {
        assert_eq!(s.recv().await.map(|e| e.seq), Some(marker));
    }

    #[tokio::test]
    async fn routes_by_tenant_and_filter_and_drops_duplicates() {
        let hub = Hub::new(10, 10);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut sa = hub
            .subscribe(a, Filters::parse("episode.*").unwrap())
            .unwrap();
        let mut sb = hub.subscribe(b, Filters::default()).unwrap();
        hub.dispatch([
            ev(1, Some(a), "episode.created"),
            ev(2, Some(a), "policy.created"),
            ev(3, Some(b), "episode.created"),
            ev(3, Some(b), "episode.created"),
            ev(4, None, "system.health"),
            ev(2, Some(a), "episode.created"),
        ]);
        hub.dispatch([ev(5, None, "episode.marker")]);
        assert_eq!(sa.recv().await.unwrap().seq, 1);
        next_is_marker(&mut sa, 5).await;
        assert_eq!(sb.recv().await.unwrap().seq, 3);
        assert_eq!(sb.recv().await.unwrap().seq, 4);
        next_is_marker(&mut sb, 5).await;
        assert!(sa.try_recv().is_none() && sb.try_recv().is_none());
    }

    #[tokio::test]
    async fn caps_streams_per_tenant_and_frees_them() {
        let hub = Hub::new(2, 10);
        let t = Uuid::now_v7();
        let s1 = hub.subscribe(t, Filters::default()).unwrap();
        let _s2 = hub.subscribe(t, Filters::default()).unwrap();
        assert!(matches!(
            hub.subscribe(t, Filters::default()),
            Err(SubscribeError::TooMany(2))
        ));
        assert!(hub.subscribe(Uuid::now_v7(), Filters::default()).is_ok());
        drop(s1);
        assert!(hub.subscribe(t, Filters::default()).is_ok());
    }

    #[tokio::test]
    async fn a_buffer_full_of_bytes_cuts_the_subscriber_off() {
        let frame_len = ev(1, None, "a.b").frame.len();
        // Room for three frames by bytes, a hundred by count.
        let hub = Hub::with_limits(10, 100, frame_len * 3, Shutdown::new());
        let t = Uuid::now_v7();
        let mut slow = hub.subscribe(t, Filters::default()).unwrap();
        let mut fast = hub.subscribe(t, Filters::default()).unwrap();
        for i in 1..=5 {
            hub.dispatch([ev(i, Some(t), "a.b")]);
            assert_eq!(fast.recv().await.unwrap().seq, i);
        }
        assert!(slow.overflowed() && !fast.overflowed());
        for i in 1..=3 {
            assert_eq!(slow.recv().await.unwrap().seq, i);
        }
        assert!(slow.recv().await.is_none());
    }

    #[tokio::test]
    async fn one_event_larger_than_the_byte_bound_still_goes_through() {
        let hub = Hub::with_limits(10, 100, 1, Shutdown::new());
        let t = Uuid::now_v7();
        let mut s = hub.subscribe(t, Filters::default()).unwrap();
        hub.dispatch([ev(1, Some(t), "a.b")]);
        assert_eq!(s.recv().await.unwrap().seq, 1);
        hub.dispatch([ev(2, Some(t), "a.b")]);
        assert_eq!(s.recv().await.unwrap().seq, 2);
        assert!(!s.overflowed());
    }

    #[tokio::test]
    async fn a_full_buffer_cuts_the_subscriber_off() {
        let hub = Hub::new(10, 2);
        let t = Uuid::now_v7();
        let mut slow = hub.subscribe(t, Filters::default()).unwrap();
        hub.dispatch((1..=5).map(|i| ev(i, Some(t), "a.b")));
        assert_eq!(slow.recv().await.unwrap().seq, 1);
        assert!(slow.overflowed());
        assert_eq!(slow.recv().await.unwrap().seq, 2);
        assert!(slow.recv().await.is_none());
    }

    #[tokio::test]
    async fn subscribers_on_other_threads_get_their_events_in_order() {
        let hub = Hub::new(100, 1000);
        let t = Uuid::now_v7();
        let topics = ["a.x", "b.x", "b.y", "c.x"];
        let want = move |f: &str| -> Vec<i64> {
            let f = Filters::parse(f).unwrap();
            (1..=400)
                .filter(|s| f.matches(topics[*s as usize % 4]))
                .collect()
        };
        // Each subscriber on a thread (and runtime) of its own: one group each.
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut threads = Vec::new();
        for filter in ["a.*", "b.x", ""] {
            let (hub, ready_tx, expected) = (hub.clone(), ready_tx.clone(), want(filter).len());
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut s = hub.subscribe(t, Filters::parse(filter).unwrap()).unwrap();
                    ready_tx.send(()).unwrap();
                    let mut got = Vec::new();
                    while got.len() < expected {
                        got.push(s.recv().await.unwrap().seq);
                    }
                    got
                })
            }));
        }
        for _ in 0..3 {
            ready_rx.recv().await.unwrap();
        }
        assert_eq!(lock(&hub.inner.groups).len(), 3);
        for seq in 1..=400 {
            hub.dispatch([ev(seq, Some(t), topics[seq as usize % 4])]);
        }
        let got: Vec<Vec<i64>> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got, vec![want("a.*"), want("b.x"), want("")]);
        // The last stream gone, its group and its distributor go too.
        assert!(lock(&hub.inner.groups).is_empty());
    }

    /// Dispatches `events` one-event batches to tenant `t` while one subscriber's worker is
    /// stalled (its thread blocked, its distributor with it), then resumes that worker. A live
    /// subscriber on this thread must get every event meanwhile. Returns the stalled group's
    /// backlog (events, bytes) at its height, and what its subscriber then saw: its first
    /// event, and whether it was cut off.
    async fn stall_a_worker(
        hub: &Hub,
        t: Uuid,
        events: i64,
    ) -> ((usize, usize), Option<i64>, bool) {
        let mut live = hub.subscribe(t, Filters::default()).unwrap();
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
        let stalled = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut s = hub.subscribe(t, Filters::default()).unwrap();
                    subscribed_tx.send(()).unwrap();
                    // Blocks the thread, and with it the group's distributor.
                    resume_rx.recv().unwrap();
                    let first = s.recv().await.map(|e| e.seq);
                    (first, s.overflowed())
                })
            })
        };
        subscribed_rx.recv().unwrap();
        for seq in 1..=events {
            hub.dispatch([ev(seq, Some(t), "a.b")]);
            assert_eq!(live.recv().await.unwrap().seq, seq);
        }
        let me = std::thread::current().id();
        let backlog = lock(&hub.inner.groups)
            .iter()
            .find(|l| l.thread != me)
            .map(|l| {
                let b = &l.group.backlog;
                (
                    b.events.load(Ordering::Acquire),
                    b.bytes.load(Ordering::Acquire),
                )
            })
            .expect("the stalled group");
        resume_tx.send(()).unwrap();
        let (first, overflowed) = stalled.join().unwrap();
        assert!(!live.overflowed());
        (backlog, first, overflowed)
    }

    /// A worker that stops running cannot make the hub hold every event from then on: past
    /// [`STALLED`] buffers of backlog (in events), its subscribers are let go.
    #[tokio::test]
    async fn a_stalled_worker_lets_go_of_its_subscribers_instead_of_queueing_without_bound() {
        let hub = Hub::with_limits(10, 4, 1 << 20, Shutdown::new());
        let bound = 4 * STALLED;
        let ((events, _), first, overflowed) =
            stall_a_worker(&hub, Uuid::now_v7(), bound as i64 + 10).await;
        assert_eq!(events, bound, "the stalled group's backlog is bounded");
        assert_eq!(first, None, "let go before anything reached it");
        assert!(overflowed);
    }

    /// The same bound in bytes of frames: a tenant's large events cannot make a stalled
    /// worker's backlog hold more than [`STALLED`] buffers' worth of bytes either.
    #[tokio::test]
    async fn a_stalled_workers_backlog_is_bounded_in_bytes_too() {
        let frame = ev(10, None, "a.b").frame.len();
        let bound = 2 * frame * STALLED;
        let hub = Hub::with_limits(10, 1000, 2 * frame, Shutdown::new());
        let dispatched = 2 * STALLED as i64 + 10;
        let ((events, bytes), first, overflowed) =
            stall_a_worker(&hub, Uuid::now_v7(), dispatched).await;
        assert!(bytes <= bound, "{bytes} bytes waiting, bound {bound}");
        assert!(events < dispatched as usize, "some were refused");
        assert_eq!(first, None);
        assert!(overflowed);
    }

    #[tokio::test]
    async fn shutdown_reaches_every_subscriber_once_triggered() {
        let shutdown = Shutdown::new();
        let hub = Hub::with_limits(10, 10, 1 << 20, shutdown.clone());
        let t = Uuid::now_v7();
        let mut before = hub.subscribe(t, Filters::default()).unwrap();
        shutdown.trigger();
        let mut after = hub.subscribe(t, Filters::default()).unwrap();
        assert!(before.recv().await.is_none());
        assert!(after.recv().await.is_none());
    }
}
