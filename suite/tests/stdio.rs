//! `--stdio` on every frontend (`mcp-router`, `mcp-router-smol`, `mcp-router-glommio`):
//! real processes on 127.0.0.1. The router serves `tests/stdio/mock_server.py` (a tiny
//! stdio MCP server with per-process state that can be told to crash, print garbage,
//! ask for sampling or start a grandchild) and `@modelcontextprotocol/server-everything`
//! in stdio mode.
//!
//! Every end path is checked from `/proc`: after it, the router has no descendant
//! process left (zombies included: they are still listed), and no process is left in
//! any process group the children ran in.

use mcp_router_testkit::harness::{open_session_stream, router_bin, Conn, Proc, Response};
use mcp_router_testkit::procs::{child_groups, descendants, in_groups, procs, wait_until};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

fn mock_cmd() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/stdio/mock_server.py");
    assert!(p.exists(), "{} missing", p.display());
    format!("python3 {}", p.display())
}

fn router(name: &str, extra: &[&str]) -> Proc {
    let cmd = mock_cmd();
    let mut args = vec!["--stdio", cmd.as_str()];
    args.extend_from_slice(extra);
    Proc::router(router_bin(), name, &args)
}

/// Nothing left: no descendant of the router (no zombie either) and nobody in the
/// children's process groups.
fn assert_all_gone(r: &Proc, groups: &BTreeSet<i32>, what: &str) {
    let ok = wait_until(Duration::from_secs(8), || {
        descendants(r.pid()).is_empty() && in_groups(groups).is_empty()
    });
    assert!(
        ok,
        "{what}: left behind: descendants {:?} in groups {:?}",
        descendants(r.pid()),
        in_groups(groups)
    );
}

// ---------------------------------------------------------------- HTTP

fn post(c: &mut Conn, sid: Option<&str>, sse: bool, body: &Value) -> Response {
    let accept = if sse {
        "application/json, text/event-stream"
    } else {
        "application/json"
    };
    let mut h = vec![("Accept", accept)];
    if let Some(s) = sid {
        h.push(("Mcp-Session-Id", s));
    }
    c.request("POST", "/mcp", &h, &body.to_string())
}

fn init(addr: &str, id: Value) -> String {
    let mut c = Conn::open(addr);
    let r = post(
        &mut c,
        None,
        false,
        &json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{"sampling":{}},
            "clientInfo":{"name":"stdio-test","version":"0"}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], id);
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let r = post(
        &mut c,
        Some(&sid),
        false,
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(r.status, 202);
    sid
}

fn call(c: &mut Conn, sid: &str, id: Value, tool: &str, args: Value) -> Value {
    let r = post(
        c,
        Some(sid),
        false,
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["id"], id, "{v}");
    v
}

fn text(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {v}"))
        .to_string()
}

/// The JSON data of every event in an SSE body.
fn sse_json(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|ev| {
            let data: String = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data).unwrap())
        })
        .collect()
}

fn delete(addr: &str, sid: &str) -> u16 {
    Conn::open(addr)
        .request("DELETE", "/mcp", &[("Mcp-Session-Id", sid)], "")
        .status
}

fn stop(mut r: Proc) {
    r.signal("TERM");
    assert!(r.wait_exit(Duration::from_secs(15)).is_some());
}

// ---------------------------------------------------------------- tests

