//! Episodes (CONTRACT §4): creating one commits the episode, its analysis job and its
//! `episode.created` event together (`episode_analyzer::intake`, shared with the bot's
//! `/report`); lists filter by status and tag with keyset pages.

use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::edge::gateway::query::QueryText;
use crate::edge::gateway::state::AppState;
use crate::schemas::vsm::episode::{self, Episode, EpisodeStatus};
use crate::workers::episode_analyzer::intake::{self, EpisodeInput, IntakeError};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEpisode {
    /// 1 to 500 characters.
    #[schema(min_length = 1, max_length = 500)]
    pub title: String,
    pub content: String,
    pub source: Option<String>,
    /// At most 50, each 1 to 100 bytes.
    #[schema(max_items = 50)]
    pub tags: Option<Vec<String>>,
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EpisodeFilter {
    /// pending, analyzing, complete or error.
    pub status: Option<String>,
    /// Only episodes carrying this tag.
    #[param(value_type = Option<String>)]
    pub tag: Option<QueryText>,
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
        (status = 201, body = Episode, headers(("location" = String, description = "/v1/episodes/{id}"))),
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
    let input = EpisodeInput {
        title: body.title,
        content: body.content,
        source: body.source,
        kind: body.kind,
        tags: body.tags.unwrap_or_default(),
    };
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let created = intake::submit(&mut tx, input).await.map_err(|e| match e {
        IntakeError::Invalid { field, message } => invalid(&field, message),
        IntakeError::Db(e) => e.into(),
    })?;
    tx.commit().await?;
    Ok(super::created(
        format!("/v1/episodes/{}", created.id),
        created,
    ))
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
    let found = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            episode::find(tx, path.into_inner()).await
        })
        .await?;
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
    let status = filter
        .status
        .as_deref()
        .map(str::parse::<EpisodeStatus>)
        .transpose()
        .map_err(|_| ApiError::BadRequest(format!("status must be {}", EpisodeStatus::names())))?;
    let after = page.after_parsed::<Uuid>()?;
    let rows = state
        .repo
        .tenant_read(auth.tenant_id, async |tx| {
            episode::list(tx, status, filter.tag.as_deref(), after, page.limit + 1).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(List::from_rows(rows, &page, |e| e.id.to_string())))
}
