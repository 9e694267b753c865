//! One in-process driver of a [`Conn`], as quinn-proto's `Pair` is for its tests: virtual
//! time, a scripted client and scripted backends, the embedded store answering store
//! ops (or a test answering them by hand). Core's tests, the criterion benches and the
//! `session_*` fuzz targets drive connections through it, so the driving contract is
//! checked in one place:
//!
//! - nothing is written upstream unless a connection was asked for and reported
//!   connected, and a connection is asked for only to a configured backend;
//! - a deadline the connection reports is acted on at its own time, and once acted on
//!   it does not stay due (a driver would spin);
//! - every store op is answered in order, once;
//! - the connection goes quiet: feeding and draining it ends.
//!
//! Connections may share router, store and clock ([`Sim::open`], [`Sim::select`]); with
//! [`Sim::read_size`], sent bytes are read as a driver with a fixed buffer reads them;
//! [`Sim::log`] keeps every output and store answer in order, for observers that check
//! more than the driving contract (the fuzz targets).
//!
//! [`Sim::counting`] keeps only byte counts (no copies, no event list): the benches
//! measure the core, not the simulator.

use crate::conn::{Buffers, Conn, Event, Output};
use crate::mcp::SessionKey;
use crate::router::Router;
use crate::store::{MemStore, Record, StoreOp, StoreReply};
use crate::{Backend, Config, EndCause};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The wall clock the simulated router is told it is (unix seconds).
pub const UNIX_NOW: u64 = 1_800_000_000;

/// A session key from a string (test ids are short and valid).
pub fn key(s: &str) -> SessionKey {
    SessionKey::new(s.as_bytes(), 256).expect("a valid session id")
}

/// `n` backends `b0..` at `http://10.0.0.<i+1>:80<i>`, a 600 s session TTL.
pub fn config(n: usize) -> Config {
    let mut c = Config::default();
    for i in 0..n {
        c.backends.push(
            Backend::parse(
                &format!("http://10.0.0.{}:80{}", i + 1, i),
                Some(&format!("b{i}")),
            )
            .expect("a valid backend"),
        );
    }
    c.session_ttl = Duration::from_secs(600);
    c
}

/// What the simulator carried out, in order, with the index of the connection.
#[derive(Debug)]
pub enum Step {
    /// An output of the connection, already carried out.
    Out(usize, Output),
    /// A store op of the connection answered (`Unavailable`: failed on purpose).
    Stored(usize, StoreOp, StoreReply),
}

/// A connection, its router and store, and what it did.
pub struct Sim {
    /// The shared router.
    pub router: Arc<Router>,
    /// The embedded store that answers store ops (shared by all connections).
    pub store: MemStore,
    /// The connection under test (the selected one).
    pub conn: Conn,
    /// Its index among the connections ([`Sim::open`]).
    pub id: usize,
    /// The connections, parked while another is selected (this one's slot: `None`).
    pub parked: Vec<Option<Sim>>,
    /// Its read buffers (what the driver read from each side).
    pub bufs: Buffers,
    /// Virtual time (shared).
    pub now: Instant,
    /// Keep copies of what was written and of events (else counts only).
    pub record: bool,
    /// `Some(n)`: sent bytes wait in the backlogs below, read while the connection
    /// wants them, `n` at most at a time. `None`: read at once, whole.
    pub read_size: Option<usize>,
    /// Client bytes sent, not read yet.
    pub client_backlog: Vec<u8>,
    /// Backend bytes sent on the open connection, not read yet.
    pub upstream_backlog: Vec<u8>,
    /// The client closed its side; delivered once its backlog is read.
    pub client_eof_pending: bool,
    /// The backend closed its side; delivered once its backlog is read.
    pub upstream_eof_pending: bool,
    /// Every output and store answer, in order (shared), when `Some`.
    pub log: Option<Vec<Step>>,
    /// Bytes written to the client so far (when recording).
    pub client: Vec<u8>,
    /// Bytes written upstream since the last connect (when recording).
    pub upstream: Vec<u8>,
    /// Bytes written to the client, counted.
    pub to_client: usize,
    /// Bytes written upstream, counted.
    pub to_upstream: usize,
    /// Connections asked for: backend index, fresh (when recording).
    pub connects: Vec<(u16, bool)>,
    /// A connection was asked for and not answered yet.
    pub connect_pending: bool,
    /// The upstream connection is open (reported connected, not released).
    pub connected: bool,
    /// Releases: reuse or not (when recording).
    pub released: Vec<bool>,
    /// The client connection was closed.
    pub closed: bool,
    /// Events (when recording).
    pub events: Vec<Event>,
    /// When false, store ops queue up in `ops` for [`Sim::store_reply`] or
    /// [`Sim::flush_store`] (shared). Ops also queue behind ops already queued.
    pub auto_store: bool,
    /// Answer the next store op `Unavailable` instead of running it (shared).
    pub fail_next: bool,
    /// Store ops waiting for a reply.
    pub ops: VecDeque<StoreOp>,
    /// Session-record ops emitted (`Get`, `Insert`, `Delete`, `Touch`; not the
    /// per-client quota's `Admit` when a session opens).
    pub store_ops: usize,
}

