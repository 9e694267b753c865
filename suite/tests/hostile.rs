//! Hostile input against the real `mcp-router` binary: request smuggling variants,
//! floods, slowloris, invalid bytes, absurd chunk sizes, ten thousand dropped
//! connections, and backends that send garbage, close mid-response or send extra bytes
//! after a response. Each case gets a clear status or a clean close, and an established
//! session on a healthy backend carries on.

use mcp_router_testkit::harness::{initialize, post_json, router_bin, Conn, Proc};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn router(backends: &[String], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        args.push("--backend".into());
        args.push(format!("b{i}=http://{b}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::router(router_bin(), "router", &refs)
}

/// Send `bytes` on a new connection and read until the router closes it (10 s at
/// most). Returns what was read and whether the close came in time.
fn exchange(addr: &str, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // the router may refuse and close before reading everything: a failed write is fine
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let closed = s.read_to_end(&mut got).is_ok();
    (got, closed)
}

fn status_of(got: &[u8]) -> Option<u16> {
    let line = got.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// The one answer to a refused request: `status`, a JSON-RPC error body, and a close.
fn assert_refused(addr: &str, case: &str, bytes: &[u8], statuses: &[u16]) {
    let (got, closed) = exchange(addr, bytes);
    let text = String::from_utf8_lossy(&got);
    let status = status_of(&got);
    assert!(
        status.is_some_and(|s| statuses.contains(&s)),
        "{case}: wanted one of {statuses:?}, got {text:?}"
    );
    assert!(closed, "{case}: the router did not close the connection");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{case}: {text:?}"
    );
    // exactly one response: nothing smuggled behind it
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{case}: {text:?}");
}

/// The established session still works and stays on its backend.
fn still_works(conn: &mut Conn, sid: &str, backend: &str, id: u64) {
    let r = post_json(
        conn,
        "/mcp",
        Some(sid),
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    assert_eq!(v["result"]["backend"], backend);
    assert_eq!(v["result"]["session"], sid);
}

fn smuggling_floods_and_invalid_bytes_get_a_status_and_a_close() {
    let b0 = Proc::fake_backend("b0");
    let r = router(
        std::slice::from_ref(&b0.addr),
        &["--max-inspect-body", "4096"],
    );
    let addr = r.addr.clone();
    let mut c = Conn::open(&addr);
    let (_, sid) = initialize(&mut c, json!(0));
    still_works(&mut c, &sid, "b0", 1);

    let post = |fields: &str, body: &str| -> Vec<u8> {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{fields}\r\n{body}"
        )
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        // CL.TE and TE.CL: a front end and a back end disagreeing on the body's end
        (
            "CL.TE",
            post(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\nG",
            ),
            &[400],
        ),
        (
            "TE.CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\n",
            ),
            &[400],
        ),
        // obfuscated Transfer-Encoding: RFC 9112 section 6.3 item 4, chunked not final
        // is 400; a known shape with a coding the router does not pass on is 501
        (
            "TE xchunked",
            post("Transfer-Encoding: xchunked\r\n", ""),
            &[400],
        ),
        (
            "TE chunked then identity",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "",
            ),
            &[400],
        ),
        (
            "TE chunked twice",
            post("Transfer-Encoding: chunked, chunked\r\n", ""),
            &[400],
        ),
        (
            "TE gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            &[501],
        ),
        (
            "TE space before colon",
            post("Transfer-Encoding : chunked\r\n", ""),
            &[400],
        ),
        (
            "TE quoted",
            post("Transfer-Encoding: \"chunked\"\r\n", ""),
            &[400],
        ),
        (
            "TE folded",
            post("Transfer-Encoding:\r\n chunked\r\n", ""),
            &[400],
        ),
        (
            "TE in HTTP/1.0",
            b"POST /mcp HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            &[400],
        ),
        // duplicate fields
        (
            "differing Content-Lengths",
            post("Content-Length: 2\r\nContent-Length: 3\r\n", "{}"),
            &[400],
        ),
        (
            "Content-Length list",
            post("Content-Length: 2, 3\r\n", "{}"),
            &[400],
        ),
        (
            "signed Content-Length",
            post("Content-Length: +2\r\n", "{}"),
            &[400],
        ),
        (
            "two Hosts",
            b"GET /mcp HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            &[400],
        ),
        // invalid bytes
        (
            "NUL in a value",
            b"GET /mcp HTTP/1.1\r\nX-A: a\x00b\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "control byte in a value",
            b"GET /mcp HTTP/1.1\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "space in a name",
            b"GET /mcp HTTP/1.1\r\nX A: b\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "bad request line",
            b"GET  /mcp HTTP/1.1\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "absolute-form target",
            b"GET http://evil/mcp HTTP/1.1\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "session id with a space",
            b"GET /mcp HTTP/1.1\r\nConnection: close\r\nAccept: text/event-stream\r\nMcp-Session-Id: a\tb\r\n\r\n"
                .to_vec(),
            &[400],
        ),
        // absurd chunk sizes
        (
            "17-digit chunk size",
            post(
                "Transfer-Encoding: chunked\r\n",
                "fffffffffffffffff\r\nx\r\n0\r\n\r\n",
            ),
            &[400],
        ),
        (
            "negative chunk size",
            post("Transfer-Encoding: chunked\r\n", "-1\r\nx\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "hex-prefixed chunk size",
            post("Transfer-Encoding: chunked\r\n", "0x1\r\nx\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "chunk extension flood",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(8000)),
            ),
            &[400],
        ),
        (
            "bare LF chunk framing",
            post("Transfer-Encoding: chunked\r\n", "1\nx\n0\n\n"),
            &[400],
        ),
        // floods
        (
            "header count flood",
            format!("GET /mcp HTTP/1.1\r\n{}\r\n", "X-F: 1\r\n".repeat(500)).into_bytes(),
            &[431],
        ),
        (
            "header size flood",
            format!("GET /mcp HTTP/1.1\r\nX-F: {}\r\n\r\n", "a".repeat(40_000)).into_bytes(),
            &[431],
        ),
        (
            "body flood without a session",
            post(
                "Content-Length: 9000\r\n",
                &format!("{{\"params\":\"{}\"}}", "a".repeat(8986)),
            ),
            &[413],
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            &[400, 505],
        ),
    ];
    for (case, bytes, statuses) in &cases {
        assert_refused(&addr, case, bytes, statuses);
    }
    // a chunk size that fits u64 but is never sent: the client closes mid-body, and so
    // does the router, without answering twice or hanging
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&post(
        "Mcp-Session-Id: nope\r\nTransfer-Encoding: chunked\r\n",
        "ffffffffffffffff\r\n{\"id\":1,",
    ))
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    assert!(s.read_to_end(&mut got).is_ok(), "no clean close");
    let text = String::from_utf8_lossy(&got);
    assert!(text.matches("HTTP/1.1 ").count() <= 1, "{text:?}");

    still_works(&mut c, &sid, "b0", 2);
}

