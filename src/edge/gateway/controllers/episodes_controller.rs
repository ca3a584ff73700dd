//! Episodes (CONTRACT §4): creating one commits the episode, its analysis job and its
//! `episode.created` event together; lists filter by status and tag with keyset pages.

use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::edge::gateway::AppState;
use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::events::payloads::{self, EpisodeCreated};
use crate::jobs::storage as jobs;
use crate::schemas::vsm::episode::{self, Episode, NewEpisode};
use crate::workers::episode_analyzer;

const STATUSES: [&str; 4] = ["pending", "analyzing", "complete", "error"];
const MAX_TAGS: usize = 50;
const MAX_TAG_LEN: usize = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEpisode {
    /// 1 to 500 characters.
    pub title: String,
    pub content: String,
    pub source: Option<String>,
    pub tags: Option<Vec<String>>,
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EpisodeFilter {
    /// pending, analyzing, complete or error.
    pub status: Option<String>,
    /// Only episodes carrying this tag.
    pub tag: Option<String>,
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::Validation {
        field: field.into(),
        message: message.into(),
    }
}

/// Creates an episode (status `pending`) and enqueues its analysis in the same transaction.
#[utoipa::path(
    post, path = "/v1/episodes", tag = "episodes", security(("api_key" = [])),
    request_body = CreateEpisode,
    responses(
        (status = 201, body = Episode),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[post("/v1/episodes")]
pub async fn create(
    auth: Authenticated,
    body: web::Json<CreateEpisode>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tags = body.tags.unwrap_or_default();
    if tags.len() > MAX_TAGS {
        return Err(invalid("tags", "at most 50 tags"));
    }
    if let Some(i) = tags
        .iter()
        .position(|t| t.is_empty() || t.len() > MAX_TAG_LEN)
    {
        return Err(invalid(&format!("tags[{i}]"), "must be 1 to 100 bytes"));
    }
    let new = NewEpisode {
        id: Uuid::now_v7(),
        tenant_id: auth.tenant_id,
        title: body.title,
        content: body.content,
        source: body.source,
        kind: body.kind,
        tags,
    };
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let created = episode::insert(&mut tx, &new).await?;
    jobs::insert(&mut tx, &episode_analyzer::job(auth.tenant_id, created.id)).await?;
    let event = EpisodeCreated {
        id: created.id,
        title: created.title.clone(),
        source: created.source.clone(),
        kind: created.kind.clone(),
        tags: created.tags.clone(),
        created_at: created.created_at,
    };
    payloads::emit(&mut tx, auth.tenant_id, &event).await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(created))
}

/// One episode (404 for another tenant's id).
#[utoipa::path(
    get, path = "/v1/episodes/{id}", tag = "episodes", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Episode),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/episodes/{id}")]
pub async fn show(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let found = episode::find(&mut tx, path.into_inner()).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(found))
}

/// The tenant's episodes, oldest first.
#[utoipa::path(
    get, path = "/v1/episodes", tag = "episodes", security(("api_key" = [])),
    params(EpisodeFilter, PageQuery),
    responses(
        (status = 200, body = List<Episode>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/episodes")]
pub async fn index(
    auth: Authenticated,
    filter: web::Query<EpisodeFilter>,
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.page()?;
    if let Some(s) = &filter.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::BadRequest(
            "status must be pending, analyzing, complete or error".into(),
        ));
    }
    let after = page.after_parsed::<Uuid>()?;
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let rows = episode::list(
        &mut tx,
        filter.status.as_deref(),
        filter.tag.as_deref(),
        after,
        page.limit + 1,
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(List::from_rows(rows, &page, |e| e.id.to_string())))
}
