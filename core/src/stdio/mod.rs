//! Serving a stdio MCP server over HTTP: the session protocol of the stdio bridge,
//! sans-IO.
//!
//! An MCP server that speaks stdio reads newline-delimited JSON-RPC on its stdin and
//! writes it on its stdout. [`Bridge`] turns such children into Streamable HTTP
//! (`/mcp`, 2025-03-26 to 2025-11-25) and legacy HTTP+SSE (`/sse` plus a message
//! endpoint, 2024-11-05) sessions. It owns the session table, mints session ids from
//! random bytes the caller passes, correlates messages, chooses the stream each child
//! message goes to and frames SSE events. It performs no IO and reads no clock: the
//! frontend spawns the processes and moves the bytes.
//!
//! # Driving a [`Bridge`]
//!
//! - Each HTTP request: [`Bridge::handle_request`] returns the [`ExchangeId`] every
//!   later [`BridgeOutput`] for that request names. The exchange ends with one
//!   [`BridgeOutput::Respond`], or with [`BridgeOutput::StartStream`], any number of
//!   [`BridgeOutput::Event`]s and finally [`BridgeOutput::EndStream`]. If the client goes away
//!   first: [`Bridge::handle_exchange_closed`].
//! - Each line a child writes on stdout: [`Bridge::handle_child_line`]; its exit (or a
//!   failed spawn): [`Bridge::handle_child_exit`].
//! - A stream whose client does not keep up (the frontend's bounded buffer for it is
//!   full): [`Bridge::handle_stream_overflow`]; the session ends (see below).
//! - Time: sleep until [`Bridge::poll_timeout`], then [`Bridge::handle_timeout`]; a
//!   spurious call is harmless.
//! - After every call, drain [`Bridge::poll_output`] until `None` and carry the outputs
//!   out in order ([`BridgeOutput::Spawn`] before the [`BridgeOutput::ToChild`] that follows it).
//! - At shutdown: [`Bridge::shutdown`] ends every session and kills every child.
//!
//! # Rules
//!
//! - **Session ids**: 32 random bytes from the caller, hex-encoded (64 visible ASCII
//!   characters). "The session ID SHOULD be globally unique and cryptographically
//!   secure" and "MUST only contain visible ASCII characters (ranging from 0x21 to
//!   0x7E)" (MCP 2025-03-26, Streamable HTTP, Session Management).
//! - **Children**: [`ChildMode::PerSession`] (default) spawns one child per session at
//!   `initialize` (legacy: when `GET /sse` opens the session) and kills it when the
//!   session ends. [`ChildMode::Shared`] runs one child for every session; it is spawned
//!   by the first `initialize` and killed when its last session ends.
//! - **Ids**: every client request is written to the child with a fresh router id (a
//!   positive integer unique in the process) and its `_meta.progressToken` is replaced
//!   by that same id; both are restored on the way back. So requests of different
//!   sessions, and two in-flight requests with the same id in one session, never mix.
//!   `notifications/cancelled` is rewritten the same way. A server-to-client request
//!   keeps its id; the bridge records which session it went to and forwards only that
//!   session's answer to it.
//! - **Shared initialize**: the child is initialized once, by the first session; the
//!   `initialize` of every later session is answered from the cached result (with the
//!   later client's id), and its `notifications/initialized` is not forwarded.
//! - **Streams**: a response goes to the exchange of the POST that carried its request
//!   (JSON or SSE, per the client's `Accept`). A notification with a progress token
//!   goes to the stream of the request that carried the token. Any other child message
//!   goes to an open POST stream of the session, else to its GET stream, else into a
//!   queue of at most [`BridgeConfig::max_queue`] messages that is flushed when a GET
//!   stream opens; past the bound the **oldest** message is dropped (a dropped server
//!   request is answered to the child with a JSON-RPC error so it does not wait
//!   forever). In shared mode, a server request goes to the session with the most
//!   recently sent pending request, and a notification without a progress token to
//!   every session of the child.
//! - **End of a session**: DELETE; idle expiry (no request for
//!   [`BridgeConfig::idle_ttl`] and no open stream); unattached expiry (no open stream,
//!   POST stream or JSON request, and no request in flight, for
//!   [`BridgeConfig::unattached_timeout`] after the last request, stream or response:
//!   a client that initializes and walks away frees its child after a minute, not after
//!   the idle TTL; every session of a child-capped bridge could otherwise be held by
//!   clients that never come back); the GET stream lost and not
//!   reopened within [`BridgeConfig::stream_grace`] (a legacy session ends as soon as its
//!   stream closes: it cannot be resumed); a slow client; the child exiting or writing
//!   something that is not JSON-RPC; shutdown. Pending requests then get a JSON-RPC
//!   error naming the cause, open streams get a `notifications/message` (level `error`)
//!   naming it and are ended, and later requests of the session get 404.
//! - Every request in flight is bounded by [`BridgeConfig::request_timeout`] (the client
//!   gets an error, the child a `notifications/cancelled`), and by
//!   [`BridgeConfig::max_inflight`] per session (past it: 429).

use crate::http::Method;
use crate::mcp::{valid_session_id, ErrorCode, SessionKey};
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The script given to `sh -c`: `exec <command>` when the command is one simple command
/// (words and quotes only: no `;&|<>(){}!` backquote, newline, leading assignment or
/// reserved word), else the command as it is.
///
/// `dash` (`/bin/sh` on Debian) forks for the last command of `-c` instead of replacing
/// itself; with `exec` the server is the router's direct child, so the parent-death
/// signal (the runtime sets one) reaches it, and no idle `sh` stays around per
/// session. A command that is anything more keeps its `sh` parent, and its processes
/// are grandchildren.
pub fn shell_command(command: &str) -> String {
    const RESERVED: &[&str] = &[
        "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for",
        "in", "exec", "!", "{", "}",
    ];
    let t = command.trim();
    let first = t.split_ascii_whitespace().next().unwrap_or("");
    let simple = !t.is_empty()
        && !t.contains(|c| ";&|<>(){}!`\n\r".contains(c))
        && !first.contains('=')
        && !RESERVED.contains(&first);
    if simple {
        format!("exec {t}")
    } else {
        command.to_string()
    }
}

pub mod http;
#[cfg(test)]
mod tests;

/// One child for each session, or one for all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChildMode {
    /// Each session gets its own child (no state shared between clients).
    #[default]
    PerSession,
    /// One child serves every session; ids are rewritten so that they never mix.
    Shared,
}

/// Settings of a [`Bridge`].
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// Per-session or shared children.
    pub mode: ChildMode,
    /// Most live children; an `initialize` past it gets 503 with a JSON-RPC error.
    pub max_children: usize,
    /// Most live sessions (bounds memory in shared mode); past it: 503.
    pub max_sessions: usize,
    /// A session with no request and no open stream for this long ends.
    pub idle_ttl: Duration,
    /// A session with no open stream and no request in flight ends this long after its
    /// last activity (so clients that `initialize` and walk away do not hold children
    /// until `idle_ttl`).
    pub unattached_timeout: Duration,
    /// A session whose GET stream is lost ends unless one reopens within this.
    pub stream_grace: Duration,
    /// Longest wait for the child's response to one request.
    pub request_timeout: Duration,
    /// Child messages kept for a session that has no stream open (drop-oldest).
    pub max_queue: usize,
    /// Most requests in flight per session; past it: 429.
    pub max_inflight: usize,
    /// Longest session id accepted from clients.
    pub max_session_id_len: usize,
    /// Streamable HTTP endpoint path.
    pub mcp_path: String,
    /// Legacy SSE endpoint path.
    pub sse_path: String,
    /// Legacy message endpoint path (announced in the `endpoint` event).
    pub message_path: String,
    /// Live sessions one client may hold (0: no cap); past it: 429. The client is
    /// [`Request::client`], named as `--client-identity` says (as for the proxy).
    pub client_max_sessions: u64,
    /// New sessions one client may open per second (token bucket; 0: no limit); past
    /// it: 429 with `Retry-After`.
    pub client_session_rate: u32,
    /// Size of a client's bucket.
    pub client_session_burst: u32,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            mode: ChildMode::PerSession,
            max_children: 64,
            max_sessions: 10_000,
            idle_ttl: Duration::from_secs(2 * 3600),
            unattached_timeout: Duration::from_secs(60),
            stream_grace: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            max_queue: 64,
            max_inflight: 256,
            max_session_id_len: crate::mcp::MAX_SESSION_ID_LEN,
            client_max_sessions: 0,
            client_session_rate: 0,
            client_session_burst: 1,
            mcp_path: "/mcp".into(),
            sse_path: "/sse".into(),
            message_path: "/message".into(),
        }
    }
}

