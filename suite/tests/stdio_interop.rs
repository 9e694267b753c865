//! `--stdio` (on every frontend) with peers nobody here wrote: the official TypeScript and
//! Python MCP SDK clients (`tests/interop/stdio_ts_client.mjs`,
//! `tests/interop/stdio_py_client.py`) through the router against two stdio servers:
//! `@modelcontextprotocol/server-everything` (`stdio` mode) and a FastMCP server built
//! on the `mcp` package (`tests/interop/fastmcp_server.py`), over Streamable HTTP and
//! over HTTP+SSE. The clients check tools, resources, prompts, progress notifications,
//! a sampling round trip and (with `--sessions 3`) per-session isolation; each prints
//! JSON lines and a last `{"check":"all","ok":...}` line.
//!
//! After every run the router must have no descendant process left (zombies
//! included). Needs `.ci/install-interop.sh`; without it, or without the scripts, the
//! tests fail loudly.

use mcp_router_testkit::harness::{interop_dir, router_bin, sdk_client, Proc};
use mcp_router_testkit::procs::{descendants, wait_until};
use std::time::Duration;

fn server_cmd(server: &str) -> String {
    let d = interop_dir();
    match server {
        "everything" => format!(
            "node {}",
            d.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js stdio")
                .display()
        ),
        _ => format!(
            "{} {}",
            d.join(".venv/bin/python").display(),
            d.join("fastmcp_server.py").display()
        ),
    }
}

/// Run one SDK client; returns its last JSON line, asserting it passed.
fn client(sdk: &str, base: &str, mode: &str, server: &str, extra: &[&str]) -> serde_json::Value {
    let script = if sdk == "ts" {
        "stdio_ts_client.mjs"
    } else {
        "stdio_py_client.py"
    };
    let mut args = vec![base, mode, server];
    args.extend_from_slice(extra);
    let (v, stdout) = sdk_client(script, &args);
    assert_eq!(v["check"], "all", "{sdk} {mode} {server}: {stdout}");
    v
}

fn run(server: &str, mode: &str, stdio_mode: &str, extra: &[&str]) {
    let cmd = server_cmd(server);
    let r = Proc::router(
        router_bin(),
        &format!("router-{server}-{mode}"),
        &["--stdio", &cmd, "--stdio-mode", stdio_mode],
    );
    let base = format!("http://{}", r.addr);
    for sdk in ["ts", "py"] {
        let v = client(sdk, &base, mode, server, &[]);
        assert!(v["checks"].as_u64().unwrap_or(0) >= 8, "{v}");
        let v = client(sdk, &base, mode, server, extra);
        assert_eq!(v["sessions"], 3, "{v}");
    }
    let pid = r.pid();
    let ok = wait_until(Duration::from_secs(10), || descendants(pid).is_empty());
    assert!(ok, "children left behind: {:?}", descendants(pid));
    assert_eq!(r.count_logs("stdio child wrote invalid JSON-RPC"), 0);
}

fn sdk_clients_server_everything_streamable() {
    run(
        "everything",
        "streamable",
        "per-session",
        &["--sessions", "3"],
    );
}

fn sdk_clients_server_everything_sse() {
    run("everything", "sse", "per-session", &["--sessions", "3"]);
}

fn sdk_clients_fastmcp_streamable() {
    run("fastmcp", "streamable", "per-session", &["--sessions", "3"]);
}

fn sdk_clients_fastmcp_sse() {
    run("fastmcp", "sse", "per-session", &["--sessions", "3"]);
}

fn sdk_clients_fastmcp_shared_child() {
    // one process holds every session: the clients assert one pid and no counter
    // value seen twice (ids and progress tokens collide across sessions)
    run(
        "fastmcp",
        "streamable",
        "shared",
        &["--sessions", "3", "--expect-shared"],
    );
    run(
        "fastmcp",
        "sse",
        "shared",
        &["--sessions", "3", "--expect-shared"],
    );
}

mcp_router_testkit::behaviour_suite!(
    sdk_clients_server_everything_streamable,
    sdk_clients_server_everything_sse,
    sdk_clients_fastmcp_streamable,
    sdk_clients_fastmcp_sse,
    sdk_clients_fastmcp_shared_child,
);
