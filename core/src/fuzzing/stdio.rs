//! The `stdio_bridge` target: whole sequences of HTTP requests, child output lines,
//! child exits, closed and overflowing streams, timeouts and shutdown, fed to one
//! [`Bridge`].
//!
//! Invariants: nothing panics; each session's count of open exchanges and its
//! unattached deadline agree with the exchange table and its requests in flight; live
//! children never exceed `max_children` and every
//! child spawned is killed or reported exited exactly once (no leaked or twice-killed
//! process); an exchange gets at most one complete answer, and nothing is emitted for
//! an exchange after it is complete; after `shutdown` and the timeouts that follow,
//! no session and no child is left.

use crate::http::Method;
use crate::stdio::{Bridge, BridgeConfig, BridgeOutput, ChildId, ChildMode, ExchangeId, Request};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const LINES: &[&[u8]] = &[
    br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"f","version":"1"}}}"#,
    br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    br#"{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"x"}}"#,
    br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#,
    br#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{}}"#,
    br#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#,
    b"not json",
    b"",
];

const BODIES: &[&[u8]] = &[
    br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
    br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":1}}}"#,
    br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    br#"{"jsonrpc":"2.0","id":"s1","result":{"content":[]}}"#,
    br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
    b"{",
];

/// Run one sequence; panics when an invariant fails.
pub fn stdio_bridge(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let cfg = BridgeConfig {
        mode: if mode & 1 == 0 {
            ChildMode::PerSession
        } else {
            ChildMode::Shared
        },
        max_children: 1 + usize::from(mode >> 1 & 3),
        max_sessions: 6,
        max_queue: 3,
        max_inflight: 4,
        idle_ttl: Duration::from_secs(60),
        unattached_timeout: Duration::from_secs(20),
        client_max_sessions: u64::from(mode >> 3 & 3),
        client_session_rate: u32::from(mode >> 5 & 1),
        client_session_burst: 2,
        stream_grace: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        ..BridgeConfig::default()
    };
    let max_children = cfg.max_children;
    let mut b = Bridge::new(cfg);
    let t0 = Instant::now();
    let mut now = t0;
    let mut st = State::default();
    let mut counter = 0u8;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let arg = |i: usize| tail.get(i).copied().unwrap_or(0);
        match op % 8 {
            0..=2 => {
                let method = match arg(0) % 4 {
                    0 | 1 => Method::Post,
                    2 => Method::Get,
                    _ => Method::Delete,
                };
                let path: &[u8] = match arg(1) % 5 {
                    0..=1 => b"/mcp",
                    2 => b"/sse",
                    3 => b"/message",
                    _ => b"/other",
                };
                let sid = st
                    .sids
                    .get(usize::from(arg(2)) % (st.sids.len() + 2))
                    .cloned();
                let sid = sid.or_else(|| (arg(2) & 1 == 1).then(|| b"unknown\x01id".to_vec()));
                let query = sid
                    .as_ref()
                    .filter(|_| path == b"/message")
                    .map(|s| [b"sessionId=".as_slice(), s].concat());
                let accept: &[u8] = if arg(3) & 1 == 0 {
                    b"application/json, text/event-stream"
                } else {
                    b"application/json"
                };
                let body: Vec<u8> = if arg(4) % 9 == 8 {
                    // raw fuzz bytes as the body
                    let n = usize::from(arg(5)).min(rest.len().saturating_sub(6));
                    rest.get(6..6 + n).unwrap_or_default().to_vec()
                } else {
                    BODIES[usize::from(arg(4)) % BODIES.len()].to_vec()
                };
                counter = counter.wrapping_add(1);
                let random = [counter; 32];
                let req = Request {
                    method,
                    path,
                    query: query.as_deref(),
                    session_id: sid.as_deref().filter(|_| path != b"/message"),
                    accept: Some(accept),
                    body: &body,
                    client: crate::ClientId(u64::from(arg(5) % 3)),
                };
                let x = b.handle_request(&req, &random, now);
                st.open.insert(x);
                rest = rest.get(6..).unwrap_or_default();
            }
            3 => {
                if let Some(&c) = st
                    .live
                    .iter()
                    .nth(usize::from(arg(0)) % st.live.len().max(1))
                {
                    let line = if arg(1) % 9 == 8 {
                        let n = usize::from(arg(2)).min(rest.len().saturating_sub(3));
                        rest.get(3..3 + n).unwrap_or_default()
                    } else {
                        LINES[usize::from(arg(1)) % LINES.len()]
                    };
                    b.handle_child_line(c, line, now);
                }
                rest = rest.get(3..).unwrap_or_default();
            }
            4 => {
                if let Some(&c) = st
                    .live
                    .iter()
                    .nth(usize::from(arg(0)) % st.live.len().max(1))
                {
                    b.handle_child_exit(c, "exit status 1", now);
                    st.exited.insert(c);
                }
                rest = rest.get(1..).unwrap_or_default();
            }
            5 => {
                if let Some(&x) = st
                    .open
                    .iter()
                    .nth(usize::from(arg(0)) % st.open.len().max(1))
                {
                    if arg(1) & 1 == 0 {
                        b.handle_exchange_closed(x, now);
                        st.open.remove(&x);
                        st.closed.insert(x);
                    } else {
                        b.handle_stream_overflow(x, now);
                    }
                }
                rest = rest.get(2..).unwrap_or_default();
            }
            6 => {
                now += Duration::from_millis(u64::from(arg(0)) * 250);
                b.handle_timeout(now);
                rest = rest.get(1..).unwrap_or_default();
            }
            _ => {
                if arg(0) == 0xff {
                    b.shutdown(now);
                }
                rest = rest.get(1..).unwrap_or_default();
            }
        }
        st.drain(&mut b);
        b.assert_consistent();
        assert!(
            b.child_count() <= max_children,
            "{} children > cap {max_children}",
            b.child_count()
        );
    }
    b.shutdown(now);
    st.drain(&mut b);
    for s in [1, 10, 100, 1000] {
        now += Duration::from_secs(s);
        b.handle_timeout(now);
        st.drain(&mut b);
    }
    assert_eq!(b.session_count(), 0, "sessions left after shutdown");
    assert_eq!(b.child_count(), 0, "children left after shutdown");
    for c in &st.live {
        assert!(
            st.exited.contains(c),
            "child {c:?} spawned and neither killed nor exited"
        );
    }
}

