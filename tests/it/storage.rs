//! The storage adapter suite (CONTRACT §8): one set of tests, run against every backend —
//! `local` (a temporary directory), `memory`, and `s3` against a real S3-compatible server
//! (`TEST_S3_ENDPOINT`; `.ci/run` starts moto). Plus the path rules.

use crate::common;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use vsm::storage::adapters::{self, ObjectStoreAdapter};
use vsm::storage::{Adapter, ByteStream, StorageError};

/// An adapter and whatever must outlive it (the local backend's directory).
pub struct Fixture {
    pub adapter: Arc<dyn Adapter>,
    _dir: Option<tempfile::TempDir>,
}

async fn local() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let adapter: ObjectStoreAdapter = adapters::local::build(dir.path()).expect("local");
    Fixture {
        adapter: Arc::new(adapter),
        _dir: Some(dir),
    }
}

async fn memory() -> Fixture {
    Fixture {
        adapter: Arc::new(adapters::memory::build()),
        _dir: None,
    }
}

async fn s3() -> Fixture {
    let cfg = common::s3_bucket().await;
    Fixture {
        adapter: Arc::new(adapters::s3::build(&cfg).expect("s3")),
        _dir: None,
    }
}

/// `n` bytes of a repeating, position-dependent pattern, as a stream of `chunk`-byte pieces.
fn pattern_stream(n: usize, chunk: usize) -> ByteStream<'static> {
    let piece: Bytes = (0..chunk)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let pieces = n.div_ceil(chunk);
    futures_util::stream::iter((0..pieces).map(move |i| {
        let len = chunk.min(n - i * chunk);
        Ok(piece.slice(..len))
    }))
    .boxed()
}

fn pattern_sha(n: usize, chunk: usize) -> String {
    let piece: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
    let mut h = Sha256::new();
    let mut left = n;
    while left > 0 {
        let len = chunk.min(left);
        h.update(&piece[..len]);
        left -= len;
    }
    hex::encode(h.finalize())
}

mod suite {
    use super::*;

