//! Every route of the gateway, and the request-level rules shared by all of them (JSON body
//! limit and JSON errors in the contract's error format).
//!
//! Registering a handler here also adds its `#[utoipa::path]` operation to `/openapi.json`
//! (utoipa-actix-web), so the document cannot miss a route.

use actix_web::{HttpRequest, HttpResponse, web};
use utoipa_actix_web::service_config::ServiceConfig;

use super::controllers::{
    api_keys_controller, artifacts_controller, dashboard_controller, episodes_controller,
    events_controller, health_controller, jobs_controller, metrics_controller,
    notifications_controller, policies_controller, systems_controller, telegram_controller,
    tenants_controller, webhooks_controller,
};
use super::error::ApiError;
use super::openapi;

/// Registers all routes. `json_limit` is the largest JSON body accepted, in bytes.
pub fn routes(cfg: &mut ServiceConfig, json_limit: usize) {
    // Routes are matched in registration order, so the probes that load balancers and
    // orchestrators call most come first, ahead of any pattern with dynamic segments.
    cfg.service(health_controller::live)
        .service(health_controller::health)
        .service(health_controller::ready);
    // Not part of the API description: the Prometheus scrape and the description itself.
    cfg.map(|cfg| {
        cfg.service(metrics_controller::metrics)
            .service(openapi::openapi_json)
            // The dashboard's page and assets (its JSON routes are described below).
            .service(dashboard_controller::index)
            .service(dashboard_controller::index_slash)
            .service(dashboard_controller::asset)
    });
    cfg.app_data(
        web::JsonConfig::default()
            .limit(json_limit)
            .error_handler(json_error),
    )
    // A path segment that does not parse (`/v1/systems/x`) names no resource: 404.
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError::NotFound(format!("no such resource: {err}")).into()),
    )
    .app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::BadRequest(format!("invalid query string: {err}")).into()
    }))
    .service(tenants_controller::create)
    .service(api_keys_controller::create)
    .service(api_keys_controller::revoke)
    .service(systems_controller::list)
    .service(systems_controller::show)
    .service(systems_controller::update)
    .service(systems_controller::history)
    .service(episodes_controller::create)
    .service(episodes_controller::index)
    .service(episodes_controller::show)
    .service(policies_controller::create)
    .service(policies_controller::index)
    .service(policies_controller::show)
    .service(policies_controller::update)
    .service(policies_controller::destroy)
    .service(jobs_controller::index)
    .service(jobs_controller::show)
    .service(jobs_controller::cancel)
    .service(jobs_controller::retry)
    .service(jobs_controller::queues)
    .service(jobs_controller::pause_or_resume)
    .service(events_controller::events)
    .service(artifacts_controller::list)
    .service(artifacts_controller::upload)
    .service(artifacts_controller::download)
    .service(artifacts_controller::remove)
    .service(dashboard_controller::sign_in)
    .service(dashboard_controller::current)
    .service(dashboard_controller::sign_out)
    .service(dashboard_controller::health)
    .service(webhooks_controller::create)
    .service(webhooks_controller::index)
    .service(webhooks_controller::show)
    .service(webhooks_controller::update)
    .service(webhooks_controller::destroy)
    .service(webhooks_controller::rotate_secret)
    .service(telegram_controller::webhook)
    .service(telegram_controller::link)
    .service(telegram_controller::unlink)
    .service(telegram_controller::index)
    .service(notifications_controller::index)
    .service(notifications_controller::show)
    .service(notifications_controller::retry);
}

/// Unknown routes answer in the contract's error format too.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

fn json_error(err: actix_web::error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let api = match &err {
        E::OverflowKnownLength { .. } | E::Overflow { .. } => {
            ApiError::PayloadTooLarge(format!("JSON body larger than the limit: {err}"))
        }
        E::ContentType => {
            ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
        }
        E::Deserialize(e) if e.is_data() => ApiError::Validation {
            field: "body".into(),
            message: e.to_string(),
        },
        _ => ApiError::BadRequest(format!("invalid JSON body: {err}")),
    };
    api.into()
}