#[derive(Default)]
struct State {
    /// Session ids the bridge minted.
    sids: Vec<Vec<u8>>,
    /// Children spawned and not killed.
    live: HashSet<ChildId>,
    /// Children killed or reported exited.
    exited: HashSet<ChildId>,
    killed: HashMap<ChildId, u32>,
    open: HashSet<ExchangeId>,
    done: HashSet<ExchangeId>,
    /// Closed by the client: what the bridge still says about them is dropped.
    closed: HashSet<ExchangeId>,
}

impl State {
    fn drain(&mut self, b: &mut Bridge) {
        while let Some(o) = b.poll_output() {
            match o {
                BridgeOutput::Respond {
                    exchange, headers, ..
                } => {
                    self.complete(exchange);
                    self.learn(&headers);
                }
                BridgeOutput::StartStream { exchange, headers } => {
                    assert!(!self.done.contains(&exchange), "stream after completion");
                    self.learn(&headers);
                }
                BridgeOutput::Event { exchange, data } => {
                    assert!(!self.done.contains(&exchange), "event after completion");
                    // a legacy endpoint event carries the session id in its URI
                    if let Some(i) = data.windows(10).position(|w| w == b"sessionId=") {
                        let id: Vec<u8> = data[i + 10..]
                            .iter()
                            .take_while(|c| c.is_ascii_graphic() && **c != b'&')
                            .copied()
                            .collect();
                        if !id.is_empty() && !self.sids.contains(&id) && self.sids.len() < 16 {
                            self.sids.push(id);
                        }
                    }
                }
                BridgeOutput::EndStream { exchange } => self.complete(exchange),
                BridgeOutput::Spawn { child, .. } => {
                    assert!(
                        !self.live.contains(&child) && !self.exited.contains(&child),
                        "child id {child:?} reused"
                    );
                    self.live.insert(child);
                }
                BridgeOutput::Kill { child } => {
                    let k = self.killed.entry(child).or_default();
                    *k += 1;
                    assert_eq!(*k, 1, "child {child:?} killed twice");
                    self.exited.insert(child);
                }
                BridgeOutput::ToChild { .. } | BridgeOutput::Log(_) => {}
            }
        }
    }

    fn complete(&mut self, x: ExchangeId) {
        if self.closed.contains(&x) {
            return;
        }
        assert!(self.done.insert(x), "exchange {x:?} completed twice");
        self.open.remove(&x);
    }

    fn learn(&mut self, headers: &[(&'static str, String)]) {
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("mcp-session-id") && self.sids.len() < 16 {
                self.sids.push(v.as_bytes().to_vec());
            }
        }
    }
}
