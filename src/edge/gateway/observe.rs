//! The middleware every request passes through: it assigns the request id (echoing a sane
//! client-supplied `x-request-id`), counts and times the request by route template, and writes
//! one structured access-log line.

use std::time::{Duration, Instant};

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

use crate::metrics::METRICS;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, available to handlers through `req.extensions()`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The client's id when it is short printable ASCII (so it is safe in logs and headers),
    /// otherwise a fresh UUIDv7.
    fn from_header(value: Option<&HeaderValue>) -> Self {
        let supplied = value
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .filter(|v| v.bytes().all(|b| b.is_ascii_graphic()));
        match supplied {
            Some(v) => RequestId(v.to_owned()),
            None => RequestId(uuid::Uuid::now_v7().to_string()),
        }
    }
}

/// The tenant a request acted for, set by authentication so the access log can name it.
#[derive(Debug, Clone, Copy)]
pub struct TenantTag(pub uuid::Uuid);

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = RequestId::from_header(req.headers().get(&REQUEST_ID));
    req.extensions_mut().insert(request_id.clone());
    let method = method_label(req.method());

    // Handlers' and extractors' errors arrive here already turned into responses; an `Err` can
    // only come from a middleware further in, and is counted before actix renders it. (The
    // request must not be cloned before routing: actix needs sole ownership to record matches.)
    let mut res = match next.call(req).await {
        Ok(res) => res.map_into_boxed_body(),
        Err(e) => {
            let status = e.as_response_error().status_code();
            record(method, "unmatched", status, started.elapsed());
            return Err(e);
        }
    };

    let status = res.status();
    // Label by the matched route template, never the raw path (unbounded cardinality).
    let path = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let elapsed = started.elapsed();
    record(method, &path, status, elapsed);
    let tenant = res.request().extensions().get::<TenantTag>().map(|t| t.0);
    tracing::info!(
        request_id = %request_id.0,
        method,
        path = %path,
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        tenant_id = tenant.map(tracing::field::display),
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(res)
}

fn record(method: &str, path: &str, status: StatusCode, elapsed: Duration) {
    METRICS
        .requests
        .with_label_values(&[method, path, status.as_str()])
        .inc();
    METRICS
        .request_duration
        .with_label_values(&[method, path])
        .observe(elapsed.as_secs_f64());
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
