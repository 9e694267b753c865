//! End-to-end: the `mcp-router` binary in front of real `mcp-fake-backend` processes,
//! all on 127.0.0.1.

use mcp_router_testkit::harness::{
    initialize, open_session_stream, post_json, router_bin, Conn, Proc,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn router(backends: &[&Proc], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        args.push("--backend".into());
        args.push(format!("b{i}=http://{}", b.addr));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::router(router_bin(), "router", &refs)
}

fn call(conn: &mut Conn, sid: &str, id: u64) -> Value {
    let r = post_json(
        conn,
        "/mcp",
        Some(sid),
        &json!({"method":"tools/call","params":{"name":"echo","arguments":{"i":id}},"jsonrpc":"2.0","id":id}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn sixty_concurrent_sessions_each_stay_on_their_backend() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let r = router(&[&b0, &b1], &[]);
    let addr = r.addr.clone();
    let threads: Vec<_> = (0..60)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = Conn::open(&addr);
                let (resp, sid) = initialize(&mut c, json!(t));
                let owner = resp.json()["result"]["backend"]
                    .as_str()
                    .unwrap()
                    .to_string();
                for i in 0..10 {
                    // half the requests on fresh connections
                    let v = if i % 2 == 0 {
                        call(&mut c, &sid, i)
                    } else {
                        call(&mut Conn::open(&addr), &sid, i)
                    };
                    assert_eq!(
                        v["result"]["backend"],
                        owner.as_str(),
                        "session {sid} moved"
                    );
                    assert_eq!(v["result"]["session"], sid.as_str());
                    assert_eq!(v["id"], i);
                }
                let d = c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
                assert_eq!(d.status, 200);
                // and the session is gone, answered by the router
                let r = post_json(
                    &mut c,
                    "/mcp",
                    Some(&sid),
                    &json!({"jsonrpc":"2.0","id":99,"method":"ping"}),
                );
                assert_eq!(r.status, 404);
                assert_eq!(r.json()["error"]["code"], -32001);
                assert_eq!(r.json()["id"], 99);
                owner
            })
        })
        .collect();
    let mut per: HashMap<String, usize> = HashMap::new();
    for t in threads {
        *per.entry(t.join().expect("session thread")).or_default() += 1;
    }
    // Least-sessions balances live sessions, not totals (a backend whose sessions end
    // sooner gets more): both replicas take sessions. Exact placement is checked with
    // sequential sessions in the backend-kill test and in the core's tests.
    assert_eq!(per.values().sum::<usize>(), 60);
    assert!(per.len() == 2, "one backend took every session: {per:?}");
    // every record was removed by its DELETE
    assert!(
        r.wait_count("session ended", 60, Duration::from_secs(5)),
        "{:?}",
        r.logs()
    );
    assert_eq!(r.count_logs("session started"), 60);
    assert_eq!(r.count_logs("cause=\"delete\""), 60);
    assert_eq!(b0.stats()["sessions"], 0);
    assert_eq!(b1.stats()["sessions"], 0);
}

fn unknown_session_is_404_and_never_reaches_a_backend() {
    let b0 = Proc::fake_backend("b0");
    let r = router(&[&b0], &[]);
    let before = b0.stats()["requests"].as_u64().unwrap();
    let mut c = r.conn();
    let resp = post_json(
        &mut c,
        "/mcp",
        Some("no-such-session"),
        &json!({"jsonrpc":"2.0","id":"x1","method":"tools/list"}),
    );
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":"x1","error":{"code":-32001,"message":"Session not found"}})
    );
    let g = c.request(
        "GET",
        "/mcp",
        &[("Mcp-Session-Id", "nope"), ("Accept", "text/event-stream")],
        "",
    );
    assert_eq!(g.status, 404);
    assert_eq!(b0.stats()["requests"].as_u64().unwrap(), before);
    // a malformed session id is 400
    let bad = post_json(
        &mut c,
        "/mcp",
        Some("a\u{7f}b"),
        &json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
    );
    assert_eq!(bad.status, 400);
}

