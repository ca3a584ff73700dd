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
use vsm::jobs::{NewJob, Outcome, state};
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
    assert_eq!(done.ok().flatten(), Some(id), "the job finished during the outage");
    tokio::time::sleep(OUTAGE).await; // the outage itself, not a wait for a result
    allow_connections(&db.name).await;
    let back = Instant::now();

    let mut owner = db.owner_conn().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = get(&mut owner, id).await;
        if job.state != state::EXECUTING || Instant::now() >= deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "job {} {:.2}s after the database came back",
        job.state,
        back.elapsed().as_secs_f64()
    );
    assert_eq!(job.state, state::COMPLETED, "errors: {}", job.errors);
    assert_eq!(job.attempt, 1, "written, not run again");

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
