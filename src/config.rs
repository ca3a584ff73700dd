//! Configuration (CONTRACT §2).
//!
//! Layers, later wins: built-in defaults < `config/default.toml` < `config/$VSM_ENV.toml`
//! < `--config FILE` < environment. Every key is validated at start-up: an unknown key or an
//! invalid value is a [`ConfigError`] naming the key, and the binary exits 2 on it.
//!
//! Secrets ([`Secret`], and the password inside a [`ServiceUrl`]) never print: their `Debug`
//! and `Display` are redacted, so logging a whole `Config` is safe.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration of one `vsm` process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PostgreSQL connection and pool.
    pub database: DatabaseConfig,
    /// HTTP listener and request handling of `vsm serve`.
    pub server: ServerConfig,
    /// Log filter and format.
    pub log: LogConfig,
    /// Redis (shared cache, rate limits, dedupe). Unset: in-process.
    pub redis: RedisConfig,
    /// RabbitMQ (event fan-out across instances). Unset: in-process.
    pub rabbitmq: RabbitMqConfig,
    /// Telegram bot.
    pub telegram: TelegramConfig,
    /// Job engine (`vsm work`, `vsm all`).
    pub jobs: JobsConfig,
    /// Episode analysis.
    pub analysis: AnalysisConfig,
    /// Event relay, fan-out and the SSE stream.
    pub events: EventsConfig,
    /// Artifact storage backend (CONTRACT §8).
    pub storage: StorageConfig,
    /// Request rate limits per key and per tenant, and failed authentication per address.
    pub rate_limit: RateLimitConfig,
    /// Resource budgets per tenant.
    pub limits: LimitsConfig,
    /// Complexity budget of a policy's rules (CONTRACT §4, §7).
    pub policies: PoliciesConfig,
    /// The built-in dashboard's sign-in sessions (CONTRACT §11).
    pub dashboard: DashboardConfig,
    /// Outbound notifications (`notification_sender`, CONTRACT §7).
    pub notifications: NotificationsConfig,
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`. Default `postgres://postgres@127.0.0.1:5432/vsm`.
    pub url: ServiceUrl,
    /// Maximum connections in this process's pool; 0 (the default) sizes it by the cores this
    /// process may use ([`DatabaseConfig::pool_size`]).
    pub pool_size: usize,
    /// Seconds to wait for a connection (new or from the pool). Default 5.
    pub connect_timeout_secs: u64,
    /// Role that serving and working connections `SET ROLE` to, so that row-level security
    /// applies to them. Default `vsm_app` (created by the migrations). Set it to `""` only
    /// when `url` already logs in as a role without `BYPASSRLS`.
    pub app_role: String,
    /// Role that cross-tenant machinery (event relay, job engine) switches to per transaction
    /// (`SET LOCAL ROLE`). Default `vsm_system` (created by the migrations).
    pub system_role: String,
    /// Longest a statement on a pooled connection may run before PostgreSQL cancels it
    /// (`statement_timeout`); 0 = no limit. Default 30. A statement stuck behind a lock, or a
    /// tenant's expensive query, then fails and is retried or answered instead of holding its
    /// connection and caller forever.
    pub statement_timeout_secs: u64,
    /// Longest a pooled connection may sit idle inside a transaction before PostgreSQL ends
    /// its session (`idle_in_transaction_session_timeout`); 0 = no limit. Default 60. A
    /// transaction abandoned by a bug cannot hold its locks for longer.
    pub idle_in_transaction_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: ServiceUrl::parse_default("postgres://postgres@127.0.0.1:5432/vsm"),
            pool_size: 0,
            connect_timeout_secs: 5,
            app_role: "vsm_app".to_owned(),
            system_role: "vsm_system".to_owned(),
            statement_timeout_secs: 30,
            idle_in_transaction_timeout_secs: 60,
        }
    }
}

/// Longest statement or idle-in-transaction timeout accepted (PostgreSQL's own limit is about
/// 24 days in milliseconds).
const MAX_SESSION_TIMEOUT_SECS: u64 = 86_400;

/// Connections per core of an automatically sized pool, and the most such a pool has.
const POOL_PER_CORE: usize = 4;
const POOL_AUTO_MAX: usize = 32;

impl DatabaseConfig {
    /// The pool's size: `pool_size`, or when that is 0 four connections per core this process
    /// may use, at most 32. More connections than the cores can run only queue inside
    /// PostgreSQL and the scheduler: on 2 cores, `GET /v1/systems` under 64 clients had its p99
    /// at 4.7-5.0 ms with 8 connections, 7.4-29 ms with 16 and 121 ms with 32, and its
    /// throughput 10 % higher with 8 than with 16.
    pub fn pool_size(&self) -> usize {
        if self.pool_size > 0 {
            return self.pool_size;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (POOL_PER_CORE * cores).min(POOL_AUTO_MAX)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Checks what serde cannot: the timeouts fit PostgreSQL's settings (at most a day here).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, secs) in [
            ("statement_timeout_secs", self.statement_timeout_secs),
            (
                "idle_in_transaction_timeout_secs",
                self.idle_in_transaction_timeout_secs,
            ),
        ] {
            if secs > MAX_SESSION_TIMEOUT_SECS {
                return Err(ConfigError::Invalid(format!(
                    "key `database.{key}`: at most {MAX_SESSION_TIMEOUT_SECS} (a day), or 0 for no limit"
                )));
            }
        }
        Ok(())
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `VSM_LISTEN`: address `vsm serve` binds. Default `0.0.0.0:4000`.
    pub listen: SocketAddr,
    /// `VSM_ADMIN_TOKEN`: bearer token for tenant creation and queue control. Unset: those
    /// routes refuse every request.
    pub admin_token: Option<Secret>,
    /// Seconds to finish in-flight work after SIGTERM/SIGINT. Default 25.
    pub shutdown_grace_secs: u64,
    /// Largest accepted JSON body in bytes. Default 1 MiB.
    pub json_body_limit: usize,
    /// HTTP worker threads; 0 = one per core. Default 0.
    pub workers: usize,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client for the
    /// failed-authentication limit. Default empty: the header is never trusted.
    pub trusted_proxies: Vec<TrustedProxy>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 4000)),
            admin_token: None,
            shutdown_grace_secs: 25,
            json_body_limit: 1024 * 1024,
            workers: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ServerConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `VSM_LOG`: a tracing filter such as `info,vsm=debug`. Default `info`.
    pub filter: String,
    /// `VSM_LOG_FORMAT`: `pretty` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[redis]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `REDIS_URL`, e.g. `redis://127.0.0.1:6379`.
    pub url: Option<ServiceUrl>,
}

