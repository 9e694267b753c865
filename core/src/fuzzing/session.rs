//! The whole-core target: an `Arbitrary` sequence of operations over a small router
//! (2-3 backends, embedded store, up to four client connections), run twice with
//! different splits of the same bytes. The connections are driven by core's one
//! simulator ([`Sim`]: driver reads, store, clock, and its driving-contract checks); the
//! checks here read its log.

use crate::config::{Backend, Config};
use crate::conn::{Event, Output};
use crate::http::{parse_request, parse_response, BodyDecoder, BodyKind, Method, RequestHead};
use crate::http::{HttpLimits, ResponseHead};
use crate::mcp::{is_stateless_version, query_session_id, SessionKey};
use crate::router::BackendId;
use crate::sim::{Sim, Step};
use crate::store::{MemStore, StoreOp, StoreReply};
use arbitrary::{Result, Unstructured};
use bytes::BytesMut;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const MAX_CONNS: usize = 4;
const MAX_OPS: usize = 64;
/// Most bytes one driver read moves into a buffer.
const READ: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Open,
    Client {
        c: usize,
        bytes: Vec<u8>,
        cuts: Vec<usize>,
    },
    ClientEof {
        c: usize,
    },
    Connect {
        c: usize,
        how: u8,
    },
    Upstream {
        c: usize,
        bytes: Vec<u8>,
        cuts: Vec<usize>,
    },
    UpstreamEof {
        c: usize,
    },
    StoreMode(u8),
    StoreFlush,
    Advance(u64),
    Expire,
    Shutdown {
        c: usize,
    },
}

struct Script {
    backends: usize,
    max_inspect: usize,
    max_head: usize,
    ops: Vec<Op>,
}

fn body_for(u: &mut Unstructured<'_>, method: &str) -> Result<Vec<u8>> {
    let id = u.int_in_range(0..=99u8)?;
    Ok(match u.int_in_range(0..=3u8)? {
        0 => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{}}}}"#),
        1 => format!(r#"{{"method":"{method}","jsonrpc":"2.0","id":"r{id}"}}"#),
        2 => format!(r#"{{"jsonrpc":"2.0","method":"{method}"}}"#),
        _ => format!(r#"[{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}]"#),
    }
    .into_bytes())
}