fn twenty_concurrent_sessions_each_get_their_own_child_and_state() {
    let r = router("router-iso", &[]);
    let addr = r.addr.clone();
    let results: Vec<(String, u64, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let addr = addr.clone();
                s.spawn(move || {
                    let sid = init(&addr, json!(1));
                    let mut c = Conn::open(&addr);
                    let n = i % 5 + 1;
                    for k in 0..n {
                        let v = call(&mut c, &sid, json!(10 + k), "incr", json!({}));
                        assert_eq!(text(&v), (k + 1).to_string(), "session {i}");
                    }
                    let got = text(&call(&mut c, &sid, json!(99), "get", json!({})));
                    assert_eq!(got, n.to_string(), "session {i} saw another's state");
                    let pid = text(&call(&mut c, &sid, json!(100), "pid", json!({})));
                    (sid, n, pid)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let pids: BTreeSet<&String> = results.iter().map(|r| &r.2).collect();
    assert_eq!(pids.len(), 20, "every session has its own process");
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 20, "{:?}", descendants(r.pid()));
    for (sid, _, _) in &results {
        assert_eq!(delete(&addr, sid), 200);
    }
    assert_all_gone(&r, &groups, "DELETE");
    // a deleted session is unknown
    let mut c = Conn::open(&addr);
    let v = post(
        &mut c,
        Some(&results[0].0),
        false,
        &json!({"jsonrpc":"2.0","id":3,"method":"ping"}),
    );
    assert_eq!(v.status, 404);
    assert_eq!(r.count_logs("cause=\"delete\""), 20);
    stop(r);
}

fn shared_mode_twenty_sessions_with_colliding_ids_never_mix() {
    let r = router("router-shared", &["--stdio-mode", "shared"]);
    let addr = r.addr.clone();
    // every session uses the same JSON-RPC ids; answers come back in reverse order
    let sids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let addr = addr.clone();
                s.spawn(move || {
                    let sid = init(&addr, json!(1));
                    let mut c = Conn::open(&addr);
                    let mine = format!("session-{i}");
                    let v = call(
                        &mut c,
                        &sid,
                        json!(1),
                        "echo",
                        json!({"text": mine, "delay_ms": (20 - i) * 15}),
                    );
                    assert_eq!(text(&v), mine);
                    sid
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // two in-flight requests with the same id in one session
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| {
            let mut c = Conn::open(&addr);
            text(&call(
                &mut c,
                &sids[0],
                json!(7),
                "echo",
                json!({"text":"slow","delay_ms":300}),
            ))
        });
        let two = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            let mut c = Conn::open(&addr);
            text(&call(
                &mut c,
                &sids[0],
                json!(7),
                "echo",
                json!({"text":"fast"}),
            ))
        });
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_eq!((a.as_str(), b.as_str()), ("slow", "fast"));
    // one process for all: state is shared by design in this mode
    let mut c = Conn::open(&addr);
    let pids: BTreeSet<String> = sids
        .iter()
        .map(|s| text(&call(&mut c, s, json!(2), "pid", json!({}))))
        .collect();
    assert_eq!(pids.len(), 1);
    for s in &sids {
        call(&mut c, s, json!(3), "incr", json!({}));
    }
    assert_eq!(
        text(&call(&mut c, &sids[5], json!(4), "get", json!({}))),
        "20"
    );
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 1);
    assert_eq!(r.count_logs("stdio child spawned"), 1);
    for s in &sids[..19] {
        assert_eq!(delete(&addr, s), 200);
    }
    assert_eq!(
        child_groups(r.pid()),
        groups,
        "the child lives while a session does"
    );
    assert_eq!(delete(&addr, &sids[19]), 200);
    assert_all_gone(&r, &groups, "last DELETE in shared mode");
    stop(r);
}

fn idle_expiry_kills_the_child() {
    let r = router("router-idle", &["--session-ttl", "1s"]);
    let sid = init(&r.addr, json!(1));
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 1);
    assert_all_gone(&r, &groups, "idle expiry");
    let mut c = r.conn();
    let v = post(
        &mut c,
        Some(&sid),
        false,
        &json!({"jsonrpc":"2.0","id":"x","method":"ping"}),
    );
    assert_eq!(v.status, 404);
    assert_eq!(v.json()["error"]["code"], -32001);
    assert!(r.wait_count("cause=\"idle_expiry\"", 1, Duration::from_secs(2)));
    stop(r);
}

fn lost_client_stream_kills_the_child_after_the_grace() {
    let r = router("router-grace", &["--stdio-stream-grace", "1500ms"]);
    let sid = init(&r.addr, json!(1));
    let groups = child_groups(r.pid());
    let (g, head) = open_session_stream(&r.addr, &sid);
    assert_eq!(head.status, 200);
    drop(g);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        child_groups(r.pid()),
        groups,
        "still alive within the grace"
    );
    assert_all_gone(&r, &groups, "client disconnect past grace");
    assert!(r.wait_count("cause=\"stream_lost\"", 1, Duration::from_secs(2)));
    stop(r);
}

/// A router with one session whose child was just asked to call `tool` (id 5): the
/// router, the session, the child's process groups, the connection and the answer.
fn one_session_calling(name: &str, tool: &str) -> (Proc, String, BTreeSet<i32>, Conn, Value) {
    let r = router(name, &[]);
    let sid = init(&r.addr, json!(1));
    let groups = child_groups(r.pid());
    let mut c = r.conn();
    let v = call(&mut c, &sid, json!(5), tool, json!({}));
    (r, sid, groups, c, v)
}

