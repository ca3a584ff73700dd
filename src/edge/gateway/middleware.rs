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

#[cfg(test)]
mod tests {
    use actix_web::body::BoxBody;
    use actix_web::http::StatusCode;
    use actix_web::middleware::{Next, from_fn};
    use actix_web::{App, HttpResponse, test, web};

    use super::*;
    use crate::edge::gateway::drain::InFlight;
    use crate::metrics::METRICS;
    use crate::shutdown::Shutdown;

    /// A middleware further in that fails instead of answering.
    async fn refuse(
        _req: ServiceRequest,
        _next: Next<impl MessageBody>,
    ) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
        Err(actix_web::error::InternalError::new("refused", StatusCode::IM_A_TEAPOT).into())
    }

    /// A response holds its request's drain place until it is dropped, and carries a request
    /// id; an error from further in (not yet a response) gives the place back at once and is
    /// still counted, under `unmatched`.
    #[actix_web::test]
    async fn requests_hold_their_place_until_done_and_errors_are_counted() {
        let in_flight = InFlight::default();
        let ok = test::init_service(
            App::new()
                .wrap(Gateway::new(in_flight.worker(Shutdown::new())))
                .route("/x", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let res = test::call_service(&ok, test::TestRequest::get().uri("/x").to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().contains_key("x-request-id"));
        assert_eq!(in_flight.count(), 1, "the unsent body holds the place");
        drop(res);
        assert_eq!(in_flight.count(), 0);

        let failing = test::init_service(
            App::new()
                .wrap(from_fn(refuse))
                .wrap(Gateway::new(in_flight.worker(Shutdown::new())))
                .route("/x", web::patch().to(HttpResponse::Ok)),
        )
        .await;
        let req = test::TestRequest::patch().uri("/x").to_request();
        let Err(e) = failing.call(req).await else {
            panic!("the inner middleware's error is passed on");
        };
        assert_eq!(e.as_response_error().status_code(), StatusCode::IM_A_TEAPOT);
        assert_eq!(in_flight.count(), 0);
        let text = METRICS.render().unwrap();
        let counted =
            r#"cybernetic_requests_total{method="PATCH",path="unmatched",status="418"} 1"#;
        assert!(text.contains(counted), "{text}");
    }
}
