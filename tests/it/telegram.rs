//! Inbound Telegram (CONTRACT §9): the webhook's checks and dedupe, linked chats, and the bot's
//! commands. Update payloads are shaped as the Bot API documents them
//! (https://core.telegram.org/bots/api#update).

use crate::common;

use std::time::Duration;

use common::{Instance, TestDb, eventually, instance_config};
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use reqwest::Client;
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret-token";
const SECRET: &str = "hook-secret-0123456789";
const BOT: &str = "vsm_test_bot";

pub fn telegram_config(db: &TestDb) -> vsm::config::Config {
    let mut config = instance_config(db, None);
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    config.telegram.bot_token = Some(vsm::config::Secret::new("123456:TEST-token-secret"));
    config.telegram.webhook_secret = Some(vsm::config::Secret::new(SECRET));
    config.telegram.bot_username = Some(BOT.to_owned());
    config
}

pub struct Bot {
    pub base: String,
    pub http: Client,
}

impl Bot {
    pub fn new(base: &str) -> Bot {
        Bot {
            base: base.to_owned(),
            http: Client::new(),
        }
    }

    /// Posts a raw body as Telegram would (with the secret when given).
    pub async fn post_raw(&self, secret: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/telegram/webhook", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn send(&self, update: &Value) -> (u16, Value) {
        self.post_raw(Some(SECRET), serde_json::to_vec(update).unwrap())
            .await
    }

