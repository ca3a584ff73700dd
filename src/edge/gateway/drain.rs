//! Draining on shutdown (CONTRACT §1). Every request is counted from its arrival until its
//! response body has been sent (or dropped with its connection), so the server can exit as
//! soon as the last one is done instead of waiting out the grace period; and from the signal
//! on every response says `Connection: close`, so no connection is kept for another request.
//! (actix's own graceful stop waits for *connections*, idle keep-alive ones included, and
//! checks only once a second.)

use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::ConnectionType;
use actix_web::web::Bytes;
use tokio::sync::Notify;

use crate::metrics::{self, METRICS};
use crate::shutdown::Shutdown;

/// The requests in flight on one server: one cell per worker thread (each counted only by
/// its own worker's requests, so the workers never share a counter; see `metrics::http`),
/// added up when asked.
#[derive(Clone, Default)]
pub struct InFlight {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    workers: Mutex<Vec<metrics::http::InFlight>>,
    /// Woken as a request ends while [`InFlight::idle`] waits.
    idle: Notify,
    /// Set once something waits for [`InFlight::idle`]: only then do ending requests wake it.
    draining: AtomicBool,
}

impl InFlight {
    /// The side of one worker thread, made once as that worker builds its app.
    pub fn worker(&self, shutdown: Shutdown) -> Worker {
        let cell = METRICS.http.in_flight();
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cell.clone());
        Worker(Rc::new(WorkerState {
            cell,
            server: self.inner.clone(),
            shutdown,
        }))
    }

    pub fn count(&self) -> usize {
        let workers = self.inner.workers.lock().unwrap_or_else(|e| e.into_inner());
        let n: i64 = workers.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        usize::try_from(n).unwrap_or(0)
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        // Sequentially consistent with the guards' decrement-then-check: either a guard sees
        // `draining` and wakes this (registered before counting), or the count sees its
        // decrement.
        self.inner.draining.store(true, Ordering::SeqCst);
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One worker's side of the drain: its in-flight cell, and the process's shutdown. It stays
/// on its worker's thread.
#[derive(Clone)]
pub struct Worker(Rc<WorkerState>);

struct WorkerState {
    cell: metrics::http::InFlight,
    server: Arc<Shared>,
    shutdown: Shutdown,
}

impl Worker {
    /// Counts a request in, until the returned place is dropped.
    pub fn enter(&self) -> Place {
        self.0.cell.fetch_add(1, Ordering::SeqCst);
        Place(self.clone())
    }
}

/// A request's place in [`InFlight`], given up when dropped.
pub struct Place(Worker);

impl Place {
    /// Hands the place to the response's body, so the request counts until its body has been
    /// sent (or dropped with its connection); while draining, the response also closes its
    /// connection.
    pub fn track<B: MessageBody + 'static>(
        self,
        res: ServiceResponse<B>,
    ) -> ServiceResponse<Tracked> {
        let mut res = res.map_into_boxed_body();
        if self.0.0.shutdown.is_triggered() {
            res.response_mut()
                .head_mut()
                .set_connection_type(ConnectionType::Close);
        }
        res.map_body(|_, body| Tracked { body, _place: self })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let worker = &self.0.0;
        worker.cell.fetch_sub(1, Ordering::SeqCst);
        if worker.server.draining.load(Ordering::SeqCst) {
            worker.server.idle.notify_waiters();
        }
    }
}

/// A response body that holds its request's place in [`InFlight`] until it is done.
pub struct Tracked {
    body: BoxBody,
    _place: Place,
}

impl MessageBody for Tracked {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
