//! Shared pieces of mcp-router's benchmarks: a counting global allocator (each bench
//! binary installs it with `#[global_allocator]`), realistic MCP inputs, and a
//! harness: core's simulator ([`mcp_router_core::sim::Sim`]) counting bytes only, which
//! drives one connection the way a driver does (bytes in, outputs drained, store ops
//! run inline against the embedded store), with no sockets.

use mcp_router_core::Config;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A global allocator that counts heap allocations (and reallocations) and the bytes
/// requested. Install it in a binary with `#[global_allocator]`.
pub struct CountingAlloc;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        ALLOC_BYTES.fetch_add(l.size() as u64, Relaxed);
        LIVE_BYTES.fetch_add(l.size() as i64, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as i64, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        ALLOC_BYTES.fetch_add(n as u64, Relaxed);
        LIVE_BYTES.fetch_add(n as i64 - l.size() as i64, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

/// Allocations (including reallocations) so far, and bytes requested by them.
pub fn alloc_count() -> (u64, u64) {
    (ALLOCS.load(Relaxed), ALLOC_BYTES.load(Relaxed))
}

/// Heap bytes currently allocated (through [`CountingAlloc`]).
pub fn live_bytes() -> i64 {
    LIVE_BYTES.load(Relaxed)
}

/// A session id shaped like the fake backend's and most SDKs' (UUID-sized).
pub const SESSION: &str = "b0-1-0123456789abcdef-6c1f3a9e2b7d4c58";

/// A `tools/call` request of an established session with about 300 bytes of arguments.
pub fn tools_call_request(session: &str) -> Vec<u8> {
    let body = tools_call_body(300);
    format!(
        "POST /mcp HTTP/1.1\r\nHost: router.example:8080\r\nUser-Agent: mcp-bench/1\r\n\
         Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n\
         Mcp-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The same `tools/call` without a session (2025-06-18): a stateless request as the
/// router has always routed one (the body sniffed for `method`, then load-balanced).
pub fn stateless_tools_call_request() -> Vec<u8> {
    let body = tools_call_body(300);
    format!(
        "POST /mcp HTTP/1.1\r\nHost: router.example:8080\r\nUser-Agent: mcp-bench/1\r\n\
         Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n\
         Mcp-Protocol-Version: 2025-06-18\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The same `tools/call` in the 2026-07-28 era: `Mcp-Method`, `Mcp-Name` and the
/// version in `params._meta`, which the router checks against the headers.
pub fn modern_tools_call_request() -> Vec<u8> {
    let body = tools_call_body(300).replace(
        r#""name":"echo","#,
        r#""name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},"#,
    );
    format!(
        "POST /mcp HTTP/1.1\r\nHost: router.example:8080\r\nUser-Agent: mcp-bench/1\r\n\
         Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n\
         Mcp-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: echo\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A `tools/call` JSON-RPC body whose `arguments` hold about `args` bytes.
pub fn tools_call_body(args: usize) -> String {
    let text = "lorem ipsum dolor sit amet ".repeat(args / 27 + 1);
    let text = &text[..args.saturating_sub(40).max(1)];
    format!(
        r#"{{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}","n":7,"flag":true}}}}}}"#
    )
}

/// An `initialize` request (no session yet).
pub fn initialize_request() -> Vec<u8> {
    let body = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    format!(
        "POST /mcp HTTP/1.1\r\nHost: router.example:8080\r\n\
         Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A `DELETE` of the session.
pub fn delete_request(session: &str) -> Vec<u8> {
    format!(
        "DELETE /mcp HTTP/1.1\r\nHost: router.example:8080\r\nMcp-Protocol-Version: 2025-06-18\r\n\
         Mcp-Session-Id: {session}\r\n\r\n"
    )
    .into_bytes()
}

/// A backend's answer to a `tools/call` (JSON, about 150 bytes).
pub fn tools_call_response() -> Vec<u8> {
    let body = r#"{"jsonrpc":"2.0","id":42,"result":{"backend":"b0","content":[{"type":"text","text":"ok"}],"seq":3,"session":"b0-1-0123456789abcdef-6c1f3a9e2b7d4c58"}}"#;
    json_response(body, None)
}

/// A 2 KiB `initialize` answer minting `session`.
pub fn initialize_response(session: &str) -> Vec<u8> {
    let pad = "x".repeat(1800);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":0,"result":{{"protocolVersion":"2025-06-18","capabilities":{{"tools":{{"listChanged":true}}}},"serverInfo":{{"name":"b0","version":"0"}},"instructions":"{pad}"}}}}"#
    );
    json_response(&body, Some(session))
}

/// `200` with an empty body (a DELETE's answer).
pub fn empty_ok() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n".to_vec()
}

fn json_response(body: &str, session: Option<&str>) -> Vec<u8> {
    let sid = session
        .map(|s| format!("mcp-session-id: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{sid}content-length: {}\r\n\
         date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A config with `n` backends (the simulator's, [`mcp_router_core::sim::config`]),
/// sessions idle for up to 2 h, and no per-client rate.
pub fn config(n: usize) -> Config {
    let mut c = mcp_router_core::sim::config(n);
    c.session_ttl = Duration::from_secs(7200);
    // One client opens millions of sessions a second here: the rate quota would answer
    // most of them 429 and the benchmark would measure refusals. The session caps stay
    // on (admission runs; the counts are checked on every new session).
    c.limits.client_session_rate = 0;
    c
}

/// The benches drive a connection through core's one simulator, counting bytes only.
pub type Harness = mcp_router_core::sim::Sim;

/// A 32-byte key for sealed-id benchmarks (hex).
pub const BENCH_KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// [`config`] in `--session-ids sealed` mode without records (no store).
pub fn sealed_config(n: usize) -> Config {
    let mut c = config(n);
    c.session_ids = mcp_router_core::SessionIds::Sealed;
    c.session_keys = Some(Arc::new(
        mcp_router_core::KeyRing::parse(BENCH_KEY).expect("key"),
    ));
    c.session_records = false;
    c
}

/// A sealed id for `upstream` on backend `b0`, as the router with [`sealed_config`] and
/// a wall clock of `unix` would hand out.
pub fn sealed_token(upstream: &str, unix: u32) -> String {
    let ring = mcp_router_core::KeyRing::parse(BENCH_KEY).expect("key");
    let mut out = Vec::new();
    ring.seal(
        &mcp_router_core::seal::Fields {
            era: mcp_router_core::Era::Streamable,
            issued: unix,
            client: mcp_router_core::ClientId(7),
            backend: mcp_router_core::seal::name_digest("b0"),
            upstream: upstream.as_bytes(),
        },
        &[9; mcp_router_core::seal::NONCE],
        256,
        &mut out,
    )
    .expect("seal");
    String::from_utf8(out).expect("ascii")
}

/// A router with two backends ([`config`]) and one connection, counting only.
pub fn harness() -> Harness {
    Harness::counting(config(2))
}

/// Record `session` as an established session on backend 0 of `h` (through a real
/// initialize exchange).
pub fn establish(h: &mut Harness, session: &str) {
    let n = h.exchange(&initialize_request(), &initialize_response(session));
    assert!(n > 2000, "initialize not relayed");
    assert_eq!(h.store.len(), 1, "session not recorded");
}
