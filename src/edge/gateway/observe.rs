//! The middleware every request passes through: it assigns the request id (echoing a sane
//! client-supplied `x-request-id`), counts and times the request by route template, and writes
//! one structured access-log line.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

use crate::metrics::METRICS;
use crate::metrics::http::{RequestSeries, ThreadRequests};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The tenant a request acted for, set by authentication so the access log can name it.
#[derive(Debug, Clone, Copy)]
pub struct TenantTag(pub uuid::Uuid);

/// `observe` as a `from_fn` middleware (the operations listener's; the gateway runs the same
/// [`Observation`] inside its own middleware, `gateway::middleware`).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let observation = Observation::start(&req);
    match next.call(req).await {
        Ok(res) => Ok(observation.finish(res.map_into_boxed_body())),
        Err(e) => {
            observation.failed(&e);
            Err(e)
        }
    }
}

/// One request being observed: noted as it arrives, finished when its response is ready.
pub struct Observation {
    started: Instant,
    request_id: HeaderValue,
    method: &'static str,
}

impl Observation {
    pub fn start(req: &ServiceRequest) -> Observation {
        Observation {
            started: Instant::now(),
            request_id: request_id(req.headers().get(&REQUEST_ID)),
            method: method_label(req.method()),
        }
    }

    /// Counts, times and logs the response, and gives it the request id.
    pub fn finish<B>(self, mut res: ServiceResponse<B>) -> ServiceResponse<B> {
        let status = res.status();
        // Label by the matched route template, never the raw path (unbounded cardinality).
        let path = route_template(res.request());
        let elapsed = self.started.elapsed();
        record(self.method, &path, status, elapsed);
        tracing::info!(
            request_id = self.request_id.to_str().unwrap_or_default(),
            method = self.method,
            path = &*path,
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            // Looked up only when the line is written (fields are evaluated lazily).
            tenant_id = res
                .request()
                .extensions()
                .get::<TenantTag>()
                .map(|t| tracing::field::display(t.0)),
            "request"
        );
        res.headers_mut().insert(REQUEST_ID, self.request_id);
        res
    }

    /// Counts a request that ended in an error from a middleware further in. (Handlers' and
    /// extractors' errors arrive already turned into responses; this one is counted before
    /// actix renders it. The request must not be cloned before routing: actix needs sole
    /// ownership to record matches.)
    pub fn failed(self, e: &actix_web::Error) {
        let status = e.as_response_error().status_code();
        record(
            self.method,
            &Rc::from(UNMATCHED),
            status,
            self.started.elapsed(),
        );
    }
}

/// The client's `x-request-id` when it is short printable ASCII (so it is safe in logs and
/// headers), otherwise a fresh UUIDv7.
fn request_id(supplied: Option<&HeaderValue>) -> HeaderValue {
    let sane = supplied
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .filter(|v| v.as_bytes().iter().all(u8::is_ascii_graphic));
    match sane {
        Some(v) => v.clone(),
        None => {
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let id = REQUEST_IDS.with(|ids| uuid::Uuid::new_v7(uuid::Timestamp::now(ids)));
            let text = id.hyphenated().encode_lower(&mut text);
            // A hyphenated UUID is always a valid header value.
            HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
        }
    }
}

const UNMATCHED: &str = "unmatched";

/// The per-thread caches' hasher: foldhash, seeded per process. Their keys are route templates
/// (clients cannot add any), so the hash need not resist flooding, and std's SipHash was a
/// measurable share of a `/health`.
type Hasher = foldhash::fast::RandomState;

/// Most entries any of this thread's caches below keeps (far above the routes there are).
const CACHE_LIMIT: usize = 512;

thread_local! {
    /// Each thread's UUIDv7 sequence for request ids (`Uuid::now_v7` shares one behind a
    /// process-wide lock, which every request of every worker would take).
    static REQUEST_IDS: uuid::ContextV7 = const { uuid::ContextV7::new() };
    /// Paths that are themselves a route template (no dynamic segment) → that template. Only
    /// such paths are kept, so clients cannot grow it with paths of their own; it saves
    /// re-matching the path against every route for the label (actix's `match_pattern`).
    static STATIC_ROUTES: RefCell<HashMap<Box<str>, Rc<str>, Hasher>> =
        RefCell::new(HashMap::default());
    /// This thread's request counts (see `metrics::http`).
    static THREAD: Arc<ThreadRequests> = METRICS.http.thread();
    /// This thread's series of each (template, method, status) it has met.
    static SERIES: RefCell<HashMap<Rc<str>, Vec<Arc<RequestSeries>>, Hasher>> =
        RefCell::new(HashMap::default());
}

