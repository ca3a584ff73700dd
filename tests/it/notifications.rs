//! Notifications (CONTRACT §7 notification_sender, §9 outgoing Telegram): the delivery log, the
//! sender's bookkeeping and the Telegram channel against a fake Bot API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;
use vsm::config::{Config, Secret, ServiceUrl};
use vsm::jobs::Engine;
use vsm::repo::Repo;
use vsm::schemas::notify::notification::{self, AttemptResult, DeliveryState};
use vsm::schemas::storage::tenant;
use vsm::workers::notification_sender::{self, Message};

use crate::common::{self, TestDb};
use crate::fake_telegram::{FakeTelegram, Reply, TOKEN};
use crate::jobs_support::options;

fn config(db: &TestDb, fake: &str) -> Config {
    let mut c = Config {
        database: db.config(),
        ..Config::default()
    };
    c.telegram.bot_token = Some(Secret::new(TOKEN));
    c.telegram.api_base = ServiceUrl::parse(fake).unwrap();
    c.telegram.per_chat_interval_ms = 50;
    c.telegram.request_timeout_secs = 2;
    c.notifications.retry_base_secs = 0;
    c
}

fn engine(repo: &Repo, config: Config) -> Engine {
    let registry = vsm::workers::registry(&config);
    Engine::new(
        repo.clone(),
        Arc::new(config),
        registry,
        options(&[("notifications", 5)]),
    )
}

async fn send(repo: &Repo, tenant: Uuid, chat_id: i64, text: &str) -> Uuid {
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    let id = notification_sender::enqueue(
        &mut tx,
        tenant,
        Message::Telegram {
            chat_id,
            text: text.to_owned(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn load(repo: &Repo, tenant: Uuid, id: Uuid) -> notification::Notification {
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    notification::find(&mut tx, id).await.unwrap().unwrap()
}

async fn attempts(repo: &Repo, tenant: Uuid, id: Uuid) -> Vec<notification::Attempt> {
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    notification::attempts_of(&mut tx, &[id], 50).await.unwrap()
}

async fn events(db: &TestDb, topic: &str) -> Vec<Value> {
    use vsm::schemas::schema::events;
    let mut owner = db.owner_conn().await;
    diesel_async::RunQueryDsl::load(
        events::table
            .filter(events::topic.eq(topic))
            .order(events::id)
            .select(events::payload),
        &mut owner,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_message_is_delivered_and_logged_with_its_attempt() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let fake = FakeTelegram::start().await;
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    let id = send(&repo, t.id, 424242, "hello").await;
    assert_eq!(load(&repo, t.id, id).await.state, DeliveryState::Pending);

    let e = engine(&repo, config(&db, &fake.base()));
    assert_eq!(e.drain("notifications").await.unwrap(), 1);

    let delivered = fake.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].chat(), 424242);
    assert_eq!(delivered[0].text(), "hello");
    let row = load(&repo, t.id, id).await;
    assert_eq!(row.state, DeliveryState::Sent);
    assert_eq!(row.attempts, 1);
    let log = attempts(&repo, t.id, id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].result, AttemptResult::Sent);
    assert_eq!(log[0].status_code, Some(200));
    let sent = events(&db, "notification.sent").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["notification_id"], serde_json::json!(id));
    assert_eq!(sent[0]["to"], "***242", "the recipient is masked");
    // Running the job again sends nothing twice.
    assert_eq!(e.drain("notifications").await.unwrap(), 0);
    assert_eq!(fake.delivered().len(), 1);
}

#[tokio::test]
async fn a_long_text_arrives_as_three_ordered_parts() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let fake = FakeTelegram::start().await;
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    let text: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let id = send(&repo, t.id, 7, &text).await;
    let e = engine(&repo, config(&db, &fake.base()));
    e.drain("notifications").await.unwrap();
    let parts: Vec<String> = fake
        .delivered()
        .iter()
        .map(|c| c.text().to_owned())
        .collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts.concat(), text, "in order, nothing lost");
    assert_eq!(load(&repo, t.id, id).await.state, DeliveryState::Sent);
}

