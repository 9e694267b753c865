//! Deterministic tests of the connection state machine: virtual time, a scripted client
//! and scripted backends, the embedded store. Every routing rule and session-end path.

mod util;

use bytes::BytesMut;
use mcp_router_core::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::*;

/// A 2026-07-28 `tools/call`: the version in `_meta`, the id last.
const MODERN_CALL: &str = r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"get_weather","arguments":{"location":"Seattle, WA","name":"not this one"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"ExampleClient","version":"1.0.0"}}},"id":"req-7"}"#;

/// A 2026-07-28 POST of `body` with the headers mirroring [`MODERN_CALL`], then
/// `extra` (whole header lines).
fn modern(extra: &str, body: &str) -> String {
    modern_with(
        "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: get_weather\r\n",
        extra,
        body,
    )
}

/// A 2026-07-28 POST of `body` with exactly the mirrored headers `mirrored`.
fn modern_with(mirrored: &str, extra: &str, body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{mirrored}{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Initialize a session on whichever backend the router picks; returns that backend.
fn init(h: &mut H, sid: &str) -> u16 {
    init_with(h, sid, INIT)
}

#[test]
fn initialize_records_the_session_and_later_requests_stick() {
    let mut h = H::new(3);
    let b = init(&mut h, "sess-A");
    let up = h.take_upstream();
    assert!(up.starts_with("POST /mcp HTTP/1.1\r\n"), "{up}");
    // the client's Host goes through unchanged (DNS-rebinding checks downstream)
    assert!(up.contains("Host: router\r\n"), "{up}");
    assert!(up.contains("X-Forwarded-Host: router\r\n"), "{up}");
    assert!(up.contains("X-Forwarded-For: 192.0.2.7"), "{up}");
    assert_eq!(
        h.lookup("sess-A"),
        Some(Record {
            backend: BackendId(b),
            era: Era::Streamable,
            client: ClientId::of_addr("192.0.2.7".parse().unwrap()),
        })
    );
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::SessionStarted { backend, .. } if backend.0 == b)));
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::Response { status: 200, backend, .. } if backend.0 == b)));
    assert_eq!(h.router.active_sessions(BackendId(b)), 1);
    // ten more requests, on the same keep-alive connection and on new ones
    for i in 0..10 {
        if i % 2 == 0 {
            h.reconnect();
        }
        h.send(&post("/mcp", Some("sess-A"), CALL));
        assert_eq!(
            h.connects.last().unwrap().0,
            b,
            "request {i} left its backend"
        );
        h.connect_ok(i % 2 == 1);
        assert!(h.take_upstream().contains("Mcp-Session-Id: sess-A"));
        h.reply(&json_ok(
            "",
            r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
        ));
        assert_eq!(status_of(&h.take_client()), 200);
    }
}

#[test]
fn new_sessions_go_to_the_backend_with_fewest_sessions() {
    let mut h = H::new(2);
    let first = init(&mut h, "s1");
    h.reconnect();
    let second = init(&mut h, "s2");
    assert_ne!(first, second);
    // end s1: its backend is now the emptier one, twice in a row
    h.reconnect();
    h.send(b"DELETE /mcp HTTP/1.1\r\nHost: r\r\nMcp-Session-Id: s1\r\n\r\n");
    h.connect_ok(false);
    h.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.reconnect();
    assert_eq!(init(&mut h, "s3"), first);
}

#[test]
fn unknown_session_gets_404_with_the_request_id_and_never_reaches_a_backend() {
    let mut h = H::new(2);
    h.send(&post("/mcp", Some("nope"), CALL));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert!(h.connects.is_empty());
    let v = body_json(&resp);
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(v["error"]["message"], "Session not found");
    assert_eq!(v["id"], "req-7");
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(!h.closed, "keep-alive survives a local 404");
    // a GET for an unknown session: id null
    h.send(b"GET /mcp HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\nMcp-Session-Id: nope\r\n\r\n");
    let v = body_json(&h.take_client());
    assert!(v["id"].is_null());
    assert_eq!(v["error"]["code"], -32001);
}

#[test]
fn unknown_session_with_chunked_body_split_in_pieces_still_echoes_the_id() {
    let mut h = H::new(1);
    h.send(b"POST /mcp HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nMcp-Session-Id: gone\r\n\r\n");
    assert!(h.client.is_empty(), "answered before the id was read");
    let body = CALL.as_bytes();
    h.send(format!("{:x}\r\n", 30).as_bytes());
    h.send(&body[..30]);
    h.send(b"\r\n");
    assert!(h.client.is_empty());
    h.send(format!("{:x}\r\n", body.len() - 30).as_bytes());
    h.send(&body[30..]);
    h.send(b"\r\n0\r\n\r\n");
    let v = body_json(&h.take_client());
    assert_eq!(v["id"], "req-7");
    assert!(h.connects.is_empty());
}

#[test]
fn invalid_session_ids_get_400() {
    for bad in ["has space", &"x".repeat(257)] {
        let mut h = H::new(1);
        h.send(&post("/mcp", Some(bad), CALL));
        let resp = h.take_client();
        assert_eq!(status_of(&resp), 400, "{bad:?}: {resp}");
        assert_eq!(body_json(&resp)["error"]["code"], -32600);
        assert!(h.connects.is_empty());
    }
    // a non-ASCII byte
    let mut h = H::new(1);
    let mut req = post("/mcp", Some("abc"), CALL);
    let pos = req.windows(3).position(|w| w == b"abc").unwrap();
    req[pos] = 0xC3;
    h.send(&req);
    assert_eq!(status_of(&h.take_client()), 400);
}

