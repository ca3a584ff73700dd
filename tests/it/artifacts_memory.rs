//! Streaming keeps memory bounded (CONTRACT §8): a 1 GiB upload and download through a real
//! `vsm serve` child process, sampling its resident set size from /proc while the bytes flow.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestDb;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

const SIZE: u64 = 1024 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;
/// Peak RSS growth allowed over the idle server: a small fraction of the object.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

/// Samples the process's RSS every 20 ms until stopped; returns the peak.
fn sample_peak(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(common::rss_kib(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_and_download_keep_server_memory_bounded() {
    let db = TestDb::migrated().await;
    let root = tempfile::tempdir().unwrap();
    let repo = db.repo().await;
    let (_, key) = vsm::schemas::storage::tenant::create(&repo, "big-files", None)
        .await
        .unwrap();
    let key = key.key;
    let root_dir = root.path().to_string_lossy().into_owned();
    let server = common::ServeChild::start(
        &db,
        &[
            ("VSM_STORAGE__BACKEND", "local"),
            ("VSM_STORAGE__ROOT", &root_dir),
            ("VSM_SERVER__WORKERS", "2"),
        ],
    )
    .await;
    let (base, pid) = (server.base.clone(), server.pid());
    let http = reqwest::Client::new();
    // Warm up the request path so one-time allocations are in the baseline.
    let res = http
        .put(format!("{base}/v1/artifacts/warm-up"))
        .bearer_auth(&key)
        .body(vec![0u8; 8 * CHUNK])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let baseline = common::rss_kib(pid);

    // Upload: 1 GiB generated on the fly, hashed as it goes out.
    let piece: Bytes = (0..CHUNK)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let sent_sha = Arc::new(Mutex::new(Sha256::new()));
    let hasher = sent_sha.clone();
    let body = futures_util::stream::iter(0..SIZE / CHUNK as u64).map(move |_| {
        hasher.lock().unwrap().update(&piece);
        Ok::<_, std::io::Error>(piece.clone())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak(pid, stop.clone());
    let started = Instant::now();
    let res = http
        .put(format!("{base}/v1/artifacts/huge.bin"))
        .bearer_auth(&key)
        .header("content-length", SIZE.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let upload_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let upload_peak = sampler.join().unwrap();
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let meta: serde_json::Value = res.json().await.unwrap();
    let sent = hex::encode(sent_sha.lock().unwrap().clone().finalize());
    assert_eq!(meta["size"], SIZE);
    assert_eq!(meta["sha256"], sent);

    // Download, read slowly at first would only add time; read as fast as it comes, hashing.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak(pid, stop.clone());
    let started = Instant::now();
    let res = http
        .get(format!("{base}/v1/artifacts/huge.bin"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], SIZE.to_string().as_str());
    let received = AtomicU64::new(0);
    let mut got = Sha256::new();
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        got.update(&chunk);
    }
    let download_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let download_peak = sampler.join().unwrap();
    assert_eq!(received.load(Ordering::Relaxed), SIZE);
    assert_eq!(hex::encode(got.finalize()), sent);

    eprintln!(
        "baseline {} MiB; upload {:.1}s peak {} MiB; download {:.1}s peak {} MiB",
        baseline / 1024,
        upload_time.as_secs_f64(),
        upload_peak / 1024,
        download_time.as_secs_f64(),
        download_peak / 1024
    );
    for (what, peak) in [("upload", upload_peak), ("download", download_peak)] {
        let growth = peak.saturating_sub(baseline);
        assert!(
            growth < MAX_GROWTH_KIB,
            "{what}: RSS grew by {} MiB over the {} MiB baseline",
            growth / 1024,
            baseline / 1024
        );
    }
}
