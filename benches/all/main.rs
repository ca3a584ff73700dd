//! The one benchmark command (issue 14): every vsm figure next to its reference, measured in
//! the same run on the same machine, plus the plan's §8 budgets as p50/p95/p99.
//!
//!     cargo bench --bench all                 # full sizes, a few minutes
//!     cargo bench --bench all -- --tiny       # seconds: what `.ci/run` runs so it cannot rot
//!     cargo bench --bench all -- jobs sse     # only these sections (http, jobs, rescue, sse, upload,
//!                                             # notifications)
//!     cargo bench --bench all -- insert       # only the bulk insert pair of `jobs` (run only when
//!                                             # named)
//!
//!     BENCH_SSE_CLIENTS=2000 cargo bench --bench all -- sse
//!                                             # the SSE section at another client count
//!     BENCH_PROFILE=1 cargo bench --bench all -- sse
//!                                             # with a whole-machine `perf` profile of each SSE
//!                                             # phase (see `profile.rs`)
//!
//! Needs PostgreSQL (`TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432`), `psql`,
//! `pgbench`, `wrk`, `curl`, and `node`/`npm` for Graphile Worker (installed by `npm ci` into
//! `benches/graphile` on first use). Writes the table as JSON to `target/bench/all.json`.

mod http;
mod jobs;
mod notifications;
mod profile;
mod sse;
mod support;
mod upload;

use std::time::Instant;

use support::{Report, Sizes};

type Section = (&'static str, fn(&Sizes, &mut Report));

const SECTIONS: [Section; 6] = [
    ("http", http::run),
    ("jobs", jobs::run),
    ("rescue", jobs::rescue),
    ("sse", sse::run),
    ("upload", upload::run),
    ("notifications", notifications::run),
];

/// Parts of a section, run on their own only when named (the full run has them already).
const EXTRA: [Section; 1] = [("insert", jobs::insert)];

fn main() {
    // `cargo bench` passes `--bench`; anything else that is not a section name is ignored.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes =
        if args.iter().any(|a| a == "--tiny") || std::env::var_os("BENCH_TINY").is_some() {
            Sizes::tiny()
        } else {
            Sizes::full()
        };
    // Where the SSE latency holds at another client count (the table's row is for 10,000).
    if let Some(n) = std::env::var("BENCH_SSE_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        sizes.sse_clients = n;
    }
    let chosen: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| SECTIONS.iter().chain(&EXTRA).any(|(name, _)| name == a))
        .collect();
    let mut report = Report::default();
    let started = Instant::now();
    let mut run = |(name, section): Section| {
        let t = Instant::now();
        eprintln!("bench: {name} ...");
        section(&sizes, &mut report);
        eprintln!("bench: {name} done in {:.1}s", t.elapsed().as_secs_f64());
    };
    for (name, section) in SECTIONS {
        if chosen.is_empty() || chosen.contains(&name) {
            run((name, section));
        }
    }
    for (name, section) in EXTRA {
        if chosen.contains(&name) {
            run((name, section));
        }
    }
    report.print();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let file = dir.join(if sizes.tiny {
        "all-tiny.json"
    } else {
        "all.json"
    });
    let mut json = report.json(&sizes);
    json["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(&file, serde_json::to_vec_pretty(&json).expect("json")).expect("write json");
    println!(
        "\nwritten to {} in {:.0}s",
        file.display(),
        started.elapsed().as_secs_f64()
    );
}
