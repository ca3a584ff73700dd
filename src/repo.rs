//! The database: one deadpool pool of diesel-async connections, and the one narrow door to
//! tenant data (plan §3.1 `repo.ex`).
//!
//! Every pooled connection runs as the application role (`SET ROLE vsm_app` when it is opened),
//! which has no `BYPASSRLS`, so row-level security decides what it sees. Tenant data is reached
//! only through [`Repo::tenant_tx`]: it opens a transaction, sets `app.current_tenant` with a
//! bound parameter (transaction-local, so it can never leak to the next user of the pooled
//! connection) and hands out the connection for the length of that transaction.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Bytea, Text};
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, RunQueryDsl, TransactionManager,
};
use futures_util::FutureExt;
use uuid::Uuid;

use crate::config::{DatabaseConfig, ServiceUrl};

/// The connection a transaction dereferences to.
pub type Conn = AsyncPgConnection;

/// Runs a raw SQL statement (`diesel::sql_query`) as a prepared statement:
/// `sql_query("…").bind(…).prepared().load(conn)`.
///
/// Diesel caches only typed queries: a bare `sql_query` is parsed and planned anew on every
/// call, and waits a round trip for its Parse before it can be sent, so it cannot be pipelined
/// behind another statement. A prepared one is prepared once per connection (keyed by its
/// text and bind types), and each later call is a single Bind/Execute.
///
/// Only for SQL whose text is a constant (a literal, `concat!`): every distinct text stays in
/// the connection's statement cache, so SQL built with `format!` must never be prepared.
///
/// After five runs PostgreSQL may keep a generic plan for a prepared statement, made without
/// the values. In a [`Repo::system_tx`] every statement is planned for its actual values anyway
/// (the machinery's data is the skewed kind: planned generically, the job engine's
/// acknowledgement drove its join from every executing job of the node instead of the
/// acknowledged ids, and a 100,000-job burn-down fell from 20,000 to 900 jobs/s). Elsewhere,
/// prepare only statements that one plan suits whatever their parameters.
pub trait Prepare: Sized {
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

/// Raw SQL only: typed queries are cached by diesel already (and know when they must not be).
impl<Q> Prepare for Q where Q: diesel::query_builder::Query<SqlType = diesel::sql_types::Untyped> {}

/// See [`Prepare`].
pub struct Prepared<Q>(Q);

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>>
    diesel::query_builder::QueryFragment<diesel::pg::Pg> for Prepared<Q>
{
    fn walk_ast<'b>(
        &'b self,
        pass: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    /// `sql_query` answers "no" because its text might be built at run time; [`Prepare`]'s
    /// rule is that it is not.
    fn is_safe_to_cache_prepared(&self, _: &diesel::pg::Pg) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> diesel::query_builder::QueryId for Prepared<Q> {
    // No type-level id: the statement cache keys it by its text.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

/// The setting row-level security reads the tenant from.
const TENANT_SETTING: &str = "app.current_tenant";

diesel::define_sql_function! {
    /// PostgreSQL's `set_config(setting, value, is_local)`.
    fn set_config(setting: Text, value: Text, is_local: diesel::sql_types::Bool) -> Text;
}

/// `SELECT set_config('app.current_tenant', $tenant, true)`: the tenant is a bound parameter
/// and the setting transaction-local (CONTRACT §3). A typed query, not `sql_query` (which
/// diesel never caches): it is prepared once per connection, so opening a door sends it at
/// once instead of waiting a round trip for the Parse first.
fn set_tenant(tenant: &str) -> diesel::dsl::select<set_config<&'static str, &str, bool>> {
    diesel::select(set_config(TENANT_SETTING, tenant, true))
}

/// `BEGIN` and the tenant context, pipelined on `conn`: both are written at the first poll
/// (BEGIN first) and both run to the end before either result is looked at, so one round trip
/// opens the door and nothing of it is left in flight. Both doors open this way.
async fn open_tenant_context(conn: &AsyncPgConnection, tenant: &str) -> Result<(), DbError> {
    let (mut begin_on, mut context_on) = (conn, conn);
    let (began, context) = futures_util::join!(
        diesel_async::SimpleAsyncConnection::batch_execute(&mut begin_on, "BEGIN"),
        set_tenant(tenant).execute(&mut context_on)
    );
    began?;
    context?;
    Ok(())
}

/// What can go wrong talking to the database, typed so callers can map it (the HTTP layer maps
/// `Validation` to 422, `Conflict` to 409, `NotFound` to 404, `Unavailable` to 503).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A row the caller asked for does not exist (or belongs to another tenant).
    #[error("not found")]
    NotFound,
    /// A field rule (CHECK constraint or NOT NULL) was broken.
    #[error("invalid {field}: {message}")]
    Validation {
        field: &'static str,
        message: &'static str,
    },
    /// A uniqueness rule was broken (`what` says which).
    #[error("conflict: {what}")]
    Conflict { what: String },
    /// The database could not be reached in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else the database said; details are logged, not shown to API clients.
    #[error("database error: {0}")]
    Other(DieselError),
}

/// Field rules by constraint name: the migration names every CHECK so a violation maps to the
/// field it guards.
const CHECKS: &[(&str, &str, &str)] = &[
    (
        "tenants_slug_format",
        "slug",
        "must match ^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$",
    ),
    ("tenants_name_length", "name", "must be 1 to 200 characters"),
    (
        "tenants_settings_object",
        "settings",
        "must be a JSON object",
    ),
    (
        "api_keys_name_length",
        "name",
        "must be 1 to 200 characters",
    ),
    (
        "api_keys_key_hash_length",
        "key_hash",
        "must be a sha256 digest",
    ),
    ("system_states_system_range", "system", "must be 1 to 5"),
    (
        "system_states_version_positive",
        "version",
        "must be at least 1",
    ),
    (
        "system_states_state_object",
        "state",
        "must be a JSON object",
    ),
    (
        "episodes_title_length",
        "title",
        "must be 1 to 500 characters",
    ),
    (
        "episodes_status_valid",
        "status",
        "must be pending, analyzing, complete or error",
    ),
    (
        "policies_name_length",
        "name",
        "must be 1 to 200 characters",
    ),
    (
        "policies_priority_nonnegative",
        "priority",
        "must be 0 or more",
    ),
    (
        "policies_effective_window",
        "effective_from",
        "must not be after effective_until",
    ),
    ("artifacts_path_length", "path", "must be 1 to 1024 bytes"),
    ("artifacts_size_nonnegative", "size", "must be 0 or more"),
    (
        "artifacts_sha256_hex",
        "sha256",
        "must be 64 lowercase hex digits",
    ),
    (
        "artifacts_storage_backend_valid",
        "storage_backend",
        "must be local, s3 or memory",
    ),
    ("task_log_attempt_positive", "attempt", "must be at least 1"),
    (
        "telegram_chats_label_length",
        "label",
        "must be 1 to 200 characters",
    ),
    (
        "task_log_duration_nonnegative",
        "duration_ms",
        "must be 0 or more",
    ),
    (
        "task_log_state_valid",
        "state",
        "is not a final attempt state",
    ),
    (
        "webhook_endpoints_url_length",
        "url",
        "must be 1 to 2048 bytes",
    ),
    (
        "webhook_endpoints_url_scheme",
        "url",
        "must be an http or https URL",
    ),
    (
        "webhook_endpoints_topics_count",
        "topics",
        "at most 64 filters",
    ),
];

/// The field and message of the CHECK constraint `name`, if it guards a field a caller sets;
/// `None` for the rest, which are invariants of our own code (breaking one is a bug, a 500).
pub fn field_rule(name: &str) -> Option<(&'static str, &'static str)> {
    CHECKS
        .iter()
        .find(|(constraint, _, _)| *constraint == name)
        .map(|(_, field, message)| (*field, *message))
}

/// Unique indexes by name, and what a clash on them means to a user.
const UNIQUES: &[(&str, &str)] = &[
    ("tenants_slug_key", "a tenant with this slug already exists"),
    ("api_keys_key_hash_key", "this API key already exists"),
    (
        "system_states_tenant_system_version_key",
        "the system state changed concurrently (version already taken)",
    ),
    (
        "policies_tenant_name_key",
        "a policy with this name already exists",
    ),
    (
        "artifacts_tenant_path_key",
        "an artifact with this path already exists",
    ),
    ("telegram_chats_pkey", TELEGRAM_CHAT_TAKEN),
];

/// What linking a chat that another tenant already linked says: the same whether the clash is
/// found by the check before the insert or by the primary key in a race, and it names nobody.
pub const TELEGRAM_CHAT_TAKEN: &str = "this chat is linked to another tenant";

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::NotFound => DbError::NotFound,
            DieselError::DatabaseError(kind, info) => {
                let constraint = info.constraint_name().unwrap_or_default();
                match kind {
                    DatabaseErrorKind::CheckViolation => match field_rule(constraint) {
                        Some((field, message)) => DbError::Validation { field, message },
                        None => DbError::Other(DieselError::DatabaseError(kind, info)),
                    },
                    DatabaseErrorKind::NotNullViolation => DbError::Validation {
                        field: column_name(info.column_name()),
                        message: "is required",
                    },
                    DatabaseErrorKind::UniqueViolation => {
                        let what = UNIQUES
                            .iter()
                            .find(|(name, _)| *name == constraint)
                            .map(|(_, what)| (*what).to_owned())
                            .unwrap_or_else(|| format!("unique constraint {constraint}"));
                        DbError::Conflict { what }
                    }
                    DatabaseErrorKind::ClosedConnection => {
                        DbError::Unavailable(info.message().to_owned())
                    }
                    // `database.statement_timeout_secs` cut the statement off: the database did
                    // not answer in time, which the caller may retry (SQLSTATE 57014).
                    _ if info.message() == "canceling statement due to statement timeout" => {
                        DbError::Unavailable(info.message().to_owned())
                    }
                    // PostgreSQL text cannot hold NUL (SQLSTATE 22021 for text, 22P05 for the
                    // \u0000 escape in jsonb): the input is at fault, whichever field it was.
                    _ if info
                        .message()
                        .starts_with("invalid byte sequence for encoding")
                        || info
                            .message()
                            .contains("unsupported Unicode escape sequence") =>
                    {
                        DbError::Validation {
                            field: "body",
                            message: "text must not contain the NUL character",
                        }
                    }
                    _ => DbError::Other(DieselError::DatabaseError(kind, info)),
                }
            }
            other => DbError::Other(other),
        }
    }
}

