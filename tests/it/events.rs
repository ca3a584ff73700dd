//! Events end to end (CONTRACT §6): outbox → relay → RabbitMQ or in-process → SSE, against real
//! PostgreSQL and RabbitMQ.

use crate::common;

use std::time::Duration;

use common::{
    Frame, Instance, Proxy, RABBITMQ_URL, SseClient, TestDb, instance_config, unique_exchange,
};
use serde_json::json;
use uuid::Uuid;
use vsm::repo::Repo;
use vsm::schemas::storage::tenant;

const WAIT: Duration = Duration::from_secs(10);

async fn tenant_with_key(repo: &Repo, slug: &str) -> (Uuid, String) {
    let (t, key) = tenant::create(repo, slug, None).await.unwrap();
    (t.id, key.key)
}

/// Commits one event for `tenant` and returns the payload marker `n`.
async fn record(repo: &Repo, tenant: Uuid, topic: &str, n: i64) {
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    vsm::events::record(&mut tx, tenant, topic, &json!({"n": n}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

fn n_of(frame: &Frame) -> i64 {
    serde_json::from_str::<serde_json::Value>(&frame.data).unwrap()["n"]
        .as_i64()
        .unwrap()
}

/// The tenant's committed events in id order, as (id, n).
async fn committed(db: &TestDb) -> Vec<(i64, i64)> {
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = db.owner_conn().await;
    let rows: Vec<R> = diesel::sql_query(
        "SELECT seq, (payload->>'n')::bigint AS n FROM events WHERE seq IS NOT NULL ORDER BY seq",
    )
    .load(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|r| (r.seq, r.n)).collect()
}

async fn expect_connected(client: &mut SseClient) {
    let retry = client.next(WAIT).await.expect("retry hint");
    assert!(retry.retry.is_some(), "{retry:?}");
    let connected = client.next(WAIT).await.expect("connected frame");
    assert_eq!(
        connected.event.as_deref(),
        Some("connected"),
        "{connected:?}"
    );
    assert!(connected.id.is_none());
}

#[tokio::test]
async fn an_event_committed_through_one_instance_reaches_a_subscriber_on_the_other() {
    let db = TestDb::migrated().await;
    let exchange = unique_exchange();
    let a = Instance::start(instance_config(&db, Some((RABBITMQ_URL, &exchange)))).await;
    let b = Instance::start(instance_config(&db, Some((RABBITMQ_URL, &exchange)))).await;
    let (t, key) = tenant_with_key(&a.repo, "acme").await;
    // Both instances must be consuming before the event is produced.
    common::wait_ready(&a.base).await;
    common::wait_ready(&b.base).await;
    let mut on_b = SseClient::connect(&b.base, &key, "?topics=episode.*", None).await;
    assert_eq!(on_b.status, 200);
    expect_connected(&mut on_b).await;
    let mut on_a = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut on_a).await;

    record(&a.repo, t, "episode.created", 1).await;
    for client in [&mut on_b, &mut on_a] {
        let frame = client.next_event(WAIT).await.expect("event arrives");
        assert_eq!(frame.event.as_deref(), Some("episode.created"));
        assert_eq!(n_of(&frame), 1);
        assert!(frame.id.unwrap() > 0);
    }
}

#[tokio::test]
async fn without_rabbitmq_a_single_instance_streams() {
    let db = TestDb::migrated().await;
    let a = Instance::start(instance_config(&db, None)).await;
    let (t, key) = tenant_with_key(&a.repo, "solo").await;
    let mut client = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut client).await;
    for n in 1..=3 {
        record(&a.repo, t, "system.state", n).await;
    }
    let got: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(n_of(&client.next_event(WAIT).await.expect("event")));
        }
        v
    };
    assert_eq!(got, vec![1, 2, 3]);
}

