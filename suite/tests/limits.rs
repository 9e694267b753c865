//! What a client can hold or create, against the real binaries (issue 12): the send
//! timeout for clients that never read, the connection cap, the session cap (one
//! replica, and a fleet on Redis) and the per-client quotas. Each refusal is checked for
//! its status, `Retry-After`, JSON-RPC body and metric, and for refusing nothing else.

use mcp_router_testkit::harness::{
    free_port, initialize, post_json, redis_server, router_bin, Conn, Proc,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn router(backends: &[&Proc], extra: &[&str]) -> (Proc, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = vec!["--admin-listen".into(), admin.clone()];
    for (i, b) in backends.iter().enumerate() {
        args.push("--backend".into());
        args.push(format!("b{i}=http://{}", b.addr));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (Proc::router(router_bin(), "router", &refs), admin)
}

/// The value of `mcp_router_limited_total{limit="<limit>"}` on the admin listener.
fn limited(admin: &str, limit: &str) -> u64 {
    let r = Conn::open(admin).request("GET", "/metrics", &[], "");
    let want = format!("mcp_router_limited_total{{limit=\"{limit}\"}} ");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&want))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn init_body(id: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{}})
}

/// A refusal of `initialize`: `status`, `Retry-After` (at least 1 s), and a JSON-RPC
/// error echoing the request id.
fn assert_refused(r: &mcp_router_testkit::harness::Response, status: u16, id: u64) {
    assert_eq!(r.status, status, "{}", r.text());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v = r.json();
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["error"]["code"], -32000, "{v}");
}

fn echo(c: &mut Conn, sid: &str, id: u64) -> mcp_router_testkit::harness::Response {
    post_json(
        c,
        "/mcp",
        Some(sid),
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{}}}),
    )
}

/// Backend connections open now, less `stats` (one keep-alive connection that asks:
/// a new connection per question would count the previous one, still closing).
fn backend_conns(stats: &mut Conn) -> u64 {
    let r = stats.request("GET", "/stats", &[], "");
    r.json()["connections"].as_u64().unwrap() - 1
}

fn a_client_that_never_reads_releases_its_connections_at_the_send_timeout() {
    let b0 = Proc::fake_backend("b0");
    let (r, admin) = router(
        &[&b0],
        &[
            "--client-send-timeout",
            "2s",
            "--pool-idle-timeout",
            "500ms",
        ],
    );
    let mut stats = b0.conn();
    let mut c = r.conn();
    let (_, sid) = initialize(&mut c, json!(0));
    // 5 clients ask for 8 MiB each and read nothing. Their receive buffers are small
    // (64 KiB, no autotuning: loopback would grow them to 32 MiB), so the router's
    // writes stall once its own send buffer (at most 4 MiB) is full.
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"big","arguments":{"bytes": 8 << 20}}})
    .to_string();
    let mut stalled: Vec<TcpStream> = (0..5)
        .map(|_| {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .unwrap();
            sock.set_recv_buffer_size(64 << 10).unwrap();
            let addr: std::net::SocketAddr = r.addr.parse().unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut s: TcpStream = sock.into();
            let req = format!(
                "POST /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {sid}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).unwrap();
            s
        })
        .collect();
    let sent = Instant::now();
    // all five in flight, their responses being produced (a debug-build backend
    // takes a while to serialise 24 MiB of JSON: the stall starts when it is done)
    let start = Instant::now();
    while backend_conns(&mut stats) < 5 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        backend_conns(&mut stats) >= 5,
        "the stalled exchanges hold backend connections meanwhile"
    );
    // another session's client is unaffected meanwhile
    let mut other = r.conn();
    let (_, sid2) = initialize(&mut other, json!(1));
    let t = Instant::now();
    assert_eq!(echo(&mut other, &sid2, 2).status, 200);
    assert!(t.elapsed() < Duration::from_millis(500));
    // nothing is cut before the timeout: no write can have been stalled for 2 s yet
    std::thread::sleep(Duration::from_millis(1800).saturating_sub(sent.elapsed()));
    assert_eq!(
        limited(&admin, "client_send_timeout"),
        0,
        "cut before the timeout"
    );
    // Every backend connection is released by the timeout + 1 s after its write
    // stalled (the pool's idle ones close after 500 ms). A write stalls once the
    // router's send buffer (up to 4 MiB on loopback) is full, which a debug build
    // takes up to ~2.5 s to fill on two loaded cores (smol and glommio more than tokio):
    // hence 6.5 s from the requests.
    let deadline = sent + Duration::from_millis(6500);
    while backend_conns(&mut stats) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let released = sent.elapsed();
    assert_eq!(
        backend_conns(&mut stats),
        0,
        "backend connections still held; limited {}",
        limited(&admin, "client_send_timeout")
    );
    eprintln!("backend connections released {released:?} after the requests (timeout 2 s)");
    assert!(released <= Duration::from_millis(6500), "{released:?}");
    // each stalled client finds its connection closed: what it reads ends (EOF or
    // reset) well short of the 32 MiB it asked for
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break false,
                Err(_) => break true,
            }
        };
        assert!(ended, "the router kept a stalled client's connection open");
        assert!(got < 8 << 20, "{got} bytes: the whole response was sent");
    }
    assert_eq!(limited(&admin, "client_send_timeout"), 5);
    // the session record stays: the first client carries on
    assert_eq!(echo(&mut c, &sid, 3).status, 200);
}

