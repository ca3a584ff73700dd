//! The job engine against real PostgreSQL (CONTRACT §7), driven a step at a time with
//! `Engine::drain` where possible, and as a running engine where the behaviour is about running.

use crate::common;
use crate::jobs_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::TestDb;
use jobs_support::*;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;
use vsm::backoff;
use vsm::jobs::{Inserted, JobState, NewJob, Outcome, storage};
use vsm::shutdown::Shutdown;

#[tokio::test]
async fn failures_back_off_exponentially_keep_every_error_and_discard_after_max_attempts() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = vsm::schemas::storage::tenant::create(&repo, "acme", None)
        .await
        .unwrap();
    let e = engine(
        &repo,
        registry(vec![Scripted::new("flaky", |job| async move {
            Err(anyhow::anyhow!("boom on attempt {}", job.attempt))
        })]),
        options(&[("default", 5)]),
    );
    let id = insert(
        &repo,
        NewJob::new("flaky", json!({})).max_attempts(3).tenant(t.id),
    )
    .await
    .id;
    let mut owner = db.owner_conn().await;
    for attempt in 1..=3 {
        assert_eq!(e.drain("default").await.unwrap(), 1);
        let job = get(&mut owner, id).await;
        assert_eq!(job.attempt, attempt);
        let errors = job.errors.as_array().unwrap();
        assert_eq!(errors.len(), attempt as usize);
        assert_eq!(
            errors.last().unwrap()["error"],
            format!("boom on attempt {attempt}")
        );
        assert_eq!(errors.last().unwrap()["attempt"], attempt);
        if attempt < 3 {
            assert_eq!(job.state, JobState::Retryable);
            let delay = secs_from_now(job.scheduled_at);
            let base = backoff::base(attempt).as_secs_f64();
            assert!(
                delay >= base * (1.0 - backoff::JITTER) - 1.0
                    && delay <= base * (1.0 + backoff::JITTER),
                "attempt {attempt}: retry in {delay}s, expected {base}s ± 10%"
            );
            // Not before its time...
            assert_eq!(e.drain("default").await.unwrap(), 0);
            // ...and as soon as it is due.
            make_due(&mut owner, id).await;
        } else {
            assert_eq!(job.state, JobState::Discarded);
            assert!(job.discarded_at.is_some());
        }
    }
    // Each attempt is in the tenant's task log.
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    let states: Vec<String> = {
        use diesel::prelude::*;
        use vsm::schemas::schema::task_log;
        diesel_async::RunQueryDsl::load(
            task_log::table
                .filter(task_log::job_id.eq(id))
                .order(task_log::attempt)
                .select(task_log::state),
            &mut *tx,
        )
        .await
        .unwrap()
    };
    assert_eq!(states, ["retryable", "retryable", "discarded"]);
    // A discarded job raised a job.discarded event for its tenant.
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
async fn snoozing_reschedules_without_using_an_attempt() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let e = engine(
        &repo,
        registry(vec![Scripted::new("sleepy", |job| async move {
            if job.meta.get("snoozed").is_none() {
                Ok(Outcome::Snooze(Duration::from_secs(60)))
            } else {
                Ok(Outcome::Complete)
            }
        })]),
        options(&[("default", 5)]),
    );
    let id = insert(&repo, NewJob::new("sleepy", json!({})).max_attempts(1))
        .await
        .id;
    let mut owner = db.owner_conn().await;
    assert_eq!(e.drain("default").await.unwrap(), 1);
    let job = get(&mut owner, id).await;
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.attempt, 0, "a snooze gives the attempt back");
    assert_eq!(job.meta["snoozed"], 1);
    let delay = secs_from_now(job.scheduled_at);
    assert!((58.0..=60.5).contains(&delay), "{delay}");
    make_due(&mut owner, id).await;
    // max_attempts is 1: had the snooze used it, this run would be its second attempt.
    assert_eq!(e.drain("default").await.unwrap(), 1);
    let job = get(&mut owner, id).await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempt, 1);
}

