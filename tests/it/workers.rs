//! The workers doing their real work against PostgreSQL (CONTRACT §7): the episode analyzer
//! (built-in, LLM, fallback), the policy evaluator's actions and event hook, the health check.

use crate::common;
use crate::jobs_support;

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use common::TestDb;
use jobs_support::*;
use serde_json::{Value, json};
use uuid::Uuid;
use vsm::config::{Config, ServiceUrl};
use vsm::jobs::{Engine, JobState, storage};
use vsm::repo::Repo;
use vsm::schemas::storage::tenant;
use vsm::schemas::vsm::episode::{self, EpisodeStatus, NewEpisode};
use vsm::schemas::vsm::policy::{self, NewPolicy};
use vsm::workers::episode_analyzer::{self, builtin};
use vsm::workers::policy_evaluator::{self, RelayedEvent};

const TITLE: &str = "Checkout outage";
const CONTENT: &str = "Checkout failed for twenty minutes. The incident was resolved by \
    rolling back; details at https://status.example.com/42 and from @oncall (ops@example.com).";

fn engine_with(repo: &Repo, config: Config) -> Engine {
    let registry = vsm::workers::registry(&config);
    Engine::new(
        repo.clone(),
        Arc::new(config),
        registry,
        options(&[("default", 5), ("analysis", 5)]),
    )
}

/// A tenant with one pending episode and its analysis job, inserted together.
async fn episode_with_job(repo: &Repo) -> (Uuid, Uuid) {
    let (t, _) = tenant::create(repo, "acme", None).await.unwrap();
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    let ep = episode::insert(
        &mut tx,
        &NewEpisode {
            id: Uuid::now_v7(),
            tenant_id: t.id,
            title: TITLE.into(),
            content: CONTENT.into(),
            source: None,
            kind: None,
            tags: vec![],
        },
    )
    .await
    .unwrap();
    storage::insert(&mut tx, &episode_analyzer::job(t.id, ep.id))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (t.id, ep.id)
}

async fn load_episode(repo: &Repo, tenant: Uuid, id: Uuid) -> episode::Episode {
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    episode::find(&mut tx, id).await.unwrap()
}

async fn events(db: &TestDb, topic: &str) -> Vec<(Option<Uuid>, Value)> {
    use diesel::prelude::*;
    use vsm::schemas::schema::events;
    let mut owner = db.owner_conn().await;
    diesel_async::RunQueryDsl::load(
        events::table
            .filter(events::topic.eq(topic))
            .order(events::id)
            .select((events::tenant_id, events::payload)),
        &mut owner,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_analyzer_completes_an_episode_with_the_builtin_analysis_and_emits_the_event() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, ep) = episode_with_job(&repo).await;
    assert_eq!(
        load_episode(&repo, t, ep).await.status,
        EpisodeStatus::Pending
    );
    let e = engine_with(&repo, Config::default());
    assert_eq!(e.drain("analysis").await.unwrap(), 1);

    let done = load_episode(&repo, t, ep).await;
    assert_eq!(done.status, EpisodeStatus::Complete);
    let analysis = done.analysis.unwrap();
    assert_eq!(analysis, builtin::analyze(TITLE, CONTENT));
    assert_eq!(
        analysis["summary"],
        "Checkout failed for twenty minutes. The incident was resolved by rolling back; details at https://status.example.com/42 and from @oncall (ops@example.com)."
    );
    assert_eq!(
        analysis["keywords"],
        json!(["checkout", "failed", "twenty", "minutes", "incident"])
    );
    assert_eq!(
        analysis["sentiment"],
        json!({"label": "negative", "score": -0.33})
    );
    assert_eq!(
        analysis["entities"],
        json!({"urls": ["https://status.example.com/42"], "emails": ["ops@example.com"], "mentions": ["@oncall"]})
    );
    assert_eq!(analysis["word_count"], 19);
    let analyzed = events(&db, "episode.analyzed").await;
    assert_eq!(analyzed.len(), 1);
    assert_eq!(analyzed[0].0, Some(t));
    assert_eq!(analyzed[0].1["episode_id"], ep.to_string());
    // The attempt is in the tenant's task log and the job raised job.completed.
    let mut owner = db.owner_conn().await;
    assert_eq!(
        count(&mut owner, "SELECT count(*) AS n FROM task_log WHERE worker = 'episode_analyzer' AND state = 'completed'").await,
        1
    );
    assert_eq!(events(&db, "job.completed").await.len(), 1);

    // A duplicate job for a complete episode changes nothing.
    let mut tx = repo.tenant_tx(t).await.unwrap();
    let dup = storage::insert(&mut tx, &episode_analyzer::job(t, ep))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        matches!(dup, vsm::jobs::Inserted::New(_)),
        "the first job is final, so a new one is allowed"
    );
    assert_eq!(e.drain("analysis").await.unwrap(), 1);
    assert_eq!(events(&db, "episode.analyzed").await.len(), 1);
}

