//! Prometheus metrics (CONTRACT §5). One registry per process; every metric keeps the plan's
//! `cybernetic_` prefix, and every label has a bounded set of values, whatever tenants send:
//! - `method`: the usual methods, anything else `OTHER`; `status`: the status code;
//!   `path`: the matched route template, `unmatched` for every path no route matches
//!   (`edge::gateway::observe`).
//! - `topic`: the platform's own topics (`events::topic::KNOWN_TOPICS`), every topic a tenant
//!   invents `other` ([`TopicCounter`] takes only static labels).
//! - `queue`, `worker`: from the workers' own declarations (a policy may enqueue only a
//!   registered worker, and the worker decides the queue); `state`: the job states.
//! - `backend`, `op`, `result`, `direction`: fixed names in the storage adapters.

pub mod http;

use std::sync::LazyLock;
use std::time::Instant;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds, from sub-millisecond (health, cached lookups) to the 10 s tail.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Job durations and queue times: from no-op jobs to the 10-minute tail.
const JOB_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// A counter by event topic whose label is bounded: it takes only `&'static str` labels, and
/// a topic a tenant invents is a runtime string, so it cannot become a label by accident.
/// Callers pass `events::topic::metric_label(topic)`: the topic itself when the platform knows
/// it, else `other`.
#[derive(Clone)]
pub struct TopicCounter(IntCounterVec);

impl TopicCounter {
    fn new(name: &str, help: &str) -> Self {
        Self(IntCounterVec::new(Opts::new(name, help), &["topic"]).expect("valid metric"))
    }

    /// The counter of one known topic (or of `other`).
    pub fn topic(&self, label: &'static str) -> prometheus::IntCounter {
        self.0.with_label_values(&[label])
    }
}

/// The `channel` label of the notification metrics: every channel `notification_sender` has.
pub const NOTIFICATION_CHANNELS: &[&str] = &["telegram", "webhook"];
/// The `result` label of `cybernetic_notifications_total`.
pub const NOTIFICATION_RESULTS: &[&str] = &["sent", "retry", "failed", "throttled"];

pub struct Metrics {
    pub registry: Registry,
    /// `cybernetic_requests_total{method,path,status}`,
    /// `cybernetic_request_duration_seconds{method,path}` and
    /// `cybernetic_http_requests_in_flight`, counted per thread ([`http`]).
    pub http: http::HttpMetrics,
    /// `cybernetic_db_pool_connections{state="idle|in_use"}`
    pub db_pool_connections: IntGaugeVec,
    /// `cybernetic_db_pool_max_connections`
    pub db_pool_max: IntGauge,
    /// `cybernetic_db_pool_waiting`: callers waiting for a connection.
    pub db_pool_waiting: IntGauge,
    /// `cybernetic_db_query_duration_seconds{result}`
    pub db_query_duration: HistogramVec,
    /// `cybernetic_jobs_total{queue,worker,state}`: finished attempts by the state they led to
    /// (completed, retryable, discarded, cancelled, snoozed).
    pub jobs: IntCounterVec,
    /// `cybernetic_job_duration_seconds{queue,worker}`: time one attempt ran.
    pub job_duration: HistogramVec,
    /// `cybernetic_job_queue_time_seconds{queue,worker}`: from scheduled to claimed.
    pub job_queue_time: HistogramVec,
    /// `cybernetic_job_queue_depth{queue,state}`: jobs waiting or running, sampled.
    pub job_queue_depth: IntGaugeVec,
    /// `cybernetic_sse_connections`: open SSE streams on this instance.
    pub sse_connections: IntGauge,
    /// `cybernetic_notifications_total{channel,result}`: delivery attempts by channel and result
    /// (labels from [`NOTIFICATION_CHANNELS`] and [`NOTIFICATION_RESULTS`] only).
    pub notifications: IntCounterVec,
    /// `cybernetic_notification_delivery_seconds{channel}`: time one delivery request took.
    pub notification_delivery: HistogramVec,
    /// `cybernetic_events_recorded_total{topic}`: committed events the relay sequenced.
    pub events_recorded: TopicCounter,
    /// `cybernetic_events_published_total{topic}`: events confirmed published (broker or in-process).
    pub events_published: TopicCounter,
    /// `cybernetic_events_delivered_total{topic}`: event frames written to SSE clients.
    pub events_delivered: TopicCounter,
    /// `cybernetic_event_relay_lag_seconds`: from the event's commit to its publication.
    pub event_relay_lag: prometheus::Histogram,
    /// `cybernetic_event_relay_leader`: 1 while this process's relay leads.
    pub event_relay_leader: IntGauge,
    /// `cybernetic_storage_operations_total{backend,op,result}`
    pub storage_operations: IntCounterVec,
    /// `cybernetic_storage_operation_duration_seconds{backend,op}`
    pub storage_duration: HistogramVec,
    /// `cybernetic_storage_bytes_total{backend,direction="in|out"}`: bytes written to and
    /// read from the backend.
    pub storage_bytes: IntCounterVec,
    /// `cybernetic_rate_limiter_errors_total`: limiter calls that failed open (Redis trouble).
    pub rate_limiter_errors: prometheus::IntCounter,
    /// `cybernetic_telegram_updates_total{kind,result}`: webhook updates by Bot API update kind
    /// ([`TELEGRAM_UPDATE_KINDS`]) and what became of them ([`TELEGRAM_UPDATE_RESULTS`]).
    pub telegram_updates: IntCounterVec,
}

