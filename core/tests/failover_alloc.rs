//! The hot path with `--failover reinitialize`: a request of an established session,
//! failed over or not, allocates exactly as much as the same request with failover
//! off (nothing, in this crate's own build), counted by a counting global allocator on
//! the test's thread, harness included.

mod util;

use mcp_router_core::failover::FailoverSettings;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use util::*;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Count this thread's allocations only (the test runner's own threads allocate
    /// whenever they like).
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const REPLY: &str = r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#;

/// One request of session `sid` on the keep-alive connection, over a pooled upstream
/// connection, with the harness's buffers cleared (not dropped) afterwards.
fn request(h: &mut H, sid: &str, req: &[u8], resp: &[u8], told: &[u8]) {
    h.send(req);
    assert!(!h.connects.is_empty(), "{sid}: not forwarded");
    h.connect_ok(true);
    assert!(
        h.upstream.windows(told.len()).any(|w| w == told),
        "{sid}: the backend was not told its own id"
    );
    h.reply(resp);
    assert!(h.client.starts_with(b"HTTP/1.1 200"), "{sid}");
    h.client.clear();
    h.upstream.clear();
    h.connects.clear();
    h.released.clear();
    h.events.clear();
}

/// Allocations per request of a session, after warm-up.
fn per_request(h: &mut H, sid: &str, upstream_sid: &str) -> f64 {
    let req = post("/mcp", Some(sid), CALL);
    let resp = json_ok(&format!("Mcp-Session-Id: {upstream_sid}\r\n"), REPLY);
    let told = format!("Mcp-Session-Id: {upstream_sid}\r\n").into_bytes();
    for _ in 0..200 {
        request(h, sid, &req, &resp, &told);
    }
    let n = 2000;
    let a0 = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    for _ in 0..n {
        request(h, sid, &req, &resp, &told);
    }
    COUNTING.with(|c| c.set(false));
    (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / n as f64
}

fn init(h: &mut H, sid: &str) {
    h.send(&post("/mcp", None, INIT));
    h.connect_ok(false);
    h.reply(&json_ok(
        &format!("Mcp-Session-Id: {sid}\r\n"),
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    assert!(h.take_client().starts_with("HTTP/1.1 200"));
}

#[test]
fn an_established_request_allocates_no_more_with_failover_on() {
    // the counter counts (so a zero below means something)
    let a0 = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    std::hint::black_box(vec![1u8; 10]);
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCS.load(Ordering::Relaxed) - a0, 1);

    let mut off = H::new(2);
    init(&mut off, "s1");
    let base = per_request(&mut off, "s1", "s1");

    let mut c = config(2);
    c.failover = Some(FailoverSettings {
        window: Duration::from_secs(60),
        max_params: 16 * 1024,
        remote: false,
    });
    let mut on = H::with(c);
    init(&mut on, "s1");
    let eligible = per_request(&mut on, "s1", "s1");
    // fail it over, then measure the failed-over session (its upstream id rewritten
    // both ways)
    on.send(&post("/mcp", Some("s1"), CALL));
    on.connect_fail();
    on.connect_ok(false);
    on.reply(&json_ok(
        "Mcp-Session-Id: new-1\r\n",
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    on.connect_ok(false);
    on.reply(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    on.connect_ok(false);
    on.reply(&json_ok("Mcp-Session-Id: new-1\r\n", REPLY));
    assert!(on.take_client().contains("Mcp-Session-Id: s1\r\n"));
    let failed_over = per_request(&mut on, "s1", "new-1");
    eprintln!(
        "allocations per request: failover off {base:.2}, on {eligible:.2}, \
         failed over {failed_over:.2}"
    );
    // As many as without failover: zero when this crate is built alone; a workspace
    // build that unifies other crates' features into the dependencies counts a few per
    // request in the harness, the same with failover on or off.
    assert_eq!((eligible, failed_over), (base, base));
}