fn child_crash_ends_the_session_with_a_clear_error() {
    let (r, sid, groups, mut c, v) = one_session_calling("router-crash", "crash");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("exited") && msg.contains('3'), "{v}");
    assert_all_gone(&r, &groups, "child crash");
    let v = post(
        &mut c,
        Some(&sid),
        false,
        &json!({"jsonrpc":"2.0","id":6,"method":"ping"}),
    );
    assert_eq!(v.status, 404);
    // its stderr was logged with the session id
    assert!(r
        .logs()
        .iter()
        .any(|l| l.contains("child stderr: mock stdio server") && l.contains(&sid)));
    stop(r);
}

fn garbage_on_stdout_ends_the_session_with_a_clear_error() {
    let (r, _, groups, _, v) = one_session_calling("router-garbage", "garbage");
    assert_eq!(v["error"]["code"], -32000);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid JSON-RPC"),
        "{v}"
    );
    assert_all_gone(&r, &groups, "garbage");
    assert!(r.count_logs("this is not JSON-RPC") > 0);
    stop(r);
}

fn delete_kills_grandchildren_too() {
    let r = router("router-grandchild", &[]);
    let sid = init(&r.addr, json!(1));
    let mut c = r.conn();
    let gc: i32 = text(&call(&mut c, &sid, json!(2), "grandchild", json!({})))
        .parse()
        .unwrap();
    let groups = child_groups(r.pid());
    assert!(procs()
        .iter()
        .any(|p| p.pid == gc && groups.contains(&p.pgrp)));
    assert_eq!(delete(&r.addr, &sid), 200);
    assert_all_gone(&r, &groups, "DELETE with a grandchild");
    assert!(!procs().iter().any(|p| p.pid == gc && p.cmd == "sleep"));
    stop(r);
}

fn router_sigterm_kills_and_reaps_every_child() {
    let mut r = router("router-term", &[]);
    let a = init(&r.addr, json!(1));
    let _b = init(&r.addr, json!(1));
    let mut c = r.conn();
    call(&mut c, &a, json!(2), "grandchild", json!({}));
    let (_g, head) = open_session_stream(&r.addr, &a);
    assert_eq!(head.status, 200);
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 2);
    r.signal("TERM");
    assert!(
        r.wait_exit(Duration::from_secs(15)).is_some(),
        "router did not exit"
    );
    let ok = wait_until(Duration::from_secs(5), || in_groups(&groups).is_empty());
    assert!(ok, "left behind: {:?}", in_groups(&groups));
    assert!(!procs()
        .iter()
        .any(|p| p.state == 'Z' && groups.contains(&p.pgrp)));
    assert_eq!(r.count_logs("cause=\"shutdown\""), 2);
}

fn child_cap_answers_503_with_a_jsonrpc_error() {
    let r = router("router-cap", &["--stdio-max-children", "2"]);
    let a = init(&r.addr, json!(1));
    let _b = init(&r.addr, json!(1));
    let mut c = r.conn();
    let v = post(
        &mut c,
        None,
        false,
        &json!({"jsonrpc":"2.0","id":"third","method":"initialize","params":{}}),
    );
    assert_eq!(v.status, 503);
    assert_eq!(v.json()["error"]["code"], -32000);
    assert_eq!(v.json()["id"], "third");
    assert_eq!(child_groups(r.pid()).len(), 2);
    // a slot frees up when a session ends
    assert_eq!(delete(&r.addr, &a), 200);
    assert!(wait_until(Duration::from_secs(5), || child_groups(r.pid())
        .len()
        == 1));
    init(&r.addr, json!(1));
    stop(r);
}

