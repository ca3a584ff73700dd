//! Workers (CONTRACT §7), one file each. Every worker declares its name, queue, priority,
//! attempts and uniqueness next to its code (the [`Worker`](crate::jobs::Worker) methods) and
//! has a `job(..)` constructor for callers. A new worker is one file plus one line in
//! [`registry`].

pub mod artifact_processor;
pub mod episode_analyzer;
pub mod health_check;
pub mod notification_sender;
pub mod policy_evaluator;
pub mod telegram_command;
pub mod test_noop;
pub mod test_probe;

use std::sync::Arc;

use crate::config::Config;
use crate::events::subscriber::{Subscriber, Subscribers};
use crate::jobs::Registry;

/// Every feature that consumes the event flow (CONTRACT §6), in the order they see a batch.
/// Notifications, Telegram and the dashboard plug in here the same way.
pub fn subscribers() -> Subscribers {
    let all: Vec<Arc<dyn Subscriber>> = vec![
        Arc::new(policy_evaluator::PolicyEvaluator),
        Arc::new(notification_sender::webhook_events::WebhookEvents),
    ];
    all.into()
}

/// Every worker this build can run. Test-only workers join when `jobs.test_workers` is set.
pub fn registry(config: &Config) -> Registry {
    let mut r = Registry::new();
    r.register(episode_analyzer::EpisodeAnalyzer);
    r.register(policy_evaluator::PolicyEvaluator);
    r.register(health_check::HealthCheck);
    r.register(artifact_processor::ArtifactProcessor::default());
    r.register(telegram_command::TelegramCommand);
    r.register(notification_sender::NotificationSender::new(config));
    if config.jobs.test_workers {
        r.register(test_noop::TestNoop);
        r.register(test_probe::TestProbe::new(
            config.jobs.test_probe_dir.clone(),
        ));
    }
    r
}
