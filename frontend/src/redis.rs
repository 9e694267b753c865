//! The shared session store on Redis, so that any router replica routes any session,
//! whatever its runtime.
//!
//! Everything but the transport lives here: the key and value format, the command
//! each [`StoreOp`] becomes ([`RedisCodec::command`]) and how a reply reads
//! ([`RedisCodec::reply`]). Every frontend carries the commands over the `redis` crate's
//! own multiplexed, auto-reconnecting connection ([`ManagedRedis`]; glommio: one per
//! executor).
//!
//! Each proxied request costs one round trip: a small Lua script ([`RECORD_SCRIPT`],
//! run by `EVALSHA`) reads the record and slides its idle TTL at once. The first use
//! after Redis started (or after `SCRIPT FLUSH`) costs one more: the `NOSCRIPT` reply
//! is answered by `EVAL` with the script's source, which also loads it.
//!
//! Key: `<prefix><session id>`. Value: `2|<era>|<created unix secs>|<client>|<backend
//! name>`, where era is `s` (Streamable HTTP) or `l` (legacy SSE) and client is the
//! opening client's [`ClientId`] in 16 hex digits (version `1` values, without the
//! client, written by earlier releases, still read). The backend is named, never
//! addressed: a well-formed record naming a backend not configured here reads as an
//! unconfigured backend, which the core treats as an unknown session and deletes.
//!
//! The store never deletes, overwrites or sets a TTL on a value it did not write. The
//! session id comes from the client, so the key can name anything under the prefix:
//! a value that is not a well-formed record (another application's string, a hash) is
//! an unknown session (the request gets 404, logged once per process) and left as it
//! was. Reading, sliding and deleting therefore go through [`RECORD_SCRIPT`], which
//! verifies the value before it touches the key; creating is `SET NX`, which never
//! overwrites. The prefix itself is checked at start: non-empty, no whitespace or
//! control characters ([`check_key_prefix`]).
//!
//! Caps and quotas are the fleet's: beside the records, `<prefix> live` is a sorted set
//! of every live session (score: its idle deadline in ms), `<prefix> client <id>` one per
//! client, and `<prefix> bucket <id>` a client's session-creation token bucket. The
//! space in these names keeps them apart from every session key (session ids are
//! visible ASCII). [`StoreOp::Admit`] prunes and counts them in one script (one round
//! trip, on Redis's clock so that every replica agrees); inserting a record adds it to
//! both sets in the same script as the `SET NX`, and deleting one takes it out. These
//! scripts name the set keys they derive from a record (its client's set): on a Redis
//! Cluster they would need hash tags, which this single-Redis store does not use yet.

pub use crate::redis_link::Topology;
pub use crate::rt::RemoteStore;
use mcp_router_core::failover::Failover;
use mcp_router_core::mcp::SessionKey;
use mcp_router_core::{
    Admission, AdmitRequest, BackendId, ClientId, ConfigError, Era, Record, Router, StoreOp,
    StoreReply,
};
use redis::{ConnectionInfo, IntoConnectionInfo, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::warn;

/// Where and how to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://[user[:password]@]host[:port][/db]` or `rediss://...` (TLS).
    pub url: String,
    /// Overrides the URL's password (so it need not appear on a command line).
    pub password: Option<String>,
    /// Key prefix.
    pub key_prefix: String,
    /// Longest wait for one store operation; past it the operation is `Unavailable`.
    pub timeout: Duration,
    /// One server, Sentinel or Cluster (from the URL).
    pub topology: Topology,
    /// `--store-wait-replicas`: replicas that must acknowledge a new record (`WAIT`)
    /// before its session is acknowledged; 0: none.
    pub wait_replicas: u32,
    /// `--store-cache-size`: records kept in the local cache ([`crate::record_cache`]);
    /// 0: no cache.
    pub cache_size: usize,
    /// `--store-slide-fraction`: a cached record's TTL is slid at most once per this
    /// fraction of the session TTL.
    pub slide_fraction: f64,
    /// `--store-tls-ca`: PEM certificate authorities trusted for `rediss://` (else the
    /// web PKI roots).
    pub tls_ca: Option<Vec<u8>>,
}

/// Default `--store-cache-size`.
pub const DEFAULT_CACHE_SIZE: usize = 100_000;
/// Default `--store-slide-fraction`.
pub const DEFAULT_SLIDE_FRACTION: f64 = 0.1;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "mcp-router:session:";

/// Check a key prefix: non-empty, and no whitespace or control characters. An empty
/// prefix would make every key of the database a session key, named by the client;
/// the error names the field.
pub fn check_key_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError(
            "store_key_prefix: must not be empty (session keys would share the whole \
             Redis database with whatever else is in it)"
                .into(),
        ));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError(format!(
            "store_key_prefix: {prefix:?}: no whitespace or control characters"
        )));
    }
    Ok(())
}

/// Read, slide or delete a session record, only if the key holds one: one round trip,
/// atomic on the Redis side. `KEYS[1]` is the key; `ARGV[1]` is `del` (delete) or
/// `slide` (set the idle TTL to `ARGV[2]` seconds).
///
/// Deleting also takes the session out of the live sets the caps count: `ARGV[2]` is
/// the live set, `ARGV[3]` the session id, `ARGV[4]` the client sets' name prefix (the
/// client is read from the record); and out of the expiry index: `ARGV[5]` its sorted
/// set, `ARGV[6]` its hash of records (a session ended this way is not reaped).
///
/// With `--failover reinitialize`, `ARGV[3] .. ARGV[4]` (slide: the hashes' name prefix
/// and the session id, so that a request builds no name of its own) or `ARGV[7]`
/// (delete) names the session's failover hash ([`RedisCodec::failover_key`]): sliding
/// slides it too and,
/// once the session has failed over, replies `{record, new upstream id}`; deleting
/// deletes it. The sealed `initialize` body in it is never read here.
///
/// `lazy` (the lookups of a replica with the record cache,
/// [`RedisCodec::lazy_get_command`]) slides like `slide` only when less than `ARGV[3]`
/// ms of the TTL are left, so that a read does not write (and invalidate every other
/// replica's cached copy) when a slide came recently; its failover arguments are
/// `ARGV[4] .. ARGV[5]`.
///
/// Replies: nil when there is no key; the record when the key held a well-formed one
/// (then deleted or slid); an integer when the key holds something else (the length of
/// a string that is not a record, -1 for another type), which is left untouched: no
/// `DEL`, no `EXPIRE` (an `EXPIRE` would put a TTL on another application's key).
///
/// "Well-formed" is `1|<s or l>|<digits>|<at least one byte>` or
/// `2|<s or l>|<digits>|<hex>|<at least one byte>`, the same rule as
/// [`RedisCodec::decode`]. `GET` on a hash or list fails; `redis.pcall` turns that into
/// a table instead of failing the script.
pub const RECORD_SCRIPT: &str = r"local v = redis.pcall('GET', KEYS[1])
if v == false then return false end
if type(v) ~= 'string' then return -1 end
if not (string.find(v, '^1|[sl]|%d+|.') or string.find(v, '^2|[sl]|%d+|%x+|.')) then return #v end
if ARGV[1] == 'del' then
  redis.call('DEL', KEYS[1])
  if ARGV[7] then redis.call('DEL', ARGV[7]) end
  redis.call('ZREM', ARGV[2], ARGV[3])
  redis.call('ZREM', ARGV[5], ARGV[3])
  redis.call('HDEL', ARGV[6], ARGV[3], ARGV[3] .. ' up')
  local c = string.match(v, '^2|[sl]|%d+|(%x+)|')
  if c then redis.call('ZREM', ARGV[4] .. c, ARGV[3]) end
else
  local fo, id, slide = ARGV[3], ARGV[4], true
  if ARGV[1] == 'lazy' then
    fo, id = ARGV[4], ARGV[5]
    slide = redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3])
  end
  if slide then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  if fo then
    local f = fo .. id
    local live
    if slide then live = redis.call('EXPIRE', f, ARGV[2]) == 1 else live = redis.call('EXISTS', f) == 1 end
    if live then
      local u = redis.call('HGET', f, 'u')
      if u then return {v, u} end
    end
  end
end
return v
";

/// The SHA-1 `EVALSHA` names [`RECORD_SCRIPT`] by.
static RECORD_SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(RECORD_SCRIPT).get_hash().to_owned());
static INSERT_SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(INSERT_SCRIPT).get_hash().to_owned());
static ADMIT_SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(ADMIT_SCRIPT).get_hash().to_owned());
static CLAIM_SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(CLAIM_SCRIPT).get_hash().to_owned());
static FAILOVER_SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(FAILOVER_SCRIPT).get_hash().to_owned());
static COUNT_SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(COUNT_SCRIPT).get_hash().to_owned());
static DRAIN_SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(DRAIN_SCRIPT).get_hash().to_owned());

/// `EVALSHA <sha>` of a script, or (`source`) `EVAL <source>`.
fn eval(source: bool, script: &'static str, sha: &LazyLock<String>) -> redis::Cmd {
    if source {
        let mut c = redis::cmd("EVAL");
        c.arg(script);
        c
    } else {
        let mut c = redis::cmd("EVALSHA");
        c.arg(sha.as_str());
        c
    }
}

/// Whether a foreign value was logged already: once per process is enough to tell the
/// operator, and a client naming foreign keys cannot flood the log.
static FOREIGN_LOGGED: AtomicBool = AtomicBool::new(false);

/// A key under the prefix holds something that is not a record. Logged once per
/// process, with the value's length only (never the key or the value).
fn foreign_value(len: i64) {
    if !FOREIGN_LOGGED.swap(true, Ordering::Relaxed) {
        let what = if len < 0 {
            "a value that is not a string".to_owned()
        } else {
            format!("a string of {len} bytes")
        };
        warn!(
            "session store: a key under the store key prefix holds {what} that is not an \
             mcp-router record; it is answered as an unknown session (404) and left \
             untouched (logged once)"
        );
    }
}

impl RedisSettings {
    /// Settings for a single Redis at `url` (no replicas waited for).
    pub fn single(url: &str, key_prefix: &str, timeout: Duration) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            password: None,
            key_prefix: key_prefix.into(),
            timeout,
            topology: Topology::Single,
            wait_replicas: 0,
            cache_size: 0,
            slide_fraction: DEFAULT_SLIDE_FRACTION,
            tls_ca: None,
        }
    }

    /// What only a whole configuration can check: on a cluster, the key prefix holds
    /// no `{` or `}` (the shard's hash tag is the first `{...}` of every key).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.topology.sharded() && self.key_prefix.contains(['{', '}']) {
            return Err(ConfigError(format!(
                "store_key_prefix: {:?}: no braces on a Redis Cluster (keys carry a hash tag)",
                self.key_prefix
            )));
        }
        Ok(())
    }

    /// The URL with the password override applied.
    pub fn connection_info(&self) -> Result<ConnectionInfo, ConfigError> {
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| ConfigError(format!("store: invalid Redis URL: {e}")))?;
        if let Some(p) = &self.password {
            let r = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(r);
        }
        Ok(info)
    }
}

/// A session claimed for reaping from the expiry index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The session (the client's id): what the claim is acknowledged by.
    pub id: SessionKey,
    /// Its stored record (`None` when the copy does not read as one).
    pub record: Option<Record>,
    /// After a failover: the new backend's id for it, which the `DELETE` names.
    pub upstream: Option<SessionKey>,
    /// The backend's name as the record has it (`None` when the copy does not read
    /// as a record): a backend removed from this replica's configuration reads as no
    /// backend in `record`, and is found again by this name.
    pub name: Option<String>,
}

