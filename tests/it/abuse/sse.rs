//! Hostile inputs: sse.
