//! The established-session exchange of `benches/hot_path.rs` in a plain loop, for
//! profilers whose counts do not depend on machine load:
//!
//! ```sh
//! cargo build --release -p mcp-router-benches --example hot_loop
//! valgrind --tool=callgrind target/release/examples/hot_loop established 10000
//! valgrind --tool=dhat target/release/examples/hot_loop established 10000
//! ```
//!
//! Modes: `established` (tools/call of a recorded session through to the response
//! relayed), `lifecycle` (initialize recorded + DELETE ended). The loop runs 1000
//! warm-up iterations, then N; subtract a run with N = 0 to get the per-iteration
//! cost exactly.

use mcp_router_benches::*;
use std::hint::black_box;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "established".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let mut h = Harness::new();
    h.establish(SESSION);
    match mode.as_str() {
        "established" => {
            let req = tools_call_request(SESSION);
            let resp = tools_call_response();
            for _ in 0..1000 {
                h.exchange(&req, &resp);
            }
            let (a0, _) = alloc_count();
            for _ in 0..n {
                black_box(h.exchange(&req, &resp));
            }
            let (a1, _) = alloc_count();
            println!("{} allocations in {n} requests", a1 - a0);
        }
        "lifecycle" => {
            let init = initialize_request();
            let ok = empty_ok();
            let cases: Vec<(Vec<u8>, Vec<u8>)> = (0..1000u64 + n.min(100_000))
                .map(|i| {
                    let sid = format!("b0-{i}-0123456789abcdef-6c1f3a9e2b7d4c58");
                    (delete_request(&sid), initialize_response(&sid))
                })
                .collect();
            let mut a0 = 0;
            for (i, (del, resp)) in cases.iter().enumerate() {
                if i == 1000 {
                    a0 = alloc_count().0;
                }
                h.exchange(&init, resp);
                black_box(h.exchange(del, &ok));
            }
            let a1 = alloc_count().0;
            println!(
                "{} allocations in {} lifecycles",
                a1 - a0,
                cases.len() - 1000
            );
        }
        m => panic!("unknown mode {m}"),
    }
}
