//! The job engine under faults (CONTRACT §7): a database outage while jobs finish, outcomes
//! PostgreSQL cannot store, and jobs whose last attempt ends by any path.

use crate::common;
use crate::jobs_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use jobs_support::*;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use vsm::jobs::{JobState, NewJob, Outcome};
use vsm::shutdown::Shutdown;

/// Longer than the acknowledger's old retry budget (8 tries, ~7 s of backoff plus connects).
const OUTAGE: Duration = Duration::from_secs(13);

#[tokio::test]
async fn an_outcome_reached_during_a_database_outage_is_written_once_the_database_is_back() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let r = release.clone();
    let mut opts = options(&[("default", 2)]);
    // Long enough that the rescuer cannot be what saves the job within this test.
    opts.rescue_after = Duration::from_secs(60);
    let e = engine(
        &repo,
        registry(vec![Scripted::new("waiter", move |job| {
            let started_tx = started_tx.clone();
            let finished_tx = finished_tx.clone();
            let release = r.clone();
            async move {
                let _ = started_tx.send(job.id);
                release.notified().await;
                let _ = finished_tx.send(job.id);
                Ok(Outcome::Complete)
            }
        })]),
        opts,
    );
    let shutdown = Shutdown::new();
    let running = tokio::spawn(e.clone().run(shutdown.clone()));
    let id = insert(&repo, NewJob::new("waiter", json!({}))).await.id;
    let got = tokio::time::timeout(Duration::from_secs(10), started.recv()).await;
    assert_eq!(got.ok().flatten(), Some(id));

    block_connections(&db.name).await;
    release.notify_one();
    let done = tokio::time::timeout(Duration::from_secs(5), finished.recv()).await;
    assert_eq!(
        done.ok().flatten(),
        Some(id),
        "the job finished during the outage"
    );
    tokio::time::sleep(OUTAGE).await; // the outage itself, not a wait for a result
    allow_connections(&db.name).await;
    let back = Instant::now();

    let mut owner = db.owner_conn().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = get(&mut owner, id).await;
        if job.state != JobState::Executing || Instant::now() >= deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "job {} {:.2}s after the database came back",
        job.state,
        back.elapsed().as_secs_f64()
    );
    assert_eq!(job.state, JobState::Completed, "errors: {}", job.errors);
    assert_eq!(job.attempt, 1, "written, not run again");

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Waits until no job is `executing` any more; returns the jobs by id.
async fn settled(
    owner: &mut diesel_async::AsyncPgConnection,
    ids: &[uuid::Uuid],
) -> Vec<vsm::jobs::Job> {
    wait_for_count(
        owner,
        "SELECT count(*) AS n FROM jobs WHERE state IN ('available', 'executing')",
        0,
        Duration::from_secs(20),
    )
    .await;
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(get(owner, *id).await);
    }
    jobs
}

