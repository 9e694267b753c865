//! Shared session store on Redis: two router replicas (of the frontend under test, and
//! one tokio + one glommio), real backends and a real `redis-server` started by each
//! test on a free port.

use mcp_router_testkit::harness::{
    answered_by, free_port, initialize, open_session_stream, post_json, redis_cmd, redis_server,
    redis_tls_restart, redis_tls_server, router_bin, rss_kib, tools_call, warm, Conn, Frontend,
    Proc,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn replica(name: &str, redis_port: u16, backends: &[&Proc], extra: &[&str]) -> Proc {
    replica_bin(router_bin(), name, redis_port, backends, extra)
}

fn replica_bin(bin: &str, name: &str, redis_port: u16, backends: &[&Proc], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["--store".into(), format!("redis://127.0.0.1:{redis_port}")];
    for (i, b) in backends.iter().enumerate() {
        args.push("--backend".into());
        args.push(format!("b{i}=http://{}", b.addr));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::router(bin, name, &refs)
}

/// Keys in Redis but the per-client token buckets (each lingers, by its own TTL, until
/// the client's bucket would be full again), as `:N`: session records and the live
/// sets of the session caps (a set with no member is no key).
fn keys_but_buckets(addr: &str) -> String {
    redis_cmd(
        addr,
        &[
            "EVAL",
            "local n = 0 for _, k in ipairs(redis.call('KEYS', '*')) do if not string.find(k, ' bucket ', 1, true) then n = n + 1 end end return n",
            "0",
        ],
    )
}

fn a_session_started_on_one_replica_continues_on_the_other() {
    let rp = free_port();
    let redis = redis_server(rp);
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let a = replica("router-a", rp, &[&b0, &b1], &[]);
    let b = replica("router-b", rp, &[&b0, &b1], &[]);
    assert!(a.wait_count("session store ready", 1, Duration::from_secs(5)));
    for round in 0..4 {
        let (resp, sid) = initialize(&mut a.conn(), json!(round));
        let home = answered_by(&resp);
        // the record: named backend, era, creation time; never a URL
        let v = redis_cmd(&redis.addr, &["GET", &format!("mcp-router:session:{sid}")]);
        assert!(
            v.starts_with("2|s|") && v.ends_with(&format!("|{home}")),
            "{v}"
        );
        assert!(!v.contains("127.0.0.1"), "{v}");
        // POST through B
        for i in 0..3 {
            let r = tools_call(&mut b.conn(), &sid, i);
            assert_eq!(r.status, 200);
            assert_eq!(answered_by(&r), home);
        }
        // the GET stream through B
        let (mut g, head) = open_session_stream(&b.addr, &sid);
        assert_eq!(head.status, 200);
        assert_eq!(g.next_json_event()["params"]["backend"], home.as_str());
        drop(g);
        // DELETE through B ends it for A
        let d = b
            .conn()
            .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
        assert_eq!(d.status, 200);
        let r = tools_call(&mut a.conn(), &sid, 9);
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"]["code"], -32001);
    }
    // a legacy SSE session opened on A takes its message POSTs through B
    legacy_session_crosses(&a, &b, &redis);
}

/// A legacy SSE session whose stream is on `stream_on` takes its message POSTs through
/// `posts_through`; its record ends with the stream.
fn legacy_session_crosses(stream_on: &Proc, posts_through: &Proc, redis: &Proc) {
    let mut stream = stream_on.conn();
    stream.send("GET", "/sse", &[("Accept", "text/event-stream")], "");
    assert_eq!(stream.read_head().status, 200);
    let (event, endpoint) = stream.next_event().expect("endpoint");
    assert_eq!(event, "endpoint");
    for i in 0..3 {
        let r = post_json(
            &mut posts_through.conn(),
            &endpoint,
            None,
            &json!({"jsonrpc":"2.0","id":i,"method":"tools/list"}),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(stream.next_json_event()["id"], i);
    }
    drop(stream);
    assert!(stream_on.wait_count("cause=\"stream_closed\"", 1, Duration::from_secs(5)));
    assert_eq!(keys_but_buckets(&redis.addr), ":0");
}

fn killing_a_replica_mid_traffic_fails_no_request_that_goes_on_through_the_other() {
    let rp = free_port();
    let _redis = redis_server(rp);
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let mut a = replica("router-a", rp, &[&b0, &b1], &[]);
    let b = replica("router-b", rp, &[&b0, &b1], &[]);
    let sessions: Vec<(String, String)> = (0..10)
        .map(|i| {
            let (r, sid) = initialize(&mut a.conn(), json!(i));
            (sid, answered_by(&r))
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|(sid, home)| {
            let addr = b.addr.clone();
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(&addr);
                let mut failures = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = tools_call(&mut c, &sid, i);
                    if r.status != 200 || answered_by(&r) != home {
                        failures.push((r.status, r.text()));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    a.kill();
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<_> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let n = done.load(Ordering::Relaxed);
    assert!(n > 100, "only {n} requests ran");
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

fn redis_down_means_503_never_404_and_recovery_needs_no_restart() {
    let rp = free_port();
    let mut redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    // the record cache off: every request asks Redis (with the cache, a hang is
    // noticed by the cache's probe instead: tests/redis_cache.rs)
    let flags = ["--store-timeout", "300ms", "--store-cache-size", "0"];
    let mut a = replica("router-a", rp, &[&b0], &flags);
    let mut b = replica("router-b", rp, &[&b0], &flags);
    let (_, sid) = initialize(&mut a.conn(), json!(1));
    assert_eq!(tools_call(&mut b.conn(), &sid, 1).status, 200);

    // Redis hangs (stopped, not gone): answers come within the store timeout
    redis.signal("STOP");
    let t = Instant::now();
    let r = tools_call(&mut b.conn(), &sid, 2);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "hung for {:?}",
        t.elapsed()
    );
    assert_eq!(r.json()["error"]["code"], -32000);
    assert_eq!(r.json()["id"], 2);
    redis.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tools_call(&mut b.conn(), &sid, 3).status != 200 {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Redis gone
    redis.kill();
    for (i, r) in [&a, &b].into_iter().enumerate() {
        let resp = tools_call(&mut r.conn(), &sid, 10 + i as u64);
        assert_eq!(resp.status, 503, "{}", resp.text());
        let init = post_json(
            &mut r.conn(),
            "/mcp",
            None,
            &json!({"jsonrpc":"2.0","id":5,"method":"initialize","params":{}}),
        );
        assert_eq!(
            init.status,
            503,
            "a session that cannot be recorded is not handed out: {}",
            init.text()
        );
        assert_eq!(init.json()["id"], 5);
    }
    assert!(
        a.wait_count("session store not ready", 1, Duration::from_secs(5)),
        "{:?}",
        a.logs()
    );
    assert!(
        a.wait_exit(Duration::from_millis(100)).is_none()
            && b.wait_exit(Duration::from_millis(100)).is_none(),
        "a router died"
    );

    // Redis back (empty: no persistence): new sessions work through both replicas
    let _redis = redis_server(rp);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = post_json(
            &mut a.conn(),
            "/mcp",
            None,
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}),
        );
        if r.status == 200 {
            // each replica reconnects on its own, within its backoff (at most 2 s)
            let sid = r.header("mcp-session-id").unwrap().to_string();
            while tools_call(&mut b.conn(), &sid, 1).status != 200 {
                assert!(Instant::now() < deadline, "replica b did not recover");
                std::thread::sleep(Duration::from_millis(200));
            }
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after Redis restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The old session's record died with that Redis: 404, so the client re-initializes.
    // Each connection of a glommio replica lands on one of its executors, and each
    // executor reconnects to Redis on its own (within its 2 s backoff): until then that
    // executor still answers 503, never anything else.
    loop {
        let st = tools_call(&mut b.conn(), &sid, 20).status;
        if st == 404 {
            break;
        }
        assert_eq!(
            st, 503,
            "the lost session must get 404 (503 while reconnecting)"
        );
        assert!(Instant::now() < deadline, "replica b still answers 503");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn redis_unreachable_at_start_then_up() {
    let rp = free_port();
    let b0 = Proc::fake_backend("b0");
    let a = replica("router-a", rp, &[&b0], &["--store-timeout", "200ms"]);
    assert!(
        a.wait_count("session store not ready", 1, Duration::from_secs(5)),
        "{:?}",
        a.logs()
    );
    let r = post_json(
        &mut a.conn(),
        "/mcp",
        Some("s1"),
        &json!({"jsonrpc":"2.0","id":"q","method":"ping"}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["id"], "q");
    let _redis = redis_server(rp);
    assert!(
        a.wait_count("session store ready", 1, Duration::from_secs(15)),
        "{:?}",
        a.logs()
    );
    let (_, sid) = initialize(&mut a.conn(), json!(1));
    assert_eq!(tools_call(&mut a.conn(), &sid, 1).status, 200);
}

fn a_killed_backend_ends_its_sessions_on_every_replica() {
    let rp = free_port();
    let _redis = redis_server(rp);
    let mut b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let a = replica("router-a", rp, &[&b0, &b1], &[]);
    let b = replica("router-b", rp, &[&b0, &b1], &[]);
    let sessions: Vec<(String, String)> = (0..8)
        .map(|i| {
            let r = if i % 2 == 0 { &a } else { &b };
            let (resp, sid) = initialize(&mut r.conn(), json!(i));
            (sid, answered_by(&resp))
        })
        .collect();
    assert!(sessions.iter().any(|(_, h)| h == "b0"));
    b0.kill();
    for (i, (sid, home)) in sessions.iter().enumerate() {
        let r = if i % 2 == 0 { &b } else { &a };
        let resp = tools_call(&mut r.conn(), sid, i as u64);
        if home == "b0" {
            assert_eq!(resp.status, 404, "{}", resp.text());
            // dropped from the shared store: the other replica answers 404 at once
            let other = if i % 2 == 0 { &a } else { &b };
            assert_eq!(tools_call(&mut other.conn(), sid, 1).status, 404);
        } else {
            assert_eq!(resp.status, 200);
        }
    }
    for r in [&a, &b] {
        for i in 0..4 {
            let (resp, _) = initialize(&mut r.conn(), json!(i));
            assert_eq!(answered_by(&resp), "b1");
        }
    }
}

fn churn_across_replicas_leaves_no_records_and_flat_memory() {
    let rp = free_port();
    let redis = redis_server(rp);
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    // one test client opens thousands of sessions a second from one address: the
    // per-client rate limit (which exists to stop exactly that) is off here
    let quota_off = ["--client-session-rate", "0"];
    let a = replica("router-a", rp, &[&b0, &b1], &quota_off);
    let b = replica("router-b", rp, &[&b0, &b1], &quota_off);
    warm(&a.addr);
    warm(&b.addr);
    let base = keys_but_buckets(&redis.addr);
    let lifecycles = |n: usize| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (aa, bb) = (a.addr.clone(), b.addr.clone());
                std::thread::spawn(move || {
                    let (mut ca, mut cb) = (Conn::open(&aa), Conn::open(&bb));
                    for i in 0..n / 8 {
                        // initialize on one replica, DELETE on the other
                        let (first, second) = if (i + t) % 2 == 0 {
                            (&mut ca, &mut cb)
                        } else {
                            (&mut cb, &mut ca)
                        };
                        let (_, sid) = initialize(first, json!(i));
                        let d = second.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
                        assert_eq!(d.status, 200);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    lifecycles(4000); // warm up: pools, allocator, buffers
    let (ra0, rb0) = (rss_kib(a.pid()), rss_kib(b.pid()));
    let t = Instant::now();
    lifecycles(20_000);
    let secs = t.elapsed().as_secs_f64();
    let (ra1, rb1) = (rss_kib(a.pid()), rss_kib(b.pid()));
    eprintln!(
        "20000 lifecycles in {secs:.1}s; RSS router-a {ra0}->{ra1} KiB, router-b {rb0}->{rb1} KiB; DBSIZE {}",
        keys_but_buckets(&redis.addr)
    );
    assert_eq!(keys_but_buckets(&redis.addr), base);
    assert_eq!(base, ":0");
    for (before, after) in [(ra0, ra1), (rb0, rb1)] {
        assert!(
            after < before + 2048,
            "router RSS grew {before} -> {after} KiB"
        );
    }
}

/// A TCP load balancer that sends each new connection to the next replica in turn.
fn round_robin_balancer(replicas: Vec<String>) -> (String, Arc<Vec<AtomicUsize>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new(replicas.iter().map(|_| AtomicUsize::new(0)).collect());
    let c2 = counts.clone();
    std::thread::spawn(move || {
        for (n, client) in l.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let i = n % replicas.len();
            c2[i].fetch_add(1, Ordering::Relaxed);
            let Ok(up) = std::net::TcpStream::connect(&replicas[i]) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, counts)
}

fn python_sdk_sessions_survive_requests_alternating_between_replicas() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/interop");
    assert!(
        dir.join(".venv/bin/python").exists(),
        "run `bash .ci/install-interop.sh` first"
    );
    let rp = free_port();
    let _redis = redis_server(rp);
    let everything = |name: &str| {
        let port = free_port();
        let mut cmd = std::process::Command::new(dir.join("start-everything.sh"));
        cmd.args(["streamable", &port.to_string()])
            .current_dir(&dir);
        Proc::start(name, cmd, |l| {
            (l.contains("listening on port") || l.contains("running on port"))
                .then(|| format!("127.0.0.1:{}", l.trim().rsplit(' ').next().unwrap_or("")))
        })
    };
    let (e0, e1) = (everything("everything-0"), everything("everything-1"));
    let a = replica("router-a", rp, &[&e0, &e1], &[]);
    let b = replica("router-b", rp, &[&e0, &e1], &[]);
    let (lb, counts) = round_robin_balancer(vec![a.addr.clone(), b.addr.clone()]);
    for _ in 0..3 {
        let out = std::process::Command::new(dir.join(".venv/bin/python"))
            .args([
                "py_client.py",
                &format!("http://{lb}"),
                "streamable",
                "--rounds",
                "4",
            ])
            .current_dir(&dir)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(line.lines().last().unwrap_or("")).unwrap_or_default();
        assert_eq!(
            v["ok"],
            true,
            "{line} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ca, cb) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    assert!(ca >= 5 && cb >= 5, "connections per replica: {ca} / {cb}");
    // sessions began on one replica and were DELETEd through either
    let started = a.count_logs("session started") + b.count_logs("session started");
    let ended = a.count_logs("cause=\"delete\"") + b.count_logs("cause=\"delete\"");
    assert_eq!(
        (started, ended),
        (3, 3),
        "a: {:?}\nb: {:?}",
        a.logs(),
        b.logs()
    );
}

fn calls(redis: &str, cmd: &str) -> u64 {
    let info = redis_cmd(redis, &["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn one_redis_round_trip_per_request_of_an_established_session() {
    let rp = free_port();
    let redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    // the reap claims (a background round every --reap-claim-interval, not a
    // request's) are held off so that the counts below are the requests' alone
    // the record cache off (--store-cache-size 0): this is the cost of a lookup that
    // reads Redis; tests/redis_cache.rs shows the cache's
    let a = replica(
        "router-a",
        rp,
        &[&b0],
        &["--reap-claim-interval", "1h", "--store-cache-size", "0"],
    );
    let mut c = a.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    for i in 0..100 {
        assert_eq!(tools_call(&mut c, &sid, i).status, 200);
    }
    let d = c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    assert_eq!(d.status, 200);
    let names = [
        "set", "evalsha", "eval", "getex", "getdel", "get", "expire", "del",
    ];
    let counts: Vec<u64> = names.iter().map(|c| calls(&redis.addr, c)).collect();
    eprintln!("redis commands for initialize + 100 requests + DELETE: {names:?} = {counts:?}");
    // initialize: one EVALSHA of the admission script (caps and quotas), one of the
    // insert script (SET NX, and the live sets); each request: one EVALSHA of the
    // record script (GET, verify, EXPIRE); DELETE: that, then one EVALSHA of it
    // deleting (GET, verify, DEL, and out of the live sets). On a fresh Redis the first
    // EVALSHA of each of the three scripts gets NOSCRIPT and is followed by one EVAL,
    // which loads it. The SET, GETs, EXPIREs and DEL run inside the scripts.
    assert_eq!(counts, [1, 104, 3, 0, 0, 102, 101, 1]);
}

/// The same with `--failover reinitialize` (the session key ring seals the stored
/// `initialize`): still one round trip per request, and the body is never read on the
/// request path (no `HMGET`, the load a failover does): each request's record script
/// also slides the failover hash (a second `EXPIRE`) and looks for a new upstream id
/// (one `HGET`), inside the same script.
fn failover_on_redis_keeps_one_round_trip_and_never_reads_the_body_per_request() {
    let rp = free_port();
    let redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    let dir = std::env::temp_dir().join(format!("mcp-rt-fo-{}-{rp}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, format!("{}\n", "7e".repeat(32))).unwrap();
    let a = replica(
        "router-a",
        rp,
        &[&b0],
        &[
            "--reap-claim-interval",
            "1h",
            "--store-cache-size",
            "0",
            "--failover",
            "reinitialize",
            "--session-keys",
            keys.to_str().unwrap(),
        ],
    );
    let mut c = a.conn();
    let (_, sid) = initialize(&mut c, json!(1));
    for i in 0..100 {
        assert_eq!(tools_call(&mut c, &sid, i).status, 200);
    }
    let d = c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    assert_eq!(d.status, 200);
    let names = [
        "set", "evalsha", "eval", "get", "expire", "del", "hget", "hmget", "hset",
    ];
    let counts: Vec<u64> = names.iter().map(|c| calls(&redis.addr, c)).collect();
    eprintln!(
        "redis commands for initialize + 100 requests + DELETE, failover on: {names:?} = {counts:?}"
    );
    // as without failover: 104 EVALSHA (+3 EVAL loading the scripts), one per request;
    // 101 slides (100 requests, the DELETE's lookup) each EXPIRE the record and the
    // hash and HGET the hash once, plus the insert's EXPIRE of the new hash; the
    // DELETE deletes record and hash, the insert clears the hash's key first. The one
    // HMGET is the admission script's read of the client's token bucket (a body read
    // per request would be 101 more); HSET: that bucket, the expiry index's copy and
    // the hash, at initialize
    assert_eq!(counts, [1, 104, 3, 102, 203, 3, 101, 1, 3]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A session id is the client's to choose, so it can name any key under the prefix.
/// The router answers for a key it did not write as for a session it has no record
/// of: "The server MAY terminate the session at any time, after which it MUST respond
/// to requests containing that session ID with HTTP 404 Not Found." And it leaves the
/// key as it was: not deleted, not overwritten, no TTL put on it.
fn a_key_the_router_did_not_write_is_an_unknown_session_and_left_alone() {
    let rp = free_port();
    let redis = redis_server(rp);
    let r = |args: &[&str]| redis_cmd(&redis.addr, args);
    let b0 = Proc::fake_backend("b0");
    let a = replica("router-a", rp, &[&b0], &[]);
    assert!(a.wait_count("session store ready", 1, Duration::from_secs(5)));
    let p = "mcp-router:session:";
    let key = |id: &str| format!("{p}{id}");
    assert_eq!(r(&["SET", &key("foreign"), "hello"]), "+OK");
    // looks like a record, but the creation time is not a number
    assert_eq!(r(&["SET", &key("lookalike"), "1|s|soon|b0"]), "+OK");
    assert_eq!(r(&["HSET", &key("hash"), "f", "v"]), ":1");
    assert_eq!(r(&["RPUSH", &key("list"), "x"]), ":1");
    let values = |id: &str| match id {
        "hash" => r(&["HGET", &key(id), "f"]),
        "list" => r(&["LINDEX", &key(id), "0"]),
        _ => r(&["GET", &key(id)]),
    };
    let before: Vec<String> = ["foreign", "lookalike", "hash", "list"]
        .iter()
        .map(|id| values(id))
        .collect();
    assert_eq!(before, ["hello", "1|s|soon|b0", "v", "x"]);
    for id in ["foreign", "lookalike", "hash", "list"] {
        for i in 0..3 {
            let resp = tools_call(&mut a.conn(), id, i);
            assert_eq!(resp.status, 404, "{id}: {}", resp.text());
            assert_eq!(resp.json()["error"]["code"], -32001, "{id}");
            assert_eq!(resp.json()["id"], i, "{id}");
            let get = a.conn().request(
                "GET",
                "/mcp",
                &[("Mcp-Session-Id", id), ("Accept", "text/event-stream")],
                "",
            );
            assert_eq!(get.status, 404, "{id}: {}", get.text());
            let del = a
                .conn()
                .request("DELETE", "/mcp", &[("Mcp-Session-Id", id)], "");
            assert_eq!(del.status, 404, "{id}: {}", del.text());
        }
        // still there, as it was, and still without a TTL
        assert_eq!(r(&["EXISTS", &key(id)]), ":1", "{id}");
        assert_eq!(r(&["TTL", &key(id)]), ":-1", "{id}");
    }
    let after: Vec<String> = ["foreign", "lookalike", "hash", "list"]
        .iter()
        .map(|id| values(id))
        .collect();
    assert_eq!(after, before);
    // logged once per process, never with the key or the value
    assert!(
        a.wait_count("not an mcp-router record", 1, Duration::from_secs(5)),
        "{:?}",
        a.logs()
    );
    assert_eq!(
        a.count_logs("not an mcp-router record"),
        1,
        "{:?}",
        a.logs()
    );
    assert_eq!(a.count_logs("hello"), 0, "{:?}", a.logs());

    // A well-formed record naming a backend this replica does not have (another
    // replica's configuration) is a session of ours: ended, and its record deleted.
    assert_eq!(
        r(&["SET", &key("elsewhere"), "1|s|0|gone", "EX", "600"]),
        "+OK"
    );
    let resp = tools_call(&mut a.conn(), "elsewhere", 1);
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], -32001);
    assert!(a.wait_count("cause=\"unknown_backend\"", 1, Duration::from_secs(5)));
    assert_eq!(r(&["EXISTS", &key("elsewhere")]), ":0");

    // A session of ours: its requests slide its record's TTL, its DELETE removes it.
    let (_, sid) = initialize(&mut a.conn(), json!(1));
    assert!(r(&["GET", &key(&sid)]).starts_with("2|s|"));
    assert_eq!(tools_call(&mut a.conn(), &sid, 1).status, 200);
    let ttl: i64 = r(&["TTL", &key(&sid)])[1..].parse().unwrap();
    assert!(ttl > 0, "{ttl}");
    let d = a
        .conn()
        .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    assert_eq!(d.status, 200);
    assert_eq!(r(&["EXISTS", &key(&sid)]), ":0");
    assert_eq!(tools_call(&mut a.conn(), &sid, 2).status, 404);
    // the foreign keys are all that is left
    assert_eq!(keys_but_buckets(&redis.addr), ":4");
}

/// An empty key prefix would make the client's session id the whole key: any key of
/// the database. Refused at start (exit status 2, the field named), before Redis is
/// reached; so is a prefix with whitespace or control characters.
fn an_empty_or_blank_store_key_prefix_is_refused_at_start() {
    let rp = free_port();
    let store = format!("redis://127.0.0.1:{rp}");
    let run = |prefix_flag: Option<&str>, env: Option<&str>| {
        let mut cmd =
            std::process::Command::new(mcp_router_testkit::harness::bin_path(router_bin()));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "http://127.0.0.1:1",
            "--store",
            &store,
        ])
        .env_remove("MCP_ROUTER_STORE_KEY_PREFIX")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        if let Some(p) = prefix_flag {
            cmd.args(["--store-key-prefix", p]);
        }
        if let Some(p) = env {
            cmd.env("MCP_ROUTER_STORE_KEY_PREFIX", p);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("router with prefix {prefix_flag:?} / env {env:?} did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (status, err)
    };
    for bad in ["", " ", "a b:", "tab\t:", "nl\n:"] {
        let (st, err) = run(Some(bad), None);
        assert_eq!(st.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("store_key_prefix"), "{bad:?}: {err}");
    }
    let (st, err) = run(None, Some("a b:"));
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("store_key_prefix"), "{err}");
}

fn several_replicas_on_the_embedded_store_warn_at_start() {
    let b0 = Proc::fake_backend("b0");
    let backend = format!("http://{}", b0.addr);
    let r = Proc::router(
        router_bin(),
        "router",
        &["--backend", &backend, "--replicas-expected", "3"],
    );
    assert_eq!(r.count_logs("sessions will break"), 1, "{:?}", r.logs());
    let rp = free_port();
    let _redis = redis_server(rp);
    let shared = replica("router-redis", rp, &[&b0], &["--replicas-expected", "3"]);
    assert_eq!(
        shared.count_logs("sessions will break"),
        0,
        "{:?}",
        shared.logs()
    );
}

/// Mixed runtimes: a tokio replica and a glommio replica on one Redis serve the same
/// sessions. Each session starts on one, is used (POST, GET stream) and ended
/// (DELETE) through the other; a legacy SSE session crosses too; and a backend that
/// dies is seen by both.
#[test]
fn a_tokio_and_a_glommio_replica_on_one_redis_serve_the_same_sessions() {
    let rp = free_port();
    let redis = redis_server(rp);
    let (b0, mut b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let t = replica_bin(Frontend::Tokio.bin(), "router-tokio", rp, &[&b0, &b1], &[]);
    let g = replica_bin(
        Frontend::Glommio.bin(),
        "router-glommio",
        rp,
        &[&b0, &b1],
        &[],
    );
    for r in [&t, &g] {
        assert!(r.wait_count("session store ready", 1, Duration::from_secs(5)));
    }
    for round in 0..6u64 {
        let (first, other) = if round % 2 == 0 { (&t, &g) } else { (&g, &t) };
        let (resp, sid) = initialize(&mut first.conn(), json!(round));
        let home = answered_by(&resp);
        for i in 0..3 {
            let r = tools_call(&mut other.conn(), &sid, i);
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(answered_by(&r), home);
        }
        let (mut stream, head) = open_session_stream(&other.addr, &sid);
        assert_eq!(head.status, 200);
        assert_eq!(stream.next_json_event()["params"]["backend"], home.as_str());
        drop(stream);
        let d = other
            .conn()
            .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
        assert_eq!(d.status, 200);
        for r in [&t, &g] {
            let resp = tools_call(&mut r.conn(), &sid, 9);
            assert_eq!(resp.status, 404);
            assert_eq!(resp.json()["error"]["code"], -32001);
        }
    }
    // legacy SSE: the stream on glommio, its message POSTs through tokio
    legacy_session_crosses(&g, &t, &redis);
    // sessions on b1, started on either; b1 dies; whichever replica sees it first
    // ends the session, and the other answers 404 from the record's absence
    let mut on_b1 = Vec::new();
    for i in 0..8u64 {
        let r = if i % 2 == 0 { &t } else { &g };
        let (resp, sid) = initialize(&mut r.conn(), json!(100 + i));
        if answered_by(&resp) == "b1" {
            on_b1.push(sid);
        }
    }
    assert!(
        !on_b1.is_empty(),
        "least-sessions placement uses both backends"
    );
    b1.kill();
    for (i, sid) in on_b1.iter().enumerate() {
        let (first, other) = if i % 2 == 0 { (&t, &g) } else { (&g, &t) };
        assert_eq!(tools_call(&mut first.conn(), sid, 1).status, 404);
        assert_eq!(tools_call(&mut other.conn(), sid, 2).status, 404);
        let key = format!("mcp-router:session:{sid}");
        assert_eq!(redis_cmd(&redis.addr, &["EXISTS", &key]), ":0");
    }
}

/// `rediss://` to a redis-server with TLS on, its certificate signed by a CA made in
/// the test: with `--store-tls-ca` naming that CA, sessions are shared through it (both
/// replicas, record cache on over TLS too); without it the certificate does not verify
/// and a new session gets 503, never a session that skipped the store.
fn rediss_with_a_private_ca_shares_sessions_and_refuses_an_unverified_server() {
    let (tls_port, plain_port) = (free_port(), free_port());
    let dir =
        std::env::temp_dir().join(format!("mcp-router-tls-{}-{tls_port}", std::process::id()));
    let (redis, ca) = redis_tls_server(tls_port, plain_port, &dir);
    let b0 = Proc::fake_backend("b0");
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let start = |name: &str, extra: &[&str]| {
        let mut args = vec!["--store", &url, "--backend"];
        let b = format!("b0=http://{}", b0.addr);
        args.push(&b);
        args.extend_from_slice(extra);
        Proc::router(router_bin(), name, &args)
    };
    let a = start("router-a", &["--store-tls-ca", &ca]);
    let b = start("router-b", &["--store-tls-ca", &ca]);
    for r in [&a, &b] {
        assert!(
            r.wait_count("session store ready", 1, Duration::from_secs(10)),
            "{:?}",
            r.logs()
        );
        assert!(
            r.wait_count("record cache on", 1, Duration::from_secs(10)),
            "tracking over TLS: {:?}",
            r.logs()
        );
    }
    let (_, sid) = initialize(&mut a.conn(), json!(1));
    assert_eq!(
        redis_cmd(
            &redis.addr,
            &["EXISTS", &format!("mcp-router:session:{sid}")]
        ),
        ":1",
        "the record went over TLS"
    );
    for i in 0..5 {
        assert_eq!(tools_call(&mut b.conn(), &sid, i).status, 200);
    }
    // an initialize, whatever its answer
    let init = |r: &Proc, id: u64| {
        post_json(
            &mut r.conn(),
            "/mcp",
            None,
            &json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
                "protocolVersion":"2025-06-18","capabilities":{},
                "clientInfo":{"name":"t","version":"0"}}}),
        )
    };
    // the same server without the CA: its certificate is refused
    let c = start("router-c", &[]);
    std::thread::sleep(Duration::from_millis(500));
    let r = init(&c, 1);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(tools_call(&mut c.conn(), &sid, 9).status, 503);
    drop(c);
    // the TLS Redis restarted (empty, same ports and certificate): 503 while it is
    // down, never 404, then the replicas reconnect over TLS without a restart
    let mut redis = redis;
    redis.kill();
    // (B answers a session it had cached until its tracking connection's drop is
    // seen, which empties the cache)
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        match tools_call(&mut b.conn(), &sid, 10).status {
            503 => break,
            200 => assert!(Instant::now() < deadline, "B served from its cache for 4 s"),
            st => panic!("{st} while Redis is down"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _redis = redis_tls_restart(tls_port, plain_port, &dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    let sid = loop {
        let r = init(&a, 2);
        if r.status == 200 {
            break r
                .header("mcp-session-id")
                .expect("a session id")
                .to_string();
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "no reconnect over TLS in 10 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = tools_call(&mut b.conn(), &sid, 11).status;
        if st == 200 {
            break;
        }
        assert_eq!(st, 503, "never 404 for a live session");
        assert!(Instant::now() < deadline, "B did not reconnect over TLS");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

mcp_router_testkit::behaviour_suite!(
    rediss_with_a_private_ca_shares_sessions_and_refuses_an_unverified_server,
    a_session_started_on_one_replica_continues_on_the_other,
    killing_a_replica_mid_traffic_fails_no_request_that_goes_on_through_the_other,
    redis_down_means_503_never_404_and_recovery_needs_no_restart,
    redis_unreachable_at_start_then_up,
    a_killed_backend_ends_its_sessions_on_every_replica,
    churn_across_replicas_leaves_no_records_and_flat_memory,
    python_sdk_sessions_survive_requests_alternating_between_replicas,
    one_redis_round_trip_per_request_of_an_established_session,
    failover_on_redis_keeps_one_round_trip_and_never_reads_the_body_per_request,
    several_replicas_on_the_embedded_store_warn_at_start,
    a_key_the_router_did_not_write_is_an_unknown_session_and_left_alone,
    an_empty_or_blank_store_key_prefix_is_refused_at_start,
);
