//! One controller per concern, as in the plan's `controllers/` directory.
pub mod api_keys_controller;
pub mod artifacts_controller;
pub mod dashboard_controller;
pub mod episodes_controller;
pub mod events_controller;
pub mod health_controller;
pub mod jobs_controller;
pub mod metrics_controller;
pub mod notifications_controller;
pub mod policies_controller;
pub mod systems_controller;
pub mod telegram_controller;
pub mod tenants_controller;
pub mod webhooks_controller;

use actix_web::HttpResponse;
use actix_web::http::header::LOCATION;

/// `201 Created` with `body` and a `Location` naming where the new resource is read back
/// (RFC 9110 §15.3.2), e.g. `/v1/policies/<id>`.
pub fn created(location: String, body: impl serde::Serialize) -> HttpResponse {
    HttpResponse::Created()
        .insert_header((LOCATION, location))
        .json(body)
}