/// `[rabbitmq]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqConfig {
    /// `RABBITMQ_URL`, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: Option<ServiceUrl>,
}

/// `[events]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// RabbitMQ topic exchange events are published to. Default `vsm.events`.
    pub exchange: String,
    /// Hours of event history kept for `Last-Event-ID` replay. Default 24.
    pub retention_hours: u64,
    /// Open SSE streams allowed per tenant (per instance). Default 1000.
    pub max_connections_per_tenant: usize,
    /// Seconds between `: heartbeat` comments. Default 15.
    pub heartbeat_secs: u64,
    /// Longest an SSE stream stays open before it is ended with `disconnected`
    /// (reason `max_duration`) and the client reconnects. Default 3600.
    pub max_stream_secs: u64,
    /// Events buffered per SSE client before it is cut off with reason `overflow`. Default 1024.
    pub client_buffer: usize,
    /// Bytes of event frames buffered per SSE client before it is cut off with reason
    /// `overflow` (at least one event always fits). Default 8 MiB.
    pub client_buffer_bytes: usize,
    /// `retry:` hint sent to SSE clients, in milliseconds. Default 3000.
    pub retry_ms: u64,
    /// Relay polling fallback when no NOTIFY arrives, in milliseconds. Default 1000.
    pub relay_poll_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            exchange: "vsm.events".to_owned(),
            retention_hours: 24,
            max_connections_per_tenant: 1000,
            heartbeat_secs: 15,
            max_stream_secs: 3600,
            client_buffer: 1024,
            client_buffer_bytes: 8 * 1024 * 1024,
            retry_ms: 3000,
            relay_poll_ms: 1000,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `VSM_STORAGE__BACKEND`: `local` (default), `s3` or `memory` (tests; lost on exit).
    pub backend: StorageBackend,
    /// `VSM_STORAGE__ROOT`: directory of the `local` backend. Default `./data`.
    pub root: PathBuf,
    /// Largest accepted artifact in bytes; a bigger upload is refused with 413. Default 5 GiB
    /// (the largest object S3 copies in one request, which publishing an upload relies on).
    pub max_object_bytes: u64,
    /// Staging objects (`staging/<upload id>`, uploads in progress) older than this many seconds
    /// were left by a process that died mid-upload and are removed. At least 60. Default 3600.
    pub staging_max_age_secs: u64,
    /// Seconds between sweeps of old staging objects by `vsm serve` / `vsm all` (also one at
    /// start-up); 0 disables the sweeper. Default 600.
    pub staging_sweep_interval_secs: u64,
    /// The `s3` backend (AWS S3 or an S3-compatible server such as MinIO).
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Local,
            root: PathBuf::from("./data"),
            max_object_bytes: 5 * 1024 * 1024 * 1024,
            staging_max_age_secs: 3600,
            staging_sweep_interval_secs: 600,
            s3: S3Config::default(),
        }
    }
}

/// Which [`StorageConfig::backend`] stores artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    S3,
    Memory,
}

impl StorageBackend {
    /// The name stored in `artifacts.storage_backend` and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Local => "local",
            StorageBackend::S3 => "s3",
            StorageBackend::Memory => "memory",
        }
    }
}

/// `[storage.s3]`. Credentials not set here come from the usual `AWS_*` environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …) or the instance role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `VSM_STORAGE__S3__BUCKET`: required when `backend = "s3"`.
    pub bucket: Option<String>,
    /// `VSM_STORAGE__S3__ENDPOINT`: e.g. `http://127.0.0.1:9000` for MinIO; unset = AWS.
    /// Plain `http://` is allowed only when set explicitly here.
    pub endpoint: Option<String>,
    /// `VSM_STORAGE__S3__REGION`. Default `us-east-1`.
    pub region: String,
    /// `VSM_STORAGE__S3__PATH_STYLE`: `true` for `endpoint/bucket/key` URLs (MinIO, most
    /// S3-compatible servers); `false` (default) for virtual-hosted `bucket.endpoint/key`.
    pub path_style: bool,
    /// `VSM_STORAGE__S3__ACCESS_KEY_ID`; unset = `AWS_ACCESS_KEY_ID` or the instance role.
    pub access_key_id: Option<Secret>,
    /// `VSM_STORAGE__S3__SECRET_ACCESS_KEY`; unset = `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: None,
            endpoint: None,
            region: "us-east-1".to_owned(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// `[rate_limit]`: token buckets per API key, per tenant and per client address (failed
/// authentication), shared through Redis when `REDIS_URL` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second per key. Default 50. 0 disables the per-key and the
    /// per-tenant limit.
    pub requests_per_second: f64,
    /// Requests a key may make at once before the rate applies. Default 100.
    pub burst: f64,
    /// Sustained requests per second per tenant, all its keys together (more keys buy no more
    /// capacity). Default 100. 0 disables the per-tenant limit.
    pub tenant_requests_per_second: f64,
    /// Requests a tenant may make at once. Default 200.
    pub tenant_burst: f64,
    /// Key lookups per second per client address for keys that are not already known (each
    /// unknown key costs one; a valid one is refunded). Default 1. 0 disables the limit.
    pub failed_auth_per_second: f64,
    /// Unknown keys an address may try at once before it gets 429. Default 20.
    pub failed_auth_burst: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 50.0,
            burst: 100.0,
            tenant_requests_per_second: 100.0,
            tenant_burst: 200.0,
            failed_auth_per_second: 1.0,
            failed_auth_burst: 20.0,
        }
    }
}

