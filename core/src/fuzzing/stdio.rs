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
use crate::sim::BridgeSim;
use crate::stdio::{BridgeConfig, ChildMode, Request};
use std::time::Duration;

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
    let mut st = BridgeSim::new(cfg);
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
                st.request(&req, &random);
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
                    st.child_line(c, line);
                }
                rest = rest.get(3..).unwrap_or_default();
            }
            4 => {
                if let Some(&c) = st
                    .live
                    .iter()
                    .nth(usize::from(arg(0)) % st.live.len().max(1))
                {
                    st.child_exit(c, "exit status 1");
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
                        st.exchange_closed(x);
                    } else {
                        st.stream_overflow(x);
                    }
                }
                rest = rest.get(2..).unwrap_or_default();
            }
            6 => {
                st.advance(Duration::from_millis(u64::from(arg(0)) * 250));
                rest = rest.get(1..).unwrap_or_default();
            }
            _ => {
                if arg(0) == 0xff {
                    st.shutdown();
                }
                rest = rest.get(1..).unwrap_or_default();
            }
        }
        assert!(
            st.bridge.child_count() <= max_children,
            "{} children > cap {max_children}",
            st.bridge.child_count()
        );
    }
    st.finish();
}