fn column_name(column: Option<&str>) -> &'static str {
    // Leak-free mapping to a static name: only columns that exist in our schema are named.
    const COLUMNS: &[&str] = &[
        "slug",
        "name",
        "title",
        "content",
        "rules",
        "state",
        "system",
        "path",
        "size",
        "sha256",
        "content_type",
        "storage_backend",
        "tenant_id",
    ];
    column
        .and_then(|c| COLUMNS.iter().find(|k| **k == c).copied())
        .unwrap_or("field")
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

/// The process's database handle: cheap to clone.
#[derive(Clone)]
pub struct Repo {
    pool: Pool<AsyncPgConnection>,
    url: ServiceUrl,
    system_role: String,
}

impl Repo {
    /// Builds the pool and proves the database answers, so start-up fails with one clear line
    /// instead of the first request.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Repo, DbError> {
        let repo = Self::connect_lazy(cfg)?;
        let started = Instant::now();
        let _probe = repo.pool.get().await.map_err(|e| {
            DbError::Unavailable(format!(
                "cannot connect to PostgreSQL at {} after {:.1}s: {}",
                cfg.url.host_port(),
                started.elapsed().as_secs_f64(),
                pool_error_cause(&e)
            ))
        })?;
        Ok(repo)
    }

    /// Builds the pool without opening a connection.
    pub fn connect_lazy(cfg: &DatabaseConfig) -> Result<Repo, DbError> {
        let session = session_sql(cfg);
        let timeout = cfg.connect_timeout();
        // A connection's driver task runs on the runtime that opened it. Requests run on
        // actix's per-worker runtimes, which end one by one during a graceful shutdown; a pooled
        // connection opened there would die with its worker while another worker's request is
        // still using it. So connections are opened on the runtime that built the pool (the
        // process's main one), which outlives every request.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
        // A checkout does not ask the server (`SELECT 1`, a round trip on every transaction):
        // a connection the server closed (restart, terminated backend) is already known to be
        // closed by its driver and is dropped at checkout all the same; one broken otherwise
        // fails its statement, is then seen as broken and is not pooled again.
        manager_config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
        manager_config.custom_setup = Box::new(move |url| {
            let opening = establish_as(url.to_owned(), session.clone(), timeout);
            match &runtime {
                Some(runtime) => {
                    let task = runtime.spawn(opening);
                    async move {
                        task.await.map_err(|e| {
                            diesel::ConnectionError::BadConnection(format!(
                                "opening a connection failed: {e}"
                            ))
                        })?
                    }
                    .boxed()
                }
                None => opening.boxed(),
            }
        });
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            cfg.url.expose(),
            manager_config,
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size())
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        Ok(Repo {
            pool,
            url: cfg.url.clone(),
            system_role: cfg.system_role.clone(),
        })
    }

    /// The narrow door: opens a transaction whose tenant context is `tenant`. Row-level security
    /// limits every statement on it to that tenant's rows. [`TenantTx::commit`] commits;
    /// dropping it without committing (an early `?`, a cancelled request) rolls back.
    ///
    /// `BEGIN` and `set_config('app.current_tenant', $1, true)` go out pipelined on the one
    /// connection, so opening the door costs one round trip, not two; the tenant is still a
    /// bound parameter and transaction-local (CONTRACT §3).
    pub async fn tenant_tx(&self, tenant: Uuid) -> Result<TenantTx, DbError> {
        let conn = self.pool.get().await?;
        // Until the transaction is known to be open (or rolled back), a cancelled caller must
        // not hand this connection back to the pool: it may be inside a transaction with the
        // tenant set. The guard detaches it from the pool instead, which closes it.
        let mut pending = Unsettled(Some(conn));
        let opened = open_tenant_context(pending.conn(), &tenant.to_string()).await;
        let conn = pending.conn_mut();
        match opened {
            Ok(()) => {
                // The transaction manager did not see the BEGIN: record it, so commit,
                // rollback and the pool's broken-connection check know the depth.
                <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(conn)
                    .transaction_state()?
                    .change_transaction_depth(diesel::connection::TransactionDepthChange::IncreaseDepth)?;
                Ok(TenantTx {
                    tx: Tx {
                        conn: pending.settle(),
                    },
                    tenant,
                })
            }
            Err(e) => {
                // End whatever BEGIN opened before the connection goes back; if even that
                // fails, the guard closes the connection.
                diesel_async::SimpleAsyncConnection::batch_execute(conn, "ROLLBACK").await?;
                pending.settle();
                Err(e)
            }
        }
    }

    /// A read of one tenant's rows in one round trip: `BEGIN`, the tenant context, the read's
    /// one statement and `COMMIT` go out pipelined, and only then is any answer looked at. A
    /// read that needs several statements opens a [`TenantTx`] instead.
    ///
    /// The pipeline is written in the order its parts are polled: diesel-async hands each
    /// prepared statement out under the connection's statement-cache lock, which is FIFO, and
    /// sends it before letting go, so a statement polled later is never written earlier, even
    /// when either has to be prepared first (tested on fresh connections). `COMMIT` is polled
    /// right after the read's first poll, and is sent then only if the read has issued its
    /// statement by that point; otherwise the door ends the transaction after the read, a
    /// round trip later. A failed statement aborts the transaction and the pipelined `COMMIT`
    /// rolls it back. A statement issued after the pipelined `COMMIT` would run outside the
    /// transaction, with no tenant context (so it sees no rows): the door then refuses the
    /// whole read with an error rather than return what it saw. A cancelled read closes the
    /// connection instead of returning it to the pool mid-transaction.
    pub async fn tenant_read<T>(
        &self,
        tenant: Uuid,
        read: impl AsyncFnOnce(&mut TenantRead<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let conn = self.pool.get().await?;
        let mut pending = Unsettled(Some(conn));
        let tenant_text = tenant.to_string();
        let issued = AtomicU32::new(0);
        let (opened, read, committed) = {
            let shared: &AsyncPgConnection = pending.conn();
            let mut reader = TenantRead {
                conn: shared,
                issued: &issued,
            };
            let mut end_on = shared;
            // Polled in this order, so written in this order; all run to the end before any
            // result is looked at, so nothing is in flight below.
            futures_util::join!(
                open_tenant_context(shared, &tenant_text),
                read(&mut reader),
                async {
                    if AtomicU32::load(&issued, Ordering::Relaxed) != 1 {
                        return None;
                    }
                    Some(
                        diesel::sql_query("COMMIT")
                            .prepared()
                            .execute(&mut end_on)
                            .await,
                    )
                }
            )
        };
        let outcome = opened.and(read);
        match committed {
            Some(committed) => {
                // If even COMMIT failed, the guard closes the connection rather than pool it.
                committed?;
                pending.settle();
                let statements = AtomicU32::load(&issued, Ordering::Relaxed);
                if statements > 1 {
                    return Err(DbError::Other(DieselError::QueryBuilderError(
                        format!(
                            "a tenant read runs one statement, this one ran {statements}: \
                             the later ones ran after its COMMIT (use tenant_tx)"
                        )
                        .into(),
                    )));
                }
                outcome
            }
            None => {
                // COMMIT and ROLLBACK both end the transaction (a failed one rolls back either
                // way); if even that fails, the guard closes the connection.
                let end = if outcome.is_ok() {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                diesel_async::SimpleAsyncConnection::batch_execute(pending.conn_mut(), end).await?;
                pending.settle();
                outcome
            }
        }
    }

    /// A transaction for cross-tenant machinery (event relay, job engine): it runs as the system
    /// role, which sees the infrastructure tables granted to it and no tenant data table.
    ///
    /// Its statements are always planned for their actual values (`plan_cache_mode =
    /// force_custom_plan`): the machinery's tables swing between empty and hundreds of
    /// thousands of rows in one state, where a generic plan (which a prepared statement may
    /// settle on after five runs) can pick the wrong index. Prepared statements still save
    /// their Parse round trip and parse analysis here; only the plan is made anew.
    pub async fn system_tx(&self) -> Result<SystemTx, DbError> {
        let mut conn = self.pool.get().await?;
        // One simple-query message, one round trip: the role is configuration, not tenant
        // input, and identifiers cannot be bound parameters anyway; it is quoted as
        // PostgreSQL's quote_ident would.
        let sql = format!(
            "BEGIN; SET LOCAL ROLE {}; SET LOCAL plan_cache_mode = force_custom_plan",
            quote_ident(&self.system_role)
        );
        AnsiTransactionManager::begin_transaction_sql(&mut *conn, &sql).await?;
        Ok(SystemTx {
            tx: Tx { conn: Some(conn) },
        })
    }

    /// A connection of its own, outside the pool, acting as the system role for its whole
    /// session, with the given session settings (`application_name`, timeouts). For machinery
    /// whose liveness must not depend on the pool having a free connection: the job heartbeat.
    pub async fn dedicated_system_conn(
        &self,
        settings: &[(&str, String)],
    ) -> Result<SystemConn, DbError> {
        let mut conn = establish(self.url.expose(), Duration::from_secs(5))
            .await
            .map_err(|e| DbError::Unavailable(e.message))?;
        conn.set_instrumentation(crate::metrics::QueryTimer::default());
        let sql = format!("SET ROLE {}", quote_ident(&self.system_role));
        diesel::sql_query(sql).execute(&mut conn).await?;
        for (name, value) in settings {
            diesel::sql_query("SELECT set_config($1, $2, false)")
                .bind::<diesel::sql_types::Text, _>(*name)
                .bind::<diesel::sql_types::Text, _>(value)
                .prepared()
                .execute(&mut conn)
                .await?;
        }
        Ok(SystemConn { conn })
    }

    /// Resolves an API key's sha256 to `(api_key_id, tenant_id)`; `None` if unknown or revoked.
    /// Runs through a SECURITY DEFINER function because no tenant is known yet.
    pub async fn resolve_api_key(&self, key_hash: &[u8]) -> Result<Option<(Uuid, Uuid)>, DbError> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            api_key_id: Uuid,
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            tenant_id: Uuid,
        }
        let mut conn = self.pool.get().await?;
        let row: Option<Row> =
            diesel::sql_query("SELECT api_key_id, tenant_id FROM vsm_resolve_api_key($1)")
                .bind::<Bytea, _>(key_hash)
                .prepared()
                .get_result(&mut conn)
                .await
                .map(Some)
                .or_else(|e| match e {
                    DieselError::NotFound => Ok(None),
                    e => Err(e),
                })?;
        Ok(row.map(|r| (r.api_key_id, r.tenant_id)))
    }

    /// Opens a dashboard session under the sha256 of its cookie token: for the API key
    /// `api_key_id` (false if it is revoked or unknown) or, with `admin_token_hash`, for the
    /// operator. At most `keep` sessions per key (and for the operator) are kept, the newest.
    pub async fn open_dashboard_session(
        &self,
        session: &NewDashboardSession<'_>,
    ) -> Result<bool, DbError> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            opened: bool,
        }
        let mut conn = self.pool.get().await?;
        let row: Row = diesel::sql_query(
            "SELECT vsm_open_dashboard_session($1, $2, $3, $4, $5, $6) AS opened",
        )
        .bind::<Bytea, _>(session.token_hash)
        .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(session.api_key_id)
        .bind::<diesel::sql_types::Nullable<Bytea>, _>(session.admin_token_hash)
        .bind::<Text, _>(session.csrf_token)
        .bind::<diesel::sql_types::Integer, _>(session.ttl_secs)
        .bind::<diesel::sql_types::Integer, _>(session.keep)
        .prepared()
        .get_result(&mut conn)
        .await?;
        Ok(row.opened)
    }

    /// The live dashboard session whose cookie token hashes to `token_hash`: not expired, and
    /// a tenant's session only while its API key is not revoked.
    pub async fn resolve_dashboard_session(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<DashboardSessionRow>, DbError> {
        let mut conn = self.pool.get().await?;
        diesel::sql_query(
            "SELECT api_key_id, tenant_id, admin_token_hash, csrf_token, expires_at \
             FROM vsm_resolve_dashboard_session($1)",
        )
        .bind::<Bytea, _>(token_hash)
        .prepared()
        .get_result(&mut conn)
        .await
        .map(Some)
        .or_else(|e| match e {
            DieselError::NotFound => Ok(None),
            e => Err(e.into()),
        })
    }

    /// Ends a dashboard session (sign-out); nothing happens if there is none.
    pub async fn close_dashboard_session(&self, token_hash: &[u8]) -> Result<(), DbError> {
        let mut conn = self.pool.get().await?;
        diesel::sql_query("SELECT vsm_close_dashboard_session($1)")
            .bind::<Bytea, _>(token_hash)
            .prepared()
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// The role pooled connections act as (after `SET ROLE database.app_role`, or the login
    /// role when that is empty) and whether row-level security applies to it.
    pub async fn effective_role(&self) -> Result<EffectiveRole, DbError> {
        let mut conn = self.pool.get().await?;
        let role: EffectiveRole = diesel::sql_query(
            "SELECT current_user::text AS name, rolsuper AS superuser, rolbypassrls AS bypass_rls \
             FROM pg_roles WHERE rolname = current_user",
        )
        .prepared()
        .get_result(&mut conn)
        .await?;
        Ok(role)
    }

    /// Round trip to the database; `Ok(latency)` when it answers.
    pub async fn ping(&self) -> Result<Duration, DbError> {
        let started = Instant::now();
        let mut conn = self.pool.get().await?;
        diesel::sql_query("SELECT 1")
            .prepared()
            .execute(&mut conn)
            .await?;
        Ok(started.elapsed())
    }

    /// Pool size, idle connections and waiting callers, for the pool gauges.
    pub fn pool_status(&self) -> deadpool::Status {
        self.pool.status()
    }

    /// The configured URL (password redacted when displayed).
    pub fn url(&self) -> &ServiceUrl {
        &self.url
    }
}

/// What `Repo::open_dashboard_session` stores; exactly one of `api_key_id` and
/// `admin_token_hash` is set.
pub struct NewDashboardSession<'a> {
    /// sha256 of the cookie's token.
    pub token_hash: &'a [u8],
    pub api_key_id: Option<Uuid>,
    /// sha256 of the admin token the operator signed in with.
    pub admin_token_hash: Option<&'a [u8]>,
    pub csrf_token: &'a str,
    pub ttl_secs: i32,
    /// Sessions kept per key (and for the operator), newest first.
    pub keep: i32,
}

