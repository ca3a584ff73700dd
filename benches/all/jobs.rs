//! The job engine next to its references, each pair on a fresh database in one run:
//! - bulk insert of N jobs (`storage::insert_all`, 1,000 per transaction) vs Graphile
//!   Worker's `addJobs` (1,000 per call), three interleaved rounds a side, medians reported;
//! - burn-down of N `test_noop` jobs by one `vsm work` (inserted while the queue is paused,
//!   then resumed; the clock runs until none is available or executing) vs Graphile Worker
//!   batched (localQueue 500) vs the bare-SQL claim of 50 rows per statement (pgbench);
//! - the plan's §8 enqueue budget: one job per transaction (begin, insert + NOTIFY, commit).
//!
//! The bulk insert pair also runs alone as the `insert` section (`cargo bench --bench all --
//! insert`), which only runs when named.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use vsm::config::{DatabaseConfig, ServiceUrl};
use vsm::jobs::{NewJob, storage};
use vsm::repo::Repo;

use crate::support::{
    Budget, Db, Killed, Latency, Report, Row, Sizes, median, pgbench, terminate, vsm,
};

const QUEUE: &str = "bench";
/// For no-op jobs the queue limit is what bounds the fetch batch.
const CONCURRENCY: usize = 1000;

async fn repo(db: &Db) -> Repo {
    let cfg = DatabaseConfig {
        url: ServiceUrl::parse(&db.url).expect("url"),
        pool_size: 4,
        ..DatabaseConfig::default()
    };
    Repo::connect(&cfg).await.expect("connect")
}

/// Whether any job is still available or executing. Cheap on purpose (EXISTS on the partial
/// indexes, one persistent connection): the poll must not steal the CPU it measures.
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

/// What a stalled burn-down left behind: jobs by state and node, the nodes, and what the
/// database's sessions are waiting on.
async fn stall_report(conn: &mut diesel_async::AsyncPgConnection) -> String {
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    let mut report = String::new();
    for sql in [
        "SELECT format('%s %s on %s', count(*), state, coalesce(attempted_by, '-')) AS line \
         FROM jobs GROUP BY state, attempted_by",
        "SELECT format('node %s beat %s ago', id, now() - heartbeat_at) AS line FROM job_nodes",
        "SELECT format('queue %s paused %s', name, paused) AS line FROM job_queues",
        "SELECT format('session %s %s/%s: %s', state, wait_event_type, wait_event, \
         left(query, 100)) AS line FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()",
    ] {
        match diesel::sql_query(sql).load::<Line>(conn).await {
            Ok(lines) => lines.into_iter().for_each(|l| {
                report.push_str("\n  ");
                report.push_str(&l.line);
            }),
            Err(e) => report.push_str(&format!("\n  ({sql}: {e})")),
        }
    }
    report
}