/// `[limits]`: how many of each resource one tenant may hold; creating one more is 409.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Unrevoked API keys per tenant. Default 100.
    pub max_api_keys_per_tenant: u64,
    /// Policies per tenant. Default 1000.
    pub max_policies_per_tenant: u64,
    /// Outbound webhooks per tenant. Default 100.
    pub max_webhooks_per_tenant: u64,
    /// Linked Telegram chats per tenant. Default 100.
    pub max_telegram_chats_per_tenant: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_api_keys_per_tenant: 100,
            max_policies_per_tenant: 1000,
            max_webhooks_per_tenant: 100,
            max_telegram_chats_per_tenant: 100,
        }
    }
}

/// `[telegram]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelegramConfig {
    /// `TELEGRAM_BOT_TOKEN`.
    pub bot_token: Option<Secret>,
    /// `TELEGRAM_WEBHOOK_SECRET`: expected `X-Telegram-Bot-Api-Secret-Token`.
    pub webhook_secret: Option<Secret>,
    /// The bot's username without `@`: a command addressed `/cmd@other_bot` is ignored. Unset,
    /// every `/cmd@name` is taken as addressed to this bot. Default unset.
    pub bot_username: Option<String>,
    /// Commands one chat may run per minute, sustained (across instances through Redis); over
    /// it a command is acknowledged and dropped, with at most one "slow down" reply per
    /// minute. 0 disables the limit. Default 20.
    pub commands_per_minute: f64,
    /// Commands one chat may send at once before the per-minute rate applies. Default 5.
    pub command_burst: f64,
    /// Hours a seen `update_id` is remembered (Telegram retries an update for up to 24 h).
    /// At least 24. Default 48.
    pub update_retention_hours: u64,
    /// Bot API server: requests go to `{api_base}/bot{token}/{method}`. Default
    /// `https://api.telegram.org`.
    pub api_base: ServiceUrl,
    /// Least milliseconds between two messages to one chat, across all instances. Default 1000
    /// (Telegram: about one message per second per chat).
    pub per_chat_interval_ms: u64,
    /// Most messages per minute to one group (a negative chat id). Default 20.
    pub per_group_per_minute: u32,
    /// Most messages per second from the bot, across all instances. Default 30.
    pub per_bot_per_second: u32,
    /// Seconds one Bot API request may take. Default 15.
    pub request_timeout_secs: u64,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            bot_token: None,
            webhook_secret: None,
            bot_username: None,
            commands_per_minute: 20.0,
            command_burst: 5.0,
            update_retention_hours: 48,
            api_base: ServiceUrl::parse_default("https://api.telegram.org"),
            per_chat_interval_ms: 1000,
            per_group_per_minute: 20,
            per_bot_per_second: 30,
            request_timeout_secs: 15,
        }
    }
}

impl TelegramConfig {
    /// The webhook is served only when both the bot token and the webhook secret are set.
    pub fn webhook_enabled(&self) -> bool {
        let set = |s: &Option<Secret>| s.as_ref().is_some_and(|s| !s.expose().is_empty());
        set(&self.bot_token) && set(&self.webhook_secret)
    }

    /// Checks what serde cannot: the limits are positive, the bot name and the command rate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| {
            Err(ConfigError::Invalid(format!("key `telegram.{key}`: {why}")))
        };
        if self.per_chat_interval_ms == 0 {
            return invalid("per_chat_interval_ms", "must be at least 1");
        }
        if self.per_group_per_minute == 0 {
            return invalid("per_group_per_minute", "must be at least 1");
        }
        if self.per_bot_per_second == 0 {
            return invalid("per_bot_per_second", "must be at least 1");
        }
        if self.request_timeout_secs == 0 {
            return invalid("request_timeout_secs", "must be at least 1");
        }
        if let Some(name) = &self.bot_username
            && (name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return invalid(
                "bot_username",
                "1 to 64 letters, digits or underscores, without the @",
            );
        }
        if !(self.commands_per_minute.is_finite() && self.commands_per_minute >= 0.0) {
            return invalid("commands_per_minute", "must be 0 or more");
        }
        if !(self.command_burst.is_finite() && self.command_burst >= 1.0) {
            return invalid("command_burst", "must be at least 1");
        }
        if self.update_retention_hours < 24 {
            return invalid(
                "update_retention_hours",
                "must be at least 24 (Telegram retries an update for 24 h)",
            );
        }
        Ok(())
    }
}

