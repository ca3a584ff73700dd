//! Artifacts: a row in `artifacts` and an object at `tenants/<tenant>/<path>`, kept in step.
//!
//! A publish also inserts the caller's follow-up job (the `artifact_processor` verification)
//! in its transaction, so a stored artifact is always verified; storage itself knows no worker.
//!
//! Writes to one path are serialised by a transaction-scoped advisory lock
//! ([`artifact::lock_path`]). While holding it, [`publish`] writes the row and its event, then
//! moves the verified staging object to the final key, then commits; [`remove`] deletes the row
//! and its event, then the object, then commits. The object changes only after every statement
//! of the transaction has succeeded, and the transaction commits right after it. The one window
//! left is a COMMIT that fails after the object moved (the database connection dies in that
//! instant): a new artifact's object is then deleted again; for a replaced or deleted artifact
//! the failure is logged (`artifact row and object disagree`) and the `artifact_processor`'s
//! verification reports it.

use uuid::Uuid;

use super::{Staged, Storage, StorageError, object_key};
use crate::events::payloads::{self, ArtifactDeleted, ArtifactStored};
use crate::jobs::NewJob;
use crate::repo::{DbError, Repo};
use crate::schemas::storage::artifact::{self, Artifact, NewArtifact};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The `artifact.stored` event of an artifact.
fn stored(a: &Artifact) -> ArtifactStored {
    ArtifactStored {
        id: a.id,
        path: a.path.clone(),
        size: a.size,
        sha256: a.sha256.clone(),
        content_type: a.content_type.clone(),
    }
}

/// The job a stored artifact calls for, inserted in the transaction that stores it.
pub type FollowUp = fn(&Artifact) -> NewJob;

/// Makes a verified staged upload the artifact at `path` of `tenant`: row, `artifact.stored`
/// event, `follow_up` job and object, together. Returns the row and whether it replaced an
/// earlier one. On error the staged object is removed and nothing changed.
pub async fn publish(
    repo: &Repo,
    storage: &Storage,
    tenant: Uuid,
    path: &str,
    staged: &Staged,
    content_type: &str,
    follow_up: FollowUp,
) -> Result<(Artifact, bool), ArtifactError> {
    let result = publish_inner(repo, storage, tenant, path, staged, content_type, follow_up).await;
    if result.is_err() {
        storage.discard(staged).await;
    }
    result
}

async fn publish_inner(
    repo: &Repo,
    storage: &Storage,
    tenant: Uuid,
    path: &str,
    staged: &Staged,
    content_type: &str,
    follow_up: FollowUp,
) -> Result<(Artifact, bool), ArtifactError> {
    let size = i64::try_from(staged.size).map_err(|_| StorageError::TooLarge {
        limit: i64::MAX as u64,
    })?;
    let mut tx = repo.tenant_tx(tenant).await?;
    artifact::lock_path(&mut tx, tenant, path).await?;
    let replaced = artifact::find(&mut tx, path).await?.is_some();
    let row = artifact::upsert(
        &mut tx,
        &NewArtifact {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            path: path.to_owned(),
            size,
            sha256: staged.sha256.clone(),
            content_type: content_type.to_owned(),
            storage_backend: storage.backend().as_str().to_owned(),
        },
    )
    .await?;
    payloads::emit(&mut tx, tenant, &stored(&row)).await?;
    crate::jobs::storage::insert(&mut tx, &follow_up(&row)).await?;
    let key = object_key(tenant, path);
    if let Err(e) = storage.publish(staged, &key).await {
        // A rename that happened but could not be made durable leaves a new object without
        // its row: remove it (an object replacing an older one is the old row's now).
        if !replaced && storage.exists(&key).await.unwrap_or(false) {
            let _ = storage.delete(&key).await;
        }
        return Err(e.into());
    }
    if let Err(e) = tx.commit().await {
        if replaced {
            tracing::error!(%tenant, path, error = %e,
                "artifact row and object disagree: commit failed after the object was replaced");
        } else if let Err(del) = storage.delete(&key).await {
            tracing::error!(%tenant, path, error = %del,
                "artifact row and object disagree: commit failed and the new object remains");
        }
        return Err(e.into());
    }
    Ok((row, replaced))
}

/// Deletes the artifact at `path` of `tenant`: row, `artifact.deleted` event and object.
/// `Ok(None)` when there is no such artifact (for this tenant).
pub async fn remove(
    repo: &Repo,
    storage: &Storage,
    tenant: Uuid,
    path: &str,
) -> Result<Option<Artifact>, ArtifactError> {
    let mut tx = repo.tenant_tx(tenant).await?;
    artifact::lock_path(&mut tx, tenant, path).await?;
    let Some(row) = artifact::delete(&mut tx, path).await? else {
        return Ok(None);
    };
    let deleted = ArtifactDeleted {
        id: row.id,
        path: row.path.clone(),
    };
    payloads::emit(&mut tx, tenant, &deleted).await?;
    storage.delete(&object_key(tenant, path)).await?;
    if let Err(e) = tx.commit().await {
        tracing::error!(%tenant, path, error = %e,
            "artifact row and object disagree: commit failed after the object was deleted");
        return Err(e.into());
    }
    Ok(Some(row))
}

/// The artifact at `path` of `tenant`.
pub async fn find(repo: &Repo, tenant: Uuid, path: &str) -> Result<Option<Artifact>, DbError> {
    let mut tx = repo.tenant_tx(tenant).await?;
    let row = artifact::find(&mut tx, path).await?;
    tx.commit().await?;
    Ok(row)
}
