//! The 2026-07-28 era through the real binaries: the headers that mirror the body
//! (`Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`) are checked against it before any
//! backend sees the request (issue 16).

use mcp_router_testkit::harness::{router_bin, Conn, Proc};
use serde_json::{json, Value};

fn router(backend: &Proc) -> Proc {
    router_with(backend, &[])
}

fn router_with(backend: &Proc, extra: &[&str]) -> Proc {
    let b = format!("b0=http://{}", backend.addr);
    let mut args = vec!["--backend", &b];
    args.extend_from_slice(extra);
    Proc::router(router_bin(), "router", &args)
}

fn served(b: &Proc) -> u64 {
    b.stats()["requests"].as_u64().expect("requests")
}

/// A 2026-07-28 `tools/call` of `tool` with id 9.
fn call(tool: &str) -> String {
    json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{
        "name": tool, "arguments": {"region": "us-west1"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
    .to_string()
}

fn mismatched_headers_get_400_32020_and_the_backend_receives_nothing() {
    let b0 = Proc::fake_backend("b0");
    let r = router(&b0);
    let v = "2026-07-28";
    /// (case, path, headers, body, status, JSON-RPC code or 0 when forwarded)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, String, u16, i64);
    let named = |name| {
        vec![
            ("MCP-Protocol-Version", v),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", name),
        ]
    };
    let cases: Vec<Case> = vec![
        ("matching", "/mcp", named("echo"), call("echo"), 200, 0),
        (
            "matching, base64",
            "/mcp",
            named("=?base64?ZWNobw==?="),
            call("echo"),
            200,
            0,
        ),
        (
            "Mcp-Name differs",
            "/mcp",
            named("big"),
            call("echo"),
            400,
            -32020,
        ),
        (
            "base64 name differs",
            "/mcp",
            named("=?base64?ZWNoMA==?="),
            call("echo"),
            400,
            -32020,
        ),
        (
            "base64 name malformed",
            "/mcp",
            named("=?base64?ZWNobw?="),
            call("echo"),
            400,
            -32020,
        ),
        (
            "no Mcp-Method",
            "/mcp",
            vec![("MCP-Protocol-Version", v), ("Mcp-Name", "echo")],
            call("echo"),
            400,
            -32020,
        ),
        (
            "version differs from _meta",
            "/mcp",
            vec![
                ("MCP-Protocol-Version", "2026-08-01"),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "echo"),
            ],
            call("echo"),
            400,
            -32020,
        ),
        (
            "a batch",
            "/mcp",
            named("echo"),
            format!("[{}]", call("echo")),
            400,
            -32600,
        ),
    ];
    let mut c = Conn::open(&r.addr);
    for (case, path, headers, body, status, code) in &cases {
        let before = served(&b0);
        let resp = c.request("POST", path, headers, body);
        assert_eq!(resp.status, *status, "{case}: {}", resp.text());
        let json: Value = resp.json();
        if *code == 0 {
            assert_eq!(json["result"]["backend"], "b0", "{case}: {json}");
            assert_eq!(served(&b0), before + 1, "{case}");
        } else {
            assert_eq!(json["error"]["code"], *code, "{case}: {json}");
            // a batch has no one id to echo
            let id = if body.starts_with('[') {
                Value::Null
            } else {
                json!(9)
            };
            assert_eq!(json["id"], id, "{case}: the request id is echoed");
            assert_eq!(served(&b0), before, "{case}: the backend received nothing");
        }
    }
    // an Mcp-Param-* header the router does not know goes through untouched
    let mut headers = named("echo");
    headers.push(("Mcp-Param-Region", "us-west1"));
    let resp = c.request("POST", "/headers", &headers, &call("echo"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = resp.json()["headers"].clone();
    assert!(
        seen.as_array()
            .unwrap()
            .iter()
            .any(|h| h == &json!(["mcp-param-region", "us-west1"])),
        "{seen}"
    );
}

/// Without `--modern-only` a modern GET or DELETE goes to the backend (a modern one
/// answers 405), without its session fields; with it the router answers 405 itself.
fn get_and_delete_reach_the_backend_unless_modern_only() {
    let b0 = Proc::fake_backend("b0");
    let legacy = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Session-Id", "s"),
        ("Last-Event-ID", "4"),
    ];
    let r = router(&b0);
    let mut c = Conn::open(&r.addr);
    let resp = c.request("GET", "/headers", &legacy, "");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = resp.json()["headers"].to_string().to_ascii_lowercase();
    assert!(!seen.contains("mcp-session-id"), "{seen}");
    assert!(!seen.contains("last-event-id"), "{seen}");
    let before = served(&b0);
    c.request("DELETE", "/mcp", &legacy, "");
    assert_eq!(served(&b0), before + 1, "DELETE forwarded");

    let r = router_with(&b0, &["--modern-only"]);
    let mut c = Conn::open(&r.addr);
    let before = served(&b0);
    for method in ["GET", "DELETE"] {
        let resp = c.request(method, "/mcp", &legacy, "");
        assert_eq!(resp.status, 405, "{method}: {}", resp.text());
        assert_eq!(resp.header("allow"), Some("POST"), "{method}");
    }
    assert_eq!(served(&b0), before, "the backend received nothing");
    let resp = c.request(
        "POST",
        "/mcp",
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "echo"),
        ],
        &call("echo"),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// `--affinity header:Mcp-Param-Handle` (issue 16, point 3): 2026-07-28 requests
/// carrying the same handle land on the same backend, different handles spread over
/// all three; without the flag one handle is spread (the fewest requests in flight).
fn affinity_header_sends_one_handle_to_one_backend() {
    let bs: Vec<Proc> = ["b0", "b1", "b2"].map(Proc::fake_backend).into();
    let specs: Vec<String> = bs
        .iter()
        .enumerate()
        .map(|(i, b)| format!("b{i}=http://{}", b.addr))
        .collect();
    let start = |extra: &[&str]| {
        let mut args = Vec::new();
        for s in &specs {
            args.extend(["--backend", s.as_str()]);
        }
        args.extend_from_slice(extra);
        Proc::router(router_bin(), "router", &args)
    };
    /// The backend that answered a `tools/call` carrying handle `h`, over a fresh
    /// connection each time (no connection reuse hides the choice).
    fn answered_by(r: &Proc, h: &str) -> String {
        let mut c = Conn::open(&r.addr);
        let resp = c.request(
            "POST",
            "/mcp",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "echo"),
                ("Mcp-Param-Handle", h),
            ],
            &call("echo"),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        let v: Value = resp.json();
        v["result"]["backend"]
            .as_str()
            .expect("backend")
            .to_string()
    }
    let r = start(&["--affinity", "header:Mcp-Param-Handle"]);
    let mut homes = std::collections::BTreeSet::new();
    for i in 0..12 {
        let h = format!("handle-{i}");
        let first = answered_by(&r, &h);
        for _ in 0..3 {
            assert_eq!(answered_by(&r, &h), first, "{h}");
        }
        homes.insert(first);
    }
    assert_eq!(homes.len(), 3, "12 handles over 3 backends: {homes:?}");

    let r = start(&[]);
    let spread: std::collections::BTreeSet<_> =
        (0..6).map(|_| answered_by(&r, "handle-0")).collect();
    assert!(
        spread.len() > 1,
        "no affinity: one handle spreads ({spread:?})"
    );
}

/// Dual-era fleets (issue 16, point 4): with one backend configured legacy-only and
/// one modern-only, each era reaches only its own; with only the legacy one, a
/// 2026-07-28 request gets `400` `-32022` listing the versions the fleet serves.
fn each_era_reaches_only_backends_that_serve_it() {
    let old = Proc::fake_backend("old");
    let new = Proc::fake_backend("new");
    let old_spec = format!("old=http://{};eras=legacy", old.addr);
    let new_spec = format!("new=http://{};eras=modern", new.addr);
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "echo"),
    ];
    let r = Proc::router(
        router_bin(),
        "router",
        &["--backend", &old_spec, "--backend", &new_spec],
    );
    for _ in 0..4 {
        let resp = Conn::open(&r.addr).request("POST", "/mcp", &headers, &call("echo"));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["result"]["backend"], "new");
        let mut c = Conn::open(&r.addr);
        let (resp, _sid) = mcp_router_testkit::harness::initialize(&mut c, json!(1));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["result"]["backend"], "old");
    }

    let r = Proc::router(router_bin(), "router", &["--backend", &old_spec]);
    let before = served(&old);
    let resp = Conn::open(&r.addr).request("POST", "/mcp", &headers, &call("echo"));
    assert_eq!(resp.status, 400, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["id"], 9);
    assert_eq!(v["error"]["code"], -32022);
    assert_eq!(v["error"]["data"]["requested"], "2026-07-28");
    assert_eq!(
        v["error"]["data"]["supported"],
        json!(["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"])
    );
    assert_eq!(served(&old), before, "the legacy backend received nothing");
}

