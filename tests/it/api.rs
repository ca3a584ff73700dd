//! The `/v1` API (CONTRACT §4): tenants, API keys, systems, errors, rate limits, OpenAPI.

use crate::common;

use std::time::Duration;

use common::{Instance, TestDb, instance_config};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret-token";

async fn instance(db: &TestDb) -> Instance {
    let mut config = instance_config(db, None);
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    Instance::start(config).await
}

async fn new_tenant(base: &str, slug: &str) -> (String, String) {
    let res = Client::new()
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"slug": slug, "name": "Test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    (
        v["tenant_id"].as_str().unwrap().to_owned(),
        v["api_key"].as_str().unwrap().to_owned(),
    )
}

async fn error_code(res: reqwest::Response) -> (StatusCode, String, String) {
    let status = res.status();
    assert!(res.headers().contains_key("x-request-id"));
    let v: Value = res.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn tenants_need_the_admin_token() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    let url = format!("{}/v1/tenants", a.base);
    let body = json!({"slug": "acme"});
    let (s, code, _) = error_code(http.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!((s.as_u16(), code.as_str()), (401, "unauthorized"));
    let (s, _, _) = error_code(
        http.post(&url)
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    // An ordinary API key is not the admin token.
    let (_, key) = new_tenant(&a.base, "first").await;
    let (s, _, _) = error_code(
        http.post(&url)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    let (s, code, msg) = error_code(
        http.post(&url)
            .bearer_auth(ADMIN)
            .json(&json!({"slug": "Bad Slug"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), code.as_str()), (422, "validation_failed"));
    assert!(msg.starts_with("slug"), "{msg}");
    let (s, code, _) = error_code(
        http.post(&url)
            .bearer_auth(ADMIN)
            .json(&json!({"slug": "first"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), code.as_str()), (409, "conflict"));
    let (s, code, msg) = error_code(
        http.post(&url)
            .bearer_auth(ADMIN)
            .json(&json!({"slug": "x1", "colour": "red"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s.as_u16(), code.as_str()),
        (422, "validation_failed"),
        "{msg}"
    );

    // Without a configured admin token the route refuses everything.
    let open = Instance::start(instance_config(&db, None)).await;
    let res = http
        .post(format!("{}/v1/tenants", open.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn a_revoked_key_stops_working() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    let (_, key) = new_tenant(&a.base, "keys").await;
    let res = http
        .post(format!("{}/v1/api-keys", a.base))
        .bearer_auth(&key)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let second: Value = res.json().await.unwrap();
    let second_key = second["key"].as_str().unwrap();
    let systems = |k: String| {
        let http = http.clone();
        let url = format!("{}/v1/systems", a.base);
        async move { http.get(url).bearer_auth(k).send().await.unwrap().status() }
    };
    assert_eq!(systems(second_key.to_owned()).await, 200);
    let res = http
        .delete(format!(
            "{}/v1/api-keys/{}",
            a.base,
            second["id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(systems(second_key.to_owned()).await, 401);
    assert_eq!(systems(key.clone()).await, 200);
    // Revoking again, or another tenant's key: 404.
    let (_, other) = new_tenant(&a.base, "other").await;
    let res = http
        .delete(format!(
            "{}/v1/api-keys/{}",
            a.base,
            second["id"].as_str().unwrap()
        ))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(systems("vsm_0000".into()).await, 401);
}

#[tokio::test]
async fn systems_latest_update_conflict_history_and_event() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    let (tenant, key) = new_tenant(&a.base, "systems").await;
    let (_, other) = new_tenant(&a.base, "systems-b").await;
    let get = |path: String, k: String| {
        let http = http.clone();
        let url = format!("{}{path}", a.base);
        async move { http.get(url).bearer_auth(k).send().await.unwrap() }
    };
    let all: Value = get("/v1/systems".into(), key.clone())
        .await
        .json()
        .await
        .unwrap();
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert_eq!(items[3]["name"], "Intelligence");
    assert_eq!(items[3]["version"], 0);
    assert!(all["next_cursor"].is_null());

    let put = |n: i64, body: Value| {
        let http = http.clone();
        let url = format!("{}/v1/systems/{n}/state", a.base);
        let key = key.clone();
        async move {
            http.put(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    for v in 1..=7 {
        let res = put(3, json!({"state": {"load": v}, "expected_version": v - 1})).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["version"], v);
    }
    let (s, code, _) =
        error_code(put(3, json!({"state": {"load": 0}, "expected_version": 3})).await).await;
    assert_eq!((s.as_u16(), code.as_str()), (409, "conflict"));
    let (s, _, msg) = error_code(put(3, json!({"state": [1, 2]})).await).await;
    assert_eq!(s, 422);
    assert!(msg.starts_with("state"), "{msg}");
    let (s, _, _) = error_code(put(6, json!({"state": {}})).await).await;
    assert_eq!(s, 404);
    let (s, _, _) = error_code(put(3, json!({"stat": {}})).await).await;
    assert_eq!(s, 422);

    let one: Value = get("/v1/systems/3".into(), key.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (one["version"].as_i64(), &one["state"]),
        (Some(7), &json!({"load": 7}))
    );
    // Another tenant sees its own, untouched S3.
    let theirs: Value = get("/v1/systems/3".into(), other.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["version"], 0);

    // History, newest first, three at a time: every version exactly once.
    let mut versions = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/systems/3/history?limit=3&cursor={c}"),
            None => "/v1/systems/3/history?limit=3".into(),
        };
        let page: Value = get(q, key.clone()).await.json().await.unwrap();
        versions.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["version"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(versions, (1..=7).rev().collect::<Vec<_>>());
    let (s, _, _) =
        error_code(get("/v1/systems/3/history?limit=0".into(), key.clone()).await).await;
    assert_eq!(s, 400);
    let (s, _, _) =
        error_code(get("/v1/systems/3/history?cursor=nothex".into(), key.clone()).await).await;
    assert_eq!(s, 400);

    // Each update recorded its event in the same transaction.
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.owner_conn().await;
    let n: N = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM events WHERE topic = 'system.state' AND tenant_id = '{tenant}'"
    ))
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(n.n, 7);
}

#[tokio::test]
async fn request_errors_use_the_error_format() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.server.json_body_limit = 1024;
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    let a = Instance::start(config).await;
    let (_, key) = new_tenant(&a.base, "errors").await;
    let http = Client::new();
    let url = format!("{}/v1/systems/1/state", a.base);
    let big = json!({"state": {"blob": "x".repeat(4096)}});
    let (s, code, _) = error_code(
        http.put(&url)
            .bearer_auth(&key)
            .json(&big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), code.as_str()), (413, "payload_too_large"));
    let (s, code, _) = error_code(
        http.put(&url)
            .bearer_auth(&key)
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), code.as_str()), (415, "unsupported_media_type"));
    let (s, code, _) = error_code(
        http.put(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), code.as_str()), (400, "bad_request"));
    let (s, code, _) = error_code(
        http.get(format!("{}/v1/systems", a.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), code.as_str()), (401, "unauthorized"));
    let res = http
        .get(format!("{}/v1/systems", a.base))
        .bearer_auth(&key)
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", a.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in [
        ("get", "/live"),
        ("get", "/health"),
        ("get", "/ready"),
        ("post", "/v1/tenants"),
        ("post", "/v1/api-keys"),
        ("delete", "/v1/api-keys/{id}"),
        ("get", "/v1/systems"),
        ("get", "/v1/systems/{n}"),
        ("put", "/v1/systems/{n}/state"),
        ("get", "/v1/systems/{n}/history"),
        ("get", "/v1/events"),
        ("post", "/v1/episodes"),
        ("get", "/v1/episodes"),
        ("get", "/v1/episodes/{id}"),
        ("post", "/v1/policies"),
        ("get", "/v1/policies"),
        ("get", "/v1/policies/{id}"),
        ("put", "/v1/policies/{id}"),
        ("delete", "/v1/policies/{id}"),
        ("get", "/v1/jobs"),
        ("get", "/v1/jobs/{id}"),
        ("post", "/v1/jobs/{id}/cancel"),
        ("post", "/v1/jobs/{id}/retry"),
        ("get", "/v1/queues"),
        ("post", "/v1/queues/{name}/{action}"),
        ("put", "/v1/artifacts/{path}"),
        ("get", "/v1/artifacts/{path}"),
        ("delete", "/v1/artifacts/{path}"),
        ("get", "/v1/artifacts"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    // The stream: every platform topic with its payload's schema.
    let stream = doc["paths"]["/v1/events"]["get"]["responses"]["200"]["description"]
        .as_str()
        .unwrap();
    for (topic, schema) in vsm::events::payloads::SCHEMAS {
        assert!(stream.contains(&format!("`{topic}`")), "{topic} missing");
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing from the components"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["EpisodeCreated"]["properties"]["title"]["type"],
        "string"
    );
}

#[tokio::test]
async fn the_rate_limit_holds_across_instances_and_fails_open_without_redis() {
    let db = TestDb::migrated().await;
    let mut redis = common::PrivateRedis::start().await;
    let config = || {
        let mut c = instance_config(&db, None);
        c.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
        c.redis.url = Some(vsm::config::ServiceUrl::parse(&redis.url()).unwrap());
        // One token per 20 s: no refill while the test runs, however slow the machine.
        c.rate_limit.requests_per_second = 0.05;
        c.rate_limit.burst = 10.0;
        c
    };
    let a = Instance::start(config()).await;
    let b = Instance::start(config()).await;
    // Each limiter connects to Redis in the background and fails open until then: wait for
    // both, or the first requests would be let through uncounted.
    let http = Client::new();
    for base in [&a.base, &b.base] {
        common::eventually(Duration::from_secs(10), "redis connected", || async {
            let Ok(res) = http.get(format!("{base}/ready")).send().await else {
                return false;
            };
            let body: Value = res.json().await.unwrap_or_default();
            body["checks"]["redis"]["status"] == "ok"
        })
        .await;
    }
    let (_, key) = new_tenant(&a.base, "limited").await;
    // 10 requests of burst, spread over both instances; the next ones are refused on either.
    let mut statuses = Vec::new();
    for i in 0..14 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let res = http
            .get(format!("{base}/v1/systems"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1);
            let (_, code, _) = error_code(res).await;
            assert_eq!(code, "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(res.status().as_u16());
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        4,
        "{statuses:?}"
    );

    // Redis goes away: requests keep being answered, /ready says degraded (still 200).
    redis.stop(); // waits for the process to exit
    common::eventually(
        Duration::from_secs(10),
        "/ready reports redis down",
        || async {
            let ready = http.get(format!("{}/ready", a.base)).send().await.unwrap();
            let body: Value = ready.json().await.unwrap();
            body["checks"]["redis"]["status"] == "unavailable"
        },
    )
    .await;
    for _ in 0..20 {
        let res = http
            .get(format!("{}/v1/systems", a.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let ready = http.get(format!("{}/ready", a.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["redis"]["status"], "unavailable");
}

#[tokio::test]
async fn the_in_process_limiter_applies_without_redis() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    config.rate_limit.requests_per_second = 0.05; // no refill while the test runs
    config.rate_limit.burst = 3.0;
    let a = Instance::start(config).await;
    let (_, key) = new_tenant(&a.base, "local").await;
    let http = Client::new();
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            http.get(format!("{}/v1/systems", a.base))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, vec![200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn input_postgres_cannot_store_is_a_422_not_a_500() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let (_, key) = new_tenant(&a.base, "nul").await;
    let http = Client::new();
    let (s, code, _) = error_code(
        http.post(format!("{}/v1/api-keys", a.base))
            .bearer_auth(&key)
            .json(&json!({"name": "a\u{0}b"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), code.as_str()), (422, "validation_failed"));
    for state in [
        json!({"x": "nul\u{0}"}),
        json!({"x": 1.7976931348623157e308}),
    ] {
        let (s, _, msg) = error_code(
            http.put(format!("{}/v1/systems/2/state", a.base))
                .bearer_auth(&key)
                .json(&json!({"state": state}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 422, "{msg}");
        assert!(msg.starts_with("state"), "{msg}");
    }
    let (s, code, _) = error_code(
        http.get(format!("{}/v1/systems/notanumber", a.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), code.as_str()), (404, "not_found"));
}

/// Every request is counted once under its route template, however the label was found: a
/// static path (remembered per worker thread after its first request), a dynamic path, and
/// paths no route matches.
#[tokio::test]
async fn every_request_is_counted_once_under_its_route_template() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let (_, key) = new_tenant(&a.base, "counted").await;
    let http = Client::new();
    const ROUNDS: u64 = 25;
    for round in 0..ROUNDS {
        let get = |path: String| http.get(format!("{}{path}", a.base)).bearer_auth(&key);
        assert_eq!(get("/health".into()).send().await.unwrap().status(), 200);
        assert_eq!(
            get("/v1/systems".into()).send().await.unwrap().status(),
            200
        );
        let one = get(format!("/v1/systems/{}", round % 5 + 1));
        assert_eq!(one.send().await.unwrap().status(), 200);
        let nothing = get(format!("/v1/nothing/{round}")).send().await.unwrap();
        assert_eq!(nothing.status(), 404);
    }
    let text = common::metrics_text(&a.base).await;
    // Read off the exposition's lines: prometheus-parse mis-reads label values with braces.
    let count = |path: &str| -> u64 {
        let prefix = format!("cybernetic_requests_total{{method=\"GET\",path=\"{path}\",");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(count("/health"), ROUNDS);
    assert_eq!(count("/v1/systems"), ROUNDS);
    assert_eq!(count("/v1/systems/{n}"), ROUNDS);
    assert_eq!(count("unmatched"), ROUNDS);
    assert!(!text.contains("/v1/nothing"));
}
