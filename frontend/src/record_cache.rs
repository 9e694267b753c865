//! The Redis store's local cache of session records (`--store-cache-size`), sans IO:
//! it decides what a lookup may answer from memory, when a cached record's idle TTL
//! is due a slide, and which fills are safe; the transport
//! ([`ManagedRedis`](crate::redis::ManagedRedis)) carries out the round trips and
//! feeds it Redis's invalidations.
//!
//! **Correctness.** An entry is only as good as the invalidations that would remove
//! it. The cache answers only while it is *enabled*: a tracking connection to Redis
//! (`CLIENT TRACKING ON BCAST`, a prefix per first character of a session id) is up and known to be live. Every
//! event that can lose an invalidation (that connection dropped, a probe of it
//! failed, a Redis `FLUSHALL`, a Sentinel promotion) [disables](RecordCache::disable)
//! it, which empties it; it is enabled again only by a probe that was sent after the
//! disabling ([`RecordCache::epoch`] / [`RecordCache::enable`]): a reply on the
//! tracking connection comes after every invalidation Redis sent on it before.
//!
//! A fill races with invalidations: Redis may read a record, then another replica
//! ends the session and its invalidation arrives before the read's reply. So a
//! lookup that misses hands out a [`Ticket`] (the epoch and its shard's invalidation
//! count), and [`RecordCache::fill`] stores the record only if neither moved since:
//! an invalidation of any key of the shard in between drops the fill (the next
//! request reads Redis again).
//!
//! **Bounds.** At most `capacity` records (split over [`SHARDS`] shards, each
//! evicting one entry, round robin, to take one more). Per entry: the session key,
//! the record and the instant of its last slide.
//!
//! **Slides.** A hit whose last slide is at least `fraction × TTL` old is due one
//! ([`Hit::slide`]), which the transport sends in the background; the entry counts
//! as slid from then on, so a busy session sends one slide per `fraction × TTL`. A
//! fill counts as slid `fraction/2 × TTL` ago: the read that filled it slid the
//! record only if less than `(1 - fraction/2) × TTL` was left
//! ([`RedisCodec::lazy_get_command`](crate::redis::RedisCodec::lazy_get_command)).
//! Either way Redis's deadline is at least last slide + TTL, so an idle session ends
//! no sooner than `(1 - fraction) × TTL` after its last request.

use indexmap::IndexMap;
use mcp_router_core::mcp::SessionKey;
use mcp_router_core::Record;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards of the cache, each behind its own lock.
pub const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry {
    record: Record,
    slid: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    map: IndexMap<SessionKey, Entry>,
    /// Records this replica is creating: kept when their creation's own invalidation
    /// arrives (with the epoch they were registered in).
    pending: IndexMap<SessionKey, (Record, u64)>,
    /// Invalidations (and evictions by this replica's own writes) of this shard.
    seq: u64,
    /// The next entry evicted when the shard is full.
    victim: usize,
}

/// What a lookup in the cache found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The record, from memory.
    Hit(Hit),
    /// Not cached (or the cache is off): read Redis, then [`RecordCache::fill`] with
    /// the ticket.
    Miss(Ticket),
}

/// A cached record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The record.
    pub record: Record,
    /// Its idle TTL is due a slide (send it in the background).
    pub slide: bool,
}

/// What must not have moved between a miss and its fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    seq: u64,
}

/// The cache (see the module documentation).
#[derive(Debug)]
pub struct RecordCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    /// `fraction × TTL`: the least time between two slides of a cached record.
    slide_every: Duration,
    enabled: AtomicBool,
    /// Bumped by every [`RecordCache::disable`].
    epoch: AtomicU64,
}