#[tokio::test]
async fn the_analyzer_discards_a_job_whose_episode_is_gone() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    let job = storage::insert(&mut tx, &episode_analyzer::job(t.id, Uuid::now_v7()))
        .await
        .unwrap()
        .into_job();
    tx.commit().await.unwrap();
    engine_with(&repo, Config::default())
        .drain("analysis")
        .await
        .unwrap();
    let mut owner = db.owner_conn().await;
    let job = get(&mut owner, job.id).await;
    assert_eq!(job.state, JobState::Discarded);
    assert!(
        job.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

/// A local OpenAI-compatible server answering every completion with `status` and `body`;
/// returns its base URL and the requests it received.
async fn fake_llm(status: u16, body: Value) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        let recorded = recorded.clone();
        let body = body.clone();
        App::new().route(
            "/v1/chat/completions",
            web::post().to(move |req: web::Json<Value>| {
                recorded.lock().unwrap().push(req.into_inner());
                let body = body.clone();
                async move {
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                        .json(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), seen)
}

fn llm_config(url: &str) -> Config {
    let mut config = Config::default();
    config.analysis.llm_url = Some(ServiceUrl::parse(url).unwrap());
    config.analysis.llm_model = "test-model".into();
    config.analysis.llm_timeout_secs = 5;
    config
}

#[tokio::test]
async fn the_analyzer_uses_the_configured_llm() {
    let answer = json!({"summary": "Checkout broke; rollback fixed it.", "keywords": ["Checkout", "rollback"],
                        "sentiment": {"label": "negative", "score": -0.6}});
    let (url, seen) = fake_llm(
        200,
        json!({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer.to_string()}, "finish_reason": "stop"}]}),
    )
    .await;
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, ep) = episode_with_job(&repo).await;
    engine_with(&repo, llm_config(&url))
        .drain("analysis")
        .await
        .unwrap();

    let analysis = load_episode(&repo, t, ep).await.analysis.unwrap();
    assert_eq!(analysis["analyzer"], "llm:test-model");
    assert_eq!(analysis["summary"], "Checkout broke; rollback fixed it.");
    assert_eq!(analysis["keywords"], json!(["checkout", "rollback"]));
    assert_eq!(
        analysis["sentiment"],
        json!({"label": "negative", "score": -0.6})
    );
    // Entities and the word count stay exact.
    assert_eq!(
        analysis["entities"],
        builtin::analyze(TITLE, CONTENT)["entities"]
    );
    assert_eq!(analysis["word_count"], 19);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["model"], "test-model");
    assert!(
        requests[0]["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains(TITLE)
    );
}

#[tokio::test]
async fn the_analyzer_falls_back_to_the_builtin_one_when_the_llm_fails() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let builtin_analysis = builtin::analyze(TITLE, CONTENT);
    // A server error, an answer that is not the requested JSON, and nothing listening.
    let (failing, _) = fake_llm(500, json!({"error": "overloaded"})).await;
    let (garbled, _) = fake_llm(
        200,
        json!({"choices": [{"message": {"content": "I cannot do that"}}]}),
    )
    .await;
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    for (url, why) in [
        (failing, "500"),
        (garbled, "not a JSON object"),
        (closed, "llm unavailable: connection refused"),
    ] {
        let (t, ep) = {
            let mut owner = db.owner_conn().await;
            diesel_async::RunQueryDsl::execute(
                diesel::sql_query("DELETE FROM tenants"),
                &mut owner,
            )
            .await
            .unwrap();
            episode_with_job(&repo).await
        };
        engine_with(&repo, llm_config(&url))
            .drain("analysis")
            .await
            .unwrap();
        let done = load_episode(&repo, t, ep).await;
        assert_eq!(done.status, EpisodeStatus::Complete, "{url}");
        let mut analysis = done.analysis.unwrap();
        let error = analysis["llm_error"].take();
        assert!(error.as_str().unwrap().contains(why), "{url}: {error}");
        // Tenant-visible: a fixed reason, never the internal endpoint.
        assert!(
            !error.as_str().unwrap().contains("127.0.0.1"),
            "{url}: {error}"
        );
        analysis.as_object_mut().unwrap().remove("llm_error");
        assert_eq!(analysis, builtin_analysis, "{url}");
    }
}

