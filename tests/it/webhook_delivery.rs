//! Webhook delivery end to end (CONTRACT §7): an event matching an endpoint's topics is POSTed,
//! signed per Standard Webhooks (checked by the reference verifier, the PyPI `standardwebhooks`
//! package), to a receiver the test runs; retries, final answers, 410, redirects, the target
//! guard and a hostile 1 GiB answer.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::{self, Api, Instance, TestDb, eventually, instance_config};
use crate::jobs_support::options;

/// How the test receiver answers its n-th request (0-based).
#[derive(Clone)]
pub enum Reply {
    Status(u16),
    /// 302 to this location.
    Redirect(String),
    /// Accepts the request and never answers.
    Hang,
    /// 200 with a 1 GiB body, generated as it is written.
    Huge,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A real HTTP peer on 127.0.0.1 answering from a script; one request per connection.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/hook",
            listener.local_addr().unwrap().port()
        );
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script = Arc::new(script);
        let sink = got.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (sink, script) = (sink.clone(), script.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut conn).await else {
                        return;
                    };
                    let n = {
                        let mut g = sink.lock().unwrap();
                        g.push(req);
                        g.len() - 1
                    };
                    let head = |status: u16, extra: &str, len: u64| {
                        format!(
                            "HTTP/1.1 {status} X\r\n{extra}content-length: {len}\r\nconnection: close\r\n\r\n"
                        )
                    };
                    match script(n) {
                        Reply::Status(s) => {
                            let _ = conn.write_all(head(s, "", 0).as_bytes()).await;
                        }
                        Reply::Redirect(to) => {
                            let h = head(302, &format!("location: {to}\r\n"), 0);
                            let _ = conn.write_all(h.as_bytes()).await;
                        }
                        Reply::Hang => tokio::time::sleep(Duration::from_secs(120)).await,
                        Reply::Huge => {
                            let _ = conn.write_all(head(200, "", 1 << 30).as_bytes()).await;
                            let chunk = vec![b'x'; 64 * 1024];
                            for _ in 0..(1 << 30) / chunk.len() {
                                if conn.write_all(&chunk).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Receiver { url, got }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let end = loop {
        let n = conn.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Received { headers, body })
}

/// Runs the reference verifier on a received request: `Ok` with the payload it parsed.
pub fn verify(secret: &str, r: &Received) -> Result<Value, String> {
    let headers = json!({
        "webhook-id": r.headers["webhook-id"],
        "webhook-timestamp": r.headers["webhook-timestamp"],
        "webhook-signature": r.headers["webhook-signature"],
    });
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, json\n\
             from standardwebhooks.webhooks import Webhook\n\
             secret, headers = sys.argv[1], json.loads(sys.argv[2])\n\
             body = sys.stdin.buffer.read()\n\
             print(json.dumps(Webhook(secret).verify(body, headers)))",
            secret,
            &headers.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&r.body)?;
            child.wait_with_output()
        })
        .expect("python3 with standardwebhooks (pip install standardwebhooks)");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A gateway (relay and subscribers) and a job engine on `notifications`, private targets
/// allowed (the receivers are on loopback) unless `strict`, retries seconds apart.
pub async fn platform(db: &TestDb, strict: bool) -> (Instance, Api, vsm::shutdown::Shutdown) {
    let mut config = instance_config(db, None);
    config.notifications.allow_private_targets = !strict;
    platform_with(config, &[("notifications", 5), ("default", 2)]).await
}

/// A gateway on `config` and a job engine on `queues`, webhook retries seconds apart.
pub async fn platform_with(
    mut config: vsm::config::Config,
    queues: &[(&str, usize)],
) -> (Instance, Api, vsm::shutdown::Shutdown) {
    config.notifications.retry_base_secs = 0;
    config.notifications.webhook_timeout_secs = 2;
    let repo = vsm::repo::Repo::connect(&config.database).await.unwrap();
    let registry = vsm::workers::registry(&config);
    let engine = vsm::jobs::Engine::new(repo, Arc::new(config.clone()), registry, options(queues));
    let shutdown = vsm::shutdown::Shutdown::new();
    tokio::spawn(engine.run(shutdown.clone()));
    let (a, api) = Api::start(config).await;
    (a, api, shutdown)
}

