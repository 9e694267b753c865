//! The per-connection drive loop, written once for every runtime: read into the
//! core's [`Buffers`], call [`Conn::handle_io`], carry out each [`Output`], sleep
//! until the next deadline. It makes no routing decision of its own.

use crate::pool::Pool;
use crate::rt::RemoteStore;
use crate::rt::{self, Io, Runtime, Shutdown, TaskGuard, Tasks, Timer};
use crate::shared::Shared;
use bytes::BytesMut;
use mcp_router_core::admin::AdminRequest;
use mcp_router_core::http::{
    parse_request, write_simple_response, BodyKind, HttpLimits, RequestHead, Version,
};
use mcp_router_core::{
    BackendId, Buffers, Conn, ConnRefusal, Limit, Output, Side, StoreOp, StoreReply,
};
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// What one runtime instance (a tokio or smol process, or one glommio executor) holds
/// besides the process-wide [`Shared`] state: its upstream pool and its connection to
/// the shared store.
pub struct Frontend<R: Runtime> {
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Idle upstream connections.
    pub pool: Pool<R::Stream>,
    /// The shared store's transport, when the store is Redis.
    pub remote: Option<R::Remote>,
}

impl<R: Runtime> std::fmt::Debug for Frontend<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<R: Runtime> Frontend<R> {
    /// A runtime instance over `shared`, with `remote` as its store transport (which
    /// must be `Some` exactly when the settings name a shared store).
    pub fn new(shared: Arc<Shared>, remote: Option<R::Remote>) -> Frontend<R> {
        let cfg = shared.router.config();
        Frontend {
            pool: Pool::new(cfg.pool_max_idle, cfg.timeouts.pool_idle),
            shared,
            remote,
        }
    }

    /// Run one store op against the store in use.
    pub async fn execute(&self, op: &StoreOp) -> StoreReply {
        match &self.remote {
            Some(r) => r.execute(op).await,
            None => self.shared.execute_memory(op, Instant::now()),
        }
    }

    /// Drop idle upstream connections past their timeout, every expiry interval,
    /// until `shutdown`.
    pub async fn pool_expiry(&self, shutdown: &Shutdown) {
        let every = self.shared.router.config().expiry_interval;
        while rt::timeout::<R, _>(every, shutdown.wait()).await.is_none() {
            self.pool.expire();
        }
    }

    /// Probe the shared store every `every` until `shutdown`, logging each change of
    /// readiness (nothing to do for the embedded store).
    pub async fn watch_store(&self, every: Duration, shutdown: &Shutdown) {
        let Some(r) = &self.remote else { return };
        let probe = async {
            loop {
                let ok = r.ping().await;
                self.shared.store_probed(ok);
                if rt::timeout::<R, _>(every, shutdown.wait()).await.is_some() {
                    return;
                }
            }
        };
        // the transport's background work runs beside the probe, until shutdown
        let (mut probe, mut background) = (std::pin::pin!(probe), std::pin::pin!(r.background()));
        let mut background_done = false;
        poll_fn(|cx| {
            if probe.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if !background_done {
                background_done = background.as_mut().poll(cx).is_ready();
            }
            Poll::Pending
        })
        .await;
    }
}

/// Read size offered to the kernel per read.
const READ_CHUNK: usize = 4 * 1024;

enum Wake<S> {
    Connected(io::Result<S>),
    Client(io::Result<usize>),
    Upstream(io::Result<usize>),
    Deadline,
    Shutdown,
}

/// The core's next deadline, armed on the runtime's timer.
struct Clock<T: Timer> {
    timer: T,
    at: Option<Instant>,
}

impl<T: Timer> Clock<T> {
    /// Fire at `at` (none: never); re-arming for the same instant is free.
    fn arm(&mut self, at: Option<Instant>) {
        if at != self.at {
            if let Some(a) = at {
                self.timer.fire_at(a);
            }
            self.at = at;
        }
    }

