//! SSE fan-out benchmark (issue 3): N concurrent SSE clients on one `vsm serve`, measuring
//! connect latency, publish-to-deliver latency for a burst and for a steady rate, and the
//! server's memory per open stream.
//!
//!     cargo bench --bench sse_fanout                     # 1,000 and 10,000 clients
//!     cargo bench --bench sse_fanout -- 2000             # custom client counts
//!     VSM_BENCH_RABBITMQ=amqp://guest:guest@127.0.0.1:5672/%2f cargo bench --bench sse_fanout
//!
//! Needs PostgreSQL at 127.0.0.1:5432 (`TEST_DATABASE_URL` to change) and an fd limit above the
//! client count (the server and this process each hold one fd per stream). "Publish" is the
//! commit of the event's transaction; "deliver" is the moment a client has read its frame.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use uuid::Uuid;

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn micros() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, mut samples: Vec<u64>) {
    samples.sort_unstable();
    println!(
        "  {name:<28} n={:<8} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );
}

/// One raw SSE client: connect, wait for `connected`, then report each event's latency.
async fn client(
    port: u16,
    key: Arc<String>,
    connected: mpsc::UnboundedSender<u64>,
    latencies: mpsc::UnboundedSender<u64>,
) -> std::io::Result<()> {
    let began = micros();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!(
                "GET /v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut lines = BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await? {
        if line == "event: connected" {
            let _ = connected.send(micros() - began);
        } else if line.starts_with("data: ") {
            // The payload's keys are sorted: `{"bench":true,"t":123}`.
            if let Some(at) = line.find("\"t\":") {
                let digits = &line[at + 4..];
                let end = digits
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(digits.len());
                if let Ok(t) = digits[..end].parse::<u64>() {
                    let _ = latencies.send(micros().saturating_sub(t));
                }
            }
        } else if line.starts_with("event: disconnected") {
            break;
        }
    }
    Ok(())
}

async fn run(clients: usize, rabbitmq: Option<&str>) {
    let db = format!("vsm_bench_{}", Uuid::now_v7().simple());
    let url = format!("{}/{db}", server_url());
    let bin = env!("CARGO_BIN_EXE_vsm");
    let ok = Command::new(bin)
        .args(["migrate"])
        .env("DATABASE_URL", &url)
        .env("VSM_LOG", "warn")
        .status()
        .expect("vsm migrate");
    assert!(ok.success());
    let out = Command::new(bin)
        .args(["tenant", "create", "bench"])
        .env("DATABASE_URL", &url)
        .env("VSM_LOG", "warn")
        .output()
        .expect("tenant create");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tenant json");
    let key = Arc::new(created["api_key"].as_str().expect("key").to_owned());
    let tenant: Uuid = created["tenant_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &url)
        .env("VSM_LOG", "warn")
        .env(
            "VSM_EVENTS__MAX_CONNECTIONS_PER_TENANT",
            (clients + 10).to_string(),
        )
        // Every client uses the one key: the per-key rate limit would refuse most of them.
        .env("VSM_RATE_LIMIT__REQUESTS_PER_SECOND", "0")
        .env("VSM_EVENTS__EXCHANGE", format!("vsm.events.bench.{db}"))
        .stdout(Stdio::null());
    if let Some(amqp) = rabbitmq {
        cmd.env("RABBITMQ_URL", amqp);
    }
    let server = Server {
        child: cmd.spawn().expect("vsm serve"),
        port,
    };
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = server.child.id();
    let rss_before = rss_kib(pid);

    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel();
    let failed = Arc::new(AtomicUsize::new(0));
    for i in 0..clients {
        let (key, conn_tx, lat_tx, failed) =
            (key.clone(), conn_tx.clone(), lat_tx.clone(), failed.clone());
        tokio::spawn(async move {
            if client(server.port, key, conn_tx, lat_tx).await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Ramp up at ~10,000 connections/s.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop((conn_tx, lat_tx));
    let mut connect = Vec::with_capacity(clients);
    let deadline = Instant::now() + Duration::from_secs(120);
    while connect.len() + failed.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        if let Ok(Some(us)) = tokio::time::timeout(Duration::from_secs(1), conn_rx.recv()).await {
            connect.push(us);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(pid);
    println!(
        "{clients} clients ({}), {} connected, {} failed",
        if rabbitmq.is_some() {
            "RabbitMQ fan-out"
        } else {
            "in-process fan-out"
        },
        connect.len(),
        failed.load(Ordering::Relaxed)
    );
    report("connect (to `connected`)", connect.clone());
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / connect.len().max(1) as f64;
    println!(
        "  server RSS {rss_before} KiB idle -> {rss_after} KiB with streams open: {per_conn:.1} KiB per stream"
    );

    let cfg = vsm::config::DatabaseConfig {
        url: vsm::config::ServiceUrl::parse(&url).expect("url"),
        ..Default::default()
    };
    let repo = vsm::repo::Repo::connect(&cfg).await.expect("repo");
    let record = |repo: vsm::repo::Repo| async move {
        let mut tx = repo.tenant_tx(tenant).await.expect("tx");
        // Stamp as late as possible before the commit that publishes it.
        vsm::events::record(
            &mut tx,
            tenant,
            "system.state",
            &json!({"t": micros(), "bench": true}),
        )
        .await
        .expect("record");
        tx.commit().await.expect("commit");
    };
    let expect_per_phase = |events: usize| events * connect.len();

    // Burst: 100 events committed back to back.
    for _ in 0..100 {
        record(repo.clone()).await;
    }
    let burst = collect(&mut lat_rx, expect_per_phase(100)).await;
    report("burst of 100 events", burst);

    // Steady: 20 events/s for 5 s.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..100 {
        tick.tick().await;
        record(repo.clone()).await;
    }
    let steady = collect(&mut lat_rx, expect_per_phase(100)).await;
    report("steady 20 events/s", steady);
    println!("  server RSS after delivery: {} KiB", rss_kib(pid));
    drop(server);
    let _ = Command::new("psql")
        .args([
            &format!("{}/postgres", server_url()),
            "-qc",
            &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        ])
        .stdout(Stdio::null())
        .status();
}

async fn collect(rx: &mut mpsc::UnboundedReceiver<u64>, expected: usize) -> Vec<u64> {
    let mut samples = Vec::with_capacity(expected);
    while samples.len() < expected {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(us)) => samples.push(us),
            _ => {
                println!(
                    "  (only {} of {expected} deliveries arrived)",
                    samples.len()
                );
                break;
            }
        }
    }
    samples
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![1_000, 10_000]
    } else {
        counts
    };
    let rabbitmq = std::env::var("VSM_BENCH_RABBITMQ").ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    micros();
    for n in counts {
        rt.block_on(run(n, rabbitmq.as_deref()));
    }
}
