//! Hostile inputs: auth.
