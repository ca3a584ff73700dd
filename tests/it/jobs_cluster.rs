//! Several `vsm work` processes sharing one database (CONTRACT §7): exactly-once execution
//! within concurrency limits, rescue after `kill -9`, the operations listener, and `vsm all`
//! running workers too.

use crate::common;
use crate::jobs_support;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{TestDb, free_port, vsm};
use jobs_support::{count, wait_for_count};
use serde_json::json;
use vsm::jobs::{NewJob, storage};

struct Worker {
    child: Child,
    port: u16,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `vsm work` on `queue`; a node silent for `rescue_after` seconds counts as dead.
fn start_worker(db: &TestDb, probe_dir: &Path, queue: &str, rescue_after: u64) -> Worker {
    let port = free_port();
    let child = vsm()
        .args([
            "work",
            "--queue",
            queue,
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("DATABASE_URL", db.url())
        .env("VSM_JOBS__TEST_WORKERS", "true")
        .env("VSM_JOBS__TEST_PROBE_DIR", probe_dir)
        .env("VSM_JOBS__HEARTBEAT_INTERVAL_SECS", "1")
        .env("VSM_JOBS__RESCUE_AFTER_SECS", rescue_after.to_string())
        .env("VSM_JOBS__POLL_INTERVAL_MS", "200")
        .env("VSM_SERVER__SHUTDOWN_GRACE_SECS", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vsm work");
    Worker { child, port }
}

async fn wait_ready(w: &mut Worker) {
    let url = format!("http://127.0.0.1:{}/ready", w.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            panic!("vsm work exited early: {status}");
        }
        if let Ok(res) = reqwest::get(&url).await
            && res.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "vsm work never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm_and_wait(w: &mut Worker) -> Option<i32> {
    let pid = w.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "vsm work did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Probe lines by process: `(job id, attempt, running)`.
fn probe_lines(dir: &Path) -> HashMap<String, Vec<(String, i32, usize)>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = text
            .lines()
            .map(|l| {
                let mut parts = l.split(' ');
                let id = parts.next().unwrap().to_owned();
                let attempt = parts.next().unwrap().parse().unwrap();
                let running = parts.next().unwrap().parse().unwrap();
                (id, attempt, running)
            })
            .collect();
        out.insert(
            path.file_name().unwrap().to_string_lossy().into_owned(),
            lines,
        );
    }
    out
}

async fn insert_probes(db: &TestDb, n: usize, queue: &str, args: serde_json::Value) {
    let repo = db.repo().await;
    let jobs: Vec<NewJob> = (0..n)
        .map(|_| NewJob::new("test_probe", args.clone()).queue(queue))
        .collect();
    for chunk in jobs.chunks(2000) {
        let mut tx = repo.system_tx().await.unwrap();
        storage::insert_all(&mut tx, chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn two_workers_run_ten_thousand_jobs_exactly_once_within_their_limits() {
    const JOBS: usize = 10_000;
    const LIMIT: usize = 7;
    let db = TestDb::migrated().await;
    let probes = tempfile::tempdir().unwrap();
    let queue = format!("probe={LIMIT}");
    // A generous rescue window: on a loaded test machine a live node's heartbeat may lag, and
    // a rescue would (rightly) run its jobs again.
    let mut a = start_worker(&db, probes.path(), &queue, 20);
    let mut b = start_worker(&db, probes.path(), &queue, 20);
    wait_ready(&mut a).await;
    wait_ready(&mut b).await;
    insert_probes(&db, JOBS, "probe", json!({"sleep_ms": 1})).await;

    let mut owner = db.owner_conn().await;
    let started = Instant::now();
    wait_for_count(
        &mut owner,
        "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND state = 'completed'",
        JOBS as i64,
        // What this test proves is exactly-once within the limits, not speed (benches/ measure
        // that): the bound only has to end a stuck run, on a machine running the whole suite.
        Duration::from_secs(240),
    )
    .await;
    eprintln!(
        "{JOBS} jobs on two workers in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND attempt <> 1"
        )
        .await,
        0
    );

    let lines = probe_lines(probes.path());
    assert_eq!(
        lines.len(),
        2,
        "both processes ran jobs: {:?}",
        lines.keys()
    );
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for (file, entries) in &lines {
        let peak = entries.iter().map(|e| e.2).max().unwrap();
        assert!(
            peak <= LIMIT,
            "{file}: {peak} jobs ran at once, limit {LIMIT}"
        );
        assert!(peak > 1, "{file}: jobs never ran concurrently");
        for (id, _, _) in entries {
            *runs.entry(id).or_default() += 1;
        }
    }
    assert_eq!(runs.len(), JOBS);
    assert!(runs.values().all(|n| *n == 1), "a job ran twice");

    // The operations listener: metrics (lint-clean) with job counters, health, readiness.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", a.port))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for name in [
        "cybernetic_jobs_total{queue=\"probe\",state=\"completed\",worker=\"test_probe\"}",
        "cybernetic_job_duration_seconds_bucket",
        "cybernetic_job_queue_time_seconds_bucket",
        "cybernetic_build_info",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let health = reqwest::get(format!("http://127.0.0.1:{}/health", b.port))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    assert_eq!(sigterm_and_wait(&mut a), Some(0));
    assert_eq!(sigterm_and_wait(&mut b), Some(0));
    assert_eq!(
        count(&mut owner, "SELECT count(*) AS n FROM job_nodes").await,
        0
    );
}

#[tokio::test]
async fn jobs_of_a_killed_worker_are_finished_by_another_within_a_minute() {
    const HELD: usize = 5;
    let db = TestDb::migrated().await;
    let probes = tempfile::tempdir().unwrap();
    let mut a = start_worker(&db, probes.path(), &format!("probe={HELD}"), 3);
    wait_ready(&mut a).await;
    // Each job's first attempt blocks for a minute: A holds all of them when it dies.
    insert_probes(
        &db,
        HELD,
        "probe",
        json!({"sleep_ms": 60_000, "sleep_attempts": 1}),
    )
    .await;
    let mut owner = db.owner_conn().await;
    wait_for_count(
        &mut owner,
        "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND state = 'executing'",
        HELD as i64,
        Duration::from_secs(20),
    )
    .await;
    // A job is `executing` from its fetch on; wait until each one has really started in A
    // (written its probe line), or A could die before running some of them.
    crate::common::eventually(Duration::from_secs(20), "A started every job", || async {
        probe_lines(probes.path())
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == HELD
    })
    .await;

    let b = start_worker(&db, probes.path(), &format!("probe={HELD}"), 3);
    let _ = b.port;
    let pid = a.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    let killed = Instant::now();
    let _ = a.child.wait();

    wait_for_count(
        &mut owner,
        "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND state = 'completed'",
        HELD as i64,
        Duration::from_secs(60),
    )
    .await;
    let took = killed.elapsed();
    eprintln!(
        "rescued and completed {HELD} jobs {:.1}s after kill -9",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(60));
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM jobs WHERE attempt = 2 AND errors->0->>'error' LIKE 'rescued: node % stopped heartbeating'"
        )
        .await,
        HELD as i64
    );
    // Each job ran twice in total: the killed attempt and the rescue, in different processes.
    let lines = probe_lines(probes.path());
    assert_eq!(lines.len(), 2);
    assert!(lines.values().all(|l| l.len() == HELD));
}

#[tokio::test]
async fn vsm_all_runs_the_workers_too() {
    let db = TestDb::missing();
    let probes = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut all = Worker {
        child: vsm()
            .args(["all", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", db.url())
            .env("VSM_JOBS__TEST_WORKERS", "true")
            .env("VSM_JOBS__TEST_PROBE_DIR", probes.path())
            .env("VSM_SERVER__SHUTDOWN_GRACE_SECS", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
        port,
    };
    wait_ready(&mut all).await;
    insert_probes(&db, 3, "default", json!({})).await;
    let mut owner = db.owner_conn().await;
    wait_for_count(
        &mut owner,
        "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND state = 'completed'",
        3,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(sigterm_and_wait(&mut all), Some(0));
}

#[test]
fn bad_queue_arguments_and_cron_workers_exit_2_naming_them() {
    let out = vsm()
        .args(["work", "--queue", "default=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("default=0"));

    let out = vsm()
        .args(["work"])
        .env("VSM_JOBS__RESCUE_AFTER_SECS", "600")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jobs.rescue_after_secs"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cron.toml");
    std::fs::write(
        &file,
        "[[jobs.cron]]\nname = \"x\"\nexpression = \"0 * * * *\"\nworker = \"nope\"\n",
    )
    .unwrap();
    let out = vsm()
        .args(["--config", file.to_str().unwrap(), "work"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jobs.cron[0].worker") && err.contains("nope"),
        "{err}"
    );

    std::fs::write(
        &file,
        "[[jobs.cron]]\nname = \"x\"\nexpression = \"61 * * * *\"\nworker = \"health_check\"\n",
    )
    .unwrap();
    let out = vsm()
        .args(["--config", file.to_str().unwrap(), "work"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jobs.cron[0].expression"));

    // Args the worker's Args type refuses: caught at start, not at the first slot.
    std::fs::write(
        &file,
        "[[jobs.cron]]\nname = \"x\"\nexpression = \"0 * * * *\"\nworker = \"health_check\"\nargs = { verbose = true }\n",
    )
    .unwrap();
    let out = vsm()
        .args(["--config", file.to_str().unwrap(), "work"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jobs.cron[0].args.verbose") && err.contains("unknown field"),
        "{err}"
    );
}

/// A node that is alive but slow — its jobs run several rescue windows long — keeps
/// heartbeating, so another node's rescuer never takes its jobs: each runs exactly once.
#[tokio::test]
async fn jobs_of_a_slow_but_alive_worker_are_not_run_twice() {
    const HELD: usize = 3;
    let db = TestDb::migrated().await;
    let probes = tempfile::tempdir().unwrap();
    let mut a = start_worker(&db, probes.path(), &format!("probe={HELD}"), 2);
    wait_ready(&mut a).await;
    // B rescues every half second (rescue_after 2 s) while A's jobs run 8 s each.
    let mut b = start_worker(&db, probes.path(), "other=1", 2);
    wait_ready(&mut b).await;
    insert_probes(&db, HELD, "probe", json!({"sleep_ms": 8_000})).await;
    let mut owner = db.owner_conn().await;
    wait_for_count(
        &mut owner,
        "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND state = 'completed'",
        HELD as i64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM jobs WHERE worker = 'test_probe' AND attempt = 1 AND errors = '[]'"
        )
        .await,
        HELD as i64,
        "a slow job was rescued"
    );
    let lines = probe_lines(probes.path());
    assert_eq!(lines.values().map(Vec::len).sum::<usize>(), HELD);
}
