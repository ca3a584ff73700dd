//! `/v1/artifacts` end to end (CONTRACT §4, §8): a `vsm serve` in this process (the binary's
//! `launch`) with the local backend in a temporary directory, against real PostgreSQL.

use crate::common;

use std::time::Duration;

use common::{Instance, TestDb, files_under, instance_config, raw_request};
use futures_util::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use vsm::repo::Repo;
use vsm::schemas::storage::tenant;

struct App {
    instance: Instance,
    db: TestDb,
    root: tempfile::TempDir,
    http: reqwest::Client,
}

impl App {
    async fn start() -> App {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut vsm::config::Config)) -> App {
        let db = TestDb::migrated().await;
        let root = tempfile::tempdir().expect("tempdir");
        let mut config = instance_config(&db, None);
        config.storage.root = root.path().to_owned();
        adjust(&mut config);
        let instance = Instance::start(config).await;
        App {
            instance,
            db,
            root,
            http: reqwest::Client::new(),
        }
    }

    async fn tenant(&self, slug: &str) -> (Uuid, String) {
        tenant_with_key(&self.instance.repo, slug).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/artifacts/{path}", self.instance.base)
    }

    async fn put(&self, key: &str, path: &str, body: &'static [u8]) -> reqwest::Response {
        self.http
            .put(self.url(path))
            .bearer_auth(key)
            .body(body)
            .send()
            .await
            .expect("PUT")
    }

    async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET")
    }

    async fn list(&self, key: &str, query: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}/v1/artifacts{query}", self.instance.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("list");
        (res.status().as_u16(), res.json().await.expect("json"))
    }

    /// Files on disk, relative to the storage root.
    fn files(&self) -> Vec<String> {
        files_under(self.root.path())
    }

    async fn rows(&self) -> Vec<(String, String)> {
        use diesel::sql_types::Text;
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct R {
            #[diesel(sql_type = Text)]
            tenant: String,
            #[diesel(sql_type = Text)]
            path: String,
        }
        let mut conn = self.db.owner_conn().await;
        let rows: Vec<R> = diesel::sql_query(
            "SELECT tenant_id::text AS tenant, path FROM artifacts ORDER BY tenant_id, path",
        )
        .load(&mut conn)
        .await
        .expect("rows");
        rows.into_iter().map(|r| (r.tenant, r.path)).collect()
    }

    async fn topics(&self) -> Vec<String> {
        use diesel::sql_types::Text;
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct R {
            #[diesel(sql_type = Text)]
            topic: String,
        }
        let mut conn = self.db.owner_conn().await;
        let rows: Vec<R> = diesel::sql_query("SELECT topic FROM events ORDER BY id")
            .load(&mut conn)
            .await
            .expect("events");
        rows.into_iter().map(|r| r.topic).collect()
    }
}

