//! Liveness and readiness (CONTRACT §5), shared by `vsm serve` and `vsm work`.
//!
//! Readiness asks every configured dependency in parallel, each bounded by one second, and is
//! false while the process is shutting down. A dependency joins by implementing [`Probe`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use amqprs::connection::{Connection, OpenConnectionArguments};
use fred::clients::Client as RedisClient;
use fred::interfaces::ClientLike;
use fred::types::config::Config as RedisConfig;
use futures_util::future::{BoxFuture, join_all};
use serde_json::{Map, Value, json};

use crate::config::ServiceUrl;
use crate::repo::Repo;
use crate::shutdown::Shutdown;

/// How long one dependency may take to answer before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a dependency counts as down. Its `Display` is what `/ready` shows, so every reason is a
/// short fixed text (CONTRACT §5: a dependency's own error text can name hosts, roles or
/// buckets); a probe logs the detail itself before returning one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {}s", PROBE_TIMEOUT.as_secs())]
    Timeout,
    #[error("not connected")]
    NotConnected,
    /// A fixed class of failure (`connection refused`, `ping failed`, …).
    #[error("{0}")]
    Down(&'static str),
}

/// One dependency readiness depends on.
pub trait Probe: Send + Sync {
    /// Name in the `/ready` report (`database`, `redis`, …).
    fn name(&self) -> &'static str;
    /// `Ok` when the dependency answered; why not otherwise.
    fn check(&self) -> BoxFuture<'_, Result<(), ProbeError>>;
    /// Whether the instance is unready without it. A non-critical dependency that fails shows
    /// as `unavailable` in the report and the overall status becomes `degraded`, still 200.
    fn critical(&self) -> bool {
        true
    }
}

impl Probe for Repo {
    fn name(&self) -> &'static str {
        "database"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProbeError>> {
        Box::pin(async move {
            self.ping().await.map(|_| ()).map_err(|e| {
                // The full text can name roles, databases and hosts: log it, show its class.
                let reason = database_reason(&e.to_string());
                tracing::warn!(error = %e, reason, "readiness: the database does not answer");
                ProbeError::Down(reason)
            })
        })
    }
}

/// A fixed, secret-free class for a database failure, shown by `/ready` instead of the
/// server's own words (CONTRACT §5: error texts from dependencies are logged, not shown).
fn database_reason(error: &str) -> &'static str {
    const CLASSES: &[(&str, &str)] = &[
        ("connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("authentication failed", "authentication failed"),
        ("no pg_hba.conf entry", "authentication failed"),
        ("set role", "cannot switch to the application role"),
        ("does not exist", "database or role does not exist"),
        ("too many connections", "too many connections"),
        ("remaining connection slots", "too many connections"),
        ("shutting down", "database is shutting down"),
        ("starting up", "database is starting up"),
        ("recovery mode", "database is in recovery"),
        (
            "not accepting connections",
            "database does not accept connections",
        ),
        ("unreachable", "host unreachable"),
        ("no route to host", "host unreachable"),
        ("lookup address", "host not found"),
        ("name or service not known", "host not found"),
        ("connection reset", "connection lost"),
        ("closed", "connection lost"),
    ];
    let error = error.to_ascii_lowercase();
    CLASSES
        .iter()
        .find(|(needle, _)| error.contains(needle))
        .map_or("database unavailable", |(_, reason)| reason)
}

/// The process's readiness: its probes and its shutdown state.
#[derive(Clone)]
pub struct Readiness {
    probes: Arc<Vec<Box<dyn Probe>>>,
    shutdown: Shutdown,
}

impl Readiness {
    pub fn new(probes: Vec<Box<dyn Probe>>, shutdown: Shutdown) -> Self {
        Self {
            probes: Arc::new(probes),
            shutdown,
        }
    }

