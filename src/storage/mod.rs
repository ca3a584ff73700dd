//! Storage (CONTRACT §8, plan §3.4): one [`Storage`] API over the [`Adapter`] behaviour, with
//! the `local`, `s3` and `memory` backends of [`adapters`] chosen by `storage.backend`.
//!
//! Key layout: an artifact `<path>` of tenant `<id>` is the object `tenants/<id>/<path>`.
//! Uploads first stream into `staging/<upload id>` (outside every tenant's prefix), hashing and
//! counting on the way; only a verified upload is moved to its final key, by
//! [`artifact::publish`] while it holds the path's lock inside the transaction that writes the
//! artifact row. See ARCHITECTURE.md ("How an upload flows").

pub mod adapter;
pub mod adapters;
pub mod artifact;
pub mod sweeper;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use adapter::{Adapter, ByteStream, ObjectBody, ObjectInfo};

use crate::config::{StorageBackend, StorageConfig};
use crate::health::{Probe, ProbeError};

/// Longest artifact path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest segment of an artifact path (between `/`), in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Bytes of the start of an upload kept to sniff its content type.
const SNIFF_BYTES: usize = 8 * 1024;
/// Where uploads are written before they are verified.
const STAGING_PREFIX: &str = "staging";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    /// The upload exceeded `storage.max_object_bytes`; nothing was stored.
    #[error("object larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The request body failed (the client went away, or sent a malformed body).
    #[error("request body failed: {0}")]
    Body(String),
    /// The key clashes with another object's: on the local backend a path cannot be both an
    /// artifact and a directory of artifacts (`a` and `a/b`).
    #[error("{0}")]
    Conflict(String),
    /// A key the backend refuses (paths are validated before they become keys, so this is a bug).
    #[error("invalid object key: {0}")]
    InvalidKey(String),
    /// The backend failed or could not be reached.
    #[error("storage backend {backend} failed: {source}")]
    Backend {
        backend: &'static str,
        #[source]
        source: object_store::Error,
    },
    /// The backend could not be set up from the configuration.
    #[error("{0}")]
    Config(String),
}

/// A path the path rules refuse; the message says which rule (it is sent to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid artifact path: {0}")]
pub struct PathError(pub &'static str);

/// Checks an artifact path against the rules of CONTRACT §8 (and the few the backends add).
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError("path is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError("path is longer than 1024 bytes"));
    }
    if path.starts_with('/') {
        return Err(PathError(
            "path must not start with '/' (absolute paths are refused)",
        ));
    }
    if path.contains('\0') {
        return Err(PathError("path must not contain NUL"));
    }
    if path.chars().any(char::is_control) {
        return Err(PathError("path must not contain control characters"));
    }
    if path.ends_with('/') {
        return Err(PathError("path must not end with '/'"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(PathError("path must not contain empty segments ('//')")),
            ".." => return Err(PathError("path must not contain '..' segments")),
            "." => return Err(PathError("path must not contain '.' segments")),
            _ => {}
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(PathError("a path segment is longer than 255 bytes"));
        }
        // The local backend names in-progress writes `<file>#<digits>`.
        if let Some((_, suffix)) = segment.rsplit_once('#')
            && !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(PathError(
                "a path segment must not end in '#' and digits (reserved for uploads in progress)",
            ));
        }
    }
    Ok(())
}

/// The object key of a tenant's artifact: `tenants/<tenant_id>/<path>` (`path` validated).
pub fn object_key(tenant: Uuid, path: &str) -> String {
    format!("tenants/{tenant}/{path}")
}

/// The key prefix of everything a tenant stores.
pub fn tenant_prefix(tenant: Uuid) -> String {
    format!("tenants/{tenant}")
}

/// An upload written to its staging key, with what was computed while it streamed.
#[derive(Debug)]
pub struct Staged {
    /// `staging/<upload id>`
    pub key: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// The content type recognised from the first bytes, if any.
    pub sniffed: Option<&'static str>,
}

/// The process's storage: cheap to clone.
#[derive(Clone)]
pub struct Storage {
    adapter: Arc<dyn Adapter>,
    max_object_bytes: u64,
}

