//! `memory`: objects in this process's memory, lost when it exits. For tests and trials.

use std::sync::{Arc, LazyLock};

use object_store::memory::InMemory;

use super::ObjectStoreAdapter;
use crate::config::StorageBackend;

/// The process's one in-memory store, so the server and the workers of `vsm all` (each of
/// which builds its storage from the configuration) see the same objects.
static SHARED: LazyLock<Arc<InMemory>> = LazyLock::new(|| Arc::new(InMemory::new()));

/// A fresh, empty store of its own.
pub fn build() -> ObjectStoreAdapter {
    ObjectStoreAdapter::new(Arc::new(InMemory::new()), StorageBackend::Memory)
}

/// The process-wide store (what `storage.backend = "memory"` uses).
pub fn shared() -> ObjectStoreAdapter {
    ObjectStoreAdapter::new(SHARED.clone(), StorageBackend::Memory)
}
