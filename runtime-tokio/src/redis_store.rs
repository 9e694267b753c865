//! The shared session store on Redis, so that any router replica routes any session.
//!
//! One multiplexed, auto-reconnecting connection ([`ConnectionManager`]) carries every
//! command of the process, pipelined; no request sets up a connection. Each proxied
//! request costs at most one round trip: `GETEX key EX ttl` reads the record and slides
//! its idle TTL at once.
//!
//! Key: `<prefix><session id>`. Value: `1|<era>|<created unix secs>|<backend name>`,
//! where era is `s` (Streamable HTTP) or `l` (legacy SSE). The backend is named, never
//! addressed: a name that is not configured here reads as an unconfigured backend,
//! which the core treats as an unknown session and deletes.

use mcp_router_core::mcp::SessionKey;
use mcp_router_core::{BackendId, ConfigError, Era, Record, Router, StoreOp, StoreReply};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

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

/// A session store on Redis.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    ttl_secs: u64,
    timeout: Duration,
    router: Arc<Router>,
    ready: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish()
    }
}

fn install_crypto_provider() {
    // rediss:// needs a rustls crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl RedisStore {
    /// A store that connects lazily (in the background, retrying): the router starts
    /// even while Redis is unreachable, answering 503 for what needs a record.
    pub fn new(s: &RedisSettings, router: Arc<Router>) -> Result<RedisStore, ConfigError> {
        install_crypto_provider();
        let bad = |e: redis::RedisError| ConfigError(format!("store: invalid Redis URL: {e}"));
        let mut info = s.url.as_str().into_connection_info().map_err(bad)?;
        if let Some(p) = &s.password {
            let r = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(r);
        }
        let client = redis::Client::open(info).map_err(bad)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.timeout))
            .set_response_timeout(Some(s.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(bad)?;
        Ok(RedisStore {
            conn,
            prefix: s.key_prefix.clone(),
            ttl_secs: router.config().session_ttl.as_secs().max(1),
            timeout: s.timeout,
            router,
            ready: AtomicBool::new(false),
        })
    }

    /// Whether the last probe reached Redis.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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
        format!("1|{era}|{created}|{}", self.router.name(r.backend))
    }

    fn decode(&self, v: &[u8]) -> Record {
        // Anything unreadable, or naming a backend not configured here, names no
        // configured backend: the core deletes it and answers 404.
        let unknown = Record {
            backend: BackendId(u16::MAX),
            era: Era::Streamable,
        };
        let Ok(text) = std::str::from_utf8(v) else {
            return unknown;
        };
        let mut parts = text.splitn(4, '|');
        let (Some("1"), Some(era), Some(_created), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return unknown;
        };
        let era = match era {
            "s" => Era::Streamable,
            "l" => Era::LegacySse,
            _ => return unknown,
        };
        match self.router.backend_by_name(name) {
            Some(backend) => Record { backend, era },
            None => unknown,
        }
    }

    /// Run one op: one round trip, bounded by the store timeout.
    pub async fn execute(&self, op: &StoreOp) -> StoreReply {
        let mut c = self.conn.clone();
        let ttl = self.ttl_secs;
        let fut = async {
            Ok::<_, redis::RedisError>(match op {
                StoreOp::Get(k) => {
                    let v: Option<Vec<u8>> = redis::cmd("GETEX")
                        .arg(self.key(k))
                        .arg("EX")
                        .arg(ttl)
                        .query_async(&mut c)
                        .await?;
                    StoreReply::Found(v.map(|v| self.decode(&v)))
                }
                StoreOp::Insert(k, r) => {
                    // SET NX: an id minted twice is detected, never overwritten.
                    let v: Option<String> = redis::cmd("SET")
                        .arg(self.key(k))
                        .arg(self.encode(r))
                        .arg("NX")
                        .arg("EX")
                        .arg(ttl)
                        .query_async(&mut c)
                        .await?;
                    StoreReply::Inserted(v.is_some())
                }
                StoreOp::Delete(k) => {
                    // GETDEL is DEL that also returns the record, so the end can be
                    // attributed to its backend.
                    let v: Option<Vec<u8>> = redis::cmd("GETDEL")
                        .arg(self.key(k))
                        .query_async(&mut c)
                        .await?;
                    StoreReply::Deleted(v.map(|v| self.decode(&v)))
                }
                StoreOp::Touch(k) => {
                    let n: i64 = redis::cmd("EXPIRE")
                        .arg(self.key(k))
                        .arg(ttl)
                        .query_async(&mut c)
                        .await?;
                    StoreReply::Touched(n == 1)
                }
            })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(r)) => r,
            _ => StoreReply::Unavailable,
        }
    }

    /// Probe Redis every `every`, logging each change of readiness.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut first = true;
        loop {
            let mut c = self.conn.clone();
            let ok = tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut c),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            let was = self.ready.swap(ok, Ordering::Relaxed);
            if ok && (!was || first) {
                info!(store = "redis", "session store ready");
            } else if !ok && (was || first) {
                warn!(store = "redis", "session store not ready: Redis unreachable; requests that need a session record get 503 until it is back");
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