/// Session records as Redis keys, values and commands.
#[derive(Debug, Clone)]
pub struct RedisCodec {
    prefix: String,
    /// Each shard's key base: the prefix (one Redis: one shard), or the prefix and
    /// the shard's hash tag (a cluster: [`SHARDS`] of them).
    shards: Vec<String>,
    ttl_secs: u64,
    router: Arc<Router>,
    /// `--failover reinitialize` at start: deletes delete the failover hash, lookups
    /// read (and slide) it, named by this prefix (per shard) and the session id.
    failover: bool,
    failover_prefixes: Option<Vec<String>>,
}

/// Shards of the key space on a Redis Cluster. Every key of a session, and every set
/// that indexes sessions (the live sets, the expiry index and its claims), carries its
/// shard's hash tag, so each script touches one slot and every session operation is
/// one round trip to one node; the 16 tags are chosen so that their slots spread
/// evenly over the 16384 ([`shard_tags`]): a cluster of up to 16 primaries with
/// balanced slots holds sessions on each. Admission counts over all shards, and the
/// reaper sweeps each.
pub const SHARDS: usize = 16;

/// CRC16/XMODEM, the hash of Redis Cluster's key slots.
fn crc16(b: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &x in b {
        crc ^= (x as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash tags of the [`SHARDS`] shards: for shard `i`, the smallest decimal number
/// whose slot lies in the `i`-th sixteenth of the slot space.
pub fn shard_tags() -> Vec<String> {
    let width = 16384 / SHARDS as u16;
    (0..SHARDS as u16)
        .map(|i| {
            (0u32..)
                .map(|n| n.to_string())
                .find(|t| (crc16(t.as_bytes()) % 16384) / width == i)
                .unwrap_or_default()
        })
        .collect()
}

impl RedisCodec {
    /// The codec for `settings`; record TTLs follow the router's session TTL.
    pub fn new(settings: &RedisSettings, router: Arc<Router>) -> RedisCodec {
        let prefix = &settings.key_prefix;
        let shards: Vec<String> = if settings.topology.sharded() {
            shard_tags()
                .iter()
                .map(|t| format!("{prefix}{{{t}}}"))
                .collect()
        } else {
            vec![prefix.clone()]
        };
        RedisCodec {
            prefix: prefix.clone(),
            failover: router.config().failover.is_some(),
            failover_prefixes: router
                .config()
                .failover
                .is_some()
                .then(|| shards.iter().map(|b| format!("{b} failover ")).collect()),
            shards,
            ttl_secs: router.config().session_ttl.as_secs().max(1),
            router,
        }
    }

    /// How many shards the keys are spread over (one Redis: 1).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard of a session (FNV-1a of its id; always 0 on one Redis).
    pub fn shard(&self, k: &SessionKey) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        let h = k.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        (h % self.shards.len() as u64) as usize
    }

    /// The key of a session's record.
    pub fn key(&self, k: &SessionKey) -> String {
        let base = &self.shards[self.shard(k)];
        let mut s = String::with_capacity(base.len() + k.as_str().len());
        s.push_str(base);
        s.push_str(k.as_str());
        s
    }

    fn encode(&self, r: &Record) -> String {
        let era = match r.era {
            Era::Streamable => 's',
            Era::LegacySse => 'l',
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!(
            "2|{era}|{created}|{:016x}|{}",
            r.client.0,
            self.router.name(r.backend)
        )
    }

    /// `--failover reinitialize`: the session's failover hash, beside its record (the
    /// space keeps it apart from every session key): `p` the client's `initialize`
    /// body sealed with the session key ring ([`mcp_router_core::KeyRing::seal_value`],
    /// bound to the session id), `g` the generation, and once failed over `u` the new
    /// upstream id and `a` when (unix ms).
    pub fn failover_key(&self, k: &SessionKey) -> String {
        format!("{} failover {}", self.shards[self.shard(k)], k.as_str())
    }

    /// The sorted set of every live session (of a shard).
    fn live_key(&self, shard: usize) -> String {
        format!("{} live", self.shards[shard])
    }

    /// The expiry index (of a shard): every recorded session, scored by its idle
    /// deadline (ms, Redis's clock) as last known.
    fn reap_key(&self, shard: usize) -> String {
        format!("{} reap", self.shards[shard])
    }

    /// The expiry index's copy of each indexed record (the record itself is gone by
    /// the time Redis has expired it).
    fn reap_meta_key(&self, shard: usize) -> String {
        format!("{} reap records", self.shards[shard])
    }

    /// Claimed expiries being reaped, scored by the claim's lease deadline (ms).
    fn reap_claims_key(&self, shard: usize) -> String {
        format!("{} reap claims", self.shards[shard])
    }

    /// [`CLAIM_SCRIPT`]: claim up to `limit` expired sessions (and claims whose lease
    /// ran out) for `lease`.
    pub fn claim_command(
        &self,
        shard: usize,
        lease: Duration,
        limit: usize,
        source: bool,
    ) -> redis::Cmd {
        let mut c = eval(source, CLAIM_SCRIPT, &CLAIM_SCRIPT_SHA);
        c.arg(3)
            .arg(self.reap_key(shard))
            .arg(self.reap_meta_key(shard))
            .arg(self.reap_claims_key(shard))
            .arg(&self.shards[shard])
            .arg(lease.as_millis().max(1) as u64)
            .arg(limit.max(1));
        c
    }

    /// [`DRAIN_SCRIPT`]: end and claim the records of the backends named `names`
    /// (drained past their timeout, or removed and still answering) among about
    /// `count` entries of the expiry index from `cursor` on.
    pub fn drain_command(
        &self,
        shard: usize,
        names: &[String],
        cursor: u64,
        count: usize,
        lease: Duration,
        source: bool,
    ) -> redis::Cmd {
        let mut c = eval(source, DRAIN_SCRIPT, &DRAIN_SCRIPT_SHA);
        c.arg(4)
            .arg(self.reap_key(shard))
            .arg(self.reap_meta_key(shard))
            .arg(self.reap_claims_key(shard))
            .arg(self.live_key(shard))
            .arg(&self.shards[shard])
            .arg(lease.as_millis().max(1) as u64)
            .arg(cursor)
            .arg(count.max(1))
            .arg(format!("{} client ", self.shards[shard]));
        for n in names {
            c.arg(n);
        }
        c
    }

    /// A [`DRAIN_SCRIPT`] reply: the next cursor (0: the scan is complete) and the
    /// ended sessions; `None` for a reply of another shape.
    #[allow(clippy::type_complexity)]
    pub fn drained(&self, v: Value) -> Option<(u64, Vec<Claimed>)> {
        let Value::Array(mut items) = v else {
            return None;
        };
        if items.is_empty() {
            return None;
        }
        let cursor = match items.remove(0) {
            Value::BulkString(b) => std::str::from_utf8(&b).ok()?.parse().ok()?,
            Value::Int(n) => u64::try_from(n).ok()?,
            _ => return None,
        };
        Some((cursor, self.claimed(Value::Array(items))?))
    }

    /// The claimed sessions of a [`CLAIM_SCRIPT`] reply: each id and its record
    /// (`None` when the stored copy does not read as one); `None` for a reply of
    /// another shape.
    pub fn claimed(&self, v: Value) -> Option<Vec<Claimed>> {
        let Value::Array(items) = v else {
            return None;
        };
        let bytes = |v: &Value| match v {
            Value::BulkString(b) => Some(b.clone()),
            Value::SimpleString(s) => Some(s.clone().into_bytes()),
            _ => None,
        };
        let mut out = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            let [id, rec] = pair else { return None };
            let id = SessionKey::new(&bytes(id)?, usize::MAX)?;
            let rec = bytes(rec)?;
            // a failed-over session's copy carries its upstream id after a newline
            let (rec, upstream) = match rec.iter().position(|&b| b == b'\n') {
                Some(i) => (&rec[..i], SessionKey::new(&rec[i + 1..], usize::MAX)),
                None => (&rec[..], None),
            };
            let record = self.decode(rec);
            out.push(Claimed {
                id,
                name: record.and_then(|_| record_name(rec)),
                record,
                upstream,
            });
        }
        Some(out)
    }

    /// The commands that acknowledge finished claims (their `DELETE` was answered, or
    /// will not be sent): the stored copy first, then the claim, in one transaction.
    pub fn ack_pipelines(&self, ids: &[SessionKey]) -> Vec<redis::Pipeline> {
        let mut by_shard: Vec<Option<redis::Pipeline>> = vec![None; self.shards.len()];
        for id in ids {
            let shard = self.shard(id);
            let p = by_shard[shard].get_or_insert_with(|| {
                let mut p = redis::pipe();
                p.atomic();
                p
            });
            p.cmd("HDEL")
                .arg(self.reap_meta_key(shard))
                .arg(id.as_str())
                .arg(format!("{} up", id.as_str()))
                .ignore();
            p.cmd("ZREM")
                .arg(self.reap_claims_key(shard))
                .arg(id.as_str())
                .ignore();
        }
        by_shard.into_iter().flatten().collect()
    }

    /// A client's sorted set of live sessions (of a shard).
    fn client_key(&self, shard: usize, c: ClientId) -> String {
        format!("{} client {:016x}", self.shards[shard], c.0)
    }

    /// A client's session-creation token bucket (on a cluster, tagged by the client).
    fn bucket_key(&self, c: ClientId) -> String {
        if self.shards.len() == 1 {
            format!("{} bucket {:016x}", self.prefix, c.0)
        } else {
            format!("{}{{c{:016x}}} bucket", self.prefix, c.0)
        }
    }

    /// Read a stored value: `None` unless it is a well-formed record
    /// (`1|<s or l>|<digits>|<name>` or `2|<s or l>|<digits>|<hex client>|<name>`, the
    /// rule [`RECORD_SCRIPT`] applies too). A
    /// well-formed record naming a backend not configured here reads as no configured
    /// backend: the core ends that session and answers 404.
    pub fn decode(&self, v: &[u8]) -> Option<Record> {
        let mut parts = v.splitn(4, |&b| b == b'|');
        let (Some(version), Some(era), Some(created), Some(mut name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let client = match version {
            b"1" => ClientId::default(),
            b"2" => {
                let (c, rest) = name.split_at(name.iter().position(|&b| b == b'|')?);
                name = &rest[1..];
                let hex = std::str::from_utf8(c).ok()?;
                if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                ClientId(u64::from_str_radix(hex, 16).ok()?)
            }
            _ => return None,
        };
        let era = match era {
            b"s" => Era::Streamable,
            b"l" => Era::LegacySse,
            _ => return None,
        };
        if created.is_empty() || !created.iter().all(u8::is_ascii_digit) || name.is_empty() {
            return None;
        }
        let backend = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.router.backend_by_name(n))
            .unwrap_or(BackendId::UNCONFIGURED);
        Some(Record {
            backend,
            era,
            client,
        })
    }

    /// [`RECORD_SCRIPT`] on the key of `k`, by `EVALSHA` or (`source`) by `EVAL`.
    fn script(&self, k: &SessionKey, delete: bool, source: bool) -> redis::Cmd {
        let mut c = eval(source, RECORD_SCRIPT, &RECORD_SCRIPT_SHA);
        let shard = self.shard(k);
        c.arg(1).arg(self.key(k));
        if delete {
            c.arg("del")
                .arg(self.live_key(shard))
                .arg(k.as_str())
                .arg(format!("{} client ", self.shards[shard]))
                .arg(self.reap_key(shard))
                .arg(self.reap_meta_key(shard));
            if self.failover {
                c.arg(self.failover_key(k));
            }
        } else {
            c.arg("slide").arg(self.ttl_secs);
            if let Some(p) = &self.failover_prefixes {
                c.arg(p[shard].as_str()).arg(k.as_str());
            }
        }
        c
    }

    /// The lookup of a replica with the record cache: [`RECORD_SCRIPT`] reading the
    /// record of `k` and sliding its TTL only if less than `keep` of it is left.
    /// Replies as [`StoreOp::Get`]'s command does.
    pub fn lazy_get_command(&self, k: &SessionKey, keep: Duration, source: bool) -> redis::Cmd {
        let mut c = eval(source, RECORD_SCRIPT, &RECORD_SCRIPT_SHA);
        c.arg(1)
            .arg(self.key(k))
            .arg("lazy")
            .arg(self.ttl_secs)
            .arg(keep.as_millis() as u64);
        if let Some(p) = &self.failover_prefixes {
            c.arg(p[self.shard(k)].as_str()).arg(k.as_str());
        }
        c
    }

    /// The background slide of a cached record: `EXPIRE <key> <ttl> GT` (and its
    /// failover hash's), in one transaction. Not the record script: Redis 7.0 does not
    /// honour `NOLOOP` for a script's writes, so the slide would evict this replica's
    /// own cached copy. `GT` never sets a TTL on a key that has none (a record always
    /// has one) nor shortens one; the key held a record when it was cached, and any
    /// change since has evicted it. Replies `[1]` (slid) or `[0]` (no such key).
    pub fn slide_command(&self, k: &SessionKey) -> redis::Pipeline {
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("EXPIRE")
            .arg(self.key(k))
            .arg(self.ttl_secs)
            .arg("GT");
        if self.failover {
            p.cmd("EXPIRE")
                .arg(self.failover_key(k))
                .arg(self.ttl_secs)
                .arg("GT")
                .ignore();
        }
        p
    }

    /// The session TTL records are written with.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// The key prefix (of every shard).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// [`INSERT_SCRIPT`] or [`ADMIT_SCRIPT`] for `op`.
    fn write_script(&self, op: &StoreOp, source: bool) -> redis::Cmd {
        match op {
            StoreOp::Insert(k, r) | StoreOp::InsertFailover(k, r, _) => {
                // failover: the body sealed, or (no key ring: the router refuses that at
                // start) not kept at all, never in plaintext
                let sealed = match op {
                    StoreOp::InsertFailover(_, _, f) => self.seal_params(k, &f.params),
                    _ => None,
                };
                let mut c = eval(source, INSERT_SCRIPT, &INSERT_SCRIPT_SHA);
                let shard = self.shard(k);
                c.arg(if sealed.is_some() { 6 } else { 5 })
                    .arg(self.key(k))
                    .arg(self.live_key(shard))
                    .arg(self.client_key(shard, r.client))
                    .arg(self.reap_key(shard))
                    .arg(self.reap_meta_key(shard));
                if sealed.is_some() {
                    c.arg(self.failover_key(k));
                }
                c.arg(self.encode(r)).arg(self.ttl_secs).arg(k.as_str());
                if let Some(p) = sealed {
                    c.arg(p);
                }
                c
            }
            StoreOp::FailOver {
                key,
                record,
                state,
                from,
            } => {
                let mut c = eval(source, FAILOVER_SCRIPT, &FAILOVER_SCRIPT_SHA);
                c.arg(3)
                    .arg(self.key(key))
                    .arg(self.failover_key(key))
                    .arg(self.reap_meta_key(self.shard(key)))
                    .arg(*from)
                    .arg(state.generation)
                    .arg(state.upstream.as_ref().map_or(key.as_str(), |u| u.as_str()))
                    .arg(unix_ms_of(state.at))
                    .arg(self.encode(record))
                    .arg(self.ttl_secs)
                    .arg(format!("{:016x}", record.client.0))
                    .arg(key.as_str());
                c
            }
            // one Redis: the whole admission in one script (on a cluster,
            // [`RedisCodec::admit_count`] and [`RedisCodec::admit_bucket`])
            StoreOp::Admit(a) => {
                let mut c = eval(source, ADMIT_SCRIPT, &ADMIT_SCRIPT_SHA);
                c.arg(3)
                    .arg(self.live_key(0))
                    .arg(self.client_key(0, a.client))
                    .arg(self.bucket_key(a.client))
                    .arg(a.max_sessions)
                    .arg(a.client_max_sessions)
                    .arg(a.rate)
                    .arg(a.burst)
                    .arg(&self.shards[0]);
                c
            }
            _ => self.command(op),
        }
    }

    /// Whether admission takes more than one script (a cluster: one
    /// [`COUNT_SCRIPT`] per shard, then the bucket).
    pub fn admits_in_parts(&self) -> bool {
        self.shards.len() > 1
    }

    /// Whether a cluster's admission counts the shards (a cap is set).
    pub fn counts_needed(&self, a: &AdmitRequest) -> bool {
        a.max_sessions > 0 || a.client_max_sessions > 0
    }

    /// A cluster's admission, first step: [`COUNT_SCRIPT`] on `shard` (one per shard
    /// when [`RedisCodec::counts_needed`]).
    pub fn admit_count(&self, shard: usize, a: &AdmitRequest, source: bool) -> redis::Cmd {
        let mut c = eval(source, COUNT_SCRIPT, &COUNT_SCRIPT_SHA);
        c.arg(2)
            .arg(self.live_key(shard))
            .arg(self.client_key(shard, a.client))
            .arg(&self.shards[shard]);
        c
    }

    /// The caps ([`AdmitRequest::caps`], core's decision) checked against the
    /// shards' summed counts (the replies to
    /// [`RedisCodec::admit_count`]); `None` when a reply has another shape.
    pub fn admit_verdict(&self, a: &AdmitRequest, counts: &[Value]) -> Option<Admission> {
        let (mut live, mut mine) = (0u64, 0u64);
        for v in counts {
            let Value::Array(a) = v else { return None };
            match a.as_slice() {
                [Value::Int(l), Value::Int(c)] => {
                    live += *l as u64;
                    mine += *c as u64;
                }
                _ => return None,
            }
        }
        Some(a.caps(live, mine).unwrap_or(Admission::Admit))
    }

    /// A cluster's admission, last step: [`ADMIT_SCRIPT`] on the client's bucket
    /// alone (its caps already checked), or `None` without a rate.
    pub fn admit_bucket(&self, a: &AdmitRequest, source: bool) -> Option<redis::Cmd> {
        if a.rate == 0 {
            return None;
        }
        let bucket = self.bucket_key(a.client);
        let mut c = eval(source, ADMIT_SCRIPT, &ADMIT_SCRIPT_SHA);
        c.arg(3)
            .arg(&bucket)
            .arg(&bucket)
            .arg(&bucket)
            .arg(0)
            .arg(0)
            .arg(a.rate)
            .arg(a.burst)
            .arg(&self.prefix);
        Some(c)
    }

    /// Whether a reply says Redis does not hold [`RECORD_SCRIPT`] (it restarted, or
    /// `SCRIPT FLUSH`): send [`RedisCodec::command_with_source`] instead.
    pub fn is_noscript(v: &Value) -> bool {
        matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
    }

    /// The command that carries out `op` with the script's source (`EVAL`), which
    /// also loads the script for the `EVALSHA`s after it: for the retry after a
    /// `NOSCRIPT` reply.
    pub fn command_with_source(&self, op: &StoreOp) -> redis::Cmd {
        match op {
            StoreOp::Get(k) | StoreOp::Touch(k) => self.script(k, false, true),
            StoreOp::Delete(k) => self.script(k, true, true),
            StoreOp::Insert(..)
            | StoreOp::InsertFailover(..)
            | StoreOp::FailOver { .. }
            | StoreOp::Admit(_) => self.write_script(op, true),
            StoreOp::LoadFailover(_) => self.command(op),
        }
    }

    /// The one command that carries out `op`.
    pub fn command(&self, op: &StoreOp) -> redis::Cmd {
        match op {
            // The script reads the record and slides the idle TTL in one round trip,
            // like `GETEX key EX ttl`, but only if the key holds a record: `GETEX` on
            // another application's string would put a TTL on it. A stream's `Touch`
            // slides the same way (a bare `EXPIRE` would too).
            StoreOp::Get(k) | StoreOp::Touch(k) => self.script(k, false, false),
            // SET NX: an id minted twice is detected, never overwritten (and neither is
            // anything else the key holds); a new session joins the live sets.
            // failover: the body rides in the insert's round trip; the mapping to a
            // new backend is compared on the generation (first writer wins)
            StoreOp::Insert(..)
            | StoreOp::InsertFailover(..)
            | StoreOp::FailOver { .. }
            | StoreOp::Admit(_) => self.write_script(op, false),
            // only when a failover is decided: the whole state, body included
            StoreOp::LoadFailover(k) => {
                let mut c = redis::cmd("HMGET");
                c.arg(self.failover_key(k))
                    .arg("p")
                    .arg("g")
                    .arg("u")
                    .arg("a");
                c
            }
            // Compare-and-delete: the script deletes the key only if it holds a record,
            // and returns it, so the end can be attributed to its backend.
            StoreOp::Delete(k) => self.script(k, true, false),
        }
    }

    /// What Redis's reply to [`RedisCodec::command`] means. A reply of an unexpected
    /// shape (an error, a wrong type) is `Unavailable`: the request gets 503, never a
    /// wrong 404. A key holding something that is not a record is no record: an
    /// unknown session, left alone, which the core answers like any session it does not
    /// know ("The server MAY terminate the session at any time, after which it MUST
    /// respond to requests containing that session ID with HTTP 404 Not Found.").
    pub fn reply(&self, op: &StoreOp, v: Value) -> StoreReply {
        let record = |v: Value| match v {
            // a failed-over session's record and its new upstream id
            Value::Array(a) => match <[Value; 2]>::try_from(a) {
                Ok([Value::BulkString(r), Value::BulkString(u)]) => Ok(self
                    .verified(&r)
                    .map(|rec| (rec, SessionKey::new(&u, usize::MAX)))),
                _ => Err(()),
            },
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(self.verified(&b).map(|r| (r, None))),
            Value::SimpleString(s) => Ok(self.verified(s.as_bytes()).map(|r| (r, None))),
            // the script's "not a record"
            Value::Int(len) => {
                foreign_value(len);
                Ok(None)
            }
            _ => Err(()),
        };
        let r = match op {
            StoreOp::Get(_) => record(v).map(|r| match r {
                Some((rec, Some(up))) => StoreReply::FoundFailover(
                    rec,
                    // the upstream id only: the rest is read when a failover needs it
                    Arc::new(Failover {
                        params: bytes::Bytes::new(),
                        upstream: Some(up),
                        at: None,
                        generation: 0,
                    }),
                ),
                r => StoreReply::Found(r.map(|(rec, _)| rec)),
            }),
            StoreOp::Delete(_) => record(v).map(|r| StoreReply::Deleted(r.map(|(rec, _)| rec))),
            StoreOp::Touch(_) => record(v).map(|r| StoreReply::Touched(r.is_some())),
            StoreOp::LoadFailover(k) => match v {
                Value::Array(a) => Ok(StoreReply::FailoverState(self.loaded(k, a).map(Arc::new))),
                _ => Err(()),
            },
            StoreOp::FailOver { .. } => match v {
                Value::Int(1) => Ok(StoreReply::FailedOver(true)),
                Value::Int(0) => Ok(StoreReply::FailedOver(false)),
                _ => Err(()),
            },
            StoreOp::Insert(..) | StoreOp::InsertFailover(..) => match v {
                Value::Okay => Ok(StoreReply::Inserted(true)),
                Value::SimpleString(s) if s == "OK" => Ok(StoreReply::Inserted(true)),
                Value::Nil => Ok(StoreReply::Inserted(false)),
                _ => Err(()),
            },
            StoreOp::Admit(_) => match v {
                Value::Array(a) => match a.as_slice() {
                    [Value::Int(0), _] => Ok(StoreReply::Admitted(Admission::Admit)),
                    [Value::Int(1), _] => Ok(StoreReply::Admitted(Admission::Sessions)),
                    [Value::Int(2), _] => Ok(StoreReply::Admitted(Admission::ClientSessions)),
                    [Value::Int(3), Value::Int(ms)] => Ok(StoreReply::Admitted(
                        Admission::ClientRate((*ms).clamp(1, i64::from(u32::MAX)) as u32),
                    )),
                    _ => Err(()),
                },
                _ => Err(()),
            },
        };
        r.unwrap_or(StoreReply::Unavailable)
    }

    /// The `initialize` body sealed for the session `k` with the sealing key of the
    /// running key ring (the nonce from the router's generator, as tokens get);
    /// `None` without a key ring, when nothing is kept.
    fn seal_params(&self, k: &SessionKey, params: &[u8]) -> Option<Vec<u8>> {
        let ring = self.router.config().session_keys.clone()?;
        ring.seal_value(k.as_bytes(), params, &self.router.next_nonce())
            .ok()
    }

    /// A session's failover hash as `HMGET p g u a` read it: `None` without a body, or
    /// with one no key of the ring opens (tampered, another session's, or sealed by a
    /// key rotated out): that session is not eligible.
    fn loaded(&self, k: &SessionKey, a: Vec<Value>) -> Option<Failover> {
        let [p, g, u, at] = <[Value; 4]>::try_from(a).ok()?;
        let text = |v: &Value| match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
            _ => None,
        };
        let Value::BulkString(sealed) = p else {
            return None;
        };
        let ring = self.router.config().session_keys.clone()?;
        let params = ring.open_value(k.as_bytes(), &sealed)?;
        let generation = text(&g).and_then(|g| g.parse().ok()).unwrap_or(0);
        let upstream = match &u {
            Value::BulkString(b) => SessionKey::new(b, usize::MAX),
            _ => None,
        };
        let at = text(&at)
            .and_then(|a| a.parse::<u64>().ok())
            .map(instant_of_unix_ms);
        Some(Failover {
            params: params.into(),
            upstream,
            at,
            generation,
        })
    }

    /// A value the script passed as a record; `None` (and logged) should the two
    /// readings ever disagree.
    fn verified(&self, v: &[u8]) -> Option<Record> {
        let r = self.decode(v);
        if r.is_none() {
            foreign_value(i64::try_from(v.len()).unwrap_or(i64::MAX));
        }
        r
    }
}

/// The backend name of a stored record (`1|e|t|<name>` or `2|e|t|<client>|<name>`),
/// for a record [`RedisCodec::decode`] reads.
fn record_name(v: &[u8]) -> Option<String> {
    let fields = if v.starts_with(b"1|") { 4 } else { 5 };
    let name = v.splitn(fields, |&b| b == b'|').nth(fields - 1)?;
    std::str::from_utf8(name).ok().map(str::to_owned)
}

/// `StoreOp::Insert`: KEYS = record, live set, client set, expiry index, its records
/// (and with failover, the failover hash); ARGV = value, TTL (s), session id (and the
/// sealed `initialize` body, stored as the hash's `p` with generation 0 and the
/// record's TTL, in the same round trip). `SET NX EX`, and on success the session joins
/// both sets and the expiry index with its deadline (ms, Redis's clock), and its value
/// is copied into the index's records. Replies `OK` or nil, like `SET NX`.
pub const INSERT_SCRIPT: &str = r"
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if not ok then return false end
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2]) * 1000
redis.call('ZADD', KEYS[2], deadline, ARGV[3])
redis.call('ZADD', KEYS[3], deadline, ARGV[3])
redis.call('PEXPIREAT', KEYS[3], deadline)
redis.call('ZADD', KEYS[4], deadline, ARGV[3])
redis.call('HSET', KEYS[5], ARGV[3], ARGV[1])
if KEYS[6] then
  redis.call('DEL', KEYS[6])
  redis.call('HSET', KEYS[6], 'p', ARGV[4], 'g', 0)
  redis.call('EXPIRE', KEYS[6], ARGV[2])