fn slowloris_gets_408_and_a_close() {
    let b0 = Proc::fake_backend("b0");
    let r = router(
        std::slice::from_ref(&b0.addr),
        &["--header-timeout", "300ms"],
    );
    let mut c = Conn::open(&r.addr);
    let (_, sid) = initialize(&mut c, json!(0));
    let start = Instant::now();
    let mut s = TcpStream::connect(&r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let mut dribble = TcpStream::connect(&r.addr).unwrap();
    dribble
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // one header byte every 100 ms does not extend the deadline
    let mut got = Vec::new();
    for b in b"GET /mcp HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
        if dribble.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(dribble.read_to_end(&mut got).is_ok());
    assert_eq!(
        status_of(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let mut got = Vec::new();
    assert!(s.read_to_end(&mut got).is_ok(), "no close after 408");
    assert_eq!(
        status_of(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    still_works(&mut c, &sid, "b0", 1);
}

fn ten_thousand_connections_opened_and_dropped() {
    let b0 = Proc::fake_backend("b0");
    let r = router(std::slice::from_ref(&b0.addr), &[]);
    let mut c = Conn::open(&r.addr);
    let (_, sid) = initialize(&mut c, json!(0));
    let mut opened = 0;
    while opened < 10_000 {
        // at most 100 open at once: the default fd limit may be 1024
        let batch: Vec<TcpStream> = (0..100)
            .map(|i| {
                let mut s = TcpStream::connect(&r.addr).expect("router stopped accepting");
                if i % 4 == 0 {
                    // some drop mid-head
                    let _ = s.write_all(b"POST /mcp HTTP/1.1\r\nContent-Le");
                }
                s
            })
            .collect();
        opened += batch.len();
        drop(batch);
    }
    still_works(&mut c, &sid, "b0", 1);
    let mut fresh = Conn::open(&r.addr);
    still_works(&mut fresh, &sid, "b0", 2);
    let (_, sid2) = initialize(&mut fresh, json!(3));
    still_works(&mut fresh, &sid2, "b0", 4);
}

/// A backend that answers each request on a keep-alive connection (its `initialize`
/// mints `closer-1`), then closes that connection 50 ms later without having said it
/// would; it counts the connections it accepted.
fn closing_backend() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end().to_ascii_lowercase();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let minted = if v["method"] == "initialize" {
                    "Mcp-Session-Id: closer-1\r\n"
                } else {
                    ""
                };
                let b =
                    json!({"jsonrpc":"2.0","id":v["id"],"result":{"backend":"closer"}}).to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{minted}Content-Length: {}\r\n\r\n",
                    b.len()
                );
                let mut w = s;
                let _ = w.write_all(format!("{head}{b}").as_bytes());
                std::thread::sleep(Duration::from_millis(50));
                let _ = w.shutdown(Shutdown::Both);
            });
        }
    });
    (addr, accepted)
}

