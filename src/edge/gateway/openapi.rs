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

/// Schema pieces the derive cannot express (a pattern on each item of an array), for fields
/// annotated `#[schema(schema_with = ...)]`.
pub mod shapes {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{
        AdditionalProperties, Array, ArrayBuilder, Object, ObjectBuilder, Schema, Type,
    };

    /// A string matching `pattern`.
    pub fn string(pattern: &str) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .build()
    }

    /// A string of at least one character.
    pub fn non_empty_string() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .build()
    }

    /// A string of `min..=max` characters.
    pub fn string_of_length(min: usize, max: usize) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
            .build()
    }

    /// One of the strings `values`.
    pub fn one_of(values: impl IntoIterator<Item = &'static str>) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(values))
            .build()
    }

    /// Any JSON object.
    pub fn any_object() -> Object {
        ObjectBuilder::new().schema_type(Type::Object).build()
    }

    /// `min..=max` strings, each matching `pattern`.
    pub fn strings(pattern: &str, min: usize, max: usize) -> Array {
        ArrayBuilder::new()
            .items(string(pattern))
            .min_items(Some(min))
            .max_items(Some(max))
            .build()
    }

    /// An object with exactly the `properties` given, `required` among them, and no others.
    pub fn closed_object(
        properties: Vec<(&str, RefOr<Schema>)>,
        required: &[&str],
    ) -> ObjectBuilder {
        let mut object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for (name, schema) in properties {
            object = object.property(name, schema);
        }
        for name in required {
            object = object.required(*name);
        }
        object
    }
}
