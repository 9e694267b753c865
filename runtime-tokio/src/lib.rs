//! tokio frontend of mcp-router: sockets, timers and the store, around the sans-IO
//! core. It makes no routing decision of its own: each client connection is a loop
//! that reads into the core's [`Buffers`], calls [`Conn::handle_io`] and carries out
//! the [`Output`]s.
//!
//! Use it as a library with [`serve`], or run the bundled `mcp-router` binary.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod ops;
mod pool;
pub mod redis_store;
pub mod stdio;

use mcp_router_core::metrics::Metrics;
use mcp_router_core::{
    BackendId, Buffers, Conn, EndCause, Event, Health, MemStore, Output, Router, StoreOp,
    StoreReply,
};
use pool::Pool;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use config::{Cli, Settings, StoreSettings};
use redis_store::RedisStore;

/// The session store a router process uses.
#[derive(Debug)]
pub enum Store {
    /// The embedded in-memory store (one router replica).
    Memory(Mutex<MemStore>),
    /// Redis, shared by every router replica.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Run one op.
    pub async fn execute(&self, op: &StoreOp, now: std::time::Instant) -> StoreReply {
        match self {
            Store::Memory(m) => match m.lock() {
                Ok(mut s) => s.execute(op, now),
                Err(_) => StoreReply::Unavailable,
            },
            Store::Redis(r) => r.execute(op).await,
        }
    }

    /// Whether the store can be reached (the embedded one always can).
    pub fn is_ready(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.is_ready(),
        }
    }

    /// `memory` or `redis`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

/// State shared by every connection of one router process.
pub struct Shared {
    /// Backends, health, balancing.
    pub router: Arc<Router>,
    /// Session records.
    pub store: Store,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The settings in force (replaced by a reload).
    pub settings: std::sync::RwLock<Settings>,
    /// The members each `--discover` name resolved to last.
    pub(crate) discovered: Mutex<Vec<Vec<mcp_router_core::Backend>>>,
    pub(crate) resolver: Arc<dyn ops::Resolve>,
    pool: Pool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("router", &self.router)
            .field("store", &self.store)
            .finish()
    }
}

impl Shared {
    /// Shared state for `settings`. A Redis store connects lazily: this does not wait
    /// for Redis (call it inside a tokio runtime).
    pub fn new(settings: &Settings) -> Result<Arc<Shared>, mcp_router_core::ConfigError> {
        Self::with_resolver(settings, Arc::new(ops::SystemResolver))
    }

    /// As [`Shared::new`], resolving `--discover` names with `resolver` (a test seam).
    pub fn with_resolver(
        settings: &Settings,
        resolver: Arc<dyn ops::Resolve>,
    ) -> Result<Arc<Shared>, mcp_router_core::ConfigError> {
        let cfg = Arc::new(settings.core.clone());
        let epoch = std::time::Instant::now();
        let router = Arc::new(Router::new(cfg.clone(), epoch));
        let store = match &settings.store {
            StoreSettings::Memory => Store::Memory(Mutex::new(MemStore::new(
                cfg.session_ttl,
                cfg.expiry_batch,
                epoch,
            ))),
            StoreSettings::Redis(r) => Store::Redis(Arc::new(RedisStore::new(r, router.clone())?)),
        };
        for name in &settings.drain {
            router.set_draining(name, true);
        }
        Ok(Arc::new(Shared {
            pool: Pool::new(cfg.pool_max_idle, cfg.timeouts.pool_idle),
            router,
            store,
            metrics: Metrics::new(),
            discovered: Mutex::new(vec![Vec::new(); settings.discover.len()]),
            settings: std::sync::RwLock::new(settings.clone()),
            resolver,
        }))
    }
}

/// Serve MCP clients on `listener` until `shutdown` turns true, then stop accepting,
/// let in-flight exchanges finish for up to `grace`, and return.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let tasks = tokio_util_tasks::Tasks::default();
    tokio::spawn(expiry_loop(shared.clone(), shutdown.clone()));
    if let Store::Redis(r) = &shared.store {
        tokio::spawn(r.clone().watch(Duration::from_secs(1), shutdown.clone()));
    }
    if let Some(every) = shared.router.config().health_check_interval {
        tokio::spawn(health_loop(shared.clone(), every, shutdown.clone()));
    }
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let sh = shared.clone();
                    let sd = shutdown.clone();
                    tasks.spawn(async move { drive(sh, sock, peer, sd).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    info!(
        connections = tasks.len(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining"
    );
    if tokio::time::timeout(grace, tasks.wait_idle())
        .await
        .is_err()
    {
        warn!(
            connections = tasks.len(),
            "grace period over: closing remaining connections"
        );
    }
}

/// A tiny task counter (so shutdown can wait for in-flight connections without
/// keeping every JoinHandle).
mod tokio_util_tasks {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Default, Clone)]
    pub struct Tasks(Arc<(AtomicUsize, Notify)>);

    impl Tasks {
        pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
            let t = self.0.clone();
            t.0.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                struct Guard(Arc<(AtomicUsize, Notify)>);
                impl Drop for Guard {
                    fn drop(&mut self) {
                        if self.0 .0.fetch_sub(1, Ordering::SeqCst) == 1 {
                            self.0 .1.notify_waiters();
                        }
                    }
                }
                let _g = Guard(t);
                f.await
            });
        }
        pub fn len(&self) -> usize {
            self.0 .0.load(Ordering::SeqCst)
        }
        pub async fn wait_idle(&self) {
            loop {
                let n = self.0 .1.notified();
                if self.len() == 0 {
                    return;
                }
                n.await;
            }
        }
    }
}

