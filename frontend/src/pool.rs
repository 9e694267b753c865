//! Idle upstream connections, per backend.

use crate::rt::Io;
use mcp_router_core::BackendId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which pool a connection belongs to: the backend id *and* its address, so that a
/// backend slot reused for another address (DNS discovery) never gets an old socket.
pub type PoolKey = (BackendId, String, u16);

/// Keep-alive pool: per backend, a LIFO of idle connections with the time they went
/// idle. Bounded by `max_idle` per backend and by `idle_timeout`.
pub struct Pool<S> {
    idle: Mutex<HashMap<PoolKey, Vec<(S, Instant)>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl<S> std::fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl<S: Io> Pool<S> {
    /// An empty pool.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool<S> {
        Pool {
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently used idle connection that is still open, if any, at `now`.
    pub fn checkout(&self, key: &PoolKey, now: Instant) -> Option<S> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some((mut s, since)) = list.pop() {
            if now.duration_since(since) >= self.idle_timeout {
                continue;
            }
            if s.idle_alive() {
                return Some(s);
            }
        }
        None
    }

    /// Return a clean connection for reuse, idle from `now`.
    pub fn checkin(&self, key: PoolKey, s: S, now: Instant) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            if list.len() >= self.max_idle {
                list.remove(0);
            }
            list.push((s, now));
        }
    }

    /// Drop connections idle past the timeout at `now` (the runtime's clock), and
    /// empty pools.
    pub fn expire(&self, now: Instant) {
        if let Ok(mut idle) = self.idle.lock() {
            for list in idle.values_mut() {
                list.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
            }
            idle.retain(|_, l| !l.is_empty());
        }
    }
}