#[tokio::test]
async fn worker_outcomes_cancel_and_discard_are_final_with_their_reason() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let e = engine(
        &repo,
        registry(vec![
            Scripted::new("quitter", |_| async {
                Ok(Outcome::Cancel("not needed".into()))
            }),
            Scripted::new("hopeless", |_| async {
                Ok(Outcome::Discard("bad input".into()))
            }),
        ]),
        options(&[("default", 5)]),
    );
    let c = insert(&repo, NewJob::new("quitter", json!({}))).await.id;
    let d = insert(&repo, NewJob::new("hopeless", json!({}))).await.id;
    assert_eq!(e.drain("default").await.unwrap(), 2);
    let mut owner = db.owner_conn().await;
    let c = get(&mut owner, c).await;
    assert_eq!(
        (c.state.as_str(), c.errors[0]["error"].as_str()),
        ("cancelled", Some("not needed"))
    );
    assert!(c.cancelled_at.is_some());
    let d = get(&mut owner, d).await;
    assert_eq!(
        (d.state.as_str(), d.errors[0]["error"].as_str()),
        ("discarded", Some("bad input"))
    );
}

#[tokio::test]
async fn a_discarded_job_can_be_retried() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let e = engine(
        &repo,
        registry(vec![Scripted::new("second_time_lucky", |job| async move {
            if job.attempt == 1 {
                Err(anyhow::anyhow!("not yet"))
            } else {
                Ok(Outcome::Complete)
            }
        })]),
        options(&[("default", 5)]),
    );
    let id = insert(
        &repo,
        NewJob::new("second_time_lucky", json!({})).max_attempts(1),
    )
    .await
    .id;
    let mut owner = db.owner_conn().await;
    e.drain("default").await.unwrap();
    assert_eq!(get(&mut owner, id).await.state, JobState::Discarded);

    let mut tx = repo.system_tx().await.unwrap();
    let retried = storage::retry(&mut tx, id).await.unwrap().expect("retried");
    tx.commit().await.unwrap();
    assert_eq!(retried.state, JobState::Available);
    assert_eq!(retried.max_attempts, 2, "one more attempt than it used");
    assert!(retried.discarded_at.is_none());

    assert_eq!(e.drain("default").await.unwrap(), 1);
    let job = get(&mut owner, id).await;
    assert_eq!((job.state.as_str(), job.attempt), ("completed", 2));
    assert_eq!(
        job.errors.as_array().unwrap().len(),
        1,
        "the first attempt's error is kept"
    );
}

#[tokio::test]
async fn a_unique_insert_returns_the_existing_job() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let unique = |args| NewJob::new("w", args).unique(Duration::from_secs(60));

    let mut tx = repo.system_tx().await.unwrap();
    let first = storage::insert(&mut tx, &unique(json!({"a": 1, "b": 2})))
        .await
        .unwrap();
    // Same args in another key order: the same job.
    let again = storage::insert(&mut tx, &unique(json!({"b": 2, "a": 1})))
        .await
        .unwrap();
    let other = storage::insert(&mut tx, &unique(json!({"a": 2})))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(first, Inserted::New(_)));
    assert!(
        matches!(&again, Inserted::Existing(j) if j.id == first.job().id),
        "{again:?}"
    );
    assert!(matches!(other, Inserted::New(_)));

    // Concurrent inserts of one unique job: exactly one inserts.
    let results = futures_util::future::join_all((0..6).map(|_| {
        let repo = repo.clone();
        async move {
            let mut tx = repo.system_tx().await.unwrap();
            let r = storage::insert(&mut tx, &unique(json!({"race": true})))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            r
        }
    }))
    .await;
    let ids: std::collections::HashSet<Uuid> = results.iter().map(|r| r.job().id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Inserted::New(_)))
            .count(),
        1
    );

    // Once the job is final, a new one may be inserted.
    let mut owner = db.owner_conn().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE jobs SET state = 'completed', completed_at = now()"),
        &mut owner,
    )
    .await
    .unwrap();
    let mut tx = repo.system_tx().await.unwrap();
    let after = storage::insert(&mut tx, &unique(json!({"a": 1, "b": 2})))
        .await
        .unwrap();
    assert!(matches!(after, Inserted::New(j) if j.id != first.job().id));
}

