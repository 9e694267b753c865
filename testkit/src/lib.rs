//! A fast, scriptable fake MCP backend for mcp-router's tests and benchmarks.
//!
//! It speaks Streamable HTTP at `/mcp` and the legacy HTTP+SSE transport
//! (2024-11-05) at `/sse` + `/messages`, and every JSON-RPC answer carries the
//! backend's name so that tests can check session stickiness. `GET /stats`
//! reports counters. See the crate README (`testkit/README.md`) for the full
//! behaviour.
//!
//! Design notes: no per-request logging; session tables are
//! `std::sync::Mutex<HashMap>` locked only for short, await-free sections;
//! bodies that stream are fed by unbounded channels from small tasks that stop
//! as soon as the client goes away.

pub mod harness;
pub mod procs;
pub mod redis_topology;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Protocol version the fake claims in its `initialize` result.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Largest request body accepted (bigger bodies get 400).
pub const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;
/// Largest `big` tool payload served.
pub const MAX_BIG_BYTES: u64 = 256 * 1024 * 1024;
/// Most progress events one `stream` tool call sends.
pub const MAX_STREAM_COUNT: u64 = 1_000_000;

const SESSION_HEADER: &str = "mcp-session-id";

/// Configuration of one fake backend.
#[derive(Clone, Debug)]
pub struct Config {
    /// Name carried in every answer and in minted session ids (visible ASCII).
    pub name: String,
    /// Spacing of streamed events.
    pub tick: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "backend".to_string(),
            tick: Duration::from_millis(100),
        }
    }
}

/// Binds a listening socket with a generous backlog (for load tests).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves connections from `listener` forever.
pub async fn serve(listener: TcpListener, config: Config) -> io::Result<()> {
    let app = Arc::new(Backend::new(config));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let open = app.connections.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            struct Open(Arc<AtomicU64>);
            impl Drop for Open {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let _open = Open(open);
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Spawns a backend on the current tokio runtime, for in-process tests.
/// Returns the bound address.
pub async fn spawn(addr: SocketAddr, config: Config) -> io::Result<SocketAddr> {
    let listener = bind(addr)?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, config));
    Ok(local)
}

// ---------------------------------------------------------------------------
// Response bodies