#[test]
fn requests_without_session_are_load_balanced_and_never_rejected() {
    let mut h = H::new(2);
    let mut seen = Vec::new();
    for _ in 0..4 {
        h.send(&post(
            "/mcp",
            None,
            r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
        ));
        seen.push(h.connects.last().unwrap().0);
        h.connect_ok(false);
        h.reply(&json_ok("", r#"{"jsonrpc":"2.0","id":5,"result":{}}"#));
        assert_eq!(status_of(&h.take_client()), 200);
    }
    assert_eq!(seen, [0, 1, 0, 1]);
    assert!(h.store.is_empty());
}

#[test]
fn stateless_era_ignores_session_header() {
    let mut h = H::new(2);
    let req = modern("Mcp-Session-Id: whatever\r\n", MODERN_CALL);
    h.auto_store = false;
    h.send(req.as_bytes());
    assert!(h.ops.is_empty(), "no store lookup in the stateless era");
    assert_eq!(h.connects.len(), 1);
    h.connect_ok(false);
    // the router did not route by it, so the backend is not told it (issue 12)
    assert!(
        !h.take_upstream().contains("Mcp-Session-Id"),
        "a session id the router ignored is not forwarded"
    );
    // an older version still routes by session
    let mut h = H::new(2);
    let req = String::from_utf8(post("/mcp", Some("whatever"), CALL))
        .unwrap()
        .replacen(
            "\r\n\r\n",
            "\r\nMCP-Protocol-Version: 2025-11-25\r\n\r\n",
            1,
        );
    h.send(req.as_bytes());
    assert_eq!(status_of(&h.take_client()), 404);
}

#[test]
fn delete_2xx_or_404_ends_the_session_5xx_and_transport_errors_keep_it() {
    for (answer, ends) in [
        ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        ("HTTP/1.1 204 No Content\r\n\r\n", true),
        ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", true),
        (
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
    ] {
        let mut h = H::new(2);
        let b = init(&mut h, "s");
        h.send(b"DELETE /mcp HTTP/1.1\r\nHost: r\r\nMcp-Session-Id: s\r\n\r\n");
        h.connect_ok(false);
        h.reply(answer.as_bytes());
        assert_eq!(status_of(&h.take_client()), status_of(answer));
        assert_eq!(h.lookup("s").is_none(), ends, "{answer}");
        assert_eq!(
            h.router.active_sessions(BackendId(b)),
            if ends { 0 } else { 1 }
        );
        if ends {
            let cause = if answer.contains("404") {
                EndCause::BackendNotFound
            } else {
                EndCause::Deleted
            };
            assert_eq!(h.ended(), [cause]);
        }
    }
    // transport error: the backend closes without answering
    let mut h = H::new(1);
    init(&mut h, "s");
    h.send(b"DELETE /mcp HTTP/1.1\r\nHost: r\r\nMcp-Session-Id: s\r\n\r\n");
    h.connect_ok(false);
    h.upstream_eof();
    assert_eq!(status_of(&h.take_client()), 502);
    assert!(h.lookup("s").is_some());
}

#[test]
fn backend_404_on_any_request_drops_the_record_and_passes_the_404_on() {
    let mut h = H::new(2);
    let b = init(&mut h, "s");
    h.send(&post("/mcp", Some("s"), CALL));
    h.connect_ok(false);
    let body =
        r#"{"jsonrpc":"2.0","id":"req-7","error":{"code":-32001,"message":"Session not found"}}"#;
    h.reply(format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404);
    assert!(resp.ends_with(body));
    assert_eq!(h.lookup("s"), None);
    assert_eq!(h.router.active_sessions(BackendId(b)), 0);
    assert_eq!(h.ended(), [EndCause::BackendNotFound]);
    // the next request of that session is answered by the router
    let n = h.connects.len();
    h.send(&post("/mcp", Some("s"), CALL));
    assert_eq!(status_of(&h.take_client()), 404);
    assert_eq!(h.connects.len(), n);
}

#[test]
fn dead_backend_sessions_get_404_and_new_sessions_avoid_it() {
    let mut h = H::new(2);
    let b = init(&mut h, "s");
    h.send(&post("/mcp", Some("s"), CALL));
    h.connect_fail();
    let v = body_json(&h.take_client());
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(v["id"], "req-7", "id recovered from the held body");
    assert_eq!(h.lookup("s"), None);
    assert_eq!(h.ended(), [EndCause::BackendDown]);
    assert!(!h.router.is_up(BackendId(b), h.now));
    // new sessions go to the survivor
    for i in 0..4 {
        h.reconnect();
        assert_ne!(init(&mut h, &format!("n{i}")), b);
    }
    // once the backoff has run out the backend is tried again
    h.now += Duration::from_secs(2);
    assert!(h.router.is_up(BackendId(b), h.now));
}

#[test]
fn a_pinned_session_on_a_backend_marked_down_is_dropped_without_connecting() {
    let mut h = H::new(2);
    let b = init(&mut h, "s");
    h.router.connect_failed(BackendId(b), h.now);
    let n = h.connects.len();
    h.send(&post("/mcp", Some("s"), CALL));
    assert_eq!(status_of(&h.take_client()), 404);
    assert_eq!(h.connects.len(), n);
    assert_eq!(h.lookup("s"), None);
}

#[test]
fn new_session_connect_failure_retries_another_backend() {
    let mut h = H::new(3);
    h.send(&post("/mcp", None, INIT));
    let first = h.connects[0].0;
    h.connect_fail();
    assert_eq!(h.connects.len(), 2);
    assert_ne!(h.connects[1].0, first);
    h.connect_ok(false);
    let up = h.take_upstream();
    assert!(
        up.ends_with(INIT),
        "the held body is sent on the retry: {up}"
    );
    // all attempts fail: 503 with a JSON-RPC body
    let mut h = H::new(2);
    h.send(&post("/mcp", None, INIT));
    h.connect_fail();
    h.connect_fail();
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert_eq!(body_json(&resp)["id"], 1);
}

#[test]
fn connect_timeout_counts_as_failure() {
    let mut h = H::new(2);
    h.send(&post("/mcp", None, INIT));
    h.advance(Duration::from_secs(4));
    assert_eq!(h.connects.len(), 2, "retried after the connect timeout");
    assert_eq!(h.released, [false], "the abandoned attempt is released");
}

#[test]
fn legacy_sse_endpoint_event_records_the_session() {
    let mut h = H::new(2);
    h.send(b"GET /sse HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\n\r\n");
    let b = h.connects[0].0;
    h.connect_ok(false);
    h.reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let head = h.take_client();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ev = "event: endpoint\ndata: /messages/?session_id=abc123\n\n";
    h.reply(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
    assert!(h.take_client().contains("session_id=abc123"));
    assert_eq!(
        h.lookup("abc123"),
        Some(Record {
            backend: BackendId(b),
            era: Era::LegacySse,
            client: ClientId::of_addr("192.0.2.7".parse().unwrap()),
        })
    );
    // a message POST from another connection goes to the same backend
    let stream_conn = std::mem::replace(
        &mut h.conn,
        Conn::new(h.router.clone(), None, "http", h.now),
    );
    let stream_bufs = std::mem::take(&mut h.bufs);
    let connects = h.connects.clone();
    h.connects.clear();
    h.connected = false;
    h.send(&post("/messages/?session_id=abc123", None, CALL));
    assert_eq!(h.connects, [(b, false)]);
    h.connect_ok(false);
    h.reply(b"HTTP/1.1 202 Accepted\r\nContent-Length: 8\r\n\r\nAccepted");
    assert_eq!(status_of(&h.take_client()), 202);
    // unknown legacy session: 404
    h.send(&post("/messages?sessionId=zzz", None, CALL));
    assert_eq!(status_of(&h.take_client()), 404);
    // the stream ends: the session ends with it
    h.conn = stream_conn;
    h.bufs = stream_bufs;
    h.connects = connects;
    h.connected = true;
    h.reply(b"0\r\n\r\n");
    assert_eq!(h.lookup("abc123"), None);
    assert!(h.ended().contains(&EndCause::StreamClosed));
}

#[test]
fn legacy_stream_client_disconnect_ends_the_session_and_the_upstream() {
    let mut h = H::new(1);
    h.send(b"GET /sse HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\n\r\n");
    h.connect_ok(false);
    h.reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nevent: endpoint\r\ndata: /messages?sessionId=s9\r\n\r\n");
    assert!(h.lookup("s9").is_some());
    h.client_eof();
    assert_eq!(h.released, [false]);
    assert!(h.closed);
    assert_eq!(h.lookup("s9"), None);
}

#[test]
fn sse_responses_stream_event_by_event() {
    let mut h = H::new(1);
    init(&mut h, "s");
    h.send(
        b"GET /mcp HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\nMcp-Session-Id: s\r\n\r\n",
    );
    h.connect_ok(false);
    h.reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    h.take_client();
    for i in 0..100 {
        let ev = format!("data: {{\"n\":{i}}}\n\n");
        h.reply(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
        let got = h.take_client();
        assert!(
            got.contains(&ev),
            "event {i} not forwarded at once: {got:?}"
        );
        h.advance(Duration::from_secs(120));
    }
    // hours of silence are fine for a stream, and the record is kept alive meanwhile
    h.advance(Duration::from_secs(3 * 3600));
    assert!(!h.closed);
    assert!(
        h.lookup("s").is_some(),
        "an open stream keeps its session record alive"
    );
}

#[test]
fn sse_post_response_carries_the_new_session() {
    let mut h = H::new(1);
    h.send(&post("/mcp", None, INIT));
    h.connect_ok(false);
    h.reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: sse-s\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(h.lookup("sse-s").is_some());
    h.reply(b"10\r\ndata: {\"id\":1}\n\n\r\n0\r\n\r\n");
    let resp = h.take_client();
    assert!(resp.contains("data: {\"id\":1}"));
    assert_eq!(h.released, [true]);
}

#[test]
fn new_session_response_waits_for_the_store() {
    let mut h = H::new(1);
    h.auto_store = false;
    h.send(&post("/mcp", None, INIT));
    // the new session is admitted first
    assert!(matches!(h.ops.front(), Some(StoreOp::Admit(_))));
    h.store_reply(StoreReply::Admitted(Admission::Admit));
    h.connect_ok(false);
    h.reply(&json_ok("Mcp-Session-Id: w\r\n", "{}"));
    assert!(h.client.is_empty(), "head sent before the record exists");
    assert!(matches!(h.ops.front(), Some(StoreOp::Insert(k, _)) if k.as_str() == "w"));
    h.store_reply(StoreReply::Inserted(true));
    assert_eq!(status_of(&h.take_client()), 200);
    // store down while inserting: the client gets 503 and retries initialize
    let mut h = H::new(1);
    h.auto_store = false;
    h.send(&post("/mcp", None, INIT));
    h.store_reply(StoreReply::Admitted(Admission::Admit));
    h.connect_ok(false);
    h.reply(&json_ok("Mcp-Session-Id: w\r\n", "{}"));
    h.store_reply(StoreReply::Unavailable);
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 503);
    assert_eq!(body_json(&resp)["id"], 1);
}

#[test]
fn store_unavailable_on_lookup_is_503_not_404() {
    let mut h = H::new(1);
    h.auto_store = false;
    h.send(&post("/mcp", Some("s"), CALL));
    h.store_reply(StoreReply::Unavailable);
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 503);
    let v = body_json(&resp);
    assert_eq!(v["error"]["code"], -32000);
    assert_eq!(v["id"], "req-7");
    assert!(h.events.contains(&Event::StoreUnavailable));
}

#[test]
fn record_naming_an_unconfigured_backend_is_unknown_and_deleted() {
    let mut h = H::new(1);
    h.store.execute(
        &StoreOp::Insert(
            key("x"),
            Record {
                backend: BackendId(9),
                era: Era::Streamable,
                client: ClientId(0),
            },
        ),
        h.now,
    );
    h.send(&post("/mcp", Some("x"), CALL));
    assert_eq!(status_of(&h.take_client()), 404);
    assert!(h.connects.is_empty());
    assert_eq!(h.lookup("x"), None);
}

#[test]
fn duplicate_minted_id_keeps_the_first_record() {
    let mut h = H::new(2);
    let b = init(&mut h, "dup");
    h.reconnect();
    h.send(&post("/mcp", None, INIT));
    let other = h.connects[0].0;
    assert_ne!(other, b);
    h.connect_ok(false);
    h.reply(&json_ok("Mcp-Session-Id: dup\r\n", "{}"));
    assert_eq!(h.lookup("dup").unwrap().backend.0, b);
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::DuplicateSession { .. })));
}

