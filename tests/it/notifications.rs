//! Notifications (CONTRACT §7 notification_sender, §9 outgoing Telegram): the delivery log, the
//! sender's bookkeeping and the Telegram channel against a fake Bot API.

use std::sync::Arc;
use std::time::Duration;

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
    let mut c = Config::default();
    c.database = db.config();
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
    let _ = common::free_port();
    let _ = Duration::ZERO;
}
