//! Carrying out the core's reap decisions ([`mcp_router_core::reap`]): a `DELETE` to
//! the backend for each session the router ended itself.
//!
//! The requests go out from `concurrency` plain threads of their own, each on a fresh
//! connection (`Connection: close`), never on a client's connection or a pooled one: a
//! slow or dead backend delays only other reaps, never client traffic, whatever the
//! frontend. The core's [`Reaper`] decides which job goes next, bounds the rate and the
//! queue, and retries a failure once.

use crate::redis::{RedisCodec, RedisSettings};
use crate::rt::Shutdown;
use crate::shared::Shared;
use mcp_router_core::reap::{parse_status, write_delete, ReapJob, ReapResult, Reaper};
use mcp_router_core::{EndCause, ReapSettings};
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

    /// Jobs the queue still takes.
    pub fn room(&self) -> usize {
        let r = self.lock();
        r.settings().queue.saturating_sub(r.waiting())
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
    let claimed = job.claimed;
    // a claim is acknowledged by the client's id (after a failover the DELETE names
    // another)
    let ack = job.ack.clone().unwrap_or_else(|| job.session.clone());
    // a removed backend's session (the backend answered when it was removed): one
    // attempt, with a connect timeout of at most 500 ms, so that a backend gone since
    // holds a worker briefly, once
    let removed = job.cause == EndCause::BackendRemoved;
    let backend = if removed {
        shared.router.removed_backend(job.backend)
    } else {
        shared.router.backend(job.backend)
    };
    let Some(backend) = backend else {
        let r = shared.reaper.lock().abandon(job);
        shared.metrics.session_reaped(r);
        if claimed {
            shared.reap_done(ack);
        }
        return;
    };
    // headers and path as the configuration in force has them (a reload changes
    // them); the queue's bounds are the ones it was built with
    let cfg = shared.router.config();
    let mut connect = cfg.timeouts.connect;
    let mut job = job;
    if removed {
        connect = connect.min(Duration::from_millis(500));
        job.attempts = 1; // no retry
    }
    let mut req = Vec::with_capacity(256);
    write_delete(&mut req, &backend, &job.session, &cfg.reap);
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
            if claimed {
                shared.reap_done(ack);
            }
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

/// With `--store redis`: every `reap_claim_interval`, acknowledge the claims whose
/// reap is over, then claim expired sessions from the shared expiry index (as many as
/// the reap queue takes, at most `expiry_batch`) and queue them like the embedded
/// store's expiries, then end a step's worth of drained backends' records. One
/// blocking connection on a thread of its own; a failure is retried on the next round
/// over a new connection (acknowledgements are kept). Runs with reaping off too (the
/// drain timeout still ends records; claims are then acknowledged at once).
pub fn start_redis_claims(shared: &Arc<Shared>, rs: &RedisSettings, shutdown: &Arc<Shutdown>) {
    let (sh, sd, rs) = (shared.clone(), shutdown.clone(), rs.clone());
    let spawned = std::thread::Builder::new()
        .name("mcp-reap-claims".into())
        .spawn(move || claim_loop(&sh, &rs, &sd));
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the reap claim thread");
    }
}

/// Where one replica's walk over the index for drained backends stands.
#[derive(Default)]
struct DrainScan {
    cursor: u64,
    /// The shard being walked (a cluster's index is one per shard).
    shard: usize,
    /// The drained backends the walk is for (a new set starts a new walk).
    names: Vec<String>,
    /// The walk went once over the whole index: nothing is left to end (a draining
    /// backend takes no new sessions).
    done: bool,
}