async fn tenant_with_key(repo: &Repo, slug: &str) -> (Uuid, String) {
    let (t, key) = tenant::create(repo, slug, None).await.expect("tenant");
    (t.id, key.key)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn upload_and_download_round_trip_with_headers_and_events() {
    let app = App::start().await;
    let (t, key) = app.tenant("acme").await;
    let body: &'static [u8] = b"quarterly numbers\n";
    let res = app
        .http
        .put(app.url("reports/2026/q4.txt"))
        .bearer_auth(&key)
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-checksum-sha256", sha(body).to_uppercase())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let meta: Value = res.json().await.unwrap();
    assert_eq!(meta["path"], "reports/2026/q4.txt");
    assert_eq!(meta["size"], body.len());
    assert_eq!(meta["sha256"], sha(body));
    assert_eq!(meta["content_type"], "text/plain; charset=utf-8");
    assert_eq!(meta["storage_backend"], "local");

    let res = app.get(&key, "reports/2026/q4.txt").await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["etag"], format!("\"{}\"", sha(body)).as_str());
    assert_eq!(h["content-length"], body.len().to_string().as_str());
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(h["accept-ranges"], "bytes");
    httpdate::parse_http_date(h["last-modified"].to_str().unwrap()).expect("http date");
    assert_eq!(res.bytes().await.unwrap(), body);

    // HEAD: the same headers, no body.
    let res = app
        .http
        .head(app.url("reports/2026/q4.txt"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(res.headers()["etag"], h["etag"]);
    assert!(res.bytes().await.unwrap().is_empty());

    // Conditional GET.
    let res = app
        .http
        .get(app.url("reports/2026/q4.txt"))
        .bearer_auth(&key)
        .header("if-none-match", h["etag"].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);

    // The object is where the key layout says, and the event was recorded with the row.
    assert_eq!(app.files(), [format!("tenants/{t}/reports/2026/q4.txt")]);
    assert_eq!(app.topics().await, ["artifact.stored"]);

    // No credentials, no artifact.
    let res = app
        .http
        .get(app.url("reports/2026/q4.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn range_requests_answer_206_and_416() {
    let app = App::start().await;
    let (_, key) = app.tenant("ranges").await;
    let body: &'static [u8] = b"0123456789abcdefghij";
    assert_eq!(app.put(&key, "r.bin", body).await.status(), 201);
    for (range, status, expect, content_range) in [
        ("bytes=2-5", 206, &b"2345"[..], "bytes 2-5/20"),
        ("bytes=15-", 206, b"fghij", "bytes 15-19/20"),
        ("bytes=-3", 206, b"hij", "bytes 17-19/20"),
        ("bytes=18-100", 206, b"ij", "bytes 18-19/20"),
    ] {
        let res = app
            .http
            .get(app.url("r.bin"))
            .bearer_auth(&key)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{range}");
        assert_eq!(res.headers()["content-range"], content_range, "{range}");
        assert_eq!(
            res.headers()["content-length"],
            expect.len().to_string().as_str()
        );
        assert_eq!(res.bytes().await.unwrap(), expect, "{range}");
    }
    for range in ["bytes=20-", "bytes=5-2", "bytes=-0", "items=1-2"] {
        let res = app
            .http
            .get(app.url("r.bin"))
            .bearer_auth(&key)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 416, "{range}");
        assert_eq!(res.headers()["content-range"], "bytes */20");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "range_not_satisfiable");
    }
}

#[tokio::test]
async fn overwrite_replaces_and_content_type_is_sniffed_when_not_given() {
    let app = App::start().await;
    let (t, key) = app.tenant("over").await;
    let first = app.put(&key, "img", b"plain text first").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["content_type"], "application/octet-stream");
    let png: &'static [u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";
    let second = app.put(&key, "img", png).await;
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["content_type"], "image/png");
    assert_eq!(second["sha256"], sha(png));
    let res = app.get(&key, "img").await;
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.bytes().await.unwrap(), png);
    assert_eq!(app.files(), [format!("tenants/{t}/img")]);
    assert_eq!(app.rows().await.len(), 1);
}