fn new_policy(t: Uuid, name: &str, priority: i32, rules: Value) -> NewPolicy {
    NewPolicy {
        id: Uuid::now_v7(),
        tenant_id: t,
        name: name.into(),
        description: None,
        rules,
        active: true,
        priority,
        effective_from: None,
        effective_until: None,
    }
}

fn relayed(t: Option<Uuid>, seq: i64, topic: &str, payload: Value) -> RelayedEvent {
    RelayedEvent {
        tenant_id: t,
        seq: Some(seq),
        topic: topic.into(),
        payload,
    }
}

#[tokio::test]
async fn the_policy_evaluator_performs_each_action_of_triggered_policies() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let t = tenant::create(&repo, "acme", None).await.unwrap().0.id;
    let other = tenant::create(&repo, "other", None).await.unwrap().0.id;
    let negative =
        json!({"field": "data.analysis.sentiment.label", "op": "eq", "value": "negative"});
    let mut tx = repo.tenant_tx(t).await.unwrap();
    for p in [
        new_policy(
            t,
            "escalate",
            10,
            json!({"when": {"topics": ["episode.analyzed"]}, "if": negative, "then": [
                {"enqueue": {"worker": "test_noop", "args": {}}},
                {"publish": {"topic": "ops.escalated", "data": {"level": 2}}},
                {"set_state": {"system": 3, "merge": {"alert": true}}},
            ]}),
        ),
        new_policy(
            t,
            "page",
            5,
            json!({"when": {"topics": ["episode.*", "job.*"]}, "then": [
                {"notify": {"channel": "telegram", "to": "123456789", "template": "Episode {{data.episode_id}}"}},
            ]}),
        ),
        NewPolicy {
            active: false,
            ..new_policy(
                t,
                "inactive",
                9,
                json!({"when": {"topics": ["episode.analyzed"]}, "then": [{"publish": {"topic": "never.inactive"}}]}),
            )
        },
        NewPolicy {
            effective_from: Some(chrono::Utc::now() - chrono::Duration::days(2)),
            effective_until: Some(chrono::Utc::now() - chrono::Duration::days(1)),
            ..new_policy(
                t,
                "expired",
                8,
                json!({"when": {"topics": ["episode.analyzed"]}, "then": [{"publish": {"topic": "never.expired"}}]}),
            )
        },
        // Stored without the API's validation (as an old policy could have been): enqueueing a
        // system worker is refused by the evaluator too.
        new_policy(
            t,
            "sneaky",
            6,
            json!({"when": {"topics": ["episode.analyzed"]}, "then": [
                {"enqueue": {"worker": "health_check", "args": {}}},
            ]}),
        ),
        new_policy(
            t,
            "positive_only",
            7,
            json!({"when": {"topics": ["episode.analyzed"]},
            "if": {"field": "data.analysis.sentiment.label", "op": "eq", "value": "positive"},
            "then": [{"publish": {"topic": "never.positive"}}]}),
        ),
    ] {
        policy::insert(&mut tx, &p).await.unwrap();
    }
    tx.commit().await.unwrap();

    // The relay hook: only events of tenants with a listening policy become jobs.
    let event = relayed(
        Some(t),
        7,
        "episode.analyzed",
        json!({"episode_id": "e1", "analysis": {"sentiment": {"label": "negative"}}}),
    );
    let n = policy_evaluator::enqueue_for_events(
        &repo,
        &[
            event.clone(),
            relayed(Some(t), 8, "artifact.stored", json!({})),
            relayed(Some(other), 9, "episode.analyzed", json!({})),
            relayed(None, 10, "system.health", json!({})),
            relayed(Some(t), 11, "policy.triggered", json!({})),
            relayed(
                Some(t),
                13,
                "job.completed",
                json!({"worker": "policy_evaluator"}),
            ),
            relayed(
                Some(t),
                12,
                "episode.created",
                json!({"_policy_depth": policy_evaluator::MAX_DEPTH}),
            ),
            event.clone(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        n, 1,
        "one job for the matching event (the repeat is the same unique job)"
    );

    let mut config = Config::default();
    config.jobs.test_workers = true;
    let e = engine_with(&repo, config);
    // The evaluation, then the test_noop job it enqueued.
    assert_eq!(e.drain("default").await.unwrap(), 2);
    let mut owner = db.owner_conn().await;
    // The notify action names a chat not linked to the tenant: it fails, recorded with the
    // reason and the recipient masked, and nothing is sent.
    let job: vsm::jobs::Job = {
        use diesel::prelude::*;
        use vsm::schemas::schema::jobs;
        diesel_async::RunQueryDsl::first(
            jobs::table
                .filter(jobs::worker.eq("policy_evaluator"))
                .select(vsm::jobs::Job::as_select()),
            &mut owner,
        )
        .await
        .unwrap()
    };
    assert_eq!(job.state, JobState::Discarded);
    let error = job.errors[0]["error"].as_str().unwrap();
    assert!(
        error.contains("page")
            && error.contains("not one of this tenant's recipients")
            && !error.contains("123456789"),
        "{error}"
    );
    assert!(!error.contains("123456789"), "recipient leaked: {error}");

    // enqueue: a job of the tenant-scoped worker for the tenant, none of the system one.
    assert_eq!(
        count(
            &mut owner,
            &format!(
                "SELECT count(*) AS n FROM jobs WHERE worker = 'test_noop' AND tenant_id = '{t}'"
            )
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM jobs WHERE worker = 'health_check'"
        )
        .await,
        0
    );
    // publish: the event, marked so that policies cannot loop forever.
    let escalated = events(&db, "ops.escalated").await;
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].0, Some(t));
    assert_eq!(escalated[0].1, json!({"level": 2, "_policy_depth": 1}));
    // set_state: a new version of S3 with the merge applied.
    let mut tx = repo.tenant_tx(t).await.unwrap();
    let s3 = vsm::schemas::vsm::system_state::latest(&mut tx, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s3.version, s3.state), (1, json!({"alert": true})));
    drop(tx);
    // ...and its `system.state` event, as a state change through the API has.
    let states = events(&db, "system.state").await;
    assert_eq!(states.len(), 1);
    assert_eq!(
        states[0].1,
        json!({"system": 3, "version": 1, "state": {"alert": true}})
    );
    // policy.triggered for both triggered policies, in priority order, with each action's result.
    let triggered = events(&db, "policy.triggered").await;
    assert_eq!(triggered.len(), 2);
    assert_eq!(triggered[0].1["policy"], "escalate");
    assert_eq!(
        triggered[0].1["event"],
        json!({"id": 7, "topic": "episode.analyzed"})
    );
    let statuses: Vec<&str> = triggered[0].1["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "ok", "ok"]);
    assert_eq!(triggered[1].1["policy"], "page");
    assert_eq!(triggered[1].1["actions"][0]["status"], "error");
    // Inactive, expired and non-matching policies did nothing.
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM events WHERE topic LIKE 'never.%'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn the_health_check_stores_its_measurements_and_emits_system_health() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let mut config = Config::default();
    // Redis configured but not answering: the check is degraded, and still completes.
    config.redis.url =
        Some(ServiceUrl::parse(&format!("redis://127.0.0.1:{}", common::free_port())).unwrap());
    let job = insert(&repo, vsm::workers::health_check::job()).await;
    let e = engine_with(&repo, config);
    assert_eq!(e.drain("default").await.unwrap(), 1);
    let mut owner = db.owner_conn().await;
    assert_eq!(get(&mut owner, job.id).await.state, JobState::Completed);
    let health = events(&db, "system.health").await;
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].0, None, "system-wide");
    let payload = &health[0].1;
    assert_eq!(payload["status"], "degraded");
    assert_eq!(payload["checks"]["database"]["status"], "ok");
    assert!(payload["checks"]["database"]["latency_ms"].is_number());
    assert_eq!(payload["checks"]["redis"]["status"], "unavailable");
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM health_checks WHERE status = 'degraded' AND checks ? 'redis'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_health_check_reaches_redis_and_rabbitmq_and_names_no_secret_when_it_cannot() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let measure = |redis: &str, rabbitmq: &str| {
        let mut config = Config::default();
        config.redis.url = Some(ServiceUrl::parse(redis).unwrap());
        config.rabbitmq.url = Some(ServiceUrl::parse(rabbitmq).unwrap());
        let config = Arc::new(config);
        let ctx = vsm::jobs::JobContext::new(
            repo.clone(),
            config.clone(),
            vsm::workers::registry(&config),
        );
        async move { vsm::workers::health_check::measure(&ctx).await }
    };
    let up = measure("redis://127.0.0.1:6379", common::RABBITMQ_URL).await;
    assert_eq!(up["redis"]["status"], "ok", "{up:?}");
    assert_eq!(up["rabbitmq"]["status"], "ok", "{up:?}");

    // Wrong credentials and a closed port: unavailable, with a fixed reason and no URL.
    let port = common::free_port();
    let down = measure(
        &format!("redis://:s3cret-pw@127.0.0.1:{port}"),
        "amqp://guest:s3cret-pw@127.0.0.1:5672/%2f",
    )
    .await;
    for name in ["redis", "rabbitmq"] {
        assert_eq!(down[name]["status"], "unavailable", "{down:?}");
        let error = down[name]["error"].as_str().unwrap();
        assert!(
            !error.contains("s3cret") && !error.contains("127.0.0.1"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn rules_are_compiled_once_per_policy_version_not_per_event() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let t = tenant::create(&repo, "compiled", None).await.unwrap().0.id;
    let rules = json!({"when": {"topics": ["episode.created"]},
        "if": {"field": "data.title", "op": "matches", "value": "^(outage|incident)"},
        "then": [{"publish": {"topic": "ops.alert", "data": {}}}]});
    let p = new_policy(t, "alert", 0, rules);
    let mut tx = repo.tenant_tx(t).await.unwrap();
    policy::insert(&mut tx, &p).await.unwrap();
    tx.commit().await.unwrap();
    let config = Config::default();
    let ctx = vsm::jobs::JobContext::new(
        repo.clone(),
        Arc::new(config.clone()),
        vsm::workers::registry(&config),
    );
    let cache = policy_evaluator::RuleCache::new(16);
    for i in 0..5 {
        let event = json!({"seq": i, "payload": {"title": "outage in checkout"}});
        let failures = policy_evaluator::evaluate_with(&ctx, &cache, t, "episode.created", &event)
            .await
            .unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    assert_eq!(
        events(&db, "ops.alert").await.len(),
        5,
        "every event evaluated"
    );
    assert_eq!(cache.compilations(), 1, "compiled once for five events");
    // A changed policy is compiled again, once.
    let mut tx = repo.tenant_tx(t).await.unwrap();
    let changed = NewPolicy {
        rules: json!({"when": {"topics": ["episode.created"]},
            "if": {"field": "data.title", "op": "matches", "value": "^never"},
            "then": [{"publish": {"topic": "ops.alert", "data": {}}}]}),
        ..p.clone()
    };
    policy::update(&mut tx, p.id, &changed).await.unwrap();
    tx.commit().await.unwrap();
    for i in 5..8 {
        let event = json!({"seq": i, "payload": {"title": "outage in checkout"}});
        policy_evaluator::evaluate_with(&ctx, &cache, t, "episode.created", &event)
            .await
            .unwrap();
    }
    assert_eq!(cache.compilations(), 2);
    assert_eq!(
        events(&db, "ops.alert").await.len(),
        5,
        "the new rules apply at once"
    );
}

#[tokio::test]
async fn an_analysis_whose_last_attempt_is_rescued_marks_the_episode_failed() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, ep) = episode_with_job(&repo).await;
    let mut owner = db.owner_conn().await;
    // A node took the job's last attempt, set the episode `analyzing`, and died.
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE jobs SET attempt = max_attempts - 1"),
        &mut owner,
    )
    .await
    .unwrap();
    let mut tx = repo.system_tx().await.unwrap();
    storage::heartbeat(&mut tx, "dead", &["analysis".into()])
        .await
        .unwrap();
    let claimed = storage::fetch(&mut tx, "analysis", 10, "dead")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt, claimed[0].max_attempts);
    let mut tx = repo.tenant_tx(t).await.unwrap();
    episode::set_status(&mut tx, ep, EpisodeStatus::Analyzing)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE job_nodes SET heartbeat_at = now() - interval '1 hour' WHERE id = 'dead'",
        ),
        &mut owner,
    )
    .await
    .unwrap();

    let e = engine_with(&repo, Config::default());
    let shutdown = vsm::shutdown::Shutdown::new();
    let running = tokio::spawn(e.run(shutdown.clone()));
    common::eventually(
        std::time::Duration::from_secs(15),
        "the episode is marked error",
        || async { load_episode(&repo, t, ep).await.status == EpisodeStatus::Error },
    )
    .await;
    let episode = load_episode(&repo, t, ep).await;
    assert!(
        episode
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("stopped heartbeating"),
        "{:?}",
        episode.error
    );
    let failed = events(&db, "episode.failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, Some(t));
    assert_eq!(failed[0].1["episode_id"], json!(ep));
    assert_eq!(events(&db, "job.discarded").await.len(), 1);
    shutdown.trigger();
    running.await.unwrap().unwrap();
}