/// Read size offered to the kernel per read.
const READ_CHUNK: usize = 4 * 1024;

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

/// Drive one client connection to its end.
async fn drive(
    shared: Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = &shared.router;
    let mut conn = Conn::new(
        router.clone(),
        Some(peer.ip()),
        "http",
        Instant::now().into_std(),
    );
    let mut bufs = Buffers::default();
    let mut up: Option<(BackendId, TcpStream)> = None;
    let mut connecting: Option<(BackendId, Connecting)> = None;
    let mut shutting_down = *shutdown.borrow();
    if shutting_down {
        conn.shutdown();
    }
    let (mut cr, mut cw) = client.split();
    let mut to_client: Vec<bytes::Bytes> = Vec::new();
    let mut to_up: Vec<bytes::Bytes> = Vec::new();
    // One timer for the connection's life, moved only when the core's deadline moves:
    // a fresh `sleep_until` per loop turn costs a timer-wheel insert and removal each.
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    'outer: loop {
        // Feed and drain until the core has nothing more to say.
        loop {
            let now = std::time::Instant::now();
            conn.handle_io(&mut bufs, now);
            let mut any = false;
            while let Some(o) = conn.poll_output() {
                any = true;
                match o {
                    // Writes are gathered and sent with one vectored write per side
                    // when the core goes quiet (or before the socket changes): a
                    // response head and its body then leave in one syscall.
                    Output::ToClient(b) => to_client.push(b),
                    Output::ToUpstream(b) => to_up.push(b),
                    Output::Connect { backend, fresh } => {
                        flush_upstream(&mut up, &mut to_up, &mut conn, &mut bufs).await;
                        up = None;
                        connecting = None;
                        let pooled = if fresh {
                            None
                        } else {
                            router.backend(backend).and_then(|b| {
                                shared.pool.checkout(&(backend, b.host.clone(), b.port))
                            })
                        };
                        match pooled {
                            Some(s) => {
                                up = Some((backend, s));
                                conn.handle_upstream_connected(true, std::time::Instant::now());
                            }
                            None => {
                                let target =
                                    router.backend(backend).map(|b| (b.host.clone(), b.port));
                                connecting = Some((
                                    backend,
                                    Box::pin(async move {
                                        let target = target.ok_or(std::io::ErrorKind::NotFound)?;
                                        let s = TcpStream::connect(target).await?;
                                        let _ = s.set_nodelay(true);
                                        Ok(s)
                                    }),
                                ));
                            }
                        }
                    }
                    Output::ReleaseUpstream { reuse } => {
                        flush_upstream(&mut up, &mut to_up, &mut conn, &mut bufs).await;
                        bufs.upstream.clear();
                        connecting = None;
                        if let Some((b, s)) = up.take() {
                            if reuse {
                                if let Some(be) = router.backend(b) {
                                    shared.pool.checkin((b, be.host.clone(), be.port), s);
                                }
                            }
                        }
                    }
                    Output::Store(op) => {
                        let t = std::time::Instant::now();
                        let r = shared.store.execute(&op, t).await;
                        let now = std::time::Instant::now();
                        shared.metrics.observe_store(&op, &r, now - t);
                        conn.handle_store_reply(r, now);
                    }
                    Output::CloseClient => {
                        if write_all_vectored(&mut cw, &mut to_client).await.is_err() {
                            conn.handle_client_eof(std::time::Instant::now());
                        }
                        let _ = cw.shutdown().await;
                    }
                    Output::Event(e) => report(&shared, &e, Some(peer)),
                }
            }
            if any {
                // Not quiet yet: a store reply or a connected upstream lets the core
                // release bytes it already holds (a request body after its head, a
                // response body after its session is recorded). Gather them too.
                continue;
            }
            if to_up.is_empty() && to_client.is_empty() {
                break;
            }
            // Quiet: one vectored write per side. A failed write is reported to the
            // core, which may have more to say, so go round again.
            flush_upstream(&mut up, &mut to_up, &mut conn, &mut bufs).await;
            if !to_client.is_empty() && write_all_vectored(&mut cw, &mut to_client).await.is_err() {
                conn.handle_client_eof(std::time::Instant::now());
            }
        }
        if conn.is_closed() {
            break 'outer;
        }
        let deadline = conn.poll_timeout().map(Instant::from_std);
        if let Some(d) = deadline {
            if armed != Some(d) {
                timer.as_mut().reset(d);
                armed = Some(d);
            }
        }
        let want_client = conn.wants_client_read(&bufs);
        let want_up = up.is_some() && conn.wants_upstream_read(&bufs);
        let Buffers {
            client: cbuf,
            upstream: ubuf,
        } = &mut bufs;
        // Offer the kernel room for a whole message per read: an empty BytesMut would
        // make `read_buf` ask for a few dozen bytes at a time.
        for b in [&mut *cbuf, &mut *ubuf] {
            if b.capacity() - b.len() < READ_CHUNK / 4 {
                b.reserve(READ_CHUNK);
            }
        }
        tokio::select! {
            r = async { (&mut connecting.as_mut().expect("guarded").1).await }, if connecting.is_some() => {
                let now = std::time::Instant::now();
                let (b, _) = connecting.take().expect("guarded");
                match r {
                    Ok(s) => {
                        up = Some((b, s));
                        conn.handle_upstream_connected(false, now);
                    }
                    Err(e) => {
                        debug!(backend = %router.name(b), error = %e, "connect failed");
                        conn.handle_upstream_failed(now);
                    }
                }
            }
            r = cr.read_buf(cbuf), if want_client => {
                if !matches!(r, Ok(n) if n > 0) {
                    let now = std::time::Instant::now();
                    conn.handle_io(&mut bufs, now);
                    conn.handle_client_eof(now);
                }
            }
            r = async { up.as_mut().expect("guarded").1.read_buf(ubuf).await }, if want_up => {
                if !matches!(r, Ok(n) if n > 0) {
                    let now = std::time::Instant::now();
                    conn.handle_io(&mut bufs, now);
                    conn.handle_upstream_eof(now);
                }
            }
            _ = &mut timer, if deadline.is_some() => {
                armed = None;
                conn.handle_timeout(std::time::Instant::now());
            }
            _ = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                conn.shutdown();
            }
        }
    }
    // Whatever is left is dropped here: the sockets close.
}

