//! Carrying out the core's reap decisions ([`mcp_router_core::reap`]): a `DELETE` to
//! the backend for each session the router ended itself.
//!
//! The requests go out from `concurrency` plain threads of their own, each on a fresh
//! connection (`Connection: close`), never on a client's connection or a pooled one: a
//! slow or dead backend delays only other reaps, never client traffic, whatever the
//! frontend. The core's [`Reaper`] decides which job goes next, bounds the rate and the
//! queue, and retries a failure once.

use crate::rt::Shutdown;
use crate::shared::Shared;
use mcp_router_core::reap::{parse_status, write_delete, ReapJob, ReapResult, Reaper};
use mcp_router_core::ReapSettings;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The reap queue shared by the expiry tick (which fills it) and the workers.
#[derive(Debug)]
pub struct ReapQueue {
    reaper: Mutex<Reaper>,
    cv: Condvar,
}

/// Longest a worker sleeps before it looks at the shutdown flag again.
const POLL: Duration = Duration::from_millis(200);

impl ReapQueue {
    /// An empty queue with the bounds of `settings`.
    pub fn new(settings: ReapSettings) -> ReapQueue {
        ReapQueue {
            reaper: Mutex::new(Reaper::new(settings)),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reaper> {
        self.reaper.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a job; `Some(Dropped)` when the queue is full or reaping is off.
    pub fn push(&self, job: ReapJob) -> Option<ReapResult> {
        let r = self.lock().push(job);
        if r.is_none() {
            self.cv.notify_one();
        }
        r
    }

    /// Jobs waiting and in flight (for tests and logs).
    pub fn pending(&self) -> (usize, usize) {
        let r = self.lock();
        (r.waiting(), r.in_flight())
    }

    /// The next job, waiting for one until `shutdown`.
    fn next(&self, shutdown: &Shutdown) -> Option<ReapJob> {
        let mut r = self.lock();
        loop {
            if shutdown.is_set() {
                return None;
            }
            let now = Instant::now();
            if let Some(j) = r.poll_job(now) {
                return Some(j);
            }
            let wait = r
                .poll_timeout()
                .map_or(POLL, |t| t.saturating_duration_since(now).min(POLL));
            r = self
                .cv
                .wait_timeout(r, wait.max(Duration::from_millis(1)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Start the reap workers (`reap_concurrency` threads); they stop at `shutdown`,
/// leaving what is still queued (a restarted router does not know those sessions).
pub fn start_reapers(shared: &Arc<Shared>, shutdown: &Arc<Shutdown>) {
    let settings = shared.reaper.lock().settings().clone();
    if !settings.enabled {
        return;
    }
    for i in 0..settings.concurrency {
        let (sh, sd) = (shared.clone(), shutdown.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("mcp-reap-{i}"))
            .spawn(move || {
                while let Some(job) = sh.reaper.next(&sd) {
                    work(&sh, job);
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a reap thread");
        }
    }
}

fn work(shared: &Shared, job: ReapJob) {
    let Some(backend) = shared.router.backend(job.backend) else {
        let r = shared.reaper.lock().abandon(job);
        shared.metrics.session_reaped(r);
        return;
    };
    let settings = shared.reaper.lock().settings().clone();
    let connect = shared.router.config().timeouts.connect;
    let mut req = Vec::with_capacity(256);
    write_delete(&mut req, &backend, &job.session, &settings);
    let status = send(&backend.host, backend.port, &req, connect);
    let (session, attempt) = (job.session.clone(), job.attempts + 1);
    let result = {
        let mut r = shared.reaper.lock();
        let res = r.complete(job, status, Instant::now());
        // a slot is free (and maybe a retry queued): wake a worker
        shared.reaper.cv.notify_one();
        res
    };
    match result {
        Some(r) => {
            shared.metrics.session_reaped(r);
            if r == ReapResult::Failed {
                warn!(session = %session, backend = %backend.name, status = ?status, "reap: DELETE upstream failed twice; the backend keeps the session until its own expiry");
            } else {
                info!(session = %session, backend = %backend.name, status = ?status, result = r.as_str(), "session reaped upstream");
            }
        }
        None => {
            debug!(session = %session, backend = %backend.name, status = ?status, attempt, "reap: DELETE upstream failed; retrying once")
        }
    }
}

/// Send `req` to `host:port` on a fresh connection and read the status line; `None`
/// when there is no answer in time.
fn send(host: &str, port: u16, req: &[u8], connect: Duration) -> Option<u16> {
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut s = TcpStream::connect_timeout(&addr, connect).ok()?;
    // the answer to a DELETE is small and immediate; a backend that takes longer is
    // retried (once) rather than holding a worker
    let io_timeout = connect.max(Duration::from_secs(5));
    s.set_read_timeout(Some(io_timeout)).ok()?;
    s.set_write_timeout(Some(io_timeout)).ok()?;
    let _ = s.set_nodelay(true);
    s.write_all(req).ok()?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    parse_status(&head[..n])
}
