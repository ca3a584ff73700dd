//! The long-lived Redis client (fred) of the features that share state through Redis: the
//! API's token buckets (`edge::gateway::rate_limit`) and Telegram's send schedule
//! (`workers::notification_sender::telegram::limiter`). One place decides how such a client
//! connects: in the background, reconnecting with capped backoff, one attempt per command, so
//! a Redis that is down at start-up or goes away later never stops a process — its callers
//! fail open or fall back to in-process state meanwhile. (`health::redis_ping` measures with a
//! fresh, one-shot client instead.)

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};

use crate::config::ServiceUrl;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A client for `url` whose commands give up after `command_timeout`, connecting in the
/// background. Outside a Tokio runtime (`vsm config check` builds the worker registry only to
/// validate it) it stays unconnected: there is no task to connect with and nothing to send.
/// The error names what is wrong without the URL's secrets.
pub fn background_client(url: &ServiceUrl, command_timeout: Duration) -> Result<Client, String> {
    let config =
        RedisConfig::from_url(url.expose()).map_err(|e| format!("invalid Redis URL {url}: {e}"))?;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
        .map_err(|e| format!("cannot configure Redis client: {e}"))?;
    if tokio::runtime::Handle::try_current().is_ok() {
        drop(client.connect());
    }
    Ok(client)
}
