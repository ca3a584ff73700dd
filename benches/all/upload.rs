//! The §8 upload budget: 1 MiB `PUT /v1/artifacts/{path}` through `vsm serve` on the local
//! backend, one at a time, measured by the client from the first byte sent to the 201 read
//! (staging, sha256, row + event + publish, commit).

use std::time::Instant;

use bytes::Bytes;

use crate::support::{Budget, Db, Latency, Report, Sizes, serve};

const BODY: usize = 1024 * 1024;

pub fn run(sizes: &Sizes, report: &mut Report) {
    let db = Db::create();
    let root = tempfile::tempdir().expect("tempdir");
    let (_server, base) = serve(
        "serve",
        &db,
        &[
            ("VSM_STORAGE__BACKEND", "local".into()),
            ("VSM_STORAGE__ROOT", root.path().display().to_string()),
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let latency = rt.block_on(async {
        let http = reqwest::Client::new();
        let body: Bytes = (0..BODY)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let warm_up = sizes.uploads / 10;
        let mut samples = Vec::with_capacity(sizes.uploads);
        for i in 0..warm_up + sizes.uploads {
            let t = Instant::now();
            let res = http
                .put(format!("{base}/v1/artifacts/bench/{i:06}.bin"))
                .bearer_auth(&db.key)
                .body(body.clone())
                .send()
                .await
                .expect("PUT");
            assert_eq!(
                res.status(),
                201,
                "{}",
                res.text().await.unwrap_or_default()
            );
            let _ = res.bytes().await;
            if i >= warm_up {
                samples.push(t.elapsed());
            }
        }
        Latency::of(samples)
    });
    report.budgets.push(Budget {
        what: "storage upload (1 MiB)",
        latency,
        budget: [100.0, 500.0, 1000.0],
    });
}
