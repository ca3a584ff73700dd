//! The built-in dashboard (CONTRACT §11): sessions, CSRF and headers over HTTP, and the whole
//! page in headless Chromium against a running `vsm all`.

use std::process::Stdio;
use std::time::Duration;

use reqwest::{Client, header};
use serde_json::{Value, json};

use crate::common::{
    Instance, KillOnDrop, TestDb, eventually, free_port, instance_config, repo_root, vsm,
    wait_ready,
};

const ADMIN: &str = "dashboard-admin-token";

async fn new_tenant(http: &Client, base: &str, slug: &str) -> String {
    let v: Value = http
        .post(format!("{base}/v1/tenants"))
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

/// Signs in with `credential` from the page's own origin; the response.
async fn sign_in(http: &Client, base: &str, credential: &str) -> reqwest::Response {
    http.post(format!("{base}/dashboard/sign-in"))
        .header(header::ORIGIN, base)
        .json(&json!({ "credential": credential }))
        .send()
        .await
        .unwrap()
}

/// `(cookie header value, csrf token)` of a successful sign-in.
async fn session(http: &Client, base: &str, credential: &str) -> (String, String) {
    let res = sign_in(http, base, credential).await;
    assert_eq!(res.status(), 200);
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = res.json().await.unwrap();
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, body["csrf_token"].as_str().unwrap().to_owned())
}

async fn instance(db: &TestDb) -> Instance {
    let mut config = instance_config(db, None);
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    Instance::start(config).await
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_refuses_wrong_credentials() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    let key = new_tenant(&http, &a.base, "dash-cookie").await;

    let wrong = sign_in(&http, &a.base, &format!("vsm_{}", "0".repeat(64))).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());
    // Without this site's Origin (another site's form, or none): refused before any lookup.
    for origin in [Some("http://evil.example"), None] {
        let mut req = http
            .post(format!("{}/dashboard/sign-in", a.base))
            .json(&json!({ "credential": key }));
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        assert_eq!(req.send().await.unwrap().status(), 403, "{origin:?}");
    }

    let res = sign_in(&http, &a.base, &key).await;
    assert_eq!(res.status(), 200);
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("vsm_session="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|f| f == flag), "{flag} in {cookie}");
    }
    // Plain HTTP from an untrusted peer: not Secure, even if the peer claims https.
    assert!(!cookie.contains("Secure"), "{cookie}");
    let claimed = http
        .post(format!("{}/dashboard/sign-in", a.base))
        .header(header::ORIGIN, &a.base)
        .header("x-forwarded-proto", "https")
        .json(&json!({ "credential": key }))
        .send()
        .await
        .unwrap();
    let cookie = claimed.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");

    // The cookie works for the API and the event stream; the Bearer path is unchanged.
    let (pair, _) = session(&http, &a.base, &key).await;
    let systems = http
        .get(format!("{}/v1/systems", a.base))
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(systems.status(), 200);
    let stream = http
        .get(format!("{}/v1/events", a.base))
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()[header::CONTENT_TYPE], "text/event-stream");
    let no_auth = http
        .get(format!("{}/v1/systems", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status(), 401);
}

#[tokio::test]
async fn behind_a_trusted_tls_proxy_the_cookie_is_secure() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.server.admin_token = Some(vsm::config::Secret::new(ADMIN));
    config.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let a = Instance::start(config).await;
    let http = Client::new();
    let key = new_tenant(&http, &a.base, "dash-tls").await;
    let res = http
        .post(format!("{}/dashboard/sign-in", a.base))
        .header(header::ORIGIN, a.base.replace("http://", "https://"))
        .header("x-forwarded-proto", "https")
        .json(&json!({ "credential": key }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
}

#[tokio::test]
async fn state_changes_with_the_cookie_need_the_csrf_token_and_this_origin() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    let key = new_tenant(&http, &a.base, "dash-csrf").await;
    let (pair, csrf) = session(&http, &a.base, &key).await;
    let put = |origin: Option<&str>, token: Option<&str>| {
        let mut req = http
            .put(format!("{}/v1/systems/1/state", a.base))
            .header(header::COOKIE, &pair)
            .json(&json!({"state": {"x": 1}}));
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o.to_owned());
        }
        if let Some(t) = token {
            req = req.header("x-csrf-token", t.to_owned());
        }
        req.send()
    };
    // A cross-site POST/PUT: the browser sends the other site's Origin and no token.
    let cross = put(Some("http://evil.example"), None).await.unwrap();
    assert_eq!(cross.status(), 403);
    let cross_with_token = put(Some("http://evil.example"), Some(&csrf)).await.unwrap();
    assert_eq!(cross_with_token.status(), 403);
    let no_token = put(Some(&a.base), None).await.unwrap();
    assert_eq!(no_token.status(), 403);
    let wrong_token = put(Some(&a.base), Some(&"0".repeat(64))).await.unwrap();
    assert_eq!(wrong_token.status(), 403);
    // None of the refused requests changed anything.
    let s1: Value = http
        .get(format!("{}/v1/systems/1", a.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s1["version"], 0, "{s1}");
    let ok = put(Some(&a.base), Some(&csrf)).await.unwrap();
    assert_eq!(ok.status(), 200);

    // Sign-out needs the token too, and ends the session for every later request.
    let out = http
        .post(format!("{}/dashboard/sign-out", a.base))
        .header(header::COOKIE, &pair)
        .header(header::ORIGIN, &a.base)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 403);
    let out = http
        .post(format!("{}/dashboard/sign-out", a.base))
        .header(header::COOKIE, &pair)
        .header(header::ORIGIN, &a.base)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert!(
        out.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = http
        .get(format!("{}/dashboard/session", a.base))
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}