    /// Ready once the armed deadline has passed (then disarmed).
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.at.is_some() && self.timer.poll_fired(cx).is_ready() {
            self.at = None;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

enum Step {
    Done,
    Failed(io::Error),
    Blocked,
    Deadline,
}

/// Write every buffer of `bufs` to `s` (which is `side` of `conn`) in order, with as
/// few vectored writes as possible, while the core's deadlines keep running: a write
/// that stalls is reported to the core ([`Conn::handle_send_blocked`]), and when the
/// core says its send deadline passed the write is given up with `TimedOut`. `bufs`
/// is empty afterwards, whatever the outcome.
async fn send<S: Io, T: Timer>(
    s: &mut S,
    bufs: &mut Vec<bytes::Bytes>,
    side: Side,
    conn: &mut Conn,
    clock: &mut Clock<T>,
) -> io::Result<()> {
    let mut i = 0;
    let mut blocked = false;
    let r = loop {
        let step = poll_fn(|cx| {
            let mut progressed = false;
            loop {
                match rt::poll_write_some(s, bufs, &mut i, cx) {
                    Poll::Ready(Ok(true)) => return Poll::Ready(Step::Done),
                    Poll::Ready(Ok(false)) => progressed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::Failed(e)),
                    Poll::Pending => break,
                }
            }
            if progressed || !blocked {
                // (re)start the core's send deadline from this progress
                return Poll::Ready(Step::Blocked);
            }
            if clock.poll(cx).is_ready() {
                return Poll::Ready(Step::Deadline);
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::Done => break Ok(()),
            Step::Failed(e) => break Err(e),
            Step::Blocked => {
                blocked = true;
                conn.handle_send_blocked(side, Instant::now());
                clock.arm(conn.poll_timeout());
            }
            Step::Deadline => {
                conn.handle_timeout(Instant::now());
                if conn.send_expired(side) {
                    break Err(io::ErrorKind::TimedOut.into());
                }
                clock.arm(conn.poll_timeout());
            }
        }
    };
    if blocked {
        conn.handle_send_done(side, Instant::now());
    }
    bufs.clear();
    r
}

/// How long a refused connection (over `max_connections`) may take to be answered.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Answer a connection past `max_connections` with the core's `503`, then close it
/// after reading what the client already sent (closing with unread input would reset
/// the connection and could destroy the answer before the client reads it).
async fn refuse<R: Runtime>(shared: &Shared, mut client: R::Stream, how: ConnRefusal) {
    shared.metrics.limited(Limit::Connections);
    shared.log_limit(Limit::Connections);
    let ConnRefusal::Answer(_slot) = how else {
        return;
    };
    let retry = shared.router.config().limits.retry_after;
    let answer = mcp_router_core::conn::over_capacity_response(retry);
    let _ = rt::timeout::<R, _>(REFUSAL_TIMEOUT, async {
        rt::write_all(&mut client, &answer).await?;
        rt::close(&mut client).await?;
        let mut sink = BytesMut::with_capacity(4096);
        while rt::read_buf(&mut client, &mut sink).await? > 0 {
            sink.clear();
        }
        io::Result::Ok(())
    })
    .await;
}

/// Drive one client connection to its end.
pub async fn drive<R: Runtime>(
    fe: &Frontend<R>,
    mut client: R::Stream,
    peer: SocketAddr,
    shutdown: &Shutdown,
) {
    let shared = &*fe.shared;
    let router = &shared.router;
    let _permit = match router.admit_connection() {
        Ok(p) => p,
        Err(how) => return refuse::<R>(shared, client, how).await,
    };
    let mut conn = Conn::new(router.clone(), Some(peer.ip()), "http", Instant::now());
    let mut bufs = Buffers::default();
    let mut up: Option<(BackendId, R::Stream)> = None;
    let mut connecting: Option<(BackendId, R::Connect)> = None;
    let mut stop = shutdown.listen();
    let mut shutting_down = shutdown.is_set();
    if shutting_down {
        conn.shutdown();
    }
    let mut clock = Clock {
        timer: R::timer(),
        at: None,
    };
    let mut to_client: Vec<bytes::Bytes> = Vec::new();
    let mut to_up: Vec<bytes::Bytes> = Vec::new();
    'outer: loop {
        // Feed and drain until the core has nothing more to say.
        loop {
            conn.handle_io(&mut bufs, Instant::now());
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
                        flush_upstream(&mut up, &mut to_up, &mut conn, &mut bufs, &mut clock).await;
                        up = None;
                        connecting = None;
                        let pooled = if fresh {
                            None
                        } else {
                            router
                                .backend(backend)
                                .and_then(|b| fe.pool.checkout(&(backend, b.host.clone(), b.port)))
                        };
                        match pooled {
                            Some(s) => {
                                up = Some((backend, s));
                                conn.handle_upstream_connected(true, Instant::now());
                            }
                            None => {
                                // A backend that vanished (reload) fails like a refused
                                // connect: the core picks the next step.
                                let target = router
                                    .backend(backend)
                                    .map(|b| (b.host.clone(), b.port))
                                    .unwrap_or_default();
                                connecting = Some((backend, R::connect(target.0, target.1)));
                            }
                        }
                    }
                    Output::ReleaseUpstream { reuse } => {
                        flush_upstream(&mut up, &mut to_up, &mut conn, &mut bufs, &mut clock).await;
                        bufs.upstream.clear();
                        connecting = None;
                        if let Some((b, s)) = up.take() {
                            if reuse {
                                if let Some(be) = router.backend(b) {
                                    fe.pool.checkin((b, be.host.clone(), be.port), s);
                                }
                            }
                        }
                    }
                    Output::Store(op) => {
                        let t = Instant::now();
                        let r = fe.execute(&op).await;
                        let now = Instant::now();
                        shared.metrics.observe_store_at(&op, &r, now - t, now);
                        conn.handle_store_reply(r, now);
                    }
                    Output::CloseClient => {
                        let sent = send(
                            &mut client,
                            &mut to_client,
                            Side::Client,
                            &mut conn,
                            &mut clock,
                        )
                        .await;
                        if sent.is_err() {
                            conn.handle_client_eof(Instant::now());
                        } else {
                            let _ = rt::close(&mut client).await;
                        }
                    }
                    Output::Event(e) => shared.report(&e, Some(peer)),
                }
            }
            if any {
                // Not quiet yet: a store reply or a connected upstream lets the core
                // release bytes it already holds (a request body after its head, a
                // response body after its session is recorded). Gather them too, so
                // that each message leaves in one write (`writev` per request 1.45 ->
                // 1.0 in the load benchmark, and one TCP segment instead of two).
                continue;
            }
            if to_up.is_empty() && to_client.is_empty() {
                break;
            }
            // Quiet: one vectored write per side. A failed write is reported to the
            // core, which may have more to say, so go round again.
            flush_upstream(&mut up, &mut to_up, &mut conn, &mut bufs, &mut clock).await;
            if !to_client.is_empty()
                && send(
                    &mut client,
                    &mut to_client,
                    Side::Client,
                    &mut conn,
                    &mut clock,
                )
                .await
                .is_err()
            {
                conn.handle_client_eof(Instant::now());
            }
        }
        if conn.is_closed() {
            break 'outer;
        }
        clock.arm(conn.poll_timeout());
        let want_client = conn.wants_client_read(&bufs);
        let want_up = up.is_some() && conn.wants_upstream_read(&bufs);
        let Buffers {
            client: cbuf,
            upstream: ubuf,
        } = &mut bufs;
        // Offer the kernel room for a whole message per read: an empty BytesMut would
        // make a read ask for a few dozen bytes at a time.
        for b in [&mut *cbuf, &mut *ubuf] {
            if b.capacity() - b.len() < READ_CHUNK / 4 {
                b.reserve(READ_CHUNK);
            }
        }
        let wake = poll_fn(|cx| {
            if let Some((_, c)) = connecting.as_mut() {
                if let Poll::Ready(r) = Pin::new(c).poll(cx) {
                    return Poll::Ready(Wake::Connected(r));
                }
            }
            if clock.poll(cx).is_ready() {
                return Poll::Ready(Wake::Deadline);
            }
            if !shutting_down && stop.poll(cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            if want_up {
                if let Some((_, s)) = up.as_mut() {
                    if let Poll::Ready(r) = s.poll_read_buf(cx, ubuf) {
                        return Poll::Ready(Wake::Upstream(r));
                    }
                }
            }
            if want_client {
                if let Poll::Ready(r) = client.poll_read_buf(cx, cbuf) {
                    return Poll::Ready(Wake::Client(r));
                }
            }
            Poll::Pending
        })
        .await;
        let now = Instant::now();
        match wake {
            Wake::Connected(r) => {
                let (b, _) = connecting.take().expect("set when a Connected wake fires");
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
            Wake::Client(r) => {
                if !matches!(r, Ok(n) if n > 0) {
                    conn.handle_io(&mut bufs, now);
                    conn.handle_client_eof(now);
                }
            }
            Wake::Upstream(r) => {
                if !matches!(r, Ok(n) if n > 0) {
                    conn.handle_io(&mut bufs, now);
                    conn.handle_upstream_eof(now);
                }
            }
            Wake::Deadline => {
                // re-armed on the next round, even for the same deadline
                conn.handle_timeout(now);
            }
            Wake::Shutdown => {
                shutting_down = true;
                conn.shutdown();
            }
        }
    }
    // Whatever is left is dropped here: the sockets close.
}

/// Write the gathered upstream bytes (if there is a connection); a failed write is
/// the upstream connection breaking.
async fn flush_upstream<S: Io, T: Timer>(
    up: &mut Option<(BackendId, S)>,
    pending: &mut Vec<bytes::Bytes>,
    conn: &mut Conn,
    bufs: &mut Buffers,
    clock: &mut Clock<T>,
) {
    if pending.is_empty() {
        return;
    }
    let Some((_, s)) = up.as_mut() else {
        pending.clear();
        return;
    };
    if send(s, pending, Side::Upstream, conn, clock).await.is_err() {
        let now = Instant::now();
        conn.handle_io(bufs, now);
        conn.handle_upstream_eof(now);
    }
}

/// Serve one admin request (`/metrics`, `/healthz`, `/readyz`, draining) on `s`, then
/// close it. The caller bounds its lifetime.
pub async fn admin_conn<S: Io>(mut s: S, shared: &Shared) -> io::Result<()> {
    let limits = HttpLimits::default();
    let mut buf = BytesMut::with_capacity(1024);
    let mut head = RequestHead::default();
    let mut out = BytesMut::new();
    loop {
        match parse_request(&mut buf, &limits, &mut head) {
            Ok(true) => break,
            Ok(false) => {
                if rt::read_buf(&mut s, &mut buf).await? == 0 {
                    return Ok(());
                }
            }
            Err(e) => {
                write_simple_response(
                    &mut out,
                    e.status(),
                    "text/plain",
                    &[],
                    e.reason().as_bytes(),
                    Version::Http11,
                    false,
                );
                return rt::write_all(&mut s, &out).await;
            }
        }
    }
    // Read a small body to its end (an admin action carries `{}` at most), so that
    // closing the connection does not reset it under the answer.
    if let BodyKind::Length(n) = head.body {
        let want = (n as usize).min(ADMIN_MAX_BODY);
        while buf.len() < want {
            if rt::read_buf(&mut s, &mut buf).await? == 0 {
                break;
            }
        }
    }
    let req = AdminRequest {
        method: head.method,
        target: head.target(),
        authorization: head.header("authorization"),
        origin: head.header("origin"),
        host: head.header("host"),
        content_type: head.header("content-type"),
    };
    let a = shared.admin_answer(&req);
    let extra: Vec<(&str, &[u8])> = a.headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    write_simple_response(
        &mut out,
        a.status,
        a.content_type,
        &extra,
        a.body.as_bytes(),
        Version::Http11,
        false,
    );
    rt::write_all(&mut s, &out).await?;
    rt::close(&mut s).await
}

/// Most body bytes an admin request may carry that are read (and ignored).
const ADMIN_MAX_BODY: usize = 64 * 1024;

/// How long one admin connection may take.
pub const ADMIN_CONN_TIMEOUT: Duration = Duration::from_secs(10);

/// [`admin_conn`], bounded by [`ADMIN_CONN_TIMEOUT`].
pub async fn admin_conn_bounded<R: Runtime>(s: R::Stream, shared: &Shared) {
    let _ = rt::timeout::<R, _>(ADMIN_CONN_TIMEOUT, admin_conn(s, shared)).await;
}

/// Accept until `shutdown` fires, or `None` then.
async fn accept_or_stop<F: Future>(accept: F, shutdown: &Shutdown) -> Option<F::Output> {
    futures_lite::future::or(async { Some(accept.await) }, async {
        shutdown.wait().await;
        None
    })
    .await
}

/// The accept loop of every frontend: hand each accepted client connection to
/// `spawn` (with a guard that counts it in flight) until `shutdown` fires; then stop
/// accepting, let in-flight connections finish for up to `grace`, and return. A
/// failed accept (EMFILE and friends) backs off briefly instead of spinning.
pub async fn accept_loop<R, A, F, S>(
    mut accept: A,
    mut spawn: S,
    shutdown: &Shutdown,
    grace: Duration,
) where
    R: Runtime,
    A: FnMut() -> F,
    F: Future<Output = io::Result<(R::Stream, SocketAddr)>>,
    S: FnMut(R::Stream, SocketAddr, TaskGuard),
{
    let tasks = Tasks::default();
    while let Some(accepted) = accept_or_stop(accept(), shutdown).await {
        match accepted {
            Ok((s, peer)) => spawn(s, peer, tasks.enter()),
            Err(e) => {
                warn!(error = %e, "accept failed");
                R::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    info!(
        connections = tasks.len(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining"
    );
    if rt::timeout::<R, _>(grace, tasks.wait_idle())
        .await
        .is_none()
    {
        warn!(
            connections = tasks.len(),
            "grace period over: closing remaining connections"
        );
    }
}

/// The admin accept loop: hand each connection to `spawn` (which runs
/// [`admin_conn_bounded`]) until `shutdown`.
pub async fn admin_loop<R, A, F, S>(mut accept: A, mut spawn: S, shutdown: &Shutdown)
where
    R: Runtime,
    A: FnMut() -> F,
    F: Future<Output = io::Result<R::Stream>>,
    S: FnMut(R::Stream),
{
    while let Some(accepted) = accept_or_stop(accept(), shutdown).await {
        match accepted {
            Ok(s) => spawn(s),
            Err(_) => R::sleep(Duration::from_millis(50)).await,
        }
    }
}
