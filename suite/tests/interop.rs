//! Interop with peers nobody here wrote: the official TypeScript and Python MCP SDK
//! clients run initialize -> tools/list -> tools/call -> DELETE through the router (each
//! frontend in turn) against two replicas of `@modelcontextprotocol/server-everything`,
//! in Streamable HTTP and in legacy HTTP+SSE mode.
//!
//! Also the conformance suite's `dns-rebinding-protection` requests against a backend
//! that validates `Host` itself (`rebinding_server.mjs`), through the router.
//!
//! A request routed to the wrong replica fails the client (the replica does not know
//! the session), so a client that completes is a session that stuck. Needs
//! `.ci/install-interop.sh` (run by `.ci/run`); without it the test fails, loudly.

use mcp_router_testkit::harness::{
    free_port, interop_dir, metric_at, rebinding_request, redis_server, router_bin, sdk_client,
    server_everything, warm, Conn, Proc,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Run one SDK client; returns its JSON summary line.
fn client(sdk: &str, base: &str, mode: &str) -> serde_json::Value {
    let script = if sdk == "ts" {
        "ts_client.mjs"
    } else {
        "py_client.py"
    };
    sdk_client(script, &[base, mode, "--rounds", "3"]).0
}

/// `rounds` rounds of the TS then the Python SDK client against `base`, each listing
/// the tools and calling `echo`; returns the number of sessions run.
fn clients_complete(base: &str, mode: &str, rounds: usize) -> usize {
    let mut sessions = 0;
    for round in 0..rounds {
        for sdk in ["ts", "py"] {
            let v = client(sdk, base, mode);
            assert!(v["tools"].as_u64().unwrap_or(0) > 0, "{v}");
            assert_eq!(
                v["echo"].as_str().map(|s| s.contains("hello")),
                Some(true),
                "round {round} {sdk}: {v}"
            );
            sessions += 1;
        }
    }
    sessions
}

fn run(mode: &str, end_cause: &str) {
    let e0 = server_everything(mode, "everything-0");
    let e1 = server_everything(mode, "everything-1");
    let r = Proc::router(
        router_bin(),
        "router",
        &[
            "--backend",
            &format!("e0=http://{}", e0.addr),
            "--backend",
            &format!("e1=http://{}", e1.addr),
        ],
    );
    let sessions = clients_complete(&format!("http://{}", r.addr), mode, 3);
    assert!(r.wait_count(
        "session started",
        sessions,
        std::time::Duration::from_secs(5)
    ));
    // placement used both replicas, and every session's record was removed at its end
    assert!(
        r.count_logs("backend=e0") > 0 && r.count_logs("backend=e1") > 0,
        "{:?}",
        r.logs()
    );
    assert!(
        r.wait_count(end_cause, sessions, std::time::Duration::from_secs(10)),
        "expected {sessions} sessions ended with {end_cause}: {:?}",
        r.logs()
    );
    assert_eq!(r.count_logs("request rejected"), 0, "{:?}", r.logs());
}

fn official_sdk_clients_over_streamable_http() {
    // both SDKs send DELETE when they close the session
    run("streamable", "cause=\"delete\"");
}

fn official_sdk_clients_over_legacy_sse() {
    // legacy sessions end when their GET stream closes
    run("sse", "cause=\"stream_closed\"");
}

/// A non-sticky round-robin balancer in front of router replicas: every request goes
/// to the next replica in turn (each client connection carries one request, answered
/// with `Connection: close`, so keep-alive cannot pin a client to a replica). Returns
/// its address and the requests sent to each replica.
fn round_robin(replicas: Vec<String>) -> (String, Arc<Vec<AtomicUsize>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new(replicas.iter().map(|_| AtomicUsize::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let c = counts.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let i = next.fetch_add(1, Ordering::Relaxed) % replicas.len();
            let (to, c) = (replicas[i].clone(), c.clone());
            std::thread::spawn(move || {
                if one_request(client, &to) {
                    c[i].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, counts)
}

/// Carry one request from `client` to `to` and the whole response back.
fn one_request(client: TcpStream, to: &str) -> bool {
    let mut r = BufReader::new(client.try_clone().unwrap());
    let mut head = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        assert!(!lower.starts_with("transfer-encoding:"), "chunked request");
        if !lower.starts_with("connection:") && !lower.starts_with("keep-alive:") {
            head.push_str(&line);
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return false;
    }
    let Ok(mut up) = TcpStream::connect(to) else {
        return false;
    };
    up.write_all(head.as_bytes()).unwrap();
    up.write_all(&body).unwrap();
    // the response, streams included, until the replica closes (or the client goes)
    let mut down = up.try_clone().unwrap();
    let mut client_w = client;
    let mut c2 = client_w.try_clone().unwrap();
    std::thread::spawn(move || {
        // the client hanging up ends the exchange upstream too
        let mut sink = [0u8; 1024];
        while matches!(c2.read(&mut sink), Ok(n) if n > 0) {}
        let _ = up.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut down, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Both);
    true
}

/// A session key file for sealed-id replicas (one fixed key), its path; named by the
/// test (`tag`), the process and the thread so that concurrent tests never share one.
fn key_file(tag: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "mcp-interop-{tag}-{}-{:?}.keys",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(
        &path,
        "k1:0101010101010101010101010101010101010101010101010101010101010101\n",
    )
    .unwrap();
    path.display().to_string()
}

/// Sealed session ids: the official SDK clients through a round-robin balancer over
/// two router replicas with no store, so each session's requests alternate between
/// replicas; `server-everything` replicas behind.
fn run_sealed(mode: &str) {
    let e0 = server_everything(mode, "everything-0");
    let e1 = server_everything(mode, "everything-1");
    let keys = key_file("sealed");
    let b0 = format!("e0=http://{}", e0.addr);
    let b1 = format!("e1=http://{}", e1.addr);
    let args = [
        "--backend",
        &b0,
        "--backend",
        &b1,
        "--session-ids",
        "sealed",
        "--session-keys",
        &keys,
        // every request reaches the router from the balancer's address
        "--client-session-rate",
        "0",
    ];
    let ra = Proc::router(router_bin(), "router-a", &args);
    let rb = Proc::router(router_bin(), "router-b", &args);
    let (lb, counts) = round_robin(vec![ra.addr.clone(), rb.addr.clone()]);
    let sessions = clients_complete(&format!("http://{lb}"), mode, 2);
    let (a, b) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    eprintln!("{mode}: {sessions} sessions, requests per replica: {a}, {b}");
    assert!(
        a >= sessions * 2 && b >= sessions * 2,
        "requests per replica: {a}, {b}"
    );
    for r in [&ra, &rb] {
        assert_eq!(r.count_logs("session id refused"), 0, "{:?}", r.logs());
    }
}

fn official_sdk_clients_through_store_less_sealed_replicas_streamable() {
    run_sealed("streamable");
}

fn official_sdk_clients_through_store_less_sealed_replicas_legacy_sse() {
    run_sealed("sse");
}

/// The reference server of the conformance suite's `dns-rebinding-protection`
/// scenario: the TypeScript SDK's `createMcpExpressApp()` on 127.0.0.1, which refuses a
/// foreign `Host` itself (`rebinding_server.mjs`).
fn rebinding_reference() -> Proc {
    let dir = interop_dir();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("rebinding_server.mjs"))
        .arg(free_port().to_string())
        .current_dir(&dir);
    Proc::start("reference", cmd, |l| {
        let port = l.trim().strip_prefix("listening on port ")?;
        Some(format!("127.0.0.1:{port}"))
    })
}

/// The scenario's two requests: `initialize` with `Host: <host>` and
/// `Origin: http://<host>`; returns the status.
fn rebinding_attempt(router: &str, host: &str) -> u16 {
    rebinding_request(router, host).status
}

/// Issue 12, point 7. The conformance suite's `dns-rebinding-protection` scenario
/// passes against its reference server directly and failed through the router, which
/// rewrote `Host` to the backend's address. Now the client's `Host` reaches the
/// backend: with the router's own checks off, the backend's protection refuses the
/// foreign name by itself; with them on (the loopback default) the router refuses it
/// first, whether or not `--rewrite-host` hides the name from the backend.
fn a_backends_dns_rebinding_protection_survives_the_router() {
    let s = rebinding_reference();
    let backend = format!("http://{}", s.addr);
    assert_eq!(
        rebinding_attempt(&s.addr, "evil.example.com"),
        403,
        "reference"
    );
    assert_eq!(rebinding_attempt(&s.addr, &s.addr), 200, "reference");
    for (case, extra) in [
        (
            "router checks off",
            &["--allowed-hosts", "*", "--allowed-origins", "*"][..],
        ),
        ("router defaults", &[][..]),
        ("router defaults, --rewrite-host", &["--rewrite-host"][..]),
    ] {
        let mut args = vec!["--backend", backend.as_str()];
        args.extend_from_slice(extra);
        let r = Proc::router(router_bin(), "router", &args);
        let status = rebinding_attempt(&r.addr, "evil.example.com");
        assert!(
            (400..500).contains(&status),
            "{case}: foreign Host answered {status}"
        );
        assert_eq!(rebinding_attempt(&r.addr, &r.addr), 200, "{case}: own Host");
    }
}

/// The official Python SDK on both sides of a dual-era fleet: a modern-only server
/// (`MCPServer`'s app answering earlier eras 400 -32022, `fastmcp_server.py
/// --modern-only`, configured `;eras=modern`) and a dual-era one (`MCPServer` over
/// Streamable HTTP, both eras on one endpoint) behind two store-less sealed router
/// replicas, a per-request round-robin balancer in front; `mcp.Client` pinned to
/// `2026-07-28` (every request a self-contained POST whose `Mcp-Method` / `Mcp-Name` /
/// version headers the router checks against the body), in `auto` (probes
/// `server/discover`) and in `legacy` (initialize) mode, all at once. Every answer is the
/// client's own, the router refuses nothing, and no legacy session lands on the
/// modern-only server (without `;eras=modern` the legacy clients fail: their
/// `initialize` meets -32022 there).
fn python_sdk_clients_of_every_era_through_one_router_and_two_replicas_to_a_dual_era_fleet() {
    // through one router, then through two replicas behind the balancer
    every_era_fleet(1);
    every_era_fleet(2);
    // a fleet with no modern backend: the router answers the `auto` client's
    // `server/discover` probe with -32022 itself, and the SDK falls back to initialize
    let dir = interop_dir();
    let port = free_port();
    let mut cmd = Command::new(dir.join(".venv/bin/python"));
    cmd.args(["fastmcp_server.py", "--http", &port.to_string()])
        .current_dir(&dir);
    let legacy = Proc::start("py-as-legacy", cmd, |l| {
        let rest = l.split("streamable HTTP on ").nth(1)?;
        Some(rest.split('/').next()?.trim().to_string())
    });
    wait_listening(&legacy.addr);
    let b = format!("old=http://{};eras=legacy", legacy.addr);
    let r = Proc::router(router_bin(), "router", &["--backend", &b]);
    let url = format!("http://{}/mcp", r.addr);
    let v = sdk_client("py_modern_client.py", &[&url, "auto", "fallback"]).0;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(r.count_logs("session started"), 1, "{:?}", r.logs());
}

/// Wait until `addr` accepts connections (a Python server prints its address just
/// before uvicorn binds).
fn wait_listening(addr: &str) {
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{addr} not listening"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn every_era_fleet(replicas: usize) {
    let dir = interop_dir();
    let server = |name: &str, flag: &str| {
        let port = free_port();
        let mut cmd = Command::new(dir.join(".venv/bin/python"));
        cmd.args(["fastmcp_server.py", flag, &port.to_string()])
            .current_dir(&dir);
        let p = Proc::start(name, cmd, |l| {
            let rest = l.split("streamable HTTP on ").nth(1)?;
            Some(rest.split('/').next()?.trim().to_string())
        });
        wait_listening(&p.addr);
        p
    };
    let modern = server("py-modern-only", "--modern-only");
    let dual = server("py-dual-era", "--http");
    let keys_arg = key_file("eras");
    let m = format!("modern=http://{};eras=modern", modern.addr);
    let d = format!("dual=http://{}", dual.addr);
    let args = [
        "--backend",
        &m,
        "--backend",
        &d,
        "--session-ids",
        "sealed",
        "--session-keys",
        &keys_arg,
        // every request reaches the routers from the balancer's address
        "--client-session-rate",
        "0",
    ];
    let routers: Vec<Proc> = (0..replicas)
        .map(|i| Proc::router(router_bin(), &format!("router-{i}"), &args))
        .collect();
    let (lb, counts) = round_robin(routers.iter().map(|r| r.addr.clone()).collect());
    let url = format!("http://{lb}/mcp");
    let runs: Vec<_> = [
        "2026-07-28",
        "auto",
        "legacy",
        "2026-07-28",
        "auto",
        "legacy",
    ]
    .into_iter()
    .enumerate()
    .map(|(i, mode)| {
        let url = url.clone();
        std::thread::spawn(move || {
            sdk_client("py_modern_client.py", &[&url, mode, &i.to_string()]).0
        })
    })
    .collect();
    for h in runs {
        let v = h.join().expect("client thread");
        assert_eq!(v["ok"], true, "{v}");
    }
    let per_replica: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert!(
        per_replica.iter().all(|&n| n >= 6),
        "requests per replica: {per_replica:?}"
    );
    let mut sessions = 0;
    for r in &routers {
        assert_eq!(r.count_logs("request rejected"), 0, "{:?}", r.logs());
        assert_eq!(r.count_logs("session id refused"), 0, "{:?}", r.logs());
        // the legacy clients' sessions all went to the server that has that era
        let started: Vec<String> = r
            .logs()
            .into_iter()
            .filter(|l| l.contains("session started"))
            .collect();
        assert!(
            started.iter().all(|l| l.contains("backend=dual")),
            "{started:?}"
        );
        sessions += started.len();
    }
    assert!(
        sessions >= 2,
        "the two legacy clients' sessions: {sessions}"
    );
}

/// An official SDK client (`ts_failover_client.mjs` or `py_failover_client.py`)
/// holding one Streamable HTTP session open (initialized, one `tools/call` done) until
/// told to go on.
struct HeldClient {
    sdk: &'static str,
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    /// The session id it holds.
    sid: String,
}

impl HeldClient {
    /// Start one against `base` and wait until it holds its session.
    fn start(sdk: &'static str, base: &str) -> HeldClient {
        use std::process::Stdio;
        let dir = interop_dir();
        let mut cmd = if sdk == "ts" {
            let mut c = Command::new("node");
            c.arg("ts_failover_client.mjs");
            c
        } else {
            let mut c = Command::new(dir.join(".venv/bin/python"));
            c.arg("py_failover_client.py");
            c
        };
        let mut child = cmd
            .arg(base)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("SDK client");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let sid = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("{sdk} client did not get ready: {line:?}"))
            .to_string();
        HeldClient {
            sdk,
            child,
            out,
            sid,
        }
    }

    /// Let it make its next `tools/call` and close: it must succeed under the session
    /// id it already had, without a second `initialize` and without any `404`.
    fn finish(mut self) {
        let sdk = self.sdk;
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut line = String::new();
        self.out.read_to_string(&mut line).unwrap();
        assert!(self.child.wait().unwrap().success(), "{sdk}: {line}");
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["ok"], true, "{sdk}: {v}");
        assert_eq!(v["before"], self.sid.as_str(), "{sdk}: {v}");
        if sdk == "ts" {
            assert_eq!(
                v["after"],
                self.sid.as_str(),
                "the client's id never changed: {v}"
            );
        } else {
            // every response of the session carried the client's id, never another
            assert_eq!(v["ids"], serde_json::json!([self.sid]), "{v}");
        }
        assert_eq!(
            v["initializes"], 1,
            "{sdk}: no re-initialize on the client side: {v}"
        );
        let statuses = v["statuses"].as_array().unwrap();
        assert!(
            !statuses
                .iter()
                .any(|s| s.as_str().unwrap().ends_with(" 404")),
            "{sdk}: {v}"
        );
    }
}

/// `--failover reinitialize` with the official SDKs: four clients (TypeScript and
/// Python, two of each, placed so that each replica holds one of each) hold sessions,
/// with their GET streams open, on two server-everything replicas; one replica is
/// killed; every client's next `tools/call` succeeds, under the session id it already
/// had, without a second `initialize` and without a `404`.
fn official_sdk_clients_keep_their_sessions_when_a_replica_dies() {
    let mut e0 = server_everything("streamable", "everything-0");
    let e1 = server_everything("streamable", "everything-1");
    let r = Proc::router(
        router_bin(),
        "router",
        &[
            "--backend",
            &format!("e0=http://{}", e0.addr),
            "--backend",
            &format!("e1=http://{}", e1.addr),
            "--failover",
            "reinitialize",
        ],
    );
    let base = format!("http://{}", r.addr);
    let clients: Vec<HeldClient> = ["ts", "py", "py", "ts"]
        .into_iter()
        .map(|sdk| HeldClient::start(sdk, &base))
        .collect();
    let on_e0: Vec<&str> = clients
        .iter()
        .filter(|c| r.count_logs(&format!("session={} backend=e0", c.sid)) == 1)
        .map(|c| c.sdk)
        .collect();
    assert_eq!(on_e0.len(), 2, "placement: {:?}", r.logs());
    assert!(on_e0.contains(&"ts") && on_e0.contains(&"py"), "{on_e0:?}");
    e0.kill();
    let killed = std::time::Instant::now();
    for c in clients {
        c.finish();
    }
    eprintln!(
        "all four clients' calls after the kill done {:?} after it",
        killed.elapsed()
    );
    assert!(
        r.wait_count("outcome=\"done\"", 2, std::time::Duration::from_secs(5)),
        "{:?}",
        r.logs()
    );
}

/// Sessions open on a server-everything replica, from its own log: each `Session
/// initialized with ID` minus each `removing from transports map` (what a `DELETE`
/// it accepted logs, after closing the session's transport).
fn everything_sessions(e: &Proc) -> usize {
    e.count_logs("Session initialized with ID: ") - e.count_logs("removing from transports map")
}

/// How many `DELETE`s server-everything accepted for `sid`, from its log.
fn everything_deletes(e: &Proc, sid: &str) -> usize {
    e.count_logs(&format!(
        "Received session termination request for session {sid}"
    ))
}

/// Poll `done` every 100 ms until it holds or `limit` passes; whether it held.
fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// One SDK session through `base` that stops without `DELETE` (`--no-delete`), or
/// with it; its session id.
fn sdk_session(sdk: &str, base: &str, delete: bool) -> String {
    let script = if sdk == "ts" {
        "ts_client.mjs"
    } else {
        "py_client.py"
    };
    let mut args = vec![base, "streamable", "--rounds", "2"];
    if !delete {
        args.push("--no-delete");
    }
    let v = sdk_client(script, &args).0;
    v["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{sdk}: no session id: {v}"))
        .to_string()
}

/// Issue 14 with the official pieces on both sides: TypeScript and Python SDK
/// clients that stop without `DELETE`, through `routers` (one on the embedded store,
/// or two on one Redis), to two server-everything replicas. Each such session is still
/// held when its client has stopped; after the TTL it gets exactly one `DELETE` on its
/// replica (from server-everything's own log) and the replicas' session counts return
/// to where they started; a session the client deleted itself gets no second one.
fn sdk_sessions_without_delete_are_reaped(store: Option<&str>) {
    let e0 = server_everything("streamable", "everything-0");
    let e1 = server_everything("streamable", "everything-1");
    let mut args: Vec<String> = [
        "--backend",
        &format!("e0=http://{}", e0.addr),
        "--backend",
        &format!("e1=http://{}", e1.addr),
        "--session-ttl",
        "2s",
    ]
    .map(String::from)
    .to_vec();
    if let Some(url) = store {
        args.extend(["--store", url, "--reap-claim-interval", "100ms"].map(String::from));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replicas = if store.is_some() { 2 } else { 1 };
    let routers: Vec<Proc> = (0..replicas)
        .map(|i| Proc::router(router_bin(), &format!("router-{i}"), &args))
        .collect();
    for r in &routers {
        warm(&r.addr);
    }
    let live = || everything_sessions(&e0) + everything_sessions(&e1);
    let deletes = |sid: &str| everything_deletes(&e0, sid) + everything_deletes(&e1, sid);
    // warm() deleted every session it opened, but server-everything's log of the last
    // removal may trail its DELETE: start from zero once the log says so
    assert!(
        until(Duration::from_secs(5), || live() == 0),
        "server-everything holds {} sessions before any client",
        live()
    );
    let start = 0;
    // two TypeScript and two Python clients that just stop, spread over the replicas,
    // and one that deletes its session itself
    let held = |sid: &str| {
        let closed = format!("Transport closed for session {sid}");
        deletes(sid) == 0 && e0.count_logs(&closed) + e1.count_logs(&closed) == 0
    };
    let mut left = Vec::new();
    for (i, sdk) in ["ts", "py", "py", "ts"].iter().enumerate() {
        let base = format!("http://{}", routers[i % replicas].addr);
        let sid = sdk_session(sdk, &base, false);
        // the client sent no DELETE: its session is still on its replica (the TTL,
        // 2 s, runs from its last request, just now)
        assert!(held(&sid), "{sdk}: {sid} deleted by its client?");
        left.push(sid);
    }
    let deleted_by_client = sdk_session("py", &format!("http://{}", routers[0].addr), true);
    // (its log line may trail the client's exit a little)
    assert!(
        until(Duration::from_secs(5), || deletes(&deleted_by_client) == 1),
        "the client's own DELETE of {deleted_by_client}: {}",
        deletes(&deleted_by_client)
    );
    let began = Instant::now();
    assert!(
        until(Duration::from_secs(20), || live() == start),
        "server-everything still holds {} sessions (started at {start})",
        live()
    );
    eprintln!(
        "{} router(s): the SDK sessions left without DELETE all gone from server-everything {:?} after the last client stopped (TTL 2 s)",
        replicas,
        began.elapsed()
    );
    // a while longer: nothing is deleted twice
    std::thread::sleep(Duration::from_millis(1500));
    for sid in &left {
        assert_eq!(deletes(sid), 1, "{sid}");
    }
    assert_eq!(deletes(&deleted_by_client), 1);
    assert_eq!(live(), start);
    let reaped: usize = routers
        .iter()
        .map(|r| r.count_logs("session reaped upstream"))
        .sum();
    assert_eq!(reaped, left.len(), "reaps logged by the router(s)");
    if replicas == 2 {
        // the replicas shared the work or one did it all, but each session once
        let per: Vec<usize> = routers
            .iter()
            .map(|r| r.count_logs("session reaped upstream"))
            .collect();
        eprintln!("reaps per replica: {per:?}");
    }
}

/// Issue 14, point 2 with the official pieces: SDK sessions left open (no `DELETE`) on
/// a server-everything replica that is then drained end by `--drain-timeout` (2 s; the
/// session TTL is an hour): its own session count returns to where it started, each of
/// them with exactly one `DELETE`, not before the timeout; the other replica's sessions
/// stay.
fn sdk_sessions_on_a_drained_server_everything_end_by_the_drain_timeout() {
    let e0 = server_everything("streamable", "everything-0");
    let e1 = server_everything("streamable", "everything-1");
    let admin = format!("127.0.0.1:{}", free_port());
    let (b0, b1) = (
        format!("e0=http://{}", e0.addr),
        format!("e1=http://{}", e1.addr),
    );
    let r = Proc::router(
        router_bin(),
        "router",
        &[
            "--backend",
            &b0,
            "--backend",
            &b1,
            "--admin-listen",
            &admin,
            "--session-ttl",
            "1h",
            "--drain-timeout",
            "2s",
        ],
    );
    let (start0, start1) = (everything_sessions(&e0), everything_sessions(&e1));
    let base = format!("http://{}", r.addr);
    let sids: Vec<String> = ["ts", "py", "ts", "py"]
        .iter()
        .map(|sdk| sdk_session(sdk, &base, false))
        .collect();
    let on0: Vec<&String> = sids
        .iter()
        .filter(|s| e0.count_logs(&format!("Session initialized with ID: {s}")) > 0)
        .collect();
    assert!(!on0.is_empty(), "no session placed on e0: {sids:?}");
    let held1 = everything_sessions(&e1);
    assert_eq!(everything_sessions(&e0), start0 + on0.len());
    let drain = Conn::open(&admin)
        .request("POST", "/admin/backends/e0/drain", &[], "{}")
        .status;
    assert_eq!(drain, 200);
    let drained_at = Instant::now();
    assert!(
        until(Duration::from_secs(10), || everything_sessions(&e0)
            == start0),
        "e0 still holds {} sessions (started at {start0})",
        everything_sessions(&e0)
    );
    let took = drained_at.elapsed();
    eprintln!(
        "drained server-everything's SDK sessions gone {took:?} after the drain (timeout 2 s)"
    );
    assert!(
        took >= Duration::from_millis(1800),
        "ended before the drain timeout: {took:?}"
    );
    for sid in &on0 {
        assert_eq!(everything_deletes(&e0, sid), 1, "{sid}");
    }
    // the other replica's sessions are untouched
    assert_eq!(everything_sessions(&e1), held1);
    assert!(held1 > start1, "e1 held none of the sessions");
}

fn sdk_sessions_without_delete_are_reaped_through_one_router_on_the_embedded_store() {
    sdk_sessions_without_delete_are_reaped(None);
}

fn sdk_sessions_without_delete_are_reaped_exactly_once_through_two_replicas_on_redis() {
    let rp = free_port();
    let _redis = redis_server(rp);
    sdk_sessions_without_delete_are_reaped(Some(&format!("redis://127.0.0.1:{rp}")));
}

/// Issue 17 with the official SDKs: two TypeScript and two Python clients hold
/// sessions (opened more than a second before) through two router replicas whose
/// shared store is a Redis primary watched by three sentinels, on two server-everything
/// replicas; the primary is SIGKILLed and the sentinels promote its replica; once both
/// routers follow it, every client's next `tools/call` succeeds under the session id it
/// had, without a second `initialize` and without a `404`.
fn official_sdk_clients_keep_their_sessions_across_a_redis_sentinel_failover() {
    use mcp_router_testkit::redis_topology::sentinel_group;
    let mut g = sentinel_group();
    let e0 = server_everything("streamable", "everything-0");
    let e1 = server_everything("streamable", "everything-1");
    let (b0, b1) = (
        format!("e0=http://{}", e0.addr),
        format!("e1=http://{}", e1.addr),
    );
    let url = g.url();
    let routers: Vec<(Proc, String)> = ["router-a", "router-b"]
        .iter()
        .map(|n| {
            let admin = format!("127.0.0.1:{}", free_port());
            let r = Proc::router(
                router_bin(),
                n,
                &[
                    "--backend",
                    &b0,
                    "--backend",
                    &b1,
                    "--store",
                    &url,
                    "--admin-listen",
                    &admin,
                ],
            );
            (r, admin)
        })
        .collect();
    for (r, _) in &routers {
        warm(&r.addr);
    }
    let clients: Vec<HeldClient> = ["ts", "py", "py", "ts"]
        .into_iter()
        .enumerate()
        .map(|(i, sdk)| HeldClient::start(sdk, &format!("http://{}", routers[i % 2].0.addr)))
        .collect();
    std::thread::sleep(Duration::from_millis(1100));
    g.kill_primary();
    let killed = Instant::now();
    let promoted = g
        .wait_promoted(Duration::from_secs(30))
        .expect("the sentinels promoted the replica");
    for (r, admin) in &routers {
        assert!(
            until(Duration::from_secs(5), || metric_at(
                admin,
                &format!("mcp_router_store_node_info{{node=\"{promoted}\"}}")
            ) == 1.0),
            "{} did not follow the promotion: {:?}",
            r.addr,
            r.logs()
        );
    }
    eprintln!(
        "Redis primary killed; both routers on the promoted replica {:?} later",
        killed.elapsed()
    );
    for c in clients {
        c.finish();
    }
}

mcp_router_testkit::behaviour_suite!(
    sdk_sessions_on_a_drained_server_everything_end_by_the_drain_timeout,
    sdk_sessions_without_delete_are_reaped_through_one_router_on_the_embedded_store,
    sdk_sessions_without_delete_are_reaped_exactly_once_through_two_replicas_on_redis,
    python_sdk_clients_of_every_era_through_one_router_and_two_replicas_to_a_dual_era_fleet,
    official_sdk_clients_keep_their_sessions_when_a_replica_dies,
    official_sdk_clients_keep_their_sessions_across_a_redis_sentinel_failover,
    official_sdk_clients_over_streamable_http,
    official_sdk_clients_over_legacy_sse,
    a_backends_dns_rebinding_protection_survives_the_router,
    official_sdk_clients_through_store_less_sealed_replicas_streamable,
    official_sdk_clients_through_store_less_sealed_replicas_legacy_sse,
);
