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

    /// Run one store op against the store in use, `now` being the caller's clock.
    /// Returns the reply, how long it took, and the clock after it. The embedded store
    /// answers in place, under its lock, well inside the store-latency histogram's
    /// first bucket (100 µs): it is not timed (zero), which saves the drive loop two
    /// clock readings per request; a Redis round trip is.
    pub async fn execute(&self, op: &StoreOp, now: Instant) -> (StoreReply, Duration, Instant) {
        match &self.remote {
            Some(r) => {
                let reply = r.execute(op).await;
                let after = R::now();
                (reply, after.saturating_duration_since(now), after)
            }
            None => (self.shared.execute_memory(op, now), Duration::ZERO, now),
        }
    }

    /// Drop idle upstream connections past their timeout, every expiry interval,
    /// until `shutdown`.
    pub async fn pool_expiry(&self, shutdown: &Shutdown) {
        let every = self.shared.router.config().expiry_interval;
        while rt::timeout::<R, _>(every, shutdown.wait()).await.is_none() {
            self.pool.expire(R::now());
        }
    }

    /// Probe the shared store every `every` until `shutdown`, logging each change of
    /// readiness (nothing to do for the embedded store).
    pub async fn watch_store(&self, every: Duration, shutdown: &Shutdown) {
        self.keep_store(every, shutdown, true).await
    }

    /// [`Frontend::watch_store`], its probe's result reported to readiness only when
    /// `report`: a runtime instance whose store connection does not feed readiness (a
    /// glommio executor other than the first) still needs the probe, which also keeps
    /// the record cache's tracking connection up, and the background work.
    pub async fn keep_store(&self, every: Duration, shutdown: &Shutdown, report: bool) {
        let Some(r) = &self.remote else { return };
        let probe = async {
            loop {
                let ok = r.ping().await;
                if report {
                    self.shared.store_probed(ok);
                }
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
///
/// The core moves its deadline on every request (an idle or a response timeout that
/// starts again), almost always later. The runtime's timer is only moved when the
/// deadline comes earlier than the instant it is set for; a later deadline is left
/// alone, and when the timer fires early for it, it is set once for the real one. So a
/// request costs no timer operation (async-io: a timer insert and removal, and a wake
/// of its reactor thread, per request), and a connection's timer fires at most once
/// per timeout period without a deadline having passed. The stdio bridge's
/// connections and its timer task arm theirs through it too.
pub(crate) struct Clock<T: Timer> {
    timer: T,
    /// The core's deadline.
    at: Option<Instant>,
    /// What the timer is set for (not yet fired): never later than `at`.
    armed: Option<Instant>,
}

impl<T: Timer> Clock<T> {
    pub(crate) fn new(timer: T) -> Clock<T> {
        Clock {
            timer,
            at: None,
            armed: None,
        }
    }

    /// Fire at `at` (none: never); a deadline no earlier than the armed one is free.
    pub(crate) fn arm(&mut self, at: Option<Instant>) {
        self.at = at;
        if let Some(a) = at {
            if !matches!(self.armed, Some(t) if t <= a) {
                self.timer.fire_at(a);
                self.armed = Some(a);
            }
        }
    }

    /// Ready once the deadline has passed (then disarmed until the next `arm`).
    pub(crate) fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        while let Some(armed) = self.armed {
            if self.timer.poll_fired(cx).is_pending() {
                return Poll::Pending;
            }
            self.armed = None;
            match self.at {
                // the deadline it was set for, or an earlier one: passed
                Some(a) if a <= armed => {
                    self.at = None;
                    return Poll::Ready(());
                }
                // the deadline moved later meanwhile: set it for that (and poll it,
                // so that it wakes this task)
                Some(a) => {
                    self.timer.fire_at(a);
                    self.armed = Some(a);
                }
                // withdrawn meanwhile
                None => return Poll::Pending,
            }
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
/// is empty afterwards, whatever the outcome. `now` is the turn's clock: read again
/// only when the write stalls (time passes only while it waits).
async fn send<R: Runtime>(
    s: &mut R::Stream,
    bufs: &mut Vec<bytes::Bytes>,
    side: Side,
    conn: &mut Conn,
    clock: &mut Clock<R::Timer>,
    now: &mut Instant,
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
                *now = R::now();
                conn.handle_send_blocked(side, *now);
                clock.arm(conn.poll_timeout());
            }
            Step::Deadline => {
                *now = R::now();
                conn.handle_timeout(*now);
                if conn.send_expired(side) {
                    break Err(io::ErrorKind::TimedOut.into());
                }
                clock.arm(conn.poll_timeout());
            }
        }
    };
    if blocked {
        *now = R::now();
        conn.handle_send_done(side, *now);
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
    // The clock is read once per wake-up (and again only after a wait inside a turn:
    // a stalled write, a Redis round trip): every step of a turn happens at its `now`.
    let mut now = R::now();
    let mut conn = Conn::new(router.clone(), Some(peer.ip()), "http", now);
    let mut bufs = Buffers::default();
    let mut up: Option<(BackendId, R::Stream)> = None;
    let mut connecting: Option<(BackendId, R::Connect)> = None;
    let mut stop = shutdown.listen();
    let mut shutting_down = shutdown.is_set();
    if shutting_down {
        conn.shutdown();
    }
    let mut clock = Clock::new(R::timer());
    let mut to_client: Vec<bytes::Bytes> = Vec::new();
    let mut to_up: Vec<bytes::Bytes> = Vec::new();
    'outer: loop {
        // Feed and drain until the core has nothing more to say.
        loop {
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
                        flush_upstream::<R>(
                            &mut up, &mut to_up, &mut conn, &mut bufs, &mut clock, &mut now,
                        )
                        .await;
                        up = None;
                        connecting = None;
                        let pooled = if fresh {
                            None
                        } else {
                            router.backend(backend).and_then(|b| {
                                fe.pool.checkout(&(backend, b.host.clone(), b.port), now)
                            })
                        };
                        match pooled {
                            Some(s) => {
                                up = Some((backend, s));
                                conn.handle_upstream_connected(true, now);
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
                        flush_upstream::<R>(
                            &mut up, &mut to_up, &mut conn, &mut bufs, &mut clock, &mut now,
                        )
                        .await;
                        bufs.upstream.clear();
                        connecting = None;
                        if let Some((b, s)) = up.take() {
                            if reuse {
                                if let Some(be) = router.backend(b) {
                                    fe.pool.checkin((b, be.host.clone(), be.port), s, now);
                                }
                            }
                        }
                    }
                    Output::Store(op) => {
                        let (r, took, after) = fe.execute(&op, now).await;
                        now = after;
                        shared.metrics.observe_store_at(&op, &r, took, now);
                        conn.handle_store_reply(r, now);
                    }
                    Output::CloseClient => {
                        let sent = send::<R>(
                            &mut client,
                            &mut to_client,
                            Side::Client,
                            &mut conn,
                            &mut clock,
                            &mut now,
                        )
                        .await;
                        if sent.is_err() {
                            conn.handle_client_eof(now);
                        } else {
                            let _ = rt::close(&mut client).await;
                        }
                    }
                    Output::Event(e) => shared.report_at(&e, Some(peer), now),
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
            flush_upstream::<R>(
                &mut up, &mut to_up, &mut conn, &mut bufs, &mut clock, &mut now,
            )
            .await;
            if !to_client.is_empty()
                && send::<R>(
                    &mut client,
                    &mut to_client,
                    Side::Client,
                    &mut conn,
                    &mut clock,
                    &mut now,
                )
                .await
                .is_err()
            {
                conn.handle_client_eof(now);
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
        now = R::now();
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
async fn flush_upstream<R: Runtime>(
    up: &mut Option<(BackendId, R::Stream)>,
    pending: &mut Vec<bytes::Bytes>,
    conn: &mut Conn,
    bufs: &mut Buffers,
    clock: &mut Clock<R::Timer>,
    now: &mut Instant,
) {
    if pending.is_empty() {
        return;
    }
    let Some((_, s)) = up.as_mut() else {
        pending.clear();
        return;
    };
    if send::<R>(s, pending, Side::Upstream, conn, clock, now)
        .await
        .is_err()
    {
        conn.handle_io(bufs, *now);
        conn.handle_upstream_eof(*now);
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