/// Write the gathered upstream bytes (if there is a connection); a failed write is
/// the upstream connection breaking.
async fn flush_upstream(
    up: &mut Option<(BackendId, TcpStream)>,
    pending: &mut Vec<bytes::Bytes>,
    conn: &mut Conn,
    bufs: &mut Buffers,
) {
    if pending.is_empty() {
        return;
    }
    let Some((_, s)) = up.as_mut() else {
        pending.clear();
        return;
    };
    if write_all_vectored(s, pending).await.is_err() {
        let now = std::time::Instant::now();
        conn.handle_io(bufs, now);
        conn.handle_upstream_eof(now);
    }
}

/// Write every buffer in order with as few (vectored) writes as possible; `bufs` is
/// empty afterwards, whatever the outcome.
async fn write_all_vectored<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut Vec<bytes::Bytes>,
) -> std::io::Result<()> {
    use bytes::Buf;
    let r = async {
        let mut i = 0;
        while i < bufs.len() {
            let mut slices = [std::io::IoSlice::new(&[]); 16];
            let mut k = 0;
            for b in bufs[i..].iter().take(16) {
                slices[k] = std::io::IoSlice::new(b);
                k += 1;
            }
            let mut n = w.write_vectored(&slices[..k]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let b = &mut bufs[i];
                let k = n.min(b.len());
                b.advance(k);
                n -= k;
                if b.is_empty() {
                    i += 1;
                }
            }
            while i < bufs.len() && bufs[i].is_empty() {
                i += 1;
            }
        }
        Ok(())
    }
    .await;
    bufs.clear();
    r
}

/// Log an event of the core and count it.
pub(crate) fn report(shared: &Shared, e: &Event, peer: Option<SocketAddr>) {
    let router = &shared.router;
    shared.metrics.observe(router, e);
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
    }
}

/// Expire idle session records, a bounded batch per tick.
async fn expiry_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let every = shared.router.config().expiry_interval;
    let mut expired = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        // Redis expires its records itself.
        if let Store::Memory(m) = &shared.store {
            if let Ok(mut s) = m.lock() {
                s.expire(std::time::Instant::now(), &mut expired);
            }
        }
        for (session, rec) in expired.drain(..) {
            shared.router.session_ended(rec.backend);
            if shared.router.is_configured(rec.backend) {
                info!(session = %session, backend = %shared.router.name(rec.backend), cause = EndCause::Expired.as_str(), "session ended");
                shared.metrics.session_ended(EndCause::Expired);
            }
        }
        shared.pool.expire();
    }
}

/// Active health check: a TCP connect to every backend each period.
async fn health_loop(shared: Arc<Shared>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let router = &shared.router;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        for m in router.status(std::time::Instant::now()) {
            let (id, b) = (m.id, m.backend);
            let ok = tokio::time::timeout(
                router.config().timeouts.connect,
                TcpStream::connect((b.host.as_str(), b.port)),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            let now = std::time::Instant::now();
            let h = if ok {
                router.connect_ok(id)
            } else {
                router.connect_failed(id, now)
            };
            report(
                &shared,
                &Event::BackendHealth {
                    backend: id,
                    health: h,
                },
                None,
            );
        }
    }
}

/// Resolve when SIGTERM or Ctrl-C arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