    pub async fn round_trip(a: &dyn Adapter) {
        let info = a
            .store("t/one.txt", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(info.key, "t/one.txt");
        assert_eq!(info.size, 5);
        assert_eq!(a.retrieve("t/one.txt").await.unwrap(), "hello");
        assert!(a.exists("t/one.txt").await.unwrap());
        assert_eq!(a.head("t/one.txt").await.unwrap().size, 5);
        let body = a.get_stream("t/one.txt", None).await.unwrap();
        assert_eq!(body.range, 0..5);
        let bytes: Vec<Bytes> = body.stream.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"hello");
        let part = a.get_stream("t/one.txt", Some(1..4)).await.unwrap();
        assert_eq!(part.range, 1..4);
        let bytes: Vec<Bytes> = part.stream.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"ell");
        a.ping().await.unwrap();
    }

    pub async fn overwrite(a: &dyn Adapter) {
        a.store("t/x", Bytes::from_static(b"first version"))
            .await
            .unwrap();
        a.store("t/x", Bytes::from_static(b"second")).await.unwrap();
        assert_eq!(a.retrieve("t/x").await.unwrap(), "second");
        assert_eq!(a.head("t/x").await.unwrap().size, 6);
        let n = a.put_stream("t/x", pattern_stream(10, 3)).await.unwrap();
        assert_eq!(n, 10);
        assert_eq!(a.head("t/x").await.unwrap().size, 10);
    }

    pub async fn list_with_prefix_and_pagination(a: &dyn Adapter) {
        for i in [4, 0, 6, 2, 5, 1, 3] {
            a.store(&format!("p/a/{i}.txt"), Bytes::from(vec![b'x'; i]))
                .await
                .unwrap();
        }
        a.store("p/b/one", Bytes::from_static(b"1")).await.unwrap();
        a.store("p/b/two", Bytes::from_static(b"2")).await.unwrap();
        // A sibling whose name merely starts like the prefix is not under it.
        a.store("p/ab", Bytes::from_static(b"no")).await.unwrap();

        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = a.list("p/a", after.as_deref(), 3).await.unwrap();
            assert!(page.len() <= 3);
            if page.is_empty() {
                break;
            }
            after = page.last().map(|o| o.key.clone());
            seen.extend(page.into_iter().map(|o| (o.key, o.size)));
        }
        let expected: Vec<(String, u64)> =
            (0..7).map(|i| (format!("p/a/{i}.txt"), i as u64)).collect();
        assert_eq!(seen, expected);
        let b: Vec<String> = a
            .list("p/b", None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(b, ["p/b/one", "p/b/two"]);
        assert!(a.list("p/nothing", None, 10).await.unwrap().is_empty());
    }

    pub async fn delete(a: &dyn Adapter) {
        a.store("t/gone", Bytes::from_static(b"bye")).await.unwrap();
        a.delete("t/gone").await.unwrap();
        assert!(!a.exists("t/gone").await.unwrap());
        assert!(matches!(
            a.retrieve("t/gone").await,
            Err(StorageError::NotFound(_))
        ));
        // Deleting what is not there is fine.
        a.delete("t/gone").await.unwrap();
        assert!(a.list("t", None, 10).await.unwrap().is_empty());
    }

    pub async fn missing_keys(a: &dyn Adapter) {
        assert!(!a.exists("no/such").await.unwrap());
        assert!(matches!(
            a.retrieve("no/such").await,
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            a.head("no/such").await,
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            a.get_stream("no/such", None).await,
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            a.rename("no/such", "no/other").await,
            Err(StorageError::NotFound(_))
        ));
    }

    pub async fn empty_objects(a: &dyn Adapter) {
        let info = a.store("e/stored", Bytes::new()).await.unwrap();
        assert_eq!(info.size, 0);
        assert_eq!(a.retrieve("e/stored").await.unwrap().len(), 0);
        let n = a
            .put_stream("e/streamed", futures_util::stream::empty().boxed())
            .await
            .unwrap();
        assert_eq!(n, 0);
        let n = a
            .put_stream(
                "e/empty-chunks",
                futures_util::stream::iter([Ok(Bytes::new()), Ok(Bytes::new())]).boxed(),
            )
            .await
            .unwrap();
        assert_eq!(n, 0);
        for key in ["e/stored", "e/streamed", "e/empty-chunks"] {
            assert!(a.exists(key).await.unwrap(), "{key}");
            assert_eq!(a.head(key).await.unwrap().size, 0, "{key}");
            let body = a.get_stream(key, None).await.unwrap();
            let bytes: Vec<Bytes> = body.stream.try_collect().await.unwrap();
            assert!(bytes.concat().is_empty(), "{key}");
        }
    }

    /// 64 MiB: bigger than one part, so it goes up as a multipart upload, and it comes back
    /// byte for byte.
    pub async fn large_object_streams(a: &dyn Adapter) {
        const SIZE: usize = 64 * 1024 * 1024;
        let n = a
            .put_stream("big/object", pattern_stream(SIZE, 1024 * 1024 + 7))
            .await
            .unwrap();
        assert_eq!(n, SIZE as u64);
        assert_eq!(a.head("big/object").await.unwrap().size, SIZE as u64);
        let body = a.get_stream("big/object", None).await.unwrap();
        let mut h = Sha256::new();
        let mut got = 0usize;
        let mut stream = body.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            got += chunk.len();
            h.update(&chunk);
        }
        assert_eq!(got, SIZE);
        assert_eq!(
            hex::encode(h.finalize()),
            pattern_sha(SIZE, 1024 * 1024 + 7)
        );
        let tail = a
            .get_stream("big/object", Some(SIZE as u64 - 10..SIZE as u64))
            .await
            .unwrap();
        let bytes: Vec<Bytes> = tail.stream.try_collect().await.unwrap();
        assert_eq!(bytes.concat().len(), 10);
        // The S3 test server keeps objects in memory.
        a.delete("big/object").await.unwrap();
    }

    /// A body that fails half-way (a client that went away) leaves no object, also after the
    /// upload had switched to multipart.
    pub async fn failed_stream_leaves_nothing(a: &dyn Adapter) {
        for (key, before_failure) in [("f/small", 1000usize), ("f/multipart", 12 << 20)] {
            let body =
                pattern_stream(before_failure, 1 << 20).chain(futures_util::stream::once(async {
                    Err(StorageError::Body("client went away".into()))
                }));
            let err = a.put_stream(key, body.boxed()).await.unwrap_err();
            assert!(matches!(err, StorageError::Body(_)), "{err}");
            assert!(!a.exists(key).await.unwrap(), "{key}");
        }
        assert!(a.list("f", None, 10).await.unwrap().is_empty());
    }

    pub async fn rename(a: &dyn Adapter) {
        a.store("r/from", Bytes::from_static(b"moving"))
            .await
            .unwrap();
        a.store("r/to", Bytes::from_static(b"old")).await.unwrap();
        a.rename("r/from", "r/to").await.unwrap();
        assert!(!a.exists("r/from").await.unwrap());
        assert_eq!(a.retrieve("r/to").await.unwrap(), "moving");
        a.rename("r/to", "r/deeper/still/here").await.unwrap();
        assert_eq!(a.retrieve("r/deeper/still/here").await.unwrap(), "moving");
    }
}