/// The route template that matched `req`, or `unmatched`.
fn route_template(req: &actix_web::HttpRequest) -> Rc<str> {
    let path = req.path();
    if let Some(template) = STATIC_ROUTES.with_borrow(|known| known.get(path).cloned()) {
        return template;
    }
    let template: Rc<str> = req
        .match_pattern()
        .map_or_else(|| Rc::from(UNMATCHED), Rc::from);
    if *template == *path {
        STATIC_ROUTES.with_borrow_mut(|known| {
            if known.len() < CACHE_LIMIT {
                known.insert(Box::from(path), template.clone());
            }
        });
    }
    template
}

fn record(method: &'static str, path: &Rc<str>, status: StatusCode, elapsed: Duration) {
    SERIES.with_borrow_mut(|all| {
        let new = || THREAD.with(|thread| thread.series(method, path, status.as_u16()));
        let cached = all.len() < CACHE_LIMIT || all.contains_key(&**path);
        if !cached {
            // Only reachable if the routes ever outnumbered the limit: count, uncached.
            return new().observe(elapsed);
        }
        let of_path = all.entry(path.clone()).or_default();
        match of_path
            .iter()
            .find(|s| s.method() == method && s.status() == status.as_u16())
        {
            Some(series) => series.observe(elapsed),
            None => {
                let series = new();
                series.observe(elapsed);
                // Methods and statuses are few; beyond the limit, count without keeping.
                if of_path.len() < CACHE_LIMIT {
                    of_path.push(series);
                }
            }
        }
    });
}

/// Methods as metric labels, with anything unusual folded into one value.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    /// Fresh request ids are UUIDv7s, increasing on each thread and never repeated across
    /// threads (each thread has its own sequence); a sane client id is echoed, others replaced.
    // (`test` alone is actix's async test attribute here.)
    #[core::prelude::v1::test]
    fn request_ids_are_unique_time_ordered_uuids_per_thread() {
        let ids: Vec<Vec<uuid::Uuid>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..5_000)
                            .map(|_| {
                                let id = request_id(None);
                                uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for of_thread in &ids {
            assert!(of_thread.iter().all(|id| id.get_version_num() == 7));
            assert!(of_thread.windows(2).all(|w| w[0] < w[1]), "increasing");
        }
        let all: std::collections::HashSet<_> = ids.iter().flatten().collect();
        assert_eq!(all.len(), 4 * 5_000);
        let sane = HeaderValue::from_static("trace-42");
        assert_eq!(request_id(Some(&sane)), sane);
        let spaced = HeaderValue::from_static("has space");
        assert_ne!(request_id(Some(&spaced)), spaced);
    }

    /// Whatever paths clients send, this thread remembers only paths that are a route template
    /// and one series per (template, method, status): a flood of invented paths, dynamic
    /// segments and methods adds nothing beyond the routes.
    #[actix_web::test]
    async fn the_per_thread_caches_are_bounded_by_the_routes_not_by_the_paths() {
        let app = test::init_service(
            App::new()
                .wrap(from_fn(observe))
                .route("/static", web::get().to(HttpResponse::Ok))
                .route("/items/{id}", web::get().to(HttpResponse::Ok)),
        )
        .await;
        for n in 0..2_000 {
            for path in [
                "/static".to_owned(),
                format!("/items/{n}"),
                format!("/invented/{n}"),
                format!("/static?n={n}"),
            ] {
                for method in [actix_web::http::Method::GET, actix_web::http::Method::POST] {
                    let req = test::TestRequest::default()
                        .method(method)
                        .uri(&path)
                        .to_request();
                    test::call_service(&app, req).await;
                }
            }
        }
        let routes = STATIC_ROUTES.with_borrow(|known| known.keys().cloned().collect::<Vec<_>>());
        assert_eq!(routes, [Box::<str>::from("/static")]);
        let series: Vec<(String, &str, u16)> = SERIES.with_borrow(|all| {
            all.iter()
                .flat_map(|(path, of_path)| {
                    of_path
                        .iter()
                        .map(|s| (path.to_string(), s.method(), s.status()))
                })
                .collect()
        });
        // One series per template and method at most (each route answers one status), in the
        // fast-path cache and in the cells a scrape reads alike.
        assert!(series.len() <= 3 * 2, "{series:?}");
        assert!(THREAD.with(|thread| thread.len()) <= 3 * 2);
        for (path, _, _) in &series {
            assert!(
                ["/static", "/items/{id}", UNMATCHED].contains(&path.as_str()),
                "{series:?}"
            );
        }
    }
}
