//! Test support: each test gets its own PostgreSQL database, cloned from a template migrated once
//! per migration set, so tests run in parallel without seeing each other's rows.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use sha2::{Digest, Sha256};
use vsm::config::{DatabaseConfig, ServiceUrl};

/// The server tests run against: `TEST_DATABASE_URL` (without a database name) or the local one.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn url_for(db: &str) -> String {
    format!("{}/{db}", server_url().trim_end_matches('/'))
}

pub async fn connect(db: &str) -> AsyncPgConnection {
    vsm::repo::establish(&url_for(db), Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

pub fn db_config(db: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: ServiceUrl::parse(&url_for(db)).expect("valid url"),
        pool_size: 4,
        ..DatabaseConfig::default()
    }
}

/// A database owned by one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A fresh, fully migrated database.
    pub async fn migrated() -> TestDb {
        let template = ensure_template().await;
        let name = unique_name("vsm_test");
        let mut admin = connect("postgres").await;
        diesel::sql_query(format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .execute(&mut admin)
        .await
        .expect("create test database from template");
        TestDb { name }
    }

    /// A name for a database that does not exist yet (for `vsm migrate` to create).
    pub fn missing() -> TestDb {
        TestDb {
            name: unique_name("vsm_test"),
        }
    }

    pub fn url(&self) -> String {
        url_for(&self.name)
    }

    pub fn config(&self) -> DatabaseConfig {
        db_config(&self.name)
    }

    pub async fn repo(&self) -> vsm::repo::Repo {
        vsm::repo::Repo::connect(&self.config())
            .await
            .expect("connect repo")
    }

    /// A connection as the migrating (superuser) role, outside row-level security.
    pub async fn owner_conn(&self) -> AsyncPgConnection {
        connect(&self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; use a private runtime on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) =
                    vsm::repo::establish(&url_for("postgres"), Duration::from_secs(5)).await
                {
                    let _ = diesel::sql_query(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    ))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// The migrated template for the current migrations, created once (under an advisory lock, as
/// test processes run in parallel) and reused until the migrations change.
async fn ensure_template() -> String {
    let digest = migrations_digest();
    let name = format!("vsm_template_{}", &digest[..16]);
    let mut admin = connect("postgres").await;
    let key = i64::from_be_bytes(
        hex::decode(&digest[..16]).expect("hex")[..8]
            .try_into()
            .expect("8 bytes"),
    );
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(key)
        .execute(&mut admin)
        .await
        .expect("lock");
    #[derive(diesel::QueryableByName)]
    struct Ready {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ready: bool,
    }
    let ready: Vec<Ready> =
        diesel::sql_query("SELECT datistemplate AS ready FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(&name)
            .load(&mut admin)
            .await
            .expect("query template");
    match <[Ready]>::first(&ready) {
        Some(r) if r.ready => {}
        existing => {
            if existing.is_some() {
                // A run died half-way through building it.
                diesel::sql_query(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .expect("drop stale template");
            }
            vsm::migrate::run(&db_config(&name), vsm::migrate::Action::Up)
                .await
                .expect("migrate template");
            diesel::sql_query(format!("ALTER DATABASE \"{name}\" IS_TEMPLATE true"))
                .execute(&mut admin)
                .await
                .expect("mark template");
        }
    }
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(key)
        .execute(&mut admin)
        .await
        .expect("unlock");
    name
}

fn migrations_digest() -> String {
    let mut files = Vec::new();
    collect(&repo_root().join("migrations"), &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for f in files {
        hasher.update(f.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&f).expect("read migration"));
    }
    hex::encode(hasher.finalize())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `vsm` binary, run from the repository root with a clean configuration environment.
pub fn vsm() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsm"));
    cmd.current_dir(repo_root());
    for (key, _) in std::env::vars() {
        if key.starts_with("VSM_")
            || [
                "DATABASE_URL",
                "REDIS_URL",
                "RABBITMQ_URL",
                "TELEGRAM_BOT_TOKEN",
                "TELEGRAM_WEBHOOK_SECRET",
            ]
            .contains(&key.as_str())
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("VSM_LOG", "warn").stdin(Stdio::null());
    cmd
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