/// One HTTP request/response exchange (or SSE stream), named by the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(pub u64);

/// One child process, named by the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId(pub u64);

/// The parts of an HTTP request the bridge needs (the frontend parsed the head and read
/// the whole body).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: &'a [u8],
    /// Query (after `?`), if any.
    pub query: Option<&'a [u8]>,
    /// `Mcp-Session-Id` header.
    pub session_id: Option<&'a [u8]>,
    /// `Accept` header.
    pub accept: Option<&'a [u8]>,
    /// The whole body.
    pub body: &'a [u8],
    /// Who sends it ([`crate::ClientId::of`] of the request head), for the per-client
    /// quotas.
    pub client: crate::ClientId,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent DELETE.
    Delete,
    /// No request and no open stream for the idle TTL.
    IdleExpiry,
    /// No open stream and no request in flight for the unattached timeout.
    Unattached,
    /// The GET stream was lost and not reopened within the grace period.
    StreamLost,
    /// The legacy SSE stream closed.
    LegacyStreamClosed,
    /// A stream of the session could not keep up.
    SlowClient,
    /// The child exited (the text says how).
    ChildExited(String),
    /// The child wrote something that is not JSON-RPC.
    ChildGarbage,
    /// The router is shutting down.
    Shutdown,
}

impl EndReason {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::Delete => "delete",
            EndReason::IdleExpiry => "idle_expiry",
            EndReason::Unattached => "unattached",
            EndReason::StreamLost => "stream_lost",
            EndReason::LegacyStreamClosed => "stream_closed",
            EndReason::SlowClient => "slow_client",
            EndReason::ChildExited(_) => "child_exited",
            EndReason::ChildGarbage => "child_garbage",
            EndReason::Shutdown => "shutdown",
        }
    }
    fn message(&self) -> String {
        match self {
            EndReason::Delete => "session deleted".into(),
            EndReason::IdleExpiry => "session expired (idle)".into(),
            EndReason::Unattached => {
                "session expired (no open stream and no request in flight)".into()
            }
            EndReason::StreamLost => "session ended: its stream was lost".into(),
            EndReason::LegacyStreamClosed => "session ended: its SSE stream closed".into(),
            EndReason::SlowClient => "session ended: the client did not keep up".into(),
            EndReason::ChildExited(how) => format!("MCP server process exited ({how})"),
            EndReason::ChildGarbage => "MCP server wrote invalid JSON-RPC to stdout".into(),
            EndReason::Shutdown => "router shutting down".into(),
        }
    }
}

/// Things worth logging or counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BridgeEvent {
    /// A session started on a child.
    SessionStarted {
        /// Session id.
        session: SessionKey,
        /// Its child.
        child: ChildId,
        /// Legacy HTTP+SSE (else Streamable HTTP).
        legacy: bool,
    },
    /// A session ended.
    SessionEnded {
        /// Session id.
        session: SessionKey,
        /// Why.
        reason: EndReason,
    },
    /// A child wrote a line that is not JSON-RPC (the start of it).
    ChildGarbage {
        /// The child.
        child: ChildId,
        /// The first bytes of the line, lossily decoded.
        sample: String,
    },
    /// A message was dropped (no session or stream for it, queue full, ...).
    Dropped {
        /// The child it came from or went to.
        child: ChildId,
        /// What and why.
        what: &'static str,
    },
    /// A request was refused with this status.
    Rejected {
        /// HTTP status.
        status: u16,
        /// Why.
        reason: &'static str,
    },
}

/// What the frontend must do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum BridgeOutput {
    /// Answer the exchange with a complete response; the exchange is over. `body` is
    /// JSON (`Content-Type: application/json`) when non-empty.
    Respond {
        /// The exchange.
        exchange: ExchangeId,
        /// HTTP status.
        status: u16,
        /// Extra header fields.
        headers: Vec<(&'static str, String)>,
        /// Body.
        body: Bytes,
    },
    /// Answer the exchange with `200`, `Content-Type: text/event-stream`, these header
    /// fields, and a body of SSE events that follow.
    StartStream {
        /// The exchange.
        exchange: ExchangeId,
        /// Extra header fields.
        headers: Vec<(&'static str, String)>,
    },
    /// One SSE event, framed, for a started stream.
    Event {
        /// The exchange.
        exchange: ExchangeId,
        /// The event's bytes.
        data: Bytes,
    },
    /// End the stream (the body of the exchange is complete).
    EndStream {
        /// The exchange.
        exchange: ExchangeId,
    },
    /// Start a child process. `session` names the session for logs (`None`: shared).
    Spawn {
        /// The child.
        child: ChildId,
        /// Its session (per-session mode).
        session: Option<SessionKey>,
    },
    /// Write this line (newline included) to the child's stdin.
    ToChild {
        /// The child.
        child: ChildId,
        /// One JSON-RPC message and `\n`.
        line: Bytes,
    },
    /// Kill the child's process group and reap it.
    Kill {
        /// The child.
        child: ChildId,
    },
    /// For logs and metrics.
    Log(BridgeEvent),
}

#[derive(Debug)]
struct Session {
    child: ChildId,
    legacy: bool,
    idle_deadline: Instant,
    get_stream: Option<ExchangeId>,
    grace_deadline: Option<Instant>,
    /// Open POST SSE streams, oldest first.
    post_streams: Vec<ExchangeId>,
    /// Child messages waiting for a stream.
    queue: VecDeque<Value>,
    next_event: u64,
    inflight: usize,
    /// Entries of `Bridge::exchanges` that belong to this session (JSON requests
    /// waiting, POST streams, the GET stream).
    open_exchanges: usize,
    /// Set while the session is unattached (no open exchange, no request in flight):
    /// its last activity plus [`BridgeConfig::unattached_timeout`].
    unattached_deadline: Option<Instant>,
    /// The client that opened it.
    client: crate::ClientId,
}

impl Session {
    /// An open stream, a request waiting for its answer or a request in flight.
    fn attached(&self) -> bool {
        self.open_exchanges > 0 || self.inflight > 0
    }
}

#[derive(Debug)]
struct Inflight {
    session: SessionKey,
    child: ChildId,
    exchange: Option<ExchangeId>,
    orig_id: Value,
    orig_token: Option<Value>,
    deadline: Instant,
    /// The shared child's own `initialize`.
    init: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExKind {
    /// Waits for one JSON response.
    Json,
    /// A POST answered with an SSE stream.
    PostStream,
    /// The session's GET stream (or legacy SSE stream).
    GetStream,
}

#[derive(Debug)]
struct BridgeExchange {
    session: SessionKey,
    kind: ExKind,
}

#[derive(Debug)]
enum InitState {
    None,
    Pending,
    Done(Value),
}

#[derive(Debug)]
struct Child {
    sessions: Vec<SessionKey>,
    /// Server-to-client requests in flight: id (as JSON text) -> session.
    server_requests: HashMap<String, SessionKey>,
    init: InitState,
    /// Shared mode: sessions whose `initialize` waits for the child's.
    init_waiters: Vec<(SessionKey, ExchangeId, Value, bool)>,
    initialized_sent: bool,
}

/// The stdio bridge: session table, children and message correlation. See the module
/// docs for the driving contract and the rules.
#[derive(Debug)]
pub struct Bridge {
    cfg: BridgeConfig,
    /// Live sessions per client.
    per_client: HashMap<crate::ClientId, u32>,
    /// Session-creation token buckets per client, on a millisecond clock from `epoch`.
    buckets: HashMap<crate::ClientId, crate::limits::Bucket>,
    epoch: Option<Instant>,
    sessions: HashMap<SessionKey, Session>,
    children: HashMap<ChildId, Child>,
    exchanges: HashMap<ExchangeId, BridgeExchange>,
    inflight: HashMap<u64, Inflight>,
    shared_child: Option<ChildId>,
    next_router_id: u64,
    next_exchange: u64,
    next_child: u64,
    out: VecDeque<BridgeOutput>,
    shutting_down: bool,
    /// Sessions with activity since the last public call: their unattached deadline is
    /// recomputed (with that call's `now`) before it returns.
    dirty: Vec<SessionKey>,
}

/// The most server-to-client requests remembered per child.
const MAX_SERVER_REQUESTS: usize = 1024;

/// JSON-RPC error codes the bridge answers with.
const SERVER_ERROR: ErrorCode = ErrorCode::Server;
const SESSION_NOT_FOUND: ErrorCode = ErrorCode::SessionNotFound;
const PARSE_ERROR: ErrorCode = ErrorCode::Parse;
const INVALID_REQUEST: ErrorCode = ErrorCode::InvalidRequest;

fn error_body(id: &Value, code: ErrorCode, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code.code(), "message": message}})
}

