//! The hot path in isolation, no sockets: an established session's request through
//! `Conn` (parse the head, sniff nothing, look the session up, decide, forward, relay
//! the response), the response side that records and ends sessions, and the parsers on
//! their own (request head, JSON-RPC envelope of a 300-byte and a 64 KiB body, SSE
//! `endpoint` event, chunked framing).
//!
//! Heap allocations per operation of each item (target for the established session:
//! zero) are counted with a counting global allocator and printed before the timings.
//! For instruction counts that do not depend on machine load, run
//! `examples/hot_loop.rs` under callgrind.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, Criterion, Throughput};
use mcp_router_benches::*;
use mcp_router_core::http::{parse_request, BodyDecoder, BodyKind, HttpLimits, RequestHead};
use mcp_router_core::mcp::{endpoint_session_id, SessionKey, Sniffer, SseParser};
use mcp_router_core::metrics::Metrics;
use mcp_router_core::seal::{name_digest, Fields};
use mcp_router_core::{
    BackendId, ClientId, Era, Event, KeyRing, MemStore, Record, Router, StoreOp, StoreReply,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

/// Heap allocations (and reallocations) per call of `f`, after 1000 warm-up calls.
fn allocs_per_call(n: u64, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..1000 {
        f();
    }
    let (a0, b0) = alloc_count();
    for _ in 0..n {
        f();
    }
    let (a1, b1) = alloc_count();
    ((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64)
}

/// Allocations per operation of every hot-path item, measured with all inputs built
/// beforehand (nothing to subtract): exact, and independent of machine load.
fn report_allocations() {
    const N: u64 = 10_000;
    let mut rows: Vec<(String, (f64, f64))> = Vec::new();

    let req = tools_call_request(SESSION);
    let resp = tools_call_response();
    let mut h = harness();
    establish(&mut h, SESSION);
    rows.push((
        format!(
            "conn: established session request ({} B tools/call, {} B response relayed)",
            req.len(),
            resp.len()
        ),
        allocs_per_call(N, || {
            black_box(h.exchange(&req, &resp));
        }),
    ));

    // a request without a session: the legacy era's (sniffed for `method`), and a
    // 2026-07-28 one (read to its end, its mirrored headers checked)
    for (name, req) in [
        (
            "conn: stateless request (2025-06-18, no session)",
            stateless_tools_call_request(),
        ),
        (
            "conn: modern tools/call, headers checked (2026-07-28)",
            modern_tools_call_request(),
        ),
    ] {
        let mut h = harness();
        assert!(h.exchange(&req, &resp) > 0, "{name}: not forwarded");
        rows.push((
            format!("{name} ({} B)", req.len()),
            allocs_per_call(N, || {
                black_box(h.exchange(&req, &resp));
            }),
        ));
    }

    // response side of the session lifecycle: an initialize answer recorded, a DELETE
    // answered and the record ended (distinct sessions, inputs prepared up front)
    let init = initialize_request();
    let ok = empty_ok();
    let cases: Vec<(Vec<u8>, Vec<u8>)> = (0..1000 + N)
        .map(|i| {
            let sid = format!("b0-{i}-0123456789abcdef-6c1f3a9e2b7d4c58");
            (delete_request(&sid), initialize_response(&sid))
        })
        .collect();
    let mut h = harness();
    let mut i = 0;
    rows.push((
        "conn: session recorded and ended (initialize answer + DELETE)".into(),
        allocs_per_call(N, || {
            let (del, resp) = &cases[i];
            i += 1;
            h.exchange(&init, resp);
            black_box(h.exchange(del, &ok));
        }),
    ));

    // sealed ids: the same request through a store-less sealed replica
    let token = sealed_token(SESSION, 1_800_000_000);
    let sreq = tools_call_request(&token);
    let mut h = Harness::counting(sealed_config(2));
    rows.push((
        format!(
            "conn: established sealed session request ({} B token, no store)",
            token.len()
        ),
        allocs_per_call(N, || {
            black_box(h.exchange(&sreq, &resp));
        }),
    ));
    let (ring, fields) = seal_inputs();
    let mut out = Vec::with_capacity(512);
    rows.push((
        "seal: seal a 36 B upstream id".into(),
        allocs_per_call(N, || {
            out.clear();
            ring.seal(&fields, &[3; mcp_router_core::seal::NONCE], 256, &mut out)
                .unwrap();
            black_box(out.len());
        }),
    ));
    rows.push((
        "seal: open a sealed id".into(),
        allocs_per_call(N, || {
            black_box(ring.open(token.as_bytes(), 256).unwrap());
        }),
    ));

    let limits = HttpLimits::default();
    let head_len = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut head = RequestHead::default();
    let mut buf = BytesMut::with_capacity(4096);
    rows.push((
        "parse: request head".into(),
        allocs_per_call(N, || {
            buf.clear();
            buf.extend_from_slice(&req[..head_len]);
            let ok = parse_request(&mut buf, &limits, &mut head).unwrap();
            black_box((ok, head.header("mcp-session-id").map(|v| v.len())));
            // as `Conn` does when the exchange ends: the buffer is reused in place
            head.release();
        }),
    ));
    for (name, size) in [("sniff 300 B", 300usize), ("sniff 64 KiB", 64 * 1024)] {
        let body = tools_call_body(size);
        let mut s = Sniffer::new();
        rows.push((
            format!("parse: {name}"),
            allocs_per_call(N / 10, || {
                s.reset();
                s.feed(body.as_bytes());
                s.end();
                black_box(s.method().map(|m| m.len()));
            }),
        ));
    }
    let (mut store, gets) = store_100k();
    let now = Instant::now();
    let mut i = 0;
    rows.push((
        "parse: store lookup in 100k records".into(),
        allocs_per_call(N, || {
            i = (i + 7919) % gets.len();
            black_box(store.execute(&gets[i], now));
        }),
    ));
    let mut p = SseParser::new(8 * 1024);
    rows.push((
        "parse: SSE endpoint event".into(),
        allocs_per_call(N, || {
            p.feed(SSE_ENDPOINT, &mut |ev| {
                black_box(endpoint_session_id(ev.data).map(|s| s.len()));
            });
        }),
    ));
    let chunked = chunked_64k();
    rows.push((
        "parse: chunked 64 KiB".into(),
        allocs_per_call(N / 10, || {
            let mut d = BodyDecoder::new(BodyKind::Chunked, 4096);
            let mut n = 0;
            black_box(d.decode(&chunked, &mut |p| n += p.len()).unwrap());
        }),
    ));

    let (metrics, router, ev, op, reply) = metrics_inputs();
    rows.push((
        "metrics: one request's events (Response + store Get observed)".into(),
        allocs_per_call(N, || {
            metrics.observe(&router, &ev);
            metrics.observe_store(&op, &reply, Duration::from_micros(3));
        }),
    ));

    println!("heap allocations per operation (counting allocator, after warm-up):");
    for (name, (allocs, bytes)) in rows {
        println!("  {name:<78} {allocs:>6.2} allocations {bytes:>8.0} bytes");
    }
}

/// A key ring and the fields of a session as the router seals them.
fn seal_inputs() -> (KeyRing, Fields<'static>) {
    let ring = KeyRing::parse(BENCH_KEY).unwrap();
    let fields = Fields {
        era: Era::Streamable,
        issued: 1_800_000_000,
        client: ClientId(7),
        backend: name_digest("b0"),
        upstream: SESSION.as_bytes(),
    };
    (ring, fields)
}

/// What a driver feeds its metrics for one established-session request: the
/// `Response` event and the store `Get` with its timing.
fn metrics_inputs() -> (Metrics, Router, Event, StoreOp, StoreReply) {
    let router = Router::new(Arc::new(config(2)), Instant::now());
    let ev = Event::Response {
        backend: BackendId(0),
        status: 200,
        latency: Duration::from_micros(150),
    };
    let rec = Record {
        backend: BackendId(0),
        era: Era::Streamable,
        client: mcp_router_core::ClientId(0),
    };
    let op = StoreOp::Get(SessionKey::new(SESSION.as_bytes(), 256).unwrap());
    (Metrics::new(), router, ev, op, StoreReply::Found(Some(rec)))
}

/// An SSE `endpoint` event of a legacy server.
const SSE_ENDPOINT: &[u8] =
    b"event: endpoint\ndata: /messages?sessionId=2b7d4c58-6c1f-4a9e-8b7d-0123456789ab\n\n";

/// 64 KiB in 16 chunks of 4 KiB.
fn chunked_64k() -> Vec<u8> {
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b'x'; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    chunked
}

/// A store of 100k records and a Get op for each.
fn store_100k() -> (MemStore, Vec<StoreOp>) {
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
                    client: mcp_router_core::ClientId(0),
                },
            ),
            now,
        );
    }
    let gets = keys.iter().map(|k| StoreOp::Get(k.clone())).collect();
    (store, gets)
}

