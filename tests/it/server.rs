//! The gateway in-process: readiness follows its dependencies and shutdown (CONTRACT §1, §5).

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use vsm::config::{Config, DatabaseConfig, ServiceUrl};
use vsm::edge::gateway::auth::KeyCache;
use vsm::edge::gateway::rate_limit::RateLimiter;
use vsm::edge::gateway::{AppState, Server};
use vsm::events::hub::Hub;
use vsm::health::Readiness;
use vsm::repo::Repo;
use vsm::shutdown::Shutdown;

struct Spawned {
    base: String,
    shutdown: Shutdown,
    readiness: Readiness,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn spawn(repo: Repo) -> Spawned {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let shutdown = Shutdown::new();
    let readiness = Readiness::new(vec![Box::new(repo.clone())], shutdown.clone());
    let mut config = Config::default();
    config.server.workers = 1;
    config.server.shutdown_grace_secs = 5;
    let state = AppState {
        config: Arc::new(config.clone()),
        repo,
        readiness: readiness.clone(),
        hub: Hub::new(10, 10),
        keys: KeyCache::default(),
        storage: vsm::storage::Storage::new(
            std::sync::Arc::new(vsm::storage::adapters::memory::build()),
            1024,
        ),
        limiter: Arc::new(RateLimiter::new(&config.rate_limit, None).unwrap()),
        workers: vsm::workers::registry(&config),
        shutdown: shutdown.clone(),
        started: Instant::now(),
    };
    let server = Server::build(listener, state, shutdown.clone()).unwrap();
    let base = format!("http://127.0.0.1:{}", server.port());
    let done = tokio::spawn(server.run());
    Spawned {
        base,
        shutdown,
        readiness,
        done,
    }
}

#[tokio::test]
async fn ready_is_503_naming_the_database_when_it_does_not_answer() {
    let cfg = DatabaseConfig {
        url: ServiceUrl::parse("postgres://postgres@127.0.0.1:1/vsm").unwrap(),
        connect_timeout_secs: 1,
        ..DatabaseConfig::default()
    };
    let s = spawn(Repo::connect_lazy(&cfg).unwrap());
    let started = Instant::now();
    let res = reqwest::get(format!("{}/ready", s.base)).await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"]["status"], "unavailable");
    assert!(body["checks"]["database"]["latency_ms"].is_number());
    // Liveness and health never depend on the database.
    assert_eq!(
        reqwest::get(format!("{}/health", s.base))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/live", s.base))
            .await
            .unwrap()
            .status(),
        200
    );
    s.shutdown.trigger();
}

#[tokio::test]
async fn shutdown_turns_readiness_off_and_stops_the_server() {
    let db = TestDb::migrated().await;
    let s = spawn(db.repo().await);
    assert_eq!(
        reqwest::get(format!("{}/ready", s.base))
            .await
            .unwrap()
            .status(),
        200
    );
    s.shutdown.trigger();
    let (ready, body) = s.readiness.report().await;
    assert!(!ready);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["reason"], "shutting down");
    tokio::time::timeout(Duration::from_secs(5), s.done)
        .await
        .expect("server stops within the grace period")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_broker_outage_makes_ready_degraded_not_unavailable() {
    let db = TestDb::migrated().await;
    // Nothing listens there: the consumer never connects.
    let closed = format!("amqp://guest:guest@127.0.0.1:{}/%2f", common::free_port());
    let config = common::instance_config(&db, Some((&closed, &common::unique_exchange())));
    let a = common::Instance::start(config).await;
    let res = reqwest::get(format!("{}/ready", a.base)).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "ok", "{body}");
    let check = &body["checks"]["rabbitmq"];
    assert_eq!(check["status"], "unavailable", "{body}");
    let error = check["error"].as_str().unwrap();
    assert!(!error.is_empty() && error.len() < 80, "{error}");
    assert!(
        !error.contains("127.0.0.1") && !error.contains("guest"),
        "{error}"
    );
}

#[tokio::test]
async fn ready_shows_a_short_reason_never_the_database_error_text() {
    let role = format!("vsm_no_such_role_{}", uuid::Uuid::now_v7().simple());
    let cfg = DatabaseConfig {
        url: ServiceUrl::parse(&format!("postgres://{role}@127.0.0.1:5432/secret_db_name"))
            .unwrap(),
        connect_timeout_secs: 1,
        ..DatabaseConfig::default()
    };
    let s = spawn(Repo::connect_lazy(&cfg).unwrap());
    let res = reqwest::get(format!("{}/ready", s.base)).await.unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    let error = body["checks"]["database"]["error"].as_str().unwrap();
    // PostgreSQL's own text names the role ("role \"vsm_no_such_role_…\" does not exist").
    assert!(
        !error.contains(&role) && !error.contains("secret_db_name"),
        "{error}"
    );
    assert!(
        !error.contains("127.0.0.1") && !error.contains('"'),
        "{error}"
    );
    assert!(
        ["database or role does not exist", "authentication failed"].contains(&error),
        "{error}"
    );
    s.shutdown.trigger();
}

/// `vsm work`'s operations listener needs only `OpsState` (readiness, pool, start time): no
/// SSE hub, rate limiter or key cache. It serves the operations endpoints and nothing else.
#[tokio::test]
async fn the_ops_listener_runs_on_its_own_small_state() {
    use vsm::edge::gateway::ops::{OpsServer, OpsState};
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let shutdown = Shutdown::new();
    let state = OpsState {
        readiness: Readiness::new(vec![Box::new(repo.clone())], shutdown.clone()),
        repo,
        started: Instant::now(),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ops = OpsServer::build(listener, state, shutdown.clone()).unwrap();
    let base = format!("http://127.0.0.1:{}", ops.port());
    let done = tokio::spawn(ops.run());
    for path in ["/live", "/health", "/ready", "/metrics"] {
        let res = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("cybernetic_db_pool_max"), "{metrics}");
    let api = reqwest::get(format!("{base}/v1/tenants")).await.unwrap();
    assert_eq!(api.status(), 404);
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
