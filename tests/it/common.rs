//! Test support: each test gets its own PostgreSQL database, cloned from a template migrated once
//! per migration set, so tests run in parallel without seeing each other's rows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use sha2::{Digest, Sha256};
use vsm::config::{DatabaseConfig, ServiceUrl};

/// The server tests run against: `TEST_DATABASE_URL` (without a database name) or the local one.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn url_for(db: &str) -> String {
    format!("{}/{db}", server_url().trim_end_matches('/'))
}

/// A connection to `db` as the login (owner, superuser) role, outside row-level security. The
/// crate offers no such door (`vsm::repo::establish` is crate-private), so tests open it here.
pub async fn connect(db: &str) -> AsyncPgConnection {
    connect_within(db, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

/// [`connect`], bounded by `timeout`, as a `Result`.
pub async fn connect_within(db: &str, timeout: Duration) -> Result<AsyncPgConnection, String> {
    use diesel_async::AsyncConnection;
    match tokio::time::timeout(timeout, AsyncPgConnection::establish(&url_for(db))).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

pub fn db_config(db: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: ServiceUrl::parse(&url_for(db)).expect("valid url"),
        pool_size: 4,
        ..DatabaseConfig::default()
    }
}

/// A database owned by one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A fresh, fully migrated database.
    pub async fn migrated() -> TestDb {
        let template = ensure_template().await;
        let name = unique_name("vsm_test");
        let mut admin = connect("postgres").await;
        diesel::sql_query(format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .execute(&mut admin)
        .await
        .expect("create test database from template");
        TestDb { name }
    }

    /// A name for a database that does not exist yet (for `vsm migrate` to create).
    pub fn missing() -> TestDb {
        TestDb {
            name: unique_name("vsm_test"),
        }
    }

    pub fn url(&self) -> String {
        url_for(&self.name)
    }

    pub fn config(&self) -> DatabaseConfig {
        db_config(&self.name)
    }

    pub async fn repo(&self) -> vsm::repo::Repo {
        vsm::repo::Repo::connect(&self.config())
            .await
            .expect("connect repo")
    }

    /// A connection as the migrating (superuser) role, outside row-level security.
    pub async fn owner_conn(&self) -> AsyncPgConnection {
        connect(&self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; use a private runtime on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) = connect_within("postgres", Duration::from_secs(5)).await {
                    let _ = diesel::sql_query(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    ))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// The migrated template for the current migrations, created once (under an advisory lock, as
/// test processes run in parallel) and reused until the migrations change.
async fn ensure_template() -> String {
    let digest = migrations_digest();
    let name = format!("vsm_template_{}", &digest[..16]);
    let mut admin = connect("postgres").await;
    let key = i64::from_be_bytes(
        hex::decode(&digest[..16]).expect("hex")[..8]
            .try_into()
            .expect("8 bytes"),
    );
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(key)
        .execute(&mut admin)
        .await
        .expect("lock");
    #[derive(diesel::QueryableByName)]
    struct Ready {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ready: bool,
    }
    let ready: Vec<Ready> =
        diesel::sql_query("SELECT datistemplate AS ready FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(&name)
            .load(&mut admin)
            .await
            .expect("query template");
    match <[Ready]>::first(&ready) {
        Some(r) if r.ready => {}
        existing => {
            if existing.is_some() {
                // A run died half-way through building it.
                diesel::sql_query(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .expect("drop stale template");
            }
            vsm::migrate::run(&db_config(&name), vsm::migrate::Action::Up)
                .await
                .expect("migrate template");
            diesel::sql_query(format!("ALTER DATABASE \"{name}\" IS_TEMPLATE true"))
                .execute(&mut admin)
                .await
                .expect("mark template");
        }
    }
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(key)
        .execute(&mut admin)
        .await
        .expect("unlock");
    name
}

fn migrations_digest() -> String {
    let mut files = Vec::new();
    collect(&repo_root().join("migrations"), &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for f in files {
        hasher.update(f.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&f).expect("read migration"));
    }
    hex::encode(hasher.finalize())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `vsm` binary, run from the repository root with a clean configuration environment.
pub fn vsm() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsm"));
    cmd.current_dir(repo_root());
    for (key, _) in std::env::vars() {
        if key.starts_with("VSM_")
            || [
                "DATABASE_URL",
                "REDIS_URL",
                "RABBITMQ_URL",
                "TELEGRAM_BOT_TOKEN",
                "TELEGRAM_WEBHOOK_SECRET",
            ]
            .contains(&key.as_str())
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("VSM_LOG", "warn").stdin(Stdio::null());
    cmd
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// ---------------------------------------------------------------------------------------------
// Serving instances, SSE clients and a cuttable TCP proxy for the event tests.

pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A `vsm serve` running in this process (the same `launch` the binary uses).
pub struct Instance {
    pub base: String,
    pub shutdown: vsm::shutdown::Shutdown,
    pub repo: vsm::repo::Repo,
}

impl Instance {
    pub async fn start(config: vsm::config::Config) -> Instance {
        let repo = vsm::repo::Repo::connect(&config.database)
            .await
            .expect("connect");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let shutdown = vsm::shutdown::Shutdown::new();
        let server = vsm::edge::gateway::launch(
            std::sync::Arc::new(config),
            repo.clone(),
            listener,
            shutdown.clone(),
        )
        .await
        .expect("launch");
        let base = format!("http://127.0.0.1:{}", server.port());
        tokio::spawn(server.run());
        Instance {
            base,
            shutdown,
            repo,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The admin token [`Api::start`] configures.
pub const ADMIN: &str = "admin-secret-token";

/// A gateway instance's `/v1`, called with a tenant's key: status and JSON body.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    /// Starts an instance of `config` with the [`ADMIN`] token.
    pub async fn start(mut config: vsm::config::Config) -> (Instance, Api) {
        config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
        let a = Instance::start(config).await;
        let api = Api {
            base: a.base.clone(),
            http: reqwest::Client::new(),
        };
        (a, api)
    }

    /// Creates a tenant; returns its API key.
    pub async fn tenant(&self, slug: &str) -> String {
        let v: serde_json::Value = self
            .http
            .post(format!("{}/v1/tenants", self.base))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"slug": slug}))
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
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let req = self.http.request(method, url).bearer_auth(key);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// A configuration for `db`, with a private RabbitMQ exchange when `rabbitmq` is given (tests
/// run in parallel and must not see each other's events).
pub fn instance_config(db: &TestDb, rabbitmq: Option<(&str, &str)>) -> vsm::config::Config {
    let mut config = vsm::config::Config::default();
    config.database = db.config();
    config.server.workers = 1;
    config.server.shutdown_grace_secs = 2;
    config.events.relay_poll_ms = 200;
    if let Some((url, exchange)) = rabbitmq {
        config.rabbitmq.url = Some(ServiceUrl::parse(url).expect("amqp url"));
        config.events.exchange = exchange.to_owned();
    }
    config
}

pub fn unique_exchange() -> String {
    format!("vsm.events.test.{}", uuid::Uuid::now_v7().simple())
}

/// One SSE frame: an event (with id), a named control frame (`connected`, `gap`,
/// `disconnected`), or a comment (`: heartbeat`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub id: Option<i64>,
    pub event: Option<String>,
    pub data: String,
    pub comment: Option<String>,
    pub retry: Option<u64>,
}

pub struct SseClient {
    pub status: u16,
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    pub body_on_error: String,
}

impl SseClient {
    pub async fn connect(
        base: &str,
        key: &str,
        query: &str,
        last_event_id: Option<i64>,
    ) -> SseClient {
        let mut req = reqwest::Client::new()
            .get(format!("{base}/v1/events{query}"))
            .bearer_auth(key);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let res = req.send().await.expect("connect SSE");
        let status = res.status().as_u16();
        if status != 200 {
            let body = res.text().await.unwrap_or_default();
            return SseClient {
                status,
                stream: Box::pin(futures_util::stream::empty()),
                buf: String::new(),
                body_on_error: body,
            };
        }
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        assert!(res.headers().get("content-encoding").is_none());
        SseClient {
            status,
            stream: Box::pin(res.bytes_stream()),
            buf: String::new(),
            body_on_error: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ended or nothing came within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in raw.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        frame.comment = Some(c.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        frame.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        frame.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        frame.data.push_str(v);
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        frame.retry = v.parse().ok();
                    }
                }
                return Some(frame);
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// The next frame that is an event with an id (skipping control frames and heartbeats).
    pub async fn next_event(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next(left).await?;
            if frame.id.is_some() || frame.event.as_deref() == Some("disconnected") {
                return Some(frame);
            }
        }
    }
}

/// A TCP proxy the test controls: `cut()` drops every open connection and refuses new ones
/// until `restore()`.
pub struct Proxy {
    pub port: u16,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(upstream: &'static str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (r, c) = (refusing.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if std::sync::atomic::AtomicBool::load(&r, Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut_rx = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            refusing,
            cut,
        }
    }

    pub fn cut(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

pub async fn wait_ready(base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(res) = reqwest::get(format!("{base}/ready")).await
            && res.status() == 200
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{base} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Another service's queue bound to the events exchange, as the README tells them to bind.
pub struct ExternalConsumer {
    _conn: amqprs::connection::Connection,
    _channel: amqprs::channel::Channel,
    rx: tokio::sync::mpsc::UnboundedReceiver<amqprs::channel::ConsumerMessage>,
}

impl ExternalConsumer {
    pub async fn bind(exchange: &str, routing_key: &str) -> ExternalConsumer {
        use amqprs::channel::*;
        use amqprs::connection::*;
        let args = OpenConnectionArguments::new("127.0.0.1", 5672, "guest", "guest");
        let conn = Connection::open(&args).await.unwrap();
        let channel = conn.open_channel(None).await.unwrap();
        let mut declare = ExchangeDeclareArguments::new(exchange, "topic");
        declare.durable = true;
        channel.exchange_declare(declare).await.unwrap();
        let (queue, _, _) = channel
            .queue_declare(QueueDeclareArguments::exclusive_server_named())
            .await
            .unwrap()
            .unwrap();
        channel
            .queue_bind(QueueBindArguments::new(&queue, exchange, routing_key))
            .await
            .unwrap();
        let mut consume = BasicConsumeArguments::new(&queue, "");
        consume.manual_ack(false);
        let (_, rx) = channel.basic_consume_rx(consume.finish()).await.unwrap();
        ExternalConsumer {
            _conn: conn,
            _channel: channel,
            rx,
        }
    }

    pub async fn next(&mut self, wait: Duration) -> Option<serde_json::Value> {
        let msg = tokio::time::timeout(wait, self.rx.recv()).await.ok()??;
        serde_json::from_slice(&msg.content?).ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Storage: the S3-compatible test server, and raw HTTP for requests a URL library would tidy up.

/// The S3-compatible server the `s3` tests use: `TEST_S3_ENDPOINT` (`.ci/run` starts
/// `moto_server` and sets it). Unset is a failure, not a skip: a green run must have tested S3.
pub fn s3_endpoint() -> String {
    std::env::var("TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "TEST_S3_ENDPOINT is not set: start an S3-compatible server, e.g. \
             `moto_server -H 127.0.0.1 -p 5055 &` (pip install 'moto[server]'), and \
             export TEST_S3_ENDPOINT=http://127.0.0.1:5055 (.ci/run does both)"
        )
    })
}

/// A fresh, empty bucket on the test S3 server, and `[storage.s3]` settings for it.
pub async fn s3_bucket() -> vsm::config::S3Config {
    let endpoint = s3_endpoint();
    let bucket = format!("vsm-test-{}", uuid::Uuid::now_v7().simple());
    let res = reqwest::Client::new()
        .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
        .send()
        .await
        .unwrap_or_else(|e| panic!("S3 test server at {endpoint} does not answer: {e}"));
    assert!(
        res.status().is_success(),
        "create bucket {bucket}: {}",
        res.status()
    );
    vsm::config::S3Config {
        bucket: Some(bucket),
        endpoint: Some(endpoint),
        region: "us-east-1".to_owned(),
        path_style: true,
        access_key_id: Some(vsm::config::Secret::new("test")),
        secret_access_key: Some(vsm::config::Secret::new("test")),
    }
}

/// Sends `head` (request line and headers, without the final blank line) and `body` on a
/// fresh connection, exactly as written, and returns the status and the rest of the response.
pub async fn raw_request(base: &str, head: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Every regular file under `dir`, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The Prometheus exposition a server or worker at `base` serves on `/metrics`.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private Redis on a free port, so stopping it disturbs no other test.
pub struct PrivateRedis {
    pub port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        PrivateRedis { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process (a `vsm`, a server the test runs) killed and reaped when the test ends,
/// however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The resident set size of process `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A `vsm serve` child process on a free port of `db`, with `env` on top (the memory tests
/// measure its RSS from outside). Waits until it is ready; killed when the value is dropped.
pub struct ServeChild {
    pub process: KillOnDrop,
    pub base: String,
}

impl ServeChild {
    pub async fn start(db: &TestDb, env: &[(&str, &str)]) -> ServeChild {
        let port = free_port();
        let mut cmd = vsm();
        cmd.arg("serve")
            .env("DATABASE_URL", db.url())
            .env("VSM_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let process = KillOnDrop(cmd.spawn().expect("spawn vsm serve"));
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await;
        ServeChild { process, base }
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }
}