/// The Bot API's update kinds (the optional field an `Update` carries besides `update_id`).
/// An update with none of them counts as `other`, so a sender cannot add series.
pub const TELEGRAM_UPDATE_KINDS: &[&str] = &[
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
    "other",
];

/// What the webhook did with an update: `processed` (a command job was queued), `duplicate`
/// (its `update_id` was seen before), `ignored` (not a command, or one for another bot),
/// `rate_limited` (its chat is over the command rate), `unauthorized` (wrong secret) and
/// `bad_request` (not an Update). The last two are counted as kind `other`: their body is not
/// trusted enough to be classified.
pub const TELEGRAM_UPDATE_RESULTS: &[&str] = &[
    "processed",
    "duplicate",
    "ignored",
    "rate_limited",
    "unauthorized",
    "bad_request",
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let http = http::HttpMetrics::new();
        let db_pool_connections = IntGaugeVec::new(
            Opts::new(
                "cybernetic_db_pool_connections",
                "Open database connections in this process's pool, by state",
            ),
            &["state"],
        )
        .expect("valid metric");
        let db_pool_max = IntGauge::new(
            "cybernetic_db_pool_max_connections",
            "Largest number of connections the pool may open",
        )
        .expect("valid metric");
        let db_pool_waiting = IntGauge::new(
            "cybernetic_db_pool_waiting",
            "Callers waiting for a database connection",
        )
        .expect("valid metric");
        let db_query_duration = HistogramVec::new(
            HistogramOpts::new(
                "cybernetic_db_query_duration_seconds",
                "Database statement latency",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["result"],
        )
        .expect("valid metric");
        let jobs = IntCounterVec::new(
            Opts::new(
                "cybernetic_jobs_total",
                "Finished job attempts by the state they led to",
            ),
            &["queue", "worker", "state"],
        )
        .expect("valid metric");
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                "cybernetic_job_duration_seconds",
                "Time one job attempt ran",
            )
            .buckets(JOB_BUCKETS.to_vec()),
            &["queue", "worker"],
        )
        .expect("valid metric");
        let job_queue_time = HistogramVec::new(
            HistogramOpts::new(
                "cybernetic_job_queue_time_seconds",
                "Time from a job's scheduled time to its claim by a node",
            )
            .buckets(JOB_BUCKETS.to_vec()),
            &["queue", "worker"],
        )
        .expect("valid metric");
        let job_queue_depth = IntGaugeVec::new(
            Opts::new(
                "cybernetic_job_queue_depth",
                "Jobs waiting or running, by queue and state (sampled every few seconds)",
            ),
            &["queue", "state"],
        )
        .expect("valid metric");
        let sse_connections = IntGauge::new(
            "cybernetic_sse_connections",
            "Open SSE event streams on this instance",
        )
        .expect("valid metric");
        let topic_counter = TopicCounter::new;
        let events_recorded = topic_counter(
            "cybernetic_events_recorded_total",
            "Committed events sequenced by the relay",
        );
        let events_published = topic_counter(
            "cybernetic_events_published_total",
            "Events confirmed published by the relay",
        );
        let events_delivered = topic_counter(
            "cybernetic_events_delivered_total",
            "Event frames written to SSE clients of this instance",
        );
        let event_relay_lag = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "cybernetic_event_relay_lag_seconds",
                "Seconds from an event's commit to its publication",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let event_relay_leader = IntGauge::new(
            "cybernetic_event_relay_leader",
            "1 while this process runs the leading event relay",
        )
        .expect("valid metric");
        let storage_operations = IntCounterVec::new(
            Opts::new(
                "cybernetic_storage_operations_total",
                "Storage backend operations, by backend, operation and result",
            ),
            &["backend", "op", "result"],
        )
        .expect("valid metric");
        let storage_duration = HistogramVec::new(
            HistogramOpts::new(
                "cybernetic_storage_operation_duration_seconds",
                "Storage backend operation latency (a streamed put or get until its last byte)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["backend", "op"],
        )
        .expect("valid metric");
        let storage_bytes = IntCounterVec::new(
            Opts::new(
                "cybernetic_storage_bytes_total",
                "Bytes written to (in) and read from (out) the storage backend",
            ),
            &["backend", "direction"],
        )
        .expect("valid metric");
        let notifications = IntCounterVec::new(
            Opts::new(
                "cybernetic_notifications_total",
                "Notification delivery attempts, by channel and result",
            ),
            &["channel", "result"],
        )
        .expect("valid metric");
        let notification_delivery = HistogramVec::new(
            HistogramOpts::new(
                "cybernetic_notification_delivery_seconds",
                "Time one notification delivery request took",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["channel"],
        )
        .expect("valid metric");
        // Every series exists from the start, so dashboards show 0 before the first send.
        for channel in NOTIFICATION_CHANNELS {
            for result in NOTIFICATION_RESULTS {
                notifications.with_label_values(&[channel, result]);
            }
            notification_delivery.with_label_values(&[channel]);
        }
        let rate_limiter_errors = prometheus::IntCounter::new(
            "cybernetic_rate_limiter_errors_total",
            "Rate-limit checks that failed open because Redis could not be reached",
        )
        .expect("valid metric");
        let telegram_updates = IntCounterVec::new(
            Opts::new(
                "cybernetic_telegram_updates_total",
                "Telegram webhook updates, by update kind and result",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        for kind in TELEGRAM_UPDATE_KINDS {
            for result in TELEGRAM_UPDATE_RESULTS {
                telegram_updates.with_label_values(&[kind, result]);
            }
        }
        let build_info = IntGaugeVec::new(
            Opts::new(
                "cybernetic_build_info",
                "Build of the running binary (always 1)",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(http.clone()),
            Box::new(db_pool_connections.clone()),
            Box::new(db_pool_max.clone()),
            Box::new(db_pool_waiting.clone()),
            Box::new(db_query_duration.clone()),
            Box::new(jobs.clone()),
            Box::new(job_duration.clone()),
            Box::new(job_queue_time.clone()),
            Box::new(job_queue_depth.clone()),
            Box::new(sse_connections.clone()),
            Box::new(events_recorded.0.clone()),
            Box::new(events_published.0.clone()),
            Box::new(events_delivered.0.clone()),
            Box::new(event_relay_lag.clone()),
            Box::new(event_relay_leader.clone()),
            Box::new(storage_operations.clone()),
            Box::new(storage_duration.clone()),
            Box::new(storage_bytes.clone()),
            Box::new(rate_limiter_errors.clone()),
            Box::new(telegram_updates.clone()),
            Box::new(notifications.clone()),
            Box::new(notification_delivery.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            http,
            db_pool_connections,
            db_pool_max,
            db_pool_waiting,
            db_query_duration,
            jobs,
            job_duration,
            job_queue_time,
            job_queue_depth,
            sse_connections,
            events_recorded,
            events_published,
            events_delivered,
            event_relay_lag,
            event_relay_leader,
            storage_operations,
            storage_duration,
            storage_bytes,
            rate_limiter_errors,
            telegram_updates,
            notifications,
            notification_delivery,
        }
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Times every statement on a database connection (diesel's instrumentation hook). A connection
/// runs one statement at a time, so one start instant suffices.
#[derive(Default)]
pub struct QueryTimer {
    started: Option<Instant>,
}

impl Instrumentation for QueryTimer {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { .. } => self.started = Some(Instant::now()),
            InstrumentationEvent::FinishQuery { error, .. } => {
                if let Some(started) = self.started.take() {
                    let result = if error.is_some() { "error" } else { "ok" };
                    METRICS
                        .db_query_duration
                        .with_label_values(&[result])
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }
}
