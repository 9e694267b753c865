//! Drives the built `mcp-fake-backend` binary over real sockets with a tiny
//! raw HTTP/1.1 client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TICK_MS: &str = "20";

use mcp_router_testkit::harness::{initialize, post_json, Conn};

/// A running backend; killed when dropped.
struct Backend {
    child: Child,
    addr: String,
}

impl Backend {
    fn start(name: &str) -> Backend {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-fake-backend"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
                "--tick-ms",
                TICK_MS,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mcp-fake-backend");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read LISTENING line");
        let addr = line
            .trim_end()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Backend { child, addr }
    }

    fn conn(&self) -> Conn {
        Conn::open(&self.addr)
    }

    fn stats(&self) -> Value {
        let r = self.conn().request("GET", "/stats", &[], "");
        assert_eq!(r.status, 200);
        r.json()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn initialize_mints_session_and_requests_stick() {
    let b = Backend::start("b1");
    let mut c = b.conn();
    let (r, sid) = initialize(&mut c, json!("init-7"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // <name>-<counter>-<16 hex>, visible ASCII only.
    let parts: Vec<&str> = sid.split('-').collect();
    assert_eq!(parts.len(), 3, "{sid}");
    assert_eq!(parts[0], "b1");
    assert!(parts[1].parse::<u64>().is_ok(), "{sid}");
    assert_eq!(parts[2].len(), 16);
    assert!(parts[2].bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(sid.bytes().all(|b| (0x21..=0x7e).contains(&b)));

    let v = r.json();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], "init-7");
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(v["result"]["serverInfo"]["name"], "b1");
    assert_eq!(v["result"]["backend"], "b1");
    assert_eq!(v["result"]["session"], sid.as_str());

    // A second initialize mints a different session.
    let (_, sid2) = initialize(&mut c, json!(2));
    assert_ne!(sid, sid2);

    // Notification: 202, empty body (same keep-alive connection throughout).
    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    // A response from the client is also just accepted.
    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":99,"result":{}}),
    );
    assert_eq!(r.status, 202);

    for seq in 1..=3 {
        let r = post_json(
            &mut c,
            "/mcp",
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":seq * 10,"method":"tools/list"}),
        );
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["id"], seq * 10);
        assert_eq!(v["result"]["backend"], "b1");
        assert_eq!(v["result"]["session"], sid.as_str());
        assert_eq!(v["result"]["method"], "tools/list");
        assert_eq!(v["result"]["seq"], seq);
    }
    // The other session has its own count.
    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid2),
        &json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
    );
    assert_eq!(r.json()["result"]["seq"], 1);
}

#[test]
fn initialize_over_sse_when_asked() {
    let b = Backend::start("b2");
    let mut c = b.conn();
    c.send(
        "POST",
        "/mcp?sse=1",
        &[("Accept", "application/json, text/event-stream")],
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize"}).to_string(),
    );
    let head = c.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let sid = head.header("mcp-session-id").unwrap().to_string();
    let v = c.next_json_event();
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["serverInfo"]["name"], "b2");
    assert_eq!(v["result"]["session"], sid.as_str());
    assert!(
        c.next_event().is_none(),
        "stream must end after the response"
    );
    // The connection stays usable.
    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
    );
    assert_eq!(r.json()["result"]["backend"], "b2");
}

