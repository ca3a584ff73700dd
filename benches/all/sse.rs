//! SSE fan-out: N concurrent SSE clients on one `vsm serve` (in-process fan-out), measuring
//! connect latency (the §8 SSE connect budget), the server's memory per open stream, and
//! publish-to-deliver latency for a burst of 100 events and for a steady 20 events/s.
//! "Publish" is the commit of the event's transaction; "deliver" is the moment a client has
//! read its frame. Needs an fd limit above the client count (the server and this process
//! each hold one fd per stream).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::profile::{self, Breakdown};
use crate::support::{Budget, Db, Latency, Report, Row, Sizes, serve};

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn micros() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
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

/// CPU time a process has used so far (user + system), from `/proc/<pid>/stat`, in ms.
fn cpu_ms(pid: &str) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces): utime and stime are the
            // 12th and 13th of them.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks as f64 * 10.0
}

/// The machine's busy and total CPU time so far (all cores), from `/proc/stat`, in ticks.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    (total - idle, total)
}

/// Where the CPU went during one phase: the server's and the clients' time per delivery, and
/// how busy the whole machine was. The clients share the server's cores, so their cost per
/// delivery is taken from the server's and shows up as its latency.
#[derive(Clone, Copy)]
struct CpuUse {
    server_us: f64,
    clients_us: f64,
    machine_busy: f64,
}

struct CpuMark {
    server: f64,
    clients: f64,
    machine: (u64, u64),
}

impl CpuMark {
    fn now(server_pid: u32) -> CpuMark {
        CpuMark {
            server: cpu_ms(&server_pid.to_string()),
            clients: cpu_ms("self"),
            machine: machine_ticks(),
        }
    }

    fn since(&self, server_pid: u32, deliveries: usize) -> CpuUse {
        let now = CpuMark::now(server_pid);
        let per = |ms: f64| ms * 1000.0 / deliveries.max(1) as f64;
        let busy = now.machine.0.saturating_sub(self.machine.0) as f64;
        let total = now.machine.1.saturating_sub(self.machine.1) as f64;
        CpuUse {
            server_us: per(now.server - self.server),
            clients_us: per(now.clients - self.clients),
            machine_busy: if total > 0.0 { busy / total } else { f64::NAN },
        }
    }
}

impl CpuUse {
    fn json(&self) -> serde_json::Value {
        json!({"server_cpu_us_per_delivery": self.server_us,
               "clients_cpu_us_per_delivery": self.clients_us,
               "machine_busy": self.machine_busy})
    }
}

fn latency(samples: Vec<u64>) -> Latency {
    Latency::of(samples.into_iter().map(Duration::from_micros).collect())
}

/// One raw SSE client: connect, wait for `connected`, then report each event's latency.
///
/// It scans the bytes it reads in place (no `String` per line, no `BufReader` copy): the
/// clients share the machine's cores with the server they measure, so every cycle they spend
/// is taken from it and shows up as server latency.
async fn client(
    port: u16,
    key: Arc<String>,
    connected: mpsc::UnboundedSender<u64>,
    latencies: Arc<Deliveries>,
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
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut start = 0;
        while let Some(end) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + end];
            start += end + 1;
            if line.starts_with(b"event: connected") {
                let _ = connected.send(micros() - began);
            } else if line.starts_with(b"data: ") {
                // The payload's keys are sorted: `{"bench":true,"t":123}`.
                if let Some(at) = line.windows(4).position(|w| w == b"\"t\":") {
                    let t = line[at + 4..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .fold(0u64, |t, b| t * 10 + u64::from(b - b'0'));
                    latencies.push(t, micros().saturating_sub(t));
                }
            } else if line.starts_with(b"event: disconnected") {
                return Ok(());
            }
        }
        buf.drain(..start);
    }
}

struct Fanout {
    connected: usize,
    failed: usize,
    connect: Latency,
    kib_per_stream: f64,
    burst: Measured,
    steady: Measured,
}

/// One phase's deliveries to every client, measured.
struct Measured {
    /// Commit to client, every delivery.
    latency: Latency,
    /// Each event's first delivery, and the fan-out after it (see [`split`]).
    first: Latency,
    fanout: Latency,
    cpu: CpuUse,
    /// From the first of the phase's commits to the last.
    commits_ms: f64,
    profile: Option<Breakdown>,
}

impl Measured {
    /// Runs `phase` (which starts the publisher and collects the deliveries) under the CPU
    /// counters, and under `perf` if asked for (`sse-<name>.perf.data`).
    async fn run(
        name: &str,
        server_pid: u32,
        phase: impl Future<Output = Vec<(u64, u64)>>,
    ) -> Self {
        let recording = profile::start(&format!("sse-{name}"));
        let mark = CpuMark::now(server_pid);
        let samples = phase.await;
        let cpu = mark.since(server_pid, samples.len());
        let profile = recording.and_then(|r| r.finish(server_pid));
        let stamps = || samples.iter().map(|(t, _)| *t);
        let commits_ms =
            (stamps().max().unwrap_or(0) - stamps().min().unwrap_or(0)) as f64 / 1000.0;
        let (latency, first, fanout) = split(samples);
        Measured {
            latency,
            first,
            fanout,
            cpu,
            commits_ms,
            profile,
        }
    }

