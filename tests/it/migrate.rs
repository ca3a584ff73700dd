//! `vsm migrate` (CONTRACT §3), run as the real binary against real PostgreSQL.

use crate::common;

use std::process::Output;

use common::{TestDb, vsm};
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

fn migrate(db: &TestDb, args: &[&str]) -> Output {
    vsm()
        .arg("migrate")
        .args(args)
        .env("DATABASE_URL", db.url())
        .output()
        .expect("run vsm migrate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let mut conn = db.owner_conn().await;
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .expect(sql)
        .n
}

const TABLES_SQL: &str = "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public' \
     AND table_name IN ('tenants','api_keys','system_states','episodes','policies','artifacts','task_log')";

#[tokio::test]
async fn creates_the_database_applies_reports_reverts_and_reapplies() {
    let db = TestDb::missing();

    let first = migrate(&db, &[]);
    assert_ok(&first);
    assert!(
        stdout(&first).contains("applied  2026-11-28-000001_foundation"),
        "{}",
        stdout(&first)
    );
    assert_eq!(count(&db, TABLES_SQL).await, 7);

    let status = migrate(&db, &["--status"]);
    assert_ok(&status);
    assert!(stdout(&status).contains("applied  2026-11-28-000001_foundation"));
    assert!(!stdout(&status).contains("pending"));

    let again = migrate(&db, &[]);
    assert_ok(&again);
    assert_eq!(stdout(&again).trim(), "database is up to date");

    let all = vsm::migrate::embedded().unwrap().len();
    let down = migrate(&db, &["--down", &all.to_string()]);
    assert_ok(&down);
    assert!(stdout(&down).contains("reverted 2026-11-28-000001_foundation"));
    assert_eq!(count(&db, TABLES_SQL).await, 0);
    let status = migrate(&db, &["--status"]);
    assert!(stdout(&status).contains("pending  2026-11-28-000001_foundation"));

    // Down past the first migration is a no-op, not an error.
    assert_ok(&migrate(&db, &["--down", "1"]));

    assert_ok(&migrate(&db, &[]));
    assert_eq!(count(&db, TABLES_SQL).await, 7);
}

#[tokio::test]
async fn two_migrations_at_the_same_moment_both_succeed_with_one_schema() {
    let db = TestDb::missing();
    let spawn = || {
        vsm()
            .arg("migrate")
            .env("DATABASE_URL", db.url())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_ok(&a);
    assert_ok(&b);
    // Exactly one of them applied the migrations.
    let applied = [&a, &b]
        .iter()
        .filter(|o| stdout(o).contains("applied"))
        .count();
    assert_eq!(applied, 1, "a: {}\nb: {}", stdout(&a), stdout(&b));
    assert_eq!(count(&db, TABLES_SQL).await, 7);
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM __diesel_schema_migrations").await,
        vsm::migrate::embedded().unwrap().len() as i64
    );
}

#[test]
fn an_unreachable_database_exits_1_with_one_line_naming_host_and_port() {
    let out = vsm()
        .arg("migrate")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/vsm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("127.0.0.1:1"), "{err}");
    assert!(lines[0].to_lowercase().contains("refused"), "{err}");
}

#[test]
fn status_of_a_missing_database_does_not_create_it() {
    let db = TestDb::missing();
    let out = migrate(&db, &["--status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
