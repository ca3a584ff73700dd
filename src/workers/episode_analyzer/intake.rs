//! Creating an episode: the one path `POST /v1/episodes` and the bot's `/report` share. The
//! episode, its analysis job and its `episode.created` event commit together in the caller's
//! tenant transaction, so an episode is never left without its analysis.

use uuid::Uuid;

use crate::events::payloads::{self, EpisodeCreated};
use crate::jobs::storage as jobs;
use crate::repo::{DbError, TenantTx};
use crate::schemas::vsm::episode::{self, Episode, NewEpisode};

pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_LEN: usize = 100;

/// What a caller submits; the field rules are checked by [`submit`] and the table.
#[derive(Debug, Clone, Default)]
pub struct EpisodeInput {
    /// 1 to 500 characters (the table's CHECK).
    pub title: String,
    pub content: String,
    pub source: Option<String>,
    pub kind: Option<String>,
    /// At most [`MAX_TAGS`], each 1 to [`MAX_TAG_LEN`] bytes.
    pub tags: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A field rule was broken; `field` is the JSON path (`tags[3]`).
    #[error("invalid {field}: {message}")]
    Invalid {
        field: String,
        message: &'static str,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Creates the episode (status `pending`) in the transaction's tenant, inserts its analysis job
/// and records `episode.created`; the caller commits.
pub async fn submit(tx: &mut TenantTx, input: EpisodeInput) -> Result<Episode, IntakeError> {
    if input.tags.len() > MAX_TAGS {
        return Err(IntakeError::Invalid {
            field: "tags".into(),
            message: "at most 50 tags",
        });
    }
    if let Some(i) = input
        .tags
        .iter()
        .position(|t| t.is_empty() || t.len() > MAX_TAG_LEN)
    {
        return Err(IntakeError::Invalid {
            field: format!("tags[{i}]"),
            message: "must be 1 to 100 bytes",
        });
    }
    let tenant = tx.tenant_id();
    let new = NewEpisode {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        title: input.title,
        content: input.content,
        source: input.source,
        kind: input.kind,
        tags: input.tags,
    };
    let created = episode::insert(tx, &new).await?;
    jobs::insert(tx, &super::job(tenant, created.id)).await?;
    let event = EpisodeCreated {
        id: created.id,
        title: created.title.clone(),
        source: created.source.clone(),
        kind: created.kind.clone(),
        tags: created.tags.clone(),
        created_at: created.created_at,
    };
    payloads::emit(tx, tenant, &event).await?;
    Ok(created)
}