fn connections_past_max_connections_get_503_and_a_close() {
    let b0 = Proc::fake_backend("b0");
    let (r, admin) = router(&[&b0], &["--max-connections", "3"]);
    let held: Vec<Conn> = (0..3).map(|_| r.conn()).collect();
    // let the router accept and count them
    std::thread::sleep(Duration::from_millis(300));
    let mut s = TcpStream::connect(&r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("a clean close");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    assert!(text.contains("\"code\":-32000"), "{text}");
    assert_eq!(limited(&admin, "max_connections"), 1);
    // the held connections still work, and closing one makes room
    let mut held = held;
    let (_, sid) = initialize(&mut held[0], json!(1));
    assert_eq!(echo(&mut held[1], &sid, 2).status, 200);
    held.pop();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = r.conn();
    assert_eq!(echo(&mut c, &sid, 3).status, 200);
}

fn max_sessions_refuses_initialize_and_spares_live_sessions() {
    let b0 = Proc::fake_backend("b0");
    let (r, admin) = router(&[&b0], &["--max-sessions", "2"]);
    let mut c = r.conn();
    let (_, s1) = initialize(&mut c, json!(1));
    let (_, _s2) = initialize(&mut c, json!(2));
    let refused = post_json(&mut c, "/mcp", None, &init_body(3));
    assert_refused(&refused, 503, 3);
    assert_eq!(
        b0.stats()["sessions"],
        2,
        "the refused initialize reached the backend"
    );
    assert_eq!(limited(&admin, "max_sessions"), 1);
    // live sessions carry on, on the same connection
    assert_eq!(echo(&mut c, &s1, 4).status, 200);
    // ending one makes room
    let d = c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &s1)], "");
    assert_eq!(d.status, 200);
    initialize(&mut c, json!(5));
}

fn per_client_quotas_answer_429_and_spare_other_clients() {
    let b0 = Proc::fake_backend("b0");
    let (r, admin) = router(
        &[&b0],
        &[
            "--client-identity",
            "header:x-user",
            "--client-max-sessions",
            "2",
            "--client-session-rate",
            "0",
        ],
    );
    let mut c = r.conn();
    let as_user = |c: &mut Conn, user: &str, id: u64| {
        c.request(
            "POST",
            "/mcp",
            &[
                ("Accept", "application/json, text/event-stream"),
                ("X-User", user),
            ],
            &init_body(id).to_string(),
        )
    };
    let a1 = as_user(&mut c, "alice", 1);
    assert_eq!(a1.status, 200);
    assert_eq!(as_user(&mut c, "alice", 2).status, 200);
    assert_refused(&as_user(&mut c, "alice", 3), 429, 3);
    assert_eq!(
        as_user(&mut c, "bob", 4).status,
        200,
        "another client is refused too"
    );
    assert_eq!(limited(&admin, "client_max_sessions"), 1);
    // alice ends one and may open another
    let sid = a1.header("mcp-session-id").unwrap().to_string();
    assert_eq!(
        c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "")
            .status,
        200
    );
    assert_eq!(as_user(&mut c, "alice", 5).status, 200);
    drop(r);

    // the rate: a burst of 2, then 1 a second
    let (r, admin) = router(
        &[&b0],
        &["--client-session-rate", "1", "--client-session-burst", "2"],
    );
    let mut c = r.conn();
    initialize(&mut c, json!(1));
    initialize(&mut c, json!(2));
    let before = b0.stats()["sessions"].as_u64().unwrap();
    assert_refused(&post_json(&mut c, "/mcp", None, &init_body(3)), 429, 3);
    assert_eq!(b0.stats()["sessions"].as_u64().unwrap(), before);
    assert_eq!(limited(&admin, "client_session_rate"), 1);
    std::thread::sleep(Duration::from_millis(1050));
    initialize(&mut c, json!(4));
}

