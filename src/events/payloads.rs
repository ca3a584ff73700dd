//! The platform's topics (CONTRACT §6), each with the one payload type its producers build.
//! A producer calls [`emit`] (or [`emit_global`]) with a payload value, so it can neither
//! misspell a topic nor reshape its payload; the same list gives the metric label whitelist
//! ([`super::topic::KNOWN_TOPICS`]) and the stream's description in `/openapi.json`.
//!
//! Topics a tenant invents (policy `publish` actions) are not here: they go through
//! [`super::record`] with their own name and free-form data.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use crate::repo::{Conn, DbError};

/// A payload of one of the platform's topics.
pub trait Payload: Serialize {
    /// Its topic, `<domain>.<action>`.
    const TOPIC: &'static str;
}

/// Declares each payload's topic and, from the same list, every topic the platform emits.
macro_rules! topics {
    ($($payload:ident => $topic:literal,)*) => {
        $(impl Payload for $payload {
            const TOPIC: &'static str = $topic;
        })*
        /// Every topic the platform emits, in the order of CONTRACT §6.
        pub const TOPICS: &[&str] = &[$($topic),*];
        /// `(topic, payload schema name)` of each, for the stream's OpenAPI description.
        pub const SCHEMAS: &[(&str, &str)] = &[$(($topic, stringify!($payload))),*];

        /// Every payload's JSON schema by name (with the schemas they refer to), for the
        /// components of `/openapi.json`.
        pub fn json_schemas() -> Vec<(String, RefOr<Schema>)> {
            let mut all = Vec::new();
            $(
                <$payload as ToSchema>::schemas(&mut all);
                all.push((
                    <$payload as ToSchema>::name().into_owned(),
                    <$payload as PartialSchema>::schema(),
                ));
            )*
            all
        }
    };
}

topics! {
    SystemStateChanged => "system.state",
    SystemHealth => "system.health",
    EpisodeCreated => "episode.created",
    EpisodeAnalyzed => "episode.analyzed",
    EpisodeFailed => "episode.failed",
    PolicyCreated => "policy.created",
    PolicyUpdated => "policy.updated",
    PolicyDeleted => "policy.deleted",
    PolicyTriggered => "policy.triggered",
    ArtifactStored => "artifact.stored",
    ArtifactProcessed => "artifact.processed",
    ArtifactDeleted => "artifact.deleted",
    JobCompleted => "job.completed",
    JobDiscarded => "job.discarded",
    NotificationSent => "notification.sent",
    NotificationFailed => "notification.failed",
    TelegramCommand => "telegram.command",
}

/// Records `payload` under its topic for `tenant_id`, in the caller's transaction.
pub async fn emit<P: Payload>(
    conn: &mut Conn,
    tenant_id: Uuid,
    payload: &P,
) -> Result<(), DbError> {
    super::record(conn, tenant_id, P::TOPIC, &to_value(payload)?).await
}

/// Records a system-wide `payload` that every tenant receives, in a system transaction.
pub async fn emit_global<P: Payload>(conn: &mut Conn, payload: &P) -> Result<(), DbError> {
    super::record_global(conn, P::TOPIC, &to_value(payload)?).await
}

fn to_value<P: Payload>(payload: &P) -> Result<Value, DbError> {
    // Every payload is a plain struct of JSON-able fields; failing here is a bug, not input.
    serde_json::to_value(payload).map_err(|e| DbError::Validation {
        field: "payload",
        message: if e.is_data() {
            "cannot be represented as JSON"
        } else {
            "cannot be serialised"
        },
    })
}

/// `system.state`: a system's new state and its version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemStateChanged {
    /// 1..=5 (S1 Operations … S5 Policy).
    pub system: i16,
    pub version: i32,
    #[schema(value_type = Object)]
    pub state: Value,
}

impl From<&crate::schemas::vsm::system_state::SystemState> for SystemStateChanged {
    fn from(s: &crate::schemas::vsm::system_state::SystemState) -> Self {
        Self {
            system: s.system,
            version: s.version,
            state: s.state.clone(),
        }
    }
}

