//! CONTRACT §10's scale-out story, on this machine without Docker: HAProxy with
//! `compose/haproxy/haproxy.cfg` itself (backend addresses from the environment) in front of
//! two `vsm serve`, two `vsm work`, one `vsm migrate`, a private Redis and a private RabbitMQ,
//! under a steady bounded load (about 200 requests/s mixing reads and episode creation, plus
//! two SSE clients), through a SIGTERM, a `kill -9` of each kind of process and a RabbitMQ
//! restart.
//!
//! Ignored in the suite (it runs about two minutes and starts its own RabbitMQ node); `.ci/run`
//! runs it after the suite: `cargo nextest run --run-ignored only -E 'test(cluster_)'`.

use crate::common;
use crate::jobs_support::count;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{KillOnDrop, PrivateRedis, TestDb, eventually, free_port, repo_root, vsm};

/// Requests per second the load generator aims at, and its concurrent connections (each
/// sends one request at a time, so the rate reached also depends on latency; it is printed).
const RATE: u64 = 250;
const CONNECTIONS: u64 = 20;

/// A RabbitMQ node of its own (ports, data and config under `dir`), so restarting it
/// disturbs nothing else on the machine.
struct PrivateRabbit {
    port: u16,
    dir: PathBuf,
    child: Option<KillOnDrop>,
}

impl PrivateRabbit {
    fn new(dir: &Path) -> PrivateRabbit {
        // The Debian wrapper runs the node as the `rabbitmq` user: it must reach and write it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        PrivateRabbit {
            port,
            dir: dir.to_owned(),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn node(&self) -> String {
        format!("vsm-cluster-{}@localhost", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", self.node())
            .env(
                "RABBITMQ_DIST_PORT",
                (self.port as u32 + 20_000).min(65_000).to_string(),
            )
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server on PATH");
        self.child = Some(KillOnDrop(child));
        let port = self.port;
        eventually(
            Duration::from_secs(90),
            "private RabbitMQ up",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// A clean broker stop, as a restart does. `rabbitmqctl stop` returns once the node is
    /// down; signalling the wrapper script would leave the Erlang VM running.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let out = Command::new("rabbitmqctl")
                .args(["-n", &self.node(), "stop"])
                .output()
                .expect("rabbitmqctl on PATH");
            assert!(
                out.status.success(),
                "rabbitmqctl stop: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = wait_exit(&mut child.0, Duration::from_secs(30));
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("rabbitmqctl")
                .args(["-n", &self.node(), "stop"])
                .output();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", child.id());
}

/// Waits for `child` to exit; how long it took, or `None` past `within`.
fn wait_exit(child: &mut Child, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if child.try_wait().unwrap().is_some() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// One request of the load: when it ended and whether it failed (with why).
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    failure: Option<String>,
}

#[derive(Default)]
struct Load {
    outcomes: Mutex<Vec<Outcome>>,
    stop: std::sync::atomic::AtomicBool,
}

impl Load {
    fn failures_between(&self, from: Instant, to: Instant) -> Vec<String> {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.at >= from && o.at <= to)
            .filter_map(|o| o.failure.clone())
            .collect()
    }

    fn total(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    fn last_before(&self, t: Instant) -> Option<Instant> {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .map(|o| o.at)
            .filter(|at| *at <= t)
            .max()
    }
}

/// `CONNECTIONS` tasks, each sending `RATE / CONNECTIONS` requests a second until stopped:
/// every fifth one creates an episode, the others read. Every request that does not get a 2xx
/// counts as failed, whatever the reason (connection error, timeout, 5xx, 429).
fn start_load(base: String, key: String, load: Arc<Load>) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (0..CONNECTIONS)
        .map(|task| {
            let (http, base, key, load) = (http.clone(), base.clone(), key.clone(), load.clone());
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_micros(1_000_000 * CONNECTIONS / RATE));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = task;
                while !load.stop.load(std::sync::atomic::Ordering::SeqCst) {
                    tick.tick().await;
                    n += 1;
                    let req = match n % 5 {
                        0 => http
                            .post(format!("{base}/v1/episodes"))
                            .json(&serde_json::json!({
                                "title": format!("load {task}-{n}"),
                                "content": "an episode created under load",
                            })),
                        1 | 3 => http.get(format!("{base}/v1/systems")),
                        _ => http.get(format!("{base}/v1/episodes?limit=5")),
                    };
                    let failure = match req.bearer_auth(&key).send().await {
                        Ok(res) if res.status().is_success() => match res.bytes().await {
                            Ok(_) => None,
                            Err(e) => Some(format!("body: {e}")),
                        },
                        Ok(res) => Some(format!("status {}", res.status())),
                        Err(e) => Some(format!("request: {e}")),
                    };
                    load.outcomes.lock().unwrap().push(Outcome {
                        at: Instant::now(),
                        failure,
                    });
                }
            })
        })
        .collect()
}

/// An SSE reader that reconnects (through HAProxy) with `Last-Event-ID` whenever its stream
/// ends, recording every event id it is handed, duplicates included.
fn start_sse_reader(
    base: String,
    key: String,
    ids: Arc<Mutex<Vec<i64>>>,
    stop: Arc<Load>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut reconnects = 0;
        let mut last = None;
        while !stop.stop.load(std::sync::atomic::Ordering::SeqCst) {
            let mut sse = common::SseClient::connect(&base, &key, "", last).await;
            if sse.status != 200 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            while let Some(frame) = sse.next(Duration::from_secs(30)).await {
                if let Some(id) = frame.id {
                    ids.lock().unwrap().push(id);
                    last = Some(id);
                }
                if frame.event.as_deref() == Some("disconnected") {
                    break;
                }
            }
            reconnects += 1;
        }
        reconnects
    })
}

