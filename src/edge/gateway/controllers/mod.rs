//! One controller per concern, as in the plan's `controllers/` directory.
pub mod artifacts_controller;
pub mod events_controller;
pub mod health_controller;
pub mod metrics_controller;