impl Sim {
    /// `n` backends ([`config`]), recording.
    pub fn new(n: usize) -> Sim {
        Self::with(config(n))
    }

    /// A router with this configuration and one connection from 192.0.2.7, recording.
    pub fn with(c: Config) -> Sim {
        Self::at(c, Instant::now())
    }

    /// [`Sim::with`], its clock starting at `now`.
    pub fn at(c: Config, now: Instant) -> Sim {
        let store = MemStore::new(c.session_ttl, 100, now);
        let router = Arc::new(Router::new(Arc::new(c), now));
        router.set_unix_time(now, UNIX_NOW);
        router.set_entropy(*b"0123456789abcdef");
        let peer = "192.0.2.7".parse().ok();
        Self::conn_of(router, store, now, peer)
    }

    fn conn_of(router: Arc<Router>, store: MemStore, now: Instant, peer: Option<IpAddr>) -> Sim {
        Sim {
            conn: Conn::new(router.clone(), peer, "http", now),
            router,
            store,
            id: 0,
            parked: vec![None],
            bufs: Buffers::default(),
            now,
            record: true,
            read_size: None,
            client_backlog: Vec::new(),
            upstream_backlog: Vec::new(),
            client_eof_pending: false,
            upstream_eof_pending: false,
            log: None,
            client: Vec::new(),
            upstream: Vec::new(),
            to_client: 0,
            to_upstream: 0,
            connects: Vec::new(),
            connect_pending: false,
            connected: false,
            released: Vec::new(),
            closed: false,
            events: Vec::new(),
            auto_store: true,
            fail_next: false,
            ops: VecDeque::new(),
            store_ops: 0,
        }
    }

    /// For benchmarks: this configuration, counting only, with read buffers of a
    /// driver's fixed size.
    pub fn counting(c: Config) -> Sim {
        let mut s = Self::with(c);
        s.record = false;
        s.bufs.client.reserve(16 * 1024);
        s.bufs.upstream.reserve(16 * 1024);
        s
    }

    /// A fresh client connection sharing router and store.
    pub fn reconnect(&mut self) {
        self.conn = Conn::new(self.router.clone(), None, "http", self.now);
        self.bufs = Buffers::default();
        self.client.clear();
        self.upstream.clear();
        self.connects.clear();
        self.released.clear();
        self.client_backlog.clear();
        self.upstream_backlog.clear();
        self.client_eof_pending = false;
        self.upstream_eof_pending = false;
        self.ops.clear();
        self.closed = false;
        self.connected = false;
        self.connect_pending = false;
    }

    /// Another client connection (no peer address), sharing router, store and clock,
    /// with this one's settings; selected. Returns its index.
    pub fn open(&mut self) -> usize {
        let store = MemStore::new(Duration::from_secs(1), 1, self.now);
        let mut s = Self::conn_of(self.router.clone(), store, self.now, None);
        s.id = self.parked.len();
        s.record = self.record;
        s.read_size = self.read_size;
        self.parked.push(Some(s));
        self.select(self.parked.len() - 1);
        self.id
    }

