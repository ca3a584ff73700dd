//! Subscribers: the one place where features plug into the event flow. The relay hands every
//! batch of published events to each subscriber *before* marking the batch published, so a
//! subscriber sees every event at least once (a crash in between hands the batch over again).
//! Subscribers therefore have to be idempotent — the policy evaluator inserts jobs that are
//! unique per event. The platform knows only this trait; `vsm serve` registers the features'
//! subscribers (see `workers::subscribers`).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::Event;
use crate::repo::{DbError, Repo};

pub trait Subscriber: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Called with each published batch, in id order. An error makes the relay retry the
    /// whole batch (and call every subscriber again) at its next step.
    fn on_published<'a>(
        &'a self,
        repo: &'a Repo,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<(), DbError>>;
}

/// The subscribers of one process, in registration order.
pub type Subscribers = Arc<[Arc<dyn Subscriber>]>;
