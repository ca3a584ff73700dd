//! `local`: a directory on this machine (`storage.root`). Objects are files under it; a write
//! lands in a temporary file that is renamed into place, so readers never see a partial file.
//! Publishing an upload (the rename from `staging/`) is made durable before it returns: the
//! file and every directory from its parent up to the root are fsynced ([`sync_published`]), so
//! an artifact row committed after it never points at a file a power loss took away.

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
    let invalid = |e: &dyn std::fmt::Display| {
        StorageError::Config(format!("cannot use storage.root {}: {e}", root.display()))
    };
    let canonical = std::fs::canonicalize(root).map_err(|e| invalid(&e))?;
    let store = LocalFileSystem::new_with_prefix(&canonical)
        .map_err(|e| invalid(&e))?
        // Deleting the last object of a directory removes the emptied directories too.
        .with_automatic_cleanup(true);
    let store = Arc::new(store);
    Ok(ObjectStoreAdapter::new(store.clone(), StorageBackend::Local).with_local(store, canonical))
}

/// Flushes `file` (its contents and metadata) and then each directory from its parent up to
/// and including `root` — a rename into a new directory changes every directory it created.
pub fn sync_published(root: &Path, file: &Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    let mut dir = file.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(root)) {
        std::fs::File::open(d)?.sync_all()?;
        dir = d.parent();
    }
    Ok(())
}

/// Removes the regular files directly in `dir` last modified before `before` (a missing `dir`
/// has none); returns how many went.
pub fn remove_files_older_than(
    dir: &Path,
    before: chrono::DateTime<chrono::Utc>,
) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let before = std::time::SystemTime::from(before);
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if !meta.is_file() || meta.modified()? >= before {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            // Published or discarded meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}
