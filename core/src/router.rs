//! Shared routing state: the backends, their health and session counts, and the
//! balancing policy that places new sessions and stateless requests.
//!
//! One [`Router`] is shared by every connection of a router process (it is `Sync`:
//! plain atomics, no locks), so connections handled on different threads see the same
//! health and load. It reads no clock: every method that needs the time takes `now`.

use crate::config::{Backend, Config};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Index of a backend in [`Config::backends`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u16);

impl BackendId {
    /// A backend this configuration does not have: what a stored record naming an
    /// unknown backend reads as ([`Router::is_configured`] is false for it; the
    /// configuration refuses as many backends as would reach it).
    pub const UNCONFIGURED: BackendId = BackendId(u16::MAX);

    /// As a slice index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Why a backend is being chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickKind {
    /// The request opens a session (`initialize` without a session, or a legacy SSE
    /// `GET`): the backend will own the session for its whole life.
    NewSession,
    /// A request that belongs to no session (stateless traffic, pings): any healthy
    /// backend will do.
    Stateless,
}

/// What a balancing policy sees of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendView {
    /// Not marked down (or its backoff has run out).
    pub up: bool,
    /// Sessions this router process currently routes to the backend.
    pub active_sessions: u64,
    /// Already tried for this request (connecting failed): do not pick again.
    pub excluded: bool,
    /// Requests this router process has in flight to the backend (sent, response not
    /// yet complete; an open stream counts until it ends).
    pub in_flight: u64,
    /// A digest of the backend's name: its seed for rendezvous hashing
    /// ([`crate::affinity::score`]), stable across restarts and reordering.
    pub seed: u64,
}

/// A pluggable balancing policy. It must pick an `up`, non-`excluded` backend, or
/// return `None` when there is none.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Choose a backend index for a request of `kind`; `key` is the request's
    /// affinity key ([`crate::affinity::Affinity::key`]), `None` when it has none.
    fn pick(&self, backends: &[BackendView], kind: PickKind, key: Option<u64>) -> Option<usize>;
}

/// The default policy. A new session goes to the backend with the fewest active
/// sessions (sessions are long-lived; requests in flight would say little about the
/// load to come). A stateless request with an affinity key goes to the backend of
/// highest rendezvous score among those under the load cap
/// ([`crate::affinity::load_cap`]); without a key, to the one with the fewest requests
/// in flight. Ties go round-robin.
#[derive(Debug, Default)]
pub struct LeastSessions {
    next: AtomicUsize,
}

impl LeastSessions {
    /// The usable backend minimising `load`, round-robin among ties.
    fn least(&self, backends: &[BackendView], load: impl Fn(&BackendView) -> u64) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed) % n;
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let b = &backends[i];
            if !b.up || b.excluded {
                continue;
            }
            let l = load(b);
            if best.is_none_or(|(_, s)| l < s) {
                best = Some((i, l));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Rendezvous hashing with bounded load: the usable backend of highest
/// [`crate::affinity::score`] for `key` whose requests in flight are under the cap.
/// Allocates nothing: two passes over the views.
pub fn rendezvous(backends: &[BackendView], key: u64) -> Option<usize> {
    let usable = |b: &&BackendView| b.up && !b.excluded;
    let (mut total, mut eligible) = (0u64, 0u64);
    for b in backends.iter().filter(usable) {
        total = total.saturating_add(b.in_flight);
        eligible += 1;
    }
    let cap = crate::affinity::load_cap(total, eligible);
    let mut best: Option<(usize, u64)> = None;
    for (i, b) in backends.iter().enumerate() {
        if !usable(&b) || b.in_flight >= cap {
            continue;
        }
        let s = crate::affinity::score(key, b.seed);
        if best.is_none_or(|(_, t)| s > t) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

impl Balancer for LeastSessions {
    fn pick(&self, backends: &[BackendView], kind: PickKind, key: Option<u64>) -> Option<usize> {
        match (kind, key) {
            (PickKind::NewSession, _) => self.least(backends, |b| b.active_sessions),
            // the cap always leaves a backend at or under the average; the fallback
            // only guards that arithmetic
            (PickKind::Stateless, Some(k)) => {
                rendezvous(backends, k).or_else(|| self.least(backends, |b| b.in_flight))
            }
            (PickKind::Stateless, None) => self.least(backends, |b| b.in_flight),
        }
    }
}

/// One request counted in flight to a backend until dropped (see
/// [`Router::request_started`]). Holds no lock; dropping it is one atomic decrement.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let _ = self
            .0
            .in_flight
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
    }
}

#[derive(Debug, Default)]
struct BackendState {
    /// Sessions recorded for this backend and not yet ended (this process's view).
    active: AtomicU64,
    /// Requests in flight to it ([`InFlight`] guards alive).
    in_flight: AtomicU64,
    /// Milliseconds since the router's epoch until which the backend is down; 0: up.
    down_until: AtomicU64,
    /// Consecutive failures, for the exponential backoff.
    failures: AtomicU32,
    /// Takes no new sessions; its sessions go on.
    draining: AtomicBool,
    /// Milliseconds since the router's epoch at which draining began, plus one; 0:
    /// not draining.
    drain_since: AtomicU64,
}

/// A change of a backend's health worth logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Newly marked down, for this long.
    Down(Duration),
    /// Was down, now reachable again.
    Up,
    /// No change.
    Same,
}

