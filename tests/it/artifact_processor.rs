//! The `artifact_processor` worker (CONTRACT §7): enqueued with every upload, it re-reads the
//! stored object, verifies size and sha256, sniffs the type and records the result.

use crate::common;
use crate::jobs_support;

use std::sync::Arc;

use common::{Instance, TestDb, instance_config};
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use jobs_support::options;
use serde_json::Value;
use vsm::config::Config;
use vsm::jobs::Engine;

struct Setup {
    db: TestDb,
    instance: Instance,
    config: Config,
    root: tempfile::TempDir,
    key: String,
    tenant: uuid::Uuid,
}

async fn setup() -> Setup {
    let db = TestDb::migrated().await;
    let root = tempfile::tempdir().unwrap();
    let mut config = instance_config(&db, None);
    config.storage.root = root.path().to_owned();
    let instance = Instance::start(config.clone()).await;
    let (t, key) = vsm::schemas::storage::tenant::create(&instance.repo, "files", None)
        .await
        .unwrap();
    Setup {
        db,
        instance,
        config,
        root,
        key: key.key,
        tenant: t.id,
    }
}

impl Setup {
    fn engine(&self) -> Engine {
        Engine::new(
            self.instance.repo.clone(),
            Arc::new(self.config.clone()),
            vsm::workers::registry(&self.config),
            options(&[("default", 2)]),
        )
    }

    async fn put(&self, path: &str, content_type: &str, body: &'static [u8]) -> Value {
        let res = reqwest::Client::new()
            .put(format!("{}/v1/artifacts/{path}", self.instance.base))
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    /// The artifact as the list shows it (with its processing metadata).
    async fn listed(&self, path: &str) -> Value {
        let page: Value = reqwest::Client::new()
            .get(format!("{}/v1/artifacts?prefix={path}", self.instance.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["items"][0].clone()
    }

    async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.db.owner_conn().await;
        let n: N = diesel::sql_query(sql).get_result(&mut conn).await.unwrap();
        n.n
    }

    async fn processed_events(&self) -> Vec<Value> {
        #[derive(diesel::QueryableByName)]
        struct P {
            #[diesel(sql_type = Text)]
            payload: String,
        }
        let mut conn = self.db.owner_conn().await;
        let rows: Vec<P> = diesel::sql_query(
            "SELECT payload::text AS payload FROM events WHERE topic = 'artifact.processed' ORDER BY id",
        )
        .load(&mut conn)
        .await
        .unwrap();
        rows.iter()
            .map(|p| serde_json::from_str(&p.payload).unwrap())
            .collect()
    }
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";

#[tokio::test]
async fn an_upload_enqueues_processing_that_verifies_the_bytes_and_sniffs_the_type() {
    let s = setup().await;
    let meta = s.put("pics/dot.png", "text/plain", PNG).await;
    // The job committed with the artifact, for this tenant.
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) AS n FROM jobs WHERE worker = 'artifact_processor' \
             AND tenant_id = '{}' AND args->>'artifact_id' = '{}'",
            s.tenant,
            meta["id"].as_str().unwrap()
        ))
        .await,
        1
    );
    assert_eq!(s.engine().drain("default").await.unwrap(), 1);
    let item = s.listed("pics/").await;
    let processing = &item["metadata"]["processing"];
    assert_eq!(processing["status"], "ok", "{item}");
    assert_eq!(processing["sha256"], meta["sha256"]);
    assert_eq!(processing["size"], PNG.len());
    assert_eq!(processing["sniffed_type"], "image/png");
    assert_eq!(processing["declared_type"], "text/plain");
    // Processing does not touch Last-Modified.
    assert_eq!(item["updated_at"], meta["updated_at"]);
    let events = s.processed_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["status"], "ok");
    assert_eq!(events[0]["path"], "pics/dot.png");
    assert_eq!(
        s.count("SELECT count(*) AS n FROM jobs WHERE state = 'completed'")
            .await,
        1
    );
}

#[tokio::test]
async fn an_object_that_no_longer_matches_its_row_is_recorded_as_an_error() {
    let s = setup().await;
    s.put("notes.txt", "text/plain", b"original text").await;
    // Damage the stored object behind the API's back: same size, other bytes.
    let file = s
        .root
        .path()
        .join(format!("tenants/{}/notes.txt", s.tenant));
    std::fs::write(&file, b"ORIGINAL TEXT").unwrap();
    assert_eq!(s.engine().drain("default").await.unwrap(), 1);
    let processing = s.listed("notes.txt").await["metadata"]["processing"].clone();
    assert_eq!(processing["status"], "error", "{processing}");
    assert!(
        processing["error"].as_str().unwrap().contains("sha256"),
        "{processing}"
    );
    let events = s.processed_events().await;
    assert_eq!(events[0]["status"], "error");
    // A finding, not a failed job.
    assert_eq!(
        s.count("SELECT count(*) AS n FROM jobs WHERE state = 'completed'")
            .await,
        1
    );

    // A missing object is reported the same way.
    s.put("gone.txt", "text/plain", b"soon missing").await;
    std::fs::remove_file(s.root.path().join(format!("tenants/{}/gone.txt", s.tenant))).unwrap();
    assert_eq!(s.engine().drain("default").await.unwrap(), 1);
    let processing = s.listed("gone.txt").await["metadata"]["processing"].clone();
    assert_eq!(processing["status"], "error");
    assert_eq!(processing["error"], "the object is missing");
}

#[tokio::test]
async fn a_deleted_or_replaced_artifact_leaves_its_job_nothing_to_do() {
    let s = setup().await;
    s.put("short-lived", "text/plain", b"v1").await;
    let res = reqwest::Client::new()
        .delete(format!("{}/v1/artifacts/short-lived", s.instance.base))
        .bearer_auth(&s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    s.put("replaced", "text/plain", b"first bytes").await;
    s.put("replaced", "text/plain", b"second bytes").await;
    // Three jobs: the deleted one's, and one per version of "replaced".
    assert_eq!(s.engine().drain("default").await.unwrap(), 3);
    let events = s.processed_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["path"], "replaced");
    let processing = s.listed("replaced").await["metadata"]["processing"].clone();
    assert_eq!(processing["status"], "ok");
    assert_eq!(processing["size"], 12);
}
