//! One controller per concern, as in the plan's `controllers/` directory.
pub mod api_keys_controller;
pub mod artifacts_controller;
pub mod dashboard_controller;
pub mod episodes_controller;
pub mod events_controller;
pub mod health_controller;
pub mod jobs_controller;
pub mod metrics_controller;
pub mod notifications_controller;
pub mod policies_controller;
pub mod systems_controller;
pub mod telegram_controller;
pub mod tenants_controller;
pub mod webhooks_controller;