pub async fn hook(api: &Api, key: &str, url: &str, topics: &[&str]) -> (String, String) {
    let (s, body) = api
        .call(
            "POST",
            "/v1/webhooks",
            key,
            Some(json!({"url": url, "topics": topics})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    (
        body["id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

pub async fn episode(api: &Api, key: &str) -> String {
    let (s, body) = api
        .call(
            "POST",
            "/v1/episodes",
            key,
            Some(json!({"title": "t", "content": "c"})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// `(state, attempts, last_error)` of the tenant's only webhook notification.
async fn notification(db: &TestDb) -> Option<(String, i32, Option<String>)> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        attempts: i32,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        last_error: Option<String>,
    }
    let mut conn = db.owner_conn().await;
    diesel::sql_query(
        "SELECT state, attempts, last_error FROM notifications WHERE channel = 'webhook' ORDER BY id LIMIT 1",
    )
    .get_result::<Row>(&mut conn)
    .await
    .ok()
    .map(|r| (r.state, r.attempts, r.last_error))
}

async fn wait_state(db: &TestDb, state: &str) -> (i32, Option<String>) {
    eventually(WAIT, &format!("notification {state}"), || async move {
        notification(db).await.is_some_and(|(s, _, _)| s == state)
    })
    .await;
    let (_, attempts, error) = notification(db).await.unwrap();
    (attempts, error)
}

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_matching_event_is_delivered_signed_and_verifies_with_the_reference_verifier() {
    let db = TestDb::migrated().await;
    let (_a, api, _engine) = platform(&db, false).await;
    let key = api.tenant("hooks").await;
    let rx = Receiver::start(|_| Reply::Status(204)).await;
    let (_id, secret) = hook(&api, &key, &rx.url, &["episode.created"]).await;
    let episode_id = episode(&api, &key).await;
    wait_state(&db, "sent").await;
    let got = rx.received();
    assert_eq!(got.len(), 1);
    let payload = verify(&secret, &got[0]).expect("reference verifier accepts it");
    assert_eq!(payload["type"], "episode.created");
    assert_eq!(payload["data"]["id"], episode_id.as_str());
    assert!(chrono::DateTime::parse_from_rfc3339(payload["timestamp"].as_str().unwrap()).is_ok());
    assert!(got[0].headers["webhook-id"].starts_with("msg_"));
    // Signed with another secret, it does not verify.
    let other = vsm::workers::notification_sender::signature::new_secret();
    assert!(verify(&other, &got[0]).is_err());
}

#[tokio::test]
async fn during_a_rotation_both_secrets_sign_and_each_verifies() {
    let db = TestDb::migrated().await;
    let (_a, api, _engine) = platform(&db, false).await;
    let key = api.tenant("hooks").await;
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let (id, old) = hook(&api, &key, &rx.url, &["episode.created"]).await;
    let (s, rotated) = api
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &key,
            None,
        )
        .await;
    assert_eq!(s, 200);
    let new = rotated["secret"].as_str().unwrap().to_owned();
    episode(&api, &key).await;
    wait_state(&db, "sent").await;
    let got = &rx.received()[0];
    assert_eq!(got.headers["webhook-signature"].split(' ').count(), 2);
    verify(&old, got).expect("the old secret verifies during the overlap");
    verify(&new, got).expect("the new secret verifies");
}

#[tokio::test]
async fn failures_retry_with_the_same_webhook_id_until_sent() {
    let db = TestDb::migrated().await;
    let (_a, api, _engine) = platform(&db, false).await;
    let key = api.tenant("hooks").await;
    // 503, then no answer within the timeout, then 200.
    let rx = Receiver::start(|n| match n {
        0 => Reply::Status(503),
        1 => Reply::Hang,
        _ => Reply::Status(200),
    })
    .await;
    let (_, secret) = hook(&api, &key, &rx.url, &["episode.created"]).await;
    episode(&api, &key).await;
    let (attempts, _) = wait_state(&db, "sent").await;
    assert_eq!(attempts, 3);
    let got = rx.received();
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    // Every retry carries the same body, each signed for its own timestamp.
    assert!(got.iter().all(|r| r.body == got[0].body));
    for r in &got {
        verify(&secret, r).expect("each attempt verifies");
    }
}

#[tokio::test]
async fn a_400_is_final_and_a_redirect_is_not_followed() {
    let db = TestDb::migrated().await;
    let (_a, api, _engine) = platform(&db, false).await;
    let key = api.tenant("hooks").await;
    let target = Receiver::start(|_| Reply::Status(200)).await;
    let to = target.url.clone();
    let rx = Receiver::start(move |n| match n {
        0 => Reply::Status(400),
        _ => Reply::Redirect(to.clone()),
    })
    .await;
    hook(&api, &key, &rx.url, &["episode.created"]).await;
    episode(&api, &key).await;
    let (attempts, error) = wait_state(&db, "failed").await;
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("400"));
    assert_eq!(rx.received().len(), 1, "a 400 is not retried");

    // Second endpoint's delivery: a 302 is final, and its Location hears nothing.
    use diesel_async::RunQueryDsl;
    let mut conn = db.owner_conn().await;
    diesel::sql_query("DELETE FROM notifications")
        .execute(&mut conn)
        .await
        .unwrap();
    episode(&api, &key).await;
    let (_, error) = wait_state(&db, "failed").await;
    assert!(error.unwrap().contains("302"));
    assert_eq!(rx.received().len(), 2);
    assert!(target.received().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_the_failure_says_so() {
    let db = TestDb::migrated().await;
    let (_a, api, _engine) = platform(&db, false).await;
    let key = api.tenant("hooks").await;
    let rx = Receiver::start(|_| Reply::Status(410)).await;
    let (id, _) = hook(&api, &key, &rx.url, &["episode.created"]).await;
    episode(&api, &key).await;
    let (_, error) = wait_state(&db, "failed").await;
    assert!(error.unwrap().contains("disabled"));
    let (_, shown) = api
        .call("GET", &format!("/v1/webhooks/{id}"), &key, None)
        .await;
    assert_eq!(shown["enabled"], false);
    assert!(shown["disabled_reason"].as_str().unwrap().contains("410"));
    // A disabled endpoint gets no more events; an enabled one beside it still does.
    let rx2 = Receiver::start(|_| Reply::Status(200)).await;
    hook(&api, &key, &rx2.url, &["episode.created"]).await;
    episode(&api, &key).await;
    eventually(WAIT, "the other endpoint's delivery", || {
        let n = rx2.received().len();
        async move { n == 1 }
    })
    .await;
    assert_eq!(rx.received().len(), 1);
}

#[tokio::test]
async fn private_and_metadata_targets_are_refused_without_a_connection() {
    let db = TestDb::migrated().await;
    let (_a, api, _engine) = platform(&db, true).await;
    let key = api.tenant("hooks").await;
    // Literal private addresses are refused when saved.
    for url in ["http://169.254.169.254/latest", "http://10.0.0.1/"] {
        let (s, _) = api
            .call("POST", "/v1/webhooks", &key, Some(json!({"url": url})))
            .await;
        assert_eq!(s, 422, "{url}");
    }
    // A name resolving to loopback is refused at delivery, before any connection.
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let url = rx.url.replace("127.0.0.1", "localhost");
    hook(&api, &key, &url, &["episode.created"]).await;
    episode(&api, &key).await;
    let (_, error) = wait_state(&db, "failed").await;
    assert!(error.unwrap().contains("loopback"));
    assert!(rx.received().is_empty(), "the receiver was reached");
}

#[tokio::test]
async fn private_targets_are_allowed_when_configured() {
    let db = TestDb::migrated().await;
    let (_a, api, _engine) = platform(&db, false).await;
    let key = api.tenant("hooks").await;
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let url = rx.url.replace("127.0.0.1", "localhost");
    hook(&api, &key, &url, &["episode.created"]).await;
    episode(&api, &key).await;
    wait_state(&db, "sent").await;
    assert_eq!(rx.received().len(), 1);
}

#[tokio::test]
async fn notification_events_never_reach_webhooks() {
    let db = TestDb::migrated().await;
    let (_a, api, _engine) = platform(&db, false).await;
    let key = api.tenant("hooks").await;
    let rx = Receiver::start(|_| Reply::Status(400)).await;
    // Listens to everything: its own failure must not come back to it.
    hook(&api, &key, &rx.url, &["episode.created", "notification.*"]).await;
    episode(&api, &key).await;
    wait_state(&db, "failed").await;
    use diesel_async::RunQueryDsl;
    // The notification.failed event was published (the relay handed it to the subscriber)…
    let mut conn = db.owner_conn().await;
    eventually(WAIT, "notification.failed published", || {
        let db = &db;
        async move {
            let mut conn = db.owner_conn().await;
            let conn = &mut conn;
            #[derive(diesel::QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            diesel::sql_query("SELECT count(*) AS n FROM events WHERE topic = 'notification.failed' AND published_at IS NOT NULL")
                .get_result::<N>(conn)
                .await
                .map(|r| r.n == 1)
                .unwrap_or(false)
        }
    })
    .await;
    // …and made no notification of its own.
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n = diesel::sql_query("SELECT count(*) AS n FROM notifications")
        .get_result::<N>(&mut conn)
        .await
        .unwrap()
        .n;
    assert_eq!(n, 1);
    assert_eq!(rx.received().len(), 1);
}

#[tokio::test]
async fn a_gigabyte_answer_does_not_grow_the_workers_memory() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.notifications.allow_private_targets = true;
    let (_a, api) = Api::start(config).await;
    let key = api.tenant("hooks").await;
    let rx = Receiver::start(|_| Reply::Huge).await;
    let ops = common::free_port();
    let mut cmd = common::vsm();
    cmd.args(["work", "--queue", "notifications"])
        .env("DATABASE_URL", db.url())
        .env("VSM_JOBS__METRICS_LISTEN", format!("127.0.0.1:{ops}"))
        .env("VSM_NOTIFICATIONS__ALLOW_PRIVATE_TARGETS", "true")
        .stdout(Stdio::null());
    let worker = common::KillOnDrop(cmd.spawn().expect("spawn vsm work"));
    common::wait_ready(&format!("http://127.0.0.1:{ops}")).await;
    let before = common::rss_kib(worker.0.id());
    hook(&api, &key, &rx.url, &["episode.created"]).await;
    episode(&api, &key).await;
    wait_state(&db, "sent").await;
    let after = common::rss_kib(worker.0.id());
    assert_eq!(rx.received().len(), 1);
    // Reading the whole answer would take a GiB; the cap keeps it to 64 KiB plus buffers.
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}