#[test]
fn hostile_framing_is_refused_and_the_connection_closed() {
    let cases: &[(&[u8], u16)] = &[
        (b"POST /mcp HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /mcp HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
        (b"POST /mcp HTTP/1.1\r\nHost: r\r\nX-A: a\r\n b\r\n\r\n", 400),
        // RFC 9112 6.3: chunked not final -> 400; chunked final after another coding -> 501
        (b"POST /mcp HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST /mcp HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST /mcp HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        (b"POST /mcp HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n", 400),
        (b"GET /mcp HTTP/1.1\r\nHost: r\r\nBad Header: x\r\n\r\n", 400),
        (b"POST /mcp HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ];
    for (req, status) in cases {
        let mut h = H::new(1);
        h.send(req);
        let resp = h.take_client();
        assert_eq!(
            status_of(&resp),
            *status,
            "{:?}: {resp}",
            String::from_utf8_lossy(req)
        );
        assert!(
            h.closed,
            "connection left open after {:?}",
            String::from_utf8_lossy(req)
        );
        assert!(h.connects.is_empty());
        assert!(resp.contains("Connection: close"));
        assert_eq!(
            h.rejected(),
            [*status],
            "one rejection event per refused request: {:?} {:?}",
            String::from_utf8_lossy(req),
            h.events
        );
    }
}

#[test]
fn oversized_head_is_431_and_oversized_inspected_body_is_413() {
    let mut c = config(1);
    c.http.max_head = 2048;
    c.max_inspect_body = 4096;
    let mut h = H::with(c.clone());
    let mut req = b"GET /mcp HTTP/1.1\r\nHost: r\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 3000));
    h.send(&req);
    assert_eq!(status_of(&h.take_client()), 431);
    assert!(h.closed);
    // a body whose method comes after 4 KiB of params
    let mut h = H::with(c);
    let body = format!(
        r#"{{"params":{{"pad":"{}"}},"method":"tools/call","id":1}}"#,
        "p".repeat(5000)
    );
    h.send(&post("/mcp", None, &body));
    assert_eq!(status_of(&h.take_client()), 413);
    assert!(h.connects.is_empty());
    assert!(h.closed);
}

#[test]
fn large_bodies_of_known_sessions_stream_without_inspection_limits() {
    let mut c = config(1);
    c.max_inspect_body = 4096;
    let mut h = H::with(c);
    init(&mut h, "s");
    let body = format!(
        r#"{{"method":"tools/call","params":{{"blob":"{}"}},"jsonrpc":"2.0","id":3}}"#,
        "z".repeat(200_000)
    );
    h.send(&post("/mcp", Some("s"), &body));
    h.connect_ok(false);
    let up = h.take_upstream();
    assert!(up.ends_with(&body), "body forwarded whole");
}

#[test]
fn pipelined_requests_are_served_in_order() {
    let mut h = H::new(1);
    init(&mut h, "s");
    let mut two = post(
        "/mcp",
        Some("s"),
        r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#,
    );
    two.extend(post(
        "/mcp",
        Some("s"),
        r#"{"jsonrpc":"2.0","id":2,"method":"b"}"#,
    ));
    h.send(&two);
    h.connect_ok(true);
    let up = h.take_upstream();
    assert!(
        up.contains("\"method\":\"a\"") && !up.contains("\"method\":\"b\""),
        "{up}"
    );
    h.reply(&json_ok("", r#"{"id":1}"#));
    assert_eq!(h.released, [true, true]);
    h.connect_ok(true);
    assert!(h.take_upstream().contains("\"method\":\"b\""));
    h.reply(&json_ok("", r#"{"id":2}"#));
    let resp = h.take_client();
    assert!(resp.find(r#"{"id":1}"#).unwrap() < resp.find(r#"{"id":2}"#).unwrap());
}

#[test]
fn http10_client_gets_a_dechunked_close_delimited_response() {
    let mut h = H::new(1);
    h.send(b"GET /x HTTP/1.0\r\nHost: r\r\n\r\n");
    h.connect_ok(false);
    assert!(h.take_upstream().starts_with("GET /x HTTP/1.1\r\n"));
    h.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let resp = h.take_client();
    assert!(
        !resp.to_ascii_lowercase().contains("transfer-encoding"),
        "{resp}"
    );
    assert!(resp.ends_with("\r\n\r\nhello world"), "{resp}");
    assert!(h.closed);
}

#[test]
fn expect_100_continue_is_answered_by_the_router() {
    let mut h = H::new(1);
    let req = String::from_utf8(post("/mcp", None, INIT)).unwrap();
    let (head, body) = req.split_once("\r\n\r\n").unwrap();
    h.send(format!("{head}\r\nExpect: 100-continue\r\n\r\n").as_bytes());
    assert_eq!(h.take_client(), "HTTP/1.1 100 Continue\r\n\r\n");
    h.send(body.as_bytes());
    h.connect_ok(false);
    assert!(!h.take_upstream().to_ascii_lowercase().contains("expect:"));
}

#[test]
fn slow_heads_get_408_and_idle_connections_close() {
    let mut h = H::new(1);
    h.send(b"GET /mcp HTTP/1.1\r\nHo");
    h.advance(Duration::from_secs(11));
    assert_eq!(status_of(&h.take_client()), 408);
    assert!(h.closed);
    let mut h = H::new(1);
    h.advance(Duration::from_secs(76));
    assert!(h.closed);
    assert!(h.client.is_empty());
}

#[test]
fn response_timeout_is_504_and_keeps_the_session() {
    let mut h = H::new(1);
    init(&mut h, "s");
    h.send(&post("/mcp", Some("s"), CALL));
    h.connect_ok(false);
    h.advance(Duration::from_secs(301));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 504);
    assert_eq!(body_json(&resp)["id"], serde_json::Value::Null);
    assert!(h.lookup("s").is_some());
}

#[test]
fn stale_pooled_connection_is_retried_once_on_a_fresh_one() {
    let mut h = H::new(1);
    init(&mut h, "s");
    h.send(&post("/mcp", Some("s"), CALL));
    h.connect_ok(true);
    let first = h.take_upstream();
    h.upstream_eof();
    assert_eq!(
        h.connects.last(),
        Some(&(0, true)),
        "fresh connection asked for"
    );
    h.connect_ok(false);
    assert_eq!(h.take_upstream(), first, "the same request is sent again");
    h.reply(&json_ok("", "{}"));
    assert_eq!(status_of(&h.take_client()), 200);
    assert!(h.lookup("s").is_some());
}

#[test]
fn body_that_arrives_while_the_stale_connection_is_replaced_is_sent_too() {
    let mut h = H::new(1);
    init(&mut h, "s");
    let req = String::from_utf8(post("/mcp", Some("s"), CALL)).unwrap();
    let (head, body) = req.split_once("\r\n\r\n").unwrap();
    let (early, late) = body.split_at(body.len() / 2);
    h.send(format!("{head}\r\n\r\n{early}").as_bytes());
    h.connect_ok(true);
    let first = h.take_upstream();
    h.upstream_eof();
    assert_eq!(h.connects.last(), Some(&(0, true)));
    // the rest of the body comes while the fresh connection is being made
    h.send(late.as_bytes());
    h.connect_ok(false);
    assert_eq!(
        h.take_upstream(),
        format!("{first}{late}"),
        "the whole request, in order"
    );
    h.reply(&json_ok("", "{}"));
    assert_eq!(status_of(&h.take_client()), 200);
}

#[test]
fn garbage_from_the_backend_is_502_and_other_sessions_carry_on() {
    let mut h = H::new(1);
    init(&mut h, "s");
    h.send(&post("/mcp", Some("s"), CALL));
    h.connect_ok(false);
    h.reply(b"\x00\x01garbage\r\n\r\n");
    assert_eq!(status_of(&h.take_client()), 502);
    assert_eq!(h.released.last(), Some(&false));
    // extra bytes after a complete response make the connection unfit for reuse
    h.send(&post("/mcp", Some("s"), CALL));
    h.connect_ok(false);
    let mut r = json_ok("", "{}");
    r.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    h.reply(&r);
    assert_eq!(status_of(&h.take_client()), 200);
    assert_eq!(h.released.last(), Some(&false));
    assert!(h.lookup("s").is_some());
}

#[test]
fn hop_by_hop_headers_are_dropped_both_ways() {
    let mut h = H::new(1);
    h.send(b"GET /x HTTP/1.1\r\nHost: r\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n");
    h.connect_ok(false);
    let up = h.take_upstream().to_ascii_lowercase();
    assert!(
        !up.contains("x-secret") && !up.contains("keep-alive") && !up.contains("connection:"),
        "{up}"
    );
    assert!(up.contains("x-forwarded-for: 1.2.3.4, 192.0.2.7"), "{up}");
    assert!(up.contains("x-forwarded-proto: http"), "{up}");
    h.reply(b"HTTP/1.1 200 OK\r\nConnection: X-Up\r\nX-Up: 1\r\nContent-Length: 0\r\n\r\n");
    let down = h.take_client().to_ascii_lowercase();
    assert!(!down.contains("x-up"), "{down}");
}

#[test]
fn shutdown_finishes_the_exchange_in_flight_then_closes() {
    let mut h = H::new(1);
    init(&mut h, "s");
    h.send(&post("/mcp", Some("s"), CALL));
    h.connect_ok(false);
    h.conn.shutdown();
    h.drain();
    assert!(!h.closed);
    h.reply(&json_ok("", "{}"));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 200);
    assert!(resp.contains("Connection: close"));
    assert!(h.closed);
}

#[test]
fn client_disconnect_mid_request_releases_the_upstream() {
    let mut h = H::new(1);
    init(&mut h, "s");
    let req = post("/mcp", Some("s"), CALL);
    h.send(&req[..req.len() - 10]);
    h.connect_ok(false);
    h.client_eof();
    assert_eq!(h.released.last(), Some(&false));
    assert!(h.closed);
    let _ = BytesMut::new();
}

#[test]
fn a_removed_backend_ends_its_sessions_as_if_it_died() {
    let mut h = H::new(2);
    let b = init(&mut h, "s");
    let cfg = (*h.router.config()).clone();
    let keep: Vec<Backend> = cfg
        .backends
        .iter()
        .filter(|x| x.name != format!("b{b}"))
        .cloned()
        .collect();
    let changes = h.router.set_backends(cfg, keep, h.now);
    assert_eq!(changes.removed, [format!("b{b}")]);
    let n = h.connects.len();
    h.send(&post("/mcp", Some("s"), CALL));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert_eq!(h.connects.len(), n, "no connection to a removed backend");
    assert_eq!(h.lookup("s"), None);
    // new sessions go to the remaining backend
    h.reconnect();
    assert_ne!(init(&mut h, "t"), b);
}

#[test]
fn batches_route_like_any_message_and_never_open_a_session() {
    // 2025-03-26 allows JSON-RPC batches (arrays); initialize never appears in one
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/progress","params":{}}]"#;
    let mut h = H::new(2);
    h.send(&post("/mcp", None, batch));
    assert_eq!(h.connects.len(), 1, "a sessionless batch is load-balanced");
    h.connect_ok(false);
    assert!(h.take_upstream().ends_with(batch));
    // a batch of an unknown session: 404 with a null id (a batch has no single id)
    let mut h = H::new(1);
    h.send(&post("/mcp", Some("gone"), batch));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404);
    assert!(body_json(&resp)["id"].is_null());
    // a batch of a known session goes to its backend
    let mut h = H::new(2);
    let b = init(&mut h, "s");
    h.send(&post("/mcp", Some("s"), batch));
    assert_eq!(h.connects.last().unwrap().0, b);
}

// ----- issue 12: what a client can hold ------------------------------------------------

#[test]
fn a_client_that_does_not_read_is_closed_after_the_send_timeout() {
    let mut c = config(1);
    c.timeouts.client_send = Duration::from_secs(5);
    // shorter than the send timeout: it must not fire while the write is stalled
    c.timeouts.body_idle = Duration::from_secs(2);
    let mut h = H::with(c);
    init(&mut h, "s1");
    h.released.clear();
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_ok(true);
    // a large body, half sent: the driver cannot write it to the client
    h.reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
    );
    h.conn.handle_send_blocked(Side::Client, h.now);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(5)));
    h.advance(Duration::from_millis(4900));
    assert!(!h.closed, "closed before the send timeout");
    // progress restarts the deadline (nginx's send_timeout is between two writes)
    h.conn.handle_send_blocked(Side::Client, h.now);
    h.advance(Duration::from_millis(4900));
    assert!(!h.closed);
    h.advance(Duration::from_millis(200));
    assert!(h.closed, "still open after the send timeout");
    assert!(h.conn.send_expired(Side::Client));
    assert_eq!(
        h.released,
        [false],
        "the backend connection is dropped, not pooled"
    );
    assert!(h.events.contains(&Event::Limited {
        limit: Limit::ClientSend
    }));
    // the session record stays
    assert!(h.lookup("s1").is_some());
    assert!(h.ended().is_empty());
}

#[test]
fn a_write_that_completes_clears_the_send_deadline() {
    let mut c = config(1);
    c.timeouts.client_send = Duration::from_secs(5);
    let mut h = H::with(c);
    init(&mut h, "s1");
    h.conn.handle_send_blocked(Side::Client, h.now);
    h.advance(Duration::from_secs(1));
    h.conn.handle_send_done(Side::Client, h.now);
    h.advance(Duration::from_secs(10));
    assert!(!h.conn.send_expired(Side::Client));
    assert!(!h.events.iter().any(|e| matches!(e, Event::Limited { .. })));
}

#[test]
fn a_backend_that_stops_reading_the_request_gets_a_504_in_time() {
    let mut c = config(1);
    c.timeouts.body_idle = Duration::from_secs(3);
    let mut h = H::with(c);
    init(&mut h, "s1");
    h.released.clear();
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_ok(true);
    h.conn.handle_send_blocked(Side::Upstream, h.now);
    h.advance(Duration::from_millis(2900));
    assert!(h.client.is_empty());
    h.advance(Duration::from_millis(200));
    assert!(h.conn.send_expired(Side::Upstream));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 504, "{resp}");
    assert_eq!(body_json(&resp)["error"]["code"], -32000);
    assert_eq!(h.released, [false]);
    assert!(h.events.contains(&Event::Limited {
        limit: Limit::UpstreamSend
    }));
}

fn retry_after(resp: &str) -> Option<u32> {
    resp.lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn max_sessions_refuses_initialize_with_503_and_spares_live_sessions() {
    let mut c = config(1);
    c.limits.max_sessions = 2;
    c.limits.client_session_rate = 0;
    let mut h = H::with(c);
    init(&mut h, "a");
    init(&mut h, "b");
    h.connects.clear();
    h.send(&post("/mcp", None, INIT));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert_eq!(retry_after(&resp), Some(1), "{resp}");
    let v = body_json(&resp);
    assert_eq!(
        (v["id"].as_i64(), v["error"]["code"].as_i64()),
        (Some(1), Some(-32000))
    );
    assert!(
        h.connects.is_empty(),
        "a refused initialize reached a backend"
    );
    assert!(h.events.contains(&Event::Limited {
        limit: Limit::Sessions
    }));
    // the established sessions carry on, on the same keep-alive connection
    h.send(&post("/mcp", Some("a"), CALL));
    assert_eq!(h.connects.len(), 1);
    h.connect_ok(true);
    h.reply(&json_ok(
        "",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    assert_eq!(status_of(&h.take_client()), 200);
    // ending one makes room
    h.store.execute(&StoreOp::Delete(key("a")), h.now);
    init(&mut h, "c");
}

#[test]
fn per_client_quotas_answer_429_with_retry_after_and_spare_other_clients() {
    let mut c = config(1);
    c.limits.client_max_sessions = 1;
    c.limits.client_session_rate = 0;
    let mut h = H::with(c.clone());
    init(&mut h, "a");
    h.send(&post("/mcp", None, INIT));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 429, "{resp}");
    assert_eq!(retry_after(&resp), Some(1));
    assert_eq!(body_json(&resp)["id"], 1);
    assert!(h.events.contains(&Event::Limited {
        limit: Limit::ClientSessions
    }));
    // another client (no peer address here) still gets a session
    h.reconnect();
    init(&mut h, "b");

    // the rate: a burst of 2, then 1 per second
    c.limits.client_max_sessions = 0;
    c.limits.client_session_rate = 1;
    c.limits.client_session_burst = 2;
    let mut h = H::with(c);
    init(&mut h, "r1");
    init(&mut h, "r2");
    h.connects.clear();
    h.send(&post("/mcp", None, INIT));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 429, "{resp}");
    assert_eq!(retry_after(&resp), Some(1));
    assert!(h.connects.is_empty());
    assert!(h.events.contains(&Event::Limited {
        limit: Limit::ClientRate
    }));
    h.advance(Duration::from_millis(1000));
    init(&mut h, "r3");
}

#[test]
fn a_legacy_stream_opener_is_admitted_too() {
    let mut c = config(1);
    c.limits.max_sessions = 1;
    let mut h = H::with(c);
    init(&mut h, "a");
    h.send(b"GET /sse HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\n\r\n");
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert_eq!(retry_after(&resp), Some(1));
}

#[test]
fn the_over_capacity_answer_is_a_503_with_a_json_rpc_body() {
    let b = mcp_router_core::conn::over_capacity_response(Duration::from_secs(2));
    let resp = String::from_utf8(b.to_vec()).unwrap();
    assert_eq!(status_of(&resp), 503);
    assert_eq!(retry_after(&resp), Some(2));
    assert!(resp.contains("Connection: close"), "{resp}");
    assert_eq!(body_json(&resp)["error"]["code"], -32000);
}

#[test]
fn connections_past_the_cap_are_refused_and_counted_back() {
    let mut c = config(1);
    c.limits.max_connections = 2;
    let r = Arc::new(Router::new(Arc::new(c), Instant::now()));
    let a = r.admit_connection().unwrap();
    let b = r.admit_connection().unwrap();
    assert!(matches!(r.admit_connection(), Err(ConnRefusal::Answer(_))));
    assert_eq!(r.connections(), 2);
    drop(a);
    let _c = r.admit_connection().unwrap();
    drop(b);
    assert_eq!(r.connections(), 1);
    // refusals are bounded too
    let mut c = config(1);
    c.limits.max_connections = 1;
    let r = Arc::new(Router::new(Arc::new(c), Instant::now()));
    let _held = r.admit_connection().unwrap();
    let slots: Vec<_> = (0..mcp_router_core::router::MAX_REFUSING)
        .map(|_| r.admit_connection().unwrap_err())
        .collect();
    assert!(slots.iter().all(|s| matches!(s, ConnRefusal::Answer(_))));
    assert!(matches!(r.admit_connection(), Err(ConnRefusal::Drop)));
    drop(slots);
    assert!(matches!(r.admit_connection(), Err(ConnRefusal::Answer(_))));
}

/// One refused request on a fresh connection: its status, its JSON-RPC body, and no
/// backend asked for.
fn refused(h: &mut H, req: &[u8]) -> (u16, serde_json::Value) {
    h.reconnect();
    h.send(req);
    let resp = h.take_client();
    assert!(
        h.connects.is_empty(),
        "forwarded: {}",
        String::from_utf8_lossy(req)
    );
    assert!(h.upstream.is_empty());
    (status_of(&resp), body_json(&resp))
}

#[test]
fn requests_with_two_readings_get_400_and_reach_no_backend() {
    let mut h = H::new(2);
    init(&mut h, "s");
    h.reconnect();
    init(&mut h, "t");
    let with = |path: &str, fields: &str| -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: r\r\n{fields}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{CALL}",
            CALL.len()
        )
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("two session headers", with("/mcp", "Mcp-Session-Id: s\r\nMcp-Session-Id: t\r\n")),
        ("two session headers, same id", with("/mcp", "Mcp-Session-Id: s\r\nmcp-session-id: s\r\n")),
        ("two versions", with("/mcp", "Mcp-Session-Id: s\r\nMCP-Protocol-Version: 2026-07-28\r\nMCP-Protocol-Version: 2025-06-18\r\n")),
        ("query and header disagree", with("/messages?sessionId=t", "Mcp-Session-Id: s\r\n")),
        ("python query and header disagree", with("/messages/?session_id=t", "Mcp-Session-Id: s\r\n")),
        ("two query ids", with("/messages?sessionId=s&session_id=t", "")),
        ("same query id twice", with("/messages?sessionId=s&sessionId=s", "")),
        ("encoded query name", with("/messages?sessionId=s&session%5Fid=t", "")),
        ("malformed query escape", with("/messages?sessionId=%zz", "")),
        ("stateless with a query id", with("/messages?sessionId=s", "MCP-Protocol-Version: 2026-07-28\r\n")),
        ("Connection: Mcp-Session-Id", with("/mcp", "Connection: keep-alive, Mcp-Session-Id\r\nMcp-Session-Id: s\r\n")),
        ("Connection: MCP-Protocol-Version", with("/mcp", "Connection: mcp-protocol-version\r\nMCP-Protocol-Version: 2026-07-28\r\n")),
        ("Connection: Last-Event-ID", with("/mcp", "Connection: Last-Event-ID\r\nMcp-Session-Id: s\r\n")),
        ("Connection: Origin", with("/mcp", "Connection: origin\r\nOrigin: http://evil.example.com\r\n")),
        ("dot-dot", with("/../tenant-b/mcp", "")),
        ("encoded dot-dot", with("/%2e%2e/tenant-b/mcp", "")),
        ("mixed encoded dot-dot", with("/.%2E/tenant-b/mcp", "")),
        ("dot", with("/./mcp", "")),
        ("inner dot-dot", with("/a/b/../../../tenant-b/mcp", "")),
        ("trailing dot-dot", with("/mcp/..", "")),
        ("backslash dot-dot", with("/..\\tenant-b/mcp", "")),
        ("encoded slash after dot-dot", with("/..%2ftenant-b/mcp", "")),
        ("dot-dot with a parameter", with("/..;x/tenant-b/mcp", "")),
        ("dot-dot before a query", with("/..?sessionId=s", "")),
    ];
    for (case, req) in &cases {
        let (status, body) = refused(&mut h, req);
        assert_eq!(status, 400, "{case}");
        assert_eq!(body["error"]["code"], -32600, "{case}: {body}");
        assert_eq!(body["id"], "req-7", "{case}: the request id is echoed");
    }
    let get = b"GET /mcp HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\nConnection: last-event-id\r\nLast-Event-ID: 5\r\nMcp-Session-Id: s\r\n\r\n";
    assert_eq!(refused(&mut h, get).0, 400);
    // each refusal kept the connection: the next request on it is served
    h.reconnect();
    h.send(&with("/mcp", "Mcp-Session-Id: s\r\nMcp-Session-Id: t\r\n"));
    assert_eq!(status_of(&h.take_client()), 400);
    assert!(!h.closed);
    h.send(&post("/mcp", Some("s"), CALL));
    assert_eq!(h.connects.len(), 1);
    // dots that are not dot segments are just names
    for path in [
        "/v1.2/mcp",
        "/.well-known/x",
        "/a..b/mcp",
        "/...",
        "/%2e%2e%2e",
        "/x%2e/y",
    ] {
        h.reconnect();
        h.send(&with(path, ""));
        assert_eq!(h.connects.len(), 1, "{path} was refused");
    }
}

#[test]
fn a_query_id_and_header_that_agree_route_by_that_session() {
    let mut h = H::new(2);
    let b = init(&mut h, "s");
    h.reconnect();
    let other = init(&mut h, "t");
    assert_ne!(b, other);
    h.reconnect();
    let req = format!(
        "POST /messages?sessionId=s HTTP/1.1\r\nHost: r\r\nMcp-Session-Id: s\r\nContent-Length: {}\r\n\r\n{CALL}",
        CALL.len()
    );
    h.send(req.as_bytes());
    assert_eq!(h.connects, vec![(b, false)]);
}

#[test]
fn the_stateless_era_forwards_no_session_id() {
    let mut h = H::new(1);
    init(&mut h, "s");
    h.reconnect();
    let req = modern("Mcp-Session-Id: s\r\n", MODERN_CALL);
    h.send(req.as_bytes());
    h.connect_ok(false);
    let up = h.take_upstream().to_ascii_lowercase();
    assert!(up.contains("mcp-protocol-version: 2026-07-28"), "{up}");
    assert!(!up.contains("mcp-session-id"), "{up}");
}

#[test]
fn rewrite_host_sends_the_backend_authority_and_keeps_the_client_host_aside() {
    let mut c = config(1);
    c.rewrite_host = true;
    let mut h = H::with(c);
    h.send(&post("/mcp", None, INIT));
    h.connect_ok(false);
    let up = h.take_upstream();
    assert!(up.contains("\r\nHost: 10.0.0.1:800\r\n"), "{up}");
    assert!(up.contains("X-Forwarded-Host: router\r\n"), "{up}");
    // without a client Host, the backend's authority either way
    let mut h = H::new(1);
    h.send(b"GET /x HTTP/1.0\r\n\r\n");
    h.connect_ok(false);
    let up = h.take_upstream();
    assert!(up.contains("\r\nHost: 10.0.0.1:800\r\n"), "{up}");
    assert!(!up.contains("X-Forwarded-Host"), "{up}");
}

#[test]
fn foreign_host_or_origin_gets_403_before_any_backend() {
    let mut c = config(1);
    c.rebinding = mcp_router_core::guard::RebindingGuard::loopback();
    let mut h = H::with(c);
    let req = |host: &str, origin: Option<&str>| -> Vec<u8> {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{INIT}",
            INIT.len()
        )
        .into_bytes()
    };
    // the conformance suite's dns-rebinding-protection request, and its variants
    for (host, origin) in [
        ("evil.example.com", Some("http://evil.example.com")),
        ("evil.example.com", None),
        ("127.0.0.1:8080", Some("http://evil.example.com")),
        ("localhost:8080", Some("null")),
    ] {
        let (status, body) = refused(&mut h, &req(host, origin));
        assert_eq!(status, 403, "{host} {origin:?}");
        assert_eq!(body["error"]["code"], -32000, "{body}");
        // "a JSON-RPC error response that has no id" (2025-11-25)
        assert_eq!(body["id"], serde_json::Value::Null, "{body}");
        assert!(h.closed, "the unread body closes the connection");
    }
    // the allowed ones reach the backend with Host unchanged
    for (host, origin) in [
        ("127.0.0.1:8080", Some("http://127.0.0.1:8080")),
        ("localhost:8080", None),
        ("[::1]:8080", Some("https://localhost")),
    ] {
        h.reconnect();
        h.send(&req(host, origin));
        assert_eq!(h.connects.len(), 1, "{host} {origin:?}");
        h.connect_ok(false);
        let up = h.take_upstream();
        assert!(up.contains(&format!("\r\nHost: {host}\r\n")), "{up}");
    }
}

/// One 2026-07-28 header-check case: what, mirrored headers, body, and the refusal
/// (status, JSON-RPC code), or `None`: forwarded.
type ModernCase = (&'static str, String, String, Option<(u16, i32)>);

/// Every 2026-07-28 header-check case.
fn modern_cases() -> Vec<ModernCase> {
    const V: &str = "MCP-Protocol-Version: 2026-07-28\r\n";
    let call = MODERN_CALL.to_string();
    let m = |name: &str| format!("{V}Mcp-Method: tools/call\r\nMcp-Name: {name}\r\n");
    let body = |method: &str, params: &str, id: &str| {
        format!(r#"{{"jsonrpc":"2.0",{id}"method":"{method}","params":{params}}}"#)
    };
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#;
    let read = body(
        "resources/read",
        &format!(r#"{{"uri":"file:///projects/myapp/config.json",{meta}}}"#),
        r#""id":"req-7","#,
    );
    let read_h = |name: &str| format!("{V}Mcp-Method: resources/read\r\nMcp-Name: {name}\r\n");
    let unicode = body(
        "prompts/get",
        &format!(r#"{{"name":"Hello, \u4e16界",{meta}}}"#),
        r#""id":"req-7","#,
    );
    let prompt_h = |name: &str| format!("{V}Mcp-Method: prompts/get\r\nMcp-Name: {name}\r\n");
    let list = body("tools/list", &format!("{{{meta}}}"), r#""id":"req-7","#);
    let list_h = format!("{V}Mcp-Method: tools/list\r\n");
    let hmm = Some((400, -32020));
    let bad = Some((400, -32600));
    let cases = vec![
        ("matching tools/call", m("get_weather"), call.clone(), None),
        ("matching, base64 name", m("=?base64?Z2V0X3dlYXRoZXI=?="), call.clone(), None),
        ("matching resources/read", read_h("file:///projects/myapp/config.json"), read.clone(), None),
        ("matching non-ASCII name, base64", prompt_h("=?base64?SGVsbG8sIOS4lueVjA==?="), unicode.clone(), None),
        ("tools/list needs no Mcp-Name", list_h.clone(), list.clone(), None),
        ("unknown Mcp-Name on tools/list is ignored", format!("{list_h}Mcp-Name: x\r\n"), list.clone(), None),
        ("Mcp-Param-* passes unchecked", format!("{}Mcp-Param-Region: nowhere\r\n", m("get_weather")), call.clone(), None),
        ("no Mcp-Method", format!("{V}Mcp-Name: get_weather\r\n"), call.clone(), hmm),
        ("Mcp-Method differs", format!("{V}Mcp-Method: tools/list\r\nMcp-Name: get_weather\r\n"), call.clone(), hmm),
        ("Mcp-Method differs in case", format!("{V}Mcp-Method: Tools/Call\r\nMcp-Name: get_weather\r\n"), call.clone(), hmm),
        ("two Mcp-Method", format!("{}Mcp-Method: tools/call\r\n", m("get_weather")), call.clone(), hmm),
        ("no Mcp-Name", format!("{V}Mcp-Method: tools/call\r\n"), call.clone(), hmm),
        ("Mcp-Name differs", m("get_weathe"), call.clone(), hmm),
        ("Mcp-Name longer", m("get_weatherx"), call.clone(), hmm),
        ("Mcp-Name is arguments.name", m("not this one"), call.clone(), hmm),
        ("two Mcp-Name", format!("{}Mcp-Name: get_weather\r\n", m("get_weather")), call.clone(), hmm),
        ("base64 name differs (get_weathex)", m("=?base64?Z2V0X3dlYXRoZXg=?="), call.clone(), hmm),
        ("base64 of a prefix", m("=?base64?Z2V0X3dlYXRo?="), call.clone(), hmm),
        ("base64 name malformed", m("=?base64?Z2V0X3dlYXRoZXI?="), call.clone(), hmm),
        ("base64 name with a bad character", m("=?base64?Z2V0X3dlYXRoZX*=?="), call.clone(), hmm),
        ("base64 name, non-canonical bits", m("=?base64?Z2V0X3dlYXRoZXJ=?="), call.clone(), hmm),
        ("sentinel markers are case-sensitive", m("=?BASE64?Z2V0X3dlYXRoZXI=?="), call.clone(), hmm),
        ("plain name of a non-ASCII value", prompt_h("Hello, 世界"), unicode.clone(), hmm),
        ("resources/read compares the uri", read_h("config.json"), read.clone(), hmm),
        ("version header differs from _meta", m("get_weather").replace("2026-07-28", "2026-08-01"), call.clone(), hmm),
        ("_meta carries no version", m("get_weather"), call.replace("io.modelcontextprotocol/protocolVersion", "x"), hmm),
        ("_meta version is a number", m("get_weather"), call.replace(r#""2026-07-28""#, "20260728"), hmm),
        ("no params", m("get_weather"), r#"{"jsonrpc":"2.0","id":"req-7","method":"tools/call"}"#.into(), hmm),
        ("the name is not a string", m("get_weather"), call.replace(r#""get_weather""#, r#"["get_weather"]"#), hmm),
        ("a batch", m("get_weather"), format!("[{call}]"), bad),
        ("a response", m("get_weather"), r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#.into(), bad),
        ("a scalar", m("get_weather"), r#""tools/call""#.into(), bad),
        ("not JSON", m("get_weather"), call.replace("\"id\":", "\"id\" "), Some((400, -32700))),
        ("empty body", m("get_weather"), String::new(), Some((400, -32700))),
        ("method twice", m("get_weather"), call.replace(r#""id":"req-7""#, r#""id":"req-7","method":"tools/list""#), bad),
        ("name twice", m("get_weather"), call.replace(r#""arguments""#, r#""name":"other","arguments""#), bad),
        ("params twice", m("get_weather"), call.replace(r#""id":"req-7""#, r#""id":"req-7","params":{}"#), bad),
        ("version twice", m("get_weather"), call.replace(r#""io.modelcontextprotocol/clientInfo""#, r#""io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo""#), bad),
        ("escaped key duplicate", m("get_weather"), call.replace(r#""id":"req-7""#, r#""id":"req-7","\u006dethod":"tools/list""#), bad),
        ("escaped name is the same name", m("get_weather"), call.replace(r#""get_weather""#, r#""get\u005fweather""#), None),
        ("a notification needs no headers", V.to_string(), r#"{"jsonrpc":"2.0","method":"notifications/x"}"#.into(), None),
        ("a notification's header must match", format!("{V}Mcp-Method: notifications/y\r\n"), r#"{"jsonrpc":"2.0","method":"notifications/x"}"#.into(), hmm),
    ];
    // every edit of the call took effect
    for (case, mirrored, body, _) in &cases {
        assert!(
            body != &call || mirrored != &m("get_weather") || case.starts_with("matching"),
            "{case}: nothing changed"
        );
    }
    cases
}

#[test]
fn modern_mirrored_headers_are_checked_before_any_backend() {
    let mut h = H::new(2);
    for (case, mirrored, body, refusal) in modern_cases() {
        let req = modern_with(&mirrored, "", &body);
        h.reconnect();
        h.send(req.as_bytes());
        match refusal {
            None => {
                assert_eq!(h.connects.len(), 1, "{case}: {}", h.take_client());
                h.connect_ok(false);
                let up = h.take_upstream();
                assert!(up.ends_with(&body), "{case}: the body goes on unchanged");
                if case.contains("Mcp-Param") {
                    assert!(up.contains("Mcp-Param-Region: nowhere\r\n"), "{up}");
                }
            }
            Some((status, code)) => {
                assert!(h.connects.is_empty(), "{case}: forwarded");
                let resp = h.take_client();
                assert_eq!(status_of(&resp), status, "{case}: {resp}");
                let json = body_json(&resp);
                assert_eq!(json["error"]["code"], code, "{case}: {json}");
                let id = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .filter(|v| v.is_object())
                    .map_or(serde_json::Value::Null, |v| v["id"].clone());
                assert_eq!(json["id"], id, "{case}: the request id is echoed");
                assert!(!h.closed, "{case}: the connection stays open");
            }
        }
    }
}

#[test]
fn modern_checks_do_not_depend_on_how_the_body_arrives() {
    // every case, the body cut in two at every byte, and fed one byte at a time
    let mut h = H::new(2);
    for (case, mirrored, body, refusal) in modern_cases() {
        let req = modern_with(&mirrored, "", &body);
        let head = req.len() - body.len();
        let mut cuts: Vec<Vec<usize>> = (head..=req.len()).map(|c| vec![c]).collect();
        cuts.push((head..=req.len()).collect());
        for cut in cuts {
            h.reconnect();
            let mut at = 0;
            for &c in &cut {
                h.send(&req.as_bytes()[at..c]);
                at = c;
            }
            h.send(&req.as_bytes()[at..]);
            let resp = h.take_client();
            match refusal {
                None => assert_eq!(h.connects.len(), 1, "{case} cut at {cut:?}: {resp}"),
                Some((status, _)) => {
                    assert!(h.connects.is_empty(), "{case} cut at {cut:?}");
                    assert_eq!(status_of(&resp), status, "{case} cut at {cut:?}");
                }
            }
        }
    }
}

#[test]
fn a_modern_body_past_the_inspection_limit_is_413_not_forwarded() {
    let mut c = config(1);
    c.max_inspect_body = 1024;
    let mut h = H::with(c);
    let big = MODERN_CALL.replace("Seattle, WA", &"x".repeat(2000));
    h.send(modern("", &big).as_bytes());
    assert!(h.connects.is_empty());
    assert_eq!(status_of(&h.take_client()), 413);
}

/// A 2026-07-28 request of `method` (POST: with its mirrored headers and body).
fn modern_request(method: &str, rpc: &str, extra: &str) -> String {
    if method != "POST" {
        return format!(
            "{method} /mcp HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n{extra}\r\n"
        );
    }
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"{rpc}","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}}}}"#
    );
    modern_with(
        &format!("MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: {rpc}\r\n"),
        extra,
        &body,
    )
}

#[test]
fn modern_requests_forward_no_session_fields_and_look_nothing_up() {
    let mut h = H::new(2);
    init(&mut h, "s");
    let legacy = "Mcp-Session-Id: s\r\nLast-Event-ID: 7\r\n";
    for req in [
        modern_request("GET", "", legacy),
        modern_request("DELETE", "", legacy),
        modern_request("POST", "server/discover", legacy),
    ] {
        h.reconnect();
        h.auto_store = false;
        h.send(req.as_bytes());
        assert!(h.ops.is_empty(), "no store lookup: {req}");
        assert_eq!(h.connects.len(), 1, "forwarded: {req}");
        h.connect_ok(false);
        let up = h.take_upstream().to_ascii_lowercase();
        assert!(up.contains("mcp-protocol-version: 2026-07-28"), "{up}");
        assert!(!up.contains("mcp-session-id"), "{up}");
        assert!(!up.contains("last-event-id"), "{up}");
        // a modern backend refuses GET and DELETE itself; the answer goes through
        h.reply(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status_of(&h.take_client()), 405);
    }
    // an older version still sends both on
    h.reconnect();
    h.auto_store = true;
    let req = format!(
        "GET /mcp HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\n{legacy}\r\n"
    );
    h.send(req.as_bytes());
    h.connect_ok(false);
    let up = h.take_upstream().to_ascii_lowercase();
    assert!(
        up.contains("mcp-session-id: s") && up.contains("last-event-id: 7"),
        "{up}"
    );
}

#[test]
fn modern_only_answers_get_and_delete_405_itself() {
    let mut c = config(1);
    c.modern_only = true;
    let mut h = H::with(c);
    for req in [
        modern_request("GET", "", ""),
        modern_request("DELETE", "", "Mcp-Session-Id: s\r\n"),
        // a legacy client's GET stream gets the same answer a modern-only server gives
        "GET /mcp HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\n\r\n".to_string(),
    ] {
        h.reconnect();
        h.send(req.as_bytes());
        assert!(h.connects.is_empty(), "{req}");
        let resp = h.take_client();
        assert_eq!(status_of(&resp), 405, "{resp}");
        assert!(resp.contains("\r\nAllow: POST\r\n"), "{resp}");
        assert!(!h.closed, "the connection stays open");
    }
    h.reconnect();
    h.send(modern_request("POST", "server/discover", "").as_bytes());
    assert_eq!(h.connects.len(), 1, "POST is forwarded");
}

#[test]
fn a_listen_stream_has_no_response_timeout_and_keeps_its_comments() {
    let mut h = H::new(1);
    h.send(modern_request("POST", "subscriptions/listen", "").as_bytes());
    h.connect_ok(false);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
    let ack = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/subscriptions/acknowledged\"}\n\n";
    h.reply(format!("{head}{}", chunk(ack)).as_bytes());
    let first = h.take_client();
    assert!(first.contains("X-Accel-Buffering: no"), "{first}");
    assert!(first.contains(ack), "{first}");
    // quiet for longer than every timeout, with keep-alive comments now and then
    let t = Timeouts::default();
    let quiet = t.response.max(t.body_idle) * 2;
    for round in 0..3 {
        h.advance(quiet);
        assert!(!h.closed, "round {round}: the stream was cut");
        h.reply(chunk(":\r\n\r\n").as_bytes());
        assert!(h.take_client().contains(":\r\n\r\n"), "round {round}");
    }
    let change = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n";
    h.reply(chunk(change).as_bytes());
    assert!(h.take_client().contains(change));
    assert!(h.rejected().is_empty(), "{:?}", h.events);
}

#[test]
fn an_unsupported_version_answer_reaches_the_client_unchanged() {
    let mut h = H::new(1);
    h.send(modern_request("POST", "server/discover", "").as_bytes());
    h.connect_ok(false);
    let body = r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32022,"message":"Unsupported protocol version","data":{"supported":["2025-11-25"],"requested":"2026-07-28"}}}"#;
    h.reply(
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 400);
    assert!(resp.ends_with(body), "{resp}");
    // and the client's fallback, an initialize on the same connection, is forwarded
    h.send(&post("/mcp", None, INIT));
    assert_eq!(h.connects.len(), 2);
}

/// The backend a fresh connection's request `req` is sent to (left unanswered).
fn lands_on(h: &mut H, req: &str) -> u16 {
    h.reconnect();
    h.send(req.as_bytes());
    h.connects.last().expect("connect").0
}

#[test]
fn affinity_header_keys_stateless_requests_and_counts_them_in_flight() {
    let mut c = config(3);
    c.affinity = Affinity::parse("header:Mcp-Param-Handle").unwrap();
    let mut h = H::with(c);
    let with = |handle: &str| modern(&format!("Mcp-Param-Handle: {handle}\r\n"), MODERN_CALL);
    // the same handle, the same backend, every time (requests held in flight are few
    // enough to stay under the load cap: ceil(1.25 * 3 / 3) = 2)
    let a = lands_on(&mut h, &with("h-a"));
    h.connect_ok(false);
    assert_eq!(
        h.router.in_flight(BackendId(a)),
        1,
        "counted while unanswered"
    );
    h.reply(&json_ok(
        "",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    assert_eq!(status_of(&h.take_client()), 200);
    assert_eq!(
        h.router.in_flight(BackendId(a)),
        0,
        "released with the response"
    );
    for _ in 0..5 {
        assert_eq!(lands_on(&mut h, &with("h-a")), a);
        h.connect_ok(false);
        h.reply(&json_ok(
            "",
            r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
        ));
    }
    // different handles spread over all three
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        seen.insert(lands_on(&mut h, &with(&format!("h-{i}"))));
        h.connect_ok(false);
        h.reply(&json_ok(
            "",
            r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
        ));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // a connection that goes away mid-request releases its count
    let b = lands_on(&mut h, &with("h-a"));
    assert_eq!(h.router.in_flight(BackendId(b)), 1);
    h.reconnect();
    assert_eq!(
        h.router.in_flight(BackendId(b)),
        0,
        "dropped with the connection"
    );
    // its backend down: the key goes elsewhere, and comes back when it is up
    h.router.connect_failed(BackendId(a), h.now);
    let other = lands_on(&mut h, &with("h-a"));
    assert_ne!(other, a);
    h.router.connect_ok(BackendId(a));
    assert_eq!(lands_on(&mut h, &with("h-a")), a);
}

#[test]
fn without_affinity_stateless_requests_go_to_the_fewest_in_flight() {
    let mut h = H::new(3);
    // two requests held open on two backends: the next goes to the idle third
    let first = lands_on(&mut h, &modern("", MODERN_CALL));
    let held1 = std::mem::replace(&mut h.conn, {
        Conn::new(h.router.clone(), None, "http", h.now)
    });
    let second = lands_on(&mut h, &modern("", MODERN_CALL));
    let held2 = std::mem::replace(&mut h.conn, {
        Conn::new(h.router.clone(), None, "http", h.now)
    });
    assert_ne!(first, second);
    for _ in 0..4 {
        let third = lands_on(&mut h, &modern("", MODERN_CALL));
        assert!(
            third != first && third != second,
            "{first} {second} {third}"
        );
    }
    drop((held1, held2));
}

#[test]
fn session_requests_ignore_affinity() {
    let mut c = config(3);
    c.affinity = Affinity::parse("header:mcp-param-handle").unwrap();
    let mut h = H::with(c);
    let b = init(&mut h, "s-1");
    // whatever the handle says, a session's request goes to its backend
    for i in 0..6 {
        h.reconnect();
        let req = String::from_utf8(post("/mcp", Some("s-1"), CALL))
            .unwrap()
            .replacen(
                "\r\n\r\n",
                &format!("\r\nMcp-Param-Handle: h-{i}\r\n\r\n"),
                1,
            );
        h.send(req.as_bytes());
        assert_eq!(h.connects.last().map(|c| c.0), Some(b));
    }
}

/// A fleet whose backend `i` serves the eras `eras[i]` (`;eras=` as configured).
fn fleet(eras: &[&str]) -> H {
    let mut c = config(eras.len());
    for (b, e) in c.backends.iter_mut().zip(eras) {
        b.eras = config::Eras::parse(e).unwrap();
    }
    H::with(c)
}

#[test]
fn each_era_goes_only_to_backends_that_serve_it() {
    let mut h = fleet(&["legacy", "modern", "modern,legacy"]);
    let mut modern_on = std::collections::BTreeSet::new();
    let mut legacy_on = std::collections::BTreeSet::new();
    for i in 0..12 {
        modern_on.insert(lands_on(&mut h, &modern("", MODERN_CALL)));
        h.reconnect();
        legacy_on.insert(init(&mut h, &format!("s-{i}")));
    }
    assert_eq!(
        modern_on,
        [1, 2].into(),
        "modern: the modern and dual backends"
    );
    assert_eq!(
        legacy_on,
        [0, 2].into(),
        "legacy: the legacy and dual backends"
    );
    // a legacy session stays pinned to its backend as before
    h.reconnect();
    h.send(&post("/mcp", Some("s-0"), CALL));
    let s0 = h.lookup("s-0").unwrap().backend.0;
    assert_eq!(h.connects.last().map(|c| c.0), Some(s0));
}

#[test]
fn a_modern_request_no_backend_serves_gets_400_32022_listing_the_fleets_versions() {
    let mut h = fleet(&["legacy", "legacy"]);
    h.send(modern("", MODERN_CALL).as_bytes());
    assert!(h.connects.is_empty(), "no backend contacted");
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 400, "{resp}");
    let v = body_json(&resp);
    assert_eq!(v["id"], "req-7");
    assert_eq!(v["error"]["code"], -32022);
    assert_eq!(v["error"]["data"]["requested"], "2026-07-28");
    assert_eq!(
        v["error"]["data"]["supported"],
        serde_json::json!(["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"])
    );
    // legacy traffic is served as before
    h.reconnect();
    init(&mut h, "s-1");

    // the other way round: a modern-only fleet and a legacy initialize
    let mut h = fleet(&["modern"]);
    h.send(&post("/mcp", None, INIT));
    assert!(h.connects.is_empty(), "no backend contacted");
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 400, "{resp}");
    let v = body_json(&resp);
    assert_eq!(v["error"]["code"], -32022);
    assert_eq!(v["error"]["data"]["requested"], "2025-03-26", "the default");
    assert_eq!(
        v["error"]["data"]["supported"],
        serde_json::json!(["2026-07-28"])
    );
    assert!(h.store.is_empty(), "no session, no admission");
}

#[test]
fn a_capable_backend_that_is_down_is_503_not_32022() {
    let mut h = fleet(&["legacy", "modern"]);
    h.router.connect_failed(BackendId(1), h.now);
    h.send(modern("", MODERN_CALL).as_bytes());
    assert!(h.connects.is_empty());
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert_eq!(body_json(&resp)["error"]["code"], -32000);
}
