//! What request handlers share: [`AppState`] for the gateway's API, and the part of it the
//! operations endpoints take, [`OpsState`] (all `vsm work` builds). The controllers depend on
//! these types; the servers that build them depend on the controllers.

use std::sync::Arc;
use std::time::Instant;

use super::credentials::{KeyCache, SessionCache};
use super::rate_limit::RateLimiter;
use crate::config::Config;
use crate::events::hub::Hub;
use crate::health::Readiness;
use crate::repo::Repo;
use crate::shutdown::Shutdown;
use crate::storage::Storage;

/// Shared by every request handler.
pub struct AppState {
    pub config: Arc<Config>,
    pub repo: Repo,
    pub readiness: Readiness,
    /// This instance's SSE subscribers.
    pub hub: Hub,
    /// Recently resolved API keys.
    pub keys: KeyCache,
    /// Recently resolved dashboard sessions.
    pub sessions: SessionCache,
    /// The artifact storage backend.
    pub storage: Storage,
    /// Per-key request rate limit.
    pub limiter: Arc<RateLimiter>,
    /// The workers this build knows (policy `enqueue` actions are validated against them).
    pub workers: crate::jobs::Registry,
    pub shutdown: Shutdown,
    pub started: Instant,
}

impl AppState {
    /// The part the operations endpoints (`/live`, `/health`, `/ready`, `/metrics`) use.
    pub fn ops(&self) -> OpsState {
        OpsState {
            readiness: self.readiness.clone(),
            repo: self.repo.clone(),
            started: self.started,
        }
    }
}

/// What the operations endpoints need: readiness (`/ready`), the pool (`/metrics` reads its
/// gauges at scrape time) and the start time (`/health` uptime). `vsm serve` derives it from
/// its [`AppState`]; `vsm work` builds only this.
#[derive(Clone)]
pub struct OpsState {
    pub readiness: Readiness,
    pub repo: Repo,
    pub started: Instant,
}
