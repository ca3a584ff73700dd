//! `/v1/artifacts` (CONTRACT §4, §8): streamed uploads and downloads of a tenant's artifacts.
//!
//! The artifact path is the request path after `/v1/artifacts/`, percent-decoded exactly once,
//! then checked against the path rules ([`crate::storage::validate_path`]); a refused path is a
//! 400 naming the rule. Another tenant's artifact is simply not found (404).

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, delete, get, put, route, web};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::edge::gateway::auth::Authenticated;
use crate::edge::gateway::error::{ApiError, ErrorBody};
use crate::edge::gateway::pagination::{List, PageQuery};
use crate::edge::gateway::state::AppState;
use crate::schemas::storage::artifact::{self as rows, Artifact};
use crate::storage::artifact::{self, ArtifactError};
use crate::storage::{ByteStream, StorageError, object_key, validate_path};
use crate::workers::artifact_processor;

const PREFIX: &str = "/v1/artifacts/";
/// Body chunks in flight between the connection and the storage task.
const CHANNEL_CHUNKS: usize = 8;
const FALLBACK_TYPE: &str = "application/octet-stream";

/// The artifact path of the request, decoded and validated.
fn artifact_path(req: &HttpRequest) -> Result<String, ApiError> {
    let raw = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("invalid artifact path: not UTF-8".into()))?;
    validate_path(&decoded).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(decoded.into_owned())
}

/// An artifact's metadata, as every artifact route shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactView {
    pub id: Uuid,
    /// The path under `/v1/artifacts/`.
    pub path: String,
    /// Bytes.
    pub size: i64,
    /// Lowercase hex sha256 of the bytes (also the `ETag`).
    pub sha256: String,
    pub content_type: String,
    /// `local`, `s3` or `memory`.
    pub storage_backend: String,
    /// Processing results of the `artifact_processor`.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// Also the `Last-Modified`.
    pub updated_at: DateTime<Utc>,
}

impl From<Artifact> for ArtifactView {
    fn from(a: Artifact) -> Self {
        ArtifactView {
            id: a.id,
            path: a.path,
            size: a.size,
            sha256: a.sha256,
            content_type: a.content_type,
            storage_backend: a.storage_backend,
            metadata: a.metadata,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

impl From<ArtifactError> for ApiError {
    fn from(e: ArtifactError) -> Self {
        match e {
            ArtifactError::Db(e) => e.into(),
            ArtifactError::Storage(e) => e.into(),
        }
    }
}

/// Why an upload failed.
enum UploadError {
    Mismatch { expected: String, actual: String },
    Artifact(ArtifactError),
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Mismatch { expected, actual } => ApiError::BadRequest(format!(
                "checksum mismatch: x-checksum-sha256 is {expected} but the body's sha256 is \
                 {actual}; nothing was stored"
            )),
            UploadError::Artifact(e) => e.into(),
        }
    }
}

/// What the connection hands the storage task.
enum Chunk {
    Data(web::Bytes),
    /// The body ended where the request said it would.
    End,
    Failed(String),
}

/// The receiving end as a body stream. A channel closed without [`Chunk::End`] means the
/// request was cancelled half-way: an error, never a (truncated) end of the body.
fn body_stream(rx: mpsc::Receiver<Chunk>) -> ByteStream<'static> {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Chunk::Data(b)) => Some((Ok(b), Some(rx))),
            Some(Chunk::End) => None,
            Some(Chunk::Failed(e)) => Some((Err(StorageError::Body(e)), None)),
            None => Some((
                Err(StorageError::Body("the upload was cancelled".into())),
                None,
            )),
        }
    })
    .boxed()
}

fn header_str<'a>(req: &'a HttpRequest, name: &str) -> Result<Option<&'a str>, ApiError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
            .map_err(|_| ApiError::BadRequest(format!("{name} is not valid ASCII"))),
    }
}

