//! `--failover reinitialize` (issue 14, point 3) on every frontend: one of two backends
//! is killed while its sessions are in use; each session's next call succeeds on the
//! other backend under the client's own session id, and the request that was in flight
//! at the kill gets JSON-RPC `-32603` and ran exactly once (the fake backend's `effect`
//! tool prints a line per execution, readable after the process is gone).

use mcp_router_testkit::harness::{
    free_port, metric_at, open_session_stream, post_json, redis_cmd, redis_server, Conn, Proc,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"suite","version":"1"}}}"#;

/// A session through `r`: its id and the backend that minted it.
fn open(r: &Proc) -> (String, String) {
    let resp = r.conn().request(
        "POST",
        "/mcp",
        &[("Accept", "application/json, text/event-stream")],
        INIT,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let sid = resp.header("mcp-session-id").unwrap().to_string();
    let backend = resp.json()["result"]["backend"]
        .as_str()
        .unwrap()
        .to_string();
    let n = post_json(
        &mut r.conn(),
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(n.status, 202);
    (sid, backend)
}

fn effect(c: &mut Conn, sid: &str, key: &str, delay_ms: u64) -> (u16, Option<String>, Value) {
    let r = post_json(
        c,
        "/mcp",
        Some(sid),
        &json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
                "params":{"name":"effect","arguments":{"key":key,"delay_ms":delay_ms}}}),
    );
    let sid = r.header("mcp-session-id").map(str::to_string);
    (r.status, sid, r.json())
}

/// Executions of `effect` with `key`, on every backend (killed ones too).
fn executions(backends: &[&Proc], key: &str) -> usize {
    let suffix = format!(" {key}");
    backends
        .iter()
        .map(|b| {
            b.logs()
                .iter()
                .filter(|l| l.contains("EFFECT ") && l.ends_with(&suffix))
                .count()
        })
        .sum()
}