#[test]
fn unknown_session_delete_and_errors() {
    let b = Backend::start("b3");
    let mut c = b.conn();

    let r = post_json(
        &mut c,
        "/mcp",
        Some("b3-1-0000000000000000"),
        &json!({"jsonrpc":"2.0","id":"q","method":"tools/list"}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["id"], "q");
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(v["error"]["message"], "Session not found");

    let (_, sid) = initialize(&mut c, json!(1));
    let r = c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"ping"}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], -32001);
    assert_eq!(r.json()["id"], 5);
    let r = c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], -32001);

    // GET without a session: 400 -32000; unknown: 404.
    let r = c.request("GET", "/mcp", &[("Accept", "text/event-stream")], "");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32000);
    let r = c.request(
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream"), ("Mcp-Session-Id", &sid)],
        "",
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], -32001);

    // Unparseable body: 400 -32700.
    let r = c.request("POST", "/mcp", &[], "{not json");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700);
    assert_eq!(r.json()["id"], Value::Null);
    // Stateless request: answered with session null; notification 202.
    let r = post_json(
        &mut c,
        "/mcp",
        None,
        &json!({"jsonrpc":"2.0","id":8,"method":"tools/list"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["session"], Value::Null);
    assert_eq!(r.json()["result"]["backend"], "b3");
    let r = post_json(
        &mut c,
        "/mcp",
        None,
        &json!({"jsonrpc":"2.0","method":"notifications/x"}),
    );
    assert_eq!(r.status, 202);

    // Garbage on a fresh connection gets a 400, and the server lives on.
    let mut raw = TcpStream::connect(&b.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = raw.read_to_end(&mut out);
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"),
        "{out:?}"
    );
    assert_eq!(b.stats()["name"], "b3");
}

#[test]
fn get_stream_delivers_events_until_delete() {
    let b = Backend::start("b4");
    let mut c = b.conn();
    let (_, sid) = initialize(&mut c, json!(1));

    let mut s = b.conn();
    s.send(
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream"), ("Mcp-Session-Id", &sid)],
        "",
    );
    let head = s.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    for n in 1..=3 {
        let v = s.next_json_event();
        assert_eq!(v["method"], "notifications/message");
        assert_eq!(v["params"]["backend"], "b4");
        assert_eq!(v["params"]["n"], n);
    }
    // Deleting the session ends its GET stream.
    let r = c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    assert_eq!(r.status, 200);
    while s.next_event().is_some() {}
}

#[test]
fn stream_echo_and_big_tools() {
    let b = Backend::start("b5");
    let mut c = b.conn();
    let (_, sid) = initialize(&mut c, json!(1));

    let started = Instant::now();
    c.send(
        "POST",
        "/mcp",
        &[("Mcp-Session-Id", &sid)],
        &json!({"jsonrpc":"2.0","id":"s","method":"tools/call",
            "params":{"name":"stream","arguments":{"count":4}}})
        .to_string(),
    );
    let head = c.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    for k in 1..=4 {
        let v = c.next_json_event();
        assert_eq!(v["method"], "notifications/progress");
        assert_eq!(v["params"]["progress"], k);
        assert_eq!(v["params"]["backend"], "b5");
    }
    let v = c.next_json_event();
    assert_eq!(v["id"], "s");
    assert_eq!(v["result"]["backend"], "b5");
    assert_eq!(v["result"]["session"], sid.as_str());
    assert!(c.next_event().is_none());
    // 4 progress events then the result: 4 ticks of 20 ms apart at least.
    assert!(started.elapsed() >= Duration::from_millis(80));

    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
            "params":{"name":"echo","arguments":{"x":[1,"two",{"three":3}]}}}),
    );
    let v = r.json();
    assert_eq!(v["result"]["backend"], "b5");
    assert_eq!(v["result"]["echo"], json!({"x":[1,"two",{"three":3}]}));

    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
            "params":{"name":"big","arguments":{"bytes":3_000_000}}}),
    );
    let v = r.json();
    assert_eq!(v["result"]["backend"], "b5");
    assert_eq!(v["result"]["data"].as_str().unwrap().len(), 3_000_000);

    // A large request body is read whole.
    let payload = "y".repeat(2_000_000);
    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":4,"method":"tools/call",
            "params":{"name":"echo","arguments":{"p":payload}}}),
    );
    assert_eq!(
        r.json()["result"]["echo"]["p"].as_str().unwrap().len(),
        2_000_000
    );
}

