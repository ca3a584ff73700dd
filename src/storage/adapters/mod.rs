//! The backends. All three are `object_store` stores behind one [`Adapter`] implementation,
//! [`ObjectStoreAdapter`]; each backend's module only builds its store. What `object_store`
//! lacks is written here: streaming puts that switch to multipart past one part, key-ordered
//! listing with a limit, large-chunk file reads, and metrics for every operation.

pub mod local;
pub mod memory;
pub mod s3;

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload,
    WriteMultipart,
};

use super::StorageError;
use super::adapter::{Adapter, ByteStream, ObjectBody, ObjectInfo};
use crate::config::{StorageBackend, StorageConfig};
use crate::metrics::METRICS;

/// Part size of multipart uploads (S3's minimum part size), and the most a put buffers before
/// it switches from one request to a multipart upload.
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts uploaded at once; with [`PART_SIZE`] this bounds an upload's buffers to about 20 MiB.
const PART_CONCURRENCY: usize = 3;
/// Read size for objects on the local disk.
const FILE_CHUNK: usize = 256 * 1024;

/// Builds the configured backend.
pub fn build(cfg: &StorageConfig) -> Result<Arc<dyn Adapter>, StorageError> {
    let adapter = match cfg.backend {
        StorageBackend::Local => local::build(&cfg.root)?,
        StorageBackend::S3 => s3::build(&cfg.s3)?,
        StorageBackend::Memory => memory::shared(),
    };
    Ok(Arc::new(adapter))
}

/// An `object_store` store as an [`Adapter`].
pub struct ObjectStoreAdapter {
    store: Arc<dyn ObjectStore>,
    backend: StorageBackend,
    /// The `local` backend's file system and canonical root: renames are fsynced there.
    local: Option<(Arc<LocalFileSystem>, std::path::PathBuf)>,
}

impl ObjectStoreAdapter {
    pub fn new(store: Arc<dyn ObjectStore>, backend: StorageBackend) -> Self {
        Self {
            store,
            backend,
            local: None,
        }
    }

    /// Marks the store as the directory `root` on this machine (see [`local::sync_published`]).
    pub fn with_local(mut self, fs: Arc<LocalFileSystem>, root: std::path::PathBuf) -> Self {
        self.local = Some((fs, root));
        self
    }

