//! Pooled connections start with `database.statement_timeout_secs` and
//! `database.idle_in_transaction_timeout_secs`: a statement that runs too long fails as
//! "unavailable" (retried by the engine, 503 at the API) instead of holding its connection
//! and caller, and a transaction left idle cannot hold its locks past the limit.

use crate::common::{TestDb, eventually};

use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use vsm::repo::{DbError, Repo};

async fn repo_with(db: &TestDb, statement_secs: u64, idle_secs: u64) -> Repo {
    let mut config = db.config();
    config.statement_timeout_secs = statement_secs;
    config.idle_in_transaction_timeout_secs = idle_secs;
    Repo::connect(&config).await.expect("connect")
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

#[tokio::test]
async fn a_statement_over_the_timeout_fails_as_unavailable_and_the_pool_goes_on() {
    let db = TestDb::migrated().await;
    let repo = repo_with(&db, 1, 0).await;
    let mut tx = repo.system_tx().await.unwrap();
    // Bounded only so that a missing timeout fails the test instead of hanging it.
    let slept = tokio::time::timeout(
        Duration::from_secs(120),
        diesel::sql_query("SELECT pg_sleep(600)").execute(&mut *tx),
    )
    .await
    .expect("the statement timeout cancels the sleep");
    let err = DbError::from(slept.expect_err("cancelled"));
    assert!(
        matches!(&err, DbError::Unavailable(m) if m.contains("statement timeout")),
        "{err:?}"
    );
    drop(tx);
    // The connection's session has the setting, and the pool still serves statements.
    let mut tx = repo.system_tx().await.unwrap();
    let set: Setting = diesel::sql_query("SELECT current_setting('statement_timeout') AS value")
        .get_result(&mut *tx)
        .await
        .unwrap();
    assert_eq!(set.value, "1s");
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_transaction_left_idle_past_the_timeout_loses_its_session() {
    let db = TestDb::migrated().await;
    let repo = repo_with(&db, 0, 1).await;
    let mut tx = repo.system_tx().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(&mut *tx)
        .await
        .unwrap();
    let owner = std::sync::Arc::new(tokio::sync::Mutex::new(db.owner_conn().await));
    eventually(
        Duration::from_secs(60),
        "PostgreSQL ends the idle transaction's session",
        || {
            let owner = owner.clone();
            async move {
                #[derive(diesel::QueryableByName)]
                struct N {
                    #[diesel(sql_type = BigInt)]
                    n: i64,
                }
                let n: N =
                    diesel::sql_query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1")
                        .bind::<diesel::sql_types::Integer, _>(pid.pid)
                        .get_result(&mut *owner.lock().await)
                        .await
                        .unwrap();
                n.n == 0
            }
        },
    )
    .await;
    // Whatever it held is released; its holder learns on its next statement.
    assert!(
        diesel::sql_query("SELECT 1")
            .execute(&mut *tx)
            .await
            .is_err()
    );
}
