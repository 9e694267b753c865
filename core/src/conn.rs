//! One client connection: the HTTP/1.1 proxy state machine.
//!
//! A [`Conn`] reads requests from one client connection, decides where each goes,
//! forwards it over one upstream connection at a time and relays the response. It owns
//! no socket: the driver owns the read buffers ([`Buffers`]), reads into them, calls
//! [`Conn::handle_io`], and carries out the [`Output`]s. See the crate docs for the loop.

use crate::config::{Config, SessionIds};
use crate::failover::{Cause, Failover, Outcome, ReplayHead};
use crate::http::{
    parse_request, parse_response, write_forwarded_head, write_response_head,
    write_response_head_sid, write_simple_response, BodyDecoder, BodyKind, Forward, IpText, Method,
    Name, RequestHead, ResponseHead, Version,
};
use crate::limits::{Admission, AdmitRequest, ClientId};
use crate::mcp::{
    endpoint_session_id, is_stateless_version, replace_query_session_id, valid_session_id,
    write_error_body, write_unsupported_version_body, ErrorCode, Expect, SessionKey, Sniffer,
    SseParser, LEGACY_VERSIONS, MODERN_VERSIONS,
};
use crate::router::{BackendId, Health, InFlight, PickKind, Router};
use crate::seal::{Fields, OpenError, Opened, Refusal};
use crate::store::{Era, Record, StoreOp, StoreReply};
use crate::timer::{Timer, TimerTable};
use bytes::{Bytes, BytesMut};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest chunk-size line or trailer section accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest SSE event the legacy `endpoint` watcher keeps.
const MAX_WATCH_EVENT: usize = 8 * 1024;
/// How far into a legacy SSE stream the router looks for the `endpoint` event.
const MAX_WATCH_BYTES: usize = 64 * 1024;
/// Largest request kept whole to resend it once when a pooled connection turns out to
/// have been closed by the backend.
const MAX_RETAINED: usize = 64 * 1024;
/// Most unconsumed bytes the driver should hold for the upstream side.
const UPSTREAM_READ_CAP: usize = 64 * 1024;

/// The driver-owned read buffers of one connection. The driver appends what it reads;
/// [`Conn::handle_io`] consumes from the front what the current state allows.
#[derive(Debug, Default)]
pub struct Buffers {
    /// Bytes read from the client, not yet consumed.
    pub client: BytesMut,
    /// Bytes read from the current upstream connection, not yet consumed. The driver
    /// clears it when it carries out [`Output::ReleaseUpstream`].
    pub upstream: BytesMut,
}

/// Why a session record was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// The client's DELETE was answered 2xx or 404.
    Deleted,
    /// The backend answered 404 to a request of the session: it no longer holds it.
    BackendNotFound,
    /// The backend refused connections or timed out: its sessions are gone.
    BackendDown,
    /// The legacy SSE stream that carried the session closed.
    StreamClosed,
    /// The idle TTL ran out.
    Expired,
    /// The record named a backend that is not configured.
    UnknownBackend,
    /// Its backend had been draining for `--drain-timeout`.
    DrainTimeout,
    /// Its backend was removed from the configuration (a reload, or discovery) while
    /// it still answered: the router ends its sessions and sends their `DELETE`s.
    BackendRemoved,
}

impl EndCause {
    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Deleted => "delete",
            EndCause::BackendNotFound => "backend_404",
            EndCause::BackendDown => "backend_down",
            EndCause::StreamClosed => "stream_closed",
            EndCause::Expired => "idle_expiry",
            EndCause::UnknownBackend => "unknown_backend",
            EndCause::DrainTimeout => "drain_timeout",
            EndCause::BackendRemoved => "backend_removed",
        }
    }
}

/// A cap or quota of [`crate::Limits`] (or a timeout that bounds what a client holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `--max-connections`.
    Connections,
    /// `--max-sessions`.
    Sessions,
    /// `--client-max-sessions`.
    ClientSessions,
    /// `--client-session-rate`.
    ClientRate,
    /// `--client-send-timeout`: the client did not read its response.
    ClientSend,
    /// A backend stopped reading the request body (`--body-idle-timeout`).
    UpstreamSend,
}

impl Limit {
    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::Sessions => "max_sessions",
            Limit::ClientSessions => "client_max_sessions",
            Limit::ClientRate => "client_session_rate",
            Limit::ClientSend => "client_send_timeout",
            Limit::UpstreamSend => "upstream_send_timeout",
        }
    }
}

/// Something worth logging or counting. Carrying it out is optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A session was recorded.
    SessionStarted {
        /// The session.
        session: SessionKey,
        /// Its backend.
        backend: BackendId,
        /// Its transport era.
        era: Era,
    },
    /// A session record was removed.
    SessionEnded {
        /// The session.
        session: SessionKey,
        /// Its backend.
        backend: BackendId,
        /// Why.
        cause: EndCause,
    },
    /// A backend minted a session id that is already recorded; the first record wins.
    DuplicateSession {
        /// The session.
        session: SessionKey,
        /// The backend that minted it again.
        backend: BackendId,
    },
    /// The router answered a request itself with an error status.
    Rejected {
        /// HTTP status sent.
        status: u16,
        /// Why.
        reason: &'static str,
    },
    /// A backend's health changed.
    BackendHealth {
        /// The backend.
        backend: BackendId,
        /// The change.
        health: Health,
    },
    /// The session store did not answer.
    StoreUnavailable,
    /// A backend's response head was relayed to the client.
    Response {
        /// The backend.
        backend: BackendId,
        /// Its status.
        status: u16,
        /// From the request head written upstream to the response head read back.
        latency: Duration,
    },
    /// A request or connection was refused because a cap or quota was reached.
    Limited {
        /// Which.
        limit: Limit,
    },
    /// An exchange was cut off mid-way (client gone, broken framing, backend closed
    /// mid-response, idle body): the connection was closed.
    Aborted,
    /// A request's session id was refused (answered `404` `-32001` like an unknown
    /// session; no backend saw it). The id itself is not carried: a sealed id is a
    /// bearer credential and stays out of logs.
    SessionRefused {
        /// Why.
        cause: Refusal,
    },
    /// `--failover reinitialize`: a session's backend was lost (see
    /// [`crate::failover`]).
    Failover {
        /// The session (the client's id).
        session: SessionKey,
        /// The backend it was on.
        from: BackendId,
        /// The backend it is on now (`None`: it did not move).
        to: Option<BackendId>,
        /// Why it moved.
        cause: crate::failover::Cause,
        /// How it ended.
        outcome: crate::failover::Outcome,
        /// From the decision to fail over to the new mapping stored (zero when it did
        /// not move).
        took: Duration,
    },
}

/// Which peer of the connection a write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Client,
    /// The current upstream connection.
    Upstream,
}

/// What the driver must do next. Carry outputs out in order.
#[derive(Debug)]
#[must_use]
pub enum Output {
    /// Write these bytes to the client.
    ToClient(Bytes),
    /// Write these bytes to the current upstream connection.
    ToUpstream(Bytes),
    /// Get a connection to this backend: an idle pooled one (unless `fresh`) or a new
    /// one. Answer with [`Conn::handle_upstream_connected`] or
    /// [`Conn::handle_upstream_failed`].
    Connect {
        /// Which backend.
        backend: BackendId,
        /// Do not take a pooled connection: the last one was stale.
        fresh: bool,
    },
    /// The current upstream connection is no longer needed: put it back in the pool if
    /// `reuse`, otherwise close it. Clear [`Buffers::upstream`] either way.
    ReleaseUpstream {
        /// The connection is clean and may carry another request.
        reuse: bool,
    },
    /// Run this against the session store and feed the reply to
    /// [`Conn::handle_store_reply`] (replies in the order the ops were emitted).
    Store(StoreOp),
    /// Close the client connection once everything written before is flushed.
    CloseClient,
    /// Log or count this.
    Event(Event),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head.
    Idle,
    /// A request is in flight.
    Exchange,
    /// `CloseClient` was emitted.
    Closed,
}

/// How the request in flight is being routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Route {
    /// No session: reading the body until the JSON-RPC method is known.
    #[default]
    Sniffing,
    /// Waiting for the store to say which backend owns the session.
    Lookup,
    /// Waiting for the store to admit a new session (caps and quotas).
    Admit,
    /// Going to (or at) a backend.
    Forward,
    /// The router answers itself once it knows the request id (read from the body).
    Answer {
        status: u16,
        code: ErrorCode,
        msg: &'static str,
        /// Seconds for `Retry-After` (0: none).
        retry: u32,
    },
    /// Answered; nothing more to read but the rest of the request body, discarded.
    Done,
}

/// What the request is, for routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Kind {
    /// No session and not a session opener.
    #[default]
    Stateless,
    /// Opens a session (`initialize`, or a legacy SSE `GET`).
    NewSession,
    /// Belongs to a recorded session.
    Pinned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Upstream {
    #[default]
    None,
    /// Connecting to `backend` (bounded by [`Timer::Connect`]).
    Connecting { backend: BackendId },
    /// Connected to `backend`; `reused`: the connection came from the pool.
    Ready { backend: BackendId, reused: bool },
}

/// What the router is waiting for before it forwards more of the response.
#[derive(Debug, Default)]
enum Hold {
    #[default]
    No,
    /// A new session's record is being inserted; the response head waits.
    Head,
    /// A legacy session's record is being inserted; these body bytes wait.
    Body(Bytes),
}

#[derive(Debug)]
enum Waiting {
    Lookup,
    Admit,
    Insert(SessionKey, BackendId, Era),
    Delete(SessionKey, EndCause),
    Touch,
    FailOver,
    LoadFailover,
}

