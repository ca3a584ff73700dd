//! Episodes, policies, jobs and queues over `/v1` (CONTRACT §4), with tenant isolation.

use crate::common;

use common::{Instance, TestDb, instance_config};
use serde_json::{Value, json};

use common::{ADMIN, Api};

async fn api(db: &TestDb) -> (Instance, Api) {
    Api::start(instance_config(db, None)).await
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.owner_conn().await;
    diesel::sql_query(sql)
        .get_result::<N>(&mut conn)
        .await
        .unwrap()
        .n
}

#[tokio::test]
async fn creating_an_episode_commits_it_with_its_job_and_event_or_nothing() {
    let db = TestDb::migrated().await;
    let (_a, api) = api(&db).await;
    let key = api.tenant("episodes").await;
    let (s, ep) = api
        .call(
            "POST",
            "/v1/episodes",
            &key,
            Some(json!({"title": "Outage", "content": "db down", "tags": ["ops"]})),
        )
        .await;
    assert_eq!(s, 201, "{ep}");
    assert_eq!(ep["status"], "pending");
    let id = ep["id"].as_str().unwrap();
    assert_eq!(
        count(&db, &format!("SELECT count(*) AS n FROM jobs WHERE worker = 'episode_analyzer' AND args->>'episode_id' = '{id}'")).await,
        1
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) AS n FROM events WHERE topic = 'episode.created' AND payload->>'id' = '{id}'")).await,
        1
    );
    let (s, got) = api
        .call("GET", &format!("/v1/episodes/{id}"), &key, None)
        .await;
    assert_eq!((s, got["title"].as_str()), (200, Some("Outage")));

    // A refused episode leaves no episode, job or event behind.
    for bad in [
        json!({"title": "", "content": "x"}),
        json!({"title": "t".repeat(501), "content": "x"}),
        json!({"title": "ok", "content": "x", "tags": [""]}),
    ] {
        let (s, body) = api.call("POST", "/v1/episodes", &key, Some(bad)).await;
        assert_eq!(s, 422, "{body}");
        assert_eq!(body["error"]["code"], "validation_failed");
    }
    assert_eq!(count(&db, "SELECT count(*) AS n FROM episodes").await, 1);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM jobs WHERE worker = 'episode_analyzer'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM events WHERE topic = 'episode.created'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn episode_pages_visit_every_row_exactly_once_while_rows_are_inserted() {
    let db = TestDb::migrated().await;
    let (_a, api) = api(&db).await;
    let key = api.tenant("pages").await;
    for i in 0..45 {
        let tags = if i % 3 == 0 {
            json!(["third"])
        } else {
            json!([])
        };
        let (s, _) = api
            .call(
                "POST",
                "/v1/episodes",
                &key,
                Some(json!({"title": format!("e{i}"), "content": "", "tags": tags})),
            )
            .await;
        assert_eq!(s, 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut inserted = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/episodes?limit=10&cursor={c}"),
            None => "/v1/episodes?limit=10".into(),
        };
        let (s, page) = api.call("GET", &path, &key, None).await;
        assert_eq!(s, 200);
        for item in page["items"].as_array().unwrap() {
            seen.push(item["title"].as_str().unwrap().to_owned());
        }
        // Keep inserting while walking.
        for _ in 0..3 {
            api.call(
                "POST",
                "/v1/episodes",
                &key,
                Some(json!({"title": format!("late{inserted}"), "content": ""})),
            )
            .await;
            inserted += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a row was visited twice");
    for i in 0..45 {
        assert!(seen.contains(&format!("e{i}")), "e{i} never visited");
    }
    let (_, tagged) = api
        .call("GET", "/v1/episodes?tag=third&limit=500", &key, None)
        .await;
    assert_eq!(tagged["items"].as_array().unwrap().len(), 15);
    let (_, pending) = api
        .call("GET", "/v1/episodes?status=pending&limit=1", &key, None)
        .await;
    assert_eq!(pending["items"].as_array().unwrap().len(), 1);
    let (s, body) = api
        .call("GET", "/v1/episodes?status=sleeping", &key, None)
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body["error"]["message"],
        "status must be pending, analyzing, complete or error"
    );
}

#[tokio::test]
async fn policies_validate_rules_naming_the_json_path_and_record_events() {
    let db = TestDb::migrated().await;
    let (_a, api) = api(&db).await;
    let key = api.tenant("policies").await;
    let rules = json!({
        "when": {"topics": ["episode.created"]},
        "if": {"field": "data.title", "op": "contains", "value": "Outage"},
        "then": [{"publish": {"topic": "alert.raised", "data": {"why": "outage"}}}]
    });
    let (s, p) = api
        .call(
            "POST",
            "/v1/policies",
            &key,
            Some(json!({"name": "outages", "rules": rules, "priority": 5})),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_owned();
    let bad =
        json!({"when": {"topics": ["episode.created"]}, "then": [{"notify": {"channel": 7}}]});
    let (s, e) = api
        .call(
            "POST",
            "/v1/policies",
            &key,
            Some(json!({"name": "bad", "rules": bad})),
        )
        .await;
    assert_eq!(s, 422);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("then[0]"),
        "{e}"
    );
    let (s, _) = api
        .call(
            "POST",
            "/v1/policies",
            &key,
            Some(json!({"name": "outages", "rules": rules})),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = api
        .call(
            "POST",
            "/v1/policies",
            &key,
            Some(json!({"name": "win", "rules": rules,
            "effective_from": "2030-01-01T00:00:00Z", "effective_until": "2029-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, up) = api
        .call(
            "PUT",
            &format!("/v1/policies/{id}"),
            &key,
            Some(json!({"name": "outages", "rules": rules, "active": false})),
        )
        .await;
    assert_eq!((s, up["active"].as_bool()), (200, Some(false)));
    let (s, list) = api.call("GET", "/v1/policies", &key, None).await;
    assert_eq!((s, list["items"].as_array().unwrap().len()), (200, 1));
    let (s, _) = api
        .call("DELETE", &format!("/v1/policies/{id}"), &key, None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call("GET", &format!("/v1/policies/{id}"), &key, None)
        .await;
    assert_eq!(s, 404);
    for topic in ["policy.created", "policy.updated", "policy.deleted"] {
        assert_eq!(
            count(
                &db,
                &format!("SELECT count(*) AS n FROM events WHERE topic = '{topic}'")
            )
            .await,
            1,
            "{topic}"
        );
    }
}

#[tokio::test]
async fn an_event_matching_an_active_policy_enqueues_its_evaluation() {
    let db = TestDb::migrated().await;
    let (_a, api) = api(&db).await;
    let key = api.tenant("triggered").await;
    let rules = json!({"when": {"topics": ["episode.*"]}, "then": [{"publish": {"topic": "alert.raised", "data": {}}}]});
    let (s, _) = api
        .call(
            "POST",
            "/v1/policies",
            &key,
            Some(json!({"name": "p", "rules": rules})),
        )
        .await;
    assert_eq!(s, 201);
    api.call(
        "POST",
        "/v1/episodes",
        &key,
        Some(json!({"title": "t", "content": ""})),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, jobs) = api.call("GET", "/v1/jobs?queue=default", &key, None).await;
        let evaluations = jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| {
                j["worker"] == "policy_evaluator"
                    && j["args"]["event"]["topic"] == "episode.created"
            })
            .count();
        if evaluations == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no evaluation job: {jobs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tenants_never_see_or_touch_each_others_rows() {
    let db = TestDb::migrated().await;
    let (_a, api) = api(&db).await;
    let a = api.tenant("tenant-a").await;
    let b = api.tenant("tenant-b").await;
    let (_, ep) = api
        .call(
            "POST",
            "/v1/episodes",
            &a,
            Some(json!({"title": "secret", "content": "a's"})),
        )
        .await;
    let rules = json!({"when": {"topics": ["episode.created"]}, "then": [{"publish": {"topic": "x.y", "data": {}}}]});
    let (_, pol) = api
        .call(
            "POST",
            "/v1/policies",
            &a,
            Some(json!({"name": "p", "rules": rules})),
        )
        .await;
    let (_, jobs) = api.call("GET", "/v1/jobs", &a, None).await;
    let job_id = jobs["items"][0]["id"].as_str().unwrap().to_owned();
    let ep_id = ep["id"].as_str().unwrap();
    let pol_id = pol["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/v1/episodes/{ep_id}")),
        ("GET", format!("/v1/policies/{pol_id}")),
        ("PUT", format!("/v1/policies/{pol_id}")),
        ("DELETE", format!("/v1/policies/{pol_id}")),
        ("GET", format!("/v1/jobs/{job_id}")),
        ("POST", format!("/v1/jobs/{job_id}/cancel")),
        ("POST", format!("/v1/jobs/{job_id}/retry")),
    ] {
        let body = (method == "PUT").then(|| json!({"name": "p", "rules": rules}));
        let (s, _) = api.call(method, &path, &b, body).await;
        assert_eq!(s, 404, "{method} {path}");
    }
    for path in ["/v1/episodes", "/v1/policies", "/v1/jobs"] {
        let (s, list) = api.call("GET", path, &b, None).await;
        assert_eq!(s, 200);
        assert!(
            list["items"].as_array().unwrap().is_empty(),
            "{path}: {list}"
        );
    }
    let (_, queues) = api.call("GET", "/v1/queues", &b, None).await;
    for q in queues["items"].as_array().unwrap() {
        assert!(
            q["counts"].as_object().unwrap().values().all(|n| n == 0),
            "{q}"
        );
    }
    // A's job is untouched.
    let (_, job) = api
        .call("GET", &format!("/v1/jobs/{job_id}"), &a, None)
        .await;
    assert_ne!(job["state"], "cancelled");
}

#[tokio::test]
async fn jobs_cancel_and_retry_and_queue_control_needs_the_admin_token() {
    let db = TestDb::migrated().await;
    let (_a, api) = api(&db).await;
    let key = api.tenant("jobs").await;
    api.call(
        "POST",
        "/v1/episodes",
        &key,
        Some(json!({"title": "t", "content": ""})),
    )
    .await;
    let (_, jobs) = api
        .call("GET", "/v1/jobs?state=available", &key, None)
        .await;
    let id = jobs["items"][0]["id"].as_str().unwrap().to_owned();
    let (s, job) = api
        .call("POST", &format!("/v1/jobs/{id}/cancel"), &key, None)
        .await;
    assert_eq!((s, job["state"].as_str()), (200, Some("cancelled")));
    let (s, _) = api
        .call("POST", &format!("/v1/jobs/{id}/cancel"), &key, None)
        .await;
    assert_eq!(s, 409);
    let (s, job) = api
        .call("POST", &format!("/v1/jobs/{id}/retry"), &key, None)
        .await;
    assert_eq!((s, job["state"].as_str()), (200, Some("available")));
    let (s, body) = api.call("GET", "/v1/jobs?state=bogus", &key, None).await;
    assert_eq!(s, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("state must be one of available, scheduled")),
        "{body}"
    );
    // Filter text no stored value can hold (PostgreSQL text has no NUL) is a malformed query,
    // refused before the database sees it; so is a cursor whose key holds one.
    let nul_cursor = hex::encode("v1:a\0b");
    for path in [
        "/v1/jobs?queue=a%00b".to_owned(),
        "/v1/jobs?worker=%00".to_owned(),
        "/v1/episodes?tag=a%00b".to_owned(),
        format!("/v1/artifacts?cursor={nul_cursor}"),
    ] {
        let (s, body) = api.call("GET", &path, &key, None).await;
        assert_eq!(s, 400, "{path}: {body}");
    }

    let (s, queues) = api.call("GET", "/v1/queues", &key, None).await;
    assert_eq!(s, 200);
    let analysis = queues["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "analysis")
        .unwrap()
        .clone();
    assert_eq!(analysis["concurrency"], 5);
    assert_eq!(analysis["counts"]["available"], 1);
    assert_eq!(analysis["paused"], false);

    let (s, _) = api
        .call("POST", "/v1/queues/analysis/pause", &key, None)
        .await;
    assert_eq!(s, 401);
    let (s, _) = api
        .call("POST", "/v1/queues/analysis/pause", ADMIN, None)
        .await;
    assert_eq!(s, 204);
    let (_, queues) = api.call("GET", "/v1/queues", &key, None).await;
    let analysis = queues["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "analysis")
        .unwrap()
        .clone();
    assert_eq!(analysis["paused"], true);
    let (s, _) = api
        .call("POST", "/v1/queues/analysis/resume", ADMIN, None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call("POST", "/v1/queues/analysis/explode", ADMIN, None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_policy_may_enqueue_only_tenant_scoped_workers() {
    let db = TestDb::migrated().await;
    let (_a, api) = api(&db).await;
    let key = api.tenant("enqueuer").await;
    let episode = json!({"episode_id": uuid::Uuid::now_v7()});
    for (worker, args, status) in [
        ("health_check", json!({}), 422),
        ("policy_evaluator", json!({}), 422),
        ("episode_analyzer", episode, 201),
    ] {
        let rules = json!({"when": {"topics": ["episode.created"]}, "then": [
            {"publish": {"topic": "x.y", "data": {}}},
            {"enqueue": {"worker": worker, "args": args}},
        ]});
        let (s, body) = api
            .call(
                "POST",
                "/v1/policies",
                &key,
                Some(json!({"name": worker, "rules": rules})),
            )
            .await;
        assert_eq!(s, status, "{worker}: {body}");
        if status == 422 {
            assert_eq!(body["error"]["code"], "validation_failed");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.starts_with("rules.then[1].enqueue.worker"),
                "{message}"
            );
        }
    }
    // A worker a policy may enqueue, with args its job could not run on: refused at save,
    // naming the field, instead of a job that fails every time.
    for (args, at) in [
        (
            json!({}),
            "rules.then[0].enqueue.args: missing field `episode_id`",
        ),
        (
            json!({"episode_id": "not-a-uuid"}),
            "rules.then[0].enqueue.args.episode_id:",
        ),
        (
            json!({"episode_id": uuid::Uuid::now_v7(), "extra": 1}),
            "rules.then[0].enqueue.args.extra: unknown field `extra`",
        ),
    ] {
        let rules = json!({"when": {"topics": ["episode.created"]}, "then": [
            {"enqueue": {"worker": "episode_analyzer", "args": args}},
        ]});
        let (s, body) = api
            .call(
                "POST",
                "/v1/policies",
                &key,
                Some(json!({"name": "bad-args", "rules": rules})),
            )
            .await;
        assert_eq!(s, 422, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(at), "{message}");
    }
}

#[tokio::test]
async fn a_tenant_cannot_retry_a_system_job_and_no_other_tenant_hears_of_it() {
    use std::time::Duration;
    let db = TestDb::migrated().await;
    let (a, api) = api(&db).await;
    let created = |slug: &'static str| {
        let api = &api;
        async move {
            let v: Value = api
                .http
                .post(format!("{}/v1/tenants", api.base))
                .bearer_auth(ADMIN)
                .json(&json!({"slug": slug}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                v["tenant_id"]
                    .as_str()
                    .unwrap()
                    .parse::<uuid::Uuid>()
                    .unwrap(),
                v["api_key"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (tenant_a, key_a) = created("old-policy").await;
    let (_, key_b) = created("bystander").await;
    // A finished health check carrying tenant A's id: what an old policy's enqueue left behind.
    let job =
        crate::jobs_support::insert(&a.repo, vsm::workers::health_check::job().tenant(tenant_a))
            .await;
    let mut owner = db.owner_conn().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "UPDATE jobs SET state = 'completed', completed_at = now() WHERE id = '{}'",
            job.id
        )),
        &mut owner,
    )
    .await
    .unwrap();
    let mut stream_b = common::SseClient::connect(&api.base, &key_b, "", None).await;
    assert_eq!(stream_b.status, 200);

    let (s, body) = api
        .call("POST", &format!("/v1/jobs/{}/retry", job.id), &key_a, None)
        .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (_, shown) = api
        .call("GET", &format!("/v1/jobs/{}", job.id), &key_a, None)
        .await;
    assert_eq!(shown["state"], "completed", "left as it was");

    // Whatever is runnable now runs: nothing, so no system.health is produced.
    let config = vsm::config::Config::default();
    let engine = crate::jobs_support::engine(
        &a.repo,
        vsm::workers::registry(&config),
        crate::jobs_support::options(&[("default", 2)]),
    );
    assert_eq!(engine.drain("default").await.unwrap(), 0);
    // B's own next event arrives; nothing system-wide came before it.
    api.call(
        "POST",
        "/v1/episodes",
        &key_b,
        Some(json!({"title": "sentinel", "content": ""})),
    )
    .await;
    loop {
        let frame = stream_b
            .next_event(Duration::from_secs(10))
            .await
            .expect("B's own event");
        assert_ne!(frame.event.as_deref(), Some("system.health"), "{frame:?}");
        if frame.event.as_deref() == Some("episode.created") {
            break;
        }
    }
}

/// Every `201 Created` names the new resource in `Location`, and reading that back answers it.
#[tokio::test]
async fn a_created_resource_is_read_back_at_its_location() {
    let db = TestDb::migrated().await;
    let (_a, api) = api(&db).await;
    let key = api.tenant("located").await;
    let rules = json!({"when": {"topics": ["episode.created"]},
                       "then": [{"publish": {"topic": "alert.raised"}}]});
    for (path, body) in [
        (
            "/v1/episodes",
            json!({"title": "Outage", "content": "db down"}),
        ),
        ("/v1/policies", json!({"name": "outages", "rules": rules})),
        (
            "/v1/webhooks",
            json!({"url": "https://hooks.example.com/in"}),
        ),
    ] {
        let res = api
            .http
            .post(format!("{}{path}", api.base))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201, "{path}");
        let location = res
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("{path}: no Location"))
            .to_str()
            .unwrap()
            .to_owned();
        let created: Value = res.json().await.unwrap();
        let id = created["id"].as_str().unwrap();
        assert_eq!(location, format!("{path}/{id}"));
        let (s, read) = api.call("GET", &location, &key, None).await;
        assert_eq!((s, read["id"].as_str()), (200, Some(id)), "{location}");
    }
}
