//! HTTP throughput (wrk -t2 -c64): a bare actix-web handler next to `vsm serve`'s `GET /health`
//! (the whole middleware stack, no I/O), and an authenticated `GET /v1/systems` (key lookup,
//! rate limit, a tenant transaction) next to pgbench running the same statements as one
//! transaction and a single SELECT, each pair in interleaved rounds (the median of the
//! rounds' ratios reported). Then the plan's §8 request budgets, one request at a time.

use std::time::Instant;

use actix_web::{App, HttpResponse, HttpServer, get};
use serde_json::json;

use crate::support::{
    Budget, Db, Latency, Report, Row, Sizes, Throughput, free_port, median, pgbench, serve, wrk,
};

#[get("/health")]
async fn bare_health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "version": "0.1.0", "uptime_seconds": 1}))
}

fn start_bare(workers: usize) -> String {
    let port = free_port();
    std::thread::spawn(move || {
        let rt = actix_web::rt::System::new();
        rt.block_on(async move {
            HttpServer::new(|| App::new().service(bare_health))
                .workers(workers)
                .bind(("127.0.0.1", port))
                .expect("bind")
                .run()
                .await
                .expect("bare server");
        });
    });
    let url = format!("http://127.0.0.1:{port}/health");
    crate::support::wait_ready(&url);
    url
}

/// The statements `GET /v1/systems` runs, for pgbench.
fn systems_select() -> &'static str {
    "SELECT DISTINCT ON (system) * FROM system_states ORDER BY system, version DESC;"
}

pub fn run(sizes: &Sizes, report: &mut Report) {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let bare_url = start_bare(workers);
    let db = Db::create();
    let (_server, base) = serve("all", &db, &[]);
    // Each run is a third of the configured time: five rounds a side cost about 1.7x one
    // long run each.
    let secs = sizes.wrk_secs.div_ceil(3);
    let auth = format!("Authorization: Bearer {}", db.key);

    let health_url = format!("{base}/health");
    let rounds = interleaved(
        || wrk(&bare_url, None, secs),
        || wrk(&health_url, None, secs),
    );
    let bare = median_throughput(&rounds.0);
    let health = median_throughput(&rounds.1);
    let rps_ratio = paired_ratio(&rounds.1, &rounds.0, |t| t.rps);
    let p99_ratio = paired_ratio(&rounds.1, &rounds.0, |t| t.p99_ms);
    report.rows.push(Row {
        what: "GET /health (wrk -t2 -c64)",
        vsm: format!("{:.0} req/s, p99 {:.2} ms", health.rps, health.p99_ms),
        reference: format!(
            "bare actix-web handler {:.0} req/s, p99 {:.2} ms",
            bare.rps, bare.p99_ms
        ),
        ratio: Some(rps_ratio),
        goal: ">= 0.95x rps, p99 <= 1.2x",
        met: rps_ratio >= 0.95 && p99_ratio <= 1.2,
        data: json!({"vsm": {"rps": health.rps, "p99_ms": health.p99_ms},
                     "bare_actix": {"rps": bare.rps, "p99_ms": bare.p99_ms},
                     "p99_ratio": p99_ratio,
                     "rounds": {"vsm_rps": rounds.1.iter().map(|t| t.rps).collect::<Vec<_>>(),
                                "bare_actix_rps": rounds.0.iter().map(|t| t.rps).collect::<Vec<_>>()}}),
    });

    let systems_url = format!("{base}/v1/systems");
    let pg_args = ["-c", "64", "-j", "2", "-T", &secs.to_string()];
    let tx_script = format!(
        "BEGIN;\nSELECT set_config('app.current_tenant', '{}', true);\n{}\nCOMMIT;\n",
        db.tenant,
        systems_select()
    );
    let rounds = interleaved(
        || pgbench(&db.url, &tx_script, &pg_args, Some("vsm_app")),
        || wrk(&systems_url, Some(&auth), secs),
    );
    let pg_tx = median(rounds.0.iter().copied());
    let systems = median_throughput(&rounds.1);
    let pg_select = pgbench(&db.url, systems_select(), &pg_args, Some("vsm_app"));
    let ratio = median(rounds.1.iter().zip(&rounds.0).map(|(v, pg)| v.rps / pg));
    report.rows.push(Row {
        what: "authenticated GET /v1/systems (wrk -t2 -c64)",
        vsm: format!("{:.0} req/s, p99 {:.2} ms", systems.rps, systems.p99_ms),
        reference: format!(
            "pgbench same 4-statement tx {pg_tx:.0} tps; one SELECT {pg_select:.0} tps"
        ),
        ratio: Some(ratio),
        goal: ">= 1.0x pgbench tx, p99 <= 10 ms",
        met: ratio >= 1.0 && systems.p99_ms <= 10.0,
        data: json!({"vsm": {"rps": systems.rps, "p99_ms": systems.p99_ms},
                     "pgbench_tx_tps": pg_tx, "pgbench_select_tps": pg_select,
                     "rounds": {"vsm_rps": rounds.1.iter().map(|t| t.rps).collect::<Vec<_>>(),
                                "pgbench_tx_tps": rounds.0}}),
    });

    budgets(sizes, &db, &base, report);
}