    /// Make connection `i` ([`Sim::open`]) the one driven.
    pub fn select(&mut self, i: usize) {
        if i == self.id {
            return;
        }
        let mut other = self.parked[i].take().expect("an open connection");
        std::mem::swap(self, &mut other);
        // the shared parts stay
        std::mem::swap(&mut self.parked, &mut other.parked);
        std::mem::swap(&mut self.store, &mut other.store);
        std::mem::swap(&mut self.log, &mut other.log);
        self.now = other.now;
        self.auto_store = other.auto_store;
        self.fail_next = other.fail_next;
        self.store_ops = other.store_ops;
        let j = other.id;
        self.parked[j] = Some(other);
    }

    /// One driver read from each backlog the connection wants to read; whether any.
    fn read(&mut self) -> bool {
        let Some(n) = self.read_size else {
            return false;
        };
        let (b, c) = (&mut self.bufs, &self.conn);
        let client = !self.client_backlog.is_empty() && c.wants_client_read(b);
        if client {
            let n = n.min(self.client_backlog.len());
            b.client.extend(self.client_backlog.drain(..n));
        }
        let up = self.connected && !self.upstream_backlog.is_empty() && c.wants_upstream_read(b);
        if up {
            let n = n.min(self.upstream_backlog.len());
            b.upstream.extend(self.upstream_backlog.drain(..n));
        }
        client || up
    }

    /// Feed what was read and carry out every output until the connection is quiet;
    /// an end of stream pending is delivered once its side's backlog is read and the
    /// outputs before it are carried out.
    pub fn drain(&mut self) {
        for _ in 0..100_000 {
            let mut any = self.read();
            self.conn.handle_io(&mut self.bufs, self.now);
            while let Some(o) = self.conn.poll_output() {
                any = true;
                self.carry(o);
            }
            if any {
                continue;
            }
            if self.client_eof_pending && self.client_backlog.is_empty() {
                self.client_eof_pending = false;
                self.conn.handle_client_eof(self.now);
            } else if self.upstream_eof_pending && self.upstream_backlog.is_empty() {
                self.upstream_eof_pending = false;
                self.conn.handle_upstream_eof(self.now);
            } else {
                return;
            }
        }
        panic!("the connection never goes quiet");
    }

    fn carry(&mut self, o: Output) {
        match &o {
            Output::ToClient(b) => {
                self.to_client += b.len();
                if self.record {
                    self.client.extend_from_slice(b);
                }
            }
            Output::ToUpstream(b) => {
                assert!(self.connected, "wrote upstream while not connected");
                self.to_upstream += b.len();
                if self.record {
                    self.upstream.extend_from_slice(b);
                }
            }
            Output::Connect { backend, fresh } => {
                assert!(self.router.is_configured(*backend), "an unknown backend");
                if self.record {
                    self.connects.push((backend.0, *fresh));
                }
                self.connect_pending = true;
                (self.connected, self.upstream_eof_pending) = (false, false);
                self.upstream_backlog.clear();
            }
            Output::ReleaseUpstream { reuse } => {
                if self.record {
                    self.released.push(*reuse);
                }
                (self.connected, self.upstream_eof_pending) = (false, false);
                self.connect_pending = false;
                self.upstream_backlog.clear();
                self.bufs.upstream.clear();
            }
            Output::Store(op) => {
                if !matches!(op, StoreOp::Admit(_)) {
                    self.store_ops += 1;
                }
                if self.auto_store && self.ops.is_empty() {
                    self.answer(op);
                } else {
                    self.ops.push_back(op.clone());
                }
            }
            Output::CloseClient => self.closed = true,
            Output::Event(e) => {
                if self.record {
                    self.events.push(e.clone());
                } else {
                    std::hint::black_box(e);
                }
            }
        }
        if let Some(log) = &mut self.log {
            log.push(Step::Out(self.id, o));
        }
    }