impl Storage {
    /// Builds the configured backend (creating `storage.root` for `local`).
    pub fn from_config(cfg: &StorageConfig) -> Result<Storage, StorageError> {
        Ok(Self::new(adapters::build(cfg)?, cfg.max_object_bytes))
    }

    pub fn new(adapter: Arc<dyn Adapter>, max_object_bytes: u64) -> Storage {
        Storage {
            adapter,
            max_object_bytes,
        }
    }

    pub fn adapter(&self) -> &dyn Adapter {
        self.adapter.as_ref()
    }

    pub fn backend(&self) -> StorageBackend {
        self.adapter.backend()
    }

    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    /// Streams `body` to a fresh staging key, computing its size and sha256 and sniffing its
    /// type on the way. Over `max_object_bytes` → [`StorageError::TooLarge`]. On any error, and
    /// if this future is dropped half-way, the staging object is removed.
    pub async fn stage(&self, body: ByteStream<'_>) -> Result<Staged, StorageError> {
        let key = format!("{STAGING_PREFIX}/{}", Uuid::now_v7());
        let mut guard = StagingGuard {
            storage: Some(self.clone()),
            key: key.clone(),
        };
        let limit = self.max_object_bytes;
        let mut hasher = Sha256::new();
        let mut head: Vec<u8> = Vec::new();
        let mut size: u64 = 0;
        let counted = body.and_then(|chunk: Bytes| {
            size += chunk.len() as u64;
            let result = if size > limit {
                Err(StorageError::TooLarge { limit })
            } else {
                hasher.update(&chunk);
                if head.len() < SNIFF_BYTES {
                    let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                Ok(chunk)
            };
            std::future::ready(result)
        });
        let written = self.adapter.put_stream(&key, counted.boxed()).await;
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                guard.discard().await;
                return Err(e);
            }
        };
        guard.disarm();
        let sniffed = infer::get(&head).map(|t| t.mime_type());
        Ok(Staged {
            key,
            size: written,
            sha256: hex::encode(hasher.finalize()),
            sniffed,
        })
    }

    /// Removes a staged upload that will not be published.
    pub async fn discard(&self, staged: &Staged) {
        if let Err(e) = self.adapter.delete(&staged.key).await {
            tracing::warn!(key = %staged.key, error = %e, "cannot remove a staged upload");
        }
    }

    /// Moves a staged upload to its final key (atomically for readers of that key).
    pub async fn publish(&self, staged: &Staged, key: &str) -> Result<(), StorageError> {
        self.adapter.rename(&staged.key, key).await
    }

    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<ObjectBody, StorageError> {
        self.adapter.get_stream(key, range).await
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.adapter.delete(key).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.adapter.exists(key).await
    }

    /// Removes staging objects last written more than `max_age` ago: uploads a killed process
    /// never published or discarded. Returns how many went.
    pub async fn sweep_staging(&self, max_age: std::time::Duration) -> Result<usize, StorageError> {
        let age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let before = chrono::Utc::now()
            .checked_sub_signed(age)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        self.adapter.sweep(STAGING_PREFIX, before).await
    }
}

/// Removes a staging object unless disarmed, also when the upload's future is dropped (the
/// client went away and the server cancelled the request).
struct StagingGuard {
    storage: Option<Storage>,
    key: String,
}

impl StagingGuard {
    fn disarm(&mut self) {
        self.storage = None;
    }

    async fn discard(&mut self) {
        if let Some(storage) = self.storage.take()
            && let Err(e) = storage.adapter.delete(&self.key).await
        {
            tracing::warn!(key = %self.key, error = %e, "cannot remove a staged upload");
        }
    }
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        let Some(storage) = self.storage.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = storage.adapter.delete(&key).await;
            });
        }
    }
}

impl Probe for Storage {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProbeError>> {
        Box::pin(async move {
            self.adapter.ping().await.map_err(|e| {
                // The backend's own text names hosts, buckets and paths: logged, not shown.
                tracing::warn!(error = %e, "storage readiness check failed");
                ProbeError::Down(match e {
                    StorageError::Backend {
                        source: object_store::Error::NotFound { .. },
                        ..
                    } => "bucket or root not found",
                    StorageError::Backend { .. } => "backend did not answer",
                    _ => "check failed",
                })
            })
        })
    }
}
