//! Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! Request metrics (HTTP, gRPC, rate-limit rejections) are counted as they happen in a
//! [`prometheus::Registry`]; the actors' and the data layer's figures are read when
//! scraped ([`Scrape`]) and written alongside, so they never drift from the source.

use std::fmt::Write as _;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::{
    actors::{events::EventStats, hub::HubStats},
    db::{DbStatsSnapshot, PoolStatus},
};

/// Latency buckets in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters and histograms updated by the front doors. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    /// `switchboard_http_requests_total{method,route,status}`.
    pub http_requests: IntCounterVec,
    /// `switchboard_http_request_duration_seconds{method,route}`.
    pub http_duration: HistogramVec,
    /// `switchboard_grpc_calls_total{method,code}`.
    pub grpc_calls: IntCounterVec,
    /// `switchboard_grpc_call_duration_seconds{method}`.
    pub grpc_duration: HistogramVec,
    /// `switchboard_rate_limit_rejections_total{protocol}`.
    pub rate_limited: IntCounterVec,
    /// This node's id in a cluster: every sample is labelled `node="…"`.
    node: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
            registry
                .register(Box::new(vec.clone()))
                .expect("registered once");
            vec
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
            let vec = HistogramVec::new(opts, labels).expect("a valid metric");
            registry
                .register(Box::new(vec.clone()))
                .expect("registered once");
            vec
        };
        Self {
            http_requests: counter(
                "switchboard_http_requests_total",
                "HTTP requests answered, by method, route pattern and status code.",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                "switchboard_http_request_duration_seconds",
                "HTTP request handling time in seconds.",
                &["method", "route"],
            ),
            grpc_calls: counter(
                "switchboard_grpc_calls_total",
                "gRPC calls finished, by method and status code.",
                &["method", "code"],
            ),
            grpc_duration: histogram(
                "switchboard_grpc_call_duration_seconds",
                "gRPC call time in seconds (to the last message for streams).",
                &["method"],
            ),
            rate_limited: counter(
                "switchboard_rate_limit_rejections_total",
                "Requests refused by the rate limiter.",
                &["protocol"],
            ),
            registry,
            node: None,
        }
        .with_process_and_build_info()
    }

    /// Labels every sample with `node="<node>"` (cluster mode), so figures from many
    /// nodes aggregate (`sum by (node)`) without relabelling in Prometheus.
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// The conventional `process_*` figures (CPU seconds, resident and virtual memory,
    /// open and max file descriptors, start time) and `switchboard_build_info`.
    fn with_process_and_build_info(self) -> Self {
        #[cfg(target_os = "linux")]
        self.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once");
        let build = prometheus::IntGaugeVec::new(
            Opts::new(
                "switchboard_build_info",
                "Always 1; the labels say which build is running.",
            ),
            &["version", "profile", "target"],
        )
        .expect("a valid metric");
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), profile, &target])
            .set(1);
        self.registry
            .register(Box::new(build))
            .expect("registered once");
        self
    }

    /// The full exposition: counted metrics, then the scraped figures.
    pub fn render(&self, scrape: &Scrape) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        let mut text = String::from_utf8(out).expect("the encoder writes UTF-8");
        scrape.write(&mut text);
        match &self.node {
            Some(node) => label_node(&text, node),
            None => text,
        }
    }
}