/// `[jobs]`: the job engine of `vsm work` and `vsm all` (CONTRACT §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Queues this node runs, with the most jobs it executes at once per queue. `vsm work
    /// --queue NAME[=LIMIT]` replaces the set. Default `default=10, critical=20, analysis=5,
    /// notifications=5`.
    pub queues: BTreeMap<String, usize>,
    /// Address of `vsm work`'s `/metrics`, `/health`, `/live`, `/ready` listener. Default
    /// `0.0.0.0:4001` (`--metrics-listen`).
    pub metrics_listen: SocketAddr,
    /// Milliseconds between polls of a queue when no NOTIFY arrives (the fallback wake-up;
    /// also how often scheduled and retryable jobs are staged). Default 1000.
    pub poll_interval_ms: u64,
    /// Seconds between this node's heartbeats. Default 2.
    pub heartbeat_interval_secs: u64,
    /// A node whose heartbeat is older than this many seconds, and whose heartbeat session no
    /// longer holds its liveness lock, is dead: its executing jobs are handed to other nodes. 1 to 60, greater than `heartbeat_interval_secs`. Default 10 (five
    /// missed beats), so a `kill -9` is rescued within about 12.5 s.
    pub rescue_after_secs: u64,
    /// Completed, cancelled and discarded jobs are deleted this many days after they ended.
    /// Default 7.
    pub prune_after_days: u64,
    /// Seconds between pruner runs. Default 60.
    pub prune_interval_secs: u64,
    /// Periodic jobs. Default: `health_check` at the top of every hour.
    pub cron: Vec<CronEntry>,
    /// Registers the test-only workers (`test_probe`, `test_noop`) used by the end-to-end tests
    /// and the benchmark. Never set it in production. Default false.
    pub test_workers: bool,
    /// Directory where `test_probe` appends one line per execution. Default unset.
    pub test_probe_dir: Option<PathBuf>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            queues: [
                ("default", 10),
                ("critical", 20),
                ("analysis", 5),
                ("notifications", 5),
            ]
            .into_iter()
            .map(|(q, n)| (q.to_owned(), n))
            .collect(),
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 4001)),
            poll_interval_ms: 1000,
            heartbeat_interval_secs: 2,
            rescue_after_secs: 10,
            prune_after_days: 7,
            prune_interval_secs: 60,
            cron: vec![CronEntry {
                name: "health_check".to_owned(),
                expression: CronSchedule::hourly(),
                worker: "health_check".to_owned(),
                args: serde_json::json!({}),
            }],
            test_workers: false,
            test_probe_dir: None,
        }
    }
}

impl JobsConfig {
    /// Checks what serde cannot: ranges and cron expressions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, why: &str| Err(ConfigError::Invalid(format!("key `jobs.{key}`: {why}")));
        for (queue, limit) in &self.queues {
            if queue.is_empty() || queue.len() > 128 {
                return invalid("queues", "queue names are 1 to 128 characters");
            }
            if *limit == 0 {
                return invalid(&format!("queues.{queue}"), "the limit must be at least 1");
            }
        }
        if self.poll_interval_ms == 0 {
            return invalid("poll_interval_ms", "must be at least 1");
        }
        if self.heartbeat_interval_secs == 0 {
            return invalid("heartbeat_interval_secs", "must be at least 1");
        }
        if !(1..=60).contains(&self.rescue_after_secs)
            || self.rescue_after_secs <= self.heartbeat_interval_secs
        {
            return invalid(
                "rescue_after_secs",
                "must be 1 to 60 and greater than heartbeat_interval_secs",
            );
        }
        if self.prune_interval_secs == 0 {
            return invalid("prune_interval_secs", "must be at least 1");
        }
        for (i, entry) in self.cron.iter().enumerate() {
            if !entry.args.is_object() {
                return invalid(&format!("cron[{i}].args"), "must be a table (JSON object)");
            }
            if entry.name.is_empty() || entry.worker.is_empty() {
                return invalid(&format!("cron[{i}]"), "name and worker must not be empty");
            }
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

/// One `[[jobs.cron]]` entry: at every slot of `expression` exactly one job of `worker` is
/// inserted cluster-wide.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronEntry {
    /// Unique name of the entry (slots are claimed per name).
    pub name: String,
    /// Cron expression: 5 fields (minute granularity) or 6 (leading seconds); `@hourly` etc.
    pub expression: CronSchedule,
    /// Worker to enqueue; its own queue and options apply.
    pub worker: String,
    /// Job arguments (a table). Default `{}`.
    #[serde(default = "empty_object")]
    pub args: serde_json::Value,
}

/// A `server.trusted_proxies` entry: an address range (`10.0.0.0/8`, `2001:db8::/32`) or one
/// address (`127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustedProxy(ipnet::IpNet);

impl TrustedProxy {
    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl std::str::FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let net = match s.parse::<std::net::IpAddr>() {
            Ok(ip) => ipnet::IpNet::from(ip.to_canonical()),
            Err(_) => s
                .parse::<ipnet::IpNet>()
                .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?,
        };
        Ok(TrustedProxy(net.trunc()))
    }
}

impl TryFrom<String> for TrustedProxy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TrustedProxy> for String {
    fn from(p: TrustedProxy) -> String {
        p.0.to_string()
    }
}

/// A cron expression, parsed when the configuration is read, so a bad one is a configuration
/// error naming its key and nothing later parses it again.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CronSchedule {
    text: String,
    cron: croner::Cron,
}

impl CronSchedule {
    /// `0 * * * *`: the top of every hour.
    pub fn hourly() -> Self {
        Self::parse("0 * * * *").expect("`0 * * * *` is a valid cron expression")
    }

    /// Parses a 5-field (or 6-field, leading seconds) expression; aliases such as `@hourly` work.
    pub fn parse(expression: &str) -> Result<Self, String> {
        use croner::parser::{CronParser, Seconds};
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| format!("invalid cron expression {expression:?}: {e}"))?;
        Ok(Self {
            text: expression.to_owned(),
            cron,
        })
    }

    pub fn cron(&self) -> &croner::Cron {
        &self.cron
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for CronSchedule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<CronSchedule> for String {
    fn from(c: CronSchedule) -> String {
        c.text
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// `[policies]`: the complexity budget of one policy's rules, checked when it is saved (422
/// naming the JSON path) and again when a stored policy is compiled for evaluation, so that
/// no rule a tenant writes can make a request or an evaluation use unbounded CPU or memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Most conditions (`all`, `any`, `not` and comparisons, counted together) in `if`. Default 64.
    pub max_conditions: usize,
    /// Deepest nesting of conditions (a lone comparison is depth 1). Default 8.
    pub max_depth: usize,
    /// Most `matches` comparisons (regular expressions). Default 16.
    pub max_patterns: usize,
    /// Most bytes of all `matches` patterns together. Default 4096.
    pub max_pattern_bytes: usize,
    /// Most actions in `then`. Default 16.
    pub max_actions: usize,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            max_conditions: 64,
            max_depth: 8,
            max_patterns: 16,
            max_pattern_bytes: 4096,
            max_actions: 16,
        }
    }
}