#[tokio::test]
async fn a_refused_chat_fails_for_good_and_retry_sends_it_again() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let fake = FakeTelegram::start().await;
    fake.reply_for(
        9,
        vec![Reply::Status(403, "Forbidden: bot was blocked by the user")],
    );
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    let id = send(&repo, t.id, 9, "hi").await;
    let e = engine(&repo, config(&db, &fake.base()));
    e.drain("notifications").await.unwrap();
    let row = load(&repo, t.id, id).await;
    assert_eq!(row.state, DeliveryState::Failed);
    assert!(row.last_error.unwrap().contains("blocked"));
    let log = attempts(&repo, t.id, id).await;
    assert_eq!(log[0].status_code, Some(403));
    assert_eq!(log[0].result, AttemptResult::Failed);
    assert_eq!(events(&db, "notification.failed").await.len(), 1);

    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    notification_sender::retry(&mut tx, id)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    e.drain("notifications").await.unwrap();
    assert_eq!(load(&repo, t.id, id).await.state, DeliveryState::Sent);
    assert_eq!(attempts(&repo, t.id, id).await.len(), 2);
    // A sent one cannot be retried.
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    assert!(notification_sender::retry(&mut tx, id).await.is_err());
}

#[tokio::test]
async fn an_unlinked_reply_is_sent_and_in_no_tenants_log() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let fake = FakeTelegram::start().await;
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    let mut tx = repo.system_tx().await.unwrap();
    let id = notification_sender::enqueue_unlinked_reply(&mut tx, 55, "not linked".into())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let e = engine(&repo, config(&db, &fake.base()));
    e.drain("notifications").await.unwrap();
    assert_eq!(fake.delivered().len(), 1);
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    assert!(notification::find(&mut tx, id).await.unwrap().is_none());
    let mut tx = repo.system_tx().await.unwrap();
    let row = notification::find(&mut tx, id).await.unwrap().unwrap();
    assert_eq!(row.state, DeliveryState::Sent);
    assert_eq!(row.tenant_id, None);
    assert!(events(&db, "notification.sent").await.is_empty());
}

#[tokio::test]
async fn text_is_bounded_at_enqueue() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    let huge = "x".repeat(notification_sender::MAX_TEXT_UNITS + 1);
    let err = notification_sender::enqueue(
        &mut tx,
        t.id,
        Message::Telegram {
            chat_id: 1,
            text: huge,
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("text"), "{err}");
}

fn run(e: Engine) -> vsm::shutdown::Shutdown {
    let shutdown = vsm::shutdown::Shutdown::new();
    tokio::spawn(e.run(shutdown.clone()));
    shutdown
}

#[tokio::test]
async fn a_429_pauses_only_that_chat() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let fake = FakeTelegram::start().await;
    let (a, b) = (1001, 2002);
    fake.reply_for(a, vec![Reply::RetryAfter(3)]);
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    send(&repo, t.id, a, "a1").await;
    for i in 0..3 {
        send(&repo, t.id, b, &format!("b{i}")).await;
    }
    let stop = run(engine(&repo, config(&db, &fake.base())));
    common::eventually(
        Duration::from_secs(30),
        "every message delivered",
        || async { fake.delivered().len() == 4 },
    )
    .await;
    stop.trigger();
    let calls = fake.calls();
    let refused = calls.iter().find(|c| c.chat() == a && !c.ok).unwrap();
    let a_sent = calls.iter().find(|c| c.chat() == a && c.ok).unwrap();
    assert!(
        a_sent.at.duration_since(refused.at) >= Duration::from_secs(3),
        "chat A waited its retry_after"
    );
    let last_b = calls
        .iter()
        .filter(|c| c.chat() == b)
        .map(|c| c.at)
        .max()
        .unwrap();
    assert!(last_b < a_sent.at, "chat B kept flowing meanwhile");
}

