//! The Redis store's record cache (`--store-cache-size`, issue 18 point 4): a request
//! of a live session costs no Redis round trip on every frontend (glommio: one cache
//! per executor, each with its own tracking connection), and a session ended anywhere
//! (another replica's `DELETE`, a `DEL` in Redis, expiry) stops routing on every
//! replica at once; while the cache's tracking connection is down the replica reads
//! Redis.

use mcp_router_testkit::harness::{
    free_port, frontend, initialize, post_json, redis_cmd, redis_server, router_bin, tools_call,
    Conn, Frontend, Proc,
};
use mcp_router_testkit::redis_topology::command_count;
use serde_json::json;
use std::time::{Duration, Instant};

fn replica(name: &str, redis_port: u16, backends: &[&Proc], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec![
        "--store".into(),
        format!("redis://127.0.0.1:{redis_port}"),
        // the reaper's claims are background rounds, not requests': held off so that
        // the counts below are the requests' alone
        "--reap-claim-interval".into(),
        "1h".into(),
    ];
    for (i, b) in backends.iter().enumerate() {
        args.push("--backend".into());
        args.push(format!("b{i}=http://{}", b.addr));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::router(router_bin(), name, &refs);
    assert!(p.wait_count("session store ready", 1, Duration::from_secs(10)));
    if !extra.contains(&"--store-cache-size") {
        assert!(
            p.wait_count("record cache on", caches(), Duration::from_secs(10)),
            "{:?}",
            p.logs()
        );
    }
    p
}

/// Record caches per router process: one per glommio executor (one per CPU here),
/// else one.
fn caches() -> usize {
    if frontend() == Frontend::Glommio {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    }
}

/// Script runs Redis served: each lookup that reads Redis is one (`INFO commandstats`
/// counts the commands a script runs too, so those are not added).
fn lookups(redis: &str) -> u64 {
    ["evalsha", "eval"]
        .iter()
        .map(|c| command_count(redis, c))
        .sum()
}

fn key(sid: &str) -> String {
    format!("mcp-router:session:{sid}")
}

/// (a) A live session's requests cost Redis nothing, from the first one on.
fn a_live_session_costs_no_redis_round_trip() {
    let rp = free_port();
    let redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    let a = replica("router-a", rp, &[&b0], &[]);
    let mut c = a.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    // the replica that created the record caches it when Redis reports the creation
    // (its own invalidation message), so not even the first request reads it
    std::thread::sleep(Duration::from_millis(50));
    let before = lookups(&redis.addr);
    for i in 0..=100 {
        assert_eq!(tools_call(&mut c, &sid, i).status, 200);
    }
    let spent = lookups(&redis.addr) - before;
    eprintln!(
        "{:?}: Redis lookups for 101 requests of a live session: {spent}",
        frontend()
    );
    assert_eq!(spent, 0, "a cached session's requests cost no round trip");
    // and the same router with the cache off reads Redis each time
    drop(c);
    let b = replica("router-b", rp, &[&b0], &["--store-cache-size", "0"]);
    let mut c = b.conn();
    assert_eq!(tools_call(&mut c, &sid, 0).status, 200);
    let before = lookups(&redis.addr);
    for i in 1..=20 {
        assert_eq!(tools_call(&mut c, &sid, i).status, 200);
    }
    assert_eq!(lookups(&redis.addr) - before, 20);
}

/// (b) A session B has cached is 404 on B at its very next request once it ended
/// anywhere: a `DELETE` through A, a `DEL` in Redis, or expiry.
fn a_session_ended_anywhere_is_404_on_a_replica_that_cached_it() {
    let rp = free_port();
    let redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    let a = replica("router-a", rp, &[&b0], &[]);
    let b = replica("router-b", rp, &[&b0], &[]);
    let mut cb = b.conn();
    for round in 0..20u64 {
        let (_, sid) = initialize(&mut a.conn(), json!(round));
        // B reads it once, then serves it from its cache
        for i in 0..3 {
            assert_eq!(tools_call(&mut cb, &sid, i).status, 200);
        }
        let before = lookups(&redis.addr);
        assert_eq!(tools_call(&mut cb, &sid, 3).status, 200);
        assert_eq!(
            lookups(&redis.addr),
            before,
            "round {round}: B had it cached"
        );
        if round % 2 == 0 {
            let d = a
                .conn()
                .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
            assert_eq!(d.status, 200);
        } else {
            assert_eq!(redis_cmd(&redis.addr, &["DEL", &key(&sid)]), ":1");
        }
        // the invalidation message's delivery: B reads it on a connection of its own,
        // beside this request's (well under a millisecond on an idle machine; the
        // suite runs many routers at once on two cores)
        std::thread::sleep(Duration::from_millis(50));
        let before = lookups(&redis.addr);
        let r = tools_call(&mut cb, &sid, 4);
        assert_eq!(r.status, 404, "round {round}: {}", r.text());
        // the router's own 404 (not the backend's, which a DELETE also ended), after
        // reading Redis: the cached copy was gone
        assert_eq!(r.json()["error"]["code"], -32001, "round {round}");
        assert_eq!(lookups(&redis.addr) - before, 1, "round {round}");
    }
    drop(cb);
    // expiry: a 2 s TTL, B caches the session and goes quiet; Redis expires the key
    let b = replica("router-c", rp, &[&b0], &["--session-ttl", "2s"]);
    let (_, sid) = initialize(&mut b.conn(), json!("e"));
    assert_eq!(tools_call(&mut b.conn(), &sid, 0).status, 200);
    assert_eq!(tools_call(&mut b.conn(), &sid, 1).status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_cmd(&redis.addr, &["EXISTS", &key(&sid)]) != ":0" {
        assert!(Instant::now() < deadline, "Redis did not expire the key");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(50));
    let r = tools_call(&mut b.conn(), &sid, 2);
    assert_eq!(r.status, 404, "expired in Redis: {}", r.text());
}

/// (c) The cache's connection to Redis is lost (killed, or Redis restarted): the cache
/// is emptied, lookups read Redis, and a session ended meanwhile is never routed.
fn a_lost_redis_connection_empties_the_cache_and_lookups_read_redis() {
    let rp = free_port();
    let mut redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    let a = replica("router-a", rp, &[&b0], &["--store-timeout", "300ms"]);
    let b = replica("router-b", rp, &[&b0], &["--store-timeout", "300ms"]);
    let (_, sid) = initialize(&mut a.conn(), json!(1));
    // one connection: on glommio each executor has its own cache, and a connection
    // stays on the executor that accepted it
    let mut cb = b.conn();
    for i in 0..3 {
        assert_eq!(tools_call(&mut cb, &sid, i).status, 200);
    }
    // Redis hangs (SIGSTOP): B answers from its cache until its probe of the
    // tracking connection times out (probe every 1 s, store timeout 300 ms; the bound
    // below leaves room for a loaded machine), then
    // 503: what a replica cut off from Redis may serve stale is bounded by that
    let t = Instant::now();
    redis.signal("STOP");
    let first = tools_call(&mut cb, &sid, 5).status;
    assert_eq!(first, 200);
    loop {
        let st = tools_call(&mut b.conn(), &sid, 6).status;
        if st == 503 {
            break;
        }
        assert_eq!(st, 200);
        assert!(
            t.elapsed() < Duration::from_millis(4000),
            "B still answers from its cache after {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{:?}: B answered 503 {:?} after Redis hung",
        frontend(),
        t.elapsed()
    );
    redis.signal("CONT");
    call_until_ok(&b, &sid);
    // every client connection killed; the record deleted before B is back
    redis_cmd(&redis.addr, &["CLIENT", "KILL", "TYPE", "normal"]);
    assert_eq!(redis_cmd(&redis.addr, &["DEL", &key(&sid)]), ":1");
    // B reads the end of its tracking connection (as it would an invalidation)
    std::thread::sleep(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = tools_call(&mut b.conn(), &sid, 9).status;
        if st == 404 {
            break;
        }
        assert_eq!(
            st, 503,
            "a session deleted while B was cut off is never routed"
        );
        assert!(Instant::now() < deadline, "B still answers 503");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        b.wait_count("record cache on", 2 * caches(), Duration::from_secs(10)),
        "the cache comes back with its tracking: {:?}",
        b.logs()
    );
    // Redis restarted (empty): a session B had cached is gone with it
    let sid = init_retrying(&a);
    for _ in 0..3 {
        call_until_ok(&b, &sid);
    }
    redis.kill();
    let _redis = redis_server(rp);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = tools_call(&mut b.conn(), &sid, 9).status;
        if st == 404 {
            break;
        }
        assert_eq!(st, 503, "a session lost with Redis is never routed");
        assert!(Instant::now() < deadline, "B still answers 503");
        std::thread::sleep(Duration::from_millis(100));
    }
    // and the cache works again: a new session is served from memory
    let sid = init_retrying(&a);
    assert!(b.wait_count("record cache on", 3 * caches(), Duration::from_secs(10)));
    call_until_ok(&b, &sid);
    let mut c = b.conn();
    call_until_ok_on(&mut c, &sid);
    let before = lookups(&_redis.addr);
    for i in 1..=10 {
        assert_eq!(tools_call(&mut c, &sid, i).status, 200);
    }
    let spent = lookups(&_redis.addr) - before;
    assert_eq!(spent, 0);
}

/// A request of `sid` through `r` that succeeds, retrying while the store reconnects
/// (glommio: each executor reconnects on its own, 503 until it has).
fn call_until_ok(r: &Proc, sid: &str) {
    call_until_ok_on(&mut r.conn(), sid)
}

fn call_until_ok_on(c: &mut Conn, sid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = tools_call(c, sid, 0).status;
        if st == 200 {
            return;
        }
        assert_eq!(st, 503);
        assert!(Instant::now() < deadline, "the session is not served again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A new session through `r`, retrying while its store reconnects (503).
fn init_retrying(r: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = post_json(
            &mut r.conn(),
            "/mcp",
            None,
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}),
        );
        if resp.status == 200 {
            return resp.header("mcp-session-id").unwrap().to_string();
        }
        assert_eq!(resp.status, 503, "{}", resp.text());
        assert!(Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (d) A session kept busy through one replica from its cache stays alive past several
/// TTLs, and its TTL is slid about once per fraction of it (3 s × 0.1 = 0.3 s), not
/// once per request.
fn a_busy_cached_session_stays_alive_with_one_slide_per_fraction_of_its_ttl() {
    let rp = free_port();
    let redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    let b = replica(
        "router-b",
        rp,
        &[&b0],
        &["--session-ttl", "3s", "--store-slide-fraction", "0.1"],
    );
    let mut c = b.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    assert_eq!(tools_call(&mut c, &sid, 0).status, 200);
    let before = lookups(&redis.addr);
    // the slides of a cached record are plain `EXPIRE ... GT` (a miss's read runs the
    // record script, whose `EXPIRE` counts too)
    let expires = command_count(&redis.addr, "expire");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(10) {
        let r = tools_call(&mut c, &sid, n);
        assert_eq!(r.status, 200, "after {:?}: {}", start.elapsed(), r.text());
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let spent = lookups(&redis.addr) - before;
    let slides = command_count(&redis.addr, "expire") - expires;
    let ttl: i64 = redis_cmd(&redis.addr, &["PTTL", &key(&sid)])[1..]
        .parse()
        .unwrap();
    eprintln!(
        "{:?}: {n} requests in 10 s, {spent} record-script runs, {slides} EXPIREs, PTTL {ttl} ms",
        frontend()
    );
    assert!(ttl > 1000, "the record's TTL was slid: {ttl} ms left");
    // at most one slide per 0.3 s: about 33 in 10 s whatever the request rate (a
    // loaded machine sends them later, not more), and few reads
    assert!(n > 60, "{n}");
    assert!(
        (5..=38).contains(&slides),
        "{slides} slides for {n} requests"
    );
    // (a read follows each time the cache was switched off: a probe of its
    // tracking connection that timed out on a loaded machine does that)
    assert!(spent * 10 <= n, "{spent} reads for {n} requests");
}

mcp_router_testkit::behaviour_suite!(
    a_live_session_costs_no_redis_round_trip,
    a_session_ended_anywhere_is_404_on_a_replica_that_cached_it,
    a_lost_redis_connection_empties_the_cache_and_lookups_read_redis,
    a_busy_cached_session_stays_alive_with_one_slide_per_fraction_of_its_ttl,
);
