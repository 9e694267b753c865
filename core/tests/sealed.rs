//! Sealed session ids (`--session-ids sealed`) through the connection state machine:
//! two replicas with no store between them, every verdict, binding, rotation, legacy
//! SSE. Same harness as `conn.rs`, plus a count of store ops.

mod util;

use mcp_router_core::*;
use std::sync::Arc;
use util::*;

const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const K2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";

fn sealed(n: usize, keys: &str) -> Config {
    let mut c = config(n);
    c.session_ids = SessionIds::Sealed;
    c.session_keys = Some(Arc::new(KeyRing::parse(keys).unwrap()));
    c.session_records = false;
    c.validate().unwrap();
    c
}

/// Initialize through `h` (backend mints `upstream`); returns the client's token.
fn init_sealed(h: &mut H, upstream: &str) -> String {
    let (_, resp) = init_minting(h, upstream, INIT);
    let token = header(&resp, "mcp-session-id")
        .expect("a session id")
        .to_string();
    assert_ne!(token, upstream);
    assert!(!resp.contains(upstream), "the upstream id leaked: {resp}");
    token
}

/// A request carrying `token` is refused with 404 -32001 echoing the id, never
/// connecting, counted under `cause`.
fn assert_refused(h: &mut H, token: &str, cause: Refusal) {
    h.reconnect();
    h.events.clear();
    h.send(&post("/mcp", Some(token), CALL));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    let v = body_json(&resp);
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(v["id"], "req-7");
    assert!(h.connects.is_empty(), "reached a backend");
    assert!(
        h.events.contains(&Event::SessionRefused { cause }),
        "{:?}",
        h.events
    );
}

