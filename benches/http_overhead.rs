//! HTTP overhead benchmark (issue 5): `wrk` against a bare actix-web handler, `vsm serve`'s
//! `GET /health` (the whole middleware stack, no I/O) and an authenticated `GET /v1/systems`
//! (key lookup, rate limit, a tenant transaction), in one run on one machine.
//!
//!     cargo bench --bench http_overhead          # needs wrk (Debian package) and PostgreSQL
//!
//! Each target runs with the same number of actix workers; wrk uses 2 threads, 64 connections.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, get};
use uuid::Uuid;

const DURATION: &str = "10s";

fn pg() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[get("/health")]
async fn bare() -> HttpResponse {
    HttpResponse::Ok()
        .json(serde_json::json!({"status": "ok", "version": "0.1.0", "uptime_seconds": 1}))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wrk(label: &str, url: &str, header: Option<&str>) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", "-d", DURATION, "--latency"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk on PATH (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let pick = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    println!(
        "  {label:<34} {:>10} req/s   p50 {:>8}   p99 {:>8}  {non2xx}",
        pick("Requests/sec:"),
        pick("50%"),
        pick("99%"),
    );
}

fn main() {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let bare_port = free_port();
    std::thread::spawn(move || {
        let rt = actix_web::rt::System::new();
        rt.block_on(async move {
            HttpServer::new(|| App::new().service(bare))
                .workers(workers)
                .bind(("127.0.0.1", bare_port))
                .expect("bind")
                .run()
                .await
                .expect("bare server");
        });
    });

    let db = format!("vsm_httpbench_{}", Uuid::now_v7().simple());
    let url = format!("{}/{db}", pg());
    let bin = env!("CARGO_BIN_EXE_vsm");
    let admin = "bench-admin";
    let port = free_port();
    let _server = Killed(
        Command::new(bin)
            .args(["all", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &url)
            .env("VSM_ADMIN_TOKEN", admin)
            .env("VSM_LOG", "warn")
            // The benchmark measures the stack, not the limiter's refusals.
            .env("VSM_RATE_LIMIT__REQUESTS_PER_SECOND", "0")
            .stdout(Stdio::null())
            .spawn()
            .expect("vsm all"),
    );
    let ready = || {
        Command::new("curl")
            .args(["-fs", &format!("http://127.0.0.1:{port}/ready")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for _ in 0..100 {
        if ready() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let created = Command::new("curl")
        .args([
            "-fs",
            "-X",
            "POST",
            &format!("http://127.0.0.1:{port}/v1/tenants"),
            "-H",
            &format!("authorization: Bearer {admin}"),
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"slug":"bench"}"#,
        ])
        .output()
        .expect("curl");
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).expect("tenant");
    let key = created["api_key"].as_str().expect("api key").to_owned();

    println!("wrk -t2 -c64 -d{DURATION} ({workers} actix workers each)");
    wrk(
        "bare actix-web handler",
        &format!("http://127.0.0.1:{bare_port}/health"),
        None,
    );
    wrk(
        "vsm GET /health",
        &format!("http://127.0.0.1:{port}/health"),
        None,
    );
    wrk(
        "vsm GET /v1/systems (authenticated)",
        &format!("http://127.0.0.1:{port}/v1/systems"),
        Some(&format!("Authorization: Bearer {key}")),
    );
    let _ = Command::new("psql")
        .args([
            &format!("{}/postgres", pg()),
            "-qc",
            &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        ])
        .stdout(Stdio::null())
        .status();
}