#[tokio::test]
async fn replay_after_reconnecting_to_either_instance_is_gapless_and_duplicate_free() {
    let db = TestDb::migrated().await;
    let exchange = unique_exchange();
    let a = Instance::start(instance_config(&db, Some((RABBITMQ_URL, &exchange)))).await;
    let b = Instance::start(instance_config(&db, Some((RABBITMQ_URL, &exchange)))).await;
    let (t, key) = tenant_with_key(&a.repo, "replay").await;
    common::wait_ready(&a.base).await;
    common::wait_ready(&b.base).await;
    const TOTAL: i64 = 300;

    let mut first = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut first).await;
    // Produce continuously from two concurrent writers while the client reads and hops.
    let producer = {
        let repo = a.repo.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for w in 0..2 {
                let repo = repo.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..TOTAL / 2 {
                        record(&repo, t, "episode.created", w * 1000 + i).await;
                        if i % 10 == 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        })
    };
    let mut seen: Vec<(i64, i64)> = Vec::new();
    while seen.len() < 60 {
        let f = first.next_event(WAIT).await.expect("event on A");
        seen.push((f.id.unwrap(), n_of(&f)));
    }
    drop(first);
    // Resume on A, then hop to B, each time from the last id received.
    for (base, until) in [(&a.base, 140usize), (&b.base, TOTAL as usize)] {
        let last = seen.last().unwrap().0;
        let mut client = SseClient::connect(base, &key, "", Some(last)).await;
        expect_connected(&mut client).await;
        while seen.len() < until {
            let f = client.next_event(WAIT).await.expect("event after resume");
            seen.push((f.id.unwrap(), n_of(&f)));
        }
    }
    producer.await.unwrap();
    assert_eq!(seen, committed(&db).await);
}

#[tokio::test]
async fn a_rolled_back_transaction_emits_nothing() {
    let db = TestDb::migrated().await;
    let a = Instance::start(instance_config(&db, None)).await;
    let (t, key) = tenant_with_key(&a.repo, "rollback").await;
    let mut client = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut client).await;
    let mut tx = a.repo.tenant_tx(t).await.unwrap();
    vsm::events::record(&mut tx, t, "episode.created", &json!({"n": 1}))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    {
        let mut tx = a.repo.tenant_tx(t).await.unwrap();
        vsm::events::record(&mut tx, t, "episode.created", &json!({"n": 2}))
            .await
            .unwrap();
        // dropped without commit
    }
    record(&a.repo, t, "episode.created", 3).await;
    let f = client.next_event(WAIT).await.expect("the committed event");
    assert_eq!(n_of(&f), 3);
    assert_eq!(committed(&db).await.len(), 1);
}

