//! The local hub: this instance's SSE subscribers, by tenant. Events reach it from the relay
//! (in-process mode) or from this instance's RabbitMQ consumer, and it hands each one to the
//! matching subscribers' bounded buffers. A subscriber whose buffer is full is dropped and told
//! why (`overflow`): one slow client never holds up the others or grows memory. A buffer is
//! bounded twice: in events and in bytes of frames (a few hundred large events are as bad as a
//! million small ones).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::topic::Filters;
use super::{Event, SharedEvent};
use crate::metrics::METRICS;

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    subscribers: RwLock<HashMap<Uuid, Vec<Slot>>>,
    /// Open streams per tenant, for the connection cap.
    counts: Mutex<HashMap<Uuid, usize>>,
    max_per_tenant: usize,
    buffer: usize,
    /// Bytes of frames a subscriber may have waiting.
    buffer_bytes: usize,
    next_id: AtomicU64,
    /// Highest id handed out so far: events at or below it are duplicates (a republish after a
    /// relay failover, or a catch-up overlapping live delivery).
    last_seq: AtomicI64,
}

struct Slot {
    id: u64,
    filters: Filters,
    tx: mpsc::Sender<SharedEvent>,
    overflowed: Arc<AtomicBool>,
    /// Bytes of frames sent to `tx` and not yet received.
    queued: Arc<AtomicUsize>,
}

/// Refused subscription: the tenant already has the maximum number of streams open.
#[derive(Debug, thiserror::Error)]
#[error("too many event streams open for this tenant (limit {0})")]
pub struct TooManyStreams(pub usize);

/// One SSE client's end: its events, and whether the hub cut it off for overflowing.
pub struct Subscription {
    events: mpsc::Receiver<SharedEvent>,
    overflowed: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    hub: Hub,
    tenant: Uuid,
    id: u64,
}

impl Subscription {
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// The next event; `None` once the hub has let go of this subscriber (see `overflowed`).
    pub async fn recv(&mut self) -> Option<SharedEvent> {
        let event = self.events.recv().await;
        self.received(event)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<SharedEvent> {
        let event = self.events.try_recv().ok();
        self.received(event)
    }

    fn received(&self, event: Option<SharedEvent>) -> Option<SharedEvent> {
        if let Some(event) = &event {
            self.queued.fetch_sub(event.frame.len(), Ordering::AcqRel);
        }
        event
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.tenant, self.id);
    }
}

impl Hub {
    /// A hub with the default byte bound per subscriber (`events.client_buffer_bytes`).
    pub fn new(max_per_tenant: usize, buffer: usize) -> Hub {
        let bytes = crate::config::EventsConfig::default().client_buffer_bytes;
        Hub::with_limits(max_per_tenant, buffer, bytes)
    }