#[tokio::test]
async fn a_scheduled_job_does_not_run_early() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let e = engine(
        &repo,
        registry(vec![Scripted::new("later", move |_| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(Outcome::Complete)
            }
        })]),
        options(&[("default", 5)]),
    );
    let id = insert(
        &repo,
        NewJob::new("later", json!({})).schedule_in(Duration::from_secs(3600)),
    )
    .await
    .id;
    let mut owner = db.owner_conn().await;
    assert_eq!(get(&mut owner, id).await.state, JobState::Scheduled);
    assert_eq!(e.drain("default").await.unwrap(), 0);
    assert_eq!(vsm::jobs::stager::stage_once(&repo).await.unwrap(), 0);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    make_due(&mut owner, id).await;
    assert_eq!(e.drain("default").await.unwrap(), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_job_inserted_in_a_rolled_back_transaction_never_exists() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = vsm::schemas::storage::tenant::create(&repo, "acme", None)
        .await
        .unwrap();
    let (other, _) = vsm::schemas::storage::tenant::create(&repo, "other", None)
        .await
        .unwrap();
    let new_episode = || vsm::schemas::vsm::episode::NewEpisode {
        id: Uuid::now_v7(),
        tenant_id: t.id,
        title: "incident".into(),
        content: "text".into(),
        source: None,
        kind: None,
        tags: vec![],
    };
    // Episode and its analysis job in one tenant transaction, rolled back: neither exists.
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    let ep = vsm::schemas::vsm::episode::insert(&mut tx, &new_episode())
        .await
        .unwrap();
    storage::insert(&mut tx, &vsm::workers::episode_analyzer::job(t.id, ep.id))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut owner = db.owner_conn().await;
    assert_eq!(count(&mut owner, "SELECT count(*) AS n FROM jobs").await, 0);
    assert_eq!(
        count(&mut owner, "SELECT count(*) AS n FROM episodes").await,
        0
    );

    // Committed: both exist, and only the owning tenant sees the job.
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    let ep = vsm::schemas::vsm::episode::insert(&mut tx, &new_episode())
        .await
        .unwrap();
    let job = storage::insert(&mut tx, &vsm::workers::episode_analyzer::job(t.id, ep.id))
        .await
        .unwrap()
        .into_job();
    tx.commit().await.unwrap();
    assert_eq!(count(&mut owner, "SELECT count(*) AS n FROM jobs").await, 1);
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    assert!(storage::find(&mut tx, job.id).await.unwrap().is_some());
    drop(tx);
    let mut tx = repo.tenant_tx(other.id).await.unwrap();
    assert!(storage::find(&mut tx, job.id).await.unwrap().is_none());
    assert!(
        storage::cancel(&mut tx, job.id).await.unwrap().is_none(),
        "cannot cancel another tenant's job"
    );
    // A tenant cannot insert a job for another tenant, nor a system job.
    let err = storage::insert(&mut tx, &NewJob::new("w", json!({})).tenant(t.id)).await;
    assert!(err.is_err());
}

#[tokio::test]
async fn panics_and_timeouts_are_recorded_as_errors() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let e = engine(
        &repo,
        registry(vec![
            Scripted::new("panicky", |_| async { panic!("kaboom") }),
            Scripted::new("slow", |_| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Outcome::Complete)
            })
            .timeout(Duration::from_millis(100)),
        ]),
        options(&[("default", 5)]),
    );
    let p = insert(&repo, NewJob::new("panicky", json!({}))).await.id;
    let s = insert(&repo, NewJob::new("slow", json!({}))).await.id;
    let u = insert(&repo, NewJob::new("nobody", json!({}))).await.id;
    assert_eq!(e.drain("default").await.unwrap(), 3);
    let mut owner = db.owner_conn().await;
    for (id, expected) in [
        (p, "panicked: kaboom"),
        (s, "timed out after 0.100s"),
        (u, "no worker named \"nobody\""),
    ] {
        let job = get(&mut owner, id).await;
        assert_eq!(job.state, JobState::Retryable);
        let error = job.errors[0]["error"].as_str().unwrap();
        assert!(error.contains(expected), "{error}");
    }
}