impl PoliciesConfig {
    /// A zero budget would refuse every policy: each limit must be at least 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("max_conditions", self.max_conditions),
            ("max_depth", self.max_depth),
            ("max_patterns", self.max_patterns),
            ("max_pattern_bytes", self.max_pattern_bytes),
            ("max_actions", self.max_actions),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "key `policies.{key}`: must be at least 1"
                )));
            }
        }
        Ok(())
    }
}

/// `[dashboard]`: sign-in sessions of the built-in dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// How long a session lasts after sign-in, in seconds (60 to 2,592,000). Default 28800 (8 h).
    pub session_ttl_secs: u32,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            session_ttl_secs: 8 * 3600,
        }
    }
}

/// `[notifications]`: how `notification_sender` delivers (CONTRACT §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// Seconds added to every retry delay, which is `retry_base_secs + 2^attempt` s ± 10 %
    /// (17 attempts span about a day and a half). Default 15, as for other jobs.
    pub retry_base_secs: u64,
    /// Deliver webhooks to loopback, private, link-local and metadata addresses too. Default
    /// false: such targets are refused before any connection (SSRF).
    pub allow_private_targets: bool,
    /// Seconds one webhook delivery may take, connection to last byte. Default 15.
    pub webhook_timeout_secs: u64,
    /// Seconds a rotated-out webhook secret keeps signing beside the new one. Default 86400.
    pub secret_overlap_secs: u64,
    /// Days an endpoint may fail every delivery before it is disabled. Default 5.
    pub webhook_disable_after_days: u64,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            retry_base_secs: 15,
            allow_private_targets: false,
            webhook_timeout_secs: 15,
            secret_overlap_secs: 86_400,
            webhook_disable_after_days: 5,
        }
    }
}

impl DashboardConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(60..=30 * 24 * 3600).contains(&self.session_ttl_secs) {
            return Err(ConfigError::Invalid(
                "key `dashboard.session_ttl_secs`: must be 60 to 2592000 (30 days)".into(),
            ));
        }
        Ok(())
    }
}

impl NotificationsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| {
            Err(ConfigError::Invalid(format!(
                "key `notifications.{key}`: {why}"
            )))
        };
        if !(1..=300).contains(&self.webhook_timeout_secs) {
            return invalid("webhook_timeout_secs", "must be 1 to 300");
        }
        if self.secret_overlap_secs > 30 * 86_400 {
            return invalid("secret_overlap_secs", "must be at most 30 days (2592000)");
        }
        if self.webhook_disable_after_days == 0 {
            return invalid("webhook_disable_after_days", "must be at least 1");
        }
        Ok(())
    }

    pub fn webhook_timeout(&self) -> Duration {
        Duration::from_secs(self.webhook_timeout_secs)
    }
}

/// `[analysis]`: how the episode analyzer works.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Base URL of an OpenAI-compatible API (`POST {llm_url}/v1/chat/completions`). Unset: the
    /// built-in deterministic analyzer only. On any LLM failure the built-in one is used.
    pub llm_url: Option<ServiceUrl>,
    /// Model name sent to the LLM. Default `gpt-4o-mini`.
    pub llm_model: String,
    /// Bearer token for the LLM API. Default unset.
    pub llm_api_key: Option<Secret>,
    /// Seconds to wait for the LLM before falling back. Default 20.
    pub llm_timeout_secs: u64,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            llm_url: None,
            llm_model: "gpt-4o-mini".to_owned(),
            llm_api_key: None,
            llm_timeout_secs: 20,
        }
    }
}

/// Why a configuration could not be loaded. Always names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("unknown configuration environment variable {0}")]
    UnknownEnv(String),
}

/// Environment variables of CONTRACT §2 that map to a key without the `VSM_<SECTION>__<KEY>` form.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
    ("RABBITMQ_URL", "rabbitmq.url"),
    ("VSM_LISTEN", "server.listen"),
    ("VSM_ADMIN_TOKEN", "server.admin_token"),
    ("VSM_LOG", "log.filter"),
    ("VSM_LOG_FORMAT", "log.format"),
    ("TELEGRAM_BOT_TOKEN", "telegram.bot_token"),
    ("TELEGRAM_WEBHOOK_SECRET", "telegram.webhook_secret"),
];

/// `VSM_` variables that select configuration rather than set a key.
const ENV_SELECTORS: &[&str] = &["VSM_ENV"];

impl Config {
    /// Loads the layers from the current directory and the process environment.
    pub fn load(config_file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(Path::new("config"), config_file, std::env::vars())
    }