/// A 2026-07-28 `subscriptions/listen` stream through the router (issue 16, point 2):
/// it outlives the response timeout and the body-idle timeout (quiet gaps longer than
/// both), its `:` keep-alive comments and `X-Accel-Buffering: no` reach the client,
/// and so do the notifications after them.
fn a_listen_stream_outlives_the_timeouts_with_its_comments() {
    let b0 = Proc::fake_backend("b0");
    let r = router_with(
        &b0,
        &["--response-timeout", "1s", "--body-idle-timeout", "1s"],
    );
    let body = json!({"jsonrpc":"2.0","id":3,"method":"subscriptions/listen","params":{
        "count": 2, "gap_ms": 1300,
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
    .to_string();
    let mut c = Conn::open(&r.addr);
    let t = std::time::Instant::now();
    c.send(
        "POST",
        "/mcp",
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "subscriptions/listen"),
            ("Accept", "application/json, text/event-stream"),
        ],
        &body,
    );
    let head = c.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    let mut text = String::new();
    while let Some(chunk) = c.read_chunk() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let took = t.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(2500),
        "the stream ended early, after {took:?}: {text}"
    );
    assert!(
        text.contains("notifications/subscriptions/acknowledged"),
        "{text}"
    );
    assert_eq!(text.matches(": keep-alive\n\n").count(), 2, "{text}");
    assert!(text.contains("notifications/tools/list_changed"), "{text}");
    assert_eq!(r.count_logs("request rejected"), 0, "{:?}", r.logs());
}

mcp_router_testkit::behaviour_suite!(
    a_listen_stream_outlives_the_timeouts_with_its_comments,
    mismatched_headers_get_400_32020_and_the_backend_receives_nothing,
    get_and_delete_reach_the_backend_unless_modern_only,
    affinity_header_sends_one_handle_to_one_backend,
    each_era_reaches_only_backends_that_serve_it,
);