/// Wait until each router's Redis connections are up (a glommio replica connects one
/// per executor: a request on an executor still connecting gets 503).
fn store_ready(routers: &[&Proc]) {
    for r in routers {
        assert!(
            r.wait_count("session store ready", 1, Duration::from_secs(10)),
            "the store never became ready"
        );
    }
}

/// `send()` again while the answer is the store's `503` (a glommio executor whose Redis
/// connection is still coming up), for up to 5 s.
fn once_the_store_answers(
    send: impl Fn() -> mcp_router_testkit::harness::Response,
) -> mcp_router_testkit::harness::Response {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send();
        if !(r.status == 503 && r.text().contains("Session store unavailable"))
            || Instant::now() > until
        {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn the_session_cap_is_the_fleets_on_redis() {
    let rp = free_port();
    let _redis = redis_server(rp);
    let b0 = Proc::fake_backend("b0");
    let store = format!("redis://127.0.0.1:{rp}");
    let extra = [
        "--store",
        &store,
        "--max-sessions",
        "2",
        "--client-max-sessions",
        "0",
    ];
    let (ra, _) = router(&[&b0], &extra);
    let (rb, admin_b) = router(&[&b0], &extra);
    store_ready(&[&ra, &rb]);
    let init_on = |r: &Proc, id| {
        let resp =
            once_the_store_answers(|| post_json(&mut r.conn(), "/mcp", None, &init_body(id)));
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.header("mcp-session-id").unwrap().to_string()
    };
    let s1 = init_on(&ra, 1);
    init_on(&rb, 2);
    // the third is refused on either replica: the count is the fleet's
    assert_refused(
        &post_json(&mut ra.conn(), "/mcp", None, &init_body(3)),
        503,
        3,
    );
    assert_refused(
        &post_json(&mut rb.conn(), "/mcp", None, &init_body(4)),
        503,
        4,
    );
    assert_eq!(limited(&admin_b, "max_sessions"), 1);
    // a DELETE through the other replica frees a slot for both
    let d = once_the_store_answers(|| {
        rb.conn()
            .request("DELETE", "/mcp", &[("Mcp-Session-Id", &s1)], "")
    });
    assert_eq!(d.status, 200);
    init_on(&ra, 5);
    assert_refused(
        &post_json(&mut rb.conn(), "/mcp", None, &init_body(6)),
        503,
        6,
    );

    // per-client quotas are the fleet's too
    let extra = [
        "--store",
        &store,
        "--client-max-sessions",
        "1",
        "--client-identity",
        "header:x-user",
    ];
    let (rc, _) = router(&[&b0], &extra);
    let (rd, _) = router(&[&b0], &extra);
    store_ready(&[&rc, &rd]);
    let as_carol = |r: &Proc, id: u64| {
        r.conn().request(
            "POST",
            "/mcp",
            &[
                ("Accept", "application/json, text/event-stream"),
                ("X-User", "carol"),
            ],
            &init_body(id).to_string(),
        )
    };
    assert_eq!(once_the_store_answers(|| as_carol(&rc, 7)).status, 200);
    assert_refused(&once_the_store_answers(|| as_carol(&rd, 8)), 429, 8);
}

fn the_listen_backlog_is_the_configured_one() {
    let b0 = Proc::fake_backend("b0");
    let (r, _) = router(&[&b0], &["--accept-backlog", "777"]);
    let port = r.addr.rsplit(':').next().unwrap();
    // a listening socket's Send-Q in `ss` is its backlog
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let backlogs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(!backlogs.is_empty(), "no listener on {port}: {text}");
    // glommio has one listener per executor, all with the same backlog
    assert!(backlogs.iter().all(|b| *b == "777"), "{text}");
}

mcp_router_testkit::behaviour_suite!(
    a_client_that_never_reads_releases_its_connections_at_the_send_timeout,
    connections_past_max_connections_get_503_and_a_close,
    max_sessions_refuses_initialize_and_spares_live_sessions,
    per_client_quotas_answer_429_and_spare_other_clients,
    the_session_cap_is_the_fleets_on_redis,
    the_listen_backlog_is_the_configured_one,
);
