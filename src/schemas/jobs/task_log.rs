//! Task log: the tenant-visible history of every job attempt.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{DbError, TenantTx};
use crate::schemas::schema::task_log;

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = task_log, check_for_backend(diesel::pg::Pg))]
pub struct TaskLogEntry {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub job_id: Uuid,
    pub worker: String,
    pub queue: String,
    pub attempt: i32,
    pub state: String,
    pub duration_ms: i64,
    pub error: Option<String>,
    pub inserted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = task_log)]
pub struct NewTaskLogEntry {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub job_id: Uuid,
    pub worker: String,
    pub queue: String,
    pub attempt: i32,
    pub state: String,
    pub duration_ms: i64,
    pub error: Option<String>,
}

pub async fn insert(conn: &mut TenantTx, new: &NewTaskLogEntry) -> Result<TaskLogEntry, DbError> {
    Ok(diesel::insert_into(task_log::table)
        .values(new)
        .returning(TaskLogEntry::as_returning())
        .get_result(&mut **conn)
        .await?)
}
