//! The HTTP server. It takes a bound listener (tests bind port 0 and read the port back) and the
//! process's [`Shutdown`]; on shutdown it stops accepting, finishes in-flight requests within
//! the grace period and returns.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use super::auth::KeyCache;
use super::ops::OpsState;
use super::rate_limit::RateLimiter;
use super::{observe, router};
use crate::config::Config;
use crate::events::hub::Hub;
use crate::health::{Probe, Readiness};
use crate::repo::Repo;
use crate::shutdown::Shutdown;
use crate::storage::Storage;

/// Shared by every request handler.
pub struct AppState {
    pub config: Arc<Config>,
    pub repo: Repo,
    pub readiness: Readiness,
    /// This instance's SSE subscribers.
    pub hub: Hub,
    /// Recently resolved API keys.
    pub keys: KeyCache,
    /// The artifact storage backend.
    pub storage: Storage,
    /// Per-key request rate limit.
    pub limiter: Arc<RateLimiter>,
    /// The workers this build knows (policy `enqueue` actions are validated against them).
    pub workers: crate::jobs::Registry,
    pub shutdown: Shutdown,
    pub started: Instant,
}

impl AppState {
    /// The part the operations endpoints (`/live`, `/health`, `/ready`, `/metrics`) use.
    pub fn ops(&self) -> OpsState {
        OpsState {
            readiness: self.readiness.clone(),
            repo: self.repo.clone(),
            started: self.started,
        }
    }
}

/// Starts everything `vsm serve` runs on `listener`: the event machinery and the HTTP server.
pub async fn launch(
    config: Arc<Config>,
    repo: Repo,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Server, String> {
    let storage = Storage::from_config(&config.storage).map_err(|e| {
        format!(
            "cannot open storage ({}): {e}",
            config.storage.backend.as_str()
        )
    })?;
    let events = crate::events::start(&config, &repo, crate::workers::subscribers(), &shutdown)
        .await
        .map_err(|e| format!("cannot start the event relay: {e}"))?;
    let limiter = RateLimiter::new(&config.rate_limit, config.redis.url.as_ref())?;
    let mut probes: Vec<Box<dyn Probe>> = vec![Box::new(repo.clone())];
    probes.extend(events.probes);
    probes.push(Box::new(storage.clone()));
    if let Some(redis) = limiter.probe() {
        probes.push(Box::new(redis));
    }
    let workers = crate::workers::registry(&config);
    let state = AppState {
        readiness: Readiness::new(probes, shutdown.clone()),
        config,
        repo,
        hub: events.hub,
        keys: KeyCache::default(),
        storage,
        limiter: Arc::new(limiter),
        workers,
        shutdown: shutdown.clone(),
        started: Instant::now(),
    };
    Server::build(listener, state, shutdown)
        .map_err(|e| format!("cannot start the HTTP server: {e}"))
}

pub struct Server {
    inner: actix_web::dev::Server,
    port: u16,
}

impl Server {
    pub fn build(
        listener: TcpListener,
        state: AppState,
        shutdown: Shutdown,
    ) -> std::io::Result<Server> {
        let port = listener.local_addr()?.port();
        let server_cfg = state.config.server.clone();
        let json_limit = server_cfg.json_body_limit;
        let ops = web::Data::new(state.ops());
        let data = web::Data::new(state);
        let mut http = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(ops.clone())
                .wrap(from_fn(observe::observe))
                .configure(|cfg| router::routes(cfg, json_limit))
                .default_service(web::to(router::not_found))
        })
        .disable_signals()
        .shutdown_timeout(server_cfg.shutdown_grace_secs)
        // Room for a burst of (re)connecting SSE clients; the kernel caps it at somaxconn.
        .backlog(4096)
        .listen(listener)?;
        if server_cfg.workers > 0 {
            http = http.workers(server_cfg.workers);
        }
        let inner = http.run();
        let handle = inner.handle();
        tokio::spawn(async move {
            shutdown.wait().await;
            handle.stop(true).await;
        });
        Ok(Server { inner, port })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until shutdown has completed.
    pub async fn run(self) -> std::io::Result<()> {
        self.inner.await
    }
}
