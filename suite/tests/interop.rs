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
use std::process::Command;

/// Run one SDK client; returns its JSON summary line.
fn client(sdk: &str, base: &str, mode: &str) -> serde_json::Value {
    let script = if sdk == "ts" {
        "ts_client.mjs"
    } else {
        "py_client.py"
    };
    sdk_client(script, &[base, mode, "--rounds", "3"]).0
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
    let base = format!("http://{}", r.addr);
    let mut sessions = 0;
    for round in 0..3 {
        for sdk in ["ts", "py"] {
            let v = client(sdk, &base, mode);
            assert!(v["tools"].as_u64().unwrap_or(0) > 0, "{v}");
            assert_eq!(
                v["echo"].as_str().map(|s| s.contains("hello")),
                Some(true),
                "round {round}: {v}"
            );
            sessions += 1;
        }
    }
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

mcp_router_testkit::behaviour_suite!(
    official_sdk_clients_over_streamable_http,
    official_sdk_clients_over_legacy_sse,
    a_backends_dns_rebinding_protection_survives_the_router,
);
