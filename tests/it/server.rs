//! The gateway in-process: readiness follows its dependencies and shutdown (CONTRACT §1, §5).

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use vsm::config::{Config, DatabaseConfig, ServiceUrl};
use vsm::edge::gateway::credentials::KeyCache;
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
        sessions: Default::default(),
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
    use vsm::edge::gateway::OpsState;
    use vsm::edge::gateway::ops::OpsServer;
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

// ---------------------------------------------------------------------------------------------
// SIGTERM against the binary (CONTRACT §1): over real HTTP, with a slow upload in flight, an SSE
// client and an idle keep-alive connection open.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::KillOnDrop as Child;

/// Reads one response (head and a `content-length` body) off a kept-alive connection.
async fn read_response(socket: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return (status, head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut byte))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&byte[..n]);
    }
}

/// Reads until `needle` has arrived; returns everything read.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .expect("data in time")
            .unwrap();
        assert!(n > 0, "closed before {needle:?}: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got
}

/// True once the peer has closed the connection (EOF), reading anything still on the way.
async fn closed(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_drains_in_flight_requests_and_exits_promptly() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (_, key) = vsm::schemas::storage::tenant::create(&repo, "drain", None)
        .await
        .unwrap();
    let key = key.key;
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Child(
        common::vsm()
            .arg("serve")
            .env("DATABASE_URL", db.url())
            .env("VSM_LISTEN", &addr)
            .env("VSM_STORAGE__BACKEND", "memory")
            .env("VSM_SERVER__WORKERS", "2")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn vsm serve"),
    );
    common::wait_ready(&format!("http://{addr}")).await;

    // An SSE client on a keep-alive connection.
    let mut sse = TcpStream::connect(&addr).await.unwrap();
    sse.write_all(
        format!("GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    read_until(&mut sse, "event: connected").await;
    // An idle keep-alive connection that has served one request.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let health = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    idle.write_all(health.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);
    // A slow upload in flight: its head and a first piece now, the rest after the signal.
    const PIECES: usize = 20;
    let piece = vec![7u8; 1024];
    let mut upload = TcpStream::connect(&addr).await.unwrap();
    upload
        .write_all(
            format!(
                "PUT /v1/artifacts/slow.bin HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer \
                 {key}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                PIECES * piece.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    upload.write_all(&piece).await.unwrap();
    // Both the stream and the upload are in flight (the third is the /metrics request itself).
    let metrics = format!("http://{addr}/metrics");
    common::eventually(Duration::from_secs(10), "the upload in flight", || {
        let metrics = metrics.clone();
        async move {
            let text = reqwest::get(metrics).await.unwrap().text().await.unwrap();
            text.lines()
                .any(|l| l.starts_with("cybernetic_http_requests_in_flight 3"))
        }
    })
    .await;

    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // The listening socket is closed: a new connection is refused, not answered.
    common::eventually(Duration::from_secs(5), "new connections refused", || {
        let addr = addr.clone();
        async move {
            matches!(TcpStream::connect(&addr).await,
                     Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        }
    })
    .await;
    // The SSE stream ends with its frame and its connection closes.
    read_until(
        &mut sse,
        "event: disconnected\ndata: {\"reason\":\"shutdown\"}",
    )
    .await;
    assert!(closed(&mut sse).await, "the SSE connection stays open");
    // A request on the already-open idle connection: 503 while draining, and the connection
    // closes after it.
    let ready = format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    idle.write_all(ready.as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut idle).await;
    assert_eq!(status, 503);
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        closed(&mut idle).await,
        "the kept-alive connection stays open"
    );
    // The upload in flight finishes, slowly, and is stored.
    for _ in 1..PIECES {
        tokio::time::sleep(Duration::from_millis(50)).await;
        upload.write_all(&piece).await.unwrap();
    }
    let (status, _, body) = read_response(&mut upload).await;
    assert_eq!(status, 201, "{body}");
    let upload_done = signalled.elapsed();

    // ...and the process exits as soon as it is done, far within the 25 s grace.
    let deadline = Instant::now() + Duration::from_secs(25);
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let exited = signalled.elapsed();
    eprintln!("upload done {upload_done:?} after SIGTERM, process exited after {exited:?}");
    assert!(exit.success(), "{exit:?}");
    assert!(exited < Duration::from_secs(5), "exit took {exited:?}");
}

#[tokio::test]
async fn with_only_an_sse_client_sigterm_exits_without_waiting_for_the_grace() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (_, key) = vsm::schemas::storage::tenant::create(&repo, "drain-sse", None)
        .await
        .unwrap();
    let key = key.key;
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Child(
        common::vsm()
            .arg("serve")
            .env("DATABASE_URL", db.url())
            .env("VSM_LISTEN", &addr)
            .env("VSM_STORAGE__BACKEND", "memory")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn vsm serve"),
    );
    common::wait_ready(&format!("http://{addr}")).await;
    let mut sse = TcpStream::connect(&addr).await.unwrap();
    sse.write_all(
        format!("GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    read_until(&mut sse, "event: connected").await;
    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    read_until(&mut sse, "event: disconnected").await;
    assert!(closed(&mut sse).await);
    let deadline = Instant::now() + Duration::from_secs(25);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "still running after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exited = signalled.elapsed();
    eprintln!("with one SSE client: exited {exited:?} after SIGTERM");
    assert!(exited < Duration::from_secs(5), "exit took {exited:?}");
}

/// The server's listener queues a burst of connections before any is accepted (clients
/// reconnecting at once after a failover). `std`'s default queue holds 128, and a connection
/// beyond it waits a second for a retried handshake; nothing accepts here, so with a short
/// queue the 130th connect could never complete.
#[test]
fn the_listener_queues_a_burst_of_connections_before_they_are_accepted() {
    let listener = vsm::edge::gateway::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let waiting: Vec<std::net::TcpStream> = (0..1000)
        .map(|i| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i} not queued: {e}"))
        })
        .collect();
    assert_eq!(waiting.len(), 1000);
}

/// Connections the server accepts have Nagle's algorithm off (set on the listener, inherited
/// by every accepted socket). With it on, the second of two events written to an SSE client in
/// quick succession waits for the client's (possibly delayed, up to 40 ms) ACK of the first.
#[test]
fn accepted_connections_send_small_writes_at_once() {
    let listener = vsm::edge::gateway::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    assert!(accepted.nodelay().unwrap(), "TCP_NODELAY not set");
}
