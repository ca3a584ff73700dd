//! vsm: the foundation of a Viable System Model organisation (S1 Operations … S5 Policy).
//! One binary, one PostgreSQL; see ARCHITECTURE.md for how the modules fit together.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod edge;
pub mod events;
pub mod health;
pub mod jobs;
pub mod maintenance;
pub mod metrics;
pub mod migrate;
pub mod redis;
pub mod repo;
pub mod schemas;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod workers;
