//! S1–S5 system states (CONTRACT §4): latest state of each system, one system, its history, and
//! optimistic updates (`expected_version` → 409 when someone else wrote first).

use actix_web::{HttpResponse, get, put, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::edge::gateway::state::AppState;
use crate::events::payloads::{self, SystemStateChanged};
use crate::schemas::vsm::system_state::{self, SYSTEM_NAMES, SystemState};

/// A system's latest state; `version` 0 and `{}` when it was never set.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemView {
    /// 1 Operations, 2 Coordination, 3 Control, 4 Intelligence, 5 Policy.
    pub system: i16,
    pub name: &'static str,
    pub version: i32,
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl SystemView {
    fn of(system: i16, latest: Option<SystemState>) -> SystemView {
        let name = SYSTEM_NAMES[usize::try_from(system - 1).unwrap_or(0)];
        match latest {
            Some(s) => SystemView {
                system,
                name,
                version: s.version,
                state: s.state,
                updated_at: Some(s.created_at),
            },
            None => SystemView {
                system,
                name,
                version: 0,
                state: json!({}),
                updated_at: None,
            },
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateState {
    /// The new state (a JSON object); replaces the previous one as version + 1.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
    /// Write only if the current version is this (0 = never set); otherwise 409.
    pub expected_version: Option<i32>,
}

fn system_number(n: i16) -> Result<i16, ApiError> {
    if (1..=5).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::NotFound(format!(
            "no system {n}: systems are 1 to 5"
        )))
    }
}

/// Latest state of S1..S5.
#[utoipa::path(
    get, path = "/v1/systems", tag = "systems", security(("api_key" = [])),
    responses(
        (status = 200, body = List<SystemView>),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/systems")]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let latest = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            system_state::latest_all(tx).await
        })
        .await?;
    let items: Vec<SystemView> = (1..=5)
        .map(|n| SystemView::of(n, latest.iter().find(|s| s.system == n).cloned()))
        .collect();
    Ok(HttpResponse::Ok().json(List {
        items,
        next_cursor: None,
    }))
}

/// Latest state of one system.
#[utoipa::path(
    get, path = "/v1/systems/{n}", tag = "systems", security(("api_key" = [])),
    params(("n" = i16, Path, description = "System number, 1 to 5")),
    responses(
        (status = 200, body = SystemView),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/systems/{n}")]
pub async fn show(
    auth: Authenticated,
    path: web::Path<i16>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = system_number(path.into_inner())?;
    let latest = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| system_state::latest(tx, n).await)
        .await?;
    Ok(HttpResponse::Ok().json(SystemView::of(n, latest)))
}

/// Writes a new state (version + 1) and records `system.state`.
#[utoipa::path(
    put, path = "/v1/systems/{n}/state", tag = "systems", security(("api_key" = [])),
    params(("n" = i16, Path, description = "System number, 1 to 5")),
    request_body = UpdateState,
    responses(
        (status = 200, body = SystemView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "expected_version is not the current version"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[put("/v1/systems/{n}/state")]
pub async fn update(
    auth: Authenticated,
    path: web::Path<i16>,
    body: web::Json<UpdateState>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = system_number(path.into_inner())?;
    let body = body.into_inner();
    if !body.state.is_object() {
        return Err(ApiError::Validation {
            field: "state".into(),
            message: "must be a JSON object".into(),
        });
    }
    crate::schemas::check_jsonb(&body.state).map_err(|message| ApiError::Validation {
        field: "state".into(),
        message: message.into(),
    })?;
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let written = system_state::append(
        &mut tx,
        auth.tenant_id,
        n,
        &body.state,
        body.expected_version,
    )
    .await?;
    payloads::emit(&mut tx, auth.tenant_id, &SystemStateChanged::from(&written)).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(SystemView::of(n, Some(written))))
}

/// A system's states, newest first.
#[utoipa::path(
    get, path = "/v1/systems/{n}/history", tag = "systems", security(("api_key" = [])),
    params(("n" = i16, Path, description = "System number, 1 to 5"), PageQuery),
    responses(
        (status = 200, body = List<SystemView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/systems/{n}/history")]
pub async fn history(
    auth: Authenticated,
    path: web::Path<i16>,
    query: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = system_number(path.into_inner())?;
    let page = query.page()?;
    let before = page.after_parsed::<i32>()?;
    let rows = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            system_state::history(tx, n, before, page.limit + 1).await
        })
        .await?;
    let rows = List::from_rows(rows, &page, |s| s.version.to_string());
    Ok(HttpResponse::Ok().json(List {
        next_cursor: rows.next_cursor,
        items: rows
            .items
            .into_iter()
            .map(|s| SystemView::of(n, Some(s)))
            .collect(),
    }))
}
