//! Hostile inputs: policies.