/// Instantiates every test of [`suite`] for one backend.
macro_rules! adapter_suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn round_trip() {
                suite::round_trip(super::$backend().await.adapter.as_ref()).await
            }
            #[tokio::test]
            async fn overwrite() {
                suite::overwrite(super::$backend().await.adapter.as_ref()).await
            }
            #[tokio::test]
            async fn list_with_prefix_and_pagination() {
                let f = super::$backend().await;
                suite::list_with_prefix_and_pagination(f.adapter.as_ref()).await
            }
            #[tokio::test]
            async fn delete() {
                suite::delete(super::$backend().await.adapter.as_ref()).await
            }
            #[tokio::test]
            async fn missing_keys() {
                suite::missing_keys(super::$backend().await.adapter.as_ref()).await
            }
            #[tokio::test]
            async fn empty_objects() {
                suite::empty_objects(super::$backend().await.adapter.as_ref()).await
            }
            #[tokio::test]
            async fn large_object_streams() {
                suite::large_object_streams(super::$backend().await.adapter.as_ref()).await
            }
            #[tokio::test]
            async fn failed_stream_leaves_nothing() {
                let f = super::$backend().await;
                suite::failed_stream_leaves_nothing(f.adapter.as_ref()).await
            }
            #[tokio::test]
            async fn rename() {
                suite::rename(super::$backend().await.adapter.as_ref()).await
            }
        }
    };
}

adapter_suite!(local);
adapter_suite!(memory);
adapter_suite!(s3);

