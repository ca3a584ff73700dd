//! API keys. A key is `vsm_` followed by 64 hex digits of randomness; only its sha256 is stored,
//! with the first characters kept so an operator can tell keys apart.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::repo::{DbError, TenantTx};
use crate::schemas::schema::api_keys;

const KEY_PREFIX: &str = "vsm_";
/// How much of the key is kept in clear for display (`vsm_` plus 8 hex digits).
const SHOWN_LEN: usize = KEY_PREFIX.len() + 8;

/// A freshly issued key: the only moment the secret exists outside its owner's hands.
#[derive(Clone, Serialize)]
pub struct IssuedApiKey {
    pub id: Uuid,
    pub key: String,
}

impl std::fmt::Debug for IssuedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedApiKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// sha256 of a presented key, as stored and looked up.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

#[derive(Insertable)]
#[diesel(table_name = api_keys)]
struct NewApiKey<'a> {
    id: Uuid,
    tenant_id: Uuid,
    name: &'a str,
    key_hash: &'a [u8],
    key_prefix: &'a str,
}

/// Issues a new key for `tenant_id` (which must be the transaction's tenant).
pub async fn issue(
    conn: &mut TenantTx,
    tenant_id: Uuid,
    name: &str,
) -> Result<IssuedApiKey, DbError> {
    let key = generate();
    let id = Uuid::now_v7();
    diesel::insert_into(api_keys::table)
        .values(NewApiKey {
            id,
            tenant_id,
            name,
            key_hash: &hash(&key),
            key_prefix: &key[..SHOWN_LEN],
        })
        .execute(&mut **conn)
        .await?;
    Ok(IssuedApiKey { id, key })
}

/// Revokes a key of the current tenant; `NotFound` if there is no such (unrevoked) key.
pub async fn revoke(conn: &mut TenantTx, id: Uuid) -> Result<(), DbError> {
    let n = diesel::update(api_keys::table.find(id))
        .filter(api_keys::revoked_at.is_null())
        .set(api_keys::revoked_at.eq(diesel::dsl::now))
        .execute(&mut **conn)
        .await?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

/// How many unrevoked keys the transaction's tenant holds (row-level security counts only its
/// own).
pub async fn count_unrevoked(conn: &mut TenantTx) -> Result<i64, DbError> {
    Ok(api_keys::table
        .filter(api_keys::revoked_at.is_null())
        .count()
        .get_result(&mut **conn)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hash_stably() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with("vsm_") && a.len() == 4 + 64);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
    }
}