fn client_bytes(u: &mut Unstructured<'_>, max_inspect: usize, hostile: bool) -> Result<Vec<u8>> {
    let sid = format!("m{}", u.int_in_range(0..=40u8)?);
    let version = if u.ratio(1, 8)? { "1.0" } else { "1.1" };
    let close = if u.ratio(1, 6)? {
        "Connection: close\r\n"
    } else {
        ""
    };
    let method = ["initialize", "tools/call", "ping"][u.int_in_range(0..=2usize)?];
    let post = |path: &str, extra: &str, body: &[u8]| {
        let mut v = format!(
            "POST {path} HTTP/{version}\r\nHost: r\r\n{close}{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(body);
        v
    };
    // The hostile shapes (12 and up) only in `session_reading`, so that the inputs
    // checked in for `session_sequence` keep decoding to the scripts they were found as.
    Ok(match u.int_in_range(0..=if hostile { 19u8 } else { 11 })? {
        0 => post("/mcp", "", &body_for(u, "initialize")?),
        1 => post("/mcp", &format!("Mcp-Session-Id: {sid}\r\n"), &body_for(u, method)?),
        2 => format!("DELETE /mcp HTTP/{version}\r\nHost: r\r\n{close}Mcp-Session-Id: {sid}\r\n\r\n")
            .into_bytes(),
        3 => format!("GET /mcp HTTP/{version}\r\n{close}Accept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n")
            .into_bytes(),
        4 => format!("GET /sse HTTP/{version}\r\n{close}Accept: text/event-stream\r\n\r\n").into_bytes(),
        5 => post(&format!("/messages?sessionId={sid}"), "", &body_for(u, method)?),
        6 => {
            let body = body_for(u, method)?;
            let at = u.int_in_range(0..=body.len())?;
            let session = if u.ratio(1, 2)? {
                format!("Mcp-Session-Id: {sid}\r\n")
            } else {
                String::new()
            };
            let mut v = format!(
                "POST /mcp HTTP/1.1\r\n{close}{session}Transfer-Encoding: chunked\r\n\r\n"
            )
            .into_bytes();
            for part in [&body[..at], &body[at..]] {
                if !part.is_empty() {
                    v.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    v.extend_from_slice(part);
                    v.extend_from_slice(b"\r\n");
                }
            }
            v.extend_from_slice(b"0\r\n\r\n");
            v
        }
        7 => post(
            "/mcp",
            &format!("MCP-Protocol-Version: 2026-07-28\r\nMcp-Session-Id: {sid}\r\n"),
            &body_for(u, method)?,
        ),
        8 => post(
            "/mcp",
            &format!("Mcp-Session-Id: {sid}\r\nExpect: 100-continue\r\n"),
            &body_for(u, method)?,
        ),
        9 => {
            // a sessionless body the router must inspect past its limit
            let mut body = br#"{"jsonrpc":"2.0","params":{"pad":""#.to_vec();
            body.resize(body.len() + max_inspect, b'x');
            body.extend_from_slice(br#""},"method":"initialize","id":1}"#);
            post("/mcp", "", &body)
        }
        10 => format!("{sid}\r\n").into_bytes(),
        11 => {
            let n = u.int_in_range(0..=200usize)?;
            u.bytes(n)?.to_vec()
        }
        // Requests that read two ways; the session-reading invariant (`check_routed`)
        // holds whatever the router makes of them.
        12 => {
            let other = format!("m{}", u.int_in_range(0..=40u8)?);
            post(
                "/mcp",
                &format!("Mcp-Session-Id: {sid}\r\nmcp-session-id: {other}\r\n"),
                &body_for(u, method)?,
            )
        }
        13 => {
            let other = format!("m{}", u.int_in_range(0..=40u8)?);
            let name = ["sessionId", "session_id", "session%5Fid", "session%49d"]
                [u.int_in_range(0..=3usize)?];
            post(
                &format!("/messages?{name}={other}"),
                &format!("Mcp-Session-Id: {sid}\r\n"),
                &body_for(u, method)?,
            )
        }
        14 => {
            let other = format!("m{}", u.int_in_range(0..=40u8)?);
            let query = [
                format!("sessionId={sid}&session_id={other}"),
                format!("sessionId={sid}&sessionId={other}"),
                format!("session%5Fid={other}&sessionId={sid}"),
                format!("sessionId={sid}%zz"),
            ][u.int_in_range(0..=3usize)?]
            .clone();
            post(&format!("/messages?{query}"), "", &body_for(u, method)?)
        }
        15 => {
            let nominated = ["Mcp-Session-Id", "MCP-Protocol-Version", "Last-Event-ID", "Host"]
                [u.int_in_range(0..=3usize)?];
            post(
                "/mcp",
                &format!("Connection: keep-alive, {nominated}\r\nMcp-Session-Id: {sid}\r\n"),
                &body_for(u, method)?,
            )
        }
        16 => {
            let version = ["2026-07-28", "2025-06-18", "2099-01-01"][u.int_in_range(0..=2usize)?];
            let path = if u.ratio(1, 2)? {
                format!("/messages?sessionId={sid}")
            } else {
                "/mcp".to_string()
            };
            let twice = if u.ratio(1, 3)? {
                "MCP-Protocol-Version: 2025-06-18\r\n"
            } else {
                ""
            };
            post(
                &path,
                &format!("MCP-Protocol-Version: {version}\r\n{twice}Mcp-Session-Id: {sid}\r\n"),
                &body_for(u, method)?,
            )
        }
        17 => {
            let path = ["/../m/mcp", "/%2e%2E/mcp", "/a/./mcp", "/..%2fmcp", "/..;/mcp", "/v1.2/mcp"]
                [u.int_in_range(0..=5usize)?];
            post(path, &format!("Mcp-Session-Id: {sid}\r\n"), &body_for(u, method)?)
        }
        18 => format!(
            "GET /sse?sessionId={sid} HTTP/{version}\r\n{close}Accept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n"
        )
        .into_bytes(),
        _ => {
            let n = u.int_in_range(0..=200usize)?;
            u.bytes(n)?.to_vec()
        }
    })
}

fn upstream_bytes(u: &mut Unstructured<'_>, idx: usize) -> Result<Vec<u8>> {
    let sid = format!("m{idx}");
    let close = if u.ratio(1, 6)? {
        "Connection: close\r\n"
    } else {
        ""
    };
    let json = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\n{close}{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let ok = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
    let mut v = match u.int_in_range(0..=10u8)? {
        0 => json("200 OK", &format!("Mcp-Session-Id: {sid}\r\n"), ok),
        1 => format!(
            "HTTP/1.1 200 OK\r\n{close}Mcp-Session-Id: {sid}\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\ndata: {ok}\n\n\r\n0\r\n\r\n",
            ok.len() + 8
        )
        .into_bytes(),
        2 => json("404 Not Found", "", r#"{"error":"gone"}"#),
        3 => b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_vec(),
        4 => json("500 Internal Server Error", "", "{}"),
        5 => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nevent: endpoint\ndata: /messages?sessionId={sid}\n\n"
        )
        .into_bytes(),
        6 => format!(
            "HTTP/1.1 200 OK\r\n{close}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{ok}\r\n0\r\n\r\n",
            ok.len()
        )
        .into_bytes(),
        7 => {
            let mut v = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            v.extend(json("200 OK", "", ok));
            v
        }
        8 => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        9 => b"data: more\n\n".to_vec(),
        _ => {
            let n = u.int_in_range(0..=200usize)?;
            u.bytes(n)?.to_vec()
        }
    };
    if u.ratio(1, 6)? {
        v.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
    Ok(v)
}

fn read_cuts(u: &mut Unstructured<'_>, len: usize) -> Result<Vec<usize>> {
    let n = u.int_in_range(0..=6usize)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(u.int_in_range(0..=len)?);
    }
    v.sort_unstable();
    Ok(v)
}

impl Script {
    fn read(u: &mut Unstructured<'_>, hostile: bool) -> Result<Script> {
        let backends = u.int_in_range(2..=3usize)?;
        let max_inspect = [64, 300, 4096][u.int_in_range(0..=2usize)?];
        let max_head = [256, 4096][u.int_in_range(0..=1usize)?];
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            let c = u.int_in_range(0..=MAX_CONNS - 1)?;
            let op = match u.int_in_range(0..=15u8)? {
                0 => Op::Open,
                1..=4 => {
                    let bytes = client_bytes(u, max_inspect, hostile)?;
                    let cuts = read_cuts(u, bytes.len())?;
                    Op::Client { c, bytes, cuts }
                }
                5 => Op::ClientEof { c },
                6 | 7 => Op::Connect {
                    c,
                    how: u.int_in_range(0..=5u8)?,
                },
                8..=10 => {
                    let bytes = upstream_bytes(u, ops.len())?;
                    let cuts = read_cuts(u, bytes.len())?;
                    Op::Upstream { c, bytes, cuts }
                }
                11 => Op::UpstreamEof { c },
                12 => Op::StoreMode(u.int_in_range(0..=2u8)?),
                13 => Op::StoreFlush,
                14 => Op::Advance(
                    [10, 500, 1_100, 2_100, 3_100, 5_100, 11_000, 60_000]
                        [u.int_in_range(0..=7usize)?],
                ),
                _ => {
                    if u.ratio(1, 2)? {
                        Op::Expire
                    } else {
                        Op::Shutdown { c }
                    }
                }
            };
            ops.push(op);
        }
        Ok(Script {
            backends,
            max_inspect,
            max_head,
            ops,
        })
    }

    fn config(&self) -> Config {
        let mut c = Config::default();
        for i in 0..self.backends {
            c.backends.push(
                Backend::parse(
                    &format!("http://10.0.0.{}:8080", i + 1),
                    Some(&format!("b{i}")),
                )
                .expect("valid backend url"),
            );
        }
        c.session_ttl = Duration::from_secs(10);
        c.max_inspect_body = self.max_inspect;
        c.http = HttpLimits {
            max_head: self.max_head,
            max_headers: 32,
        };
        c.timeouts.header = Duration::from_secs(2);
        c.timeouts.client_idle = Duration::from_secs(20);
        c.timeouts.connect = Duration::from_secs(1);
        c.timeouts.response = Duration::from_secs(5);
        c.timeouts.body_idle = Duration::from_secs(3);
        c.backoff_initial = Duration::from_secs(1);
        c.backoff_max = Duration::from_secs(4);
        c.expiry_batch = 4;
        c.connect_attempts = 2;
        c
    }
}

/// What one connection did, compared between the two runs.
#[derive(Debug, Default, PartialEq, Eq)]
struct Trace {
    client: Vec<u8>,
    /// Bytes written upstream, one entry per connection asked for.
    upstream: Vec<Vec<u8>>,
    /// Every output other than bytes and session events, in order.
    other: Vec<String>,
    /// Session events, in order.
    sessions: Vec<String>,
}

/// What the checks know of one connection, from the simulator's log.
#[derive(Default)]
struct C {
    /// Every byte the client sent before its end of stream.
    client_in: Vec<u8>,
    client_eof: bool,
    /// The backend of the open upstream connection.
    connected: Option<BackendId>,
    /// The routed request of the current upstream connection was checked.
    head_checked: bool,
    /// The session of the last store lookup not yet followed by a connect or an answer.
    looked_up: Option<SessionKey>,
    /// The session the router routed the current upstream request by (the lookup
    /// that led to its connect), `None` when it routed without one.
    routed_by: Option<SessionKey>,
    store_failed: bool,
    trace: Trace,
    /// (end offset in `trace.client`, sequence number) of every client write.
    client_marks: Vec<(usize, u64)>,
}

/// One run of a script: the simulator, and what the checks know.
struct World {
    sim: Sim,
    conns: Vec<C>,
    whole: bool,
    max_inspect: usize,
    /// Backend each session id was recorded for, and when (last insert).
    owner: HashMap<SessionKey, (BackendId, u64)>,
    /// Orders store answers and client writes.
    seq: u64,
}

impl World {
    fn new(s: &Script, epoch: Instant, whole: bool) -> World {
        let cfg = s.config();
        let mut sim = Sim::at(cfg.clone(), epoch);
        sim.store = MemStore::new(cfg.session_ttl, cfg.expiry_batch, epoch);
        sim.read_size = Some(READ);
        sim.log = Some(Vec::new());
        World {
            sim,
            conns: Vec::new(),
            whole,
            max_inspect: s.max_inspect,
            owner: HashMap::new(),
            seq: 0,
        }
    }

    /// Check what the simulator did since the last call.
    fn observe(&mut self) {
        let log = std::mem::take(self.sim.log.as_mut().expect("logging"));
        for step in log {
            self.seq += 1;
            match step {
                // the simulator's first connection before the script opened it
                Step::Out(i, _) | Step::Stored(i, ..) if i >= self.conns.len() => {}
                Step::Out(i, o) => self.carried(i, o),
                Step::Stored(i, op, r) => {
                    self.conns[i].store_failed |= r == StoreReply::Unavailable;
                    if let (StoreOp::Insert(k, rec), StoreReply::Inserted(true)) = (op, r) {
                        self.owner.insert(k, (rec.backend, self.seq));
                    }
                }
            }
        }
        for i in 0..self.conns.len() {
            self.sim.select(i);
            self.check_bounds();
        }
    }

    fn carried(&mut self, i: usize, o: Output) {
        let c = &mut self.conns[i];
        match o {
            Output::ToClient(b) => {
                // a lookup answered locally (404, 503) routed nothing
                c.looked_up = None;
                c.trace.client.extend_from_slice(&b);
                c.client_marks.push((c.trace.client.len(), self.seq));
            }
            Output::ToUpstream(b) => {
                let seg = c.trace.upstream.last_mut().expect("a connect came first");
                seg.extend_from_slice(&b);
                self.check_routed(i);
            }
            Output::Connect { backend, fresh } => {
                c.trace.other.push(format!("connect {} {fresh}", backend.0));
                c.trace.upstream.push(Vec::new());
                // A lookup leads to this connect; a fresh connect without one is the
                // resend of the same request on a new connection.
                match c.looked_up.take() {
                    Some(k) => c.routed_by = Some(k),
                    None if !fresh => c.routed_by = None,
                    None => {}
                }
                c.connected = None;
                c.head_checked = false;
            }
            Output::ReleaseUpstream { .. } => {
                // Whether the connection is clean depends on whether bytes the backend
                // sent after its response had arrived yet: timing, not a decision (the
                // driver's pool drops a pooled connection that turns readable).
                c.trace.other.push("release".into());
                c.connected = None;
                check_one_request(c.trace.upstream.last());
            }
            Output::Store(op) => {
                c.trace.other.push(format!("{op:?}"));
                if let StoreOp::Get(k) = &op {
                    c.looked_up = Some(k.clone());
                }
                if let StoreOp::Insert(_, rec) = &op {
                    // a minted session is recorded for the backend that minted it
                    assert_eq!(
                        Some(rec.backend),
                        c.connected,
                        "recorded for another backend"
                    );
                }
            }
            Output::CloseClient => c.trace.other.push("close".into()),
            // Session events follow store replies, whose timing relative to the other
            // outputs is the store's: compared as their own sequence.
            Output::Event(
                e @ (Event::SessionStarted { .. }
                | Event::SessionEnded { .. }
                | Event::DuplicateSession { .. }
                | Event::StoreUnavailable),
            ) => c.trace.sessions.push(format!("{e:?}")),
            Output::Event(e) => c.trace.other.push(format!("{e:?}")),
        }
    }

    /// Memory the selected connection holds stays within its limits.
    fn check_bounds(&self) {
        let s = &self.sim;
        let [pending, retained, hold, waiting] = s.conn.held();
        let client_cap = s.router.config().http.max_head.max(64 * 1024) + READ;
        assert!(
            pending <= self.max_inspect + client_cap,
            "{pending} request body bytes held (limit {})",
            self.max_inspect
        );
        assert!(
            retained <= 64 * 1024,
            "{retained} bytes retained for a resend"
        );
        assert!(hold <= 64 * 1024 + READ, "{hold} response bytes held");
        assert!(
            waiting <= s.ops.len() + 8,
            "{waiting} store ops outstanding"
        );
        assert!(s.bufs.client.len() <= client_cap);
        assert!(s.bufs.upstream.len() <= 64 * 1024 + READ);
    }

    /// A request forwarded for a session goes to the backend that session was
    /// recorded for, and only for a session that was recorded.
    fn check_routed(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.head_checked {
            return;
        }
        let seg = c.trace.upstream.last().expect("segment");
        let mut buf = BytesMut::from(&seg[..]);
        let mut head = RequestHead::default();
        match parse_request(&mut buf, &BIG, &mut head) {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => panic!("the core wrote an invalid request head upstream: {e:?}"),
        }
        c.head_checked = true;
        // One reading: the sessions the backend is told are exactly the one the router
        // looked up and routed by, or none when it routed without one.
        let told: Vec<String> = told_sessions(&head)
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        match &c.routed_by {
            Some(k) => assert!(
                !told.is_empty() && told.iter().all(|t| t.as_bytes() == k.as_bytes()),
                "routed by {k}, the backend is told {told:?}"
            ),
            None => assert!(
                told.is_empty(),
                "routed without a session, the backend is told {told:?}"
            ),
        }
        let Some(key) = c.routed_by.clone() else {
            return;
        };
        let b = c.connected.expect("connected");
        match self.owner.get(&key) {
            Some((owner, _)) => assert_eq!(*owner, b, "session {key} sent to another backend"),
            None => panic!("request of never-recorded session {key} forwarded"),
        }
    }

    /// An op on one client connection (none when none is open).
    fn apply(&mut self, op: &Op) {
        let n = self.conns.len();
        let (Op::Client { c, .. }
        | Op::ClientEof { c }
        | Op::Connect { c, .. }
        | Op::Upstream { c, .. }
        | Op::UpstreamEof { c }
        | Op::Shutdown { c }) = op
        else {
            return self.global(op, n);
        };
        if n == 0 {
            return;
        }
        self.sim.select(c % n);
        let (c, s) = (&mut self.conns[c % n], &mut self.sim);
        let parts = match op {
            Op::Client { bytes, cuts, .. } | Op::Upstream { bytes, cuts, .. } if !self.whole => {
                super::pieces(bytes, cuts)
            }
            Op::Client { bytes, .. } | Op::Upstream { bytes, .. } => vec![&bytes[..]],
            _ => Vec::new(),
        };
        match op {
            Op::Client { .. } if !c.client_eof => {
                for p in parts {
                    c.client_in.extend_from_slice(p);
                    s.send(p);
                }
            }
            Op::ClientEof { .. } if !c.client_eof => {
                c.client_eof = true;
                s.client_eof();
            }
            Op::Connect { how, .. } if s.connect_pending && *how <= 3 => {
                c.connected = s.connects.last().map(|b| BackendId(b.0));
                s.connect_ok(*how == 3);
            }
            Op::Connect { .. } if s.connect_pending => s.connect_fail(),
            Op::Upstream { .. } => {
                for p in parts {
                    if !s.connected {
                        break;
                    }
                    s.reply(p);
                }
            }
            Op::UpstreamEof { .. } if s.connected || s.connect_pending => s.upstream_eof(),
            Op::Shutdown { .. } => {
                s.conn.shutdown();
                s.drain();
            }
            _ => {}
        }
        self.observe();
    }

    /// An op on the whole router: a new connection, the store, the clock.
    fn global(&mut self, op: &Op, n: usize) {
        let s = &mut self.sim;
        match op {
            // the simulator's first connection, fresh
            Op::Open if n == 0 => s.reconnect(),
            Op::Open if n < MAX_CONNS => _ = s.open(),
            Op::StoreMode(0) => s.auto_store = true,
            Op::StoreMode(1) => s.auto_store = false,
            Op::StoreMode(_) => (s.fail_next, s.auto_store) = (true, true),
            Op::Expire => s.expire(),
            _ => {}
        }
        if matches!(op, Op::StoreFlush | Op::StoreMode(0) | Op::Advance(_)) {
            self.sim.flush_store();
        }
        if let Op::Advance(ms) = op {
            self.sim.advance(Duration::from_millis(*ms));
            self.sim.expire();
        }
        if *op == Op::Open && n < MAX_CONNS {
            self.conns.push(C::default());
        }
        self.observe();
    }

    /// After everything settled: every session the client saw end (a 404 to one of its
    /// requests, or its DELETE answered 2xx) has no record left.
    fn check_ended(&self) {
        for c in &self.conns {
            if c.store_failed {
                continue;
            }
            for (key, status, method, at) in exchanges(&c.client_in, &c.trace.client) {
                let ended =
                    status == 404 || (method == Method::Delete && (200..300).contains(&status));
                if !ended {
                    continue;
                }
                // when the client got that answer
                let seen = c
                    .client_marks
                    .iter()
                    .find(|(end, _)| *end > at)
                    .map_or(u64::MAX, |m| m.1);
                let recorded_later = self.owner.get(&key).is_some_and(|(_, t)| *t > seen);
                if !recorded_later {
                    assert!(
                        self.sim.store.peek(key.as_str()).is_none(),
                        "record of {key} outlived its end ({status} to {method:?})"
                    );
                }
            }
        }
    }
}

const BIG: HttpLimits = HttpLimits {
    max_head: 1 << 20,
    max_headers: 128,
};

/// Each upstream connection carries exactly one framed request, nothing after it.
fn check_one_request(seg: Option<&Vec<u8>>) {
    let Some(seg) = seg else {
        return;
    };
    let mut buf = BytesMut::from(&seg[..]);
    let mut head = RequestHead::default();
    if parse_request(&mut buf, &BIG, &mut head) != Ok(true) {
        return;
    }
    let mut dec = BodyDecoder::new(head.body, 4096);
    let n = dec
        .decode(&buf, &mut |_| {})
        .expect("the core forwarded an invalid body framing");
    assert_eq!(n, buf.len(), "bytes after the forwarded request: smuggled");
}

/// Every session id a backend could read in a forwarded request: each `Mcp-Session-Id`
/// field, and for a POST (a legacy message) each query parameter whose percent-decoded
/// name is `sessionId` or `session_id`, with its value decoded (or as is when the escape
/// is malformed, as Node and Python keep it).
fn told_sessions(head: &RequestHead) -> Vec<Vec<u8>> {
    fn decode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (s[i], hex) {
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }
    let mut told: Vec<Vec<u8>> = head
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"mcp-session-id"))
        .map(|(_, v)| v.trim_ascii().to_vec())
        .collect();
    if head.method == Method::Post {
        for param in head.query().unwrap_or(b"").split(|&b| b == b'&') {
            let (name, value) = match param.iter().position(|&b| b == b'=') {
                Some(eq) => (&param[..eq], &param[eq + 1..]),
                None => (param, &b""[..]),
            };
            let name = decode(name);
            if name == b"sessionId" || name == b"session_id" {
                told.push(decode(value));
            }
        }
    }
    told
}