/// A failover's replay in progress on the exchange's upstream connection (see
/// [`crate::failover`]).
#[derive(Debug)]
struct Replay {
    step: ReplayStep,
    from: BackendId,
    to: BackendId,
    cause: Cause,
    started: Instant,
    record: Record,
    state: Arc<Failover>,
    /// The session id the new backend minted.
    minted: Option<SessionKey>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplayStep {
    /// `initialize` with the client's parameters.
    Initialize,
    /// `notifications/initialized` with the new session id.
    Initialized,
    /// Waiting for the store to take the new mapping.
    Store,
}

/// What an opened sealed session id said (the upstream id is `Exchange::session`).
#[derive(Clone, Copy, Debug)]
struct SealedSession {
    client: ClientId,
    era: Era,
    issued: u32,
}

/// The session a request names, read once.
enum Named {
    None,
    Invalid,
    Key(SessionKey),
    Sealed(Result<Opened, OpenError>),
}

/// Per-request state, reset for every request of a keep-alive connection.
#[derive(Debug)]
struct Exchange {
    route: Route,
    kind: Kind,
    session: Option<SessionKey>,
    backend: Option<BackendId>,
    tried: Vec<BackendId>,
    req_body: BodyDecoder,
    req_done: bool,
    /// Feed request body bytes to the sniffer.
    sniff: bool,
    sniffer: Sniffer,
    /// A 2026-07-28 POST: the whole body is read, and its mirrored headers checked
    /// ([`crate::guard::check_mirrored`]), before a backend is picked.
    modern: bool,
    /// Request body bytes read before the upstream connection was ready.
    pending: VecDeque<Bytes>,
    pending_len: usize,
    /// Body bytes read while draining for the request id.
    drained: usize,
    upstream: Upstream,
    /// Everything sent upstream over a pooled connection (the very `Bytes` handed to
    /// the driver, shared, not copied), to resend once on a fresh connection.
    retained: Vec<Bytes>,
    /// Total length of `retained`.
    retained_len: usize,
    /// `retained` holds the whole request so far (a pooled connection, within
    /// `MAX_RETAINED`).
    retaining: bool,
    retried: bool,
    upstream_eof: bool,
    /// Any response byte arrived.
    resp_seen: bool,
    /// The final response head was parsed.
    resp_head: bool,
    resp_body: BodyDecoder,
    /// Re-frame a chunked response body for an HTTP/1.0 client.
    dechunk: bool,
    client_keep_alive: bool,
    /// Response bytes were written to the client.
    client_started: bool,
    streaming: bool,
    hold: Hold,
    /// Watching a legacy SSE stream for its `endpoint` event.
    watch: Option<SseParser>,
    watched: usize,
    /// The legacy session carried by this stream: its record ends with the stream.
    legacy: Option<SessionKey>,
    /// When the request head went upstream (for the latency metric).
    sent_at: Option<Instant>,
    /// The client that opens a new session (set when it was admitted).
    client: Option<ClientId>,
    /// The request counted in flight to `backend` while it is sent and answered.
    in_flight: Option<InFlight>,
    /// The request is of the 2026-07-28 era or later (by `MCP-Protocol-Version`): it
    /// may only go to a backend that serves that era (see [`crate::config::Eras`]).
    era_modern: bool,
    /// The request's sealed session id opened to this (`session` holds the upstream id).
    sealed: Option<SealedSession>,
    /// Sealed mode: the `Mcp-Session-Id` value the response head carries to the client
    /// instead of the backend's (empty: none).
    sid_out: Vec<u8>,
    /// Sealed mode: the request target sent upstream instead of the client's (legacy
    /// `?sessionId=` opened; empty: none).
    target_out: Vec<u8>,
    /// Sealed legacy stream: the decoded body goes to the client re-chunked.
    reframe: bool,
    /// Sealed legacy stream: decoded body bytes wait in `watch_buf` until the
    /// `endpoint` event's session id is replaced by a sealed one.
    seal_watch: bool,
    watch_buf: Vec<u8>,
    /// `--failover`: keeping the body of what may be an `initialize` (at most
    /// `max_params` bytes; `capture_over`: it was longer).
    capture: bool,
    capture_over: bool,
    captured: Vec<u8>,
    /// `--failover`: the session's record and failover state, as looked up.
    looked_up: Option<(Record, Option<Arc<Failover>>)>,
    /// After a failover: the upstream session id the request goes out with.
    upstream_sid: Option<SessionKey>,
    /// A failover's replay in progress.
    replay: Option<Box<Replay>>,
    /// A failover waiting for the store's [`StoreOp::LoadFailover`]: the record as
    /// looked up and why the backend is lost.
    loading: Option<(Record, Cause)>,
}

impl Exchange {
    fn new() -> Exchange {
        Exchange {
            route: Route::Sniffing,
            kind: Kind::Stateless,
            session: None,
            backend: None,
            tried: Vec::new(),
            req_body: BodyDecoder::new(BodyKind::Empty, MAX_CHUNK_LINE),
            req_done: true,
            sniff: false,
            sniffer: Sniffer::new(),
            modern: false,
            pending: VecDeque::new(),
            pending_len: 0,
            drained: 0,
            upstream: Upstream::None,
            retained: Vec::new(),
            retained_len: 0,
            retaining: false,
            retried: false,
            upstream_eof: false,
            resp_seen: false,
            resp_head: false,
            resp_body: BodyDecoder::new(BodyKind::Empty, MAX_CHUNK_LINE),
            dechunk: false,
            client_keep_alive: false,
            client_started: false,
            streaming: false,
            hold: Hold::No,
            watch: None,
            watched: 0,
            legacy: None,
            sent_at: None,
            client: None,
            in_flight: None,
            era_modern: false,
            sealed: None,
            sid_out: Vec::new(),
            target_out: Vec::new(),
            reframe: false,
            seal_watch: false,
            watch_buf: Vec::new(),
            capture: false,
            capture_over: false,
            captured: Vec::new(),
            looked_up: None,
            upstream_sid: None,
            replay: None,
            loading: None,
        }
    }

    /// Whether the sniffer has read what routing needs: the method, or for a 2026-07-28
    /// request the whole message (its mirrored members may come anywhere, and a member
    /// repeated later would give the body a second reading).
    fn decided(&self) -> bool {
        if self.modern {
            self.sniffer.finished()
        } else {
            self.sniffer.method_settled()
        }
    }

    /// Reset for the next request, keeping allocations.
    /// The backend whose connection carries the exchange: a response (or its
    /// retry) only comes over one, so there is one. Calling it without one is a
    /// contract violation, caught in debug builds.
    fn upstream_backend(&self) -> BackendId {
        match self.upstream {
            Upstream::Connecting { backend } | Upstream::Ready { backend, .. } => backend,
            Upstream::None => {
                debug_assert!(false, "no upstream connection: no backend to name");
                self.backend.unwrap_or(BackendId(0))
            }
        }
    }

    fn reset(&mut self) {
        // Field by field (the pattern names every field, so a new one cannot be
        // forgotten): rebuilding the whole struct cost ~1 200 instructions a request.
        let Exchange {
            route,
            kind,
            session,
            backend,
            tried,
            req_body,
            req_done,
            sniff,
            sniffer,
            modern,
            pending,
            pending_len,
            drained,
            upstream,
            retained,
            retained_len,
            retaining,
            retried,
            upstream_eof,
            resp_seen,
            resp_head,
            resp_body,
            dechunk,
            client_keep_alive,
            client_started,
            streaming,
            hold,
            watch,
            watched,
            legacy,
            sent_at,
            client,
            in_flight,
            era_modern,
            sealed,
            sid_out,
            target_out,
            reframe,
            seal_watch,
            watch_buf,
            capture,
            capture_over,
            captured,
            looked_up,
            upstream_sid,
            replay,
            loading,
        } = self;
        *route = Route::Sniffing;
        *kind = Kind::Stateless;
        *session = None;
        *backend = None;
        tried.clear();
        *req_body = BodyDecoder::new(BodyKind::Empty, MAX_CHUNK_LINE);
        *req_done = true;
        *sniff = false;
        sniffer.reset();
        *modern = false;
        pending.clear();
        *pending_len = 0;
        *drained = 0;
        *upstream = Upstream::None;
        retained.clear();
        *retained_len = 0;
        *retaining = false;
        *retried = false;
        *upstream_eof = false;
        *resp_seen = false;
        *resp_head = false;
        *resp_body = BodyDecoder::new(BodyKind::Empty, MAX_CHUNK_LINE);
        *dechunk = false;
        *client_keep_alive = false;
        *client_started = false;
        *streaming = false;
        *hold = Hold::No;
        *watch = None;
        *watched = 0;
        *legacy = None;
        *sent_at = None;
        *client = None;
        *in_flight = None;
        *era_modern = false;
        *sealed = None;
        sid_out.clear();
        target_out.clear();
        *reframe = false;
        *seal_watch = false;
        if watch_buf.capacity() > 4096 {
            *watch_buf = Vec::new();
        } else {
            watch_buf.clear();
        }
        *capture = false;
        *capture_over = false;
        if captured.capacity() > 4096 {
            *captured = Vec::new();
        } else {
            captured.clear();
        }
        *looked_up = None;
        *upstream_sid = None;
        *replay = None;
        *loading = None;
    }
}

/// An answer of the router's own: status, JSON-RPC error and `Retry-After` seconds
/// (0: none).
#[derive(Clone, Copy, Debug)]
struct LocalAnswer {
    status: u16,
    code: ErrorCode,
    msg: &'static str,
    retry: u32,
}

/// The proxy state machine of one client connection. See the crate docs.
#[derive(Debug)]
pub struct Conn {
    router: Arc<Router>,
    cfg: Arc<Config>,
    peer: Option<IpAddr>,
    /// `peer` as text, for `X-Forwarded-For`.
    peer_text: Option<IpText>,
    proto: &'static str,
    out: VecDeque<Output>,
    waiting: VecDeque<Waiting>,
    req: RequestHead,
    resp: ResponseHead,
    x: Exchange,
    phase: Phase,
    scratch: BytesMut,
    client_eof: bool,
    shutting_down: bool,
    /// Every deadline of the connection and of its exchange.
    timers: TimerTable,
    /// The client (bit 0) or upstream (bit 1) send deadline passed.
    send_expired: u8,
}

impl Conn {
    /// A new client connection from `peer` (for `X-Forwarded-For`), reached over
    /// `proto` (`"http"` or `"https"`, for `X-Forwarded-Proto`).
    pub fn new(
        router: Arc<Router>,
        peer: Option<IpAddr>,
        proto: &'static str,
        now: Instant,
    ) -> Conn {
        let cfg = router.config().clone();
        let mut timers = TimerTable::default();
        timers.set(Timer::KeepAlive, now + cfg.timeouts.client_idle);
        Conn {
            router,
            cfg,
            peer,
            peer_text: peer.map(IpText::new),
            proto,
            out: VecDeque::new(),
            waiting: VecDeque::new(),
            req: RequestHead::default(),
            resp: ResponseHead::default(),
            x: Exchange::new(),
            phase: Phase::Idle,
            scratch: BytesMut::new(),
            client_eof: false,
            shutting_down: false,
            timers,
            send_expired: 0,
        }
    }

    // ----- getters -----------------------------------------------------------------

    /// The connection is finished: `CloseClient` was emitted. Drain outputs, then drop.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the driver should read more from the client now.
    pub fn wants_client_read(&self, bufs: &Buffers) -> bool {
        self.phase != Phase::Closed
            && !self.client_eof
            && bufs.client.len() < self.cfg.http.max_head.max(UPSTREAM_READ_CAP)
    }

    /// Whether the driver should read more from the upstream connection now.
    pub fn wants_upstream_read(&self, bufs: &Buffers) -> bool {
        self.phase == Phase::Exchange
            && matches!(self.x.upstream, Upstream::Ready { .. })
            && !self.x.upstream_eof
            && matches!(self.x.hold, Hold::No)
            && bufs.upstream.len() < UPSTREAM_READ_CAP
    }