fn session_errors_404_400_409() {
    let r = router("router-errors", &[]);
    let mut c = r.conn();
    // unknown session: 404 -32001 echoing the id
    let v = post(
        &mut c,
        Some("no-such-session"),
        false,
        &json!({"jsonrpc":"2.0","id":41,"method":"tools/list"}),
    );
    assert_eq!(v.status, 404);
    assert_eq!(
        v.json(),
        json!({"jsonrpc":"2.0","id":41,"error":{"code":-32001,"message":"Session not found"}})
    );
    // missing session on a non-initialize request: 400
    let v = post(
        &mut c,
        None,
        false,
        &json!({"jsonrpc":"2.0","id":42,"method":"tools/list"}),
    );
    assert_eq!(v.status, 400);
    assert_eq!(v.json()["id"], 42);
    // unparseable body: 400 -32700
    let v = c.request("POST", "/mcp", &[("Accept", "application/json")], "{oops");
    assert_eq!(v.status, 400);
    assert_eq!(v.json()["error"]["code"], -32700);
    // a second GET stream: 409 while the first is open
    let sid = init(&r.addr, json!(1));
    let (_g1, h1) = open_session_stream(&r.addr, &sid);
    assert_eq!(h1.status, 200);
    assert_eq!(h1.header("content-type"), Some("text/event-stream"));
    let (mut g2, mut h2) = open_session_stream(&r.addr, &sid);
    assert_eq!(h2.status, 409);
    g2.read_body(&mut h2);
    assert_eq!(h2.json()["error"]["code"], -32000);
    // oversized body: 413 (default bound 1 MiB)
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{{\"p\":\"{}\"}}}}",
        "a".repeat(1_100_000)
    );
    let v = Conn::open(&r.addr).request("POST", "/mcp", &[("Mcp-Session-Id", &sid)], &big);
    assert_eq!(v.status, 413);
    stop(r);
}

fn streamable_progress_and_sampling_round_trip() {
    let r = router("router-sampling", &[]);
    let sid = init(&r.addr, json!(1));
    // progress notifications travel on the request's own stream, before its response
    let mut c = r.conn();
    let v = post(
        &mut c,
        Some(&sid),
        true,
        &json!({"jsonrpc":"2.0","id":"p1","method":"tools/call","params":{"name":"slow","arguments":{"steps":3},"_meta":{"progressToken":"tok-1"}}}),
    );
    assert_eq!(v.header("content-type"), Some("text/event-stream"));
    let evs = sse_json(&v.text());
    assert_eq!(evs.len(), 4, "{}", v.text());
    for (i, e) in evs[..3].iter().enumerate() {
        assert_eq!(e["method"], "notifications/progress");
        assert_eq!(e["params"]["progressToken"], "tok-1");
        assert_eq!(e["params"]["progress"], i + 1);
    }
    assert_eq!(evs[3]["id"], "p1");
    assert_eq!(text(&evs[3]), "done");
    assert!(v.text().contains("id: "), "events carry ids");
    // sampling: the server's request reaches the client on the POST stream, the
    // client's POSTed answer reaches the server, the tool result follows
    let mut a = r.conn();
    a.send(
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Mcp-Session-Id", &sid),
        ],
        &json!({"jsonrpc":"2.0","id":"s1","method":"tools/call","params":{"name":"sample","arguments":{"prompt":"ping"}}}).to_string(),
    );
    let head = a.read_head();
    assert_eq!(head.status, 200);
    let req = a.next_json_event();
    assert_eq!(req["method"], "sampling/createMessage");
    assert_eq!(req["params"]["messages"][0]["content"]["text"], "ping");
    let mut b = r.conn();
    let ack = post(
        &mut b,
        Some(&sid),
        false,
        &json!({"jsonrpc":"2.0","id":req["id"],"result":{"role":"assistant","model":"m","content":{"type":"text","text":"pong"}}}),
    );
    assert_eq!(ack.status, 202);
    let res = a.next_json_event();
    assert_eq!(res["id"], "s1");
    assert_eq!(text(&res), "sampled: pong");
    assert!(
        a.next_event().is_none(),
        "the POST stream ends after its response"
    );
    // unsolicited notifications go to the GET stream when no POST stream is open
    let (mut g, _) = open_session_stream(&r.addr, &sid);
    let v = call(&mut c, &sid, json!(9), "notify", json!({}));
    assert_eq!(text(&v), "ok");
    let n = g.next_json_event();
    assert_eq!(n["method"], "notifications/message");
    stop(r);
}