/// Stores the raw request body (streamed) as the artifact at `path`, replacing any artifact
/// there. `x-checksum-sha256` (hex) is verified before the artifact becomes visible.
#[utoipa::path(
    put, path = "/v1/artifacts/{path}", tag = "artifacts", security(("api_key" = [])),
    params(
        ("path" = String, Path, description = "Artifact path, may contain '/'"),
        ("x-checksum-sha256" = Option<String>, Header, description = "Expected sha256 of the body, hex"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bytes, any Content-Type (kept, or sniffed when absent)"),
    responses(
        (status = 201, body = ArtifactView),
        (status = 400, body = ErrorBody, description = "path rule broken, checksum mismatch or body failed"),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)
    )
)]
#[put("/v1/artifacts/{path:.*}")]
pub async fn upload(
    req: HttpRequest,
    auth: Authenticated,
    state: web::Data<AppState>,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let path = artifact_path(&req)?;
    let storage = state.storage.clone();
    let limit = storage.max_object_bytes();
    let declared_length = header_str(&req, "content-length")?
        .map(|len| len.parse::<u64>())
        .transpose()
        .map_err(|_| ApiError::BadRequest("invalid Content-Length".into()))?;
    if declared_length.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(format!(
            "artifact larger than the limit of {limit} bytes"
        )));
    }
    let expected = match header_str(&req, "x-checksum-sha256")? {
        None => None,
        Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "x-checksum-sha256 must be 64 hex digits (the body's sha256)".into(),
            ));
        }
    };
    // application/octet-stream says nothing more than no type at all: sniff then.
    let declared = header_str(&req, "content-type")?
        .filter(|t| !t.eq_ignore_ascii_case(FALLBACK_TYPE))
        .map(|t| {
            if t.len() <= 255 {
                Ok(t.to_owned())
            } else {
                Err(ApiError::BadRequest("Content-Type is too long".into()))
            }
        })
        .transpose()?;

    // The storage work runs in its own task: a client that goes away cancels this handler,
    // but never a publish half-way (the staged object, row and event stay together).
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let repo = state.repo.clone();
    let tenant = auth.tenant_id;
    let task = tokio::spawn(async move {
        let staged = storage
            .stage(body_stream(rx))
            .await
            .map_err(|e| UploadError::Artifact(e.into()))?;
        if let Some(expected) = expected
            && expected != staged.sha256
        {
            storage.discard(&staged).await;
            return Err(UploadError::Mismatch {
                expected,
                actual: staged.sha256.clone(),
            });
        }
        let content_type = declared
            .or_else(|| staged.sniffed.map(str::to_owned))
            .unwrap_or_else(|| FALLBACK_TYPE.to_owned());
        // Verified again, from the stored bytes, once this commits.
        let verify: artifact::FollowUp = |a| artifact_processor::job(a.tenant_id, a.id, &a.sha256);
        artifact::publish(
            &repo,
            &storage,
            tenant,
            &path,
            &staged,
            &content_type,
            verify,
        )
        .await
        .map_err(UploadError::Artifact)
    });

    let mut ended = true;
    let mut received: u64 = 0;
    while let Some(chunk) = payload.next().await {
        let message = match chunk {
            Ok(bytes) => {
                received += bytes.len() as u64;
                Chunk::Data(bytes)
            }
            Err(e) => Chunk::Failed(e.to_string()),
        };
        let failed = matches!(message, Chunk::Failed(_));
        // A closed channel: the task stopped reading (too large); its result says why.
        if tx.send(message).await.is_err() || failed {
            ended = false;
            break;
        }
    }
    if ended {
        // actix ends the body quietly when the client closes its side half-way, so a body
        // shorter than its Content-Length is how a disconnect shows.
        let last = match declared_length {
            Some(n) if n != received => Chunk::Failed(format!(
                "the body ended after {received} of the {n} bytes of its Content-Length"
            )),
            _ => Chunk::End,
        };
        let _ = tx.send(last).await;
    }
    drop(tx);
    let (row, _replaced) = task
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("upload task failed: {e}")))??;
    Ok(HttpResponse::Created().json(ArtifactView::from(row)))
}