/// A live dashboard session as stored.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct DashboardSessionRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub api_key_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub tenant_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Bytea>)]
    pub admin_token_hash: Option<Vec<u8>>,
    #[diesel(sql_type = Text)]
    pub csrf_token: String,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// The role serving and working connections run as ([`Repo::effective_role`]).
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct EffectiveRole {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub superuser: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub bypass_rls: bool,
}

impl EffectiveRole {
    /// Why row-level security would not apply to this role, if it would not.
    pub fn escapes_rls(&self) -> Option<&'static str> {
        if self.superuser {
            Some("is a superuser")
        } else if self.bypass_rls {
            Some("has BYPASSRLS")
        } else {
            None
        }
    }
}

/// A transaction of one tenant, from [`Repo::tenant_tx`] only (its fields are private, so no
/// other code can make one): its tenant context is set, so row-level security limits every
/// statement on it to that tenant. It dereferences to the connection, so diesel queries run on
/// it. Every schema function over a tenant table takes `&mut TenantTx`; a system transaction
/// or a bare connection does not fit:
///
/// ```compile_fail,E0308
/// async fn wrong(repo: &vsm::repo::Repo) -> Result<(), vsm::repo::DbError> {
///     let mut tx = repo.system_tx().await?;
///     // A SystemTx is not a TenantTx: this does not compile.
///     vsm::schemas::vsm::episode::find(&mut tx, uuid::Uuid::nil()).await?;
///     Ok(())
/// }
/// ```
///
/// ```compile_fail,E0308
/// async fn wrong(conn: &mut vsm::repo::Conn) -> Result<(), vsm::repo::DbError> {
///     // Neither is a bare connection.
///     vsm::schemas::vsm::episode::find(conn, uuid::Uuid::nil()).await?;
///     Ok(())
/// }
/// ```
///
/// ```no_run
/// async fn right(repo: &vsm::repo::Repo, tenant: uuid::Uuid) -> Result<(), vsm::repo::DbError> {
///     let mut tx = repo.tenant_tx(tenant).await?;
///     vsm::schemas::vsm::episode::find(&mut tx, uuid::Uuid::nil()).await?;
///     tx.commit().await
/// }
/// ```
pub struct TenantTx {
    tx: Tx,
    tenant: Uuid,
}