fn legacy_sse_endpoint_and_messages() {
    let r = router("router-legacy", &[]);
    let mut g = r.conn();
    g.send("GET", "/sse", &[("Accept", "text/event-stream")], "");
    let head = g.read_head();
    assert_eq!(head.status, 200);
    let (ev, uri) = g.next_event().unwrap();
    assert_eq!(ev, "endpoint");
    assert!(uri.starts_with("/message?sessionId="), "{uri}");
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 1);
    let mut c = r.conn();
    let send = |c: &mut Conn, v: Value| c.request("POST", &uri, &[], &v.to_string()).status;
    assert_eq!(
        send(
            &mut c,
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"0"}}})
        ),
        202
    );
    let (ev, data) = g.next_event().unwrap();
    assert_eq!(ev, "message");
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["id"], 0);
    assert_eq!(v["result"]["serverInfo"]["name"], "mock-stdio");
    assert_eq!(
        send(
            &mut c,
            json!({"jsonrpc":"2.0","method":"notifications/initialized"})
        ),
        202
    );
    assert_eq!(
        send(
            &mut c,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"incr","arguments":{}}})
        ),
        202
    );
    let v = g.next_json_event();
    assert_eq!((v["id"].clone(), text(&v)), (json!(1), "1".to_string()));
    // unknown legacy session: 404
    let v = c.request("POST", "/message?sessionId=nope", &[], "{}");
    assert_eq!(v.status, 404);
    // the stream closing ends the session and its child
    drop(g);
    assert_all_gone(&r, &groups, "legacy stream closed");
    assert_eq!(c.request("POST", &uri, &[], "{}").status, 404);
    stop(r);
}

fn everything_cmd() -> String {
    let entry = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
        "../tests/interop/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    );
    assert!(
        entry.exists(),
        "server-everything missing: run `bash .ci/install-interop.sh` first"
    );
    format!("node {} stdio", entry.display())
}

fn server_everything_over_streamable_http_and_sse() {
    let cmd = everything_cmd();
    let r = Proc::router(router_bin(), "router-everything", &["--stdio", &cmd]);
    // Streamable HTTP
    let sid = init(&r.addr, json!(1));
    let mut c = r.conn();
    let v = post(
        &mut c,
        Some(&sid),
        false,
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    );
    assert_eq!(v.status, 200);
    let tools: Vec<String> = v.json()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(tools.iter().any(|t| t == "echo"), "{tools:?}");
    let v = call(
        &mut c,
        &sid,
        json!(3),
        "echo",
        json!({"message":"hello stdio"}),
    );
    assert!(text(&v).contains("hello stdio"), "{v}");
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 1);
    assert_eq!(delete(&r.addr, &sid), 200);
    assert_all_gone(&r, &groups, "server-everything DELETE");
    // HTTP+SSE
    let mut g = r.conn();
    g.send("GET", "/sse", &[("Accept", "text/event-stream")], "");
    assert_eq!(g.read_head().status, 200);
    let (_, uri) = g.next_event().unwrap();
    let post = |v: Value| r.conn().request("POST", &uri, &[], &v.to_string()).status;
    assert_eq!(
        post(
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"0"}}})
        ),
        202
    );
    let v = g.next_json_event();
    assert_eq!(v["id"], 0, "{v}");
    assert_eq!(
        post(json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
        202
    );
    assert_eq!(
        post(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"over sse"}}})
        ),
        202
    );
    // skip any notification the server sends on its own
    let v = loop {
        let v = g.next_json_event();
        if v.get("id") == Some(&json!(1)) {
            break v;
        }
    };
    assert!(text(&v).contains("over sse"), "{v}");
    let groups = child_groups(r.pid());
    drop(g);
    assert_all_gone(&r, &groups, "server-everything legacy stream closed");
    stop(r);
}

fn slow_client_ends_its_session_without_stalling_the_others() {
    // shared child: the flood of notifications goes to every session; session A's
    // client never reads its GET stream, session B keeps working
    let r = router("router-slow", &["--stdio-mode", "shared"]);
    let a = init(&r.addr, json!(1));
    let b = init(&r.addr, json!(1));
    let mut g = r.conn();
    g.send(
        "GET",
        "/mcp",
        &[("Mcp-Session-Id", &a), ("Accept", "text/event-stream")],
        "",
    );
    // (the response is never read: its socket buffers and then the router's bounded
    // channel for it fill up)
    let mut c = r.conn();
    let t = std::time::Instant::now();
    let v = call(
        &mut c,
        &b,
        json!(2),
        "flood",
        json!({"n": 20000, "size": 1000}),
    );
    assert_eq!(text(&v), "flooded");
    assert!(
        r.wait_count("cause=\"slow_client\"", 1, Duration::from_secs(10)),
        "{:?}",
        r.logs()
    );
    // B was never stalled and still works; A is gone
    let v = call(&mut c, &b, json!(3), "pid", json!({}));
    assert!(v["result"].is_object(), "{v}");
    assert!(t.elapsed() < Duration::from_secs(20));
    let v = post(
        &mut c,
        Some(&a),
        false,
        &json!({"jsonrpc":"2.0","id":4,"method":"ping"}),
    );
    assert_eq!(v.status, 404);
    assert!(r.count_logs("cause=\"slow_client\"") == 1);
    drop(g);
    stop(r);
}