#[test]
fn two_replicas_without_a_store_route_every_request_of_a_session() {
    let mut a = H::with(sealed(2, K1));
    let mut b = H::with(sealed(2, K1));
    let token = init_sealed(&mut a, "up-123");
    let backend = a.connects[0].0;
    assert!(token.len() <= 256 && token.bytes().all(|c| (0x21..=0x7e).contains(&c)));
    // a call through the other replica reaches the same backend with the upstream id
    b.send(&post("/mcp", Some(&token), CALL));
    assert_eq!(b.connects, [(backend, false)]);
    b.connect_ok(false);
    let up = b.take_upstream();
    assert!(up.contains("Mcp-Session-Id: up-123\r\n"), "{up}");
    assert!(!up.contains(&token));
    // the response repeats the upstream id: the client gets its token back
    b.reply(&json_ok(
        "Mcp-Session-Id: up-123\r\n",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    let resp = b.take_client();
    assert_eq!(status_of(&resp), 200);
    assert_eq!(header(&resp, "mcp-session-id"), Some(&token[..]));
    // a GET stream with Last-Event-ID, then DELETE, through replica B
    b.reconnect();
    b.send(
        format!("GET /mcp HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\nMcp-Session-Id: {token}\r\nLast-Event-ID: 5\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(b.connects, [(backend, false)]);
    b.connect_ok(false);
    let up = b.take_upstream();
    assert!(
        up.contains("Mcp-Session-Id: up-123\r\n") && up.contains("Last-Event-ID: 5"),
        "{up}"
    );
    b.reconnect();
    b.send(
        format!("DELETE /mcp HTTP/1.1\r\nHost: r\r\nMcp-Session-Id: {token}\r\n\r\n").as_bytes(),
    );
    b.connect_ok(false);
    assert!(b.take_upstream().contains("Mcp-Session-Id: up-123\r\n"));
    b.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status_of(&b.take_client()), 200);
    // not one store operation on either replica
    assert_eq!(a.store_ops + b.store_ops, 0);
}

#[test]
fn a_new_upstream_id_in_a_later_response_is_sealed_too() {
    let mut a = H::with(sealed(1, K1));
    let token = init_sealed(&mut a, "up-1");
    a.reconnect();
    a.send(&post("/mcp", Some(&token), CALL));
    a.connect_ok(false);
    a.reply(&json_ok("Mcp-Session-Id: up-2\r\n", "{}"));
    let resp = a.take_client();
    let t2 = header(&resp, "mcp-session-id").unwrap().to_string();
    assert!(!resp.contains("up-2") && t2 != token);
    let ring = KeyRing::parse(K1).unwrap();
    assert_eq!(
        ring.open(t2.as_bytes(), 256).unwrap().upstream.as_str(),
        "up-2"
    );
}

#[test]
fn every_verdict_is_a_404_that_never_reaches_a_backend() {
    let mut a = H::with(sealed(2, K1));
    let token = init_sealed(&mut a, "up-9");
    // malformed: a plain id, and garbage
    assert_refused(&mut a, "up-9", Refusal::Malformed);
    assert_refused(&mut a, "!!!", Refusal::Malformed);
    // tampered: one character changed in the middle
    let mut t = token.clone().into_bytes();
    let i = t.len() / 2;
    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
    assert_refused(&mut a, std::str::from_utf8(&t).unwrap(), Refusal::Tampered);
    // unknown key id: sealed by a key this replica does not hold
    let mut other = H::with(sealed(2, &format!("other:{K2}")));
    let foreign = init_sealed(&mut other, "up-9");
    assert_refused(&mut a, &foreign, Refusal::UnknownKey);
    // names a backend this replica does not have
    let mut c = sealed(1, K1);
    c.backends[0].name = "elsewhere".into();
    let mut elsewhere = H::with(c);
    let t_else = init_sealed(&mut elsewhere, "up-9");
    assert_refused(&mut a, &t_else, Refusal::UnknownBackend);
    // expired: past --session-max-age (default 24 h) by the wall clock
    a.router.set_unix_time(a.now, UNIX_NOW + 24 * 3600 + 1);
    assert_refused(&mut a, &token, Refusal::Expired);
    a.router.set_unix_time(a.now, UNIX_NOW + 24 * 3600 - 1);
    a.reconnect();
    a.send(&post("/mcp", Some(&token), CALL));
    assert_eq!(a.connects.len(), 1, "within its lifetime it routes");
    assert_eq!(a.store_ops, 0);
}

fn jwt(iss: &str, sub: &str, exp: u64) -> String {
    use base64::Engine as _;
    let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.sig",
        e(r#"{"alg":"RS256"}"#),
        e(&format!(r#"{{"iss":"{iss}","sub":"{sub}","exp":{exp}}}"#))
    )
}

fn post_as(session: Option<&str>, extra: &str, body: &str) -> Vec<u8> {
    let mut s = String::from_utf8(post("/mcp", session, body)).unwrap();
    let at = s.find("\r\n").unwrap() + 2;
    s.insert_str(at, extra);
    s.into_bytes()
}

#[test]
fn binding_by_header_refuses_another_caller_and_keeps_the_same_one() {
    let mut c = sealed(1, K1);
    c.session_binding = true;
    c.client_identity = ClientIdentity::parse("header:x-user").unwrap();
    let mut h = H::with(c);
    h.send(&post_as(None, "X-User: alice\r\n", INIT));
    h.connect_ok(false);
    h.reply(&json_ok("Mcp-Session-Id: up-a\r\n", "{}"));
    let token = header(&h.take_client(), "mcp-session-id")
        .unwrap()
        .to_string();
    // the same token from another user: 404, counted as binding
    h.reconnect();
    h.events.clear();
    h.send(&post_as(Some(&token), "X-User: mallory\r\n", CALL));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert!(h.connects.is_empty());
    assert!(h.events.contains(&Event::SessionRefused {
        cause: Refusal::Binding
    }));
    // and without the header (then the peer names the caller): 404 too
    h.reconnect();
    h.send(&post("/mcp", Some(&token), CALL));
    assert_eq!(status_of(&h.take_client()), 404);
    // the same user from another connection: routed
    h.reconnect();
    h.send(&post_as(Some(&token), "X-User: alice\r\n", CALL));
    assert_eq!(h.connects.len(), 1);
}

#[test]
fn bearer_sub_binding_survives_a_token_refresh() {
    let mut c = sealed(1, K1);
    c.session_binding = true;
    c.client_identity = ClientIdentity::BearerSub;
    let mut h = H::with(c);
    let auth = |j: String| format!("Authorization: Bearer {j}\r\n");
    h.send(&post_as(None, &auth(jwt("https://idp", "u1", 1)), INIT));
    h.connect_ok(false);
    h.reply(&json_ok("Mcp-Session-Id: up-b\r\n", "{}"));
    let token = header(&h.take_client(), "mcp-session-id")
        .unwrap()
        .to_string();
    // refreshed JWT (new exp, new signature), same iss and sub: 200
    h.reconnect();
    h.send(&post_as(
        Some(&token),
        &auth(jwt("https://idp", "u1", 2)),
        CALL,
    ));
    h.connect_ok(false);
    h.reply(&json_ok("", "{}"));
    assert_eq!(status_of(&h.take_client()), 200);
    // another subject: 404
    h.reconnect();
    h.send(&post_as(
        Some(&token),
        &auth(jwt("https://idp", "u2", 2)),
        CALL,
    ));
    assert_eq!(status_of(&h.take_client()), 404);
    // same sub from another issuer: 404
    h.reconnect();
    h.send(&post_as(
        Some(&token),
        &auth(jwt("https://evil", "u1", 2)),
        CALL,
    ));
    assert_eq!(status_of(&h.take_client()), 404);
    assert!(h.connects.is_empty());
}

#[test]
fn passthrough_binding_compares_the_record_client() {
    let mut c = config(1);
    c.session_binding = true;
    c.client_identity = ClientIdentity::parse("header:x-user").unwrap();
    let mut h = H::with(c);
    h.send(&post_as(None, "X-User: alice\r\n", INIT));
    h.connect_ok(false);
    h.reply(&json_ok("Mcp-Session-Id: plain-1\r\n", "{}"));
    assert!(h.take_client().contains("Mcp-Session-Id: plain-1"));
    h.reconnect();
    h.events.clear();
    h.send(&post_as(Some("plain-1"), "X-User: mallory\r\n", CALL));
    assert_eq!(status_of(&h.take_client()), 404);
    assert!(h.connects.is_empty());
    assert!(h.events.contains(&Event::SessionRefused {
        cause: Refusal::Binding
    }));
    h.reconnect();
    h.send(&post_as(Some("plain-1"), "X-User: alice\r\n", CALL));
    assert_eq!(h.connects.len(), 1);
}

#[test]
fn key_rotation_without_restart() {
    let mut a = H::with(sealed(1, &format!("old:{K1}")));
    let t_old = init_sealed(&mut a, "up-old");
    // reload: a new sealing key first, the old one still opens
    let cfg = sealed(1, &format!("new:{K2}\nold:{K1}"));
    let backends = cfg.backends.clone();
    a.router.set_backends(cfg, backends, a.now);
    a.reconnect();
    let t_new = init_sealed(&mut a, "up-new");
    for t in [&t_old, &t_new] {
        a.reconnect();
        a.send(&post("/mcp", Some(t), CALL));
        assert_eq!(a.connects.len(), 1);
    }
    // reload without the old key: its tokens stop opening, the new ones still do
    let cfg = sealed(1, &format!("new:{K2}"));
    let backends = cfg.backends.clone();
    a.router.set_backends(cfg, backends, a.now);
    assert_refused(&mut a, &t_old, Refusal::UnknownKey);
    a.reconnect();
    a.send(&post("/mcp", Some(&t_new), CALL));
    assert_eq!(a.connects.len(), 1);
}

#[test]
fn an_upstream_id_too_long_to_seal_gets_502_and_is_never_handed_out() {
    let mut a = H::with(sealed(1, K1));
    let long = "x".repeat(141);
    a.send(&post("/mcp", None, INIT));
    a.connect_ok(false);
    a.reply(&json_ok(&format!("Mcp-Session-Id: {long}\r\n"), "{}"));
    let resp = a.take_client();
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(!resp.contains(&long));
    // longer than the router reads at all: not handed out either
    a.reconnect();
    let huge = "h".repeat(300);
    a.send(&post("/mcp", None, INIT));
    a.connect_ok(false);
    a.reply(&json_ok(&format!("Mcp-Session-Id: {huge}\r\n"), "{}"));
    let resp = a.take_client();
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(!resp.contains(&huge));
    // 128 bytes fit in 240 characters, 140 in 256
    a.reconnect();
    assert_eq!(init_sealed(&mut a, &"y".repeat(128)).len(), 240);
    a.reconnect();
    assert_eq!(init_sealed(&mut a, &"z".repeat(140)).len(), 256);
}

#[test]
fn legacy_sse_endpoint_is_sealed_and_its_posts_opened_on_another_replica() {
    for chunked in [true, false] {
        let mut a = H::with(sealed(2, K1));
        let mut b = H::with(sealed(2, K1));
        a.send(b"GET /sse HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\n\r\n");
        let backend = a.connects[0].0;
        a.connect_ok(false);
        let ev = "event: endpoint\ndata: /messages/?session_id=abc123\n\n";
        if chunked {
            a.reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            a.reply(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
        } else {
            a.reply(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
            );
            a.reply(ev.as_bytes());
        }
        let out = a.take_client();
        assert!(!out.contains("abc123"), "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("data: "))
            .expect("the endpoint event");
        let token = line.split("session_id=").nth(1).unwrap().to_string();
        if chunked {
            // re-chunked: the chunk size matches the rewritten event
            let size = out
                .split("\r\n\r\n")
                .nth(1)
                .unwrap()
                .split("\r\n")
                .next()
                .unwrap();
            let body = out.split("\r\n\r\n").nth(1).unwrap();
            let chunk = &body[size.len() + 2..];
            assert_eq!(
                usize::from_str_radix(size, 16).unwrap(),
                chunk.len() - 2,
                "{out}"
            );
        }
        // the message POST through the other replica
        b.send(&post(&format!("/messages/?session_id={token}"), None, CALL));
        assert_eq!(b.connects, [(backend, false)]);
        b.connect_ok(false);
        let up = b.take_upstream();
        assert!(
            up.starts_with("POST /messages/?session_id=abc123 HTTP/1.1\r\n"),
            "{up}"
        );
        b.reply(b"HTTP/1.1 202 Accepted\r\nContent-Length: 8\r\n\r\nAccepted");
        assert_eq!(status_of(&b.take_client()), 202);
        // the stream goes on; its end is re-framed
        let more = "event: message\ndata: {}\n\n";
        if chunked {
            a.reply(format!("{:x}\r\n{more}\r\n0\r\n\r\n", more.len()).as_bytes());
            let out = a.take_client();
            assert!(
                out.ends_with(&format!("{:x}\r\n{more}\r\n0\r\n\r\n", more.len())),
                "{out:?}"
            );
        } else {
            a.reply(more.as_bytes());
            assert_eq!(a.take_client(), more);
        }
        assert_eq!(a.store_ops + b.store_ops, 0);
    }
}

#[test]
fn with_records_a_deleted_sealed_session_gets_a_precise_404() {
    let mut c = sealed(1, K1);
    c.session_records = true;
    let mut a = H::with(c);
    let token = init_sealed(&mut a, "up-r");
    assert!(a.lookup("up-r").is_some(), "recorded under the upstream id");
    a.reconnect();
    a.send(
        format!("DELETE /mcp HTTP/1.1\r\nHost: r\r\nMcp-Session-Id: {token}\r\n\r\n").as_bytes(),
    );
    a.connect_ok(false);
    a.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status_of(&a.take_client()), 200);
    assert!(a.lookup("up-r").is_none());
    a.reconnect();
    a.send(&post("/mcp", Some(&token), CALL));
    assert_eq!(status_of(&a.take_client()), 404);
    assert!(a.connects.is_empty());
}
