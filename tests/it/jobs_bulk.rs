//! `storage::insert_all`, the bulk insert (CONTRACT §7): the same rows as one `insert` per job,
//! ids in input order, all or nothing, unique jobs kept unique, one wake-up per queue, and
//! row-level security in a tenant transaction.

use crate::common;
use crate::jobs_support;

use std::time::Duration;

use chrono::Utc;
use common::TestDb;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use jobs_support::*;
use serde_json::json;
use uuid::Uuid;
use vsm::jobs::{Inserted, Job, JobState, NewJob, storage};
use vsm::repo::DbError;

/// Everything of a job that does not depend on when or as which row it was inserted.
fn stored(job: &Job) -> serde_json::Value {
    json!({
        "tenant_id": job.tenant_id,
        "state": job.state,
        "queue": job.queue,
        "worker": job.worker,
        "args": job.args,
        "errors": job.errors,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "tags": job.tags,
        "meta": job.meta,
        "unique_key": job.unique_key,
        "attempted_at": job.attempted_at,
        "attempted_by": job.attempted_by,
        "completed_at": job.completed_at,
        "cancelled_at": job.cancelled_at,
        "discarded_at": job.discarded_at,
    })
}

/// A job with every option set, varied by `n`.
fn varied(n: usize, tenant: Option<Uuid>) -> NewJob {
    let tags: &[&str] = match n % 4 {
        0 => &[],
        1 => &["plain"],
        // Everything an array literal has to quote or escape.
        2 => &[
            "with \"quotes\"",
            "back\\slash",
            "a,b",
            "{braces}",
            " spaced ",
            "NULL",
            "",
            "ünïcödé ✓",
        ],
        _ => &["x", "x", "y"],
    };
    // Empty args and meta (which the bulk statement sends as NULL) on every fifth job.
    let (args, meta) = if n % 5 == 0 {
        (json!({}), json!({}))
    } else {
        (
            json!({"n": n, "nested": {"list": [1, "two", null]}}),
            json!({"source": "bulk", "n": n}),
        )
    };
    let mut job = NewJob::new("bulk_probe", args)
        .queue(["default", "analysis", "bulk"][n % 3])
        .priority((n % 10) as i16)
        .max_attempts(1 + (n % 7) as i32)
        .tags(tags)
        .meta(meta);
    match n % 3 {
        0 => {}
        1 => job = job.schedule_in(Duration::from_secs(3600)),
        // A time already past: available, stored as given.
        _ => job = job.schedule_at(Utc::now() - chrono::Duration::seconds(30)),
    }
    if let Some(t) = tenant {
        job = job.tenant(t);
    }
    job
}

async fn job_count(owner: &mut AsyncPgConnection) -> i64 {
    count(owner, "SELECT count(*) AS n FROM jobs").await
}

/// Asserts that `bulk` holds the same jobs as `single`, pairwise.
fn assert_same(single: &[Job], bulk: &[Job]) {
    assert_eq!(single.len(), bulk.len());
    for (i, (s, b)) in single.iter().zip(bulk).enumerate() {
        assert_eq!(stored(s), stored(b), "job {i}");
        // A job without its own time is scheduled at its transaction's start, like inserted_at.
        assert_eq!(
            s.scheduled_at == s.inserted_at,
            b.scheduled_at == b.inserted_at,
            "job {i}"
        );
        if s.scheduled_at != s.inserted_at {
            assert_eq!(s.scheduled_at, b.scheduled_at, "job {i}");
        }
    }
}