/// `server-everything` started through `npx` (a chain of processes in the child's
/// group), from the interop install.
fn npx_everything_cmd() -> String {
    let interop = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/interop");
    everything_cmd(); // fails loudly without the install
    format!(
        "cd {} && exec npx -y @modelcontextprotocol/server-everything",
        interop.canonicalize().unwrap().display()
    )
}

fn npx_process_chain_is_killed_whole_on_delete_and_sigterm() {
    // `sh -c npx` -> `npm exec` -> `sh -c mcp-server-everything` -> `node`: four
    // processes in the child's group, the real server two levels below the leader
    let cmd = npx_everything_cmd();
    let mut r = Proc::router(router_bin(), "router-npx", &["--stdio", &cmd]);
    let a = init(&r.addr, json!(1));
    let mut c = r.conn();
    let v = call(&mut c, &a, json!(2), "echo", json!({"message":"via npx"}));
    assert!(text(&v).contains("via npx"), "{v}");
    let groups = child_groups(r.pid());
    assert!(
        descendants(r.pid()).len() >= 3,
        "expected a process chain: {:?}",
        descendants(r.pid())
    );
    assert_eq!(delete(&r.addr, &a), 200);
    assert_all_gone(&r, &groups, "DELETE of an npx chain");
    let _b = init(&r.addr, json!(1));
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 1);
    r.signal("TERM");
    assert!(r.wait_exit(Duration::from_secs(15)).is_some());
    let ok = wait_until(Duration::from_secs(5), || in_groups(&groups).is_empty());
    assert!(ok, "left behind after SIGTERM: {:?}", in_groups(&groups));
}

// ------------------------------------------- hostile and careless clients (issue 12)

fn initialize_body(id: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"stdio-test","version":"0"}}})
}

/// The lockout of issue 12: with `--stdio-max-children 3`, three clients that
/// initialize and walk away (no stream, no further request) used to hold every child
/// until the 2 h TTL. With `--stdio-unattached-timeout 2s` their sessions end 2 s after
/// their last request, the children are killed and reaped, and a fourth client gets a
/// child.
fn walked_away_sessions_free_their_children_after_the_unattached_timeout() {
    let timeout = Duration::from_secs(2);
    let r = router(
        "router-unattached",
        &[
            "--stdio-max-children",
            "3",
            "--stdio-unattached-timeout",
            "2s",
        ],
    );
    let started = std::time::Instant::now();
    let sids: Vec<String> = (0..3).map(|i| init(&r.addr, json!(i))).collect();
    let walked_away = std::time::Instant::now();
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 3, "{:?}", descendants(r.pid()));
    // the fourth client is locked out while the three sessions live
    let v = post(&mut r.conn(), None, false, &initialize_body("fourth"));
    assert_eq!(v.status, 503, "{}", v.text());
    assert_eq!(v.json()["id"], "fourth");
    // ... until the unattached timeout passes
    let mut refused = 1;
    let (got, sid) = loop {
        let v = post(&mut r.conn(), None, false, &initialize_body("fourth"));
        if v.status == 200 {
            let sid = v.header("mcp-session-id").unwrap().to_string();
            break (std::time::Instant::now(), sid);
        }
        assert_eq!(v.status, 503, "{}", v.text());
        refused += 1;
        assert!(
            walked_away.elapsed() < timeout + Duration::from_secs(3),
            "no child for the fourth client {:?} after the three walked away",
            walked_away.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "fourth client got a child {:?} after the three walked away ({:?} after the first \
         initialize was answered; {refused} refusals before)",
        got - walked_away,
        got - started,
    );
    // not before the first session's deadline (its last request + 2 s)
    assert!(
        got - started >= timeout - Duration::from_millis(100),
        "{:?}",
        got - started
    );
    // the three children are gone (killed, reaped, nothing left in their groups)
    let ok = wait_until(Duration::from_secs(8), || in_groups(&groups).is_empty());
    assert!(ok, "left behind: {:?}", in_groups(&groups));
    assert!(r.wait_count("cause=\"unattached\"", 3, Duration::from_secs(2)));
    for s in &sids {
        let v = post(
            &mut r.conn(),
            Some(s),
            false,
            &json!({"jsonrpc":"2.0","id":"late","method":"ping"}),
        );
        assert_eq!(v.status, 404, "{}", v.text());
    }
    // a session with an open GET stream outlives the timeout; the fourth's does not
    let mine = init(&r.addr, json!("held"));
    let (_g, head) = open_session_stream(&r.addr, &mine);
    assert_eq!(head.status, 200);
    std::thread::sleep(timeout + Duration::from_millis(1500));
    let v = post(
        &mut r.conn(),
        Some(&mine),
        false,
        &json!({"jsonrpc":"2.0","id":"p","method":"ping"}),
    );
    assert_eq!(v.status, 200, "a session with an open stream is attached");
    let v = post(
        &mut r.conn(),
        Some(&sid),
        false,
        &json!({"jsonrpc":"2.0","id":"p","method":"ping"}),
    );
    assert_eq!(v.status, 404, "the fourth client walked away too");
    stop(r);
}

