//! Idle upstream connections, per backend.

use mcp_router_core::BackendId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Which pool a connection belongs to: the backend id *and* its address, so that a
/// backend slot reused for another address (DNS discovery) never gets an old socket.
pub(crate) type PoolKey = (BackendId, String, u16);

/// Keep-alive pool: per backend, a LIFO of idle connections with the time they went
/// idle. Bounded by `max_idle` per backend and by `idle_timeout`.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<(TcpStream, Instant)>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently used idle connection that is still open, if any.
    pub(crate) fn checkout(&self, key: &PoolKey) -> Option<TcpStream> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some((s, since)) = list.pop() {
            if now.duration_since(since) >= self.idle_timeout {
                continue;
            }
            // A closed (or garbage-sending) connection reads 0 (or >0) bytes at once;
            // a healthy idle one would block.
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(s),
                _ => continue,
            }
        }
        None
    }

    /// Return a clean connection for reuse.
    pub(crate) fn checkin(&self, key: PoolKey, s: TcpStream) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            if list.len() >= self.max_idle {
                list.remove(0);
            }
            list.push((s, Instant::now()));
        }
    }

    /// Drop connections idle past the timeout, and empty pools.
    pub(crate) fn expire(&self) {
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            for list in idle.values_mut() {
                list.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
            }
            idle.retain(|_, l| !l.is_empty());
        }
    }
}
