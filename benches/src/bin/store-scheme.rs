//! store-scheme: what the glommio frontend's embedded-store scheme costs, measured on
//! glommio executors pinned one per CPU (see docs/scaling.md, "Thread-per-core and the
//! embedded store").
//!
//! - `lock`: every executor runs `Get` (the one store op of an established-session
//!   request) on one shared `Mutex<MemStore>` as fast as it can: the worst-case
//!   contention of the scheme in use (a real request does ~25 us of other work).
//! - `hop`: the alternative, routing each op to the executor that owns the session (by
//!   hash): the round trip of one op to another executor over glommio's
//!   `shared_channel` and back, one at a time (latency) and 32 in flight (throughput).
//!
//! `cargo run --release -p mcp-router-benches --bin store-scheme [-- SECONDS]`

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use mcp_router_core::mcp::SessionKey;
use mcp_router_core::{BackendId, Era, MemStore, Record, StoreOp};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RECORDS: usize = 100_000;

fn store() -> (MemStore, Vec<SessionKey>) {
    let now = Instant::now();
    let mut s = MemStore::new(Duration::from_secs(7200), 4096, now);
    let keys: Vec<SessionKey> = (0..RECORDS)
        .map(|i| SessionKey::new(format!("sess-{i:08}-abcdefabcdef").as_bytes(), 256).unwrap())
        .collect();
    let rec = Record {
        backend: BackendId(0),
        era: Era::Streamable,
        client: mcp_router_core::ClientId(0),
    };
    for k in &keys {
        s.execute(&StoreOp::Insert(k.clone(), rec), now);
    }
    (s, keys)
}

fn cpus() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Ops/s of `executors` executors hammering one locked store.
fn lock(executors: usize, secs: f64) -> (f64, f64) {
    let (s, keys) = store();
    let ops: Vec<StoreOp> = keys.into_iter().map(StoreOp::Get).collect();
    let shared = Arc::new((Mutex::new(s), ops));
    let cpus = cpus();
    let handles: Vec<_> = (0..executors)
        .map(|i| {
            let sh = shared.clone();
            let cpu = cpus[i % cpus.len()];
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .spawn(move || async move {
                    let (m, ops) = &*sh;
                    let t = Instant::now();
                    let mut n = 0u64;
                    let mut k = i * 7919;
                    while t.elapsed().as_secs_f64() < secs {
                        for _ in 0..1000 {
                            k = (k + 7919) % ops.len();
                            let r = m.lock().unwrap().execute(&ops[k], Instant::now());
                            std::hint::black_box(r);
                            n += 1;
                        }
                    }
                    (n, t.elapsed().as_secs_f64())
                })
                .unwrap()
        })
        .collect();
    let mut total = 0.0;
    let mut ns = 0.0;
    for h in handles {
        let (n, s) = h.join().unwrap();
        total += n as f64 / s;
        ns += s * 1e9 / n as f64;
    }
    (total, ns / executors as f64)
}

/// Round trip of an op to another executor and back: (ns one at a time, ops/s with
/// 32 in flight).
fn hop(secs: f64) -> (f64, f64) {
    let (req_tx, req_rx) = shared_channel::new_bounded::<usize>(1024);
    let (rep_tx, rep_rx) = shared_channel::new_bounded::<usize>(1024);
    let cpus = cpus();
    let owner = LocalExecutorBuilder::new(Placement::Fixed(cpus[1 % cpus.len()]))
        .spawn(move || async move {
            let (mut s, keys) = store();
            let ops: Vec<StoreOp> = keys.into_iter().map(StoreOp::Get).collect();
            let rx = req_rx.connect().await;
            let tx = rep_tx.connect().await;
            while let Some(k) = rx.recv().await {
                let r = s.execute(&ops[k % ops.len()], Instant::now());
                std::hint::black_box(r);
                if tx.send(k).await.is_err() {
                    break;
                }
            }
        })
        .unwrap();
    let asker = LocalExecutorBuilder::new(Placement::Fixed(cpus[0]))
        .spawn(move || async move {
            let tx = req_tx.connect().await;
            let rx = rep_rx.connect().await;
            let half = secs / 2.0;
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed().as_secs_f64() < half {
                tx.send(n as usize).await.unwrap();
                rx.recv().await.unwrap();
                n += 1;
            }
            let one_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
            let t = Instant::now();
            let mut m = 0u64;
            while t.elapsed().as_secs_f64() < half {
                for i in 0..32 {
                    tx.send(i).await.unwrap();
                }
                for _ in 0..32 {
                    rx.recv().await.unwrap();
                }
                m += 32;
            }
            (one_ns, m as f64 / t.elapsed().as_secs_f64())
        })
        .unwrap();
    let r = asker.join().unwrap();
    let _ = owner.join();
    r
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    println!(
        "store-scheme: {RECORDS} records, StoreOp::Get, {secs} s per case, CPUs {:?}",
        cpus()
    );
    for e in [1, 2] {
        let (ops, ns) = lock(e, secs);
        println!(
            "lock  {e} executor(s): {:.2} M ops/s in total, {:.0} ns per op per executor",
            ops / 1e6,
            ns
        );
    }
    let (one, piped) = hop(secs);
    println!("hop   to another executor and back: {one:.0} ns one at a time; {:.2} M ops/s with 32 in flight", piped / 1e6);
}
