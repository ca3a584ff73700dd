//! The built-in dashboard (CONTRACT §11): the page and its assets (embedded in the binary), and
//! sign-in, the current session, sign-out and the platform-health view. Everything else the page
//! shows comes from the `/v1` API, which accepts the session cookie in place of the key
//! (`auth.rs`, `session.rs`), so the dashboard can do exactly what the key can and nothing more.
//!
//! The page is one HTML shell with no data in it; the script asks `GET /dashboard/session`
//! and shows the sign-in form until there is a session.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::edge::gateway::auth;
use crate::edge::gateway::credentials::{Principal, Session};
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::session;
use crate::edge::gateway::state::AppState;
use crate::repo::NewDashboardSession;

/// The page's files, compiled into the binary: (path under `/dashboard/assets/`, type, bytes).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../dashboard/app.css"),
    ),
];
const INDEX: &str = include_str!("../dashboard/index.html");

/// No inline script or style, nothing from another origin, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The headers every dashboard response carries.
fn hardened(mut builder: HttpResponseBuilder) -> HttpResponseBuilder {
    builder
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    builder
}

/// The page (the same shell signed in or not: it holds no data).
#[get("/dashboard")]
pub async fn index() -> HttpResponse {
    index_page()
}

/// `/dashboard/` answers like `/dashboard`.
#[get("/dashboard/")]
pub async fn index_slash() -> HttpResponse {
    index_page()
}

fn index_page() -> HttpResponse {
    hardened(HttpResponse::Ok())
        .content_type("text/html; charset=utf-8")
        .body(INDEX)
}

/// The page's script and style, revalidated by their content hash (`ETag`).
#[get("/dashboard/assets/{name}")]
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name.as_str())
        .ok_or_else(|| ApiError::NotFound("no such asset".into()))?;
    let etag = format!("\"{}\"", hex::encode(&session::sha256(body)[..8]));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = hardened(if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    });
    response
        .insert_header((header::ETAG, etag))
        .content_type(*content_type);
    Ok(if fresh {
        response.finish()
    } else {
        response.body(*body)
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API key (that tenant's view) or the admin token (the operator's view).
    pub credential: String,
}

/// The signed-in session as the page needs it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// `tenant` or `operator`.
    pub kind: &'static str,
    pub tenant_id: Option<Uuid>,
    /// Send it back as `X-CSRF-Token` on every state-changing request.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        let (kind, tenant_id) = match s.principal {
            Principal::Tenant { tenant_id, .. } => ("tenant", Some(tenant_id)),
            Principal::Operator => ("operator", None),
        };
        Self {
            kind,
            tenant_id,
            csrf_token: s.csrf_token.clone(),
            expires_at: s.expires_at,
        }
    }
}

/// Longest credential considered (keys are 68 characters).
const MAX_CREDENTIAL: usize = 1024;