fn sse_streams_flow_through() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let r = router(&[&b0, &b1], &[]);
    let mut c = r.conn();
    let (resp, sid) = initialize(&mut c, json!(1));
    let owner = resp.json()["result"]["backend"]
        .as_str()
        .unwrap()
        .to_string();
    // a GET stream: events arrive one by one, from the owner
    let (mut g, head) = open_session_stream(&r.addr, &sid);
    assert_eq!(head.status, 200);
    assert!(head
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    for n in 1..=5 {
        let ev = g.next_json_event();
        assert_eq!(ev["params"]["backend"], owner.as_str());
        assert_eq!(ev["params"]["n"], n);
    }
    // a POST answered with an SSE stream: progress notifications, then the result
    let mut p = r.conn();
    p.send(
        "POST",
        "/mcp",
        &[("Mcp-Session-Id", &sid), ("Accept", "application/json, text/event-stream")],
        &json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"stream","arguments":{"count":4}}}).to_string(),
    );
    let head = p.read_head();
    assert_eq!(head.status, 200);
    for k in 1..=4 {
        let ev = p.next_json_event();
        assert_eq!(ev["method"], "notifications/progress");
        assert_eq!(ev["params"]["progress"], k);
    }
    let done = p.next_json_event();
    assert_eq!(done["id"], 7);
    assert_eq!(done["result"]["backend"], owner.as_str());
    assert!(p.next_event().is_none(), "stream ended");
    // an initialize answered over SSE records the session too
    let mut s = r.conn();
    s.send(
        "POST",
        "/mcp?sse=1",
        &[("Accept", "application/json, text/event-stream")],
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}).to_string(),
    );
    let head = s.read_head();
    let sid2 = head
        .header("mcp-session-id")
        .expect("session id on SSE initialize")
        .to_string();
    let ev = s.next_json_event();
    let owner2 = ev["result"]["backend"].as_str().unwrap().to_string();
    assert!(s.next_event().is_none());
    for i in 0..4 {
        assert_eq!(call(&mut s, &sid2, i)["result"]["backend"], owner2.as_str());
    }
}

fn legacy_round_trip(r: &Proc, sse_path: &str) {
    let mut stream = r.conn();
    stream.send("GET", sse_path, &[("Accept", "text/event-stream")], "");
    let head = stream.read_head();
    assert_eq!(head.status, 200);
    let (event, endpoint) = stream.next_event().expect("endpoint event");
    assert_eq!(event, "endpoint");
    for i in 0..6 {
        let mut c = r.conn();
        let resp = post_json(
            &mut c,
            &endpoint,
            None,
            &json!({"jsonrpc":"2.0","id":i,"method":"tools/list"}),
        );
        assert_eq!(resp.status, 202, "{}", resp.text());
        let ev = stream.next_json_event();
        assert_eq!(ev["id"], i);
        assert!(ev["result"]["session"].as_str().is_some());
    }
}

fn legacy_sse_sessions_route_their_posts_to_the_stream_backend() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let r = router(&[&b0, &b1], &[]);
    // both SDK styles: ?sessionId= (TypeScript) and /messages/?session_id= (Python)
    for _ in 0..3 {
        legacy_round_trip(&r, "/sse");
        legacy_round_trip(&r, "/sse?style=python");
    }
    // closing the streams ended the sessions in the router
    assert!(
        r.wait_count("cause=\"stream_closed\"", 6, Duration::from_secs(5)),
        "{:?}",
        r.logs()
    );
}

fn killing_a_backend_ends_its_sessions_and_new_sessions_go_to_the_survivor() {
    let mut b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let r = router(&[&b0, &b1], &[]);
    let mut sessions = Vec::new();
    for i in 0..20 {
        let mut c = r.conn();
        let (resp, sid) = initialize(&mut c, json!(i));
        sessions.push((
            sid,
            resp.json()["result"]["backend"]
                .as_str()
                .unwrap()
                .to_string(),
        ));
    }
    // fewest live sessions, round-robin among ties: exact alternation
    let on_b0 = sessions.iter().filter(|(_, b)| b == "b0").count();
    assert_eq!(on_b0, 10, "placement: {on_b0} of 20 on b0");
    b0.kill();
    for (i, (sid, owner)) in sessions.iter().enumerate() {
        let mut c = r.conn();
        let resp = post_json(
            &mut c,
            "/mcp",
            Some(sid),
            &json!({"jsonrpc":"2.0","id":i,"method":"tools/list"}),
        );
        if owner == "b0" {
            assert_eq!(
                resp.status,
                404,
                "session on the dead backend: {}",
                resp.text()
            );
            assert_eq!(resp.json()["error"]["code"], -32001);
            assert_eq!(resp.json()["id"], i);
            // its record is gone: asked again, the router answers without a backend
            let again = post_json(
                &mut c,
                "/mcp",
                Some(sid),
                &json!({"jsonrpc":"2.0","id":i,"method":"tools/list"}),
            );
            assert_eq!(again.status, 404);
        } else {
            assert_eq!(resp.status, 200);
            assert_eq!(resp.json()["result"]["backend"], "b1");
        }
    }
    // new sessions (clients re-initializing) land on the survivor
    for i in 0..10 {
        let mut c = r.conn();
        let (resp, _) = initialize(&mut c, json!(i));
        assert_eq!(resp.json()["result"]["backend"], "b1");
    }
    assert!(r.count_logs("backend down") >= 1);
}

