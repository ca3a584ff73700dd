//! Hostile inputs: SSE clients that replay large events from the start of history and then stop
//! reading (CONTRACT §6: the bound is in bytes, replay included). A real `vsm serve` child
//! process; its resident set size is read from /proc while the clients stall.

use crate::common;

use std::time::{Duration, Instant};

use common::{SseClient, TestDb};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EVENTS: usize = 100;
const EVENT_BYTES: usize = 500 * 1024;
const STALLED_CLIENTS: usize = 3;
/// Peak RSS growth allowed over the idle server while the stalled replays are open: a few MiB
/// per client, far below the 50 MB of history each one asked for.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

/// Sequenced events of the tenant (the relay has given them their ids).
async fn sequenced(repo: &vsm::repo::Repo, tenant: uuid::Uuid) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    let n: N = diesel::sql_query(
        "SELECT count(*) AS n FROM events WHERE seq IS NOT NULL AND topic = 'system.state'",
    )
    .get_result(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    n.n
}

/// Opens `GET /v1/events` from id 0 on a raw socket, reads `take` bytes of the response and
/// returns the socket, which the caller then stops reading.
async fn stalled_client(addr: &str, key: &str, take: usize) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Last-Event-ID: 0\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < take {
        let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf))
            .await
            .expect("the replay starts")
            .unwrap();
        assert!(n > 0, "the server closed the stream after {got} bytes");
        if got == 0 {
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        got += n;
    }
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_replays_of_large_events_keep_server_memory_bounded() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (tenant, key) = vsm::schemas::storage::tenant::create(&repo, "big-states", None)
        .await
        .unwrap();
    let (tenant, key) = (tenant.id, key.key);
    let server = common::ServeChild::start(
        &db,
        &[
            ("VSM_STORAGE__BACKEND", "memory"),
            ("VSM_SERVER__WORKERS", "2"),
            ("VSM_EVENTS__RELAY_POLL_MS", "200"),
        ],
    )
    .await;
    let (base, pid) = (server.base.clone(), server.pid());
    let addr = base.trim_start_matches("http://").to_owned();

    // 100 states of 500 KB each, committed one by one as PUT /v1/systems/{n}/state would.
    let blob = "s".repeat(EVENT_BYTES);
    for n in 0..EVENTS {
        let mut tx = repo.tenant_tx(tenant).await.unwrap();
        vsm::events::record(
            &mut tx,
            tenant,
            "system.state",
            &json!({"system": 1, "version": n, "state": {"blob": blob}}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    drop(blob);
    common::eventually(Duration::from_secs(60), "all events sequenced", || {
        let repo = repo.clone();
        async move { sequenced(&repo, tenant).await == EVENTS as i64 }
    })
    .await;
    // The relay has handled the burst; what the server holds now is the baseline.
    let baseline = common::rss_kib(pid);

    let mut clients = Vec::new();
    for _ in 0..STALLED_CLIENTS {
        clients.push(stalled_client(&addr, &key, 256 * 1024).await);
    }
    // Watch the server until its memory stops growing (the stalled sockets have filled up and
    // back-pressure holds the replays), at most 30 s.
    let started = Instant::now();
    let mut peak = common::rss_kib(pid);
    let mut last_growth = Instant::now();
    while last_growth.elapsed() < Duration::from_secs(3)
        && started.elapsed() < Duration::from_secs(30)
    {
        let now = common::rss_kib(pid);
        if now > peak + 512 {
            last_growth = Instant::now();
        }
        peak = peak.max(now);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "RSS baseline {} MB, peak {} MB with {STALLED_CLIENTS} stalled replays of \
         {EVENTS} x {} KB: growth {} MB",
        baseline / 1024,
        peak / 1024,
        EVENT_BYTES / 1024,
        growth / 1024
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "server RSS grew by {} MB (baseline {} MB, peak {} MB)",
        growth / 1024,
        baseline / 1024,
        peak / 1024
    );
    // The server still answers while the stalled clients hold their streams.
    assert_eq!(
        reqwest::get(format!("{base}/health"))
            .await
            .unwrap()
            .status(),
        200
    );

    // A client that does read gets the whole history, in order, paged by size.
    let mut reader = SseClient::connect(&base, &key, "", Some(0)).await;
    assert_eq!(reader.status, 200);
    let mut ids = Vec::new();
    while ids.len() < EVENTS {
        let frame = reader
            .next_event(Duration::from_secs(30))
            .await
            .expect("replayed event");
        assert_eq!(frame.event.as_deref(), Some("system.state"), "{frame:?}");
        assert!(frame.data.len() > EVENT_BYTES, "{}", frame.data.len());
        ids.push(frame.id.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    drop(clients);
}
