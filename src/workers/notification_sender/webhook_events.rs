//! Event subscriptions of webhook endpoints (CONTRACT §4 `topics`): every published tenant
//! event whose topic matches an enabled endpoint's filters becomes one webhook notification
//! for that endpoint, enqueued in a tenant transaction.
//!
//! The relay hands a batch over at least once; the (endpoint, event id) claim in
//! `webhook_event_deliveries` commits with the notification, so a repeated batch enqueues
//! nothing twice. `notification.*` events never go to webhooks: a failing endpoint's
//! `notification.failed` would otherwise become a notification of its own, and so on forever.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::{Message, enqueue};
use crate::events::Event;
use crate::events::subscriber::Subscriber;
use crate::events::topic::{Filter, Filters};
use crate::repo::{DbError, Repo};
use crate::schemas::webhooks::endpoint;

pub struct WebhookEvents;

/// Whether `event` may be delivered to a tenant's webhooks at all.
fn deliverable(event: &Event) -> bool {
    event.tenant_id.is_some() && !event.topic.starts_with("notification.")
}

fn filters(topics: &[String]) -> Filters {
    // Stored filters were validated when saved; one that no longer parses matches nothing.
    Filters(
        topics
            .iter()
            .filter_map(|t| Filter::parse(t).ok())
            .collect(),
    )
}

/// Enqueues the webhook notifications a batch calls for. Returns how many were enqueued.
pub async fn enqueue_for_events(repo: &Repo, events: &[Event]) -> Result<usize, DbError> {
    let mut by_tenant: BTreeMap<Uuid, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| deliverable(e)) {
        if let Some(t) = e.tenant_id {
            by_tenant.entry(t).or_default().push(e);
        }
    }
    let mut enqueued = 0;
    for (tenant, events) in by_tenant {
        let mut tx = repo.tenant_tx(tenant).await?;
        let endpoints: Vec<(Uuid, Filters)> = endpoint::subscribed(&mut tx)
            .await?
            .into_iter()
            .map(|(id, topics)| (id, filters(&topics)))
            .filter(|(_, f)| !f.0.is_empty())
            .collect();
        for event in &events {
            for (id, f) in &endpoints {
                if !f.matches(&event.topic) {
                    continue;
                }
                if !endpoint::claim_event(&mut tx, tenant, *id, event.seq).await? {
                    continue;
                }
                let message = Message::Webhook {
                    endpoint_id: *id,
                    topic: event.topic.clone(),
                    payload: event.payload.clone(),
                };
                enqueue(&mut tx, tenant, message).await?;
                enqueued += 1;
            }
        }
        if !endpoints.is_empty() {
            endpoint::prune_claims(&mut tx).await?;
        }
        tx.commit().await?;
    }
    Ok(enqueued)
}

impl Subscriber for WebhookEvents {
    fn name(&self) -> &'static str {
        "webhook_events"
    }

    fn on_published<'a>(
        &'a self,
        repo: &'a Repo,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(async move { enqueue_for_events(repo, events).await.map(drop) })
    }
}
