//! The harness of the connection-machine tests (`conn.rs`, `sealed.rs`): core's one
//! simulator ([`mcp_router_core::sim::Sim`], here `H`) and request/response builders.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use mcp_router_core::sim::{config, key, Sim as H, UNIX_NOW};

/// Initialize `sid` (the session id the backend's answer carries) with `body` on
/// whichever backend the router picks, and expect a 200 that hands the client that id;
/// returns the backend.
pub fn init_with(h: &mut H, sid: &str, body: &str) -> u16 {
    let (b, resp) = init_minting(h, sid, body);
    assert!(resp.contains(&format!("Mcp-Session-Id: {sid}")), "{resp}");
    b
}

/// Send `body` as an `initialize`, let the backend the router picks answer 200 minting
/// `sid`, and expect a 200: the backend and the client's response.
pub fn init_minting(h: &mut H, sid: &str, body: &str) -> (u16, String) {
    h.send(&post("/mcp", None, body));
    let b = h.connects.last().expect("connect").0;
    h.connect_ok(false);
    h.reply(&json_ok(
        &format!("Mcp-Session-Id: {sid}\r\n"),
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 200, "{resp}");
    (b, resp)
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