#[tokio::test]
async fn insert_all_stores_every_field_as_insert_does_for_system_and_tenant_jobs() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = vsm::schemas::storage::tenant::create(&repo, "acme", None)
        .await
        .unwrap();
    let mut owner = db.owner_conn().await;
    // Schedules are fixed once, so both paths see the same options.
    let system: Vec<NewJob> = (0..12)
        .map(|n| varied(n, (n % 2 == 0).then_some(t.id)))
        .collect();
    let tenant: Vec<NewJob> = (0..12).map(|n| varied(n, Some(t.id))).collect();

    let mut single = Vec::new();
    let mut tx = repo.system_tx().await.unwrap();
    for job in &system {
        match storage::insert(&mut tx, job).await.unwrap() {
            Inserted::New(j) => single.push(j.id),
            Inserted::Existing(j) => panic!("not unique: {j:?}"),
        }
    }
    tx.commit().await.unwrap();
    let mut tx = repo.system_tx().await.unwrap();
    let bulk = storage::insert_all(&mut tx, &system).await.unwrap();
    tx.commit().await.unwrap();
    let mut single_jobs = Vec::new();
    let mut bulk_jobs = Vec::new();
    for (s, b) in single.iter().zip(&bulk) {
        single_jobs.push(get(&mut owner, *s).await);
        bulk_jobs.push(get(&mut owner, *b).await);
    }
    assert_same(&single_jobs, &bulk_jobs);
    // The mix really is a mix.
    let states: std::collections::BTreeSet<_> = bulk_jobs.iter().map(|j| j.state).collect();
    assert_eq!(
        states,
        [JobState::Available, JobState::Scheduled]
            .into_iter()
            .collect()
    );
    assert!(bulk_jobs.iter().any(|j| j.tenant_id.is_none()));
    assert!(bulk_jobs.iter().any(|j| j.tenant_id == Some(t.id)));
    assert_eq!(
        bulk_jobs[2].tags[..3],
        ["with \"quotes\"", "back\\slash", "a,b"]
    );
    assert!(bulk_jobs[0].tags.is_empty());
    assert_eq!(
        (&bulk_jobs[5].args, &bulk_jobs[5].meta),
        (&json!({}), &json!({}))
    );
    assert_eq!(bulk_jobs[6].meta, json!({"source": "bulk", "n": 6}));

    // In the tenant's own transaction (forced row-level security) too.
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    let mut single = Vec::new();
    for job in &tenant {
        single.push(storage::insert(&mut tx, job).await.unwrap().into_job());
    }
    let bulk = storage::insert_all(&mut tx, &tenant).await.unwrap();
    tx.commit().await.unwrap();
    let mut bulk_jobs = Vec::new();
    for id in &bulk {
        bulk_jobs.push(get(&mut owner, *id).await);
    }
    assert_same(&single, &bulk_jobs);
}

#[tokio::test]
async fn insert_all_returns_ids_in_input_order_across_chunks() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut owner = db.owner_conn().await;
    // More than two statements' worth, with a unique job in the middle of the second.
    let jobs: Vec<NewJob> = (0..2_500)
        .map(|n| {
            let job = NewJob::new("bulk_probe", json!({"n": n})).queue(["a", "b"][n % 2]);
            if n == 1_500 {
                job.unique(Duration::from_secs(60))
            } else {
                job
            }
        })
        .collect();
    let mut tx = repo.system_tx().await.unwrap();
    let ids = storage::insert_all(&mut tx, &jobs).await.unwrap();
    // Its three statements were one prepared statement, parsed once for the connection.
    let prepared = count(
        &mut tx,
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE 'WITH inserted AS%'",
    )
    .await;
    assert_eq!(prepared, 1);
    tx.commit().await.unwrap();
    assert_eq!(ids.len(), 2_500);
    assert_eq!(job_count(&mut owner).await, 2_500);
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        n: i32,
    }
    let rows: Vec<Row> = diesel::sql_query("SELECT id, (args->>'n')::int AS n FROM jobs")
        .load(&mut owner)
        .await
        .unwrap();
    let by_id: std::collections::HashMap<Uuid, i32> =
        rows.into_iter().map(|r| (r.id, r.n)).collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(by_id.get(id), Some(&(i as i32)), "id {i}");
    }
    // Ids are time-ordered in input order, so equal-priority jobs are fetched in that order.
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn insert_all_with_one_invalid_job_inserts_nothing_and_names_the_field() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut owner = db.owner_conn().await;
    let ok = |n: usize| NewJob::new("bulk_probe", json!({"n": n}));
    let cases: Vec<(&str, NewJob)> = vec![
        ("priority", ok(0).priority(10)),
        ("max_attempts", ok(0).max_attempts(0)),
        ("queue", ok(0).queue("")),
        ("worker", NewJob::new(&"w".repeat(129), json!({}))),
        ("args", NewJob::new("bulk_probe", json!([1, 2]))),
        // A unique job is checked before anything is written too.
        (
            "priority",
            ok(0).priority(10).unique(Duration::from_secs(60)),
        ),
    ];
    for (field, bad) in cases {
        // The bad job sits in the second statement's worth, after a unique job.
        let mut jobs: Vec<NewJob> = (0..1_500).map(ok).collect();
        jobs[10] = ok(10).unique(Duration::from_secs(60));
        jobs[1_200] = bad;
        let mut tx = repo.system_tx().await.unwrap();
        let err = storage::insert_all(&mut tx, &jobs).await.unwrap_err();
        assert!(
            matches!(err, DbError::Validation { field: f, .. } if f == field),
            "{field}: {err}"
        );
        // Nothing of the call was written, even if the caller goes on and commits.
        tx.commit().await.unwrap();
        assert_eq!(job_count(&mut owner).await, 0, "{field}");
    }
}