end
return ok
";

/// `StoreOp::FailOver`: KEYS = record, failover hash, the expiry index's records;
/// ARGV = the generation the failover started from, the new generation, the new
/// upstream id, when (unix ms), the new record value, TTL (s), the client (16 hex), the
/// session id.
///
/// First writer wins, as in the embedded store: the mapping is stored only if the key
/// still holds a record of the same client and the hash is still of generation
/// `ARGV[1]`; a replica that lost the race gets 0 and follows the winner's mapping.
/// The record now names the new backend (so draining it and `DELETE` find it) and its
/// copy in the expiry index follows, with the new upstream id beside it (field
/// `<id> up`: ids have no space), which an expiry reaps. Replies 1 (stored) or 0.
pub const FAILOVER_SCRIPT: &str = r"
local v = redis.pcall('GET', KEYS[1])
if type(v) ~= 'string' then return 0 end
if string.match(v, '^2|[sl]|%d+|(%x+)|') ~= ARGV[7] then return 0 end
if redis.call('HGET', KEYS[2], 'g') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[5], 'XX', 'EX', ARGV[6])
redis.call('HSET', KEYS[2], 'g', ARGV[2], 'u', ARGV[3], 'a', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if redis.call('HEXISTS', KEYS[3], ARGV[8]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[8], ARGV[5], ARGV[8] .. ' up', ARGV[3])
end
return 1
";

/// Unix milliseconds of `at` (`None`: now), by the wall clock.
fn unix_ms_of(at: Option<std::time::Instant>) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ago = at.map_or(Duration::ZERO, |at| at.elapsed());
    now.saturating_sub(ago).as_millis() as u64
}

