//! Sweeps staging objects left by a killed process (CONTRACT §8). An upload streams into
//! `staging/<upload id>` and is moved to its key or removed when the request ends; only a process
//! that died mid-upload leaves one behind. Every serving process sweeps at start-up and then
//! periodically; several doing it at once is harmless (removing is idempotent), and the age
//! limit keeps uploads still in progress out of reach.

use std::time::Duration;

use super::Storage;
use crate::config::StorageConfig;
use crate::shutdown::Shutdown;

/// Sweeps now and every `staging_sweep_interval_secs` until shutdown (not at all when 0).
pub async fn run(storage: Storage, cfg: StorageConfig, shutdown: Shutdown) {
    if cfg.staging_sweep_interval_secs == 0 {
        return;
    }
    let max_age = Duration::from_secs(cfg.staging_max_age_secs);
    let every = Duration::from_secs(cfg.staging_sweep_interval_secs);
    loop {
        match storage.sweep_staging(max_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "swept abandoned staging uploads"),
            Err(e) => tracing::warn!(error = %e, "sweeping staging uploads failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
    }
}
