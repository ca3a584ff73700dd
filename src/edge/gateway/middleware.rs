//! The middleware every gateway request passes through first: it holds the request's place in
//! the drain until its body is sent (`drain`) and observes it — request id, metrics, access log
//! (`observe`).
//!
//! A hand-written service rather than actix's `from_fn`: `from_fn` boxes the future of the rest
//! of the chain on every request, and that (an allocation, a dynamic call and a copy of the
//! routing future) was a measurable share of a `GET /health`.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};

use super::drain::{Place, Tracked, Worker};
use super::observe::Observation;

/// The middleware, one per server worker thread (it carries that worker's drain cell).
pub struct Gateway {
    worker: Worker,
}

impl Gateway {
    pub fn new(worker: Worker) -> Gateway {
        Gateway { worker }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Gateway
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<Tracked>;
    type Error = actix_web::Error;
    type Transform = GatewayService<S>;
    type InitError = ();
    type Future = Ready<Result<GatewayService<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(GatewayService {
            service,
            worker: self.worker.clone(),
        }))
    }
}

pub struct GatewayService<S> {
    service: S,
    worker: Worker,
}

impl<S, B> Service<ServiceRequest> for GatewayService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<Tracked>;
    type Error = actix_web::Error;
    type Future = Handled<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let place = self.worker.enter();
        let observation = Observation::start(&req);
        Handled {
            inner: self.service.call(req),
            pending: Some((place, observation)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The rest of the chain's future, finished by observing its response and handing the
    /// request's place to the body.
    pub struct Handled<F> {
        #[pin]
        inner: F,
        // Taken when the response is ready.
        pending: Option<(Place, Observation)>,
    }
}

impl<F, B> Future for Handled<F>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    B: MessageBody + 'static,
{
    type Output = Result<ServiceResponse<Tracked>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // A future is not polled again once it has returned Ready.
        let Some((place, observation)) = this.pending.take() else {
            return Poll::Pending;
        };
        Poll::Ready(match result {
            Ok(res) => Ok(place.track(observation.finish(res))),
            Err(e) => {
                observation.failed(&e);
                Err(e)
            }
        })
    }
}