/// The router keeps upstream connections for reuse, and a backend may close one while
/// it sits idle: every request still gets its answer. Two mechanisms stand behind
/// that, each pinned by its own test: the frontend's liveness check keeps a closed
/// connection from being handed out (glommio: `idle_alive_sees_close_and_stray_bytes`),
/// and a request that meets one anyway is sent again, whole, on a fresh connection
/// (core: `body_that_arrives_while_the_stale_connection_is_replaced_is_sent_too`).
/// This test fails when both fail at once; with a liveness check that always says
/// "alive", it failed (a hang) until the resend kept the body that arrived meanwhile.
/// The requests are larger than the router's read size, so their bodies are still
/// arriving when a stale connection is found.
fn a_pooled_connection_the_backend_closed_is_not_reused() {
    use std::sync::atomic::Ordering;
    let (b, accepted) = closing_backend();
    let r = router(&[b], &[]);
    let mut c = Conn::open(&r.addr);
    let (_, sid) = initialize(&mut c, json!(0));
    assert_eq!(sid, "closer-1");
    let pad = "x".repeat(70 * 1024);
    for id in 1..=3 {
        // the backend's close (50 ms after its answer) reaches the idle connection
        std::thread::sleep(Duration::from_millis(300));
        let resp = post_json(
            &mut c,
            "/mcp",
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"pad":pad}}}),
        );
        assert_eq!(resp.status, 200, "request {id}: {}", resp.text());
        assert_eq!(resp.json()["result"]["backend"], "closer");
    }
    // one connection per request, each closed after it
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

/// A backend that mints one session (`bad-1`) on `initialize` and then misbehaves as
/// each request's `X-Case` field says.
fn bad_backend() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || serve_badly(s));
        }
    });
    addr
}

