//! Draining on shutdown (CONTRACT §1). Every request is counted from its arrival until its
//! response body has been sent (or dropped with its connection), so the server can exit as
//! soon as the last one is done instead of waiting out the grace period; and from the signal
//! on every response says `Connection: close`, so no connection is kept for another request.
//! (actix's own graceful stop waits for *connections*, idle keep-alive ones included, and
//! checks only once a second.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use tokio::sync::Notify;

use crate::metrics::METRICS;
use crate::shutdown::Shutdown;

/// The requests in flight on one server.
#[derive(Clone, Default)]
pub struct InFlight {
    inner: Arc<Counter>,
}

#[derive(Default)]
struct Counter {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn enter(&self) -> Guard {
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        METRICS.http_in_flight.inc();
        Guard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a request ending in between is not missed.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct Guard(InFlight);

impl Drop for Guard {
    fn drop(&mut self) {
        METRICS.http_in_flight.dec();
        if self.0.inner.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.idle.notify_waiters();
        }
    }
}

/// What the middleware needs: the counter and the process's shutdown.
#[derive(Clone)]
pub struct Drain {
    pub in_flight: InFlight,
    pub shutdown: Shutdown,
}

/// A response body that holds its request's place in [`InFlight`] until it is done.
pub struct Tracked {
    body: BoxBody,
    _guard: Option<Guard>,
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

/// The outermost middleware: counts the request and, while draining, closes its connection
/// after the response. (Without a registered [`Drain`] it only passes the request on.)
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<Tracked>, actix_web::Error> {
    let drain = req.app_data::<web::Data<Drain>>().cloned();
    let guard = drain.as_ref().map(|d| d.in_flight.enter());
    let mut res = next.call(req).await?.map_into_boxed_body();
    if drain.is_some_and(|d| d.shutdown.is_triggered()) {
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(res.map_body(|_, body| Tracked {
        body,
        _guard: guard,
    }))
}
