//! What every section of the benchmark shares: sizes, child processes, a fresh database per
//! section, percentiles, wrk and pgbench, and the report (table + budgets + JSON).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

/// How big each section runs: the full run (a few minutes) or `--tiny` (seconds, for CI).
#[derive(Clone, Copy)]
pub struct Sizes {
    pub tiny: bool,
    pub wrk_secs: u64,
    pub jobs: usize,
    pub sse_clients: usize,
    pub uploads: usize,
    pub samples: usize,
    /// `/status` updates answered one at a time (notifications section).
    pub telegram_updates: usize,
    /// Webhook deliveries, and Telegram messages, per throughput run.
    pub deliveries: usize,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            tiny: false,
            wrk_secs: 10,
            jobs: 100_000,
            sse_clients: 10_000,
            uploads: 300,
            samples: 2_000,
            telegram_updates: 500,
            deliveries: 5_000,
        }
    }

    pub fn tiny() -> Sizes {
        Sizes {
            tiny: true,
            wrk_secs: 1,
            jobs: 2_000,
            sse_clients: 50,
            uploads: 10,
            samples: 50,
            telegram_updates: 20,
            deliveries: 100,
        }
    }
}

pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
        .trim_end_matches('/')
        .to_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

pub fn vsm() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsm"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("VSM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ends a child with SIGTERM (graceful) and reaps it.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A migrated database of its own, with one tenant and its API key; dropped at the end.
pub struct Db {
    pub name: String,
    pub url: String,
    pub tenant: Uuid,
    pub key: String,
}

impl Db {
    pub fn create() -> Db {
        let name = format!("vsm_bench_{}", Uuid::now_v7().simple());
        let url = format!("{}/{name}", server_url());
        let ok = vsm()
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .status()
            .expect("vsm migrate");
        assert!(ok.success(), "vsm migrate failed");
        let out = vsm()
            .args(["tenant", "create", "bench"])
            .env("DATABASE_URL", &url)
            .stdout(Stdio::piped())
            .output()
            .expect("tenant create");
        let created: Value = serde_json::from_slice(&out.stdout).expect("tenant json");
        Db {
            name,
            url,
            tenant: created["tenant_id"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("tenant id"),
            key: created["api_key"].as_str().expect("api key").to_owned(),
        }
    }

    pub fn psql(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        psql(
            &format!("{}/postgres", server_url()),
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// Runs SQL through psql, returning its unaligned, tuples-only output.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql on PATH");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Starts `vsm serve` (or another role) on a free port and waits until `/ready` answers 200.
pub fn serve(role: &str, db: &Db, env: &[(&str, String)]) -> (Killed, String) {
    let port = free_port();
    let mut cmd = vsm();
    cmd.args([role, "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        // The benchmark measures the stack, not the limiter's refusals (64 connections
        // presenting one not-yet-cached key at once would pay the failed-auth bucket).
        .env("VSM_RATE_LIMIT__REQUESTS_PER_SECOND", "0")
        .env("VSM_RATE_LIMIT__FAILED_AUTH_PER_SECOND", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Killed(cmd.spawn().expect("spawn vsm"));
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/ready"));
    (child, base)
}

pub fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ok = Command::new("curl")
            .args(["-fs", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} never answered 200");
}

/// p50/p95/p99/max of samples, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |p: f64| {
            if samples.is_empty() {
                return f64::NAN;
            }
            let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples[i].as_secs_f64() * 1000.0
        };
        Latency {
            n: samples.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    pub fn json(&self) -> Value {
        json!({"n": self.n, "p50_ms": self.p50, "p95_ms": self.p95, "p99_ms": self.p99, "max_ms": self.max})
    }
}

/// What wrk measured: requests per second and the p99 latency in ms.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    pub rps: f64,
    pub p99_ms: f64,
}

/// `wrk -t2 -c64 --latency` for `secs` seconds.
pub fn wrk(url: &str, header: Option<&str>, secs: u64) -> Throughput {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", "-d", &format!("{secs}s"), "--latency"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk on PATH (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        panic!("wrk {url}: {}", line.trim());
    }
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("wrk output without {prefix:?}:\n{text}"))
            .to_owned()
    };
    Throughput {
        rps: field("Requests/sec:").parse().expect("wrk rate"),
        p99_ms: wrk_ms(&field("99%")),
    }
}

/// wrk prints latencies as `812.00us`, `3.21ms` or `1.02s`.
fn wrk_ms(text: &str) -> f64 {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().map(|v| v * scale).unwrap_or(f64::NAN)
}

/// The middle value of a benchmark's rounds (the upper middle of an even count).
pub fn median(xs: impl IntoIterator<Item = f64>) -> f64 {
    let mut xs: Vec<f64> = xs.into_iter().collect();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// pgbench with a custom script: 64 clients on 2 threads like wrk, or as given; returns the
/// transactions per second it reports (without connection setup).
pub fn pgbench(url: &str, script: &str, args: &[&str], role: Option<&str>) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).expect("write pgbench script");
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-f"]).arg(&file).args(args).arg(url);
    if let Some(role) = role {
        // Each connection starts as this role, like the pool's `SET ROLE vsm_app`.
        cmd.env("PGOPTIONS", format!("-c role={role}"));
    }
    let out = cmd.output().expect("pgbench on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("number of transactions actually processed: 0\n") {
        // A run too short for its clients to connect (the tiny run on a busy machine): it
        // measured nothing, which is a rate of 0, not a broken benchmark.
        println!("  (pgbench processed no transaction in its {args:?} run)");
        return 0.0;
    }
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("pgbench output without tps:\n{text}"))
}