/// `system.health`: the `health_check` worker's measurement of every dependency (to every
/// tenant).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemHealth {
    /// `ok` or `degraded`.
    pub status: String,
    /// Per dependency: `{status, latency_ms, error?}`.
    #[schema(value_type = Object)]
    pub checks: Value,
    pub checked_at: DateTime<Utc>,
}

/// `episode.created`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EpisodeCreated {
    pub id: Uuid,
    pub title: String,
    pub source: Option<String>,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// `episode.analyzed`: the analysis the episode now holds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EpisodeAnalyzed {
    pub episode_id: Uuid,
    #[schema(value_type = Object)]
    pub analysis: Value,
}

/// `episode.failed`: the analysis gave up (its last attempt failed).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EpisodeFailed {
    pub episode_id: Uuid,
    pub error: String,
}

/// What `policy.created` and `policy.updated` say about a policy.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicySummary {
    pub id: Uuid,
    pub name: String,
    pub active: bool,
    pub priority: i32,
}

/// `policy.created`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(transparent)]
pub struct PolicyCreated(pub PolicySummary);

/// `policy.updated`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(transparent)]
pub struct PolicyUpdated(pub PolicySummary);

/// `policy.deleted`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyDeleted {
    pub id: Uuid,
}

/// `policy.triggered`: a policy matched an event; what each of its actions did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyTriggered {
    pub policy_id: Uuid,
    pub policy: String,
    pub event: TriggeringEvent,
    /// Per action: `{action, status: ok|error, result|error}`.
    #[schema(value_type = Vec<Object>)]
    pub actions: Vec<Value>,
}

/// The event a policy matched.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TriggeringEvent {
    /// Its event id (`null` when it had none yet).
    pub id: Option<i64>,
    pub topic: String,
}

/// `artifact.stored`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArtifactStored {
    pub id: Uuid,
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
}

/// `artifact.processed`: the `artifact_processor`'s verification of the stored bytes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArtifactProcessed {
    pub id: Uuid,
    pub path: String,
    /// `ok` or `error`.
    pub status: String,
    pub size: i64,
    pub sha256: String,
    pub sniffed_type: Option<String>,
    pub error: Option<String>,
}

/// `artifact.deleted`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArtifactDeleted {
    pub id: Uuid,
    pub path: String,
}

/// What `job.completed` and `job.discarded` say about a tenant's job. The jobs engine writes
/// these in its batched acknowledgement statement, in this shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobOutcome {
    pub job_id: Uuid,
    pub worker: String,
    pub queue: String,
    pub attempt: i32,
    pub error: Option<String>,
}

/// `job.completed`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(transparent)]
pub struct JobCompleted(pub JobOutcome);

/// `job.discarded`: the job's last attempt failed (the dead-letter state).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(transparent)]
pub struct JobDiscarded(pub JobOutcome);

/// What `notification.sent` and `notification.failed` say about one delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationOutcome {
    pub notification_id: Uuid,
    /// `telegram` or `webhook`.
    pub channel: String,
    /// The recipient, masked.
    pub to: String,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// `notification.sent`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(transparent)]
pub struct NotificationSent(pub NotificationOutcome);

/// `notification.failed`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(transparent)]
pub struct NotificationFailed(pub NotificationOutcome);

/// `telegram.command`: a linked chat ran a bot command.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TelegramCommand {
    pub chat_id: i64,
    pub command: String,
    pub args: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_is_valid_and_listed_once() {
        for topic in TOPICS {
            assert!(super::super::topic::validate(topic).is_ok(), "{topic}");
            assert_eq!(TOPICS.iter().filter(|t| *t == topic).count(), 1, "{topic}");
        }
        assert_eq!(TOPICS.len(), SCHEMAS.len());
        let schemas = json_schemas();
        for (_, name) in SCHEMAS {
            assert!(schemas.iter().any(|(n, _)| n == name), "{name}");
        }
    }

    #[test]
    fn a_payload_carries_its_topic_and_serialises_flat() {
        assert_eq!(PolicyCreated::TOPIC, "policy.created");
        let created = PolicyCreated(PolicySummary {
            id: Uuid::nil(),
            name: "p".into(),
            active: true,
            priority: 3,
        });
        let v = serde_json::to_value(&created).unwrap();
        assert_eq!(v["name"], "p");
        assert_eq!(v["priority"], 3);
    }
}
