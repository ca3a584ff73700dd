//! `notification_sender` (notifications queue, CONTRACT §7): delivers notifications.

pub mod endpoint_url;
pub mod signature;
pub mod target_guard;
