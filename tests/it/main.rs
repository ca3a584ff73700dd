//! The integration suite: one test binary (linking the crate once), one module per area.
//! Every test gets its own database cloned from a migrated template, so tests run in parallel.

mod abuse;
mod api;
mod api_resources;
mod artifact_processor;
mod artifacts;
mod artifacts_memory;
mod cli;
mod cluster;
mod common;
mod constraints;
mod dashboard;
mod db_timeouts;
mod deploy;
mod events;
mod fake_telegram;
mod jobs_bulk;
mod jobs_cluster;
mod jobs_engine;
mod jobs_faults;
mod jobs_support;
mod layers;
mod migrate;
mod notifications;
mod policy_notify;
mod rls;
mod server;
mod storage;
mod telegram;
mod webhook_delivery;
mod webhooks;
mod workers;
