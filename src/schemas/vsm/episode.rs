//! Episodes: S4 Intelligence's record of something that happened, analysed in the background.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{Conn, DbError};
use crate::schemas::schema::episodes;

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = episodes, check_for_backend(diesel::pg::Pg))]
pub struct Episode {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: String,
    pub content: String,
    pub source: Option<String>,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    pub status: String,
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

pub async fn insert(conn: &mut Conn, new: &NewEpisode) -> Result<Episode, DbError> {
    Ok(diesel::insert_into(episodes::table)
        .values(new)
        .returning(Episode::as_returning())
        .get_result(conn)
        .await?)
}

/// The episode with `id` in the current tenant (`NotFound` for another tenant's id).
pub async fn find(conn: &mut Conn, id: Uuid) -> Result<Episode, DbError> {
    Ok(episodes::table
        .find(id)
        .select(Episode::as_select())
        .first(conn)
        .await?)
}