impl TenantTx {
    /// The tenant this transaction acts for.
    pub fn tenant_id(&self) -> Uuid {
        self.tenant
    }

    pub async fn commit(self) -> Result<(), DbError> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        self.tx.rollback().await
    }
}

/// The one-round-trip read of [`Repo::tenant_read`], made only there (its fields are
/// private): its tenant context is set exactly as a [`TenantTx`]'s is.
pub struct TenantRead<'c> {
    conn: &'c AsyncPgConnection,
    /// Statements issued through it (each takes the connection once): the door pipelines its
    /// COMMIT after the first, and refuses a read that issued more.
    issued: &'c AtomicU32,
}

/// Where one tenant's rows are reached: a [`TenantTx`] or a [`TenantRead`]. Sealed, so a
/// system transaction or a bare connection still does not fit. Schema functions that only
/// read take `&mut impl TenantConn`, so both doors serve them.
pub trait TenantConn: sealed::Sealed {
    /// The connection statements run on: the transaction's own, or a shared reference to it
    /// (diesel-async pipelines statements issued through shared references).
    type Conn: diesel_async::AsyncConnectionCore<Backend = diesel::pg::Pg>;

    fn conn(&mut self) -> &mut Self::Conn;
}

impl TenantConn for TenantTx {
    type Conn = Conn;