fn idle_sessions_expire() {
    let b0 = Proc::fake_backend("b0");
    let r = router(&[&b0], &["--session-ttl", "1s"]);
    let mut c = r.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    assert_eq!(call(&mut c, &sid, 1)["result"]["session"], sid.as_str());
    assert!(r
        .wait_line(Duration::from_secs(10), |l| l.contains("session ended")
            && l.contains("idle_expiry"))
        .is_some());
    let resp = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
    );
    assert_eq!(resp.status, 404);
}

fn stateless_and_sessionless_requests_are_balanced() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let r = router(&[&b0, &b1], &[]);
    let mut per: HashMap<String, usize> = HashMap::new();
    let mut c = r.conn();
    for i in 0..20 {
        let resp = c.request(
            "POST",
            "/mcp",
            &[
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Method", "tools/list"),
                ("Mcp-Session-Id", "ignored-in-this-era"),
                ("Accept", "application/json"),
            ],
            &json!({"jsonrpc":"2.0","id":i,"method":"tools/list",
                "params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}})
            .to_string(),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        *per.entry(resp.json()["result"]["backend"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(per.get("b0"), Some(&10));
    assert_eq!(per.get("b1"), Some(&10));
}

fn hostile_requests_are_refused_and_others_carry_on() {
    let b0 = Proc::fake_backend("b0");
    let r = router(&[&b0], &["--max-head", "4096"]);
    let mut good = r.conn();
    let (_, sid) = initialize(&mut good, json!(1));
    use std::io::{Read, Write};
    let cases: &[(&[u8], u16)] = &[
        (b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd", 400),
        (b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /mcp HTTP/1.1\r\nHost: localhost\r\nX: a\r\n  folded\r\n\r\n", 400),
    ];
    for (req, status) in cases {
        let mut s = std::net::TcpStream::connect(&r.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out); // the router closes
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?} -> {text}",
            String::from_utf8_lossy(req)
        );
    }
    // oversized head: 431
    let mut s = std::net::TcpStream::connect(&r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = format!(
        "GET /mcp HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let _ = s.write_all(big.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "));
    // the established session never noticed
    assert_eq!(call(&mut good, &sid, 5)["result"]["session"], sid.as_str());
}

/// A router with `grace` and a session whose `stream` tool call of `count` events is in
/// flight (its head read): the router, the backend and the client connection.
fn stream_in_flight(grace: &str, count: u64) -> (Proc, Proc, Conn) {
    let b0 = Proc::fake_backend("b0");
    let r = router(&[&b0], &["--shutdown-grace", grace]);
    let mut c = r.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    c.send(
        "POST",
        "/mcp",
        &[("Mcp-Session-Id", &sid), ("Accept", "application/json, text/event-stream")],
        &json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"stream","arguments":{"count":count}}}).to_string(),
    );
    assert_eq!(c.read_head().status, 200);
    (r, b0, c)
}

fn sigterm_drains_and_exits() {
    // a slow streamed answer is in flight while the signal arrives
    let (mut r, _b0, mut c) = stream_in_flight("5s", 10);
    r.signal("TERM");
    let mut events = 0;
    while c.next_event().is_some() {
        events += 1;
    }
    assert_eq!(events, 11, "the in-flight stream finished");
    let st = r
        .wait_exit(Duration::from_secs(10))
        .expect("router exits after draining");
    assert!(st.success(), "{st:?}");
}

/// A second SIGTERM during a drain exits at once, without waiting out the grace.
fn a_second_sigterm_exits_at_once() {
    // a stream that outlasts the test is in flight
    let (mut r, _b0, _c) = stream_in_flight("60s", 1_000_000);
    r.signal("TERM");
    assert!(
        r.wait_exit(Duration::from_millis(800)).is_none(),
        "the first signal drains: the stream keeps it up"
    );
    let t = Instant::now();
    r.signal("TERM");
    let st = r
        .wait_exit(Duration::from_secs(5))
        .expect("the second signal exits without the 60 s grace");
    assert!(!st.success(), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn bad_config_fails_at_start_naming_the_field() {
    let out = std::process::Command::new(mcp_router_testkit::harness::bin_path(router_bin()))
        .args([
            "--backend",
            "http://127.0.0.1:1",
            "--connect-timeout",
            "soon",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect_timeout"));
    let out = std::process::Command::new(mcp_router_testkit::harness::bin_path(router_bin()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("backends"));
}

fn active_health_check_marks_a_dead_backend_down_without_traffic() {
    let mut b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let r = router(&[&b0, &b1], &["--health-check-interval", "100ms"]);
    b0.kill();
    assert!(
        r.wait_line(Duration::from_secs(5), |l| l.contains("backend down")
            && l.contains("backend=b0"))
            .is_some(),
        "{:?}",
        r.logs()
    );
    // every new session now goes to b1, first try
    for i in 0..6 {
        let (resp, _) = initialize(&mut r.conn(), json!(i));
        assert_eq!(resp.json()["result"]["backend"], "b1");
    }
}

fn configuration_from_environment_and_file() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    // backends from the environment
    let mut cmd = std::process::Command::new(mcp_router_testkit::harness::bin_path(router_bin()));
    cmd.env(
        "MCP_ROUTER_BACKENDS",
        format!("envb0=http://{},envb1=http://{}", b0.addr, b1.addr),
    )
    .env("MCP_ROUTER_LISTEN", "127.0.0.1:0");
    let r = Proc::start_router("router-env", cmd);
    let (resp, sid) = initialize(&mut r.conn(), json!(1));
    let owner = resp.json()["result"]["backend"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        call(&mut r.conn(), &sid, 2)["result"]["backend"],
        owner.as_str()
    );
    assert!(r.count_logs("envb0") + r.count_logs("envb1") > 0);
    // and from a TOML file
    let dir = mcp_router_testkit::harness::test_dir("e2e");
    let file = dir.join("router.toml");
    std::fs::write(
        &file,
        format!("listen = \"127.0.0.1:0\"\nsession_ttl = \"1h\"\nbackends = [{{ name = \"fileb\", url = \"http://{}\" }}]\n", b1.addr),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(mcp_router_testkit::harness::bin_path(router_bin()));
    cmd.args(["--config", file.to_str().unwrap()]);
    let r = Proc::start_router("router-file", cmd);
    let (resp, _) = initialize(&mut r.conn(), json!(1));
    assert_eq!(resp.json()["result"]["backend"], "b1");
    assert!(r.count_logs("ttl_s=3600") == 1, "{:?}", r.logs());
}

fn large_bodies_stream_both_ways() {
    let b0 = Proc::fake_backend("b0");
    let r = router(&[&b0], &["--max-inspect-body", "65536"]);
    let mut c = r.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    // 3 MB response
    let resp = post_json(
        &mut c,
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"big","arguments":{"bytes":3_000_000}}}),
    );
    assert_eq!(resp.status, 200);
    assert!(resp.body.len() > 3_000_000, "{}", resp.body.len());
    assert_eq!(resp.json()["result"]["backend"], "b0");
    // 2 MB request of a known session: no inspection limit applies
    let blob = "q".repeat(2_000_000);
    let v = post_json(&mut c, "/mcp", Some(&sid),
        &json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"blob":blob}}})).json();
    assert_eq!(
        v["result"]["echo"]["blob"].as_str().map(str::len),
        Some(2_000_000)
    );
}

