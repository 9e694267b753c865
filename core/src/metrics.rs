//! Prometheus metrics, fed by the core's [`Event`]s and by the driver's store timings,
//! rendered in the text exposition format. Pure: no listener here, the frontend serves
//! [`Metrics::render`] on its admin port.
//!
//! Label values are bounded: backend names (configured or discovered), fixed causes,
//! reasons and outcomes from the core, HTTP status codes.

use crate::config::Backend;
use crate::conn::{EndCause, Event};
use crate::router::{BackendId, Router};
use crate::store::{Era, StoreOp, StoreReply};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EraL {
    era: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseL {
    cause: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestL {
    outcome: &'static str,
    status: u16,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendL {
    backend: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonL {
    reason: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitL {
    limit: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreL {
    op: &'static str,
    result: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpL {
    op: &'static str,
}

/// A backend as it was when its latency series was cached, and that series.
type CachedSeries = (Arc<Backend>, Histogram);

type Hist = Family<BackendL, Histogram, fn() -> Histogram>;
type OpHist = Family<OpL, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~100 s
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

/// Every metric of one router process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_started: Family<EraL, Counter>,
    sessions_ended: Family<CauseL, Counter>,
    sessions_active: Gauge,
    requests: Family<RequestL, Counter>,
    upstream_latency: Hist,
    /// Per backend id: the backend it named when cached, and its latency series.
    latency_by_id: RwLock<Vec<Option<CachedSeries>>>,
    rejected: Family<ReasonL, Counter>,
    limited: Family<LimitL, Counter>,
    session_refused: Family<CauseL, Counter>,
    connections_open: Gauge,
    duplicate_sessions: Counter,
    backend_up: Family<BackendL, Gauge>,
    backend_draining: Family<BackendL, Gauge>,
    backend_sessions: Family<BackendL, Gauge>,
    backend_health_changes: Family<BackendL, Counter>,
    store_ops: Family<StoreL, Counter>,
    store_latency: OpHist,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all under the `mcp_router_` prefix.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("mcp_router");
        let m = Metrics {
            sessions_started: Family::default(),
            sessions_ended: Family::default(),
            sessions_active: Gauge::default(),
            requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            latency_by_id: RwLock::default(),
            rejected: Family::default(),
            limited: Family::default(),
            session_refused: Family::default(),
            connections_open: Gauge::default(),
            duplicate_sessions: Counter::default(),
            backend_up: Family::default(),
            backend_draining: Family::default(),
            backend_sessions: Family::default(),
            backend_health_changes: Family::default(),
            store_ops: Family::default(),
            store_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            registry: Registry::default(),
        };
        r.register(
            "limited",
            "Requests and connections refused, or connections closed, because a cap, quota \
             or send timeout was reached, by limit",
            m.limited.clone(),
        );
        r.register(
            "session_refused",
            "Requests answered 404 because their session id was refused, by cause: a sealed \
             id that is malformed, tampered, sealed by an unknown key, expired or names an \
             unknown backend, or a session bound to another client",
            m.session_refused.clone(),
        );
        r.register(
            "client_connections",
            "Client connections open in this process",
            m.connections_open.clone(),
        );
        r.register(
            "sessions_started",
            "Sessions recorded, by transport era",
            m.sessions_started.clone(),
        );
        r.register(
            "sessions_ended",
            "Session records removed, by cause",
            m.sessions_ended.clone(),
        );
        r.register(
            "sessions_active",
            "Live sessions routed by this process",
            m.sessions_active.clone(),
        );
        r.register(
            "requests",
            "Requests answered, by outcome (proxied, rejected, aborted) and status",
            m.requests.clone(),
        );
        r.register(
            "upstream_latency_seconds",
            "From request head sent to response head received, by backend",
            m.upstream_latency.clone(),
        );
        r.register(
            "rejected",
            "Requests the router answered itself with an error, by reason",
            m.rejected.clone(),
        );
        r.register(
            "duplicate_sessions",
            "Session ids a backend minted that were already recorded",
            m.duplicate_sessions.clone(),
        );
        r.register(
            "backend_up",
            "1 if the backend is not marked down",
            m.backend_up.clone(),
        );
        r.register(
            "backend_draining",
            "1 if the backend takes no new sessions",
            m.backend_draining.clone(),
        );
        r.register(
            "backend_sessions_active",
            "Live sessions per backend (this process's view)",
            m.backend_sessions.clone(),
        );
        r.register(
            "backend_health_changes",
            "Times a backend was marked down or up",
            m.backend_health_changes.clone(),
        );
        r.register(
            "store_operations",
            "Session store operations, by op and result",
            m.store_ops.clone(),
        );
        r.register(
            "store_latency_seconds",
            "Session store operation latency, by op",
            m.store_latency.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Count one event of the core.
    pub fn observe(&self, router: &Router, e: &Event) {
        match e {
            Event::SessionStarted { era, .. } => {
                let era = match era {
                    Era::Streamable => "streamable",
                    Era::LegacySse => "legacy_sse",
                };
                self.sessions_started.get_or_create(&EraL { era }).inc();
            }
            Event::SessionEnded { cause, .. } => self.session_ended(*cause),
            Event::DuplicateSession { .. } => {
                self.duplicate_sessions.inc();
            }
            Event::Rejected { status, reason } => {
                self.rejected.get_or_create(&ReasonL { reason }).inc();
                if *status != 0 {
                    self.requests
                        .get_or_create(&RequestL {
                            outcome: "rejected",
                            status: *status,
                        })
                        .inc();
                }
            }
            Event::Response {
                backend,
                status,
                latency,
            } => {
                self.requests
                    .get_or_create(&RequestL {
                        outcome: "proxied",
                        status: *status,
                    })
                    .inc();
                self.observe_latency(router, *backend, latency.as_secs_f64());
            }
            Event::Limited { limit } => {
                self.limited
                    .get_or_create(&LimitL {
                        limit: limit.as_str(),
                    })
                    .inc();
            }
            Event::Aborted => {
                self.requests
                    .get_or_create(&RequestL {
                        outcome: "aborted",
                        status: 0,
                    })
                    .inc();
            }
            Event::BackendHealth { backend, .. } => {
                self.backend_health_changes
                    .get_or_create(&BackendL {
                        backend: router.name(*backend),
                    })
                    .inc();
            }
            Event::StoreUnavailable => {}
            Event::SessionRefused { cause } => {
                self.session_refused
                    .get_or_create(&CauseL {
                        cause: cause.as_str(),
                    })
                    .inc();
            }
        }
    }

    /// Observe an upstream latency without building the backend label on every request:
    /// the series handle is cached per backend id, and checked against the backend's
    /// identity so a reused id never reports under an old name.
    fn observe_latency(&self, router: &Router, id: BackendId, secs: f64) {
        let Some(current) = router.backend(id) else {
            return;
        };
        {
            let cache = self.latency_by_id.read().unwrap_or_else(|e| e.into_inner());
            if let Some(Some((b, h))) = cache.get(id.index()) {
                if Arc::ptr_eq(b, &current) {
                    h.observe(secs);
                    return;
                }
            }
        }
        let h = self
            .upstream_latency
            .get_or_create(&BackendL {
                backend: current.name.clone(),
            })
            .clone();
        h.observe(secs);
        let mut cache = self
            .latency_by_id
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() <= id.index() {
            cache.resize(id.index() + 1, None);
        }
        cache[id.index()] = Some((current, h));
    }

    /// Count a refusal the driver made itself (a connection over `max_connections`).
    pub fn limited(&self, limit: crate::conn::Limit) {
        self.limited
            .get_or_create(&LimitL {
                limit: limit.as_str(),
            })
            .inc();
    }

    /// Count a session end the driver observed itself (idle expiry).
    pub fn session_ended(&self, cause: EndCause) {
        self.sessions_ended
            .get_or_create(&CauseL {
                cause: cause.as_str(),
            })
            .inc();
    }

    /// Count one store operation and its latency.
    pub fn observe_store(&self, op: &StoreOp, reply: &StoreReply, elapsed: Duration) {
        let op = match op {
            StoreOp::Get(_) => "get",
            StoreOp::Insert(..) => "insert",
            StoreOp::Delete(_) => "delete",
            StoreOp::Touch(_) => "touch",
            StoreOp::Admit(_) => "admit",
        };
        let result = match reply {
            StoreReply::Unavailable => "error",
            StoreReply::Found(None) | StoreReply::Deleted(None) | StoreReply::Touched(false) => {
                "miss"
            }
            StoreReply::Inserted(false) => "exists",
            StoreReply::Admitted(a) if *a != crate::limits::Admission::Admit => "refused",
            _ => "ok",
        };
        self.store_ops.get_or_create(&StoreL { op, result }).inc();
        self.store_latency
            .get_or_create(&OpL { op })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with per-backend gauges read from the router now.
    pub fn render(&self, router: &Router, now: Instant) -> String {
        self.connections_open.set(router.connections() as i64);
        self.backend_up.clear();
        self.backend_draining.clear();
        self.backend_sessions.clear();
        let mut total = 0;
        for m in router.status(now) {
            let l = BackendL {
                backend: m.backend.name.clone(),
            };
            self.backend_up.get_or_create(&l).set(m.up as i64);
            self.backend_draining
                .get_or_create(&l)
                .set(m.draining as i64);
            self.backend_sessions
                .get_or_create(&l)
                .set(m.active_sessions as i64);
            total += m.active_sessions;
        }
        self.sessions_active.set(total as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Config};
    use crate::mcp::SessionKey;
    use crate::router::BackendId;
    use std::sync::Arc;

    #[test]
    fn events_move_the_right_series() {
        let mut c = Config::default();
        c.backends
            .push(Backend::parse("http://127.0.0.1:1", Some("b0")).unwrap());
        let t = Instant::now();
        let r = Router::new(Arc::new(c), t);
        let m = Metrics::new();
        let k = SessionKey::new(b"s", 10).unwrap();
        m.observe(
            &r,
            &Event::SessionStarted {
                session: k.clone(),
                backend: BackendId(0),
                era: Era::Streamable,
            },
        );
        r.session_started(BackendId(0));
        m.observe(
            &r,
            &Event::Response {
                backend: BackendId(0),
                status: 200,
                latency: Duration::from_millis(3),
            },
        );
        m.observe(
            &r,
            &Event::Rejected {
                status: 404,
                reason: "Session not found",
            },
        );
        m.observe(
            &r,
            &Event::SessionEnded {
                session: k,
                backend: BackendId(0),
                cause: EndCause::Deleted,
            },
        );
        m.observe_store(
            &StoreOp::Get(SessionKey::new(b"x", 10).unwrap()),
            &StoreReply::Unavailable,
            Duration::from_millis(1),
        );
        r.set_draining("b0", true);
        let text = m.render(&r, t);
        for line in [
            "mcp_router_sessions_started_total{era=\"streamable\"} 1",
            "mcp_router_sessions_ended_total{cause=\"delete\"} 1",
            "mcp_router_requests_total{outcome=\"proxied\",status=\"200\"} 1",
            "mcp_router_requests_total{outcome=\"rejected\",status=\"404\"} 1",
            "mcp_router_rejected_total{reason=\"Session not found\"} 1",
            "mcp_router_upstream_latency_seconds_count{backend=\"b0\"} 1",
            "mcp_router_store_operations_total{op=\"get\",result=\"error\"} 1",
            "mcp_router_backend_up{backend=\"b0\"} 1",
            "mcp_router_backend_draining{backend=\"b0\"} 1",
            "mcp_router_backend_sessions_active{backend=\"b0\"} 1",
            "mcp_router_sessions_active 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn a_reused_backend_id_reports_latency_under_its_new_name() {
        let mut c = Config::default();
        c.backends
            .push(Backend::parse("http://127.0.0.1:1", Some("old")).unwrap());
        let t = Instant::now();
        let r = Router::new(Arc::new(c.clone()), t);
        let m = Metrics::new();
        let ev = Event::Response {
            backend: BackendId(0),
            status: 200,
            latency: Duration::from_millis(1),
        };
        m.observe(&r, &ev);
        m.observe(&r, &ev);
        r.set_backends(c.clone(), vec![], t);
        let later = t + c.session_ttl;
        r.set_backends(
            c,
            vec![Backend::parse("http://127.0.0.1:2", Some("new")).unwrap()],
            later,
        );
        assert_eq!(
            r.backend_by_name("new"),
            Some(BackendId(0)),
            "the slot was reused"
        );
        m.observe(&r, &ev);
        let text = m.render(&r, later);
        assert!(
            text.contains("mcp_router_upstream_latency_seconds_count{backend=\"old\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mcp_router_upstream_latency_seconds_count{backend=\"new\"} 1"),
            "{text}"
        );
    }
}