    fn conn(&mut self) -> &mut Conn {
        &mut self.tx
    }
}

impl<'c> TenantConn for TenantRead<'c> {
    type Conn = &'c AsyncPgConnection;

    fn conn(&mut self) -> &mut &'c AsyncPgConnection {
        self.issued.fetch_add(1, Ordering::Relaxed);
        &mut self.conn
    }
}

/// A transaction as the system role, from [`Repo::system_tx`] only: the job engine's and the
/// event relay's machinery, which sees no tenant data table.
pub struct SystemTx {
    tx: Tx,
}

impl SystemTx {
    pub async fn commit(self) -> Result<(), DbError> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        self.tx.rollback().await
    }
}

/// A dedicated connection as the system role, from [`Repo::dedicated_system_conn`] only.
/// Statements on it commit one by one; dropping it closes the session (and releases its
/// session-level advisory locks).
pub struct SystemConn {
    conn: Conn,
}

impl std::ops::Deref for SystemConn {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for SystemConn {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// Either kind of transaction, for the few statements that belong in both (inserting a job:
/// a tenant inserts its own, the engine inserts cron and follow-up jobs). Sealed: only
/// [`TenantTx`] and [`SystemTx`] implement it, so a bare connection still does not fit.
pub trait AnyTx: std::ops::DerefMut<Target = Conn> + sealed::Sealed + Send {}

impl AnyTx for TenantTx {}
impl AnyTx for SystemTx {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::TenantTx {}
    impl Sealed for super::SystemTx {}
    impl Sealed for super::TenantRead<'_> {}
}

macro_rules! deref_to_conn {
    ($ty:ty) => {
        impl std::ops::Deref for $ty {
            type Target = Conn;
            fn deref(&self) -> &Conn {
                &self.tx
            }
        }

        impl std::ops::DerefMut for $ty {
            fn deref_mut(&mut self) -> &mut Conn {
                &mut self.tx
            }
        }
    };
}

deref_to_conn!(TenantTx);
deref_to_conn!(SystemTx);

/// The open transaction both kinds wrap: hands the connection back on commit, rollback or drop.
struct Tx {
    /// `Some` until commit, rollback or drop hands the connection back.
    conn: Option<PooledConn>,
}

type PooledConn = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;

/// A pooled connection whose transaction state is not settled yet (a pipelined BEGIN may or
/// may not have run). Dropped unsettled — its future was cancelled — it is detached from the
/// pool and closed, so PostgreSQL ends whatever it had open and no tenant context can reach
/// the connection's next user.
struct Unsettled(Option<PooledConn>);

impl Unsettled {
    fn conn(&self) -> &AsyncPgConnection {
        // Invariant: `Some` until `settle`, which consumes the value.
        self.0
            .as_deref()
            .expect("unsettled connection already settled")
    }

