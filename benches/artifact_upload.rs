//! Artifact upload benchmark (issue 6): latency of 1 MiB `PUT /v1/artifacts/{path}` through a
//! `vsm serve` child process, per storage backend, measured by the client from the first byte
//! sent to the 201 read (staging, sha256, row + event + publish, commit).
//!
//!     cargo bench --bench artifact_upload                 # local; s3 too if an endpoint is set
//!     TEST_S3_ENDPOINT=http://127.0.0.1:5055 cargo bench --bench artifact_upload
//!     cargo bench --bench artifact_upload -- 1000         # uploads per backend (default 300)
//!
//! Needs PostgreSQL at 127.0.0.1:5432 (`TEST_DATABASE_URL` to change). The s3 run uses any
//! S3-compatible server without authentication checks (moto: `moto_server -p 5055`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

const BODY: usize = 1024 * 1024;
const WARM_UP: usize = 20;

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn run(backend: &str, env: &[(&str, String)], uploads: usize) {
    let db = format!("vsm_bench_{}", Uuid::now_v7().simple());
    let url = format!("{}/{db}", server_url());
    let bin = env!("CARGO_BIN_EXE_vsm");
    let ok = Command::new(bin)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("VSM_LOG", "warn")
        .stdout(Stdio::null())
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
    let key = created["api_key"].as_str().expect("key").to_owned();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let root = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &url)
        .env("VSM_LOG", "warn")
        .env("VSM_STORAGE__ROOT", root.path())
        // One key uploading back to back would hit the per-key rate limit.
        .env("VSM_RATE_LIMIT__REQUESTS_PER_SECOND", "0")
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = Server(cmd.spawn().expect("vsm serve"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "vsm serve ({backend}) never became ready");

    let body: Bytes = (0..BODY)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut samples = Vec::with_capacity(uploads);
    let started = Instant::now();
    for i in 0..WARM_UP + uploads {
        let t = Instant::now();
        let res = http
            .put(format!("{base}/v1/artifacts/bench/{i:06}.bin"))
            .bearer_auth(&key)
            .body(body.clone())
            .send()
            .await
            .expect("PUT");
        assert_eq!(
            res.status(),
            201,
            "{}",
            res.text().await.unwrap_or_default()
        );
        let _ = res.bytes().await;
        if i >= WARM_UP {
            samples.push(t.elapsed());
        }
    }
    let total = started.elapsed();
    samples.sort_unstable();
    println!(
        "  {backend:<6} 1 MiB PUT  n={:<5} p50={:>7.2} ms  p95={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms  ({:.0} MiB/s sequential)",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
        (WARM_UP + uploads) as f64 / total.as_secs_f64(),
    );
    drop(server);
    if let Ok(mut admin) =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&format!(
            "{}/postgres",
            server_url()
        ))
        .await
    {
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; any number is the upload count.
    let uploads = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(300);
    println!(
        "artifact upload latency, {uploads} sequential uploads per backend after {WARM_UP} warm-up:"
    );
    run(
        "local",
        &[("VSM_STORAGE__BACKEND", "local".into())],
        uploads,
    )
    .await;
    match std::env::var("BENCH_S3_ENDPOINT").or_else(|_| std::env::var("TEST_S3_ENDPOINT")) {
        Ok(endpoint) => {
            let bucket = format!("vsm-bench-{}", Uuid::now_v7().simple());
            let res = reqwest::Client::new()
                .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
                .send()
                .await
                .expect("S3 endpoint answers");
            assert!(res.status().is_success(), "create bucket: {}", res.status());
            let env = [
                ("VSM_STORAGE__BACKEND", "s3".to_owned()),
                ("VSM_STORAGE__S3__BUCKET", bucket),
                ("VSM_STORAGE__S3__ENDPOINT", endpoint),
                ("VSM_STORAGE__S3__PATH_STYLE", "true".to_owned()),
                ("VSM_STORAGE__S3__ACCESS_KEY_ID", "bench".to_owned()),
                ("VSM_STORAGE__S3__SECRET_ACCESS_KEY", "bench".to_owned()),
            ];
            run("s3", &env, uploads).await;
        }
        Err(_) => println!("  s3     skipped: set TEST_S3_ENDPOINT (or BENCH_S3_ENDPOINT)"),
    }
}
