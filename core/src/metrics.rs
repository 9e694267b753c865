//! Prometheus metrics, fed by the core's [`Event`]s and by the driver's store timings,
//! rendered in the text exposition format. Pure: no listener here, the frontend serves
//! [`Metrics::render`] on its admin port.
//!
//! Label values are bounded: backend names (configured or discovered), fixed causes,
//! reasons and outcomes from the core, HTTP status codes.

use crate::config::Backend;
use crate::conn::{EndCause, Event};
use crate::router::{BackendId, Health, Router};
use crate::store::{Era, StoreOp, StoreReply};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeL {
    node: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EraL {
    era: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseL {
    cause: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailoverL {
    cause: &'static str,
    outcome: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultL {
    result: &'static str,
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

/// A backend as it was when its latency series was cached, that series, and its
/// last-minute window.
type CachedSeries = (Arc<Backend>, Histogram, Arc<Window>);

type Hist = Family<BackendL, Histogram, fn() -> Histogram>;
type OpHist = Family<OpL, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~100 s
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

/// Seconds a [`Window`] covers.
pub const WINDOW_SECS: u64 = 60;
/// Latency buckets of a [`Window`]: bucket `i` holds latencies up to
/// `50 µs * 2^(i/2)` (the last one everything above, ~50 s).
const LAT_BUCKETS: usize = 40;

fn lat_bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= 50.0 {
        return 0;
    }
    // 2 buckets per doubling
    let i = (2.0 * (us / 50.0).log2()).ceil() as usize;
    i.min(LAT_BUCKETS - 1)
}

fn lat_bound(i: usize) -> Duration {
    Duration::from_secs_f64(50e-6 * 2f64.powf(i as f64 / 2.0))
}

/// One second of a [`Window`].
#[derive(Debug)]
struct Slot {
    /// The second it holds, plus one (0: never used).
    sec: AtomicU64,
    count: AtomicU64,
    err5xx: AtomicU64,
    err4xx: AtomicU64,
    down: AtomicU64,
    lat: [AtomicU32; LAT_BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            sec: AtomicU64::new(0),
            count: AtomicU64::new(0),
            err5xx: AtomicU64::new(0),
            err4xx: AtomicU64::new(0),
            down: AtomicU64::new(0),
            lat: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// The last [`WINDOW_SECS`] seconds of one backend (or of the store): requests,
/// errors and a coarse latency histogram per second, in atomics (no lock on the hot
/// path; a slot reused for a new second is reset by whoever gets there first, so a
/// count racing that reset may be lost: the window is for people, `/metrics` for
/// exact counts).
#[derive(Debug)]
pub struct Window {
    slots: Box<[Slot]>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: (0..WINDOW_SECS).map(|_| Slot::default()).collect(),
        }
    }
}

/// What a [`Window`] saw over its last minute.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct WindowSummary {
    /// Requests (or store operations) answered.
    pub requests: u64,
    /// Requests per second over the window (or since the start, if shorter).
    pub per_second: f64,
    /// Median latency in milliseconds (a bucket's upper bound), if any request.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds, if any request.
    pub p99_ms: Option<f64>,
    /// Answers with a 5xx status (store: failed operations).
    pub errors_5xx: u64,
    /// Answers with a 4xx status.
    pub errors_4xx: u64,
    /// Times the backend was marked down (refused or timed-out connects).
    pub marked_down: u64,
}

impl Window {
    fn slot(&self, sec: u64) -> &Slot {
        let s = &self.slots[(sec % WINDOW_SECS) as usize];
        let cur = s.sec.load(Relaxed);
        if cur != sec + 1
            && s.sec
                .compare_exchange(cur, sec + 1, Relaxed, Relaxed)
                .is_ok()
        {
            s.count.store(0, Relaxed);
            s.err5xx.store(0, Relaxed);
            s.err4xx.store(0, Relaxed);
            s.down.store(0, Relaxed);
            for b in &s.lat {
                b.store(0, Relaxed);
            }
        }
        s
    }

    /// One answer in second `sec`.
    pub fn record(&self, sec: u64, latency: Option<Duration>, err5xx: bool, err4xx: bool) {
        let s = self.slot(sec);
        s.count.fetch_add(1, Relaxed);
        if let Some(l) = latency {
            s.lat[lat_bucket(l)].fetch_add(1, Relaxed);
        }
        if err5xx {
            s.err5xx.fetch_add(1, Relaxed);
        }
        if err4xx {
            s.err4xx.fetch_add(1, Relaxed);
        }
    }

    /// The backend was marked down in second `sec`.
    pub fn marked_down(&self, sec: u64) {
        self.slot(sec).down.fetch_add(1, Relaxed);
    }

    /// The seconds `now_sec - 59 ..= now_sec`, summed.
    pub fn summary(&self, now_sec: u64) -> WindowSummary {
        let mut w = WindowSummary::default();
        let mut lat = [0u64; LAT_BUCKETS];
        let oldest = now_sec.saturating_sub(WINDOW_SECS - 1);
        for s in self.slots.iter() {
            let sec = s.sec.load(Relaxed);
            if sec == 0 || sec - 1 < oldest || sec - 1 > now_sec {
                continue;
            }
            w.requests += s.count.load(Relaxed);
            w.errors_5xx += s.err5xx.load(Relaxed);
            w.errors_4xx += s.err4xx.load(Relaxed);
            w.marked_down += s.down.load(Relaxed);
            for (a, b) in lat.iter_mut().zip(&s.lat) {
                *a += u64::from(b.load(Relaxed));
            }
        }
        let span = (now_sec + 1).min(WINDOW_SECS) as f64;
        w.per_second = (w.requests as f64 / span * 100.0).round() / 100.0;
        let n: u64 = lat.iter().sum();
        let q = |q: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            let want = ((n as f64) * q).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (i, c) in lat.iter().enumerate() {
                acc += c;
                if acc >= want {
                    return Some((lat_bound(i).as_secs_f64() * 1e5).round() / 100.0);
                }
            }
            None
        };
        w.p50_ms = q(0.5);
        w.p99_ms = q(0.99);
        w
    }
}

/// Every metric of one router process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_started: Family<EraL, Counter>,
    sessions_ended: Family<CauseL, Counter>,
    sessions_reaped: Family<ResultL, Counter>,
    sessions_active: Gauge,
    requests: Family<RequestL, Counter>,
    upstream_latency: Hist,
    /// Per backend id: the backend it named when cached, and its latency series.
    latency_by_id: RwLock<Vec<Option<CachedSeries>>>,
    rejected: Family<ReasonL, Counter>,
    limited: Family<LimitL, Counter>,
    session_refused: Family<CauseL, Counter>,
    failovers: Family<FailoverL, Counter>,
    connections_open: Gauge,
    duplicate_sessions: Counter,
    backend_up: Family<BackendL, Gauge>,
    backend_draining: Family<BackendL, Gauge>,
    backend_sessions: Family<BackendL, Gauge>,
    backend_health_changes: Family<BackendL, Counter>,
    store_ops: Family<StoreL, Counter>,
    store_latency: OpHist,
    /// The Redis node the store talks to (Sentinel: the current primary): one series.
    store_node: Family<NodeL, Gauge>,
    store_failovers_followed: Counter,
    store_node_last: std::sync::Mutex<Option<String>>,
    /// The store's last minute (all ops together).
    store_window: Window,
    /// The first instant [`Metrics::observe_at`] saw: second 0 of the windows.
    epoch: OnceLock<Instant>,
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
            sessions_reaped: Family::default(),
            sessions_active: Gauge::default(),
            requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            latency_by_id: RwLock::default(),
            rejected: Family::default(),
            limited: Family::default(),
            session_refused: Family::default(),
            failovers: Family::default(),
            connections_open: Gauge::default(),
            duplicate_sessions: Counter::default(),
            backend_up: Family::default(),
            backend_draining: Family::default(),
            backend_sessions: Family::default(),
            backend_health_changes: Family::default(),
            store_ops: Family::default(),
            store_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            store_node: Family::default(),
            store_failovers_followed: Counter::default(),
            store_node_last: std::sync::Mutex::new(None),
            store_window: Window::default(),
            epoch: OnceLock::new(),
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
            "failovers",
            "--failover reinitialize: sessions whose backend was lost, by cause \
             (connect_failed, marked_down, removed) and outcome: done (initialized again on \
             another backend), joined (another connection did it first), window (failed \
             over within --failover-window already: 404), ineligible (initialize not kept: \
             404), failed (no backend or the replay failed: 404), lost (a request that may \
             have reached the lost backend, answered -32603)",
            m.failovers.clone(),
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
            "sessions_reaped",
            "Sessions the router ended itself (idle expiry, drain timeout) and sent a DELETE \
             for to their backend, by result: deleted (2xx), gone (404 or 405), failed (no \
             answer or another status, after one retry), dropped (queue full or backend \
             no longer configured)",
            m.sessions_reaped.clone(),
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
        r.register(
            "store_node_info",
            "1 for the Redis node the session store talks to (Sentinel: the primary the \
             sentinels named last; Cluster: the seed nodes)",
            m.store_node.clone(),
        );
        r.register(
            "store_failovers_followed",
            "Redis Sentinel promotions followed: the store moved to a new primary",
            m.store_failovers_followed.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The store now talks to `node` (a `host:port`, or a list for a cluster); a
    /// change from a previous node is a failover followed.
    pub fn store_node(&self, node: &str) {
        let mut changed = false;
        self.store_node.clear();
        self.store_node
            .get_or_create(&NodeL { node: node.into() })
            .set(1);
        let mut last = self
            .store_node_last
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(old) = last.as_deref() {
            changed = old != node;
        }
        *last = Some(node.into());
        if changed {
            self.store_failovers_followed.inc();
        }
    }

    /// The node [`Metrics::store_node`] last named.
    pub fn store_node_name(&self) -> Option<String> {
        self.store_node_last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Promotions followed so far.
    pub fn store_failovers_followed(&self) -> u64 {
        self.store_failovers_followed.get()
    }

    /// Count one event of the core (the Prometheus series only; the status page's
    /// last-minute windows need [`Metrics::observe_at`]).
    pub fn observe(&self, router: &Router, e: &Event) {
        self.observe_inner(router, e, None)
    }

    /// Count one event of the core that happened at `now`: the Prometheus series and
    /// the last-minute windows of the status page.
    pub fn observe_at(&self, router: &Router, e: &Event, now: Instant) {
        let sec = self.second(now);
        self.observe_inner(router, e, Some(sec))
    }

    /// Seconds since the first instant seen.
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(*self.epoch.get_or_init(|| now))
            .as_secs()
    }

    fn observe_inner(&self, router: &Router, e: &Event, sec: Option<u64>) {
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
                let w = self.observe_latency(router, *backend, latency.as_secs_f64());
                if let (Some(w), Some(sec)) = (w, sec) {
                    w.record(
                        sec,
                        Some(*latency),
                        *status >= 500,
                        (400..500).contains(status),
                    );
                }
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
            Event::BackendHealth { backend, health } => {
                if let (Health::Down(_), Some(sec)) = (health, sec) {
                    if let Some(w) = self.window(router, *backend) {
                        w.marked_down(sec);
                    }
                }
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
            Event::Failover { cause, outcome, .. } => {
                self.failovers
                    .get_or_create(&FailoverL {
                        cause: cause.as_str(),
                        outcome: outcome.as_str(),
                    })
                    .inc();
            }
        }
    }

    /// Observe an upstream latency without building the backend label on every request:
    /// the series handle is cached per backend id, and checked against the backend's
    /// identity so a reused id never reports under an old name. Returns the backend's
    /// last-minute window.
    fn observe_latency(&self, router: &Router, id: BackendId, secs: f64) -> Option<Arc<Window>> {
        let (h, w) = self.series(router, id)?;
        h.observe(secs);
        Some(w)
    }

    /// The backend's last-minute window (`None` if the id names no backend).
    fn window(&self, router: &Router, id: BackendId) -> Option<Arc<Window>> {
        self.series(router, id).map(|(_, w)| w)
    }

    fn series(&self, router: &Router, id: BackendId) -> Option<(Histogram, Arc<Window>)> {
        let current = router.backend(id)?;
        {
            let cache = self.latency_by_id.read().unwrap_or_else(|e| e.into_inner());
            if let Some(Some((b, h, w))) = cache.get(id.index()) {
                if Arc::ptr_eq(b, &current) {
                    return Some((h.clone(), w.clone()));
                }
            }
        }
        let h = self
            .upstream_latency
            .get_or_create(&BackendL {
                backend: current.name.clone(),
            })
            .clone();
        let w = Arc::new(Window::default());
        let mut cache = self
            .latency_by_id
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() <= id.index() {
            cache.resize(id.index() + 1, None);
        }
        cache[id.index()] = Some((current, h.clone(), w.clone()));
        Some((h, w))
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

    /// Count one store operation that ended at `now`, and its latency, also in the
    /// status page's last-minute window.
    pub fn observe_store_at(
        &self,
        op: &StoreOp,
        reply: &StoreReply,
        elapsed: Duration,
        now: Instant,
    ) {
        let sec = self.second(now);
        self.store_window.record(
            sec,
            Some(elapsed),
            matches!(reply, StoreReply::Unavailable),
            false,
        );
        self.observe_store(op, reply, elapsed);
    }

    /// Count one store operation and its latency.
    pub fn observe_store(&self, op: &StoreOp, reply: &StoreReply, elapsed: Duration) {
        let op = match op {
            StoreOp::Get(_) => "get",
            StoreOp::Insert(..) | StoreOp::InsertFailover(..) => "insert",
            StoreOp::FailOver { .. } | StoreOp::LoadFailover(_) => "failover",
            StoreOp::Delete(_) => "delete",
            StoreOp::Touch(_) => "touch",
            StoreOp::Admit(_) => "admit",
        };
        let result = match reply {
            StoreReply::Unavailable => "error",
            StoreReply::Found(None) | StoreReply::Deleted(None) | StoreReply::Touched(false) => {
                "miss"
            }
            StoreReply::Inserted(false) | StoreReply::FailedOver(false) => "exists",
            StoreReply::Admitted(a) if *a != crate::limits::Admission::Admit => "refused",
            _ => "ok",
        };
        self.store_ops.get_or_create(&StoreL { op, result }).inc();
        self.store_latency
            .get_or_create(&OpL { op })
            .observe(elapsed.as_secs_f64());
    }

    /// The last minute of backend `id` at `now` (empty if nothing was seen).
    pub fn backend_window(&self, router: &Router, id: BackendId, now: Instant) -> WindowSummary {
        let sec = self.second(now);
        let Some(current) = router.backend(id) else {
            return WindowSummary::default();
        };
        let cache = self.latency_by_id.read().unwrap_or_else(|e| e.into_inner());
        match cache.get(id.index()) {
            Some(Some((b, _, w))) if Arc::ptr_eq(b, &current) => w.summary(sec),
            _ => WindowSummary::default(),
        }
    }

    /// The session store's last minute at `now` (all operations).
    pub fn store_window(&self, now: Instant) -> WindowSummary {
        self.store_window.summary(self.second(now))
    }

    /// Sessions started since the process started, by era label.
    pub fn sessions_started_by_era(&self) -> Vec<(&'static str, u64)> {
        ["streamable", "legacy_sse"]
            .into_iter()
            .map(|era| {
                (
                    era,
                    self.sessions_started.get_or_create(&EraL { era }).get(),
                )
            })
            .collect()
    }

    /// Count one finished reap.
    pub fn session_reaped(&self, result: crate::reap::ReapResult) {
        self.sessions_reaped
            .get_or_create(&ResultL {
                result: result.as_str(),
            })
            .inc();
    }

    /// Reaps finished with `result` since the process started.
    pub fn reaped_count(&self, result: crate::reap::ReapResult) -> u64 {
        self.sessions_reaped
            .get_or_create(&ResultL {
                result: result.as_str(),
            })
            .get()
    }

    /// Session records removed since the process started, by cause label.
    pub fn sessions_ended_by_cause(&self) -> Vec<(&'static str, u64)> {
        [
            EndCause::Deleted,
            EndCause::BackendNotFound,
            EndCause::BackendDown,
            EndCause::StreamClosed,
            EndCause::Expired,
            EndCause::UnknownBackend,
            EndCause::DrainTimeout,
            EndCause::BackendRemoved,
        ]
        .into_iter()
        .map(|c| {
            let cause = c.as_str();
            (
                cause,
                self.sessions_ended.get_or_create(&CauseL { cause }).get(),
            )
        })
        .collect()
    }

    /// Times `limit` was hit since the process started.
    pub fn limited_count(&self, limit: crate::conn::Limit) -> u64 {
        self.limited
            .get_or_create(&LimitL {
                limit: limit.as_str(),
            })
            .get()
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
        r.set_draining("b0", true, t);
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