/// A process `pid` that is still running (a zombie is not: it only waits for its new
/// parent to reap it).
fn running(pid: i32) -> bool {
    procs().iter().any(|p| p.pid == pid && p.state != 'Z')
}

/// The processes of `groups` still running (zombies left to init are not).
fn running_in(groups: &BTreeSet<i32>) -> Vec<mcp_router_testkit::procs::P> {
    in_groups(groups)
        .into_iter()
        .filter(|p| p.state != 'Z')
        .collect()
}

/// `kill -9` of the router, then wait for every pid in `pids` to stop running.
fn kill_9_and_wait(mut r: Proc, pids: &[i32], what: &str) -> Duration {
    let t = std::time::Instant::now();
    r.signal("KILL");
    assert!(r.wait_exit(Duration::from_secs(5)).is_some());
    let ok = wait_until(Duration::from_secs(5), || !pids.iter().any(|p| running(*p)));
    let left: Vec<_> = procs()
        .into_iter()
        .filter(|p| pids.contains(&p.pid))
        .collect();
    assert!(
        ok,
        "{what}: still running after kill -9 of the router: {left:?}"
    );
    t.elapsed()
}

fn pid_of(r: &Proc, sid: &str) -> i32 {
    let mut c = r.conn();
    text(&call(&mut c, sid, json!("pid"), "pid", json!({})))
        .parse()
        .unwrap()
}

/// A router serving the mock server `--stubborn` (then `tail` in the shell command),
/// one session opened: the router, the session id and the server process.
fn stubborn_server(name: &str, tail: &str) -> (Proc, String, mcp_router_testkit::procs::P) {
    let cmd = format!("{} --stubborn{tail}", mock_cmd());
    let r = Proc::router(router_bin(), name, &["--stdio", &cmd]);
    let sid = init(&r.addr, json!(1));
    let pid = pid_of(&r, &sid);
    let server = procs().into_iter().find(|p| p.pid == pid).unwrap();
    (r, sid, server)
}

/// A server that ignores stdin EOF, SIGTERM, SIGHUP and SIGINT, run as a simple
/// command: `sh` execs it, so it is the router's direct child and dies with it
/// (`PR_SET_PDEATHSIG`).
fn kill_9_of_the_router_kills_a_direct_child_that_ignores_eof() {
    let (r, _, me) = stubborn_server("router-kill9", "");
    let pid = me.pid;
    assert_eq!(
        me.ppid,
        r.pid() as i32,
        "sh did not exec the simple command"
    );
    let took = kill_9_and_wait(r, &[pid], "stubborn direct child");
    eprintln!("stubborn direct child gone {took:?} after kill -9 of the router");
}

/// The same server behind a `sh -c` script (`...; true`: sh stays, the server is a
/// grandchild the parent-death signal does not reach) and with a grandchild of its own:
/// the group watcher kills them when the router dies. A process that left the group
/// (`setsid`) is out of reach and survives: this is what remains possible.
fn kill_9_of_the_router_kills_grandchildren_in_the_group_but_not_escapees() {
    let (r, sid, server) = stubborn_server("router-kill9-gc", "; true");
    let pid = server.pid;
    assert_ne!(
        server.ppid,
        r.pid() as i32,
        "the server is a grandchild here"
    );
    let mut c = r.conn();
    let gc: i32 = text(&call(&mut c, &sid, json!(2), "grandchild", json!({})))
        .parse()
        .unwrap();
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 1);
    let escaped: i32 = text(&call(&mut c, &sid, json!(3), "escape", json!({})))
        .parse()
        .unwrap();
    let took = kill_9_and_wait(r, &[pid, server.ppid, gc], "stubborn grandchild");
    eprintln!("stubborn grandchild (and sh, and sleep) gone {took:?} after kill -9");
    let ok = wait_until(Duration::from_secs(2), || running_in(&groups).is_empty());
    assert!(ok, "left in the group: {:?}", running_in(&groups));
    // documented limit: a process that left the child's process group survives
    let survivor = procs().into_iter().find(|p| p.pid == escaped);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &escaped.to_string()])
        .status();
    let survivor = survivor.expect("the setsid'd process survives (documented limit)");
    assert!(survivor.state != 'Z' && !groups.contains(&survivor.pgrp));
}