#[test]
fn path_rules_refuse_each_attack_with_its_own_message() {
    use vsm::storage::validate_path;
    let long_segment = "a".repeat(256);
    let long_path = format!("{}/x", ["b"; 512].join("/"));
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("a/..", "'..'"),
        ("./a", "'.'"),
        ("/etc/passwd", "absolute"),
        ("a\0b", "NUL"),
        ("a\nb", "control"),
        ("a\u{7f}b", "control"),
        ("a//b", "empty segments"),
        ("a/", "end with '/'"),
        (&long_segment, "255 bytes"),
        (&long_path, "1024 bytes"),
        ("a/b#12", "'#'"),
    ];
    for (path, rule) in cases {
        let err = validate_path(path).expect_err(path).to_string();
        assert!(err.contains(rule), "{path:?}: {err}");
    }
    for ok in [
        "a",
        "reports/2026/q4.pdf",
        "with space/and-ünïcode.txt",
        "dots.in.names/..hidden/x..y",
        "hash#tag",
        "%2e%2e",
        &"a".repeat(255),
    ] {
        validate_path(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
}

/// Property: every path the rules accept becomes an object inside its tenant's prefix, with
/// exactly its own segments — whatever mix of dots, slashes, percent signs and odd characters
/// it is made of. Random paths from a hostile alphabet; each accepted one is stored on the local
/// backend and must land under `<root>/tenants/<tenant>/`.
#[tokio::test]
async fn accepted_paths_never_leave_the_tenant_prefix() {
    use rand::{Rng, SeedableRng};
    use vsm::storage::{object_key, tenant_prefix, validate_path};
    const ALPHABET: &[&str] = &[
        "a", "b", ".", "..", "/", "%", "%2e", "%2f", "#", "1", "\\", " ", "~", "\0", "\n", "é",
        "\u{202e}", ":", "*", "?",
    ];
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapters::local::build(dir.path()).unwrap();
    let tenant = uuid::Uuid::now_v7();
    let tenant_dir = dir.path().join(tenant_prefix(tenant));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..3000 {
        let len = rng.random_range(1..12);
        let path: String = (0..len)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect();
        if validate_path(&path).is_err() {
            refused += 1;
            continue;
        }
        accepted += 1;
        let key = object_key(tenant, &path);
        let parsed = object_store::path::Path::parse(&key)
            .unwrap_or_else(|e| panic!("{path:?} accepted but not a key: {e}"));
        let segments: Vec<String> = parsed.parts().map(|p| p.as_ref().to_owned()).collect();
        let mut expected = vec!["tenants".to_owned(), tenant.to_string()];
        expected.extend(path.split('/').map(str::to_owned));
        assert_eq!(segments, expected, "{path:?}");
        match adapter.store(&key, Bytes::from_static(b"x")).await {
            Ok(_) => {}
            // An earlier random path is a file where this one needs a folder (or the reverse).
            Err(StorageError::Conflict(_)) => {}
            Err(e) => panic!("{path:?}: {e}"),
        }
    }
    assert!(accepted > 300 && refused > 300, "{accepted} / {refused}");
    // Everything written is under the tenant's directory.
    for file in common::files_under(dir.path()) {
        assert!(
            dir.path().join(&file).starts_with(&tenant_dir),
            "{file} is outside the tenant prefix"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Durability: publishing is fsynced on disk, and staging objects a killed process left are swept.

fn storage_ops(backend: &str, op: &str, outcome: &str) -> u64 {
    vsm::metrics::METRICS
        .storage_operations
        .with_label_values(&[backend, op, outcome])
        .get()
}

#[tokio::test]
async fn publishing_on_the_local_backend_syncs_the_file_and_its_directories() {
    let dir = tempfile::tempdir().unwrap();
    let storage = vsm::storage::Storage::new(
        Arc::new(adapters::local::build(dir.path()).unwrap()),
        1 << 20,
    );
    let synced = storage_ops("local", "sync", "ok");
    let staged = storage.stage(pattern_stream(10_000, 1000)).await.unwrap();
    storage
        .publish(&staged, "tenants/t/new/folder/file.bin")
        .await
        .unwrap();
    // One sync (file + every directory up to the root) per publish, before it returns.
    assert_eq!(storage_ops("local", "sync", "ok"), synced + 1);
    assert!(dir.path().join("tenants/t/new/folder/file.bin").is_file());
    // The file and directory flushes themselves, on a real path.
    vsm::storage::adapters::local::sync_published(
        &std::fs::canonicalize(dir.path()).unwrap(),
        &std::fs::canonicalize(dir.path().join("tenants/t/new/folder/file.bin")).unwrap(),
    )
    .unwrap();
}

fn age(path: &std::path::Path, by: std::time::Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - by)
        .unwrap();
}

#[tokio::test]
async fn a_sweep_removes_old_staging_objects_and_nothing_else() {
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    let dir = tempfile::tempdir().unwrap();
    let storage = vsm::storage::Storage::new(
        Arc::new(adapters::local::build(dir.path()).unwrap()),
        1 << 20,
    );
    let adapter = storage.adapter();
    // Left by a killed process: a finished staging upload and an unfinished write's temp file.
    let old = format!("staging/{}", uuid::Uuid::now_v7());
    adapter
        .store(&old, Bytes::from_static(b"old"))
        .await
        .unwrap();
    age(&dir.path().join(&old), 2 * HOUR);
    let partial = dir
        .path()
        .join(format!("staging/{}#17", uuid::Uuid::now_v7()));
    std::fs::write(&partial, b"half").unwrap();
    age(&partial, 2 * HOUR);
    // An upload in progress, and an old artifact: both stay.
    let young = format!("staging/{}", uuid::Uuid::now_v7());
    adapter
        .store(&young, Bytes::from_static(b"young"))
        .await
        .unwrap();
    let artifact = "tenants/t/old.txt";
    adapter
        .store(artifact, Bytes::from_static(b"kept"))
        .await
        .unwrap();
    age(&dir.path().join(artifact), 2 * HOUR);

    assert_eq!(storage.sweep_staging(HOUR).await.unwrap(), 2);
    assert!(!adapter.exists(&old).await.unwrap());
    assert!(!partial.exists());
    assert!(adapter.exists(&young).await.unwrap());
    assert!(adapter.exists(artifact).await.unwrap());
    assert_eq!(storage.sweep_staging(HOUR).await.unwrap(), 0);
}

#[tokio::test]
async fn a_sweep_by_listing_removes_only_objects_written_before_the_cutoff() {
    let f = memory().await;
    let adapter = f.adapter.as_ref();
    let staged = format!("staging/{}", uuid::Uuid::now_v7());
    adapter
        .store(&staged, Bytes::from_static(b"s"))
        .await
        .unwrap();
    adapter
        .store("tenants/t/a", Bytes::from_static(b"a"))
        .await
        .unwrap();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(adapter.sweep("staging", hour_ago).await.unwrap(), 0);
    assert!(adapter.exists(&staged).await.unwrap());
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(adapter.sweep("staging", later).await.unwrap(), 1);
    assert!(!adapter.exists(&staged).await.unwrap());
    assert!(adapter.exists("tenants/t/a").await.unwrap());
}
