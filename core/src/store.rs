//! The session store interface, and the embedded in-memory store.
//!
//! The core never touches a store itself. A connection hands its driver a [`StoreOp`];
//! the driver runs it against whatever store it has (the embedded [`MemStore`] below,
//! or a remote one such as Redis) and feeds the [`StoreReply`] back, in the order the
//! ops were emitted. So a remote store fits without any change to routing logic.

use crate::failover::Failover;
use crate::limits::{Admission, AdmitRequest, Bucket, ClientId};
use crate::mcp::SessionKey;
use crate::router::BackendId;
use indexmap::IndexMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which transport era a session belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Era {
    /// Streamable HTTP (2025-03-26 to 2025-11-25): `Mcp-Session-Id` header.
    Streamable,
    /// Legacy HTTP+SSE (2024-11-05): session id in the message endpoint's query.
    LegacySse,
}

/// What the router remembers about a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The backend that minted the session.
    pub backend: BackendId,
    /// The session's transport era.
    pub era: Era,
    /// The client that opened it (for the per-client session quota).
    pub client: ClientId,
}

/// An operation for the driver to run against its session store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Read the record and slide its idle deadline (Redis: `GETEX key EX ttl`).
    /// Replies [`StoreReply::Found`].
    Get(SessionKey),
    /// Create the record unless one exists (Redis: `SET key value NX EX ttl`). Replies
    /// [`StoreReply::Inserted`].
    Insert(SessionKey, Record),
    /// Remove the record. Replies [`StoreReply::Deleted`].
    Delete(SessionKey),
    /// Slide the idle deadline of a session whose stream is open but quiet (Redis:
    /// `EXPIRE key ttl`). Replies [`StoreReply::Touched`].
    Touch(SessionKey),
    /// May this client open one more session? Checks the caps it carries against the
    /// live sessions (all, and the client's) and takes a token from the client's
    /// bucket. Replies [`StoreReply::Admitted`].
    Admit(AdmitRequest),
    /// `--failover reinitialize`: [`StoreOp::Insert`] with what a failover needs (the
    /// client's `initialize` body). Replies [`StoreReply::Inserted`]. Redis keeps the
    /// body sealed with the session key ring's sealing key, beside the record.
    InsertFailover(SessionKey, Record, Arc<Failover>),
    /// A failover is about to happen with a store whose lookups leave the `initialize`
    /// body out ([`crate::failover::FailoverSettings::remote`]): read the session's whole
    /// failover state. Replies [`StoreReply::FailoverState`].
    LoadFailover(SessionKey),
    /// A failover happened: the record now names `record.backend` and `state` (its new
    /// upstream id), if its state is still of generation `from` (another connection did
    /// not fail it over first). Replies [`StoreReply::FailedOver`].
    FailOver {
        /// The session (the client's id).
        key: SessionKey,
        /// The record with the new backend.
        record: Record,
        /// The new state (generation `from + 1`).
        state: Arc<Failover>,
        /// The generation the failover started from.
        from: u32,
    },
}

/// The outcome of a [`StoreOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreReply {
    /// `Get`: the record, or `None` when there is none.
    Found(Option<Record>),
    /// `Insert`: `true` if created, `false` if a record already existed (the session
    /// id was minted twice; the existing record is kept).
    Inserted(bool),
    /// `Delete`: the removed record, if there was one.
    Deleted(Option<Record>),
    /// `Touch`: whether the record existed.
    Touched(bool),
    /// `Admit`: the verdict.
    Admitted(Admission),
    /// `Get` of a record that carries failover state (only with `--failover`).
    FoundFailover(Record, Arc<Failover>),
    /// `LoadFailover`: the session's failover state (`None`: it has none, or it could
    /// not be opened, e.g. sealed by a key no longer in the ring: not eligible).
    FailoverState(Option<Arc<Failover>>),
    /// `FailOver`: whether it was stored (`false`: the record is gone, or another
    /// failover of it came first).
    FailedOver(bool),
    /// The store could not be reached or did not answer in time.
    Unavailable,
}