    /// The earliest time [`Conn::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let send = match (
            self.timers.get(Timer::ClientSend),
            self.timers.get(Timer::UpstreamSend),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let own = self.own_timeout();
        match (own, send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn sending(&self) -> bool {
        self.timers.is_set(Timer::ClientSend) || self.timers.is_set(Timer::UpstreamSend)
    }

    fn own_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::Idle => self.timers.earliest([Timer::Head, Timer::KeepAlive]),
            Phase::Exchange => {
                let t = &self.timers;
                let connect = t
                    .get(Timer::Connect)
                    .filter(|_| matches!(self.x.upstream, Upstream::Connecting { .. }));
                // A stalled write suspends the body-silence deadline: the peer that
                // looks silent is only waiting for the router, which waits for the
                // other peer to read (the send deadline bounds that instead).
                let idle = t.get(Timer::BodyIdle).filter(|_| !self.sending());
                [connect, idle, t.earliest([Timer::Response, Timer::Touch])]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    /// Bytes and entries the connection holds right now, for the fuzz targets' memory
    /// bounds: request body bytes held before the upstream connection is ready, the
    /// copy kept for a resend, response bytes held while a new session is recorded,
    /// and store ops awaiting a reply. Not part of the API.
    #[doc(hidden)]
    pub fn held(&self) -> [usize; 4] {
        let retained = self.x.retained_len;
        let hold = match &self.x.hold {
            Hold::Body(b) => b.len(),
            _ => 0,
        };
        [self.x.pending_len, retained, hold, self.waiting.len()]
    }

    /// The next output to carry out. Drain until `None` after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ----- inputs ------------------------------------------------------------------

    /// Consume whatever the buffers hold that the current state can take. Call it after
    /// reading into the buffers and after every other `handle_*` call (a reply may
    /// unblock buffered bytes).
    pub fn handle_io(&mut self, bufs: &mut Buffers, now: Instant) {
        for _ in 0..64 {
            let progressed = match self.phase {
                Phase::Closed => return,
                Phase::Idle => self.read_head(bufs, now),
                Phase::Exchange => {
                    let a = self.pump_request(bufs, now);
                    let b = self.pump_response(bufs, now);
                    a || b
                }
            };
            if !progressed {
                break;
            }
        }
    }

    /// The client closed its side (read returned 0) or the connection broke.
    pub fn handle_client_eof(&mut self, now: Instant) {
        self.client_eof = true;
        match self.phase {
            Phase::Closed => {}
            // A complete buffered request is still served by handle_io; a partial one
            // is dropped there.
            Phase::Idle => {}
            Phase::Exchange => {
                if self.x.client_started || self.x.upstream != Upstream::None || !self.x.req_done {
                    // The client is gone (typically an SSE consumer hanging up): stop
                    // the upstream side too.
                    self.abort(now);
                }
            }
        }
    }

    /// The upstream connection asked for with [`Output::Connect`] is ready. `reused`:
    /// it came from the pool.
    pub fn handle_upstream_connected(&mut self, reused: bool, now: Instant) {
        let Upstream::Connecting { .. } = self.x.upstream else {
            return;
        };
        let Some(b) = self.x.backend else { return };
        if !self.router.is_configured(b) {
            // removed while connecting: its sessions end as if it had died
            self.connect_failed(now);
            return;
        }
        if !reused {
            self.health(b, self.router.connect_ok(b));
        }
        self.x.upstream = Upstream::Ready { backend: b, reused };
        if self.x.replay.is_some() {
            return self.replay_send(b, now);
        }
        self.x.sent_at = Some(now);
        if self.x.retried {
            // what the stale connection was sent, then the body that came meanwhile
            for chunk in self.x.retained.drain(..) {
                self.out.push_back(Output::ToUpstream(chunk));
            }
            self.x.retained_len = 0;
            self.x.retaining = false;
            while let Some(chunk) = self.x.pending.pop_front() {
                self.out.push_back(Output::ToUpstream(chunk));
            }
            self.x.pending_len = 0;
        } else {
            self.send_request_head(b, reused);
            while let Some(chunk) = self.x.pending.pop_front() {
                self.retain(&chunk);
                self.out.push_back(Output::ToUpstream(chunk));
            }
            self.x.pending_len = 0;
        }
        if self.x.req_done {
            self.timers
                .set(Timer::Response, now + self.cfg.timeouts.response);
        } else {
            self.timers
                .set(Timer::BodyIdle, now + self.cfg.timeouts.body_idle);
        }
    }

    /// Connecting to the backend failed (refused, unreachable, timed out in the driver).
    pub fn handle_upstream_failed(&mut self, now: Instant) {
        if !matches!(self.x.upstream, Upstream::Connecting { .. }) {
            return;
        }
        self.connect_failed(now);
    }

    /// The upstream connection reached EOF or broke. Call [`Conn::handle_io`] first so
    /// that buffered bytes are consumed.
    pub fn handle_upstream_eof(&mut self, now: Instant) {
        if let Upstream::Ready { .. } = self.x.upstream {
            self.x.upstream_eof = true;
            self.on_upstream_eof(now);
        } else if let Upstream::Connecting { .. } = self.x.upstream {
            self.connect_failed(now);
        }
    }

    /// The reply to the oldest outstanding [`Output::Store`] op.
    pub fn handle_store_reply(&mut self, reply: StoreReply, now: Instant) {
        let Some(w) = self.waiting.pop_front() else {
            // The connection never drops an op it asked for, so a reply without one is
            // the driver's mistake (answering twice, or another connection's op).
            debug_assert!(
                false,
                "handle_store_reply without an outstanding Output::Store"
            );
            return;
        };
        if reply == StoreReply::Unavailable {
            self.event(Event::StoreUnavailable);
        }
        match w {
            Waiting::Lookup => self.on_lookup(reply, now),
            Waiting::Admit => self.on_admit(reply, now),
            Waiting::Insert(key, b, era) => self.on_insert(reply, key, b, era, now),
            Waiting::Delete(key, cause) => {
                if let StoreReply::Deleted(Some(rec)) = reply {
                    self.router.session_ended(rec.backend);
                    self.event(Event::SessionEnded {
                        session: key,
                        backend: rec.backend,
                        cause,
                    });
                }
            }
            Waiting::Touch => {}
            Waiting::FailOver => self.on_failed_over(reply, now),
            Waiting::LoadFailover => self.on_failover_loaded(reply, now),
        }
    }

    /// The driver could not finish a write to `side` at once (the peer's receive
    /// window is full). Call it again after every partial progress: the send deadline
    /// counts from the last progress, like nginx's `send_timeout` ("set only between
    /// two successive write operations").
    pub fn handle_send_blocked(&mut self, side: Side, now: Instant) {
        match side {
            Side::Client => self
                .timers
                .set(Timer::ClientSend, now + self.cfg.timeouts.client_send),
            Side::Upstream => self
                .timers
                .set(Timer::UpstreamSend, now + self.cfg.timeouts.body_idle),
        }
    }

    /// A write to `side` that was blocked has finished.
    pub fn handle_send_done(&mut self, side: Side, now: Instant) {
        match side {
            Side::Client => self.timers.stop(Timer::ClientSend),
            Side::Upstream => self.timers.stop(Timer::UpstreamSend),
        }
        if !self.sending() && self.timers.is_set(Timer::BodyIdle) {
            // the silence it measures starts again now
            self.timers
                .set(Timer::BodyIdle, now + self.cfg.timeouts.body_idle);
        }
    }

    /// Whether the send deadline of `side` passed: the driver drops what it was
    /// writing there.
    pub fn send_expired(&self, side: Side) -> bool {
        let bit = match side {
            Side::Client => 1,
            Side::Upstream => 2,
        };
        self.send_expired & bit != 0
    }

    /// Time passed: act on any deadline that has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.expired(Timer::ClientSend, now) {
            // The client does not read what it asked for: it holds this connection
            // and a backend connection for nothing. Close both (the backend
            // connection is mid-response, so it is not pooled); the session record
            // stays, so the client can come back.
            self.timers.stop(Timer::ClientSend);
            self.timers.stop(Timer::UpstreamSend);
            self.send_expired |= 1;
            self.event(Event::Limited {
                limit: Limit::ClientSend,
            });
            self.abort(now);
            return;
        }
        if self.timers.expired(Timer::UpstreamSend, now) {
            // The backend stopped reading the request body.
            self.timers.stop(Timer::UpstreamSend);
            self.send_expired |= 2;
            self.event(Event::Limited {
                limit: Limit::UpstreamSend,
            });
            self.release_upstream(false);
            self.gateway_error(
                504,
                "Gateway timeout: the backend stopped reading the request",
                now,
            );
            return;
        }
        match self.phase {
            Phase::Closed => {}
            Phase::Idle => {
                if self.timers.expired(Timer::Head, now) {
                    self.reject_head(408, "request head timeout");
                } else if self.timers.expired(Timer::KeepAlive, now) {
                    self.close();
                }
            }
            Phase::Exchange => {
                if matches!(self.x.upstream, Upstream::Connecting { .. })
                    && self.timers.expired(Timer::Connect, now)
                {
                    self.connect_failed(now);
                    return;
                }
                if self.timers.expired(Timer::Response, now) {
                    self.timers.stop(Timer::Response);
                    self.release_upstream(false);
                    if self.x.replay.is_some() {
                        return self.replay_failed(now);
                    }
                    self.gateway_error(
                        504,
                        "Gateway timeout: the backend did not answer in time",
                        now,
                    );
                    return;
                }
                if !self.sending() && self.timers.expired(Timer::BodyIdle, now) {
                    self.event(Event::Rejected {
                        status: 0,
                        reason: "body idle timeout",
                    });
                    self.abort(now);
                    return;
                }
                if let (true, Some(k)) = (self.timers.expired(Timer::Touch, now), &self.x.session) {
                    let k = k.clone();
                    self.store(StoreOp::Touch(k), Waiting::Touch);
                    self.timers.set(Timer::Touch, now + self.touch_period());
                }
            }
        }
    }

