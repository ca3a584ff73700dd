//! Hostile inputs: auth. Guessing keys costs the database about a bucket's worth of lookups per
//! client address, then 429; minting keys buys no more request capacity; a tenant's keys and
//! policies are capped (CONTRACT §4).

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use reqwest::Client;
use serde_json::{Value, json};

use crate::common::{self, Instance, TestDb, instance_config};

const ADMIN: &str = "admin-secret-token";

async fn tenant(base: &str, slug: &str) -> String {
    let res = Client::new()
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"slug": slug, "name": "Test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    v["api_key"].as_str().unwrap().to_owned()
}

fn random_key() -> String {
    format!("vsm_{}", uuid::Uuid::now_v7().simple())
}

/// `n` requests with random keys, 8 at a time, each with `headers`; the status codes.
async fn flood(base: &str, n: usize, forwarded_for: Option<&str>) -> Vec<u16> {
    flood_with(&format!("{base}/v1/systems"), n, forwarded_for, |req| {
        req.bearer_auth(random_key())
    })
    .await
}

/// `n` requests to `url`, 8 at a time, each given a fresh made-up credential by `forge`; the
/// status codes.
async fn flood_with(
    url: &str,
    n: usize,
    forwarded_for: Option<&str>,
    forge: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Vec<u16> {
    let http = Client::new();
    futures_util::stream::iter(0..n)
        .map(|_| {
            let mut req = forge(http.get(url));
            if let Some(xff) = forwarded_for {
                req = req.header("x-forwarded-for", xff);
            }
            async move {
                let res = req.send().await.unwrap();
                if res.status() == 429 {
                    assert!(res.headers().contains_key("retry-after"));
                }
                res.status().as_u16()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Calls of `vsm_resolve_api_key` in `db` so far (see [`lookups`]).
async fn key_lookups(db: &TestDb, instances: &[&Instance]) -> i64 {
    lookups(db, instances, "vsm_resolve_api_key").await
}

/// Calls of the SQL function `function` in `db` so far. Backends publish their function
/// statistics when idle (at most once a second) and always when they exit, so the test stops
/// the instances, ends their connections and reads the total once they are gone.
async fn lookups(db: &TestDb, instances: &[&Instance], function: &str) -> i64 {
    for instance in instances {
        instance.shutdown.trigger();
    }
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    );
    // Until the stopped instances' last tasks are gone, one may still open a connection.
    common::eventually(Duration::from_secs(10), "instance connections gone", || {
        let terminate = terminate.clone();
        let db_name = db.name.clone();
        async move {
            let mut c = common::connect(&db_name).await;
            diesel::sql_query(&terminate)
                .get_result::<N>(&mut c)
                .await
                .map(|r| r.n == 0)
                .unwrap_or(false)
        }
    })
    .await;
    let mut fresh = db.owner_conn().await;
    diesel::sql_query(
        "SELECT coalesce(sum(calls), 0)::bigint AS n FROM pg_stat_user_functions \
         WHERE funcname = $1",
    )
    .bind::<diesel::sql_types::Text, _>(function)
    .get_result::<N>(&mut fresh)
    .await
    .unwrap()
    .n
}

async fn counted_db() -> TestDb {
    let db = TestDb::migrated().await;
    let mut owner = db.owner_conn().await;
    diesel::sql_query(format!(
        "ALTER DATABASE \"{}\" SET track_functions = 'all'",
        db.name
    ))
    .execute(&mut owner)
    .await
    .unwrap();
    db
}

#[tokio::test]
async fn a_flood_of_random_keys_from_one_address_gets_429_and_costs_about_a_burst_of_lookups() {
    let db = counted_db().await;
    let mut config = instance_config(&db, None);
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    let a = Instance::start(config).await;
    tenant(&a.base, "flooded").await;
    let started = Instant::now();
    let codes = flood(&a.base, 400, None).await;
    let elapsed = started.elapsed().as_secs_f64();
    let unauthorized = codes.iter().filter(|c| **c == 401).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(unauthorized + limited, 400, "{codes:?}");
    let lookups = key_lookups(&db, &[&a]).await;
    eprintln!(
        "400 random keys in {elapsed:.1}s: {unauthorized} x 401, {limited} x 429, {lookups} key lookups"
    );
    // Default failed-auth bucket: burst 20, 1 per second.
    let allowed = 20 + elapsed.ceil() as i64 + 1;
    assert!(lookups <= allowed, "{lookups} lookups > {allowed}");
    assert!(limited >= 400 - allowed as usize, "{limited} x 429");
}

/// Made-up session cookies pay from the same address bucket as made-up keys: a flood of them
/// costs about a burst of session lookups, then 429.
#[tokio::test]
async fn a_flood_of_made_up_session_cookies_gets_429_and_costs_about_a_burst_of_lookups() {
    let db = counted_db().await;
    let a = Instance::start(instance_config(&db, None)).await;
    let started = Instant::now();
    let codes = flood_with(&format!("{}/dashboard/session", a.base), 400, None, |req| {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        req.header("cookie", format!("vsm_session={token}"))
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let unauthorized = codes.iter().filter(|c| **c == 401).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(unauthorized + limited, 400, "{codes:?}");
    let lookups = lookups(&db, &[&a], "vsm_resolve_dashboard_session").await;
    // Default failed-auth bucket: burst 20, 1 per second.
    let allowed = 20 + elapsed.ceil() as i64 + 1;
    assert!(lookups <= allowed, "{lookups} lookups > {allowed}");
    assert!(limited >= 400 - allowed as usize, "{limited} x 429");
}

#[tokio::test]
async fn x_forwarded_for_counts_only_behind_a_trusted_proxy() {
    let db = TestDb::migrated().await;
    let limited = |codes: &[u16]| codes.iter().filter(|c| **c == 429).count();

    // Untrusted peer: a different X-Forwarded-For per request changes nothing.
    let mut config = instance_config(&db, None);
    config.rate_limit.failed_auth_burst = 5.0;
    config.rate_limit.failed_auth_per_second = 0.1;
    let a = Instance::start(config.clone()).await;
    let http = Client::new();
    let mut codes = Vec::new();
    for i in 0..20 {
        let res = http
            .get(format!("{}/v1/systems", a.base))
            .bearer_auth(random_key())
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        codes.push(res.status().as_u16());
    }
    assert!(limited(&codes) >= 14, "{codes:?}");

    // Behind a trusted proxy (the test is the proxy), the client is the rightmost address the
    // proxy did not add itself; what the client put in front of it is ignored.
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let b = Instance::start(config).await;
    let codes = flood(&b.base, 20, Some("192.0.2.1, 203.0.113.7")).await;
    assert!(limited(&codes) >= 14, "{codes:?}");
    let codes = flood(&b.base, 5, Some("192.0.2.2, 203.0.113.7")).await;
    assert_eq!(limited(&codes), 5, "{codes:?}");
    // Another client behind the same proxy has its own bucket.
    let codes = flood(&b.base, 3, Some("203.0.113.8")).await;
    assert_eq!(codes, vec![401, 401, 401]);
}

#[tokio::test]
async fn minting_more_keys_buys_no_more_capacity() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    config.rate_limit.requests_per_second = 100.0;
    config.rate_limit.burst = 100.0;
    config.rate_limit.tenant_requests_per_second = 1.0;
    config.rate_limit.tenant_burst = 10.0;
    let a = Instance::start(config).await;
    let first = tenant(&a.base, "minting").await;
    let http = Client::new();
    let mut keys = vec![first.clone()];
    for _ in 0..3 {
        let res = http
            .post(format!("{}/v1/api-keys", a.base))
            .bearer_auth(&first)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        keys.push(v["key"].as_str().unwrap().to_owned());
    }
    let started = Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..40 {
        let res = http
            .get(format!("{}/v1/systems", a.base))
            .bearer_auth(&keys[i % keys.len()])
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => ok += 1,
            429 => {
                let v: Value = res.json().await.unwrap();
                assert!(
                    v["error"]["message"].as_str().unwrap().contains("tenant"),
                    "{v}"
                );
                limited += 1;
            }
            s => panic!("status {s}"),
        }
    }
    // 10 of burst (3 spent minting) plus 1 a second, shared by all four keys.
    let allowed = 10 - 3 + started.elapsed().as_secs_f64().ceil() as i32 + 1;
    assert!(ok <= allowed, "{ok} requests served > {allowed}");
    assert!(limited >= 40 - allowed, "{limited}");
}

#[tokio::test]
async fn a_tenant_cannot_mint_keys_or_policies_past_its_caps() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    config.limits.max_api_keys_per_tenant = 3;
    config.limits.max_policies_per_tenant = 2;
    let a = Instance::start(config).await;
    let key = tenant(&a.base, "capped").await;
    let http = Client::new();
    let mint = || async {
        http.post(format!("{}/v1/api-keys", a.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
    };
    // The tenant's first key counts: two more fit.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let res = mint().await;
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let res = mint().await;
    assert_eq!(res.status(), 409);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "conflict");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("limits.max_api_keys_per_tenant"),
        "{message}"
    );
    // A revoked key frees its place.
    let res = http
        .delete(format!("{}/v1/api-keys/{}", a.base, ids[0]))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(mint().await.status(), 201);

    let rules = json!({
        "when": {"topics": ["episode.created"]},
        "then": [{"publish": {"topic": "alert.raised", "data": {}}}]
    });
    let create = |name: &str| {
        http.post(format!("{}/v1/policies", a.base))
            .bearer_auth(&key)
            .json(&json!({"name": name, "rules": rules}))
            .send()
    };
    assert_eq!(create("one").await.unwrap().status(), 201);
    assert_eq!(create("two").await.unwrap().status(), 201);
    let res = create("three").await.unwrap();
    assert_eq!(res.status(), 409);
    let v: Value = res.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("limits.max_policies_per_tenant"),
        "{message}"
    );
}

#[tokio::test]
async fn with_redis_the_address_bucket_is_shared_by_instances_and_fails_open() {
    let db = counted_db().await;
    let mut redis = common::PrivateRedis::start().await;
    let config = || {
        let mut c = instance_config(&db, None);
        c.redis.url = Some(vsm::config::ServiceUrl::parse(&redis.url()).unwrap());
        c
    };
    let a = Instance::start(config()).await;
    let b = Instance::start(config()).await;
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
    let started = Instant::now();
    let mut codes = flood(&a.base, 100, None).await;
    codes.extend(flood(&b.base, 100, None).await);
    let elapsed = started.elapsed().as_secs_f64();
    let limited = codes.iter().filter(|c| **c == 429).count();
    let lookups = key_lookups(&db, &[&a, &b]).await;
    eprintln!(
        "200 random keys over two instances in {elapsed:.1}s: {limited} x 429, {lookups} key lookups"
    );
    // One bucket of 20 for the address across both instances, not one each.
    let allowed = 20 + elapsed.ceil() as i64 + 1;
    assert!(lookups <= allowed, "{lookups} lookups > {allowed}");
    assert!(limited >= 200 - allowed as usize, "{codes:?}");

    // Redis gone: the limiter fails open (unknown keys are 401 again, nothing is 500).
    let c = Instance::start(config()).await;
    redis.stop();
    common::eventually(Duration::from_secs(10), "redis seen down", || async {
        let res = http.get(format!("{}/ready", c.base)).send().await.unwrap();
        let body: Value = res.json().await.unwrap();
        body["checks"]["redis"]["status"] == "unavailable"
    })
    .await;
    let codes = flood(&c.base, 10, None).await;
    assert_eq!(codes, vec![401; 10]);
}