    /// Answer `op` from the store (or `Unavailable`, [`Sim::fail_next`]).
    fn answer(&mut self, op: &StoreOp) {
        let r = if std::mem::take(&mut self.fail_next) {
            StoreReply::Unavailable
        } else {
            self.store.execute(op, self.now)
        };
        if let Some(log) = &mut self.log {
            log.push(Step::Stored(self.id, op.clone(), r.clone()));
        }
        self.conn.handle_store_reply(r, self.now);
    }

    /// Answer every queued store op of every connection from the store, in order.
    pub fn flush_store(&mut self) {
        let me = self.id;
        for i in 0..self.parked.len() {
            self.select(i);
            while let Some(op) = self.ops.pop_front() {
                self.answer(&op);
                self.drain();
            }
        }
        self.select(me);
    }

    /// The client sends `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        if self.read_size.is_some() {
            self.client_backlog.extend_from_slice(bytes);
        } else {
            self.bufs.client.extend_from_slice(bytes);
        }
        self.drain();
    }

    /// The connection asked for is ready (`reused`: from the pool).
    pub fn connect_ok(&mut self, reused: bool) {
        self.connected = true;
        self.connect_pending = false;
        self.upstream.clear();
        self.conn.handle_upstream_connected(reused, self.now);
        self.drain();
    }

    /// The connection asked for failed.
    pub fn connect_fail(&mut self) {
        self.connect_pending = false;
        self.conn.handle_upstream_failed(self.now);
        self.drain();
    }

    /// The backend sends `bytes`.
    pub fn reply(&mut self, bytes: &[u8]) {
        if self.read_size.is_some() {
            self.upstream_backlog.extend_from_slice(bytes);
        } else {
            self.bufs.upstream.extend_from_slice(bytes);
        }
        self.drain();
    }

    /// The backend closes its side (of the open connection: after what it sent).
    pub fn upstream_eof(&mut self) {
        if self.connected {
            self.upstream_eof_pending = true;
            self.drain();
        } else {
            self.drain();
            self.connect_pending = false;
            self.conn.handle_upstream_eof(self.now);
            self.drain();
        }
    }

    /// The client closes its side (after what it sent).
    pub fn client_eof(&mut self) {
        self.client_eof_pending = true;
        self.drain();
    }

    /// The next deadline of any connection, and which.
    fn next_deadline(&self) -> Option<(Instant, usize)> {
        let others = self.parked.iter().flatten();
        others
            .chain([self])
            .filter_map(|s| Some((s.conn.poll_timeout()?, s.id)))
            .min()
    }

    /// Move the clock forward, firing every deadline of every connection on the way at
    /// its own time, as a driver's timer would; a deadline still due right after it
    /// fired fails.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        let me = self.id;
        let mut same = 0;
        let mut last = None;
        while let Some((t, i)) = self.next_deadline() {
            if t > end {
                break;
            }
            // two deadlines may be due at one instant (each firing acts on one), but
            // not one that firing does not move
            same = if last == Some((t, i)) { same + 1 } else { 0 };
            assert!(
                same < 8,
                "a deadline stays due after handle_timeout: a driver would spin"
            );
            last = Some((t, i));
            self.select(i);
            self.now = self.now.max(t);
            self.conn.handle_timeout(self.now);
            self.drain();
        }
        self.select(me);
        self.now = end;
        self.drain();
    }

    /// Expire idle session records, as the driver's expiry tick does.
    pub fn expire(&mut self) {
        let mut out = Vec::new();
        self.store.expire(self.now, &mut out);
        for (_, rec) in out {
            self.router.session_ended(rec.backend);
        }
    }

    /// Answer the oldest queued store op (with `auto_store` off).
    pub fn store_reply(&mut self, r: StoreReply) {
        self.ops.pop_front().expect("an op was pending");
        self.conn.handle_store_reply(r, self.now);
        self.drain();
    }
    /// What the client got since the last call.
    pub fn take_client(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.client)).expect("UTF-8")
    }

    /// What went upstream since the last call (or connect).
    pub fn take_upstream(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.upstream)).expect("UTF-8")
    }

    /// The store's record of `s`, without sliding it.
    pub fn lookup(&mut self, s: &str) -> Option<Record> {
        match self.store.execute(&StoreOp::Get(key(s)), self.now) {
            StoreReply::Found(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// Statuses of the requests the router answered itself.
    pub fn rejected(&self) -> Vec<u16> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Rejected { status, .. } => Some(*status),
                _ => None,
            })
            .collect()
    }

    /// Causes of the sessions that ended.
    pub fn ended(&self) -> Vec<EndCause> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::SessionEnded { cause, .. } => Some(*cause),
                _ => None,
            })
            .collect()
    }

    /// One whole exchange: `request` from the client, a pooled connection if one is
    /// asked for, `response` from the backend. Returns the bytes written to the client.
    pub fn exchange(&mut self, request: &[u8], response: &[u8]) -> usize {
        let before = self.to_client;
        self.send(request);
        if self.connect_pending {
            self.connect_ok(true);
        }
        self.reply(response);
        self.to_client - before
    }
}