#[tokio::test]
async fn higher_priority_runs_first_and_insert_all_inserts_in_one_go() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (tx_order, mut rx_order) = mpsc::unbounded_channel();
    let e = engine(
        &repo,
        registry(vec![Scripted::new("ordered", move |job| {
            let tx_order = tx_order.clone();
            async move {
                let _ = tx_order.send(job.args["n"].as_i64().unwrap());
                Ok(Outcome::Complete)
            }
        })]),
        options(&[("default", 5)]),
    );
    let jobs: Vec<NewJob> = [(1, 5), (2, 0), (3, 9), (4, 0), (5, 3)]
        .into_iter()
        .map(|(n, p)| {
            NewJob::new("ordered", json!({"n": n}))
                .priority(p)
                .tags(&["batch"])
        })
        .collect();
    let mut tx = repo.system_tx().await.unwrap();
    let ids = storage::insert_all(&mut tx, &jobs).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(e.drain("default").await.unwrap(), 5);
    let order: Vec<i64> = std::iter::from_fn(|| rx_order.try_recv().ok()).collect();
    assert_eq!(order, [2, 4, 5, 1, 3]);
    let mut owner = db.owner_conn().await;
    assert_eq!(get(&mut owner, ids[0]).await.tags, ["batch"]);
    // Out-of-range options are refused with the field named.
    let mut tx = repo.system_tx().await.unwrap();
    let err = storage::insert(&mut tx, &NewJob::new("x", json!({})).priority(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("priority"), "{err}");
}

/// Starts a worker that reports when it starts and when its attempt is dropped (finished or
/// aborted), and blocks for a minute in between.
fn blocking_worker(
    started: mpsc::UnboundedSender<Uuid>,
    dropped: mpsc::UnboundedSender<Uuid>,
) -> Scripted {
    struct OnDrop(Uuid, mpsc::UnboundedSender<Uuid>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.1.send(self.0);
        }
    }
    Scripted::new("blocker", move |job| {
        let started = started.clone();
        let dropped = dropped.clone();
        async move {
            let _guard = OnDrop(job.id, dropped);
            let _ = started.send(job.id);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Outcome::Complete)
        }
    })
}

#[tokio::test]
async fn cancelling_an_executing_job_stops_it_and_it_stays_cancelled() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let e = engine(
        &repo,
        registry(vec![blocking_worker(started_tx, dropped_tx)]),
        options(&[("default", 2)]),
    );
    let shutdown = Shutdown::new();
    let running = tokio::spawn(e.clone().run(shutdown.clone()));
    let id = insert(&repo, NewJob::new("blocker", json!({}))).await.id;
    let got = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .unwrap();
    assert_eq!(got, Some(id));

    let mut tx = repo.system_tx().await.unwrap();
    let cancelled = storage::cancel(&mut tx, id)
        .await
        .unwrap()
        .expect("cancelled");
    tx.commit().await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    // The node running it is told and aborts the attempt.
    let stopped = tokio::time::timeout(Duration::from_secs(10), dropped.recv())
        .await
        .unwrap();
    assert_eq!(stopped, Some(id));

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut owner = db.owner_conn().await;
    let job = get(&mut owner, id).await;
    assert_eq!(
        job.state,
        JobState::Cancelled,
        "neither an ack nor the hand-back revived it"
    );
}

