//! Issue 11's delivery paths, on one `vsm serve` (the Telegram webhook) and one `vsm work`
//! running the `notifications` queue (both `telegram_command` and `notification_sender`) with
//! its default concurrency of 5:
//!
//! - a `/status` command from a linked chat, from the moment its update is POSTed to
//!   `/telegram/webhook` until the reply's `sendMessage` reaches a fake Bot API, one update at a
//!   time (webhook → dedupe → `telegram_command` job → reply notification → `notification_sender`);
//! - webhook deliveries per second: notifications committed at once to one endpoint, a local
//!   receiver answering 200 (`notifications.allow_private_targets` on, as it must be for a
//!   loopback target);
//! - Telegram messages per second through the channel: the same for `sendMessage` to linked
//!   chats, with the limiter opened wide (1 ms per chat spread over several chats, a million per
//!   second for the bot, the in-process limiter: no Redis) so the channel is measured, not the
//!   limiter.
//!
//! Throughput runs from the commit of the batch to the last request's arrival at the peer.
//! Both fake peers are small actix-web servers in this process.

use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;
use vsm::workers::notification_sender::{self, Message};

use crate::support::{Db, Killed, Latency, Report, Row, Sizes, free_port, serve, vsm};

const TOKEN: &str = "123456:BENCH-token";
const SECRET: &str = "bench-webhook-secret-0123";
const BOT: &str = "vsm_bench_bot";
/// Linked chats the Telegram throughput run spreads its messages over, so the per-chat
/// interval (at least 1 ms) does not cap it.
const CHATS: i64 = 20;
const FIRST_CHAT: i64 = 900_000_000;
/// The one `vsm work`'s `notifications` concurrency (the default), named in the table's rows.
const QUEUE: &str = "notifications=5";

/// What a fake peer saw: when a request arrived and, for the Bot API, to which chat.
#[derive(Clone, Copy)]
struct Arrival {
    at: Instant,
    chat: i64,
}

type Arrivals = web::Data<mpsc::UnboundedSender<Arrival>>;

/// A fake Bot API (`POST /bot{token}/{method}`, answering like Telegram) and a webhook
/// receiver (`POST /hook`, 200), on one port with one worker thread.
async fn start_peer() -> (
    u16,
    mpsc::UnboundedReceiver<Arrival>,
    actix_web::dev::ServerHandle,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let data: Arrivals = web::Data::new(tx);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::JsonConfig::default().limit(1 << 20))
            .route("/bot{token}/{method}", web::post().to(bot_api))
            .route("/hook", web::post().to(receiver))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("bind the fake peer");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, rx, handle)
}

async fn bot_api(
    arrivals: Arrivals,
    path: web::Path<(String, String)>,
    body: web::Json<Value>,
) -> HttpResponse {
    let (token, method) = path.into_inner();
    if token != TOKEN {
        return HttpResponse::Unauthorized()
            .json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"}));
    }
    let chat = body["chat_id"].as_i64().unwrap_or_default();
    if method == "sendMessage" {
        let _ = arrivals.send(Arrival {
            at: Instant::now(),
            chat,
        });
    }
    HttpResponse::Ok().json(json!({"ok": true, "result": {
        "message_id": 1, "date": 1_764_633_600, "chat": {"id": chat, "type": "private"},
        "text": body["text"],
    }}))
}

async fn receiver(arrivals: Arrivals, _body: web::Bytes) -> HttpResponse {
    let _ = arrivals.send(Arrival {
        at: Instant::now(),
        chat: 0,
    });
    HttpResponse::Ok().finish()
}

/// A `/status` command in a private chat, shaped as the Bot API sends it.
fn status_update(update_id: i64, chat: i64) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": chat, "is_bot": false, "first_name": "Ann"},
            "chat": {"id": chat, "first_name": "Ann", "type": "private"},
            "date": 1_764_633_600,
            "text": "/status",
            "entities": [{"offset": 0, "length": 7, "type": "bot_command"}]
        }
    })
}

/// The configuration both processes share, as environment.
fn env(peer: u16) -> Vec<(&'static str, String)> {
    vec![
        ("TELEGRAM_BOT_TOKEN", TOKEN.into()),
        ("TELEGRAM_WEBHOOK_SECRET", SECRET.into()),
        ("VSM_TELEGRAM__BOT_USERNAME", BOT.into()),
        ("VSM_TELEGRAM__API_BASE", format!("http://127.0.0.1:{peer}")),
        ("VSM_TELEGRAM__COMMANDS_PER_MINUTE", "0".into()),
        ("VSM_TELEGRAM__PER_CHAT_INTERVAL_MS", "1".into()),
        ("VSM_TELEGRAM__PER_GROUP_PER_MINUTE", "1000000".into()),
        ("VSM_TELEGRAM__PER_BOT_PER_SECOND", "1000000".into()),
        ("VSM_NOTIFICATIONS__ALLOW_PRIVATE_TARGETS", "true".into()),
    ]
}

/// Starts `vsm work` on the notifications queue, its operations listener on a free port, ready.
fn work(db: &Db, env: &[(&str, String)]) -> Killed {
    let port = free_port();
    let mut cmd = vsm();
    cmd.args(["work", "--queue", QUEUE])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Killed(cmd.spawn().expect("spawn vsm work"));
    crate::support::wait_ready(&format!("http://127.0.0.1:{port}/ready"));
    child
}