/// Records the table keeps room for however empty it gets.
const SHRINK_FLOOR: usize = 512;

#[derive(Clone, Copy, Debug)]
struct Entry {
    record: Record,
    /// Idle deadline, in sixteenths of a second since the store's epoch (rounded up):
    /// 4 bytes that last 8.5 years of uptime, precise to 62.5 ms.
    deadline: u32,
}

/// The embedded in-memory session store: a hash map with a sliding idle deadline per
/// record, expired by a bounded sweep.
///
/// Memory per record is the key (64 bytes, the id inline when it is at most
/// [`INLINE_SESSION_ID_LEN`](crate::mcp::INLINE_SESSION_ID_LEN) bytes, so no allocation
/// per record) plus 8 bytes of record and deadline, plus the map's hash and index:
/// 103.5 heap bytes per record for 36-byte UUID session ids, measured by
/// `tests/memory.rs` (84.5 when keys were boxed strings, at one allocation per record). The
/// expiry tick shrinks the table once it is three-quarters empty, so memory returns
/// after a spike of sessions.
///
/// Expiry: [`MemStore::expire`] walks the map with a cursor and examines at most
/// `batch + 4 × (records inserted since the last call)` records per call (never more
/// than one full pass). The work of a tick is therefore bounded, and amortised O(1) per
/// inserted record; and the sweep keeps up with any session churn: with `i` inserts per
/// tick and a TTL of `T` ticks, a full pass over `n` records takes at most `n / 4i`
/// ticks, so a record outlives its deadline by at most that many and the table holds at
/// most about `4/3 · i · T` records (a fixed `batch` alone falls behind, and memory
/// grows without bound, once sessions start faster than `batch` per tick). A record
/// read after its deadline but before the sweep reached it is treated as absent (and
/// removed) at once.
#[derive(Debug)]
pub struct MemStore {
    map: IndexMap<SessionKey, Entry>,
    ttl_ticks: u32,
    epoch: Instant,
    cursor: usize,
    /// The cursor of [`MemStore::end_backends`]'s sweep.
    end_cursor: usize,
    batch: usize,
    /// Records inserted since the last sweep: each adds 4 to the next sweep's budget.
    inserted: usize,
    /// Records found expired by a lookup before the sweep reached them; handed out by
    /// the next [`MemStore::expire`] so their end is reported like any expiry.
    lazily_expired: Vec<(SessionKey, Record)>,
    /// Live records per client (absent: none).
    per_client: HashMap<ClientId, u32>,
    /// Session-creation token buckets per client (absent: full).
    buckets: HashMap<ClientId, Bucket>,
    /// Size of `buckets` at which full buckets are forgotten.
    prune_buckets_at: usize,
    /// `--failover reinitialize`: per record that has it, the client's `initialize`
    /// body and the session's current upstream id. A map of its own, so that records
    /// cost nothing more when failover is off (and a lookup checks it only when it is
    /// not empty).
    failover: HashMap<SessionKey, Arc<Failover>>,
}

/// Buckets kept before full ones are forgotten (and at least this many afterwards).
const BUCKETS_FLOOR: usize = 65_536;

impl MemStore {
    /// A store whose records live `ttl` past their last use. `epoch` is any instant not
    /// after the first `now` the store sees; `batch` bounds the work of one expiry tick.
    pub fn new(ttl: Duration, batch: usize, epoch: Instant) -> MemStore {
        MemStore {
            map: IndexMap::new(),
            ttl_ticks: Self::to_ticks(ttl).max(1),
            epoch,
            cursor: 0,
            end_cursor: 0,
            batch: batch.max(1),
            inserted: 0,
            lazily_expired: Vec::new(),
            per_client: HashMap::new(),
            buckets: HashMap::new(),
            prune_buckets_at: BUCKETS_FLOOR,
            failover: HashMap::new(),
        }
    }