/// Response body: a full buffer, a single chunk with unknown length (sent
/// chunked), or a channel of chunks (sent chunked until the sender is dropped).
pub enum ResBody {
    Full(Option<Bytes>),
    Chunked(Option<Bytes>),
    Channel(UnboundedReceiver<Bytes>, Option<LegacyGuard>),
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResBody::Full(b) | ResBody::Chunked(b) => {
                Poll::Ready(b.take().map(|b| Ok(Frame::data(b))))
            }
            ResBody::Channel(rx, _) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResBody::Full(None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Forgets a legacy SSE session when its stream body is dropped (the client
/// went away or the connection closed).
pub struct LegacyGuard {
    app: Arc<Backend>,
    sid: String,
}

impl Drop for LegacyGuard {
    fn drop(&mut self) {
        lock(&self.app.legacy).remove(&self.sid);
    }
}

// ---------------------------------------------------------------------------
// The backend

struct Legacy {
    tx: UnboundedSender<Bytes>,
    seq: u64,
}

struct Backend {
    name: Arc<str>,
    tick: Duration,
    counter: AtomicU64,
    requests: AtomicU64,
    /// TCP connections open now.
    connections: Arc<AtomicU64>,
    /// Streamable HTTP sessions: id -> requests seen so far.
    sessions: Mutex<HashMap<String, u64>>,
    /// Legacy HTTP+SSE sessions.
    legacy: Mutex<HashMap<String, Legacy>>,
    /// `DELETE /mcp` requests received, whatever their answer.
    deletes: AtomicU64,
    /// Session ids named by `DELETE`s, in order (repeats kept).
    deleted_ids: Mutex<Vec<String>>,
    /// The header fields of the last `DELETE`, `[name, value]` pairs.
    last_delete: Mutex<Value>,
    random: RandomState,
}

/// What a JSON-RPC message calls for, independent of the transport.
enum Reply {
    /// One JSON-RPC response.
    Json(Value),
    /// Progress notifications then a final response (the `stream` tool).
    Stream(StreamPlan),
}

struct StreamPlan {
    count: u64,
    token: Option<Value>,
    final_msg: Value,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sse_event(json: &Value) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"event: message\ndata: ");
    // Serialising a Value cannot fail.
    let _ = serde_json::to_writer(&mut out, json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut res = Response::new(ResBody::Full(Some(Bytes::from(bytes))));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response<ResBody> {
    json_response(
        status,
        &json!({"jsonrpc":"2.0","id":id,"error":{"code":code,"message":message}}),
    )
}

fn not_found_session(id: Value) -> Response<ResBody> {
    rpc_error(StatusCode::NOT_FOUND, id, -32001, "Session not found")
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResBody> {
    let mut res = Response::new(ResBody::Full(Some(Bytes::from_static(text.as_bytes()))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn empty(status: StatusCode) -> Response<ResBody> {
    let mut res = Response::new(ResBody::Full(None));
    *res.status_mut() = status;
    res
}

fn sse_response(body: ResBody) -> Response<ResBody> {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

fn method_not_allowed(allow: &'static str) -> Response<ResBody> {
    let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    res
}

fn accepts_sse(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/event-stream")))
}

/// The request's session header: `None` if absent, `Some(None)` if present
/// but not visible ASCII (which can never name a known session).
///
/// In the stateless era (`MCP-Protocol-Version` 2026-07-28 or later) a server "ignores
/// any `Mcp-Session-Id` it is sent", so the header reads as absent.
fn session_header(req: &Request<Incoming>) -> Option<Option<String>> {
    let stateless = req
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() == 10 && v >= "2026-07-28");
    if stateless {
        return None;
    }
    let v = req.headers().get(SESSION_HEADER)?;
    let ok = !v.is_empty() && v.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b));
    Some(ok.then(|| String::from_utf8_lossy(v.as_bytes()).into_owned()))
}

/// Any method on a path ending in `/headers`: 200 JSON `{"method","target","headers"}`,
/// the request as received (`headers` is a list of `[name, value]` in order, names
/// lower-case), so tests can see what the router forwarded.
fn echo_head(req: &Request<Incoming>) -> Response<ResBody> {
    let headers: Vec<Value> = req
        .headers()
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "method": req.method().as_str(),
            "target": req.uri().to_string(),
            "headers": headers,
        }),
    )
}

/// Reads and parses a JSON-RPC message; `Err` is the 400 answer.
async fn read_message(req: Request<Incoming>) -> Result<Value, Response<ResBody>> {
    let bytes = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                "Parse error: unreadable or oversized body",
            ))
        }
    };
    let msg: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                "Parse error",
            ))
        }
    };
    let valid = match &msg {
        Value::Object(o) => !matches!(o.get("method"), Some(m) if !m.is_string()),
        _ => false,
    };
    if !valid {
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            -32600,
            "Invalid Request: expected one JSON-RPC message object",
        ));
    }
    Ok(msg)
}

