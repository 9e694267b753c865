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

/// The child mode a control byte picks (its low bit).
fn mode_of(b: u8) -> ChildMode {
    if b & 1 == 0 {
        ChildMode::PerSession
    } else {
        ChildMode::Shared
    }
}

/// Run one sequence; panics when an invariant fails.
pub fn stdio_bridge(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let cfg = BridgeConfig {
        mode: mode_of(mode),
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

/// Canned request heads for [`stdio_http`]; `{sid}` and `{len}` are filled in.
const HEADS: &[&str] = &[
    "POST /mcp HTTP/1.1\r\nHost: x\r\nAccept: application/json, text/event-stream\r\nContent-Length: {len}\r\n{sid}\r\n",
    "POST /mcp HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\n{sid}\r\n",
    "POST /mcp HTTP/1.0\r\nContent-Length: {len}\r\n{sid}\r\n",
    "GET /mcp HTTP/1.1\r\nAccept: text/event-stream\r\n{sid}\r\n",
    "GET /sse HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
    "DELETE /mcp HTTP/1.1\r\n{sid}\r\n",
    "POST /mcp HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {len}\r\n{sid}\r\n",
];

/// The `stdio_http` target: one client connection of the bridge, its bytes split at
/// any point, driven through [`StdioConn`](crate::stdio::http::StdioConn) into a
/// [`Bridge`](crate::stdio::Bridge) (through [`BridgeSim`], which checks the bridge's
/// contract), with partial writes, child lines, timeouts and the client's EOF in
/// between.
///
/// Invariants: nothing panics; the connection reports a request only when the bridge
/// can take one, and an exchange gone at most once and only after it started; a closed
/// connection takes no bytes and reports nothing more; every byte the client is sent
/// parses as a sequence of HTTP/1.1 responses (a 1xx, then a final response with a
/// well-framed body), at most one final response per request plus one refusal.
pub fn stdio_http(data: &[u8]) {
    use crate::http::{parse_response, BodyDecoder, HttpLimits, ResponseHead};
    use crate::stdio::http::{ConnEvent, ConnLimits, ExchangeOut, StdioConn};
    use bytes::BytesMut;
    use std::collections::VecDeque;
    use std::sync::Arc;

    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let cfg = BridgeConfig {
        mode: mode_of(mode),
        max_children: 2,
        ..BridgeConfig::default()
    };
    let mut st = BridgeSim::new(cfg);
    let lim = Arc::new(ConnLimits {
        http: HttpLimits {
            max_head: 512,
            max_headers: 16,
        },
        max_body: 600,
        header: Duration::from_secs(2),
        body_idle: Duration::from_secs(3),
        idle: Duration::from_secs(5),
        send: Duration::from_secs(7),
        identity: Default::default(),
        trusted: Vec::new(),
    });
    let mut conn = StdioConn::new(lim, None, st.now);
    let mut queue: VecDeque<ExchangeOut> = VecDeque::new();
    let mut current = None;
    let (mut started, mut gone) = (Vec::new(), Vec::new());
    let mut sent = Vec::new();
    let mut requests = 0usize;
    let mut saw_head_method = false;
    let mut counter = 0u8;

    // route the bridge's outputs: this connection's exchange gets its own, bounded
    let route = |outs: Vec<crate::stdio::BridgeOutput>,
                 current: Option<crate::stdio::ExchangeId>,
                 queue: &mut VecDeque<ExchangeOut>| {
        for o in outs {
            if let Ok((x, out)) = o.into_exchange() {
                if Some(x) == current {
                    queue.push_back(out);
                }
            }
        }
    };

    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let arg = |i: usize| tail.get(i).copied().unwrap_or(0);
        let mut feed: Vec<u8> = Vec::new();
        match op % 7 {
            0 => {
                // raw bytes
                let n = usize::from(arg(0) % 64).min(rest.len().saturating_sub(1));
                feed.extend_from_slice(rest.get(1..1 + n).unwrap_or_default());
                rest = rest.get(1 + n..).unwrap_or_default();
            }
            1 | 2 => {
                let sid = st
                    .sids
                    .get(usize::from(arg(1)) % (st.sids.len() + 1))
                    .map(|s| format!("Mcp-Session-Id: {}\r\n", String::from_utf8_lossy(s)))
                    .unwrap_or_default();
                let body = BODIES[usize::from(arg(2)) % BODIES.len()];
                let head = HEADS[usize::from(arg(0)) % HEADS.len()];
                let chunked = head.contains("chunked");
                let has_body = head.starts_with("POST");
                let h = head
                    .replace("{sid}", &sid)
                    .replace("{len}", &body.len().to_string());
                feed.extend_from_slice(h.as_bytes());
                if has_body {
                    if chunked {
                        let mut b = BytesMut::new();
                        crate::http::write_chunk(&mut b, body);
                        feed.extend_from_slice(&b);
                        feed.extend_from_slice(crate::http::LAST_CHUNK);
                    } else {
                        feed.extend_from_slice(body);
                    }
                }
                rest = rest.get(3..).unwrap_or_default();
            }
            3 => {
                let n = usize::from(arg(0)) * 17;
                let k = n.min(conn.transmit().len());
                sent.extend_from_slice(&conn.transmit()[..k]);
                conn.advance(k, st.now);
                rest = rest.get(1..).unwrap_or_default();
            }
            4 => {
                let outs = st.advance(Duration::from_millis(u64::from(arg(0)) * 100));
                route(outs, current, &mut queue);
                conn.handle_timeout(st.now);
                rest = rest.get(1..).unwrap_or_default();
            }
            5 => {
                if let Some(&c) = st.live.iter().next() {
                    let line = LINES[usize::from(arg(0)) % LINES.len()];
                    let outs = st.child_line(c, line);
                    route(outs, current, &mut queue);
                }
                rest = rest.get(1..).unwrap_or_default();
            }
            _ => {
                if arg(0) & 7 == 0 && conn.read_buf().is_some() {
                    conn.handle_read(0, st.now);
                }
                rest = rest.get(1..).unwrap_or_default();
            }
        }
        // the client's bytes, in up to three reads, as far as the connection takes them
        let cut = [usize::from(op) % (feed.len() + 1), feed.len()];
        let mut at = 0;
        for c in cut {
            if c <= at {
                continue;
            }
            let Some(buf) = conn.read_buf() else { break };
            buf.extend_from_slice(&feed[at..c]);
            conn.handle_read(c - at, st.now);
            at = c;
        }
        // events and outputs until nothing moves
        loop {
            let mut moved = false;
            while let Some(ev) = conn.poll_event() {
                moved = true;
                assert!(
                    !conn.is_closed()
                        || matches!(ev, ConnEvent::Gone(_))
                        || matches!(ev, ConnEvent::Rejected { .. })
                );
                match ev {
                    ConnEvent::Request => {
                        requests += 1;
                        let req = conn.request();
                        saw_head_method |= req.method == Method::Head;
                        counter = counter.wrapping_add(1);
                        let (x, outs) = st.request(&req, &[counter; 32]);
                        conn.started(x);
                        started.push(x);
                        current = Some(x);
                        queue.clear();
                        route(outs, current, &mut queue);
                    }
                    ConnEvent::Gone(x) => {
                        assert!(started.contains(&x), "gone before it started");
                        assert!(!gone.contains(&x), "gone twice");
                        gone.push(x);
                        let outs = st.exchange_closed(x);
                        route(outs, None, &mut queue);
                        current = None;
                        queue.clear();
                    }
                    ConnEvent::Rejected { status, .. } => {
                        assert!((400..600).contains(&status), "refusal {status}");
                    }
                }
            }
            while conn.wants_output() {
                let Some(o) = queue.pop_front() else { break };
                conn.handle_output(o, st.now);
                moved = true;
            }
            if conn.exchange() != current {
                current = conn.exchange();
                queue.clear();
            }
            if !moved {
                break;
            }
        }
        if conn.is_closed() {
            assert!(conn.read_buf().is_none(), "a closed connection reads");
            assert!(conn.poll_event().is_none());
            break;
        }
    }
    sent.extend_from_slice(conn.transmit());
    if saw_head_method {
        return;
    }
    // every byte sent parses as responses
    let mut buf = BytesMut::from(&sent[..]);
    let mut finals = 0usize;
    let limits = HttpLimits::default();
    let mut head = ResponseHead::default();
    while !buf.is_empty() {
        match parse_response(&mut buf, &limits, Method::Post, &mut head) {
            Ok(true) => {}
            Ok(false) => break, // cut short by the end of the run
            Err(e) => panic!(
                "unparsable response bytes: {e:?} in {:?}",
                String::from_utf8_lossy(&sent)
            ),
        }
        if head.status < 200 {
            continue;
        }
        finals += 1;
        let mut dec = BodyDecoder::new(head.body, 4096);
        match dec.decode(&buf, &mut |_| {}) {
            Ok(n) => {
                let _ = buf.split_to(n);
            }
            Err(e) => panic!("badly framed body: {e:?}"),
        }
        if !dec.is_done() {
            break;
        }
    }
    assert!(
        finals <= requests + 1,
        "{finals} responses for {requests} requests"
    );
}
