//! The one mapping from application errors to HTTP responses (CONTRACT §4):
//! `{"error":{"code":"...","message":"..."}}` with a fixed code per status. Internal details are
//! logged with the request id and never sent to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

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
