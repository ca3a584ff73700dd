//! Issue 11 end to end (CONTRACT §7 policy_evaluator + notification_sender, §9): a policy's
//! `notify` actions on `episode.analyzed` reach a linked Telegram chat (the fake Bot API) and
//! one of the tenant's webhook endpoints (a receiver checked with the Standard Webhooks
//! reference verifier), with the rendered template; both are in the delivery log and each
//! delivery is a `notification.sent` event.

use std::time::Duration;

use diesel::prelude::*;
use serde_json::{Value, json};

use crate::common::{TestDb, eventually, instance_config};
use crate::fake_telegram::{FakeTelegram, TOKEN};
use crate::webhook_delivery::{Receiver, Reply, episode, hook, platform_with, verify};

const CHAT: i64 = 4_242_001;
const TEMPLATE: &str =
    "Episode {{data.episode_id}} analyzed ({{topic}}): {{data.analysis.analyzer}}";

#[tokio::test]
async fn a_policy_notifies_a_linked_chat_and_a_webhook_when_an_episode_is_analyzed() {
    let db = TestDb::migrated().await;
    let telegram = FakeTelegram::start().await;
    let mut config = instance_config(&db, None);
    config.notifications.allow_private_targets = true; // the receiver is on loopback
    config.telegram.bot_token = Some(vsm::config::Secret::new(TOKEN));
    config.telegram.api_base = vsm::config::ServiceUrl::parse(&telegram.base()).unwrap();
    let (_a, api, _engine) = platform_with(
        config,
        &[("analysis", 2), ("default", 2), ("notifications", 5)],
    )
    .await;
    let key = api.tenant("acme").await;
    let (s, _) = api
        .call("PUT", &format!("/v1/telegram/chats/{CHAT}"), &key, None)
        .await;
    assert_eq!(s, 201);
    let rx = Receiver::start(|_| Reply::Status(204)).await;
    // No topics of its own: it hears only what a policy sends it.
    let (endpoint, secret) = hook(&api, &key, &rx.url, &[]).await;
    let notify = |channel: &str, to: &str| json!({"notify": {"channel": channel, "to": to, "template": TEMPLATE}});
    let (s, body) = api
        .call(
            "POST",
            "/v1/policies",
            &key,
            Some(json!({"name": "tell everyone", "rules": {
                "when": {"topics": ["episode.analyzed"]},
                "then": [notify("telegram", &CHAT.to_string()), notify("webhook", &endpoint)]
            }})),
        )
        .await;
    assert_eq!(s, 201, "{body}");

    let episode_id = episode(&api, &key).await;
    let text = format!("Episode {episode_id} analyzed (episode.analyzed): builtin");

    eventually(Duration::from_secs(60), "both deliveries", || {
        let (tg, hooks) = (telegram.delivered().len(), rx.received().len());
        async move { tg >= 1 && hooks >= 1 }
    })
    .await;
    let to_chat = telegram.delivered();
    assert_eq!(to_chat.len(), 1);
    assert_eq!(to_chat[0].chat(), CHAT);
    assert_eq!(to_chat[0].text(), text);
    let got = rx.received();
    assert_eq!(got.len(), 1);
    let payload = verify(&secret, &got[0]).expect("the reference verifier accepts it");
    assert_eq!(payload["type"], "policy.notify");
    assert_eq!(payload["data"]["text"], text.as_str());
    assert_eq!(payload["data"]["event"]["topic"], "episode.analyzed");

    // Both are in the tenant's delivery log, sent, each with its one attempt…
    eventually(Duration::from_secs(20), "both logged as sent", || {
        let api = &api;
        let key = &key;
        async move {
            let (_, list) = api.call("GET", "/v1/notifications", key, None).await;
            list["items"]
                .as_array()
                .is_some_and(|items| items.len() == 2 && items.iter().all(|n| n["state"] == "sent"))
        }
    })
    .await;
    let (_, list) = api.call("GET", "/v1/notifications", &key, None).await;
    let items = list["items"].as_array().unwrap();
    let by_channel = |c: &str| items.iter().find(|n| n["channel"] == c).unwrap();
    assert_eq!(by_channel("telegram")["recipient"], CHAT.to_string());
    assert_eq!(by_channel("webhook")["recipient"], endpoint.as_str());
    for n in items {
        assert_eq!(n["attempt_count"], 1, "{n}");
        assert_eq!(n["attempts"][0]["result"], "sent", "{n}");
    }

    // …and each delivery is a notification.sent event of the tenant.
    let ids: Vec<Value> = items.iter().map(|n| n["id"].clone()).collect();
    eventually(
        Duration::from_secs(20),
        "two notification.sent events",
        || {
            let db = &db;
            let ids = &ids;
            async move {
                let mut sent = sent_events(db).await;
                sent.sort_by_key(|p| p["notification_id"].to_string());
                let mut want = ids.clone();
                want.sort_by_key(Value::to_string);
                sent.iter().map(|p| &p["notification_id"]).eq(want.iter())
            }
        },
    )
    .await;
    assert!(
        sent_events(&db)
            .await
            .iter()
            .all(|p| !p["to"].to_string().contains(&CHAT.to_string())),
        "recipients are masked in events"
    );
}

async fn sent_events(db: &TestDb) -> Vec<Value> {
    use vsm::schemas::schema::events;
    let mut owner = db.owner_conn().await;
    diesel_async::RunQueryDsl::load(
        events::table
            .filter(events::topic.eq("notification.sent"))
            .order(events::id)
            .select(events::payload),
        &mut owner,
    )
    .await
    .unwrap()
}