    pub async fn tenant(&self, slug: &str) -> String {
        let v: Value = self
            .http
            .post(format!("{}/v1/tenants", self.base))
            .bearer_auth(ADMIN)
            .json(&json!({"slug": slug}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["api_key"].as_str().unwrap().to_owned()
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "PUT" => self.http.put(url),
            "POST" => self.http.post(url),
            "DELETE" => self.http.delete(url),
            _ => unreachable!(),
        };
        let req = req.bearer_auth(key);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A `message` update from a user in chat `chat` (a private chat has the user's id).
pub fn message(update_id: i64, chat: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id % 1_000_000,
            "from": {"id": 777_000_111, "is_bot": false, "first_name": "Ann", "username": "ann", "language_code": "en"},
            "chat": {"id": chat, "first_name": "Ann", "username": "ann", "type": "private"},
            "date": 1_764_633_600,
            "text": text,
            "entities": [{"offset": 0, "length": text.split_whitespace().next().map_or(0, str::len), "type": "bot_command"}]
        }
    })
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = db.owner_conn().await;
    diesel::sql_query(sql)
        .get_result::<N>(&mut conn)
        .await
        .unwrap()
        .n
}

pub async fn command_jobs(db: &TestDb) -> i64 {
    scalar(
        db,
        "SELECT count(*) AS n FROM jobs WHERE worker = 'telegram_command'",
    )
    .await
}

async fn metric(base: &str, kind: &str, result: &str) -> f64 {
    let text = common::metrics_text(base).await;
    let prefix =
        format!("cybernetic_telegram_updates_total{{kind=\"{kind}\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no series {prefix}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_webhook_is_404_until_both_the_token_and_the_secret_are_set() {
    let db = TestDb::migrated().await;
    let mut config = telegram_config(&db);
    config.telegram.bot_token = None;
    let a = Instance::start(config).await;
    let (status, body) = Bot::new(&a.base).send(&message(1, 5, "/status")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    let mut config = telegram_config(&db);
    config.telegram.webhook_secret = None;
    let b = Instance::start(config).await;
    assert_eq!(
        Bot::new(&b.base).send(&message(1, 5, "/status")).await.0,
        404
    );
    assert_eq!(command_jobs(&db).await, 0);
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_401_and_queues_nothing() {
    let db = TestDb::migrated().await;
    let a = Instance::start(telegram_config(&db)).await;
    let bot = Bot::new(&a.base);
    let before = metric(&a.base, "other", "unauthorized").await;
    let body = serde_json::to_vec(&message(1, 5, "/status")).unwrap();
    for secret in [
        None,
        Some(""),
        Some("wrong"),
        Some(&SECRET[..SECRET.len() - 1]),
    ] {
        let (status, reply) = bot.post_raw(secret, body.clone()).await;
        assert_eq!(status, 401, "{secret:?}");
        assert_eq!(reply["error"]["code"], "unauthorized");
    }
    assert_eq!(command_jobs(&db).await, 0);
    assert!(metric(&a.base, "other", "unauthorized").await >= before + 4.0);
}

#[tokio::test]
async fn a_body_that_is_not_an_update_is_400_and_an_oversized_one_413() {
    let db = TestDb::migrated().await;
    let a = Instance::start(telegram_config(&db)).await;
    let bot = Bot::new(&a.base);
    let bad: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"".to_vec(),
        b"[1,2]".to_vec(),
        b"{}".to_vec(),
        br#"{"update_id":"12"}"#.to_vec(),
        br#"{"update_id":1.5,"message":{}}"#.to_vec(),
        br#"{"update_id":null}"#.to_vec(),
        br#"{"update_id":99999999999999999999999}"#.to_vec(),
    ];
    for body in bad {
        let (status, reply) = bot.post_raw(Some(SECRET), body.clone()).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        assert_eq!(reply["error"]["code"], "bad_request");
    }
    let mut huge = message(3, 5, "/report x");
    huge["message"]["text"] = json!(format!("/report {}", "x".repeat(300 * 1024)));
    let (status, reply) = bot.send(&huge).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(command_jobs(&db).await, 0);
}

#[tokio::test]
async fn every_update_kind_is_200_and_only_commands_for_this_bot_queue_a_job() {
    let db = TestDb::migrated().await;
    let a = Instance::start(telegram_config(&db)).await;
    let bot = Bot::new(&a.base);
    let chat = json!({"id": -1001234567890_i64, "title": "ops", "type": "supergroup"});
    let user = json!({"id": 777_000_111, "is_bot": false, "first_name": "Ann"});
    let updates = vec![
        message(10, 42, "hello there"),
        // A photo: a message without text.
        json!({"update_id": 11, "message": {"message_id": 2, "from": user, "chat": chat, "date": 1_764_633_600,
            "photo": [{"file_id": "AgAD", "file_unique_id": "AQAD", "width": 90, "height": 90, "file_size": 1234}],
            "caption": "/status"}}),
        json!({"update_id": 12, "edited_message": {"message_id": 3, "from": user, "chat": chat, "date": 1_764_633_600,
            "edit_date": 1_764_633_700, "text": "/status"}}),
        json!({"update_id": 13, "channel_post": {"message_id": 4, "sender_chat": {"id": -100999, "title": "news", "type": "channel"},
            "chat": {"id": -100999, "title": "news", "type": "channel"}, "date": 1_764_633_600, "text": "just news"}}),
        json!({"update_id": 14, "callback_query": {"id": "4382bfdwdsb323b2d9", "from": user, "chat_instance": "-8173",
            "data": "/status", "message": {"message_id": 5, "chat": chat, "date": 1_764_633_600, "text": "pick"}}}),
        json!({"update_id": 15, "my_chat_member": {"chat": chat, "from": user, "date": 1_764_633_600,
            "old_chat_member": {"user": {"id": 1, "is_bot": true, "first_name": "vsm"}, "status": "left"},
            "new_chat_member": {"user": {"id": 1, "is_bot": true, "first_name": "vsm"}, "status": "member"}}}),
        json!({"update_id": 16, "inline_query": {"id": "1", "from": user, "query": "/status", "offset": ""}}),
        json!({"update_id": 17, "poll": {"id": "5", "question": "?", "options": [], "total_voter_count": 0,
            "is_closed": false, "is_anonymous": true, "type": "regular", "allows_multiple_answers": false}}),
        json!({"update_id": 18, "some_future_kind": {"x": 1}}),
        message(19, 42, "/status@some_other_bot"),
    ];
    for u in &updates {
        let (status, body) = bot.send(u).await;
        assert_eq!(status, 200, "{u}: {body}");
        assert_eq!(body["result"], "ignored", "{u}");
    }
    assert_eq!(command_jobs(&db).await, 0);
    assert!(metric(&a.base, "callback_query", "ignored").await >= 1.0);
    assert!(metric(&a.base, "other", "ignored").await >= 1.0);
    // Every known combination exists from the start.
    assert!(metric(&a.base, "chat_boost", "duplicate").await >= 0.0);

    for (id, text) in [(20, "/status"), (21, &format!("/help@{BOT}") as &str)] {
        let (status, body) = bot.send(&message(id, 42, text)).await;
        assert_eq!(
            (status, body["result"].as_str()),
            (200, Some("processed")),
            "{text}"
        );
    }
    let post = json!({"update_id": 22, "channel_post": {"message_id": 6, "chat": {"id": -100999, "title": "news", "type": "channel"},
        "date": 1_764_633_600, "text": "/episodes"}});
    assert_eq!(bot.send(&post).await.1["result"], "processed");
    assert_eq!(command_jobs(&db).await, 3);
}

#[tokio::test]
async fn the_same_update_id_is_processed_once_across_two_instances_and_a_restart() {
    let db = TestDb::migrated().await;
    let a = Instance::start(telegram_config(&db)).await;
    let b = Instance::start(telegram_config(&db)).await;
    let (ba, bb) = (Bot::new(&a.base), Bot::new(&b.base));
    let update = message(500_001, 42, "/status");
    // At the same moment on both instances, several times each.
    let sends = (0..6).map(|i| {
        let bot = if i % 2 == 0 { &ba } else { &bb };
        bot.send(&update)
    });
    let results = futures_util::future::join_all(sends).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let processed = results
        .iter()
        .filter(|(_, b)| b["result"] == "processed")
        .count();
    assert_eq!(processed, 1, "{results:?}");
    assert_eq!(command_jobs(&db).await, 1);

    // A restarted instance still knows it.
    drop(a);
    let c = Instance::start(telegram_config(&db)).await;
    let (status, body) = Bot::new(&c.base).send(&update).await;
    assert_eq!((status, body["result"].as_str()), (200, Some("duplicate")));
    assert_eq!(command_jobs(&db).await, 1);
    // A new update_id is new.
    assert_eq!(
        Bot::new(&c.base)
            .send(&message(500_002, 42, "/status"))
            .await
            .1["result"],
        "processed"
    );
    assert_eq!(command_jobs(&db).await, 2);
}

#[tokio::test]
async fn seen_update_ids_are_forgotten_only_after_the_retention() {
    use vsm::maintenance::Periodic;
    let db = TestDb::migrated().await;
    let a = Instance::start(telegram_config(&db)).await;
    let bot = Bot::new(&a.base);
    bot.send(&message(1, 42, "/status")).await;
    bot.send(&message(2, 42, "/status")).await;
    let mut conn = db.owner_conn().await;
    diesel::sql_query(
        "UPDATE telegram_updates SET received_at = now() - interval '49 hours' WHERE update_id = 1",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let mut pruner = vsm::workers::telegram_command::update_pruner::UpdatePruner {
        repo: a.repo.clone(),
        retention: Duration::from_secs(48 * 3600),
        every: Duration::from_secs(3600),
    };
    pruner.run_once().await.unwrap();
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) AS n FROM telegram_updates WHERE update_id = 1"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) AS n FROM telegram_updates WHERE update_id = 2"
        )
        .await,
        1
    );
    assert_eq!(
        bot.send(&message(2, 42, "/status")).await.1["result"],
        "duplicate"
    );
}

#[tokio::test]
async fn a_chat_over_its_command_rate_is_acknowledged_and_dropped() {
    let db = TestDb::migrated().await;
    let mut config = telegram_config(&db);
    config.telegram.commands_per_minute = 1.0;
    config.telegram.command_burst = 2.0;
    let a = Instance::start(config).await;
    let bot = Bot::new(&a.base);
    let mut results = Vec::new();
    for id in 1..=6 {
        let (status, body) = bot.send(&message(id, 42, "/status")).await;
        assert_eq!(status, 200);
        results.push(body["result"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        results.iter().filter(|r| *r == "processed").count(),
        2,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| *r == "rate_limited").count(),
        4,
        "{results:?}"
    );
    assert_eq!(command_jobs(&db).await, 2);
    // Four dropped commands within the window: the chat is told to slow down once.
    assert_eq!(slow_down_replies(&db, 42).await, 1);
    // Another chat has its own bucket.
    assert_eq!(
        bot.send(&message(7, 43, "/status")).await.1["result"],
        "processed"
    );
    // A dropped update is still recorded: its redelivery is a duplicate.
    assert_eq!(
        bot.send(&message(6, 42, "/status")).await.1["result"],
        "duplicate"
    );
    assert!(metric(&a.base, "message", "rate_limited").await >= 4.0);
    // More dropped commands within the same window queue no second reply; the other chat
    // (never over its rate) was never told.
    for id in 8..=10 {
        assert_eq!(
            bot.send(&message(id, 42, "/status")).await.1["result"],
            "rate_limited"
        );
    }
    assert_eq!(slow_down_replies(&db, 42).await, 1);
    assert_eq!(slow_down_replies(&db, 43).await, 0);
}

/// "Slow down" replies queued for chat `chat` (tenant-less rows of the delivery log).
async fn slow_down_replies(db: &TestDb, chat: i64) -> i64 {
    let text = vsm::workers::telegram_command::commands::SLOW_DOWN.replace('\'', "''");
    scalar(
        db,
        &format!(
            "SELECT count(*) AS n FROM notifications WHERE channel = 'telegram' \
             AND recipient = '{chat}' AND message->>'text' = '{text}'"
        ),
    )
    .await
}

#[tokio::test]
async fn chats_are_linked_listed_unlinked_capped_and_isolated() {
    let db = TestDb::migrated().await;
    let mut config = telegram_config(&db);
    config.limits.max_telegram_chats_per_tenant = 3;
    let a = Instance::start(config).await;
    let api = Bot::new(&a.base);
    let acme = api.tenant("acme").await;
    let umbrella = api.tenant("umbrella").await;

    let (status, chat) = api
        .call(
            "PUT",
            "/v1/telegram/chats/-1001",
            &acme,
            Some(json!({"label": "ops room"})),
        )
        .await;
    assert_eq!(status, 201, "{chat}");
    assert_eq!(
        (chat["chat_id"].as_i64(), chat["label"].as_str()),
        (Some(-1001), Some("ops room"))
    );
    let (status, chat) = api
        .call(
            "PUT",
            "/v1/telegram/chats/-1001",
            &acme,
            Some(json!({"label": "war room"})),
        )
        .await;
    assert_eq!((status, chat["label"].as_str()), (200, Some("war room")));
    // A label is bounded (1..=200 characters): what a tenant stores per chat stays small.
    for label in [String::new(), "é".repeat(201)] {
        let (status, body) = api
            .call(
                "PUT",
                "/v1/telegram/chats/-1001",
                &acme,
                Some(json!({ "label": label })),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("label"),
            "{body}"
        );
    }
    let (status, chat) = api
        .call(
            "PUT",
            "/v1/telegram/chats/-1001",
            &acme,
            Some(json!({"label": "é".repeat(200)})),
        )
        .await;
    assert_eq!(
        (status, chat["label"].as_str().map(|l| l.chars().count())),
        (200, Some(200))
    );
    api.call(
        "PUT",
        "/v1/telegram/chats/-1001",
        &acme,
        Some(json!({"label": "war room"})),
    )
    .await;
    assert_eq!(
        api.call("PUT", "/v1/telegram/chats/42", &acme, None)
            .await
            .0,
        201
    );

    // Another tenant: the chat is taken (named nobody), invisible, and not its to delete.
    let (status, body) = api
        .call(
            "PUT",
            "/v1/telegram/chats/-1001",
            &umbrella,
            Some(json!({"label": "mine"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("another tenant") && !message.contains("acme"),
        "{message}"
    );
    assert_eq!(
        api.call("DELETE", "/v1/telegram/chats/-1001", &umbrella, None)
            .await
            .0,
        404
    );
    let (_, list) = api.call("GET", "/v1/telegram/chats", &umbrella, None).await;
    assert_eq!(list["items"], json!([]));

    // Bad input.
    let (status, body) = api
        .call(
            "PUT",
            "/v1/telegram/chats/7",
            &acme,
            Some(json!({"label": ""})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("validation_failed")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("label"));
    let (status, _) = api
        .call(
            "PUT",
            "/v1/telegram/chats/7",
            &acme,
            Some(json!({"label": "x", "extra": 1})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        api.call("PUT", "/v1/telegram/chats/not-a-number", &acme, None)
            .await
            .0,
        404
    );

    // The cap: a third chat fits, a fourth is 409; relabelling a linked one still works.
    assert_eq!(
        api.call("PUT", "/v1/telegram/chats/43", &acme, None)
            .await
            .0,
        201
    );
    let (status, body) = api.call("PUT", "/v1/telegram/chats/44", &acme, None).await;
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_telegram_chats_per_tenant")
    );
    assert_eq!(
        api.call(
            "PUT",
            "/v1/telegram/chats/43",
            &acme,
            Some(json!({"label": "n"}))
        )
        .await
        .0,
        200
    );

    // Paginated, by chat id.
    let (_, page) = api
        .call("GET", "/v1/telegram/chats?limit=2", &acme, None)
        .await;
    let ids: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chat_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![-1001, 42]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = api
        .call(
            "GET",
            &format!("/v1/telegram/chats?limit=2&cursor={cursor}"),
            &acme,
            None,
        )
        .await;
    assert_eq!(rest["items"][0]["chat_id"], 43);
    assert_eq!(rest["next_cursor"], Value::Null);

    // Unlinked, the chat is free for the other tenant.
    assert_eq!(
        api.call("DELETE", "/v1/telegram/chats/-1001", &acme, None)
            .await
            .0,
        204
    );
    assert_eq!(
        api.call("DELETE", "/v1/telegram/chats/-1001", &acme, None)
            .await
            .0,
        404
    );
    assert_eq!(
        api.call("PUT", "/v1/telegram/chats/-1001", &umbrella, None)
            .await
            .0,
        201
    );
    assert_eq!(
        api.call("GET", "/v1/telegram/chats", "not-a-key", None)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn concurrent_links_of_one_chat_by_two_tenants_leave_exactly_one_owner() {
    let db = TestDb::migrated().await;
    let a = Instance::start(telegram_config(&db)).await;
    let api = Bot::new(&a.base);
    let keys = [api.tenant("one").await, api.tenant("two").await];
    for round in 0..5 {
        let path = format!("/v1/telegram/chats/{}", 9000 + round);
        let (x, y) = tokio::join!(
            api.call("PUT", &path, &keys[0], None),
            api.call("PUT", &path, &keys[1], None)
        );
        let mut statuses = [x.0, y.0];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "{x:?} {y:?}");
    }
    eventually(Duration::from_secs(1), "links stored", || async {
        scalar(&db, "SELECT count(*) AS n FROM telegram_chats").await == 5
    })
    .await;
}

/// The tenant id behind an API key.
async fn tenant_of(db: &TestDb, slug: &str) -> uuid::Uuid {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let mut conn = db.owner_conn().await;
    diesel::sql_query("SELECT id FROM tenants WHERE slug = $1")
        .bind::<diesel::sql_types::Text, _>(slug)
        .get_result::<Id>(&mut conn)
        .await
        .unwrap()
        .id
}

async fn run(repo: &vsm::repo::Repo, tenant: uuid::Uuid, name: &str, args: &str) -> String {
    use vsm::workers::telegram_command::commands::{self, Command};
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    let reply = commands::run(&mut tx, &Command::parse(name, args))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    reply
}

#[tokio::test]
async fn commands_answer_from_the_tenants_real_data() {
    use vsm::workers::telegram_command::commands::HELP;
    let db = TestDb::migrated().await;
    let a = Instance::start(telegram_config(&db)).await;
    let api = Bot::new(&a.base);
    let key = api.tenant("acme").await;
    let other = api.tenant("other").await;
    let t = tenant_of(&db, "acme").await;

    // /status: what the API wrote a moment before, with its version.
    let s = run(&a.repo, t, "status", "").await;
    assert!(s.contains("S3 Control: not set"), "{s}");
    assert!(s.contains("Last health check: none yet"), "{s}");
    for state in [
        json!({"load": 0.5}),
        json!({"load": 0.9, "mode": "degraded"}),
    ] {
        let (status, _) = api
            .call(
                "PUT",
                "/v1/systems/3/state",
                &key,
                Some(json!({"state": state})),
            )
            .await;
        assert_eq!(status, 200);
    }
    api.call(
        "PUT",
        "/v1/systems/1/state",
        &other,
        Some(json!({"state": {"secret": "of other"}})),
    )
    .await;
    let s = run(&a.repo, t, "status", "").await;
    assert!(
        s.contains(r#"S3 Control v2: {"load":0.9,"mode":"degraded"}"#),
        "{s}"
    );
    assert!(
        s.contains("S1 Operations: not set") && !s.contains("of other"),
        "{s}"
    );
    // A huge state is cut.
    let big = json!({"blob": "x".repeat(50_000)});
    api.call(
        "PUT",
        "/v1/systems/5/state",
        &key,
        Some(json!({"state": big})),
    )
    .await;
    let s = run(&a.repo, t, "status", "").await;
    assert!(s.chars().count() < 3000, "{}", s.len());
    assert!(s.contains("S5 Policy v1: {\"blob\":\"xxx") && s.contains('…'));

    // /report files an episode through the same path as POST /v1/episodes; it gets analysed.
    let r = run(
        &a.repo,
        t,
        "report",
        "Disk full on db-1\nsince 10:00, see https://status.example.com",
    )
    .await;
    assert!(
        r.starts_with("Episode ") && r.contains("analysis is queued"),
        "{r}"
    );
    let (_, list) = api.call("GET", "/v1/episodes", &key, None).await;
    let ep = &list["items"][0];
    assert_eq!(
        (ep["title"].as_str(), ep["source"].as_str()),
        (Some("Disk full on db-1"), Some("telegram"))
    );
    assert!(ep["content"].as_str().unwrap().contains("since 10:00"));
    let engine = vsm::jobs::Engine::new(
        a.repo.clone(),
        std::sync::Arc::new(telegram_config(&db)),
        vsm::workers::registry(&telegram_config(&db)),
        crate::jobs_support::options(&[("analysis", 2)]),
    );
    assert_eq!(engine.drain("analysis").await.unwrap(), 1);
    let (_, ep) = api
        .call(
            "GET",
            &format!("/v1/episodes/{}", ep["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(ep["status"], "complete", "{ep}");
    assert_eq!(
        run(&a.repo, t, "report", "   ").await,
        "Usage: /report <what happened>"
    );
    let r = run(&a.repo, t, "report", &format!("{}\nmore", "t".repeat(1000))).await;
    assert!(r.starts_with("Episode "), "{r}");

    // /episodes: the five newest, newest first.
    for i in 0..6 {
        run(&a.repo, t, "report", &format!("incident {i}")).await;
    }
    let e = run(&a.repo, t, "episodes", "").await;
    assert_eq!(e.lines().filter(|l| l.starts_with("- ")).count(), 5, "{e}");
    assert!(e.lines().nth(1).unwrap().contains("incident 5"), "{e}");
    assert!(!e.contains("Disk full"), "{e}");
    assert!(
        run(&a.repo, tenant_of(&db, "other").await, "episodes", "")
            .await
            .starts_with("No episodes")
    );

    // /policies: active ones only, highest priority first.
    let rules = json!({"when": {"topics": ["episode.created"]}, "then": [{"publish": {"topic": "x.y", "data": {}}}]});
    assert_eq!(run(&a.repo, t, "policies", "").await, "No active policies.");
    for (name, priority, active) in [("low", 1, true), ("high", 9, true), ("off", 5, false)] {
        let (s, p) = api
            .call(
                "POST",
                "/v1/policies",
                &key,
                Some(json!({"name": name, "rules": rules, "priority": priority, "active": active})),
            )
            .await;
        assert_eq!(s, 201, "{p}");
    }
    let p = run(&a.repo, t, "policies", "").await;
    assert_eq!(
        p,
        "Active policies:\n- high (priority 9)\n- low (priority 1)"
    );

    assert_eq!(run(&a.repo, t, "help", "").await, HELP);
    assert!(run(&a.repo, t, "start", "").await.ends_with(HELP));
    assert_eq!(
        run(&a.repo, t, "frobnicate", "").await,
        "Unknown command /frobnicate. Send /help for the list."
    );
}

#[tokio::test]
async fn an_update_becomes_a_reply_at_the_bot_api_and_an_unlinked_chat_gets_one_refusal_line() {
    use crate::fake_telegram::FakeTelegram;
    let fake = FakeTelegram::start().await;
    let db = TestDb::migrated().await;
    let mut config = telegram_config(&db);
    config.telegram.bot_token = Some(vsm::config::Secret::new(crate::fake_telegram::TOKEN));
    config.telegram.api_base = vsm::config::ServiceUrl::parse(&fake.base()).unwrap();
    let a = Instance::start(config.clone()).await;
    let api = Bot::new(&a.base);
    let key = api.tenant("acme").await;
    assert_eq!(
        api.call("PUT", "/v1/telegram/chats/42", &key, None).await.0,
        201
    );
    api.call(
        "PUT",
        "/v1/systems/2/state",
        &key,
        Some(json!({"state": {"sync": "ok"}})),
    )
    .await;
    let engine = vsm::jobs::Engine::new(
        a.repo.clone(),
        std::sync::Arc::new(config.clone()),
        vsm::workers::registry(&config),
        crate::jobs_support::options(&[("notifications", 5)]),
    );
    tokio::spawn(engine.run(a.shutdown.clone()));

    assert_eq!(
        api.send(&message(1, 42, &format!("/status@{BOT}"))).await.1["result"],
        "processed"
    );
    assert_eq!(
        api.send(&message(2, 99, "/episodes")).await.1["result"],
        "processed"
    );
    eventually(
        Duration::from_secs(20),
        "both replies reach the Bot API",
        || async { fake.delivered().len() >= 2 },
    )
    .await;
    let calls = fake.delivered();
    let to_linked = calls.iter().find(|c| c.chat() == 42).unwrap();
    assert!(
        to_linked
            .text()
            .contains(r#"S2 Coordination v1: {"sync":"ok"}"#),
        "{}",
        to_linked.text()
    );
    let refusals: Vec<_> = calls.iter().filter(|c| c.chat() == 99).collect();
    assert_eq!(refusals.len(), 1);
    assert_eq!(
        refusals[0].text(),
        vsm::workers::telegram_command::commands::NOT_LINKED
    );
    assert_eq!(refusals[0].text().lines().count(), 1);
    // The linked chat's command is a tenant event.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) AS n FROM events WHERE topic = 'telegram.command'"
        )
        .await,
        1
    );
}