fn chunked_requests_http10_clients_and_pipelining() {
    use std::io::{Read, Write};
    let b0 = Proc::fake_backend("b0");
    let r = router(&[&b0], &[]);
    let (_, sid) = initialize(&mut r.conn(), json!(1));
    // a chunked request body, in two chunks
    let body = json!({"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"echo","arguments":{"k":"v"}}}).to_string();
    let (a, b) = body.split_at(20);
    let mut s = std::net::TcpStream::connect(&r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "POST /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {sid}\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"id\":\"c1\""), "{out}");
    // an HTTP/1.0 client gets an SSE (chunked upstream) answer de-chunked and closed
    let init = json!({"jsonrpc":"2.0","id":9,"method":"initialize","params":{}}).to_string();
    let mut s = std::net::TcpStream::connect(&r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "POST /mcp?sse=1 HTTP/1.0\r\nHost: localhost\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{init}", init.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .expect("router closes the HTTP/1.0 connection");
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(body.starts_with("event: message\ndata: {"), "{body:?}");
    // two pipelined requests, two answers in order
    let mut s = std::net::TcpStream::connect(&r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut both = String::new();
    for id in [41, 42] {
        let b = json!({"jsonrpc":"2.0","id":id,"method":"tools/list"}).to_string();
        both.push_str(&format!("POST /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {sid}\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
    }
    both.push_str("GET /stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(both.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let p41 = out.find("\"id\":41").expect("first answer");
    let p42 = out.find("\"id\":42").expect("second answer");
    assert!(p41 < p42);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
}

mcp_router_testkit::behaviour_suite!(
    sixty_concurrent_sessions_each_stay_on_their_backend,
    unknown_session_is_404_and_never_reaches_a_backend,
    sse_streams_flow_through,
    legacy_sse_sessions_route_their_posts_to_the_stream_backend,
    killing_a_backend_ends_its_sessions_and_new_sessions_go_to_the_survivor,
    idle_sessions_expire,
    stateless_and_sessionless_requests_are_balanced,
    hostile_requests_are_refused_and_others_carry_on,
    sigterm_drains_and_exits,
    a_second_sigterm_exits_at_once,
    bad_config_fails_at_start_naming_the_field,
    active_health_check_marks_a_dead_backend_down_without_traffic,
    configuration_from_environment_and_file,
    large_bodies_stream_both_ways,
    chunked_requests_http10_clients_and_pipelining,
);
