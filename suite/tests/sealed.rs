//! Sealed session ids (`--session-ids sealed`) against real processes: two router
//! replicas with no store between them (each request of a session alternates between
//! them, as behind a round-robin balancer without affinity), fake backends behind;
//! legacy SSE; key rotation by SIGHUP; binding to the caller.

use mcp_router_testkit::harness::{
    http, initialize, open_session_stream, post_json, router_bin, Conn, Proc, Response,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const K2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";

/// A key file of its own for one test.
fn key_file(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mcp-sealed-{test}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("keys");
    std::fs::write(&p, text).unwrap();
    p
}

/// A router replica in sealed mode with no `--store`, in front of `bs` (named b0, b1..).
fn replica(name: &str, keys: &Path, bs: &[&Proc], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec![
        "--session-ids".into(),
        "sealed".into(),
        "--session-keys".into(),
        keys.display().to_string(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
    ];
    for (i, b) in bs.iter().enumerate() {
        args.push("--backend".into());
        args.push(format!("b{i}=http://{}", b.addr));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::router(router_bin(), name, &refs)
}

fn call_with(addr: &str, sid: &str, id: i64, extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![
        ("Accept", "application/json, text/event-stream"),
        ("Mcp-Session-Id", sid),
    ];
    headers.extend_from_slice(extra);
    Conn::open(addr).request(
        "POST",
        "/mcp",
        &headers,
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/list"}).to_string(),
    )
}

fn assert_not_found(r: &Response, id: i64) {
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32001);
    assert_eq!(r.json()["id"], id);
}

/// `mcp_router_store_operations_total` of the session records (`get`, `insert`,
/// `delete`, `touch`; not the per-client quota's `admit`), from a replica's admin port.
fn record_ops(r: &Proc) -> f64 {
    let admin = r
        .log_field("admin", Duration::from_secs(5))
        .expect("admin address logged");
    let (_, m) = http(&admin, "GET", "/metrics");
    m.lines()
        .filter(|l| l.starts_with("mcp_router_store_operations_total{"))
        .filter(|l| !l.contains("op=\"admit\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn two_replicas_without_a_store_route_every_request_alternating() {
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let keys = key_file("alt", &format!("{K1}\n"));
    let a = replica("router-a", &keys, &[&b0, &b1], &[]);
    let b = replica("router-b", &keys, &[&b0, &b1], &[]);
    let replicas = [&a, &b];
    for s in 0..6usize {
        // initialize through one replica, everything else alternating
        let (r, token) = initialize(&mut replicas[s % 2].conn(), json!(s));
        let upstream = r.json()["result"]["session"].as_str().unwrap().to_string();
        let owner = r.json()["result"]["backend"].as_str().unwrap().to_string();
        assert_ne!(token, upstream);
        assert!(!token.contains(&upstream));
        assert!(token.len() <= 256, "{}", token.len());
        for i in 0..4 {
            let via = replicas[(s + 1 + i) % 2];
            let r = call_with(&via.addr, &token, i as i64, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            assert_eq!(v["result"]["backend"], owner.as_str());
            assert_eq!(v["result"]["session"], upstream.as_str());
            // a response naming the upstream id hands the client its token again
            if let Some(h) = r.header("mcp-session-id") {
                assert_eq!(h, token);
            }
        }
        // the session's GET stream through the other replica
        let (mut g, head) = open_session_stream(&replicas[(s + 1) % 2].addr, &token);
        assert_eq!(head.status, 200);
        assert_eq!(g.next_json_event()["params"]["backend"], owner.as_str());
        drop(g);
        // DELETE through the other replica ends it on its backend
        let d = Conn::open(&replicas[(s + 1) % 2].addr).request(
            "DELETE",
            "/mcp",
            &[("Mcp-Session-Id", &token)],
            "",
        );
        assert_eq!(d.status, 200);
        // without records the token still opens; the backend says the session is gone
        let gone = call_with(&replicas[s % 2].addr, &token, 9, &[]);
        assert_eq!(gone.status, 404, "{}", gone.text());
    }
    assert_eq!(b0.stats()["sessions"], 0);
    assert_eq!(b1.stats()["sessions"], 0);
    // not one session-record operation on either replica
    assert_eq!(record_ops(&a) + record_ops(&b), 0.0);
    // a made-up or tampered id: 404 -32001, counted by cause, never a backend
    let before =
        b0.stats()["requests"].as_u64().unwrap() + b1.stats()["requests"].as_u64().unwrap();
    assert_not_found(&call_with(&a.addr, "not-a-sealed-id", 5, &[]), 5);
    let (_, token) = initialize(&mut a.conn(), json!(0));
    let mut t = token.into_bytes();
    let i = t.len() / 2;
    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
    assert_not_found(
        &call_with(&b.addr, std::str::from_utf8(&t).unwrap(), 6, &[]),
        6,
    );
    let after = b0.stats()["requests"].as_u64().unwrap() + b1.stats()["requests"].as_u64().unwrap();
    assert_eq!(after, before + 1, "only the initialize reached a backend");
    assert!(a.wait_count("cause=\"malformed\"", 1, Duration::from_secs(5)));
    assert!(b.wait_count("cause=\"tampered\"", 1, Duration::from_secs(5)));
    // the token never appears in a log line
    assert!(!b
        .logs()
        .iter()
        .any(|l| l.contains(std::str::from_utf8(&t).unwrap())));
}

fn legacy_sse_through_alternating_replicas() {
    let b0 = Proc::fake_backend("b0");
    let keys = key_file("legacy", &format!("{K1}\n"));
    let a = replica("router-a", &keys, &[&b0], &[]);
    let b = replica("router-b", &keys, &[&b0], &[]);
    for path in ["/sse", "/sse?style=python"] {
        let mut stream = a.conn();
        stream.send("GET", path, &[("Accept", "text/event-stream")], "");
        assert_eq!(stream.read_head().status, 200);
        let (event, endpoint) = stream.next_event().expect("endpoint");
        assert_eq!(event, "endpoint");
        let token = endpoint
            .split(['=', '&'])
            .nth(1)
            .expect("a session id in the endpoint")
            .to_string();
        assert!(token.len() > 80, "{endpoint}");
        for i in 0..4 {
            let via = [&a, &b][i % 2];
            let r = post_json(
                &mut via.conn(),
                &endpoint,
                None,
                &json!({"jsonrpc":"2.0","id":i,"method":"tools/list"}),
            );
            assert_eq!(r.status, 202, "{}", r.text());
            let ev: Value = stream.next_json_event();
            assert_eq!(ev["id"], i);
            assert_eq!(ev["result"]["backend"], "b0");
        }
        drop(stream);
    }
    assert_eq!(record_ops(&a) + record_ops(&b), 0.0);
}

fn sighup_rotates_keys_without_a_restart() {
    let b0 = Proc::fake_backend("b0");
    let keys = key_file("rotate", &format!("old:{K1}\n"));
    let a = replica("router-a", &keys, &[&b0], &[]);
    let (_, t_old) = initialize(&mut a.conn(), json!(1));
    let (mut g, head) = open_session_stream(&a.addr, &t_old);
    assert_eq!(head.status, 200);
    let first = g.next_json_event()["params"]["n"].as_u64().unwrap();
    // a new sealing key first, the old one still opens
    std::fs::write(&keys, format!("new:{K2}\nold:{K1}\n")).unwrap();
    a.signal("HUP");
    assert!(a.wait_count("configuration reloaded", 1, Duration::from_secs(5)));
    assert_eq!(call_with(&a.addr, &t_old, 2, &[]).status, 200);
    let (_, t_new) = initialize(&mut a.conn(), json!(3));
    assert_eq!(call_with(&a.addr, &t_new, 4, &[]).status, 200);
    // the old key leaves the ring: its tokens stop opening, the new ones go on
    std::fs::write(&keys, format!("new:{K2}\n")).unwrap();
    a.signal("HUP");
    assert!(a.wait_count("configuration reloaded", 2, Duration::from_secs(5)));
    assert_not_found(&call_with(&a.addr, &t_old, 5, &[]), 5);
    assert!(a.wait_count("cause=\"unknown_key\"", 1, Duration::from_secs(5)));
    assert_eq!(call_with(&a.addr, &t_new, 6, &[]).status, 200);
    // the stream opened before both reloads was never dropped
    assert_eq!(
        g.next_json_event()["params"]["n"].as_u64().unwrap(),
        first + 1
    );
    // a key file that is refused leaves the running ring in place
    std::fs::write(&keys, "short\n").unwrap();
    a.signal("HUP");
    assert!(a.wait_count("reload refused", 1, Duration::from_secs(5)));
    assert_eq!(call_with(&a.addr, &t_new, 7, &[]).status, 200);
    // no key ever reaches the logs
    assert!(!a.logs().iter().any(|l| l.contains(K1) || l.contains(K2)));
}

fn binding_to_a_header_identity_across_replicas() {
    let b0 = Proc::fake_backend("b0");
    let keys = key_file("bind", &format!("{K1}\n"));
    let extra = [
        "--session-binding",
        "on",
        "--client-identity",
        "header:x-user",
    ];
    let a = replica("router-a", &keys, &[&b0], &extra);
    let b = replica("router-b", &keys, &[&b0], &extra);
    let r = Conn::open(&a.addr).request(
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("X-User", "alice"),
        ],
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}).to_string(),
    );
    assert_eq!(r.status, 200);
    let token = r.header("mcp-session-id").unwrap().to_string();
    assert_eq!(
        call_with(&b.addr, &token, 2, &[("X-User", "alice")]).status,
        200
    );
    assert_not_found(&call_with(&b.addr, &token, 3, &[("X-User", "mallory")]), 3);
    assert_not_found(&call_with(&a.addr, &token, 4, &[]), 4);
    assert!(b.wait_count("cause=\"binding\"", 1, Duration::from_secs(5)));
    assert_eq!(
        call_with(&a.addr, &token, 5, &[("X-User", "alice")]).status,
        200
    );
}

mcp_router_testkit::behaviour_suite!(
    two_replicas_without_a_store_route_every_request_alternating,
    legacy_sse_through_alternating_replicas,
    sighup_rotates_keys_without_a_restart,
    binding_to_a_header_identity_across_replicas,
);