/// Kill one of two backends while a request of one of its sessions is in flight:
/// that request gets `-32603` "backend lost; retry" and ran once; every session's
/// next call succeeds on the survivor, under the id the client already has.
fn a_dead_backends_sessions_continue_on_the_other() {
    let b1 = Proc::fake_backend("b1");
    let b2 = Proc::fake_backend("b2");
    let (r, admin) = Proc::router_with_admin(
        "router",
        &[("b1", &b1), ("b2", &b2)],
        &["--failover", "reinitialize", "--failover-window", "60s"],
    );
    let sessions: Vec<(String, String)> = (0..4).map(|_| open(&r)).collect();
    let on_b1: Vec<&String> = sessions
        .iter()
        .filter(|(_, b)| b == "b1")
        .map(|(s, _)| s)
        .collect();
    assert_eq!(on_b1.len(), 2, "{sessions:?}");
    // every session works, and keeps a pooled connection to its backend warm
    for (sid, b) in &sessions {
        let (st, _, v) = effect(&mut r.conn(), sid, &format!("warm-{sid}"), 0);
        assert_eq!(st, 200);
        assert_eq!(v["result"]["backend"], b.as_str());
    }
    // the other b1 session has its GET stream open
    let (mut g, head) = open_session_stream(&r.addr, on_b1[1]);
    assert_eq!(head.status, 200);
    assert_eq!(g.next_json_event()["params"]["backend"], "b1");
    let stream = std::thread::spawn(move || {
        let t = Instant::now();
        // ends cleanly or breaks off: either way it is over
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while g.next_event().is_some() {}
        }));
        t.elapsed()
    });
    // a request of a b1 session that is executing when b1 dies
    let addr = r.addr.clone();
    let victim = on_b1[0].clone();
    let inflight =
        std::thread::spawn(move || effect(&mut Conn::open(&addr), &victim, "inflight", 5_000));
    let mut b1 = b1;
    assert!(
        b1.wait_count("EFFECT b1 inflight", 1, Duration::from_secs(10)),
        "the in-flight request did not reach b1"
    );
    b1.kill();
    let (st, _, v) = inflight.join().unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["error"]["code"], -32603, "{v}");
    assert_eq!(v["error"]["message"], "backend lost; retry", "{v}");
    assert_eq!(v["id"], 7, "{v}");
    // the GET stream on b1 ended with it; the client's reconnect (here with a
    // Last-Event-ID, which the new backend cannot know) fails the session over and
    // lands on b2
    let ended_after = stream.join().unwrap();
    assert!(ended_after < Duration::from_secs(5), "{ended_after:?}");
    let mut g = Conn::open(&r.addr);
    g.send(
        "GET",
        "/mcp",
        &[
            ("Mcp-Session-Id", on_b1[1]),
            ("Accept", "text/event-stream"),
            ("Last-Event-ID", "b1-stream-42"),
        ],
        "",
    );
    let head = g.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(g.next_json_event()["params"]["backend"], "b2");
    drop(g);
    // every session's next call succeeds, on b2, with the client's own id
    for (sid, _) in &sessions {
        let t = Instant::now();
        let (st, echoed, v) = effect(&mut r.conn(), sid, &format!("after-{sid}"), 0);
        assert_eq!(st, 200, "{sid}: {v}");
        assert_eq!(v["result"]["backend"], "b2", "{sid}: {v}");
        if let Some(e) = echoed {
            assert_eq!(&e, sid, "the client's id never changes");
        }
        eprintln!(
            "session {sid}: first call after the kill took {:?}",
            t.elapsed()
        );
    }
    // and the calls after that too (the mapping holds)
    for (sid, _) in &sessions {
        let (st, _, v) = effect(&mut r.conn(), sid, &format!("again-{sid}"), 0);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["result"]["backend"], "b2");
    }
    // b2 holds its two sessions and the two it initialized for b1's
    assert_eq!(b2.stats()["sessions"], 4);
    let all = [&b1, &b2];
    assert_eq!(executions(&all, "inflight"), 1, "ran exactly once");
    for (sid, _) in &sessions {
        assert_eq!(executions(&all, &format!("after-{sid}")), 1);
    }
    // (the log lines are read from the router's output by another thread)
    r.wait_count("session failover", 3, Duration::from_secs(5));
    assert_eq!(
        r.count_logs("session failover"),
        3,
        "two done, one lost: {:?}",
        r.logs()
    );
    // the first of b1's sessions finds the connect refused, the second finds b1 marked
    // down (or refused as well, if it got there first)
    let done = ["connect_failed", "marked_down"]
        .iter()
        .map(|c| {
            metric_at(
                &admin,
                &format!("mcp_router_failovers_total{{cause=\"{c}\",outcome=\"done\"}}"),
            )
        })
        .sum::<f64>();
    assert_eq!(done, 2.0);
    let lost = metric_at(
        &admin,
        "mcp_router_failovers_total{cause=\"connection_lost\",outcome=\"lost\"}",
    );
    assert_eq!(lost, 1.0);
}

/// A session whose replacement dies too, within the window, ends: `404`.
fn a_second_loss_within_the_window_is_a_404() {
    let mut b1 = Proc::fake_backend("b1");
    let mut b2 = Proc::fake_backend("b2");
    let b3 = Proc::fake_backend("b3");
    let (r, _admin) = Proc::router_with_admin(
        "router",
        &[("b1", &b1), ("b2", &b2), ("b3", &b3)],
        &["--failover", "reinitialize", "--failover-window", "60s"],
    );
    let (sid, first) = loop {
        let (sid, b) = open(&r);
        if b == "b1" {
            break (sid, b);
        }
    };
    assert_eq!(first, "b1");
    b1.kill();
    let (st, _, v) = effect(&mut r.conn(), &sid, "one", 0);
    assert_eq!(st, 200, "{v}");
    let second = v["result"]["backend"].as_str().unwrap().to_string();
    assert_ne!(second, "b1");
    if second == "b2" {
        b2.kill();
    } else {
        // b3 took it: kill b3 instead (b2 stays for the check below)
        drop(b3);
    }
    let r2 = post_json(
        &mut r.conn(),
        "/mcp",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{}}}),
    );
    assert_eq!(r2.status, 404, "{}", r2.text());
    assert_eq!(r2.json()["error"]["code"], -32001);
}