/// The instant a wall-clock time in unix milliseconds was (clamped to now).
fn instant_of_unix_ms(ms: u64) -> std::time::Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let ago = Duration::from_millis(now_ms.saturating_sub(ms));
    let now = std::time::Instant::now();
    now.checked_sub(ago).unwrap_or(now)
}

/// Claim expired sessions for reaping. KEYS = expiry index, its records, claims;
/// ARGV = record key prefix, lease (ms), most sessions to claim.
///
/// Redis expires records silently, so the index keeps every recorded session with the
/// deadline it had when last scored; requests slide the record's TTL, never the index
/// (the request path stays one command). The script re-checks members whose score has
/// passed against their record: one that still lives is re-scored with its remaining
/// TTL; one whose key is gone has expired, and is claimed: moved to the claims set with
/// a lease, and returned with its stored record. Claims whose lease ran out (the
/// replica that held them died before acknowledging) are claimed again first. A script
/// runs atomically, so no two replicas claim the same expiry; only a replica that dies
/// between its `DELETE` and its acknowledgement leaves one to be sent twice. Replies a
/// flat array `id, record, id, record, ...`; the record of a session that failed over
/// is followed by a newline and its upstream id (what the `DELETE` names).
pub const CLAIM_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local out, n = {}, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)) do
  local v = redis.call('HGET', KEYS[2], id)
  if v then
    local up = redis.call('HGET', KEYS[2], id .. ' up')
    if up then v = v .. '\n' .. up end
    redis.call('ZADD', KEYS[3], now + lease, id)
    out[#out + 1] = id
    out[#out + 1] = v
    n = n + 1
  else
    redis.call('ZREM', KEYS[3], id)
  end
end
if n < limit then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit - n)) do
    local ttl = redis.call('PTTL', ARGV[1] .. id)
    if ttl >= 0 then
      redis.call('ZADD', KEYS[1], now + ttl + 1, id)
    else
      redis.call('ZREM', KEYS[1], id)
      local v = redis.call('HGET', KEYS[2], id)
      if v and ttl == -2 then
        local up = redis.call('HGET', KEYS[2], id .. ' up')
        if up then v = v .. '\n' .. up end
        redis.call('ZADD', KEYS[3], now + lease, id)
        out[#out + 1] = id
        out[#out + 1] = v
      else
        redis.call('HDEL', KEYS[2], id, id .. ' up')
      end
    end
  end
end
return out
";

/// End the records of drained backends (past their drain timeout), and of backends
/// removed from the configuration that still answered, and claim them for reaping.
/// Backends are matched by the name in the record, so a removed backend's records
/// are found although no replica's configuration names it any more. KEYS = expiry index, its records, claims, live set; ARGV = record key
/// prefix, lease (ms), `HSCAN` cursor, `HSCAN` count, client sets' name prefix, then
/// the backend names.
///
/// Walks the index's records with `HSCAN` (a bounded step per call; the caller keeps
/// the cursor). A record naming one of the backends, whose key still holds it, is
/// deleted as a `DELETE` would (key, live sets, index) and moved to the claims, like
/// an expiry: atomically, so no two replicas end and reap the same session. Replies
/// `{cursor, id, record, id, record, ...}`.
pub const DRAIN_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local names = {}
for i = 6, #ARGV do names[ARGV[i]] = true end
local scan = redis.call('HSCAN', KEYS[2], ARGV[3], 'COUNT', tonumber(ARGV[4]))
local out = {scan[1]}
local kv = scan[2]
for i = 1, #kv, 2 do
  local id, v = kv[i], kv[i + 1]
  local c, name = string.match(v, '^2|[sl]|%d+|(%x+)|(.+)$')
  if not name then name = string.match(v, '^1|[sl]|%d+|(.+)$') end
  if name and names[name] and redis.call('GET', ARGV[1] .. id) == v then
    redis.call('DEL', ARGV[1] .. id)
    redis.call('ZREM', KEYS[4], id)
    if c then redis.call('ZREM', ARGV[5] .. c, id) end
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), id)
    local up = redis.call('HGET', KEYS[2], id .. ' up')
    if up then v = v .. '\n' .. up end
    out[#out + 1] = id
    out[#out + 1] = v
  end
end
return out
";

/// `cmd(false)` (by SHA) on `link`, again as `cmd(true)` (with the script's source)
/// if Redis does not hold the script (it restarted, or `SCRIPT FLUSH`).
#[cfg(any(feature = "tokio", feature = "smol"))]
async fn script_on(
    link: &crate::redis_link::Link,
    cmd: impl Fn(bool) -> redis::Cmd,
) -> redis::RedisResult<Value> {
    match link.query(&cmd(false)).await {
        Err(e) if e.code() == Some("NOSCRIPT") => link.query(&cmd(true)).await,
        Ok(v) if RedisCodec::is_noscript(&v) => link.query(&cmd(true)).await,
        r => r,
    }
}

/// `op` carried out on `link` (its script by SHA, again with the source after a
/// `NOSCRIPT`), and what the reply means; `Unavailable` when Redis did not answer.
#[cfg(any(feature = "tokio", feature = "smol"))]
async fn run_op(link: &crate::redis_link::Link, codec: &RedisCodec, op: &StoreOp) -> StoreReply {
    let sent = script_on(link, |src| {
        if src {
            codec.command_with_source(op)
        } else {
            codec.command(op)
        }
    })
    .await;
    match sent {
        Ok(v) => codec.reply(op, v),
        Err(_) => StoreReply::Unavailable,
    }
}

/// Every future of `futs` run at once; their outputs in order.
#[cfg(any(feature = "tokio", feature = "smol"))]
async fn join_all<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match std::pin::Pin::new(&mut *f).poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// The clock and the pruning of a live set that [`ADMIT_SCRIPT`] and [`COUNT_SCRIPT`]
/// share: `now` (ms, Redis's clock) and `prune(set, record key prefix)`.
macro_rules! prune_lua {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function prune(set, prefix)
  local stale = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, 512)
  for _, id in ipairs(stale) do
    local ttl = redis.call('PTTL', prefix .. id)
    if ttl > 0 then redis.call('ZADD', set, now + ttl, id) else redis.call('ZREM', set, id) end
  end
end
"
    };
}

