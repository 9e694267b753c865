//! Operating the router: metrics, health and readiness, draining, DNS discovery and
//! SIGHUP reload, against real processes (and, for discovery, the library with a
//! scripted resolver).

use clap::Parser;
use mcp_router_frontend::{Cli, Resolve, Shared, Shutdown};
use mcp_router_testkit::harness::{
    free_port, http, initialize, open_session_stream, post_json, redis_server, router_bin, Conn,
    Proc,
};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn router(name: &str, args: &[String]) -> (Proc, String) {
    let mut all = vec!["--admin-listen".to_string(), "127.0.0.1:0".to_string()];
    all.extend(args.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let r = Proc::router(router_bin(), name, &refs);
    let admin = r
        .log_field("admin", Duration::from_secs(5))
        .expect("admin address logged");
    (r, admin)
}

fn backends(bs: &[&Proc]) -> Vec<String> {
    bs.iter()
        .enumerate()
        .flat_map(|(i, b)| ["--backend".to_string(), format!("b{i}=http://{}", b.addr)])
        .collect()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn call(c: &mut Conn, sid: &str) -> mcp_router_testkit::harness::Response {
    post_json(
        c,
        "/mcp",
        Some(sid),
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    )
}

fn metrics_move_as_a_scripted_run_goes() {
    let b0 = Proc::fake_backend("b0");
    let (r, admin) = router("router", &backends(&[&b0]));
    let (s, body) = http(&admin, "GET", "/metrics");
    assert_eq!(s, 200);
    assert_eq!(metric(&body, "mcp_router_sessions_active"), 0.0);
    // two sessions, five calls, one unknown session, one DELETE
    let (_, s1) = initialize(&mut r.conn(), json!(1));
    let (_, s2) = initialize(&mut r.conn(), json!(2));
    for _ in 0..5 {
        assert_eq!(call(&mut r.conn(), &s1).status, 200);
    }
    assert_eq!(call(&mut r.conn(), "nope").status, 404);
    assert_eq!(
        r.conn()
            .request("DELETE", "/mcp", &[("Mcp-Session-Id", &s2)], "")
            .status,
        200
    );
    let (_, m) = http(&admin, "GET", "/metrics");
    eprintln!("---- /metrics sample ----\n{m}");
    for (series, want) in [
        ("mcp_router_sessions_started_total{era=\"streamable\"}", 2.0),
        ("mcp_router_sessions_ended_total{cause=\"delete\"}", 1.0),
        ("mcp_router_sessions_active", 1.0),
        ("mcp_router_backend_sessions_active{backend=\"b0\"}", 1.0),
        (
            "mcp_router_requests_total{outcome=\"proxied\",status=\"200\"}",
            8.0,
        ),
        (
            "mcp_router_requests_total{outcome=\"rejected\",status=\"404\"}",
            1.0,
        ),
        (
            "mcp_router_rejected_total{reason=\"Session not found\"}",
            1.0,
        ),
        (
            "mcp_router_upstream_latency_seconds_count{backend=\"b0\"}",
            8.0,
        ),
        ("mcp_router_backend_up{backend=\"b0\"}", 1.0),
        ("mcp_router_backend_draining{backend=\"b0\"}", 0.0),
        (
            "mcp_router_store_operations_total{op=\"insert\",result=\"ok\"}",
            2.0,
        ),
        (
            "mcp_router_store_operations_total{op=\"get\",result=\"ok\"}",
            6.0,
        ),
        (
            "mcp_router_store_operations_total{op=\"get\",result=\"miss\"}",
            1.0,
        ),
        (
            "mcp_router_store_operations_total{op=\"delete\",result=\"ok\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(&m, series), want, "{series}");
    }
    assert_eq!(http(&admin, "GET", "/healthz").0, 200);
    assert_eq!(http(&admin, "GET", "/nope").0, 404);
    assert_eq!(http(&admin, "POST", "/metrics").0, 405);
}

fn readiness_flips_with_redis_and_with_the_backends() {
    let rp = free_port();
    let mut redis = redis_server(rp);
    let mut b0 = Proc::fake_backend("b0");
    let mut args = backends(&[&b0]);
    args.extend(
        [
            "--store",
            &format!("redis://127.0.0.1:{rp}"),
            "--store-timeout",
            "200ms",
            "--health-check-interval",
            "100ms",
        ]
        .map(String::from),
    );
    let (_r, admin) = router("router", &args);
    let wait = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, body) = http(&admin, "GET", "/readyz");
            if s == want {
                return body;
            }
            assert!(Instant::now() < deadline, "readyz stayed {s}: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait(200);
    redis.kill();
    assert!(wait(503).contains("session store"));
    let _redis = redis_server(rp);
    wait(200);
    b0.kill();
    assert!(wait(503).contains("no backend up"));
    assert_eq!(
        http(&admin, "GET", "/healthz").0,
        200,
        "alive though not ready"
    );
}

fn draining_through_the_admin_endpoint() {
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let (r, admin) = router("router", &backends(&[&b0, &b1]));
    let old: Vec<String> = (0..4)
        .map(|i| initialize(&mut r.conn(), json!(i)))
        .filter(|(resp, _)| resp.json()["result"]["backend"] == "b0")
        .map(|(_, sid)| sid)
        .collect();
    assert!(!old.is_empty());
    assert_eq!(http(&admin, "POST", "/admin/backends/b0/drain").0, 200);
    assert_eq!(http(&admin, "POST", "/admin/backends/zz/drain").0, 404);
    for i in 0..6 {
        let (resp, _) = initialize(&mut r.conn(), json!(i));
        assert_eq!(
            resp.json()["result"]["backend"],
            "b1",
            "a draining backend took a new session"
        );
    }
    for sid in &old {
        let resp = call(&mut r.conn(), sid);
        assert_eq!(resp.status, 200, "a draining backend's session must go on");
        assert_eq!(resp.json()["result"]["backend"], "b0");
    }
    let (_, m) = http(&admin, "GET", "/metrics");
    assert_eq!(
        metric(&m, "mcp_router_backend_draining{backend=\"b0\"}"),
        1.0
    );
    assert_eq!(http(&admin, "POST", "/admin/backends/b0/undrain").0, 200);
    let picks: std::collections::HashSet<String> = (0..4)
        .map(|i| {
            initialize(&mut r.conn(), json!(i)).0.json()["result"]["backend"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(picks.contains("b0"));
}

/// A resolver whose answers the test scripts.
#[derive(Clone)]
struct Scripted(Arc<Mutex<std::io::Result<Vec<SocketAddr>>>>);

impl Default for Scripted {
    fn default() -> Self {
        Scripted(Arc::new(Mutex::new(Ok(Vec::new()))))
    }
}

impl Scripted {
    fn set(&self, r: std::io::Result<Vec<SocketAddr>>) {
        *self.0.lock().unwrap() = r;
    }
}

impl Resolve for Scripted {
    fn resolve(&self, host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
        assert_eq!(host, "mcp-headless.test.svc");
        match &*self.0.lock().unwrap() {
            Ok(v) => Ok(v.clone()),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// Discovery is runtime-independent (it runs on a plain thread of the shared
/// frontend crate), so the library test drives it once, under the tokio frontend.
#[test]
fn dns_discovery_adds_and_removes_backends() {
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let a0: SocketAddr = b0.addr.parse().unwrap();
    let a1: SocketAddr = b1.addr.parse().unwrap();
    let resolver = Scripted::default();
    resolver.set(Ok(vec![a0]));
    let settings = Cli::try_parse_from([
        "mcp-router",
        "--discover",
        "mcp=http://mcp-headless.test.svc:8080",
    ])
    .unwrap()
    .settings()
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shared = Shared::with_resolver(&settings, Arc::new(resolver.clone())).unwrap();
    shared.discover_once();
    let fe = rt.block_on(async { mcp_router_tokio::frontend(shared.clone()).unwrap() });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = Shutdown::new();
    rt.spawn(mcp_router_tokio::serve(
        listener,
        fe,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    let init = |i: u64| {
        let (resp, sid) = initialize(&mut Conn::open(&addr), json!(i));
        (
            resp.json()["result"]["backend"]
                .as_str()
                .unwrap()
                .to_string(),
            sid,
        )
    };
    let on_b0: Vec<String> = (0..3)
        .map(init)
        .map(|(b, sid)| {
            assert_eq!(b, "b0");
            sid
        })
        .collect();
    let names = |sh: &Shared| -> Vec<String> {
        let mut v: Vec<String> = sh
            .router
            .status(std::time::Instant::now())
            .into_iter()
            .map(|m| m.backend.name.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&shared), [format!("mcp@{a0}")]);
    // a new address joins
    resolver.set(Ok(vec![a1, a0]));
    shared.discover_once();
    assert_eq!(names(&shared).len(), 2);
    let seen: std::collections::HashSet<String> = (10..14).map(|i| init(i).0).collect();
    assert!(seen.contains("b1"), "new member takes sessions: {seen:?}");
    // a failed resolution keeps the members
    resolver.set(Err(std::io::Error::other("SERVFAIL")));
    shared.discover_once();
    assert_eq!(names(&shared).len(), 2);
    // the first address disappears: its sessions end as if it had died
    resolver.set(Ok(vec![a1]));
    shared.discover_once();
    assert_eq!(names(&shared), [format!("mcp@{a1}")]);
    for sid in &on_b0 {
        let r = call(&mut Conn::open(&addr), sid);
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], -32001);
    }
    for i in 20..24 {
        assert_eq!(init(i).0, "b1");
    }
    shutdown.trigger();
}

fn sighup_reload_keeps_open_streams_and_applies_the_new_backends() {
    let (b0, b1) = (Proc::fake_backend("b0"), Proc::fake_backend("b1"));
    let dir = mcp_router_testkit::harness::test_dir("reload");
    let file = dir.join("router.toml");
    std::fs::write(
        &file,
        format!(
            "backends = [{{ name = \"b0\", url = \"http://{}\" }}]\n",
            b0.addr
        ),
    )
    .unwrap();
    let (r, admin) = router(
        "router",
        &["--config".to_string(), file.display().to_string()],
    );
    let (_, sid) = initialize(&mut r.conn(), json!(1));
    // an open SSE stream of that session
    let (mut g, head) = open_session_stream(&r.addr, &sid);
    assert_eq!(head.status, 200);
    let first = g.next_json_event()["params"]["n"].as_u64().unwrap();
    // add b1, drain b0, reload
    std::fs::write(
        &file,
        format!(
            "drain = [\"b0\"]\nbackends = [{{ name = \"b0\", url = \"http://{}\" }}, {{ name = \"b1\", url = \"http://{}\" }}]\n",
            b0.addr, b1.addr
        ),
    )
    .unwrap();
    r.signal("HUP");
    assert!(
        r.wait_count("configuration reloaded", 1, Duration::from_secs(5)),
        "{:?}",
        r.logs()
    );
    // the stream goes on, event after event
    for k in 1..=5 {
        let ev = g.next_json_event();
        assert_eq!(ev["params"]["n"].as_u64().unwrap(), first + k);
        assert_eq!(ev["params"]["backend"], "b0");
    }
    // the session goes on; new sessions go to b1
    assert_eq!(call(&mut r.conn(), &sid).status, 200);
    for i in 0..4 {
        assert_eq!(
            initialize(&mut r.conn(), json!(i)).0.json()["result"]["backend"],
            "b1"
        );
    }
    let (_, m) = http(&admin, "GET", "/metrics");
    assert_eq!(
        metric(&m, "mcp_router_backend_draining{backend=\"b0\"}"),
        1.0
    );
    // a broken file is refused; the router keeps serving with what it had
    std::fs::write(&file, "backends = [\"ftp://nope\"]\n").unwrap();
    r.signal("HUP");
    assert!(
        r.wait_count("reload refused", 1, Duration::from_secs(5)),
        "{:?}",
        r.logs()
    );
    assert_eq!(g.next_json_event()["params"]["backend"], "b0");
    assert_eq!(
        initialize(&mut r.conn(), json!(9)).0.json()["result"]["backend"],
        "b1"
    );
}

mcp_router_testkit::behaviour_suite!(
    metrics_move_as_a_scripted_run_goes,
    readiness_flips_with_redis_and_with_the_backends,
    draining_through_the_admin_endpoint,
    sighup_reload_keeps_open_streams_and_applies_the_new_backends,
);
