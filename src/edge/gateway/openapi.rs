//! `GET /openapi.json`: the OpenAPI 3 description of every route, collected from the handlers'
//! annotations while the router registers them, so it cannot drift from the code.

use actix_web::{HttpResponse, get, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::events::payloads;

/// The document's frame (info, security schemes); the router adds every path as it registers
/// the handler (`router::routes`).
#[derive(OpenApi)]
#[openapi(
    info(title = "vsm", description = "Viable System Model platform API"),
    modifiers(&Security)
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
/// with their schemas in the description of `GET /v1/events`. Applied to the finished document
/// (after the router registered the paths).
pub struct EventPayloads;

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
pub async fn openapi_json(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}