#[tokio::test]
async fn an_error_text_postgres_cannot_store_does_not_poison_its_batch() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let release = Arc::new(Notify::new());
    let (r1, r2) = (release.clone(), release.clone());
    let e = engine(
        &repo,
        registry(vec![
            Scripted::new("nul", move |_| {
                let release = r1.clone();
                async move {
                    release.notified().await;
                    Err(anyhow::anyhow!("bad\0byte"))
                }
            }),
            Scripted::new("long", |_| async {
                Err(anyhow::anyhow!("x".repeat(100_000)))
            }),
            Scripted::new("fine", move |_| {
                let release = r2.clone();
                async move {
                    release.notified().await;
                    Ok(Outcome::Complete)
                }
            }),
        ]),
        options(&[("default", 10)]),
    );
    let nul = insert(&repo, NewJob::new("nul", json!({}))).await.id;
    let long = insert(&repo, NewJob::new("long", json!({}))).await.id;
    let mut fine = Vec::new();
    for n in 0..5 {
        fine.push(insert(&repo, NewJob::new("fine", json!({"n": n}))).await.id);
    }
    let shutdown = Shutdown::new();
    let running = tokio::spawn(e.clone().run(shutdown.clone()));
    let mut owner = db.owner_conn().await;
    wait_for_count(
        &mut owner,
        "SELECT count(*) AS n FROM jobs WHERE state = 'executing'",
        6,
        Duration::from_secs(10),
    )
    .await;
    // Released together, so their outcomes share acknowledgements.
    release.notify_waiters();

    let mut ids = vec![nul, long];
    ids.extend(&fine);
    let jobs = settled(&mut owner, &ids).await;
    assert_eq!(jobs[0].state, JobState::Retryable);
    assert_eq!(jobs[0].errors[0]["error"], "badbyte", "NUL stripped");
    assert_eq!(jobs[1].state, JobState::Retryable);
    let kept = jobs[1].errors[0]["error"].as_str().unwrap();
    assert!(
        kept.len() <= vsm::jobs::executor::MAX_ERROR_LEN,
        "{}",
        kept.len()
    );
    assert!(kept.ends_with("(truncated)"));
    for job in &jobs[2..] {
        assert_eq!(job.state, JobState::Completed);
        assert_eq!(job.attempt, 1, "written once, not run again");
    }
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_batch_the_database_refuses_is_written_row_by_row() {
    use vsm::jobs::storage::{self, Ack, AckState};
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = vsm::schemas::storage::tenant::create(&repo, "acme", None)
        .await
        .unwrap();
    for n in 0..3 {
        insert(&repo, NewJob::new("w", json!({"n": n})).tenant(t.id)).await;
    }
    let mut tx = repo.system_tx().await.unwrap();
    let claimed = storage::fetch(&mut tx, "default", 10, "n1").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(claimed.len(), 3);
    let ack = |job: &vsm::jobs::Job, state, error: Option<&str>| Ack {
        id: job.id,
        attempt: job.attempt,
        state,
        scheduled_at: None,
        error: error.map(str::to_owned),
        duration_ms: 5,
        tenant: true,
    };
    // An outcome that bypassed sanitising: PostgreSQL refuses the NUL, and with it the batch.
    let mut acks = vec![
        ack(&claimed[0], AckState::Completed, None),
        ack(&claimed[1], AckState::Discarded, Some("no\0good")),
        ack(&claimed[2], AckState::Completed, None),
    ];
    let mut discarded = Vec::new();
    vsm::jobs::executor::record_outcomes(&repo, "n1", &mut acks, &mut discarded)
        .await
        .unwrap();
    assert!(acks.is_empty(), "every outcome written");
    assert_eq!(discarded, [claimed[1].id]);
    let mut owner = db.owner_conn().await;
    assert_eq!(
        get(&mut owner, claimed[0].id).await.state,
        JobState::Completed
    );
    assert_eq!(
        get(&mut owner, claimed[2].id).await.state,
        JobState::Completed
    );
    let bad = get(&mut owner, claimed[1].id).await;
    assert_eq!(
        bad.state,
        JobState::Discarded,
        "still recorded, in the state it reached"
    );
    let error = bad.errors[0]["error"].as_str().unwrap();
    assert!(error.contains("could not be stored"), "{error}");
    assert_eq!(
        count(&mut owner, "SELECT count(*) AS n FROM task_log").await,
        3
    );
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM events WHERE topic = 'job.discarded'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn on_discarded_runs_for_a_last_attempt_ending_by_error_timeout_panic_or_discard() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (tx, mut discarded) = mpsc::unbounded_channel();
    let e = engine(
        &repo,
        registry(vec![
            Scripted::new("fails", |_| async { Err(anyhow::anyhow!("boom")) })
                .on_discarded(tx.clone()),
            Scripted::new("hangs", |_| async {
                std::future::pending::<()>().await;
                Ok(Outcome::Complete)
            })
            .timeout(Duration::from_millis(100))
            .on_discarded(tx.clone()),
            Scripted::new("panics", |_| async { panic!("kaboom") }).on_discarded(tx.clone()),
            Scripted::new("gives_up", |_| async {
                Ok(Outcome::Discard("not worth it".into()))
            })
            .on_discarded(tx.clone()),
            Scripted::new("retries", |_| async { Err(anyhow::anyhow!("again")) }).on_discarded(tx),
        ]),
        options(&[("default", 10)]),
    );
    let mut expected = std::collections::BTreeMap::new();
    for (worker, reason) in [
        ("fails", "boom"),
        ("hangs", "timed out"),
        ("panics", "panicked: kaboom"),
        ("gives_up", "not worth it"),
    ] {
        let id = insert(&repo, NewJob::new(worker, json!({})).max_attempts(1))
            .await
            .id;
        expected.insert(id, reason);
    }
    // Not its last attempt: retried, not discarded, so no hook.
    insert(&repo, NewJob::new("retries", json!({})).max_attempts(2)).await;
    assert_eq!(e.drain("default").await.unwrap(), 5);
    let mut seen = std::collections::BTreeMap::new();
    while let Ok((id, reason)) = discarded.try_recv() {
        seen.insert(id, reason);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    for (id, reason) in expected {
        assert!(seen[&id].contains(reason), "{}: {reason}", seen[&id]);
    }
}

#[tokio::test]
async fn a_job_the_rescuer_discards_runs_on_discarded_and_is_logged_like_any_other() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = vsm::schemas::storage::tenant::create(&repo, "acme", None)
        .await
        .unwrap();
    let (tx, mut discarded) = mpsc::unbounded_channel();
    let e = engine(
        &repo,
        registry(vec![
            Scripted::new("w", |_| async { Ok(Outcome::Complete) }).on_discarded(tx),
        ]),
        options(&[("other", 1)]),
    );
    let id = insert(
        &repo,
        NewJob::new("w", json!({})).max_attempts(1).tenant(t.id),
    )
    .await
    .id;
    let mut sys = repo.system_tx().await.unwrap();
    vsm::jobs::storage::heartbeat(&mut sys, "dead", &["default".into()])
        .await
        .unwrap();
    vsm::jobs::storage::fetch(&mut sys, "default", 10, "dead")
        .await
        .unwrap();
    sys.commit().await.unwrap();
    let mut owner = db.owner_conn().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE job_nodes SET heartbeat_at = now() - interval '1 hour' WHERE id = 'dead'",
        ),
        &mut owner,
    )
    .await
    .unwrap();
    // The running engine's own rescuer takes it.
    let shutdown = Shutdown::new();
    let running = tokio::spawn(e.clone().run(shutdown.clone()));
    let (got, reason) = tokio::time::timeout(Duration::from_secs(15), discarded.recv())
        .await
        .expect("on_discarded called")
        .unwrap();
    assert_eq!(got, id);
    assert!(
        reason.contains("node dead stopped heartbeating"),
        "{reason}"
    );
    assert_eq!(get(&mut owner, id).await.state, JobState::Discarded);
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM task_log WHERE state = 'discarded' AND attempt = 1"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM events WHERE topic = 'job.discarded'"
        )
        .await,
        1
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_node_stopping_during_an_outage_leaves_its_unwritten_jobs_to_the_rescuer() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut opts = options(&[("default", 2)]);
    opts.grace = Duration::from_secs(1);
    let node = opts.node.clone();
    let e = engine(
        &repo,
        registry(vec![Scripted::new("waiter", move |job| {
            let started_tx = started_tx.clone();
            let finished_tx = finished_tx.clone();
            let release = r.clone();
            async move {
                let _ = started_tx.send(job.id);
                release.notified().await;
                let _ = finished_tx.send(job.id);
                Ok(Outcome::Complete)
            }
        })]),
        opts,
    );
    let shutdown = Shutdown::new();
    let running = tokio::spawn(e.clone().run(shutdown.clone()));
    let id = insert(&repo, NewJob::new("waiter", json!({}))).await.id;
    let got = tokio::time::timeout(Duration::from_secs(10), started.recv()).await;
    assert_eq!(got.ok().flatten(), Some(id));

    block_connections(&db.name).await;
    release.notify_one();
    let done = tokio::time::timeout(Duration::from_secs(5), finished.recv()).await;
    assert_eq!(done.ok().flatten(), Some(id));
    let stopping = Instant::now();
    shutdown.trigger();
    // The acknowledger gives up after the grace period instead of holding the process.
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the engine stops within the grace period")
        .unwrap()
        .unwrap();
    eprintln!(
        "stopped {:.2}s after shutdown",
        stopping.elapsed().as_secs_f64()
    );
    allow_connections(&db.name).await;

    // The node's heartbeat stopped with it, so the job is rescued, not stranded.
    let mut owner = db.owner_conn().await;
    assert_eq!(
        count(
            &mut owner,
            &format!(
                "SELECT count(*) AS n FROM job_nodes WHERE id = '{node}' \
                 AND heartbeat_at < now() - interval '1 second'"
            )
        )
        .await,
        1,
        "the node's row is stale"
    );
    let rescued = vsm::jobs::rescuer::rescue_once(&repo, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(get(&mut owner, id).await.state, JobState::Available);
}
