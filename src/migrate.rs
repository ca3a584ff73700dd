//! `vsm migrate` (CONTRACT §3): creates the database when it is missing and applies the
//! migrations embedded in the binary, under a PostgreSQL advisory lock so that any number of
//! `vsm migrate` (or `vsm all`) started at once apply each migration exactly once.
//!
//! Migrations run on a connection of the configured login role (not `vsm_app`): they own the
//! schema. diesel_migrations drives them through diesel-async's connection wrapper, so no libpq
//! is needed.

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::{DatabaseConfig, ServiceUrl};
use crate::repo::ConnectError;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key held while migrating ("vsm_migr" as a big-endian i64).
const MIGRATION_LOCK: i64 = 0x7673_6d5f_6d69_6772;

/// What `vsm migrate` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Apply every pending migration.
    Up,
    /// Report applied and pending migrations, change nothing.
    Status,
    /// Revert the last `n` applied migrations.
    Down(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to PostgreSQL at {host_port} (database {database}): {cause}")]
    Unreachable {
        host_port: String,
        database: String,
        cause: String,
    },
    #[error("cannot create database {database} at {host_port}: {cause}")]
    CreateDatabase {
        host_port: String,
        database: String,
        cause: String,
    },
    #[error("migration failed: {0}")]
    Migration(String),
}

/// One migration and whether it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: String,
    pub applied: bool,
}

/// What a run did: the migrations it applied or reverted, or (for `Status`) every migration.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub applied: Vec<String>,
    pub reverted: Vec<String>,
    pub status: Vec<MigrationStatus>,
}

/// Runs `action` against the database of `cfg`, creating the database first when missing
/// (except for `Status`, which changes nothing).
pub async fn run(cfg: &DatabaseConfig, action: Action) -> Result<Report, MigrateError> {
    let conn = match connect(&cfg.url, cfg).await {
        Ok(conn) => conn,
        Err(e) if action != Action::Status && e.missing_database => {
            create_database(cfg).await?;
            connect(&cfg.url, cfg)
                .await
                .map_err(|e| unreachable(&cfg.url, e))?
        }
        Err(e) => return Err(unreachable(&cfg.url, e)),
    };
    let mut conn = conn;
    lock(&mut conn, true).await?;
    // Sync diesel_migrations runs on a blocking thread; the lock stays held on this connection.
    let (conn, result) = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        let result = apply(&mut harness, action);
        (harness.into_inner(), result)
    })
    .await
    .map_err(|e| MigrateError::Migration(format!("migration task failed: {e}")))?;
    let mut conn = conn;
    lock(&mut conn, false).await?;
    result
}

fn apply(
    harness: &mut AsyncMigrationHarness<AsyncPgConnection>,
    action: Action,
) -> Result<Report, MigrateError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| MigrateError::Migration(e.to_string());
    let mut report = Report::default();
    match action {
        Action::Up => {
            for version in harness.run_pending_migrations(MIGRATIONS).map_err(err)? {
                report.applied.push(name_of(&version.to_string())?);
            }
        }
        Action::Down(n) => {
            for _ in 0..n {
                if harness.applied_migrations().map_err(err)?.is_empty() {
                    break;
                }
                let version = harness.revert_last_migration(MIGRATIONS).map_err(err)?;
                report.reverted.push(name_of(&version.to_string())?);
            }
        }
        Action::Status => {
            let applied: Vec<String> = harness
                .applied_migrations()
                .map_err(err)?
                .into_iter()
                .map(|v| v.to_string())
                .collect();
            let all = MigrationSource::<Pg>::migrations(&MIGRATIONS).map_err(err)?;
            for m in all {
                let version = m.name().version().to_string();
                report.status.push(MigrationStatus {
                    applied: applied.contains(&version),
                    version: m.name().to_string(),
                });
            }
        }
    }
    Ok(report)
}

/// Full names (`2026-11-28-000001_foundation`) of the migrations in the binary, oldest first.
pub fn embedded() -> Result<Vec<String>, MigrateError> {
    let all = MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|e| MigrateError::Migration(e.to_string()))?;
    Ok(all.iter().map(|m| m.name().to_string()).collect())
}

/// The full name of the embedded migration with `version` (`20261128000001`).
fn name_of(version: &str) -> Result<String, MigrateError> {
    let all = MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|e| MigrateError::Migration(e.to_string()))?;
    Ok(all
        .iter()
        .find(|m| m.name().version().to_string() == version)
        .map(|m| m.name().to_string())
        .unwrap_or_else(|| version.to_owned()))
}

async fn lock(conn: &mut AsyncPgConnection, acquire: bool) -> Result<(), MigrateError> {
    let sql = if acquire {
        "SELECT pg_advisory_lock($1)"
    } else {
        "SELECT pg_advisory_unlock($1)"
    };
    diesel::sql_query(sql)
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(conn)
        .await
        .map_err(|e| MigrateError::Migration(format!("advisory lock: {e}")))?;
    Ok(())
}

async fn connect(
    url: &ServiceUrl,
    cfg: &DatabaseConfig,
) -> Result<AsyncPgConnection, ConnectError> {
    crate::repo::establish(url.expose(), cfg.connect_timeout()).await
}

fn unreachable(url: &ServiceUrl, e: ConnectError) -> MigrateError {
    MigrateError::Unreachable {
        host_port: url.host_port(),
        database: url.path_name().to_owned(),
        cause: e.message,
    }
}

/// Creates the configured database through the `postgres` maintenance database. Losing the race
/// against another `vsm migrate` creating it at the same moment is success.
async fn create_database(cfg: &DatabaseConfig) -> Result<(), MigrateError> {
    let name = cfg.url.path_name().to_owned();
    let fail = |cause: String| MigrateError::CreateDatabase {
        host_port: cfg.url.host_port(),
        database: name.clone(),
        cause: one_line(&cause),
    };
    let maintenance = cfg.url.with_path("/postgres");
    let mut conn = connect(&maintenance, cfg)
        .await
        .map_err(|e| fail(e.message))?;
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match diesel::sql_query(sql).execute(&mut conn).await {
        Ok(_) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        Err(diesel::result::Error::DatabaseError(kind, info))
            if matches!(kind, diesel::result::DatabaseErrorKind::UniqueViolation)
                || info.message().contains("already exists") =>
        {
            Ok(())
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
