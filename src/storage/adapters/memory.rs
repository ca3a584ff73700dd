//! `memory`: objects in this process's memory, lost when it exits. For tests and trials.

use std::sync::Arc;

use object_store::memory::InMemory;

use super::ObjectStoreAdapter;
use crate::config::StorageBackend;

pub fn build() -> ObjectStoreAdapter {
    ObjectStoreAdapter::new(Arc::new(InMemory::new()), StorageBackend::Memory)
}