/// `StoreOp::Admit`: KEYS = live set, client set, client bucket; ARGV = max sessions,
/// client max sessions, rate (per s), burst (0: no such cap), record key prefix.
///
/// A set member's score is the record's deadline as last known, not necessarily its
/// current one (`GETEX` slides the record on every request and leaves the sets alone,
/// so the hot path stays one plain command). Members whose score has passed are
/// re-checked against their record (up to 512 per set per call): still there, they are
/// re-scored with its remaining TTL; gone, removed. So a count is exact at the moment
/// of admission: it counts exactly the records that exist. Then each cap is checked, then takes a token (milli-tokens,
/// refilled lazily on Redis's clock). Replies `{verdict, retry ms}`: 0 admit, 1 the
/// fleet's cap, 2 the client's cap, 3 the client's rate.
pub const ADMIT_SCRIPT: &str = concat!(
    prune_lua!(),
    r"
local max, cmax, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if max > 0 then
  prune(KEYS[1], ARGV[5])
  if redis.call('ZCARD', KEYS[1]) >= max then return {1, 0} end
end
if cmax > 0 then
  prune(KEYS[2], ARGV[5])
  if redis.call('ZCARD', KEYS[2]) >= cmax then return {2, 0} end
end
if rate > 0 then
  local cap = tonumber(ARGV[4]) * 1000
  local b = redis.call('HMGET', KEYS[3], 'l', 't')
  local level = tonumber(b[1]) or cap
  local at = tonumber(b[2]) or now
  if now > at then level = math.min(cap, level + (now - at) * rate) end
  if level < 1000 then return {3, math.ceil((1000 - level) / rate)} end
  level = level - 1000
  redis.call('HSET', KEYS[3], 'l', level, 't', math.max(now, at))
  redis.call('PEXPIRE', KEYS[3], math.ceil((cap - level) / rate) + 1000)
end
return {0, 0}
"
);

/// A cluster's admission, per shard: KEYS = the shard's live set and the client's set
/// in it; ARGV = the shard's record key prefix. Prunes both as [`ADMIT_SCRIPT`] does
/// and replies `{live sessions, the client's sessions}` of the shard; the router sums
/// the shards and checks the caps, then takes a token with [`ADMIT_SCRIPT`] on the
/// client's bucket alone.
pub const COUNT_SCRIPT: &str = concat!(
    prune_lua!(),
    r"
prune(KEYS[1], ARGV[1])
prune(KEYS[2], ARGV[1])
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}
"
);

/// Install the rustls crypto provider `rediss://` needs (installing twice is harmless).
#[cfg(any(feature = "tokio", feature = "smol"))]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The store over the `redis` crate's own connections ([`Link`](crate::redis_link::Link)):
/// one multiplexed, auto-reconnecting connection to the one server (or to the primary
/// the sentinels name, or one per cluster node) carries every command of the process,
/// pipelined; no request sets up a connection. The `redis` crate runs it on tokio when
/// a tokio runtime is current, else on smol.
#[cfg(any(feature = "tokio", feature = "smol"))]
pub struct ManagedRedis<R> {
    link: crate::redis_link::Link,
    /// `--store-wait-replicas`: a connection of its own for creating records and
    /// waiting for their replication. `WAIT` blocks the connection it is sent on, and
    /// counts the writes of that connection: on the shared one it would hold up every
    /// request's lookup behind it while a replica is slow or gone.
    creator: Option<crate::redis_link::Link>,
    codec: RedisCodec,
    timeout: Duration,
    wait_replicas: u32,
    /// `--store-cache-size` (one Redis server): the record cache and the connection
    /// that keeps it correct.
    tracker: Option<Tracker>,
    _rt: std::marker::PhantomData<fn() -> R>,
}

/// Slides queued for the background at most (past it a slide is dropped, and due
/// again at the session's next request).
#[cfg(any(feature = "tokio", feature = "smol"))]
const SLIDE_QUEUE: usize = 4096;

/// The record cache ([`crate::record_cache`]) and what keeps it correct: a RESP3
/// connection of its own to Redis with `CLIENT TRACKING ON BCAST PREFIX <key prefix>!
/// ... PREFIX <key prefix>~ NOLOOP` (every record key, no set beside them), whose invalidation messages evict entries as they arrive (in the
/// connection's reader, before any later reply on it). The store probe
/// ([`RemoteStore::ping`], every second) pings it: the cache answers only while it is
/// up, and is emptied whenever it drops, a probe of it fails or times out, or Redis
/// flushes. The slides of cached records go over it too (`NOLOOP`: they do not evict
/// this replica's own entries), in the background ([`RemoteStore::background`]).
#[cfg(any(feature = "tokio", feature = "smol"))]
struct Tracker {
    cache: Arc<crate::record_cache::RecordCache>,
    /// One Redis server: its address and settings (Sentinel: the primary the link
    /// follows, asked at each probe).
    fixed: Option<(String, ConnectionInfo)>,
    /// `--store-tls-ca`.
    tls_ca: Option<Vec<u8>>,
    /// The node tracked and the connection to it (RESP3).
    conn: std::sync::Mutex<Option<(String, redis::aio::MultiplexedConnection)>>,
    /// `(1 - fraction / 2) × TTL`: a lookup that misses slides only below this.
    keep: Duration,
    slides: std::sync::Mutex<SlideQueue>,
    /// Whether the last attempt to set tracking up failed (logged once per outage).
    warned: AtomicBool,
}

#[cfg(any(feature = "tokio", feature = "smol"))]
#[derive(Default)]
struct SlideQueue {
    keys: Vec<SessionKey>,
    waker: Option<std::task::Waker>,
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl Tracker {
    fn new(s: &RedisSettings, codec: &RedisCodec) -> Result<Option<Tracker>, ConfigError> {
        if s.cache_size == 0 || s.topology.sharded() {
            return Ok(None);
        }
        let fixed = match s.topology {
            Topology::Single => {
                let info = s.connection_info()?;
                Some((info.addr().to_string(), info))
            }
            _ => None,
        };
        let ttl = codec.ttl();
        Ok(Some(Tracker {
            cache: Arc::new(crate::record_cache::RecordCache::new(
                s.cache_size,
                ttl,
                s.slide_fraction,
            )),
            fixed,
            tls_ca: s.tls_ca.clone(),
            conn: std::sync::Mutex::new(None),
            keep: ttl.mul_f64(1.0 - s.slide_fraction / 2.0),
            slides: std::sync::Mutex::default(),
            warned: AtomicBool::new(false),
        }))
    }

    fn tracked(&self) -> Option<(String, redis::aio::MultiplexedConnection)> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.tracked().map(|(_, c)| c)
    }