fn serve_badly(s: TcpStream) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut case = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "x-case" => case = v.trim().to_string(),
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let ok = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let out: Vec<u8> = match case.as_str() {
            "" => {
                let b = r#"{"jsonrpc":"2.0","id":0,"result":{"backend":"bad"}}"#;
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: bad-1\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
                .into_bytes()
            }
            "garbage" => b"\x00\x01\x02 this is not HTTP\r\n\r\n".to_vec(),
            "close-before" => Vec::new(),
            "close-mid" => {
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":".to_vec()
            }
            "close-mid-chunked" => {
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:".to_vec()
            }
            "extra" => {
                let mut v = ok(r#"{"n":1}"#).into_bytes();
                v.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"n\":6}");
                v
            }
            "after-extra" => ok(r#"{"n":2}"#).into_bytes(),
            "absurd-chunk" => {
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nx".to_vec()
            }
            "bad-header" => b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "cl-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}".to_vec(),
            "huge-head" => {
                format!("HTTP/1.1 200 OK\r\nX-F: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(40_000)).into_bytes()
            }
            "upgrade" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n".to_vec(),
            _ => ok("{}").into_bytes(),
        };
        let _ = w.write_all(&out);
        let closes = matches!(
            case.as_str(),
            "garbage"
                | "close-before"
                | "close-mid"
                | "close-mid-chunked"
                | "absurd-chunk"
                | "bad-header"
                | "cl-te"
                | "huge-head"
                | "upgrade"
        );
        if closes {
            let _ = w.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn a_misbehaving_backend_gets_502_or_a_clean_close_and_others_carry_on() {
    let good = Proc::fake_backend("b0");
    let bad = bad_backend();
    let r = router(&[good.addr.clone(), bad], &[]);
    // two sessions: least-sessions placement puts one on each backend
    let mut c = Conn::open(&r.addr);
    let (r1, s1) = initialize(&mut c, json!(1));
    let (r2, s2) = initialize(&mut c, json!(2));
    let (good_sid, bad_sid) = match (
        r1.json()["result"]["backend"].as_str(),
        r2.json()["result"]["backend"].as_str(),
    ) {
        (Some("b0"), Some("bad")) => (s1, s2),
        (Some("bad"), Some("b0")) => (s2, s1),
        other => panic!("sessions not spread over both backends: {other:?}"),
    };
    assert_eq!(bad_sid, "bad-1");
    let req = |case: &str| -> Vec<u8> {
        let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#;
        format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nMcp-Session-Id: bad-1\r\nX-Case: {case}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let mut n = 10;
    for case in [
        "garbage",
        "close-before",
        "bad-header",
        "cl-te",
        "huge-head",
        "upgrade",
    ] {
        let (got, closed) = exchange(&r.addr, &req(case));
        let text = String::from_utf8_lossy(&got);
        assert_eq!(status_of(&got), Some(502), "{case}: {text:?}");
        assert!(closed, "{case}: no close");
        // a request of a session is not sniffed, so the error cannot echo its id
        assert!(text.contains("\"code\":-32000"), "{case}: {text:?}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{case}: {text:?}");
        still_works(&mut c, &good_sid, "b0", n);
        n += 1;
    }
    // closing mid-response, or an invalid chunk after the head was relayed: the head
    // went out, so the client sees a truncated body and a close, never a second head
    for case in ["close-mid", "close-mid-chunked", "absurd-chunk"] {
        let (got, closed) = exchange(&r.addr, &req(case));
        let text = String::from_utf8_lossy(&got);
        assert!(closed, "{case}: no close");
        assert!(
            matches!(status_of(&got), Some(200) | Some(502)),
            "{case}: {text:?}"
        );
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{case}: {text:?}");
        still_works(&mut c, &good_sid, "b0", n);
        n += 1;
    }
    // extra bytes after a response are never taken for the next response
    let mut k = Conn::open(&r.addr);
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#;
    for (case, want) in [("extra", 1), ("after-extra", 2), ("after-extra", 2)] {
        let v = k.request(
            "POST",
            "/mcp",
            &[("Mcp-Session-Id", "bad-1"), ("X-Case", case)],
            body,
        );
        assert_eq!(v.status, 200, "{case}");
        assert_eq!(v.json()["n"], want, "{case}: got the smuggled response");
    }
    still_works(&mut c, &good_sid, "b0", n);
    // the bad backend's session is still routed there (no failure marked it down)
    let v = k.request("POST", "/mcp", &[("Mcp-Session-Id", &bad_sid)], body);
    assert_eq!(v.status, 200);
}

/// Requests served by a fake backend so far (its `/stats` is not counted).
fn served(b: &Proc) -> u64 {
    b.stats()["requests"].as_u64().expect("requests")
}

/// What a fake backend received for a `/headers` request: (target, headers).
fn echoed(r: &mcp_router_testkit::harness::Response) -> (String, Vec<(String, String)>) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let headers = v["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (v["target"].as_str().unwrap().to_string(), headers)
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Issue 12, point 5: a request the router and the backend could read two ways is
/// refused with 400 and a JSON-RPC -32600 body, and the backend receives nothing. Also
/// a path that would escape a backend's base path, and a stateless-era request, whose
/// session id is not forwarded.
fn requests_with_two_readings_get_400_and_the_backend_receives_nothing() {
    let b0 = Proc::fake_backend("b0");
    let r = router(std::slice::from_ref(&b0.addr), &[]);
    let mut c = Conn::open(&r.addr);
    let (_, sid) = initialize(&mut c, json!(0));
    let (_, other) = initialize(&mut c, json!(1));
    still_works(&mut c, &sid, "b0", 2);
    let call =
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let ignored = format!("{other}-x");
    /// (case, path, header fields)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "two Mcp-Session-Id",
            "/mcp",
            vec![("Mcp-Session-Id", &sid), ("Mcp-Session-Id", &other)],
        ),
        (
            "Connection: Mcp-Session-Id",
            "/mcp",
            vec![("Connection", "Mcp-Session-Id"), ("Mcp-Session-Id", &sid)],
        ),
        (
            "Connection: MCP-Protocol-Version",
            "/mcp",
            vec![
                ("Connection", "keep-alive, MCP-Protocol-Version"),
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Session-Id", &sid),
            ],
        ),
        (
            "Connection: Last-Event-ID",
            "/mcp",
            vec![
                ("Connection", "last-event-id"),
                ("Last-Event-ID", "1"),
                ("Mcp-Session-Id", &sid),
            ],
        ),
        (
            "legacy query and header disagree",
            "/messages?sessionId=elsewhere",
            vec![("Mcp-Session-Id", &sid)],
        ),
        (
            "two query session ids",
            "/messages?sessionId=a&session_id=b",
            vec![],
        ),
        (
            "stateless with a query session id",
            "/messages?sessionId=a",
            vec![("MCP-Protocol-Version", "2026-07-28")],
        ),
        (
            "two versions",
            "/mcp",
            vec![
                ("MCP-Protocol-Version", "2026-07-28"),
                ("MCP-Protocol-Version", "2025-06-18"),
                ("Mcp-Session-Id", &ignored),
            ],
        ),
    ];
    let before = served(&b0);
    for (case, path, headers) in &cases {
        let mut k = Conn::open(&r.addr);
        let v = k.request("POST", path, headers, call);
        assert_eq!(v.status, 400, "{case}: {}", v.text());
        let body = v.json();
        assert_eq!(body["error"]["code"], -32600, "{case}: {body}");
        assert_eq!(body["id"], 9, "{case}: {body}");
        // one answer, and the connection goes on
        still_works(&mut k, &sid, "b0", 100);
    }
    let after = served(&b0);
    assert_eq!(
        after - before,
        cases.len() as u64,
        "only the follow-up requests reached the backend"
    );

    // the stateless era: the router does not route by the id, so it is not forwarded
    let modern_call = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let v = c.request(
        "POST",
        "/headers",
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "echo"),
            ("Mcp-Session-Id", &sid),
        ],
        modern_call,
    );
    let (_, headers) = echoed(&v);
    assert!(values(&headers, "mcp-session-id").is_empty(), "{headers:?}");
    assert_eq!(values(&headers, "mcp-protocol-version"), ["2026-07-28"]);

    // a base path cannot be escaped: dot segments in any spelling, before the prefix
    let t = router(&[format!("{}/tenant-a", b0.addr)], &[]);
    let mut k = Conn::open(&t.addr);
    let (target, _) = echoed(&k.request("GET", "/headers", &[], ""));
    assert_eq!(target, "/tenant-a/headers");
    let before = served(&b0);
    for path in [
        "/../tenant-b/headers",
        "/%2e%2e/tenant-b/headers",
        "/.%2E/tenant-b/headers",
        "/x/../../tenant-b/headers",
        "/..%2ftenant-b/headers",
        "/..;/tenant-b/headers",
        "/./headers",
    ] {
        let mut k = Conn::open(&t.addr);
        let v = k.request("GET", path, &[], "");
        assert_eq!(v.status, 400, "{path}: {}", v.text());
        assert_eq!(v.json()["error"]["code"], -32600, "{path}");
    }
    assert_eq!(served(&b0), before, "a traversal reached the backend");
}

/// Issue 12, point 7: the conformance suite's `dns-rebinding-protection` scenario, run
/// against the router (the same two requests: a foreign Host and Origin must get a 4xx,
/// the router's own loopback authority a 2xx), plus what the backend sees: the client's
/// Host unchanged, or with `--rewrite-host` its own authority, and `X-Forwarded-Host`
/// either way.
fn dns_rebinding_protection_survives_the_router() {
    let b0 = Proc::fake_backend("b0");
    let r = router(std::slice::from_ref(&b0.addr), &[]);
    let attempt = |host: &str| mcp_router_testkit::harness::rebinding_request(&r.addr, host);
    let before = served(&b0);
    let v = attempt("evil.example.com");
    assert_eq!(v.status, 403, "{}", v.text());
    assert_eq!(v.json()["error"]["code"], -32000);
    // "a JSON-RPC error response that has no id" (MCP 2025-11-25)
    assert_eq!(v.json()["id"], Value::Null);
    // a foreign Origin alone, and a foreign Host alone
    let mut k = Conn::open(&r.addr);
    let v = k.request(
        "GET",
        "/headers",
        &[("Origin", "http://evil.example.com")],
        "",
    );
    assert_eq!(v.status, 403);
    let v = k.request("GET", "/headers", &[("Host", "evil.example.com:80")], "");
    assert_eq!(v.status, 403);
    assert_eq!(
        served(&b0),
        before,
        "a rebinding request reached the backend"
    );
    let v = attempt(&r.addr);
    assert_eq!(v.status, 200, "{}", v.text());
    assert!(v.header("mcp-session-id").is_some());

    // the client's Host reaches the backend unchanged
    let (_, headers) = echoed(&k.request("GET", "/headers", &[("Host", "localhost:4321")], ""));
    assert_eq!(values(&headers, "host"), ["localhost:4321"]);
    assert_eq!(values(&headers, "x-forwarded-host"), ["localhost:4321"]);

    // --rewrite-host: the backend's authority, the client's kept aside
    let rw = router(std::slice::from_ref(&b0.addr), &["--rewrite-host"]);
    let mut k = Conn::open(&rw.addr);
    let (_, headers) = echoed(&k.request("GET", "/headers", &[("Host", "localhost:4321")], ""));
    assert_eq!(values(&headers, "host"), [b0.addr.as_str()]);
    assert_eq!(values(&headers, "x-forwarded-host"), ["localhost:4321"]);

    // lists of one's own
    let own = router(
        std::slice::from_ref(&b0.addr),
        &[
            "--allowed-hosts",
            "mcp.example.com",
            "--allowed-origins",
            "https://app.example.com",
        ],
    );
    let mut k = Conn::open(&own.addr);
    let ok = [
        ("Host", "mcp.example.com"),
        ("Origin", "https://app.example.com"),
    ];
    assert_eq!(k.request("GET", "/headers", &ok, "").status, 200);
    for bad in [
        [("Host", "localhost"), ("Origin", "https://app.example.com")],
        [
            ("Host", "mcp.example.com"),
            ("Origin", "http://app.example.com"),
        ],
        [
            ("Host", "mcp.example.com"),
            ("Origin", "https://evil.example.com"),
        ],
    ] {
        assert_eq!(
            k.request("GET", "/headers", &bad, "").status,
            403,
            "{bad:?}"
        );
    }
}

mcp_router_testkit::behaviour_suite!(
    requests_with_two_readings_get_400_and_the_backend_receives_nothing,
    dns_rebinding_protection_survives_the_router,
    smuggling_floods_and_invalid_bytes_get_a_status_and_a_close,
    slowloris_gets_408_and_a_close,
    ten_thousand_connections_opened_and_dropped,
    a_misbehaving_backend_gets_502_or_a_clean_close_and_others_carry_on,
    a_pooled_connection_the_backend_closed_is_not_reused,
);