#[derive(Debug, Clone)]
struct Member {
    backend: Arc<Backend>,
    /// [`crate::seal::name_digest`] of its name: how a sealed session id names it.
    digest: [u8; 8],
    state: Arc<BackendState>,
    /// `Some(t)`: removed from the configuration at `t` (a tombstone: its id names no
    /// configured backend until the slot is reused, a full session TTL later).
    removed_at: Option<Instant>,
}

#[derive(Debug)]
struct Table {
    config: Arc<Config>,
    members: Vec<Member>,
}

/// What [`Router::set_backends`] changed, for logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Names of backends that joined.
    pub added: Vec<String>,
    /// Names of backends that left (their sessions end as if they had died).
    pub removed: Vec<String>,
    /// Their ids (tombstones: see [`Router::removed_backend`]).
    pub removed_ids: Vec<BackendId>,
}

/// What metrics and readiness see of one backend.
#[derive(Clone, Debug)]
pub struct MemberStatus {
    /// Its id.
    pub id: BackendId,
    /// Its configuration.
    pub backend: Arc<Backend>,
    /// Not marked down.
    pub up: bool,
    /// Takes no new sessions.
    pub draining: bool,
    /// Live sessions routed to it by this process.
    pub active_sessions: u64,
}

/// Backends, their health and load, and the balancing policy.
///
/// The set of backends can change while the router runs (configuration reload, DNS
/// discovery): [`Router::set_backends`] installs a new table. A backend keeps its
/// [`BackendId`], health and session count across changes as long as its name stays;
/// a removed backend's id stops naming a configured backend, so its sessions end as if
/// it had died. Lookups take a read lock and clone an `Arc` (no allocation).
#[derive(Debug)]
pub struct Router {
    epoch: Instant,
    table: RwLock<Arc<Table>>,
    balancer: Box<dyn Balancer>,
    /// Client connections held ([`ConnPermit`]s alive).
    connections: AtomicUsize,
    /// Connections being refused right now (each answered `503`, then closed).
    refusing: AtomicUsize,
    /// Unix seconds at `epoch` (see [`Router::set_unix_time`]).
    unix_at_epoch: AtomicU64,
    /// The random part of sealing nonces (see [`Router::set_entropy`]).
    nonce_seed: [AtomicU64; 2],
    /// The counting part of sealing nonces.
    nonce_counter: AtomicU64,
}

/// Most connections refused with a `503` at once; past it a refused connection is
/// closed without an answer (a flood must not cost more than the cap it hit).
pub const MAX_REFUSING: usize = 256;

