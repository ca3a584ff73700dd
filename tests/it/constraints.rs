//! Field rules of CONTRACT §3 come back as typed errors a caller maps to 422/409.

use crate::common;

use actix_web::ResponseError;
use chrono::{Duration, Utc};
use common::TestDb;
use serde_json::json;
use uuid::Uuid;
use vsm::edge::gateway::error::ApiError;
use vsm::repo::{DbError, Repo};
use vsm::schemas::storage::tenant;
use vsm::schemas::vsm::episode::{self, NewEpisode};
use vsm::schemas::vsm::policy::{self, NewPolicy};
use vsm::schemas::vsm::system_state;

fn assert_validation(result: Result<impl std::fmt::Debug, DbError>, expected_field: &str) {
    match result {
        Err(e @ DbError::Validation { field, .. }) => {
            assert_eq!(field, expected_field);
            let api = ApiError::from(e);
            assert_eq!(api.status_code().as_u16(), 422);
            assert!(api.to_string().starts_with(expected_field), "{api}");
        }
        other => panic!("expected a validation error on {expected_field}, got {other:?}"),
    }
}

fn policy(tenant: Uuid, name: &str) -> NewPolicy {
    NewPolicy {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        name: name.into(),
        description: None,
        rules: json!({}),
        active: true,
        priority: 0,
        effective_from: None,
        effective_until: None,
    }
}

async fn setup() -> (TestDb, Repo, Uuid) {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (t, _) = tenant::create(&repo, "acme", None).await.unwrap();
    (db, repo, t.id)
}

#[tokio::test]
async fn bad_and_taken_slugs() {
    let (_db, repo, _) = setup().await;
    for slug in [
        "Bad_Slug",
        "-leading",
        "trailing-",
        "a",
        "x".repeat(64).as_str(),
        "a b",
    ] {
        assert_validation(tenant::create(&repo, slug, Some("Name")).await, "slug");
    }
    // An empty slug also makes the defaulted name empty; either rule may report it.
    assert!(matches!(
        tenant::create(&repo, "", None).await,
        Err(DbError::Validation { .. })
    ));
    assert!(tenant::create(&repo, "ok-2", None).await.is_ok());
    assert!(tenant::create(&repo, &"y".repeat(63), None).await.is_ok());
    match tenant::create(&repo, "acme", None).await {
        Err(e @ DbError::Conflict { .. }) => {
            assert_eq!(ApiError::from(e).status_code().as_u16(), 409)
        }
        other => panic!("expected conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn system_must_be_one_to_five_and_versions_increase() {
    let (_db, repo, t) = setup().await;
    let mut tx = repo.tenant_tx(t).await.unwrap();
    for bad in [0, 6, -1] {
        assert_validation(
            system_state::append(&mut tx, t, bad, &json!({}), None).await,
            "system",
        );
        // A failed statement aborts the transaction; start a new one.
        drop(tx);
        tx = repo.tenant_tx(t).await.unwrap();
    }
    let s1 = system_state::append(&mut tx, t, 3, &json!({"a": 1}), None)
        .await
        .unwrap();
    let s2 = system_state::append(&mut tx, t, 3, &json!({"a": 2}), Some(1))
        .await
        .unwrap();
    assert_eq!((s1.version, s2.version), (1, 2));
    assert!(matches!(
        system_state::append(&mut tx, t, 3, &json!({}), Some(1)).await,
        Err(DbError::Conflict { .. })
    ));
    assert_eq!(
        system_state::latest(&mut tx, 3)
            .await
            .unwrap()
            .unwrap()
            .state,
        json!({"a": 2})
    );
}

#[tokio::test]
async fn episode_title_length() {
    let (_db, repo, t) = setup().await;
    for title in [String::new(), "t".repeat(501)] {
        let mut tx = repo.tenant_tx(t).await.unwrap();
        let new = NewEpisode {
            id: Uuid::now_v7(),
            tenant_id: t,
            title,
            content: String::new(),
            source: None,
            kind: None,
            tags: vec![],
        };
        assert_validation(episode::insert(&mut tx, &new).await, "title");
    }
    let mut tx = repo.tenant_tx(t).await.unwrap();
    let ok = NewEpisode {
        id: Uuid::now_v7(),
        tenant_id: t,
        title: "é".repeat(500),
        content: String::new(),
        source: None,
        kind: None,
        tags: vec![],
    };
    let e = episode::insert(&mut tx, &ok).await.unwrap();
    assert_eq!(e.status, episode::EpisodeStatus::Pending);
    assert_eq!(episode::find(&mut tx, e.id).await.unwrap().title, ok.title);
    assert!(matches!(
        episode::find(&mut tx, Uuid::now_v7()).await,
        Err(DbError::NotFound)
    ));
}

#[tokio::test]
async fn policy_window_priority_and_unique_name() {
    let (_db, repo, t) = setup().await;
    let now = Utc::now();
    let mut tx = repo.tenant_tx(t).await.unwrap();
    let backwards = NewPolicy {
        effective_from: Some(now),
        effective_until: Some(now - Duration::hours(1)),
        ..policy(t, "window")
    };
    assert_validation(policy::insert(&mut tx, &backwards).await, "effective_from");
    let mut tx = repo.tenant_tx(t).await.unwrap();
    let negative = NewPolicy {
        priority: -1,
        ..policy(t, "neg")
    };
    assert_validation(policy::insert(&mut tx, &negative).await, "priority");
    let mut tx = repo.tenant_tx(t).await.unwrap();
    let open_ended = NewPolicy {
        effective_from: Some(now),
        ..policy(t, "open")
    };
    policy::insert(&mut tx, &open_ended).await.unwrap();
    assert!(matches!(
        policy::insert(&mut tx, &policy(t, "open")).await,
        Err(DbError::Conflict { .. })
    ));
}