struct Haproxy {
    /// Stopped when the test ends.
    _child: KillOnDrop,
    port: u16,
    stats: u16,
}

impl Haproxy {
    async fn start(dir: &Path, apps: [u16; 2]) -> Haproxy {
        let (port, stats) = (free_port(), free_port());
        let child = Command::new("haproxy")
            .args(["-W", "-db", "-f"])
            .arg(repo_root().join("compose/haproxy/haproxy.cfg"))
            .current_dir(dir)
            .env("VSM_APP_1", format!("127.0.0.1:{}", apps[0]))
            .env("VSM_APP_2", format!("127.0.0.1:{}", apps[1]))
            .env("VSM_HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("HAPROXY_STATS_BIND", format!("127.0.0.1:{stats}"))
            .env("HAPROXY_MAXCONN", "2000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy on PATH (.ci/run installs it)");
        Haproxy {
            _child: KillOnDrop(child),
            port,
            stats,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Server name → status (`UP`, `DOWN`, `MAINT`, `UP 1/2`, …) from the stats CSV.
    async fn servers(&self) -> BTreeMap<String, String> {
        let Ok(res) = reqwest::get(format!("http://127.0.0.1:{}/stats;csv", self.stats)).await
        else {
            return BTreeMap::new();
        };
        let text = res.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("vsm_app,app"))
            .map(|l| {
                let cols: Vec<&str> = l.split(',').collect();
                (cols[1].to_owned(), cols[17].to_owned())
            })
            .collect()
    }

    async fn wait_status(&self, server: &str, want: &str, within: Duration) {
        let what = format!("HAProxy reports {server} {want}");
        eventually(within, &what, || async {
            self.servers().await.get(server).is_some_and(|s| s == want)
        })
        .await;
    }
}

struct Nodes {
    db_url: String,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Nodes {
    fn serve(&self, port: u16) -> KillOnDrop {
        let mut cmd = vsm();
        cmd.arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("DATABASE_URL", &self.db_url)
            .env("VSM_LISTEN", format!("127.0.0.1:{port}"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("VSM_LOG", "error")
            .stdout(Stdio::null());
        KillOnDrop(cmd.spawn().expect("spawn vsm serve"))
    }

    fn work(&self, port: u16) -> KillOnDrop {
        let mut cmd = vsm();
        cmd.arg("--config")
            .arg(&self.config)
            .args(["work", "--metrics-listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &self.db_url)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("VSM_LOG", "error")
            .stdout(Stdio::null());
        KillOnDrop(cmd.spawn().expect("spawn vsm work"))
    }
}

/// Polls `sql` (a `count(*) AS n`) until `done` holds or `within` passes.
async fn poll(
    owner: &mut diesel_async::AsyncPgConnection,
    what: &str,
    within: Duration,
    sql: &str,
    done: impl Fn(i64) -> bool,
) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let n = count(owner, sql).await;
        if done(n) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} (last count {n})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(port: u16) {
    common::wait_ready(&format!("http://127.0.0.1:{port}")).await;
}

/// What `/ready` says through HAProxy: (HTTP status, body status).
async fn ready_through(base: &str) -> (u16, String) {
    match reqwest::get(format!("{base}/ready")).await {
        Ok(res) => {
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            (status, body["status"].as_str().unwrap_or("").to_owned())
        }
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test]
#[ignore = "cluster scenario (about two minutes, own RabbitMQ node): run by .ci/run after the suite"]
async fn cluster_survives_sigterm_kill_and_broker_restart_behind_haproxy() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let rabbit_dir = tempfile::tempdir().unwrap();
    let mut rabbit = PrivateRabbit::new(rabbit_dir.path());
    rabbit.start().await;
    let redis = PrivateRedis::start().await;

    // One `vsm migrate` creates and migrates the database.
    let db = TestDb::missing();
    let out = vsm()
        .arg("migrate")
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vsm migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A per-second cron slot; a node silent for 3 s is dead.
    let probes = dir.path().join("probes");
    std::fs::create_dir_all(&probes).unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        "[[jobs.cron]]\nname = \"every_second\"\nexpression = \"* * * * * *\"\nworker = \"test_probe\"\n",
    )
    .unwrap();
    let storage = dir.path().join("storage");
    let nodes = Nodes {
        db_url: db.url(),
        config,
        env: [
            ("REDIS_URL", redis.url()),
            ("RABBITMQ_URL", rabbit.url()),
            ("VSM_EVENTS__EXCHANGE", common::unique_exchange()),
            ("VSM_SERVER__TRUSTED_PROXIES", r#"["127.0.0.1"]"#.to_owned()),
            ("VSM_SERVER__SHUTDOWN_GRACE_SECS", "10".to_owned()),
            ("VSM_SERVER__WORKERS", "2".to_owned()),
            ("VSM_RATE_LIMIT__REQUESTS_PER_SECOND", "0".to_owned()),
            ("VSM_STORAGE__ROOT", storage.to_string_lossy().into_owned()),
            ("VSM_JOBS__TEST_WORKERS", "true".to_owned()),
            (
                "VSM_JOBS__TEST_PROBE_DIR",
                probes.to_string_lossy().into_owned(),
            ),
            ("VSM_JOBS__HEARTBEAT_INTERVAL_SECS", "1".to_owned()),
            ("VSM_JOBS__RESCUE_AFTER_SECS", "3".to_owned()),
            ("VSM_JOBS__POLL_INTERVAL_MS", "200".to_owned()),
            ("VSM_EVENTS__RELAY_POLL_MS", "200".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    };
    let app_ports = [free_port(), free_port()];
    let mut apps = [
        Some(nodes.serve(app_ports[0])),
        Some(nodes.serve(app_ports[1])),
    ];
    let work_ports = [free_port(), free_port()];
    let mut works = [
        Some(nodes.work(work_ports[0])),
        Some(nodes.work(work_ports[1])),
    ];
    for port in app_ports.iter().chain(&work_ports) {
        ready(*port).await;
    }
    let haproxy = Haproxy::start(dir.path(), app_ports).await;
    haproxy
        .wait_status("app1", "UP", Duration::from_secs(20))
        .await;
    haproxy
        .wait_status("app2", "UP", Duration::from_secs(20))
        .await;
    let base = haproxy.base();

    let repo = db.repo().await;
    let (tenant, key) = vsm::schemas::storage::tenant::create(&repo, "cluster", None)
        .await
        .unwrap();
    let key = key.key;

    // X-Forwarded-For comes from HAProxy only: a client (127.0.0.3) that exhausts its failed-
    // authentication bucket gets 429, another client (127.0.0.4) through the same HAProxy does
    // not, even when it claims to be someone else.
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let (attacker, bystander) = (from([127, 0, 0, 3]), from([127, 0, 0, 4]));
    let mut limited = false;
    for i in 0..200 {
        let res = attacker
            .get(format!("{base}/v1/systems"))
            .bearer_auth(format!("vsm_bogus_{i}"))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            limited = true;
            break;
        }
        assert_eq!(res.status(), 401);
    }
    assert!(
        limited,
        "the failed-auth limit never applied through HAProxy"
    );
    let res = bystander
        .get(format!("{base}/v1/systems"))
        .bearer_auth("vsm_bogus_bystander")
        .header("x-forwarded-for", "127.0.0.3")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        401,
        "the bystander shares the attacker's bucket"
    );
    // x-request-id is kept end to end.
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/systems"))
        .bearer_auth(&key)
        .header("x-request-id", "cluster-trace-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "cluster-trace-1");

    // Load and two SSE readers.
    let load = Arc::new(Load::default());
    let load_started = Instant::now();
    let workers = start_load(base.clone(), key.clone(), load.clone());
    let sse_ids: [Arc<Mutex<Vec<i64>>>; 2] = Default::default();
    let readers: Vec<_> = sse_ids
        .iter()
        .map(|ids| start_sse_reader(base.clone(), key.clone(), ids.clone(), load.clone()))
        .collect();
    let settle = |secs| tokio::time::sleep(Duration::from_secs(secs));
    settle(5).await;

    // 1. SIGTERM to app1: no failed request; gone within a second of its last request.
    let t0 = Instant::now();
    let mut app1 = apps[0].take().unwrap();
    signal(&app1.0, "TERM");
    let exited = wait_exit(&mut app1.0, Duration::from_secs(15)).expect("app1 did not exit");
    let exit_at = t0 + exited;
    haproxy
        .wait_status("app1", "DOWN", Duration::from_secs(10))
        .await;
    settle(2).await;
    let sigterm_failures = load.failures_between(t0, Instant::now());
    eprintln!(
        "cluster: SIGTERM app1 exited after {exited:?}; failed requests: {}",
        sigterm_failures.len()
    );
    assert!(
        sigterm_failures.is_empty(),
        "failed through SIGTERM: {sigterm_failures:?}"
    );
    // Requests keep succeeding through the drain (HAProxy retries the refused connections on
    // app2); app1 itself only finishes what it had in flight, which takes milliseconds.
    let last_ok = load.last_before(exit_at).unwrap_or(t0);
    eprintln!(
        "cluster: last load request before app1's exit ended {:?} before it",
        exit_at - last_ok
    );
    assert!(
        exited < Duration::from_secs(1),
        "app1 took {exited:?} to exit after SIGTERM"
    );
    apps[0] = Some(nodes.serve(app_ports[0]));
    ready(app_ports[0]).await;
    haproxy
        .wait_status("app1", "UP", Duration::from_secs(20))
        .await;
    settle(3).await;

    // 2. kill -9 app2, restart it: failures only within HAProxy's detection window.
    let t1 = Instant::now();
    let mut app2 = apps[1].take().unwrap();
    signal(&app2.0, "KILL");
    wait_exit(&mut app2.0, Duration::from_secs(5)).expect("app2 survived kill -9");
    haproxy
        .wait_status("app2", "DOWN", Duration::from_secs(10))
        .await;
    let detected = t1.elapsed();
    apps[1] = Some(nodes.serve(app_ports[1]));
    ready(app_ports[1]).await;
    haproxy
        .wait_status("app2", "UP", Duration::from_secs(20))
        .await;
    settle(3).await;
    let kill_failures = load.failures_between(t1, Instant::now());
    eprintln!(
        "cluster: kill -9 app2: HAProxy marked it down after {detected:?}; failed requests: {} {:?}",
        kill_failures.len(),
        kill_failures.iter().collect::<BTreeSet<_>>()
    );
    let window_failures = load.failures_between(t1 + detected, Instant::now());
    assert!(
        window_failures.is_empty(),
        "failures after detection: {window_failures:?}"
    );

    // 3. kill -9 a worker holding jobs: the other finishes them.
    let held = {
        let mut tx = repo.system_tx().await.unwrap();
        let jobs: Vec<vsm::jobs::NewJob> = (0..6)
            .map(|_| {
                vsm::jobs::NewJob::new(
                    "test_probe",
                    serde_json::json!({"sleep_ms": 2000, "sleep_attempts": 1}),
                )
            })
            .collect();
        vsm::jobs::storage::insert_all(&mut tx, &jobs)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        jobs.len() as i64
    };
    let mut owner = db.owner_conn().await;
    poll(
        &mut owner,
        "held probes executing",
        Duration::from_secs(20),
        "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND state = 'executing' AND args ? 'sleep_ms'",
        |n| n > 0,
    )
    .await;
    let mut work1 = works[0].take().unwrap();
    signal(&work1.0, "KILL");
    wait_exit(&mut work1.0, Duration::from_secs(5)).expect("worker survived kill -9");

    // 4. RabbitMQ restart under load: no instance leaves HAProxy, no event is lost.
    let t3 = Instant::now();
    rabbit.stop();
    eventually(
        Duration::from_secs(20),
        "/ready degraded through HAProxy",
        || async { ready_through(&base).await == (200, "degraded".to_owned()) },
    )
    .await;
    let servers = haproxy.servers().await;
    assert!(
        servers.values().all(|s| s == "UP"),
        "broker down took instances out: {servers:?}"
    );
    rabbit.start().await;
    eventually(Duration::from_secs(30), "/ready ok again", || async {
        ready_through(&base).await == (200, "ok".to_owned())
    })
    .await;
    let servers = haproxy.servers().await;
    assert!(
        servers.values().all(|s| s == "UP"),
        "after the broker restart: {servers:?}"
    );
    let broker_failures = load.failures_between(t3, Instant::now());
    eprintln!(
        "cluster: RabbitMQ restart: failed requests: {}",
        broker_failures.len()
    );
    assert!(
        broker_failures.is_empty(),
        "failed during the broker restart: {broker_failures:?}"
    );

    poll(
        &mut owner,
        "the killed worker's jobs completed elsewhere",
        Duration::from_secs(30),
        "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND state = 'completed' AND args ? 'sleep_ms'",
        |n| n == held,
    )
    .await;

    // Stop the load; let the work drain.
    settle(3).await;
    load.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let total = load.total();
    let rate = total as f64 / load_started.elapsed().as_secs_f64();
    let tenant_id = tenant.id;
    poll(
        &mut owner,
        "every episode analysed",
        Duration::from_secs(60),
        &format!("SELECT count(*) AS n FROM episodes WHERE tenant_id = '{tenant_id}' AND status <> 'complete'"),
        |n| n == 0,
    )
    .await;
    let episodes = count(
        &mut owner,
        &format!("SELECT count(*) AS n FROM episodes WHERE tenant_id = '{tenant_id}'"),
    )
    .await;
    assert!(episodes > 50, "only {episodes} episodes created");
    let analysed_twice = count(
        &mut owner,
        &format!(
            "SELECT count(*) AS n FROM (SELECT payload->>'episode_id' FROM events WHERE tenant_id = '{tenant_id}' \
             AND topic = 'episode.analyzed' GROUP BY 1 HAVING count(*) <> 1) t"
        ),
    )
    .await;
    let analysed = count(&mut owner, &format!("SELECT count(*) AS n FROM events WHERE tenant_id = '{tenant_id}' AND topic = 'episode.analyzed'")).await;
    assert_eq!(
        (analysed, analysed_twice),
        (episodes, 0),
        "episodes analysed other than once"
    );

    // Cron: one job per second slot, none missing between the first and the last.
    let slots = count(
        &mut owner,
        "SELECT count(*) AS n FROM job_cron_slots WHERE name = 'every_second'",
    )
    .await;
    let span = count(
        &mut owner,
        "SELECT (extract(epoch FROM max(slot) - min(slot)))::bigint + 1 AS n FROM job_cron_slots WHERE name = 'every_second'",
    )
    .await;
    let cron_jobs = count(
        &mut owner,
        "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND NOT args ? 'sleep_ms'",
    )
    .await;
    eprintln!(
        "cluster: cron slots {slots} over {span} s ({} skipped), jobs {cron_jobs}",
        span - slots
    );
    assert_eq!(cron_jobs, slots, "cron jobs per slot");
    assert!(slots <= span, "cron slots {slots} over a span of {span} s");

    // SSE: every event of the tenant, exactly once, to each reader.
    let highest = count(&mut owner, &format!("SELECT coalesce(max(seq), 0) AS n FROM events WHERE tenant_id = '{tenant_id}' OR tenant_id IS NULL")).await;
    for ids in &sse_ids {
        let ids = ids.clone();
        eventually(Duration::from_secs(30), "SSE readers caught up", || {
            let ids = ids.clone();
            async move { ids.lock().unwrap().last().copied().unwrap_or(0) >= highest }
        })
        .await;
    }
    let expected: Vec<i64> = {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Seq {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            seq: i64,
        }
        diesel::sql_query(format!(
            "SELECT seq FROM events WHERE (tenant_id = '{tenant_id}' OR tenant_id IS NULL) AND seq <= {highest} ORDER BY seq"
        ))
        .load::<Seq>(&mut owner)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.seq)
        .collect()
    };
    for (i, ids) in sse_ids.iter().enumerate() {
        let got: Vec<i64> = ids
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|id| *id <= highest)
            .collect();
        let first = got.first().copied().unwrap_or(0);
        let want: Vec<i64> = expected.iter().copied().filter(|s| *s >= first).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "SSE reader {i}: {} events, {} expected",
            got.len(),
            want.len()
        );
        assert_eq!(
            got, want,
            "SSE reader {i}: events missing, repeated or out of order"
        );
    }
    load.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut reconnects = Vec::new();
    for r in readers {
        r.abort();
        let _ = r.await.map(|n| reconnects.push(n));
    }
    eprintln!(
        "cluster: {total} requests ({rate:.0}/s); SIGTERM failures 0, kill -9 failures {}, broker restart failures 0; {episodes} episodes, {} events per reader; wall time {:?}",
        kill_failures.len(),
        expected.len(),
        started.elapsed()
    );
    drop(haproxy);
    drop(works);
    drop(apps);
    rabbit.stop();
}