fn hot_path(c: &mut Criterion) {
    let req = tools_call_request(SESSION);
    let resp = tools_call_response();
    let mut g = c.benchmark_group("conn");
    g.throughput(Throughput::Elements(1));
    let mut h = harness();
    establish(&mut h, SESSION);
    g.bench_function("established_session_request", |b| {
        b.iter(|| black_box(h.exchange(&req, &resp)))
    });
    for (name, req) in [
        ("stateless_request", stateless_tools_call_request()),
        ("modern_checked_request", modern_tools_call_request()),
    ] {
        let mut h = harness();
        assert_eq!(
            h.exchange(&req, &resp),
            resp.len(),
            "{name}: the response is relayed unchanged"
        );
        g.bench_function(name, |b| b.iter(|| black_box(h.exchange(&req, &resp))));
    }
    let init = initialize_request();
    let mut h = harness();
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
    let token = sealed_token(SESSION, 1_800_000_000);
    let sreq = tools_call_request(&token);
    let mut hs = Harness::counting(sealed_config(2));
    g.bench_function("established_sealed_session_request", |b| {
        b.iter(|| black_box(hs.exchange(&sreq, &resp)))
    });
    g.bench_function("session_recorded_and_ended", |b| {
        b.iter(|| {
            let (_, del, resp) = &sids[(i % 4096) as usize];
            i += 1;
            h.exchange(&init, resp);
            black_box(h.exchange(del, &ok))
        })
    });
    g.finish();
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    let (ring, fields) = seal_inputs();
    let mut out = Vec::with_capacity(512);
    let mut n = 0u8;
    g.bench_function("seal", |b| {
        b.iter(|| {
            out.clear();
            n = n.wrapping_add(1);
            ring.seal(
                black_box(&fields),
                &[n; mcp_router_core::seal::NONCE],
                256,
                &mut out,
            )
            .unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("open", |b| {
        b.iter(|| black_box(ring.open(black_box(token.as_bytes()), 256).unwrap()))
    });
    g.finish();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    let (metrics, router, ev, op, reply) = metrics_inputs();
    g.bench_function("per_request", |b| {
        b.iter(|| {
            metrics.observe(&router, black_box(&ev));
            metrics.observe_store(black_box(&op), &reply, Duration::from_micros(3));
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
            let r = black_box((ok, head.header("mcp-session-id").map(|v| v.len())));
            // as `Conn` does when the exchange ends: the buffer is reused in place
            head.release();
            r
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
    let (mut store, gets) = store_100k();
    let now = Instant::now();
    let mut i = 0;
    g.throughput(Throughput::Elements(1));
    g.bench_function("store_lookup_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % gets.len();
            black_box(store.execute(&gets[i], now))
        })
    });
    let sse = SSE_ENDPOINT;
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
    let chunked = chunked_64k();
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
    report_allocations();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
