//! The edge: everything that faces clients over HTTP.
pub mod gateway;