/// Adds `node="<node>"` to every sample line of an exposition.
fn label_node(text: &str, node: &str) -> String {
    let label = format!("node=\"{node}\"");
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some(brace) = line.find('{') {
            let (name, rest) = line.split_at(brace + 1);
            let _ = write!(out, "{name}{label}");
            if !rest.starts_with('}') {
                out.push(',');
            }
            out.push_str(rest);
        } else if let Some(space) = line.find(' ') {
            let (name, rest) = line.split_at(space);
            let _ = write!(out, "{name}{{{label}}}{rest}");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Figures read from the actors and the data layer at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The chat hub's counters, when it answered.
    pub hub: Option<HubStats>,
    /// The events actor's counters, when it answered.
    pub events: Option<EventStats>,
    /// Query statistics.
    pub db: Option<DbStatsSnapshot>,
    /// Pool occupancy.
    pub pool: Option<PoolStatus>,
    /// Rate limiter keys tracked.
    pub rate_limit_keys: Option<usize>,
    /// The database circuit breaker.
    pub breaker: Option<crate::actors::breaker::BreakerReport>,
    /// The history writer's counters (when history is on and it answered).
    pub history: Option<crate::actors::history::HistoryStats>,
    /// The transaction coordinator's counters (when the data is sharded).
    pub tx: Option<crate::actors::tx::TxStats>,
    /// The saga supervisor's counters.
    pub sagas: Option<crate::actors::saga::SagaStats>,
    /// The user cache's counters (when it is on and answered).
    pub user_cache: Option<crate::actors::user_cache::CacheStats>,
    /// The broker's view (cluster mode): every figure is labelled with its `node`.
    pub broker: Option<crate::actors::broker::BrokerStats>,
    /// The rate limiter's cluster counters.
    pub rate_limit: Option<crate::actors::rate_limit::LimiterStats>,
}

fn write_cache(out: &mut String, cache: &crate::actors::user_cache::CacheStats) {
    metric(
        out,
        "switchboard_user_cache_hits_total",
        "counter",
        "GetUser / GraphQL user lookups answered from the user cache.",
        cache.hits,
    );
    metric(
        out,
        "switchboard_user_cache_misses_total",
        "counter",
        "User lookups that read the database.",
        cache.misses,
    );
    let lookups = cache.hits + cache.misses;
    metric(
        out,
        "switchboard_user_cache_hit_ratio",
        "gauge",
        "Hits over lookups since start (0 before the first lookup).",
        if lookups == 0 {
            0.0
        } else {
            cache.hits as f64 / lookups as f64
        },
    );
    metric(
        out,
        "switchboard_user_cache_size",
        "gauge",
        "Users held by the user cache.",
        cache.size,
    );
    metric(
        out,
        "switchboard_user_cache_capacity",
        "gauge",
        "Most users the user cache holds.",
        cache.capacity,
    );
    metric(
        out,
        "switchboard_user_cache_invalidations_total",
        "counter",
        "Cached users forgotten because they changed (on any node).",
        cache.invalidations,
    );
    metric(
        out,
        "switchboard_user_cache_evictions_total",
        "counter",
        "Cached users pushed out to make room.",
        cache.evictions,
    );
    metric(
        out,
        "switchboard_user_cache_serving",
        "gauge",
        "1 while the user cache serves; 0 while the cluster link is down.",
        u8::from(cache.serving),
    );
}

fn write_broker(out: &mut String, broker: &crate::actors::broker::BrokerStats) {
    metric(
        out,
        "switchboard_cluster_connected",
        "gauge",
        "1 while this node's last heartbeat reached Redis.",
        u8::from(broker.connected),
    );
    metric(
        out,
        "switchboard_cluster_nodes",
        "gauge",
        "Nodes alive as this node sees them (itself included).",
        broker.nodes.len(),
    );
    metric(
        out,
        "switchboard_cluster_messages_published_total",
        "counter",
        "Messages this node published to Redis.",
        broker.published,
    );
    metric(
        out,
        "switchboard_cluster_messages_received_total",
        "counter",
        "Messages this node received from Redis.",
        broker.received,
    );
    metric(
        out,
        "switchboard_cluster_messages_dropped_total",
        "counter",
        "Messages from Redis dropped because this node fell too far behind.",
        broker.dropped,
    );
    metric(
        out,
        "switchboard_cluster_disconnections_total",
        "counter",
        "Times the subscription connection to Redis was lost.",
        broker.disconnections,
    );
    metric(
        out,
        "switchboard_cluster_invalidation_timeouts_total",
        "counter",
        "User updates and deletions answered before every node confirmed its cache \
         forgot the user.",
        broker.invalidation_timeouts,
    );
}

/// Writes one labelled sample per `(labels, value)` under a single HELP/TYPE header.
fn labelled(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

impl Scrape {
    fn write(&self, out: &mut String) {
        metric(
            out,
            "switchboard_panics_total",
            "counter",
            "Panics caught by the process's panic hook (each also logged at error level).",
            crate::telemetry::panics(),
        );
        if let Some(hub) = &self.hub {
            metric(
                out,
                "switchboard_ws_sessions",
                "gauge",
                "Connected WebSocket sessions.",
                hub.sessions,
            );
            metric(
                out,
                "switchboard_ws_users",
                "gauge",
                "Distinct connected chat users.",
                hub.users,
            );
            metric(
                out,
                "switchboard_chat_rooms",
                "gauge",
                "Rooms with at least one member.",
                hub.rooms,
            );
            metric(
                out,
                "switchboard_chat_messages_in_total",
                "counter",
                "Chat messages routed by the hub.",
                hub.messages_in,
            );
            metric(
                out,
                "switchboard_chat_frames_out_total",
                "counter",
                "Frames handed to sessions.",
                hub.frames_out,
            );
            metric(
                out,
                "switchboard_chat_slow_consumer_disconnects_total",
                "counter",
                "Sessions closed because their outbound queue overflowed.",
                hub.slow_consumer_disconnects,
            );
            metric(
                out,
                "switchboard_chat_overloaded",
                "gauge",
                "1 while publishes are refused for overload (a room mostly behind, or the hub lagging).",
                u8::from(hub.overloaded_rooms > 0 || hub.lagging),
            );
            metric(
                out,
                "switchboard_chat_overloaded_rooms",
                "gauge",
                "Rooms refusing publishes because most of their members are behind.",
                hub.overloaded_rooms,
            );
            metric(
                out,
                "switchboard_chat_publishes_refused_total",
                "counter",
                "Publishes refused for overload (answered with an `overloaded` error).",
                hub.publishes_refused,
            );
            metric(
                out,
                "switchboard_ws_refused_sessions_total",
                "counter",
                "Sessions refused at connect.",
                hub.refused_sessions,
            );
        }
        if let Some(history) = &self.history {
            metric(
                out,
                "switchboard_history_pending",
                "gauge",
                "Chat messages waiting to be written to the history.",
                history.pending,
            );
            metric(
                out,
                "switchboard_history_written_total",
                "counter",
                "Chat messages written to the history.",
                history.written,
            );
            metric(
                out,
                "switchboard_history_failed_writes_total",
                "counter",
                "History batches whose write failed (and were retried).",
                history.failed_writes,
            );
            metric(
                out,
                "switchboard_history_rejected_total",
                "counter",
                "History rows the database refused for their data (dropped).",
                history.rejected,
            );
            metric(
                out,
                "switchboard_history_dropped_total",
                "counter",
                "Chat messages not stored because too many were waiting.",
                history.dropped,
            );
        }
        if let Some(tx) = &self.tx {
            let outcomes = [
                ("one_phase", tx.one_phase),
                ("committed", tx.committed),
                ("aborted", tx.aborted),
                ("unknown", tx.unknown),
            ];
            labelled(
                out,
                "switchboard_tx_total",
                "counter",
                "Writes through the transaction coordinator, by outcome (one_phase: on one shard).",
                &outcomes
                    .iter()
                    .map(|(o, n)| (format!("outcome=\"{o}\""), n.to_string()))
                    .collect::<Vec<_>>(),
            );
            let phases = [
                ("prepare", tx.prepare_us),
                ("decide", tx.decide_us),
                ("commit", tx.commit_us),
            ];
            labelled(
                out,
                "switchboard_tx_phase_seconds_total",
                "counter",
                "Time distributed transactions spent in each phase.",
                &phases
                    .iter()
                    .map(|(p, us)| (format!("phase=\"{p}\""), (*us as f64 / 1e6).to_string()))
                    .collect::<Vec<_>>(),
            );
            metric(
                out,
                "switchboard_tx_in_flight",
                "gauge",
                "Distributed transactions running now.",
                tx.in_flight,
            );
            labelled(
                out,
                "switchboard_tx_recoveries_total",
                "counter",
                "Prepared transactions resolved by recovery, by action.",
                &[
                    (
                        "action=\"commit\"".to_owned(),
                        tx.recovered_commits.to_string(),
                    ),
                    (
                        "action=\"rollback\"".to_owned(),
                        tx.recovered_rollbacks.to_string(),
                    ),
                ],
            );
            labelled(
                out,
                "switchboard_tx_in_doubt",
                "gauge",
                "This deployment's prepared transactions on each shard, as recovery last saw them.",
                &tx.in_doubt
                    .iter()
                    .map(|d| (format!("shard=\"{}\"", d.shard), d.prepared.to_string()))
                    .collect::<Vec<_>>(),
            );
            labelled(
                out,
                "switchboard_tx_oldest_prepared_seconds",
                "gauge",
                "Age of the oldest prepared transaction on each shard.",
                &tx.in_doubt
                    .iter()
                    .map(|d| {
                        (
                            format!("shard=\"{}\"", d.shard),
                            d.oldest_seconds.to_string(),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(sagas) = &self.sagas {
            let mut samples = Vec::new();
            for (outcome, counts) in [
                ("started", &sagas.started),
                ("completed", &sagas.completed),
                ("compensated", &sagas.compensated),
            ] {
                let mut counts: Vec<_> = counts.iter().collect();
                counts.sort();
                for (saga_type, n) in counts {
                    samples.push((
                        format!("type=\"{saga_type}\",outcome=\"{outcome}\""),
                        n.to_string(),
                    ));
                }
            }
            labelled(
                out,
                "switchboard_sagas_total",
                "counter",
                "Saga runs started (or resumed) here and how they ended, by type.",
                &samples,
            );
            metric(
                out,
                "switchboard_sagas_running",
                "gauge",
                "Saga runs this server holds now.",
                sagas.running,
            );
            metric(
                out,
                "switchboard_sagas_stuck",
                "gauge",
                "Saga runs held here that kept failing past the limit (still retried).",
                sagas.stuck,
            );
            metric(
                out,
                "switchboard_saga_step_retries_total",
                "counter",
                "Failed attempts of saga steps and compensations.",
                sagas.step_retries,
            );
            metric(
                out,
                "switchboard_saga_compensations_total",
                "counter",
                "Compensation attempts of saga steps.",
                sagas.compensations,
            );
            metric(
                out,
                "switchboard_sagas_resumed_total",
                "counter",
                "Saga runs resumed from the log (after a crash or an expired lease).",
                sagas.resumed,
            );
        }
        if let Some(cache) = &self.user_cache {
            write_cache(out, cache);
        }
        if let Some(broker) = &self.broker {
            write_broker(out, broker);
        }
        if let Some(limits) = &self.rate_limit {
            metric(
                out,
                "switchboard_rate_limit_fallback_decisions_total",
                "counter",
                "Cluster-wide rate-limit decisions taken by the node-local limiter because \
                 Redis did not answer.",
                limits.fallback_decisions,
            );
            metric(
                out,
                "switchboard_rate_limit_cluster_decisions_total",
                "counter",
                "Rate-limit decisions taken in Redis (cluster-wide).",
                limits.cluster_decisions,
            );
        }
        if let Some(events) = &self.events {
            labelled(
                out,
                "switchboard_user_changes_total",
                "counter",
                "User changes committed through this node, by kind.",
                &[
                    (
                        "change=\"created\"".into(),
                        events.users_created.to_string(),
                    ),
                    (
                        "change=\"updated\"".into(),
                        events.users_updated.to_string(),
                    ),
                    (
                        "change=\"deleted\"".into(),
                        events.users_deleted.to_string(),
                    ),
                ],
            );
            metric(
                out,
                "switchboard_user_changes_received_total",
                "counter",
                "User changes relayed from other cluster nodes.",
                events.remote_changes,
            );
            metric(
                out,
                "switchboard_event_interruptions_total",
                "counter",
                "User subscriptions ended because the cluster link was lost.",
                events.interrupted,
            );
            metric(
                out,
                "switchboard_event_subscribers",
                "gauge",
                "Live user and post subscriptions.",
                events.subscribers,
            );
            metric(
                out,
                "switchboard_event_overflows_total",
                "counter",
                "Subscriptions ended because the subscriber fell behind.",
                events.overflows,
            );
        }
        if let Some(db) = &self.db {
            metric(
                out,
                "switchboard_db_queries_total",
                "counter",
                "SQL statements run.",
                db.total_queries,
            );
            metric(
                out,
                "switchboard_db_query_errors_total",
                "counter",
                "SQL statements that failed.",
                db.failed_queries,
            );
            metric(
                out,
                "switchboard_db_slow_queries_total",
                "counter",
                "SQL statements at or over the slow-query threshold.",
                db.slow_queries,
            );
            let _ = writeln!(
                out,
                "# HELP switchboard_db_query_duration_seconds SQL statement time in seconds.\n\
                 # TYPE switchboard_db_query_duration_seconds histogram"
            );
            let mut cumulative = 0;
            for bucket in &db.latency_histogram {
                cumulative += bucket.count;
                let le = bucket
                    .le_ms
                    .map_or_else(|| "+Inf".to_owned(), |ms| (ms as f64 / 1000.0).to_string());
                let _ = writeln!(
                    out,
                    "switchboard_db_query_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = db.mean_latency_ms * cumulative as f64 / 1000.0;
            let _ = writeln!(out, "switchboard_db_query_duration_seconds_sum {sum}");
            let _ = writeln!(
                out,
                "switchboard_db_query_duration_seconds_count {cumulative}"
            );
        }
        if let Some(pool) = &self.pool {
            metric(
                out,
                "switchboard_db_pool_connections",
                "gauge",
                "Open pooled connections.",
                pool.open,
            );
            metric(
                out,
                "switchboard_db_pool_in_use",
                "gauge",
                "Pooled connections lent out.",
                pool.in_use,
            );
            metric(
                out,
                "switchboard_db_pool_max_connections",
                "gauge",
                "Configured pool size.",
                pool.max_connections,
            );
            metric(
                out,
                "switchboard_db_pool_timeouts_total",
                "counter",
                "Waits for a pooled connection that timed out.",
                pool.timed_out,
            );
        }
        if let Some(breaker) = &self.breaker {
            use crate::actors::breaker::BreakerState;
            let _ = writeln!(
                out,
                "# HELP switchboard_circuit_breaker_state Database circuit breaker state (1 for the current one).\n\
                 # TYPE switchboard_circuit_breaker_state gauge"
            );
            for (name, state) in [
                ("closed", BreakerState::Closed),
                ("open", BreakerState::Open),
                ("half_open", BreakerState::HalfOpen),
            ] {
                let value = u8::from(breaker.state == state);
                let _ = writeln!(
                    out,
                    "switchboard_circuit_breaker_state{{state=\"{name}\"}} {value}"
                );
            }
            metric(
                out,
                "switchboard_circuit_breaker_transitions_total",
                "counter",
                "Circuit breaker state changes.",
                breaker.transitions,
            );
        }
        if let Some(keys) = self.rate_limit_keys {
            metric(
                out,
                "switchboard_rate_limit_keys",
                "gauge",
                "Client keys the rate limiter tracks.",
                keys,
            );
        }
    }
}