#[tokio::test]
async fn shutdown_waits_for_running_jobs_then_hands_the_rest_back() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, _dropped) = mpsc::unbounded_channel();
    let quick_done = Arc::new(AtomicUsize::new(0));
    let qd = quick_done.clone();
    let mut opts = options(&[("default", 4)]);
    opts.grace = Duration::from_millis(500);
    let e = engine(
        &repo,
        registry(vec![
            blocking_worker(started_tx.clone(), dropped_tx),
            Scripted::new("quick", move |_| {
                let qd = qd.clone();
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(Uuid::nil());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    qd.fetch_add(1, Ordering::SeqCst);
                    Ok(Outcome::Complete)
                }
            }),
        ]),
        opts,
    );
    let blocker = insert(&repo, NewJob::new("blocker", json!({}))).await.id;
    let quick = insert(&repo, NewJob::new("quick", json!({}))).await.id;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(e.clone().run(shutdown.clone()));
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .unwrap();
    }
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut owner = db.owner_conn().await;
    // The quick job finished within the grace period and was acknowledged.
    assert_eq!(quick_done.load(Ordering::SeqCst), 1);
    assert_eq!(get(&mut owner, quick).await.state, JobState::Completed);
    // The blocker was interrupted and handed back, its attempt refunded.
    let job = get(&mut owner, blocker).await;
    assert_eq!(job.state, JobState::Available);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.meta["handed_back"], 1);
    // The node left the cluster.
    assert_eq!(
        count(&mut owner, "SELECT count(*) AS n FROM job_nodes").await,
        0
    );
}

#[tokio::test]
async fn notify_wakes_the_producer_without_waiting_for_a_poll() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let mut opts = options(&[("default", 2)]);
    // Polling alone would take a minute.
    opts.poll_interval = Duration::from_secs(60);
    let e = engine(
        &repo,
        registry(vec![Scripted::new("ping", move |job| {
            let done_tx = done_tx.clone();
            async move {
                let _ = done_tx.send(job.id);
                Ok(Outcome::Complete)
            }
        })]),
        opts,
    );
    let shutdown = Shutdown::new();
    let running = tokio::spawn(e.run(shutdown.clone()));
    // Give the listener its first fetch (the engine fetches once at start).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let id = insert(&repo, NewJob::new("ping", json!({}))).await.id;
        let got = tokio::time::timeout(Duration::from_secs(5), done.recv())
            .await
            .expect("woken by NOTIFY");
        assert_eq!(got, Some(id));
    }
    shutdown.trigger();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_paused_queue_stays_paused_across_restarts_until_resumed() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let workers = || {
        registry(vec![Scripted::new("w", |_| async {
            Ok(Outcome::Complete)
        })])
    };
    let mut tx = repo.system_tx().await.unwrap();
    storage::set_paused(&mut tx, "default", true).await.unwrap();
    tx.commit().await.unwrap();
    insert(&repo, NewJob::new("w", json!({}))).await;

    let first = engine(&repo, workers(), options(&[("default", 5)]));
    assert_eq!(first.drain("default").await.unwrap(), 0);
    // A "restarted" node: new process state, new node id, new pool.
    drop(first);
    let repo2 = db.repo().await;
    let second = engine(&repo2, workers(), options(&[("default", 5)]));
    let mut tx = repo2.system_tx().await.unwrap();
    assert!(storage::is_paused(&mut tx, "default").await.unwrap());
    drop(tx);
    assert_eq!(second.drain("default").await.unwrap(), 0);
    // Other queues are unaffected.
    insert(&repo2, NewJob::new("w", json!({})).queue("critical")).await;
    assert_eq!(second.drain("critical").await.unwrap(), 1);

    let mut tx = repo2.system_tx().await.unwrap();
    storage::set_paused(&mut tx, "default", false)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(second.drain("default").await.unwrap(), 1);
}