/// The session a forwarded request is routed by, as the router reads it.
fn session_of(head: &RequestHead, max: usize) -> Option<SessionKey> {
    if head
        .header("mcp-protocol-version")
        .is_some_and(is_stateless_version)
    {
        return None;
    }
    if let Some(v) = head.header("mcp-session-id") {
        return SessionKey::new(v, max);
    }
    if head.method == Method::Post {
        let q = head.query().and_then(query_session_id)?;
        return SessionKey::new(&q, max);
    }
    None
}

/// Pair the requests the client sent with the final responses it got, in order:
/// (session, status, method) for each request that named a session. Also checks that
/// what the core wrote to the client is a well-formed sequence of responses.
fn exchanges(sent: &[u8], got: &[u8]) -> Vec<(SessionKey, u16, Method, usize)> {
    let mut reqs = Vec::new();
    let mut buf = BytesMut::from(sent);
    loop {
        let mut head = RequestHead::default();
        if parse_request(&mut buf, &BIG, &mut head) != Ok(true) {
            break;
        }
        let mut dec = BodyDecoder::new(head.body, 4096);
        let Ok(n) = dec.decode(&buf, &mut |_| {}) else {
            reqs.push((session_of(&head, 256), head.method));
            break;
        };
        let _ = buf.split_to(n);
        reqs.push((session_of(&head, 256), head.method));
        if !dec.is_done() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut buf = BytesMut::from(got);
    let mut k = 0;
    while !buf.is_empty() {
        let at = got.len() - buf.len();
        let method = reqs.get(k).map_or(Method::Get, |r| r.1);
        let mut head = ResponseHead::default();
        match parse_response(&mut buf, &BIG, method, &mut head) {
            Ok(true) => {}
            Ok(false) => panic!("the core wrote a partial response head to the client"),
            Err(e) => panic!("the core wrote an invalid response head to the client: {e:?}"),
        }
        if head.is_interim() {
            continue;
        }
        if let Some((Some(key), m)) = reqs.get(k) {
            out.push((key.clone(), head.status, *m, at));
        }
        k += 1;
        let mut dec = BodyDecoder::new(head.body, 4096);
        let n = dec
            .decode(&buf, &mut |_| {})
            .expect("the core wrote an invalid response body framing");
        let _ = buf.split_to(n);
        if head.body == BodyKind::Close || !dec.is_done() {
            break;
        }
    }
    out
}

fn run(s: &Script, epoch: Instant, whole: bool) -> (Vec<Trace>, usize) {
    let mut w = World::new(s, epoch, whole);
    for op in &s.ops {
        w.apply(op);
    }
    w.sim.flush_store();
    w.observe();
    w.check_ended();
    let records = w.sim.store.len();
    (w.conns.into_iter().map(|c| c.trace).collect(), records)
}

/// The whole core under an operation sequence: new connections, request bytes in
/// arbitrary splits, backend responses and failures, store replies now, delayed or
/// unavailable, time advances, idle expiries, shutdowns. Asserts that a request of a
/// session goes only to that session's backend; that a session's record is gone once
/// the client saw it end; that buffers and queues stay within the configured limits;
/// that everything written either way is well-formed HTTP, one request per upstream
/// connection; that no deadline spins; and that the same bytes split differently give
/// the same outputs.
pub fn session_sequence(data: &[u8]) {
    sequence(data, false);
}

/// [`session_sequence`] with hostile requests in the mix: two `Mcp-Session-Id` fields, a
/// legacy query id beside a header id (agreeing or not, under every parameter
/// spelling), a query naming a session twice or with a malformed escape, `Connection`
/// nominating the fields the router reads, stateless-era versions beside session ids,
/// dot segments. Whatever a client sends, the session the router routes by is the
/// session the backend is told (and none when it routes without one): checked on every
/// forwarded request head.
pub fn session_reading(data: &[u8]) {
    sequence(data, true);
}

fn sequence(data: &[u8], hostile: bool) {
    let mut u = Unstructured::new(data);
    let Ok(script) = Script::read(&mut u, hostile) else {
        return;
    };
    if std::env::var_os("MCP_FUZZ_DEBUG").is_some() {
        for op in &script.ops {
            match op {
                Op::Client { c, bytes, cuts } | Op::Upstream { c, bytes, cuts } => eprintln!(
                    "{} c{c} cuts {cuts:?} {:?}",
                    if matches!(op, Op::Client { .. }) {
                        "client"
                    } else {
                        "upstream"
                    },
                    String::from_utf8_lossy(bytes)
                ),
                other => eprintln!("{other:?}"),
            }
        }
    }
    let epoch = Instant::now();
    let split = run(&script, epoch, false);
    let whole = run(&script, epoch, true);
    assert_eq!(split.1, whole.1, "store size depends on splits");
    for (a, b) in split.0.iter().zip(&whole.0) {
        assert_eq!(a.other, b.other, "decisions depend on how bytes were split");
        assert_eq!(a.sessions, b.sessions, "session events depend on splits");
        assert_eq!(a.upstream, b.upstream, "upstream bytes depend on splits");
        if a.client != b.client {
            // An aborted response (the connection closed mid-stream) may stop at a
            // different byte: what had been relayed depends on the reads, so only
            // then may one side be a prefix of the other.
            let (short, long) = if a.client.len() < b.client.len() {
                (&a.client, &b.client)
            } else {
                (&b.client, &a.client)
            };
            let aborted = a.other.iter().any(|o| o == "close");
            assert!(
                aborted && long.starts_with(short),
                "client bytes depend on splits:\n{:?}\n{:?}",
                String::from_utf8_lossy(&a.client),
                String::from_utf8_lossy(&b.client)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tools/call` POST with `fields`; when they name `Mcp-Method` (a well-formed
    /// 2026-07-28 request), the body carries the tool name and the `_meta` version the
    /// mirrored headers are checked against.
    fn post(path: &str, fields: &str) -> Vec<u8> {
        let body = if fields.contains("Mcp-Method") {
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#
        } else {
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: r\r\n{fields}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// The session-reading invariant over scripted hostile requests against an
    /// established session `s1` (the fuzz target finds such scripts only rarely): each
    /// request is either refused or forwarded telling the backend exactly the session
    /// it was routed by. Weakening any of the router's checks fails this test.
    #[test]
    fn hostile_requests_against_a_live_session_keep_one_reading() {
        let ok = b"HTTP/1.1 200 OK\r\nMcp-Session-Id: s1\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        let mut ops = vec![
            Op::Open,
            Op::Client {
                c: 0,
                bytes: post("/mcp", "").replace_method("initialize"),
                cuts: vec![],
            },
            Op::Connect { c: 0, how: 0 },
            Op::Upstream {
                c: 0,
                bytes: ok.clone(),
                cuts: vec![],
            },
        ];
        for fields_path in [
            ("/mcp", "Mcp-Session-Id: s1\r\nMcp-Session-Id: s2\r\n"),
            ("/mcp", "Mcp-Session-Id: s1\r\nMcp-Session-Id: s1\r\n"),
            ("/messages?sessionId=s2", "Mcp-Session-Id: s1\r\n"),
            ("/messages?session%5Fid=s2", "Mcp-Session-Id: s1\r\n"),
            ("/messages?sessionId=s1&session_id=s2", ""),
            ("/messages?sessionId=s1", "Mcp-Session-Id: s1\r\n"),
            ("/messages?sessionId=s1", "MCP-Protocol-Version: 2026-07-28\r\n"),
            (
                "/mcp",
                "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: t\r\nMcp-Session-Id: s1\r\n",
            ),
            ("/mcp", "Connection: Mcp-Session-Id\r\nMcp-Session-Id: s1\r\n"),
            ("/mcp", "Connection: mcp-protocol-version\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Session-Id: s1\r\n"),
            ("/mcp", "MCP-Protocol-Version: 2026-07-28\r\nMCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: s1\r\n"),
            ("/../mcp", "Mcp-Session-Id: s1\r\n"),
            ("/mcp", "Mcp-Session-Id: s1\r\n"),
        ]
        .map(|(p, f)| post(p, f))
        {
            ops.push(Op::Client {
                c: 0,
                bytes: fields_path,
                cuts: vec![],
            });
            ops.push(Op::Connect { c: 0, how: 0 });
            ops.push(Op::Upstream {
                c: 0,
                bytes: ok.clone(),
                cuts: vec![],
            });
        }
        let script = Script {
            backends: 2,
            max_inspect: 4096,
            max_head: 4096,
            ops,
        };
        let (traces, _) = run(&script, Instant::now(), true);
        let client = String::from_utf8_lossy(&traces[0].client);
        // the initialize, the agreeing pair, the stateless one and the plain one were served
        assert_eq!(client.matches("HTTP/1.1 200 ").count(), 4, "{client}");
        assert_eq!(client.matches("HTTP/1.1 400 ").count(), 10, "{client}");
    }

    trait ReplaceMethod {
        fn replace_method(self, m: &str) -> Vec<u8>;
    }
    impl ReplaceMethod for Vec<u8> {
        fn replace_method(self, m: &str) -> Vec<u8> {
            String::from_utf8(self)
                .unwrap()
                .replace("tools/call", m)
                .into_bytes()
        }
    }
}