/// Exchanges an API key or the admin token for a session cookie (`HttpOnly`, `SameSite=Strict`,
/// `Secure` behind a trusted TLS proxy). Only from this site's own page (`Origin`).
#[utoipa::path(
    post, path = "/dashboard/sign-in", tag = "dashboard",
    request_body = SignIn,
    responses(
        (status = 200, body = SessionView, description = "signed in; the cookie is set"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "wrong key or token"),
        (status = 403, body = ErrorBody, description = "not from this site's page (Origin)"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[post("/dashboard/sign-in")]
pub async fn sign_in(
    req: HttpRequest,
    body: web::Json<SignIn>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Login CSRF: another site must not sign the browser in under its own key.
    session::check_origin(&req)?;
    let credential = body.credential.trim();
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Err(ApiError::Validation {
            field: "credential".into(),
            message: format!("must be 1 to {MAX_CREDENTIAL} characters"),
        });
    }
    let admin = state.config.server.admin_token.as_ref();
    let (principal, admin_hash) = match admin {
        Some(expected) if auth::is_admin_token(credential, expected.expose()) => (
            Principal::Operator,
            Some(session::sha256(expected.expose())),
        ),
        // Anything else is a key: the same lookup (and failed-authentication bucket) and the
        // same per-key and per-tenant buckets as a Bearer request.
        _ => {
            let (api_key_id, tenant_id) = auth::resolve_key(&req, &state, credential).await?;
            auth::charge(&req, &state, api_key_id, tenant_id).await?;
            let principal = Principal::Tenant {
                tenant_id,
                api_key_id,
            };
            (principal, None)
        }
    };
    let api_key_id = match principal {
        Principal::Tenant { api_key_id, .. } => Some(api_key_id),
        Principal::Operator => None,
    };
    let token = session::random_token();
    let token_hash = session::sha256(&token);
    let csrf_token = session::random_token();
    let ttl = state.config.dashboard.session_ttl_secs;
    let opened = state
        .repo
        .open_dashboard_session(&NewDashboardSession {
            token_hash: &token_hash,
            api_key_id,
            admin_token_hash: admin_hash.as_ref().map(|h| h.as_slice()),
            csrf_token: &csrf_token,
            ttl_secs: i32::try_from(ttl).unwrap_or(i32::MAX),
            keep: session::SESSIONS_PER_KEY,
        })
        .await?;
    if !opened {
        return Err(ApiError::Unauthorized("invalid API key".into()));
    }
    let expires_at = Utc::now() + chrono::Duration::seconds(i64::from(ttl));
    let view = SessionView::from(&Session::new(principal, csrf_token, expires_at, token_hash));
    let secure = session::is_secure(&req, &state);
    Ok(hardened(HttpResponse::Ok())
        .insert_header((
            header::SET_COOKIE,
            cookie(&session::set_cookie(&token, ttl, secure))?,
        ))
        .json(view))
}

fn cookie(value: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(value).map_err(|e| ApiError::Internal(anyhow::anyhow!("cookie: {e}")))
}

async fn require(req: &HttpRequest, state: &AppState) -> Result<Session, ApiError> {
    session::from_request(req, state)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("not signed in".into()))
}

/// The current session (401 when signed out).
#[utoipa::path(
    get, path = "/dashboard/session", tag = "dashboard",
    responses(
        (status = 200, body = SessionView),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/dashboard/session")]
pub async fn current(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = require(&req, &state).await?;
    Ok(hardened(HttpResponse::Ok()).json(SessionView::from(&session)))
}

/// Ends the session (needs its CSRF token) and removes the cookie.
#[utoipa::path(
    post, path = "/dashboard/sign-out", tag = "dashboard",
    params(("X-CSRF-Token" = String, Header, description = "the session's CSRF token")),
    responses(
        (status = 204, description = "signed out"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[post("/dashboard/sign-out")]
pub async fn sign_out(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = require(&req, &state).await?;
    session::check_csrf(&req, &session)?;
    state
        .repo
        .close_dashboard_session(&session.token_hash)
        .await?;
    state.sessions.forget(&session.token_hash);
    let secure = session::is_secure(&req, &state);
    Ok(hardened(HttpResponse::NoContent())
        .insert_header((header::SET_COOKIE, cookie(&session::clear_cookie(secure))?))
        .finish())
}

/// Platform health for a signed-in viewer: this instance's `/ready` checks and the latest
/// `health_check` run.
#[utoipa::path(
    get, path = "/dashboard/health", tag = "dashboard",
    responses(
        (status = 200, description = "`{\"ready\":{status,checks},\"ready_ok\":bool,\"last_check\":{status,checks,checked_at}|null}`"),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/dashboard/health")]
pub async fn health(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(&req, &state).await?;
    let (ready_ok, ready) = state.readiness.report().await;
    let mut tx = state.repo.system_tx().await?;
    let last = crate::schemas::jobs::health_check::latest(&mut tx).await?;
    tx.commit().await?;
    let last_check = last.map(|(status, checks, checked_at)| {
        json!({"status": status, "checks": checks, "checked_at": checked_at})
    });
    Ok(hardened(HttpResponse::Ok()).json(json!({
        "ready": ready,
        "ready_ok": ready_ok,
        "last_check": last_check,
    })))
}
