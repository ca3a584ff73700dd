//! A fake Telegram Bot API server for the tests: a real HTTP peer on 127.0.0.1 that records
//! every call (method, token, body, arrival time) and answers as told — ok, an HTTP error, a
//! 429 with `retry_after`, or never (hang) — per chat or for everyone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

pub const TOKEN: &str = "123456:TEST-token-secret";

#[derive(Debug, Clone)]
pub enum Reply {
    Ok,
    /// An HTTP status with a Bot API error body.
    Status(u16, &'static str),
    /// 429 with `parameters.retry_after`.
    RetryAfter(u64),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub token: String,
    pub body: Value,
    pub at: Instant,
    /// Whether it was answered with success.
    pub ok: bool,
}

impl Call {
    pub fn chat(&self) -> i64 {
        self.body["chat_id"].as_i64().unwrap_or_default()
    }
    pub fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// Replies queued per chat, used before `default`.
    per_chat: HashMap<i64, VecDeque<Reply>>,
    default: Option<Reply>,
}

#[derive(Clone)]
pub struct FakeTelegram {
    state: Arc<Mutex<State>>,
    pub port: u16,
    handle: actix_web::dev::ServerHandle,
}

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        Self::start_on(0).await
    }

    /// Listens on `port` (0: any free one).
    pub async fn start_on(port: u16) -> FakeTelegram {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(1 << 20))
                .route("/bot{token}/{method}", web::post().to(handle))
        })
        .workers(1)
        .bind(("127.0.0.1", port))
        .expect("bind the fake Bot API");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        FakeTelegram {
            state,
            port,
            handle,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The delivered `sendMessage` calls.
    pub fn delivered(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "sendMessage" && c.ok)
            .collect()
    }

    pub fn reply_for(&self, chat: i64, replies: Vec<Reply>) {
        self.state
            .lock()
            .unwrap()
            .per_chat
            .insert(chat, replies.into());
    }

    /// Answer everyone with `reply` (None: ok) once a chat's queue is empty.
    pub fn reply_all(&self, reply: Option<Reply>) {
        self.state.lock().unwrap().default = reply;
    }
}

async fn handle(
    state: web::Data<Arc<Mutex<State>>>,
    path: web::Path<(String, String)>,
    body: web::Json<Value>,
) -> HttpResponse {
    let (token, method) = path.into_inner();
    let body = body.into_inner();
    let chat = body["chat_id"].as_i64().unwrap_or_default();
    let reply = {
        let mut s = state.lock().unwrap();
        let reply = s
            .per_chat
            .get_mut(&chat)
            .and_then(|q| q.pop_front())
            .or_else(|| s.default.clone())
            .unwrap_or(Reply::Ok);
        let ok = matches!(reply, Reply::Ok) && token == TOKEN;
        s.calls.push(Call {
            method: method.clone(),
            token: token.clone(),
            body: body.clone(),
            at: Instant::now(),
            ok,
        });
        reply
    };
    if token != TOKEN {
        return HttpResponse::Unauthorized()
            .json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"}));
    }
    match reply {
        Reply::Ok => {
            let result = match method.as_str() {
                "sendMessage" => {
                    json!({"message_id": 1, "chat": {"id": chat}, "text": body["text"]})
                }
                "getWebhookInfo" => {
                    json!({"url": "https://example.com/telegram/webhook", "has_custom_certificate": false, "pending_update_count": 0})
                }
                _ => json!(true),
            };
            HttpResponse::Ok().json(json!({"ok": true, "result": result}))
        }
        Reply::Status(code, description) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                .json(json!({"ok": false, "error_code": code, "description": description}))
        }
        Reply::RetryAfter(secs) => HttpResponse::TooManyRequests().json(json!({
            "ok": false, "error_code": 429,
            "description": format!("Too Many Requests: retry after {secs}"),
            "parameters": {"retry_after": secs}
        })),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            HttpResponse::Ok().finish()
        }
    }
}
