//! The admin listener: Prometheus `/metrics`, `/healthz` (the process is alive), `/readyz`
//! (config loaded, spool open, intake accepting) and `/status` (a JSON summary per destination,
//! read by `irisd status`).
//!
//! Metrics are not kept twice: a prometheus-client [`Collector`] reads the daemon's own atomic
//! counters, the spool's depth and the token caches at scrape time. Nothing here carries a
//! secret or a user id: labels are destination names, outcomes and status classes only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::{DestinationMetrics, STATUS_CLASSES};
use crate::oauth::TokenCache;
use crate::server::{error_response, json_response};
use crate::spool::Spool;

/// Latency histogram bounds, in seconds.
const LAG_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
];
const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What the admin endpoints read, per destination.
#[derive(Clone)]
pub struct Watched {
    pub name: String,
    /// `User_DPID`: the destination's device-ID type.
    pub user_dpid: String,
    pub metrics: Arc<DestinationMetrics>,
    pub tokens: Arc<TokenCache>,
    pub batch: Option<Arc<DestinationMetrics>>,
}

/// The admin endpoints' state.
pub struct Admin {
    destinations: Arc<arc_swap::ArcSwap<Vec<Watched>>>,
    pub spool: Arc<Spool>,
    /// False once the daemon stops accepting events.
    pub ready: AtomicBool,
    registry: Registry,
    kafka: Arc<std::sync::OnceLock<Arc<crate::kafka::KafkaShared>>>,
    /// Bearer token for /metrics and /status, when configured (probes stay open).
    auth: std::sync::OnceLock<secrecy::SecretString>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

/// Reads the live counters at scrape time.
struct Live {
    destinations: Arc<arc_swap::ArcSwap<Vec<Watched>>>,
    spool: Arc<Spool>,
    kafka: Arc<std::sync::OnceLock<Arc<crate::kafka::KafkaShared>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Vec<(&str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<N>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Vec<(&str, String)>, N)],
) -> Result<(), std::fmt::Error>
where
    N: Copy,
    ConstGauge<N>: EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Buckets (upper bound, count in it), sum and count of one histogram per label set.
type HistogramRow<'a> = (Vec<(&'a str, String)>, (Vec<(f64, u64)>, f64, u64));

fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[HistogramRow<'_>],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, (buckets, sum, count)) in rows {
        m.encode_family(labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                *sum, *count, buckets, None,
            )?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let destinations = self.destinations.load_full();
        let destinations = destinations.as_slice();
        let d = |w: &Watched| vec![("destination", w.name.clone())];
        let each = |f: &dyn Fn(&DestinationMetrics) -> u64| -> Vec<(Vec<(&str, String)>, u64)> {
            destinations.iter().map(|w| (d(w), f(&w.metrics))).collect()
        };
        counter(
            &mut enc,
            "irisd_events_accepted",
            "Events accepted by the intake.",
            &each(&|m| m.accepted_users.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "irisd_events_delivered",
            "Events the partner acknowledged.",
            &each(&|m| m.delivered_users.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "irisd_events_dead_lettered",
            "Events moved to the dead letters.",
            &each(&|m| m.dead_lettered_users.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "irisd_publish_retries",
            "Publish attempts that will be retried.",
            &each(&|m| m.retries.load(Relaxed)),
        )?;
        let mut classes = Vec::new();
        for w in destinations {
            for (i, class) in STATUS_CLASSES.iter().enumerate() {
                let mut l = d(w);
                l.push(("status_class", (*class).to_string()));
                classes.push((l, w.metrics.attempts_by_class[i].load(Relaxed)));
            }
        }
        counter(
            &mut enc,
            "irisd_publish_attempts",
            "Publish attempts by the answer's status class (none: no answer).",
            &classes,
        )?;
        let mut bytes = Vec::new();
        for w in destinations {
            for (stage, v) in [
                ("raw", &w.metrics.bytes_raw),
                ("sent", &w.metrics.bytes_sent),
            ] {
                let mut l = d(w);
                l.push(("stage", stage.to_string()));
                bytes.push((l, v.load(Relaxed)));
            }
        }
        counter(
            &mut enc,
            "irisd_publish_bytes",
            "Payload bytes before (raw) and after (sent) compression.",
            &bytes,
        )?;
        let mut fetches = Vec::new();
        for w in destinations {
            for (outcome, n) in w.metrics.snapshot().token_fetches {
                let mut l = d(w);
                l.push(("outcome", outcome));
                fetches.push((l, n));
            }
        }
        counter(
            &mut enc,
            "irisd_token_fetches",
            "Token requests by outcome (ok or the error).",
            &fetches,
        )?;
        let spool_events: Vec<_> = destinations
            .iter()
            .map(|w| (d(w), self.spool.events(&w.name) as i64))
            .collect();
        gauge(
            &mut enc,
            "irisd_spool_events",
            "Events waiting in the spool.",
            &spool_events,
        )?;
        let spool_bytes: Vec<_> = destinations
            .iter()
            .map(|w| (d(w), self.spool.bytes(&w.name).0 as i64))
            .collect();
        gauge(
            &mut enc,
            "irisd_spool_bytes",
            "Bytes of events waiting in the spool.",
            &spool_bytes,
        )?;
        let now = tokio::time::Instant::now();
        let mut age = Vec::new();
        let mut ttl = Vec::new();
        for w in destinations {
            if let Some(t) = w.tokens.peek() {
                age.push((d(w), now.duration_since(t.obtained_at).as_secs_f64()));
                if let Some(exp) = t.expires_at {
                    ttl.push((d(w), exp.saturating_duration_since(now).as_secs_f64()));
                }
            }
        }
        gauge(
            &mut enc,
            "irisd_token_age_seconds",
            "Age of the current access token.",
            &age,
        )?;
        gauge(
            &mut enc,
            "irisd_token_expires_in_seconds",
            "Time left before the current token expires (tokens with expires_in).",
            &ttl,
        )?;
        let batch: Vec<_> = destinations
            .iter()
            .filter_map(|w| {
                w.batch
                    .as_ref()
                    .map(|b| (d(w), b.delivered_users.load(Relaxed)))
            })
            .collect();
        counter(
            &mut enc,
            "irisd_batch_users_delivered",
            "Users delivered by batch runs.",
            &batch,
        )?;
        let rows: Vec<_> = destinations
            .iter()
            .map(|w| (d(w), w.metrics.latency_buckets(&LATENCY_BOUNDS)))
            .collect();
        histogram(
            &mut enc,
            "irisd_publish_duration_seconds",
            "Latency of successful publish requests.",
            &rows,
        )?;
        if let Some(k) = self.kafka.get() {
            let km = &k.metrics;
            for (name, help, v) in [
                ("irisd_kafka_records", "Records taken from Kafka.", &km.records),
                ("irisd_kafka_poison_records", "Records dead-lettered as poison (not an event, unknown destination, invalid field).", &km.poison),
                ("irisd_kafka_commits", "Offset commits (each up to the per-partition low watermark of settled records).", &km.commits),
                ("irisd_kafka_rebalances", "Partition revocations seen by this instance.", &km.rebalances),
                ("irisd_kafka_pauses", "Partitions paused because their destination's lane was full.", &km.pauses),
            ] {
                let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(v.load(Relaxed)).encode(m)?;
            }
            let lag: Vec<(Vec<(&str, String)>, i64)> = km
                .lag
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|((t, p), l)| (vec![("topic", t.clone()), ("partition", p.to_string())], *l))
                .collect();
            gauge(
                &mut enc,
                "irisd_kafka_consumer_lag",
                "Messages behind the partition's end (librdkafka statistics, every 5 s).",
                &lag,
            )?;
        }
        let rows: Vec<_> = destinations
            .iter()
            .map(|w| (d(w), w.metrics.lag_buckets(&LAG_BOUNDS)))
            .collect();
        histogram(
            &mut enc,
            "irisd_delivery_lag_seconds",
            "Time from acceptance at the intake to the partner's acknowledgement, per user.",
            &rows,
        )?;
        Ok(())
    }
}

impl Admin {
    pub fn new(destinations: Vec<Watched>, spool: Arc<Spool>) -> Arc<Self> {
        let destinations = Arc::new(arc_swap::ArcSwap::from_pointee(destinations));
        let mut registry = Registry::default();
        let kafka = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(Live {
            destinations: destinations.clone(),
            spool: spool.clone(),
            kafka: kafka.clone(),
        }));
        Arc::new(Self {
            destinations,
            spool,
            ready: AtomicBool::new(true),
            registry,
            kafka,
            auth: std::sync::OnceLock::new(),
        })
    }

    /// Requires `Authorization: Bearer <token>` on /metrics and /status; /healthz and
    /// /readyz stay open for orchestrators' probes (they reveal nothing but up/ready).
    pub fn require_token(&self, token: secrecy::SecretString) {
        let _ = self.auth.set(token);
    }

    /// Reports the Kafka sources' counters too.
    pub fn set_kafka(&self, shared: Arc<crate::kafka::KafkaShared>) {
        let _ = self.kafka.set(shared);
    }

    /// The destinations to report on (after a reload).
    pub fn set_destinations(&self, destinations: Vec<Watched>) {
        self.destinations.store(Arc::new(destinations));
    }

    /// Prometheus text exposition of every metric.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Per-destination summary (what `irisd status` prints).
    pub fn status(&self) -> serde_json::Value {
        let now = tokio::time::Instant::now();
        let destinations = self.destinations.load_full();
        let dests: Vec<_> = destinations
            .iter()
            .map(|w| {
                let s = w.metrics.snapshot();
                let token = w.tokens.peek();
                serde_json::json!({
                    "destination": w.name,
                    "user_dpid": w.user_dpid,
                    "device_id_type": crate::payload::device_id_type(&w.user_dpid),
                    "accepted": s.accepted_users,
                    "delivered": s.delivered_users,
                    "dead_lettered": s.dead_lettered_users,
                    "retries": s.retries,
                    "in_flight": s.in_flight_users,
                    "spooled_events": self.spool.events(&w.name),
                    "spooled_bytes": self.spool.bytes(&w.name).0,
                    "latency_p50_ms": s.latency_p50_ms,
                    "latency_p99_ms": s.latency_p99_ms,
                    "lag_p50_ms": s.lag_p50_ms,
                    "lag_p99_ms": s.lag_p99_ms,
                    "requests_ok": s.requests_ok,
                    "bytes_raw": s.bytes_raw,
                    "bytes_sent": s.bytes_sent,
                    "token": token.as_ref().map(|t| serde_json::json!({
                        "age_s": now.duration_since(t.obtained_at).as_secs(),
                        "expires_in_s": t.expires_at.map(|e| e.saturating_duration_since(now).as_secs()),
                    })),
                    "token_fetches": s.token_fetches,
                    "batch_delivered": w.batch.as_ref().map(|b| b.delivered_users.load(Relaxed)),
                })
            })
            .collect();
        serde_json::json!({ "ready": self.ready.load(Relaxed), "destinations": dests })
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        if matches!(req.uri().path(), "/metrics" | "/status") {
            if let Some(token) = self.auth.get() {
                if let Err(refused) = crate::server::check_bearer(req.headers(), token) {
                    return *refused;
                }
            }
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics_text())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::GET, "/healthz") => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "alive"}))
            }
            (&Method::GET, "/readyz") => {
                // "Can this instance accept events now", not merely "alive" (that is /healthz).
                let problem = if self.ready.load(Relaxed) {
                    self.spool.not_ready()
                } else {
                    Some("stopping".to_string())
                };
                match problem {
                    None => json_response(StatusCode::OK, &serde_json::json!({"status": "ready"})),
                    Some(reason) => json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"status": "not ready", "reason": reason}),
                    ),
                }
            }
            (&Method::GET, "/status") => json_response(StatusCode::OK, &self.status()),
            (_, path) => error_response(
                StatusCode::NOT_FOUND,
                format!("no such endpoint {path}; try /metrics, /healthz, /readyz, /status"),
            ),
        }
    }
}