#[tokio::test]
async fn events_left_by_a_dead_relay_are_published_by_the_next_one() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = tenant_with_key(&repo, "handover").await;
    // The dead relay sequenced these (committed ids) but never published them...
    for n in 1..=3 {
        record(&repo, t, "episode.created", n).await;
    }
    let mut tx = repo.system_tx().await.unwrap();
    let step = vsm::events::store::sequence(&mut tx, 100).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(step.now.len(), 3);
    // The read pipelined behind the sequencing already sees what it sequenced.
    let seqs = |events: &[vsm::events::Event]| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&step.unpublished), seqs(&step.now));
    // ...and these were committed after it died.
    for n in 4..=5 {
        record(&repo, t, "episode.created", n).await;
    }
    // Another service's queue bound to the exchange sees all of them once a relay runs again.
    let exchange = unique_exchange();
    let mut external = common::ExternalConsumer::bind(&exchange, "episode.*").await;
    let _next = Instance::start(instance_config(&db, Some((RABBITMQ_URL, &exchange)))).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let wire = external.next(WAIT).await.expect("published event");
        got.push(wire["payload"]["n"].as_i64().unwrap());
        assert_eq!(wire["topic"], "episode.created");
        assert_eq!(wire["tenant_id"], t.to_string());
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_cut_broker_connection_loses_nothing_and_delivery_resumes_by_itself() {
    let db = TestDb::migrated().await;
    let exchange = unique_exchange();
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let a = Instance::start(instance_config(&db, Some((&via_proxy, &exchange)))).await;
    let (t, key) = tenant_with_key(&a.repo, "cut").await;
    common::wait_ready(&a.base).await;
    let mut client = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut client).await;
    record(&a.repo, t, "system.state", 1).await;
    assert_eq!(n_of(&client.next_event(WAIT).await.unwrap()), 1);

    proxy.cut();
    for n in 2..=10 {
        record(&a.repo, t, "system.state", n).await;
    }
    // The relay has taken them in (sequenced) while the broker was unreachable.
    common::eventually(WAIT, "events sequenced during the cut", || async {
        committed(&db).await.len() == 10
    })
    .await;
    proxy.restore();
    for n in 11..=12 {
        record(&a.repo, t, "system.state", n).await;
    }
    let mut got = Vec::new();
    while got.len() < 11 {
        let f = client
            .next_event(Duration::from_secs(20))
            .await
            .expect("delivery resumes");
        assert_ne!(f.event.as_deref(), Some("disconnected"), "{f:?}");
        got.push(n_of(&f));
    }
    assert_eq!(got, (2..=12).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_tenant_never_receives_another_tenants_events() {
    let db = TestDb::migrated().await;
    let exchange = unique_exchange();
    let a = Instance::start(instance_config(&db, Some((RABBITMQ_URL, &exchange)))).await;
    let (ta, _) = tenant_with_key(&a.repo, "tenant-a").await;
    let (tb, key_b) = tenant_with_key(&a.repo, "tenant-b").await;
    common::wait_ready(&a.base).await;
    let mut all = SseClient::connect(&a.base, &key_b, "", None).await;
    let mut wildcard = SseClient::connect(&a.base, &key_b, "?topics=episode.*", None).await;
    expect_connected(&mut all).await;
    expect_connected(&mut wildcard).await;
    for n in 1..=5 {
        record(&a.repo, ta, "episode.created", n).await;
    }
    record(&a.repo, tb, "episode.created", 100).await;
    for client in [&mut all, &mut wildcard] {
        let f = client.next_event(WAIT).await.unwrap();
        assert_eq!(n_of(&f), 100, "B saw A's event first: {f:?}");
    }
    let mut replay = SseClient::connect(&a.base, &key_b, "", Some(0)).await;
    expect_connected(&mut replay).await;
    let f = replay.next_event(WAIT).await.unwrap();
    assert_eq!(n_of(&f), 100);
    assert!(
        replay
            .next_event(Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn bad_requests_caps_heartbeats_and_gaps() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.events.heartbeat_secs = 1;
    config.events.max_connections_per_tenant = 2;
    let a = Instance::start(config).await;
    let (t, key) = tenant_with_key(&a.repo, "edges").await;

    // Authentication.
    let res = reqwest::get(format!("{}/v1/events", a.base)).await.unwrap();
    assert_eq!(res.status(), 401);
    let bad_key = SseClient::connect(&a.base, "vsm_nope", "", None).await;
    assert_eq!(bad_key.status, 401);
    // Topic syntax and Last-Event-ID.
    for query in [
        "?topics=Episode.created",
        "?topics=*",
        "?topics=a.b.c",
        "?last_event_id=abc",
    ] {
        let c = SseClient::connect(&a.base, &key, query, None).await;
        assert_eq!(c.status, 400, "{query}");
        assert!(
            c.body_on_error.contains("bad_request"),
            "{}",
            c.body_on_error
        );
    }
    // Heartbeats, then the cap.
    let mut one = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut one).await;
    let beat = one.next(Duration::from_secs(3)).await.expect("heartbeat");
    assert_eq!(beat.comment.as_deref(), Some("heartbeat"));
    let _two = SseClient::connect(&a.base, &key, "", None).await;
    let three = SseClient::connect(&a.base, &key, "", None).await;
    assert_eq!(three.status, 429);
    assert!(three.body_on_error.contains("rate_limited"));

    // History pruned past the client's id: `gap` first, then what is left.
    record(&a.repo, t, "episode.created", 1).await;
    assert_eq!(n_of(&one.next_event(WAIT).await.unwrap()), 1);
    // (Delivery can precede the relay marking the event published; only published events go.)
    let deadline = std::time::Instant::now() + WAIT;
    while vsm::events::relay::prune(&a.repo, chrono::Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap()
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "event never pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    record(&a.repo, t, "episode.created", 2).await;
    assert_eq!(n_of(&one.next_event(WAIT).await.unwrap()), 2);
    drop(one);
    // The server notices the closed stream at its next write (a heartbeat at the latest).
    let mut late = loop {
        let c = SseClient::connect(&a.base, &key, "?last_event_id=0", None).await;
        if c.status == 200 {
            break c;
        }
        assert_eq!(c.status, 429);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    expect_connected(&mut late).await;
    let gap = late.next(WAIT).await.unwrap();
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    assert!(gap.id.is_none());
    assert_eq!(n_of(&late.next_event(WAIT).await.unwrap()), 2);
}

/// Waits until the relay has published every committed event (in-process fan-out hands each
/// batch to the hub before it marks it published).
async fn all_published(db: &TestDb, at_least: i64) {
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = BigInt)]
        published: i64,
        #[diesel(sql_type = BigInt)]
        pending: i64,
    }
    common::eventually(WAIT, "the relay published every event", || async {
        let mut conn = db.owner_conn().await;
        let r: R = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE published_at IS NOT NULL) AS published,
                    count(*) FILTER (WHERE published_at IS NULL) AS pending FROM events",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        r.published >= at_least && r.pending == 0
    })
    .await;
}

