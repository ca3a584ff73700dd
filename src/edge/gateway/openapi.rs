//! `GET /openapi.json`: the OpenAPI 3 description of every route, generated from the handlers'
//! annotations so it cannot drift from the code.

use actix_web::{HttpResponse, get};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::events::payloads;

use super::controllers::{
    api_keys_controller, artifacts_controller, episodes_controller, events_controller,
    health_controller, jobs_controller, policies_controller, systems_controller,
    tenants_controller,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "vsm", description = "Viable System Model platform API"),
    paths(
        health_controller::live,
        health_controller::health,
        health_controller::ready,
        tenants_controller::create,
        api_keys_controller::create,
        api_keys_controller::revoke,
        systems_controller::list,
        systems_controller::show,
        systems_controller::update,
        systems_controller::history,
        episodes_controller::create,
        episodes_controller::index,
        episodes_controller::show,
        policies_controller::create,
        policies_controller::index,
        policies_controller::show,
        policies_controller::update,
        policies_controller::destroy,
        jobs_controller::index,
        jobs_controller::show,
        jobs_controller::cancel,
        jobs_controller::retry,
        jobs_controller::queues,
        jobs_controller::pause_or_resume,
        events_controller::events,
        artifacts_controller::upload,
        artifacts_controller::download,
        artifacts_controller::remove,
        artifacts_controller::list,
    ),
    modifiers(&Security, &EventPayloads)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer =
            || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("api_key", bearer());
        components.add_security_scheme("admin_token", bearer());
    }
}

/// The stream's events: each topic's payload schema in the components, and the list of topics
/// with their schemas in the description of `GET /v1/events`.
struct EventPayloads;

impl Modify for EventPayloads {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, schema) in payloads::json_schemas() {
            components.schemas.insert(name, schema);
        }
        let topics: String = payloads::SCHEMAS
            .iter()
            .map(|(topic, schema)| format!("\n- `{topic}`: `data` is a `{schema}`"))
            .collect();
        let Some(path) = openapi.paths.paths.get_mut("/v1/events") else {
            return;
        };
        let Some(response) = path
            .get
            .as_mut()
            .and_then(|op| op.responses.responses.get_mut("200"))
        else {
            return;
        };
        if let utoipa::openapi::RefOr::T(response) = response {
            response.description = format!(
                "The event stream: `id`, `event: <topic>`, `data: <payload>` frames. The \
                 platform's topics (tenants' policies may publish others):{topics}"
            );
        }
    }
}

#[get("/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
