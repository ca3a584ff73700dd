//! `s3`: AWS S3 or an S3-compatible server (MinIO, …). Settings come from `[storage.s3]`;
//! credentials and anything else not set there from the usual `AWS_*` environment variables
//! (or the instance role). Large objects go up as multipart uploads.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;

use super::ObjectStoreAdapter;
use crate::config::{S3Config, StorageBackend};
use crate::storage::StorageError;

pub fn build(cfg: &S3Config) -> Result<ObjectStoreAdapter, StorageError> {
    let bucket = cfg
        .bucket
        .as_deref()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| StorageError::Config("storage.s3.bucket is not set".to_owned()))?;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&cfg.region)
        .with_virtual_hosted_style_request(!cfg.path_style);
    if let Some(endpoint) = &cfg.endpoint {
        // Plain HTTP only for an endpoint the operator named explicitly (MinIO on localhost).
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        builder = builder
            .with_access_key_id(id.expose())
            .with_secret_access_key(secret.expose());
    }
    let store = builder
        .build()
        .map_err(|e| StorageError::Config(format!("invalid [storage.s3] settings: {e}")))?;
    Ok(ObjectStoreAdapter::new(Arc::new(store), StorageBackend::S3))
}
