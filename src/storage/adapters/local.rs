//! `local`: a directory on this machine (`storage.root`). Objects are files under it; a write
//! lands in a temporary file that is renamed into place, so readers never see a partial file.

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;

use super::ObjectStoreAdapter;
use crate::config::StorageBackend;
use crate::storage::StorageError;

/// Creates `root` if missing and serves objects from it.
pub fn build(root: &Path) -> Result<ObjectStoreAdapter, StorageError> {
    std::fs::create_dir_all(root).map_err(|e| {
        StorageError::Config(format!(
            "cannot create storage.root {}: {e}",
            root.display()
        ))
    })?;
    let store = LocalFileSystem::new_with_prefix(root)
        .map_err(|e| {
            StorageError::Config(format!("cannot use storage.root {}: {e}", root.display()))
        })?
        // Deleting the last object of a directory removes the emptied directories too.
        .with_automatic_cleanup(true);
    Ok(ObjectStoreAdapter::new(
        Arc::new(store),
        StorageBackend::Local,
    ))
}