/// A request has both `method` and `id`; anything else is a notification or
/// a response.
/// `tools/call` of the `effect` tool: its `key` argument and `delay_ms` (at most 60 s).
fn effect_call(msg: &Value) -> Option<(String, u64)> {
    if method_of(msg) != "tools/call" {
        return None;
    }
    let params = msg.get("params")?;
    if params.get("name").and_then(Value::as_str) != Some("effect") {
        return None;
    }
    let args = params.get("arguments");
    let key = args
        .and_then(|a| a.get("key"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    let delay = args
        .and_then(|a| a.get("delay_ms"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(60_000);
    Some((key, delay))
}

fn is_request(msg: &Value) -> bool {
    msg.get("method").is_some() && msg.get("id").is_some()
}

fn method_of(msg: &Value) -> &str {
    msg.get("method").and_then(Value::as_str).unwrap_or("")
}

fn id_of(msg: &Value) -> Value {
    msg.get("id").cloned().unwrap_or(Value::Null)
}

impl Backend {
    fn new(config: Config) -> Self {
        Backend {
            name: Arc::from(config.name.as_str()),
            tick: config.tick,
            counter: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: Arc::default(),
            sessions: Mutex::new(HashMap::new()),
            legacy: Mutex::new(HashMap::new()),
            deletes: AtomicU64::new(0),
            deleted_ids: Mutex::new(Vec::new()),
            last_delete: Mutex::new(Value::Null),
            random: RandomState::new(),
        }
    }

    fn mint_sid(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        // SipHash keyed by per-process random keys, over a per-process
        // counter: unpredictable enough for a test peer.
        let mut h = self.random.build_hasher();
        h.write_u64(n);
        let r = h.finish();
        format!("{}-{}-{:016x}", self.name, n, r)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ResBody> {
        let path = req.uri().path();
        if !(path == "/stats" && req.method() == Method::GET) {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        if path.ends_with("/headers") {
            return echo_head(&req);
        }
        match path {
            "/mcp" => match *req.method() {
                Method::POST => self.mcp_post(req).await,
                Method::GET => self.mcp_get(req),
                Method::DELETE => self.mcp_delete(req),
                _ => method_not_allowed("GET, POST, DELETE"),
            },
            "/sse" => match *req.method() {
                Method::GET => self.legacy_sse(req),
                _ => method_not_allowed("GET"),
            },
            "/messages" | "/messages/" => match *req.method() {
                Method::POST => self.legacy_post(req).await,
                _ => method_not_allowed("POST"),
            },
            "/stats" => match *req.method() {
                Method::GET => self.stats(req.uri().query() == Some("brief")),
                _ => method_not_allowed("GET"),
            },
            _ => plain(StatusCode::NOT_FOUND, "Not Found"),
        }
    }

    /// `brief` (`/stats?brief`): without the lists, which grow with every `DELETE`
    /// (a benchmark polls it after hundreds of thousands).
    fn stats(&self, brief: bool) -> Response<ResBody> {
        let sessions = lock(&self.sessions).len();
        let sse_sessions = lock(&self.legacy).len();
        if brief {
            return json_response(
                StatusCode::OK,
                &json!({
                    "name": &*self.name,
                    "sessions": sessions,
                    "sse_sessions": sse_sessions,
                    "deletes": self.deletes.load(Ordering::Relaxed),
                }),
            );
        }
        json_response(
            StatusCode::OK,
            &json!({
                "name": &*self.name,
                "sessions": sessions,
                "sse_sessions": sse_sessions,
                "requests": self.requests.load(Ordering::Relaxed),
                "connections": self.connections.load(Ordering::Relaxed),
                "deletes": self.deletes.load(Ordering::Relaxed),
                "deleted_ids": &*lock(&self.deleted_ids),
                "last_delete_headers": &*lock(&self.last_delete),
            }),
        )
    }

    fn init_result(&self, id: Value, sid: &str) -> Value {
        json!({"jsonrpc":"2.0","id":id,"result":{
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": &*self.name, "version": "0"},
            "backend": &*self.name,
            "session": sid,
        }})
    }

    /// The answer to a request (`method` and `id` present).
    fn request_reply(&self, msg: &Value, session: Option<&str>, seq: Option<u64>) -> Reply {
        let id = id_of(msg);
        let method = method_of(msg);
        let name = &*self.name;
        if method == "tools/call" {
            let params = msg.get("params");
            let tool = params
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let args = params
                .and_then(|p| p.get("arguments"))
                .cloned()
                .unwrap_or(Value::Null);
            match tool {
                "stream" => {
                    let count = args
                        .get("count")
                        .and_then(Value::as_u64)
                        .unwrap_or(3)
                        .min(MAX_STREAM_COUNT);
                    let token = params
                        .and_then(|p| p.get("_meta"))
                        .and_then(|m| m.get("progressToken"))
                        .cloned();
                    return Reply::Stream(StreamPlan {
                        count,
                        token,
                        final_msg: json!({"jsonrpc":"2.0","id":id,"result":{
                            "backend": name, "session": session, "method": method,
                            "seq": seq, "streamed": count,
                            "content": [{"type":"text","text":"done"}],
                        }}),
                    });
                }
                "echo" => {
                    return Reply::Json(json!({"jsonrpc":"2.0","id":id,"result":{
                        "backend": name, "session": session, "seq": seq, "echo": args,
                    }}));
                }
                "big" => {
                    let n = args
                        .get("bytes")
                        .and_then(Value::as_u64)
                        .unwrap_or(1024)
                        .min(MAX_BIG_BYTES) as usize;
                    return Reply::Json(json!({"jsonrpc":"2.0","id":id,"result":{
                        "backend": name, "session": session, "seq": seq,
                        "bytes": n, "data": "x".repeat(n),
                    }}));
                }
                _ => {}
            }
        }
        Reply::Json(json!({"jsonrpc":"2.0","id":id,"result":{
            "backend": name, "session": session, "method": method, "seq": seq,
        }}))
    }

    /// Sends the `stream` tool's progress events then its final response.
    fn spawn_stream(&self, tx: UnboundedSender<Bytes>, plan: StreamPlan) {
        let tick = self.tick;
        let name = self.name.clone();
        tokio::spawn(async move {
            for k in 1..=plan.count {
                if k > 1 && !pause(&tx, tick).await {
                    return;
                }
                let mut params = json!({"progress": k, "total": plan.count, "backend": &*name});
                if let Some(t) = &plan.token {
                    params["progressToken"] = t.clone();
                }
                let ev = json!({"jsonrpc":"2.0","method":"notifications/progress","params":params});
                if tx.send(sse_event(&ev)).is_err() {
                    return;
                }
            }
            if plan.count > 0 && !pause(&tx, tick).await {
                return;
            }
            let _ = tx.send(sse_event(&plan.final_msg));
        });
    }

    // -- Streamable HTTP ----------------------------------------------------

    async fn mcp_post(&self, req: Request<Incoming>) -> Response<ResBody> {
        let want_sse = query_param(req.uri().query(), "sse") == Some("1");
        let sid = session_header(&req);
        let msg = match read_message(req).await {
            Ok(m) => m,
            Err(res) => return res,
        };
        let request = is_request(&msg);

        let (session, seq) = match sid {
            Some(sid) => {
                let known = sid.and_then(|sid| {
                    let mut map = lock(&self.sessions);
                    let seq = map.get_mut(&sid)?;
                    if request {
                        *seq += 1;
                    }
                    Some((sid, *seq))
                });
                match known {
                    Some((sid, seq)) => (Some(sid), Some(seq)),
                    None => return not_found_session(id_of(&msg)),
                }
            }
            None if request && method_of(&msg) == "initialize" => {
                let sid = self.mint_sid();
                lock(&self.sessions).insert(sid.clone(), 0);
                let body = self.init_result(id_of(&msg), &sid);
                let mut res = if want_sse {
                    sse_response(ResBody::Chunked(Some(sse_event(&body))))
                } else {
                    json_response(StatusCode::OK, &body)
                };
                if let Ok(v) = HeaderValue::from_str(&sid) {
                    res.headers_mut().insert(SESSION_HEADER, v);
                }
                return res;
            }
            None => (None, None),
        };

        if !request {
            return empty(StatusCode::ACCEPTED);
        }
        if let Some((key, delay)) = effect_call(&msg) {
            // A side effect the tests can count after the backend is gone: one line on
            // stdout per execution, written before the (optional) delay, so a request
            // cut off during the delay was executed.
            // never `println!`: with stdout closed it would panic the handler
            let _ = io::Write::write_all(
                &mut io::stdout(),
                format!("EFFECT {} {key}\n", self.name).as_bytes(),
            );
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let body = json!({"jsonrpc":"2.0","id":id_of(&msg),"result":{
                "backend": &*self.name, "session": session, "seq": seq, "effect": key,
                "content": [{"type":"text","text":"done"}],
            }});
            return json_response(StatusCode::OK, &body);
        }
        if method_of(&msg) == "subscriptions/listen" {
            return listen_stream(&msg);
        }
        match self.request_reply(&msg, session.as_deref(), seq) {
            Reply::Json(body) if want_sse => sse_response(ResBody::Chunked(Some(sse_event(&body)))),
            Reply::Json(body) => json_response(StatusCode::OK, &body),
            Reply::Stream(plan) => {
                let (tx, rx) = unbounded_channel();
                self.spawn_stream(tx, plan);
                sse_response(ResBody::Channel(rx, None))
            }
        }
    }

    fn mcp_get(self: Arc<Self>, req: Request<Incoming>) -> Response<ResBody> {
        let sid = match session_header(&req) {
            None => {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    Value::Null,
                    -32000,
                    "Bad Request: Mcp-Session-Id header is required",
                )
            }
            Some(None) => return not_found_session(Value::Null),
            Some(Some(sid)) => sid,
        };
        if !lock(&self.sessions).contains_key(&sid) {
            return not_found_session(Value::Null);
        }
        if !accepts_sse(&req) {
            return rpc_error(
                StatusCode::NOT_ACCEPTABLE,
                Value::Null,
                -32000,
                "Not Acceptable: client must accept text/event-stream",
            );
        }
        let (tx, rx) = unbounded_channel();
        let app = self.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            loop {
                if !pause(&tx, app.tick).await {
                    return;
                }
                // End the stream once the session is deleted.
                if !lock(&app.sessions).contains_key(&sid) {
                    return;
                }
                n += 1;
                let ev = json!({"jsonrpc":"2.0","method":"notifications/message",
                    "params":{"backend": &*app.name, "n": n}});
                if tx.send(sse_event(&ev)).is_err() {
                    return;
                }
            }
        });
        sse_response(ResBody::Channel(rx, None))
    }

    fn mcp_delete(&self, req: Request<Incoming>) -> Response<ResBody> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        let headers: Vec<Value> = req
            .headers()
            .iter()
            .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
            .collect();
        *lock(&self.last_delete) = Value::Array(headers);
        if let Some(Some(sid)) = session_header(&req) {
            lock(&self.deleted_ids).push(sid);
        }
        match session_header(&req) {
            None => rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32000,
                "Bad Request: Mcp-Session-Id header is required",
            ),
            Some(Some(sid)) if lock(&self.sessions).remove(&sid).is_some() => empty(StatusCode::OK),
            Some(_) => not_found_session(Value::Null),
        }
    }

    // -- Legacy HTTP+SSE ------------------------------------------------------

    fn legacy_sse(self: Arc<Self>, req: Request<Incoming>) -> Response<ResBody> {
        let python = query_param(req.uri().query(), "style") == Some("python");
        let sid = self.mint_sid();
        let (tx, rx) = unbounded_channel();
        let endpoint = if python {
            format!("event: endpoint\ndata: /messages/?session_id={sid}\n\n")
        } else {
            format!("event: endpoint\ndata: /messages?sessionId={sid}\n\n")
        };
        let _ = tx.send(Bytes::from(endpoint));
        lock(&self.legacy).insert(sid.clone(), Legacy { tx, seq: 0 });
        let guard = LegacyGuard {
            app: self.clone(),
            sid,
        };
        sse_response(ResBody::Channel(rx, Some(guard)))
    }

    async fn legacy_post(&self, req: Request<Incoming>) -> Response<ResBody> {
        let query = req.uri().query();
        let Some(sid) =
            query_param(query, "sessionId").or_else(|| query_param(query, "session_id"))
        else {
            return plain(StatusCode::BAD_REQUEST, "Missing sessionId");
        };
        let sid = sid.to_string();
        if !lock(&self.legacy).contains_key(&sid) {
            return plain(StatusCode::NOT_FOUND, "Could not find session");
        }
        let msg = match read_message(req).await {
            Ok(m) => m,
            Err(res) => return res,
        };
        let request = is_request(&msg);
        let initialize = method_of(&msg) == "initialize";
        // Look the session up again: it may have closed while the body was read.
        let found = {
            let mut map = lock(&self.legacy);
            map.get_mut(&sid).map(|s| {
                if request && !initialize {
                    s.seq += 1;
                }
                (s.tx.clone(), s.seq)
            })
        };
        let Some((tx, seq)) = found else {
            return plain(StatusCode::NOT_FOUND, "Could not find session");
        };
        if request {
            let reply = if initialize {
                Reply::Json(self.init_result(id_of(&msg), &sid))
            } else {
                self.request_reply(&msg, Some(&sid), Some(seq))
            };
            match reply {
                Reply::Json(body) => {
                    let _ = tx.send(sse_event(&body));
                }
                Reply::Stream(plan) => self.spawn_stream(tx, plan),
            }
        }
        plain(StatusCode::ACCEPTED, "Accepted")
    }
}

/// A 2026-07-28 `subscriptions/listen` stream: an acknowledgement event, then
/// `params.count` (default 2, at most 100) `: keep-alive` comments `params.gap_ms`
/// apart (default 100, at most 10 s), then `notifications/tools/list_changed`, then the
/// end of the body; `X-Accel-Buffering: no` as a server behind nginx-like proxies sends.
fn listen_stream(msg: &Value) -> Response<ResBody> {
    let params = msg.get("params");
    let arg = |k: &str, d: u64, max: u64| {
        params
            .and_then(|p| p.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(d)
            .min(max)
    };
    let (count, gap) = (arg("count", 2, 100), arg("gap_ms", 100, 10_000));
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        let ack = json!({"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged"});
        if tx.send(sse_event(&ack)).is_err() {
            return;
        }
        for _ in 0..count {
            if !pause(&tx, Duration::from_millis(gap)).await
                || tx.send(Bytes::from_static(b": keep-alive\n\n")).is_err()
            {
                return;
            }
        }
        let change = json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"});
        let _ = tx.send(sse_event(&change));
    });
    let mut res = sse_response(ResBody::Channel(rx, None));
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// Sleeps one tick; false if the receiving side went away meanwhile.
async fn pause(tx: &UnboundedSender<Bytes>, tick: Duration) -> bool {
    tokio::select! {
        _ = tx.closed() => false,
        _ = tokio::time::sleep(tick) => !tx.is_closed(),
    }
}
