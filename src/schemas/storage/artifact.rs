//! Artifact metadata: one row per stored object, keyed by `(tenant_id, path)`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{DbError, Prepare, TenantTx};
use crate::schemas::schema::artifacts;

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = artifacts, check_for_backend(diesel::pg::Pg))]
pub struct Artifact {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    pub storage_backend: String,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = artifacts)]
pub struct NewArtifact {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    pub storage_backend: String,
}

pub async fn insert(conn: &mut TenantTx, new: &NewArtifact) -> Result<Artifact, DbError> {
    Ok(diesel::insert_into(artifacts::table)
        .values(new)
        .returning(Artifact::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// Serialises every writer of one tenant's path until the transaction ends, so the object at
/// the path's key and its row change together (two uploads of one path cannot interleave their
/// object moves and row writes).
pub async fn lock_path(conn: &mut TenantTx, tenant_id: Uuid, path: &str) -> Result<(), DbError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(format!("artifact:{tenant_id}/{path}"))
        .prepared()
        .execute(&mut **conn)
        .await?;
    Ok(())
}

/// The artifact at `path` of the transaction's tenant.
pub async fn find(conn: &mut TenantTx, path: &str) -> Result<Option<Artifact>, DbError> {
    Ok(artifacts::table
        .filter(artifacts::path.eq(path))
        .select(Artifact::as_select())
        .first(&mut **conn)
        .await
        .optional()?)
}

/// Inserts the artifact, or replaces size, digest, type and backend of the one at its path
/// (keeping its id and creation time, clearing processing metadata).
pub async fn upsert(conn: &mut TenantTx, new: &NewArtifact) -> Result<Artifact, DbError> {
    Ok(diesel::insert_into(artifacts::table)
        .values(new)
        .on_conflict((artifacts::tenant_id, artifacts::path))
        .do_update()
        .set((
            artifacts::size.eq(new.size),
            artifacts::sha256.eq(&new.sha256),
            artifacts::content_type.eq(&new.content_type),
            artifacts::storage_backend.eq(&new.storage_backend),
            artifacts::metadata.eq(serde_json::json!({})),
            artifacts::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Artifact::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// Deletes the artifact at `path`, returning it (`None` if there was none).
pub async fn delete(conn: &mut TenantTx, path: &str) -> Result<Option<Artifact>, DbError> {
    Ok(
        diesel::delete(artifacts::table.filter(artifacts::path.eq(path)))
            .returning(Artifact::as_returning())
            .get_result(&mut **conn)
            .await
            .optional()?,
    )
}

/// Up to `limit` artifacts whose path starts with `prefix`, in path order, after the path
/// `after` (keyset pagination).
pub async fn list(
    conn: &mut TenantTx,
    prefix: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Artifact>, DbError> {
    let mut query = artifacts::table
        .select(Artifact::as_select())
        .order(artifacts::path.asc())
        .limit(limit)
        .into_boxed();
    if !prefix.is_empty() {
        query = query.filter(artifacts::path.like(like_prefix(prefix)).escape('\\'));
    }
    if let Some(after) = after {
        query = query.filter(artifacts::path.gt(after.to_owned()));
    }
    Ok(query.load(&mut **conn).await?)
}

/// Merges `metadata` into the artifact's processing metadata (`updated_at`, which is the
/// object's `Last-Modified`, stays as it is).
pub async fn merge_metadata(
    conn: &mut TenantTx,
    id: Uuid,
    metadata: &serde_json::Value,
) -> Result<Option<Artifact>, DbError> {
    Ok(diesel::update(artifacts::table.find(id))
        .set(
            artifacts::metadata.eq(diesel::dsl::sql::<diesel::sql_types::Jsonb>("metadata || ")
                .bind::<diesel::sql_types::Jsonb, _>(metadata.clone())),
        )
        .returning(Artifact::as_returning())
        .get_result(&mut **conn)
        .await
        .optional()?)
}

/// `prefix%` with LIKE's wildcards in `prefix` escaped.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The artifact with this id (of the transaction's tenant).
pub async fn find_by_id(conn: &mut TenantTx, id: Uuid) -> Result<Option<Artifact>, DbError> {
    Ok(artifacts::table
        .find(id)
        .select(Artifact::as_select())
        .first(&mut **conn)
        .await
        .optional()?)
}