fn start_worker(db: &Db) -> Child {
    vsm()
        .args([
            "work",
            "--queue",
            &format!("{QUEUE}={CONCURRENCY}"),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &db.url)
        .env("VSM_JOBS__TEST_WORKERS", "true")
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

/// Inserts `jobs` paused jobs 1,000 per transaction; returns jobs per second.
async fn bulk_insert(repo: &Repo, jobs: usize) -> f64 {
    let batch: Vec<NewJob> = (0..1000)
        .map(|_| NewJob::new("test_noop", json!({})).queue(QUEUE))
        .collect();
    let started = Instant::now();
    for left in (1..=jobs.div_ceil(1000)).rev() {
        let n = if left == 1 && jobs % 1000 != 0 {
            jobs % 1000
        } else {
            1000
        };
        let mut tx = repo.system_tx().await.expect("tx");
        storage::insert_all(&mut tx, &batch[..n])
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
    }
    jobs as f64 / started.elapsed().as_secs_f64()
}

/// Returns (bulk insert jobs/s, burn-down jobs/s) of one `vsm work`.
async fn vsm_burn_down(jobs: usize) -> (f64, f64) {
    let db = Db::create();
    let repo = repo(&db).await;
    set_paused(&repo, true).await;
    let insert_rate = bulk_insert(&repo, jobs).await;
    // Killed if the burn-down stalls, so no worker outlives the benchmark.
    let mut worker = Killed(start_worker(&db));
    // Let the worker start and register before the clock runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut poll =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&db.url)
            .await
            .expect("conn");
    let started = Instant::now();
    set_paused(&repo, false).await;
    while busy(&mut poll).await {
        if started.elapsed() > Duration::from_secs(300) {
            panic!("burn-down stalled: {}", stall_report(&mut poll).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    terminate(&mut worker.0);
    (insert_rate, rate)
}

/// The bare-SQL claim: pgbench claiming 50 available rows per statement (SKIP LOCKED, the
/// same ordering and index as the engine's fetch) on 2 connections until all are claimed.
async fn bare_claim(jobs: usize) -> f64 {
    let db = Db::create();
    let repo = repo(&db).await;
    set_paused(&repo, true).await;
    bulk_insert(&repo, jobs).await;
    let claim = format!(
        "UPDATE jobs SET state = 'executing', attempt = attempt + 1, attempted_at = now(),
           attempted_by = 'pgbench'
         WHERE id IN (SELECT id FROM jobs WHERE state = 'available' AND queue = '{QUEUE}'
                      ORDER BY priority, scheduled_at, id LIMIT 50 FOR UPDATE SKIP LOCKED);"
    );
    let per_client = (jobs / 50 / 2).max(1).to_string();
    let tps = pgbench(
        &db.url,
        &claim,
        &["-c", "2", "-j", "2", "-t", &per_client],
        Some("vsm_system"),
    );
    let left: i64 = db
        .psql("SELECT count(*) FROM jobs WHERE state = 'available'")
        .parse()
        .expect("count");
    assert!(left < 100, "the bare claim left {left} jobs");
    tps * 50.0
}

/// Graphile Worker from `benches/graphile` (npm ci there first): (addJobs/s, burn-down/s), the
/// burn-down `None` when `insert_only`.
fn graphile(jobs: usize, insert_only: bool) -> Result<(f64, Option<f64>), String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/graphile");
    if !std::path::Path::new(dir).join("node_modules").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(dir)
            .status()
            .map_err(|e| format!("npm: {e}"))?;
        if !ok.success() {
            return Err("npm ci in benches/graphile failed".into());
        }
    }
    // A database without vsm's schema: Graphile creates its own.
    let db = Db::create();
    let mut args = vec!["burn.mjs".to_owned(), db.url.clone(), jobs.to_string()];
    if insert_only {
        args.push("insert-only".into());
    }
    let out = Command::new("node")
        .args(&args)
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.lines().last().unwrap_or(""))
        .map_err(|e| format!("graphile output {line:?}: {e}"))?;
    match (v["insert_per_sec"].as_f64(), v["burn_per_sec"].as_f64()) {
        (Some(i), b) if b.is_some() || insert_only => Ok((i, b)),
        _ => Err(format!("graphile output {line:?}")),
    }
}

/// The §8 enqueue budget: a whole transaction with one insert (and its NOTIFY) per sample.
async fn enqueue_latency(n: usize) -> Latency {
    let db = Db::create();
    let repo = repo(&db).await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let mut tx = repo.system_tx().await.expect("tx");
        storage::insert(
            &mut tx,
            &NewJob::new("test_noop", json!({"i": i})).queue("latency"),
        )
        .await
        .expect("insert");
        tx.commit().await.expect("commit");
        if i >= n / 10 {
            samples.push(started.elapsed());
        }
    }
    Latency::of(samples)
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let jobs = sizes.jobs;
    let (insert, burn) = rt.block_on(vsm_burn_down(jobs));
    let claim = rt.block_on(bare_claim(jobs));
    let graphile = graphile(jobs, false);
    let (g_insert, g_burn) = match &graphile {
        Ok(pair) => (Some(pair.0), pair.1),
        Err(e) => {
            println!("graphile worker not measured: {e}");
            (None, None)
        }
    };
    let burn_ratio = g_burn.map(|g| burn / g);
    report.rows.push(Row {
        what: "burn-down of no-op jobs, one `vsm work`",
        vsm: format!("{burn:.0} jobs/s ({jobs} jobs)"),
        reference: format!(
            "Graphile batched {}; bare-SQL claim x50 {claim:.0} rows/s",
            fmt(g_burn, "jobs/s")
        ),
        ratio: burn_ratio,
        goal: ">= 1.5x Graphile; >= 0.5x bare",
        met: burn_ratio.is_some_and(|r| r >= 1.5) && burn >= 0.5 * claim,
        data: json!({"jobs": jobs, "vsm_jobs_per_sec": burn, "graphile_jobs_per_sec": g_burn,
                     "bare_claim_rows_per_sec": claim, "bare_ratio": burn / claim}),
    });
    // Four more rounds of the insert pair, interleaved (one run swings too much).
    let mut rounds = vec![Round {
        vsm: insert,
        graphile: g_insert,
    }];
    insert_rounds(&rt, jobs, 4, &mut rounds);
    report.rows.push(insert_row(jobs, &rounds));
    let enqueue = rt.block_on(enqueue_latency(sizes.samples));
    report.budgets.push(Budget {
        what: "background job enqueue",
        latency: enqueue,
        budget: [5.0, 10.0, 20.0],
    });
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.0} {unit}"))
        .unwrap_or_else(|| "not measured".into())
}

