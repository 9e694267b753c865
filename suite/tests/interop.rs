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
    free_port, interop_dir, rebinding_request, router_bin, sdk_client, server_everything, Proc,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

/// Sealed session ids: the official SDK clients through a round-robin balancer over
/// two router replicas with no store, so each session's requests alternate between
/// replicas; `server-everything` replicas behind.
fn run_sealed(mode: &str) {
    let e0 = server_everything(mode, "everything-0");
    let e1 = server_everything(mode, "everything-1");
    let dir = std::env::temp_dir().join(format!(
        "mcp-interop-sealed-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        "k1:0101010101010101010101010101010101010101010101010101010101010101\n",
    )
    .unwrap();
    let b0 = format!("e0=http://{}", e0.addr);
    let b1 = format!("e1=http://{}", e1.addr);
    let keys = keys.display().to_string();
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
    let keys = std::env::temp_dir().join(format!(
        "mcp-interop-eras-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(
        &keys,
        "k1:0101010101010101010101010101010101010101010101010101010101010101\n",
    )
    .unwrap();
    let m = format!("modern=http://{};eras=modern", modern.addr);
    let d = format!("dual=http://{}", dual.addr);
    let keys_arg = keys.display().to_string();
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
    let _ = std::fs::remove_file(&keys);
}

/// `--failover reinitialize` with the official SDKs: four clients (TypeScript and
/// Python, two of each, placed so that each replica holds one of each) hold sessions,
/// with their GET streams open, on two server-everything replicas; one replica is
/// killed; every client's next `tools/call` succeeds, under the session id it already
/// had, without a second `initialize` and without a `404`.
fn official_sdk_clients_keep_their_sessions_when_a_replica_dies() {
    use std::process::Stdio;
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
    let dir = interop_dir();
    let mut clients = Vec::new();
    for sdk in ["ts", "py", "py", "ts"] {
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
            .arg(&base)
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
        clients.push((sdk, child, out, sid));
    }
    let on_e0: Vec<&str> = clients
        .iter()
        .filter(|(_, _, _, sid)| r.count_logs(&format!("session={sid} backend=e0")) == 1)
        .map(|(sdk, ..)| *sdk)
        .collect();
    assert_eq!(on_e0.len(), 2, "placement: {:?}", r.logs());
    assert!(on_e0.contains(&"ts") && on_e0.contains(&"py"), "{on_e0:?}");
    e0.kill();
    let killed = std::time::Instant::now();
    for (sdk, mut child, mut out, sid) in clients {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut line = String::new();
        out.read_to_string(&mut line).unwrap();
        assert!(child.wait().unwrap().success(), "{sdk}: {line}");
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["ok"], true, "{sdk}: {v}");
        assert_eq!(v["before"], sid.as_str(), "{sdk}: {v}");
        if sdk == "ts" {
            assert_eq!(
                v["after"],
                sid.as_str(),
                "the client's id never changed: {v}"
            );
        } else {
            // every response of the session carried the client's id, never another
            assert_eq!(v["ids"], serde_json::json!([sid]), "{v}");
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

mcp_router_testkit::behaviour_suite!(
    python_sdk_clients_of_every_era_through_one_router_and_two_replicas_to_a_dual_era_fleet,
    official_sdk_clients_keep_their_sessions_when_a_replica_dies,
    official_sdk_clients_over_streamable_http,
    official_sdk_clients_over_legacy_sse,
    a_backends_dns_rebinding_protection_survives_the_router,
    official_sdk_clients_through_store_less_sealed_replicas_streamable,
    official_sdk_clients_through_store_less_sealed_replicas_legacy_sse,
);
