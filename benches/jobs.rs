//! Job engine benchmark (not part of `cargo nextest run`): `cargo bench --bench jobs`.
//!
//! 1. Burn-down: 100,000 `test_noop` jobs, inserted while their queue is paused, then the queue
//!    is resumed and the clock runs until none is left; with one and with two `vsm work`
//!    processes (`--queue bench=CONCURRENCY`).
//! 2. Single-insert latency: one job per transaction (`system_tx`, insert with NOTIFY,
//!    commit), p50 and p99 over 2,000 inserts.
//!
//! Environment: `TEST_DATABASE_URL` (server URL without a database, default
//! `postgres://postgres@127.0.0.1:5432`), `BENCH_JOBS` (default 100000), `BENCH_CONCURRENCY`
//! (default 1000: for no-op jobs the queue limit is what bounds the fetch batch).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use serde_json::json;
use vsm::config::{DatabaseConfig, ServiceUrl};
use vsm::jobs::{NewJob, storage};
use vsm::repo::Repo;

const QUEUE: &str = "bench";

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Bench {
    name: String,
    url: String,
    repo: Repo,
}

impl Bench {
    async fn create() -> Bench {
        let name = format!("vsm_bench_{}", uuid::Uuid::now_v7().simple());
        let url = format!("{}/{name}", server_url().trim_end_matches('/'));
        let cfg = DatabaseConfig {
            url: ServiceUrl::parse(&url).expect("url"),
            pool_size: 8,
            ..DatabaseConfig::default()
        };
        vsm::migrate::run(&cfg, vsm::migrate::Action::Up)
            .await
            .expect("migrate");
        let repo = Repo::connect(&cfg).await.expect("connect");
        Bench { name, url, repo }
    }

    async fn drop_db(self) {
        drop(self.repo);
        let admin_url = format!("{}/postgres", server_url().trim_end_matches('/'));
        let mut admin =
            <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(
                &admin_url,
            )
            .await
            .expect("admin");
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("drop");
    }

    /// Whether any job is still available or executing. Cheap on purpose (EXISTS on the
    /// partial indexes, one persistent connection): the poll must not steal the CPU it measures.
    async fn busy(conn: &mut diesel_async::AsyncPgConnection) -> bool {
        #[derive(diesel::QueryableByName)]
        struct Busy {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            busy: bool,
        }
        diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'available')
                 OR EXISTS (SELECT 1 FROM jobs WHERE state = 'executing') AS busy",
        )
        .get_result::<Busy>(conn)
        .await
        .expect("poll")
        .busy
    }
}

fn start_worker(url: &str, concurrency: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vsm"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "work",
            "--queue",
            &format!("{QUEUE}={concurrency}"),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", url)
        .env("VSM_JOBS__TEST_WORKERS", "true")
        .env("VSM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vsm work")
}

async fn set_paused(repo: &Repo, paused: bool) {
    let mut tx = repo.system_tx().await.expect("tx");
    storage::set_paused(&mut tx, QUEUE, paused)
        .await
        .expect("pause");
    tx.commit().await.expect("commit");
}

async fn burn_down(workers: usize, jobs: usize, concurrency: usize) -> f64 {
    let bench = Bench::create().await;
    set_paused(&bench.repo, true).await;
    let inserting = Instant::now();
    let batch: Vec<NewJob> = (0..1000)
        .map(|_| NewJob::new("test_noop", json!({})).queue(QUEUE))
        .collect();
    for _ in 0..jobs / 1000 {
        let mut tx = bench.repo.system_tx().await.expect("tx");
        storage::insert_all(&mut tx, &batch).await.expect("insert");
        tx.commit().await.expect("commit");
    }
    let inserted_in = inserting.elapsed().as_secs_f64();
    let mut children: Vec<Child> = (0..workers)
        .map(|_| start_worker(&bench.url, concurrency))
        .collect();
    // Let the workers start and register before the clock runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut poll =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&bench.url)
            .await
            .expect("conn");
    let started = Instant::now();
    set_paused(&bench.repo, false).await;
    while Bench::busy(&mut poll).await {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "burn-down stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    for c in &mut children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let _ = c.wait();
    }
    bench.drop_db().await;
    let rate = jobs as f64 / secs;
    println!(
        "burn-down  {workers} worker(s) x {concurrency}: {jobs} jobs in {secs:.2}s = {rate:.0} jobs/s  (bulk insert {:.0} jobs/s)",
        jobs as f64 / inserted_in
    );
    rate
}

async fn insert_latency(n: usize) {
    let bench = Bench::create().await;
    // Whole transactions (begin, insert + NOTIFY, commit: includes the commit's WAL flush),
    // and the insert alone as a caller's transaction pays for it.
    let mut whole = Vec::with_capacity(n);
    let mut in_tx = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let started = Instant::now();
        let mut tx = bench.repo.system_tx().await.expect("tx");
        let inserting = Instant::now();
        storage::insert(
            &mut tx,
            &NewJob::new("test_noop", json!({"i": i})).queue("latency"),
        )
        .await
        .expect("insert");
        let insert_took = inserting.elapsed();
        tx.commit().await.expect("commit");
        if i >= 100 {
            whole.push(started.elapsed());
            in_tx.push(insert_took);
        }
    }
    for (what, mut samples) in [("insert+commit", whole), ("insert in caller's tx", in_tx)] {
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        println!(
            "latency    {what}, {n} samples: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            pct(0.50).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0,
            samples[samples.len() - 1].as_secs_f64() * 1000.0
        );
    }
    bench.drop_db().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing: run either way.
    let jobs = env_usize("BENCH_JOBS", 100_000);
    let concurrency = env_usize("BENCH_CONCURRENCY", 1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        insert_latency(2000).await;
        burn_down(1, jobs, concurrency).await;
        burn_down(2, jobs, concurrency).await;
    });
}