#[tokio::test]
async fn telegram_down_for_a_while_loses_nothing_and_duplicates_nothing() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let port = common::free_port();
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send(&repo, t.id, 30 + i, &format!("m{i}")).await);
    }
    let stop = run(engine(
        &repo,
        config(&db, &format!("http://127.0.0.1:{port}")),
    ));
    // Nothing listens: every notification records a failed attempt and stays pending.
    for id in &ids {
        common::eventually(Duration::from_secs(20), "a failed attempt", || async {
            let log = attempts(&repo, t.id, *id).await;
            log.iter()
                .any(|a| a.result == AttemptResult::Retry && a.next_retry_at.is_some())
        })
        .await;
        assert_eq!(load(&repo, t.id, *id).await.state, DeliveryState::Pending);
    }
    let fake = FakeTelegram::start_on(port).await;
    fake.reply_all(Some(Reply::Status(502, "Bad Gateway")));
    common::eventually(Duration::from_secs(30), "a 502 seen", || async {
        !fake.calls().is_empty()
    })
    .await;
    fake.reply_all(None);
    common::eventually(Duration::from_secs(60), "all delivered", || async {
        let mut sent = 0;
        for id in &ids {
            sent += usize::from(load(&repo, t.id, *id).await.state == DeliveryState::Sent);
        }
        sent == ids.len()
    })
    .await;
    stop.trigger();
    let mut texts: Vec<String> = fake
        .delivered()
        .iter()
        .map(|c| c.text().to_owned())
        .collect();
    texts.sort();
    assert_eq!(texts, vec!["m0", "m1", "m2"], "each exactly once");
    fake.stop().await;
}

/// Whether this limiter's reservation for `chat` went through Redis: the chat's next-free
/// time is a key there (kept about a second past its slot).
fn reserved_in_redis(bot: u32, chat: i64) -> bool {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "EXISTS"])
        .arg(format!("vsm:telegram:{bot}:chat:{chat}"))
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}

/// Checks that no message went out before the limiter allowed it, without depending on how
/// late any of them was. Every slot is at least `start` (no reservation happened before it)
/// and a key's slots are at least `interval` apart, so, however late each send was, the
/// k-th arrival (0-based, sorted) comes no earlier than `start + k * interval`. Only the
/// clocks' millisecond granularity is allowed for; being late is never a violation.
fn assert_never_early(what: &str, start: Instant, mut arrivals: Vec<Instant>, interval: Duration) {
    const GRANULARITY: Duration = Duration::from_millis(5);
    arrivals.sort();
    for (k, at) in arrivals.iter().enumerate() {
        let earliest = interval * k as u32;
        let after = at.duration_since(start);
        assert!(
            after + GRANULARITY >= earliest,
            "{what}: message {k} arrived {after:?} after the start, before its earliest slot {earliest:?}"
        );
    }
}

