//! Artifact metadata: one row per stored object, keyed by `(tenant_id, path)`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{Conn, DbError};
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

pub async fn insert(conn: &mut Conn, new: &NewArtifact) -> Result<Artifact, DbError> {
    Ok(diesel::insert_into(artifacts::table)
        .values(new)
        .returning(Artifact::as_returning())
        .get_result(conn)
        .await?)
}