#[tokio::test]
async fn cron_inserts_exactly_one_job_per_slot_with_two_nodes() {
    let db = TestDb::migrated().await;
    let (a, b) = (db.repo().await, db.repo().await);
    let reg = vsm::workers::registry(&vsm::config::Config::default());
    let entries = [vsm::config::CronEntry {
        name: "every_second".into(),
        expression: vsm::config::CronSchedule::parse("* * * * * *").unwrap(),
        worker: "health_check".into(),
        args: json!({}),
    }];
    let (mut seen_a, mut seen_b) = Default::default();
    let start = chrono::Utc::now();
    let mut inserted = 0;
    for s in 0..10 {
        // Both nodes tick at the same instants, several times within each second.
        for ms in [0, 300, 600] {
            let now = start + chrono::Duration::seconds(s) + chrono::Duration::milliseconds(ms);
            let (ra, rb) = tokio::join!(
                vsm::jobs::cron::tick(&a, &reg, &entries, now, &mut seen_a),
                vsm::jobs::cron::tick(&b, &reg, &entries, now, &mut seen_b),
            );
            inserted += ra.unwrap().len() + rb.unwrap().len();
        }
    }
    assert!((10..=11).contains(&inserted), "{inserted}");
    let mut owner = db.owner_conn().await;
    assert_eq!(
        count(&mut owner, "SELECT count(*) AS n FROM jobs").await,
        inserted as i64
    );
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(DISTINCT meta->>'slot') AS n FROM jobs"
        )
        .await,
        inserted as i64,
        "one job per slot"
    );
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM jobs WHERE worker = 'health_check' AND queue = 'default'"
        )
        .await,
        inserted as i64
    );
}

#[tokio::test]
async fn the_pruner_removes_only_old_final_jobs() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut owner = db.owner_conn().await;
    let mut ids = std::collections::HashMap::new();
    for name in [
        "old_completed",
        "old_cancelled",
        "old_discarded",
        "new_completed",
        "old_available",
        "old_retryable",
    ] {
        ids.insert(name, insert(&repo, NewJob::new(name, json!({}))).await.id);
    }
    let set = |name: &str, sql: &str| format!("UPDATE jobs SET {sql} WHERE worker = '{name}'");
    for sql in [
        set(
            "old_completed",
            "state = 'completed', completed_at = now() - interval '8 days'",
        ),
        set(
            "old_cancelled",
            "state = 'cancelled', cancelled_at = now() - interval '8 days'",
        ),
        set(
            "old_discarded",
            "state = 'discarded', discarded_at = now() - interval '8 days'",
        ),
        set(
            "new_completed",
            "state = 'completed', completed_at = now() - interval '6 days'",
        ),
        set(
            "old_available",
            "inserted_at = now() - interval '30 days', scheduled_at = now() - interval '30 days'",
        ),
        set(
            "old_retryable",
            "state = 'retryable', attempt = 1, inserted_at = now() - interval '30 days'",
        ),
    ] {
        diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), &mut owner)
            .await
            .unwrap();
    }
    let before = chrono::Utc::now() - chrono::Duration::days(7);
    assert_eq!(
        vsm::jobs::pruner::prune_once(&repo, before).await.unwrap(),
        3
    );
    let left: Vec<String> = {
        use diesel::prelude::*;
        use vsm::schemas::schema::jobs;
        diesel_async::RunQueryDsl::load(
            jobs::table.select(jobs::worker).order(jobs::worker),
            &mut owner,
        )
        .await
        .unwrap()
    };
    assert_eq!(left, ["new_completed", "old_available", "old_retryable"]);
}