    /// Loads the layers from `config_dir` and the given environment (tests pass their own).
    pub fn load_from(
        config_dir: &Path,
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(config_dir.join("default.toml")));
        if let Some((_, profile)) = env.iter().find(|(k, _)| k == "VSM_ENV") {
            figment = figment.merge(Toml::file(config_dir.join(format!("{profile}.toml"))));
        }
        if let Some(file) = config_file {
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file(file));
        }
        for (name, value) in env {
            // `REDIS_URL=` in an env file means "not set", not "set to nothing".
            if value.is_empty() {
                continue;
            }
            if let Some(key) = env_key(&name)? {
                figment = figment.merge(EnvVar { name, key, value });
            }
        }
        let config = figment
            .extract::<Config>()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        config.database.validate()?;
        config.jobs.validate()?;
        config.policies.validate()?;
        config.dashboard.validate()?;
        config.notifications.validate()?;
        config.telegram.validate()?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as TOML, in the layout of `config/default.toml`, with every
    /// [`Secret`] and every password inside a [`ServiceUrl`] shown as `[redacted]`
    /// (`vsm config check`).
    pub fn to_redacted_toml(&self) -> Result<String, String> {
        /// Clears the flag however serialisation ends (also on a panic).
        struct Redacting;
        impl Drop for Redacting {
            fn drop(&mut self) {
                REDACTING.set(false);
            }
        }
        REDACTING.set(true);
        let _redacting = Redacting;
        toml::to_string_pretty(self).map_err(|e| format!("cannot render the configuration: {e}"))
    }

    /// Rules that span keys, checked once the layers are merged.
    fn validate(&self) -> Result<(), ConfigError> {
        let s3 = &self.storage.s3;
        if self.storage.backend == StorageBackend::S3
            && s3.bucket.as_deref().is_none_or(str::is_empty)
        {
            return Err(ConfigError::Invalid(
                "key `storage.s3.bucket`: required when storage.backend = \"s3\"".to_owned(),
            ));
        }
        if let Some(endpoint) = &s3.endpoint
            && url::Url::parse(endpoint).is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "key `storage.s3.endpoint`: not a URL: {endpoint}"
            )));
        }
        // A younger limit could remove an upload that is still streaming in.
        if self.storage.staging_max_age_secs < 60 {
            return Err(ConfigError::Invalid(
                "key `storage.staging_max_age_secs`: must be at least 60".to_owned(),
            ));
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            return Err(ConfigError::Invalid(
                "key `storage.s3.secret_access_key`: storage.s3.access_key_id and \
                 storage.s3.secret_access_key must be set together"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// Maps one environment variable name to its config key (`section.key`), `None` when the
/// variable is not ours, or an error for a `VSM_` variable that names no key.
fn env_key(name: &str) -> Result<Option<String>, ConfigError> {
    if let Some((_, key)) = ENV_ALIASES.iter().find(|(var, _)| *var == name) {
        return Ok(Some((*key).to_owned()));
    }
    let Some(rest) = name.strip_prefix("VSM_") else {
        return Ok(None);
    };
    if ENV_SELECTORS.contains(&name) {
        return Ok(None);
    }
    if rest.contains("__") {
        return Ok(Some(rest.to_ascii_lowercase().replace("__", ".")));
    }
    // A typo such as VSM_LISTN must not be silently ignored.
    Err(ConfigError::UnknownEnv(name.to_owned()))
}

/// One environment variable as a figment layer, named after the variable so that an invalid
/// value is reported as coming from it. Values are parsed like figment's own `Env` does
/// (`5` is a number, `true` a bool, anything else a string).
struct EnvVar {
    name: String,
    key: String,
    value: String,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let value: Value = match self.value.parse() {
            Ok(v) => v,
            Err(never) => match never {},
        };
        Serialized::global(&self.key, value).data()
    }
}

/// `["jobs", "cron", "0", "expression"]` → `jobs.cron[0].expression`.
fn key_path(path: &[String]) -> String {
    let mut key = String::new();
    for segment in path {
        if segment.bytes().all(|b| b.is_ascii_digit()) && !key.is_empty() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// Turns a figment error into one line that names the key and where it came from.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = key_path(&e.path);
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (from {src})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("key `{key}`: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a secret shows as wherever it is printed.
const REDACTED: &str = "[redacted]";

thread_local! {
    /// Set while [`Config::to_redacted_toml`] serialises on this thread: secrets then
    /// serialise as [`REDACTED`]. (Serialising for the configuration layers needs them whole.)
    static REDACTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A secret string: deserialised from config, never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The layering serialises the defaults and needs the real value; only
        // `Config::to_redacted_toml` asks for the redacted form.
        if REDACTING.get() {
            s.serialize_str(REDACTED)
        } else {
            s.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment values that look like numbers arrive as numbers; a token is still text.
        scalar_string(d).map(Secret)
    }
}

/// A connection URL whose password is redacted in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(url::Url);

impl ServiceUrl {
    fn parse_default(s: &str) -> Self {
        match url::Url::parse(s) {
            Ok(u) => Self(u),
            Err(e) => panic!("built-in default URL {s} is invalid: {e}"),
        }
    }

    pub fn parse(s: &str) -> Result<Self, url::ParseError> {
        url::Url::parse(s).map(Self)
    }

    /// The full URL including any password; for connecting only.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// `host:port` for error messages (default port when the URL has none).
    pub fn host_port(&self) -> String {
        let host = self.0.host_str().unwrap_or("localhost");
        match self
            .0
            .port_or_known_default()
            .or_else(|| default_port(self.0.scheme()))
        {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// The same URL with another path (database name), e.g. to reach the maintenance database.
    pub fn with_path(&self, path: &str) -> ServiceUrl {
        let mut u = self.0.clone();
        u.set_path(path);
        Self(u)
    }

    /// The URL's path without its leading `/` (the database name for PostgreSQL).
    pub fn path_name(&self) -> &str {
        self.0.path().trim_start_matches('/')
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "postgres" | "postgresql" => Some(5432),
        "redis" => Some(6379),
        "amqp" => Some(5672),
        _ => None,
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // set_password only fails for URLs that cannot have one, which then had none.
            let _ = shown.set_password(Some(REDACTED));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceUrl({self})")
    }
}

impl Serialize for ServiceUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if REDACTING.get() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_str(self.0.as_str())
        }
    }
}

impl<'de> Deserialize<'de> for ServiceUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServiceUrl::parse(&s).map_err(|e| serde::de::Error::custom(format!("not a URL: {e}")))
    }
}

fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Scalar;
    impl serde::de::Visitor<'_> for Scalar {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(Scalar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).expect("write");
        }
        dir
    }

    #[test]
    fn defaults_need_nothing_but_postgres() {
        let dir = dir_with(&[]);
        let c = Config::load_from(dir.path(), None, env(&[])).expect("defaults load");
        assert_eq!(
            c.database.url.expose(),
            "postgres://postgres@127.0.0.1:5432/vsm"
        );
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:4000");
        assert!(c.redis.url.is_none() && c.rabbitmq.url.is_none());
        assert_eq!(c.server.shutdown_grace_secs, 25);
    }

    #[test]
    fn later_layers_win() {
        let dir = dir_with(&[
            (
                "default.toml",
                "[server]\nworkers = 1\nshutdown_grace_secs = 1\njson_body_limit = 1\n[database]\npool_size = 1",
            ),
            (
                "staging.toml",
                "[server]\nworkers = 2\nshutdown_grace_secs = 2",
            ),
            ("extra.toml", "[server]\nworkers = 3"),
        ]);
        let extra = dir.path().join("extra.toml");
        let c = Config::load_from(
            dir.path(),
            Some(&extra),
            env(&[
                ("VSM_ENV", "staging"),
                ("VSM_DATABASE__POOL_SIZE", "7"),
                ("VSM_LISTEN", "127.0.0.1:9999"),
            ]),
        )
        .expect("load");
        assert_eq!(c.server.json_body_limit, 1); // default.toml
        assert_eq!(c.server.shutdown_grace_secs, 2); // $VSM_ENV file over default.toml
        assert_eq!(c.server.workers, 3); // --config over $VSM_ENV file
        assert_eq!(c.database.pool_size, 7); // environment over everything
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9999");
    }

    /// Unset, the pool is sized by the cores (four each, at most 32); a size given is kept.
    #[test]
    fn the_pool_is_sized_by_the_cores_unless_given() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = DatabaseConfig::default();
        assert_eq!(auto.pool_size, 0);
        assert_eq!(auto.pool_size(), (4 * cores).min(32));
        assert!(auto.pool_size() >= 4);
        let given = DatabaseConfig {
            pool_size: 7,
            ..DatabaseConfig::default()
        };
        assert_eq!(given.pool_size(), 7);
    }

    /// The session timeouts default to 30 s and 60 s, take 0 for none, and refuse more than a
    /// day (PostgreSQL would refuse the session's settings, and every connection with them).
    #[test]
    fn session_timeouts_are_bounded() {
        let dir = dir_with(&[]);
        let c = Config::load_from(dir.path(), None, env(&[])).expect("defaults load");
        assert_eq!(c.database.statement_timeout_secs, 30);
        assert_eq!(c.database.idle_in_transaction_timeout_secs, 60);
        for (key, value, ok) in [
            ("VSM_DATABASE__STATEMENT_TIMEOUT_SECS", "0", true),
            ("VSM_DATABASE__STATEMENT_TIMEOUT_SECS", "86400", true),
            ("VSM_DATABASE__STATEMENT_TIMEOUT_SECS", "86401", false),
            (
                "VSM_DATABASE__IDLE_IN_TRANSACTION_TIMEOUT_SECS",
                "99999999999",
                false,
            ),
        ] {
            let loaded = Config::load_from(dir.path(), None, env(&[(key, value)]));
            match (loaded, ok) {
                (Ok(_), true) => {}
                (Err(e), false) => assert!(e.to_string().contains("timeout_secs"), "{e}"),
                (loaded, _) => panic!("{key}={value}: {:?}", loaded.map(|_| ())),
            }
        }
    }

    #[test]
    fn contract_environment_variables_map_to_their_keys() {
        let dir = dir_with(&[]);
        let c = Config::load_from(
            dir.path(),
            None,
            env(&[
                ("DATABASE_URL", "postgres://u:pw@db:5432/x"),
                ("REDIS_URL", "redis://cache:6379"),
                ("RABBITMQ_URL", "amqp://guest:guest@mq:5672/%2f"),
                ("VSM_ADMIN_TOKEN", "12345"),
                ("VSM_LOG", "debug"),
                ("VSM_LOG_FORMAT", "json"),
                ("TELEGRAM_BOT_TOKEN", "123:abc"),
                ("TELEGRAM_WEBHOOK_SECRET", "s3cret"),
                ("HOME", "/root"),
            ]),
        )
        .expect("load");
        assert_eq!(c.database.url.host_port(), "db:5432");
        assert_eq!(
            c.redis.url.as_ref().map(|u| u.host_port()).as_deref(),
            Some("cache:6379")
        );
        assert_eq!(
            c.rabbitmq.url.as_ref().map(|u| u.host_port()).as_deref(),
            Some("mq:5672")
        );
        // A numeric-looking token is still text.
        assert_eq!(
            c.server.admin_token.as_ref().map(Secret::expose),
            Some("12345")
        );
        assert_eq!(c.log.filter, "debug");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(
            c.telegram.bot_token.as_ref().map(Secret::expose),
            Some("123:abc")
        );
    }

    #[test]
    fn empty_environment_values_mean_unset() {
        let dir = dir_with(&[]);
        let c = Config::load_from(dir.path(), None, env(&[("REDIS_URL", "")])).expect("load");
        assert!(c.redis.url.is_none());
    }

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let dir = dir_with(&[]);
        let c = Config::load_from(
            dir.path(),
            None,
            env(&[
                ("DATABASE_URL", "postgres://app:hunter2@db/vsm"),
                ("RABBITMQ_URL", "amqp://guest:mqpass@mq:5672/%2f"),
                ("VSM_ADMIN_TOKEN", "admintoken"),
                ("TELEGRAM_BOT_TOKEN", "bottoken"),
                ("TELEGRAM_WEBHOOK_SECRET", "hooksecret"),
            ]),
        )
        .expect("load");
        let shown = format!(
            "{c:?} {} {}",
            c.database.url,
            c.server
                .admin_token
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        for secret in ["hunter2", "mqpass", "admintoken", "bottoken", "hooksecret"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(
            shown.contains("postgres://app:[redacted]@db/vsm")
                || shown.contains("postgres://app:%5Bredacted%5D@db/vsm"),
            "{shown}"
        );
    }

    #[test]
    fn storage_keys_come_from_the_environment_and_are_checked() {
        let dir = dir_with(&[]);
        let c = Config::load_from(dir.path(), None, env(&[])).expect("load");
        assert_eq!(c.storage.backend, StorageBackend::Local);
        assert_eq!(c.storage.root, PathBuf::from("./data"));
        let c = Config::load_from(
            dir.path(),
            None,
            env(&[
                ("VSM_STORAGE__BACKEND", "s3"),
                ("VSM_STORAGE__S3__BUCKET", "artifacts"),
                ("VSM_STORAGE__S3__ENDPOINT", "http://127.0.0.1:9000"),
                ("VSM_STORAGE__S3__PATH_STYLE", "true"),
                ("VSM_STORAGE__S3__ACCESS_KEY_ID", "minio"),
                ("VSM_STORAGE__S3__SECRET_ACCESS_KEY", "miniosecret"),
                ("VSM_STORAGE__MAX_OBJECT_BYTES", "1024"),
            ]),
        )
        .expect("load");
        assert_eq!(c.storage.backend, StorageBackend::S3);
        assert_eq!(c.storage.s3.bucket.as_deref(), Some("artifacts"));
        assert!(c.storage.s3.path_style);
        assert_eq!(c.storage.max_object_bytes, 1024);
        assert!(!format!("{c:?}").contains("miniosecret"));

        let err = Config::load_from(dir.path(), None, env(&[("VSM_STORAGE__BACKEND", "s3")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.s3.bucket"), "{err}");
        let err = Config::load_from(dir.path(), None, env(&[("VSM_STORAGE__BACKEND", "ftp")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.backend"), "{err}");
        let err = Config::load_from(dir.path(), None, env(&[("VSM_STORAGE__S3__BUCKETT", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bucket"), "{err}");
        let err = Config::load_from(
            dir.path(),
            None,
            env(&[("VSM_STORAGE__STAGING_MAX_AGE_SECS", "5")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.staging_max_age_secs"), "{err}");
    }

    #[test]
    fn errors_name_the_key_and_its_source() {
        let dir = dir_with(&[("default.toml", "[database]\npool_size = \"lots\"\n")]);
        let err = Config::load_from(dir.path(), None, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.pool_size"), "{err}");
        assert!(err.contains("default.toml"), "{err}");

        let dir = dir_with(&[("default.toml", "[serverr]\nlisten = \"0.0.0.0:1\"\n")]);
        let err = Config::load_from(dir.path(), None, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("serverr"), "{err}");

        let err = Config::load_from(dir_with(&[]).path(), None, env(&[("VSM_LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("VSM_LISTN"), "{err}");
    }

    #[test]
    fn policies_budget_defaults_overrides_and_validation() {
        let dir = dir_with(&[]);
        let c = Config::load_from(dir.path(), None, env(&[])).expect("defaults");
        assert_eq!(c.policies, PoliciesConfig::default());
        assert_eq!(
            (c.policies.max_conditions, c.policies.max_patterns),
            (64, 16)
        );
        // The shipped default.toml says the same as the built-in defaults.
        let shipped = Config::load_from(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
            None,
            env(&[]),
        )
        .unwrap();
        assert_eq!(shipped.policies, PoliciesConfig::default());
        let c = Config::load_from(
            dir.path(),
            None,
            env(&[("VSM_POLICIES__MAX_PATTERNS", "4")]),
        )
        .unwrap();
        assert_eq!(c.policies.max_patterns, 4);
        let err = Config::load_from(dir.path(), None, env(&[("VSM_POLICIES__MAX_ACTIONS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("policies.max_actions"), "{err}");
    }

    #[test]
    fn jobs_defaults_overrides_and_validation() {
        let dir = dir_with(&[]);
        let c = Config::load_from(dir.path(), None, env(&[])).expect("defaults");
        let queues: Vec<(&str, usize)> = c
            .jobs
            .queues
            .iter()
            .map(|(q, n)| (q.as_str(), *n))
            .collect();
        assert_eq!(
            queues,
            [
                ("analysis", 5),
                ("critical", 20),
                ("default", 10),
                ("notifications", 5)
            ]
        );
        assert_eq!(c.jobs.cron.len(), 1);
        assert_eq!(c.jobs.cron[0].expression.as_str(), "0 * * * *");
        assert!(c.jobs.rescue_after_secs <= 60);
        assert_eq!(c.jobs.prune_after_days, 7);

        let c = Config::load_from(
            dir.path(),
            None,
            env(&[
                ("VSM_JOBS__QUEUES__ANALYSIS", "8"),
                ("VSM_JOBS__POLL_INTERVAL_MS", "250"),
            ]),
        )
        .expect("overrides");
        assert_eq!(c.jobs.queues["analysis"], 8);
        assert_eq!(c.jobs.poll_interval_ms, 250);

        for (vars, key) in [
            (
                vec![("VSM_JOBS__RESCUE_AFTER_SECS", "61")],
                "jobs.rescue_after_secs",
            ),
            (
                vec![
                    ("VSM_JOBS__HEARTBEAT_INTERVAL_SECS", "30"),
                    ("VSM_JOBS__RESCUE_AFTER_SECS", "20"),
                ],
                "jobs.rescue_after_secs",
            ),
            (
                vec![("VSM_JOBS__QUEUES__DEFAULT", "0")],
                "jobs.queues.default",
            ),
            (
                vec![("VSM_JOBS__POLL_INTERVAL_MS", "0")],
                "jobs.poll_interval_ms",
            ),
            (vec![("VSM_JOBS__BOGUS", "1")], "bogus"),
        ] {
            let err = Config::load_from(dir.path(), None, env(&vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{vars:?}: {err}");
        }
        let dir = dir_with(&[(
            "default.toml",
            "[[jobs.cron]]\nname = \"x\"\nexpression = \"every hour\"\nworker = \"health_check\"\n",
        )]);
        let err = Config::load_from(dir.path(), None, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("jobs.cron[0].expression"), "{err}");
    }
}
