//! The state one router process shares across its connections and threads, whatever
//! runs them, and the operating work that needs no runtime: logs and metrics of the
//! core's events, the embedded store's expiry, active health checks, DNS discovery,
//! configuration reload and signal handling. The background work runs on plain
//! threads (it blocks on DNS and connects, rarely), so every frontend gets it as is.

use crate::config::{Cli, Settings, StoreSettings};
use crate::rt::Shutdown;
use mcp_router_core::admin;
use mcp_router_core::metrics::Metrics;
use mcp_router_core::{
    Backend, ConfigError, EndCause, Event, Health, Limit, MemStore, Router, StoreOp, StoreReply,
};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Resolves a DNS name to addresses (blocking; called from a background thread). The
/// seam through which tests script discovery.
pub trait Resolve: Send + Sync + 'static {
    /// All addresses of `host`, with `port`.
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo`).
#[derive(Debug, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// Longest connect attempt to a backend just removed from the configuration, to
/// learn whether its sessions' `DELETE`s can reach it.
const REMOVED_PROBE: Duration = Duration::from_millis(500);

/// State shared by every connection (and every thread or executor) of one router
/// process.
pub struct Shared {
    /// Backends, health, balancing (`Sync`: atomics only).
    pub router: Arc<Router>,
    /// The embedded session store, when no shared store is configured.
    pub memory: Option<Mutex<MemStore>>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// `DELETE`s to send upstream for sessions the router ended itself.
    pub reaper: crate::reap::ReapQueue,
    /// Shared store: claimed expiries whose reap is over, to acknowledge in the store.
    pub reap_acks: Mutex<Vec<mcp_router_core::mcp::SessionKey>>,
    /// Backends removed from the configuration that still answered (and when), whose
    /// records the expiry tick (embedded store) or the drain sweep (Redis) ends and
    /// reaps.
    removed_live: Mutex<Vec<(mcp_router_core::BackendId, Instant)>>,
    /// The settings in force (replaced by a reload).
    pub settings: RwLock<Settings>,
    store_ready: AtomicBool,
    store_probed: AtomicBool,
    discovered: Mutex<Vec<Vec<Backend>>>,
    resolver: Arc<dyn Resolve>,
    /// Per limit: the second (since `started`) of its last log line, plus one.
    limit_logged: [std::sync::atomic::AtomicU64; 6],
    /// Backends whose URL was probed for the `/mcp` base-path mistake (once each).
    base_path_probed: Mutex<std::collections::HashSet<String>>,
    started: Instant,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("router", &self.router)
            .field("store", &self.store_kind())
            .finish()
    }
}

impl Shared {
    /// Shared state for `settings`.
    pub fn new(settings: &Settings) -> Result<Arc<Shared>, ConfigError> {
        Self::with_resolver(settings, Arc::new(SystemResolver))
    }

    /// As [`Shared::new`], resolving `--discover` names with `resolver` (a test seam).
    pub fn with_resolver(
        settings: &Settings,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Arc<Shared>, ConfigError> {
        let cfg = Arc::new(settings.core.clone());
        let epoch = Instant::now();
        let router = Arc::new(Router::new(cfg.clone(), epoch));
        // The core has no clock of the wall and no randomness: sealed session ids take
        // both from here.
        router.set_unix_time(epoch, unix_now());
        let mut seed = [0u8; 16];
        match std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        {
            Ok(()) => router.set_entropy(seed),
            Err(e) if cfg.session_ids == mcp_router_core::SessionIds::Sealed => {
                return Err(ConfigError(format!(
                    "session_ids: sealed ids need randomness, /dev/urandom: {e}"
                )))
            }
            Err(_) => {}
        }
        let memory = match &settings.store {
            StoreSettings::Memory => Some(Mutex::new(MemStore::new(
                cfg.session_ttl,
                cfg.expiry_batch,
                epoch,
            ))),
            StoreSettings::Redis(r) => {
                if r.topology == crate::redis::Topology::Single {
                    r.connection_info()?;
                }
                None
            }
        };
        for name in &settings.drain {
            router.set_draining(name, true, epoch);
        }
        Ok(Arc::new(Shared {
            store_ready: AtomicBool::new(memory.is_some()),
            store_probed: AtomicBool::new(false),
            router,
            memory,
            metrics: Metrics::new(),
            reaper: crate::reap::ReapQueue::new(cfg.reap.clone()),
            reap_acks: Mutex::default(),
            removed_live: Mutex::default(),
            discovered: Mutex::new(vec![Vec::new(); settings.discover.len()]),
            settings: RwLock::new(settings.clone()),
            resolver,
            limit_logged: Default::default(),
            base_path_probed: Mutex::default(),
            started: Instant::now(),
        }))
    }

    /// Log that `limit` was hit: at most one line per limit per second (a flood that
    /// hits a cap must not turn into a flood of log lines; the metric counts each).
    pub fn log_limit(&self, limit: Limit) {
        let i = match limit {
            Limit::Connections => 0,
            Limit::Sessions => 1,
            Limit::ClientSessions => 2,
            Limit::ClientRate => 3,
            Limit::ClientSend => 4,
            Limit::UpstreamSend => 5,
        };
        let sec = self.started.elapsed().as_secs() + 1;
        let last = &self.limit_logged[i];
        let prev = last.load(std::sync::atomic::Ordering::Relaxed);
        if prev != sec
            && last
                .compare_exchange(
                    prev,
                    sec,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            warn!(
                limit = limit.as_str(),
                "limit reached (logged at most once a second; see mcp_router_limited_total)"
            );
        }
    }

    /// `memory` or `redis`, for logs.
    pub fn store_kind(&self) -> &'static str {
        if self.memory.is_some() {
            "memory"
        } else {
            "redis"
        }
    }

    /// Whether the session store can be reached (the embedded one always can).
    pub fn store_ready(&self) -> bool {
        self.store_ready.load(Ordering::Relaxed)
    }

    /// Record the outcome of a probe of the shared store, logging each change.
    pub fn store_probed(&self, ok: bool) {
        let was = self.store_ready.swap(ok, Ordering::Relaxed);
        let first = !self.store_probed.swap(true, Ordering::Relaxed);
        if ok && (!was || first) {
            info!(store = "redis", "session store ready");
        } else if !ok && (was || first) {
            warn!(store = "redis", "session store not ready: Redis unreachable; requests that need a session record get 503 until it is back");
        }
    }

    /// Run one op against the embedded store (`Unavailable` if there is none).
    pub fn execute_memory(&self, op: &StoreOp, now: Instant) -> StoreReply {
        match self.memory.as_ref().map(Mutex::lock) {
            Some(Ok(mut s)) => s.execute(op, now),
            _ => StoreReply::Unavailable,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> RwLockReadGuard<'_, Settings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Log an event of the core and count it.
    pub fn report(&self, e: &Event, peer: Option<SocketAddr>) {
        self.report_at(e, peer, Instant::now());
    }

    /// [`Shared::report`] at `now` (the drive loop's clock for this turn).
    pub fn report_at(&self, e: &Event, peer: Option<SocketAddr>, now: Instant) {
        let router = &self.router;
        self.metrics.observe_at(router, e, now);
        match e {
            Event::SessionStarted {
                session,
                backend,
                era,
            } => {
                info!(session = %session, backend = %router.name(*backend), era = ?era, "session started")
            }
            Event::SessionEnded {
                session,
                backend,
                cause,
            } => {
                info!(session = %session, backend = %router.name(*backend), cause = cause.as_str(), "session ended")
            }
            Event::DuplicateSession { session, backend } => {
                warn!(session = %session, backend = %router.name(*backend), "backend minted a session id that is already recorded; keeping the first record")
            }
            Event::Rejected { status, reason } => {
                info!(peer = ?peer, status, reason, "request rejected")
            }
            // the only work a response costs here is this compare
            Event::Response {
                backend,
                status: 404,
                ..
            } => self.probe_base_path(*backend),
            Event::Response { .. } => {}
            Event::Aborted => debug!(peer = ?peer, "exchange aborted"),
            Event::BackendHealth { backend, health } => match health {
                Health::Down(d) => {
                    warn!(backend = %router.name(*backend), backoff_ms = d.as_millis() as u64, "backend down")
                }
                Health::Up => info!(backend = %router.name(*backend), "backend up"),
                Health::Same => {}
            },
            Event::StoreUnavailable => warn!("session store unavailable"),
            Event::Limited { limit } => self.log_limit(*limit),
            Event::SessionRefused { cause } => {
                info!(peer = ?peer, cause = cause.as_str(), "session id refused")
            }
            Event::Failover {
                session,
                from,
                to,
                cause,
                outcome,
                took,
            } => {
                // `-` when no backend took the session (the failover failed)
                let to = to.map_or_else(|| "-".to_string(), |b| router.name(b).to_string());
                warn!(session = %session, old_backend = %router.name(*from), new_backend = %to, cause = cause.as_str(), outcome = outcome.as_str(), took_ms = took.as_secs_f64() * 1000.0, "session failover")
            }
        }
    }

    /// Once per backend whose URL ends in `/mcp`: probe it on a thread and log the
    /// base-path hint if it answers a non-JSON `404` (at start for the configured
    /// backends, and on a backend's first `404` for those added later by discovery or
    /// a reload).
    pub fn probe_base_path(&self, id: mcp_router_core::BackendId) {
        let Some(b) = self.router.backend(id) else {
            return;
        };
        if !b.base_path.trim_end_matches('/').ends_with("/mcp") {
            return;
        }
        let first = self
            .base_path_probed
            .lock()
            .map(|mut p| p.insert(b.name.clone()))
            .unwrap_or(false);
        if first {
            crate::check::hint_base_path((*b).clone(), self.router.config().timeouts.connect);
        }
    }

    /// One expiry tick of the embedded store: a bounded batch of idle records ends,
    /// and a bounded batch of those of backends drained for `drain_timeout`; each
    /// ended session the core says to reap is queued for a `DELETE` upstream.
    pub fn expire_memory(&self, now: Instant) {
        let mut expired = Vec::new();
        let mut drained = Vec::new();
        let mut overdue = Vec::new();
        self.router.drain_overdue(now, &mut overdue);
        let removed = self.removed_live(now);
        let ending = overdue.len();
        overdue.extend(&removed);
        if let Some(Ok(mut s)) = self.memory.as_ref().map(Mutex::lock) {
            s.expire(now, &mut expired);
            s.end_backends(&overdue, &mut drained);
        }
        let drain_ended = &overdue[..ending];
        let all =
            expired
                .into_iter()
                .map(|e| (e, EndCause::Expired))
                .chain(drained.into_iter().map(|e| {
                    let cause = if drain_ended.contains(&e.1.backend) {
                        EndCause::DrainTimeout
                    } else {
                        EndCause::BackendRemoved
                    };
                    (e, cause)
                }));
        for ((session, rec), cause) in all {
            self.session_ended_here(session, rec, cause, false);
        }
    }

    /// The removed backends whose records still end with a `DELETE` (each for one
    /// session TTL after its removal: by then every record naming it has expired).
    fn removed_live(&self, now: Instant) -> Vec<mcp_router_core::BackendId> {
        let ttl = self.router.config().session_ttl;
        let mut l = self.removed_live.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|&(id, at)| {
            now.saturating_duration_since(at) < ttl && self.router.removed_backend(id).is_some()
        });
        l.iter().map(|&(id, _)| id).collect()
    }

    /// Redis: the removed backends whose records the drain sweep still ends with a
    /// `DELETE` each, by the name the records carry (a removed backend's records read
    /// as no backend). A name configured again (a later reload put it back) is not
    /// swept: its records read as the new backend's.
    pub fn removed_live_names(&self, now: Instant) -> Vec<(mcp_router_core::BackendId, String)> {
        self.removed_live(now)
            .into_iter()
            .filter_map(|id| {
                let b = self.router.removed_backend(id)?;
                self.router
                    .backend_by_name(&b.name)
                    .is_none()
                    .then(|| (id, b.name.clone()))
            })
            .collect()
    }

    /// Backends just removed from the configuration, with reaping on: one connect to
    /// each (at most [`REMOVED_PROBE`]); one that answers has its sessions ended, each
    /// with a `DELETE` (sent once, no retry), by the expiry tick on the embedded store
    /// or by the drain sweep over the expiry index on Redis (every replica that was
    /// reloaded sweeps; the sweep's script ends and claims each record once); one that
    /// does not answer (usually: the pod is gone) costs nothing more, its sessions end
    /// as if it had died.
    /// Not with `--failover reinitialize`: there a removed backend's sessions move to
    /// another backend on their next request, which needs their records.
    fn reap_removed(&self, ids: &[mcp_router_core::BackendId]) {
        let cfg = self.router.config();
        if !cfg.reap.enabled || cfg.failover.is_some() {
            return;
        }
        let timeout = cfg.timeouts.connect.min(REMOVED_PROBE);
        for &id in ids {
            let Some(b) = self.router.removed_backend(id) else {
                continue;
            };
            let answers = (b.host.as_str(), b.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok());
            if answers {
                info!(backend = %b.name, "removed backend still answers: its sessions end with a DELETE each");
                self.removed_live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, Instant::now()));
            } else {
                info!(backend = %b.name, "removed backend does not answer: its sessions end without DELETE");
            }
        }
    }

    /// A record the router removed itself (not through a connection), or one of
    /// the shared store's expiries this replica `claimed`: count and log it, and
    /// queue its `DELETE` upstream when the core says so. A claim whose `DELETE` is
    /// not sent is acknowledged at once.
    pub fn session_ended_here(
        &self,
        session: mcp_router_core::mcp::SessionKey,
        rec: mcp_router_core::Record,
        cause: EndCause,
        claimed: bool,
    ) {
        self.ended(session, None, rec, cause, claimed);
    }

    /// [`Shared::session_ended_here`], the claim acknowledged by `ack` when given.
    fn ended(
        &self,
        session: mcp_router_core::mcp::SessionKey,
        ack: Option<mcp_router_core::mcp::SessionKey>,
        rec: mcp_router_core::Record,
        cause: EndCause,
        claimed: bool,
    ) {
        let reap_done =
            |s: mcp_router_core::mcp::SessionKey| self.reap_done(ack.clone().unwrap_or(s));
        self.router.session_ended(rec.backend);
        let name = if self.router.is_configured(rec.backend) {
            self.router.name(rec.backend)
        } else if let (EndCause::BackendRemoved, Some(b)) =
            (cause, self.router.removed_backend(rec.backend))
        {
            b.name.clone()
        } else {
            if claimed {
                reap_done(session);
            }
            return;
        };
        info!(session = %session, backend = %name, cause = cause.as_str(), "session ended");
        self.metrics.session_ended(cause);
        if !self.router.config().reap.enabled || !mcp_router_core::reap::reaps(rec.era, cause) {
            if claimed {
                reap_done(session);
            }
            return;
        }
        let mut job = mcp_router_core::ReapJob::new(session.clone(), rec.backend, cause);
        job.claimed = claimed;
        job.ack = ack.clone();
        if let Some(r) = self.reaper.push(job) {
            self.metrics.session_reaped(r);
            if claimed {
                reap_done(session);
            }
        }
    }

    /// A session claimed from the shared store's expiry index (or a drained backend's)
    /// ended: reaped by `upstream` when it failed over, acknowledged by `id`.
    pub fn claimed_session_ended(
        &self,
        id: mcp_router_core::mcp::SessionKey,
        upstream: Option<mcp_router_core::mcp::SessionKey>,
        rec: mcp_router_core::Record,
        cause: EndCause,
    ) {
        match upstream {
            Some(up) => self.ended(up, Some(id), rec, cause, true),
            None => self.ended(id, None, rec, cause, true),
        }
    }

    /// A claimed expiry is over: acknowledged in the store by the next claim round.
    pub fn reap_done(&self, session: mcp_router_core::mcp::SessionKey) {
        self.reap_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(session);
    }

    /// Active health check: a TCP connect to every backend.
    pub fn health_check(&self) {
        let router = &self.router;
        let timeout = router.config().timeouts.connect;
        for m in router.status(Instant::now()) {
            let (id, b) = (m.id, m.backend);
            let ok = (b.host.as_str(), b.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok());
            let h = if ok {
                router.connect_ok(id)
            } else {
                router.connect_failed(id, Instant::now())
            };
            self.report(
                &Event::BackendHealth {
                    backend: id,
                    health: h,
                },
                None,
            );
        }
    }

    /// Resolve every `--discover` name once, then install the resulting backend set.
    /// A name that fails to resolve keeps its previous members (a DNS blip must not
    /// end every session); one that resolves to nothing has none.
    pub fn discover_once(&self) {
        let groups = self.settings().discover.clone();
        for (i, g) in groups.iter().enumerate() {
            match self.resolver.resolve(&g.host, g.port) {
                Ok(addrs) => {
                    let members = admin::discovered_members(g, addrs);
                    if let Ok(mut d) = self.discovered.lock() {
                        if let Some(slot) = d.get_mut(i) {
                            *slot = members;
                        }
                    }
                }
                Err(e) => {
                    warn!(name = %g.name, host = %g.host, error = %e, "discovery: resolving failed; keeping the last members")
                }
            }
        }
        self.apply_backends();
    }

    /// Install the static backends of the settings in force plus the discovered ones.
    pub fn apply_backends(&self) {
        let core = self.settings().core.clone();
        let all = match self.discovered.lock() {
            Ok(d) => admin::all_backends(&core.backends, &d),
            Err(_) => core.backends.clone(),
        };
        let changes = self.router.set_backends(core, all, Instant::now());
        for name in &changes.added {
            info!(backend = %name, "backend added");
        }
        for name in &changes.removed {
            warn!(backend = %name, "backend removed: its sessions end");
        }
        self.reap_removed(&changes.removed_ids);
    }

    /// Re-read the configuration (flags, environment, `--config` file) and apply what
    /// can change at run time: backends, discovery, draining, limits and timeouts (new
    /// connections use the new limits; open connections and streams are untouched).
    /// The listen addresses, the store and the worker count need a restart.
    pub fn reload(&self, cli: &Cli) -> Result<(), ConfigError> {
        let new = cli.settings()?;
        {
            let mut cur = self.settings.write().unwrap_or_else(|e| e.into_inner());
            if new.listen != cur.listen || new.admin_listen != cur.admin_listen {
                warn!("reload: listen addresses cannot change without a restart; keeping them");
            }
            if std::mem::discriminant(&new.store) != std::mem::discriminant(&cur.store) {
                warn!("reload: the session store cannot change without a restart; keeping it");
            }
            let groups = new.discover.len();
            *cur = Settings {
                listen: cur.listen,
                admin_listen: cur.admin_listen,
                store: cur.store.clone(),
                workers: cur.workers,
                ..new
            };
            if let Ok(mut d) = self.discovered.lock() {
                d.resize(groups, Vec::new());
            }
        }
        self.discover_once();
        let drain = self.settings().drain.clone();
        for m in self.router.status(Instant::now()) {
            self.router.set_draining(
                &m.backend.name,
                drain.contains(&m.backend.name),
                Instant::now(),
            );
        }
        let keys = self
            .router
            .config()
            .session_keys
            .as_ref()
            .map(|r| r.ids().join(","));
        info!(backends = self.router.ids().len(), draining = ?drain, session_keys = ?keys, "configuration reloaded");
        Ok(())
    }

    /// Answer one parsed admin request (the verdicts and the page are the core's).
    pub fn admin_answer(&self, req: &admin::AdminRequest<'_>) -> admin::AdminAnswer {
        let auth = self.settings().admin_auth.clone();
        let a = admin::answer(
            req,
            &auth,
            &self.router,
            &self.metrics,
            admin::StoreState {
                kind: self.store_kind(),
                reachable: self.store_ready(),
            },
            Instant::now(),
        );
        if let Some((name, draining)) = &a.drained {
            info!(backend = %name, draining, "backend drain state changed (admin)");
        } else if matches!(a.status, 401 | 403) {
            // the reason only: never the credential
            warn!(
                status = a.status,
                reason = a.body.trim_end(),
                "admin request refused"
            );
        }
        a
    }
}

/// The wall-clock time, unix seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Run `tick` every `every` (read anew each round) on a named thread until `shutdown`.
fn every(
    name: &str,
    shutdown: &Arc<Shutdown>,
    period: impl Fn() -> Duration + Send + 'static,
    tick: impl Fn() + Send + 'static,
) {
    let sd = shutdown.clone();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while !sd.wait_blocking(period()) {
                tick();
            }
        });
    if let Err(e) = spawned {
        error!(thread = name, error = %e, "cannot start a background thread");
    }
}

/// Start the background work of a serving router on threads: the embedded store's
/// expiry and, when configured, the active health check. Both stop at `shutdown`.
pub fn start_background(shared: &Arc<Shared>, shutdown: &Arc<Shutdown>) {
    crate::reap::start_reapers(shared, shutdown);
    if let StoreSettings::Redis(r) = &shared.settings().store {
        crate::reap::start_redis_claims(shared, r, shutdown);
    }
    {
        // the wall clock for sealed ids' issue times and ages, followed if stepped
        let sh = shared.clone();
        every(
            "mcp-clock",
            shutdown,
            || Duration::from_secs(1),
            move || sh.router.set_unix_time(Instant::now(), unix_now()),
        );
    }
    if shared.memory.is_some() {
        let sh = shared.clone();
        let period = shared.router.config().expiry_interval;
        every(
            "mcp-expiry",
            shutdown,
            move || period,
            move || sh.expire_memory(Instant::now()),
        );
    }
    if let Some(period) = shared.router.config().health_check_interval {
        let sh = shared.clone();
        every(
            "mcp-health",
            shutdown,
            move || period,
            move || sh.health_check(),
        );
    }
}

/// Start the operating work of the binaries: DNS discovery (a first round before this
/// returns, so that clients meet the discovered backends), and signals: SIGTERM and
/// Ctrl-C trigger `shutdown`, SIGHUP reloads the configuration (a configuration that
/// does not parse is refused and the running one kept).
pub fn start_ops(shared: &Arc<Shared>, cli: &Cli, shutdown: &Arc<Shutdown>) {
    if !shared.settings().discover.is_empty() {
        shared.discover_once();
        let sh = shared.clone();
        let sh2 = shared.clone();
        every(
            "mcp-discovery",
            shutdown,
            move || sh.settings().discover_interval,
            move || sh2.discover_once(),
        );
    }
    let (sh, cli) = (shared.clone(), cli.clone());
    signal_thread(
        shutdown,
        Some(Box::new(move || {
            info!("SIGHUP: reloading the configuration");
            if let Err(e) = sh.reload(&cli) {
                error!(error = %e, "reload refused; the running configuration stays");
            }
        })),
    );
}

/// The signal thread: SIGTERM and SIGINT trigger `shutdown`; with `reload`, SIGHUP runs
/// it (without, SIGHUP keeps its default action). A second SIGTERM or SIGINT while the
/// shutdown runs exits the process at once (status 1): the operator's way out of a
/// drain they do not want to wait for (`--shutdown-grace`) or one that does not end.
/// Stdio children go with it (their parent-death signal is SIGKILL).
pub fn signal_thread(shutdown: &Arc<Shutdown>, reload: Option<Box<dyn Fn() + Send>>) {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let wanted: &[i32] = if reload.is_some() {
            &[SIGHUP, SIGINT, SIGTERM]
        } else {
            &[SIGINT, SIGTERM]
        };
        let mut signals = match signal_hook::iterator::Signals::new(wanted) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot install signal handlers: reload and graceful shutdown disabled");
                return;
            }
        };
        let sd = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name("mcp-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    match (&reload, sig) {
                        (Some(reload), SIGHUP) => reload(),
                        _ if sd.is_set() => {
                            warn!("second shutdown signal: exiting now");
                            std::process::exit(1);
                        }
                        _ => {
                            info!("shutdown signal received");
                            sd.trigger();
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "cannot start the signal thread");
        }
    }
}

/// Thread-per-core placement: for each of `workers` executors (default: one per CPU
/// in `cpus`, the CPUs the process may run on), the CPU it is pinned to, round robin
/// over `cpus`; `None` (not pinned) when none is known.
pub fn core_plan(workers: Option<usize>, cpus: &[usize]) -> Vec<Option<usize>> {
    let n = workers.unwrap_or(cpus.len()).max(1);
    (0..n)
        .map(|i| (!cpus.is_empty()).then(|| cpus[i % cpus.len()]))
        .collect()
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// What every binary says at start: the replicas warning and the `listening` line
/// (with `listen=<addr>`, which operators and the test harness read).
pub fn log_listening(shared: &Shared, frontend: &str, addr: SocketAddr) {
    let settings = shared.settings();
    let sealed = settings.core.session_ids == mcp_router_core::SessionIds::Sealed;
    // Sealed ids route on any replica; with records kept in the embedded store the
    // precise end of a session is still this replica's alone.
    if settings.replicas_expected > 1
        && shared.memory.is_some()
        && (!sealed || settings.core.session_records)
    {
        warn!(
            replicas_expected = settings.replicas_expected,
            "several router replicas expected but the session store is embedded: \
             sessions will break when a client's requests reach another replica; \
             use a shared store"
        );
    }
    let backends: Vec<String> = shared
        .router
        .status(Instant::now())
        .into_iter()
        .map(|m| m.backend.name.clone())
        .collect();
    info!(listen = %addr, ?backends, store = shared.store_kind(), ttl_s = settings.core.session_ttl.as_secs(), session_ids = if sealed { "sealed" } else { "passthrough" }, session_keys = ?settings.core.session_keys.as_ref().map(|r| r.ids().join(",")), frontend, "mcp-router listening");
    drop(settings);
    for id in shared.router.ids() {
        shared.probe_base_path(id);
    }
}

/// Parse the command line (with `name` in help and errors), set up logging to stderr
/// (`RUST_LOG`, default `info`; `--log-format json` for one JSON object per line) and
/// build the settings; a bad configuration exits 2 with a message naming the field.
/// `check` (or `--check`) probes the backends and exits instead of returning.
pub fn load_cli(name: &'static str) -> (Cli, Settings) {
    use clap::{CommandFactory, FromArgMatches};
    // `mcp-router check --backend ...`: clap wants a subcommand after the flags it
    // does not own, so the word moves to the end.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "check") {
        let c = args.remove(1);
        args.push(c);
    }
    let m = Cli::command()
        .name(name)
        .bin_name(name)
        .get_matches_from(args);
    let cli = Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    if cli.check || cli.command == Some(crate::config::Command::Check) {
        let ok = crate::check::run(&settings, &mut std::io::stdout());
        std::process::exit(if ok { 0 } else { 1 });
    }
    init_logging(settings.log_format);
    if settings.admin_listen.is_some() && !settings.admin_auth.actions_enabled() {
        warn!("admin listener is not on loopback and no --admin-token is set: drain/undrain are refused (403)");
    }
    (cli, settings)
}

/// Logging to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: crate::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        crate::config::LogFormat::Text => b.init(),
        crate::config::LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

/// A listener that cannot be bound ends the start: logged, exit status 1. `what` names
/// which listener (`""` for the MCP one, `" (admin)"`).
pub fn listen_exit(addr: SocketAddr, what: &str, e: &std::io::Error) -> ! {
    error!(listen = %addr, error = %e, "cannot listen{what}");
    std::process::exit(1);
}

/// What every binary says once its admin listener is bound.
pub fn log_admin_listening(addr: SocketAddr) {
    info!(admin = %addr, "admin listener: / (status page) /metrics /healthz /readyz /admin/backends/<name>/drain");
}

/// Exit with status 2 and a message naming the bad field (for the binaries).
pub fn config_exit(bin: &str, e: &ConfigError) -> ! {
    eprintln!("{bin}: bad configuration: {e}");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::core_plan;

    #[test]
    fn executors_are_pinned_round_robin_over_the_allowed_cpus() {
        // default: one executor per allowed CPU, each on its own
        assert_eq!(core_plan(None, &[2, 5]), vec![Some(2), Some(5)]);
        // more executors than CPUs wrap around; fewer take the first ones
        assert_eq!(core_plan(Some(3), &[2, 5]), vec![Some(2), Some(5), Some(2)]);
        assert_eq!(core_plan(Some(1), &[2, 5]), vec![Some(2)]);
        // at least one executor; unpinned when no CPU is known
        assert_eq!(core_plan(Some(0), &[7]), vec![Some(7)]);
        assert_eq!(core_plan(None, &[]), vec![None]);
        assert_eq!(core_plan(Some(2), &[]), vec![None, None]);
    }
}
