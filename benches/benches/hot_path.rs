//! The hot path in isolation, no sockets: an established session's request through
//! `Conn` (parse the head, sniff nothing, look the session up, decide, forward, relay
//! the response), the response side that records and ends sessions, and the parsers on
//! their own (request head, JSON-RPC envelope of a 300-byte and a 64 KiB body, SSE
//! `endpoint` event, chunked framing).
//!
//! Heap allocations per established-session request are counted with a counting global
//! allocator and printed before the timings (target: zero).

use bytes::BytesMut;
use criterion::{black_box, criterion_group, Criterion, Throughput};
use mcp_router_benches::*;
use mcp_router_core::http::{parse_request, BodyDecoder, BodyKind, HttpLimits, RequestHead};
use mcp_router_core::mcp::{endpoint_session_id, SessionKey, Sniffer, SseParser};
use mcp_router_core::{BackendId, Era, MemStore, Record, StoreOp};
use std::time::{Duration, Instant};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

/// Allocations per established-session request, after warm-up.
fn count_allocations() {
    let req = tools_call_request(SESSION);
    let resp = tools_call_response();
    let mut h = Harness::new();
    h.establish(SESSION);
    for _ in 0..1000 {
        h.exchange(&req, &resp);
    }
    const N: u64 = 10_000;
    let (a0, b0) = alloc_count();
    for _ in 0..N {
        black_box(h.exchange(&req, &resp));
    }
    let (a1, b1) = alloc_count();
    println!(
        "hot path, established session (tools/call, {} B request, {} B response): \
         {:.2} heap allocations and {:.0} heap bytes per request",
        req.len(),
        resp.len(),
        (a1 - a0) as f64 / N as f64,
        (b1 - b0) as f64 / N as f64
    );
    // session lifecycle response side: initialize recorded + DELETE ended
    let init = initialize_request();
    let (a0, _) = alloc_count();
    for i in 0..N {
        let sid = format!("b0-{i}-0123456789abcdef-6c1f3a9e2b7d4c58");
        let del = delete_request(&sid);
        h.exchange(&init, &initialize_response(&sid));
        h.exchange(&del, &empty_ok());
    }
    let (a1, _) = alloc_count();
    // the test itself makes 5 allocations per iteration (sid, del, response body,
    // its format temporaries); subtracted after measuring them
    let (c0, _) = alloc_count();
    for i in 0..N {
        let sid = format!("b0-{i}-0123456789abcdef-6c1f3a9e2b7d4c58");
        black_box((delete_request(&sid), initialize_response(&sid)));
    }
    let (c1, _) = alloc_count();
    println!(
        "session start + end (initialize recorded, DELETE ended): {:.2} heap allocations \
         per lifecycle in the core",
        ((a1 - a0) as f64 - (c1 - c0) as f64) / N as f64
    );
}

fn hot_path(c: &mut Criterion) {
    let req = tools_call_request(SESSION);
    let resp = tools_call_response();
    let mut g = c.benchmark_group("conn");
    g.throughput(Throughput::Elements(1));
    let mut h = Harness::new();
    h.establish(SESSION);
    g.bench_function("established_session_request", |b| {
        b.iter(|| black_box(h.exchange(&req, &resp)))
    });
    let init = initialize_request();
    let mut h = Harness::new();
    let mut i = 0u64;
    let sids: Vec<(String, Vec<u8>, Vec<u8>)> = (0..4096)
        .map(|i| {
            let sid = format!("b0-{i}-0123456789abcdef-6c1f3a9e2b7d4c58");
            let del = delete_request(&sid);
            let resp = initialize_response(&sid);
            (sid, del, resp)
        })
        .collect();
    let ok = empty_ok();
    g.bench_function("session_recorded_and_ended", |b| {
        b.iter(|| {
            let (_, del, resp) = &sids[(i % 4096) as usize];
            i += 1;
            h.exchange(&init, resp);
            black_box(h.exchange(del, &ok))
        })
    });
    g.finish();
}

fn parsers(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let limits = HttpLimits::default();
    let req = tools_call_request(SESSION);
    let head_len = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut head = RequestHead::default();
    let mut buf = BytesMut::with_capacity(4096);
    g.throughput(Throughput::Bytes(head_len as u64));
    g.bench_function("request_head", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&req[..head_len]);
            let ok = parse_request(&mut buf, &limits, &mut head).unwrap();
            black_box((ok, head.header("mcp-session-id").map(|v| v.len())))
        })
    });
    for (name, size) in [("sniff_300B", 300usize), ("sniff_64KiB", 64 * 1024)] {
        let body = tools_call_body(size);
        let mut s = Sniffer::new();
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                s.reset();
                s.feed(body.as_bytes());
                s.end();
                black_box((s.method().map(|m| m.len()), s.id().map(|i| i.len())))
            })
        });
    }
    let mut store = MemStore::new(Duration::from_secs(7200), 4096, Instant::now());
    let now = Instant::now();
    let keys: Vec<SessionKey> = (0..100_000)
        .map(|i| SessionKey::new(format!("s-{i:08}-6c1f3a9e2b7d4c58").as_bytes(), 256).unwrap())
        .collect();
    for k in &keys {
        store.execute(
            &StoreOp::Insert(
                k.clone(),
                Record {
                    backend: BackendId(0),
                    era: Era::Streamable,
                },
            ),
            now,
        );
    }
    let gets: Vec<StoreOp> = keys.iter().map(|k| StoreOp::Get(k.clone())).collect();
    let mut i = 0;
    g.throughput(Throughput::Elements(1));
    g.bench_function("store_lookup_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % gets.len();
            black_box(store.execute(&gets[i], now))
        })
    });
    let sse =
        b"event: endpoint\ndata: /messages?sessionId=2b7d4c58-6c1f-4a9e-8b7d-0123456789ab\n\n";
    let mut p = SseParser::new(8 * 1024);
    g.throughput(Throughput::Bytes(sse.len() as u64));
    g.bench_function("sse_endpoint_event", |b| {
        b.iter(|| {
            let mut found = 0;
            p.feed(sse, &mut |ev| {
                if ev.event == Some(b"endpoint") {
                    found = endpoint_session_id(ev.data).map_or(0, |s| s.len());
                }
            });
            black_box(found)
        })
    });
    // 64 KiB in 16 chunks of 4 KiB
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b'x'; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    g.throughput(Throughput::Bytes(chunked.len() as u64));
    g.bench_function("chunked_64KiB", |b| {
        b.iter(|| {
            let mut d = BodyDecoder::new(BodyKind::Chunked, 4096);
            let mut n = 0;
            let used = d.decode(&chunked, &mut |p| n += p.len()).unwrap();
            assert!(d.is_done());
            black_box((used, n))
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path, parsers);

fn main() {
    count_allocations();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
