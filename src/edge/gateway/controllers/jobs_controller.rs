//! Jobs and queues (CONTRACT §4): a tenant lists, inspects, cancels and retries its own jobs
//! (row-level security: another tenant's job is 404); queue counts are the tenant's, pausing
//! and resuming a queue is cluster-wide and needs the admin token. Only jobs of tenant-scoped
//! workers ([`crate::jobs::Scope::Tenant`]) may be retried by a tenant: a system job that
//! carries a tenant id (e.g. enqueued by a policy before such enqueues were refused) is 403.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::edge::gateway::auth::{Admin, Authenticated, Viewer};
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::edge::gateway::query::QueryText;
use crate::edge::gateway::state::AppState;
use crate::jobs::JobState;
use crate::jobs::storage::{self as jobs, Job};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    #[param(value_type = Option<String>)]
    pub queue: Option<QueryText>,
    /// available, scheduled, executing, retryable, completed, discarded or cancelled.
    pub state: Option<String>,
    /// The worker's name (`episode_analyzer`).
    #[param(value_type = Option<String>)]
    pub worker: Option<QueryText>,
}

/// The tenant's jobs, newest first.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", security(("api_key" = [])),
    params(JobFilter, PageQuery),
    responses(
        (status = 200, body = List<Job>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/jobs")]
pub async fn index(
    auth: Authenticated,
    filter: web::Query<JobFilter>,
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.page()?;
    let job_state = filter
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(|_| {
            let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!("state must be one of {}", all.join(", ")))
        })?;
    let before = page.after_parsed::<Uuid>()?;
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let rows = jobs::list(
        &mut tx,
        filter.queue.as_deref(),
        job_state,
        filter.worker.as_deref(),
        before,
        page.limit + 1,
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(List::from_rows(rows, &page, |j| j.id.to_string())))
}

/// One job with its per-attempt errors.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Job),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/jobs/{id}")]
pub async fn show(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let job = jobs::find(&mut tx, path.into_inner()).await?;
    tx.commit().await?;
    job.map(|j| HttpResponse::Ok().json(j))
        .ok_or_else(|| ApiError::NotFound("no such job".into()))
}

/// Cancels a job that has not ended (an executing one is stopped by its node).
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Job),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the job already ended"), (status = 429, body = ErrorBody)
    )
)]
#[post("/v1/jobs/{id}/cancel")]
pub async fn cancel(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    change(&state, auth, path.into_inner(), Change::Cancel).await
}

/// Makes a job that is not running available again (a discarded one gets another attempt).
#[utoipa::path(
    post, path = "/v1/jobs/{id}/retry", tag = "jobs", security(("api_key" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Job),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "the job's worker is platform work, not the tenant's"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the job is running or already available"),
        (status = 429, body = ErrorBody)
    )
)]
#[post("/v1/jobs/{id}/retry")]
pub async fn retry(
    auth: Authenticated,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    change(&state, auth, path.into_inner(), Change::Retry).await
}

enum Change {
    Cancel,
    Retry,
}

async fn change(
    state: &AppState,
    auth: Authenticated,
    id: Uuid,
    change: Change,
) -> Result<HttpResponse, ApiError> {
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let changed = match change {
        Change::Cancel => jobs::cancel(&mut tx, id).await?,
        Change::Retry => {
            let Some(job) = jobs::find(&mut tx, id).await? else {
                return Err(ApiError::NotFound("no such job".into()));
            };
            // A retry runs the worker again on the tenant's say-so: only tenant work may be.
            if !state.workers.is_tenant_scoped(&job.worker) {
                return Err(ApiError::Forbidden(format!(
                    "jobs of {} are platform work and cannot be retried by a tenant",
                    job.worker
                )));
            }
            jobs::retry(&mut tx, id).await?
        }
    };
    let result = match changed {
        Some(job) => Ok(HttpResponse::Ok().json(job)),
        // Tell "no such job" (or another tenant's) from "not in a state that allows it".
        None => match jobs::find(&mut tx, id).await? {
            None => Err(ApiError::NotFound("no such job".into())),
            Some(job) => Err(ApiError::Conflict(format!("the job is {}", job.state))),
        },
    };
    tx.commit().await?;
    result
}

/// A queue as the tenant sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// Jobs per node running at once, as configured on this instance (0 if not configured here).
    pub concurrency: usize,
    /// Paused cluster-wide.
    pub paused: bool,
    /// The tenant's jobs in this queue by state (the operator: every tenant's).
    pub counts: BTreeMap<String, i64>,
}

/// Queues with the tenant's job counts per state (with the admin token: every tenant's jobs).
#[utoipa::path(
    get, path = "/v1/queues", tag = "queues", security(("api_key" = []), ("admin_token" = [])),
    responses(
        (status = 200, body = List<QueueView>),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/queues")]
pub async fn queues(viewer: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (counts, paused) = match viewer {
        Viewer::Tenant(auth) => {
            let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
            let found = (
                jobs::counts(&mut tx).await?,
                jobs::paused_queues(&mut tx).await?,
            );
            tx.commit().await?;
            found
        }
        // The operator sees every tenant's jobs (the system role reads the jobs table only).
        Viewer::Operator => {
            let mut tx = state.repo.system_tx().await?;
            let found = (
                jobs::counts(&mut tx).await?,
                jobs::paused_queues(&mut tx).await?,
            );
            tx.commit().await?;
            found
        }
    };
    let mut views: BTreeMap<String, QueueView> = BTreeMap::new();
    let configured = &state.config.jobs.queues;
    let names = configured
        .keys()
        .cloned()
        .chain(counts.iter().map(|(q, _, _)| q.clone()))
        .chain(paused.iter().cloned());
    for name in names {
        views.entry(name.clone()).or_insert_with(|| QueueView {
            concurrency: configured.get(&name).copied().unwrap_or(0),
            paused: paused.contains(&name),
            counts: JobState::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect(),
            name,
        });
    }
    for (queue, job_state, n) in counts {
        if let Some(view) = views.get_mut(&queue) {
            view.counts.insert(job_state.as_str().to_owned(), n);
        }
    }
    Ok(HttpResponse::Ok().json(List {
        items: views.into_values().collect(),
        next_cursor: None,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct QueueAction {
    /// Queue name.
    pub name: String,
    /// `pause` or `resume`.
    pub action: String,
}

/// Pauses or resumes a queue on every node, durably (admin token).
#[utoipa::path(
    post, path = "/v1/queues/{name}/{action}", tag = "queues", security(("admin_token" = [])),
    params(QueueAction),
    responses(
        (status = 204, description = "done"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    )
)]
#[post("/v1/queues/{name}/{action}")]
pub async fn pause_or_resume(
    _admin: Admin,
    path: web::Path<QueueAction>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let paused = match path.action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return Err(ApiError::NotFound(
                "no such route: use pause or resume".into(),
            ));
        }
    };
    if !valid_queue_name(&path.name) {
        return Err(ApiError::NotFound("no such queue".into()));
    }
    let mut tx = state.repo.system_tx().await?;
    jobs::set_paused(&mut tx, &path.name, paused).await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

fn valid_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