    /// `buffer` events and `buffer_bytes` bytes of frames may wait per subscriber; one event is
    /// always let through, however large, so a client can make progress.
    pub fn with_limits(max_per_tenant: usize, buffer: usize, buffer_bytes: usize) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                subscribers: RwLock::new(HashMap::new()),
                counts: Mutex::new(HashMap::new()),
                max_per_tenant,
                buffer: buffer.max(1),
                buffer_bytes,
                next_id: AtomicU64::new(1),
                last_seq: AtomicI64::new(0),
            }),
        }
    }

    /// Registers a subscriber for `tenant`'s events matching `filters`.
    pub fn subscribe(
        &self,
        tenant: Uuid,
        filters: Filters,
    ) -> Result<Subscription, TooManyStreams> {
        {
            let mut counts = lock(&self.inner.counts);
            let n = counts.entry(tenant).or_insert(0);
            if *n >= self.inner.max_per_tenant {
                return Err(TooManyStreams(self.inner.max_per_tenant));
            }
            *n += 1;
        }
        let (tx, rx) = mpsc::channel(self.inner.buffer);
        let overflowed = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        write(&self.inner.subscribers)
            .entry(tenant)
            .or_default()
            .push(Slot {
                id,
                filters,
                tx,
                overflowed: overflowed.clone(),
                queued: queued.clone(),
            });
        METRICS.sse_connections.inc();
        Ok(Subscription {
            events: rx,
            overflowed,
            queued,
            hub: self.clone(),
            tenant,
            id,
        })
    }

    fn remove(&self, tenant: Uuid, id: u64) {
        let mut subs = write(&self.inner.subscribers);
        if let Some(slots) = subs.get_mut(&tenant) {
            slots.retain(|s| s.id != id);
            if slots.is_empty() {
                subs.remove(&tenant);
            }
        }
        drop(subs);
        let mut counts = lock(&self.inner.counts);
        if let Some(n) = counts.get_mut(&tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&tenant);
            }
        }
        METRICS.sse_connections.dec();
    }

    /// Hands events (in id order) to their subscribers, skipping ids already handed out.
    pub fn dispatch(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            if self.inner.last_seq.fetch_max(event.seq, Ordering::AcqRel) >= event.seq {
                continue;
            }
            self.deliver(Arc::new(event));
        }
    }

    fn deliver(&self, event: SharedEvent) {
        let mut overflowing = Vec::new();
        let size = event.frame.len();
        let budget = self.inner.buffer_bytes;
        {
            let subs = read(&self.inner.subscribers);
            let mut offer = |tenant: &Uuid, slots: &Vec<Slot>| {
                for slot in slots.iter().filter(|s| s.filters.matches(&event.topic)) {
                    let waiting = slot.queued.fetch_add(size, Ordering::AcqRel);
                    let full = if waiting > 0 && waiting + size > budget {
                        true
                    } else {
                        match slot.tx.try_send(event.clone()) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Full(_)) => true,
                            // The stream ended and its Subscription is about to deregister.
                            Err(mpsc::error::TrySendError::Closed(_)) => false,
                        }
                    };
                    slot.queued.fetch_sub(size, Ordering::AcqRel);
                    if full {
                        slot.overflowed.store(true, Ordering::Release);
                        overflowing.push((*tenant, slot.id));
                    }
                }
            };
            match event.tenant_id {
                Some(tenant) => {
                    if let Some(slots) = subs.get(&tenant) {
                        offer(&tenant, slots);
                    }
                }
                None => subs.iter().for_each(|(t, slots)| offer(t, slots)),
            }
        }
        // Dropping an overflowing client's sender ends its stream once it has drained what it
        // has; it then reports `overflow` and the client resumes by Last-Event-ID.
        if !overflowing.is_empty() {
            let mut subs = write(&self.inner.subscribers);
            for (tenant, id) in overflowing {
                if let Some(slots) = subs.get_mut(&tenant) {
                    slots.retain(|s| s.id != id);
                }
            }
        }
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

// A poisoned lock only means another thread panicked mid-update of a plain map; the data is
// still consistent enough to keep serving, so recover it rather than cascade the panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn ev(seq: i64, tenant: Option<Uuid>, topic: &str) -> Event {
        Event::new(seq, tenant, topic.into(), json!({"n": seq}), Utc::now())
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
        assert_eq!(sa.events.try_recv().unwrap().seq, 1);
        assert!(sa.events.try_recv().is_err());
        assert_eq!(sb.events.try_recv().unwrap().seq, 3);
        assert_eq!(sb.events.try_recv().unwrap().seq, 4);
        assert!(sb.events.try_recv().is_err());
    }

    #[tokio::test]
    async fn caps_streams_per_tenant_and_frees_them() {
        let hub = Hub::new(2, 10);
        let t = Uuid::now_v7();
        let s1 = hub.subscribe(t, Filters::default()).unwrap();
        let _s2 = hub.subscribe(t, Filters::default()).unwrap();
        assert!(hub.subscribe(t, Filters::default()).is_err());
        assert!(hub.subscribe(Uuid::now_v7(), Filters::default()).is_ok());
        drop(s1);
        assert!(hub.subscribe(t, Filters::default()).is_ok());
    }

    #[tokio::test]
    async fn a_buffer_full_of_bytes_cuts_the_subscriber_off() {
        let frame_len = ev(1, None, "a.b").frame.len();
        // Room for three frames by bytes, a hundred by count.
        let hub = Hub::with_limits(10, 100, frame_len * 3);
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
        let hub = Hub::with_limits(10, 100, 1);
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
        assert!(slow.overflowed());
        assert_eq!(slow.events.recv().await.unwrap().seq, 1);
        assert_eq!(slow.events.recv().await.unwrap().seq, 2);
        assert!(slow.events.recv().await.is_none());
    }
}
