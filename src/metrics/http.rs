//! The HTTP request metrics, counted per thread and added up when scraped:
//! `cybernetic_requests_total{method,path,status}`,
//! `cybernetic_request_duration_seconds{method,path}` and `cybernetic_http_requests_in_flight`.
//!
//! Every request updates them, and the server's workers run on every core. Kept in shared
//! counters, each core's requests kept taking the same cache lines from the other (about a
//! dozen contended atomic operations per request, a measurable share of a `/health`). So each
//! thread counts into cells of its own ([`ThreadRequests`], one [`InFlight`] cell per server
//! worker), and a scrape sums them. Cells live as long as the process: a thread that ends
//! leaves its counts behind, so no counter ever goes back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::LATENCY_BUCKETS;

const REQUESTS: &str = "cybernetic_requests_total";
const DURATION: &str = "cybernetic_request_duration_seconds";
const IN_FLIGHT: &str = "cybernetic_http_requests_in_flight";

/// The registry's view of every thread's cells (a handle: clones share them).
#[derive(Clone)]
pub struct HttpMetrics {
    cells: Arc<Cells>,
}

struct Cells {
    threads: Mutex<Vec<Arc<ThreadRequests>>>,
    in_flight: Mutex<Vec<InFlight>>,
    descs: Vec<Desc>,
}

/// One thread's request series.
#[derive(Default)]
pub struct ThreadRequests {
    series: Mutex<Vec<Arc<RequestSeries>>>,
}

/// One (method, route template, status) as counted by one thread.
pub struct RequestSeries {
    method: &'static str,
    path: Box<str>,
    status: u16,
    /// Requests per latency bucket, not cumulative; the last one is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Their summed latency, in nanoseconds.
    nanos: AtomicU64,
}

/// Requests one server worker has in flight (received, response not yet sent).
pub type InFlight = Arc<AtomicI64>;

