//! Reaping (issue 14, points 1 and 2) on every frontend: sessions the router ends
//! itself (idle expiry, drain timeout) are deleted on their backend, checked on the
//! backend's side (its session count returns to where it started, and each session is
//! named by exactly one `DELETE`).

use mcp_router_testkit::harness::{
    free_port, initialize, metric_at, post_json, redis_cmd, redis_server, warm, Conn, Proc,
};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn sessions(b: &Proc) -> u64 {
    b.stats()["sessions"].as_u64().expect("sessions")
}

/// How many `DELETE`s named each session id.
fn deleted(b: &Proc) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for v in b.stats()["deleted_ids"].as_array().expect("deleted_ids") {
        *m.entry(v.as_str().unwrap().to_string()).or_default() += 1;
    }
    m
}

/// A session opened through `r` by a client that sends `Authorization`.
fn open(r: &Proc) -> String {
    let mut c = r.conn();
    let resp = c.request(
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", "Bearer client-secret"),
        ],
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}).to_string(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.header("mcp-session-id").unwrap().to_string()
}

fn ping(r: &Proc, sid: &str) -> u16 {
    post_json(
        &mut r.conn(),
        "/mcp",
        Some(sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
    )
    .status
}

/// Poll `done` every 50 ms until it holds or `limit` passes, calling `meanwhile`
/// between polls; whether it held.
fn until(limit: Duration, mut meanwhile: impl FnMut(), mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        meanwhile();
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// Idle sessions are deleted on their backend once the TTL ran out, each exactly
/// once, with the configured header and without the client's credential; a session
/// in use is not, and one the client deleted itself is not deleted again.
fn idle_sessions_are_deleted_on_their_backend() {
    let b0 = Proc::fake_backend("b0");
    let start = sessions(&b0);
    let (r, admin) = Proc::router_with_admin(
        "router",
        &[("b0", &b0)],
        &[
            "--session-ttl",
            "2s",
            "--reap-header",
            "Authorization: Bearer reaper-token",
        ],
    );
    let idle: Vec<String> = (0..3).map(|_| open(&r)).collect();
    let busy = open(&r);
    let gone = open(&r);
    assert_eq!(
        r.conn()
            .request("DELETE", "/mcp", &[("Mcp-Session-Id", &gone)], "")
            .status,
        200
    );
    assert_eq!(sessions(&b0), start + 4);
    // the busy session is used every 50 ms or so, well inside its 2 s TTL
    let reaped = until(
        Duration::from_secs(10),
        || assert_eq!(ping(&r, &busy), 200, "a session in use was ended"),
        || sessions(&b0) == start + 1,
    );
    assert!(
        reaped,
        "idle sessions still on the backend: {} (started at {start})",
        sessions(&b0)
    );
    assert_eq!(ping(&r, &busy), 200);
    let d = deleted(&b0);
    for sid in idle.iter().chain([&gone]) {
        assert_eq!(d.get(sid), Some(&1), "{sid}: {d:?}");
    }
    assert_eq!(d.get(&busy), None);
    assert_eq!(b0.stats()["deletes"], 4);
    let headers = b0.stats()["last_delete_headers"].clone();
    let h = |name: &str| -> Vec<String> {
        headers
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|p| p[1].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(h("authorization"), ["Bearer reaper-token"], "{headers}");
    assert_eq!(h("mcp-session-id").len(), 1, "{headers}");
    assert!(idle.contains(&h("mcp-session-id")[0]), "{headers}");
    // the expired sessions' clients are told at once
    assert_eq!(ping(&r, &idle[0]), 404);
    // counted once the worker has read the answer
    let reaped_ok = "mcp_router_sessions_reaped_total{result=\"deleted\"}";
    assert!(until(
        Duration::from_secs(5),
        || {},
        || metric_at(&admin, reaped_ok) >= 3.0
    ));
    assert_eq!(metric_at(&admin, reaped_ok), 3.0);
    assert_eq!(
        metric_at(
            &admin,
            "mcp_router_sessions_ended_total{cause=\"idle_expiry\"}"
        ),
        3.0
    );
    // left alone, the last one goes too: back to where the backend started
    assert!(until(
        Duration::from_secs(10),
        || {},
        || sessions(&b0) == start
    ));
    assert_eq!(deleted(&b0).get(&busy), Some(&1));
    assert!(until(
        Duration::from_secs(5),
        || {},
        || metric_at(&admin, reaped_ok) >= 4.0
    ));
    assert_eq!(metric_at(&admin, reaped_ok), 4.0);
    assert_eq!(b0.stats()["deletes"], 5, "no session deleted twice");
}

/// A session the backend already forgot (`404`) counts as reaped (`gone`), and a
/// backend that does not answer is tried twice, then counted `failed`.
fn a_backend_that_forgot_or_died_is_counted_not_retried_forever() {
    let b0 = Proc::fake_backend("b0");
    let mut b1 = Proc::fake_backend("b1");
    let (r, admin) = Proc::router_with_admin(
        "router",
        &[("b0", &b0), ("b1", &b1)],
        &["--session-ttl", "1s"],
    );
    let mut on: HashMap<String, Vec<String>> = HashMap::new();
    while on.get("b0").map_or(0, Vec::len) < 1 || on.get("b1").map_or(0, Vec::len) < 1 {
        let sid = open(&r);
        let owner = sid.split('-').next().unwrap().to_string();
        on.entry(owner).or_default().push(sid);
    }
    // b0 forgets its sessions behind the router's back
    for sid in &on["b0"] {
        let status = b0
            .conn()
            .request("DELETE", "/mcp", &[("Mcp-Session-Id", sid)], "")
            .status;
        assert_eq!(status, 200);
    }
    b1.kill();
    let gone = "mcp_router_sessions_reaped_total{result=\"gone\"}";
    let failed = "mcp_router_sessions_reaped_total{result=\"failed\"}";
    let n0 = on["b0"].len() as f64;
    let n1 = on["b1"].len() as f64;
    assert!(
        until(
            Duration::from_secs(15),
            || {},
            || metric_at(&admin, gone) == n0 && metric_at(&admin, failed) == n1
        ),
        "gone {} (want {n0}), failed {} (want {n1})",
        metric_at(&admin, gone),
        metric_at(&admin, failed)
    );
    // each forgotten session was asked about once more, by the reaper
    for sid in &on["b0"] {
        assert_eq!(deleted(&b0).get(sid), Some(&2), "{sid}");
    }
}

/// `--drain-timeout`: a draining backend's sessions end on time, in use or not:
/// deleted on the backend, and their clients get `404`; the other backend's stay.
fn a_drained_backends_sessions_end_by_the_drain_timeout() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let (r, admin) = Proc::router_with_admin(
        "router",
        &[("b0", &b0), ("b1", &b1)],
        &["--session-ttl", "1h", "--drain-timeout", "2s"],
    );
    let mut on: HashMap<String, Vec<String>> = HashMap::new();
    while on.get("b0").map_or(0, Vec::len) < 3 || on.get("b1").map_or(0, Vec::len) < 1 {
        let sid = open(&r);
        let owner = sid.split('-').next().unwrap().to_string();
        on.entry(owner).or_default().push(sid);
    }
    let n0 = on["b0"].len() as u64;
    assert_eq!(sessions(&b0), n0);
    let before = Instant::now();
    let drain = Conn::open(&admin)
        .request("POST", "/admin/backends/b0/drain", &[], "{}")
        .status;
    assert_eq!(drain, 200);
    let drained_at = Instant::now();
    let busy = on["b0"][0].clone();
    // well before the timeout the sessions go on (a session in use, and the others)
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ping(&r, &busy), 200);
    assert_eq!(sessions(&b0), n0);
    let mut served_late = None;
    let ended = until(
        Duration::from_secs(10),
        || {
            if ping(&r, &busy) == 200 {
                served_late = Some(drained_at.elapsed());
            }
        },
        || sessions(&b0) == 0,
    );
    let took = drained_at.elapsed();
    eprintln!("embedded store: the drained backend's sessions gone {took:?} after the drain (timeout 2 s)");
    assert!(ended, "b0 still holds {} sessions", sessions(&b0));
    // the drain began between `before` and `drained_at`
    let earliest = before.elapsed();
    assert!(
        earliest >= Duration::from_secs(2),
        "ended before the drain timeout: {earliest:?}"
    );
    // the timeout plus one expiry tick and the DELETEs' round trips
    assert!(
        took < Duration::from_secs(4),
        "ended {took:?} after the drain"
    );
    if let Some(t) = served_late {
        assert!(
            t < Duration::from_secs(3),
            "a drained session served at {t:?}"
        );
    }
    for sid in &on["b0"] {
        assert_eq!(ping(&r, sid), 404, "{sid}");
        assert_eq!(deleted(&b0).get(sid), Some(&1), "{sid}");
    }
    for sid in &on["b1"] {
        assert_eq!(ping(&r, sid), 200, "{sid}");
    }
    assert_eq!(sessions(&b1), on["b1"].len() as u64);
    assert_eq!(
        metric_at(
            &admin,
            "mcp_router_sessions_ended_total{cause=\"drain_timeout\"}"
        ),
        n0 as f64
    );
    let reaped_ok = "mcp_router_sessions_reaped_total{result=\"deleted\"}";
    assert!(until(
        Duration::from_secs(5),
        || {},
        || metric_at(&admin, reaped_ok) >= n0 as f64
    ));
    assert_eq!(metric_at(&admin, reaped_ok), n0 as f64);
}

const PREFIX: &str = "mcp-router:session:";

/// Two replicas on one Redis: Redis expires idle records silently, the replicas claim
/// them from the shared expiry index, and each session is deleted on its backend
/// exactly once, whichever replica opened or used it. A claim left by a replica that
/// died before acknowledging it is taken over once its lease runs out.
fn two_replicas_on_redis_reap_each_expired_session_exactly_once() {
    let rp = free_port();
    let redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    let store = format!("redis://127.0.0.1:{rp}");
    let extra = [
        "--store",
        &store,
        "--session-ttl",
        "1s",
        "--reap-claim-interval",
        "100ms",
    ];
    let (a, admin_a) = Proc::router_with_admin("router-a", &[("b0", &b0)], &extra);
    let (b, admin_b) = Proc::router_with_admin("router-b", &[("b0", &b0)], &extra);
    warm(&a.addr);
    warm(&b.addr);
    let start = sessions(&b0);
    let deletes_before = b0.stats()["deletes"].as_u64().unwrap();
    // what a replica that died mid-reap leaves behind: a claim whose lease has run
    // out, and the record's copy, for a session its backend still holds
    let (_, orphan) = initialize(&mut b0.conn(), json!(1));
    let r = |args: &[&str]| redis_cmd(&redis.addr, args);
    r(&[
        "HSET",
        &format!("{PREFIX} reap records"),
        &orphan,
        "2|s|0|0000000000000000|b0",
    ]);
    r(&["ZADD", &format!("{PREFIX} reap claims"), "0", &orphan]);
    // ten sessions, opened on either replica, each used once through the other
    let mut sids = Vec::new();
    for i in 0..10 {
        let (open_on, use_on) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let sid = open(open_on);
        assert_eq!(ping(use_on, &sid), 200);
        sids.push(sid);
    }
    assert!(
        until(Duration::from_secs(15), || {}, || sessions(&b0) == start),
        "b0 still holds {} sessions (started at {start})",
        sessions(&b0)
    );
    let d = deleted(&b0);
    for sid in sids.iter().chain([&orphan]) {
        assert_eq!(d.get(sid), Some(&1), "{sid}: {d:?}");
    }
    let ok = "mcp_router_sessions_reaped_total{result=\"deleted\"}";
    let total = || metric_at(&admin_a, ok) + metric_at(&admin_b, ok);
    assert!(until(Duration::from_secs(5), || {}, || total() >= 11.0));
    // a while longer: nothing is reaped twice
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(total(), 11.0);
    assert_eq!(
        b0.stats()["deletes"].as_u64().unwrap(),
        deletes_before + 11,
        "{:?}",
        deleted(&b0)
    );
    // the index is empty again once the claims are acknowledged
    let empty = || {
        [" reap", " reap claims"]
            .iter()
            .all(|k| r(&["ZCARD", &format!("{PREFIX}{k}")]) == ":0")
            && r(&["HLEN", &format!("{PREFIX} reap records")]) == ":0"
    };
    assert!(until(Duration::from_secs(5), || {}, empty));
    // the expired sessions' clients get 404 on either replica
    assert_eq!(ping(&a, &sids[0]), 404);
    assert_eq!(ping(&b, &sids[1]), 404);
}

/// `--drain-timeout` with two replicas on Redis: the drained backend's sessions end
/// on time, each deleted on the backend exactly once, and their clients get `404`
/// from either replica; the other backend's sessions go on.
fn two_replicas_on_redis_end_a_drained_backends_sessions_exactly_once() {
    let rp = free_port();
    let redis = redis_server(rp);
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let store = format!("redis://127.0.0.1:{rp}");
    let extra = [
        "--store",
        &store,
        "--session-ttl",
        "1h",
        "--drain-timeout",
        "2s",
        "--reap-claim-interval",
        "100ms",
    ];
    let backends = [("b0", &b0), ("b1", &b1)];
    let (a, admin_a) = Proc::router_with_admin("router-a", &backends, &extra);
    let (b, admin_b) = Proc::router_with_admin("router-b", &backends, &extra);
    warm(&a.addr);
    warm(&b.addr);
    let mut on: HashMap<String, Vec<String>> = HashMap::new();
    let mut i = 0;
    while on.get("b0").map_or(0, Vec::len) < 4 || on.get("b1").map_or(0, Vec::len) < 2 {
        let sid = open(if i % 2 == 0 { &a } else { &b });
        i += 1;
        let owner = sid.split('-').next().unwrap().to_string();
        on.entry(owner).or_default().push(sid);
    }
    let n0 = on["b0"].len();
    assert_eq!(sessions(&b0), n0 as u64);
    let before = Instant::now();
    for admin in [&admin_a, &admin_b] {
        let s = Conn::open(admin)
            .request("POST", "/admin/backends/b0/drain", &[], "{}")
            .status;
        assert_eq!(s, 200);
    }
    let drained_at = Instant::now();
    assert!(until(Duration::from_secs(10), || {}, || sessions(&b0) == 0));
    let earliest = before.elapsed();
    let took = drained_at.elapsed();
    eprintln!("redis, two replicas: the drained backend's sessions gone {took:?} after the drain (timeout 2 s)");
    assert!(
        earliest >= Duration::from_secs(2),
        "ended after {earliest:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "ended {took:?} after the drain"
    );
    let d = deleted(&b0);
    for sid in &on["b0"] {
        assert_eq!(d.get(sid), Some(&1), "{sid}: {d:?}");
        assert_eq!(ping(&a, sid), 404, "{sid}");
        assert_eq!(ping(&b, sid), 404, "{sid}");
    }
    for sid in &on["b1"] {
        assert_eq!(ping(&a, sid), 200, "{sid}");
        assert_eq!(ping(&b, sid), 200, "{sid}");
    }
    let ok = "mcp_router_sessions_reaped_total{result=\"deleted\"}";
    let total = || metric_at(&admin_a, ok) + metric_at(&admin_b, ok);
    assert!(until(
        Duration::from_secs(5),
        || {},
        || total() >= n0 as f64
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(total(), n0 as f64, "reaped twice?");
    let ended = "mcp_router_sessions_ended_total{cause=\"drain_timeout\"}";
    assert_eq!(
        metric_at(&admin_a, ended) + metric_at(&admin_b, ended),
        n0 as f64
    );
    assert_eq!(sessions(&b1), on["b1"].len() as u64);
    // nothing of b0's is left in the index, b1's are all there
    let r = |args: &[&str]| redis_cmd(&redis.addr, args);
    assert!(until(
        Duration::from_secs(5),
        || {},
        || r(&["ZCARD", &format!("{PREFIX} reap claims")]) == ":0"
    ));
    assert_eq!(
        r(&["HLEN", &format!("{PREFIX} reap records")]),
        format!(":{}", on["b1"].len())
    );
}

/// `--failover reinitialize` on Redis: a session that failed over and then expired is
/// reaped on its new backend by the id that backend minted (not the client's id, which
/// names the session on the dead one), and its claim is acknowledged.
fn a_failed_over_session_on_redis_is_reaped_by_its_new_upstream_id() {
    let rp = free_port();
    let _redis = redis_server(rp);
    let dir = std::env::temp_dir().join(format!("mcp-reap-fo-{}-{rp}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, format!("{}\n", "4d".repeat(32))).unwrap();
    let store = format!("redis://127.0.0.1:{rp}");
    let extra = [
        "--store",
        &store,
        "--session-ttl",
        "2s",
        "--reap-claim-interval",
        "100ms",
        "--session-keys",
        keys.to_str().unwrap(),
        "--failover",
        "reinitialize",
    ];
    let mut b1 = Proc::fake_backend("b1");
    let b2 = Proc::fake_backend("b2");
    let (a, _) = Proc::router_with_admin("router-a", &[("b1", &b1), ("b2", &b2)], &extra);
    let (b, _) = Proc::router_with_admin("router-b", &[("b1", &b1), ("b2", &b2)], &extra);
    let mut sids = Vec::new();
    let sid = loop {
        assert!(sids.len() < 10, "{sids:?}");
        let sid = open(&a);
        sids.push(sid.clone());
        if sid.starts_with("b1-") {
            break sid;
        }
    };
    b1.kill();
    // through the other replica: failed over to b2
    assert_eq!(ping(&b, &sid), 200);
    assert_eq!(b.count_logs("session failover"), 1, "{:?}", b.logs());
    // everything expires; b2 is left with nothing, the failed-over session included
    assert!(
        until(Duration::from_secs(15), || {}, || sessions(&b2) == 0),
        "b2 still holds {} sessions: {:?}",
        sessions(&b2),
        deleted(&b2)
    );
    let d = deleted(&b2);
    assert_eq!(
        d.get(&sid),
        None,
        "the client's id names nothing on b2: {d:?}"
    );
    assert_eq!(d.len(), sids.len(), "{d:?}");
    assert!(d.values().all(|n| *n == 1), "{d:?}");
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backend removed from the configuration (the file, then `SIGHUP`) that still
/// answers: its sessions end, each with one `DELETE`, and its session count goes to
/// 0; the kept backend's sessions go on. A removed backend that no longer answers
/// costs one short connect, and its sessions end without any.
fn a_removed_backends_sessions_are_deleted_when_it_still_answers() {
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let mut b2 = Proc::fake_backend("b2");
    let dir = mcp_router_testkit::harness::test_dir("reap-removed");
    let file = dir.join("router.toml");
    let write = |names: &[(&str, &Proc)]| {
        let list: Vec<String> = names
            .iter()
            .map(|(n, b)| format!("{{ name = \"{n}\", url = \"http://{}\" }}", b.addr))
            .collect();
        std::fs::write(
            &file,
            format!("session_ttl = \"1h\"\nbackends = [{}]\n", list.join(", ")),
        )
        .unwrap();
    };
    write(&[("b0", &b0), ("b1", &b1), ("b2", &b2)]);
    let (r, admin) =
        Proc::router_with_admin("router", &[], &["--config", &file.display().to_string()]);
    let mut on: HashMap<String, Vec<String>> = HashMap::new();
    while ["b0", "b1", "b2"]
        .iter()
        .any(|n| on.get(*n).map_or(0, Vec::len) < 2)
    {
        let sid = open(&r);
        let owner = sid.split('-').next().unwrap().to_string();
        on.entry(owner).or_default().push(sid);
    }
    let n0 = on["b0"].len() as u64;
    assert_eq!(sessions(&b0), n0);
    // b2 goes away for good, b0 is taken out of the file but still runs
    b2.kill();
    write(&[("b1", &b1)]);
    r.signal("HUP");
    assert!(
        r.wait_count("configuration reloaded", 1, Duration::from_secs(5)),
        "{:?}",
        r.logs()
    );
    assert!(
        until(Duration::from_secs(5), || {}, || sessions(&b0) == 0),
        "the removed backend still holds {} sessions",
        sessions(&b0)
    );
    let d = deleted(&b0);
    for sid in &on["b0"] {
        assert_eq!(d.get(sid), Some(&1), "{sid}: {d:?}");
    }
    assert_eq!(b0.stats()["deletes"].as_u64().unwrap(), n0);
    // the kept backend's sessions go on, untouched
    assert_eq!(sessions(&b1), on["b1"].len() as u64);
    assert_eq!(b1.stats()["deletes"], 0);
    for sid in &on["b1"] {
        assert_eq!(ping(&r, sid), 200, "{sid}");
    }
    let reaped_ok = "mcp_router_sessions_reaped_total{result=\"deleted\"}";
    assert!(until(
        Duration::from_secs(5),
        || {},
        || metric_at(&admin, reaped_ok) >= n0 as f64
    ));
    std::thread::sleep(Duration::from_millis(500));
    // b2's sessions got no attempt: only b0's were reaped, none failed
    assert_eq!(metric_at(&admin, reaped_ok), n0 as f64);
    assert_eq!(
        metric_at(
            &admin,
            "mcp_router_sessions_reaped_total{result=\"failed\"}"
        ),
        0.0
    );
    assert_eq!(
        metric_at(
            &admin,
            "mcp_router_sessions_ended_total{cause=\"backend_removed\"}"
        ),
        n0 as f64
    );
    assert_eq!(
        r.count_logs("removed backend does not answer"),
        1,
        "{:?}",
        r.logs()
    );
    // the removed backend's clients are told their session is over
    assert_eq!(ping(&r, &on["b0"][0]), 404);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same on Redis, two replicas: a backend taken out of both replicas' files (and
/// `SIGHUP` to both) that still answers has its sessions ended in Redis, by the name
/// their records carry (no replica's configuration names it any more), each deleted
/// on the backend exactly once across the replicas; its clients get `404` from either
/// replica, the other backends' sessions go on untouched.
fn two_replicas_on_redis_delete_a_removed_backends_sessions_exactly_once() {
    let rp = free_port();
    let redis = redis_server(rp);
    let (b0, b1, b2) = (
        Proc::fake_backend("b0"),
        Proc::fake_backend("b1"),
        Proc::fake_backend("b2"),
    );
    let dir = std::env::temp_dir().join(format!(
        "mcp-router-reap-removed-redis-{}-{rp}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let files = [dir.join("a.toml"), dir.join("b.toml")];
    let write = |names: &[(&str, &Proc)]| {
        let list: Vec<String> = names
            .iter()
            .map(|(n, b)| format!("{{ name = \"{n}\", url = \"http://{}\" }}", b.addr))
            .collect();
        for f in &files {
            std::fs::write(
                f,
                format!("session_ttl = \"1h\"\nbackends = [{}]\n", list.join(", ")),
            )
            .unwrap();
        }
    };
    write(&[("b0", &b0), ("b1", &b1), ("b2", &b2)]);
    let store = format!("redis://127.0.0.1:{rp}");
    let replica = |name: &str, file: &std::path::Path| {
        let file = file.display().to_string();
        Proc::router_with_admin(
            name,
            &[],
            &[
                "--config",
                &file,
                "--store",
                &store,
                "--reap-claim-interval",
                "100ms",
            ],
        )
    };
    let (a, admin_a) = replica("router-a", &files[0]);
    let (b, admin_b) = replica("router-b", &files[1]);
    warm(&a.addr);
    warm(&b.addr);
    let mut on: HashMap<String, Vec<String>> = HashMap::new();
    let mut i = 0;
    while ["b0", "b1", "b2"]
        .iter()
        .any(|n| on.get(*n).map_or(0, Vec::len) < 3)
    {
        let sid = open(if i % 2 == 0 { &a } else { &b });
        i += 1;
        let owner = sid.split('-').next().unwrap().to_string();
        on.entry(owner).or_default().push(sid);
    }
    let n0 = on["b0"].len() as u64;
    assert_eq!(sessions(&b0), n0);
    let deletes = |b: &Proc| b.stats()["deletes"].as_u64().unwrap();
    let before = [deletes(&b0), deletes(&b1), deletes(&b2)];
    // b0 is taken out of both files but still runs
    write(&[("b1", &b1), ("b2", &b2)]);
    a.signal("HUP");
    b.signal("HUP");
    for r in [&a, &b] {
        assert!(
            r.wait_count("configuration reloaded", 1, Duration::from_secs(5)),
            "{:?}",
            r.logs()
        );
    }
    assert!(
        until(Duration::from_secs(10), || {}, || sessions(&b0) == 0),
        "the removed backend still holds {} sessions: {:?}",
        sessions(&b0),
        deleted(&b0)
    );
    let ok = "mcp_router_sessions_reaped_total{result=\"deleted\"}";
    let total = || metric_at(&admin_a, ok) + metric_at(&admin_b, ok);
    assert!(until(
        Duration::from_secs(5),
        || {},
        || total() >= n0 as f64
    ));
    // a while longer: nothing is deleted twice
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(total(), n0 as f64, "reaped twice?");
    let d = deleted(&b0);
    for sid in &on["b0"] {
        assert_eq!(d.get(sid), Some(&1), "{sid}: {d:?}");
    }
    assert_eq!(deletes(&b0), before[0] + n0, "{d:?}");
    let ended = "mcp_router_sessions_ended_total{cause=\"backend_removed\"}";
    assert_eq!(
        metric_at(&admin_a, ended) + metric_at(&admin_b, ended),
        n0 as f64
    );
    let failed = "mcp_router_sessions_reaped_total{result=\"failed\"}";
    assert_eq!(
        metric_at(&admin_a, failed) + metric_at(&admin_b, failed),
        0.0
    );
    // the other backends' sessions go on, untouched, through either replica
    for (k, bk) in [(1, &b1), (2, &b2)] {
        let n = format!("b{k}");
        assert_eq!(sessions(bk), on[&n].len() as u64, "{n}");
        assert_eq!(deletes(bk), before[k], "{n}: {:?}", deleted(bk));
        for sid in &on[&n] {
            assert_eq!(ping(&a, sid), 200, "{sid}");
            assert_eq!(ping(&b, sid), 200, "{sid}");
        }
    }
    // the removed backend's clients are told their session is over, on either replica
    for sid in &on["b0"] {
        assert_eq!(ping(&a, sid), 404, "{sid}");
        assert_eq!(ping(&b, sid), 404, "{sid}");
    }
    // nothing of b0's is left in the index, the others' are all there
    let r = |args: &[&str]| redis_cmd(&redis.addr, args);
    assert!(until(
        Duration::from_secs(5),
        || {},
        || r(&["ZCARD", &format!("{PREFIX} reap claims")]) == ":0"
    ));
    assert_eq!(
        r(&["HLEN", &format!("{PREFIX} reap records")]),
        format!(":{}", on["b1"].len() + on["b2"].len())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

mcp_router_testkit::behaviour_suite!(
    a_removed_backends_sessions_are_deleted_when_it_still_answers,
    two_replicas_on_redis_delete_a_removed_backends_sessions_exactly_once,
    two_replicas_on_redis_reap_each_expired_session_exactly_once,
    two_replicas_on_redis_end_a_drained_backends_sessions_exactly_once,
    idle_sessions_are_deleted_on_their_backend,
    a_backend_that_forgot_or_died_is_counted_not_retried_forever,
    a_drained_backends_sessions_end_by_the_drain_timeout,
    a_failed_over_session_on_redis_is_reaped_by_its_new_upstream_id,
);
