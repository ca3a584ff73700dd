//! Tenants: the unit of isolation. A tenant row is itself under row-level security (a tenant sees
//! only its own row), so even creating one goes through the tenant door, with the new id as the
//! context.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::repo::{DbError, Repo};
use crate::schemas::schema::tenants;
use crate::schemas::storage::api_key::{self, IssuedApiKey};

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = tenants, check_for_backend(diesel::pg::Pg))]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub settings: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = tenants)]
struct NewTenant<'a> {
    id: Uuid,
    slug: &'a str,
    name: &'a str,
}

/// Creates a tenant and its first API key in one transaction. `name` defaults to the slug.
/// A bad slug is `DbError::Validation`, a taken one `DbError::Conflict`.
pub async fn create(
    repo: &Repo,
    slug: &str,
    name: Option<&str>,
) -> Result<(Tenant, IssuedApiKey), DbError> {
    let id = Uuid::now_v7();
    let mut tx = repo.tenant_tx(id).await?;
    let tenant = diesel::insert_into(tenants::table)
        .values(NewTenant {
            id,
            slug,
            name: name.unwrap_or(slug),
        })
        .returning(Tenant::as_returning())
        .get_result(&mut *tx)
        .await?;
    let key = api_key::issue(&mut tx, id, "default").await?;
    tx.commit().await?;
    Ok((tenant, key))
}
