//! Policies (CONTRACT §4, §7): S5's rules. Rules are validated by the policy evaluator's own
//! validator, within the complexity budget of `[policies]`, before they are saved (422 naming
//! the JSON path); every change records `policy.created|updated|deleted` in its transaction.
//!
//! Validation compiles the rules' patterns: it runs on the blocking thread pool, never on an
//! HTTP worker thread, so a policy at the budget does not hold up other requests.

use actix_web::{HttpResponse, delete, get, post, put, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, OneOf, OneOfBuilder, Schema, Type,
};
use uuid::Uuid;

use crate::config::PoliciesConfig;
use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::openapi::shapes;
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::edge::gateway::state::AppState;
use crate::events::payloads::{self, PolicyCreated, PolicyDeleted, PolicySummary, PolicyUpdated};
use crate::events::topic;
use crate::schemas::vsm::policy::{self, NewPolicy, Policy};
use crate::workers::policy_evaluator;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// Unique per tenant, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    pub description: Option<String>,
    /// `{"when":{"topics":[...]},"if":<cond>,"then":[<action>...]}` (CONTRACT §7).
    #[schema(schema_with = rules_schema)]
    pub rules: serde_json::Value,
    /// Default true.
    pub active: Option<bool>,
    /// 0 or more; higher is evaluated first. Default 0.
    #[schema(minimum = 0)]
    pub priority: Option<i32>,
    pub effective_from: Option<DateTime<Utc>>,
    pub effective_until: Option<DateTime<Utc>>,
}

/// The rules document's shape, for clients and for generated requests that reach past
/// validation. [`policy_evaluator::rules::validate`] is the authority: it also applies the
/// complexity budget and names the JSON path of whatever it refuses.
fn rules_schema() -> Object {
    use policy_evaluator::rules::{CHANNELS, MAX_TOPICS};
    use policy_evaluator::template::MAX_TEMPLATE_BYTES;
    let action = |name: &str, fields: Vec<(&str, RefOr<Schema>)>, required: &[&str]| {
        let body = shapes::closed_object(fields, required).build();
        shapes::closed_object(vec![(name, body.into())], &[name]).build()
    };
    let notify = action(
        "notify",
        vec![
            ("channel", shapes::one_of(CHANNELS.iter().copied()).into()),
            ("to", shapes::non_empty_string().into()),
            (
                "template",
                shapes::string_of_length(1, MAX_TEMPLATE_BYTES).into(),
            ),
        ],
        &["channel", "to", "template"],
    );
    let enqueue = action(
        "enqueue",
        vec![
            ("worker", shapes::non_empty_string().into()),
            ("args", shapes::any_object().into()),
        ],
        &["worker"],
    );
    let publish = action(
        "publish",
        vec![
            ("topic", shapes::string(topic::TOPIC_PATTERN).into()),
            ("data", shapes::any_object().into()),
        ],
        &["topic"],
    );
    let system = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(5))
        .build();
    let set_state = action(
        "set_state",
        vec![
            ("system", system.into()),
            ("merge", shapes::any_object().into()),
        ],
        &["system", "merge"],
    );
    let then = ArrayBuilder::new()
        .items(
            OneOfBuilder::new()
                .item(notify)
                .item(enqueue)
                .item(publish)
                .item(set_state),
        )
        .min_items(Some(1))
        .description(Some("1 to `policies.max_actions` actions, run in order."))
        .build();
    let when = shapes::closed_object(
        vec![(
            "topics",
            shapes::strings(topic::FILTER_PATTERN, 1, MAX_TOPICS).into(),
        )],
        &["topics"],
    )
    .build();
    let condition = condition_schema();
    shapes::closed_object(
        vec![
            ("when", when.into()),
            ("if", Schema::OneOf(condition).into()),
            ("then", then.into()),
        ],
        &["when", "then"],
    )
    .build()
}

/// `if`: a comparison, or `all`/`any`/`not` of conditions. The inner conditions are left as
/// objects (the grammar nests; the validator bounds the depth).
fn condition_schema() -> OneOf {
    use policy_evaluator::rules::{FIELD_PATTERN, Op};
    let comparison = shapes::closed_object(
        vec![
            ("field", shapes::string(FIELD_PATTERN).into()),
            ("op", shapes::one_of(Op::names()).into()),
            ("value", ObjectBuilder::new().build().into()),
        ],
        &["field", "op"],
    )
    .build();
    // A nested condition: a comparison, or (any object) a list or negation further in.
    let nested = RefOr::T(Schema::AnyOf(
        AnyOfBuilder::new()
            .item(comparison.clone())
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .description(Some("a condition")),
            )
            .build(),
    ));
    let list = |name: &str| {
        let conditions = ArrayBuilder::new()
            .items(nested.clone())
            .min_items(Some(1))
            .build();
        shapes::closed_object(vec![(name, conditions.into())], &[name]).build()
    };
    let not = shapes::closed_object(vec![("not", nested.clone())], &["not"]).build();
    OneOfBuilder::new()
        .item(comparison)
        .item(list("all"))
        .item(list("any"))
        .item(not)
        .description(Some(
            "Optional; absent means always. A comparison (`field` is `topic`, `event_id`, \
             `data` or `data.<key>...`), or `all`/`any` of a list of conditions, or `not` of \
             one. Only a definite true triggers: a missing field or a type mismatch is unknown.",
        ))
        .build()
}