impl RequestSeries {
    pub fn method(&self) -> &'static str {
        self.method
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Counts one request that took `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl ThreadRequests {
    /// How many series this thread keeps for the scrape.
    pub fn len(&self) -> usize {
        lock(&self.series).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This thread's series of these labels, made on first use. A linear search under a lock:
    /// callers keep the series they use (`observe` does, per thread), so this runs once per
    /// label set, and the labels (route templates, methods, statuses) are few.
    pub fn series(&self, method: &'static str, path: &str, status: u16) -> Arc<RequestSeries> {
        let mut all = lock(&self.series);
        if let Some(found) = all
            .iter()
            .find(|s| s.method == method && s.status == status && *s.path == *path)
        {
            return found.clone();
        }
        let series = Arc::new(RequestSeries {
            method,
            path: path.into(),
            status,
            buckets: Default::default(),
            nanos: AtomicU64::new(0),
        });
        all.push(series.clone());
        series
    }
}

impl HttpMetrics {
    pub(super) fn new() -> Self {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
                Default::default(),
            )
            .expect("valid metric")
        };
        let cells = Cells {
            threads: Mutex::default(),
            in_flight: Mutex::default(),
            descs: vec![
                desc(
                    REQUESTS,
                    "HTTP requests handled",
                    &["method", "path", "status"],
                ),
                desc(
                    DURATION,
                    "HTTP request latency from first byte read to response ready",
                    &["method", "path"],
                ),
                desc(
                    IN_FLIGHT,
                    "HTTP requests received whose response has not been sent yet",
                    &[],
                ),
            ],
        };
        HttpMetrics {
            cells: Arc::new(cells),
        }
    }

    /// Cells for a thread that handles requests.
    pub fn thread(&self) -> Arc<ThreadRequests> {
        let thread = Arc::new(ThreadRequests::default());
        lock(&self.cells.threads).push(thread.clone());
        thread
    }

    /// An in-flight cell for a server worker.
    pub fn in_flight(&self) -> InFlight {
        let cell = InFlight::default();
        lock(&self.cells.in_flight).push(cell.clone());
        cell
    }

    /// Every thread's counts, summed by label values.
    fn requests(&self) -> Totals {
        let mut totals = Totals::default();
        for thread in lock(&self.cells.threads).iter() {
            for s in lock(&thread.series).iter() {
                *totals
                    .requests
                    .entry((s.method, s.path.to_string(), s.status))
                    .or_default() += s.count();
                let (buckets, nanos) = totals
                    .durations
                    .entry((s.method, s.path.to_string()))
                    .or_default();
                for (sum, b) in buckets.iter_mut().zip(&s.buckets) {
                    *sum += b.load(Ordering::Relaxed);
                }
                *nanos += s.nanos.load(Ordering::Relaxed);
            }
        }
        totals
    }
}

#[derive(Default)]
struct Totals {
    requests: BTreeMap<(&'static str, String, u16), u64>,
    durations: BTreeMap<(&'static str, String), ([u64; LATENCY_BUCKETS.len() + 1], u64)>,
}

impl Collector for HttpMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.cells.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let totals = self.requests();
        let requests = totals
            .requests
            .into_iter()
            .map(|((method, path, status), n)| {
                let mut counter = proto::Counter::default();
                counter.set_value(n as f64);
                let mut m = metric(&[
                    ("method", method),
                    ("path", &path),
                    ("status", &status.to_string()),
                ]);
                m.set_counter(counter);
                m
            })
            .collect();
        let durations = totals
            .durations
            .into_iter()
            .map(|((method, path), (buckets, nanos))| {
                let mut histogram = proto::Histogram::default();
                let mut cumulative = 0;
                let mut bounds = Vec::with_capacity(LATENCY_BUCKETS.len());
                for (bound, n) in LATENCY_BUCKETS.iter().zip(buckets) {
                    cumulative += n;
                    let mut bucket = proto::Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(cumulative);
                    bounds.push(bucket);
                }
                histogram.set_bucket(bounds);
                histogram.set_sample_count(buckets.iter().sum());
                histogram.set_sample_sum(nanos as f64 / 1e9);
                let mut m = metric(&[("method", method), ("path", &path)]);
                m.set_histogram(histogram);
                m
            })
            .collect();
        let mut gauge = proto::Gauge::default();
        let in_flight: i64 = lock(&self.cells.in_flight)
            .iter()
            .map(|cell| cell.load(Ordering::Relaxed))
            .sum();
        gauge.set_value(in_flight as f64);
        let mut in_flight = metric(&[]);
        in_flight.set_gauge(gauge);
        vec![
            family(&self.cells.descs[0], MetricType::COUNTER, requests),
            family(&self.cells.descs[1], MetricType::HISTOGRAM, durations),
            family(&self.cells.descs[2], MetricType::GAUGE, vec![in_flight]),
        ]
    }
}

fn metric(labels: &[(&str, &str)]) -> proto::Metric {
    proto::Metric::from_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect(),
    )
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(metrics: HttpMetrics) -> String {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(metrics)).unwrap();
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Two threads' counts of the same series add up, latencies land in their buckets and the
    /// sum, statuses split the counter but not the histogram, and in-flight cells add up.
    #[test]
    fn a_scrape_adds_up_every_threads_cells() {
        let metrics = HttpMetrics::new();
        let (a, b) = (metrics.thread(), metrics.thread());
        a.series("GET", "/v1/x", 200)
            .observe(Duration::from_micros(300));
        b.series("GET", "/v1/x", 200)
            .observe(Duration::from_millis(3));
        // Asked again, a thread hands out the same series.
        b.series("GET", "/v1/x", 200)
            .observe(Duration::from_secs(20));
        assert_eq!(lock(&b.series).len(), 1);
        b.series("GET", "/v1/x", 404)
            .observe(Duration::from_micros(700));
        let (w1, w2) = (metrics.in_flight(), metrics.in_flight());
        w1.fetch_add(2, Ordering::Relaxed);
        w2.fetch_add(1, Ordering::Relaxed);
        let text = render(metrics);
        for line in [
            r#"cybernetic_requests_total{method="GET",path="/v1/x",status="200"} 3"#,
            r#"cybernetic_requests_total{method="GET",path="/v1/x",status="404"} 1"#,
            r#"cybernetic_request_duration_seconds_bucket{method="GET",path="/v1/x",le="0.0005"} 1"#,
            r#"cybernetic_request_duration_seconds_bucket{method="GET",path="/v1/x",le="0.001"} 2"#,
            r#"cybernetic_request_duration_seconds_bucket{method="GET",path="/v1/x",le="0.005"} 3"#,
            r#"cybernetic_request_duration_seconds_bucket{method="GET",path="/v1/x",le="10"} 3"#,
            r#"cybernetic_request_duration_seconds_bucket{method="GET",path="/v1/x",le="+Inf"} 4"#,
            r#"cybernetic_request_duration_seconds_count{method="GET",path="/v1/x"} 4"#,
            r#"cybernetic_request_duration_seconds_sum{method="GET",path="/v1/x"} 20.004"#,
            "cybernetic_http_requests_in_flight 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