    /// Runs every probe; `(ready, report)` where `report` is the JSON body of `/ready`.
    pub async fn report(&self) -> (bool, Value) {
        let results = join_all(self.probes.iter().map(|p| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, p.check()).await {
                Ok(r) => r,
                Err(_) => Err(ProbeError::Timeout),
            };
            (p.name(), p.critical(), outcome, started.elapsed())
        }))
        .await;
        let mut ready = !self.shutdown.is_triggered();
        let mut degraded = false;
        let mut checks = Map::new();
        for (name, critical, outcome, latency) in results {
            let latency_ms = (latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
            let check = match outcome {
                Ok(()) => json!({"status": "ok", "latency_ms": latency_ms}),
                Err(error) => {
                    if critical {
                        ready = false;
                    } else {
                        degraded = true;
                    }
                    json!({"status": "unavailable", "latency_ms": latency_ms, "error": error.to_string()})
                }
            };
            checks.insert(name.to_owned(), check);
        }
        let status = match (ready, degraded) {
            (false, _) => "unavailable",
            (true, true) => "degraded",
            (true, false) => "ok",
        };
        let mut body = json!({"status": status, "checks": checks});
        if self.shutdown.is_triggered() {
            body["reason"] = json!("shutting down");
        }
        (ready, body)
    }
}

/// Pings Redis over a fresh connection (connect within [`PROBE_TIMEOUT`], one attempt, no
/// reconnects): what the `health_check` worker measures. Errors are short and fixed; the
/// client's own text (which can carry the URL) is only logged (CONTRACT §5).
pub async fn redis_ping(url: &ServiceUrl) -> Result<(), ProbeError> {
    let config = RedisConfig::from_url(url.expose()).map_err(|e| {
        tracing::warn!(error = %e, "health: invalid Redis URL");
        ProbeError::Down("invalid Redis URL")
    })?;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = PROBE_TIMEOUT;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = PROBE_TIMEOUT)
        .build()
        .map_err(|e| {
            tracing::warn!(error = %e, "health: cannot configure a Redis client");
            ProbeError::Down("invalid Redis configuration")
        })?;
    let connected = client.init().await;
    let outcome = match connected {
        Ok(_) => redis_ping_client(&client).await,
        Err(e) => {
            tracing::warn!(error = %e, "health: cannot connect to Redis");
            Err(ProbeError::Down("cannot connect"))
        }
    };
    // Best effort: the probe's answer is already known.
    let _ = client.quit().await;
    outcome
}

/// Pings Redis over an existing client: `/ready`'s check of the rate limiter's connection and
/// the second half of [`redis_ping`].
pub async fn redis_ping_client(client: &RedisClient) -> Result<(), ProbeError> {
    if !client.is_connected() {
        return Err(ProbeError::NotConnected);
    }
    client.ping::<String>(None).await.map(|_| ()).map_err(|e| {
        tracing::warn!(error = %e, "health: Redis does not answer PING");
        ProbeError::Down("ping failed")
    })
}

/// Opens an AMQP connection (protocol handshake, login, vhost) and closes it again.
pub async fn amqp_connect(url: &ServiceUrl) -> Result<(), ProbeError> {
    let args = amqp_connection_args(url).map_err(|e| {
        tracing::warn!(error = %e, "health: invalid RabbitMQ URL");
        ProbeError::Down("invalid RabbitMQ URL")
    })?;
    let conn = Connection::open(&args).await.map_err(|e| {
        tracing::warn!(error = %e, "health: cannot open a RabbitMQ connection");
        ProbeError::Down("cannot connect")
    })?;
    // Best effort: the connection was open, which is what was asked.
    let _ = conn.close().await;
    Ok(())
}

/// An AMQP URL [`amqp_connection_args`] cannot use (the URL in it is redacted).
#[derive(Debug, thiserror::Error)]
pub enum AmqpUrlError {
    #[error("unsupported RabbitMQ URL scheme {0} (expected amqp)")]
    Scheme(String),
    #[error("RabbitMQ URL {0} has no host")]
    NoHost(String),
    #[error("invalid percent-encoding in RabbitMQ URL {0}")]
    Encoding(String),
}