    /// Number of records held (including expired ones the sweep has not reached).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The record held for `key`, expired or not, without sliding it (for the fuzz
    /// targets' checks). Not part of the API.
    #[doc(hidden)]
    pub fn peek(&self, key: &str) -> Option<Record> {
        self.map.get(key).map(|e| e.record)
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Deadlines are counted in ticks of 1/16 s.
    const TICKS_PER_SEC: u64 = 16;

    fn to_ticks(d: Duration) -> u32 {
        let t = d.as_secs().saturating_mul(Self::TICKS_PER_SEC)
            + u64::from(d.subsec_nanos()) * Self::TICKS_PER_SEC / 1_000_000_000;
        t.min(u64::from(u32::MAX / 2)) as u32
    }

    fn ticks(&self, now: Instant) -> u32 {
        Self::to_ticks(now.saturating_duration_since(self.epoch))
    }

    /// Run one operation. Never [`StoreReply::Unavailable`].
    pub fn execute(&mut self, op: &StoreOp, now: Instant) -> StoreReply {
        let t = self.ticks(now);
        // `t` is rounded down: one more tick makes every record live at least its TTL
        // (and at most 1/16 s more), however close to a tick boundary it was used.
        let deadline = t + self.ttl_ticks + 1;
        match op {
            StoreOp::Get(k) => match self.slide(k, t, deadline) {
                Some(rec) if !self.failover.is_empty() => match self.failover.get(k) {
                    Some(f) => StoreReply::FoundFailover(rec, f.clone()),
                    None => StoreReply::Found(Some(rec)),
                },
                found => StoreReply::Found(found),
            },
            StoreOp::Touch(k) => StoreReply::Touched(self.slide(k, t, deadline).is_some()),
            StoreOp::Insert(k, record) => self.insert(k, record, None, t, deadline),
            StoreOp::InsertFailover(k, record, f) => {
                self.insert(k, record, Some(f.clone()), t, deadline)
            }
            StoreOp::LoadFailover(k) => StoreReply::FailoverState(
                self.map
                    .get(k)
                    .filter(|e| e.deadline > t)
                    .and_then(|_| self.failover.get(k).cloned()),
            ),
            StoreOp::FailOver {
                key,
                record,
                state,
                from,
            } => {
                let Some(rec) = self.slide(key, t, deadline) else {
                    return StoreReply::FailedOver(false);
                };
                if self.failover.get(key).map(|f| f.generation) != Some(*from)
                    || rec.client != record.client
                {
                    return StoreReply::FailedOver(false);
                }
                if let Some(e) = self.map.get_mut(key) {
                    e.record = *record;
                }
                self.failover.insert(key.clone(), state.clone());
                StoreReply::FailedOver(true)
            }
            StoreOp::Delete(k) => match self.map.swap_remove_entry(k) {
                Some((key, e)) if e.deadline > t => {
                    self.removed(key, &e.record);
                    StoreReply::Deleted(Some(e.record))
                }
                Some((key, e)) => {
                    let key = self.removed(key, &e.record);
                    self.lazily_expired.push((key, e.record));
                    StoreReply::Deleted(None)
                }
                None => StoreReply::Deleted(None),
            },
            StoreOp::Admit(a) => StoreReply::Admitted(self.admit(a, now)),
        }
    }

    /// The caps of `a`, checked against this store's records, and a token taken from
    /// the client's bucket (only when every cap allows the session).
    fn admit(&mut self, a: &AdmitRequest, now: Instant) -> Admission {
        let held = self.per_client.get(&a.client).copied().unwrap_or(0);
        if let Some(refused) = a.caps(self.map.len() as u64, u64::from(held)) {
            return refused;
        }
        if a.rate == 0 {
            return Admission::Admit;
        }
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if self.buckets.len() >= self.prune_buckets_at {
            self.buckets
                .retain(|_, b| !b.is_full_at(a.rate, a.burst, ms));
            self.prune_buckets_at = (self.buckets.len() * 2).max(BUCKETS_FLOOR);
        }
        let b = self
            .buckets
            .entry(a.client)
            .or_insert_with(|| Bucket::full(a.burst, ms));
        match b.take(a.rate, a.burst, ms) {
            Ok(()) => Admission::Admit,
            Err(wait_ms) => Admission::ClientRate(wait_ms),
        }
    }

    fn insert(
        &mut self,
        k: &SessionKey,
        record: &Record,
        failover: Option<Arc<Failover>>,
        t: u32,
        deadline: u32,
    ) -> StoreReply {
        if self.slide(k, t, deadline).is_some() {
            return StoreReply::Inserted(false);
        }
        self.map.insert(
            k.clone(),
            Entry {
                record: *record,
                deadline,
            },
        );
        if let Some(f) = failover {
            self.failover.insert(k.clone(), f);
        }
        *self.per_client.entry(record.client).or_default() += 1;
        self.inserted += 1;
        StoreReply::Inserted(true)
    }

    /// A record left the map: it no longer counts for its client.
    fn forget(&mut self, r: &Record) {
        if let Some(n) = self.per_client.get_mut(&r.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&r.client);
            }
        }
    }

    /// Live records held for `client` (for tests and the status page).
    pub fn client_sessions(&self, client: ClientId) -> u32 {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    /// Look up a live record and move its deadline; an expired one is removed.
    fn slide(&mut self, k: &SessionKey, t: u32, deadline: u32) -> Option<Record> {
        let idx = self.map.get_index_of(k)?;
        let (_, e) = self.map.get_index_mut(idx)?;
        if e.deadline > t {
            e.deadline = deadline;
            return Some(e.record);
        }
        // Expired but not yet swept: it is gone now, and its end is reported by the
        // next `expire` call.
        let (key, e) = self.map.swap_remove_index(idx)?;
        let key = self.removed(key, &e.record);
        self.lazily_expired.push((key, e.record));
        None
    }

    /// A record left the map: it no longer counts for its client, and its failover
    /// state goes with it. Returns the id its end is reported (and reaped upstream)
    /// by: the backend's own, which after a failover is no longer the key.
    fn removed(&mut self, key: SessionKey, record: &Record) -> SessionKey {
        self.forget(record);
        if self.failover.is_empty() {
            return key;
        }
        match self.failover.remove(&key).and_then(|f| f.upstream.clone()) {
            Some(up) => up,
            None => key,
        }
    }

    /// End the records of `backends` (a draining backend past its drain timeout),
    /// examining at most `batch` records per call: a sweep of its own, with its own
    /// cursor, so a full pass over `n` records takes `n / batch` calls. Appends the
    /// ended records to `out` and returns how many. A no-op for an empty `backends`.
    pub fn end_backends(
        &mut self,
        backends: &[BackendId],
        out: &mut Vec<(SessionKey, Record)>,
    ) -> usize {
        if backends.is_empty() {
            return 0;
        }
        let before = out.len();
        let budget = self.batch.min(self.map.len());
        let mut examined = 0;
        while examined < budget && !self.map.is_empty() {
            if self.end_cursor >= self.map.len() {
                self.end_cursor = 0;
            }
            examined += 1;
            let ends = match self.map.get_index(self.end_cursor) {
                Some((_, e)) => backends.contains(&e.record.backend),
                None => break,
            };
            if ends {
                if let Some((k, e)) = self.map.swap_remove_index(self.end_cursor) {
                    let k = self.removed(k, &e.record);
                    out.push((k, e.record));
                }
            } else {
                self.end_cursor += 1;
            }
        }
        out.len() - before
    }

    /// Expire up to `batch` records whose deadline has passed (examining at most
    /// `batch` records), appending them to `out`. Also hands over records found expired
    /// by lookups since the last call. Returns how many were appended.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(SessionKey, Record)>) -> usize {
        let before = out.len();
        out.append(&mut self.lazily_expired);
        let t = self.ticks(now);
        let budget = self
            .batch
            .saturating_add(self.inserted.saturating_mul(4))
            .min(self.map.len());
        self.inserted = 0;
        let mut examined = 0;
        while examined < budget && !self.map.is_empty() {
            if self.cursor >= self.map.len() {
                self.cursor = 0;
            }
            examined += 1;
            let expired = match self.map.get_index(self.cursor) {
                Some((_, e)) => e.deadline <= t,
                None => break,
            };
            if expired {
                // swap_remove moves the last record into `cursor`: examine it next.
                if let Some((k, e)) = self.map.swap_remove_index(self.cursor) {
                    let k = self.removed(k, &e.record);
                    out.push((k, e.record));
                }
            } else {
                self.cursor += 1;
            }
        }
        // After a spike, give the table back: shrink once it is three-quarters empty
        // (never below `SHRINK_FLOOR` records, about 50 KiB with inline keys).
        let cap = self.map.capacity();
        if cap > SHRINK_FLOOR && self.map.len() < cap / 4 {
            self.map.shrink_to((self.map.len() * 2).max(SHRINK_FLOOR));
        }
        let cap = self.failover.capacity();
        if cap > SHRINK_FLOOR && self.failover.len() < cap / 4 {
            self.failover
                .shrink_to((self.failover.len() * 2).max(SHRINK_FLOOR));
        }
        out.len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SessionKey {
        SessionKey::new(s.as_bytes(), 256).unwrap()
    }
    const R0: Record = Record {
        backend: BackendId(0),
        era: Era::Streamable,
        client: ClientId(0),
    };
    const R1: Record = Record {
        backend: BackendId(1),
        era: Era::LegacySse,
        client: ClientId(1),
    };

    #[test]
    fn insert_get_delete() {
        let t = Instant::now();
        let mut s = MemStore::new(Duration::from_secs(60), 10, t);
        assert_eq!(
            s.execute(&StoreOp::Get(key("a")), t),
            StoreReply::Found(None)
        );
        assert_eq!(
            s.execute(&StoreOp::Insert(key("a"), R0), t),
            StoreReply::Inserted(true)
        );
        // minted twice: detected, not overwritten
        assert_eq!(
            s.execute(&StoreOp::Insert(key("a"), R1), t),
            StoreReply::Inserted(false)
        );
        assert_eq!(
            s.execute(&StoreOp::Get(key("a")), t),
            StoreReply::Found(Some(R0))
        );
        assert_eq!(
            s.execute(&StoreOp::Delete(key("a")), t),
            StoreReply::Deleted(Some(R0))
        );
        assert_eq!(
            s.execute(&StoreOp::Delete(key("a")), t),
            StoreReply::Deleted(None)
        );
        assert!(s.is_empty());
    }

    #[test]
    fn ttl_slides_on_use() {
        let t = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut s = MemStore::new(ttl, 10, t);
        s.execute(&StoreOp::Insert(key("a"), R0), t);
        s.execute(&StoreOp::Insert(key("b"), R1), t);
        let t50 = t + Duration::from_secs(50);
        assert_eq!(
            s.execute(&StoreOp::Get(key("a")), t50),
            StoreReply::Found(Some(R0))
        );
        let t100 = t + Duration::from_secs(100);
        let mut out = Vec::new();
        assert_eq!(s.expire(t100, &mut out), 1);
        assert_eq!(out, vec![(key("b"), R1)]);
        assert_eq!(
            s.execute(&StoreOp::Touch(key("a")), t100),
            StoreReply::Touched(true)
        );
        assert_eq!(
            s.execute(&StoreOp::Get(key("a")), t + Duration::from_secs(159)),
            StoreReply::Found(Some(R0))
        );
        // read after its deadline but before any sweep: absent, and reported once
        let late = t + Duration::from_secs(300);
        assert_eq!(
            s.execute(&StoreOp::Get(key("a")), late),
            StoreReply::Found(None)
        );
        assert!(s.is_empty());
        out.clear();
        assert_eq!(s.expire(late, &mut out), 1);
        assert_eq!(out, vec![(key("a"), R0)]);
        out.clear();
        assert_eq!(s.expire(late, &mut out), 0);
    }

    #[test]
    fn expiry_work_is_bounded_per_tick() {
        let t = Instant::now();
        let mut s = MemStore::new(Duration::from_secs(10), 100, t);
        for i in 0..1000 {
            s.execute(&StoreOp::Insert(key(&format!("s{i}")), R0), t);
        }
        // one live record that must survive every tick
        let t5 = t + Duration::from_secs(5);
        let later = t + Duration::from_secs(11);
        s.execute(&StoreOp::Get(key("s500")), t5);
        let mut out = Vec::new();
        // the inserts' credit is spent by a tick where nothing has expired yet
        assert_eq!(s.expire(t5, &mut out), 0);
        let mut ticks = 0;
        while s.len() > 1 {
            let n = s.expire(later, &mut out);
            assert!(n <= 100, "tick expired {n} > batch");
            ticks += 1;
            assert!(ticks < 100, "sweep does not make progress");
        }
        assert_eq!(out.len(), 999);
        assert_eq!(
            s.execute(&StoreOp::Get(key("s500")), later),
            StoreReply::Found(Some(R0))
        );
    }

    /// Coarse deadlines must not cut a TTL short: a record used just before a tick
    /// boundary lives its full TTL (and at most a tick more).
    #[test]
    fn a_record_lives_at_least_its_ttl() {
        let epoch = Instant::now();
        let mut s = MemStore::new(Duration::from_secs(1), 10, epoch);
        let used = epoch + Duration::from_millis(999);
        s.execute(&StoreOp::Insert(key("a"), R0), used);
        let within = used + Duration::from_millis(999);
        assert_eq!(
            s.execute(&StoreOp::Get(key("a")), within),
            StoreReply::Found(Some(R0)),
            "expired {:?} after its last use, TTL 1 s",
            within - used
        );
        // the Get above slid it: gone one TTL and one tick after that use
        let past = within + Duration::from_millis(1000 + 63);
        assert_eq!(
            s.execute(&StoreOp::Get(key("a")), past),
            StoreReply::Found(None)
        );
    }

    /// Sessions that are never deleted, started faster than `batch` per tick: the
    /// sweep's budget grows with the inserts, so the table stays bounded by about
    /// 4/3 of a TTL's worth of sessions instead of growing for ever.
    #[test]
    fn sweep_keeps_up_with_churn_faster_than_batch() {
        let t0 = Instant::now();
        let (per_tick, ttl) = (1000usize, 5u64);
        let mut s = MemStore::new(Duration::from_secs(ttl), 100, t0);
        let mut out = Vec::new();
        let mut peak = 0;
        for tick in 0..200u64 {
            let now = t0 + Duration::from_secs(tick);
            for i in 0..per_tick {
                let k = key(&format!("s{tick}-{i}"));
                assert_eq!(
                    s.execute(&StoreOp::Insert(k, R0), now),
                    StoreReply::Inserted(true)
                );
            }
            let n = s.expire(now, &mut out);
            assert!(
                n <= 100 + 4 * per_tick,
                "tick did {n}: more than its budget"
            );
            if tick > 2 * ttl {
                peak = peak.max(s.len());
            }
        }
        let bound = per_tick * ttl as usize * 4 / 3 + 2 * per_tick;
        assert!(peak <= bound, "table grew to {peak} > {bound}");
        assert!(
            peak >= per_tick * ttl as usize,
            "expired before the TTL: {peak}"
        );
        assert_eq!(out.len() + s.len(), 200 * per_tick);
    }

    #[test]
    fn a_drained_backends_records_end_in_bounded_sweeps() {
        let t = Instant::now();
        let mut s = MemStore::new(Duration::from_secs(60), 10, t);
        for i in 0..25 {
            let rec = if i % 5 == 0 { R1 } else { R0 };
            s.execute(&StoreOp::Insert(key(&format!("s{i}")), rec), t);
        }
        let mut out = Vec::new();
        assert_eq!(s.end_backends(&[], &mut out), 0);
        let mut calls = 0;
        while out.len() < 20 {
            let n = s.end_backends(&[BackendId(0)], &mut out);
            assert!(n <= 10, "one call ended {n} > batch");
            calls += 1;
            assert!(calls < 10, "the sweep does not make progress");
        }
        assert!(out.iter().all(|(_, r)| r.backend == BackendId(0)));
        assert_eq!(s.len(), 5, "the other backend's records stay");
        assert_eq!(s.client_sessions(ClientId(0)), 0);
        assert_eq!(s.client_sessions(ClientId(1)), 5);
        assert_eq!(s.end_backends(&[BackendId(0)], &mut out), 0);
    }

    #[test]
    fn delete_of_expired_record_reports_it_as_expired() {
        let t = Instant::now();
        let mut s = MemStore::new(Duration::from_secs(10), 10, t);
        s.execute(&StoreOp::Insert(key("a"), R0), t);
        let late = t + Duration::from_secs(20);
        assert_eq!(
            s.execute(&StoreOp::Delete(key("a")), late),
            StoreReply::Deleted(None)
        );
        let mut out = Vec::new();
        assert_eq!(s.expire(late, &mut out), 1);
    }

    #[test]
    fn admission_counts_live_sessions_per_client_and_rate() {
        let t = Instant::now();
        let mut s = MemStore::new(Duration::from_secs(10), 64, t);
        let a = |client: u64, max_sessions, client_max_sessions, rate| {
            StoreOp::Admit(AdmitRequest {
                client: ClientId(client),
                max_sessions,
                client_max_sessions,
                rate,
                burst: 2,
            })
        };
        let ok = StoreReply::Admitted(Admission::Admit);
        for i in 0..2u64 {
            assert_eq!(s.execute(&a(7, 3, 2, 0), t), ok);
            let r = Record {
                client: ClientId(7),
                ..R0
            };
            s.execute(&StoreOp::Insert(key(&format!("s{i}")), r), t);
        }
        assert_eq!(s.client_sessions(ClientId(7)), 2);
        // the client's cap, while another client still gets in
        assert_eq!(
            s.execute(&a(7, 3, 2, 0), t),
            StoreReply::Admitted(Admission::ClientSessions)
        );
        assert_eq!(s.execute(&a(8, 3, 2, 0), t), ok);
        s.execute(&StoreOp::Insert(key("other"), R0), t);
        // the global cap
        assert_eq!(
            s.execute(&a(9, 3, 2, 0), t),
            StoreReply::Admitted(Admission::Sessions)
        );
        // a delete frees the client's slot, an expiry too
        s.execute(&StoreOp::Delete(key("s0")), t);
        assert_eq!(s.client_sessions(ClientId(7)), 1);
        let mut out = Vec::new();
        s.expire(t + Duration::from_secs(11), &mut out);
        assert_eq!(s.client_sessions(ClientId(7)), 0);
        assert!(s.is_empty());
        // the rate: a burst of 2, then one per 100 ms at 10/s
        assert_eq!(s.execute(&a(5, 0, 0, 10), t), ok);
        assert_eq!(s.execute(&a(5, 0, 0, 10), t), ok);
        assert_eq!(
            s.execute(&a(5, 0, 0, 10), t),
            StoreReply::Admitted(Admission::ClientRate(100))
        );
        assert_eq!(s.execute(&a(6, 0, 0, 10), t), ok, "buckets are per client");
        assert_eq!(
            s.execute(&a(5, 0, 0, 10), t + Duration::from_millis(100)),
            ok
        );
    }
}