/// Sends a request that must succeed; its JSON body (null when none).
async fn call(req: reqwest::RequestBuilder) -> Value {
    let res = req.send().await.expect("request");
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// The next arrival at the peer, or None after `wait`.
async fn next(rx: &mut mpsc::UnboundedReceiver<Arrival>, wait: Duration) -> Option<Arrival> {
    tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
}

/// Commits `messages` as one batch of notifications and times them until the last one
/// arrives at the peer: (arrived, per second).
async fn throughput(
    repo: &vsm::repo::Repo,
    tenant: Uuid,
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    messages: Vec<Message>,
) -> (usize, f64) {
    let n = messages.len();
    let mut tx = repo.tenant_tx(tenant).await.expect("tx");
    for m in messages {
        notification_sender::enqueue(&mut tx, tenant, m)
            .await
            .expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let committed = Instant::now();
    let mut arrived = 0;
    let mut last = committed;
    // Generous: a delivery that failed would come back only after its retry delay.
    while arrived < n {
        match next(rx, Duration::from_secs(30)).await {
            Some(a) => {
                arrived += 1;
                last = a.at;
            }
            None => {
                println!("  (only {arrived} of {n} deliveries arrived)");
                break;
            }
        }
    }
    let secs = last.duration_since(committed).as_secs_f64();
    (arrived, arrived as f64 / secs.max(1e-9))
}

struct Figures {
    reply: Latency,
    webhooks: (usize, f64),
    telegram: (usize, f64),
}

async fn measure(sizes: &Sizes) -> Figures {
    let (peer, mut rx, peer_handle) = start_peer().await;
    let db = Db::create();
    let env = env(peer);
    let (_serve, base) = serve("serve", &db, &env);
    let _work = work(&db, &env);
    let http = reqwest::Client::new();
    let key = db.key.clone();

    for chat in FIRST_CHAT..FIRST_CHAT + CHATS {
        call(
            http.put(format!("{base}/v1/telegram/chats/{chat}"))
                .bearer_auth(&key)
                .json(&json!({"label": "bench"})),
        )
        .await;
    }
    let endpoint = call(
        http.post(format!("{base}/v1/webhooks"))
            .bearer_auth(&key)
            .json(&json!({"url": format!("http://127.0.0.1:{peer}/hook")})),
    )
    .await;
    let endpoint: Uuid = endpoint["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("webhook id");

    // One update at a time: each reply is the only request in flight.
    let mut samples = Vec::with_capacity(sizes.telegram_updates);
    for i in 0..sizes.telegram_updates {
        let sent = Instant::now();
        call(
            http.post(format!("{base}/telegram/webhook"))
                .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
                .json(&status_update(i as i64 + 1, FIRST_CHAT)),
        )
        .await;
        match next(&mut rx, Duration::from_secs(30)).await {
            Some(a) if a.chat == FIRST_CHAT => samples.push(a.at.duration_since(sent)),
            Some(_) => panic!("a reply reached another chat"),
            None => {
                println!("  (update {i} got no reply within 30 s)");
                break;
            }
        }
    }

    let cfg = vsm::config::DatabaseConfig {
        url: vsm::config::ServiceUrl::parse(&db.url).expect("url"),
        ..Default::default()
    };
    let repo = vsm::repo::Repo::connect(&cfg).await.expect("repo");
    let n = sizes.deliveries;
    let webhooks = throughput(
        &repo,
        db.tenant,
        &mut rx,
        (0..n)
            .map(|i| Message::Webhook {
                endpoint_id: endpoint,
                topic: "bench.delivery".into(),
                payload: json!({"i": i}),
            })
            .collect(),
    )
    .await;
    let telegram = throughput(
        &repo,
        db.tenant,
        &mut rx,
        (0..n)
            .map(|i| Message::Telegram {
                chat_id: FIRST_CHAT + i as i64 % CHATS,
                text: format!("bench message {i}"),
            })
            .collect(),
    )
    .await;
    peer_handle.stop(false).await;
    Figures {
        reply: Latency::of(samples),
        webhooks,
        telegram,
    }
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let f = rt.block_on(measure(sizes));
    let n = sizes.deliveries;
    report.rows.push(Row {
        what: "Telegram /status: webhook POST → reply at Bot API",
        vsm: format!("p50 {:.1} ms, p99 {:.1} ms", f.reply.p50, f.reply.p99),
        reference: format!(
            "{} of {} updates answered, one at a time",
            f.reply.n, sizes.telegram_updates
        ),
        ratio: None,
        goal: "every update answered",
        met: f.reply.n == sizes.telegram_updates,
        data: json!({"updates": sizes.telegram_updates, "reply": f.reply.json()}),
    });
    report.rows.push(Row {
        what: "webhook deliveries/s, one `vsm work` (5 at once)",
        vsm: format!("{:.0}/s", f.webhooks.1),
        reference: format!("{} of {n} delivered to a local 200", f.webhooks.0),
        ratio: None,
        goal: "every delivery arrives",
        met: f.webhooks.0 == n,
        data: json!({"deliveries": n, "arrived": f.webhooks.0, "per_second": f.webhooks.1}),
    });
    report.rows.push(Row {
        what: "Telegram messages/s, one `vsm work` (5 at once)",
        vsm: format!("{:.0}/s", f.telegram.1),
        reference: format!(
            "{} of {n} sent; limiter opened wide (not measured)",
            f.telegram.0
        ),
        ratio: None,
        goal: "every message arrives",
        met: f.telegram.0 == n,
        data: json!({"messages": n, "arrived": f.telegram.0, "per_second": f.telegram.1,
                     "chats": CHATS, "limiter": "in-process, per_chat_interval_ms=1, per_bot_per_second=1000000"}),
    });
}