    /// On the local backend, makes the object at `path` durable (counted as operation `sync`).
    async fn sync(&self, path: &Path) -> Result<(), StorageError> {
        let Some((fs, root)) = &self.local else {
            return Ok(());
        };
        let started = Instant::now();
        let result = async {
            let file = fs.path_to_filesystem(path).map_err(|e| self.error(e))?;
            let root = root.clone();
            let synced =
                tokio::task::spawn_blocking(move || local::sync_published(&root, &file)).await;
            synced
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|e| {
                    self.error(object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    })
                })
        }
        .await;
        self.observe("sync", started, &result);
        result
    }

    fn label(&self) -> &'static str {
        self.backend.as_str()
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        Path::parse(key).map_err(|e| StorageError::InvalidKey(e.to_string()))
    }

    fn error(&self, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
            e if file_dir_clash(&e) => StorageError::Conflict(
                "the path clashes with another artifact's: on this backend a path cannot be \
                 both an artifact and a folder of artifacts (a and a/b)"
                    .to_owned(),
            ),
            source => StorageError::Backend {
                backend: self.label(),
                source,
            },
        }
    }

    /// Counts and times one operation by its outcome.
    fn observe<T>(&self, op: &str, started: Instant, result: &Result<T, StorageError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(StorageError::NotFound(_)) => "not_found",
            Err(StorageError::TooLarge { .. } | StorageError::Body(_)) => "aborted",
            Err(StorageError::Conflict(_)) => "conflict",
            Err(_) => "error",
        };
        METRICS
            .storage_operations
            .with_label_values(&[self.label(), op, outcome])
            .inc();
        METRICS
            .storage_duration
            .with_label_values(&[self.label(), op])
            .observe(started.elapsed().as_secs_f64());
    }

    fn bytes(&self, direction: &str, n: u64) {
        METRICS
            .storage_bytes
            .with_label_values(&[self.label(), direction])
            .inc_by(n);
    }

    async fn put_stream_inner(
        &self,
        path: &Path,
        mut body: ByteStream<'_>,
    ) -> Result<u64, StorageError> {
        let mut size: u64 = 0;
        let mut first: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        let mut upload: Option<WriteMultipart> = None;
        while let Some(next) = body.next().await {
            let chunk = match next {
                Ok(chunk) => chunk,
                Err(e) => {
                    if let Some(upload) = upload {
                        // Nothing was completed, so nothing is visible; aborting frees the parts.
                        if let Err(abort) = upload.abort().await {
                            tracing::warn!(error = %abort, "aborting a multipart upload failed");
                        }
                    }
                    return Err(e);
                }
            };
            size += chunk.len() as u64;
            self.bytes("in", chunk.len() as u64);
            match upload.as_mut() {
                Some(writer) => {
                    if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                        if let Some(upload) = upload.take() {
                            let _ = upload.abort().await;
                        }
                        return Err(self.error(e));
                    }
                    writer.put(chunk);
                }
                None => {
                    buffered += chunk.len();
                    first.push(chunk);
                    if buffered >= PART_SIZE {
                        let parts = self
                            .store
                            .put_multipart(path)
                            .await
                            .map_err(|e| self.error(e))?;
                        let mut writer = WriteMultipart::new_with_chunk_size(parts, PART_SIZE);
                        for b in first.drain(..) {
                            writer.put(b);
                        }
                        upload = Some(writer);
                    }
                }
            }
        }
        match upload {
            Some(writer) => writer.finish().await.map_err(|e| self.error(e))?,
            // Small bodies go up in one request.
            None => self
                .store
                .put(path, PutPayload::from_iter(first))
                .await
                .map_err(|e| self.error(e))?,
        };
        Ok(size)
    }

    async fn get_stream_inner(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
    ) -> Result<ObjectBody, StorageError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(path, options)
            .await
            .map_err(|e| self.error(e))?;
        let info = info(&result.meta);
        let range = result.range.clone();
        let backend = self.backend;
        let stream: ByteStream<'static> = match result.payload {
            // object_store reads files 8 KiB per blocking task; larger reads are much cheaper.
            GetResultPayload::File(file, _) => file_stream(file, range.clone(), backend),
            GetResultPayload::Stream(s) => s
                .map_err(move |e| StorageError::Backend {
                    backend: backend.as_str(),
                    source: e,
                })
                .boxed(),
        };
        let label = self.label();
        let stream = stream
            .inspect_ok(move |b| {
                METRICS
                    .storage_bytes
                    .with_label_values(&[label, "out"])
                    .inc_by(b.len() as u64)
            })
            .boxed();
        Ok(ObjectBody {
            info,
            range,
            stream,
        })
    }

    async fn list_inner(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StorageError> {
        let prefix = self.path(prefix)?;
        let listing = match after {
            Some(after) => self
                .store
                .list_with_offset(Some(&prefix), &self.path(after)?),
            None => self.store.list(Some(&prefix)),
        };
        let mut items: Vec<ObjectInfo> = match self.backend {
            // S3 and the memory store list in key order, so the first `limit` are the answer.
            StorageBackend::S3 | StorageBackend::Memory => listing
                .take(limit)
                .map_ok(|m| info(&m))
                .try_collect()
                .await
                .map_err(|e| self.error(e))?,
            // A directory walk has no order: read it all, then sort.
            StorageBackend::Local => listing
                .map_ok(|m| info(&m))
                .try_collect()
                .await
                .map_err(|e| self.error(e))?,
        };
        items.sort_by(|a, b| a.key.cmp(&b.key));
        items.truncate(limit);
        Ok(items)
    }
}

impl ObjectStoreAdapter {
    /// [`Adapter::sweep`] by listing, a page at a time (S3, memory).
    async fn sweep_listed(
        &self,
        prefix: &str,
        before: DateTime<Utc>,
    ) -> Result<usize, StorageError> {
        const PAGE: usize = 1000;
        let mut removed = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self.list_inner(prefix, after.as_deref(), PAGE).await?;
            for object in page.iter().filter(|o| o.last_modified < before) {
                match self.store.delete(&self.path(&object.key)?).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => return Err(self.error(e)),
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.key.clone()),
                _ => return Ok(removed),
            }
        }
    }
}

/// A filesystem refusing a file where a directory is (or the reverse).
fn file_dir_clash(e: &object_store::Error) -> bool {
    use std::io::ErrorKind;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::DirectoryNotEmpty
            )
        {
            return true;
        }
        source = err.source();
    }
    false
}

fn info(meta: &ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: meta.location.to_string(),
        size: meta.size,
        last_modified: meta.last_modified,
        e_tag: meta.e_tag.clone(),
    }
}

