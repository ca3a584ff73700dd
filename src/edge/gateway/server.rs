//! The HTTP server. It takes a bound listener (tests bind port 0 and read the port back) and the
//! process's [`Shutdown`]. On shutdown (CONTRACT §1) it closes the listening socket at once (new
//! connections are refused), SSE streams end with their `disconnected` frame and close their
//! connections, every later response closes its connection, and [`Server::run`] returns as soon
//! as the last request in flight is done ([`drain`]) or the grace period is over.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer, web};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use super::credentials::{KeyCache, SessionCache};
use super::drain::InFlight;
use super::middleware::Gateway;
use super::rate_limit::RateLimiter;
use super::state::AppState;
use super::{openapi, router};
use crate::config::Config;
use crate::health::{Probe, Readiness};
use crate::repo::Repo;
use crate::shutdown::Shutdown;
use crate::storage::Storage;

/// Connections the kernel queues for the server before it accepts them; the kernel caps it at
/// `net.core.somaxconn` (4096 by default).
const BACKLOG: i32 = 4096;

/// A listening socket with room for a burst of (re)connecting clients: a thousand SSE clients
/// reconnecting at once after a failover must not find the accept queue full (a refused
/// handshake is retried only after a second). `std`'s `TcpListener::bind` queues 128, and
/// actix's own backlog setting applies only to sockets actix binds itself.
///
/// Its connections have Nagle's algorithm off (TCP_NODELAY, which Linux hands from the
/// listener to every accepted socket; actix never sets it). With it on, a small write while the
/// previous one is unacknowledged waits for the client's ACK, which the client may delay up to
/// 40 ms: the second event of a burst to an SSE client, or a response written in two parts,
/// would wait for it.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As `std` does: a restarted server can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
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
    tokio::spawn(crate::storage::sweeper::run(
        storage.clone(),
        config.storage.clone(),
        shutdown.clone(),
    ));
    if config.telegram.webhook_enabled() {
        crate::maintenance::spawn(
            crate::workers::telegram_command::update_pruner::UpdatePruner {
                repo: repo.clone(),
                retention: Duration::from_secs(config.telegram.update_retention_hours * 3600),
                every: Duration::from_secs(3600),
            },
            shutdown.clone(),
        );
    }
    let workers = crate::workers::registry(&config);
    let state = AppState {
        readiness: Readiness::new(probes, shutdown.clone()),
        config,
        repo,
        hub: events.hub,
        keys: KeyCache::default(),
        sessions: SessionCache::default(),
        storage,
        limiter: Arc::new(limiter),
        workers,
        shutdown: shutdown.clone(),
        started: Instant::now(),
    };
    Server::build(listener, state, shutdown)
        .map_err(|e| format!("cannot start the HTTP server: {e}"))
}

/// Time after the last request is done for its final bytes to reach the socket.
const FLUSH_ALLOWANCE: std::time::Duration = std::time::Duration::from_millis(100);

pub struct Server {
    inner: actix_web::dev::Server,
    port: u16,
    /// A duplicate of the listening socket's descriptor, to close it at shutdown.
    listening: TcpListener,
    shutdown: Shutdown,
    in_flight: InFlight,
    grace: std::time::Duration,
}

impl Server {
    pub fn build(
        listener: TcpListener,
        state: AppState,
        shutdown: Shutdown,
    ) -> std::io::Result<Server> {
        let port = listener.local_addr()?.port();
        let listening = listener.try_clone()?;
        let server_cfg = state.config.server.clone();
        let json_limit = server_cfg.json_body_limit;
        let ops = web::Data::new(state.ops());
        let data = web::Data::new(state);
        let in_flight = InFlight::default();
        let (workers_in_flight, workers_shutdown) = (in_flight.clone(), shutdown.clone());
        let mut http = HttpServer::new(move || {
            // Built once per worker thread: the drain counts each worker's requests apart.
            let worker = workers_in_flight.worker(workers_shutdown.clone());
            let (app, mut doc) = App::new()
                .into_utoipa_app()
                .openapi(openapi::ApiDoc::openapi())
                .configure(|cfg| router::routes(cfg, json_limit))
                .split_for_parts();
            utoipa::Modify::modify(&openapi::EventPayloads, &mut doc);
            app.app_data(data.clone())
                .app_data(ops.clone())
                .app_data(web::Data::new(doc))
                // Counts every request until its body is done, and observes it.
                .wrap(Gateway::new(worker))
                .default_service(web::to(router::not_found))
        })
        .disable_signals()
        .shutdown_timeout(server_cfg.shutdown_grace_secs)
        // (The accept queue is the listener's own: see `bind`.)
        .listen(listener)?;
        if server_cfg.workers > 0 {
            http = http.workers(server_cfg.workers);
        }
        let inner = http.run();
        Ok(Server {
            inner,
            port,
            listening,
            shutdown,
            in_flight,
            grace: server_cfg.shutdown_grace(),
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until shutdown, then until the last request in flight is done (at most the grace
    /// period).
    pub async fn run(self) -> std::io::Result<()> {
        let Server {
            inner,
            listening,
            shutdown,
            in_flight,
            grace,
            ..
        } = self;
        let handle = inner.handle();
        let drained = async move {
            shutdown.wait().await;
            // actix's graceful stop is not used: it waits for connections (idle keep-alive ones
            // too) polling once a second, and a worker it finds idle ends its runtime at once.
            // Instead: stop accepting, refuse new connections, let the workers finish what is in
            // flight, then stop them.
            handle.pause().await;
            close_listener(listening);
            let pending = in_flight.count();
            if tokio::time::timeout(grace, in_flight.idle()).await.is_err() {
                tracing::warn!(
                    in_flight = in_flight.count(),
                    "requests still in flight at the end of the shutdown grace period"
                );
            }
            // A response body is done when its last bytes are handed to the connection's write
            // buffer; the worker flushes them to the socket right after. Leave it that moment
            // before the workers (and the idle connections they hold) are stopped.
            tokio::time::sleep(FLUSH_ALLOWANCE).await;
            handle.stop(false).await;
            tracing::info!(pending, "drained");
        };
        tokio::pin!(inner, drained);
        tokio::select! {
            biased;
            served = &mut inner => served,
            () = &mut drained => Ok(()),
        }
    }
}

/// Shuts the listening socket down (shutdown(2) on a duplicate of its descriptor): the kernel
/// stops listening, so new connections are refused rather than queued behind a server that
/// will never accept them.
fn close_listener(listening: std::net::TcpListener) {
    let fd: std::os::fd::OwnedFd = listening.into();
    if let Err(e) = std::net::TcpStream::from(fd).shutdown(std::net::Shutdown::Both) {
        tracing::warn!(error = %e, "cannot close the listening socket");
    }
}