/// Every string in Redis, keys and values (strings, hashes, sorted-set members), one
/// per line (binary values lossily).
fn redis_dump(addr: &str) -> String {
    redis_cmd(
        addr,
        &[
            "EVAL",
            "local out = {} \
             for _, k in ipairs(redis.call('KEYS', '*')) do \
               out[#out + 1] = k \
               local t = redis.call('TYPE', k).ok \
               if t == 'string' then out[#out + 1] = redis.call('GET', k) \
               elseif t == 'hash' then for _, v in ipairs(redis.call('HGETALL', k)) do out[#out + 1] = v end \
               elseif t == 'zset' then for _, v in ipairs(redis.call('ZRANGE', k, 0, -1)) do out[#out + 1] = v end end \
             end \
             return table.concat(out, '\\n')",
            "0",
        ],
    )
}

/// `--failover reinitialize` on a shared Redis store (with a session key ring): two
/// replicas, sessions opened through one; their backend dies; the next call through
/// the *other* replica fails the session over from the `initialize` body it reads from
/// Redis, under the client's own id, and the first replica follows the stored mapping
/// without a failover of its own. The body in Redis is sealed: the client's name
/// appears in no key or value.
fn replicas_on_redis_fail_over_from_the_sealed_params_in_redis() {
    on_redis(&[]);
}

/// The same with `--session-ids sealed`: the token the client holds never changes, and
/// the record (keyed by the token's upstream id) with its failover hash is the only
/// store state the mapping needs.
fn sealed_ids_on_redis_fail_over_from_the_sealed_params_in_redis() {
    on_redis(&["--session-ids", "sealed"]);
}

