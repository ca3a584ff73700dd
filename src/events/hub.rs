//! The local hub: this instance's SSE subscribers, by tenant. Events reach it from the relay
//! (in-process mode) or from this instance's RabbitMQ consumer, and it hands each one to the
//! matching subscribers' bounded buffers. A subscriber whose buffer is full is dropped and told
//! why (`overflow`): one slow client never holds up the others or grows memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
}

/// Refused subscription: the tenant already has the maximum number of streams open.
#[derive(Debug, thiserror::Error)]
#[error("too many event streams open for this tenant (limit {0})")]
pub struct TooManyStreams(pub usize);

/// One SSE client's end: its events, and whether the hub cut it off for overflowing.
pub struct Subscription {
    pub events: mpsc::Receiver<SharedEvent>,
    overflowed: Arc<AtomicBool>,
    hub: Hub,
    tenant: Uuid,
    id: u64,
}

impl Subscription {
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.tenant, self.id);
    }
}

impl Hub {
    pub fn new(max_per_tenant: usize, buffer: usize) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                subscribers: RwLock::new(HashMap::new()),
                counts: Mutex::new(HashMap::new()),
                max_per_tenant,
                buffer: buffer.max(1),
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
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        write(&self.inner.subscribers)
            .entry(tenant)
            .or_default()
            .push(Slot {
                id,
                filters,
                tx,
                overflowed: overflowed.clone(),
            });
        METRICS.sse_connections.inc();
        Ok(Subscription {
            events: rx,
            overflowed,
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
        {
            let subs = read(&self.inner.subscribers);
            let mut offer = |tenant: &Uuid, slots: &Vec<Slot>| {
                for slot in slots.iter().filter(|s| s.filters.matches(&event.topic)) {
                    match slot.tx.try_send(event.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            slot.overflowed.store(true, Ordering::Release);
                            overflowing.push((*tenant, slot.id));
                        }
                        // The stream ended and its Subscription is about to deregister.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
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
