//! Hostile inputs: policies. A tenant's rules are the one place a tenant writes something the
//! platform later runs (regexes, conditions, actions), so each budget is asserted end to end:
//! the status code, how long the hostile request took, the latency of a concurrent `/health`
//! and the resident set size of a real `vsm serve` child process.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestDb;
use serde_json::{Value, json};

/// `/health` must keep answering while a hostile policy is being refused.
const MAX_HEALTH_LATENCY: Duration = Duration::from_millis(500);
/// Peak RSS growth of the server while it refuses the hostile policy (the 1 MiB body itself,
/// parsed, is a few MB).
const MAX_GROWTH_KIB: u64 = 50 * 1024;
/// The hostile POST is refused well within this.
const MAX_REJECT_LATENCY: Duration = Duration::from_secs(1);

/// `n` distinct `matches` comparisons nested as `any` lists of 100 (the old per-list limit), so
/// that no single list is long: only a budget over the whole rule stops it.
fn many_patterns(n: usize) -> Value {
    let leaves: Vec<Value> = (0..n)
        .map(|i| json!({"field": "data.x", "op": "matches", "value": format!("(a|{i})+z")}))
        .collect();
    let mut level: Vec<Value> = leaves;
    while level.len() > 100 {
        level = level
            .chunks(100)
            .map(|c| json!({"any": c.to_vec()}))
            .collect();
    }
    json!({"any": level})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_policy_of_16000_patterns_is_refused_fast_without_stalling_the_server() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (_, key) = vsm::schemas::storage::tenant::create(&repo, "hostile", None)
        .await
        .unwrap();
    let key = key.key;
    // One HTTP worker: work done on it would stall every other request.
    let server = common::ServeChild::start(&db, &[("VSM_SERVER__WORKERS", "1")]).await;
    let (base, pid) = (server.base.clone(), server.pid());
    let http = reqwest::Client::new();

    let body = json!({
        "name": "hostile",
        "rules": {"when": {"topics": ["episode.created"]}, "if": many_patterns(16_000),
                  "then": [{"publish": {"topic": "x.y", "data": {}}}]},
    })
    .to_string();
    assert!(
        body.len() < 1024 * 1024,
        "fits the body limit: {}",
        body.len()
    );
    // Warm up the policy path so one-time allocations are in the baseline.
    let res = http
        .post(format!("{base}/v1/policies"))
        .bearer_auth(&key)
        .json(&json!({"name": "warm", "rules": {"when": {"topics": ["a.b"]}, "then": [{"publish": {"topic": "c.d"}}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let baseline = common::rss_kib(pid);

    // Sample RSS and /health latency while the hostile request is in flight.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(common::rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let health = {
        let (stop, base) = (stop.clone(), base.clone());
        tokio::spawn(async move {
            // A fresh connection per probe, as a load balancer's health check would make.
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let res = reqwest::Client::new()
                    .get(format!("{base}/health"))
                    .send()
                    .await;
                assert!(res.is_ok_and(|r| r.status() == 200));
                worst = worst.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            worst
        })
    };
    let started = Instant::now();
    let res = http
        .post(format!("{base}/v1/policies"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = res.status().as_u16();
    let error: Value = res.json().await.unwrap_or(Value::Null);
    // Let the health prober run a little after the response too: a handler that returned but
    // left work behind would show here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let worst_health = health.await.unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "hostile policy: status {status} in {took:?}; worst /health {worst_health:?}; \
         RSS growth {} MiB (baseline {} MiB)",
        growth / 1024,
        baseline / 1024
    );
    let shown: String = error.to_string().chars().take(300).collect();
    assert_eq!(status, 422, "{shown}");
    assert_eq!(error["error"]["code"], "validation_failed");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("rules.if.any[0]"), "{message}");
    assert!(took < MAX_REJECT_LATENCY, "refusal took {took:?}");
    assert!(
        worst_health < MAX_HEALTH_LATENCY,
        "/health took {worst_health:?}"
    );
    assert!(growth < MAX_GROWTH_KIB, "RSS grew by {growth} KiB");
}

/// Series of the per-topic event metric families, and the topic label of each.
fn topic_series(metrics: &str) -> Vec<(String, String)> {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("cybernetic_events_recorded_total{")
                || l.starts_with("cybernetic_events_published_total{")
                || l.starts_with("cybernetic_events_delivered_total{")
        })
        .filter_map(|l| {
            let (family, rest) = l.split_once('{')?;
            let topic = rest.strip_prefix("topic=\"")?.split('"').next()?;
            Some((family.to_owned(), topic.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_topics_and_unmatched_paths_add_no_metrics_series() {
    let db = TestDb::migrated().await;
    let instance = common::Instance::start(common::instance_config(&db, None)).await;
    let base = instance.base.clone();
    let (_, key) = vsm::schemas::storage::tenant::create(&instance.repo, "flood", None)
        .await
        .unwrap();
    let key = key.key;
    let http = reqwest::Client::new();
    let metrics = || async {
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let mut stream = common::SseClient::connect(&base, &key, "", None).await;
    assert_eq!(stream.status, 200);
    let before = metrics().await;

    // 100 invented topics of 2 KB each, published by 7 policies on one episode.
    let topic = |i: usize| format!("t{i}.{}", "a".repeat(2000));
    for (p, chunk) in (0..100).collect::<Vec<_>>().chunks(16).enumerate() {
        let then: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"publish": {"topic": topic(*i), "data": {}}}))
            .collect();
        let res = http
            .post(format!("{base}/v1/policies"))
            .bearer_auth(&key)
            .json(&json!({"name": format!("flood-{p}"), "rules": {"when": {"topics": ["episode.created"]}, "then": then}}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            201,
            "{}",
            res.text().await.unwrap_or_default()
        );
    }
    let res = http
        .post(format!("{base}/v1/episodes"))
        .bearer_auth(&key)
        .json(&json!({"title": "trigger", "content": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // Run the evaluation the relay enqueues (once it has), then read the 100 events back.
    let config = vsm::config::Config::default();
    let engine = crate::jobs_support::engine(
        &instance.repo,
        vsm::workers::registry(&config),
        crate::jobs_support::options(&[("default", 2)]),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while engine.drain("default").await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "no evaluation job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut invented = 0;
    while invented < 100 {
        let frame = stream
            .next_event(Duration::from_secs(15))
            .await
            .expect("the published events");
        if frame.event.as_deref().is_some_and(|e| e.starts_with('t')) {
            invented += 1;
        }
    }
    // And requests to 50 paths no route matches.
    for i in 0..50 {
        http.get(format!("{base}/no-such-route/{i}"))
            .send()
            .await
            .unwrap();
    }
    // The relay counts an event published only after the broker confirmed it (which may be
    // after the SSE client saw it): wait until each family has counted both kinds of topic.
    let families = [
        "cybernetic_events_recorded_total",
        "cybernetic_events_published_total",
        "cybernetic_events_delivered_total",
    ];
    common::eventually(
        Duration::from_secs(10),
        "known topics and `other` counted in every family",
        || async {
            let series = topic_series(&metrics().await);
            families.iter().all(|family| {
                ["episode.created", "other"]
                    .iter()
                    .all(|label| series.iter().any(|(f, l)| f == family && l == label))
            })
        },
    )
    .await;
    let after = metrics().await;

    let (series_before, series_after) = (topic_series(&before), topic_series(&after));
    eprintln!(
        "/metrics: {} -> {} bytes; per-topic event series {} -> {}",
        before.len(),
        after.len(),
        series_before.len(),
        series_after.len()
    );
    for (family, label) in &series_after {
        assert!(
            label == "other" || vsm::events::topic::KNOWN_TOPICS.contains(&label.as_str()),
            "{family} labelled with an unknown topic: {}",
            label.chars().take(40).collect::<String>()
        );
    }
    assert!(
        series_after.len() <= 3 * (vsm::events::topic::KNOWN_TOPICS.len() + 1),
        "{} series",
        series_after.len()
    );
    assert!(!after.contains("no-such-route"), "raw path as a label");
    // New route templates add a few histograms; 100 topics of 2 KB would add 600 KB.
    assert!(
        after.len() < before.len() + 64 * 1024,
        "/metrics grew to {} bytes",
        after.len()
    );
}
