//! The one mapping from application errors to HTTP responses (CONTRACT §4):
//! `{"error":{"code":"...","message":"..."}}` with a fixed code per status. Internal details are
//! logged with the request id and never sent to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use super::rate_limit::Scope;
use crate::repo::DbError;
use crate::storage::StorageError;

/// The error format of every failed request: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large,
    /// unsupported_media_type, validation_failed, rate_limited, unavailable or internal.
    pub code: String,
    /// What went wrong; for validation_failed it starts with the offending field or JSON path.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A `Range` outside an object of `size` bytes (416 with `Content-Range: bytes */size`).
    #[error("range not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// `field` is the offending field or JSON path.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    /// Logged in full; the client sees only "internal error".
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// 429 for a request over the limit of the bucket `by`, retryable after the given seconds.
    pub fn rate_limited(by: Scope, retry_after_secs: u64) -> ApiError {
        ApiError::RateLimited {
            message: format!("rate limit exceeded for this {}", by.describe()),
            retry_after_secs,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => ApiError::NotFound("not found".into()),
            DbError::Validation { field, message } => ApiError::Validation {
                field: field.into(),
                message: message.into(),
            },
            DbError::Conflict { what } => ApiError::Conflict(what),
            DbError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                ApiError::Unavailable("database unavailable".into())
            }
            DbError::Other(e) => ApiError::Internal(e.into()),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(_) => ApiError::NotFound("not found".into()),
            StorageError::TooLarge { limit } => ApiError::PayloadTooLarge(format!(
                "artifact larger than the limit of {limit} bytes"
            )),
            StorageError::Conflict(what) => ApiError::Conflict(what),
            StorageError::Body(reason) => {
                ApiError::BadRequest(format!("request body failed: {reason}"))
            }
            StorageError::Backend { backend, source } => {
                tracing::warn!(backend, error = %source, "storage backend failed");
                ApiError::Unavailable("storage unavailable".into())
            }
            e @ (StorageError::InvalidKey(_) | StorageError::Config(_)) => {
                ApiError::Internal(e.into())
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = format!("{e:#}"), "internal error");
        }
        let mut res = HttpResponse::build(self.status_code());
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            res.insert_header(("retry-after", retry_after_secs.to_string()));
        }
        if let ApiError::RangeNotSatisfiable { size } = self {
            res.insert_header(("content-range", format!("bytes */{size}")));
        }
        res.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    fn rendered(e: ApiError) -> (u16, serde_json::Value, actix_web::http::header::HeaderMap) {
        let res = e.error_response();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().try_into_bytes().unwrap_or_default();
        (
            status,
            serde_json::from_slice(&body).unwrap_or_default(),
            headers,
        )
    }

    #[test]
    fn every_error_renders_its_contract_code_and_status() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::BadRequest("b".into()), 400, "bad_request"),
            (ApiError::Unauthorized("u".into()), 401, "unauthorized"),
            (ApiError::Forbidden("f".into()), 403, "forbidden"),
            (ApiError::NotFound("n".into()), 404, "not_found"),
            (ApiError::Conflict("c".into()), 409, "conflict"),
            (
                ApiError::PayloadTooLarge("p".into()),
                413,
                "payload_too_large",
            ),
            (
                ApiError::UnsupportedMediaType("m".into()),
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::RangeNotSatisfiable { size: 20 },
                416,
                "range_not_satisfiable",
            ),
            (
                ApiError::Validation {
                    field: "rules.then[0]".into(),
                    message: "bad".into(),
                },
                422,
                "validation_failed",
            ),
            (
                ApiError::RateLimited {
                    message: "slow down".into(),
                    retry_after_secs: 7,
                },
                429,
                "rate_limited",
            ),
            (ApiError::Unavailable("down".into()), 503, "unavailable"),
            (
                ApiError::Internal(anyhow::anyhow!("password=hunter2 at db.internal:5432")),
                500,
                "internal",
            ),
        ];
        for (error, status, code) in cases {
            let (s, body, headers) = rendered(error);
            assert_eq!((s, body["error"]["code"].as_str()), (status, Some(code)));
            assert!(body["error"]["message"].is_string(), "{body}");
            match status {
                416 => assert_eq!(headers.get("content-range").unwrap(), "bytes */20"),
                422 => assert_eq!(body["error"]["message"], "rules.then[0]: bad"),
                429 => assert_eq!(headers.get("retry-after").unwrap(), "7"),
                // The cause is logged, never sent.
                500 => assert_eq!(body["error"]["message"], "internal error"),
                _ => {}
            }
        }
    }

    #[test]
    fn database_and_storage_errors_map_without_leaking_details() {
        let field = ApiError::from(DbError::Validation {
            field: "title",
            message: "must be 1 to 500 characters",
        });
        assert_eq!(field.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(field.to_string(), "title: must be 1 to 500 characters");
        let down = ApiError::from(DbError::Unavailable("connect to 10.0.0.5 refused".into()));
        assert_eq!(down.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!down.to_string().contains("10.0.0.5"), "{down}");
        assert_eq!(
            ApiError::from(DbError::NotFound).status_code(),
            StatusCode::NOT_FOUND
        );
        let big = ApiError::from(StorageError::TooLarge { limit: 10 });
        assert_eq!(big.status_code(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = ApiError::from(StorageError::Body("client went away".into()));
        assert_eq!(body.status_code(), StatusCode::BAD_REQUEST);
        let key = ApiError::from(StorageError::InvalidKey("tenants/x/../y".into()));
        assert_eq!(key.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(key.to_string(), "internal error");
    }
}