/// Records one `artifact.stored` event per `n` in `ns`, each carrying `blob`, in one tenant
/// transaction.
async fn record_blobs(repo: &Repo, t: Uuid, ns: std::ops::Range<i64>, blob: &str) {
    let mut tx = repo.tenant_tx(t).await.unwrap();
    for n in ns {
        vsm::events::record(
            &mut tx,
            t,
            "artifact.stored",
            &json!({"n": n, "blob": blob}),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}
/// Commits `count` events of `blob_bytes` each in one transaction, then waits until the relay
/// has handed them all to the hub, and reads what the client that was not reading got.
async fn flood_a_stalled_client(
    db: &TestDb,
    a: &Instance,
    t: Uuid,
    slow: &mut SseClient,
    count: usize,
    blob_bytes: usize,
) -> (usize, i64, Frame) {
    record_blobs(&a.repo, t, 0..count as i64, &"x".repeat(blob_bytes)).await;
    all_published(db, count as i64).await;
    let (mut received, mut last_id) = (0, 0);
    let last = loop {
        let f = slow
            .next_event(WAIT)
            .await
            .expect("stream ends with a frame");
        let Some(id) = f.id else { break f };
        received += 1;
        last_id = id;
    };
    (received, last_id, last)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_with_overflow() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.events.client_buffer = 16;
    let a = Instance::start(config).await;
    let (t, key) = tenant_with_key(&a.repo, "slow").await;
    let mut slow = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut slow).await;
    // 64 KiB payloads: a few hundred of them overrun the socket buffers and the client buffer.
    const SENT: usize = 400;
    let (received, _, last) = flood_a_stalled_client(&db, &a, t, &mut slow, SENT, 64 * 1024).await;
    assert_eq!(last.event.as_deref(), Some("disconnected"));
    assert!(last.data.contains("overflow"), "{last:?}");
    assert!(received < SENT, "received {received} of {SENT}");
    assert!(slow.next(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn the_live_buffer_is_bounded_in_bytes_as_well_as_events() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    // Room for every event by count, for about four of them by bytes.
    config.events.client_buffer = 1024;
    config.events.client_buffer_bytes = 256 * 1024;
    let a = Instance::start(config).await;
    let (t, key) = tenant_with_key(&a.repo, "slow-bytes").await;
    let mut slow = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut slow).await;
    const SENT: usize = 400;
    let (received, last_id, last) =
        flood_a_stalled_client(&db, &a, t, &mut slow, SENT, 64 * 1024).await;
    assert_eq!(last.event.as_deref(), Some("disconnected"));
    assert!(last.data.contains("overflow"), "{last:?}");
    assert!(received < SENT, "received {received} of {SENT}");
    // The client resumes where it was cut off and gets the rest.
    let mut again = SseClient::connect(&a.base, &key, "", Some(last_id)).await;
    expect_connected(&mut again).await;
    let next = again.next_event(WAIT).await.expect("replayed");
    assert_eq!(n_of(&next), received as i64);
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_final_disconnected_event() {
    let db = TestDb::migrated().await;
    let a = Instance::start(instance_config(&db, None)).await;
    let (_, key) = tenant_with_key(&a.repo, "bye").await;
    let mut client = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut client).await;
    a.shutdown.trigger();
    let last = client.next_event(WAIT).await.expect("final frame");
    assert_eq!(last.event.as_deref(), Some("disconnected"));
    assert!(last.data.contains("shutdown"), "{last:?}");
    assert!(client.next(Duration::from_secs(2)).await.is_none());
}

#[tokio::test]
async fn when_the_leading_relay_is_killed_another_instance_takes_over() {
    let db = TestDb::migrated().await;
    let exchange = unique_exchange();
    // A separate `vsm serve` process starts first and leads the relay...
    let port = common::free_port();
    let mut leader = common::KillOnDrop(
        common::vsm()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", db.url())
            .env("RABBITMQ_URL", RABBITMQ_URL)
            .env("VSM_EVENTS__EXCHANGE", &exchange)
            .env("VSM_EVENTS__RELAY_POLL_MS", "100")
            .spawn()
            .unwrap(),
    );
    let leader_base = format!("http://127.0.0.1:{port}");
    common::wait_ready(&leader_base).await;
    let deadline = std::time::Instant::now() + WAIT;
    while !reqwest::get(format!("{leader_base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains("cybernetic_event_relay_leader 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first process never led"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = Instance::start(instance_config(&db, Some((RABBITMQ_URL, &exchange)))).await;
    common::wait_ready(&b.base).await;
    let (t, key) = tenant_with_key(&b.repo, "failover").await;
    let mut client = SseClient::connect(&b.base, &key, "", None).await;
    expect_connected(&mut client).await;
    record(&b.repo, t, "episode.created", 1).await;
    assert_eq!(n_of(&client.next_event(WAIT).await.unwrap()), 1);

    // ...and dies without a chance to clean up.
    leader.0.kill().unwrap();
    leader.0.wait().unwrap();
    for n in 2..=4 {
        record(&b.repo, t, "episode.created", n).await;
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(n_of(
            &client.next_event(WAIT).await.expect("the survivor relays"),
        ));
    }
    assert_eq!(got, vec![2, 3, 4]);
}

#[tokio::test]
async fn a_stream_ends_after_its_maximum_duration_and_resumes_where_it_left_off() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.events.max_stream_secs = 1;
    let a = Instance::start(config).await;
    let (t, key) = tenant_with_key(&a.repo, "long").await;
    let mut client = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut client).await;
    record(&a.repo, t, "episode.created", 1).await;
    let first = client.next_event(WAIT).await.unwrap();
    let end = client.next_event(WAIT).await.unwrap();
    assert_eq!(end.event.as_deref(), Some("disconnected"));
    assert!(end.data.contains("max_duration"), "{end:?}");
    record(&a.repo, t, "episode.created", 2).await;
    let mut again = SseClient::connect(&a.base, &key, "", first.id).await;
    expect_connected(&mut again).await;
    assert_eq!(n_of(&again.next_event(WAIT).await.unwrap()), 2);
}

/// `events::record_many` (the job engine's batched `job.*` events) validates every topic, keeps
/// to the tenant door, and records the whole batch or nothing.
#[tokio::test]
async fn record_many_validates_every_topic_and_keeps_to_the_tenant() {
    use vsm::events::{Record, record_many};
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (a, _) = tenant_with_key(&repo, "many-a").await;
    let (b, _) = tenant_with_key(&repo, "many-b").await;
    let rec = |tenant: Uuid, topic: &str| Record {
        tenant_id: Some(tenant),
        topic: topic.to_owned(),
        payload: json!({"n": 1}),
    };
    let count = || async {
        use diesel::sql_types::BigInt;
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = db.owner_conn().await;
        let n: N = diesel::sql_query("SELECT count(*) AS n FROM events")
            .get_result(&mut conn)
            .await
            .unwrap();
        n.n
    };

    let mut tx = repo.tenant_tx(a).await.unwrap();
    let refused = record_many(&mut tx, &[rec(a, "job.completed"), rec(a, "Not A Topic")]).await;
    assert!(
        matches!(
            refused,
            Err(vsm::repo::DbError::Validation { field: "topic", .. })
        ),
        "{refused:?}"
    );
    drop(tx);
    assert_eq!(count().await, 0);

    let mut tx = repo.tenant_tx(a).await.unwrap();
    assert!(
        record_many(&mut tx, &[rec(b, "job.completed")])
            .await
            .is_err()
    );
    drop(tx);
    assert_eq!(count().await, 0);

    let mut tx = repo.tenant_tx(a).await.unwrap();
    record_many(&mut tx, &[rec(a, "job.completed"), rec(a, "job.discarded")])
        .await
        .unwrap();
    record_many(&mut tx, &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count().await, 2);
}

/// Every committed event as (id, tenant, topic, n), in id order.
async fn committed_with_topics(db: &TestDb) -> Vec<(i64, Uuid, String, i64)> {
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        tenant_id: Uuid,
        #[diesel(sql_type = Text)]
        topic: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = db.owner_conn().await;
    let rows: Vec<R> = diesel::sql_query(
        "SELECT seq, tenant_id, topic, (payload->>'n')::bigint AS n FROM events
         WHERE seq IS NOT NULL AND tenant_id IS NOT NULL ORDER BY seq",
    )
    .load(&mut conn)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| (r.seq, r.tenant_id, r.topic, r.n))
        .collect()
}

/// Reads (id, topic, n) until the frame whose `n` is `marker` (not included).
async fn read_until_marker(client: &mut SseClient, marker: i64) -> Vec<(i64, String, i64)> {
    let mut got = Vec::new();
    loop {
        let f = client.next_event(WAIT).await.expect("an event");
        assert!(f.id.is_some(), "stream ended early: {f:?}");
        let n = n_of(&f);
        if n == marker {
            return got;
        }
        got.push((f.id.unwrap(), f.event.clone().unwrap_or_default(), n));
    }
}

/// Many subscribers on one instance, two tenants, four different filters, events committed by
/// concurrent writers: each subscriber gets exactly its tenant's events that match its filter,
/// in id order, none twice and none missing (the hub's per-worker fan-out routes each event to
/// the matching streams only).
#[tokio::test]
async fn many_subscribers_with_different_filters_each_get_exactly_their_events_in_order() {
    let db = TestDb::migrated().await;
    let a = Instance::start(instance_config(&db, None)).await;
    let tenants = [
        tenant_with_key(&a.repo, "fan-a").await,
        tenant_with_key(&a.repo, "fan-b").await,
    ];
    // Every filter takes `episode.created`, the topic of the end marker.
    let filters = [
        "",
        "episode.*",
        "episode.created",
        "episode.created,policy.*",
    ];
    let mut clients = Vec::new();
    for i in 0..32 {
        let (t, key) = &tenants[i % 2];
        let filter = filters[(i / 2) % filters.len()];
        let query = if filter.is_empty() {
            String::new()
        } else {
            format!("?topics={filter}")
        };
        let mut c = SseClient::connect(&a.base, key, &query, None).await;
        expect_connected(&mut c).await;
        clients.push((*t, filter, c));
    }
    let topics = [
        "episode.created",
        "episode.failed",
        "policy.created",
        "artifact.stored",
    ];
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let repo = a.repo.clone();
        let t = tenants[(w % 2) as usize].0;
        writers.push(tokio::spawn(async move {
            for i in 0..60i64 {
                record(&repo, t, topics[((i + w) % 4) as usize], w * 1000 + i).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for (t, _) in &tenants {
        record(&a.repo, *t, "episode.created", -1).await;
    }
    // The relay sequences asynchronously: read the history once it has all of it.
    all_published(&db, 4 * 60 + 2).await;
    let all = committed_with_topics(&db).await;
    for (t, filter, mut c) in clients {
        let f = vsm::events::topic::Filters::parse(filter).unwrap();
        let want: Vec<(i64, String, i64)> = all
            .iter()
            .filter(|(_, tenant, topic, n)| *tenant == t && f.matches(topic) && *n != -1)
            .map(|(id, _, topic, n)| (*id, topic.clone(), *n))
            .collect();
        assert!(!want.is_empty());
        assert_eq!(
            read_until_marker(&mut c, -1).await,
            want,
            "filter {filter:?}"
        );
    }
}

/// One client stops reading while others keep up: the others get every event in order while
/// it is stalled, and it is cut off (`overflow`) instead of buffering without bound.
#[tokio::test]
async fn a_stalled_subscriber_does_not_hold_up_the_others() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.events.client_buffer = 64;
    let a = Instance::start(config).await;
    let (t, key) = tenant_with_key(&a.repo, "stall").await;
    let mut slow = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut slow).await;
    let mut fast = Vec::new();
    for _ in 0..2 {
        let mut c = SseClient::connect(&a.base, &key, "", None).await;
        expect_connected(&mut c).await;
        fast.push(c);
    }
    // The fast clients read concurrently with the flood; the writer commits a batch at a time
    // and waits until every fast client has it, so their buffers never hold more than a batch
    // however slow the relay is, while the stalled client's fills up.
    const SENT: i64 = 400;
    const BATCH: i64 = 16;
    let progress: Vec<_> = (0..fast.len())
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0)))
        .collect();
    let readers: Vec<_> = fast
        .into_iter()
        .zip(progress.clone())
        .map(|(mut c, got_so_far)| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < SENT as usize {
                    let f = c
                        .next_event(WAIT)
                        .await
                        .expect("a fast client keeps getting events");
                    assert!(f.id.is_some(), "a fast client was cut off: {f:?}");
                    got.push(n_of(&f));
                    got_so_far.store(got.len() as i64, std::sync::atomic::Ordering::Release);
                }
                got
            })
        })
        .collect();
    let blob = "x".repeat(64 * 1024);
    for batch in 0..SENT / BATCH {
        record_blobs(&a.repo, t, batch * BATCH..(batch + 1) * BATCH, &blob).await;
        let target = (batch + 1) * BATCH;
        common::eventually(WAIT, "every fast client has the batch", || {
            let progress = progress.clone();
            async move {
                progress
                    .iter()
                    .all(|p| p.load(std::sync::atomic::Ordering::Acquire) >= target)
            }
        })
        .await;
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), (0..SENT).collect::<Vec<_>>());
    }
    // Only now does the stalled client read: what it was given before being let go, then why.
    let mut received = 0;
    let last = loop {
        let f = slow.next_event(WAIT).await.expect("a final frame");
        if f.id.is_none() {
            break f;
        }
        assert_eq!(n_of(&f), received);
        received += 1;
    };
    assert_eq!(last.event.as_deref(), Some("disconnected"));
    assert!(last.data.contains("overflow"), "{last:?}");
    assert!(received < SENT, "received {received} of {SENT}");
}