/// A `Range: bytes=…` header resolved against an object of `size` bytes: `Ok(None)` serves
/// the whole object (no header, or several ranges, which we answer in full as RFC 9110
/// allows), `Err` is 416.
fn byte_range(req: &HttpRequest, size: u64) -> Result<Option<std::ops::Range<u64>>, ApiError> {
    let Some(value) = req.headers().get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = ApiError::RangeNotSatisfiable { size };
    let Ok(value) = value.to_str() else {
        return Err(unsatisfiable);
    };
    if value.contains(',') {
        return Ok(None);
    }
    let ranges = http_range_header::parse_range_header(value)
        .and_then(|parsed| parsed.validate(size))
        .map_err(|_| unsatisfiable)?;
    Ok(match ranges.as_slice() {
        [one] => Some(*one.start()..*one.end() + 1),
        _ => None,
    })
}

/// The artifact's bytes (or the `Range` asked for) with `ETag` (its sha256), `Content-Length`,
/// `Last-Modified` and `Content-Type`; `HEAD` gives the headers only.
#[utoipa::path(
    get, path = "/v1/artifacts/{path}", tag = "artifacts", security(("api_key" = [])),
    params(
        ("path" = String, Path, description = "Artifact path, may contain '/'"),
        ("range" = Option<String>, Header, description = "bytes=a-b, bytes=a- or bytes=-n"),
        ("if-none-match" = Option<String>, Header, description = "ETag seen before"),
    ),
    responses(
        (status = 200, body = Vec<u8>, content_type = "*/*", description = "The bytes, with the artifact's own Content-Type"),
        (status = 206, body = Vec<u8>, content_type = "*/*", description = "The requested range"),
        (status = 304), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody),
        (status = 429, body = ErrorBody)
    )
)]
#[route("/v1/artifacts/{path:.*}", method = "GET", method = "HEAD")]
pub async fn download(
    req: HttpRequest,
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let path = artifact_path(&req)?;
    // The row is read first, then the object. An upload replacing the artifact in between
    // shows as an object of another size: read the row again (a few times at most).
    for _ in 0..3 {
        if let Some(res) = respond(&req, &state, auth.tenant_id, &path).await? {
            return Ok(res);
        }
    }
    Err(ApiError::Unavailable(
        "the artifact is being replaced; try again".into(),
    ))
}

/// One attempt at a download; `None` when the object changed under the row.
async fn respond(
    req: &HttpRequest,
    state: &AppState,
    tenant: Uuid,
    path: &str,
) -> Result<Option<HttpResponse>, ApiError> {
    let row = artifact::find(&state.repo, tenant, path)
        .await?
        .ok_or_else(|| ApiError::NotFound("no artifact at this path".into()))?;
    let size = u64::try_from(row.size).unwrap_or_default();
    let etag = format!("\"{}\"", row.sha256);
    let mut res = HttpResponse::build(StatusCode::OK);
    res.insert_header((header::ETAG, etag.clone()))
        .insert_header((
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(row.updated_at.into()),
        ))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_str(&row.content_type)
                .unwrap_or(HeaderValue::from_static(FALLBACK_TYPE)),
        ))
        // Uploaded bytes must never run in the API's origin (CONTRACT §8): the browser takes
        // the type as given, and anything it could execute is a download, not a page.
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            content_disposition(&row.content_type, &row.path),
        ));
    let not_modified = header_str(req, "if-none-match")?
        .is_some_and(|v| v == "*" || v.split(',').any(|t| t.trim() == etag));
    if not_modified {
        return Ok(Some(res.status(StatusCode::NOT_MODIFIED).finish()));
    }
    let range = byte_range(req, size)?;
    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    if let Some(r) = &range {
        res.status(StatusCode::PARTIAL_CONTENT).insert_header((
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        ));
    }
    if req.method() == Method::HEAD {
        return Ok(Some(res.body(SizedStream::new(
            length,
            futures_util::stream::empty::<Result<web::Bytes, StorageError>>(),
        ))));
    }
    if length == 0 {
        return Ok(Some(res.body(web::Bytes::new())));
    }
    let body = match state
        .storage
        .get_stream(&object_key(tenant, &row.path), range)
        .await
    {
        Ok(body) => body,
        Err(StorageError::NotFound(_)) => {
            // Deleted since the row was read (or, were it to persist, a broken invariant).
            return match artifact::find(&state.repo, tenant, path).await? {
                None => Err(ApiError::NotFound("no artifact at this path".into())),
                Some(_) => Ok(None),
            };
        }
        Err(e) => return Err(e.into()),
    };
    if body.info.size != size {
        return Ok(None);
    }
    Ok(Some(res.body(SizedStream::new(length, body.stream))))
}