#[tokio::test]
async fn insert_all_keeps_unique_jobs_unique_among_plain_ones() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut owner = db.owner_conn().await;
    let period = Duration::from_secs(60);
    let existing = insert(
        &repo,
        NewJob::new("bulk_probe", json!({"k": "old"})).unique(period),
    )
    .await;
    let jobs = vec![
        NewJob::new("bulk_probe", json!({"k": "plain"})),
        NewJob::new("bulk_probe", json!({"k": "old"})).unique(period),
        NewJob::new("bulk_probe", json!({"k": "plain"})),
        NewJob::new("bulk_probe", json!({"k": "new"})).unique(period),
        NewJob::new("bulk_probe", json!({"k": "new"})).unique(period),
        NewJob::new("bulk_probe", json!({"k": "plain"})),
    ];
    let mut tx = repo.system_tx().await.unwrap();
    let ids = storage::insert_all(&mut tx, &jobs).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids.len(), 6);
    assert_eq!(
        ids[1], existing.id,
        "a live duplicate gives the existing id"
    );
    assert_eq!(
        ids[3], ids[4],
        "a duplicate within the call gives the first one's id"
    );
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 5);
    // The old one, three plain ones, one new unique one.
    assert_eq!(job_count(&mut owner).await, 5);
    let new = get(&mut owner, ids[3]).await;
    assert!(new.unique_key.is_some());
    assert!(get(&mut owner, ids[0]).await.unique_key.is_none());
    assert_eq!(new.state, JobState::Available);
}

/// Notifications on the job channel, up to a marker this test sends last: everything
/// committed before the marker has been delivered by then.
async fn notifications_until_marker(listener: &mut AsyncPgConnection, db: &TestDb) -> Vec<String> {
    let mut other = db.owner_conn().await;
    diesel::sql_query("SELECT pg_notify($1, 'marker')")
        .bind::<diesel::sql_types::Text, _>(storage::NOTIFY_CHANNEL)
        .execute(&mut other)
        .await
        .unwrap();
    let mut stream = std::pin::pin!(listener.notifications_stream());
    let mut payloads = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the marker arrives")
            .expect("stream open")
            .unwrap();
        if n.payload == "marker" {
            return payloads;
        }
        payloads.push(n.payload);
    }
}

#[tokio::test]
async fn insert_all_notifies_each_queue_with_available_jobs_once_at_commit() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut listener = db.owner_conn().await;
    diesel::sql_query(format!("LISTEN {}", storage::NOTIFY_CHANNEL))
        .execute(&mut listener)
        .await
        .unwrap();
    let later = Duration::from_secs(3600);
    let mut jobs: Vec<NewJob> = (0..1_200)
        .map(|n| NewJob::new("bulk_probe", json!({"n": n})).queue("a"))
        .collect();
    jobs.push(NewJob::new("bulk_probe", json!({})).queue("b"));
    jobs.push(
        NewJob::new("bulk_probe", json!({}))
            .queue("b")
            .schedule_in(later),
    );
    // Only scheduled jobs: nothing to wake yet.
    jobs.push(
        NewJob::new("bulk_probe", json!({}))
            .queue("c")
            .schedule_in(later),
    );
    jobs.push(
        NewJob::new("bulk_probe", json!({"u": 1}))
            .queue("d")
            .unique(later),
    );
    // Rolled back: never announced.
    let mut tx = repo.system_tx().await.unwrap();
    storage::insert_all(&mut tx, &[NewJob::new("bulk_probe", json!({})).queue("e")])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = repo.system_tx().await.unwrap();
    storage::insert_all(&mut tx, &jobs).await.unwrap();
    tx.commit().await.unwrap();
    let mut got = notifications_until_marker(&mut listener, &db).await;
    got.sort();
    assert_eq!(got, ["a", "b", "d"]);
}

#[tokio::test]
async fn insert_all_in_a_tenant_transaction_inserts_only_that_tenants_jobs() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut owner = db.owner_conn().await;
    let (t, _) = vsm::schemas::storage::tenant::create(&repo, "acme", None)
        .await
        .unwrap();
    let (other, _) = vsm::schemas::storage::tenant::create(&repo, "other", None)
        .await
        .unwrap();
    let mine = |n: usize| NewJob::new("bulk_probe", json!({"n": n})).tenant(t.id);
    for intruder in [
        NewJob::new("bulk_probe", json!({})).tenant(other.id),
        NewJob::new("bulk_probe", json!({})),
    ] {
        let mut jobs: Vec<NewJob> = (0..10).map(mine).collect();
        jobs.push(intruder);
        let mut tx = repo.tenant_tx(t.id).await.unwrap();
        assert!(storage::insert_all(&mut tx, &jobs).await.is_err());
        drop(tx);
        assert_eq!(job_count(&mut owner).await, 0);
    }
    let jobs: Vec<NewJob> = (0..10).map(mine).collect();
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    let ids = storage::insert_all(&mut tx, &jobs).await.unwrap();
    // The tenant sees its jobs in its own transaction.
    for id in &ids {
        assert_eq!(
            storage::find(&mut tx, *id).await.unwrap().map(|j| j.id),
            Some(*id)
        );
    }
    tx.commit().await.unwrap();
    assert_eq!(job_count(&mut owner).await, 10);
}