fn legacy_round_trip(b: &Backend, sse_path: &str, messages_prefix: &str) {
    let mut s = b.conn();
    s.send("GET", sse_path, &[("Accept", "text/event-stream")], "");
    let head = s.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let (event, endpoint) = s.next_event().unwrap();
    assert_eq!(event, "endpoint");
    assert!(endpoint.starts_with(messages_prefix), "{endpoint}");
    let sid = &endpoint[messages_prefix.len()..];
    assert!(sid.starts_with("b6-"), "{sid}");
    assert_eq!(b.stats()["sse_sessions"], 1);

    let mut c = b.conn();
    let r = post_json(
        &mut c,
        &endpoint,
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}),
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.text(), "Accepted");
    let v = s.next_json_event();
    assert_eq!(v["id"], 0);
    assert_eq!(v["result"]["serverInfo"]["name"], "b6");
    assert_eq!(v["result"]["session"], sid);

    // Notifications put nothing on the stream: the next event answers id 1.
    let r = post_json(
        &mut c,
        &endpoint,
        None,
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(r.status, 202);
    let r = post_json(
        &mut c,
        &endpoint,
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    );
    assert_eq!(r.status, 202);
    let v = s.next_json_event();
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["backend"], "b6");
    assert_eq!(v["result"]["method"], "tools/list");
    assert_eq!(v["result"]["seq"], 1);

    // Closing the stream forgets the session.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.stats()["sse_sessions"] != 0 {
        assert!(Instant::now() < deadline, "legacy session not forgotten");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = post_json(
        &mut c,
        &endpoint,
        None,
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "Could not find session");
}

#[test]
fn legacy_sse_sessions() {
    let b = Backend::start("b6");
    legacy_round_trip(&b, "/sse", "/messages?sessionId=");
    legacy_round_trip(&b, "/sse?style=python", "/messages/?session_id=");
    let mut c = b.conn();
    let r = post_json(
        &mut c,
        "/messages?sessionId=nope",
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "Could not find session");
}

#[test]
fn the_effect_tool_answers_after_its_delay() {
    // (its stdout line is read by the suite's failover test, through the harness)
    let b = Backend::start("b8");
    let mut c = b.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    let t = Instant::now();
    let r = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
                "params":{"name":"effect","arguments":{"key":"k1","delay_ms":200}}}),
    );
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["id"], 2);
    assert_eq!(v["result"]["effect"], "k1");
    assert_eq!(v["result"]["session"], sid.as_str());
}

#[test]
fn stats_count_sessions_and_requests() {
    let b = Backend::start("b7");
    let s = b.stats();
    // the stats connection itself is the one open connection
    assert_eq!(
        s,
        json!({"name":"b7","sessions":0,"sse_sessions":0,"requests":0,"connections":1,
               "deletes":0,"deleted_ids":[],"last_delete_headers":null})
    );
    let mut c = b.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    initialize(&mut c, json!(2));
    post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":3,"method":"ping"}),
    );
    let s = b.stats();
    assert_eq!(s["sessions"], 2);
    assert_eq!(s["requests"], 3);
    c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    let s = b.stats();
    assert_eq!(s["sessions"], 1);
    assert_eq!(s["requests"], 4);
}

#[test]
fn many_concurrent_connections() {
    let b = Backend::start("b8");
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let addr = b.addr.clone();
            std::thread::spawn(move || {
                let mut c = Conn::open(&addr);
                let (_, sid) = initialize(&mut c, json!(0));
                for i in 1..=50 {
                    let r = post_json(
                        &mut c,
                        "/mcp",
                        Some(&sid),
                        &json!({"jsonrpc":"2.0","id":i,"method":"ping"}),
                    );
                    let v = r.json();
                    assert_eq!(v["result"]["seq"], i);
                    assert_eq!(v["result"]["session"], sid.as_str());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = b.stats();
    assert_eq!(s["sessions"], 32);
    assert_eq!(s["requests"], 32 * 51);
}

#[test]
fn sigterm_exits_promptly() {
    let mut b = Backend::start("b9");
    let pid = b.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = b.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}
