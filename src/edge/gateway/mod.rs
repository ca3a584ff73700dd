//! The edge gateway (plan §3.3): the HTTP server, its router, the middleware every request
//! passes through, and one controller per concern.

pub mod auth;
pub mod budget;
pub mod client_addr;
pub mod controllers;
pub mod credentials;
pub mod drain;
pub mod error;
pub mod lookup;
pub mod middleware;
pub mod observe;
pub mod openapi;
pub mod ops;
pub mod pagination;
pub mod query;
pub mod rate_limit;
pub mod router;
pub mod server;
pub mod session;
pub mod state;

pub use server::{Server, launch};
pub use state::{AppState, OpsState};