fn to_bytes(v: &Value) -> Bytes {
    // Serializing a `Value` cannot fail (its map keys are strings).
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn line_of(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]])
        .map(char::from)
        .collect()
}

/// What a JSON-RPC message is.
#[derive(Debug, PartialEq, Eq)]
enum ExchangeKind {
    Request,
    Notification,
    Response,
}

/// Classify a JSON-RPC 2.0 message object; `None` when it is not one.
fn classify(v: &Value) -> Option<ExchangeKind> {
    let o = v.as_object()?;
    if o.get("jsonrpc")? != "2.0" {
        return None;
    }
    let id_ok = |id: &Value| id.is_string() || id.is_number();
    match (o.get("method"), o.get("id")) {
        (Some(m), Some(id)) if m.is_string() && id_ok(id) => Some(ExchangeKind::Request),
        (Some(m), None) if m.is_string() => Some(ExchangeKind::Notification),
        (None, Some(id))
            if (id_ok(id) || id.is_null())
                && (o.contains_key("result") ^ o.contains_key("error")) =>
        {
            Some(ExchangeKind::Response)
        }
        _ => None,
    }
}

fn method_of(v: &Value) -> &str {
    v.get("method").and_then(Value::as_str).unwrap_or("")
}

fn id_key(id: &Value) -> String {
    id.to_string()
}

fn accepts_sse(accept: Option<&[u8]>) -> bool {
    accept.is_some_and(|a| {
        a.windows(17)
            .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
    })
}

fn path_is(path: &[u8], want: &str) -> bool {
    path == want.as_bytes()
        || (path.len() == want.len() + 1
            && path.starts_with(want.as_bytes())
            && path.ends_with(b"/"))
}

impl Bridge {
    /// A bridge with no session.
    pub fn new(cfg: BridgeConfig) -> Bridge {
        Bridge {
            cfg,
            per_client: HashMap::new(),
            buckets: HashMap::new(),
            epoch: None,
            sessions: HashMap::new(),
            children: HashMap::new(),
            exchanges: HashMap::new(),
            inflight: HashMap::new(),
            shared_child: None,
            next_router_id: 1,
            next_exchange: 1,
            next_child: 1,
            out: VecDeque::new(),
            shutting_down: false,
            dirty: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Live children.
    pub fn child_count(&self) -> usize {
        self.children.len()
    }

    /// Panics if a session's exchange count or unattached deadline disagrees with the
    /// exchange table and its requests in flight (for tests and the fuzz target).
    #[cfg(any(test, feature = "sim"))]
    pub fn assert_consistent(&self) {
        assert!(self.dirty.is_empty(), "dirty sessions after a public call");
        for (sid, s) in &self.sessions {
            let n = self
                .exchanges
                .values()
                .filter(|e| &e.session == sid)
                .count();
            assert_eq!(s.open_exchanges, n, "exchange count of {sid}");
            assert_eq!(
                s.unattached_deadline.is_none(),
                s.attached(),
                "unattached deadline of {sid}"
            );
        }
        // every live session counts once for its client, and nothing else does
        let mut counted: HashMap<crate::ClientId, u32> = HashMap::new();
        for s in self.sessions.values() {
            *counted.entry(s.client).or_default() += 1;
        }
        assert_eq!(counted, self.per_client, "per-client session counts");
    }

    /// The next output to carry out, in order.
    pub fn poll_output(&mut self) -> Option<BridgeOutput> {
        self.out.pop_front()
    }

    /// The earliest deadline (idle expiry, unattached expiry, stream grace, request
    /// timeout), if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let s = self
            .sessions
            .values()
            .flat_map(|s| {
                [
                    Some(s.idle_deadline),
                    s.grace_deadline,
                    s.unattached_deadline,
                ]
            })
            .flatten();
        let r = self.inflight.values().map(|i| i.deadline);
        s.chain(r).min()
    }

    fn push(&mut self, o: BridgeOutput) {
        self.out.push_back(o);
    }

    /// Record an exchange of session `sid`.
    fn add_exchange(&mut self, x: ExchangeId, sid: &SessionKey, kind: ExKind) {
        if let Some(s) = self.sessions.get_mut(sid) {
            s.open_exchanges += 1;
        }
        let old = self.exchanges.insert(
            x,
            BridgeExchange {
                session: sid.clone(),
                kind,
            },
        );
        if let Some(old) = old {
            if let Some(s) = self.sessions.get_mut(&old.session) {
                s.open_exchanges = s.open_exchanges.saturating_sub(1);
            }
        }
        self.dirty.push(sid.clone());
    }

    /// Forget an exchange (it is complete or its client went away).
    fn remove_exchange(&mut self, x: ExchangeId) -> Option<BridgeExchange> {
        let e = self.exchanges.remove(&x)?;
        if let Some(s) = self.sessions.get_mut(&e.session) {
            s.open_exchanges = s.open_exchanges.saturating_sub(1);
            self.dirty.push(e.session.clone());
        }
        Some(e)
    }

    /// Recompute the unattached deadline of every session with activity since the last
    /// call: `now + unattached_timeout` when it has no open exchange and no request in
    /// flight, none otherwise. Called at the end of every public method that has a
    /// `now`, so the deadline is "last activity + timeout" without a clock read here.
    fn settle(&mut self, now: Instant) {
        let t = self.cfg.unattached_timeout;
        for sid in std::mem::take(&mut self.dirty) {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.unattached_deadline = (!s.attached()).then(|| now + t);
            }
        }
    }

    fn new_exchange(&mut self) -> ExchangeId {
        let x = ExchangeId(self.next_exchange);
        self.next_exchange += 1;
        x
    }

    fn respond_json(&mut self, x: ExchangeId, status: u16, sid: Option<&SessionKey>, body: &Value) {
        let mut headers = Vec::new();
        if let Some(sid) = sid {
            headers.push(("Mcp-Session-Id", sid.to_string()));
        }
        self.push(BridgeOutput::Respond {
            exchange: x,
            status,
            headers,
            body: to_bytes(body),
        });
    }

    fn reject(
        &mut self,
        x: ExchangeId,
        status: u16,
        id: &Value,
        code: ErrorCode,
        reason: &'static str,
    ) -> ExchangeId {
        self.push(BridgeOutput::Log(BridgeEvent::Rejected { status, reason }));
        self.respond_json(x, status, None, &error_body(id, code, reason));
        x
    }