#[tokio::test]
async fn a_session_is_no_more_than_its_key() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    let key = new_tenant(&http, &a.base, "dash-scope").await;
    let other = new_tenant(&http, &a.base, "dash-other").await;
    let (pair, csrf) = session(&http, &a.base, &key).await;
    let post = |path: String| {
        http.post(format!("{}{path}", a.base))
            .header(header::COOKIE, &pair)
            .header(header::ORIGIN, &a.base)
            .header("x-csrf-token", &csrf)
            .send()
    };
    // A tenant's session cannot pause queues (admin only) ...
    assert_eq!(
        post("/v1/queues/default/pause".into())
            .await
            .unwrap()
            .status(),
        403
    );
    // ... nor see another tenant's job.
    let episode: Value = http
        .post(format!("{}/v1/episodes", a.base))
        .bearer_auth(&other)
        .json(&json!({"title": "t", "content": ""}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(episode["id"].is_string(), "{episode}");
    let jobs: Value = http
        .get(format!("{}/v1/jobs", a.base))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = jobs["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        post(format!("/v1/jobs/{job_id}/cancel"))
            .await
            .unwrap()
            .status(),
        404
    );
    let mine: Value = http
        .get(format!("{}/v1/jobs", a.base))
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 0, "{mine}");

    // Revoking the key ends the session.
    let me: Value = http
        .get(format!("{}/dashboard/session", a.base))
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["kind"], "tenant");
    let issued: Value = http
        .post(format!("{}/v1/api-keys", a.base))
        .bearer_auth(&key)
        .json(&json!({"name": "second"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (second_pair, _) = session(&http, &a.base, issued["key"].as_str().unwrap()).await;
    let revoked = http
        .delete(format!(
            "{}/v1/api-keys/{}",
            a.base,
            issued["id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let after = http
        .get(format!("{}/v1/systems", a.base))
        .header(header::COOKIE, &second_pair)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    // The other key's session is untouched.
    let still = http
        .get(format!("{}/v1/systems", a.base))
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
}

#[tokio::test]
async fn the_operator_session_controls_queues_but_reads_no_tenant_data() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    let (pair, csrf) = session(&http, &a.base, ADMIN).await;
    let get = |path: &str| {
        http.get(format!("{}{path}", a.base))
            .header(header::COOKIE, &pair)
            .send()
    };
    assert_eq!(get("/v1/systems").await.unwrap().status(), 403);
    assert_eq!(get("/dashboard/health").await.unwrap().status(), 200);
    let pause = http
        .post(format!("{}/v1/queues/default/pause", a.base))
        .header(header::COOKIE, &pair)
        .header(header::ORIGIN, &a.base)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 204);
    let queues: Value = get("/v1/queues").await.unwrap().json().await.unwrap();
    let default = queues["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap();
    assert_eq!(default["paused"], true, "{queues}");
    // Without the token the same request is refused.
    let forged = http
        .post(format!("{}/v1/queues/default/resume", a.base))
        .header(header::COOKIE, &pair)
        .header(header::ORIGIN, &a.base)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
}

#[tokio::test]
async fn sessions_per_key_are_capped() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    let key = new_tenant(&http, &a.base, "dash-cap").await;
    for _ in 0..25 {
        assert_eq!(sign_in(&http, &a.base, &key).await.status(), 200);
    }
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut owner = db.owner_conn().await;
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM dashboard_sessions")
        .get_result(&mut owner)
        .await
        .unwrap();
    assert_eq!(n.n, 20);
}

#[tokio::test]
async fn the_page_is_locked_down_and_holds_no_data() {
    let db = TestDb::migrated().await;
    let a = instance(&db).await;
    let http = Client::new();
    for path in [
        "/dashboard",
        "/dashboard/assets/app.js",
        "/dashboard/assets/app.css",
    ] {
        let res = http.get(format!("{}{path}", a.base)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let page = http
        .get(format!("{}/dashboard", a.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // No inline script: every <script> has a src.
    assert!(!page.contains("<script>"), "inline script in the page");
    assert_eq!(
        http.get(format!("{}/dashboard/session", a.base))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(format!("{}/dashboard/health", a.base))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(format!("{}/dashboard/assets/nope.js", a.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// Installs playwright-core into `tests/browser/` if it is missing (the committed lock file pins
/// it); `.ci/run` does the same up front.
fn browser_deps() {
    let dir = repo_root().join("tests/browser");
    if dir.join("node_modules/playwright-core").exists() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm");
    assert!(status.success(), "npm ci in tests/browser failed");
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    browser_deps();
    let db = TestDb::migrated().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // Refuses the first message to this chat (as when a user blocked the bot), then delivers.
    let telegram = crate::fake_telegram::FakeTelegram::start().await;
    let chat = 31_337i64;
    let refusal = "Forbidden: bot was blocked by the user";
    telegram.reply_for(
        chat,
        vec![crate::fake_telegram::Reply::Status(403, refusal)],
    );
    let _all = KillOnDrop(
        vsm()
            .args(["all", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", db.url())
            .env("VSM_ADMIN_TOKEN", ADMIN)
            .env("VSM_JOBS__TEST_WORKERS", "true")
            .env("TELEGRAM_BOT_TOKEN", crate::fake_telegram::TOKEN)
            .env("VSM_TELEGRAM__API_BASE", telegram.base())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn vsm all"),
    );
    wait_ready(&base).await;
    let http = Client::new();
    let key_a = new_tenant(&http, &base, "browser-a").await;
    let key_b = new_tenant(&http, &base, "browser-b").await;
    let secret_b = "tenant-b-secret-4711";
    for (key, n, state) in [
        (&key_b, 1, json!({"note": secret_b})),
        (&key_a, 2, json!({"note": "tenant-a-state"})),
    ] {
        let res = http
            .put(format!("{base}/v1/systems/{n}/state"))
            .bearer_auth(key)
            .json(&json!({ "state": state }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // A job of tenant A that fails its only attempt (and succeeds when retried).
    let mut owner = db.owner_conn().await;
    {
        use diesel_async::RunQueryDsl;
        diesel::sql_query(
            "INSERT INTO jobs (worker, queue, args, max_attempts, tenant_id) \
             SELECT 'test_probe', 'default', '{\"fail_attempts\": 1}', 1, id \
             FROM tenants WHERE slug = 'browser-a'",
        )
        .execute(&mut owner)
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "the probe job is discarded",
        || {
            let (http, base, key) = (http.clone(), base.clone(), key_a.clone());
            async move {
                let v: Value = http
                    .get(format!("{base}/v1/jobs?state=discarded"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["items"].as_array().is_some_and(|a| !a.is_empty())
            }
        },
    )
    .await;

    // A notification of tenant A that the Bot API refuses for good.
    let tenant_a = {
        use diesel::prelude::*;
        use vsm::schemas::schema::tenants;
        diesel_async::RunQueryDsl::get_result::<uuid::Uuid>(
            tenants::table
                .filter(tenants::slug.eq("browser-a"))
                .select(tenants::id),
            &mut owner,
        )
        .await
        .unwrap()
    };
    let repo = db.repo().await;
    let mut tx = repo.tenant_tx(tenant_a).await.unwrap();
    let notification = vsm::workers::notification_sender::enqueue(
        &mut tx,
        tenant_a,
        vsm::workers::notification_sender::Message::Telegram {
            chat_id: chat,
            text: "dashboard check".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    eventually(Duration::from_secs(20), "the notification failed", || {
        let (http, base, key) = (http.clone(), base.clone(), key_a.clone());
        async move {
            let v: Value = http
                .get(format!("{base}/v1/notifications/{notification}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["state"] == "failed"
        }
    })
    .await;

    let shots = repo_root().join("target/dashboard-screenshots");
    // Only this run's pictures (a failed run leaves `failure.png`).
    let _ = std::fs::remove_dir_all(&shots);
    let out = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/browser/dashboard.mjs"))
        .env("VSM_URL", &base)
        .env("KEY_A", &key_a)
        .env("SECRET_B", secret_b)
        .env("ADMIN_TOKEN", ADMIN)
        .env("SHOTS", &shots)
        .env("NOTIFICATION_ID", notification.to_string())
        .env("NOTIFICATION_ERROR", refusal)
        .env("NOTIFICATION_CHAT", chat.to_string())
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stderr}\n{stdout}"
    );
    println!("dashboard measurements: {stdout}");
    // The Retry button sent it again: the Bot API got it twice, the second time delivered.
    let sends: Vec<_> = telegram
        .calls()
        .into_iter()
        .filter(|c| c.chat() == chat)
        .collect();
    assert_eq!(sends.len(), 2);
    assert!(!sends[0].ok && sends[1].ok);
    assert_eq!(sends[1].text(), "dashboard check");
    for view in [
        "01-sign-in",
        "02-systems",
        "03-jobs-failed",
        "06-notifications-failed",
        "06-notifications-retried",
        "08-health",
        "11-operator-queues",
    ] {
        assert!(shots.join(format!("{view}.png")).exists(), "{view}");
    }
}
