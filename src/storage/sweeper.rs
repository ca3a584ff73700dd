//! Sweeps staging objects left by a killed process (CONTRACT §8). An upload streams into
//! `staging/<upload id>` and is moved to its key or removed when the request ends; only a process
//! that died mid-upload leaves one behind. Every serving process sweeps at start-up and then
//! periodically; several doing it at once is harmless (removing is idempotent), and the age
//! limit keeps uploads still in progress out of reach.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Storage, StorageError};
use crate::config::StorageConfig;
use crate::maintenance::{self, Pass, Periodic};
use crate::shutdown::Shutdown;

/// Sweeps now and every `staging_sweep_interval_secs` until shutdown (not at all when 0).
pub async fn run(storage: Storage, cfg: StorageConfig, shutdown: Shutdown) {
    if cfg.staging_sweep_interval_secs == 0 {
        return;
    }
    let sweeper = Sweeper {
        storage,
        max_age: Duration::from_secs(cfg.staging_max_age_secs),
        every: Duration::from_secs(cfg.staging_sweep_interval_secs),
    };
    maintenance::run(sweeper, shutdown).await;
}

/// The sweeping duty: staging objects older than `max_age`, every `every`.
struct Sweeper {
    storage: Storage,
    max_age: Duration,
    every: Duration,
}

impl Periodic for Sweeper {
    type Error = StorageError;

    fn name(&self) -> &'static str {
        "staging sweeper"
    }

    fn every(&self) -> Duration {
        self.every
    }

    fn run_once(&mut self) -> BoxFuture<'_, Result<Pass, StorageError>> {
        Box::pin(async move {
            let n = self.storage.sweep_staging(self.max_age).await?;
            if n > 0 {
                tracing::info!(removed = n, "swept abandoned staging uploads");
            }
            Ok(Pass::Done)
        })
    }
}