/// Clients resume by `Last-Event-ID` while two writers keep committing (in-process fan-out):
/// each gets every later event exactly once, in order, across the replay → live handover.
#[tokio::test]
async fn replay_to_live_handover_under_concurrent_publishing_has_no_gap_or_duplicate() {
    let db = TestDb::migrated().await;
    let a = Instance::start(instance_config(&db, None)).await;
    let (t, key) = tenant_with_key(&a.repo, "handover").await;
    let mut watcher = SseClient::connect(&a.base, &key, "", None).await;
    expect_connected(&mut watcher).await;
    const PER_WRITER: i64 = 200;
    let mut writers = Vec::new();
    for w in 0..2i64 {
        let repo = a.repo.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                record(&repo, t, "episode.created", w * 1000 + i).await;
            }
        }));
    }
    // Resume from wherever the watcher is, every 40 events, while the writers go on; and once
    // from the very beginning.
    let mut resumed = vec![(0, SseClient::connect(&a.base, &key, "", Some(0)).await)];
    let mut seen = 0;
    while seen < 2 * PER_WRITER {
        let f = watcher.next_event(WAIT).await.expect("live event");
        seen += 1;
        if seen % 40 == 0 {
            let last = f.id.unwrap();
            resumed.push((
                last,
                SseClient::connect(&a.base, &key, "", Some(last)).await,
            ));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    record(&a.repo, t, "episode.created", -1).await;
    all_published(&db, 2 * PER_WRITER + 1).await;
    let all = committed_with_topics(&db).await;
    for (after, mut c) in resumed {
        expect_connected(&mut c).await;
        let want: Vec<(i64, String, i64)> = all
            .iter()
            .filter(|(id, _, _, n)| *id > after && *n != -1)
            .map(|(id, _, topic, n)| (*id, topic.clone(), *n))
            .collect();
        assert_eq!(read_until_marker(&mut c, -1).await, want, "after {after}");
    }
}
