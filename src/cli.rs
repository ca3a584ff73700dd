//! The `vsm` command line (CONTRACT §1): parses arguments, loads configuration, and runs one
//! role. Exit status: 0 done, 1 runtime failure, 2 bad usage or bad configuration; every failure
//! is one line on standard error naming what failed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::Config;
use crate::edge::gateway::launch;
use crate::edge::gateway::ops::OpsServer;
use crate::edge::gateway::state::OpsState;
use crate::health::Readiness;
use crate::jobs::{Engine, EngineOptions, Registry};
use crate::migrate::{self, Action};
use crate::repo::{DbError, Repo};
use crate::schemas::storage::tenant;
use crate::shutdown::Shutdown;
use crate::storage::Storage;
use crate::telemetry;
use crate::workers;
use crate::workers::notification_sender::telegram::{BotApi, CallError};

#[derive(Debug, Parser)]
#[command(name = "vsm", version, about = "Viable System Model platform")]
pub struct Cli {
    /// Extra configuration file, layered over config/default.toml and config/$VSM_ENV.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the edge gateway (HTTP API, health, metrics).
    Serve(ServeArgs),
    /// Run job workers, with /metrics, /health, /live and /ready on --metrics-listen.
    Work(WorkArgs),
    /// Create the database if missing and apply pending migrations.
    Migrate(MigrateArgs),
    /// Migrate, then serve and run job workers in one process.
    All(ServeArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Register or inspect the bot's webhook (Bot API at telegram.api_base).
    #[command(subcommand)]
    Telegram(TelegramCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum TelegramCommand {
    /// Register URL as the bot's webhook (setWebhook with telegram.webhook_secret as its
    /// secret_token and the update kinds vsm handles).
    SetWebhook {
        /// Public URL of `POST /telegram/webhook`.
        url: String,
        /// Drop the updates Telegram queued while no webhook was set.
        #[arg(long)]
        drop_pending_updates: bool,
    },
    /// Print getWebhookInfo as JSON.
    Info,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration as every role would (layers, keys, values, log
    /// filter, cron entries against their workers) without connecting to anything; print the
    /// effective configuration as TOML with secrets redacted. Exit 0 when valid, 2 otherwise.
    Check,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides server.listen / VSM_LISTEN).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub struct WorkArgs {
    /// Queue to run, optionally with its concurrency on this node (repeatable). Default: every
    /// queue of `[jobs.queues]`; a queue without a limit takes the configured one, else 10.
    #[arg(long = "queue", value_name = "NAME[=LIMIT]", value_parser = parse_queue)]
    pub queues: Vec<(String, Option<usize>)>,
    /// Address of the /metrics, /health, /live, /ready listener (overrides jobs.metrics_listen).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_queue(s: &str) -> Result<(String, Option<usize>), String> {
    let (name, limit) = match s.split_once('=') {
        Some((name, limit)) => {
            let limit: usize = limit
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("queue limit in {s:?} must be a positive integer"))?;
            (name, Some(limit))
        }
        None => (s, None),
    };
    if name.is_empty() || name.len() > 128 {
        return Err(format!("queue name in {s:?} must be 1 to 128 characters"));
    }
    Ok((name.to_owned(), limit))
}

/// Concurrency of a queue named without a limit and absent from the configuration.
const DEFAULT_QUEUE_LIMIT: usize = 10;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Show applied and pending migrations; change nothing.
    #[arg(long, conflicts_with = "down")]
    pub status: bool,
    /// Revert the last N applied migrations.
    #[arg(long, value_name = "N")]
    pub down: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and its first API key; prints {"tenant_id","slug","api_key"}.
    Create {
        /// Lowercase letters, digits and dashes, 2 to 63 characters.
        slug: String,
        /// Display name (defaults to the slug).
        #[arg(long)]
        name: Option<String>,
    },
}

/// A failed command: its exit status and the one line that explains it.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn runtime(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }

    fn usage(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("vsm: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `--help` and `--version` print as clap renders them; every other parse error becomes the
/// one line of CONTRACT §1 (clap's usage block and hint would make it five).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // Printing help or the version can only fail on a closed stdout; nothing to add then.
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let line = match e.kind() {
        // clap would print the whole help here.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let rendered = e.to_string();
            let usage = rendered
                .lines()
                .find_map(|l| l.trim().strip_prefix("Usage: "))
                .unwrap_or("vsm <COMMAND>");
            format!("a command is required: {usage} (see vsm --help)")
        }
        _ => usage_line(&e.to_string()),
    };
    eprintln!("vsm: error: {line}");
    ExitCode::from(2)
}

/// The first line of clap's message without its `error: ` prefix, e.g.
/// "unexpected argument '--bogus' found".
fn usage_line(rendered: &str) -> String {
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let line = first.trim().strip_prefix("error:").unwrap_or(first).trim();
    if line.is_empty() {
        "invalid command line (see vsm --help)".to_owned()
    } else {
        format!("{line} (see vsm --help)")
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let mut config = Config::load(cli.config.as_deref()).map_err(Failure::usage)?;
    if let Command::Serve(args) | Command::All(args) = &cli.command
        && let Some(listen) = args.listen
    {
        config.server.listen = listen;
    }
    if let Command::Work(args) = &cli.command
        && let Some(addr) = args.metrics_listen
    {
        config.jobs.metrics_listen = addr;
    }
    if let Command::Config(ConfigCommand::Check) = &cli.command {
        return check_config(&config);
    }
    telemetry::init(&config.log).map_err(Failure::usage)?;
    tracing::debug!(?config, "configuration loaded");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(_) => serve(config, false).await,
            Command::Work(args) => work(config, args.queues).await,
            Command::All(_) => {
                migrate_up(&config).await?;
                serve(config, true).await
            }
            Command::Migrate(args) => migrate_cmd(&config, args).await,
            Command::Tenant(TenantCommand::Create { slug, name }) => {
                create_tenant(&config, &slug, name.as_deref()).await
            }
            Command::Telegram(command) => telegram_cmd(&config, command).await,
            // Answered above, before any runtime or logging starts.
            Command::Config(ConfigCommand::Check) => Ok(()),
        }
    })
}