/// Checks `rules` within the budget and that they can be stored; gives them back when valid.
/// A refused document is dropped here too, off the HTTP worker thread.
fn check_rules(
    rules: serde_json::Value,
    enqueueable: &crate::jobs::Registry,
    limits: &PoliciesConfig,
) -> Result<serde_json::Value, ApiError> {
    policy_evaluator::validate(&rules, enqueueable, limits).map_err(|e| ApiError::Validation {
        field: e.path,
        message: e.message,
    })?;
    crate::schemas::check_jsonb(&rules).map_err(|m| ApiError::Validation {
        field: "rules".into(),
        message: m.into(),
    })?;
    Ok(rules)
}

impl PolicyBody {
    /// Validates the rules (on the blocking pool) and builds the row. Only tenant-scoped
    /// workers may be named by `enqueue`.
    async fn into_new(
        self,
        id: Uuid,
        tenant_id: Uuid,
        state: &AppState,
    ) -> Result<NewPolicy, ApiError> {
        let enqueueable = state.workers.clone();
        let limits = state.config.policies.clone();
        let rules = self.rules;
        let rules = web::block(move || check_rules(rules, &enqueueable, &limits))
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("validating rules: {e}")))??;
        Ok(NewPolicy {
            id,
            tenant_id,
            name: self.name,
            description: self.description,
            rules,
            active: self.active.unwrap_or(true),
            priority: self.priority.unwrap_or(0),
            effective_from: self.effective_from,
            effective_until: self.effective_until,
        })
    }
}

fn summary(p: &Policy) -> PolicySummary {
    PolicySummary {
        id: p.id,
        name: p.name.clone(),
        active: p.active,
        priority: p.priority,
    }
}

/// Creates a policy.
#[utoipa::path(
    post, path = "/v1/policies", tag = "policies", security(("api_key" = [])),
    request_body = PolicyBody,
    responses(
        (status = 201, body = Policy, headers(("location" = String, description = "/v1/policies/{id}"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid field or rule (message starts with its JSON path)"),
        (status = 429, body = ErrorBody)
    )
)]
#[post("/v1/policies")]
pub async fn create(
    auth: Authenticated,
    body: web::Json<PolicyBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let new = body
        .into_inner()
        .into_new(Uuid::now_v7(), auth.tenant_id, &state)
        .await?;
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    crate::edge::gateway::budget::ensure_room(
        &mut tx,
        &state.config.limits,
        auth.tenant_id,
        crate::edge::gateway::budget::Resource::Policies,
    )
    .await?;
    let created = policy::insert(&mut tx, &new).await?;
    payloads::emit(&mut tx, auth.tenant_id, &PolicyCreated(summary(&created))).await?;
    tx.commit().await?;
    Ok(super::created(
        format!("/v1/policies/{}", created.id),
        created,
    ))
}

/// The tenant's policies.
#[utoipa::path(
    get, path = "/v1/policies", tag = "policies", security(("api_key" = [])),
    params(PageQuery),
    responses(
        (status = 200, body = List<Policy>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/policies")]
pub async fn index(
    auth: Authenticated,
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.page()?;
    let after = page.after_parsed::<Uuid>()?;
    let rows = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            policy::list(tx, after, page.limit + 1).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(List::from_rows(rows, &page, |p| p.id.to_string())))
}

/// One policy.
#[utoipa::path(
    get, path = "/v1/policies/{id}", tag = "policies", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Policy),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/policies/{id}")]
pub async fn show(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let found = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            policy::find(tx, path.into_inner()).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(found))
}

/// Replaces a policy.
#[utoipa::path(
    put, path = "/v1/policies/{id}", tag = "policies", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    request_body = PolicyBody,
    responses(
        (status = 200, body = Policy),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[put("/v1/policies/{id}")]
pub async fn update(
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<PolicyBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let new = body
        .into_inner()
        .into_new(id, auth.tenant_id, &state)
        .await?;
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let updated = policy::update(&mut tx, id, &new).await?;
    payloads::emit(&mut tx, auth.tenant_id, &PolicyUpdated(summary(&updated))).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(updated))
}

/// Deletes a policy.
#[utoipa::path(
    delete, path = "/v1/policies/{id}", tag = "policies", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[delete("/v1/policies/{id}")]
pub async fn destroy(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    policy::delete(&mut tx, id).await?;
    payloads::emit(&mut tx, auth.tenant_id, &PolicyDeleted { id }).await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}
