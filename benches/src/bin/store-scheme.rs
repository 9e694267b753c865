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
//! - `model` (issue 18 point 5, the contention model): each executor alternates
//!   `WORK` ns of other work (a request's CPU besides its store op, as the load
//!   benchmark measures it) with one `Get` under the shared lock; the time in the lock
//!   section (wait + hold) at 1 and 2 executors gives the serial fraction, and Amdahl's
//!   law its bound at 8 and 32 cores.
//! - `metrics`: what the shared metrics (prometheus-client families behind `RwLock`s,
//!   histograms, the status page's windows, all cache lines every worker writes) cost
//!   per request when 1 and 2 executors record back to back.
//!
//! `cargo run --release -p mcp-router-benches --bin store-scheme [-- SECONDS [WORK_NS]]`

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use mcp_router_core::conn::Event;
use mcp_router_core::mcp::SessionKey;
use mcp_router_core::metrics::Metrics;
use mcp_router_core::{BackendId, Era, MemStore, Record, Router, StoreOp, StoreReply};
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

/// `f(i)` on `n` executors at once, executor `i` pinned to the `i`-th CPU (modulo
/// their number); the results in order.
fn on_executors<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let cpus = cpus();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            LocalExecutorBuilder::new(Placement::Fixed(cpus[i % cpus.len()]))
                .spawn(move || f(i))
                .unwrap()
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The store behind one lock, and a `Get` of each of its records.
fn locked_store() -> Arc<(Mutex<MemStore>, Vec<StoreOp>)> {
    let (s, keys) = store();
    let ops: Vec<StoreOp> = keys.into_iter().map(StoreOp::Get).collect();
    Arc::new((Mutex::new(s), ops))
}

/// Ops/s of `executors` executors hammering one locked store.
fn lock(executors: usize, secs: f64) -> (f64, f64) {
    let shared = locked_store();
    let results = on_executors(executors, move |i| {
        let sh = shared.clone();
        async move {
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
        }
    });
    let mut total = 0.0;
    let mut ns = 0.0;
    for (n, s) in results {
        total += n as f64 / s;
        ns += s * 1e9 / n as f64;
    }
    (total, ns / executors as f64)
}

/// About `ns` nanoseconds of CPU, not optimised away: the rest of a request.
fn spin(ns: u64) {
    let t = Instant::now();
    while (t.elapsed().as_nanos() as u64) < ns {
        std::hint::spin_loop();
    }
}

/// The contention model's measurement: `executors` executors each alternating `work`
/// ns of other work with one `Get` under the shared lock. Returns (requests/s in
/// total, mean ns per executor in the lock section: waiting for the lock, the op, the
/// release).
fn lock_with_work(executors: usize, secs: f64, work: u64) -> (f64, f64) {
    let shared = locked_store();
    let results = on_executors(executors, move |i| {
        let sh = shared.clone();
        async move {
            let (m, ops) = &*sh;
            let t = Instant::now();
            let (mut n, mut locked) = (0u64, Duration::ZERO);
            let mut k = i * 7919;
            while t.elapsed().as_secs_f64() < secs {
                spin(work);
                k = (k + 7919) % ops.len();
                let t0 = Instant::now();
                let r = m.lock().unwrap().execute(&ops[k], t0);
                locked += t0.elapsed();
                std::hint::black_box(r);
                n += 1;
            }
            (n, t.elapsed().as_secs_f64(), locked)
        }
    });
    let (mut total, mut ns) = (0.0, 0.0);
    for (n, s, locked) in results {
        total += n as f64 / s;
        ns += locked.as_nanos() as f64 / n as f64;
    }
    (total, ns / executors as f64)
}

/// The shared metrics of one proxied request (its `Response` event and its store
/// `Get`), recorded back to back by `executors` executors on one `Metrics`: ns per
/// request per executor.
fn metrics(executors: usize, secs: f64) -> f64 {
    let router = Arc::new(Router::new(
        Arc::new(mcp_router_benches::config(2)),
        Instant::now(),
    ));
    let m = Arc::new(Metrics::new());
    let per = on_executors(executors, move |_| {
        let (m, router) = (m.clone(), router.clone());
        async move {
            let ev = Event::Response {
                backend: BackendId(0),
                status: 200,
                latency: Duration::from_micros(150),
            };
            let op = StoreOp::Get(SessionKey::new(b"sess-0000", 256).unwrap());
            let reply = StoreReply::Found(None);
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed().as_secs_f64() < secs {
                for _ in 0..1000 {
                    m.observe(&router, &ev);
                    m.observe_store(&op, &reply, Duration::from_micros(3));
                }
                n += 1000;
            }
            t.elapsed().as_nanos() as f64 / n as f64
        }
    });
    per.iter().sum::<f64>() / per.len() as f64
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
    // The contention model.
    let work: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(15_000);
    let (x1, h1) = lock_with_work(1, secs, work);
    let (x2, h2) = lock_with_work(2, secs, work);
    // Amdahl: the lock section is the serial part of a request's time
    let sigma = h1 / (h1 + work as f64);
    let amdahl = |n: f64| n / (1.0 + sigma * (n - 1.0));
    println!(
        "model {work} ns of other work per request: 1 executor {:.0} k req/s, {h1:.0} ns in the lock section; \
         2 executors {:.0} k req/s ({:.2}x; Amdahl predicts {:.2}x), {h2:.0} ns in the lock section",
        x1 / 1e3,
        x2 / 1e3,
        x2 / x1,
        amdahl(2.0)
    );
    println!(
        "model serial fraction {:.4}: Amdahl bound {:.1}x at 8 cores, {:.1}x at 32 (one lock); {:.1}x at 32 with the store in 16 shards",
        sigma,
        amdahl(8.0),
        amdahl(32.0),
        {
            let s16 = sigma / 16.0;
            32.0 / (1.0 + s16 * 31.0)
        }
    );
    let (m1, m2) = (metrics(1, secs), metrics(2, secs));
    println!(
        "metrics one request's events: {m1:.0} ns alone, {m2:.0} ns per executor with 2 executors recording back to back (+{:.0} ns of shared-line traffic)",
        m2 - m1
    );
}