    fn set_conn(&self, c: Option<(String, redis::aio::MultiplexedConnection)>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    /// Queue a slide of `k` for the background.
    fn queue_slide(&self, k: &SessionKey) {
        let mut q = self.slides.lock().unwrap_or_else(|e| e.into_inner());
        if q.keys.len() >= SLIDE_QUEUE {
            drop(q);
            self.cache.slide_dropped(k);
            return;
        }
        q.keys.push(k.clone());
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    /// The next batch of queued slides (waits for one).
    async fn next_slides(&self) -> Vec<SessionKey> {
        std::future::poll_fn(|cx| {
            let mut q = self.slides.lock().unwrap_or_else(|e| e.into_inner());
            if q.keys.is_empty() {
                q.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(std::mem::take(&mut q.keys))
            }
        })
        .await
    }

    /// What an invalidation message means for the cache: evict each session key under
    /// `prefix` it names; a null message (Redis flushed) or one of another shape
    /// empties the cache; the connection dropped: disable it.
    fn on_push(cache: &crate::record_cache::RecordCache, prefix: &str, p: redis::PushInfo) {
        match p.kind {
            redis::PushKind::Invalidate => match p.data.first() {
                Some(Value::Array(keys)) => {
                    for k in keys {
                        let key = match k {
                            Value::BulkString(b) => std::str::from_utf8(b).ok(),
                            Value::SimpleString(s) => Some(s.as_str()),
                            _ => None,
                        };
                        match key.map(|k| k.strip_prefix(prefix)) {
                            Some(Some(id)) => cache.invalidate(id),
                            // not a key of ours (BCAST: never; be safe)
                            Some(None) => {}
                            None => cache.flush(),
                        }
                    }
                }
                _ => cache.flush(),
            },
            redis::PushKind::Disconnection => {
                if cache.is_enabled() {
                    warn!("store: record cache off: its tracking connection dropped; lookups read Redis");
                }
                cache.disable()
            }
            _ => {}
        }
    }

    /// The probe: set tracking up when it is not, else `PING` over it; the cache is
    /// enabled by a success (that began after the last disabling) and disabled by a
    /// failure.
    async fn probe<R: crate::rt::Runtime>(
        &self,
        link: &crate::redis_link::Link,
        prefix: &str,
        timeout: Duration,
    ) {
        // the node to track: the one server, or the primary the sentinels named
        let target = match (&self.fixed, link) {
            (Some(f), _) => Some(f.clone()),
            (None, crate::redis_link::Link::Sentinel(s)) => s.primary(),
            _ => None,
        };
        let Some((addr, info)) = target else {
            self.cache.disable();
            self.set_conn(None);
            return;
        };
        if let Some((tracked, _)) = self.tracked() {
            if tracked != addr {
                // a promotion: the old primary's messages no longer cover every write
                tracing::info!(from = %tracked, to = %addr, "store: record cache emptied, tracking the promoted primary");
                self.cache.disable();
                self.set_conn(None);
            }
        }
        let epoch = self.cache.epoch();
        let ok = match self.conn() {
            Some(mut c) => {
                let ping = redis::cmd("PING");
                matches!(
                    crate::rt::timeout::<R, _>(timeout, ping.query_async::<Value>(&mut c)).await,
                    Some(Ok(_))
                )
            }
            None => {
                match crate::rt::timeout::<R, _>(timeout, self.connect(info, prefix, timeout)).await
                {
                    Some(Ok(c)) => {
                        self.set_conn(Some((addr, c)));
                        if self.warned.swap(false, Ordering::Relaxed) {
                            tracing::info!("store: record cache tracking Redis again");
                        }
                        true
                    }
                    Some(Err(e)) => {
                        if !self.warned.swap(true, Ordering::Relaxed) {
                            warn!(error = %e, "store: cannot set up the record cache's tracking connection; lookups read Redis");
                        }
                        false
                    }
                    None => false,
                }
            }
        };
        if ok {
            if !self.cache.is_enabled() && self.cache.enable(epoch) {
                tracing::info!(
                    capacity = self.cache.capacity(),
                    "store: record cache on (tracking Redis invalidations)"
                );
            }
        } else {
            if self.cache.is_enabled() {
                warn!(
                    "store: record cache off: its tracking connection is down; lookups read Redis"
                );
            }
            self.cache.disable();
            self.set_conn(None);
        }
    }

    async fn connect(
        &self,
        info: ConnectionInfo,
        prefix: &str,
        timeout: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let r = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = crate::redis_link::client(self.tls_ca.as_deref(), info.set_redis_settings(r))?;
        let (cache, p) = (self.cache.clone(), prefix.to_owned());
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(move |info: redis::PushInfo| {
                Tracker::on_push(&cache, &p, info);
                Ok::<(), std::convert::Infallible>(())
            });
        let mut c = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        // One prefix per first character a session id can have (visible ASCII): the
        // keys of every record, and none of the sets beside them (`<prefix> live`, the
        // client sets, buckets, the expiry index: a space after the prefix), whose
        // changes on every session start and end would otherwise be sent too.
        let mut track = redis::cmd("CLIENT");
        track.arg("TRACKING").arg("ON").arg("BCAST");
        let mut p = String::with_capacity(prefix.len() + 1);
        for c in 0x21u8..=0x7e {
            p.clear();
            p.push_str(prefix);
            p.push(char::from(c));
            track.arg("PREFIX").arg(p.as_str());
        }
        track.arg("NOLOOP");
        let _: () = track.query_async(&mut c).await?;
        Ok(c)
    }

    /// Send the queued slides, forever (the store probe's companion).
    async fn run_slides(&self, codec: &RedisCodec) {
        loop {
            let keys = self.next_slides().await;
            let Some(c) = self.conn() else {
                for k in &keys {
                    self.cache.slide_dropped(k);
                }
                continue;
            };
            let sent: Vec<_> = keys
                .iter()
                .map(|k| {
                    let mut c = c.clone();
                    Box::pin(async move {
                        let r = codec.slide_command(k).query_async::<Value>(&mut c).await;
                        let r = match r {
                            Ok(Value::Array(a)) => Ok(a.into_iter().next().unwrap_or(Value::Nil)),
                            // before Redis 7.0 (no EXPIRE GT): the record script, which
                            // this replica's own invalidation then evicts
                            Err(e)
                                if e.kind()
                                    == redis::ErrorKind::Server(
                                        redis::ServerErrorKind::ResponseError,
                                    ) =>
                            {
                                let op = StoreOp::Touch(k.clone());
                                match codec.command(&op).query_async::<Value>(&mut c).await {
                                    Err(e) if e.code() == Some("NOSCRIPT") => {
                                        codec.command_with_source(&op).query_async(&mut c).await
                                    }
                                    r => r,
                                }
                            }
                            r => r,
                        };
                        (k, r)
                    })
                })
                .collect();
            for (k, r) in join_all(sent).await {
                match r {
                    // the record is gone (EXPIRE GT: 0), or no record: forget it
                    Ok(Value::Nil | Value::Boolean(false) | Value::Int(0)) => {
                        self.cache.forget(k.as_str())
                    }
                    Ok(_) => {}
                    Err(_) => self.cache.slide_dropped(k),
                }
            }
        }
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl<R> std::fmt::Debug for ManagedRedis<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedRedis")
            .field("codec", &self.codec)
            .finish()
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl<R: crate::rt::Runtime> ManagedRedis<R> {
    /// A store that connects lazily (in the background, retrying): the router starts
    /// even while Redis is unreachable, answering 503 for what needs a record. Call it
    /// inside the runtime that will drive it. `shared` hears which node it talks to.
    pub fn new(
        s: &RedisSettings,
        router: Arc<Router>,
        shared: Option<Arc<crate::Shared>>,
    ) -> Result<Self, ConfigError> {
        install_crypto_provider();
        let link = crate::redis_link::Link::new(s, shared)
            .map_err(|e| ConfigError(format!("store: invalid Redis URL: {e}")))?;
        let creator = (s.wait_replicas > 0)
            .then(|| crate::redis_link::Link::new(s, None))
            .transpose()
            .map_err(|e| ConfigError(format!("store: invalid Redis URL: {e}")))?;
        let codec = RedisCodec::new(s, router);
        Ok(ManagedRedis {
            link,
            creator,
            tracker: Tracker::new(s, &codec)?,
            codec,
            timeout: s.timeout,
            wait_replicas: s.wait_replicas,
            _rt: std::marker::PhantomData,
        })
    }

    /// `cmd(false)` (by SHA), again as `cmd(true)` (with the script's source) if
    /// Redis does not hold the script (it restarted, or `SCRIPT FLUSH`).
    async fn script(&self, cmd: impl Fn(bool) -> redis::Cmd) -> redis::RedisResult<Value> {
        script_on(&self.link, cmd).await
    }

    /// A cluster's admission: the shards' counts (sent at once), the caps, then the
    /// client's bucket.
    async fn admit_in_parts(&self, a: &mcp_router_core::AdmitRequest) -> StoreReply {
        let shards = if self.codec.counts_needed(a) {
            self.codec.shard_count()
        } else {
            0
        };
        let pending: Vec<_> = (0..shards)
            .map(|i| Box::pin(self.script(move |src| self.codec.admit_count(i, a, src))))
            .collect();
        let mut replies = Vec::with_capacity(shards);
        for r in join_all(pending).await {
            match r {
                Ok(v) => replies.push(v),
                Err(_) => return StoreReply::Unavailable,
            }
        }
        match self.codec.admit_verdict(a, &replies) {
            Some(Admission::Admit) => {}
            Some(refused) => return StoreReply::Admitted(refused),
            None => return StoreReply::Unavailable,
        }
        if self.codec.admit_bucket(a, false).is_none() {
            return StoreReply::Admitted(Admission::Admit);
        }
        match self
            .script(|src| self.codec.admit_bucket(a, src).expect("a rate"))
            .await
        {
            Ok(v) => self.codec.reply(&StoreOp::Admit(*a), v),
            Err(_) => StoreReply::Unavailable,
        }
    }

    /// `--store-wait-replicas`: a new record (created on the creator connection)
    /// counts only once that many replicas hold it; otherwise it is deleted again and
    /// the session refused (503), so that no acknowledged session is lost to a
    /// failover.
    async fn create_replicated(
        &self,
        creator: &crate::redis_link::Link,
        op: &StoreOp,
        k: &SessionKey,
    ) -> StoreReply {
        let reply = run_op(creator, &self.codec, op).await;
        if reply != StoreReply::Inserted(true) {
            return reply;
        }
        let got = creator
            .wait_replicas(&self.codec.key(k), self.wait_replicas, self.timeout)
            .await;
        if matches!(got, Ok(n) if n >= i64::from(self.wait_replicas)) {
            return StoreReply::Inserted(true);
        }
        warn!(
            replicas = self.wait_replicas,
            acknowledged = ?got.as_ref().ok(),
            "store: a new session record was not replicated in time; the session is refused"
        );
        run_op(&self.link, &self.codec, &StoreOp::Delete(k.clone())).await;
        StoreReply::Unavailable
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl<R: crate::rt::Runtime<Remote = ManagedRedis<R>>> crate::Frontend<R> {
    /// The runtime instance over `shared`, with a [`ManagedRedis`] when the settings
    /// name Redis. Call it inside the runtime (or, thread-per-core, the executor) that
    /// will drive it.
    pub fn managed(shared: Arc<crate::Shared>) -> Result<Self, ConfigError> {
        let remote = match &shared.settings().store {
            crate::StoreSettings::Memory => None,
            crate::StoreSettings::Redis(r) => Some(ManagedRedis::new(
                r,
                shared.router.clone(),
                Some(shared.clone()),
            )?),
        };
        Ok(crate::Frontend::new(shared, remote))
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl<R: crate::rt::Runtime> ManagedRedis<R> {
    /// The record cache, when there is one (for tests and metrics).
    pub fn record_cache(&self) -> Option<&crate::record_cache::RecordCache> {
        self.tracker.as_ref().map(|t| &*t.cache)
    }

    /// A lookup with the record cache: from memory when it holds the record (its slide
    /// queued when due), else one round trip whose reply fills it.
    async fn cached_get(&self, t: &Tracker, k: &SessionKey) -> StoreReply {
        use crate::record_cache::Lookup;
        let now = std::time::Instant::now();
        let ticket = match t.cache.lookup(k, now) {
            Lookup::Hit(h) => {
                if h.slide {
                    t.queue_slide(k);
                }
                return StoreReply::Found(Some(h.record));
            }
            Lookup::Miss(ticket) => ticket,
        };
        let codec = &self.codec;
        let q = self.script(|src| codec.lazy_get_command(k, t.keep, src));
        let reply = match crate::rt::timeout::<R, _>(self.timeout, q).await {
            Some(Ok(v)) => codec.reply(&StoreOp::Get(k.clone()), v),
            _ => StoreReply::Unavailable,
        };
        // only a record of a configured backend, never "none" nor a failover's state
        if let StoreReply::Found(Some(r)) = reply {
            if r.backend != BackendId::UNCONFIGURED {
                t.cache.fill(k, r, ticket, now);
            }
        }
        reply
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl<R: crate::rt::Runtime> RemoteStore for ManagedRedis<R> {
    async fn execute(&self, op: &StoreOp) -> StoreReply {
        if let Some(t) = &self.tracker {
            match op {
                StoreOp::Get(k) => return self.cached_get(t, k).await,
                // a new session: cached when Redis reports the creation itself
                StoreOp::Insert(k, r) | StoreOp::InsertFailover(k, r, _) => {
                    t.cache.forget(k.as_str());
                    if r.backend != BackendId::UNCONFIGURED {
                        t.cache.expect_creation(k, *r);
                    }
                    let reply = self.execute_uncached(op).await;
                    if reply != StoreReply::Inserted(true) {
                        t.cache.forget(k.as_str());
                    }
                    return reply;
                }
                // this replica's own writes of a record: no stale copy of it, whatever
                // the invalidation's timing
                StoreOp::Delete(k) | StoreOp::FailOver { key: k, .. } => {
                    t.cache.forget(k.as_str());
                    let r = self.execute_uncached(op).await;
                    t.cache.forget(k.as_str());
                    return r;
                }
                _ => {}
            }
        }
        self.execute_uncached(op).await
    }

    async fn ping(&self) -> bool {
        let ok = crate::rt::timeout::<R, _>(self.timeout, self.link.ping())
            .await
            .unwrap_or(false);
        if let Some(t) = &self.tracker {
            t.probe::<R>(&self.link, self.codec.prefix(), self.timeout)
                .await;
        }
        ok
    }

    async fn background(&self) {
        match &self.tracker {
            Some(t) => t.run_slides(&self.codec).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl<R: crate::rt::Runtime> ManagedRedis<R> {
    async fn execute_uncached(&self, op: &StoreOp) -> StoreReply {
        let codec = &self.codec;
        let q = async move {
            if let (StoreOp::Admit(a), true) = (op, codec.admits_in_parts()) {
                return self.admit_in_parts(a).await;
            }
            if let (StoreOp::Insert(k, _) | StoreOp::InsertFailover(k, _, _), Some(c)) =
                (op, &self.creator)
            {
                return self.create_replicated(c, op, k).await;
            }
            run_op(&self.link, codec, op).await
        };
        // WAIT is bounded by the store timeout itself: room for it after the insert
        let limit = if self.wait_replicas > 0 {
            self.timeout * 2
        } else {
            self.timeout
        };
        crate::rt::timeout::<R, _>(limit, q)
            .await
            .unwrap_or(StoreReply::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_router_core::{Backend, Config};
    use std::time::Instant;

    fn codec() -> RedisCodec {
        let c = Config {
            backends: vec![Backend::parse("http://127.0.0.1:1", Some("b0")).unwrap()],
            ..Config::default()
        };
        let router = Arc::new(Router::new(Arc::new(c), Instant::now()));
        let s = RedisSettings::single("redis://127.0.0.1:1", "p:", Duration::from_millis(10));
        RedisCodec::new(&s, router)
    }

    fn packed(c: redis::Cmd) -> String {
        String::from_utf8(c.get_packed_command()).unwrap()
    }

    /// The slot Redis Cluster puts `key` in (its first non-empty `{...}`, else the
    /// whole key).
    fn slot(key: &str) -> u16 {
        let tagged = key
            .find('{')
            .and_then(|i| key[i + 1..].find('}').map(|j| &key[i + 1..i + 1 + j]))
            .filter(|t| !t.is_empty())
            .unwrap_or(key);
        crc16(tagged.as_bytes()) % 16384
    }

    /// The arguments of a packed command (bulk strings), in order.
    fn args(c: &redis::Cmd) -> Vec<String> {
        let p = String::from_utf8(c.get_packed_command()).unwrap();
        let mut out = Vec::new();
        let mut it = p.split("\r\n");
        while let Some(l) = it.next() {
            if l.starts_with('$') {
                out.push(it.next().unwrap().to_string());
            }
        }
        out
    }

    #[test]
    fn on_a_cluster_every_key_of_a_session_shares_its_shards_slot() {
        // CRC16/XMODEM as Redis documents it: "123456789" -> 0x31C3
        assert_eq!(crc16(b"123456789"), 0x31c3);
        let tags = shard_tags();
        assert_eq!(tags.len(), SHARDS);
        for (i, t) in tags.iter().enumerate() {
            assert_eq!(
                slot(&format!("{{{t}}}")) as usize / (16384 / SHARDS),
                i,
                "{t}"
            );
        }
        let cfg = Config {
            backends: vec![Backend::parse("http://127.0.0.1:1", Some("b0")).unwrap()],
            failover: Some(Default::default()),
            ..Config::default()
        };
        let router = Arc::new(Router::new(Arc::new(cfg), Instant::now()));
        let s = RedisSettings {
            topology: Topology::parse("redis-cluster://127.0.0.1:7000").unwrap(),
            ..RedisSettings::single("redis://unused", "p:", Duration::from_millis(10))
        };
        let c = RedisCodec::new(&s, router);
        assert_eq!(c.shard_count(), SHARDS);
        let mut shards_used = std::collections::HashSet::new();
        for i in 0..200 {
            let k = SessionKey::new(format!("session-{i}").as_bytes(), 256).unwrap();
            let shard = c.shard(&k);
            shards_used.insert(shard);
            let want = slot(&c.key(&k));
            assert_eq!(want, slot(&format!("{{{}}}", tags[shard])));
            let rec = Record {
                backend: BackendId(0),
                era: Era::Streamable,
                client: ClientId(7),
            };
            // every key a script names, or builds from a name it is given, is in
            // the session's slot
            for op in [
                StoreOp::Get(k.clone()),
                StoreOp::Delete(k.clone()),
                StoreOp::Insert(k.clone(), rec),
                StoreOp::LoadFailover(k.clone()),
            ] {
                for a in args(&c.command(&op)).iter().filter(|a| a.starts_with("p:")) {
                    assert_eq!(slot(a), want, "{op:?}: {a}");
                }
            }
            for p in c.ack_pipelines(std::slice::from_ref(&k)) {
                let packed = String::from_utf8(p.get_packed_pipeline()).unwrap();
                for a in packed.split("\r\n").filter(|a| a.starts_with("p:")) {
                    assert_eq!(slot(a), want, "ack: {a}");
                }
            }
        }
        assert_eq!(
            shards_used.len(),
            SHARDS,
            "sessions spread over every shard"
        );
        // the reaper's and admission's per-shard scripts stay in their shard
        for (shard, tag) in tags.iter().enumerate() {
            let want = slot(&format!("{{{tag}}}"));
            let a = mcp_router_core::AdmitRequest {
                client: ClientId(7),
                max_sessions: 10,
                client_max_sessions: 5,
                rate: 1,
                burst: 1,
            };
            for cmd in [
                c.claim_command(shard, Duration::from_secs(1), 10, false),
                c.drain_command(shard, &["b0".into()], 0, 10, Duration::from_secs(1), false),
                c.admit_count(shard, &a, false),
            ] {
                for a in args(&cmd).iter().filter(|a| a.starts_with("p:")) {
                    assert_eq!(slot(a), want, "shard {shard}: {a}");
                }
            }
        }
        // a client's bucket: one key with the client's own tag
        let a = mcp_router_core::AdmitRequest {
            client: ClientId(7),
            max_sessions: 0,
            client_max_sessions: 0,
            rate: 1,
            burst: 1,
        };
        assert!(c.admits_in_parts() && !c.counts_needed(&a));
        let bucket = args(&c.admit_bucket(&a, false).unwrap());
        assert!(
            bucket.contains(&"p:{c0000000000000007} bucket".to_string()),
            "{bucket:?}"
        );
        // a single Redis keeps its layout: no tags
        assert_eq!(codec().key(&SessionKey::new(b"abc", 256).unwrap()), "p:abc");
        assert!(!codec().admits_in_parts());
    }

    #[test]
    fn commands_and_replies_round_trip() {
        let c = codec();
        let k = SessionKey::new(b"abc", 256).unwrap();
        let rec = Record {
            backend: BackendId(0),
            era: Era::LegacySse,
            client: ClientId(0xab),
        };
        let set = packed(c.command(&StoreOp::Insert(k.clone(), rec)));
        assert!(set.contains("EVALSHA\r\n"), "{set}");
        assert!(set.contains("$5\r\np:abc\r\n"), "{set}");
        assert!(set.contains("p: client 00000000000000ab\r\n"), "{set}");
        assert!(
            packed(c.command_with_source(&StoreOp::Insert(k.clone(), rec)))
                .contains("'SET', KEYS[1], ARGV[1], 'NX'")
        );
        let stored = set.split("\r\n").find(|l| l.starts_with("2|l|")).unwrap();
        assert!(stored.ends_with("|00000000000000ab|b0"), "{stored}");
        // version 1 records (no client) still read
        assert_eq!(
            c.decode(b"1|s|0|b0").map(|r| (r.backend, r.client)),
            Some((BackendId(0), ClientId(0)))
        );
        for bad in [
            &b"2|s|0|b0"[..],
            b"2|s|0||b0",
            b"2|s|0|xyz|b0",
            b"3|s|0|ab|b0",
        ] {
            assert_eq!(c.decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(c.decode(stored.as_bytes()), Some(rec));
        assert_eq!(
            c.reply(&StoreOp::Get(k.clone()), Value::BulkString(stored.into())),
            StoreReply::Found(Some(rec))
        );
        assert_eq!(
            c.reply(&StoreOp::Get(k.clone()), Value::Nil),
            StoreReply::Found(None)
        );
        assert_eq!(
            c.reply(
                &StoreOp::Delete(k.clone()),
                Value::BulkString(stored.into())
            ),
            StoreReply::Deleted(Some(rec))
        );
        assert_eq!(
            c.reply(&StoreOp::Insert(k.clone(), rec), Value::Nil),
            StoreReply::Inserted(false)
        );
        assert_eq!(
            c.reply(&StoreOp::Touch(k.clone()), Value::BulkString(stored.into())),
            StoreReply::Touched(true)
        );
        assert_eq!(
            c.reply(&StoreOp::Touch(k.clone()), Value::Nil),
            StoreReply::Touched(false)
        );
        // a reply of the wrong shape is "unavailable", never "unknown"
        assert_eq!(
            c.reply(&StoreOp::Get(k.clone()), Value::Array(vec![])),
            StoreReply::Unavailable
        );
        // a well-formed record naming a backend not configured here reads as no
        // configured backend (the core ends that session)
        assert_eq!(
            c.decode(b"1|s|0|elsewhere"),
            Some(Record {
                backend: BackendId::UNCONFIGURED,
                era: Era::Streamable,
                client: ClientId(0),
            })
        );
    }

    /// `--failover reinitialize` on Redis: the insert carries the body sealed (never the
    /// plaintext) in the same script; a lookup reads only the new upstream id; the load
    /// opens the body again; the mapping's script says whether it won.
    #[test]
    fn failover_state_is_sealed_in_the_insert_and_read_only_by_the_load() {
        let ring = mcp_router_core::KeyRing::parse(&format!("k:{}\n", "5a".repeat(32))).unwrap();
        let c = Config {
            backends: vec![Backend::parse("http://127.0.0.1:1", Some("b0")).unwrap()],
            failover: Some(mcp_router_core::failover::FailoverSettings {
                remote: true,
                ..Default::default()
            }),
            session_keys: Some(Arc::new(ring)),
            ..Config::default()
        };
        let router = Arc::new(Router::new(Arc::new(c), Instant::now()));
        let s = RedisSettings::single("redis://127.0.0.1:1", "p:", Duration::from_millis(10));
        let c = RedisCodec::new(&s, router);
        let k = SessionKey::new(b"abc", 256).unwrap();
        let rec = Record {
            backend: BackendId(0),
            era: Era::Streamable,
            client: ClientId(0xab),
        };
        let params = br#"{"method":"initialize","params":{"clientInfo":{"name":"plain-name"}}}"#;
        let state = Arc::new(Failover {
            params: bytes::Bytes::from_static(params),
            upstream: None,
            at: None,
            generation: 0,
        });
        let insert = c
            .command(&StoreOp::InsertFailover(k.clone(), rec, state))
            .get_packed_command();
        let text = String::from_utf8_lossy(&insert);
        assert!(
            text.contains("EVALSHA\r\n") && text.contains("\r\n$1\r\n6\r\n"),
            "{text}"
        );
        assert!(text.contains("p: failover abc\r\n"), "{text}");
        assert!(
            !text.contains("plain-name"),
            "the body goes out sealed: {text}"
        );
        // the sealed body is the last argument
        let sealed = insert[insert.len() - (params.len() + 31) - 2..insert.len() - 2].to_vec();
        assert_eq!(sealed[0], mcp_router_core::seal::VALUE_VERSION);
        // the lookup names the hash (to slide it) and reads the upstream id only
        let get = packed(c.command(&StoreOp::Get(k.clone())));
        assert!(get.contains("\r\np: failover \r\n$3\r\nabc\r\n"), "{get}");
        assert!(packed(c.command(&StoreOp::Delete(k.clone()))).contains("p: failover abc"));
        let stored = "2|s|0|00000000000000ab|b0";
        assert_eq!(
            c.reply(&StoreOp::Get(k.clone()), Value::BulkString(stored.into())),
            StoreReply::Found(Some(rec))
        );
        let StoreReply::FoundFailover(r, f) = c.reply(
            &StoreOp::Get(k.clone()),
            Value::Array(vec![
                Value::BulkString(stored.into()),
                Value::BulkString(b"new-up".to_vec()),
            ]),
        ) else {
            panic!("a failed-over lookup carries the upstream id");
        };
        assert_eq!(
            (r, f.upstream.as_ref().map(SessionKey::as_str)),
            (rec, Some("new-up"))
        );
        assert!(
            f.params.is_empty(),
            "the body is not read on the request path"
        );
        // the load opens it
        let load = |p: Vec<u8>, key: &SessionKey| {
            c.reply(
                &StoreOp::LoadFailover(key.clone()),
                Value::Array(vec![
                    Value::BulkString(p),
                    Value::BulkString(b"1".to_vec()),
                    Value::BulkString(b"new-up".to_vec()),
                    Value::BulkString(b"1".to_vec()),
                ]),
            )
        };
        let StoreReply::FailoverState(Some(f)) = load(sealed.clone(), &k) else {
            panic!("loaded");
        };
        assert_eq!(&f.params[..], &params[..]);
        assert_eq!(
            (f.generation, f.upstream.as_ref().map(SessionKey::as_str)),
            (1, Some("new-up"))
        );
        assert!(f.at.is_some());
        // copied under another session's key, or tampered: not eligible
        let other = SessionKey::new(b"abd", 256).unwrap();
        assert_eq!(
            load(sealed.clone(), &other),
            StoreReply::FailoverState(None)
        );
        let mut bad = sealed;
        bad[20] ^= 1;
        assert_eq!(load(bad, &k), StoreReply::FailoverState(None));
        let fo = StoreOp::FailOver {
            key: k.clone(),
            record: rec,
            state: Arc::new(Failover {
                params: bytes::Bytes::new(),
                upstream: Some(other.clone()),
                at: Some(Instant::now()),
                generation: 1,
            }),
            from: 0,
        };
        assert!(packed(c.command_with_source(&fo)).contains("'HGET', KEYS[2], 'g'"));
        assert_eq!(c.reply(&fo, Value::Int(1)), StoreReply::FailedOver(true));
        assert_eq!(c.reply(&fo, Value::Int(0)), StoreReply::FailedOver(false));
        assert_eq!(c.reply(&fo, Value::Nil), StoreReply::Unavailable);
    }

    /// The expiry index's claim and drain replies: pairs of id and stored record, the
    /// drain's after its cursor; a stored copy that is not a record reads as none, a
    /// reply of another shape as nothing claimed.
    #[test]
    fn claim_and_drain_replies_read_as_sessions_and_records() {
        let c = codec();
        let claim = packed(c.claim_command(0, Duration::from_secs(60), 100, false));
        assert!(claim.contains("EVALSHA\r\n"), "{claim}");
        for k in [
            "p: reap\r\n",
            "p: reap records\r\n",
            "p: reap claims\r\n",
            "60000\r\n",
        ] {
            assert!(claim.contains(k), "{k}: {claim}");
        }
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("abc"),
            bulk("2|s|0|00000000000000ab|b0"),
            bulk("def"),
            bulk("not a record"),
            bulk("ghi"),
            bulk("2|s|0|00000000000000ab|b0\nnew-up"),
        ]);
        let got = c.claimed(reply).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].id.as_str(), "abc");
        let rec = Record {
            backend: BackendId(0),
            era: Era::Streamable,
            client: ClientId(0xab),
        };
        assert_eq!((got[0].record, got[0].upstream.as_ref()), (Some(rec), None));
        assert_eq!(got[0].name.as_deref(), Some("b0"));
        assert_eq!((got[1].id.as_str(), got[1].record), ("def", None));
        assert_eq!(got[1].name, None);
        // a session that failed over: acknowledged by its id, reaped by the new one
        assert_eq!(got[2].id.as_str(), "ghi");
        assert_eq!(got[2].record, Some(rec));
        assert_eq!(
            got[2].upstream.as_ref().map(SessionKey::as_str),
            Some("new-up")
        );
        let ack = String::from_utf8(c.ack_pipelines(&[got[2].id.clone()])[0].get_packed_pipeline())
            .unwrap();
        assert!(ack.contains("$6\r\nghi up\r\n"), "{ack}");
        assert_eq!(c.claimed(Value::Array(vec![bulk("odd")])), None);
        assert_eq!(c.claimed(Value::Nil), None);
        let (cursor, ended) = c
            .drained(Value::Array(vec![
                bulk("17"),
                bulk("abc"),
                bulk("1|s|0|b0"),
                bulk("def"),
                bulk("2|s|0|00000000000000ab|removed|name"),
            ]))
            .unwrap();
        assert_eq!((cursor, ended.len()), (17, 2));
        assert_eq!(ended[0].name.as_deref(), Some("b0"));
        // a backend no longer configured here: no id, found again by its name
        assert_eq!(
            ended[1].record.map(|r| r.backend),
            Some(BackendId::UNCONFIGURED)
        );
        assert_eq!(ended[1].name.as_deref(), Some("removed|name"));
        assert_eq!(c.drained(Value::Array(vec![])), None);
        let drain =
            packed(c.drain_command(0, &["b0".into()], 17, 64, Duration::from_secs(1), true));
        assert!(drain.contains("HSCAN"), "the source: {drain}");
        assert!(
            drain.ends_with("$10\r\np: client \r\n$2\r\nb0\r\n"),
            "{drain}"
        );
    }

    /// Read, slide and delete are the verifying script, by SHA, on the prefixed key;
    /// the NOSCRIPT retry carries the source. Nothing but `SET NX` writes blindly.
    #[test]
    fn only_the_verifying_script_reads_slides_or_deletes() {
        let c = codec();
        let k = SessionKey::new(b"abc", 256).unwrap();
        let sha = redis::Script::new(RECORD_SCRIPT).get_hash().to_owned();
        assert_eq!(sha.len(), 40);
        for (op, tail) in [
            (StoreOp::Get(k.clone()), "$5\r\nslide\r\n"),
            (StoreOp::Touch(k.clone()), "$5\r\nslide\r\n"),
            (StoreOp::Delete(k.clone()), "$3\r\ndel\r\n"),
        ] {
            let by_sha = packed(c.command(&op));
            assert!(
                by_sha.starts_with(&format!(
                    "*{}\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n1\r\n$5\r\np:abc\r\n{tail}",
                    if tail.contains("del") { 10 } else { 6 }
                )),
                "{by_sha}"
            );
            let by_source = packed(c.command_with_source(&op));
            assert!(by_source.starts_with("*"), "{by_source}");
            assert!(by_source.contains("\r\nEVAL\r\n"), "{by_source}");
            assert!(by_source.contains(RECORD_SCRIPT), "{by_source}");
            assert!(by_source.contains(&format!("$5\r\np:abc\r\n{tail}")));
            for forbidden in ["GETEX", "GETDEL", "EXPIRE\r\n", "\r\nDEL\r\n"] {
                assert!(!by_sha.contains(forbidden), "{by_sha}");
            }
        }
        let noscript = redis::parse_redis_value(b"-NOSCRIPT No matching script.\r\n").unwrap();
        assert!(RedisCodec::is_noscript(&noscript));
        let other = redis::parse_redis_value(b"-ERR boom\r\n").unwrap();
        assert!(!RedisCodec::is_noscript(&other));
        // an error reply that reaches `reply` is "unavailable"
        assert_eq!(c.reply(&StoreOp::Get(k), other), StoreReply::Unavailable);
    }

    /// A key under the prefix holding something else is no record: an unknown session,
    /// never an unconfigured backend (which the core would delete).
    #[test]
    fn a_value_that_is_not_a_record_is_an_unknown_session() {
        let c = codec();
        for v in [
            &b"garbage"[..],
            b"",
            b"hello",
            b"1",
            b"1|s|0",
            b"1|s|0|",
            b"1|x|0|b0",
            b"1|s||b0",
            b"1|s|12a|b0",
            b"2|s|0|b0",
            b" 1|s|0|b0",
            b"\xff\xfe",
        ] {
            assert_eq!(c.decode(v), None, "{:?}", String::from_utf8_lossy(v));
        }
        // a name that is not UTF-8 is still a well-formed record, of no backend here
        assert_eq!(
            c.decode(b"1|l|1|\xff").map(|r| r.backend),
            Some(BackendId::UNCONFIGURED)
        );
        let k = SessionKey::new(b"foreign", 256).unwrap();
        // the script's "not a record" (a string's length, -1 for another type)
        for n in [5, 0, -1] {
            assert_eq!(
                c.reply(&StoreOp::Get(k.clone()), Value::Int(n)),
                StoreReply::Found(None)
            );
            assert_eq!(
                c.reply(&StoreOp::Delete(k.clone()), Value::Int(n)),
                StoreReply::Deleted(None)
            );
            assert_eq!(
                c.reply(&StoreOp::Touch(k.clone()), Value::Int(n)),
                StoreReply::Touched(false)
            );
        }
        // should a value the script passed not decode here, it is still no record
        assert_eq!(
            c.reply(&StoreOp::Get(k), Value::BulkString(b"hello".to_vec())),
            StoreReply::Found(None)
        );
    }

    /// The record cache's commands: a miss reads with the record script in its `lazy`
    /// form (sliding only below `keep`), a background slide is `EXPIRE ... GT` in a
    /// transaction, never a TTL on a key without one.
    #[test]
    fn the_cache_reads_lazily_and_slides_with_expire_gt() {
        let c = codec();
        let k = SessionKey::new(b"abc", 256).unwrap();
        let lazy = packed(c.lazy_get_command(&k, Duration::from_millis(2850), false));
        assert!(
            lazy.ends_with("$5\r\np:abc\r\n$4\r\nlazy\r\n$4\r\n7200\r\n$4\r\n2850\r\n"),
            "{lazy}"
        );
        assert!(lazy.starts_with("*7\r\n$7\r\nEVALSHA\r\n"), "{lazy}");
        assert!(RECORD_SCRIPT.contains("ARGV[1] == 'lazy'"));
        let slide = String::from_utf8(c.slide_command(&k).get_packed_pipeline()).unwrap();
        assert_eq!(
            slide,
            "*1\r\n$5\r\nMULTI\r\n*4\r\n$6\r\nEXPIRE\r\n$5\r\np:abc\r\n$4\r\n7200\r\n$2\r\nGT\r\n*1\r\n$4\r\nEXEC\r\n"
        );
        // a slide's reply: slid, or the key is gone
        assert_eq!(c.ttl(), Duration::from_secs(7200));
    }

    #[test]
    fn the_key_prefix_is_checked() {
        assert!(check_key_prefix(DEFAULT_PREFIX).is_ok());
        assert!(check_key_prefix("a").is_ok());
        for bad in ["", " ", "a b", "p:\n", "\t", "x\u{7f}"] {
            let e = check_key_prefix(bad).unwrap_err();
            assert!(e.0.starts_with("store_key_prefix:"), "{e}");
        }
    }
}
