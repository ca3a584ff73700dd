//! Row-level security holds for the application role (CONTRACT §3).

use crate::common;

use common::TestDb;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;
use vsm::repo::Repo;
use vsm::schemas::jobs::task_log::{self, NewTaskLogEntry};
use vsm::schemas::storage::artifact::{self, NewArtifact};
use vsm::schemas::storage::tenant;
use vsm::schemas::vsm::episode::{self, NewEpisode};
use vsm::schemas::vsm::policy::{self, NewPolicy};
use vsm::schemas::vsm::system_state;

const TENANT_TABLES: &[&str] = &[
    "api_keys",
    "system_states",
    "episodes",
    "policies",
    "artifacts",
    "task_log",
];

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = BigInt)]
    own: i64,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> Result<i64, diesel::result::Error> {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .await
        .map(|c| c.n)
}

/// One row in every tenant table for `tenant`; returns the episode id.
async fn populate(repo: &Repo, tenant: Uuid) -> Uuid {
    let mut tx = repo.tenant_tx(tenant).await.unwrap();
    system_state::append(&mut tx, tenant, 1, &json!({"load": 1}), None)
        .await
        .unwrap();
    let ep = episode::insert(
        &mut tx,
        &NewEpisode {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            title: "incident".into(),
            content: "text".into(),
            source: None,
            kind: None,
            tags: vec!["a".into()],
        },
    )
    .await
    .unwrap();
    policy::insert(
        &mut tx,
        &NewPolicy {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            name: "p".into(),
            description: None,
            rules: json!({}),
            active: true,
            priority: 1,
            effective_from: None,
            effective_until: None,
        },
    )
    .await
    .unwrap();
    artifact::insert(
        &mut tx,
        &NewArtifact {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            path: "reports/a.txt".into(),
            size: 3,
            sha256: "a".repeat(64),
            content_type: "text/plain".into(),
            storage_backend: "local".into(),
        },
    )
    .await
    .unwrap();
    task_log::insert(
        &mut tx,
        &NewTaskLogEntry {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            job_id: Uuid::now_v7(),
            worker: "episode_analyzer".into(),
            queue: "analysis".into(),
            attempt: 1,
            state: "completed".into(),
            duration_ms: 5,
            error: None,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    ep.id
}

struct World {
    db: TestDb,
    repo: Repo,
    a: Uuid,
    b: Uuid,
    b_episode: Uuid,
}

async fn world() -> World {
    let db = TestDb::migrated().await;
    let repo = db.repo().await;
    let (a, _) = tenant::create(&repo, "tenant-a", None).await.unwrap();
    let (b, _) = tenant::create(&repo, "tenant-b", None).await.unwrap();
    populate(&repo, a.id).await;
    let b_episode = populate(&repo, b.id).await;
    World {
        db,
        repo,
        a: a.id,
        b: b.id,
        b_episode,
    }
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_rows_without_any_where() {
    let w = world().await;
    let mut tx = w.repo.tenant_tx(w.a).await.unwrap();
    for table in TENANT_TABLES {
        let c: Counts = diesel::sql_query(format!(
            "SELECT count(*) AS total, count(*) FILTER (WHERE tenant_id = $1) AS own FROM {table}"
        ))
        .bind::<diesel::sql_types::Uuid, _>(w.a)
        .get_result(&mut *tx)
        .await
        .unwrap();
        assert!(c.total > 0, "{table}: tenant A sees none of its rows");
        assert_eq!(c.total, c.own, "{table}: tenant A sees other tenants' rows");
    }
    let ids: Vec<Uuid> = {
        use diesel::prelude::*;
        use vsm::schemas::schema::tenants;
        diesel_async::RunQueryDsl::load(tenants::table.select(tenants::id), &mut *tx)
            .await
            .unwrap()
    };
    assert_eq!(ids, vec![w.a]);
    // The whole database really holds both tenants' rows.
    let mut owner = w.db.owner_conn().await;
    assert_eq!(
        count(&mut owner, "SELECT count(*) AS n FROM episodes")
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn writing_another_tenants_rows_is_refused() {
    let w = world().await;
    // Insert a row that claims tenant B while acting for A.
    let mut tx = w.repo.tenant_tx(w.a).await.unwrap();
    let err = episode::insert(
        &mut tx,
        &NewEpisode {
            id: Uuid::now_v7(),
            tenant_id: w.b,
            title: "smuggled".into(),
            content: String::new(),
            source: None,
            kind: None,
            tags: vec![],
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("row-level security"),
        "unexpected error: {err}"
    );
    drop(tx);

    // B's rows are invisible to A's updates and deletes.
    let mut tx = w.repo.tenant_tx(w.a).await.unwrap();
    let updated = diesel::sql_query("UPDATE episodes SET title = 'hijacked' WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(w.b_episode)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(updated, 0);
    let deleted = diesel::sql_query("DELETE FROM episodes WHERE tenant_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(w.b)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    // Moving A's own row to B is refused by WITH CHECK.
    let moved = diesel::sql_query("UPDATE episodes SET tenant_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(w.b)
        .execute(&mut *tx)
        .await;
    assert!(moved.is_err(), "moving a row to another tenant succeeded");
    drop(tx);

    let mut owner = w.db.owner_conn().await;
    assert_eq!(
        count(
            &mut owner,
            "SELECT count(*) AS n FROM episodes WHERE title = 'hijacked' OR title = 'smuggled'"
        )
        .await
        .unwrap(),
        0
    );
}

/// A connection as the application role with no tenant context at all.
async fn app_role_conn(db: &TestDb) -> AsyncPgConnection {
    let mut conn = db.owner_conn().await;
    diesel::sql_query("SET ROLE vsm_app")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn without_tenant_context_nothing_is_visible() {
    let w = world().await;
    let mut conn = app_role_conn(&w.db).await;
    for table in TENANT_TABLES.iter().chain(&["tenants"]) {
        let n = count(&mut conn, &format!("SELECT count(*) AS n FROM {table}"))
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} visible without a tenant context");
    }
    // After a transaction-local context ends, the setting is '' rather than unset: still nothing.
    diesel::sql_query("BEGIN").execute(&mut conn).await.unwrap();
    diesel::sql_query("SELECT set_config('app.current_tenant', $1, true)")
        .bind::<Text, _>(w.a.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM episodes")
            .await
            .unwrap(),
        1
    );
    diesel::sql_query("COMMIT")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM episodes")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_malformed_tenant_value_is_an_error_never_a_widening() {
    let w = world().await;
    let mut conn = app_role_conn(&w.db).await;
    for bad in ["not-a-uuid", "' OR true --", "*"] {
        diesel::sql_query("BEGIN").execute(&mut conn).await.unwrap();
        diesel::sql_query("SELECT set_config('app.current_tenant', $1, true)")
            .bind::<Text, _>(bad)
            .execute(&mut conn)
            .await
            .unwrap();
        let result = count(&mut conn, "SELECT count(*) AS n FROM episodes").await;
        assert!(result.is_err(), "{bad:?} gave {result:?}");
        diesel::sql_query("ROLLBACK")
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn tenant_context_does_not_leak_to_the_next_user_of_a_pooled_connection() {
    let w = world().await;
    // Pool of one: the second transaction reuses the first one's connection.
    let cfg = vsm::config::DatabaseConfig {
        pool_size: 1,
        ..w.db.config()
    };
    let repo = Repo::connect(&cfg).await.unwrap();
    let tx = repo.tenant_tx(w.a).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = repo.tenant_tx(w.b).await.unwrap();
    let n = count(&mut tx, "SELECT count(*) AS n FROM episodes WHERE tenant_id <> current_setting('app.current_tenant')::uuid")
        .await
        .unwrap();
    assert_eq!(n, 0);
    let mine = count(&mut tx, "SELECT count(*) AS n FROM episodes")
        .await
        .unwrap();
    assert_eq!(mine, 1);
}

#[tokio::test]
async fn a_dropped_transaction_rolls_back() {
    let w = world().await;
    let cfg = vsm::config::DatabaseConfig {
        pool_size: 1,
        ..w.db.config()
    };
    let repo = Repo::connect(&cfg).await.unwrap();
    {
        let mut tx = repo.tenant_tx(w.a).await.unwrap();
        diesel::sql_query("DELETE FROM episodes")
            .execute(&mut *tx)
            .await
            .unwrap();
        // dropped without commit
    }
    let mut tx = repo.tenant_tx(w.a).await.unwrap();
    assert_eq!(
        count(&mut tx, "SELECT count(*) AS n FROM episodes")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn every_table_with_a_tenant_column_has_forced_rls_and_the_app_role_cannot_bypass() {
    let w = world().await;
    let mut owner = w.db.owner_conn().await;
    #[derive(diesel::QueryableByName, Debug)]
    struct Table {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Bool)]
        enabled: bool,
        #[diesel(sql_type = Bool)]
        forced: bool,
    }
    let tables: Vec<Table> = diesel::sql_query(
        "SELECT c.relname::text AS name, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r'
           AND (c.relname = 'tenants' OR EXISTS (
             SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))",
    )
    .load(&mut owner)
    .await
    .unwrap();
    // every tenant table plus `tenants` itself
    assert!(tables.len() > TENANT_TABLES.len(), "{tables:?}");
    for t in &tables {
        assert!(t.enabled && t.forced, "{} lacks forced RLS", t.name);
    }
    let bypass = count(
        &mut owner,
        "SELECT count(*) AS n FROM pg_roles WHERE rolname = 'vsm_app' AND (rolbypassrls OR rolsuper)",
    )
    .await
    .unwrap();
    assert_eq!(bypass, 0);
    // The pool really runs as vsm_app.
    let mut tx = w.repo.tenant_tx(w.a).await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Role {
        #[diesel(sql_type = Text)]
        role: String,
    }
    let role: Role = diesel::sql_query("SELECT current_user::text AS role")
        .get_result(&mut *tx)
        .await
        .unwrap();
    assert_eq!(role.role, "vsm_app");
}

#[tokio::test]
async fn api_keys_resolve_by_hash_and_stop_after_revocation() {
    let w = world().await;
    let (t, key) = tenant::create(&w.repo, "tenant-c", Some("C"))
        .await
        .unwrap();
    let hash = vsm::schemas::storage::api_key::hash(&key.key);
    assert_eq!(
        w.repo.resolve_api_key(&hash).await.unwrap(),
        Some((key.id, t.id))
    );
    assert_eq!(w.repo.resolve_api_key(&[0u8; 32]).await.unwrap(), None);
    // Only the hash is stored.
    let mut owner = w.db.owner_conn().await;
    let plain = count(
        &mut owner,
        &format!(
            "SELECT count(*) AS n FROM api_keys WHERE key_prefix = '{}' OR encode(key_hash, 'escape') LIKE '%{}%'",
            key.key, &key.key[4..]
        ),
    )
    .await
    .unwrap();
    assert_eq!(plain, 0);
    let mut tx = w.repo.tenant_tx(t.id).await.unwrap();
    vsm::schemas::storage::api_key::revoke(&mut tx, key.id)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(w.repo.resolve_api_key(&hash).await.unwrap(), None);
}

#[tokio::test]
async fn the_system_role_cannot_read_tenant_data() {
    let w = world().await;
    for table in TENANT_TABLES.iter().chain(&["tenants"]) {
        let mut tx = w.repo.system_tx().await.unwrap();
        match count(&mut tx, &format!("SELECT count(*) AS n FROM {table}")).await {
            Ok(n) => assert_eq!(n, 0, "system role sees {table}"),
            Err(e) => assert!(e.to_string().contains("permission denied"), "{table}: {e}"),
        }
    }
    let mut tx = w.repo.system_tx().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Role {
        #[diesel(sql_type = Text)]
        role: String,
    }
    let role: Role = diesel::sql_query("SELECT current_user::text AS role")
        .get_result(&mut *tx)
        .await
        .unwrap();
    assert_eq!(role.role, "vsm_system");
    tx.commit().await.unwrap();
    // The role is transaction-local: the pooled connection is back to vsm_app afterwards.
    let cfg = vsm::config::DatabaseConfig {
        pool_size: 1,
        ..w.db.config()
    };
    let repo = Repo::connect(&cfg).await.unwrap();
    repo.system_tx().await.unwrap().commit().await.unwrap();
    let mut tx = repo.tenant_tx(w.a).await.unwrap();
    let role: Role = diesel::sql_query("SELECT current_user::text AS role")
        .get_result(&mut *tx)
        .await
        .unwrap();
    assert_eq!(role.role, "vsm_app");
}

/// The door is a type: only `Repo::tenant_tx` makes a `TenantTx` (the `compile_fail` doctests
/// on `vsm::repo::TenantTx` show a `SystemTx` or a bare connection does not fit a schema
/// function), and the one it makes carries the tenant context that row-level security reads.
#[tokio::test]
async fn a_tenant_tx_carries_its_tenant_context_and_a_system_tx_none() {
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        tenant: Option<String>,
    }
    const SQL: &str = "SELECT nullif(current_setting('app.current_tenant', true), '') AS tenant";
    let w = world().await;
    let mut tx = w.repo.tenant_tx(w.a).await.unwrap();
    assert_eq!(tx.tenant_id(), w.a);
    let set: Setting = diesel::sql_query(SQL).get_result(&mut *tx).await.unwrap();
    assert_eq!(set.tenant, Some(w.a.to_string()));
    // A schema function on it sees exactly the tenant's episode.
    let listed = episode::list(&mut tx, None, None, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed.iter().all(|e| e.tenant_id == w.a));
    tx.commit().await.unwrap();

    let mut sys = w.repo.system_tx().await.unwrap();
    let set: Setting = diesel::sql_query(SQL).get_result(&mut *sys).await.unwrap();
    assert_eq!(set.tenant, None);
    sys.rollback().await.unwrap();
}

#[derive(diesel::QueryableByName)]
struct Backend {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    tenant: Option<String>,
}

/// Which backend a connection runs on, and its tenant context. `variant` changes the statement
/// text, so a connection that never saw it has to prepare it first.
async fn backend<C>(conn: &mut C, variant: usize) -> Result<Backend, vsm::repo::DbError>
where
    C: diesel_async::AsyncConnectionCore<Backend = diesel::pg::Pg>,
{
    Ok(diesel::sql_query(format!(
        "SELECT pg_backend_pid() AS pid, \
         nullif(current_setting('app.current_tenant', true), '') AS tenant, {variant} AS variant"
    ))
    .get_result(conn)
    .await?)
}

/// A repo of one pooled connection: every door below reuses the same backend.
async fn one_connection(w: &World) -> Repo {
    let cfg = vsm::config::DatabaseConfig {
        pool_size: 1,
        ..w.db.config()
    };
    Repo::connect(&cfg).await.unwrap()
}

/// The pooled connection as its next user gets it: outside any transaction and without a
/// tenant context. Returns its backend.
async fn next_user_sees_no_context(repo: &Repo, after: &str) -> i32 {
    let mut sys = repo.system_tx().await.unwrap();
    let next = backend(&mut *sys, 0).await.unwrap();
    assert_eq!(next.tenant, None, "after {after}");
    sys.commit().await.unwrap();
    next.pid
}

/// The tenant door pipelines BEGIN and set_config: a transaction that then fails and is rolled
/// back (explicitly or by drop) hands its pooled connection back without the tenant context.
#[tokio::test]
async fn a_pipelined_tenant_tx_rolled_back_on_error_leaves_no_tenant_context() {
    let w = world().await;
    let repo = one_connection(&w).await;
    for explicit in [true, false] {
        let mut tx = repo.tenant_tx(w.a).await.unwrap();
        let first = backend(&mut *tx, 0).await.unwrap();
        assert_eq!(first.tenant, Some(w.a.to_string()));
        let failed = diesel::sql_query("SELECT 1 / 0").execute(&mut *tx).await;
        assert!(failed.is_err());
        if explicit {
            tx.rollback().await.unwrap();
        } else {
            drop(tx);
        }
        let next = next_user_sees_no_context(&repo, "a rolled-back transaction").await;
        assert_eq!(next, first.pid, "the pooled connection was reused");
        let mut tx = repo.tenant_tx(w.b).await.unwrap();
        assert_eq!(
            backend(&mut *tx, 0).await.unwrap().tenant,
            Some(w.b.to_string())
        );
        let visible = count(&mut tx, "SELECT count(*) AS n FROM episodes WHERE tenant_id <> current_setting('app.current_tenant')::uuid")
            .await
            .unwrap();
        assert_eq!(visible, 0);
        tx.commit().await.unwrap();
    }
}

/// A caller cancelled while the door's pipeline is in flight (a client that went away) must
/// never leave a connection in the pool inside a transaction or with a tenant set: each
/// cancellation point is tried by giving the door a little more time on every round.
#[tokio::test]
async fn a_tenant_tx_cancelled_mid_pipeline_leaves_no_tenant_context() {
    let w = world().await;
    let repo = one_connection(&w).await;
    for micros in (0..2_000).step_by(25) {
        let opened = tokio::time::timeout(
            std::time::Duration::from_micros(micros),
            repo.tenant_tx(w.a),
        )
        .await;
        if let Ok(tx) = opened {
            tx.unwrap().commit().await.unwrap();
        }
        next_user_sees_no_context(&repo, &format!("a cancel at {micros} us")).await;
    }
}

/// `tenant_read` pipelines BEGIN, the context, the read's statement and COMMIT: the statement
/// must run after the context is set and before the COMMIT, also on fresh connections where
/// none of them is prepared yet (each round's statement text is new, and the first rounds each
/// start on a new connection).
#[tokio::test]
async fn a_tenant_read_sees_its_tenant_context_even_when_every_statement_is_new() {
    use vsm::repo::TenantConn;
    let w = world().await;
    let mut repo = one_connection(&w).await;
    for round in 0..20 {
        if round < 5 {
            repo = one_connection(&w).await;
        }
        let tenant = if round % 2 == 0 { w.a } else { w.b };
        let read = repo
            .tenant_read(tenant, async |r| backend(r.conn(), 1 + round).await)
            .await
            .unwrap();
        assert_eq!(read.tenant, Some(tenant.to_string()), "round {round}");
        let after = next_user_sees_no_context(&repo, &format!("read {round}")).await;
        assert_eq!(after, read.pid);
    }
    // Through the schema functions: each tenant reads only its own rows.
    for tenant in [w.a, w.b] {
        let states = repo
            .tenant_read(tenant, async |r| system_state::latest_all(r).await)
            .await
            .unwrap();
        assert!(!states.is_empty());
        assert!(states.iter().all(|s| s.tenant_id == tenant));
    }
}

/// The read's COMMIT goes out right behind its statement, so a second statement would run
/// after it, outside the transaction and without the tenant: the door refuses such a read
/// (an error, not what the second statement saw) and hands the connection on clean.
#[tokio::test]
async fn a_tenant_read_of_two_statements_is_refused_not_half_run() {
    use vsm::repo::TenantConn;
    let w = world().await;
    let repo = one_connection(&w).await;
    let second_saw = std::sync::Mutex::new(None);
    let refused = repo
        .tenant_read(w.a, async |r| {
            backend(r.conn(), 1).await?;
            let second = backend(r.conn(), 2).await?;
            *second_saw.lock().unwrap() = Some(second.tenant.clone());
            Ok(second)
        })
        .await;
    let error = refused.err().expect("a two-statement read is refused");
    assert!(error.to_string().contains("one statement"), "{error}");
    // Why: the second statement ran after the COMMIT, with no tenant.
    assert_eq!(*second_saw.lock().unwrap(), Some(None));
    next_user_sees_no_context(&repo, "a refused read").await;
}

/// A read that has not issued its statement by the time the door would pipeline its COMMIT
/// (it awaited something else first) is ended a round trip later instead, however many
/// statements it then runs: all of them inside the transaction, with the tenant.
#[tokio::test]
async fn a_tenant_read_that_starts_late_is_committed_after_it() {
    use vsm::repo::TenantConn;
    let w = world().await;
    let repo = one_connection(&w).await;
    let (first, second) = repo
        .tenant_read(w.b, async |r| {
            tokio::task::yield_now().await;
            let first = backend(r.conn(), 1).await?;
            Ok((first, backend(r.conn(), 2).await?))
        })
        .await
        .unwrap();
    assert_eq!(first.tenant, Some(w.b.to_string()));
    assert_eq!(second.tenant, Some(w.b.to_string()));
    next_user_sees_no_context(&repo, "a late read").await;
}

/// A read that fails is rolled back: its error comes back and the pooled connection carries
/// neither a transaction nor the tenant context to its next user.
#[tokio::test]
async fn a_failed_tenant_read_leaves_no_tenant_context() {
    use vsm::repo::TenantConn;
    let w = world().await;
    let repo = one_connection(&w).await;
    let failed = repo
        .tenant_read(w.a, async |r| {
            diesel::sql_query("SELECT 1 / 0")
                .execute(r.conn())
                .await
                .map_err(vsm::repo::DbError::from)
        })
        .await;
    assert!(failed.is_err());
    next_user_sees_no_context(&repo, "a failed read").await;
    // And the next read works, with its own tenant.
    let next = repo
        .tenant_read(w.b, async |r| backend(r.conn(), 1).await)
        .await
        .unwrap();
    assert_eq!(next.tenant, Some(w.b.to_string()));
}

/// A caller cancelled anywhere in a read's pipeline (a client that went away) never leaves a
/// connection in the pool inside a transaction or with a tenant set.
#[tokio::test]
async fn a_tenant_read_cancelled_mid_pipeline_leaves_no_tenant_context() {
    use vsm::repo::TenantConn;
    let w = world().await;
    let repo = one_connection(&w).await;
    for micros in (0..3_000).step_by(25) {
        let read = repo.tenant_read(w.a, async |r| backend(r.conn(), micros).await);
        if let Ok(read) =
            tokio::time::timeout(std::time::Duration::from_micros(micros as u64), read).await
        {
            assert_eq!(read.unwrap().tenant, Some(w.a.to_string()));
        }
        next_user_sees_no_context(&repo, &format!("a cancel at {micros} us")).await;
    }
}

/// The pool hands out connections without pinging them first: a connection whose backend the
/// server ended (a restart, `pg_terminate_backend`) is known closed and is not handed out again,
/// so once the server has ended it the next door opens on a new backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_not_handed_out_again() {
    let w = world().await;
    let repo = one_connection(&w).await;
    let mut admin = common::connect(&w.db.name).await;
    for round in 0..5 {
        let old = next_user_sees_no_context(&repo, "a read").await;
        let ended = count(
            &mut admin,
            &format!(
                "SELECT count(*) AS n FROM pg_terminate_backend({old}) AS t(ended) WHERE ended"
            ),
        )
        .await
        .unwrap();
        assert_eq!(ended, 1, "backend {old} terminated");
        let gone = || async {
            let mut conn = common::connect(&w.db.name).await;
            let sql = format!("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = {old}");
            count(&mut conn, &sql).await.unwrap() == 0
        };
        common::eventually(
            std::time::Duration::from_secs(10),
            "the backend ended",
            gone,
        )
        .await;
        // The closed connection's driver has seen the end of its socket once its task ran;
        // each door until then may fail, after which the closed one is never used again.
        common::eventually(
            std::time::Duration::from_secs(10),
            "a new backend",
            || async {
                repo.tenant_read(w.a, async |r| {
                    use vsm::repo::TenantConn;
                    backend(r.conn(), 7).await
                })
                .await
                .is_ok_and(|b| b.pid != old && b.tenant == Some(w.a.to_string()))
            },
        )
        .await;
        let new = next_user_sees_no_context(&repo, &format!("round {round}")).await;
        assert_ne!(new, old);
    }
}

/// `Prepare`: raw SQL marked `.prepared()` is prepared once per connection and reused (one
/// Bind/Execute per later call), while a bare `sql_query` is never kept; both answer alike,
/// inside either door.
#[tokio::test]
async fn raw_sql_marked_prepared_is_prepared_once_per_connection_and_reused() {
    use diesel::sql_types::Integer;
    use vsm::repo::Prepare;

    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = Integer)]
        n: i32,
    }
    #[derive(diesel::QueryableByName)]
    struct Statement {
        #[diesel(sql_type = Text)]
        statement: String,
    }
    const PREPARED: &str = "SELECT $1::int4 + 1 AS n";
    const RAW: &str = "SELECT $1::int4 + 2 AS n";
    /// `i + 1`, asked with the prepared statement.
    async fn plus_one(conn: &mut diesel_async::AsyncPgConnection, i: i32) -> i32 {
        let n: N = diesel::sql_query(PREPARED)
            .bind::<Integer, _>(i)
            .prepared()
            .get_result(conn)
            .await
            .unwrap();
        n.n
    }
    let w = world().await;
    let repo = one_connection(&w).await;
    for i in 0..3 {
        let mut tx = repo.system_tx().await.unwrap();
        assert_eq!(plus_one(&mut tx, i).await, i + 1);
        let n: N = diesel::sql_query(RAW)
            .bind::<Integer, _>(i)
            .get_result(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n.n, i + 2);
        tx.commit().await.unwrap();
        let mut tx = repo.tenant_tx(w.a).await.unwrap();
        assert_eq!(plus_one(&mut tx, i).await, i + 1);
        tx.commit().await.unwrap();
    }
    let mut tx = repo.system_tx().await.unwrap();
    let kept: Vec<Statement> = diesel::sql_query("SELECT statement FROM pg_prepared_statements")
        .load(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let times = |sql: &str| kept.iter().filter(|s| s.statement == sql).count();
    assert_eq!(times(PREPARED), 1, "prepared once on the one connection");
    assert_eq!(times(RAW), 0, "a bare sql_query is not kept");
}

/// A system transaction plans every statement for its actual values (the machinery's tables are
/// skewed; a prepared statement's generic plan once took a burn-down from 20,000 to 900 jobs/s),
/// while the tenant doors keep PostgreSQL's default; neither leaks to the next user.
#[tokio::test]
async fn system_transactions_plan_for_actual_values_and_tenant_doors_keep_the_default() {
    #[derive(diesel::QueryableByName)]
    struct Mode {
        #[diesel(sql_type = Text)]
        mode: String,
    }
    async fn mode<C>(conn: &mut C) -> String
    where
        C: diesel_async::AsyncConnectionCore<Backend = diesel::pg::Pg>,
    {
        let m: Mode = diesel::sql_query("SELECT current_setting('plan_cache_mode') AS mode")
            .get_result(conn)
            .await
            .unwrap();
        m.mode
    }
    let w = world().await;
    let repo = one_connection(&w).await;
    for _ in 0..2 {
        let mut sys = repo.system_tx().await.unwrap();
        assert_eq!(mode(&mut *sys).await, "force_custom_plan");
        sys.commit().await.unwrap();
        let mut tx = repo.tenant_tx(w.a).await.unwrap();
        assert_eq!(mode(&mut *tx).await, "auto");
        tx.commit().await.unwrap();
        let read = repo
            .tenant_read(w.a, async |tx| {
                Ok(mode(vsm::repo::TenantConn::conn(tx)).await)
            })
            .await
            .unwrap();
        assert_eq!(read, "auto");
    }
}
