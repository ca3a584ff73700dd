//! The deployment files against the binary (CONTRACT §10): `vsm config check`, compose's
//! environment accepted by it, Prometheus's file accepted by promtool, and every Grafana
//! panel's query naming a metric a running `serve` or `work` exports.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KillOnDrop, ServeChild, TestDb, eventually, free_port, repo_root, vsm};

fn config_check(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = vsm();
    cmd.args(args).args(["config", "check"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run vsm config check")
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_redacted() {
    let out = config_check(
        &[
            ("VSM_ADMIN_TOKEN", "admin-sekrit-1"),
            (
                "DATABASE_URL",
                "postgres://vsm:pg-sekrit-2@db.internal:5432/vsm",
            ),
            ("TELEGRAM_BOT_TOKEN", "123:tg-sekrit-3"),
            (
                "VSM_SERVER__TRUSTED_PROXIES",
                r#"["10.0.0.0/8", "127.0.0.1"]"#,
            ),
            ("VSM_JOBS__POLL_INTERVAL_MS", "250"),
        ],
        &[],
    );
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    for secret in ["admin-sekrit-1", "pg-sekrit-2", "tg-sekrit-3"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} logged:\n{stderr}");
    }
    // TOML in the layout of config/default.toml, every layer applied.
    let printed: toml::Value = toml::from_str(&stdout).expect("config check prints TOML");
    assert_eq!(
        printed["server"]["admin_token"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(
        printed["telegram"]["bot_token"].as_str(),
        Some("[redacted]")
    );
    let url = printed["database"]["url"].as_str().unwrap();
    assert!(url.starts_with("postgres://vsm:") && url.ends_with("@db.internal:5432/vsm"));
    assert_eq!(
        printed["server"]["trusted_proxies"],
        toml::Value::try_from(["10.0.0.0/8", "127.0.0.1/32"]).unwrap()
    );
    assert_eq!(printed["jobs"]["poll_interval_ms"].as_integer(), Some(250));
    // From config/default.toml.
    assert_eq!(
        printed["jobs"]["cron"][0]["worker"].as_str(),
        Some("health_check")
    );
}

/// Environment, extra arguments, and the key the error must name.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);

#[test]
fn config_check_exits_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cron = dir.path().join("cron.toml");
    std::fs::write(
        &cron,
        "[[jobs.cron]]\nname = \"x\"\nexpression = \"* * * * * *\"\nworker = \"nope\"\n",
    )
    .unwrap();
    let cron_arg = format!("--config={}", cron.display());
    let cases: [Case; 5] = [
        (
            &[("VSM_JOBS__POLL_INTERVAL_MS", "often")],
            &[],
            "jobs.poll_interval_ms",
        ),
        (&[("VSM_LISTN", "0.0.0.0:1")], &[], "VSM_LISTN"),
        (&[("VSM_LOG", "info,[")], &[], "log.filter"),
        (
            &[("VSM_SERVER__TRUSTED_PROXIES", r#"["not-an-ip"]"#)],
            &[],
            "server.trusted_proxies",
        ),
        (&[], &[&cron_arg], "jobs.cron[0].worker"),
    ];
    for (env, args, key) in cases {
        let out = config_check(env, args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(out.stdout.is_empty(), "{key}: printed a configuration");
        assert_eq!(stderr.lines().count(), 1, "{key}: {stderr}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}

/// `docker-compose config` of the base file with `overlay`, as JSON (PyYAML comes with the
/// Debian docker-compose package that `.ci/run` installs).
fn compose_config(overlay: Option<&str>) -> serde_json::Value {
    let compose = repo_root().join("compose");
    let mut cmd = Command::new("docker-compose");
    cmd.current_dir(&compose)
        .args(["--env-file", ".env.example", "-f", "docker-compose.yml"]);
    if let Some(overlay) = overlay {
        cmd.args(["-f", overlay]);
    }
    let out = cmd
        .args(["config"])
        .output()
        .expect("docker-compose on PATH (.ci/run installs it)");
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let json = py.wait_with_output().unwrap();
    assert!(json.status.success(), "YAML to JSON failed");
    serde_json::from_slice(&json.stdout).unwrap()
}

#[test]
fn every_compose_service_environment_is_accepted_by_config_check() {
    for overlay in [
        None,
        Some("docker-compose.dev.yml"),
        Some("docker-compose.prod.yml"),
    ] {
        let config = compose_config(overlay);
        let mut checked = BTreeSet::new();
        for (name, service) in config["services"].as_object().unwrap() {
            // The services that run the vsm image; their command is a vsm role.
            if service.get("build").is_none() {
                continue;
            }
            let role = service["command"][0].as_str().unwrap().to_owned();
            assert!(
                ["serve", "work", "migrate", "all"].contains(&role.as_str()),
                "{name}: command {role:?} is no vsm role"
            );
            // What the image's entrypoint hands to vsm: empty values are dropped.
            let env: Vec<(String, String)> = service["environment"]
                .as_object()
                .map(|e| {
                    e.iter()
                        .map(|(k, v)| {
                            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                            (k.clone(), v)
                        })
                        .filter(|(_, v)| !v.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let out = config_check(&env, &[]);
            assert!(
                out.status.success(),
                "compose{} service {name} ({role}): {}",
                overlay.map(|o| format!(" + {o}")).unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked.insert(name.clone());
        }
        assert_eq!(
            checked,
            ["app", "migrate", "worker"].map(String::from).into(),
            "{overlay:?}"
        );
    }
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let file = repo_root().join("compose/prometheus/prometheus.yml");
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .expect("promtool on PATH (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PromQL words that are not metric names: aggregation operators, binary operators and
/// modifiers. (Function names are recognised by the `(` after them.)
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label
/// matchers `{…}` and ranges `[…]` that are neither functions, keywords nor the label lists of
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening delimiter to its closing one, stepping over quoted strings.
    let skip_to = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (1, 0.95, 1e-9) or a duration (5m).
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || (matches!(chars[i], '-' | '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_to(next + 1, ')');
                }
            } else if chars.get(next) == Some(&'(') || PROMQL_WORDS.contains(&word.as_str()) {
                // A function call or a keyword.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let expr = r#"histogram_quantile(0.95, sum by (le, path) (rate(cybernetic_request_duration_seconds_bucket{path=~"/v1/{id}", x="a}b"}[5m]))) / on (instance) group_left (version) cybernetic_build_info offset 5m > bool 1e-9"#;
    assert_eq!(
        metric_names(expr),
        [
            "cybernetic_build_info",
            "cybernetic_request_duration_seconds_bucket"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        metric_names("count(up) without (job) + time() - process_start_time_seconds"),
        ["process_start_time_seconds", "up"]
            .map(String::from)
            .into()
    );
}

/// Metric families in a Prometheus text exposition: name → type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Whether `name` (as a query writes it) is one of `exported`: a family itself, or the
/// `_bucket`/`_sum`/`_count` series of a histogram (`_sum`/`_count` of a summary).
fn is_exported(name: &str, exported: &BTreeMap<String, String>) -> bool {
    if exported.contains_key(name) {
        return true;
    }
    [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"]),
        ("_count", &["histogram", "summary"]),
    ]
    .iter()
    .any(|(suffix, kinds)| {
        name.strip_suffix(suffix)
            .and_then(|base| exported.get(base))
            .is_some_and(|kind| kinds.contains(&kind.as_str()))
    })
}

/// Every `expr` of every panel (and nested row panel) of one dashboard: (panel title, expr).
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    let mut panels: Vec<serde_json::Value> =
        dashboard["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((
                    panel["title"].as_str().unwrap_or("").to_owned(),
                    expr.to_owned(),
                ));
            }
        }
    }
    out
}

/// A `serve` and a `work` that did a little of everything (requests, an episode analysed, an
/// artifact stored and read back, an SSE stream), then every panel's metrics looked up in
/// their `/metrics`.
#[tokio::test]
async fn every_dashboard_query_names_a_metric_that_serve_or_work_exports() {
    let db = TestDb::migrated().await;
    let storage = tempfile::tempdir().unwrap();
    let root = storage.path().to_string_lossy().into_owned();
    let storage_env = [
        ("VSM_STORAGE__BACKEND", "local"),
        ("VSM_STORAGE__ROOT", root.as_str()),
    ];
    let serve = ServeChild::start(&db, &storage_env).await;
    let ops_port = free_port();
    let mut work = vsm();
    work.args(["work", "--metrics-listen", &format!("127.0.0.1:{ops_port}")])
        .env("DATABASE_URL", db.url())
        .envs(storage_env)
        .env("VSM_JOBS__POLL_INTERVAL_MS", "100")
        .stdout(Stdio::null());
    let _work = KillOnDrop(work.spawn().expect("spawn vsm work"));
    let ops = format!("http://127.0.0.1:{ops_port}");
    common::wait_ready(&ops).await;

    let repo = db.repo().await;
    let (_, key) = vsm::schemas::storage::tenant::create(&repo, "dashboards", None)
        .await
        .unwrap();
    let key = key.key;
    let http = reqwest::Client::new();
    let base = &serve.base;
    let mut sse = common::SseClient::connect(base, &key, "", None).await;
    let episode: serde_json::Value = http
        .post(format!("{base}/v1/episodes"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"title": "t", "content": "metrics for every panel"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(sse.next_event(Duration::from_secs(10)).await.is_some());
    let id = episode["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "episode analysed", || {
        let (http, key, url) = (
            http.clone(),
            key.clone(),
            format!("{base}/v1/episodes/{id}"),
        );
        async move {
            let e: serde_json::Value = http
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            e["status"] != "pending"
        }
    })
    .await;
    let res = http
        .put(format!("{base}/v1/artifacts/panel.txt"))
        .bearer_auth(&key)
        .body("bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = http
        .get(format!("{base}/v1/artifacts/panel.txt"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "bytes");

    // Queue depth gauges: every queue of the node has its series, at 0 while it is empty
    // (the sampler is a periodic duty: wait for a pass). Nothing uses `critical` here.
    eventually(Duration::from_secs(30), "queue depth sampled", || async {
        common::metrics_text(&ops)
            .await
            .contains("cybernetic_job_queue_depth{queue=\"critical\",state=\"retryable\"} 0")
    })
    .await;
    let mut exported = families(&common::metrics_text(base).await);
    exported.extend(families(&common::metrics_text(&ops).await));

    let dir = repo_root().join("compose/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "dashboards missing in {}", dir.display());
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut queries = 0;
    for file in &files {
        let dashboard = file.file_name().unwrap().to_string_lossy().into_owned();
        for (panel, expr) in dashboard_queries(file) {
            queries += 1;
            let names = metric_names(&expr);
            assert!(
                !names.is_empty(),
                "{dashboard} / {panel}: no metric in {expr}"
            );
            for name in names {
                if !is_exported(&name, &exported) {
                    missing
                        .entry(name)
                        .or_default()
                        .push(format!("{dashboard} / {panel}"));
                }
            }
        }
    }
    assert!(queries >= 30, "only {queries} queries");
    assert!(
        missing.is_empty(),
        "metrics named by Grafana panels but exported by neither serve nor work:\n{}",
        missing
            .iter()
            .map(|(name, panels)| format!("  {name}  ({})", panels.join("; ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