#[tokio::test]
async fn empty_uploads_are_artifacts_too() {
    let app = App::start().await;
    let (_, key) = app.tenant("empty").await;
    let res = app.put(&key, "nothing", b"").await;
    assert_eq!(res.status(), 201);
    let meta: Value = res.json().await.unwrap();
    assert_eq!(meta["size"], 0);
    assert_eq!(meta["sha256"], sha(b""));
    let res = app.get(&key, "nothing").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], "0");
    assert!(res.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn list_pages_by_prefix_with_a_cursor() {
    let app = App::start().await;
    let (_, key) = app.tenant("lists").await;
    for p in [
        "reports/e",
        "reports/a",
        "reports/c",
        "reports/b",
        "reports/d",
        "other/x",
        "reportsx",
    ] {
        assert_eq!(app.put(&key, p, b"x").await.status(), 201);
    }
    let mut seen = Vec::new();
    let mut query = "?prefix=reports/&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = app.list(&key, &query).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|i| i["path"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?prefix=reports/&limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [
            "reports/a",
            "reports/b",
            "reports/c",
            "reports/d",
            "reports/e"
        ]
    );
    // Default limit and no prefix: everything.
    let (_, all) = app.list(&key, "").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 7);
    assert!(all["next_cursor"].is_null());
    // LIKE wildcards in a prefix are plain characters.
    let (_, none) = app.list(&key, "?prefix=rep%25").await;
    assert!(none["items"].as_array().unwrap().is_empty());
    for bad in ["?limit=0", "?limit=501", "?limit=x", "?cursor=zz"] {
        let (status, body) = app.list(&key, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn delete_removes_row_and_object() {
    let app = App::start().await;
    let (_, key) = app.tenant("deleter").await;
    assert_eq!(app.put(&key, "a/b/c.txt", b"gone soon").await.status(), 201);
    let res = app
        .http
        .delete(app.url("a/b/c.txt"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.get(&key, "a/b/c.txt").await.status(), 404);
    assert!(app.rows().await.is_empty());
    assert!(app.files().is_empty(), "{:?}", app.files());
    assert_eq!(app.topics().await, ["artifact.stored", "artifact.deleted"]);
    let again = app
        .http
        .delete(app.url("a/b/c.txt"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn tenant_b_cannot_read_list_or_delete_tenant_a_artifacts() {
    let app = App::start().await;
    let (a, key_a) = app.tenant("tenant-a").await;
    let (b, key_b) = app.tenant("tenant-b").await;
    assert_eq!(
        app.put(&key_a, "secret.txt", b"A's secret").await.status(),
        201
    );

    assert_eq!(app.get(&key_b, "secret.txt").await.status(), 404);
    let head = app
        .http
        .head(app.url("secret.txt"))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
    let (_, listed) = app.list(&key_b, "").await;
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");
    let del = app
        .http
        .delete(app.url("secret.txt"))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404);

    // B's artifact of the same name is B's own object; A's is untouched.
    assert_eq!(
        app.put(&key_b, "secret.txt", b"B's own").await.status(),
        201
    );
    assert_eq!(
        app.get(&key_a, "secret.txt").await.bytes().await.unwrap(),
        &b"A's secret"[..]
    );
    assert_eq!(
        app.get(&key_b, "secret.txt").await.bytes().await.unwrap(),
        &b"B's own"[..]
    );
    let mut expected = vec![
        format!("tenants/{a}/secret.txt"),
        format!("tenants/{b}/secret.txt"),
    ];
    expected.sort();
    assert_eq!(app.files(), expected);
}

#[tokio::test]
async fn path_attacks_are_refused_and_nothing_is_written_outside_the_tenant_prefix() {
    let app = App::start().await;
    let (t, key) = app.tenant("attacked").await;
    assert_eq!(app.put(&key, "ok.txt", b"fine").await.status(), 201);
    let long_path = format!("{}/x", ["b"; 512].join("/"));
    let long_segment = "s".repeat(256);
    // Sent byte for byte (a URL library would resolve the dot segments before sending).
    let attacks: Vec<(String, &str)> = vec![
        ("../escape.txt".into(), "'..'"),
        ("a/../../../escape.txt".into(), "'..'"),
        ("%2e%2e/escape.txt".into(), "'..'"),
        ("%2E%2E%2Fescape.txt".into(), "'..'"),
        ("..%2f..%2fescape.txt".into(), "'..'"),
        ("/etc/passwd".into(), "absolute"),
        ("%2Fetc%2Fpasswd".into(), "absolute"),
        ("a%00b".into(), "NUL"),
        ("a%0Ab".into(), "control"),
        ("a//b".into(), "empty segments"),
        ("./a".into(), "'.'"),
        ("%ff%fe".into(), "UTF-8"),
        (long_path, "1024 bytes"),
        (long_segment, "255 bytes"),
    ];
    for (path, rule) in &attacks {
        for method in ["PUT", "GET", "DELETE"] {
            let head =
                format!("{method} /v1/artifacts/{path} HTTP/1.1\r\nAuthorization: Bearer {key}");
            let (status, response) = raw_request(&app.instance.base, &head, b"pwned").await;
            assert_eq!(status, 400, "{method} {path}: {response}");
            assert!(response.contains("bad_request"), "{response}");
            assert!(response.contains(rule), "{method} {path}: {response}");
        }
    }
    assert_eq!(app.files(), [format!("tenants/{t}/ok.txt")]);
    assert_eq!(app.rows().await.len(), 1);
    let outside = app.root.path().parent().unwrap().join("escape.txt");
    assert!(!outside.exists());
}

#[tokio::test]
async fn a_checksum_mismatch_stores_nothing() {
    let app = App::start().await;
    let (_, key) = app.tenant("checksums").await;
    let res = app
        .http
        .put(app.url("c.txt"))
        .bearer_auth(&key)
        .header("x-checksum-sha256", sha(b"something else"))
        .body(&b"the body"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{err}"
    );
    let bad = app
        .http
        .put(app.url("c.txt"))
        .bearer_auth(&key)
        .header("x-checksum-sha256", "not-hex")
        .body(&b"the body"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(app.get(&key, "c.txt").await.status(), 404);
    assert!(app.rows().await.is_empty());
    assert!(app.topics().await.is_empty());
    assert!(app.files().is_empty(), "{:?}", app.files());
}

#[tokio::test]
async fn uploads_over_the_limit_get_413_and_store_nothing() {
    let app = App::start_with(|c| c.storage.max_object_bytes = 1024 * 1024).await;
    let (_, key) = app.tenant("limits").await;
    let big = vec![7u8; 2 * 1024 * 1024];
    // Declared length over the limit: refused before the body is read.
    let res = app
        .http
        .put(app.url("big"))
        .bearer_auth(&key)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // Chunked, no declared length: refused once the limit is crossed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let res = app
        .http
        .put(app.url("big"))
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The server may answer and close before the client has sent everything.
    if let Ok(res) = res {
        assert_eq!(res.status(), 413);
    }
    // Exactly the limit is fine. (A fresh client: the refused uploads' connections were closed
    // by the server with request bytes still unread, and a pooled one may be half-dead.)
    let res = reqwest::Client::new()
        .put(app.url("fits"))
        .bearer_auth(&key)
        .body(vec![1u8; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(app.rows().await.len(), 1);
    wait_for("one file stored", || app.files().len() == 1).await;
}

/// Polls `cond` for up to ten seconds.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_no_row_and_no_object() {
    use tokio::io::AsyncWriteExt;
    let app = App::start().await;
    let (_, key) = app.tenant("quitter").await;
    let addr = app.instance.base.trim_start_matches("http://").to_owned();
    // 20 MiB promised, 7 MiB sent: past the first part, so the backend had a multipart upload
    // in progress when the connection dropped.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /v1/artifacts/partial.bin HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\n\r\n",
        20 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![42u8; 1024 * 1024];
    for _ in 0..7 {
        stream.write_all(&chunk).await.unwrap();
    }
    stream.flush().await.unwrap();
    // Let the server read and stage what was sent, then go away.
    wait_for("the upload is being staged", || !app.files().is_empty()).await;
    drop(stream);
    wait_for("the staged upload is removed", || app.files().is_empty()).await;
    assert!(app.rows().await.is_empty());
    assert!(app.topics().await.is_empty());
    assert_eq!(app.get(&key, "partial.bin").await.status(), 404);
    // The server is fine afterwards.
    assert_eq!(app.put(&key, "partial.bin", b"whole").await.status(), 201);
}

#[tokio::test]
async fn ready_checks_storage_and_metrics_count_operations() {
    let app = App::start().await;
    let (_, key) = app.tenant("observed").await;
    assert_eq!(app.put(&key, "m.txt", b"measure me").await.status(), 201);
    assert_eq!(
        app.get(&key, "m.txt").await.bytes().await.unwrap().len(),
        10
    );
    let ready: Value = reqwest::get(format!("{}/ready", app.instance.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["storage"]["status"], "ok", "{ready}");
    let metrics = reqwest::get(format!("{}/metrics", app.instance.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "cybernetic_storage_operations_total{backend=\"local\",op=\"put_stream\",result=\"ok\"}",
        "cybernetic_storage_operations_total{backend=\"local\",op=\"rename\",result=\"ok\"}",
        "cybernetic_storage_bytes_total{backend=\"local\",direction=\"in\"}",
        "cybernetic_storage_bytes_total{backend=\"local\",direction=\"out\"}",
        "cybernetic_storage_operation_duration_seconds_bucket",
        "cybernetic_requests_total{method=\"PUT\",path=\"/v1/artifacts/{path:.*}\",status=\"201\"}",
    ] {
        assert!(metrics.contains(needle), "missing {needle}");
    }
}

#[tokio::test]
async fn ready_is_503_when_the_s3_bucket_is_missing() {
    let mut s3 = common::s3_bucket().await;
    s3.bucket = Some(format!("vsm-missing-{}", Uuid::now_v7().simple()));
    let app = App::start_with(|c| {
        c.storage.backend = vsm::config::StorageBackend::S3;
        c.storage.s3 = s3;
    })
    .await;
    let res = reqwest::get(format!("{}/ready", app.instance.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["storage"]["status"], "unavailable", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "ok", "{body}");
    // A short reason; the bucket's name and the endpoint stay in the log (CONTRACT §5).
    let error = body["checks"]["storage"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ["bucket or root not found", "backend did not answer"].contains(&error),
        "{body}"
    );
}

#[tokio::test]
async fn the_s3_backend_serves_the_same_api() {
    let s3 = common::s3_bucket().await;
    let app = App::start_with(|c| {
        c.storage.backend = vsm::config::StorageBackend::S3;
        c.storage.s3 = s3;
    })
    .await;
    let (_, key) = app.tenant("on-s3").await;
    common::wait_ready(&app.instance.base).await;
    // Bigger than one part: staged as a multipart upload, then copied into place.
    let body: Vec<u8> = (0..12 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let res = app
        .http
        .put(app.url("big/on-s3.bin"))
        .bearer_auth(&key)
        .header("x-checksum-sha256", sha(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let meta: Value = res.json().await.unwrap();
    assert_eq!(meta["storage_backend"], "s3");
    let res = app.get(&key, "big/on-s3.bin").await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(sha(&got), sha(&body));
    let res = app
        .http
        .delete(app.url("big/on-s3.bin"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.get(&key, "big/on-s3.bin").await.status(), 404);
}

#[tokio::test]
async fn on_the_local_backend_a_path_cannot_be_both_artifact_and_folder() {
    let app = App::start().await;
    let (t, key) = app.tenant("folders").await;
    assert_eq!(app.put(&key, "a", b"file").await.status(), 201);
    let res = app.put(&key, "a/b", b"under a file").await;
    assert_eq!(res.status(), 409);
    assert_eq!(app.put(&key, "c/d", b"in a folder").await.status(), 201);
    assert_eq!(app.put(&key, "c", b"over a folder").await.status(), 409);
    let mut rows: Vec<String> = app.rows().await.into_iter().map(|(_, p)| p).collect();
    rows.sort();
    assert_eq!(rows, ["a", "c/d"]);
    wait_for("staged uploads are removed", || {
        app.files() == [format!("tenants/{t}/a"), format!("tenants/{t}/c/d")]
    })
    .await;
    assert_eq!(app.topics().await.len(), 2);
}

#[tokio::test]
async fn an_uploaded_html_page_downloads_as_an_attachment_that_is_never_sniffed() {
    let app = App::start().await;
    let (_, key) = app.tenant("pages").await;
    let page: &'static [u8] = b"<!doctype html><script>alert(document.cookie)</script>";
    for (path, content_type) in [
        ("site/index.html", Some("text/html")),
        ("site/sniffed", None),
    ] {
        let mut req = app.http.put(app.url(path)).bearer_auth(&key).body(page);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        assert_eq!(req.send().await.unwrap().status(), 201);
        for head in [false, true] {
            let res = if head {
                app.http
                    .head(app.url(path))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
            } else {
                app.get(&key, path).await
            };
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["x-content-type-options"], "nosniff");
            let disposition = res.headers()["content-disposition"].to_str().unwrap();
            assert!(
                disposition.starts_with("attachment;"),
                "{path}: {disposition}"
            );
        }
    }
    // An image a browser only displays stays inline (still nosniff).
    let png: &'static [u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    let res = app.put(&key, "img/logo.png", png).await;
    assert_eq!(res.status(), 201);
    let res = app.get(&key, "img/logo.png").await;
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        res.headers()["content-disposition"],
        "inline; filename*=UTF-8''logo%2Epng"
    );
}

#[tokio::test]
async fn the_serving_process_sweeps_staging_uploads_a_killed_process_left() {
    let app = App::start_with(|c| c.storage.staging_sweep_interval_secs = 1).await;
    let staging = app.root.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let left = staging.join(Uuid::now_v7().to_string());
    std::fs::write(&left, b"abandoned").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&left)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    let fresh = staging.join(Uuid::now_v7().to_string());
    std::fs::write(&fresh, b"in progress").unwrap();
    common::eventually(
        Duration::from_secs(10),
        "the old staging upload swept",
        || {
            let gone = !left.exists();
            async move { gone }
        },
    )
    .await;
    assert!(fresh.exists());
}
