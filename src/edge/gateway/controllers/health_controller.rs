//! `/live`, `/health`, `/ready` (CONTRACT §5).

use actix_web::{HttpResponse, get, web};
use serde_json::json;

use crate::edge::gateway::state::OpsState;

/// 200 while the process runs.
#[utoipa::path(get, path = "/live", tag = "health", responses((status = 200, description = "alive")))]
#[get("/live")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 with version and uptime; never calls a dependency.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "`{\"status\":\"ok\",\"version\",\"uptime_seconds\"}`")))]
#[get("/health")]
pub async fn health(state: web::Data<OpsState>) -> HttpResponse {
    // A typed body: the probe answered most often is serialised without building a map.
    #[derive(serde::Serialize)]
    struct Health {
        status: &'static str,
        version: &'static str,
        uptime_seconds: u64,
    }
    HttpResponse::Ok().json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
    })
}

/// 200 when every configured dependency answers within a second; 503 otherwise or while
/// shutting down.
#[utoipa::path(get, path = "/ready", tag = "health", responses(
    (status = 200, description = "ready (`ok`, or `degraded` when a non-critical dependency is down)"),
    (status = 503, description = "a critical dependency does not answer, or shutting down")))]
#[get("/ready")]
pub async fn ready(state: web::Data<OpsState>) -> HttpResponse {
    let (ready, body) = state.readiness.report().await;
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