    fn conn_mut(&mut self) -> &mut AsyncPgConnection {
        self.0
            .as_deref_mut()
            .expect("unsettled connection already settled")
    }

    /// The state is known again: the connection may go back to the pool as usual.
    fn settle(mut self) -> Option<PooledConn> {
        self.0.take()
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(diesel_async::pooled_connection::deadpool::Object::take(
                conn,
            ));
        }
    }
}

impl Tx {
    async fn commit(mut self) -> Result<(), DbError> {
        if let Some(mut conn) = self.conn.take() {
            AnsiTransactionManager::commit_transaction(&mut *conn).await?;
        }
        Ok(())
    }

    async fn rollback(mut self) -> Result<(), DbError> {
        if let Some(mut conn) = self.conn.take() {
            AnsiTransactionManager::rollback_transaction(&mut *conn).await?;
        }
        Ok(())
    }
}

impl std::ops::Deref for Tx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        // Invariant: `conn` is only taken by commit/rollback/drop, which consume the Tx.
        self.conn.as_deref().expect("Tx used after it ended")
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_deref_mut().expect("Tx used after it ended")
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Roll back off the dropping task, then the connection goes back to the pool. Without a
        // runtime the connection is dropped while still in its transaction: the pool discards
        // such connections and PostgreSQL aborts the transaction when it closes.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = AnsiTransactionManager::rollback_transaction(&mut *conn).await {
                    tracing::warn!(error = %e, "rollback of an abandoned transaction failed");
                }
            });
        }
    }
}