/// `vsm config check`: every start-up check that needs no connection, then the effective
/// configuration on standard output. Compose's environment is checked with it in CI, so a
/// renamed key fails there rather than in a crashing container.
fn check_config(config: &Config) -> Result<(), Failure> {
    telemetry::check_filter(&config.log).map_err(Failure::usage)?;
    worker_registry(config)?;
    let rendered = config.to_redacted_toml().map_err(Failure::runtime)?;
    print!("{rendered}");
    Ok(())
}

async fn migrate_up(config: &Config) -> Result<(), Failure> {
    let report = migrate::run(&config.database, Action::Up)
        .await
        .map_err(Failure::runtime)?;
    for version in &report.applied {
        tracing::info!(%version, "applied migration");
    }
    Ok(())
}

async fn migrate_cmd(config: &Config, args: MigrateArgs) -> Result<(), Failure> {
    let action = match (args.status, args.down) {
        (true, _) => Action::Status,
        (false, Some(n)) => Action::Down(n),
        (false, None) => Action::Up,
    };
    let report = migrate::run(&config.database, action)
        .await
        .map_err(Failure::runtime)?;
    match action {
        Action::Status => {
            for m in &report.status {
                let state = if m.applied { "applied" } else { "pending" };
                println!("{state:8} {}", m.version);
            }
        }
        Action::Up if report.applied.is_empty() => println!("database is up to date"),
        Action::Up => report.applied.iter().for_each(|v| println!("applied  {v}")),
        Action::Down(_) => report
            .reverted
            .iter()
            .for_each(|v| println!("reverted {v}")),
    }
    Ok(())
}

async fn create_tenant(config: &Config, slug: &str, name: Option<&str>) -> Result<(), Failure> {
    let repo = Repo::connect(&config.database)
        .await
        .map_err(Failure::runtime)?;
    let (tenant, key) = tenant::create(&repo, slug, name)
        .await
        .map_err(|e| match e {
            DbError::Validation { .. } => Failure::usage(e),
            e => Failure::runtime(e),
        })?;
    println!(
        "{}",
        json!({"tenant_id": tenant.id, "slug": tenant.slug, "api_key": key.key})
    );
    Ok(())
}