impl RecordCache {
    /// A cache of at most `capacity` records (> 0) of sessions whose idle TTL is
    /// `ttl`, slid at most once per `fraction × ttl`. It starts disabled.
    pub fn new(capacity: usize, ttl: Duration, fraction: f64) -> RecordCache {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        RecordCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard,
            slide_every: ttl.mul_f64(fraction.clamp(0.0, 1.0)),
            enabled: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    /// Most records held.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| self.lock(s).map.len()).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether lookups may be answered from memory.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    fn lock<'a>(&self, s: &'a Mutex<Shard>) -> std::sync::MutexGuard<'a, Shard> {
        s.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shard(&self, k: &str) -> &Mutex<Shard> {
        let h = k.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// Look `k` up at `now`.
    pub fn lookup(&self, k: &SessionKey, now: Instant) -> Lookup {
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut s = self.lock(self.shard(k.as_str()));
        if self.is_enabled() {
            if let Some(e) = s.map.get_mut(k.as_str()) {
                let slide = now.saturating_duration_since(e.slid) >= self.slide_every;
                if slide {
                    e.slid = now;
                }
                return Lookup::Hit(Hit {
                    record: e.record,
                    slide,
                });
            }
        }
        Lookup::Miss(Ticket { epoch, seq: s.seq })
    }

    /// Keep `record` for `k`, read from Redis after the miss that gave `ticket`, unless
    /// the cache was disabled or the shard saw an invalidation since.
    pub fn fill(&self, k: &SessionKey, record: Record, ticket: Ticket, now: Instant) -> bool {
        let mut s = self.lock(self.shard(k.as_str()));
        if !self.is_enabled() || self.epoch.load(Ordering::Acquire) != ticket.epoch {
            return false;
        }
        if s.seq != ticket.seq {
            return false;
        }
        self.insert(&mut s, k.clone(), record, now);
        true
    }

    /// A slide that could not be sent: due again at the next hit.
    pub fn slide_dropped(&self, k: &SessionKey) {
        let mut s = self.lock(self.shard(k.as_str()));
        let every = self.slide_every;
        if let Some(e) = s.map.get_mut(k.as_str()) {
            e.slid = e.slid.checked_sub(every).unwrap_or(e.slid);
        }
    }

    /// Redis says the key of session `k` changed (or this replica changed it): forget
    /// it, and drop any fill of its shard under way. If this replica is creating `k`
    /// ([`RecordCache::expect_creation`]), this is its creation's own message: keep
    /// the new record instead.
    pub fn invalidate(&self, k: &str) {
        let mut s = self.lock(self.shard(k));
        s.seq = s.seq.wrapping_add(1);
        s.map.swap_remove(k);
        if let Some((key, (record, epoch))) = s.pending.swap_remove_full(k).map(|(_, k, v)| (k, v))
        {
            if self.is_enabled() && self.epoch.load(Ordering::Acquire) == epoch {
                self.insert(&mut s, key, record, Instant::now());
            }
        }
    }

    /// This replica is about to create the record of `k` (a new session id, which no
    /// one else knows yet): the first invalidation of `k` from now on is that
    /// creation's own, and fills the cache with `record`. Call it before sending the
    /// write: Redis sends the tracking connection its messages in order, so the first
    /// one naming `k` after the write is the write's. (A session id is handed to its
    /// client only after its record is created, so no other writer of `k` can come
    /// in the same Redis event-loop turn, whose messages Redis merges.)
    pub fn expect_creation(&self, k: &SessionKey, record: Record) {
        let mut s = self.lock(self.shard(k.as_str()));
        if !self.is_enabled() || s.pending.len() >= self.per_shard {
            return;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        s.pending.insert(k.clone(), (record, epoch));
    }

    /// Forget `k` for this replica's own reasons (its creation failed or its outcome
    /// is unknown, it is being deleted or failed over here, a slide found it gone): no
    /// entry, no creation expected any more (a message that still comes only evicts),
    /// and no fill of its shard under way.
    pub fn forget(&self, k: &str) {
        let mut s = self.lock(self.shard(k));
        s.pending.swap_remove(k);
        s.seq = s.seq.wrapping_add(1);
        s.map.swap_remove(k);
    }

    fn insert(&self, s: &mut Shard, k: SessionKey, record: Record, now: Instant) {
        if s.map.len() >= self.per_shard && !s.map.contains_key(k.as_str()) {
            let i = s.victim % s.map.len();
            s.map.swap_remove_index(i);
            s.victim = s.victim.wrapping_add(1);
        }
        let slid = now.checked_sub(self.slide_every / 2).unwrap_or(now);
        s.map.insert(k, Entry { record, slid });
    }

    /// Forget everything, and drop every fill under way (the cache stays enabled).
    pub fn flush(&self) {
        for sh in &self.shards {
            let mut s = self.lock(sh);
            s.seq = s.seq.wrapping_add(1);
            s.map = IndexMap::new();
            s.pending = IndexMap::new();
        }
    }

    /// Invalidations may have been lost: answer nothing from memory until
    /// [`RecordCache::enable`], and forget everything.
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.flush();
    }

    /// The current epoch: read it before sending the probe that is to
    /// [`RecordCache::enable`] the cache.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Answer from memory again, if nothing disabled the cache since `epoch` was read;
    /// whether it is enabled now.
    pub fn enable(&self, epoch: u64) -> bool {
        // under a shard lock, so that no disable interleaves between the check and
        // the store
        let _g = self.lock(&self.shards[0]);
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.enabled.store(true, Ordering::Release);
        }
        self.is_enabled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_router_core::{BackendId, ClientId, Era};

    fn key(i: usize) -> SessionKey {
        SessionKey::new(format!("session-{i}").as_bytes(), 256).unwrap()
    }

    fn rec(b: u16) -> Record {
        Record {
            backend: BackendId(b),
            era: Era::Streamable,
            client: ClientId(7),
        }
    }

    fn ticket(c: &RecordCache, k: &SessionKey, now: Instant) -> Ticket {
        match c.lookup(k, now) {
            Lookup::Miss(t) => t,
            Lookup::Hit(h) => panic!("a hit: {h:?}"),
        }
    }

    #[test]
    fn nothing_is_answered_or_kept_until_enabled() {
        let c = RecordCache::new(10, Duration::from_secs(10), 0.1);
        let now = Instant::now();
        let t = ticket(&c, &key(1), now);
        assert!(!c.fill(&key(1), rec(0), t, now));
        assert!(c.enable(c.epoch()));
        let t = ticket(&c, &key(1), now);
        assert!(c.fill(&key(1), rec(3), t, now));
        assert_eq!(
            c.lookup(&key(1), now),
            Lookup::Hit(Hit {
                record: rec(3),
                slide: false
            })
        );
        c.disable();
        assert!(c.is_empty());
        assert!(matches!(c.lookup(&key(1), now), Lookup::Miss(_)));
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let c = RecordCache::new(100, Duration::from_secs(10), 0.1);
        assert!(c.enable(c.epoch()));
        let now = Instant::now();
        for i in 0..10_000 {
            let k = key(i);
            let t = ticket(&c, &k, now);
            assert!(c.fill(&k, rec(1), t, now));
            assert!(c.len() <= c.capacity(), "{} > {}", c.len(), c.capacity());
        }
        assert!(c.capacity() >= 100 && c.capacity() < 100 + SHARDS);
        assert!(c.len() > 90, "{}", c.len());
        // the last one filled is there
        assert!(matches!(c.lookup(&key(9_999), now), Lookup::Hit(_)));
        // a second fill of a held key evicts nothing
        let n = c.len();
        let Lookup::Miss(t) = c.lookup(&key(10_001), now) else {
            panic!("not filled yet")
        };
        assert!(c.fill(&key(10_001), rec(2), t, now));
        assert!(c.fill(&key(10_001), rec(2), t, now));
        assert!(c.len() <= n + 1 && c.len() <= c.capacity());
    }

    #[test]
    fn an_invalidation_between_miss_and_fill_drops_the_fill() {
        let c = RecordCache::new(10, Duration::from_secs(10), 0.1);
        assert!(c.enable(c.epoch()));
        let now = Instant::now();
        let t = ticket(&c, &key(1), now);
        c.invalidate(key(1).as_str());
        assert!(!c.fill(&key(1), rec(1), t, now));
        assert!(matches!(c.lookup(&key(1), now), Lookup::Miss(_)));
        // a disable and re-enable in between drops it too
        let t = ticket(&c, &key(1), now);
        c.disable();
        assert!(c.enable(c.epoch()));
        assert!(!c.fill(&key(1), rec(1), t, now));
        // an enable that started before a disable does not enable
        let e = c.epoch();
        c.disable();
        assert!(!c.enable(e));
        // an invalidation removes a held record
        assert!(c.enable(c.epoch()));
        let t = ticket(&c, &key(2), now);
        assert!(c.fill(&key(2), rec(1), t, now));
        c.invalidate(key(2).as_str());
        assert!(matches!(c.lookup(&key(2), now), Lookup::Miss(_)));
        // a flush empties it and stays enabled
        let t = ticket(&c, &key(3), now);
        assert!(c.fill(&key(3), rec(1), t, now));
        c.flush();
        assert!(c.is_empty() && c.is_enabled());
    }

    #[test]
    fn a_creation_fills_the_cache_at_its_own_invalidation_only() {
        let c = RecordCache::new(10, Duration::from_secs(10), 0.1);
        assert!(c.enable(c.epoch()));
        let now = Instant::now();
        c.expect_creation(&key(1), rec(4));
        assert!(matches!(c.lookup(&key(1), now), Lookup::Miss(_)));
        // the creation's own message fills it
        c.invalidate(key(1).as_str());
        assert!(
            matches!(c.lookup(&key(1), now), Lookup::Hit(Hit { record, .. }) if record == rec(4))
        );
        // the next message (another writer) evicts it
        c.invalidate(key(1).as_str());
        assert!(matches!(c.lookup(&key(1), now), Lookup::Miss(_)));
        // a failed creation expects nothing
        c.expect_creation(&key(2), rec(4));
        c.forget(key(2).as_str());
        c.invalidate(key(2).as_str());
        assert!(matches!(c.lookup(&key(2), now), Lookup::Miss(_)));
        // a disable in between (the message may be lost) drops it
        c.expect_creation(&key(3), rec(4));
        c.disable();
        assert!(c.enable(c.epoch()));
        c.invalidate(key(3).as_str());
        assert!(matches!(c.lookup(&key(3), now), Lookup::Miss(_)));
        // nothing is expected while disabled
        c.disable();
        c.expect_creation(&key(4), rec(4));
        assert!(c.enable(c.epoch()));
        c.invalidate(key(4).as_str());
        assert!(matches!(c.lookup(&key(4), now), Lookup::Miss(_)));
    }

    #[test]
    fn a_busy_session_slides_once_per_fraction_of_the_ttl() {
        // TTL 10 s, fraction 0.1: a slide at most every second
        let c = RecordCache::new(10, Duration::from_secs(10), 0.1);
        assert!(c.enable(c.epoch()));
        let t0 = Instant::now();
        let k = key(1);
        let t = ticket(&c, &k, t0);
        assert!(c.fill(&k, rec(1), t, t0));
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let slides: Vec<u64> = (0..=5000)
            .step_by(50)
            .filter(|&ms| match c.lookup(&k, at(ms)) {
                Lookup::Hit(h) => h.slide,
                Lookup::Miss(_) => panic!("miss"),
            })
            .collect();
        // a fill counts as slid half a period before: first due after 0.5 s
        assert_eq!(slides, [500, 1500, 2500, 3500, 4500]);
        // a slide that could not be sent is due again at once
        c.slide_dropped(&k);
        assert!(matches!(
            c.lookup(&k, at(4550)),
            Lookup::Hit(Hit { slide: true, .. })
        ));
        assert!(matches!(
            c.lookup(&k, at(4600)),
            Lookup::Hit(Hit { slide: false, .. })
        ));
    }
}
