//! `artifact_processor` (queue `default`), enqueued in the transaction that stores an artifact:
//! re-reads the stored object, verifies its size and sha256 against the row, sniffs its content
//! type from its bytes, records the result under the row's `metadata.processing` and emits
//! `artifact.processed`, both in one tenant transaction.
//!
//! A mismatch (or a missing object) is a finding, not a failure: it is recorded with
//! `status: "error"` and the job completes. Only an unreachable backend or database fails the
//! attempt (and retries). A job whose artifact was deleted, or replaced by other bytes (whose
//! own job will look at them), has nothing to do and completes.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::events::payloads::{self, ArtifactProcessed};
use crate::jobs::{
    Job, JobContext, JobResult, NewJob, Outcome, Scope, Worker, job_for, parse_args,
};
use crate::schemas::storage::artifact::{self, Artifact};
use crate::storage::{Storage, StorageError, object_key};

pub const NAME: &str = "artifact_processor";
/// Bytes of the object's start given to the type sniffer.
const SNIFF_BYTES: usize = 8 * 1024;

/// The worker; it opens the configured storage on first use.
#[derive(Default)]
pub struct ArtifactProcessor {
    storage: OnceLock<Storage>,
}

/// The processing job of the artifact `artifact_id` as stored with digest `sha256`; insert it
/// in the transaction that stores the artifact.
/// The processor's arguments: which artifact, and the digest its row had when it was stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    pub artifact_id: Uuid,
    pub sha256: String,
}

pub fn job(tenant_id: Uuid, artifact_id: Uuid, sha256: &str) -> NewJob {
    let args = Args {
        artifact_id,
        sha256: sha256.to_owned(),
    };
    job_for(&ArtifactProcessor::default(), json!(args)).tenant(tenant_id)
}

impl ArtifactProcessor {
    fn storage(&self, ctx: &JobContext) -> anyhow::Result<&Storage> {
        if let Some(storage) = self.storage.get() {
            return Ok(storage);
        }
        let storage = Storage::from_config(&ctx.config.storage).context("opening storage")?;
        Ok(self.storage.get_or_init(|| storage))
    }
}

impl Worker for ArtifactProcessor {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Re-checks one of its tenant's artifacts, under that tenant's row-level security.
    fn scope(&self) -> Scope {
        Scope::Tenant
    }

    fn max_attempts(&self) -> i32 {
        10
    }

    /// The same bytes stored twice within the hour are looked at once.
    fn unique_for(&self) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }

    /// Reading a 5 GiB object at a modest 50 MiB/s takes under two minutes.
    fn timeout(&self) -> Duration {
        Duration::from_secs(600)
    }

    fn check_args(&self, args: &Value) -> Result<(), crate::jobs::ArgsError> {
        parse_args::<Args>(args).map(drop)
    }

    fn perform<'a>(&'a self, ctx: &'a JobContext, job: &'a Job) -> BoxFuture<'a, JobResult> {
        Box::pin(async move {
            let Some(tenant) = job.tenant_id else {
                return Ok(Outcome::Discard(
                    "artifact_processor jobs belong to a tenant".into(),
                ));
            };
            let args = match parse_args::<Args>(&job.args) {
                Ok(args) => args,
                Err(e) => return Ok(Outcome::Discard(e.to_string())),
            };
            let storage = self.storage(ctx)?;
            process(ctx, storage, tenant, args.artifact_id, &args.sha256).await
        })
    }
}

async fn current(
    ctx: &JobContext,
    tenant: Uuid,
    artifact_id: Uuid,
    sha256: &str,
) -> anyhow::Result<Option<Artifact>> {
    let mut tx = ctx.repo.tenant_tx(tenant).await?;
    let row = artifact::find_by_id(&mut tx, artifact_id).await?;
    tx.commit().await?;
    Ok(row.filter(|r| r.sha256 == sha256))
}

async fn process(
    ctx: &JobContext,
    storage: &Storage,
    tenant: Uuid,
    artifact_id: Uuid,
    sha256: &str,
) -> JobResult {
    let Some(row) = current(ctx, tenant, artifact_id, sha256).await? else {
        return Ok(Outcome::Complete);
    };
    let started = std::time::Instant::now();
    let key = object_key(tenant, &row.path);
    let measured = match measure(storage, &key).await {
        Ok(m) => Ok(m),
        Err(StorageError::NotFound(_)) => Err("the object is missing".to_owned()),
        Err(e) => return Err(anyhow::Error::new(e).context("reading the object")),
    };
    let expected_size = u64::try_from(row.size).unwrap_or_default();
    let mut result = json!({
        "processed_at": Utc::now(),
        "duration_ms": started.elapsed().as_millis() as u64,
        "expected": {"size": row.size, "sha256": row.sha256},
    });
    let (status, error) = match &measured {
        Err(e) => ("error", Some(e.clone())),
        Ok(m) => {
            result["size"] = json!(m.size);
            result["sha256"] = json!(m.sha256);
            result["sniffed_type"] = json!(m.sniffed);
            result["declared_type"] = json!(row.content_type);
            if m.size != expected_size {
                let e = format!("size is {} bytes, the row says {}", m.size, row.size);
                ("error", Some(e))
            } else if m.sha256 != row.sha256 {
                let e = format!("sha256 is {}, the row says {}", m.sha256, row.sha256);
                ("error", Some(e))
            } else {
                ("ok", None)
            }
        }
    };
    result["status"] = json!(status);
    if let Some(e) = &error {
        result["error"] = json!(e);
        tracing::warn!(%tenant, %artifact_id, path = %row.path, error = %e,
            "artifact verification failed");
    }

    let mut tx = ctx.repo.tenant_tx(tenant).await?;
    // Under the path's lock the row cannot change; it may have since the object was read.
    artifact::lock_path(&mut tx, tenant, &row.path).await?;
    let still = artifact::find_by_id(&mut tx, artifact_id)
        .await?
        .filter(|r| r.sha256 == sha256);
    if still.is_none() {
        return Ok(Outcome::Complete);
    }
    artifact::merge_metadata(&mut tx, artifact_id, &json!({"processing": result})).await?;
    let processed = ArtifactProcessed {
        id: artifact_id,
        path: row.path.clone(),
        status: status.to_owned(),
        size: row.size,
        sha256: row.sha256.clone(),
        sniffed_type: result
            .get("sniffed_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        error,
    };
    payloads::emit(&mut tx, tenant, &processed).await?;
    tx.commit().await?;
    Ok(Outcome::Complete)
}

/// What reading the whole object found.
struct Measured {
    size: u64,
    sha256: String,
    sniffed: Option<&'static str>,
}

async fn measure(storage: &Storage, key: &str) -> Result<Measured, StorageError> {
    let body = storage.get_stream(key, None).await?;
    let mut stream = body.stream;
    let mut hasher = Sha256::new();
    let mut head: Vec<u8> = Vec::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
    }
    Ok(Measured {
        size,
        sha256: hex::encode(hasher.finalize()),
        sniffed: infer::get(&head).map(|t| t.mime_type()),
    })
}
