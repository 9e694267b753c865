//! Idle upstream connections, per backend.

use mcp_router_core::BackendId;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Keep-alive pool: per backend, a LIFO of idle connections with the time they went
/// idle. Bounded by `max_idle` per backend and by `idle_timeout`.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: Vec<Mutex<Vec<(TcpStream, Instant)>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(backends: usize, max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: (0..backends).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently used idle connection that is still open, if any.
    pub(crate) fn checkout(&self, b: BackendId) -> Option<TcpStream> {
        let mut list = self.idle.get(b.index())?.lock().ok()?;
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
    pub(crate) fn checkin(&self, b: BackendId, s: TcpStream) {
        if let Some(Ok(mut list)) = self.idle.get(b.index()).map(|m| m.lock()) {
            if list.len() >= self.max_idle {
                list.remove(0);
            }
            list.push((s, Instant::now()));
        }
    }

    /// Drop connections idle past the timeout.
    pub(crate) fn expire(&self) {
        let now = Instant::now();
        for m in &self.idle {
            if let Ok(mut list) = m.lock() {
                list.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
            }
        }
    }
}
