//! Helpers shared by the job tests: engines with short intervals, scripted test workers, and
//! direct looks at the jobs table as the owner (outside row-level security).

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::future::BoxFuture;
use uuid::Uuid;
use vsm::config::Config;
use vsm::jobs::{
    Engine, EngineOptions, Job, JobContext, JobResult, NewJob, Registry, Worker, storage,
};
use vsm::repo::Repo;

/// Engine options for tests: fast polling and rescue, no cron, short grace.
pub fn options(queues: &[(&str, usize)]) -> EngineOptions {
    EngineOptions {
        node: vsm::jobs::node_id(),
        queues: queues.iter().map(|(q, n)| ((*q).to_owned(), *n)).collect(),
        poll_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_secs(1),
        rescue_after: Duration::from_secs(3),
        prune_after: Duration::from_secs(7 * 86_400),
        prune_interval: Duration::from_secs(3600),
        cron: Vec::new(),
        grace: Duration::from_secs(2),
    }
}

pub fn engine(repo: &Repo, registry: Registry, opts: EngineOptions) -> Engine {
    Engine::new(repo.clone(), Arc::new(Config::default()), registry, opts)
}

type Run = Arc<dyn Fn(Job) -> BoxFuture<'static, JobResult> + Send + Sync>;

/// A worker whose behaviour the test scripts with a closure.
pub struct Scripted {
    pub name: &'static str,
    pub timeout: Duration,
    pub run: Run,
    /// Told `(job id, reason)` by each `on_discarded` call.
    pub discarded: Option<tokio::sync::mpsc::UnboundedSender<(Uuid, String)>>,
}

impl Scripted {
    pub fn new<F, Fut>(name: &'static str, f: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = JobResult> + Send + 'static,
    {
        Scripted {
            name,
            timeout: Duration::from_secs(30),
            run: Arc::new(move |job| Box::pin(f(job))),
            discarded: None,
        }
    }

    /// Reports each `on_discarded` call to `tx`.
    pub fn on_discarded(mut self, tx: tokio::sync::mpsc::UnboundedSender<(Uuid, String)>) -> Self {
        self.discarded = Some(tx);
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

impl Worker for Scripted {
    fn name(&self) -> &'static str {
        self.name
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn perform<'a>(&'a self, _ctx: &'a JobContext, job: &'a Job) -> BoxFuture<'a, JobResult> {
        (self.run)(job.clone())
    }

    fn on_discarded<'a>(
        &'a self,
        _ctx: &'a JobContext,
        job: &'a Job,
        reason: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        if let Some(tx) = &self.discarded {
            let _ = tx.send((job.id, reason.to_owned()));
        }
        Box::pin(async { Ok(()) })
    }
}

pub fn registry(workers: Vec<Scripted>) -> Registry {
    let mut r = Registry::new();
    for w in workers {
        r.register(w);
    }
    r
}

/// Inserts in a system transaction.
pub async fn insert(repo: &Repo, job: NewJob) -> Job {
    let mut tx = repo.system_tx().await.expect("system tx");
    let inserted = storage::insert(&mut tx, &job)
        .await
        .expect("insert")
        .into_job();
    tx.commit().await.expect("commit");
    inserted
}

/// The job as the owner sees it.
pub async fn get(owner: &mut AsyncPgConnection, id: Uuid) -> Job {
    use diesel::{QueryDsl, SelectableHelper};
    vsm::schemas::schema::jobs::table
        .find(id)
        .select(Job::as_select())
        .first(owner)
        .await
        .expect("job exists")
}

/// Pretends the job's time has come (as if the clock had moved on).
pub async fn make_due(owner: &mut AsyncPgConnection, id: Uuid) {
    diesel::sql_query("UPDATE jobs SET scheduled_at = now() - interval '1 second' WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .execute(owner)
        .await
        .expect("make due");
}

#[derive(diesel::QueryableByName)]
pub struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}

pub async fn count(owner: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(owner)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// Seconds from now to `at`.
pub fn secs_from_now(at: chrono::DateTime<chrono::Utc>) -> f64 {
    (at - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0
}

/// Polls `sql` (a `count(*) AS n`) every 50 ms until it returns `expected` or `within` passes.
pub async fn wait_for_count(
    owner: &mut AsyncPgConnection,
    sql: &str,
    expected: i64,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = count(owner, sql).await;
        if n == expected {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            #[derive(diesel::QueryableByName, Debug)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Text)]
                row: String,
            }
            let jobs: Vec<Row> = diesel::sql_query(
                "SELECT concat_ws(' ', id, state, queue, worker, attempt, attempted_by, errors) AS row \
                 FROM jobs ORDER BY id LIMIT 20",
            )
            .load(owner)
            .await
            .unwrap_or_default();
            let jobs: Vec<String> = jobs.into_iter().map(|r| r.row).collect();
            panic!("timed out waiting for {sql} = {expected} (last {n}); jobs: {jobs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes the test database refuse every connection (new ones and, by terminating them, the
/// open ones) until [`allow_connections`]: a database outage confined to this test's database.
pub async fn block_connections(db: &str) {
    let mut admin = crate::common::connect("postgres").await;
    diesel::sql_query(format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .expect("block connections");
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<diesel::sql_types::Text, _>(db)
    .execute(&mut admin)
    .await
    .expect("terminate backends");
}

/// Ends the outage started by [`block_connections`].
pub async fn allow_connections(db: &str) {
    let mut admin = crate::common::connect("postgres").await;
    diesel::sql_query(format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .expect("allow connections");
}
