//! Episodes: S4 Intelligence's record of something that happened, analysed in the background.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{DbError, TenantConn, TenantTx};
use crate::schemas::schema::episodes;
use crate::schemas::text_enum::text_enum;

text_enum! {
    /// Where an episode's analysis stands (`episodes.status`, CHECK `episodes_status_valid`).
    pub enum EpisodeStatus ("episode status") {
        /// Created; its analysis job has not started.
        Pending = "pending",
        Analyzing = "analyzing",
        /// The analysis is stored.
        Complete = "complete",
        /// The analysis failed for good; `error` says why.
        Error = "error",
    }
}

#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = episodes, check_for_backend(diesel::pg::Pg))]
pub struct Episode {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: String,
    pub content: String,
    pub source: Option<String>,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    pub status: EpisodeStatus,
    #[schema(value_type = Option<Object>)]
    pub analysis: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = episodes)]
pub struct NewEpisode {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: String,
    pub content: String,
    pub source: Option<String>,
    pub kind: Option<String>,
    pub tags: Vec<String>,
}

pub async fn insert(conn: &mut TenantTx, new: &NewEpisode) -> Result<Episode, DbError> {
    Ok(diesel::insert_into(episodes::table)
        .values(new)
        .returning(Episode::as_returning())
        .get_result(&mut **conn)
        .await?)
}

/// The episode with `id` in the current tenant (`NotFound` for another tenant's id).
pub async fn find(conn: &mut impl TenantConn, id: Uuid) -> Result<Episode, DbError> {
    Ok(episodes::table
        .find(id)
        .select(Episode::as_select())
        .first(conn.conn())
        .await?)
}

/// One page of the current tenant's episodes in id (creation) order, after `after`.
pub async fn list(
    conn: &mut impl TenantConn,
    status: Option<EpisodeStatus>,
    tag: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Episode>, DbError> {
    let mut query = episodes::table
        .select(Episode::as_select())
        .order(episodes::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(episodes::status.eq(status));
    }
    if let Some(tag) = tag {
        query = query.filter(episodes::tags.contains(vec![tag.to_owned()]));
    }
    if let Some(after) = after {
        query = query.filter(episodes::id.gt(after));
    }
    Ok(query.load(conn.conn()).await?)
}

/// The tenant's `limit` newest episodes, newest first.
pub async fn latest(conn: &mut TenantTx, limit: i64) -> Result<Vec<Episode>, DbError> {
    Ok(episodes::table
        .select(Episode::as_select())
        .order(episodes::id.desc())
        .limit(limit)
        .load(&mut **conn)
        .await?)
}

/// Sets the episode's status (e.g. `analyzing` while its analysis runs).
pub async fn set_status(
    conn: &mut TenantTx,
    id: Uuid,
    status: EpisodeStatus,
) -> Result<(), DbError> {
    diesel::update(episodes::table.find(id))
        .set((
            episodes::status.eq(status),
            episodes::updated_at.eq(Utc::now()),
        ))
        .execute(&mut **conn)
        .await?;
    Ok(())
}

/// Stores the episode's analysis and marks it `complete`.
pub async fn complete(
    conn: &mut TenantTx,
    id: Uuid,
    analysis: &serde_json::Value,
) -> Result<(), DbError> {
    diesel::update(episodes::table.find(id))
        .set((
            episodes::status.eq(EpisodeStatus::Complete),
            episodes::analysis.eq(analysis),
            episodes::error.eq(None::<String>),
            episodes::updated_at.eq(Utc::now()),
        ))
        .execute(&mut **conn)
        .await?;
    Ok(())
}

/// Marks the episode `error` with `reason`, unless it is already complete (a late failure
/// must not undo a finished analysis) or already `error` (so repeating this changes nothing).
/// Returns whether it changed.
pub async fn fail(conn: &mut TenantTx, id: Uuid, reason: &str) -> Result<bool, DbError> {
    let n = diesel::update(episodes::table.find(id))
        .filter(episodes::status.ne_all([EpisodeStatus::Complete, EpisodeStatus::Error]))
        .set((
            episodes::status.eq(EpisodeStatus::Error),
            episodes::error.eq(reason),
            episodes::updated_at.eq(Utc::now()),
        ))
        .execute(&mut **conn)
        .await?;
    Ok(n > 0)
}