/// The update kinds `setWebhook` asks for: those `POST /telegram/webhook` handles (CONTRACT §9).
pub const ALLOWED_UPDATES: &[&str] = &[
    "message",
    "edited_message",
    "channel_post",
    "callback_query",
    "my_chat_member",
];

/// `vsm telegram set-webhook|info`: exit 2 when Telegram is not configured, 1 naming the Bot
/// API server (never the token) when it cannot be reached or refuses.
async fn telegram_cmd(config: &Config, command: TelegramCommand) -> Result<(), Failure> {
    let api = BotApi::from_config(&config.telegram).ok_or_else(|| {
        Failure::usage(
            "Telegram is not configured: key `telegram.bot_token` (TELEGRAM_BOT_TOKEN) is not set",
        )
    })?;
    let failed = |method: &str, e: CallError| match e {
        CallError::Temporary { error, .. } => Failure::runtime(format!(
            "cannot reach the Telegram Bot API at {}: {method}: {error}",
            api.base()
        )),
        e => Failure::runtime(format!(
            "the Telegram Bot API at {} refused {method}: {e}",
            api.base()
        )),
    };
    let result = match command {
        TelegramCommand::SetWebhook {
            url,
            drop_pending_updates,
        } => {
            let url = url::Url::parse(&url)
                .map_err(|e| Failure::usage(format!("invalid webhook URL {url:?}: {e}")))?;
            let secret = config.telegram.webhook_secret.as_ref().ok_or_else(|| {
                Failure::usage(
                    "Telegram is not configured: key `telegram.webhook_secret` \
                     (TELEGRAM_WEBHOOK_SECRET) is not set, so the webhook could not be verified",
                )
            })?;
            let body = json!({
                "url": url.as_str(),
                "secret_token": secret.expose(),
                "allowed_updates": ALLOWED_UPDATES,
                "drop_pending_updates": drop_pending_updates,
            });
            api.call("setWebhook", &body)
                .await
                .map_err(|e| failed("setWebhook", e))?;
            json!({"ok": true, "url": url.as_str(), "allowed_updates": ALLOWED_UPDATES})
        }
        TelegramCommand::Info => api
            .call("getWebhookInfo", &json!({}))
            .await
            .map_err(|e| failed("getWebhookInfo", e))?,
    };
    println!("{result}");
    Ok(())
}

/// Refuses to serve or work as a role that row-level security does not apply to (CONTRACT §3):
/// otherwise `app_role = ""` with a superuser login would silently turn tenant isolation off.
async fn ensure_isolated(repo: &Repo, config: &Config) -> Result<(), Failure> {
    let role = repo
        .effective_role()
        .await
        .map_err(|e| Failure::runtime(format!("cannot read the database role: {e}")))?;
    match role.escapes_rls() {
        None => Ok(()),
        Some(why) => Err(Failure::usage(format!(
            "invalid configuration: key `database.app_role`: connections would run as role {:?}, \
             which {why}, so row-level security would not isolate tenants (app_role = {:?}; use \
             a role without SUPERUSER and BYPASSRLS, e.g. vsm_app)",
            role.name, config.database.app_role
        ))),
    }
}

/// `vsm serve`, or with `workers` the gateway and the job engine of `vsm all` in one process.
async fn serve(config: Config, workers: bool) -> Result<(), Failure> {
    let config = Arc::new(config);
    let registry = workers.then(|| worker_registry(&config)).transpose()?;
    let repo = Repo::connect(&config.database)
        .await
        .map_err(Failure::runtime)?;
    ensure_isolated(&repo, &config).await?;
    let listen = config.server.listen;
    let listener = crate::edge::gateway::server::bind(listen)
        .map_err(|e| Failure::runtime(format!("cannot listen on {listen}: {e}")))?;
    let shutdown = Shutdown::new();
    shutdown
        .trigger_on_signals()
        .map_err(|e| Failure::runtime(format!("cannot install signal handlers: {e}")))?;
    let server = launch(config.clone(), repo.clone(), listener, shutdown.clone())
        .await
        .map_err(Failure::runtime)?;
    tracing::info!(listen = %listen, port = server.port(), "serving");
    let engine = async {
        match registry {
            Some(registry) => {
                run_engine(repo, config.clone(), registry, None, shutdown.clone()).await
            }
            None => Ok(()),
        }
    };
    let (served, worked) = tokio::join!(server.run(), engine);
    served.map_err(|e| Failure::runtime(format!("HTTP server failed: {e}")))?;
    worked?;
    tracing::info!("stopped");
    Ok(())
}