#[tokio::test]
async fn two_engines_sharing_redis_keep_the_per_chat_and_bot_limits() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let fake = FakeTelegram::start().await;
    let mut c = config(&db, &fake.base());
    c.redis.url = Some(ServiceUrl::parse("redis://127.0.0.1:6379").unwrap());
    // Each limit binds somewhere: two busy chats by their interval, the many chats together
    // by the bot's rate (their sum would be 40 messages/s).
    let chat_interval = Duration::from_millis(300);
    let bot_interval = Duration::from_millis(50);
    c.telegram.per_chat_interval_ms = 300;
    c.telegram.per_bot_per_second = 20;
    c.telegram.per_group_per_minute = 60_000; // groups limited only by the chat interval here
    // A bot of its own, so parallel tests do not share its limits.
    let bot = 100_000 + u32::from(common::free_port());
    c.telegram.bot_token = Some(Secret::new(format!("{bot}:x")));
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();

    // Each engine's limiter connects to Redis in the background (limiting in-process
    // meanwhile): warm each up until one of its reservations is seen in Redis.
    let engines = [engine(&repo, c.clone()), engine(&repo, c.clone())];
    let mut warm_chat = 9_000_000_000i64;
    for e in &engines {
        common::eventually(
            Duration::from_secs(20),
            "the limiter reserves through Redis",
            || {
                warm_chat += 1;
                let (chat, repo) = (warm_chat, &repo);
                async move {
                    send(repo, t.id, chat, "warm-up").await;
                    e.drain("notifications").await.unwrap();
                    reserved_in_redis(bot, chat)
                }
            },
        )
        .await;
    }
    let [a, b] = engines;
    let stops = [run(a), run(b)];

    // The busy chats' messages first, so without the chat limit they would go out back to
    // back; then eight chats of three.
    let (x, y) = (-4_000_000_001i64, 4_000_000_002i64);
    let quiet: Vec<i64> = (1..=8).map(|i| 5_000_000_000 + i).collect();
    let mut messages: Vec<(i64, String)> = Vec::new();
    for chat in [x, y] {
        messages.extend((0..12).map(|i| (chat, format!("{chat}/{i}"))));
    }
    for i in 0..3 {
        messages.extend(quiet.iter().map(|chat| (*chat, format!("{chat}/{i}"))));
    }
    let mut tx = repo.tenant_tx(t.id).await.unwrap();
    for (chat_id, text) in &messages {
        notification_sender::enqueue(
            &mut tx,
            t.id,
            Message::Telegram {
                chat_id: *chat_id,
                text: text.clone(),
            },
        )
        .await
        .unwrap();
    }
    // No reservation can precede this instant: nothing is visible before the commit.
    let start = Instant::now();
    tx.commit().await.unwrap();

    let ours = |c: &crate::fake_telegram::Call| c.text() != "warm-up";
    common::eventually(Duration::from_secs(60), "every message", || async {
        fake.calls().iter().filter(|c| ours(c)).count() >= messages.len()
    })
    .await;
    for s in &stops {
        s.trigger();
    }
    let calls: Vec<_> = fake.calls().into_iter().filter(|c| ours(c)).collect();
    // The fake knows only its own token and refuses this bot's for good (401): each message
    // is one request, none repeated, all limited alike.
    assert_eq!(calls.len(), messages.len(), "each message sent once");
    assert!(calls.iter().all(|c| c.token == format!("{bot}:x")));
    for chat in [x, y].into_iter().chain(quiet.iter().copied()) {
        let times = calls.iter().filter(|c| c.chat() == chat).map(|c| c.at);
        assert_never_early(
            &format!("chat {chat}"),
            start,
            times.collect(),
            chat_interval,
        );
    }
    let all = calls.iter().map(|c| c.at).collect();
    assert_never_early("the bot", start, all, bot_interval);
}

