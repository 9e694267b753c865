//! Shared routing state: the backends, their health and session counts, and the
//! balancing policy that places new sessions and stateless requests.
//!
//! One [`Router`] is shared by every connection of a router process (it is `Sync`:
//! plain atomics, no locks), so connections handled on different threads see the same
//! health and load. It reads no clock: every method that needs the time takes `now`.

use crate::config::{Backend, Config};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Index of a backend in [`Config::backends`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u16);

impl BackendId {
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
}

/// A pluggable balancing policy. It must pick an `up`, non-`excluded` backend, or
/// return `None` when there is none.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Choose a backend index for a request of `kind`.
    fn pick(&self, backends: &[BackendView], kind: PickKind) -> Option<usize>;
}

/// The default policy: fewest active sessions, round-robin among ties. Stateless
/// requests use the same rule, so with no sessions anywhere it is plain round-robin.
#[derive(Debug, Default)]
pub struct LeastSessions {
    next: AtomicUsize,
}

impl Balancer for LeastSessions {
    fn pick(&self, backends: &[BackendView], _kind: PickKind) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed) % n;
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let b = backends[i];
            if !b.up || b.excluded {
                continue;
            }
            if best.is_none_or(|(_, s)| b.active_sessions < s) {
                best = Some((i, b.active_sessions));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[derive(Debug, Default)]
struct BackendState {
    /// Sessions recorded for this backend and not yet ended (this process's view).
    active: AtomicU64,
    /// Milliseconds since the router's epoch until which the backend is down; 0: up.
    down_until: AtomicU64,
    /// Consecutive failures, for the exponential backoff.
    failures: AtomicU32,
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

/// Backends, their health and load, and the balancing policy.
#[derive(Debug)]
pub struct Router {
    config: Arc<Config>,
    epoch: Instant,
    state: Vec<BackendState>,
    balancer: Box<dyn Balancer>,
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
        let state = config
            .backends
            .iter()
            .map(|_| BackendState::default())
            .collect();
        Router {
            config,
            epoch,
            state,
            balancer,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// A backend's configuration. Panics on an id this router did not hand out.
    pub fn backend(&self, id: BackendId) -> &Backend {
        &self.config.backends[id.index()]
    }

    /// Whether `id` names a configured backend (ids read back from a shared store may
    /// not).
    pub fn is_configured(&self, id: BackendId) -> bool {
        id.index() < self.state.len()
    }

    /// Look a backend up by its configured name.
    pub fn backend_by_name(&self, name: &str) -> Option<BackendId> {
        self.config
            .backends
            .iter()
            .position(|b| b.name == name)
            .map(|i| BackendId(i as u16))
    }

    /// Number of configured backends.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether no backend is configured (never true for a validated config).
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether the backend may be chosen now (not down, or its backoff ran out).
    pub fn is_up(&self, id: BackendId, now: Instant) -> bool {
        match self.state.get(id.index()) {
            Some(s) => s.down_until.load(Relaxed) <= self.ms(now),
            None => false,
        }
    }

    /// Sessions this process routes to the backend.
    pub fn active_sessions(&self, id: BackendId) -> u64 {
        self.state
            .get(id.index())
            .map_or(0, |s| s.active.load(Relaxed))
    }

    /// Choose a backend for a request that has no session (yet), skipping `exclude`.
    /// `None` when no backend is up.
    pub fn pick(&self, kind: PickKind, exclude: &[BackendId], now: Instant) -> Option<BackendId> {
        let now_ms = self.ms(now);
        // At most a few dozen backends: a stack array avoids allocating on the hot path.
        const STACK: usize = 32;
        let view = |i: usize, s: &BackendState| BackendView {
            up: s.down_until.load(Relaxed) <= now_ms,
            active_sessions: s.active.load(Relaxed),
            excluded: exclude.contains(&BackendId(i as u16)),
        };
        let picked = if self.state.len() <= STACK {
            let mut arr = [BackendView {
                up: false,
                active_sessions: 0,
                excluded: true,
            }; STACK];
            for (i, s) in self.state.iter().enumerate() {
                arr[i] = view(i, s);
            }
            self.balancer.pick(&arr[..self.state.len()], kind)
        } else {
            let v: Vec<_> = self
                .state
                .iter()
                .enumerate()
                .map(|(i, s)| view(i, s))
                .collect();
            self.balancer.pick(&v, kind)
        };
        picked
            .filter(|&i| i < self.state.len())
            .map(|i| BackendId(i as u16))
    }

    /// Connecting to the backend failed or timed out: mark it down with exponential
    /// backoff (`backoff_initial`, doubling, capped at `backoff_max`).
    pub fn connect_failed(&self, id: BackendId, now: Instant) -> Health {
        let Some(s) = self.state.get(id.index()) else {
            return Health::Same;
        };
        let was_up = s.down_until.load(Relaxed) <= self.ms(now);
        let f = s.failures.fetch_add(1, Relaxed).min(20);
        let backoff = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << f)
            .min(self.config.backoff_max);
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
        let Some(s) = self.state.get(id.index()) else {
            return Health::Same;
        };
        s.failures.store(0, Relaxed);
        if s.down_until.swap(0, Relaxed) != 0 {
            Health::Up
        } else {
            Health::Same
        }
    }

    /// A session was recorded for the backend.
    pub fn session_started(&self, id: BackendId) {
        if let Some(s) = self.state.get(id.index()) {
            s.active.fetch_add(1, Relaxed);
        }
    }

    /// A session of the backend ended (its record was removed).
    pub fn session_ended(&self, id: BackendId) {
        if let Some(s) = self.state.get(id.index()) {
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
    fn many_backends_use_the_heap_path() {
        let (r, t) = router(40);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            seen.insert(r.pick(PickKind::Stateless, &[], t).unwrap());
        }
        assert_eq!(seen.len(), 40);
    }
}
