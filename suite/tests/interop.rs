//! Interop with peers nobody here wrote: the official TypeScript and Python MCP SDK
//! clients run initialize -> tools/list -> tools/call -> DELETE through the router (each
//! frontend in turn) against two replicas of `@modelcontextprotocol/server-everything`,
//! in Streamable HTTP and in legacy HTTP+SSE mode.
//!
//! A request routed to the wrong replica fails the client (the replica does not know
//! the session), so a client that completes is a session that stuck. Needs
//! `.ci/install-interop.sh` (run by `.ci/run`); without it the test fails, loudly.

use mcp_router_testkit::harness::{router_bin, Proc};
use std::path::PathBuf;
use std::process::Command;

fn interop_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/interop");
    assert!(
        d.join("node_modules/@modelcontextprotocol/server-everything")
            .is_dir()
            && d.join(".venv/bin/python").exists(),
        "interop dependencies missing: run `bash .ci/install-interop.sh` first"
    );
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn everything(mode: &str, name: &str) -> Proc {
    let dir = interop_dir();
    let port = free_port();
    let mut cmd = Command::new(dir.join("start-everything.sh"));
    cmd.args([mode, &port.to_string()]).current_dir(&dir);
    Proc::start(name, cmd, |l| {
        let l = l.trim();
        if l.contains("listening on port") || l.contains("running on port") {
            let port = l.rsplit(' ').next()?;
            return Some(format!("127.0.0.1:{port}"));
        }
        None
    })
}

/// Run one SDK client; returns its JSON summary line.
fn client(sdk: &str, base: &str, mode: &str) -> serde_json::Value {
    let dir = interop_dir();
    let mut cmd = match sdk {
        "ts" => {
            let mut c = Command::new("node");
            c.arg("ts_client.mjs");
            c
        }
        _ => {
            let mut c = Command::new(dir.join(".venv/bin/python"));
            c.arg("py_client.py");
            c
        }
    };
    let out = cmd
        .args([base, mode, "--rounds", "3"])
        .current_dir(&dir)
        .output()
        .expect("run SDK client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "{sdk} {mode}: no JSON summary; stdout {stdout:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && v["ok"] == true,
        "{sdk} client in {mode} mode failed: {v} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

fn run(mode: &str, end_cause: &str) {
    let e0 = everything(mode, "everything-0");
    let e1 = everything(mode, "everything-1");
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

mcp_router_testkit::behaviour_suite!(
    official_sdk_clients_over_streamable_http,
    official_sdk_clients_over_legacy_sse,
);