/// Reads `range` of an open file in [`FILE_CHUNK`] pieces, one blocking task per piece.
fn file_stream(
    file: std::fs::File,
    range: Range<u64>,
    backend: StorageBackend,
) -> ByteStream<'static> {
    let io = move |e: std::io::Error| StorageError::Backend {
        backend: backend.as_str(),
        source: object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        },
    };
    futures_util::stream::try_unfold(
        (Some(file), range.start, range.end),
        move |(file, pos, end)| async move {
            let Some(mut file) = file else {
                return Ok(None);
            };
            if pos >= end {
                return Ok(None);
            }
            let want = (end - pos).min(FILE_CHUNK as u64) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                file.seek(SeekFrom::Start(pos))?;
                file.read_exact(&mut buf)?;
                Ok::<_, std::io::Error>((file, buf))
            })
            .await
            .map_err(|e| io(std::io::Error::other(e)))?;
            let (file, buf) = read.map_err(io)?;
            Ok(Some((
                Bytes::from(buf),
                (Some(file), pos + want as u64, end),
            )))
        },
    )
    .boxed()
}

#[async_trait]
impl Adapter for ObjectStoreAdapter {
    fn backend(&self) -> StorageBackend {
        self.backend
    }

    async fn store(&self, key: &str, content: Bytes) -> Result<ObjectInfo, StorageError> {
        let started = Instant::now();
        let result = async {
            let path = self.path(key)?;
            let n = content.len() as u64;
            self.store
                .put(&path, PutPayload::from(content))
                .await
                .map_err(|e| self.error(e))?;
            self.bytes("in", n);
            let meta = self.store.head(&path).await.map_err(|e| self.error(e))?;
            Ok(info(&meta))
        }
        .await;
        self.observe("store", started, &result);
        result
    }

    async fn retrieve(&self, key: &str) -> Result<Bytes, StorageError> {
        let started = Instant::now();
        let result = async {
            let path = self.path(key)?;
            let got = self.store.get(&path).await.map_err(|e| self.error(e))?;
            let bytes = got.bytes().await.map_err(|e| self.error(e))?;
            self.bytes("out", bytes.len() as u64);
            Ok(bytes)
        }
        .await;
        self.observe("retrieve", started, &result);
        result
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let started = Instant::now();
        let result = async {
            let path = self.path(key)?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.error(e)),
            }
        }
        .await;
        self.observe("delete", started, &result);
        result
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let started = Instant::now();
        let result = async {
            let path = self.path(key)?;
            match self.store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.error(e)),
            }
        }
        .await;
        self.observe("exists", started, &result);
        result
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StorageError> {
        let started = Instant::now();
        let result = self.list_inner(prefix, after, limit).await;
        self.observe("list", started, &result);
        result
    }

    async fn put_stream(&self, key: &str, body: ByteStream<'_>) -> Result<u64, StorageError> {
        let started = Instant::now();
        let result = match self.path(key) {
            Ok(path) => self.put_stream_inner(&path, body).await,
            Err(e) => Err(e),
        };
        self.observe("put_stream", started, &result);
        result
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ObjectBody, StorageError> {
        let started = Instant::now();
        let result = match self.path(key) {
            Ok(path) => self.get_stream_inner(&path, range).await,
            Err(e) => Err(e),
        };
        self.observe("get_stream", started, &result);
        result
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError> {
        let started = Instant::now();
        let result = async {
            let path = self.path(key)?;
            let meta = self.store.head(&path).await.map_err(|e| self.error(e))?;
            Ok(info(&meta))
        }
        .await;
        self.observe("head", started, &result);
        result
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let started = Instant::now();
        let result = async {
            let (from, to) = (self.path(from)?, self.path(to)?);
            self.store
                .rename(&from, &to)
                .await
                .map_err(|e| self.error(e))?;
            // Durable before the caller commits the row that points at it.
            self.sync(&to).await
        }
        .await;
        self.observe("rename", started, &result);
        result
    }

    async fn sweep(&self, prefix: &str, before: DateTime<Utc>) -> Result<usize, StorageError> {
        let started = Instant::now();
        let result = match &self.local {
            // A directory read sees what listing hides: `<key>#<n>` files of unfinished writes.
            Some((fs, _)) => {
                let dir = fs
                    .path_to_filesystem(&self.path(prefix)?)
                    .map_err(|e| self.error(e))?;
                tokio::task::spawn_blocking(move || local::remove_files_older_than(&dir, before))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map_err(|e| {
                        self.error(object_store::Error::Generic {
                            store: "LocalFileSystem",
                            source: Box::new(e),
                        })
                    })
            }
            None => self.sweep_listed(prefix, before).await,
        };
        self.observe("sweep", started, &result);
        result
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let started = Instant::now();
        // Listing a (normally empty) directory needs the bucket or root to exist and answer.
        let result = self
            .store
            .list_with_delimiter(Some(&Path::from("health")))
            .await
            .map(|_| ())
            .map_err(|e| self.error(e));
        self.observe("ping", started, &result);
        result
    }
}