/// `vsm work`: the job engine plus its operations listener.
async fn work(config: Config, queues: Vec<(String, Option<usize>)>) -> Result<(), Failure> {
    let config = Arc::new(config);
    let registry = worker_registry(&config)?;
    let queues = (!queues.is_empty()).then(|| {
        queues
            .into_iter()
            .map(|(name, limit)| {
                let limit = limit
                    .or_else(|| config.jobs.queues.get(&name).copied())
                    .unwrap_or(DEFAULT_QUEUE_LIMIT);
                (name, limit)
            })
            .collect::<Vec<_>>()
    });
    let repo = Repo::connect(&config.database)
        .await
        .map_err(Failure::runtime)?;
    ensure_isolated(&repo, &config).await?;
    let listen = config.jobs.metrics_listen;
    let listener = crate::edge::gateway::server::bind(listen)
        .map_err(|e| Failure::runtime(format!("cannot listen on {listen}: {e}")))?;
    let shutdown = Shutdown::new();
    shutdown
        .trigger_on_signals()
        .map_err(|e| Failure::runtime(format!("cannot install signal handlers: {e}")))?;
    // The listener serves only health and metrics. Readiness checks the storage backend too:
    // the artifact processor reads objects.
    let storage = Storage::from_config(&config.storage).map_err(|e| {
        Failure::runtime(format!(
            "cannot open storage ({}): {e}",
            config.storage.backend.as_str()
        ))
    })?;
    let state = OpsState {
        readiness: Readiness::new(
            vec![Box::new(repo.clone()), Box::new(storage)],
            shutdown.clone(),
        ),
        repo: repo.clone(),
        started: Instant::now(),
    };
    let ops = OpsServer::build(listener, state, shutdown.clone())
        .map_err(|e| Failure::runtime(format!("cannot start the metrics listener: {e}")))?;
    tracing::info!(listen = %listen, port = ops.port(), "metrics listener up");
    let (worked, served) = tokio::join!(
        run_engine(repo, config.clone(), registry, queues, shutdown.clone()),
        ops.run()
    );
    worked?;
    served.map_err(|e| Failure::runtime(format!("metrics listener failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

/// The workers, refusing a configuration whose cron entries name a worker that does not exist
/// or give it args it cannot run on.
fn worker_registry(config: &Config) -> Result<Registry, Failure> {
    let registry = workers::registry(config);
    for (i, entry) in config.jobs.cron.iter().enumerate() {
        if registry.get(&entry.worker).is_none() {
            return Err(Failure::usage(format!(
                "invalid configuration: key `jobs.cron[{i}].worker`: no worker named {:?} (known: {})",
                entry.worker,
                registry.names().join(", ")
            )));
        }
        if let Err(why) = registry.check_args(&entry.worker, &entry.args) {
            return Err(Failure::usage(format!(
                "invalid configuration: key `jobs.cron[{i}].{}`: {}",
                why.path, why.message
            )));
        }
    }
    Ok(registry)
}

/// Runs the engine until shutdown; if it cannot start, shuts the process down with it.
async fn run_engine(
    repo: Repo,
    config: Arc<Config>,
    registry: Registry,
    queues: Option<Vec<(String, usize)>>,
    shutdown: Shutdown,
) -> Result<(), Failure> {
    let opts = EngineOptions::from_config(&config, queues);
    let engine = Engine::new(repo, config, registry, opts);
    let result = engine.run(shutdown.clone()).await;
    if result.is_err() {
        shutdown.trigger();
    }
    result.map_err(|e| Failure::runtime(format!("job engine could not start: {e}")))
}