    /// `data` with this phase's figures added, each key prefixed with the phase's name.
    fn json(&self, name: &str, mut data: serde_json::Value) -> serde_json::Value {
        for (key, value) in [
            (String::new(), self.latency.json()),
            ("_first_delivery".into(), self.first.json()),
            ("_fanout".into(), self.fanout.json()),
            ("_cpu".into(), self.cpu.json()),
            ("_commits_ms".into(), json!(self.commits_ms)),
            (
                "_profile".into(),
                json!(self.profile.as_ref().map(Breakdown::json)),
            ),
        ] {
            data[format!("{name}{key}")] = value;
        }
        data
    }
}

async fn fanout(clients: usize) -> Fanout {
    let db = Db::create();
    let (server, base) = serve(
        "serve",
        &db,
        &[(
            "VSM_EVENTS__MAX_CONNECTIONS_PER_TENANT",
            (clients + 10).to_string(),
        )],
    );
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let key = Arc::new(db.key.clone());
    let tenant = db.tenant;
    let pid = server.0.id();
    let rss_before = rss_kib(pid);

    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
    let deliveries = Arc::new(Deliveries::default());
    let failed = Arc::new(AtomicUsize::new(0));
    for i in 0..clients {
        let (key, conn_tx, lat_tx, failed) = (
            key.clone(),
            conn_tx.clone(),
            deliveries.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            if client(port, key, conn_tx, lat_tx).await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Ramp up at ~10,000 connections/s.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(conn_tx);
    let mut connect = Vec::with_capacity(clients);
    let deadline = Instant::now() + Duration::from_secs(120);
    while connect.len() + failed.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        if let Ok(Some(us)) = tokio::time::timeout(Duration::from_secs(1), conn_rx.recv()).await {
            connect.push(us);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(pid);
    let connected = connect.len();
    let kib_per_stream = (rss_after.saturating_sub(rss_before)) as f64 / connected.max(1) as f64;

    // The publisher runs on a thread and runtime of its own: on the clients' runtime its
    // commits would queue behind 10,000 client tasks reading the previous event, and that
    // wait would be counted as the server's latency.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Phase>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let db_url = db.url.clone();
    let publisher = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("publisher runtime");
        rt.block_on(publish(db_url, tenant, go_rx, done_tx));
    });

    // Burst: 100 events committed back to back; then steady: 20 events/s for 5 s.
    let mut phases = Vec::new();
    for (name, phase) in [("burst", Phase::Burst), ("steady", Phase::Steady)] {
        phases.push(
            Measured::run(name, pid, async {
                go_tx.send(phase).expect("publisher");
                deliveries.collect(100 * connected).await
            })
            .await,
        );
        let _ = done_rx.recv().await;
    }
    let (Some(steady), Some(burst)) = (phases.pop(), phases.pop()) else {
        unreachable!("two phases were measured");
    };
    drop(go_tx);
    let _ = publisher.join();
    drop(server);
    Fanout {
        connected,
        failed: failed.load(Ordering::Relaxed),
        connect: latency(connect),
        kib_per_stream,
        burst,
        steady,
    }
}

enum Phase {
    /// 100 events committed back to back.
    Burst,
    /// 20 events/s for 5 s.
    Steady,
}

/// Commits the bench events of each phase it is told to run, then says it is done.
async fn publish(
    db_url: String,
    tenant: uuid::Uuid,
    go: std::sync::mpsc::Receiver<Phase>,
    done: mpsc::UnboundedSender<()>,
) {
    let cfg = vsm::config::DatabaseConfig {
        url: vsm::config::ServiceUrl::parse(&db_url).expect("url"),
        ..Default::default()
    };
    let repo = vsm::repo::Repo::connect(&cfg).await.expect("repo");
    let record = || async {
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
    // (Blocking on the std channel is fine: this runtime has nothing else to do.)
    while let Ok(phase) = go.recv() {
        match phase {
            Phase::Burst => {
                for _ in 0..100 {
                    record().await;
                }
            }
            Phase::Steady => {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                for _ in 0..100 {
                    tick.tick().await;
                    record().await;
                }
            }
        }
        let _ = done.send(());
    }
}

/// Every client's deliveries as (the event's stamp, its latency in µs). Clients append under
/// a short lock rather than send to a collecting task: a message per delivery woke that task
/// (a futex call each), and at 200,000 deliveries a second the clients' wake-ups cost more CPU
/// than the server they measure, on the same two cores.
#[derive(Default)]
struct Deliveries(std::sync::Mutex<Vec<(u64, u64)>>);

impl Deliveries {
    fn push(&self, t: u64, us: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((t, us));
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits until `expected` deliveries arrived (or none for 15 s), then takes them.
    async fn collect(&self, expected: usize) -> Vec<(u64, u64)> {
        let (mut seen, mut progress) = (0, Instant::now());
        while self.len() < expected {
            if self.len() > seen {
                (seen, progress) = (self.len(), Instant::now());
            } else if progress.elapsed() > Duration::from_secs(15) {
                println!("  (only {seen} of {expected} deliveries arrived)");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Latency over all deliveries; of each event's first delivery (what the pipeline before the
/// fan-out costs: commit, relay, hub); and of each delivery after its event's first (the
/// fan-out itself).
fn split(samples: Vec<(u64, u64)>) -> (Latency, Latency, Latency) {
    let mut first: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for (t, us) in &samples {
        let f = first.entry(*t).or_insert(*us);
        *f = (*f).min(*us);
    }
    let fanout = samples.iter().map(|(t, us)| us - first[t]).collect();
    (
        latency(samples.into_iter().map(|(_, us)| us).collect()),
        latency(first.into_values().collect()),
        latency(fanout),
    )
}

/// The profile's split of the machine, and what it means for the server's own cost per
/// delivery. On loopback each side's kernel receives the other's packets on its own time: the
/// server's sends carry the clients' receive path (data in), the clients' reads carry the
/// server's (their ACKs in). On a network each machine receives its own packets, so the
/// server's own work is its user time, its other kernel time (sending), and the receive path
/// the clients ran for it.
fn print_profile(what: &str, p: &Breakdown, cpu: &CpuUse, clients: usize) {
    let pct = |x: f64| x * 100.0;
    println!(
        "  SSE {what} profile ({} samples, whole machine): server {:.0} % (user {:.0} %, kernel receiving \
         for the clients {:.0} %, other kernel {:.0} %), clients {:.0} % (user {:.0} %, kernel receiving \
         for the server {:.0} %, other kernel {:.0} %), idle {:.0} %",
        p.samples,
        pct(p.server.total),
        pct(p.server.user),
        pct(p.server.receive),
        pct(p.server.kernel),
        pct(p.clients.total),
        pct(p.clients.user),
        pct(p.clients.receive),
        pct(p.clients.kernel),
        pct(p.idle)
    );
    if p.server.total > 0.0 && p.clients.total > 0.0 {
        let own = cpu.server_us * (1.0 - p.server.receive / p.server.total)
            + cpu.clients_us * (p.clients.receive / p.clients.total);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_event_ms = own * clients as f64 / 1000.0 / cores as f64;
        println!(
            "  SSE {what}: the server's own CPU per delivery (user, sending, receiving ACKs) {own:.1} us: \
             on {cores} cores with nothing else running, an event's fan-out to {clients} clients takes \
             {per_event_ms:.1} ms and the phase's 100 events {:.0} ms",
            per_event_ms * 100.0
        );
    }
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    micros();
    let clients = sizes.sse_clients;
    let f = rt.block_on(fanout(clients));
    let all = f.connected == clients;
    println!(
        "  SSE burst: its 100 commits took {:.1} ms from first to last",
        f.burst.commits_ms
    );
    for (what, m) in [("steady", &f.steady), ("burst", &f.burst)] {
        let (first, fanout, cpu) = (&m.first, &m.fanout, &m.cpu);
        println!(
            "  SSE {what}: each event's first delivery (commit, relay, hub) p50 {:.1} ms, p99 {:.1} ms; \
             then the fan-out to every client p50 {:.1} ms, p99 {:.1} ms",
            first.p50, first.p99, fanout.p50, fanout.p99
        );
        println!(
            "  SSE {what}: CPU per delivery: server {:.1} us, clients {:.1} us; machine {:.0} % busy",
            cpu.server_us,
            cpu.clients_us,
            cpu.machine_busy * 100.0
        );
        if let Some(p) = &m.profile {
            print_profile(what, p, cpu, f.connected);
        }
    }
    report.rows.push(Row {
        what: "SSE steady 20 events/s, one `vsm serve`",
        vsm: format!(
            "p99 {:.1} ms, {:.1} KiB/stream",
            f.steady.latency.p99, f.kib_per_stream
        ),
        reference: format!(
            "{} of {clients} clients connected, {} failed",
            f.connected, f.failed
        ),
        ratio: None,
        goal: "p99 <= 20 ms, <= 12 KiB/stream",
        met: all && f.steady.latency.p99 <= 20.0 && f.kib_per_stream <= 12.0,
        data: f.steady.json(
            "steady",
            json!({"clients": clients, "connected": f.connected, "failed": f.failed,
                   "kib_per_stream": f.kib_per_stream}),
        ),
    });
    report.rows.push(Row {
        what: "SSE burst of 100 events",
        vsm: format!("p99 {:.1} ms", f.burst.latency.p99),
        reference: format!("{clients} clients"),
        ratio: None,
        goal: "p99 <= 100 ms",
        met: all && f.burst.latency.p99 <= 100.0,
        data: f.burst.json("burst", json!({"clients": clients})),
    });
    report.budgets.push(Budget {
        what: "SSE connect",
        latency: f.connect,
        budget: [50.0, 100.0, 200.0],
    });
}