/// One client connection counted against `max_connections` until dropped.
#[derive(Debug)]
pub struct ConnPermit(Arc<Router>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

/// A client connection past `max_connections`.
#[derive(Debug)]
pub enum ConnRefusal {
    /// Answer it `503` (with [`crate::conn::over_capacity_response`]), then close; the
    /// slot is released on drop.
    Answer(RefusalSlot),
    /// Too many refusals in flight already: close it at once.
    Drop,
}

/// A refusal in progress, counted against [`MAX_REFUSING`] until dropped.
#[derive(Debug)]
pub struct RefusalSlot(Arc<Router>);

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Relaxed);
    }
}

impl Router {
    /// A router over `config.backends` (all up), with the default [`LeastSessions`]
    /// policy. `epoch` is any instant not after the first `now` the router will see.
    pub fn new(config: Arc<Config>, epoch: Instant) -> Router {
        Self::with_balancer(config, epoch, Box::<LeastSessions>::default())
    }

    /// A router with a custom balancing policy.
    pub fn with_balancer(
        config: Arc<Config>,
        epoch: Instant,
        balancer: Box<dyn Balancer>,
    ) -> Router {
        let members = config
            .backends
            .iter()
            .map(|b| Member {
                backend: Arc::new(b.clone()),
                digest: crate::seal::name_digest(&b.name),
                state: Arc::default(),
                removed_at: None,
            })
            .collect();
        Router {
            epoch,
            table: RwLock::new(Arc::new(Table { config, members })),
            balancer,
            connections: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            unix_at_epoch: AtomicU64::new(0),
            nonce_seed: [AtomicU64::new(0), AtomicU64::new(0)],
            nonce_counter: AtomicU64::new(0),
        }
    }

    /// Tell the router the wall-clock time (unix seconds) at `now`, for the issue time
    /// and age of sealed session ids. The driver calls it at start and then now and
    /// then (each expiry tick), so that a stepped wall clock is followed.
    pub fn set_unix_time(&self, now: Instant, unix_secs: u64) {
        let since = now.saturating_duration_since(self.epoch).as_secs();
        self.unix_at_epoch
            .store(unix_secs.saturating_sub(since), Relaxed);
    }

    /// The wall-clock time at `now`, unix seconds (as last told by
    /// [`Router::set_unix_time`]).
    pub fn unix_now(&self, now: Instant) -> u64 {
        self.unix_at_epoch.load(Relaxed) + now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Give the router 16 random bytes (the core has no randomness of its own). Each
    /// sealed session id's 12-byte nonce is 4 of them and a 64-bit counter that starts
    /// at a random offset (the other 8), so nonces never repeat within a process, and
    /// two processes sharing a key repeat one only if both their random parts line up.
    /// AES-GCM-SIV is nonce-misuse resistant besides: a repeat would reveal only whether
    /// two tokens carry identical contents. The driver calls this from the operating
    /// system's random source before serving in sealed mode.
    pub fn set_entropy(&self, seed: [u8; 16]) {
        let mut a = [0u8; 8];
        a.copy_from_slice(&seed[..8]);
        self.nonce_seed[0].store(u64::from_le_bytes(a), Relaxed);
        a.copy_from_slice(&seed[8..]);
        self.nonce_seed[1].store(u64::from_le_bytes(a), Relaxed);
    }

    /// A fresh nonce for a sealed session id.
    pub fn next_nonce(&self) -> [u8; crate::seal::NONCE] {
        let n = self.nonce_counter.fetch_add(1, Relaxed);
        let mut out = [0u8; crate::seal::NONCE];
        out[..4].copy_from_slice(&self.nonce_seed[0].load(Relaxed).to_le_bytes()[..4]);
        let c = n.wrapping_add(self.nonce_seed[1].load(Relaxed));
        out[4..].copy_from_slice(&c.to_le_bytes());
        out
    }

    /// The configured backend a sealed session id names (by
    /// [`crate::seal::name_digest`]).
    pub fn backend_by_digest(&self, digest: &[u8; 8]) -> Option<BackendId> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members
            .iter()
            .position(|m| m.removed_at.is_none() && m.digest == *digest)
            .map(|i| BackendId(i as u16))
    }