#[tokio::test]
async fn the_api_shows_attempts_isolates_tenants_and_retries() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let fake = FakeTelegram::start().await;
    fake.reply_for(77, vec![Reply::Status(400, "Bad Request: chat not found")]);
    let (a, key_a) = tenant::create(&repo, "tenant-a", None).await.unwrap();
    let (_, key_b) = tenant::create(&repo, "tenant-b", None).await.unwrap();
    let id = send(&repo, a.id, 77, "hello").await;
    engine(&repo, config(&db, &fake.base()))
        .drain("notifications")
        .await
        .unwrap();
    let server = common::Instance::start(common::instance_config(&db, None)).await;
    let http = reqwest::Client::new();
    let get = |key: String, path: String| {
        let http = http.clone();
        let url = format!("{}{path}", server.base);
        async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, list) = get(
        key_a.key.clone(),
        "/v1/notifications?channel=telegram".into(),
    )
    .await;
    assert_eq!(status, 200);
    let item = &list["items"][0];
    assert_eq!(item["id"], serde_json::json!(id));
    assert_eq!(item["state"], "failed");
    assert_eq!(item["attempts"][0]["status_code"], 400);
    assert_eq!(item["attempts"][0]["result"], "failed");
    assert!(item["attempts"][0]["latency_ms"].is_i64());
    let (status, _) = get(key_a.key.clone(), "/v1/notifications?state=nope".into()).await;
    assert_eq!(status, 400);
    // Tenant B sees none of it.
    let (status, list) = get(key_b.key.clone(), "/v1/notifications".into()).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"], serde_json::json!([]));
    let (status, _) = get(key_b.key.clone(), format!("/v1/notifications/{id}")).await;
    assert_eq!(status, 404);
    let retry = |key: String| {
        let http = http.clone();
        let url = format!("{}/v1/notifications/{id}/retry", server.base);
        async move {
            http.post(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(retry(key_b.key.clone()).await, 404);
    assert_eq!(retry(key_a.key.clone()).await, 200);
    assert_eq!(
        retry(key_a.key.clone()).await,
        409,
        "pending again, not failed"
    );
    engine(&repo, config(&db, &fake.base()))
        .drain("notifications")
        .await
        .unwrap();
    let (_, one) = get(key_a.key.clone(), format!("/v1/notifications/{id}")).await;
    assert_eq!(one["state"], "sent");
    assert_eq!(one["attempts"].as_array().unwrap().len(), 2);
    // However many attempts a notification has had, one item carries the newest
    // ATTEMPTS_SHOWN (50), so a page of 500 items stays bounded.
    {
        let mut owner = db.owner_conn().await;
        diesel_async::SimpleAsyncConnection::batch_execute(
            &mut owner,
            &format!(
                "INSERT INTO notification_attempts (notification_id, tenant_id, attempt, result, latency_ms)
                 SELECT '{id}', '{}', n, 'retry', 1 FROM generate_series(3, 90) AS n;
                 UPDATE notifications SET attempts = 90 WHERE id = '{id}';",
                a.id
            ),
        )
        .await
        .unwrap();
    }
    let (status, one) = get(key_a.key.clone(), format!("/v1/notifications/{id}")).await;
    assert_eq!(status, 200, "{one}");
    let shown: Vec<i64> = one["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(shown, (41..=90).collect::<Vec<i64>>());
}

#[tokio::test]
async fn vsm_telegram_set_webhook_and_info_talk_to_the_bot_api() {
    let fake = FakeTelegram::start().await;
    let run_cli = |args: &[&str], env: &[(&str, String)]| {
        let mut cmd = common::vsm();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let env = vec![
        ("TELEGRAM_BOT_TOKEN", TOKEN.to_owned()),
        ("TELEGRAM_WEBHOOK_SECRET", "s3cret-token".to_owned()),
        ("VSM_TELEGRAM__API_BASE", fake.base()),
    ];
    let out = tokio::task::spawn_blocking({
        let env = env.clone();
        move || {
            run_cli(
                &[
                    "telegram",
                    "set-webhook",
                    "https://vsm.example.com/telegram/webhook",
                    "--drop-pending-updates",
                ],
                &env,
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let call = fake
        .calls()
        .into_iter()
        .find(|c| c.method == "setWebhook")
        .unwrap();
    assert_eq!(call.body["url"], "https://vsm.example.com/telegram/webhook");
    assert_eq!(call.body["secret_token"], "s3cret-token");
    assert_eq!(call.body["drop_pending_updates"], true);
    assert_eq!(
        call.body["allowed_updates"],
        serde_json::json!([
            "message",
            "edited_message",
            "channel_post",
            "callback_query",
            "my_chat_member"
        ])
    );
    let out = tokio::task::spawn_blocking({
        let env = env.clone();
        move || run_cli(&["telegram", "info"], &env)
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The fake answers getWebhookInfo with its own fixed report, printed as is.
    assert_eq!(info["url"], "https://example.com/telegram/webhook");
    assert_eq!(info["pending_update_count"], 0);
    // Not configured: exit 2.
    let out = tokio::task::spawn_blocking(move || run_cli(&["telegram", "info"], &[]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Unreachable: exit 1 naming the server, never the token.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let env = vec![
        ("TELEGRAM_BOT_TOKEN", TOKEN.to_owned()),
        ("VSM_TELEGRAM__API_BASE", dead.clone()),
    ];
    let out = tokio::task::spawn_blocking(move || run_cli(&["telegram", "info"], &env))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&dead), "{err}");
    assert!(!err.contains("TEST-token"), "{err}");
}

#[tokio::test]
async fn a_hung_bot_api_times_out_and_is_retried() {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let fake = FakeTelegram::start().await;
    fake.reply_for(88, vec![Reply::Hang]);
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    let id = send(&repo, t.id, 88, "slow").await;
    engine(&repo, config(&db, &fake.base()))
        .drain("notifications")
        .await
        .unwrap();
    let row = load(&repo, t.id, id).await;
    assert_eq!(row.state, DeliveryState::Pending);
    let log = attempts(&repo, t.id, id).await;
    assert_eq!(log[0].result, AttemptResult::Retry);
    assert!(
        log[0].error.as_deref().unwrap().contains("timed out"),
        "{log:?}"
    );
    assert!(!log[0].error.as_deref().unwrap().contains("TEST-token"));
}
