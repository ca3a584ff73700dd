//! `/metrics` in Prometheus text format (CONTRACT §5).

use actix_web::{HttpResponse, get, web};

use crate::edge::gateway::error::ApiError;
use crate::edge::gateway::state::OpsState;
use crate::metrics::METRICS;

#[get("/metrics")]
pub async fn metrics(state: web::Data<OpsState>) -> Result<HttpResponse, ApiError> {
    // Pool gauges are read at scrape time: they are this process's, and always current.
    let status = state.repo.pool_status();
    let in_use = status.size.saturating_sub(status.available);
    METRICS
        .db_pool_connections
        .with_label_values(&["idle"])
        .set(status.available as i64);
    METRICS
        .db_pool_connections
        .with_label_values(&["in_use"])
        .set(in_use as i64);
    METRICS.db_pool_max.set(status.max_size as i64);
    METRICS.db_pool_waiting.set(status.waiting as i64);
    let body = METRICS.render().map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}