/// Quotes an identifier as PostgreSQL's `quote_ident` would.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Why a connection could not be opened, in one line with the underlying cause
/// (e.g. "connection refused"), which diesel's own error type drops.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// The server answered that the database does not exist (SQLSTATE 3D000).
    pub missing_database: bool,
    pub message: String,
}

/// Opens one connection to `url` (as its login role), bounded by `timeout`. Crate-private: a
/// login-role connection is for migrations and LISTEN only, never a way to tenant data.
pub(crate) async fn establish(
    url: &str,
    timeout: Duration,
) -> Result<AsyncPgConnection, ConnectError> {
    let connecting = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            return Err(ConnectError {
                missing_database: e.code()
                    == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME),
                message: error_chain(&e),
            });
        }
        Err(_) => {
            return Err(ConnectError {
                missing_database: false,
                message: format!("timed out after {}s", timeout.as_secs()),
            });
        }
    };
    AsyncPgConnection::try_from_client_and_connection(client, connection)
        .await
        .map_err(|e| ConnectError {
            missing_database: false,
            message: e.to_string(),
        })
}

/// An error and its sources on one line: "error connecting to server: Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Opens one pooled connection and starts its session with `session` ([`session_sql`]).
async fn establish_as(
    url: String,
    session: String,
    timeout: Duration,
) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut conn = establish(&url, timeout)
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(e.message))?;
    conn.set_instrumentation(crate::metrics::QueryTimer::default());
    diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, &session)
        .await
        .map_err(|e| {
            diesel::ConnectionError::BadConnection(format!(
                "cannot start the session ({session}): {e}"
            ))
        })?;
    Ok(conn)
}

/// What a pooled connection runs once when it opens, in one round trip: `SET ROLE` to the
/// application role (unless none is configured) and the statement and idle-in-transaction
/// timeouts.
fn session_sql(cfg: &DatabaseConfig) -> String {
    let role = match cfg.app_role.as_str() {
        "" => String::new(),
        role => format!("SET ROLE {}; ", quote_ident(role)),
    };
    format!(
        "{role}SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
        cfg.statement_timeout_secs.saturating_mul(1000),
        cfg.idle_in_transaction_timeout_secs.saturating_mul(1000)
    )
}

/// The innermost cause of a pool error, e.g. "connection refused".
pub fn pool_error_cause(e: &PoolError) -> String {
    use diesel_async::pooled_connection::PoolError as Inner;
    use diesel_async::pooled_connection::deadpool::PoolError as Outer;
    match e {
        Outer::Backend(Inner::ConnectionError(c)) => c.to_string(),
        Outer::Backend(Inner::QueryError(q)) => q.to_string(),
        Outer::Timeout(_) => "timed out".to_owned(),
        other => other.to_string(),
    }
}
