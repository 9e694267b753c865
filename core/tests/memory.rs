//! Memory held per session record by the embedded store, counted by a global allocator
//! (bytes requested from the heap, not wall-clock: deterministic on any machine).

use mcp_router_core::mcp::SessionKey;
use mcp_router_core::{BackendId, Era, MemStore, Record, StoreOp, StoreReply};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn uuid(i: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        i,
        i & 0xffff,
        i & 0xfff,
        (i >> 3) & 0xfff,
        i.wrapping_mul(0x9e3779b97f4a7c15) >> 16
    )
}

#[test]
fn an_idle_record_costs_under_300_bytes_and_churn_returns_to_baseline() {
    let t = Instant::now();
    let mut s = MemStore::new(Duration::from_secs(7200), 4096, t);
    let rec = Record {
        backend: BackendId(1),
        era: Era::Streamable,
        client: mcp_router_core::ClientId(0),
    };
    let before = LIVE.load(Relaxed);
    const N: u64 = 100_000;
    for i in 0..N {
        let k = SessionKey::new(uuid(i).as_bytes(), 256).unwrap();
        assert_eq!(
            s.execute(&StoreOp::Insert(k, rec), t),
            StoreReply::Inserted(true)
        );
    }
    let per = (LIVE.load(Relaxed) - before) as f64 / N as f64;
    eprintln!(
        "embedded store: {per:.1} heap bytes per idle record (36-byte session ids, {N} records)"
    );
    assert!(per < 300.0, "{per} bytes per record");
    // churn: every record deleted, then 100k more lifecycles: back to where it started
    for i in 0..N {
        let k = SessionKey::new(uuid(i).as_bytes(), 256).unwrap();
        assert!(matches!(
            s.execute(&StoreOp::Delete(k), t),
            StoreReply::Deleted(Some(_))
        ));
    }
    for i in N..2 * N {
        let k = SessionKey::new(uuid(i).as_bytes(), 256).unwrap();
        s.execute(&StoreOp::Insert(k.clone(), rec), t);
        s.execute(&StoreOp::Delete(k), t);
    }
    assert!(s.is_empty());
    // one expiry tick gives the grown table back
    s.expire(t, &mut Vec::new());
    let residue = LIVE.load(Relaxed) - before;
    eprintln!("after churn and one expiry tick: {residue} bytes held");
    assert!(
        residue < 64 * 1024,
        "memory not returned after churn: {residue} bytes"
    );
}
