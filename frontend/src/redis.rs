//! The shared session store on Redis, so that any router replica routes any session,
//! whatever its runtime.
//!
//! Everything but the transport lives here: the key and value format, the command
//! each [`StoreOp`] becomes ([`RedisCodec::command`]) and how a reply reads
//! ([`RedisCodec::reply`]). The tokio and smol frontends carry the commands over the
//! `redis` crate's own multiplexed, auto-reconnecting connection ([`ManagedRedis`]);
//! the glommio frontend carries the same bytes over its own sockets.
//!
//! Each proxied request costs at most one round trip: `GETEX key EX ttl` reads the
//! record and slides its idle TTL at once.
//!
//! Key: `<prefix><session id>`. Value: `2|<era>|<created unix secs>|<client>|<backend
//! name>`, where era is `s` (Streamable HTTP) or `l` (legacy SSE) and client is the
//! opening client's [`ClientId`] in 16 hex digits (version `1` values, without the
//! client, written by earlier releases, still read).
//!
//! Caps and quotas are the fleet's: beside the records, `<prefix> live` is a sorted set
//! of every live session (score: its idle deadline in ms), `<prefix> client <id>` one per
//! client, and `<prefix> bucket <id>` a client's session-creation token bucket. The
//! space in these names keeps them apart from every session key (session ids are
//! visible ASCII). [`StoreOp::Admit`] prunes and counts them in one script (one round
//! trip, on Redis's clock so that every replica agrees); inserting a record adds it to
//! both sets in the same script as the `SET NX`. The backend is named, never
//! addressed: a name that is not configured here reads as an unconfigured backend,
//! which the core treats as an unknown session and deletes.