    /// Graceful shutdown: finish the exchange in flight (if any), then close; an idle
    /// connection closes at once.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        if self.phase == Phase::Idle {
            self.close();
        }
    }

    // ----- request side ------------------------------------------------------------

    fn read_head(&mut self, bufs: &mut Buffers, now: Instant) -> bool {
        if bufs.client.is_empty() {
            if self.client_eof {
                self.close();
            }
            return false;
        }
        if !self.timers.is_set(Timer::Head) {
            self.timers.set(Timer::Head, now + self.cfg.timeouts.header);
        }
        match parse_request(&mut bufs.client, &self.cfg.http, &mut self.req) {
            Ok(false) => {
                if self.client_eof {
                    self.close();
                }
                false
            }
            Err(e) => {
                self.reject_head(e.status(), e.reason());
                false
            }
            Ok(true) => {
                self.timers.stop(Timer::Head);
                self.phase = Phase::Exchange;
                self.start_exchange(now);
                true
            }
        }
    }

    fn start_exchange(&mut self, now: Instant) {
        self.x.reset();
        self.timers.stop_exchange();
        self.x.req_body = BodyDecoder::new(self.req.body, MAX_CHUNK_LINE);
        self.x.req_done = self.x.req_body.is_done();
        if !self.x.req_done {
            self.timers
                .set(Timer::BodyIdle, now + self.cfg.timeouts.body_idle);
        }
        if self.cfg.session_ids == SessionIds::Sealed {
            // A reload's key ring applies to the next request of every open
            // connection: a key removed from the ring stops opening at once.
            self.cfg = self.router.config();
        }
        let req = &self.req;
        // One reading of every request (see `guard::read_request`).
        let reading = crate::guard::read_request(req, &self.cfg);
        let opens_stream = req.method == Method::Get
            && req
                .known(Name::Accept)
                .is_some_and(|a| contains_ignore_case(a, b"text/event-stream"));
        let post = req.method == Method::Post;
        if req.expect_continue && !self.x.req_done && req.version == Version::Http11 {
            // The router reads the body itself (it may need the request id), so it
            // answers the expectation instead of the backend.
            self.out.push_back(Output::ToClient(Bytes::from_static(
                b"HTTP/1.1 100 Continue\r\n\r\n",
            )));
        }
        if self.cfg.modern_only
            && reading.is_ok()
            && matches!(req.method, Method::Get | Method::Delete)
        {
            // 2026-07-28, Backward Compatibility: "A server that supports only this
            // revision and receives such traffic from an older client **SHOULD** respond
            // as follows: HTTP GET or DELETE to the MCP endpoint: respond with `405
            // Method Not Allowed`." With `modern_only` the backends are such servers, so
            // the router answers for them.
            self.answer(
                405,
                ErrorCode::InvalidRequest,
                "Method Not Allowed: this endpoint serves MCP 2026-07-28 (POST only)",
                now,
            );
            return;
        }
        let max_sid = self.cfg.max_session_id_len;
        let (stateless, named) = match reading {
            Ok(r) => {
                let named = match r.session {
                    None => Named::None,
                    Some(raw) if !valid_session_id(&raw, max_sid) => Named::Invalid,
                    Some(raw) => match (self.cfg.session_ids, &self.cfg.session_keys) {
                        (SessionIds::Sealed, Some(ring)) => Named::Sealed(ring.open(&raw, max_sid)),
                        _ => SessionKey::new(&raw, max_sid).map_or(Named::Invalid, Named::Key),
                    },
                };
                (r.stateless, named)
            }
            Err((status, code, msg)) => {
                // A 403 carries "a JSON-RPC error response that has no id" (2025-11-25):
                // its body is not read.
                self.x.sniff = post && status != 403;
                self.answer(status, code, msg, now);
                return;
            }
        };
        match named {
            // "The session ID MUST only contain visible ASCII characters (ranging from
            // 0x21 to 0x7E)."
            Named::Invalid => {
                self.x.sniff = post;
                self.answer(400, ErrorCode::InvalidRequest, "Invalid session id", now);
            }
            Named::Key(key) => {
                // failover: a request lost with its backend is answered with its id
                self.x.sniff = post && self.cfg.failover.is_some();
                self.x.kind = Kind::Pinned;
                self.x.session = Some(key.clone());
                self.x.route = Route::Lookup;
                self.store(StoreOp::Get(key), Waiting::Lookup);
            }
            Named::Sealed(opened) => self.open_sealed(opened, now),
            Named::None => {
                self.x.era_modern = stateless;
                if post {
                    self.x.sniff = true;
                    self.x.modern = stateless;
                    // failover: keep what may be an `initialize`, to replay it
                    self.x.capture = self.cfg.failover.is_some();
                    self.x.route = Route::Sniffing;
                    self.try_route(now);
                } else {
                    self.x.kind = if opens_stream && !stateless {
                        Kind::NewSession
                    } else {
                        Kind::Stateless
                    };
                    self.pick_and_connect(now);
                }
            }
        }
    }

    /// A request carrying a sealed session id: check what it says, then route it by
    /// it (and by its record too, when records are kept). Every refusal is a `404`
    /// `-32001`, exactly like an unknown session (see [`Conn::not_found`]): "A request
    /// with a terminated or unknown session id MUST get `404`, and a client receiving
    /// `404` for a session MUST start over with a new `initialize`"
    /// (shared/mcp-transport.md). A token that does not open, is too old, names no
    /// backend of ours or belongs to another caller names no session this router
    /// knows, so it is an unknown session; a `400` would strand the client.
    fn open_sealed(&mut self, opened: Result<Opened, OpenError>, now: Instant) {
        let o = match opened {
            Ok(o) => o,
            Err(e) => return self.refuse_session(e.into(), now),
        };
        let age = self
            .router
            .unix_now(now)
            .saturating_sub(u64::from(o.issued));
        if age > self.cfg.session_max_age.as_secs() {
            return self.refuse_session(Refusal::Expired, now);
        }
        let Some(b) = self.router.backend_by_digest(&o.backend) else {
            return self.refuse_session(Refusal::UnknownBackend, now);
        };
        if self.cfg.session_binding && self.client_id() != o.client {
            return self.refuse_session(Refusal::Binding, now);
        }
        self.x.kind = Kind::Pinned;
        self.x.sealed = Some(SealedSession {
            client: o.client,
            era: o.era,
            issued: o.issued,
        });
        if self.cfg.session_records {
            self.x.sniff = self.req.method == Method::Post && self.cfg.failover.is_some();
            self.x.session = Some(o.upstream.clone());
            self.x.route = Route::Lookup;
            self.store(StoreOp::Get(o.upstream), Waiting::Lookup);
            return;
        }
        self.x.session = Some(o.upstream);
        if !self.router.is_up(b, now) {
            // as for a record naming a backend marked down: its sessions are gone
            self.not_found(now);
        } else {
            self.connect(b, false, now);
        }
    }

    /// The client making the request in flight, as `client_identity` names it.
    fn client_id(&self) -> ClientId {
        ClientId::of(
            &self.cfg.client_identity,
            &self.cfg.trusted_proxies,
            self.peer,
            &self.req,
        )
    }

    /// Refuse the request's session id: `404` `-32001`, counted by cause.
    fn refuse_session(&mut self, cause: Refusal, now: Instant) {
        self.event(Event::SessionRefused { cause });
        self.not_found(now);
    }

    /// Whether sessions have records in the store: always in passthrough mode, in
    /// sealed mode only with `session_records`.
    fn records(&self) -> bool {
        self.cfg.session_ids == SessionIds::Passthrough || self.cfg.session_records
    }

    /// Sealed mode: seal `upstream` into `sid_out` for the response head. `false` when
    /// it cannot be sealed (the token would pass `max_session_id_len`).
    fn seal_sid(&mut self, upstream: &[u8], era: Era, issued: u32, client: ClientId) -> bool {
        let (Some(ring), Some(b)) = (self.cfg.session_keys.as_ref(), self.x.backend) else {
            return false;
        };
        let Some(backend) = self.router.digest_of(b) else {
            return false;
        };
        let fields = Fields {
            era,
            issued,
            client,
            backend,
            upstream,
        };
        self.x.sid_out.clear();
        let nonce = self.router.next_nonce();
        ring.seal(
            &fields,
            &nonce,
            self.cfg.max_session_id_len,
            &mut self.x.sid_out,
        )
        .is_ok()
    }

    /// The issue time of a token sealed now.
    fn issue_time(&self, now: Instant) -> u32 {
        self.router.unix_now(now).min(u64::from(u32::MAX)) as u32
    }

    /// Move request body bytes from the client buffer to where the state says.
    fn pump_request(&mut self, bufs: &mut Buffers, now: Instant) -> bool {
        if self.x.req_done || bufs.client.is_empty() {
            return false;
        }
        let x = &mut self.x;
        // during a failover's replay the connection carries the router's own requests
        let to_upstream = matches!(x.upstream, Upstream::Ready { .. }) && x.replay.is_none();
        match x.route {
            // The body waits until the store has answered (it may not be needed).
            Route::Lookup | Route::Admit => return false,
            // Hold at most `max_inspect_body` while connecting (backpressure).
            Route::Forward if !to_upstream && x.pending_len >= self.cfg.max_inspect_body => {
                return false
            }
            _ => {}
        }
        let sniff = x.sniff;
        // While the method is unknown, read at most one byte past the inspection limit,
        // however the bytes arrived, so the 413 decision does not depend on splits.
        let input = match x.route {
            Route::Sniffing => {
                let room = (self.cfg.max_inspect_body + 1).saturating_sub(x.pending_len);
                &bufs.client[..bufs.client.len().min(room)]
            }
            // Likewise while draining a body the router answers itself: whether the
            // body ends within the limit (keep the connection) or not (close) must not
            // depend on how the bytes arrived.
            Route::Answer { .. } => {
                let room = (self.cfg.max_inspect_body + 1).saturating_sub(x.drained);
                &bufs.client[..bufs.client.len().min(room)]
            }
            // Held while connecting: at most `max_inspect_body`, however it arrived, so
            // that a local answer after a failed connect finds the same body read.
            Route::Forward if !to_upstream => {
                let room = self.cfg.max_inspect_body.saturating_sub(x.pending_len);
                &bufs.client[..bufs.client.len().min(room)]
            }
            _ => &bufs.client[..],
        };
        let sniffer = &mut x.sniffer;
        let expect = if x.modern {
            crate::guard::expect_of(&self.req)
        } else {
            Expect::default()
        };
        let capture = x.capture;
        let max_params = self.cfg.failover.map_or(0, |f| f.max_params);
        let (captured, over) = (&mut x.captured, &mut x.capture_over);
        let n = match x.req_body.decode(input, &mut |d| {
            if sniff {
                sniffer.feed_with(d, &expect)
            }
            if capture && !*over {
                if captured.len() + d.len() <= max_params {
                    captured.extend_from_slice(d);
                } else {
                    *over = true;
                    captured.clear();
                }
            }
        }) {
            Ok(n) => n,
            Err(e) => {
                let reason = e.reason();
                if x.client_started || to_upstream {
                    self.event(Event::Rejected {
                        status: 400,
                        reason,
                    });
                    self.abort(now);
                } else {
                    // The body is unfinished, so `respond_local` closes the connection:
                    // after a framing error nothing more on it can be trusted.
                    self.x.sniff = false;
                    self.respond_local(400, ErrorCode::InvalidRequest, reason, false);
                }
                return false;
            }
        };
        if n == 0 {
            return false;
        }
        let raw = bufs.client.split_to(n).freeze();
        if x.sniff && x.route == Route::Forward && x.sniffer.id_settled() {
            // routed, and the id is known: nothing more to learn from the body
            x.sniff = false;
        }
        x.req_done = x.req_body.is_done();
        if x.req_done && x.sniff {
            // the whole message was seen: settle what is still open
            x.sniffer.end();
        }
        if x.req_done {
            self.timers.stop(Timer::BodyIdle);
        } else {
            self.timers
                .set(Timer::BodyIdle, now + self.cfg.timeouts.body_idle);
        }
        match x.route {
            Route::Sniffing => {
                x.pending_len += raw.len();
                x.pending.push_back(raw);
                if x.pending_len > self.cfg.max_inspect_body && !x.decided() {
                    x.sniff = false;
                    self.respond_local(
                        413,
                        ErrorCode::InvalidRequest,
                        "Request body too large to inspect",
                        false,
                    );
                    return false;
                }
                self.try_route(now);
            }
            Route::Forward => {
                if to_upstream {
                    self.retain(&raw);
                    self.out.push_back(Output::ToUpstream(raw));
                    if self.x.req_done {
                        self.timers
                            .set(Timer::Response, now + self.cfg.timeouts.response);
                    }
                } else {
                    x.pending_len += raw.len();
                    x.pending.push_back(raw);
                }
            }
            Route::Answer { .. } => {
                x.drained += raw.len();
                self.try_answer();
            }
            Route::Done | Route::Lookup | Route::Admit => {}
        }
        true
    }

    /// Sniffing: decide once the method is known (or cannot become known).
    fn try_route(&mut self, now: Instant) {
        if self.x.route != Route::Sniffing {
            return;
        }
        if !(self.x.decided() || self.x.req_done) {
            return;
        }
        if self.x.modern {
            if self.x.req_done && !self.x.sniffer.finished() {
                // an empty body, which no read fed: not JSON
                self.x.sniffer.end();
            }
            if let Err((status, code, msg)) =
                crate::guard::check_mirrored(&self.req, &self.x.sniffer)
            {
                return self.answer(status, code, msg, now);
            }
            self.x.kind = Kind::Stateless;
            self.x.sniff = !self.x.sniffer.id_settled();
            return self.pick_and_connect(now);
        }
        self.x.kind = if self.x.sniffer.is_initialize() {
            Kind::NewSession
        } else {
            Kind::Stateless
        };
        if self.x.kind != Kind::NewSession && self.x.capture {
            self.x.capture = false;
            self.x.captured.clear();
        }
        // Keep reading the id if it comes after the method: an error answered later
        // (502, 504) echoes it, whether or not it arrived in the same read.
        self.x.sniff = !self.x.sniffer.id_settled();
        self.pick_and_connect(now);
    }

    fn pick_and_connect(&mut self, now: Instant) {
        let kind = match self.x.kind {
            Kind::NewSession => PickKind::NewSession,
            _ => PickKind::Stateless,
        };
        if kind == PickKind::NewSession && !self.router.serves(self.x.era_modern) {
            // refused before admission: a session no backend can serve costs no quota
            return self.unsupported_version(now);
        }
        if kind == PickKind::NewSession && self.x.client.is_none() {
            // A new session is admitted (caps, quotas) before any backend sees it, so
            // that a refused client creates nothing anywhere.
            let client = ClientId::of(
                &self.cfg.client_identity,
                &self.cfg.trusted_proxies,
                self.peer,
                &self.req,
            );
            self.x.client = Some(client);
            let l = &self.cfg.limits;
            let rate = l.client_session_rate;
            if l.max_sessions > 0 || l.client_max_sessions > 0 || rate > 0 {
                self.x.route = Route::Admit;
                let op = StoreOp::Admit(AdmitRequest {
                    client,
                    max_sessions: l.max_sessions,
                    client_max_sessions: l.client_max_sessions,
                    rate,
                    burst: l.client_session_burst,
                });
                self.store(op, Waiting::Admit);
                return;
            }
        }
        // Only requests that belong to no session have an affinity key: a session's
        // requests go to its backend, a new session to the one with fewest sessions.
        let key = match kind {
            PickKind::Stateless => self.cfg.affinity.key(&self.req, || {
                ClientId::of(
                    &self.cfg.client_identity,
                    &self.cfg.trusted_proxies,
                    self.peer,
                    &self.req,
                )
            }),
            PickKind::NewSession => None,
        };
        match self
            .router
            .pick_in_era(kind, key, self.x.era_modern, &self.x.tried, now)
        {
            Some(b) => self.connect(b, false, now),
            None if !self.router.serves(self.x.era_modern) => self.unsupported_version(now),
            None => {
                self.sniff_pending();
                self.answer(503, ErrorCode::Server, "No backend available", now);
            }
        }
    }

    /// No configured backend serves the request's era (each backend's `;eras=`): the
    /// router answers as a server that does not implement the version would. The
    /// 2026-07-28 schema, `UnsupportedProtocolVersionError`: "Returned when the
    /// request's protocol version is unknown to the server or unsupported [...]. For
    /// HTTP, the response status code MUST be 400 Bad Request." Its `data` lists the
    /// versions the fleet does serve, so that a client can "choose a mutually supported
    /// version from this list and retry".
    fn unsupported_version(&mut self, now: Instant) {
        self.sniff_pending();
        self.answer(
            400,
            ErrorCode::UnsupportedVersion,
            "Unsupported protocol version: no backend serves it",
            now,
        );
    }

    fn connect(&mut self, b: BackendId, fresh: bool, now: Instant) {
        self.x.backend = Some(b);
        // (dropping the guard of a previous attempt first)
        self.x.in_flight = None;
        self.x.in_flight = self.router.request_started(b);
        self.x.route = Route::Forward;
        self.x.upstream = Upstream::Connecting { backend: b };
        self.timers
            .set(Timer::Connect, now + self.cfg.timeouts.connect);
        self.out.push_back(Output::Connect { backend: b, fresh });
    }

    /// The store's verdict on a new session.
    fn on_admit(&mut self, reply: StoreReply, now: Instant) {
        if self.x.route != Route::Admit {
            return;
        }
        self.sniff_pending();
        let retry = self.cfg.limits.retry_after.as_secs().max(1) as u32;
        let (status, msg, retry, limit) = match reply {
            StoreReply::Admitted(Admission::Admit) => {
                self.x.route = Route::Sniffing;
                self.pick_and_connect(now);
                return;
            }
            StoreReply::Admitted(Admission::Sessions) => (
                503,
                "Too many sessions: try again later",
                retry,
                Limit::Sessions,
            ),
            StoreReply::Admitted(Admission::ClientSessions) => (
                429,
                "Too many sessions for this client: end one first",
                retry,
                Limit::ClientSessions,
            ),
            StoreReply::Admitted(Admission::ClientRate(ms)) => (
                429,
                "Sessions opened too fast: slow down",
                ms.div_ceil(1000).max(1),
                Limit::ClientRate,
            ),
            _ => {
                self.answer(503, ErrorCode::Server, "Session store unavailable", now);
                return;
            }
        };
        self.event(Event::Limited { limit });
        self.answer_retry(status, ErrorCode::Server, msg, retry);
    }

    fn on_lookup(&mut self, reply: StoreReply, now: Instant) {
        if self.x.route != Route::Lookup {
            return;
        }
        // Cloned only on the paths that end the session: a found session costs no copy.
        let Some(key) = self.x.session.as_ref() else {
            return;
        };
        let (rec, state) = match reply {
            StoreReply::Found(Some(rec)) => (rec, None),
            StoreReply::FoundFailover(rec, state) => (rec, Some(state)),
            StoreReply::Found(None) => return self.not_found(now),
            _ => {
                // The session may well be alive: not 404, so the client does not drop it.
                self.x.sniff = self.req.method == Method::Post;
                self.answer(503, ErrorCode::Server, "Session store unavailable", now);
                return;
            }
        };
        let configured = self.router.is_configured(rec.backend);
        if !configured && self.cfg.failover.is_none() {
            self.end_session(key.clone(), EndCause::UnknownBackend);
            return self.not_found(now);
        }
        if self.cfg.session_binding && self.x.sealed.is_none() && rec.client != self.client_id() {
            // passthrough binding: the record keeps the opener's digest
            return self.refuse_session(Refusal::Binding, now);
        }
        if !configured {
            return self.fail_over(rec, state, Cause::Removed, now);
        }
        if !self.router.is_up(rec.backend, now) {
            if self.cfg.failover.is_some() {
                return self.fail_over(rec, state, Cause::MarkedDown, now);
            }
            // "its sessions are gone, as when a pod restarts"
            self.end_session(key.clone(), EndCause::BackendDown);
            return self.not_found(now);
        }
        if self.req.method == Method::Get {
            // a GET stream of the session keeps its record alive
            self.timers.set(Timer::Touch, now + self.touch_period());
        }
        // a failed-over session goes out under its new upstream id, also once a reload
        // has turned failover off
        self.x.upstream_sid = state.as_ref().and_then(|f| f.upstream.clone());
        if self.cfg.failover.is_some() {
            self.x.looked_up = Some((rec, state));
        }
        self.connect(rec.backend, false, now);
    }

    /// "The server MAY terminate the session at any time, after which it MUST respond
    /// to requests containing that session ID with HTTP 404 Not Found." The router
    /// answers for a session it has no record of, so the request never reaches a
    /// backend and the client starts a new session: "When a client receives HTTP 404
    /// in response to a request containing an Mcp-Session-Id, it MUST start a new
    /// session by sending a new InitializeRequest without a session ID attached."
    fn not_found(&mut self, now: Instant) {
        self.x.sniff = self.req.method == Method::Post;
        self.answer(404, ErrorCode::SessionNotFound, "Session not found", now);
    }

    /// Answer locally once the request id is known (drained from the body) or cannot be.
    fn answer(&mut self, status: u16, code: ErrorCode, msg: &'static str, _now: Instant) {
        self.answer_retry(status, code, msg, 0);
    }

    /// [`Conn::answer`] with a `Retry-After` of `retry` seconds (0: none).
    fn answer_retry(&mut self, status: u16, code: ErrorCode, msg: &'static str, retry: u32) {
        self.x.route = Route::Answer {
            status,
            code,
            msg,
            retry,
        };
        self.x.pending.clear();
        self.x.pending_len = 0;
        self.try_answer();
    }

    fn try_answer(&mut self) {
        let Route::Answer {
            status,
            code,
            msg,
            retry,
        } = self.x.route
        else {
            return;
        };
        let x = &self.x;
        // Read the rest of the body (up to the inspection limit) even once the id is
        // known: answering early would close the connection when the id happened to
        // arrive in an earlier read than the body's end, and keep it otherwise.
        let ready = !x.sniff || x.req_done || x.drained > self.cfg.max_inspect_body;
        if ready {
            self.respond_local_retry(status, code, msg, retry);
        }
    }

    /// Feed the request body held so far to the sniffer, from its start (used when a
    /// request that was going to be forwarded must be answered locally after all).
    fn sniff_pending(&mut self) {
        if self.x.sniff || self.x.pending.is_empty() {
            self.x.sniff = self.req.method == Method::Post && !self.x.req_done;
            return;
        }
        let x = &mut self.x;
        x.sniffer.reset();
        let mut dec = BodyDecoder::new(self.req.body, MAX_CHUNK_LINE);
        let sniffer = &mut x.sniffer;
        for chunk in &x.pending {
            if dec.decode(chunk, &mut |d| sniffer.feed(d)).is_err() {
                break;
            }
        }
        x.sniff = self.req.method == Method::Post && !x.req_done;
    }

    fn connect_failed(&mut self, now: Instant) {
        let Some(b) = self.x.backend else { return };
        // the driver drops the attempt (or the broken connection)
        self.release_upstream(false);
        let h = self.router.connect_failed(b, now);
        self.health(b, h);
        if self.x.replay.is_some() {
            return self.replay_failed(now);
        }
        if self.x.retried {
            // failover: the request was written to a pooled connection that ended
            // without an answer. The pool hands out only connections that look open,
            // so the backend may have read it and died executing it: never sent
            // again, to this backend or another (a suite test saw exactly this).
            if self.x.looked_up.is_some() && self.lose_request(Cause::ConnectionLost, now) {
                return;
            }
            // The fresh connection of a retry failed too: the request may or may not
            // have been seen; say so.
            self.gateway_error(502, "Bad gateway: backend connection failed", now);
            return;
        }
        self.x.tried.push(b);
        if let Some((rec, state)) = self.x.looked_up.take() {
            // failover: the request never left the router
            return self.fail_over(rec, state, Cause::ConnectFailed, now);
        }
        if self.x.kind == Kind::Pinned {
            if let Some(key) = self.x.session.clone().filter(|_| self.records()) {
                self.end_session(key, EndCause::BackendDown);
            }
            self.sniff_pending();
            self.not_found(now);
        } else if self.x.tried.len() < self.cfg.connect_attempts {
            self.pick_and_connect(now);
        } else {
            self.sniff_pending();
            self.answer(503, ErrorCode::Server, "No backend available", now);
        }
    }

    /// `--failover reinitialize`: the session's backend is lost and the request in
    /// flight never left the router. Initialize the session again on a healthy backend
    /// by replaying the client's `initialize` and `notifications/initialized`, then
    /// forward the request there under the new upstream id (see [`crate::failover`]).
    /// When that is not allowed or not possible, the session ends as without failover:
    /// "When a client receives HTTP 404 in response to a request containing an
    /// Mcp-Session-Id, it MUST start a new session by sending a new InitializeRequest
    /// without a session ID attached."
    fn fail_over(&mut self, rec: Record, state: Option<Arc<Failover>>, cause: Cause, now: Instant) {
        let Some(key) = self.x.session.clone() else {
            return self.not_found(now);
        };
        let Some(settings) = self.cfg.failover else {
            return self.not_found(now);
        };
        if settings.remote && rec.era == Era::Streamable {
            // The lookup left the `initialize` body in the store (off the request
            // path): read the whole state now, then decide on it.
            self.x.loading = Some((rec, cause));
            self.store(StoreOp::LoadFailover(key), Waiting::LoadFailover);
            return;
        }
        self.fail_over_with(rec, state, cause, now);
    }

    /// The store's answer to [`StoreOp::LoadFailover`]: fail over with that state.
    fn on_failover_loaded(&mut self, reply: StoreReply, now: Instant) {
        let Some((rec, cause)) = self.x.loading.take() else {
            return;
        };
        match reply {
            StoreReply::FailoverState(state) => {
                // a state without a body (it could not be kept) is not eligible
                let state = state.filter(|f| !f.params.is_empty());
                self.fail_over_with(rec, state, cause, now);
            }
            _ => {
                self.sniff_pending();
                self.answer(503, ErrorCode::Server, "Session store unavailable", now);
            }
        }
    }

    /// [`Conn::fail_over`] with the session's whole failover state at hand.
    fn fail_over_with(
        &mut self,
        rec: Record,
        state: Option<Arc<Failover>>,
        cause: Cause,
        now: Instant,
    ) {
        let Some(key) = self.x.session.clone() else {
            return self.not_found(now);
        };
        let Some(settings) = self.cfg.failover else {
            return self.not_found(now);
        };
        let end = |this: &mut Self, outcome: Outcome, to: Option<BackendId>| {
            this.event(Event::Failover {
                session: key.clone(),
                from: rec.backend,
                to,
                cause,
                outcome,
                took: Duration::ZERO,
            });
            this.end_session(key.clone(), EndCause::BackendDown);
            this.sniff_pending();
            this.not_found(now);
        };
        let Some(state) = state.filter(|_| rec.era == Era::Streamable) else {
            return end(self, Outcome::Ineligible, None);
        };
        if state
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < settings.window)
        {
            // "One failover per session per --failover-window": its replacement died too
            return end(self, Outcome::Window, None);
        }
        if !self.x.tried.contains(&rec.backend) {
            self.x.tried.push(rec.backend);
        }
        // like a new session's backend: one that serves the session eras (`;eras=`)
        let picked = self
            .router
            .pick_in_era(PickKind::NewSession, None, false, &self.x.tried, now);
        let Some(to) = picked else {
            return end(self, Outcome::Failed, None);
        };
        self.x.replay = Some(Box::new(Replay {
            step: ReplayStep::Initialize,
            from: rec.backend,
            to,
            cause,
            started: now,
            record: rec,
            state,
            minted: None,
        }));
        self.x.upstream_sid = None;
        // the request's body waits in `pending` (bounded by `max_inspect_body`)
        self.connect(to, true, now);
    }

    /// The replay's connection is ready: write its next request.
    fn replay_send(&mut self, b: BackendId, now: Instant) {
        let Some(backend) = self.router.backend(b) else {
            return self.replay_failed(now);
        };
        let Some(r) = self.x.replay.as_deref() else {
            return;
        };
        let host = match self.req.known(Name::Host) {
            Some(h) if !h.is_empty() && !self.cfg.rewrite_host => h,
            _ => backend.authority.as_bytes(),
        };
        let (body, sid, version): (&[u8], _, _) = match r.step {
            ReplayStep::Initialize => (&r.state.params[..], None, None),
            _ => (
                crate::failover::INITIALIZED,
                r.minted.as_ref().map(SessionKey::as_bytes),
                self.req.known(Name::McpProtocolVersion),
            ),
        };
        let head = ReplayHead {
            path_prefix: backend.base_path.as_bytes(),
            target: self.req.path(),
            host,
            session_id: sid,
            protocol_version: version,
            authorization: self.req.header("authorization"),
        };
        crate::failover::write_replay(&mut self.scratch, &head, body);
        let bytes = self.scratch.split().freeze();
        self.out.push_back(Output::ToUpstream(bytes));
        self.x.resp_seen = false;
        self.x.resp_head = false;
        self.timers
            .set(Timer::Response, now + self.cfg.timeouts.response);
    }

    /// Read the replay's response: its head, then its body to the end.
    fn replay_pump(&mut self, bufs: &mut Buffers, now: Instant) -> bool {
        if bufs.upstream.is_empty() {
            if self.x.upstream_eof {
                return self.replay_eof(now);
            }
            return false;
        }
        if !self.x.resp_head {
            loop {
                match parse_response(
                    &mut bufs.upstream,
                    &self.cfg.http,
                    Method::Post,
                    &mut self.resp,
                ) {
                    Ok(false) => return false,
                    Ok(true) if self.resp.is_interim() && self.resp.status != 101 => continue,
                    Ok(true) => break,
                    Err(_) => {
                        self.replay_failed(now);
                        return false;
                    }
                }
            }
            self.x.resp_head = true;
            let ok = (200..300).contains(&self.resp.status);
            let Some(step) = self.x.replay.as_ref().map(|r| r.step) else {
                return false;
            };
            if !ok {
                self.replay_failed(now);
                return false;
            }
            if step == ReplayStep::Initialize {
                let minted = self
                    .resp
                    .known(Name::McpSessionId)
                    .and_then(|v| SessionKey::new(v, self.cfg.max_session_id_len));
                match (minted, self.x.replay.as_mut()) {
                    (Some(m), Some(r)) => r.minted = Some(m),
                    _ => {
                        self.replay_failed(now);
                        return false;
                    }
                }
            }
            self.x.resp_body = BodyDecoder::new(self.resp.body, MAX_CHUNK_LINE);
        }
        // the body (the InitializeResult, or nothing) is read and dropped
        let n = match self.x.resp_body.decode(&bufs.upstream, &mut |_| {}) {
            Ok(n) => n,
            Err(_) => {
                self.replay_failed(now);
                return false;
            }
        };
        let _ = bufs.upstream.split_to(n);
        if self.x.resp_body.is_done() {
            self.replay_step_done(now);
            return true;
        }
        n > 0
    }

    fn replay_eof(&mut self, now: Instant) -> bool {
        if self.x.resp_head && self.x.resp_body.finish().is_ok() {
            self.replay_step_done(now);
        } else {
            self.replay_failed(now);
        }
        true
    }

    /// One request of the replay was answered: the next, or the store.
    fn replay_step_done(&mut self, now: Instant) {
        self.release_upstream(false);
        self.release_heads_resp();
        self.x.upstream_eof = false;
        self.x.resp_head = false;
        self.x.resp_seen = false;
        let Some(r) = self.x.replay.as_mut() else {
            return;
        };
        match r.step {
            ReplayStep::Initialize => {
                r.step = ReplayStep::Initialized;
                let to = r.to;
                self.connect(to, true, now);
            }
            ReplayStep::Initialized => {
                r.step = ReplayStep::Store;
                let (Some(key), Some(minted)) = (self.x.session.clone(), r.minted.clone()) else {
                    return self.replay_failed(now);
                };
                let state = Failover {
                    params: r.state.params.clone(),
                    upstream: Some(minted),
                    at: Some(now),
                    generation: r.state.generation.wrapping_add(1),
                };
                let record = Record {
                    backend: r.to,
                    ..r.record
                };
                let op = StoreOp::FailOver {
                    key,
                    record,
                    state: Arc::new(state),
                    from: r.state.generation,
                };
                self.x.route = Route::Forward;
                self.store(op, Waiting::FailOver);
            }
            ReplayStep::Store => {}
        }
    }

    /// The store's answer to a failover: forward the request to the new backend, or
    /// (another connection failed the session over first) look the session up again
    /// and follow it.
    fn on_failed_over(&mut self, reply: StoreReply, now: Instant) {
        let Some(r) = self.x.replay.take() else {
            return;
        };
        let Some(key) = self.x.session.clone() else {
            return;
        };
        match reply {
            StoreReply::FailedOver(true) => {
                self.router.session_ended(r.from);
                self.router.session_started(r.to);
                self.event(Event::Failover {
                    session: key,
                    from: r.from,
                    to: Some(r.to),
                    cause: r.cause,
                    outcome: Outcome::Done,
                    took: now.saturating_duration_since(r.started),
                });
                self.x.upstream_sid = r.minted;
                if self.req.method == Method::Get {
                    self.timers.set(Timer::Touch, now + self.touch_period());
                }
                self.connect(r.to, true, now);
            }
            StoreReply::FailedOver(false) => {
                // The session it replayed into on `to` is left to that backend's own
                // expiry (docs/scaling.md, "Failover").
                self.event(Event::Failover {
                    session: key.clone(),
                    from: r.from,
                    to: None,
                    cause: r.cause,
                    outcome: Outcome::Joined,
                    took: now.saturating_duration_since(r.started),
                });
                self.x.route = Route::Lookup;
                self.store(StoreOp::Get(key), Waiting::Lookup);
            }
            _ => {
                self.sniff_pending();
                self.answer(503, ErrorCode::Server, "Session store unavailable", now);
            }
        }
    }

    /// The replay failed (connect, status, no session id, framing, timeout): the
    /// session ends with `404`, as it would have without failover.
    fn replay_failed(&mut self, now: Instant) {
        self.release_upstream(false);
        let Some(r) = self.x.replay.take() else {
            return;
        };
        self.x.resp_head = false;
        if let Some(key) = self.x.session.clone() {
            self.event(Event::Failover {
                session: key.clone(),
                from: r.from,
                to: None,
                cause: r.cause,
                outcome: Outcome::Failed,
                took: Duration::ZERO,
            });
            self.end_session(key, EndCause::BackendDown);
        }
        self.sniff_pending();
        self.not_found(now);
    }

    /// `--failover`: a request of a session that was written to its backend, which
    /// went away without answering. It may have been executed, so it is never sent
    /// again: the client gets JSON-RPC `-32603` "backend lost; retry" (HTTP 200, as a
    /// server answers a request that failed: an HTTP error status would reach an SDK
    /// client as a transport error, not as this request's error), and the session's
    /// next request fails over. `false`: not a case for it (failover off, not a
    /// session's POST, or the response had started).
    fn lose_request(&mut self, cause: Cause, now: Instant) -> bool {
        if self.cfg.failover.is_none()
            || self.x.kind != Kind::Pinned
            || self.req.method != Method::Post
            || self.x.client_started
            || !self.records()
        {
            return false;
        }
        let _ = now;
        if let (Some(key), Some(b)) = (self.x.session.clone(), self.x.backend) {
            self.event(Event::Failover {
                session: key,
                from: b,
                to: None,
                cause,
                outcome: Outcome::Lost,
                took: Duration::ZERO,
            });
        }
        self.respond_local(200, ErrorCode::Internal, crate::failover::LOST, true);
        true
    }

    fn release_heads_resp(&mut self) {
        self.resp.release();
    }

    fn send_request_head(&mut self, b: BackendId, reused: bool) {
        let Some(backend) = self.router.backend(b) else {
            return;
        };
        // The client's Host goes through unchanged unless told otherwise, so that the
        // backend's own DNS-rebinding protection sees it (X-Forwarded-Host has it too).
        let host = match self.req.known(Name::Host) {
            Some(h) if !h.is_empty() && !self.cfg.rewrite_host => h,
            _ => backend.authority.as_bytes(),
        };
        // A sealed id goes upstream as the backend's own id: in the header, and in a
        // legacy POST's query.
        let x = &mut self.x;
        let upstream = match &x.upstream_sid {
            // after a failover: the new backend's id for the session
            Some(up) => Some(up.as_bytes()),
            None => x.sealed.and(x.session.as_ref()).map(SessionKey::as_bytes),
        };
        let session_id = upstream.filter(|_| self.req.known(Name::McpSessionId).is_some());
        if let (Some(up), true, Some(_)) = (
            upstream,
            x.target_out.is_empty(),
            self.req.query().filter(|_| self.req.method == Method::Post),
        ) {
            if !replace_query_session_id(self.req.target(), up, &mut x.target_out) {
                x.target_out.clear();
            }
        }
        let fwd = Forward {
            host,
            path_prefix: backend.base_path.as_bytes(),
            client_ip: self.peer,
            proto: self.proto,
            // The stateless era: the router did not route by a session id. 2026-07-28,
            // Backward Compatibility: a server that supports only this revision "SHOULD"
            // treat "An `Mcp-Session-Id` header on a request: ignore it, and do not mint
            // or echo session IDs." and "A `Last-Event-ID` header: ignore it; streams are
            // not resumable." Neither is looked up, so neither is forwarded.
            drop_session_fields: self
                .req
                .known(Name::McpProtocolVersion)
                .is_some_and(is_stateless_version),
            session_id,
            target: (!x.target_out.is_empty()).then_some(&x.target_out[..]),
        };
        write_forwarded_head(&mut self.scratch, &self.req, &fwd, self.peer_text.as_ref());
        let head = self.scratch.split().freeze();
        self.x.retained.clear();
        self.x.retained_len = 0;
        self.x.retaining = reused;
        self.retain(&head);
        self.out.push_back(Output::ToUpstream(head));
    }

    fn retain(&mut self, chunk: &Bytes) {
        let x = &mut self.x;
        if !x.retaining {
            return;
        }
        if x.retained_len + chunk.len() > MAX_RETAINED {
            x.retained.clear();
            x.retained_len = 0;
            x.retaining = false;
        } else {
            x.retained_len += chunk.len();
            x.retained.push(chunk.clone());
        }
    }

    // ----- response side -----------------------------------------------------------

    fn pump_response(&mut self, bufs: &mut Buffers, now: Instant) -> bool {
        if !matches!(self.x.upstream, Upstream::Ready { .. }) || !matches!(self.x.hold, Hold::No) {
            return false;
        }
        if self.x.replay.is_some() {
            return self.replay_pump(bufs, now);
        }
        if bufs.upstream.is_empty() {
            if self.x.upstream_eof {
                return self.on_upstream_eof(now);
            }
            return false;
        }
        if !self.x.resp_seen {
            self.x.resp_seen = true;
            // A request is resent only when no response byte came back: let go of the
            // copy now (it pins the scratch and read buffers it was split from).
            self.x.retained.clear();
            self.x.retained_len = 0;
            self.x.retaining = false;
        }
        if !self.x.resp_head {
            loop {
                match parse_response(
                    &mut bufs.upstream,
                    &self.cfg.http,
                    self.req.method,
                    &mut self.resp,
                ) {
                    Ok(false) => return false,
                    Err(_) => {
                        self.release_upstream(false);
                        self.gateway_error(502, "Bad gateway: invalid response from backend", now);
                        return false;
                    }
                    Ok(true) if self.resp.status == 101 => {
                        // The router never forwards Upgrade, so a 101 is a broken backend.
                        self.release_upstream(false);
                        self.gateway_error(502, "Bad gateway: unexpected protocol switch", now);
                        return false;
                    }
                    Ok(true) if self.resp.is_interim() => {
                        // 100 Continue was already answered by the router itself.
                        if self.resp.status != 100 && self.req.version == Version::Http11 {
                            write_response_head(
                                &mut self.scratch,
                                &self.resp,
                                BodyKind::Empty,
                                Version::Http11,
                                true,
                            );
                            let h = self.scratch.split().freeze();
                            self.send_to_client(h);
                        }
                    }
                    Ok(true) => {
                        self.on_response_head(now);
                        break;
                    }
                }
            }
            if !matches!(self.x.hold, Hold::No) {
                return true;
            }
        }
        self.pump_response_body(bufs, now)
    }

    fn on_response_head(&mut self, now: Instant) {
        let x = &mut self.x;
        x.resp_head = true;
        self.timers.stop(Timer::Response);
        let status = self.resp.status;
        if let (Some(backend), Some(t)) = (x.backend, x.sent_at) {
            let latency = now.saturating_duration_since(t);
            self.event(Event::Response {
                backend,
                status,
                latency,
            });
        }
        let records = self.records();
        let x = &mut self.x;
        let ok = (200..300).contains(&status);
        x.streaming = self.resp.is_event_stream();
        let b = x.upstream_backend();
        match x.kind {
            Kind::Pinned => {
                // Cloned only when the session ends: relaying costs no copy.
                if let Some(key) = x.session.as_ref().filter(|_| records) {
                    if status == 404 {
                        // The backend no longer holds the session: drop the record
                        // and pass the 404 on, so the client initializes again.
                        let key = key.clone();
                        self.end_session(key, EndCause::BackendNotFound);
                    } else if self.req.method == Method::Delete && ok {
                        let key = key.clone();
                        self.end_session(key, EndCause::Deleted);
                    } else if self.x.streaming && !self.timers.is_set(Timer::Touch) {
                        self.timers.set(Timer::Touch, now + self.touch_period());
                    }
                }
                if let Some(s) = self.x.sealed {
                    if !self.reseal_response_sid(s, now) {
                        return;
                    }
                } else if let (Some(up), Some(key)) = (&self.x.upstream_sid, &self.x.session) {
                    // after a failover the backend's id stays the router's: a response
                    // that repeats it carries the client's id back
                    if self.resp.known(Name::McpSessionId) == Some(up.as_bytes()) {
                        self.x.sid_out.clear();
                        self.x.sid_out.extend_from_slice(key.as_bytes());
                    }
                }
            }
            Kind::NewSession | Kind::Stateless if self.req.method == Method::Post => {
                // "A server using the Streamable HTTP transport MAY assign a session ID
                // at initialization time, by including it in an Mcp-Session-Id header
                // on the HTTP response containing the InitializeResult."
                let minted = self
                    .resp
                    .known(Name::McpSessionId)
                    .and_then(|v| SessionKey::new(v, self.cfg.max_session_id_len));
                match (ok, minted) {
                    (true, Some(key)) if self.cfg.session_ids == SessionIds::Sealed => {
                        let client = self.x.client.unwrap_or_else(|| self.client_id());
                        let issued = self.issue_time(now);
                        if !self.seal_sid(key.as_bytes(), Era::Streamable, issued, client) {
                            self.unsealable();
                            return;
                        }
                        if records {
                            self.record_new_session(key, b, Era::Streamable, Hold::Head);
                        } else {
                            self.event(Event::SessionStarted {
                                session: key,
                                backend: b,
                                era: Era::Streamable,
                            });
                        }
                    }
                    (true, Some(key)) => {
                        self.record_new_session(key, b, Era::Streamable, Hold::Head)
                    }
                    (true, None)
                        if self.cfg.session_ids == SessionIds::Sealed
                            && self.resp.known(Name::McpSessionId).is_some() =>
                    {
                        // an id the router cannot read back (too long, not visible
                        // ASCII) is not handed out unsealed either
                        self.unsealable();
                        return;
                    }
                    _ => {}
                }
            }
            Kind::NewSession => {
                if ok && self.x.streaming {
                    self.x.watch = Some(SseParser::new(MAX_WATCH_EVENT));
                    self.x.seal_watch = self.cfg.session_ids == SessionIds::Sealed;
                }
            }
            Kind::Stateless => {}
        }
        let x = &mut self.x;
        let client_11 = self.req.version == Version::Http11;
        let body = self.resp.body;
        x.dechunk = body == BodyKind::Chunked && !client_11;
        if x.seal_watch && body != BodyKind::Close {
            // The endpoint event will be rewritten (its length changes): the decoded
            // body is re-chunked for an HTTP/1.1 client, delimited by close otherwise.
            x.reframe = client_11;
            x.dechunk = !client_11;
        }
        let client_framing = if x.reframe {
            BodyKind::Chunked
        } else if x.dechunk {
            BodyKind::Close
        } else {
            body
        };
        x.client_keep_alive = self.req.keep_alive
            && !self.shutting_down
            && client_framing != BodyKind::Close
            && x.req_done;
        x.resp_body = BodyDecoder::new(body, MAX_CHUNK_LINE);
        if !x.streaming {
            self.timers
                .set(Timer::BodyIdle, now + self.cfg.timeouts.body_idle);
        } else {
            self.timers.stop(Timer::BodyIdle);
        }
        if matches!(self.x.hold, Hold::No) {
            self.send_response_head();
        }
    }

    fn send_response_head(&mut self) {
        let framing = if self.x.reframe {
            BodyKind::Chunked
        } else if self.x.dechunk {
            BodyKind::Close
        } else {
            self.resp.body
        };
        let sid = &self.x.sid_out;
        write_response_head_sid(
            &mut self.scratch,
            &self.resp,
            framing,
            self.req.version,
            self.x.client_keep_alive,
            (!sid.is_empty()).then_some(&sid[..]),
        );
        let h = self.scratch.split().freeze();
        self.send_to_client(h);
    }

    fn pump_response_body(&mut self, bufs: &mut Buffers, now: Instant) -> bool {
        let x = &mut self.x;
        if x.resp_body.is_done() {
            self.complete_response(bufs, now);
            return true;
        }
        if bufs.upstream.is_empty() {
            return false;
        }
        let dechunk = x.dechunk || x.reframe;
        let seal_watch = x.seal_watch;
        let scratch = &mut self.scratch;
        let watch = &mut x.watch;
        let mut endpoint: Option<Option<SessionKey>> = None;
        let mut endpoint_uri: Vec<u8> = Vec::new();
        let max_sid = self.cfg.max_session_id_len;
        let n = match x.resp_body.decode(&bufs.upstream, &mut |d| {
            if dechunk {
                scratch.extend_from_slice(d);
            }
            if let Some(p) = watch.as_mut() {
                p.feed(d, &mut |ev| {
                    if endpoint.is_none() && ev.event == Some(b"endpoint") {
                        endpoint = Some(
                            endpoint_session_id(ev.data).and_then(|s| SessionKey::new(&s, max_sid)),
                        );
                        if seal_watch {
                            endpoint_uri.extend_from_slice(ev.data.trim_ascii());
                        }
                    }
                });
            }
        }) {
            Ok(n) => n,
            Err(_) => {
                self.event(Event::Rejected {
                    status: 502,
                    reason: "invalid response body framing",
                });
                self.abort(now);
                return false;
            }
        };
        let raw = bufs.upstream.split_to(n).freeze();
        let data = if dechunk {
            self.scratch.split().freeze()
        } else {
            raw
        };
        let x = &mut self.x;
        if !x.streaming {
            self.timers
                .set(Timer::BodyIdle, now + self.cfg.timeouts.body_idle);
        }
        if x.watch.is_some() {
            x.watched += n;
            if endpoint.is_some() || x.watched > MAX_WATCH_BYTES {
                x.watch = None;
            }
        }
        if x.seal_watch {
            self.sealed_watch(data, endpoint, &endpoint_uri, now);
            if self.x.resp_body.is_done() && matches!(self.x.hold, Hold::No) {
                self.complete_response(bufs, now);
            }
            return true;
        }
        let data = self.frame(data);
        match endpoint {
            Some(Some(key)) => {
                let b = self.x.upstream_backend();
                self.record_new_session(key, b, Era::LegacySse, Hold::Body(data));
            }
            Some(None) => {
                self.event(Event::Rejected {
                    status: 0,
                    reason: "legacy endpoint event without a valid session id",
                });
                if !data.is_empty() {
                    self.send_to_client(data);
                }
            }
            None => {
                if !data.is_empty() {
                    self.send_to_client(data);
                }
            }
        }
        if self.x.resp_body.is_done() && matches!(self.x.hold, Hold::No) {
            self.complete_response(bufs, now);
        }
        true
    }

    /// Decoded body bytes as the client gets them: one chunk each when re-chunking.
    fn frame(&mut self, data: Bytes) -> Bytes {
        if !self.x.reframe || data.is_empty() {
            return data;
        }
        let s = &mut self.scratch;
        crate::http::write_chunk(s, &data);
        s.split().freeze()
    }

    /// Sealed mode, a legacy stream's start: hold the decoded bytes until its
    /// `endpoint` event is seen, then replace the event's session id by a sealed one
    /// and let everything go. "The server's first SSE event is `event: endpoint` whose
    /// `data:` is a URI for posting messages" and "Every client message is a `POST` to
    /// that URI" (shared/mcp-transport.md, 2024-11-05): the client posts to the URI it
    /// is given, so it posts the sealed id, and the router opens it.
    fn sealed_watch(
        &mut self,
        data: Bytes,
        endpoint: Option<Option<SessionKey>>,
        uri: &[u8],
        now: Instant,
    ) {
        self.x.watch_buf.extend_from_slice(&data);
        let key = match endpoint {
            None if self.x.watch.is_some() => return,
            None => None,
            Some(None) => {
                self.event(Event::Rejected {
                    status: 0,
                    reason: "legacy endpoint event without a valid session id",
                });
                None
            }
            Some(Some(key)) => Some(key),
        };
        self.x.seal_watch = false;
        let mut held = std::mem::take(&mut self.x.watch_buf);
        let Some(key) = key else {
            // nothing to seal: the bytes go as they came
            let data = self.frame(Bytes::from(held));
            if !data.is_empty() {
                self.send_to_client(data);
            }
            return;
        };
        let b = self.x.upstream_backend();
        let client = self.x.client.unwrap_or_else(|| self.client_id());
        let issued = self.issue_time(now);
        let at = held.windows(uri.len().max(1)).position(|w| w == uri);
        let mut new_uri = Vec::new();
        let ok = self.seal_sid(key.as_bytes(), Era::LegacySse, issued, client)
            && replace_query_session_id(uri, &self.x.sid_out, &mut new_uri);
        self.x.sid_out.clear();
        let (true, Some(at)) = (ok, at) else {
            // The id cannot be hidden (too long to seal, or the event's data is not
            // one line): end the stream rather than reveal the backend's id.
            self.event(Event::Rejected {
                status: 502,
                reason: "legacy endpoint event cannot be sealed",
            });
            self.abort(now);
            return;
        };
        held.splice(at..at + uri.len(), new_uri);
        let data = self.frame(Bytes::from(held));
        if self.records() {
            self.record_new_session(key, b, Era::LegacySse, Hold::Body(data));
        } else {
            self.event(Event::SessionStarted {
                session: key,
                backend: b,
                era: Era::LegacySse,
            });
            self.send_to_client(data);
        }
    }

    /// Sealed mode, a session's response: a backend's `Mcp-Session-Id` never reaches
    /// the client as it is. The upstream id the request named goes back as the
    /// client's own token; another id is sealed afresh. `false`: answered `502`.
    fn reseal_response_sid(&mut self, s: SealedSession, now: Instant) -> bool {
        let Some(v) = self.resp.known(Name::McpSessionId) else {
            return true;
        };
        let same = self.x.session.as_ref().is_some_and(|k| k.as_bytes() == v)
            || self
                .x
                .upstream_sid
                .as_ref()
                .is_some_and(|k| k.as_bytes() == v);
        if let (true, Some(token)) = (same, self.req.known(Name::McpSessionId)) {
            self.x.sid_out.clear();
            self.x.sid_out.extend_from_slice(token);
            return true;
        }
        let v = v.to_vec();
        let issued = if same { s.issued } else { self.issue_time(now) };
        if valid_session_id(&v, usize::MAX) && self.seal_sid(&v, s.era, issued, s.client) {
            return true;
        }
        self.unsealable();
        false
    }

    /// A backend's session id cannot be sealed: `502`, the id is not handed out.
    fn unsealable(&mut self) {
        self.release_upstream(false);
        self.x.resp_head = false;
        self.x.session = None;
        self.respond_local(
            502,
            ErrorCode::Server,
            "Bad gateway: the backend's session id is too long to seal",
            true,
        );
    }

    /// Record a session a backend just minted. What would reveal the id to the client
    /// is held until the store confirms: the record must exist before the client can
    /// use the id, or its next request may reach another router replica first.
    fn record_new_session(&mut self, key: SessionKey, b: BackendId, era: Era, hold: Hold) {
        self.x.session = Some(key.clone());
        self.x.hold = hold;
        // the opener's digest, for the quotas and for binding
        let client = self.x.client.unwrap_or_else(|| self.client_id());
        let rec = Record {
            backend: b,
            era,
            client,
        };
        let x = &mut self.x;
        // failover: the whole `initialize` body, within `max_params`, of a Streamable
        // HTTP session (a legacy session is its stream: nothing to replay into)
        let op = if x.capture && !x.capture_over && x.req_done && era == Era::Streamable {
            x.capture = false;
            let state = Failover {
                params: Bytes::from(std::mem::take(&mut x.captured)),
                upstream: None,
                at: None,
                generation: 0,
            };
            StoreOp::InsertFailover(key.clone(), rec, Arc::new(state))
        } else {
            StoreOp::Insert(key.clone(), rec)
        };
        self.store(op, Waiting::Insert(key, b, era));
    }

    fn on_insert(
        &mut self,
        reply: StoreReply,
        key: SessionKey,
        b: BackendId,
        era: Era,
        now: Instant,
    ) {
        match reply {
            StoreReply::Inserted(true) => {
                self.router.session_started(b);
                if era == Era::LegacySse {
                    self.x.legacy = Some(key.clone());
                }
                self.event(Event::SessionStarted {
                    session: key,
                    backend: b,
                    era,
                });
            }
            StoreReply::Inserted(false) => {
                self.event(Event::DuplicateSession {
                    session: key,
                    backend: b,
                });
            }
            _ => {
                // Without a record the session could not be routed: fail the opener so
                // the client retries, rather than hand out a session that cannot work.
                match std::mem::take(&mut self.x.hold) {
                    Hold::Head => {
                        self.release_upstream(false);
                        self.x.session = None;
                        self.x.resp_head = false;
                        self.respond_local(
                            503,
                            ErrorCode::Server,
                            "Session store unavailable",
                            true,
                        );
                    }
                    _ => {
                        self.event(Event::Rejected {
                            status: 503,
                            reason: "session store unavailable for a legacy session",
                        });
                        self.abort_quiet();
                    }
                }
                return;
            }
        }
        match std::mem::take(&mut self.x.hold) {
            Hold::Head => self.send_response_head(),
            Hold::Body(data) => {
                if !data.is_empty() {
                    self.send_to_client(data);
                }
            }
            Hold::No => {}
        }
        // an open legacy stream keeps its session's record alive
        if era == Era::LegacySse {
            self.timers.set(Timer::Touch, now + self.touch_period());
        }
    }

    fn complete_response(&mut self, bufs: &mut Buffers, now: Instant) {
        let reuse = self.resp.keep_alive
            && self.resp.body != BodyKind::Close
            && self.x.req_done
            && bufs.upstream.is_empty()
            && !self.x.upstream_eof;
        self.release_upstream(reuse);
        if !self.x.watch_buf.is_empty() {
            // a sealed legacy stream that ended before its endpoint event
            let held = std::mem::take(&mut self.x.watch_buf);
            let data = self.frame(Bytes::from(held));
            self.send_to_client(data);
        }
        if self.x.reframe {
            self.send_to_client(Bytes::from_static(b"0\r\n\r\n"));
        }
        self.end_legacy_stream();
        if self.x.client_keep_alive && !self.shutting_down {
            self.phase = Phase::Idle;
            self.timers
                .set(Timer::KeepAlive, now + self.cfg.timeouts.client_idle);
            self.x.reset();
            self.timers.stop_exchange();
            self.release_heads();
        } else {
            self.close();
        }
    }

    fn on_upstream_eof(&mut self, now: Instant) -> bool {
        if !matches!(self.x.hold, Hold::No) {
            return false;
        }
        if self.x.replay.is_some() {
            return self.replay_eof(now);
        }
        if !self.x.resp_seen {
            let stale = matches!(self.x.upstream, Upstream::Ready { reused: true, .. });
            if stale && self.x.retaining && !self.x.retried {
                // A pooled connection the backend had already closed: nothing of the
                // request was processed, so send it again once on a fresh connection.
                let b = self.x.upstream_backend();
                self.release_upstream(false);
                self.x.retried = true;
                self.x.upstream_eof = false;
                self.connect(b, true, now);
                return true;
            }
            self.release_upstream(false);
            if !self.lose_request(Cause::ConnectionLost, now) {
                self.gateway_error(502, "Bad gateway: backend closed the connection", now);
            }
            return true;
        }
        if !self.x.resp_head {
            self.release_upstream(false);
            if !self.lose_request(Cause::ConnectionLost, now) {
                self.gateway_error(502, "Bad gateway: truncated response head", now);
            }
            return true;
        }
        match self.x.resp_body.finish() {
            Ok(()) => {
                let mut empty = Buffers::default();
                self.complete_response(&mut empty, now);
            }
            Err(_) => {
                self.event(Event::Rejected {
                    status: 502,
                    reason: "backend closed mid-response",
                });
                self.abort(now);
            }
        }
        true
    }

    // ----- helpers -----------------------------------------------------------------

    /// The exchange is over: drop the parsed heads' references into the driver's read
    /// buffers so the buffers can be reused in place (no allocation on the next read).
    fn release_heads(&mut self) {
        self.req.release();
        self.resp.release();
    }

    fn touch_period(&self) -> Duration {
        (self.cfg.session_ttl / 2).max(Duration::from_secs(1))
    }

    fn store(&mut self, op: StoreOp, w: Waiting) {
        self.waiting.push_back(w);
        self.out.push_back(Output::Store(op));
    }

    /// Remove a session's record; its end is reported when the store confirms.
    fn end_session(&mut self, key: SessionKey, cause: EndCause) {
        self.store(StoreOp::Delete(key.clone()), Waiting::Delete(key, cause));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn health(&mut self, backend: BackendId, health: Health) {
        if health != Health::Same {
            self.event(Event::BackendHealth { backend, health });
        }
    }

    fn send_to_client(&mut self, b: Bytes) {
        self.x.client_started = true;
        self.out.push_back(Output::ToClient(b));
    }

    fn release_upstream(&mut self, reuse: bool) {
        self.x.in_flight = None;
        if self.x.upstream != Upstream::None {
            self.x.upstream = Upstream::None;
            self.out.push_back(Output::ReleaseUpstream { reuse });
        }
        self.timers.stop(Timer::Response);
    }

    fn end_legacy_stream(&mut self) {
        if let Some(key) = self.x.legacy.take() {
            self.end_session(key, EndCause::StreamClosed);
        }
    }

    /// A gateway error before any response byte reached the client: answer it; after:
    /// abort.
    fn gateway_error(&mut self, status: u16, msg: &'static str, now: Instant) {
        if self.x.client_started {
            self.event(Event::Rejected {
                status,
                reason: msg,
            });
            self.abort(now);
        } else {
            self.respond_local(status, ErrorCode::Server, msg, true);
        }
    }

    /// Answer the request in flight with a JSON-RPC error body.
    fn respond_local(&mut self, status: u16, code: ErrorCode, msg: &'static str, _drained: bool) {
        self.respond_local_retry(status, code, msg, 0)
    }

    /// [`Conn::respond_local`] with a `Retry-After` of `retry` seconds (0: none).
    fn respond_local_retry(&mut self, status: u16, code: ErrorCode, msg: &'static str, retry: u32) {
        self.event(Event::Rejected {
            status,
            reason: msg,
        });
        self.release_upstream(false);
        let id = if self.x.sniffer.id_settled() {
            self.x.sniffer.id()
        } else {
            None
        };
        // Keep the connection only if the request body was read to its end.
        let keep = self.req.keep_alive && self.x.req_done && !self.shutting_down;
        let answer = LocalAnswer {
            status,
            code,
            msg,
            retry,
        };
        let requested = self.req.header("mcp-protocol-version");
        let bytes = Self::error_response(
            &mut self.scratch,
            &answer,
            id,
            requested,
            self.req.version,
            keep,
        );
        self.send_to_client(bytes);
        self.end_legacy_stream();
        self.x.route = Route::Done;
        if keep {
            self.phase = Phase::Idle;
            self.x.reset();
            self.timers.stop_exchange();
            self.release_heads();
        } else {
            self.close();
        }
    }

    /// A complete response of the router's own with a JSON-RPC error body.
    fn error_response(
        scratch: &mut BytesMut,
        a: &LocalAnswer,
        id: Option<&[u8]>,
        requested: Option<&[u8]>,
        version: Version,
        keep_alive: bool,
    ) -> Bytes {
        let LocalAnswer {
            status,
            code,
            msg,
            retry,
        } = *a;
        let mut body = BytesMut::with_capacity(96);
        if code == ErrorCode::UnsupportedVersion {
            // The request's version (absent: 2025-03-26, as the spec allows). The fleet
            // has no backend of its era, so it supports the other era's versions.
            let requested = requested.map_or(Cow::Borrowed("2025-03-26"), |v| {
                String::from_utf8_lossy(v.trim_ascii())
            });
            let supported: &[&str] = if is_stateless_version(requested.as_bytes()) {
                &LEGACY_VERSIONS
            } else {
                &MODERN_VERSIONS
            };
            write_unsupported_version_body(&mut body, id, msg, supported, &requested);
        } else {
            write_error_body(&mut body, id, code, msg);
        }
        // only on a refusal: the allocation is off the hot path
        let digits = retry.to_string();
        let extra: &[(&str, &[u8])] = if retry > 0 {
            &[("Retry-After", digits.as_bytes())]
        } else if status == 405 {
            // RFC 9110 section 15.5.6: "The origin server MUST generate an Allow header
            // field in a 405 response containing a list of the target resource's
            // currently supported methods."
            &[("Allow", b"POST")]
        } else {
            &[]
        };
        write_simple_response(
            scratch,
            status,
            "application/json",
            extra,
            &body,
            version,
            keep_alive,
        );
        scratch.split().freeze()
    }

    /// Refuse a request whose head could not be parsed, and close.
    fn reject_head(&mut self, status: u16, reason: &'static str) {
        self.event(Event::Rejected { status, reason });
        let answer = LocalAnswer {
            status,
            code: ErrorCode::InvalidRequest,
            msg: reason,
            retry: 0,
        };
        let bytes = Self::error_response(
            &mut self.scratch,
            &answer,
            None,
            None,
            Version::Http11,
            false,
        );
        self.out.push_back(Output::ToClient(bytes));
        self.close();
    }

    /// Drop the exchange: close upstream and client, end a legacy stream's session.
    fn abort(&mut self, _now: Instant) {
        if self.phase != Phase::Closed {
            self.event(Event::Aborted);
        }
        self.release_upstream(false);
        self.end_legacy_stream();
        self.close();
    }

    fn abort_quiet(&mut self) {
        self.release_upstream(false);
        self.close();
    }

    fn close(&mut self) {
        if self.phase != Phase::Closed {
            if self.x.upstream != Upstream::None {
                self.release_upstream(false);
            }
            self.phase = Phase::Closed;
            self.out.push_back(Output::CloseClient);
        }
    }
}

/// The whole answer to a client connection past `max_connections`: `503` with
/// `Retry-After` and a JSON-RPC error body, then close.
pub fn over_capacity_response(retry_after: Duration) -> Bytes {
    let mut out = BytesMut::new();
    let answer = LocalAnswer {
        status: 503,
        code: ErrorCode::Server,
        msg: "Too many connections: try again later",
        retry: retry_after.as_secs().max(1) as u32,
    };
    Conn::error_response(&mut out, &answer, None, None, Version::Http11, false)
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}
