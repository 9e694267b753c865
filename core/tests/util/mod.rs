//! The harness of the connection-machine tests (`conn.rs`, `sealed.rs`): one `H`
//! drives a `Conn` with virtual time, a scripted client and scripted backends over
//! the embedded store, as quinn-proto's `Pair` does for its tests.

#![allow(dead_code)]

use mcp_router_core::mcp::SessionKey;
use mcp_router_core::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct H {
    pub router: Arc<Router>,
    pub store: MemStore,
    pub conn: Conn,
    pub bufs: Buffers,
    pub now: Instant,
    /// Bytes written to the client so far.
    pub client: Vec<u8>,
    /// Bytes written upstream since the last connect.
    pub upstream: Vec<u8>,
    pub connects: Vec<(u16, bool)>,
    pub connected: bool,
    pub released: Vec<bool>,
    pub closed: bool,
    pub events: Vec<Event>,
    /// When false, store ops queue up here for a manual reply.
    pub auto_store: bool,
    pub ops: VecDeque<StoreOp>,
    /// Session-record ops emitted (`Get`, `Insert`, `Delete`, `Touch`; not the
    /// per-client quota's `Admit` when a session opens).
    pub store_ops: usize,
}

pub fn key(s: &str) -> SessionKey {
    SessionKey::new(s.as_bytes(), 256).unwrap()
}

pub const UNIX_NOW: u64 = 1_800_000_000;

pub fn config(n: usize) -> Config {
    let mut c = Config::default();
    for i in 0..n {
        c.backends.push(
            Backend::parse(
                &format!("http://10.0.0.{}:80{}", i + 1, i),
                Some(&format!("b{i}")),
            )
            .unwrap(),
        );
    }
    c.session_ttl = Duration::from_secs(600);
    c
}

impl H {
    pub fn new(n: usize) -> H {
        Self::with(config(n))
    }
    pub fn with(c: Config) -> H {
        let now = Instant::now();
        let store = MemStore::new(c.session_ttl, 100, now);
        let router = Arc::new(Router::new(Arc::new(c), now));
        router.set_unix_time(now, UNIX_NOW);
        router.set_entropy(*b"0123456789abcdef");
        let conn = Conn::new(
            router.clone(),
            Some("192.0.2.7".parse().unwrap()),
            "http",
            now,
        );
        H {
            router,
            store,
            conn,
            bufs: Buffers::default(),
            now,
            client: Vec::new(),
            upstream: Vec::new(),
            connects: Vec::new(),
            connected: false,
            released: Vec::new(),
            closed: false,
            events: Vec::new(),
            auto_store: true,
            ops: VecDeque::new(),
            store_ops: 0,
        }
    }
    /// A fresh client connection sharing router and store.
    pub fn reconnect(&mut self) {
        self.conn = Conn::new(self.router.clone(), None, "http", self.now);
        self.bufs = Buffers::default();
        self.client.clear();
        self.upstream.clear();
        self.connects.clear();
        self.released.clear();
        self.closed = false;
        self.connected = false;
    }
    pub fn drain(&mut self) {
        loop {
            self.conn.handle_io(&mut self.bufs, self.now);
            let mut any = false;
            while let Some(o) = self.conn.poll_output() {
                any = true;
                match o {
                    Output::ToClient(b) => self.client.extend_from_slice(&b),
                    Output::ToUpstream(b) => {
                        assert!(self.connected, "wrote upstream while not connected");
                        self.upstream.extend_from_slice(&b)
                    }
                    Output::Connect { backend, fresh } => {
                        self.connects.push((backend.0, fresh));
                        self.connected = false;
                    }
                    Output::ReleaseUpstream { reuse } => {
                        self.released.push(reuse);
                        self.connected = false;
                        self.bufs.upstream.clear();
                    }
                    Output::Store(op) => {
                        if !matches!(op, StoreOp::Admit(_)) {
                            self.store_ops += 1;
                        }
                        if self.auto_store {
                            let r = self.store.execute(&op, self.now);
                            self.conn.handle_store_reply(r, self.now);
                        } else {
                            self.ops.push_back(op);
                        }
                    }
                    Output::CloseClient => self.closed = true,
                    Output::Event(e) => self.events.push(e),
                }
            }
            if !any {
                break;
            }
        }
    }
    pub fn send(&mut self, bytes: &[u8]) {
        self.bufs.client.extend_from_slice(bytes);
        self.drain();
    }
    pub fn connect_ok(&mut self, reused: bool) {
        self.connected = true;
        self.upstream.clear();
        self.conn.handle_upstream_connected(reused, self.now);
        self.drain();
    }
    pub fn connect_fail(&mut self) {
        self.conn.handle_upstream_failed(self.now);
        self.drain();
    }
    pub fn reply(&mut self, bytes: &[u8]) {
        self.bufs.upstream.extend_from_slice(bytes);
        self.drain();
    }
    pub fn upstream_eof(&mut self) {
        self.drain();
        self.conn.handle_upstream_eof(self.now);
        self.drain();
    }
    pub fn client_eof(&mut self) {
        self.drain();
        self.conn.handle_client_eof(self.now);
        self.drain();
    }
    /// Move the clock forward, firing every deadline on the way at its own time, as a
    /// driver's timer would.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.conn.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.conn.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
        self.drain();
    }
    pub fn store_reply(&mut self, r: StoreReply) {
        self.ops.pop_front().expect("an op was pending");
        self.conn.handle_store_reply(r, self.now);
        self.drain();
    }
    pub fn take_client(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.client)).unwrap()
    }
    pub fn take_upstream(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.upstream)).unwrap()
    }
    pub fn lookup(&mut self, s: &str) -> Option<Record> {
        match self.store.execute(&StoreOp::Get(key(s)), self.now) {
            StoreReply::Found(r) => r,
            other => panic!("{other:?}"),
        }
    }
    pub fn rejected(&self) -> Vec<u16> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Rejected { status, .. } => Some(*status),
                _ => None,
            })
            .collect()
    }
    pub fn ended(&self) -> Vec<EndCause> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::SessionEnded { cause, .. } => Some(*cause),
                _ => None,
            })
            .collect()
    }
}

pub fn post(path: &str, session: Option<&str>, body: &str) -> Vec<u8> {
    let mut s = format!(
        "POST {path} HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(id) = session {
        s.push_str(&format!("Mcp-Session-Id: {id}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

pub const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
/// Python SDK order: method and params first, id last.
pub const CALL: &str = r#"{"method":"tools/call","params":{"name":"echo","arguments":{"x":1}},"jsonrpc":"2.0","id":"req-7"}"#;

pub fn json_ok(extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn body_json(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).expect("JSON body")
}

/// The header value `name` in a response or request text.
pub fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let head = text.split("\r\n\r\n").next()?;
    head.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}