use mcp_router_core::mcp::SessionKey;
use mcp_router_core::{
    Admission, BackendId, ClientId, ConfigError, Era, Record, Router, StoreOp, StoreReply,
};
use redis::{ConnectionInfo, IntoConnectionInfo, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "mcp-router:session:";

impl RedisSettings {
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

/// A session store reached over the network. Implemented once per transport.
pub trait RemoteStore {
    /// Run one op: one round trip, bounded by the store timeout; `Unavailable` when
    /// the store cannot answer in time.
    fn execute(&self, op: &StoreOp) -> impl Future<Output = StoreReply>;
    /// Whether the store answers a `PING` within the store timeout.
    fn ping(&self) -> impl Future<Output = bool>;
}

/// Session records as Redis keys, values and commands.
#[derive(Debug, Clone)]
pub struct RedisCodec {
    prefix: String,
    ttl_secs: u64,
    router: Arc<Router>,
}

impl RedisCodec {
    /// The codec for `settings`; record TTLs follow the router's session TTL.
    pub fn new(settings: &RedisSettings, router: Arc<Router>) -> RedisCodec {
        RedisCodec {
            prefix: settings.key_prefix.clone(),
            ttl_secs: router.config().session_ttl.as_secs().max(1),
            router,
        }
    }

    fn key(&self, k: &SessionKey) -> String {
        let mut s = String::with_capacity(self.prefix.len() + k.as_str().len());
        s.push_str(&self.prefix);
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

    /// The sorted set of every live session.
    fn live_key(&self) -> String {
        format!("{} live", self.prefix)
    }

    /// A client's sorted set of live sessions.
    fn client_key(&self, c: ClientId) -> String {
        format!("{} client {:016x}", self.prefix, c.0)
    }

    /// A client's session-creation token bucket.
    fn bucket_key(&self, c: ClientId) -> String {
        format!("{} bucket {:016x}", self.prefix, c.0)
    }

    /// Read a stored value. Anything unreadable, or naming a backend not configured
    /// here, names no configured backend: the core deletes it and answers 404.
    pub fn decode(&self, v: &[u8]) -> Record {
        let unknown = Record {
            backend: BackendId(u16::MAX),
            era: Era::Streamable,
            client: ClientId::default(),
        };
        let Ok(text) = std::str::from_utf8(v) else {
            return unknown;
        };
        let (client, rest) = match text.split_once('|') {
            Some(("1", rest)) => (ClientId::default(), rest.to_string()),
            Some(("2", rest)) => {
                // era|created|client|name -> era|created|name
                let mut p = rest.splitn(4, '|');
                let (Some(era), Some(created), Some(c), Some(name)) =
                    (p.next(), p.next(), p.next(), p.next())
                else {
                    return unknown;
                };
                let Ok(c) = u64::from_str_radix(c, 16) else {
                    return unknown;
                };
                (ClientId(c), format!("{era}|{created}|{name}"))
            }
            _ => return unknown,
        };
        let mut parts = rest.splitn(3, '|');
        let (Some(era), Some(_created), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return unknown;
        };
        let era = match era {
            "s" => Era::Streamable,
            "l" => Era::LegacySse,
            _ => return unknown,
        };
        match self.router.backend_by_name(name) {
            Some(backend) => Record {
                backend,
                era,
                client,
            },
            None => unknown,
        }
    }

    /// The one command that carries out `op`.
    pub fn command(&self, op: &StoreOp) -> redis::Cmd {
        match op {
            // GETEX reads and slides the idle TTL in one round trip.
            StoreOp::Get(k) => {
                let mut c = redis::cmd("GETEX");
                c.arg(self.key(k)).arg("EX").arg(self.ttl_secs);
                c
            }
            // SET NX: an id minted twice is detected, never overwritten; the new
            // session joins the live sets that the caps count.
            StoreOp::Insert(k, r) => {
                let mut c = redis::cmd("EVAL");
                c.arg(INSERT_SCRIPT)
                    .arg(3)
                    .arg(self.key(k))
                    .arg(self.live_key())
                    .arg(self.client_key(r.client))
                    .arg(self.encode(r))
                    .arg(self.ttl_secs)
                    .arg(k.as_str());
                c
            }
            StoreOp::Admit(a) => {
                let mut c = redis::cmd("EVAL");
                c.arg(ADMIT_SCRIPT)
                    .arg(3)
                    .arg(self.live_key())
                    .arg(self.client_key(a.client))
                    .arg(self.bucket_key(a.client))
                    .arg(a.max_sessions)
                    .arg(a.client_max_sessions)
                    .arg(a.rate)
                    .arg(a.burst)
                    .arg(&self.prefix);
                c
            }
            // GETDEL that also takes the session out of the live sets, so the end
            // can be attributed to its backend and frees its slot at once.
            StoreOp::Delete(k) => {
                let mut c = redis::cmd("EVAL");
                c.arg(DELETE_SCRIPT)
                    .arg(2)
                    .arg(self.key(k))
                    .arg(self.live_key())
                    .arg(k.as_str())
                    .arg(format!("{} client ", self.prefix));
                c
            }
            StoreOp::Touch(k) => {
                let mut c = redis::cmd("EXPIRE");
                c.arg(self.key(k)).arg(self.ttl_secs);
                c
            }
        }
    }

    /// What Redis's reply to [`RedisCodec::command`] means. A reply of an unexpected
    /// shape (an error, a wrong type) is `Unavailable`: the request gets 503, never a
    /// wrong 404.
    pub fn reply(&self, op: &StoreOp, v: Value) -> StoreReply {
        let record = |v: Value| match v {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(self.decode(&b))),
            Value::SimpleString(s) => Ok(Some(self.decode(s.as_bytes()))),
            _ => Err(()),
        };
        let r = match op {
            StoreOp::Get(_) => record(v).map(StoreReply::Found),
            StoreOp::Delete(_) => record(v).map(StoreReply::Deleted),
            StoreOp::Insert(..) => match v {
                Value::Okay => Ok(StoreReply::Inserted(true)),
                Value::SimpleString(s) if s == "OK" => Ok(StoreReply::Inserted(true)),
                Value::Nil => Ok(StoreReply::Inserted(false)),
                _ => Err(()),
            },
            StoreOp::Touch(_) => match v {
                Value::Int(n) => Ok(StoreReply::Touched(n == 1)),
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
}

/// `StoreOp::Insert`: KEYS = record, live set, client set; ARGV = value, TTL (s),
/// session id. `SET NX EX`, and on success the session joins both sets with its
/// deadline (ms, Redis's clock). Replies `OK` or nil, like `SET NX`.
const INSERT_SCRIPT: &str = r"
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if not ok then return false end
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2]) * 1000
redis.call('ZADD', KEYS[2], deadline, ARGV[3])
redis.call('ZADD', KEYS[3], deadline, ARGV[3])
redis.call('PEXPIREAT', KEYS[3], deadline)
return ok
";

/// `StoreOp::Delete`: KEYS = record, live set; ARGV = session id, the client sets' name
/// prefix. `GETDEL`, and the session leaves the live set and its client's set (named
/// by the record) at once. Replies the record, or nil.
const DELETE_SCRIPT: &str = r"
local v = redis.call('GETDEL', KEYS[1])
if not v then return false end
redis.call('ZREM', KEYS[2], ARGV[1])
local c = string.match(v, '^2|[^|]*|[^|]*|(%x+)|')
if c then redis.call('ZREM', ARGV[2] .. c, ARGV[1]) end
return v
";

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
const ADMIT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max, cmax, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function prune(set)
  local stale = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, 512)
  for _, id in ipairs(stale) do
    local ttl = redis.call('PTTL', ARGV[5] .. id)
    if ttl > 0 then redis.call('ZADD', set, now + ttl, id) else redis.call('ZREM', set, id) end
  end
end
if max > 0 then
  prune(KEYS[1])
  if redis.call('ZCARD', KEYS[1]) >= max then return {1, 0} end
end
if cmax > 0 then
  prune(KEYS[2])
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
";

/// Install the rustls crypto provider `rediss://` needs (installing twice is harmless).
#[cfg(any(feature = "tokio", feature = "smol"))]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The store over the `redis` crate's [`ConnectionManager`](redis::aio::ConnectionManager):
/// one multiplexed, auto-reconnecting connection carries every command of the process,
/// pipelined; no request sets up a connection. The `redis` crate runs it on tokio when
/// a tokio runtime is current, else on smol.
#[cfg(any(feature = "tokio", feature = "smol"))]
pub struct ManagedRedis<R> {
    conn: redis::aio::ConnectionManager,
    codec: RedisCodec,
    timeout: Duration,
    _rt: std::marker::PhantomData<fn() -> R>,
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
    /// inside the runtime that will drive it.
    pub fn new(s: &RedisSettings, router: Arc<Router>) -> Result<Self, ConfigError> {
        use redis::aio::{ConnectionManager, ConnectionManagerConfig};
        install_crypto_provider();
        let bad = |e: redis::RedisError| ConfigError(format!("store: invalid Redis URL: {e}"));
        let client = redis::Client::open(s.connection_info()?).map_err(bad)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.timeout))
            .set_response_timeout(Some(s.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(bad)?;
        Ok(ManagedRedis {
            conn,
            codec: RedisCodec::new(s, router),
            timeout: s.timeout,
            _rt: std::marker::PhantomData,
        })
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl<R: crate::rt::Runtime<Remote = ManagedRedis<R>>> crate::Frontend<R> {
    /// The runtime instance over `shared`, with a [`ManagedRedis`] when the settings
    /// name Redis. Call it inside the runtime that will drive it.
    pub fn managed(shared: Arc<crate::Shared>) -> Result<Arc<Self>, ConfigError> {
        let remote = match &shared.settings().store {
            crate::StoreSettings::Memory => None,
            crate::StoreSettings::Redis(r) => Some(ManagedRedis::new(r, shared.router.clone())?),
        };
        Ok(Arc::new(crate::Frontend::new(shared, remote)))
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
impl<R: crate::rt::Runtime> RemoteStore for ManagedRedis<R> {
    async fn execute(&self, op: &StoreOp) -> StoreReply {
        let mut c = self.conn.clone();
        let cmd = self.codec.command(op);
        let q = async move { cmd.query_async::<Value>(&mut c).await };
        match crate::rt::timeout::<R, _>(self.timeout, q).await {
            Some(Ok(v)) => self.codec.reply(op, v),
            _ => StoreReply::Unavailable,
        }
    }

    async fn ping(&self) -> bool {
        let mut c = self.conn.clone();
        let q = async move { redis::cmd("PING").query_async::<String>(&mut c).await };
        matches!(
            crate::rt::timeout::<R, _>(self.timeout, q).await,
            Some(Ok(_))
        )
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
        let s = RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            password: None,
            key_prefix: "p:".into(),
            timeout: Duration::from_millis(10),
        };
        RedisCodec::new(&s, router)
    }

    #[test]
    fn commands_and_replies_round_trip() {
        let c = codec();
        let k = SessionKey::new(b"abc", 256).unwrap();
        let rec = Record {
            backend: BackendId(0),
            era: Era::LegacySse,
            client: mcp_router_core::ClientId(0xab),
        };
        let set = c.command(&StoreOp::Insert(k.clone(), rec));
        let packed = String::from_utf8(set.get_packed_command()).unwrap();
        assert!(packed.contains("EVAL\r\n"), "{packed}");
        assert!(packed.contains("$5\r\np:abc\r\n"), "{packed}");
        assert!(
            packed.contains("p: client 00000000000000ab\r\n"),
            "{packed}"
        );
        let stored = packed
            .split("\r\n")
            .find(|l| l.starts_with("2|l|"))
            .unwrap();
        assert!(stored.ends_with("|00000000000000ab|b0"), "{stored}");
        assert_eq!(c.decode(stored.as_bytes()), rec);
        assert_eq!(
            c.reply(&StoreOp::Get(k.clone()), Value::BulkString(stored.into())),
            StoreReply::Found(Some(rec))
        );
        assert_eq!(
            c.reply(&StoreOp::Insert(k.clone(), rec), Value::Nil),
            StoreReply::Inserted(false)
        );
        assert_eq!(
            c.reply(&StoreOp::Touch(k.clone()), Value::Int(1)),
            StoreReply::Touched(true)
        );
        // a reply of the wrong shape is "unavailable", never "unknown"
        assert_eq!(
            c.reply(&StoreOp::Get(k.clone()), Value::Int(3)),
            StoreReply::Unavailable
        );
        // a record naming a backend not configured here reads as no configured backend
        assert_eq!(c.decode(b"1|s|0|elsewhere").backend, BackendId(u16::MAX));
        assert_eq!(c.decode(b"garbage").backend, BackendId(u16::MAX));
        // version 1 records (no client) still read
        let v1 = c.decode(b"1|s|0|b0");
        assert_eq!((v1.backend, v1.client), (BackendId(0), ClientId(0)));
        assert_eq!(
            c.reply(&StoreOp::Insert(k.clone(), rec), Value::Okay),
            StoreReply::Inserted(true)
        );
    }
}