    /// [`crate::seal::name_digest`] of a configured backend's name.
    pub fn digest_of(&self, id: BackendId) -> Option<[u8; 8]> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members
            .get(id.index())
            .filter(|m| m.removed_at.is_none())
            .map(|m| m.digest)
    }

    fn table(&self) -> Arc<Table> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the
        // value is still whole.
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.table().config.clone()
    }

    /// Install a new configuration and backend set (`backends` replaces
    /// `config.backends`: the static ones plus any discovered). Backends are matched by
    /// name: a kept one keeps its id, health and counts; a new one joins up; a missing
    /// one is removed (a tombstone whose slot is reused a full session TTL later).
    pub fn set_backends(
        &self,
        mut config: Config,
        backends: Vec<Backend>,
        now: Instant,
    ) -> Changes {
        let mut changes = Changes::default();
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        let old = guard.clone();
        let ttl = config.session_ttl;
        let mut members = old.members.clone();
        for (i, m) in members.iter_mut().enumerate() {
            if m.removed_at.is_none() && !backends.iter().any(|b| b.name == m.backend.name) {
                m.removed_at = Some(now);
                changes.removed.push(m.backend.name.clone());
                changes.removed_ids.push(BackendId(i as u16));
            }
        }
        for b in &backends {
            let live = members
                .iter_mut()
                .find(|m| m.removed_at.is_none() && m.backend.name == b.name);
            if let Some(m) = live {
                if *m.backend != *b {
                    m.backend = Arc::new(b.clone());
                }
                continue;
            }
            changes.added.push(b.name.clone());
            let fresh = Member {
                backend: Arc::new(b.clone()),
                digest: crate::seal::name_digest(&b.name),
                state: Arc::default(),
                removed_at: None,
            };
            // reuse a tombstone old enough that no record can still name it
            let reusable = members.iter().position(|m| {
                m.removed_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= ttl)
            });
            match reusable {
                Some(i) => members[i] = fresh,
                None if members.len() < u16::MAX as usize => members.push(fresh),
                None => changes
                    .removed
                    .push(format!("{} (no free backend slot)", b.name)),
            }
        }
        config.backends = backends;
        *guard = Arc::new(Table {
            config: Arc::new(config),
            members,
        });
        changes
    }

    /// A configured backend, `None` for an id that names none (removed, or read back
    /// from a shared store written by a differently configured replica).
    pub fn backend(&self, id: BackendId) -> Option<Arc<Backend>> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members
            .get(id.index())
            .filter(|m| m.removed_at.is_none())
            .map(|m| m.backend.clone())
    }

    /// A backend removed from the configuration, while its slot is not reused (a full
    /// session TTL after the removal): where its sessions' `DELETE`s go.
    pub fn removed_backend(&self, id: BackendId) -> Option<Arc<Backend>> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members
            .get(id.index())
            .filter(|m| m.removed_at.is_some())
            .map(|m| m.backend.clone())
    }

    /// A backend's name for logs (`?<id>` for an unconfigured id).
    pub fn name(&self, id: BackendId) -> String {
        self.backend(id)
            .map_or_else(|| format!("?{}", id.0), |b| b.name.clone())
    }

    /// Whether `id` names a configured backend.
    pub fn is_configured(&self, id: BackendId) -> bool {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members
            .get(id.index())
            .is_some_and(|m| m.removed_at.is_none())
    }

    /// Look a configured backend up by its name.
    pub fn backend_by_name(&self, name: &str) -> Option<BackendId> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members
            .iter()
            .position(|m| m.removed_at.is_none() && m.backend.name == name)
            .map(|i| BackendId(i as u16))
    }

    /// Ids of the configured backends.
    pub fn ids(&self) -> Vec<BackendId> {
        self.status(self.epoch).into_iter().map(|m| m.id).collect()
    }

    /// Every configured backend's health and load.
    pub fn status(&self, now: Instant) -> Vec<MemberStatus> {
        let now_ms = self.ms(now);
        let t = self.table();
        t.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.removed_at.is_none())
            .map(|(i, m)| MemberStatus {
                id: BackendId(i as u16),
                backend: m.backend.clone(),
                up: m.state.down_until.load(Relaxed) <= now_ms,
                draining: m.state.draining.load(Relaxed),
                active_sessions: m.state.active.load(Relaxed),
            })
            .collect()
    }

    /// At least one configured backend is up (readiness).
    pub fn any_up(&self, now: Instant) -> bool {
        self.status(now).iter().any(|m| m.up)
    }

    /// Mark a backend draining (no new sessions; its sessions go on until
    /// `drain_timeout` after `now`) or not. Marking a draining backend again keeps its
    /// first `now`. `false` when no configured backend has that name.
    pub fn set_draining(&self, name: &str, draining: bool, now: Instant) -> bool {
        let t = self.table();
        match t
            .members
            .iter()
            .find(|m| m.removed_at.is_none() && m.backend.name == name)
        {
            Some(m) => {
                let was = m.state.draining.swap(draining, Relaxed);
                if !draining {
                    m.state.drain_since.store(0, Relaxed);
                } else if !was {
                    m.state.drain_since.store(self.ms(now) + 1, Relaxed);
                }
                true
            }
            None => false,
        }
    }

    /// The configured backends that have been draining for at least `drain_timeout`
    /// at `now` (never a millisecond early): their remaining sessions end (appended to
    /// `out`).
    pub fn drain_overdue(&self, now: Instant, out: &mut Vec<BackendId>) {
        let t = self.table();
        let timeout = t.config.drain_timeout.as_millis() as u64;
        let now_ms = self.ms(now);
        for (i, m) in t.members.iter().enumerate() {
            let since = m.state.drain_since.load(Relaxed);
            if m.removed_at.is_none()
                && since != 0
                && m.state.draining.load(Relaxed)
                && now_ms >= since.saturating_add(timeout)
            {
                out.push(BackendId(i as u16));
            }
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn state(&self, id: BackendId) -> Option<Arc<BackendState>> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members.get(id.index()).map(|m| m.state.clone())
    }

    /// Whether the backend may be used now: configured and not down (or its backoff
    /// ran out). A draining backend is up: its sessions go on.
    pub fn is_up(&self, id: BackendId, now: Instant) -> bool {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members
            .get(id.index())
            .filter(|m| m.removed_at.is_none())
            .is_some_and(|m| m.state.down_until.load(Relaxed) <= self.ms(now))
    }

    /// Sessions this process routes to the backend.
    pub fn active_sessions(&self, id: BackendId) -> u64 {
        self.state(id).map_or(0, |s| s.active.load(Relaxed))
    }

    /// Choose a backend for a request that has no session (yet), skipping `exclude`,
    /// down, draining and removed backends. `None` when none is left.
    pub fn pick(&self, kind: PickKind, exclude: &[BackendId], now: Instant) -> Option<BackendId> {
        self.pick_keyed(kind, None, exclude, now)
    }

    /// [`Router::pick`] for a request with affinity key `key` (see
    /// [`crate::affinity`]): a stateless request with a key goes to the same backend as
    /// every other request with that key while that backend is up, not draining and
    /// under the load cap.
    pub fn pick_keyed(
        &self,
        kind: PickKind,
        key: Option<u64>,
        exclude: &[BackendId],
        now: Instant,
    ) -> Option<BackendId> {
        self.pick_inner(kind, key, None, exclude, now)
    }

    /// [`Router::pick_keyed`] among the backends that serve the request's era
    /// (`modern`: 2026-07-28 and later; else a session era), as their `;eras=` says.
    /// `None` also when none serves it; [`Router::serves`] tells the two apart.
    pub fn pick_in_era(
        &self,
        kind: PickKind,
        key: Option<u64>,
        modern: bool,
        exclude: &[BackendId],
        now: Instant,
    ) -> Option<BackendId> {
        self.pick_inner(kind, key, Some(modern), exclude, now)
    }

    /// Whether any configured backend (up or not) serves the era (`modern`: 2026-07-28
    /// and later).
    pub fn serves(&self, modern: bool) -> bool {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.members
            .iter()
            .any(|m| m.removed_at.is_none() && m.backend.eras.serves(modern))
    }

    fn pick_inner(
        &self,
        kind: PickKind,
        key: Option<u64>,
        era: Option<bool>,
        exclude: &[BackendId],
        now: Instant,
    ) -> Option<BackendId> {
        let now_ms = self.ms(now);
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        // At most a few dozen backends: a stack array avoids allocating on the hot path.
        const STACK: usize = 32;
        let view = |i: usize, m: &Member| BackendView {
            up: m.removed_at.is_none()
                && era.is_none_or(|modern| m.backend.eras.serves(modern))
                && !m.state.draining.load(Relaxed)
                && m.state.down_until.load(Relaxed) <= now_ms,
            active_sessions: m.state.active.load(Relaxed),
            excluded: exclude.contains(&BackendId(i as u16)),
            in_flight: m.state.in_flight.load(Relaxed),
            seed: u64::from_le_bytes(m.digest),
        };
        let n = t.members.len();
        let picked = if n <= STACK {
            let mut arr = [BackendView {
                up: false,
                active_sessions: 0,
                excluded: true,
                in_flight: 0,
                seed: 0,
            }; STACK];
            for (i, m) in t.members.iter().enumerate() {
                arr[i] = view(i, m);
            }
            self.balancer.pick(&arr[..n], kind, key)
        } else {
            let v: Vec<_> = t
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| view(i, m))
                .collect();
            self.balancer.pick(&v, kind, key)
        };
        picked.filter(|&i| i < n).map(|i| BackendId(i as u16))
    }

    /// Connecting to the backend failed or timed out: mark it down with exponential
    /// backoff (`backoff_initial`, doubling, capped at `backoff_max`).
    pub fn connect_failed(&self, id: BackendId, now: Instant) -> Health {
        let Some(s) = self.state(id) else {
            return Health::Same;
        };
        let cfg = self.config();
        let was_up = s.down_until.load(Relaxed) <= self.ms(now);
        let f = s.failures.fetch_add(1, Relaxed).min(20);
        let backoff = cfg
            .backoff_initial
            .saturating_mul(1u32 << f)
            .min(cfg.backoff_max);
        let until = self.ms(now + backoff).max(1);
        s.down_until.store(until, Relaxed);
        if was_up {
            Health::Down(backoff)
        } else {
            Health::Same
        }
    }

    /// A connection to the backend succeeded: it is up, and its backoff resets.
    pub fn connect_ok(&self, id: BackendId) -> Health {
        let Some(s) = self.state(id) else {
            return Health::Same;
        };
        s.failures.store(0, Relaxed);
        if s.down_until.swap(0, Relaxed) != 0 {
            Health::Up
        } else {
            Health::Same
        }
    }

    /// A new client connection: counted if under `max_connections` (0: no cap).
    ///
    /// The router accepts and answers `503` with `Retry-After` rather than pausing
    /// accept: a paused listener leaves clients in the kernel's queue with no answer
    /// until their connect times out, and a load balancer in front cannot tell a full
    /// replica from a dead one; a `503` tells both at once, and the cost of a refusal is
    /// bounded by [`MAX_REFUSING`].
    pub fn admit_connection(self: &Arc<Self>) -> Result<ConnPermit, ConnRefusal> {
        let max = self.config().limits.max_connections;
        let n = self.connections.fetch_add(1, Relaxed);
        if max == 0 || n < max {
            return Ok(ConnPermit(self.clone()));
        }
        self.connections.fetch_sub(1, Relaxed);
        if self.refusing.fetch_add(1, Relaxed) < MAX_REFUSING {
            Err(ConnRefusal::Answer(RefusalSlot(self.clone())))
        } else {
            self.refusing.fetch_sub(1, Relaxed);
            Err(ConnRefusal::Drop)
        }
    }

    /// Client connections held now.
    pub fn connections(&self) -> usize {
        self.connections.load(Relaxed)
    }

    /// A request is being sent to the backend: counted in flight until the guard is
    /// dropped (the response complete, the exchange abandoned or the connection gone).
    /// `None` for an id that names no slot. No allocation: an `Arc` clone.
    pub fn request_started(&self, id: BackendId) -> Option<InFlight> {
        let s = self.state(id)?;
        s.in_flight.fetch_add(1, Relaxed);
        Some(InFlight(s))
    }

    /// Requests in flight to the backend from this process.
    pub fn in_flight(&self, id: BackendId) -> u64 {
        self.state(id).map_or(0, |s| s.in_flight.load(Relaxed))
    }

    /// A session was recorded for the backend.
    pub fn session_started(&self, id: BackendId) {
        if let Some(s) = self.state(id) {
            s.active.fetch_add(1, Relaxed);
        }
    }

    /// A session of the backend ended (its record was removed).
    pub fn session_ended(&self, id: BackendId) {
        if let Some(s) = self.state(id) {
            // Saturating: a record created before a restart may end after it.
            let _ = s
                .active
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(n: usize) -> (Router, Instant) {
        let mut c = Config::default();
        for i in 0..n {
            c.backends
                .push(Backend::parse(&format!("http://127.0.0.1:{}", 1000 + i), None).unwrap());
        }
        let t0 = Instant::now();
        (Router::new(Arc::new(c), t0), t0)
    }

    #[test]
    fn round_robin_among_ties() {
        let (r, t) = router(3);
        let picks: Vec<_> = (0..6)
            .map(|_| r.pick(PickKind::Stateless, &[], t).unwrap().0)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_sessions_wins() {
        let (r, t) = router(3);
        r.session_started(BackendId(0));
        r.session_started(BackendId(2));
        for _ in 0..4 {
            assert_eq!(r.pick(PickKind::NewSession, &[], t), Some(BackendId(1)));
        }
        r.session_started(BackendId(1));
        r.session_ended(BackendId(2));
        assert_eq!(r.pick(PickKind::NewSession, &[], t), Some(BackendId(2)));
        // ending more sessions than started never underflows
        r.session_ended(BackendId(2));
        r.session_ended(BackendId(2));
        assert_eq!(r.active_sessions(BackendId(2)), 0);
    }

    #[test]
    fn down_backends_are_avoided_with_backoff() {
        let (r, t) = router(2);
        assert_eq!(
            r.connect_failed(BackendId(0), t),
            Health::Down(Duration::from_secs(1))
        );
        for _ in 0..4 {
            assert_eq!(r.pick(PickKind::NewSession, &[], t), Some(BackendId(1)));
        }
        assert!(!r.is_up(BackendId(0), t + Duration::from_millis(999)));
        assert!(r.is_up(BackendId(0), t + Duration::from_secs(1)));
        // second consecutive failure doubles the backoff
        let t2 = t + Duration::from_secs(1);
        assert_eq!(
            r.connect_failed(BackendId(0), t2),
            Health::Down(Duration::from_secs(2))
        );
        assert!(!r.is_up(BackendId(0), t2 + Duration::from_millis(1999)));
        assert_eq!(r.connect_ok(BackendId(0)), Health::Up);
        assert!(r.is_up(BackendId(0), t2));
        assert_eq!(
            r.connect_failed(BackendId(0), t2),
            Health::Down(Duration::from_secs(1))
        );
        // capped
        let mut now = t2;
        for _ in 0..40 {
            now += Duration::from_secs(100);
            r.connect_failed(BackendId(0), now);
        }
        assert!(r.is_up(BackendId(0), now + Duration::from_secs(30)));
    }

    #[test]
    fn exclusion_and_all_down() {
        let (r, t) = router(2);
        assert_eq!(
            r.pick(PickKind::Stateless, &[BackendId(0)], t),
            Some(BackendId(1))
        );
        assert_eq!(
            r.pick(PickKind::Stateless, &[BackendId(0), BackendId(1)], t),
            None
        );
        r.connect_failed(BackendId(0), t);
        r.connect_failed(BackendId(1), t);
        assert_eq!(r.pick(PickKind::NewSession, &[], t), None);
    }

    #[test]
    fn draining_backends_take_no_new_sessions_but_stay_up() {
        let (r, t) = router(2);
        assert!(r.set_draining("127.0.0.1:1000", true, t));
        for _ in 0..4 {
            assert_eq!(r.pick(PickKind::NewSession, &[], t), Some(BackendId(1)));
        }
        assert!(r.is_up(BackendId(0), t), "its sessions go on");
        assert!(!r.set_draining("nope", true, t));
        r.set_draining("127.0.0.1:1000", false, t);
        let picks: std::collections::HashSet<_> = (0..4)
            .map(|_| r.pick(PickKind::Stateless, &[], t))
            .collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn a_drain_is_overdue_drain_timeout_after_it_began() {
        let (r, t) = router(2);
        let s = Duration::from_secs;
        let overdue = |at| {
            let mut out = Vec::new();
            r.drain_overdue(at, &mut out);
            out
        };
        assert!(overdue(t + s(10_000)).is_empty(), "nothing draining");
        r.set_draining("127.0.0.1:1000", true, t + s(100));
        let ms = Duration::from_millis;
        assert!(overdue(t + s(700) - ms(1)).is_empty());
        // marking it again (a reload with the same list) keeps the first start
        r.set_draining("127.0.0.1:1000", true, t + s(400));
        assert_eq!(overdue(t + s(700) + ms(1)), [BackendId(0)]);
        // undrained, then drained anew: the timeout starts over
        r.set_draining("127.0.0.1:1000", false, t + s(700));
        assert!(overdue(t + s(700)).is_empty());
        r.set_draining("127.0.0.1:1000", true, t + s(800));
        assert!(overdue(t + s(1400) - ms(1)).is_empty());
        assert_eq!(overdue(t + s(1400) + ms(1)), [BackendId(0)]);
    }

    #[test]
    fn backend_set_changes_keep_ids_and_state_by_name() {
        let (r, t) = router(2);
        r.session_started(BackendId(1));
        let cfg = (*r.config()).clone();
        let b1 = cfg.backends[1].clone();
        let b2 = Backend::parse("http://127.0.0.1:2000", None).unwrap();
        let ch = r.set_backends(cfg.clone(), vec![b1.clone(), b2.clone()], t);
        assert_eq!(ch.removed, ["127.0.0.1:1000"]);
        assert_eq!(ch.added, ["127.0.0.1:2000"]);
        // the kept backend keeps its id and count; the removed id names nothing
        assert_eq!(r.backend_by_name(&b1.name), Some(BackendId(1)));
        assert_eq!(r.active_sessions(BackendId(1)), 1);
        assert!(!r.is_configured(BackendId(0)));
        assert!(!r.is_up(BackendId(0), t));
        assert_eq!(
            r.backend_by_name(&b2.name),
            Some(BackendId(2)),
            "no slot reuse before a TTL"
        );
        for _ in 0..6 {
            assert_ne!(r.pick(PickKind::Stateless, &[], t), Some(BackendId(0)));
        }
        // a TTL later the tombstone's slot is reused
        let later = t + cfg.session_ttl;
        let b3 = Backend::parse("http://127.0.0.1:3000", None).unwrap();
        r.set_backends(cfg, vec![b1, b2, b3.clone()], later);
        assert_eq!(r.backend_by_name(&b3.name), Some(BackendId(0)));
        assert_eq!(
            r.active_sessions(BackendId(0)),
            0,
            "fresh state in a reused slot"
        );
        assert_eq!(r.status(later).len(), 3);
    }

    #[test]
    fn many_backends_use_the_heap_path() {
        let (r, t) = router(40);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            seen.insert(r.pick(PickKind::Stateless, &[], t).unwrap());
        }
        assert_eq!(seen.len(), 40);
    }
}
