//! Hostile inputs a tenant controls, each with its bounded outcome asserted: status code, the
//! latency of a concurrent `/health`, RSS growth, the number of `/metrics` series, queries.

mod auth;
mod policies;
mod sse;