/// Types a browser shows without running anything: only these are served `inline`.
const INLINE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "text/plain",
    "application/json",
];

/// `inline` for the [`INLINE_TYPES`], `attachment` for everything else (HTML, SVG, XHTML,
/// JavaScript, unknown types...), with the path's last segment as the file name (RFC 6266,
/// percent-encoded UTF-8, so no quoting or header injection is possible).
fn content_disposition(content_type: &str, path: &str) -> String {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) {
        "inline"
    } else {
        "attachment"
    };
    let name = path.rsplit('/').next().unwrap_or(path);
    let name = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("{kind}; filename*=UTF-8''{name}")
}

/// Deletes the artifact: its row and its object.
#[utoipa::path(
    delete, path = "/v1/artifacts/{path}", tag = "artifacts", security(("api_key" = [])),
    params(("path" = String, Path, description = "Artifact path, may contain '/'")),
    responses(
        (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[delete("/v1/artifacts/{path:.*}")]
pub async fn remove(
    req: HttpRequest,
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let path = artifact_path(&req)?;
    let (repo, storage, tenant) = (state.repo.clone(), state.storage.clone(), auth.tenant_id);
    // Like a publish, a delete is finished even when the client goes away.
    let removed =
        tokio::spawn(async move { artifact::remove(&repo, &storage, tenant, &path).await })
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("delete task failed: {e}")))??;
    match removed {
        Some(_) => Ok(HttpResponse::NoContent().finish()),
        None => Err(ApiError::NotFound("no artifact at this path".into())),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only paths starting with this (a plain string prefix, not a glob).
    pub prefix: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's artifacts in path order.
#[utoipa::path(
    get, path = "/v1/artifacts", tag = "artifacts", security(("api_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = List<ArtifactView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
#[get("/v1/artifacts")]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .page()?;
    let prefix = query.prefix.unwrap_or_default();
    if prefix.len() > crate::storage::MAX_PATH_BYTES || prefix.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "prefix must be at most 1024 bytes without control characters".into(),
        ));
    }
    let mut tx = state.repo.tenant_tx(auth.tenant_id).await?;
    let rows = rows::list(&mut tx, &prefix, page.after.as_deref(), page.limit + 1).await?;
    tx.commit().await?;
    let list = List::from_rows(rows, &page, |r| r.path.clone());
    Ok(HttpResponse::Ok().json(List {
        items: list.items.into_iter().map(ArtifactView::from).collect(),
        next_cursor: list.next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::content_disposition;

    #[test]
    fn only_types_a_browser_cannot_run_are_inline() {
        for t in [
            "image/png",
            "IMAGE/JPEG",
            "text/plain; charset=utf-8",
            "application/json",
        ] {
            assert!(content_disposition(t, "a/b").starts_with("inline;"), "{t}");
        }
        for t in [
            "text/html",
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/xhtml+xml",
            "application/javascript",
            "text/javascript",
            "application/octet-stream",
            "application/pdf",
            "",
        ] {
            assert!(
                content_disposition(t, "a/b").starts_with("attachment;"),
                "{t}"
            );
        }
    }

    #[test]
    fn the_file_name_is_percent_encoded() {
        assert_eq!(
            content_disposition("text/html", "site/in dex\"\r\n.html"),
            "attachment; filename*=UTF-8''in%20dex%22%0D%0A%2Ehtml"
        );
    }
}