/// One line of the comparison table.
pub struct Row {
    pub what: &'static str,
    pub vsm: String,
    pub reference: String,
    pub ratio: Option<f64>,
    pub goal: &'static str,
    pub met: bool,
    pub data: Value,
}

/// One line of the plan's §8 budget table.
pub struct Budget {
    pub what: &'static str,
    pub latency: Latency,
    /// The plan's p50 / p95 / p99 budget in ms.
    pub budget: [f64; 3],
}

impl Budget {
    pub fn met(&self) -> bool {
        self.latency.p50 <= self.budget[0]
            && self.latency.p95 <= self.budget[1]
            && self.latency.p99 <= self.budget[2]
    }
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub budgets: Vec<Budget>,
}

impl Report {
    pub fn print(&self) {
        println!();
        println!(
            "| {:<52} | {:<26} | {:<58} | {:>6} | {:<30} | met |",
            "what", "vsm", "reference (same run)", "ratio", "goal"
        );
        println!(
            "|{:-<54}|{:-<28}|{:-<60}|{:->8}|{:-<32}|-----|",
            "", "", "", "", ""
        );
        for r in &self.rows {
            println!(
                "| {:<52} | {:<26} | {:<58} | {:>6} | {:<30} | {:<3} |",
                r.what,
                r.vsm,
                r.reference,
                r.ratio
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                r.goal,
                if r.met { "yes" } else { "no" }
            );
        }
        println!();
        println!(
            "| {:<26} | {:>6} | {:>9} | {:>9} | {:>9} | {:<20} | met |",
            "plan §8 budget", "n", "p50 ms", "p95 ms", "p99 ms", "budget p50/p95/p99"
        );
        println!(
            "|{:-<28}|{:->8}|{:->11}|{:->11}|{:->11}|{:-<22}|-----|",
            "", "", "", "", "", ""
        );
        for b in &self.budgets {
            println!(
                "| {:<26} | {:>6} | {:>9.2} | {:>9.2} | {:>9.2} | {:<20} | {:<3} |",
                b.what,
                b.latency.n,
                b.latency.p50,
                b.latency.p95,
                b.latency.p99,
                format!("{}/{}/{} ms", b.budget[0], b.budget[1], b.budget[2]),
                if b.met() { "yes" } else { "no" }
            );
        }
    }

    pub fn json(&self, sizes: &Sizes) -> Value {
        json!({
            "tiny": sizes.tiny,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "rows": self.rows.iter().map(|r| json!({
                "what": r.what, "vsm": r.vsm, "reference": r.reference, "ratio": r.ratio,
                "goal": r.goal, "met": r.met, "data": r.data,
            })).collect::<Vec<_>>(),
            "budgets": self.budgets.iter().map(|b| json!({
                "what": b.what, "latency": b.latency.json(),
                "budget_ms": {"p50": b.budget[0], "p95": b.budget[1], "p99": b.budget[2]},
                "met": b.met(),
            })).collect::<Vec<_>>(),
        })
    }
}