/// The bulk insert row: vsm's `insert_all` against Graphile's `addJobs`. The ratio is the
/// median of the rounds' own ratios, as for the HTTP pairs: both sides of a round ran on the
/// machine as it was then, so its drift between rounds cancels out; the rates shown are each
/// side's median.
fn insert_row(jobs: usize, rounds: &[Round]) -> Row {
    let insert = median(rounds.iter().map(|r| r.vsm));
    let measured: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| r.graphile.map(|g| (r.vsm, g)))
        .collect();
    let g_insert = (!measured.is_empty()).then(|| median(measured.iter().map(|(_, g)| *g)));
    let ratios: Vec<f64> = measured.iter().map(|(vsm, g)| vsm / g).collect();
    let ratio = (!ratios.is_empty()).then(|| median(ratios.iter().copied()));
    Row {
        what: "bulk insert of jobs (1,000 per transaction)",
        vsm: format!("{insert:.0} jobs/s"),
        reference: format!("Graphile addJobs {}", fmt(g_insert, "jobs/s")),
        ratio,
        goal: ">= 2x",
        met: ratio.is_some_and(|r| r >= 2.0),
        data: json!({"jobs": jobs, "vsm_jobs_per_sec": insert, "graphile_jobs_per_sec": g_insert,
                     "rounds": {"vsm": rounds.iter().map(|r| r.vsm).collect::<Vec<_>>(),
                                "graphile": rounds.iter().map(|r| r.graphile).collect::<Vec<_>>(),
                                "ratios": ratios}}),
    }
}

/// One round of the insert pair: jobs/s of each side (Graphile's if it could be run).
struct Round {
    vsm: f64,
    graphile: Option<f64>,
}

/// `rounds` more of the insert pair, each on fresh databases; which side goes first swaps
/// every round (the first, in [`run`], was vsm).
fn insert_rounds(rt: &tokio::runtime::Runtime, jobs: usize, rounds: usize, into: &mut Vec<Round>) {
    let vsm = || {
        rt.block_on(async {
            let db = Db::create();
            let repo = repo(&db).await;
            set_paused(&repo, true).await;
            bulk_insert(&repo, jobs).await
        })
    };
    let graphile = || match graphile(jobs, true) {
        Ok((i, _)) => Some(i),
        Err(e) => {
            println!("graphile worker not measured: {e}");
            None
        }
    };
    for round in 0..rounds {
        let (vsm, graphile) = if round % 2 == 0 {
            let graphile = graphile();
            (vsm(), graphile)
        } else {
            (vsm(), graphile())
        };
        into.push(Round { vsm, graphile });
    }
}

/// The bulk insert pair alone (section `insert`): the same measurement as in [`run`], without
/// the burn-downs.
pub fn insert(sizes: &Sizes, report: &mut Report) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rounds = Vec::new();
    insert_rounds(&rt, sizes.jobs, 5, &mut rounds);
    report.rows.push(insert_row(sizes.jobs, &rounds));
}

/// Rescue after `kill -9`: node A runs a job that sleeps on its first attempt, node B idles;
/// A is killed and the clock runs until B has completed the job's second attempt. With the
/// default configuration (`tiny` shortens the heartbeat so CI stays fast).
pub fn rescue(sizes: &Sizes, report: &mut Report) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let timing: Vec<(&str, String)> = if sizes.tiny {
        vec![
            ("VSM_JOBS__HEARTBEAT_INTERVAL_SECS", "1".into()),
            ("VSM_JOBS__RESCUE_AFTER_SECS", "2".into()),
        ]
    } else {
        Vec::new()
    };
    let db = Db::create();
    let node = |db: &Db| {
        let mut cmd = vsm();
        cmd.args([
            "work",
            "--queue",
            &format!("{QUEUE}=10"),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &db.url)
        .env("VSM_JOBS__TEST_WORKERS", "true");
        for (k, v) in &timing {
            cmd.env(k, v);
        }
        Killed(cmd.spawn().expect("spawn vsm work"))
    };
    let mut a = node(&db);
    rt.block_on(async {
        let repo = repo(&db).await;
        let mut tx = repo.system_tx().await.expect("tx");
        storage::insert(
            &mut tx,
            &NewJob::new(
                "test_probe",
                json!({"sleep_ms": 600_000, "sleep_attempts": 1}),
            )
            .queue(QUEUE),
        )
        .await
        .expect("insert");
        tx.commit().await.expect("commit");
    });
    let state = || db.psql("SELECT state || ' ' || attempt FROM jobs WHERE worker = 'test_probe'");
    let wait = |want: &str, limit: Duration| {
        let started = Instant::now();
        while state() != want {
            assert!(
                started.elapsed() < limit,
                "job never reached {want:?}: {}",
                state()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("executing 1", Duration::from_secs(60));
    let _b = node(&db);
    // B is up once its heartbeat row exists.
    let started = Instant::now();
    while db.psql("SELECT count(*) FROM job_nodes") != "2" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node B never heartbeated"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    let _ = a.0.kill();
    let _ = a.0.wait();
    wait("completed 2", Duration::from_secs(180));
    let secs = killed.elapsed().as_secs_f64();
    report.rows.push(Row {
        what: "rescue after kill -9 of a worker",
        vsm: format!(
            "{secs:.1} s{}",
            if sizes.tiny {
                " (tiny: 1 s heartbeat)"
            } else {
                ""
            }
        ),
        reference: "Oban Lifeline 60 min; Graphile 4 h (their defaults)".into(),
        ratio: None,
        goal: "<= 15 s",
        met: secs <= 15.0,
        data: json!({"seconds": secs, "tiny_timing": sizes.tiny}),
    });
}