/// One in-process driver of the stdio [`Bridge`](crate::stdio::Bridge): virtual time,
/// scripted HTTP exchanges and children. Core's bridge tests and the `stdio_bridge`
/// fuzz target drive it through this, so the bridge's driving contract is checked in
/// one place after every call:
///
/// - the bridge's own tables are consistent ([`Bridge::assert_consistent`](crate::stdio::Bridge::assert_consistent));
/// - an exchange completes once (a response, or a stream's end), and nothing is sent
///   for it after that;
/// - a child id is never reused, and a child is killed at most once;
/// - [`BridgeSim::finish`]: after a shutdown, no session and no child is left, and every
///   child spawned was killed or exited.
pub struct BridgeSim {
    /// The bridge under test.
    pub bridge: crate::stdio::Bridge,
    /// Virtual time.
    pub now: Instant,
    /// Session ids the bridge handed out (from headers and legacy endpoint events), up
    /// to 16.
    pub sids: Vec<Vec<u8>>,
    /// Children spawned.
    pub live: std::collections::HashSet<crate::stdio::ChildId>,
    /// Children killed or exited.
    pub exited: std::collections::HashSet<crate::stdio::ChildId>,
    killed: std::collections::HashMap<crate::stdio::ChildId, u32>,
    /// Exchanges not completed yet.
    pub open: std::collections::HashSet<crate::stdio::ExchangeId>,
    done: std::collections::HashSet<crate::stdio::ExchangeId>,
    closed: std::collections::HashSet<crate::stdio::ExchangeId>,
}

impl BridgeSim {
    /// A bridge with `cfg`.
    pub fn new(cfg: crate::stdio::BridgeConfig) -> BridgeSim {
        BridgeSim {
            bridge: crate::stdio::Bridge::new(cfg),
            now: Instant::now(),
            sids: Vec::new(),
            live: Default::default(),
            exited: Default::default(),
            killed: Default::default(),
            open: Default::default(),
            done: Default::default(),
            closed: Default::default(),
        }
    }

    /// A request arrives; its exchange and the outputs.
    pub fn request(
        &mut self,
        r: &crate::stdio::Request<'_>,
        random: &[u8; 32],
    ) -> (crate::stdio::ExchangeId, Vec<crate::stdio::BridgeOutput>) {
        let x = self.bridge.handle_request(r, random, self.now);
        self.open.insert(x);
        (x, self.drain())
    }

    /// Child `c` wrote `line` on its stdout.
    pub fn child_line(
        &mut self,
        c: crate::stdio::ChildId,
        line: &[u8],
    ) -> Vec<crate::stdio::BridgeOutput> {
        self.bridge.handle_child_line(c, line, self.now);
        self.drain()
    }

    /// Child `c` exited (`how`: as the driver describes it).
    pub fn child_exit(
        &mut self,
        c: crate::stdio::ChildId,
        how: &str,
    ) -> Vec<crate::stdio::BridgeOutput> {
        self.bridge.handle_child_exit(c, how, self.now);
        self.exited.insert(c);
        self.drain()
    }