#[tokio::test]
async fn jobs_of_a_node_that_stopped_heartbeating_are_rescued() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut owner = db.owner_conn().await;
    for n in 0..3 {
        insert(
            &repo,
            NewJob::new("w", json!({"n": n})).max_attempts(if n == 2 { 1 } else { 5 }),
        )
        .await;
    }
    // Two nodes claim jobs: "dead" takes all three, then stops heartbeating; "alive" keeps going.
    let mut tx = repo.system_tx().await.unwrap();
    storage::heartbeat(&mut tx, "dead", &["default".into()])
        .await
        .unwrap();
    storage::heartbeat(&mut tx, "alive", &["default".into()])
        .await
        .unwrap();
    let claimed = storage::fetch(&mut tx, "default", 10, "dead")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(claimed.len(), 3);
    let alive_job = insert(&repo, NewJob::new("w", json!({"n": 9}))).await.id;
    let mut tx = repo.system_tx().await.unwrap();
    storage::fetch(&mut tx, "default", 10, "alive")
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Within the window nothing happens.
    assert!(
        vsm::jobs::rescuer::rescue_once(&repo, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE job_nodes SET heartbeat_at = now() - interval '31 seconds' WHERE id = 'dead'",
        ),
        &mut owner,
    )
    .await
    .unwrap();
    let rescued = vsm::jobs::rescuer::rescue_once(&repo, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(rescued.len(), 3);
    for job in claimed {
        let job = get(&mut owner, job.id).await;
        let expected = if job.max_attempts == 1 {
            JobState::Discarded
        } else {
            JobState::Available
        };
        assert_eq!(job.state, expected);
        assert!(
            job.errors[0]["error"]
                .as_str()
                .unwrap()
                .contains("node dead stopped heartbeating")
        );
    }
    assert_eq!(get(&mut owner, alive_job).await.state, JobState::Executing);
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM job_nodes WHERE id = 'dead'"
        )
        .await,
        0
    );
}

/// The liveness lock overrides a stale heartbeat: a node whose session holds its lock keeps its
/// jobs however old its row; once that session ends, its jobs are rescued. "busy" and "slow"
/// hash to a negative and a positive lock key, the two halves `pg_locks` splits a key into.
#[tokio::test]
async fn a_node_holding_its_liveness_lock_keeps_its_jobs_however_stale_its_heartbeat() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut owner = db.owner_conn().await;
    for node in ["busy", "slow"] {
        let job = insert(&repo, NewJob::new("w", json!({})).queue(node))
            .await
            .id;
        let mut tx = repo.system_tx().await.unwrap();
        storage::heartbeat(&mut tx, node, &[node.into()])
            .await
            .unwrap();
        assert_eq!(
            storage::fetch(&mut tx, node, 10, node).await.unwrap().len(),
            1
        );
        tx.commit().await.unwrap();

        let mut session = repo.dedicated_system_conn(&[]).await.unwrap();
        assert!(
            storage::try_hold_node_lock(&mut session, node)
                .await
                .unwrap()
        );
        let mut other = repo.dedicated_system_conn(&[]).await.unwrap();
        assert!(
            !storage::try_hold_node_lock(&mut other, node).await.unwrap(),
            "two sessions held one node's lock"
        );
        assert!(storage::node_lock_held(&mut owner, node).await.unwrap());
        diesel_async::RunQueryDsl::execute(
            diesel::sql_query("UPDATE job_nodes SET heartbeat_at = now() - interval '31 seconds'"),
            &mut owner,
        )
        .await
        .unwrap();
        assert!(
            vsm::jobs::rescuer::rescue_once(&repo, Duration::from_secs(30))
                .await
                .unwrap()
                .is_empty(),
            "{node}: rescued while its lock was held"
        );
        assert_eq!(get(&mut owner, job).await.state, JobState::Executing);
        assert_eq!(
            count(&mut owner, "SELECT count(*) AS n FROM job_nodes").await,
            1,
            "{node}: forgotten while its lock was held"
        );

        // The session ends (the process died): the lock is free, the stale node is dead.
        drop(session);
        common::eventually(Duration::from_secs(10), "the lock is released", || async {
            !storage::node_lock_held(&mut db.owner_conn().await, node)
                .await
                .unwrap()
        })
        .await;
        let rescued = vsm::jobs::rescuer::rescue_once(&repo, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(rescued.iter().map(|r| r.id).collect::<Vec<_>>(), [job]);
        assert_eq!(get(&mut owner, job).await.state, JobState::Available);
        assert_eq!(
            count(&mut owner, "SELECT count(*) AS n FROM job_nodes").await,
            0
        );
        drop(other);
    }
}