fn claim_loop(shared: &Shared, rs: &RedisSettings, shutdown: &Shutdown) {
    let mut scan = DrainScan::default();
    let codec = RedisCodec::new(rs, shared.router.clone());
    let mut conn: Option<Box<dyn redis::ConnectionLike + Send>> = None;
    loop {
        let cfg = shared.router.config();
        if shutdown.wait_blocking(cfg.reap.claim_interval) {
            return;
        }
        if conn.is_none() {
            // Sentinel: the primary the sentinels name now
            conn = crate::redis_link::sync_connection(rs).ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let round = claim_round(
            shared,
            &codec,
            c.as_mut(),
            cfg.reap.claim_lease,
            cfg.expiry_batch,
        )
        .and_then(|()| drain_round(shared, &codec, c.as_mut(), &mut scan, cfg.reap.claim_lease));
        if let Err(e) = round {
            debug!(error = %e, "reap: claiming from Redis failed; again next round");
            conn = None;
        }
    }
}

fn claim_round(
    shared: &Shared,
    codec: &RedisCodec,
    c: &mut dyn redis::ConnectionLike,
    lease: Duration,
    batch: usize,
) -> redis::RedisResult<()> {
    let acks = std::mem::take(&mut *shared.reap_acks.lock().unwrap_or_else(|e| e.into_inner()));
    if !acks.is_empty() {
        // one atomic pipeline per shard (a cluster: per slot)
        let sent = codec
            .ack_pipelines(&acks)
            .iter()
            .try_for_each(|p| p.query::<()>(c));
        if let Err(e) = sent {
            // acknowledging twice is harmless: all of them again next round
            shared
                .reap_acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(acks);
            return Err(e);
        }
    }
    for shard in 0..codec.shard_count() {
        let room = shared.reaper.room().min(batch);
        if room == 0 {
            return Ok(());
        }
        let v = eval_script(c, |src| codec.claim_command(shard, lease, room, src))?;
        let Some(claimed) = codec.claimed(v) else {
            warn!("reap: unexpected reply to the claim script");
            continue;
        };
        for c in claimed {
            match c.record {
                Some(rec) => shared.claimed_session_ended(c.id, c.upstream, rec, EndCause::Expired),
                None => shared.reap_done(c.id),
            }
        }
    }
    Ok(())
}

/// Run `cmd` (by SHA), again with the script's source if Redis does not hold it.
fn eval_script(
    c: &mut dyn redis::ConnectionLike,
    cmd: impl Fn(bool) -> redis::Cmd,
) -> redis::RedisResult<redis::Value> {
    match cmd(false).query::<redis::Value>(c) {
        Err(e) if e.to_string().to_ascii_uppercase().contains("NOSCRIPT") => cmd(true).query(c),
        r => r,
    }
}

/// With backends drained past their timeout, or removed from the configuration while
/// still answering (for one session TTL after the removal): one bounded step
/// (`expiry_batch` entries) of the walk over the expiry index that ends their
/// sessions in Redis; one full pass per replica and set of such backends. Records are
/// matched by the backend's name: a removed backend's records read as no backend, so
/// each ended one is given the removed backend's id again (where its `DELETE` goes).
fn drain_round(
    shared: &Shared,
    codec: &RedisCodec,
    c: &mut dyn redis::ConnectionLike,
    scan: &mut DrainScan,
    lease: Duration,
) -> redis::RedisResult<()> {
    let now = Instant::now();
    let mut overdue = Vec::new();
    shared.router.drain_overdue(now, &mut overdue);
    let removed = shared.removed_live_names(now);
    let names: Vec<String> = overdue
        .iter()
        .map(|&id| shared.router.name(id))
        .chain(removed.iter().map(|(_, n)| n.clone()))
        .collect();
    if names.is_empty() {
        *scan = DrainScan::default();
        return Ok(());
    }
    if names != scan.names {
        *scan = DrainScan {
            cursor: 0,
            shard: 0,
            names: names.clone(),
            done: false,
        };
    }
    if scan.done {
        return Ok(());
    }
    let count = shared.router.config().expiry_batch;
    let v = eval_script(c, |src| {
        codec.drain_command(scan.shard, &names, scan.cursor, count, lease, src)
    })?;
    let Some((cursor, ended)) = codec.drained(v) else {
        warn!("reap: unexpected reply to the drain script");
        return Ok(());
    };
    // shard by shard; the walk is done after the last shard's scan comes back to 0
    scan.cursor = cursor;
    if cursor == 0 {
        scan.shard += 1;
        scan.done = scan.shard >= codec.shard_count();
    }
    for c in ended {
        let gone = removed
            .iter()
            .find(|(_, n)| c.name.as_deref() == Some(n.as_str()));
        match (c.record, gone) {
            (Some(mut rec), Some(&(id, _))) if !shared.router.is_configured(rec.backend) => {
                rec.backend = id;
                shared.claimed_session_ended(c.id, c.upstream, rec, EndCause::BackendRemoved)
            }
            (Some(rec), _) => {
                shared.claimed_session_ended(c.id, c.upstream, rec, EndCause::DrainTimeout)
            }
            (None, _) => shared.reap_done(c.id),
        }
    }
    Ok(())
}