/// `npx` chain (`npm exec` -> `sh -c mcp-server-everything` -> `node`): `sh` execs
/// `npx`, so `npm exec` is the direct child and gets the parent-death signal; the
/// watcher kills the rest of the group.
fn kill_9_of_the_router_leaves_nothing_of_an_npx_chain() {
    let cmd = npx_everything_cmd();
    let r = Proc::router(router_bin(), "router-npx-kill9", &["--stdio", &cmd]);
    let _a = init(&r.addr, json!(1));
    let groups = child_groups(r.pid());
    assert_eq!(groups.len(), 1);
    let chain: Vec<i32> = in_groups(&groups).iter().map(|p| p.pid).collect();
    assert!(chain.len() >= 4, "npm exec, sh, node, watcher: {chain:?}");
    let took = kill_9_and_wait(r, &chain, "npx chain");
    eprintln!(
        "npx chain ({} processes) gone {took:?} after kill -9",
        chain.len()
    );
    assert!(running_in(&groups).is_empty(), "{:?}", in_groups(&groups));
}

/// Issue 12: "the per-client quotas above apply to children": a client at its cap of
/// live sessions gets 429 (no child is spawned for it) while another client still gets
/// a child; ending one of its sessions makes room.
fn per_client_quotas_apply_to_children() {
    let r = router(
        "router-quotas",
        &[
            "--client-identity",
            "header:x-user",
            "--client-max-sessions",
            "2",
        ],
    );
    let as_user = |user: &str, id: &str| {
        r.conn().request(
            "POST",
            "/mcp",
            &[("Accept", "application/json"), ("X-User", user)],
            &initialize_body(id).to_string(),
        )
    };
    let a1 = as_user("alice", "a1");
    assert_eq!(a1.status, 200, "{}", a1.text());
    assert_eq!(as_user("alice", "a2").status, 200);
    let children = child_groups(r.pid()).len();
    let refused = as_user("alice", "a3");
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["id"], "a3");
    assert_eq!(
        child_groups(r.pid()).len(),
        children,
        "a child was spawned for a refused client"
    );
    assert_eq!(
        as_user("bob", "b1").status,
        200,
        "another client is refused too"
    );
    let sid = a1.header("mcp-session-id").unwrap().to_string();
    assert_eq!(delete(&r.addr, &sid), 200);
    assert_eq!(as_user("alice", "a4").status, 200);
    stop(r);
}

mcp_router_testkit::behaviour_suite!(
    twenty_concurrent_sessions_each_get_their_own_child_and_state,
    shared_mode_twenty_sessions_with_colliding_ids_never_mix,
    idle_expiry_kills_the_child,
    lost_client_stream_kills_the_child_after_the_grace,
    child_crash_ends_the_session_with_a_clear_error,
    garbage_on_stdout_ends_the_session_with_a_clear_error,
    delete_kills_grandchildren_too,
    router_sigterm_kills_and_reaps_every_child,
    child_cap_answers_503_with_a_jsonrpc_error,
    session_errors_404_400_409,
    streamable_progress_and_sampling_round_trip,
    legacy_sse_endpoint_and_messages,
    server_everything_over_streamable_http_and_sse,
    slow_client_ends_its_session_without_stalling_the_others,
    npx_process_chain_is_killed_whole_on_delete_and_sigterm,
    walked_away_sessions_free_their_children_after_the_unattached_timeout,
    kill_9_of_the_router_kills_a_direct_child_that_ignores_eof,
    kill_9_of_the_router_kills_grandchildren_in_the_group_but_not_escapees,
    kill_9_of_the_router_leaves_nothing_of_an_npx_chain,
    per_client_quotas_apply_to_children,
);
