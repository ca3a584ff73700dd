//! The `Adapter` behaviour of the plan (§3.4): what every storage backend offers. Keys are
//! `/`-separated object keys (the [`super::Storage`] layer decides their layout); backends are
//! chosen by configuration and built in [`super::adapters`].

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;

use super::StorageError;
use crate::config::StorageBackend;

/// A stream of body bytes going into or out of a backend.
pub type ByteStream<'a> = BoxStream<'a, Result<Bytes, StorageError>>;

/// What a backend knows about one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written.
    pub last_modified: DateTime<Utc>,
    /// The backend's entity tag, when it has one.
    pub e_tag: Option<String>,
}

/// An object being read: its metadata, the byte range being streamed, and the bytes.
pub struct ObjectBody {
    pub info: ObjectInfo,
    /// The range of the object `stream` yields (the whole object when no range was asked for).
    pub range: Range<u64>,
    pub stream: ByteStream<'static>,
}

/// One storage backend. Every method is safe to call concurrently.
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// Which backend this is (`artifacts.storage_backend`, metric label).
    fn backend(&self) -> StorageBackend;

    /// Writes `content` under `key` in one request, replacing any object there.
    async fn store(&self, key: &str, content: Bytes) -> Result<ObjectInfo, StorageError>;

    /// The whole object. Meant for small objects; use [`Adapter::get_stream`] otherwise.
    async fn retrieve(&self, key: &str) -> Result<Bytes, StorageError>;

    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    async fn exists(&self, key: &str) -> Result<bool, StorageError>;

    /// Up to `limit` objects under the directory `prefix` (whole segments: `a/b` lists
    /// `a/b/c`, not `a/bc`), in key order, strictly after the key `after` when given.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Streams `body` into `key` in bounded memory and returns the size written. Bodies larger
    /// than one part go up as a multipart upload, which becomes visible only when it completes;
    /// an error from `body` aborts the upload and is returned as is.
    async fn put_stream(&self, key: &str, body: ByteStream<'_>) -> Result<u64, StorageError>;

    /// Streams the object, or the byte `range` of it (which must lie within the object).
    async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ObjectBody, StorageError>;

    /// Metadata without the bytes.
    async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError>;

    /// Moves `from` to `to`, replacing any object there. Readers of `to` see either the old
    /// object or the new one, never a mix (a rename on disk, a server-side copy on S3). On
    /// success the object is durable (on disk: the file and its directories are fsynced).
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError>;

    /// Removes the objects directly under the directory `prefix` last written before `before`,
    /// including (on disk) the temporary files of writes that never finished; returns how many
    /// went. For sweeping what a killed process left in `staging/`.
    async fn sweep(&self, prefix: &str, before: DateTime<Utc>) -> Result<usize, StorageError>;

    /// Proves the backend answers (the bucket exists and is reachable, the root is readable).
    async fn ping(&self) -> Result<(), StorageError>;
}
