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

/// The Rust enums and the CHECK constraints they map to spell the same values, so every stored
/// value reads back and every written one is accepted.
#[tokio::test]
async fn job_state_and_episode_status_enums_match_their_check_constraints() {
    use vsm::jobs::JobState;
    use vsm::schemas::vsm::episode::EpisodeStatus;

    let db = TestDb::migrated().await;
    let mut owner = db.owner_conn().await;
    let mut jobs: Vec<String> = JobState::ALL.iter().map(|s| s.to_string()).collect();
    jobs.sort();
    assert_eq!(check_values(&mut owner, "jobs_state_valid").await, jobs);
    let mut episodes: Vec<String> = EpisodeStatus::ALL.iter().map(|s| s.to_string()).collect();
    episodes.sort();
    assert_eq!(
        check_values(&mut owner, "episodes_status_valid").await,
        episodes
    );
    // Parsing is exact: the spelling, not a case variant.
    assert_eq!("retryable".parse::<JobState>(), Ok(JobState::Retryable));
    assert!("Retryable".parse::<JobState>().is_err());
    assert_eq!(
        serde_json::to_value(EpisodeStatus::Analyzing).unwrap(),
        json!("analyzing")
    );
    assert_eq!(
        EpisodeStatus::names(),
        "pending, analyzing, complete or error"
    );
}

/// The values a `CHECK (col IN (...))` constraint allows, sorted.
async fn check_values(owner: &mut diesel_async::AsyncPgConnection, name: &str) -> Vec<String> {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Def {
        #[diesel(sql_type = Text)]
        def: String,
    }
    let def: Def = diesel::sql_query(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conname = $1",
    )
    .bind::<Text, _>(name)
    .get_result(owner)
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    // CHECK ((state = ANY (ARRAY['available'::text, ...]))): the quoted literals.
    let mut values: Vec<String> = def
        .def
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    values.sort();
    values
}

/// Every CHECK constraint either maps to the field a caller set (a 422 naming it) or is an
/// invariant only our own code can break (a 500, since it is a bug). A new constraint has to
/// be put on one side: one left unmapped turned a tenant's bad input into a 500 before.
#[tokio::test]
async fn every_check_constraint_is_a_field_rule_or_an_invariant_of_our_code() {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;
    const INVARIANTS: &[&str] = &[
        "dashboard_sessions_one_kind",
        "dashboard_sessions_token_hash_length",
        "event_retention_single_row",
        "events_topic_format",
        "health_checks_status_valid",
        "jobs_args_object",
        "jobs_attempt_range",
        "jobs_max_attempts_positive",
        "jobs_priority_range",
        "jobs_queue_length",
        "jobs_state_valid",
        "jobs_worker_length",
        "notification_attempts_attempt_positive",
        "notification_attempts_latency_nonnegative",
        "notification_attempts_result_valid",
        "notifications_attempts_nonnegative",
        "notifications_channel_valid",
        "notifications_message_object",
        "notifications_progress_object",
        "notifications_state_valid",
        "webhook_endpoints_disabled",
        "webhook_endpoints_previous_secret",
        "webhook_endpoints_secret_format",
    ];
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        conname: String,
    }
    let db = TestDb::migrated().await;
    let mut owner = db.owner_conn().await;
    let names: Vec<Name> = diesel::sql_query(
        "SELECT conname::text AS conname FROM pg_constraint \
         WHERE contype = 'c' AND connamespace = 'public'::regnamespace ORDER BY 1",
    )
    .load(&mut owner)
    .await
    .unwrap();
    let names: Vec<&str> = names.iter().map(|n| n.conname.as_str()).collect();
    for name in &names {
        let mapped = vsm::repo::field_rule(name).is_some();
        let invariant = INVARIANTS.contains(name);
        assert!(
            mapped != invariant,
            "{name}: map it in repo::CHECKS or list it here as an invariant (mapped {mapped}, listed {invariant})"
        );
    }
    for name in INVARIANTS {
        assert!(names.contains(name), "{name} is no longer a constraint");
    }
}
