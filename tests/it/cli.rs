//! The binary's contract (CONTRACT §1, §2, §5): exit codes, one-line errors, and `vsm all`
//! serving health and metrics until SIGTERM.

use crate::common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestDb, free_port, vsm};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_key_in_a_config_file_exits_2_naming_it() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[server]\nlisten = \"127.0.0.1:4000\"\nlisten_backlog = 5"
    )
    .unwrap();
    let out = vsm()
        .args(["--config"])
        .arg(file.path())
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("server.listen_backlog"), "{err}");
}

#[test]
fn unknown_or_invalid_environment_settings_exit_2_naming_them() {
    for (var, value, named) in [
        ("VSM_SERVER__LISTEN_BACKLOG", "5", "server.listen_backlog"),
        ("VSM_LISTN", "127.0.0.1:1", "VSM_LISTN"),
        ("VSM_LISTEN", "not-an-address", "server.listen"),
        ("VSM_LOG_FORMAT", "xml", "log.format"),
        ("DATABASE_URL", "::not a url", "database.url"),
        ("VSM_DATABASE__POOL_SIZE", "many", "database.pool_size"),
        (
            "VSM_SERVER__TRUSTED_PROXIES",
            "[\"proxy.local\"]",
            "server.trusted_proxies",
        ),
    ] {
        let out = vsm().arg("migrate").env(var, value).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{var}: {err}");
        assert!(err.contains(named), "{var}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn a_missing_config_file_and_bad_usage_exit_2() {
    let out = vsm()
        .args(["--config", "/nonexistent/vsm.toml", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("/nonexistent/vsm.toml"));
    let out = vsm().args(["migrate", "--down"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = vsm().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn tenant_create_prints_the_key_once_and_rejects_bad_slugs() {
    let db = TestDb::migrated().await;
    let out = vsm()
        .args(["tenant", "create", "acme-ops", "--name", "Acme Operations"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 3, "{v}");
    assert_eq!(v["slug"], "acme-ops");
    assert!(
        v["tenant_id"]
            .as_str()
            .unwrap()
            .parse::<uuid::Uuid>()
            .is_ok()
    );
    let key = v["api_key"].as_str().unwrap();
    let repo = db.repo().await;
    let hash = vsm::schemas::storage::api_key::hash(key);
    let (_, tenant) = repo.resolve_api_key(&hash).await.unwrap().unwrap();
    assert_eq!(tenant.to_string(), v["tenant_id"].as_str().unwrap());

    let bad = vsm()
        .args(["tenant", "create", "Not A Slug"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr_of(&bad).contains("slug"));
    let taken = vsm()
        .args(["tenant", "create", "acme-ops"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert_eq!(taken.status.code(), Some(1));
    assert!(stderr_of(&taken).contains("already exists"));
}

struct Running {
    child: Child,
    base: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_all(db: &TestDb) -> Running {
    start(db, "all", |cmd| {
        cmd.env("VSM_SERVER__SHUTDOWN_GRACE_SECS", "5");
    })
}

/// `vsm <role>` on a free port against `db`, its stderr inherited unless `adjust` says
/// otherwise.
fn start(db: &TestDb, role: &str, adjust: impl FnOnce(&mut Command)) -> Running {
    let port = free_port();
    let mut cmd = vsm();
    cmd.args([role, "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", db.url())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    adjust(&mut cmd);
    Running {
        child: cmd.spawn().unwrap(),
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_ready(run: &mut Running) -> reqwest::Response {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            panic!("vsm all exited early: {status}");
        }
        if let Ok(res) = client.get(format!("{}/ready", run.base)).send().await
            && res.status() == 200
        {
            return res;
        }
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn vsm_all_migrates_serves_health_and_metrics_and_stops_cleanly_on_sigterm() {
    let db = TestDb::missing();
    let mut run = start_all(&db);
    let ready: serde_json::Value = wait_ready(&mut run).await.json().await.unwrap();
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["checks"]["database"]["status"], "ok");
    assert!(ready["checks"]["database"]["latency_ms"].is_number());

    let client = reqwest::Client::new();
    let live = client
        .get(format!("{}/live", run.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let health = client
        .get(format!("{}/health", run.base))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["x-request-id"], "trace-42");
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_seconds"].is_u64());

    let missing = client
        .get(format!("{}/v1/nothing/{}", run.base, uuid::Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("x-request-id"));
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let metrics = client
        .get(format!("{}/metrics", run.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("metrics parse");
    let names: Vec<&str> = parsed.samples.iter().map(|s| s.metric.as_str()).collect();
    for expected in [
        "cybernetic_requests_total",
        "cybernetic_request_duration_seconds",
        "cybernetic_build_info",
        "cybernetic_db_pool_connections",
        "cybernetic_db_query_duration_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from /metrics"
        );
    }
    // Requests are labelled by route template, never by raw path.
    let paths: Vec<String> = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "cybernetic_requests_total")
        .filter_map(|s| s.labels.get("path").map(str::to_owned))
        .collect();
    assert!(paths.iter().any(|p| p == "/health"), "{paths:?}");
    assert!(
        paths.iter().all(|p| !p.contains("/v1/nothing")),
        "{paths:?}"
    );

    // The exposition passes Prometheus's own linter (CI installs promtool).
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // SIGTERM: exits 0 within the grace period (5 s here).
    drop(client);
    let pid = run.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn serve_fails_with_exit_1_naming_the_database_when_it_is_unreachable() {
    let out = vsm()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/vsm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn usage_errors_are_one_line_naming_the_argument_and_help_still_prints_usage() {
    for (args, named) in [
        (&["serve", "--bogus"][..], "--bogus"),
        (&["serve", "--listen"][..], "--listen"),
        (&["serve", "--listen", "nowhere"][..], "--listen"),
        (&["frobnicate"][..], "frobnicate"),
        (&[][..], "a command is required"),
    ] {
        let out = vsm().args(args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("vsm: error: "), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
    let help = vsm().args(["serve", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Usage:") && text.contains("--listen"),
        "{text}"
    );
    let version = vsm().arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// Runs `cmd` to completion, or kills it after `secs` (a role check that does not fire would
/// otherwise leave `vsm serve` running): `None` when it had to be killed.
fn output_within(mut cmd: std::process::Command, secs: u64) -> Option<std::process::Output> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

#[tokio::test]
async fn serve_work_and_all_refuse_a_role_that_row_level_security_does_not_apply_to() {
    use diesel_async::RunQueryDsl;
    let db = TestDb::migrated().await;
    let bypass = format!("vsm_test_bypass_{}", uuid::Uuid::now_v7().simple());
    let mut owner = db.owner_conn().await;
    diesel::sql_query(format!("CREATE ROLE \"{bypass}\" NOLOGIN BYPASSRLS"))
        .execute(&mut owner)
        .await
        .unwrap();
    // `app_role = ""` keeps the login role: postgres, a superuser.
    let cases = [
        ("", "superuser"),
        ("postgres", "superuser"),
        (&bypass[..], "BYPASSRLS"),
    ];
    for (role, why) in cases {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[database]\napp_role = {role:?}").unwrap();
        for args in [
            &["serve", "--listen", "127.0.0.1:0"][..],
            &["work", "--metrics-listen", "127.0.0.1:0"][..],
            &["all", "--listen", "127.0.0.1:0"][..],
        ] {
            let mut cmd = vsm();
            cmd.arg("--config")
                .arg(file.path())
                .args(args)
                .env("DATABASE_URL", db.url());
            let out = output_within(cmd, 20)
                .unwrap_or_else(|| panic!("{args:?} with app_role {role:?} kept running"));
            let err = stderr_of(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?} {role:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains("database.app_role") && err.contains(why),
                "{err}"
            );
        }
    }
    diesel::sql_query(format!("DROP ROLE \"{bypass}\""))
        .execute(&mut owner)
        .await
        .unwrap();
}

/// Every request writes one structured access-log line: its request id, method, route
/// template (never the raw path), status, latency and, once authenticated, the tenant.
#[tokio::test]
async fn every_request_writes_one_access_log_line_naming_its_tenant() {
    let db = TestDb::migrated().await;
    let created = vsm()
        .args(["tenant", "create", "log-check"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", stderr_of(&created));
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut run = start(&db, "serve", |cmd| {
        cmd.env("VSM_LOG", "info")
            .env("VSM_LOG_FORMAT", "json")
            .stderr(log.reopen().unwrap());
    });
    wait_ready(&mut run).await;
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{}/v1/systems/3", run.base))
        .bearer_auth(created["api_key"].as_str().unwrap())
        .header("x-request-id", "log-check-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let line = || {
        std::fs::read_to_string(log.path())
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "request" && l["request_id"] == "log-check-1")
    };
    common::eventually(Duration::from_secs(10), "the access-log line", || async {
        line().is_some()
    })
    .await;
    let line = line().unwrap();
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/v1/systems/{n}");
    assert_eq!(line["status"], 200);
    assert!(line["latency_ms"].is_number(), "{line}");
    assert_eq!(line["tenant_id"], created["tenant_id"], "{line}");
}