    fn respond_empty(&mut self, x: ExchangeId, status: u16, headers: Vec<(&'static str, String)>) {
        self.push(BridgeOutput::Respond {
            exchange: x,
            status,
            headers,
            body: Bytes::new(),
        });
    }

    /// Feed one complete HTTP request. `random` is fresh cryptographically random
    /// bytes, used when the request starts a session. Returns the exchange every output
    /// for this request names.
    pub fn handle_request(
        &mut self,
        req: &Request<'_>,
        random: &[u8; 32],
        now: Instant,
    ) -> ExchangeId {
        let x = self.request(req, random, now);
        self.settle(now);
        x
    }

    fn request(&mut self, req: &Request<'_>, random: &[u8; 32], now: Instant) -> ExchangeId {
        let x = self.new_exchange();
        if self.shutting_down {
            return self.reject(x, 503, &Value::Null, SERVER_ERROR, "shutting down");
        }
        if path_is(req.path, &self.cfg.mcp_path) {
            match req.method {
                Method::Post => self.streamable_post(x, req, random, now),
                Method::Get => self.streamable_get(x, req, now),
                Method::Delete => self.streamable_delete(x, req, now),
                _ => {
                    self.push(BridgeOutput::Log(BridgeEvent::Rejected {
                        status: 405,
                        reason: "method not allowed",
                    }));
                    self.push(BridgeOutput::Respond {
                        exchange: x,
                        status: 405,
                        headers: vec![("Allow", "GET, POST, DELETE".into())],
                        body: to_bytes(&error_body(
                            &Value::Null,
                            SERVER_ERROR,
                            "Method not allowed",
                        )),
                    });
                }
            }
        } else if path_is(req.path, &self.cfg.sse_path) && req.method == Method::Get {
            self.legacy_open(x, random, req.client, now);
        } else if path_is(req.path, &self.cfg.message_path) && req.method == Method::Post {
            self.legacy_post(x, req, now);
        } else if path_is(req.path, &self.cfg.sse_path) || path_is(req.path, &self.cfg.message_path)
        {
            self.reject(x, 405, &Value::Null, SERVER_ERROR, "method not allowed");
        } else {
            self.reject(x, 404, &Value::Null, INVALID_REQUEST, "not found");
        }
        x
    }

    /// Parse and classify a POSTed body; on failure answers 400 and returns `None`.
    fn parse_body(&mut self, x: ExchangeId, body: &[u8]) -> Option<(Value, ExchangeKind)> {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                self.reject(x, 400, &Value::Null, PARSE_ERROR, "Parse error");
                return None;
            }
        };
        if v.is_array() {
            self.reject(
                x,
                400,
                &Value::Null,
                INVALID_REQUEST,
                "JSON-RPC batches are not supported",
            );
            return None;
        }
        match classify(&v) {
            Some(k) => Some((v, k)),
            None => {
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                let id = if id.is_string() || id.is_number() {
                    id
                } else {
                    Value::Null
                };
                self.reject(x, 400, &id, INVALID_REQUEST, "Invalid JSON-RPC message");
                None
            }
        }
    }

    /// Look up the session a request names. Answers 400 / 404 itself and returns `None`
    /// when there is none.
    ///
    /// mcp-transport.md: "A request without a session id, other than `initialize`, to a
    /// server that requires one SHOULD get `400`. A request with a terminated or unknown
    /// session id MUST get `404`" (with JSON-RPC -32001 echoing the request id).
    ///
    /// "Servers that require a session ID SHOULD respond to requests without an
    /// `Mcp-Session-Id` header (other than initialization) with HTTP 400 Bad Request."
    /// "The server MAY terminate the session at any time, after which it MUST respond to
    /// requests containing that session ID with HTTP 404 Not Found." (MCP 2025-03-26,
    /// Streamable HTTP, Session Management.)
    fn session_of(&mut self, x: ExchangeId, raw: Option<&[u8]>, id: &Value) -> Option<SessionKey> {
        let Some(raw) = raw else {
            self.reject(
                x,
                400,
                id,
                SERVER_ERROR,
                "Bad Request: Mcp-Session-Id header is required",
            );
            return None;
        };
        if !valid_session_id(raw, self.cfg.max_session_id_len) {
            self.reject(
                x,
                400,
                id,
                INVALID_REQUEST,
                "Bad Request: invalid session id",
            );
            return None;
        }
        let key = SessionKey::new(raw, self.cfg.max_session_id_len)?;
        if !self.sessions.contains_key(&key) {
            self.reject(x, 404, id, SESSION_NOT_FOUND, "Session not found");
            return None;
        }
        Some(key)
    }

    /// A Streamable POST. mcp-transport.md: "For a request, the server answers
    /// `application/json` or opens `text/event-stream` and sends related messages
    /// followed by the response. For a notification or a response: `202 Accepted`, no
    /// body." SSE is chosen when the client's `Accept` lists `text/event-stream`.
    fn streamable_post(
        &mut self,
        x: ExchangeId,
        req: &Request<'_>,
        random: &[u8; 32],
        now: Instant,
    ) {
        let Some((msg, kind)) = self.parse_body(x, req.body) else {
            return;
        };
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let sse = accepts_sse(req.accept);
        if kind == ExchangeKind::Request && method_of(&msg) == "initialize" {
            if req.session_id.is_some() {
                self.reject(
                    x,
                    400,
                    &id,
                    INVALID_REQUEST,
                    "initialize must not carry a session id",
                );
                return;
            }
            let Some(sid) = self.open_session(x, &id, random, false, req.client, now) else {
                return;
            };
            self.initialize(x, sid, msg, sse, now);
            return;
        }
        let Some(sid) = self.session_of(x, req.session_id, &id) else {
            return;
        };
        self.touch(&sid, now);
        match kind {
            ExchangeKind::Request => self.client_request(
                x,
                sid,
                msg,
                if sse {
                    ExKind::PostStream
                } else {
                    ExKind::Json
                },
                now,
            ),
            ExchangeKind::Notification => {
                self.client_notification(&sid, msg);
                self.respond_empty(x, 202, Vec::new());
            }
            ExchangeKind::Response => {
                self.client_response(&sid, msg);
                self.respond_empty(x, 202, Vec::new());
            }
        }
    }

    /// "The server MUST either return `Content-Type: text/event-stream` in response to
    /// this HTTP GET, or else return HTTP 405 Method Not Allowed" (MCP 2025-03-26,
    /// Streamable HTTP, Listening for Messages from the Server). One stream per session:
    /// a second one gets 409 while the first is open.
    fn streamable_get(&mut self, x: ExchangeId, req: &Request<'_>, now: Instant) {
        let Some(sid) = self.session_of(x, req.session_id, &Value::Null) else {
            return;
        };
        self.touch(&sid, now);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.legacy {
            self.reject(
                x,
                400,
                &Value::Null,
                INVALID_REQUEST,
                "legacy session: use its SSE stream",
            );
            return;
        }
        if s.get_stream.is_some() {
            self.reject(
                x,
                409,
                &Value::Null,
                SERVER_ERROR,
                "Conflict: only one SSE stream is allowed per session",
            );
            return;
        }
        s.get_stream = Some(x);
        s.grace_deadline = None;
        let queued: Vec<Value> = s.queue.drain(..).collect();
        self.add_exchange(x, &sid, ExKind::GetStream);
        self.push(BridgeOutput::StartStream {
            exchange: x,
            headers: vec![("Mcp-Session-Id", sid.to_string())],
        });
        for m in queued {
            self.event(&sid, x, &m);
        }
    }

    /// mcp-transport.md: "`DELETE` with the session header ends the session". Its child
    /// is killed (per-session) or left to the other sessions (shared).
    fn streamable_delete(&mut self, x: ExchangeId, req: &Request<'_>, now: Instant) {
        let Some(sid) = self.session_of(x, req.session_id, &Value::Null) else {
            return;
        };
        self.end_session(&sid, EndReason::Delete, now);
        self.respond_empty(x, 200, Vec::new());
    }

    /// `GET /sse`: a new legacy session, its child, and the `endpoint` event. "When a
    /// client connects, the server MUST send an `endpoint` event containing a URI for
    /// the client to use for sending messages." (MCP 2024-11-05, HTTP with SSE.)
    fn legacy_open(
        &mut self,
        x: ExchangeId,
        random: &[u8; 32],
        client: crate::ClientId,
        now: Instant,
    ) {
        let Some(sid) = self.open_session(x, &Value::Null, random, true, client, now) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.get_stream = Some(x);
        }
        self.add_exchange(x, &sid, ExKind::GetStream);
        self.push(BridgeOutput::StartStream {
            exchange: x,
            headers: Vec::new(),
        });
        let uri = format!("{}?sessionId={}", self.cfg.message_path, sid);
        let mut b = BytesMut::new();
        crate::mcp::write_event(&mut b, None, Some(b"endpoint"), uri.as_bytes());
        self.push(BridgeOutput::Event {
            exchange: x,
            data: b.freeze(),
        });
    }

    /// A legacy message POST: "the server MUST" deliver responses over the SSE stream;
    /// the POST itself is acknowledged with 202.
    fn legacy_post(&mut self, x: ExchangeId, req: &Request<'_>, now: Instant) {
        let raw = req.query.and_then(crate::mcp::query_session_id);
        let Some(sid) = self.session_of(x, raw.as_deref(), &Value::Null) else {
            return;
        };
        if !self.sessions.get(&sid).is_some_and(|s| s.legacy) {
            self.reject(
                x,
                400,
                &Value::Null,
                INVALID_REQUEST,
                "not a legacy session",
            );
            return;
        }
        let Some((msg, kind)) = self.parse_body(x, req.body) else {
            return;
        };
        self.touch(&sid, now);
        match kind {
            ExchangeKind::Request if method_of(&msg) == "initialize" => {
                // answered on the session's stream (no exchange of its own)
                self.initialize_legacy(sid, msg, now);
            }
            ExchangeKind::Request => {
                if self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.inflight >= self.cfg.max_inflight)
                {
                    self.reject(
                        x,
                        429,
                        &msg["id"].clone(),
                        SERVER_ERROR,
                        "too many requests in flight",
                    );
                    return;
                }
                self.forward_request(None, &sid, msg, false, now);
            }
            ExchangeKind::Notification => self.client_notification(&sid, msg),
            ExchangeKind::Response => self.client_response(&sid, msg),
        }
        self.respond_empty(x, 202, Vec::new());
    }

    /// Mint a session (and, per-session or for the first shared session, its child).
    /// Answers 503 itself past a cap.
    /// The per-client quotas for one more session of `client`: `Err(None)` when it
    /// holds its cap of live sessions, `Err(Some(ms))` when its bucket is empty (a token
    /// comes back in `ms`). Counts the session when admitted. Children are what these
    /// quotas protect here: each session of a per-session bridge is a process.
    fn admit_client(&mut self, client: crate::ClientId, now: Instant) -> Result<(), Option<u32>> {
        let held = self.per_client.get(&client).copied().unwrap_or(0);
        if self.cfg.client_max_sessions > 0 && u64::from(held) >= self.cfg.client_max_sessions {
            return Err(None);
        }
        let (rate, burst) = (self.cfg.client_session_rate, self.cfg.client_session_burst);
        if rate > 0 {
            let epoch = *self.epoch.get_or_insert(now);
            let ms = now.saturating_duration_since(epoch).as_millis() as u64;
            if self.buckets.len() >= 65_536 {
                self.buckets.retain(|_, b| !b.is_full_at(rate, burst, ms));
            }
            let b = self
                .buckets
                .entry(client)
                .or_insert_with(|| crate::limits::Bucket::full(burst, ms));
            b.take(rate, burst, ms).map_err(Some)?;
        }
        *self.per_client.entry(client).or_default() += 1;
        Ok(())
    }

    fn open_session(
        &mut self,
        x: ExchangeId,
        id: &Value,
        random: &[u8; 32],
        legacy: bool,
        client: crate::ClientId,
        now: Instant,
    ) -> Option<SessionKey> {
        if self.sessions.len() >= self.cfg.max_sessions {
            self.reject(x, 503, id, SERVER_ERROR, "too many sessions");
            return None;
        }
        let spawn = match self.cfg.mode {
            ChildMode::PerSession => true,
            ChildMode::Shared => self.shared_child.is_none(),
        };
        if spawn && self.children.len() >= self.cfg.max_children {
            self.reject(
                x,
                503,
                id,
                SERVER_ERROR,
                "Service Unavailable: child process limit reached",
            );
            return None;
        }
        // mcp-transport.md: the session id's "value is visible ASCII only (0x21 to
        // 0x7E) and should be cryptographically random": 32 random bytes from the
        // caller, as 64 hex digits (always a valid id).
        let sid = SessionKey::new(hex(random).as_bytes(), usize::MAX)?;
        if self.sessions.contains_key(&sid) {
            self.reject(x, 503, id, SERVER_ERROR, "session id collision");
            return None;
        }
        if let Err(retry) = self.admit_client(client, now) {
            self.push(BridgeOutput::Log(BridgeEvent::Rejected {
                status: 429,
                reason: "client quota",
            }));
            let (msg, retry) = match retry {
                None => ("Too many sessions for this client: end one first", 1),
                Some(ms) => (
                    "Sessions opened too fast: slow down",
                    ms.div_ceil(1000).max(1),
                ),
            };
            self.push(BridgeOutput::Respond {
                exchange: x,
                status: 429,
                headers: vec![("Retry-After", retry.to_string())],
                body: to_bytes(&error_body(id, SERVER_ERROR, msg)),
            });
            return None;
        }
        let child = if spawn {
            let c = ChildId(self.next_child);
            self.next_child += 1;
            self.children.insert(
                c,
                Child {
                    sessions: Vec::new(),
                    server_requests: HashMap::new(),
                    init: InitState::None,
                    init_waiters: Vec::new(),
                    initialized_sent: false,
                },
            );
            let per = self.cfg.mode == ChildMode::PerSession;
            if !per {
                self.shared_child = Some(c);
            }
            self.push(BridgeOutput::Spawn {
                child: c,
                session: per.then(|| sid.clone()),
            });
            c
        } else {
            self.shared_child?
        };
        if let Some(c) = self.children.get_mut(&child) {
            c.sessions.push(sid.clone());
        }
        self.sessions.insert(
            sid.clone(),
            Session {
                child,
                legacy,
                idle_deadline: now + self.cfg.idle_ttl,
                get_stream: None,
                grace_deadline: None,
                post_streams: Vec::new(),
                queue: VecDeque::new(),
                next_event: 1,
                inflight: 0,
                open_exchanges: 0,
                unattached_deadline: None,
                client,
            },
        );
        self.dirty.push(sid.clone());
        self.push(BridgeOutput::Log(BridgeEvent::SessionStarted {
            session: sid.clone(),
            child,
            legacy,
        }));
        Some(sid)
    }

    fn touch(&mut self, sid: &SessionKey, now: Instant) {
        if let Some(s) = self.sessions.get_mut(sid) {
            s.idle_deadline = now + self.cfg.idle_ttl;
            self.dirty.push(sid.clone());
        }
    }

    /// A Streamable `initialize` of a new session `sid`.
    fn initialize(&mut self, x: ExchangeId, sid: SessionKey, msg: Value, sse: bool, now: Instant) {
        let kind = if sse {
            ExKind::PostStream
        } else {
            ExKind::Json
        };
        if self.cfg.mode == ChildMode::PerSession {
            self.client_request(x, sid, msg, kind, now);
            return;
        }
        let Some(child) = self.sessions.get(&sid).map(|s| s.child) else {
            return;
        };
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        match self.children.get(&child).map(|c| &c.init) {
            Some(InitState::Done(result)) => {
                let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
                self.add_exchange(x, &sid, kind);
                if sse {
                    self.start_post_stream(x, &sid);
                }
                self.deliver_response(&sid, x, &reply);
            }
            Some(InitState::Pending) => {
                self.add_exchange(x, &sid, kind);
                if sse {
                    self.start_post_stream(x, &sid);
                }
                if let Some(c) = self.children.get_mut(&child) {
                    c.init_waiters.push((sid, x, id, sse));
                }
            }
            Some(InitState::None) | None => {
                if let Some(c) = self.children.get_mut(&child) {
                    c.init = InitState::Pending;
                }
                self.open_and_forward(x, sid, msg, kind, true, now);
            }
        }
    }

    /// A legacy `initialize` (answered on the session stream).
    fn initialize_legacy(&mut self, sid: SessionKey, msg: Value, now: Instant) {
        let Some(child) = self.sessions.get(&sid).map(|s| s.child) else {
            return;
        };
        if self.cfg.mode == ChildMode::PerSession {
            self.forward_request(None, &sid, msg, false, now);
            return;
        }
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        match self.children.get(&child).map(|c| &c.init) {
            Some(InitState::Done(result)) => {
                let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
                self.route(&sid, &reply);
            }
            Some(InitState::Pending) => {
                if let Some(gs) = self.sessions.get(&sid).and_then(|s| s.get_stream) {
                    if let Some(c) = self.children.get_mut(&child) {
                        c.init_waiters.push((sid, gs, id, true));
                    }
                }
            }
            Some(InitState::None) | None => {
                if let Some(c) = self.children.get_mut(&child) {
                    c.init = InitState::Pending;
                }
                self.forward_request(None, &sid, msg, true, now);
            }
        }
    }

    fn start_post_stream(&mut self, x: ExchangeId, sid: &SessionKey) {
        if let Some(s) = self.sessions.get_mut(sid) {
            s.post_streams.push(x);
        }
        self.push(BridgeOutput::StartStream {
            exchange: x,
            headers: vec![("Mcp-Session-Id", sid.to_string())],
        });
    }

    fn client_request(
        &mut self,
        x: ExchangeId,
        sid: SessionKey,
        msg: Value,
        kind: ExKind,
        now: Instant,
    ) {
        if self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.inflight >= self.cfg.max_inflight)
        {
            let id = msg.get("id").cloned().unwrap_or(Value::Null);
            self.reject(x, 429, &id, SERVER_ERROR, "too many requests in flight");
            return;
        }
        self.open_and_forward(x, sid, msg, kind, false, now);
    }

    /// Record the exchange (starting its stream when it is one) and write the
    /// request to the child.
    fn open_and_forward(
        &mut self,
        x: ExchangeId,
        sid: SessionKey,
        msg: Value,
        kind: ExKind,
        init: bool,
        now: Instant,
    ) {
        self.add_exchange(x, &sid, kind);
        if kind == ExKind::PostStream {
            self.start_post_stream(x, &sid);
        }
        self.forward_request(Some(x), &sid, msg, init, now);
    }

    /// Rewrite the id (and progress token) of a client request and write it to the child.
    fn forward_request(
        &mut self,
        x: Option<ExchangeId>,
        sid: &SessionKey,
        mut msg: Value,
        init: bool,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.inflight += 1;
        let child = s.child;
        self.dirty.push(sid.clone());
        let rid = self.next_router_id;
        self.next_router_id += 1;
        let orig_id = msg.get("id").cloned().unwrap_or(Value::Null);
        msg["id"] = json!(rid);
        let mut orig_token = None;
        if let Some(meta) = msg
            .get_mut("params")
            .and_then(|p| p.get_mut("_meta"))
            .and_then(Value::as_object_mut)
        {
            if let Some(t) = meta.get_mut("progressToken") {
                orig_token = Some(std::mem::replace(t, json!(rid)));
            }
        }
        self.inflight.insert(
            rid,
            Inflight {
                session: sid.clone(),
                child,
                exchange: x,
                orig_id,
                orig_token,
                deadline: now + self.cfg.request_timeout,
                init,
            },
        );
        self.push(BridgeOutput::ToChild {
            child,
            line: line_of(&msg),
        });
    }

    fn client_notification(&mut self, sid: &SessionKey, mut msg: Value) {
        let Some(child) = self.sessions.get(sid).map(|s| s.child) else {
            return;
        };
        match method_of(&msg) {
            "notifications/initialized" if self.cfg.mode == ChildMode::Shared => {
                match self.children.get_mut(&child) {
                    Some(c) if !c.initialized_sent => c.initialized_sent = true,
                    _ => return,
                }
            }
            "notifications/cancelled" => {
                let Some(req) = msg.get("params").and_then(|p| p.get("requestId")).cloned() else {
                    return;
                };
                let rid = self
                    .inflight
                    .iter()
                    .find(|(_, i)| &i.session == sid && i.orig_id == req)
                    .map(|(r, _)| *r);
                match rid {
                    Some(r) => msg["params"]["requestId"] = json!(r),
                    None => return,
                }
            }
            _ => {}
        }
        self.push(BridgeOutput::ToChild {
            child,
            line: line_of(&msg),
        });
    }

    /// The client's answer to a server-to-client request: forwarded only if that request
    /// went to this session.
    fn client_response(&mut self, sid: &SessionKey, msg: Value) {
        let Some(child) = self.sessions.get(sid).map(|s| s.child) else {
            return;
        };
        let key = id_key(&msg["id"]);
        let ok = self
            .children
            .get_mut(&child)
            .is_some_and(|c| match c.server_requests.get(&key) {
                Some(owner) if owner == sid => {
                    c.server_requests.remove(&key);
                    true
                }
                _ => false,
            });
        if ok {
            self.push(BridgeOutput::ToChild {
                child,
                line: line_of(&msg),
            });
        } else {
            self.push(BridgeOutput::Log(BridgeEvent::Dropped {
                child,
                what: "client response to no pending server request",
            }));
        }
    }

    /// One line from a child's stdout (without its newline). Blank lines are ignored.
    ///
    /// "The server MUST NOT write anything to its `stdout` that is not a valid MCP
    /// message." (MCP 2025-03-26, Transports, stdio.) A line that is not a JSON-RPC
    /// message ends every session of the child with a clear error, and kills it.
    pub fn handle_child_line(&mut self, child: ChildId, line: &[u8], now: Instant) {
        self.child_line(child, line, now);
        self.settle(now);
    }

    fn child_line(&mut self, child: ChildId, line: &[u8], now: Instant) {
        if !self.children.contains_key(&child) || line.trim_ascii().is_empty() {
            return;
        }
        let parsed: Option<(Value, ExchangeKind)> = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| classify(&v).map(|k| (v, k)));
        let Some((msg, kind)) = parsed else {
            let n = line.len().min(120);
            let sample = String::from_utf8_lossy(line.get(..n).unwrap_or_default()).into_owned();
            self.push(BridgeOutput::Log(BridgeEvent::ChildGarbage {
                child,
                sample,
            }));
            self.end_child(child, EndReason::ChildGarbage, true, now);
            return;
        };
        match kind {
            ExchangeKind::Response => self.child_response(child, msg),
            ExchangeKind::Request => self.child_request(child, msg),
            ExchangeKind::Notification => self.child_notification(child, msg),
        }
    }

    fn child_response(&mut self, child: ChildId, mut msg: Value) {
        let rid = msg.get("id").and_then(Value::as_u64);
        let Some(inf) = rid.and_then(|r| self.inflight.remove(&r)) else {
            self.push(BridgeOutput::Log(BridgeEvent::Dropped {
                child,
                what: "response to no pending request",
            }));
            return;
        };
        if inf.child != child {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&inf.session) {
            s.inflight = s.inflight.saturating_sub(1);
            self.dirty.push(inf.session.clone());
        }
        msg["id"] = inf.orig_id.clone();
        if inf.init && self.cfg.mode == ChildMode::Shared {
            let waiters = match self.children.get_mut(&child) {
                Some(c) => {
                    c.init = match msg.get("result") {
                        Some(r) => InitState::Done(r.clone()),
                        None => InitState::None,
                    };
                    std::mem::take(&mut c.init_waiters)
                }
                None => Vec::new(),
            };
            for (sid, x, id, _sse) in waiters {
                let mut reply = msg.clone();
                reply["id"] = id;
                self.deliver_response(&sid, x, &reply);
            }
        }
        match inf.exchange {
            Some(x) if self.exchanges.contains_key(&x) => {
                self.deliver_response(&inf.session, x, &msg)
            }
            _ => self.orphan_response(&inf.session, &msg),
        }
    }

    /// Send a response to its exchange: a JSON exchange is answered 200; a POST stream
    /// gets the event and ends; a GET (legacy) stream gets the event.
    fn deliver_response(&mut self, sid: &SessionKey, x: ExchangeId, msg: &Value) {
        let Some(kind) = self.exchanges.get(&x).map(|e| e.kind) else {
            self.orphan_response(sid, msg);
            return;
        };
        match kind {
            ExKind::Json => {
                self.remove_exchange(x);
                self.respond_json(x, 200, Some(sid), msg);
            }
            ExKind::PostStream => {
                self.event(sid, x, msg);
                self.finish_stream(x);
            }
            ExKind::GetStream => self.event(sid, x, msg),
        }
    }

    /// A response whose exchange is gone (the client closed its POST stream or JSON
    /// request early). A legacy session gets it on its SSE stream, where every message
    /// goes. A Streamable one does not: "The server MUST NOT send a JSON-RPC response on
    /// the stream unless resuming a stream associated with a previous client request."
    /// (MCP 2025-03-26, Streamable HTTP, Listening for Messages from the Server; about
    /// the GET stream.) Without resumability it is dropped.
    fn orphan_response(&mut self, sid: &SessionKey, msg: &Value) {
        match self.sessions.get(sid) {
            Some(s) if s.legacy => self.route(sid, msg),
            Some(s) => {
                let child = s.child;
                self.push(BridgeOutput::Log(BridgeEvent::Dropped {
                    child,
                    what: "response whose request's exchange is gone",
                }));
            }
            None => {}
        }
    }

    fn finish_stream(&mut self, x: ExchangeId) {
        if let Some(e) = self.remove_exchange(x) {
            if let Some(s) = self.sessions.get_mut(&e.session) {
                s.post_streams.retain(|p| *p != x);
                if s.get_stream == Some(x) {
                    s.get_stream = None;
                }
            }
        }
        self.push(BridgeOutput::EndStream { exchange: x });
    }

    /// Frame `msg` as an SSE `message` event with the session's next event id.
    fn event(&mut self, sid: &SessionKey, x: ExchangeId, msg: &Value) {
        let n = match self.sessions.get_mut(sid) {
            Some(s) if !s.legacy => {
                s.next_event += 1;
                Some(s.next_event - 1)
            }
            _ => None,
        };
        let id = n.map(|n| n.to_string());
        let mut b = BytesMut::new();
        crate::mcp::write_event(
            &mut b,
            id.as_deref().map(str::as_bytes),
            Some(b"message"),
            &to_bytes(msg),
        );
        self.push(BridgeOutput::Event {
            exchange: x,
            data: b.freeze(),
        });
    }

    /// Deliver a child message that belongs to no particular exchange: an open POST
    /// stream, else the GET stream, else the bounded queue (drop-oldest).
    fn route(&mut self, sid: &SessionKey, msg: &Value) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let target = s.post_streams.last().copied().or(s.get_stream);
        if let Some(x) = target {
            self.event(sid, x, msg);
            return;
        }
        s.queue.push_back(msg.clone());
        if s.queue.len() <= self.cfg.max_queue {
            return;
        }
        let child = s.child;
        let Some(dropped) = s.queue.pop_front() else {
            return;
        };
        self.push(BridgeOutput::Log(BridgeEvent::Dropped {
            child,
            what: "queued message (no stream open, queue full)",
        }));
        if classify(&dropped) == Some(ExchangeKind::Request) {
            self.refuse_server_request(child, &dropped["id"], "no client stream to deliver to");
        }
    }

    fn refuse_server_request(&mut self, child: ChildId, id: &Value, why: &str) {
        if let Some(c) = self.children.get_mut(&child) {
            c.server_requests.remove(&id_key(id));
        }
        self.push(BridgeOutput::ToChild {
            child,
            line: line_of(&error_body(id, SERVER_ERROR, why)),
        });
    }

    fn child_request(&mut self, child: ChildId, msg: Value) {
        let Some(c) = self.children.get(&child) else {
            return;
        };
        let sid = match self.cfg.mode {
            ChildMode::PerSession => c.sessions.first().cloned(),
            ChildMode::Shared => self
                .inflight
                .iter()
                .filter(|(_, i)| i.child == child)
                .max_by_key(|(r, _)| **r)
                .map(|(_, i)| i.session.clone())
                .or_else(|| c.sessions.last().cloned()),
        };
        let id = msg["id"].clone();
        let Some(sid) = sid else {
            self.refuse_server_request(child, &id, "no client session to deliver to");
            return;
        };
        if c.server_requests.len() >= MAX_SERVER_REQUESTS {
            self.refuse_server_request(child, &id, "too many server requests pending");
            return;
        }
        if let Some(c) = self.children.get_mut(&child) {
            c.server_requests.insert(id_key(&id), sid.clone());
        }
        self.route(&sid, &msg);
    }

    fn child_notification(&mut self, child: ChildId, mut msg: Value) {
        // A progress notification goes to the stream of the request that carried the
        // token (the token is the router id of that request).
        if let Some(rid) = msg
            .get("params")
            .and_then(|p| p.get("progressToken"))
            .and_then(Value::as_u64)
        {
            if let Some(inf) = self.inflight.get(&rid).filter(|i| i.child == child) {
                let sid = inf.session.clone();
                let x = inf.exchange;
                if let Some(t) = &inf.orig_token {
                    msg["params"]["progressToken"] = t.clone();
                }
                match x.filter(|x| {
                    self.exchanges
                        .get(x)
                        .is_some_and(|e| e.kind != ExKind::Json)
                }) {
                    Some(x) => self.event(&sid, x, &msg),
                    None => self.route(&sid, &msg),
                }
                return;
            }
            self.push(BridgeOutput::Log(BridgeEvent::Dropped {
                child,
                what: "progress for no pending request",
            }));
            return;
        }
        let sessions = self
            .children
            .get(&child)
            .map(|c| c.sessions.clone())
            .unwrap_or_default();
        for sid in sessions {
            self.route(&sid, &msg);
        }
    }

    /// The child exited (or could not be spawned). Its sessions end with an error that
    /// says how. A no-op for a child the bridge already killed.
    pub fn handle_child_exit(&mut self, child: ChildId, how: &str, now: Instant) {
        if self.children.contains_key(&child) {
            self.end_child(child, EndReason::ChildExited(how.to_string()), false, now);
        }
        self.settle(now);
    }

    /// End every session of `child`, and forget it. A child that is still running
    /// (`kill`) is killed; an exited one is only forgotten.
    fn end_child(&mut self, child: ChildId, reason: EndReason, kill: bool, now: Instant) {
        let sessions = self
            .children
            .get(&child)
            .map(|c| c.sessions.clone())
            .unwrap_or_default();
        if !kill {
            self.children.remove(&child);
        }
        if self.shared_child == Some(child) {
            self.shared_child = None;
        }
        for sid in sessions {
            self.end_session(&sid, reason.clone(), now);
        }
        // `end_session` killed the child when its last session ended; a child still
        // here had no session.
        if kill && self.children.remove(&child).is_some() {
            self.push(BridgeOutput::Kill { child });
        }
    }

    /// The client of an exchange went away before it was over.
    pub fn handle_exchange_closed(&mut self, x: ExchangeId, now: Instant) {
        self.exchange_closed(x, now);
        self.settle(now);
    }

    fn exchange_closed(&mut self, x: ExchangeId, now: Instant) {
        let Some(e) = self.remove_exchange(x) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&e.session) else {
            return;
        };
        s.post_streams.retain(|p| *p != x);
        if s.get_stream == Some(x) {
            s.get_stream = None;
            if s.legacy {
                self.end_session(&e.session, EndReason::LegacyStreamClosed, now);
                return;
            }
            s.grace_deadline = Some(now + self.cfg.stream_grace);
        }
        // responses for requests of this exchange now take the session's route
        for i in self.inflight.values_mut() {
            if i.exchange == Some(x) {
                i.exchange = None;
            }
        }
    }

    /// The frontend's bounded buffer for this stream is full: the client does not keep
    /// up. Its session ends (so the router never buffers without bound, and the child's
    /// other sessions are not stalled).
    pub fn handle_stream_overflow(&mut self, x: ExchangeId, now: Instant) {
        if let Some(sid) = self.exchanges.get(&x).map(|e| e.session.clone()) {
            self.remove_exchange(x);
            self.end_session(&sid, EndReason::SlowClient, now);
        }
        self.settle(now);
    }

    /// Deadlines: request timeouts, lost streams past their grace, unattached and idle
    /// sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        for rid in late {
            let Some(inf) = self.inflight.remove(&rid) else {
                continue;
            };
            if let Some(s) = self.sessions.get_mut(&inf.session) {
                s.inflight = s.inflight.saturating_sub(1);
                self.dirty.push(inf.session.clone());
            }
            let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": rid, "reason": "timed out in mcp-router"}});
            self.push(BridgeOutput::ToChild {
                child: inf.child,
                line: line_of(&cancel),
            });
            let err = error_body(
                &inf.orig_id,
                SERVER_ERROR,
                "MCP server did not answer in time",
            );
            match inf.exchange {
                Some(x) if self.exchanges.contains_key(&x) => {
                    self.deliver_response(&inf.session, x, &err)
                }
                _ => self.orphan_response(&inf.session, &err),
            }
        }
        // a request that just timed out is activity: its session's deadline counts
        // from now
        self.settle(now);
        let mut ending = Vec::new();
        for (sid, s) in self.sessions.iter_mut() {
            if s.grace_deadline.is_some_and(|d| d <= now) {
                ending.push((sid.clone(), EndReason::StreamLost));
            } else if s.unattached_deadline.is_some_and(|d| d <= now) {
                if s.attached() {
                    // (not reached: the deadline is cleared when a stream opens or a
                    // request arrives)
                    s.unattached_deadline = None;
                } else {
                    ending.push((sid.clone(), EndReason::Unattached));
                }
            } else if s.idle_deadline <= now {
                let busy = s.get_stream.is_some() || !s.post_streams.is_empty() || s.inflight > 0;
                if busy {
                    s.idle_deadline = now + self.cfg.idle_ttl;
                } else {
                    ending.push((sid.clone(), EndReason::IdleExpiry));
                }
            }
        }
        ending.sort_by(|a, b| a.0.cmp(&b.0));
        for (sid, reason) in ending {
            self.end_session(&sid, reason, now);
        }
        self.settle(now);
    }

    /// End every session and kill every child; later requests get 503.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let mut all: Vec<SessionKey> = self.sessions.keys().cloned().collect();
        all.sort();
        for sid in all {
            self.end_session(&sid, EndReason::Shutdown, now);
        }
        let mut rest: Vec<ChildId> = self.children.keys().copied().collect();
        rest.sort();
        for c in rest {
            self.children.remove(&c);
            self.push(BridgeOutput::Kill { child: c });
        }
        self.shared_child = None;
        self.dirty.clear();
    }

    /// End one session: pending requests get an error, streams a log notification and
    /// their end, the child is killed if no session is left on it.
    fn end_session(&mut self, sid: &SessionKey, reason: EndReason, _now: Instant) {
        let Some(s) = self.sessions.remove(sid) else {
            return;
        };
        if let Some(n) = self.per_client.get_mut(&s.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&s.client);
            }
        }
        let text = reason.message();
        let mut pending: Vec<(u64, Inflight)> = Vec::new();
        let rids: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, i)| &i.session == sid)
            .map(|(r, _)| *r)
            .collect();
        for r in rids {
            if let Some(i) = self.inflight.remove(&r) {
                pending.push((r, i));
            }
        }
        pending.sort_by_key(|(r, _)| *r);
        let mut xs: Vec<(ExchangeId, ExKind)> = self
            .exchanges
            .iter()
            .filter(|(_, e)| &e.session == sid)
            .map(|(x, e)| (*x, e.kind))
            .collect();
        xs.sort_by_key(|(x, _)| *x);
        let mut answered = Vec::new();
        // shared-mode initialize waiters of this session
        if let Some(c) = self.children.get_mut(&s.child) {
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut c.init_waiters)
                .into_iter()
                .partition(|w| &w.0 == sid);
            c.init_waiters = rest;
            for (_, x, id, _) in mine {
                if let Some(k) = self.exchanges.get(&x).map(|e| e.kind) {
                    self.end_exchange(x, k, Some(&id), &text, sid);
                    answered.push(x);
                }
            }
        }
        if reason != EndReason::Delete && reason != EndReason::SlowClient {
            for (_, i) in &pending {
                if let Some(x) = i.exchange {
                    if let Some(k) = xs.iter().find(|(e, _)| *e == x).map(|(_, k)| *k) {
                        if !answered.contains(&x) && k != ExKind::GetStream {
                            self.end_exchange(x, k, Some(&i.orig_id), &text, sid);
                            answered.push(x);
                        }
                    }
                }
            }
        }
        for (x, k) in xs {
            if answered.contains(&x) {
                continue;
            }
            let notify = reason != EndReason::Delete && reason != EndReason::SlowClient;
            match k {
                ExKind::Json => {
                    let id = pending
                        .iter()
                        .find(|(_, i)| i.exchange == Some(x))
                        .map(|(_, i)| i.orig_id.clone())
                        .unwrap_or(Value::Null);
                    self.end_exchange(x, k, Some(&id), &text, sid);
                }
                _ if notify => self.end_exchange(x, k, None, &text, sid),
                _ => {
                    self.remove_exchange(x);
                    self.push(BridgeOutput::EndStream { exchange: x });
                }
            }
        }
        // the session's record is gone: later messages for it are dropped
        let mut to_child = Vec::new();
        let mut empty = false;
        if let Some(c) = self.children.get_mut(&s.child) {
            c.sessions.retain(|x| x != sid);
            empty = c.sessions.is_empty();
            let theirs: Vec<String> = c
                .server_requests
                .iter()
                .filter(|(_, o)| *o == sid)
                .map(|(k, _)| k.clone())
                .collect();
            for k in theirs {
                c.server_requests.remove(&k);
                if let Ok(id) = serde_json::from_str::<Value>(&k) {
                    to_child.push(error_body(&id, SERVER_ERROR, "client session ended"));
                }
            }
            for (r, _) in &pending {
                to_child.push(
                    json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": r, "reason": "client session ended"}}),
                );
            }
            if empty {
                self.children.remove(&s.child);
                if self.shared_child == Some(s.child) {
                    self.shared_child = None;
                }
            }
        }
        if empty {
            self.push(BridgeOutput::Kill { child: s.child });
        } else {
            for m in to_child {
                self.push(BridgeOutput::ToChild {
                    child: s.child,
                    line: line_of(&m),
                });
            }
        }
        self.push(BridgeOutput::Log(BridgeEvent::SessionEnded {
            session: sid.clone(),
            reason,
        }));
    }

    /// Close one exchange of an ending session with `text`: a JSON-RPC error for `id`
    /// (a request's exchange) or a `notifications/message` (a stream).
    fn end_exchange(
        &mut self,
        x: ExchangeId,
        k: ExKind,
        id: Option<&Value>,
        text: &str,
        sid: &SessionKey,
    ) {
        self.remove_exchange(x);
        match (k, id) {
            (ExKind::Json, id) => {
                let body = error_body(id.unwrap_or(&Value::Null), SERVER_ERROR, text);
                self.respond_json(x, 200, Some(sid), &body);
                return;
            }
            (_, Some(id)) => {
                let body = error_body(id, SERVER_ERROR, text);
                self.event_unsessioned(x, &body);
            }
            (_, None) => {
                let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
                    "params": {"level": "error", "logger": "mcp-router", "data": text}});
                self.event_unsessioned(x, &note);
            }
        }
        self.push(BridgeOutput::EndStream { exchange: x });
    }

    fn event_unsessioned(&mut self, x: ExchangeId, msg: &Value) {
        let mut b = BytesMut::new();
        crate::mcp::write_event(&mut b, None, Some(b"message"), &to_bytes(msg));
        self.push(BridgeOutput::Event {
            exchange: x,
            data: b.freeze(),
        });
    }
}
