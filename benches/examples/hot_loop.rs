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
//! relayed), `lifecycle` (initialize recorded + DELETE ended), `stateless` and `modern`
//! (a sessionless tools/call of 2025-06-18, and of 2026-07-28 with its mirrored headers
//! checked), and the items of
//! `benches/hot_path.rs` on their own: `head`, `sniff300`, `sniff64k`, `store100k`,
//! `sse`, `chunked`, `metrics`; sealed session ids: `seal`, `open` and `sealed` (an
//! established session's request through a store-less sealed router). The loop runs 1000 warm-up iterations, then N;
//! subtract a run with N = 0 to get the per-iteration cost exactly.

use bytes::BytesMut;
use mcp_router_benches::*;
use mcp_router_core::http::{parse_request, BodyDecoder, BodyKind, HttpLimits, RequestHead};
use mcp_router_core::mcp::{endpoint_session_id, SessionKey, Sniffer, SseParser};
use mcp_router_core::metrics::Metrics;
use mcp_router_core::{BackendId, Era, Event, MemStore, Record, Router, StoreOp, StoreReply};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 1000 warm-up calls, then `n`, printing the allocations of the `n`.
fn run(n: u64, mut f: impl FnMut()) {
    for _ in 0..1000 {
        f();
    }
    let (a0, _) = alloc_count();
    for _ in 0..n {
        f();
    }
    let (a1, _) = alloc_count();
    println!("{} allocations in {n} iterations", a1 - a0);
}

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "established".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let mut h = harness();
    establish(&mut h, SESSION);
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
        "stateless" | "modern" => {
            // a request without a session: 2025-06-18 (sniffed for `method`), or
            // 2026-07-28 (read to its end, its mirrored headers checked)
            let req = if mode == "modern" {
                modern_tools_call_request()
            } else {
                stateless_tools_call_request()
            };
            let resp = tools_call_response();
            run(n, || {
                black_box(h.exchange(&req, &resp));
            });
        }
        "lifecycle" => {
            // ids are reused round-robin: each lifecycle deletes its record
            let init = initialize_request();
            let ok = empty_ok();
            let cases: Vec<(Vec<u8>, Vec<u8>)> = (0..1000u64)
                .map(|i| {
                    let sid = format!("b0-{i}-0123456789abcdef-6c1f3a9e2b7d4c58");
                    (delete_request(&sid), initialize_response(&sid))
                })
                .collect();
            let mut i = 0;
            run(n, || {
                let (del, resp) = &cases[i % cases.len()];
                i += 1;
                h.exchange(&init, resp);
                black_box(h.exchange(del, &ok));
            });
        }
        "head" => {
            let req = tools_call_request(SESSION);
            let head_len = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let limits = HttpLimits::default();
            let mut head = RequestHead::default();
            let mut buf = BytesMut::with_capacity(4096);
            run(n, || {
                buf.clear();
                buf.extend_from_slice(&req[..head_len]);
                let ok = parse_request(&mut buf, &limits, &mut head).unwrap();
                black_box((ok, head.header("mcp-session-id").map(|v| v.len())));
                head.release();
            });
        }
        "sniff300" | "sniff64k" => {
            let body = tools_call_body(if mode == "sniff300" { 300 } else { 64 * 1024 });
            let mut s = Sniffer::new();
            run(n, || {
                s.reset();
                s.feed(body.as_bytes());
                s.end();
                black_box((s.method().map(|m| m.len()), s.id().map(|i| i.len())));
            });
        }
        "store100k" => {
            let now = Instant::now();
            let mut store = MemStore::new(Duration::from_secs(7200), 4096, now);
            let rec = Record {
                backend: BackendId(0),
                era: Era::Streamable,
                client: mcp_router_core::ClientId(0),
            };
            let gets: Vec<StoreOp> = (0..100_000)
                .map(|i| {
                    let k = SessionKey::new(format!("s-{i:08}-6c1f3a9e2b7d4c58").as_bytes(), 256)
                        .unwrap();
                    store.execute(&StoreOp::Insert(k.clone(), rec), now);
                    StoreOp::Get(k)
                })
                .collect();
            let mut i = 0;
            run(n, || {
                i = (i + 7919) % gets.len();
                black_box(store.execute(&gets[i], now));
            });
        }
        "sse" => {
            let sse = b"event: endpoint\ndata: /messages?sessionId=2b7d4c58-6c1f-4a9e-8b7d-0123456789ab\n\n";
            let mut p = SseParser::new(8 * 1024);
            run(n, || {
                p.feed(sse, &mut |ev| {
                    black_box(endpoint_session_id(ev.data).map(|s| s.len()));
                });
            });
        }
        "chunked" => {
            let mut chunked = Vec::new();
            for _ in 0..16 {
                chunked.extend_from_slice(b"1000\r\n");
                chunked.extend_from_slice(&[b'x'; 4096]);
                chunked.extend_from_slice(b"\r\n");
            }
            chunked.extend_from_slice(b"0\r\n\r\n");
            run(n, || {
                let mut d = BodyDecoder::new(BodyKind::Chunked, 4096);
                let mut got = 0;
                black_box(d.decode(&chunked, &mut |p| got += p.len()).unwrap());
            });
        }
        "metrics" => {
            let router = Router::new(Arc::new(config(2)), Instant::now());
            let metrics = Metrics::new();
            let ev = Event::Response {
                backend: BackendId(0),
                status: 200,
                latency: Duration::from_micros(150),
            };
            let op = StoreOp::Get(SessionKey::new(SESSION.as_bytes(), 256).unwrap());
            let reply = StoreReply::Found(Some(Record {
                backend: BackendId(0),
                era: Era::Streamable,
                client: mcp_router_core::ClientId(0),
            }));
            run(n, || {
                metrics.observe(&router, black_box(&ev));
                metrics.observe_store(&op, &reply, Duration::from_micros(3));
            });
        }
        "seal" | "open" | "sealed" => {
            let ring = mcp_router_core::KeyRing::parse(BENCH_KEY).unwrap();
            let fields = mcp_router_core::seal::Fields {
                era: Era::Streamable,
                issued: 1_800_000_000,
                client: mcp_router_core::ClientId(7),
                backend: mcp_router_core::seal::name_digest("b0"),
                upstream: SESSION.as_bytes(),
            };
            let token = sealed_token(SESSION, 1_800_000_000);
            if mode == "sealed" {
                let mut hs = Harness::counting(sealed_config(2));
                let req = tools_call_request(&token);
                let resp = tools_call_response();
                run(n, || {
                    black_box(hs.exchange(&req, &resp));
                });
            } else if mode == "seal" {
                let mut out = Vec::with_capacity(512);
                run(n, || {
                    out.clear();
                    ring.seal(&fields, &[3; mcp_router_core::seal::NONCE], 256, &mut out)
                        .unwrap();
                    black_box(out.len());
                });
            } else {
                run(n, || {
                    black_box(ring.open(black_box(token.as_bytes()), 256).unwrap());
                });
            }
        }
        m => panic!("unknown mode {m}"),
    }
}