/// The failover keys in Redis.
fn failover_keys(addr: &str) -> Vec<String> {
    let keys = redis_cmd(addr, &["KEYS", "mcp-router:session: failover *"]);
    keys.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn on_redis(ids: &[&str]) {
    const NAME: &str = "client-name-that-must-not-leak";
    let rp = free_port();
    let redis = redis_server(rp);
    let dir = std::env::temp_dir().join(format!("mcp-fo-redis-{}-{rp}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, format!("k1:{}\n", "3c".repeat(32))).unwrap();
    let store = format!("redis://127.0.0.1:{rp}");
    let mut extra = vec![
        "--store",
        &store,
        "--session-keys",
        keys.to_str().unwrap(),
        "--failover",
        "reinitialize",
    ];
    extra.extend_from_slice(ids);
    let mut b1 = Proc::fake_backend("b1");
    let b2 = Proc::fake_backend("b2");
    let (a, admin_a) = Proc::router_with_admin("router", &[("b1", &b1), ("b2", &b2)], &extra);
    let (b, admin_b) = Proc::router_with_admin("router", &[("b1", &b1), ("b2", &b2)], &extra);
    let init = INIT.replace("\"suite\"", &format!("{NAME:?}"));
    assert!(init.contains(NAME));
    let mut sessions = Vec::new();
    while sessions.iter().filter(|(_, be)| be == "b1").count() < 2 {
        assert!(sessions.len() < 20, "{sessions:?}");
        let resp = a.conn().request(
            "POST",
            "/mcp",
            &[("Accept", "application/json, text/event-stream")],
            &init,
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        let sid = resp.header("mcp-session-id").unwrap().to_string();
        let be = resp.json()["result"]["backend"]
            .as_str()
            .unwrap()
            .to_string();
        let n = post_json(
            &mut a.conn(),
            "/mcp",
            Some(&sid),
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        );
        assert_eq!(n.status, 202);
        sessions.push((sid, be));
    }
    // before the loss: each session's call works through both replicas
    for (sid, be) in &sessions {
        for r in [&a, &b] {
            let (st, _, v) = effect(&mut r.conn(), sid, &format!("warm-{sid}"), 0);
            assert_eq!(
                (st, v["result"]["backend"].as_str()),
                (200, Some(be.as_str()))
            );
        }
    }
    // the raw look: the failover hashes are there, the session ids are in the dump (so
    // it does show values), and the client's name is nowhere
    let dump = redis_dump(&redis.addr);
    let hashes = failover_keys(&redis.addr);
    assert_eq!(hashes.len(), sessions.len(), "{dump}");
    assert!(hashes.iter().all(|k| dump.contains(k.as_str())));
    let on_b1_records = |dump: &str| dump.lines().filter(|l| l.ends_with("|b1")).count();
    // each record and its copy in the expiry index
    assert_eq!(on_b1_records(&dump), 4, "records are in the dump: {dump}");
    assert!(
        !dump.contains(NAME),
        "the initialize body is in Redis in plaintext"
    );
    assert!(
        !dump.contains("clientInfo"),
        "the initialize body is in Redis in plaintext"
    );
    let sealed = redis_cmd(&redis.addr, &["HSTRLEN", &hashes[0], "p"]);
    let sealed: usize = sealed.trim_start_matches(':').parse().unwrap();
    assert_eq!(sealed, init.len() + 31, "the body, sealed (header and tag)");

    b1.kill();
    let on_b1: Vec<&String> = sessions
        .iter()
        .filter(|(_, be)| be == "b1")
        .map(|(s, _)| s)
        .collect();
    // the next call of each b1 session, through the replica that did not open it
    for sid in &on_b1 {
        let t = Instant::now();
        let (st, echoed, v) = effect(&mut b.conn(), sid, &format!("after-{sid}"), 0);
        assert_eq!(st, 200, "{sid}: {v}");
        assert_eq!(v["result"]["backend"], "b2", "{sid}: {v}");
        if let Some(e) = echoed {
            assert_eq!(&e, *sid, "the client's id never changes");
        }
        eprintln!(
            "session {sid}: first call after the kill, through B, took {:?}",
            t.elapsed()
        );
    }
    // (the log lines are read from the router's output by another thread)
    b.wait_count("session failover", on_b1.len(), Duration::from_secs(5));
    assert_eq!(
        b.count_logs("session failover"),
        on_b1.len(),
        "{:?}",
        b.logs()
    );
    // the replays were initialize requests b2 accepted (the fake backend mints a session
    // only for a body whose method is `initialize`): read back from Redis and opened
    assert_eq!(b2.stats()["sessions"], sessions.len());
    // replica A follows the mapping in Redis: b2, the same id, no failover of its own
    for (sid, _) in &sessions {
        let (st, _, v) = effect(&mut a.conn(), sid, &format!("again-{sid}"), 0);
        assert_eq!(
            (st, v["result"]["backend"].as_str()),
            (200, Some("b2")),
            "{v}"
        );
    }
    assert_eq!(a.count_logs("session failover"), 0, "{:?}", a.logs());
    let done = |admin: &str| {
        ["connect_failed", "marked_down"]
            .iter()
            .map(|c| {
                metric_at(
                    admin,
                    &format!("mcp_router_failovers_total{{cause=\"{c}\",outcome=\"done\"}}"),
                )
            })
            .sum::<f64>()
    };
    assert_eq!(done(&admin_b), on_b1.len() as f64);
    assert_eq!(done(&admin_a), 0.0);
    // the stored mapping names b2 now, and still nothing in plaintext
    let dump = redis_dump(&redis.addr);
    assert!(!dump.contains(NAME));
    // no record names b1 any more: the mapping names b2, in the records and the index
    assert_eq!(on_b1_records(&dump), 0, "{dump}");
    // DELETE through A ends the session and its failover hash
    let d = a.conn().request(
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", on_b1[0].as_str())],
        "",
    );
    assert!((200..300).contains(&d.status), "{}", d.status);
    assert_eq!(failover_keys(&redis.addr).len(), sessions.len() - 1);
    let _ = std::fs::remove_dir_all(&dir);
}

mcp_router_testkit::behaviour_suite!(
    a_dead_backends_sessions_continue_on_the_other,
    a_second_loss_within_the_window_is_a_404,
    replicas_on_redis_fail_over_from_the_sealed_params_in_redis,
    sealed_ids_on_redis_fail_over_from_the_sealed_params_in_redis,
);
