//! The operations listener of `vsm work`: `/live`, `/health`, `/ready`, `/metrics` only (no
//! API), with the same controllers and request metrics as the gateway. Those controllers take
//! only [`OpsState`], so `vsm work` builds just that (no SSE hub, rate limiter or key cache).

use std::net::TcpListener;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use super::controllers::{health_controller, metrics_controller};
use super::state::OpsState;
use super::{observe, router};
use crate::shutdown::Shutdown;

pub struct OpsServer {
    inner: actix_web::dev::Server,
    port: u16,
}

impl OpsServer {
    /// Serves on `listener` until `shutdown`; one worker thread is plenty for probes and scrapes.
    pub fn build(
        listener: TcpListener,
        state: OpsState,
        shutdown: Shutdown,
    ) -> std::io::Result<Self> {
        let port = listener.local_addr()?.port();
        let data = web::Data::new(state);
        let inner = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .wrap(from_fn(observe::observe))
                .service(health_controller::live)
                .service(health_controller::health)
                .service(health_controller::ready)
                .service(metrics_controller::metrics)
                .default_service(web::to(router::not_found))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = inner.handle();
        tokio::spawn(async move {
            shutdown.wait().await;
            handle.stop(true).await;
        });
        Ok(OpsServer { inner, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> std::io::Result<()> {
        self.inner.await
    }
}