/// Rounds of each pair.
const ROUNDS: usize = 5;

/// [`ROUNDS`] measurements of the reference and of vsm, back to back, the order swapped every
/// round. On a shared 2-core machine a run of either side swings by 10-20 % with whatever else
/// the machine does, in spells longer than a run; measured in adjacent pairs, both sides of a
/// pair share the spell, so each pair's ratio is fair and the ratio reported is their median.
fn interleaved<A, B>(
    mut reference: impl FnMut() -> A,
    mut vsm: impl FnMut() -> B,
) -> (Vec<A>, Vec<B>) {
    let (mut a, mut b) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            a.push(reference());
            b.push(vsm());
        } else {
            b.push(vsm());
            a.push(reference());
        }
    }
    (a, b)
}

/// The median over rounds of vsm's figure over the reference's in the same round.
fn paired_ratio(
    vsm: &[Throughput],
    reference: &[Throughput],
    of: impl Fn(&Throughput) -> f64,
) -> f64 {
    median(vsm.iter().zip(reference).map(|(v, r)| of(v) / of(r)))
}

/// The median rate and the median p99 of the rounds.
fn median_throughput(rounds: &[Throughput]) -> Throughput {
    Throughput {
        rps: median(rounds.iter().map(|t| t.rps)),
        p99_ms: median(rounds.iter().map(|t| t.p99_ms)),
    }
}

/// One request at a time, so each sample is the operation's own latency.
fn budgets(sizes: &Sizes, db: &Db, base: &str, report: &mut Report) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        // Something for the list to find: episodes with a tag to filter on.
        for i in 0..100 {
            let res = http
                .post(format!("{base}/v1/episodes"))
                .bearer_auth(&db.key)
                .json(
                    &json!({"title": format!("bench {i}"), "content": "x".repeat(200),
                              "tags": ["bench", format!("t{}", i % 10)]}),
                )
                .send()
                .await
                .expect("POST episode");
            assert!(res.status().is_success(), "episode: {}", res.status());
        }
        let n = sizes.samples;
        let cases: [(&'static str, String, bool, [f64; 3]); 4] = [
            (
                "health check",
                format!("{base}/health"),
                false,
                [5.0, 10.0, 20.0],
            ),
            (
                "metrics scrape",
                format!("{base}/metrics"),
                false,
                [20.0, 50.0, 100.0],
            ),
            (
                "DB query (simple)",
                format!("{base}/v1/systems/3"),
                true,
                [5.0, 20.0, 50.0],
            ),
            (
                "DB query (complex)",
                format!("{base}/v1/episodes?status=pending&tag=bench&limit=100"),
                true,
                [20.0, 100.0, 200.0],
            ),
        ];
        for (what, url, authed, budget) in cases {
            let mut samples = Vec::with_capacity(n);
            for i in 0..n + n / 10 {
                let mut req = http.get(&url);
                if authed {
                    req = req.bearer_auth(&db.key);
                }
                let t = Instant::now();
                let res = req.send().await.expect("GET");
                let status = res.status();
                let _ = res.bytes().await;
                let took = t.elapsed();
                // 404 is the simple query's answer before a state was ever set.
                assert!(status.is_success() || status == 404, "{what}: {status}");
                if i >= n / 10 {
                    samples.push(took);
                }
            }
            report.budgets.push(Budget {
                what,
                latency: Latency::of(samples),
                budget,
            });
        }
    });
}
