//! Webhook endpoints over `/v1/webhooks` (CONTRACT §4): the secret shown once, rotation,
//! validation, the per-tenant cap and tenant isolation.

use base64::Engine;
use serde_json::{Value, json};

use crate::common::{Api, Instance, TestDb, instance_config};

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// A migrated database, an instance on it, and one tenant's key (the instance and the
/// database live as long as the caller keeps them).
async fn one_tenant() -> (TestDb, Instance, Api, String) {
    let db = TestDb::migrated().await;
    let (instance, api) = Api::start(instance_config(&db, None)).await;
    let key = api.tenant("hooks").await;
    (db, instance, api, key)
}

/// Creates an endpoint, asserting the 201, and answers its body.
async fn create(api: &Api, key: &str, body: Value) -> Value {
    let (s, created) = api.call("POST", "/v1/webhooks", key, Some(body)).await;
    assert_eq!(s, 201, "{created}");
    created
}

#[tokio::test]
async fn the_secret_is_shown_at_creation_and_rotation_only() {
    let (db, _instance, api, key) = one_tenant().await;

    let created = create(
        &api,
        &key,
        json!({"url": "https://hooks.example.com/in", "topics": ["episode.*"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .unwrap();
    assert!(raw.len() >= 24, "secret key is {} bytes", raw.len());
    assert_eq!(created["enabled"], true);
    assert_eq!(created["topics"], json!(["episode.*"]));

    // Neither a lookup nor a list shows a secret.
    let (s, shown) = api
        .call("GET", &format!("/v1/webhooks/{id}"), &key, None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(shown["url"], "https://hooks.example.com/in");
    let (s, list) = api.call("GET", "/v1/webhooks", &key, None).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    for body in [&shown, &list] {
        let text = body.to_string();
        assert!(
            !text.contains("whsec_") && !text.contains("secret"),
            "{text}"
        );
    }

    // A rotation answers a new secret and keeps the old one signing for the overlap.
    let (s, rotated) = api
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &key,
            None,
        )
        .await;
    assert_eq!(s, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_"));
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let repo = db.repo().await;
    let tenant = uuid::Uuid::parse_str(shown["tenant_id"].as_str().unwrap()).unwrap();
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    let keys = vsm::schemas::webhooks::endpoint::signing_keys(
        &mut tx,
        id.parse().unwrap(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(keys.current, new_secret);
    assert_eq!(keys.previous.as_deref(), Some(secret.as_str()));
    // Past the overlap only the current secret signs.
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    let keys = vsm::schemas::webhooks::endpoint::signing_keys(&mut tx, id.parse().unwrap(), later)
        .await
        .unwrap();
    assert_eq!(keys.previous, None);
    drop(tx);

    // PATCH changes only what it names; disabling records why, enabling clears it.
    let (s, patched) = api
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            &key,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["topics"], json!(["episode.*"]));
    assert!(patched["disabled_reason"].is_string());
    let (_, patched) = api
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            &key,
            Some(json!({"enabled": true, "topics": []})),
        )
        .await;
    assert_eq!(patched["enabled"], true);
    assert_eq!(patched["disabled_reason"], Value::Null);
    assert_eq!(patched["topics"], json!([]));

    let (s, _) = api
        .call("DELETE", &format!("/v1/webhooks/{id}"), &key, None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call("GET", &format!("/v1/webhooks/{id}"), &key, None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn bad_urls_and_topics_are_422_naming_the_field() {
    let (_db, _instance, api, key) = one_tenant().await;
    let long = format!("https://example.com/{}", "a".repeat(2100));
    for url in [
        "ftp://example.com/",
        "not a url",
        "http://user:pw@example.com/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://[::1]/",
        long.as_str(),
    ] {
        let (s, body) = api
            .call("POST", "/v1/webhooks", &key, Some(json!({"url": url})))
            .await;
        assert_eq!(s, 422, "{url}: {body}");
        assert!(error_message(&body).starts_with("url"), "{body}");
    }
    let (s, body) = api
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": "https://example.com/", "topics": ["episode.*", "Bad Topic"]})),
        )
        .await;
    assert_eq!(s, 422);
    assert!(error_message(&body).starts_with("topics[1]"), "{body}");
    let many: Vec<String> = (0..65).map(|i| format!("t.a{i}")).collect();
    let (s, body) = api
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": "https://example.com/", "topics": many})),
        )
        .await;
    assert_eq!(s, 422);
    assert!(error_message(&body).starts_with("topics"), "{body}");
    // Nothing was stored by any of them.
    let (_, list) = api.call("GET", "/v1/webhooks", &key, None).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn the_webhook_cap_is_409_and_other_tenants_ids_are_404() {
    let db = TestDb::migrated().await;
    let mut config = instance_config(&db, None);
    config.limits.max_webhooks_per_tenant = 2;
    let (_a, api) = Api::start(config).await;
    let owner = api.tenant("owner").await;
    let other = api.tenant("other").await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let body = create(
            &api,
            &owner,
            json!({"url": format!("https://example.com/{i}")}),
        )
        .await;
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (s, body) = api
        .call(
            "POST",
            "/v1/webhooks",
            &owner,
            Some(json!({"url": "https://example.com/3"})),
        )
        .await;
    assert_eq!(s, 409, "{body}");
    assert!(
        error_message(&body).contains("max_webhooks_per_tenant"),
        "{body}"
    );

    // Pages walk every endpoint once.
    let (_, page1) = api.call("GET", "/v1/webhooks?limit=1", &owner, None).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = api
        .call(
            "GET",
            &format!("/v1/webhooks?limit=1&cursor={cursor}"),
            &owner,
            None,
        )
        .await;
    assert_eq!(page1["items"][0]["id"], ids[0].as_str());
    assert_eq!(page2["items"][0]["id"], ids[1].as_str());
    assert_eq!(page2["next_cursor"], Value::Null);

    // Another tenant sees none of them and can touch none of them.
    let id = &ids[0];
    for (method, path, body) in [
        ("GET", format!("/v1/webhooks/{id}"), None),
        (
            "PATCH",
            format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": false})),
        ),
        ("POST", format!("/v1/webhooks/{id}/rotate-secret"), None),
        ("DELETE", format!("/v1/webhooks/{id}"), None),
    ] {
        let (s, _) = api.call(method, &path, &other, body).await;
        assert_eq!(s, 404, "{method} {path}");
    }
    let (_, list) = api.call("GET", "/v1/webhooks", &other, None).await;
    assert_eq!(list["items"], json!([]));
    let (_, still) = api
        .call("GET", &format!("/v1/webhooks/{id}"), &owner, None)
        .await;
    assert_eq!(still["enabled"], true);
}

/// An endpoint created disabled is stored as one the API disabled (it was a 500: the table
/// asks a disabled endpoint for when it was disabled), and enabling it later clears that. The
/// URL is stored normalised, so the tenant reads back where deliveries will go.
#[tokio::test]
async fn an_endpoint_can_be_created_disabled_and_its_url_is_stored_normalised() {
    let (_db, _instance, api, key) = one_tenant().await;
    let created = create(
        &api,
        &key,
        json!({"url": "HTTPS://Hooks.Example.COM\\in", "enabled": false}),
    )
    .await;
    assert_eq!(created["enabled"], false);
    assert_eq!(created["disabled_reason"], "disabled through the API");
    assert!(created["disabled_at"].is_string(), "{created}");
    assert_eq!(created["url"], "https://hooks.example.com/in");
    let id = created["id"].as_str().unwrap();

    let (s, enabled) = api
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            &key,
            Some(json!({"enabled": true, "url": "http://Other.Example.com:80/x"})),
        )
        .await;
    assert_eq!(s, 200, "{enabled}");
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["disabled_reason"], Value::Null);
    assert_eq!(enabled["disabled_at"], Value::Null);
    assert_eq!(enabled["url"], "http://other.example.com/x");
}