/// Connection arguments from an AMQP URI (`amqp://user:pass@host:port/vhost`), with the
/// percent-encoded vhost decoded (`%2f` is the default vhost `/`). Shared by the event relay
/// and consumer (`events::rabbitmq`) and [`amqp_connect`].
pub fn amqp_connection_args(url: &ServiceUrl) -> Result<OpenConnectionArguments, AmqpUrlError> {
    let u = url.url();
    if u.scheme() != "amqp" {
        return Err(AmqpUrlError::Scheme(u.scheme().to_owned()));
    }
    let decode = |s: &str| percent_decode(s).ok_or_else(|| AmqpUrlError::Encoding(url.to_string()));
    let host = u
        .host_str()
        .ok_or_else(|| AmqpUrlError::NoHost(url.to_string()))?;
    let user = if u.username().is_empty() {
        "guest".to_owned()
    } else {
        decode(u.username())?
    };
    let password = decode(u.password().unwrap_or("guest"))?;
    let vhost = match u.path().strip_prefix('/').unwrap_or("") {
        "" => "/".to_owned(),
        path => decode(path)?,
    };
    let mut args = OpenConnectionArguments::new(host, u.port().unwrap_or(5672), &user, &password);
    args.virtual_host(&vhost);
    Ok(args)
}

/// `%XX` escapes decoded; `None` when the result is not UTF-8 (a malformed escape such as
/// `%zz` stays as written, as the URL parser already accepted it).
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe that answers with `outcome`, or never when `None`.
    struct Fake(&'static str, Option<Result<(), ProbeError>>, bool);

    impl Probe for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn critical(&self) -> bool {
            self.2
        }
        fn check(&self) -> BoxFuture<'_, Result<(), ProbeError>> {
            let outcome = self.1;
            Box::pin(async move {
                match outcome {
                    Some(outcome) => outcome,
                    None => std::future::pending().await,
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_report_shows_only_the_fixed_reasons() {
        let readiness = Readiness::new(
            vec![
                Box::new(Fake("a", Some(Ok(())), true)),
                Box::new(Fake("b", None, false)),
                Box::new(Fake("c", Some(Err(ProbeError::NotConnected)), false)),
            ],
            Shutdown::new(),
        );
        let (ready, body) = readiness.report().await;
        assert!(ready, "{body}");
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["checks"]["a"]["status"], "ok");
        assert_eq!(body["checks"]["b"]["error"], "no answer within 1s");
        assert_eq!(body["checks"]["c"]["error"], "not connected");

        let readiness = Readiness::new(
            vec![Box::new(Fake(
                "db",
                Some(Err(ProbeError::Down("timed out"))),
                true,
            ))],
            Shutdown::new(),
        );
        let (ready, body) = readiness.report().await;
        assert!(!ready);
        assert_eq!(body["checks"]["db"]["error"], "timed out");
    }

    #[test]
    fn amqp_urls_decode_the_vhost_and_credentials() {
        let parse = |s: &str| amqp_connection_args(&ServiceUrl::parse(s).unwrap());
        let a = parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(a.get_virtual_host(), "/");
        assert_eq!((a.get_host(), a.get_port()), ("127.0.0.1", 5672));
        assert_eq!(
            parse("amqp://u:p%40ss@mq/prod").unwrap().get_virtual_host(),
            "prod"
        );
        assert_eq!(parse("amqp://mq").unwrap().get_virtual_host(), "/");
        assert!(parse("http://mq").is_err());
        // Credentials and a vhost with escapes (a vhost `prod/eu`, a password with `@` and `:`).
        let b = parse("amqp://us%65r:p%40s%3As@mq/prod%2Feu").unwrap();
        assert_eq!(b.get_virtual_host(), "prod/eu");
        assert!(parse("amqp://u:%FF@mq").is_err(), "not UTF-8");
    }
}