    /// The client of exchange `x` went away.
    pub fn exchange_closed(
        &mut self,
        x: crate::stdio::ExchangeId,
    ) -> Vec<crate::stdio::BridgeOutput> {
        self.bridge.handle_exchange_closed(x, self.now);
        self.open.remove(&x);
        self.closed.insert(x);
        self.drain()
    }

    /// The stream of exchange `x` overflowed its buffer.
    pub fn stream_overflow(
        &mut self,
        x: crate::stdio::ExchangeId,
    ) -> Vec<crate::stdio::BridgeOutput> {
        self.bridge.handle_stream_overflow(x, self.now);
        self.drain()
    }

    /// Move the clock forward by `d` and fire what is due.
    pub fn advance(&mut self, d: Duration) -> Vec<crate::stdio::BridgeOutput> {
        self.now += d;
        self.bridge.handle_timeout(self.now);
        self.drain()
    }

    /// Begin a graceful shutdown.
    pub fn shutdown(&mut self) -> Vec<crate::stdio::BridgeOutput> {
        self.bridge.shutdown(self.now);
        self.drain()
    }

    /// Shut down, let every grace period pass, and check that nothing is left.
    pub fn finish(&mut self) {
        self.shutdown();
        for s in [1, 10, 100, 1000] {
            self.advance(Duration::from_secs(s));
        }
        assert_eq!(
            self.bridge.session_count(),
            0,
            "sessions left after shutdown"
        );
        assert_eq!(self.bridge.child_count(), 0, "children left after shutdown");
        for c in &self.live {
            assert!(
                self.exited.contains(c),
                "child {c:?} spawned and neither killed nor exited"
            );
        }
    }

    /// Every output of the last call, checked against the contract.
    pub fn drain(&mut self) -> Vec<crate::stdio::BridgeOutput> {
        use crate::stdio::BridgeOutput as O;
        self.bridge.assert_consistent();
        let mut out = Vec::new();
        while let Some(o) = self.bridge.poll_output() {
            match &o {
                O::Respond {
                    exchange, headers, ..
                } => {
                    self.complete(*exchange);
                    self.learn(headers);
                }
                O::StartStream { exchange, headers } => {
                    assert!(!self.done.contains(exchange), "stream after completion");
                    self.learn(headers);
                }
                O::Event { exchange, data } => {
                    assert!(!self.done.contains(exchange), "event after completion");
                    // a legacy endpoint event carries the session id in its URI
                    if let Some(i) = data.windows(10).position(|w| w == b"sessionId=") {
                        let id: Vec<u8> = data[i + 10..]
                            .iter()
                            .take_while(|c| c.is_ascii_graphic() && **c != b'&')
                            .copied()
                            .collect();
                        if !id.is_empty() && !self.sids.contains(&id) && self.sids.len() < 16 {
                            self.sids.push(id);
                        }
                    }
                }
                O::EndStream { exchange } => self.complete(*exchange),
                O::Spawn { child, .. } => {
                    assert!(
                        !self.live.contains(child) && !self.exited.contains(child),
                        "child id {child:?} reused"
                    );
                    self.live.insert(*child);
                }
                O::Kill { child } => {
                    let k = self.killed.entry(*child).or_default();
                    *k += 1;
                    assert_eq!(*k, 1, "child {child:?} killed twice");
                    self.exited.insert(*child);
                }
                O::ToChild { child, .. } => {
                    assert!(
                        self.live.contains(child),
                        "a line for child {child:?}, never spawned"
                    );
                }
                O::Log(_) => {}
            }
            out.push(o);
        }
        out
    }

    fn complete(&mut self, x: crate::stdio::ExchangeId) {
        if self.closed.contains(&x) {
            return;
        }
        assert!(self.done.insert(x), "exchange {x:?} completed twice");
        self.open.remove(&x);
    }

    fn learn(&mut self, headers: &[(&'static str, String)]) {
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("mcp-session-id") && self.sids.len() < 16 {
                self.sids.push(v.as_bytes().to_vec());
            }
        }
    }
}
