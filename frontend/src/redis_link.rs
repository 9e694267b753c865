//! How the store reaches Redis: one server (`redis://`, `rediss://`), a primary found
//! through Redis Sentinel (`redis+sentinel://`), or a Redis Cluster
//! (`redis-cluster://`). [`Topology`] is the parsed URL; [`Link`] carries commands for
//! the tokio and smol frontends, [`sync_connection`] for the reaper's plain thread.
//!
//! **Sentinel.** The sentinels are asked for the primary of the named master
//! (`SENTINEL get-master-addr-by-name`, then `ROLE` on the answer, which the `redis`
//! crate's [`SentinelClient`](redis::sentinel::SentinelClient) does), and one
//! auto-reconnecting multiplexed connection goes to it. They are asked again every
//! second (the store probe) and at once when a command fails on the connection
//! (refused, reset, timed out) or is refused with `READONLY` (the node was demoted):
//! a promotion is followed without a restart. Reads go to the primary too: every read
//! slides the record's idle TTL, which is a write.
//!
//! **Cluster.** The `redis` crate's async cluster client: slot map, `MOVED`/`ASK`
//! redirects, topology refresh. The key layout that keeps every session operation one
//! round trip to one node is the codec's ([`crate::redis::RedisCodec`]).

use mcp_router_core::ConfigError;
use std::fmt;

/// What a store URL names.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis server: the URL as the `redis` crate reads it.
    Single,
    /// A primary found through sentinels.
    Sentinel {
        /// The sentinels' addresses.
        sentinels: Vec<(String, u16)>,
        /// The master set's name (`sentinel monitor <name> ...`).
        master: String,
        /// The database on the primary.
        db: i64,
        /// Credentials for the data nodes (and the sentinels).
        auth: Auth,
    },
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster {
        /// Seed nodes.
        nodes: Vec<(String, u16)>,
        /// Credentials.
        auth: Auth,
    },
}

/// A user and password from a URL (or `--store-password`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// ACL user.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
}

impl fmt::Debug for Auth {
    /// Never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Single => f.write_str("Single"),
            Topology::Sentinel {
                sentinels,
                master,
                db,
                auth,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("master", master)
                .field("db", db)
                .field("auth", auth)
                .finish(),
            Topology::Cluster { nodes, auth } => f
                .debug_struct("Cluster")
                .field("nodes", nodes)
                .field("auth", auth)
                .finish(),
        }
    }
}

const SENTINEL: &str = "redis+sentinel://";
const CLUSTER: &str = "redis-cluster://";

impl Topology {
    /// Whether `url` names a Redis store of some topology.
    pub fn is_redis_url(url: &str) -> bool {
        ["redis://", "rediss://", SENTINEL, CLUSTER]
            .iter()
            .any(|s| url.starts_with(s))
    }

    /// Parse a store URL. `redis://`/`rediss://` are left to the `redis` crate.
    pub fn parse(url: &str) -> Result<Topology, ConfigError> {
        let bad = |why: &str| {
            ConfigError(format!(
                "store: invalid Redis URL ({why}): {}",
                redact_url(url)
            ))
        };
        let (rest, sentinel) = if let Some(r) = url.strip_prefix(SENTINEL) {
            (r, true)
        } else if let Some(r) = url.strip_prefix(CLUSTER) {
            (r, false)
        } else {
            return Ok(Topology::Single);
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let mut auth = Auth::default();
        if let Some(ui) = userinfo {
            let (u, p) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| bad("credentials are not UTF-8"))
            };
            auth.user = (!u.is_empty()).then(|| dec(u)).transpose()?;
            auth.password = p.map(dec).transpose()?;
        }
        let default_port = if sentinel { 26379 } else { 6379 };
        let nodes = hosts
            .split(',')
            .map(|h| {
                let (host, port) = match h.rsplit_once(':') {
                    Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                        host,
                        port.parse::<u16>()
                            .map_err(|_| bad("a port is not a number"))?,
                    ),
                    _ => (h, default_port),
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(bad("a host is empty"));
                }
                Ok((host.to_string(), port))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sentinel {
            let mut parts = path.split('/').filter(|p| !p.is_empty());
            let master = parts
                .next()
                .ok_or_else(|| bad("no master name: redis+sentinel://host:port,.../<master name>"))?
                .to_string();
            let db = match parts.next() {
                Some(d) => d.parse().map_err(|_| bad("the database is not a number"))?,
                None => 0,
            };
            if parts.next().is_some() {
                return Err(bad("a path of more than <master name>/<db>"));
            }
            Ok(Topology::Sentinel {
                sentinels: nodes,
                master,
                db,
                auth,
            })
        } else {
            if !path.is_empty() {
                return Err(bad("a cluster has no databases: no path"));
            }
            Ok(Topology::Cluster { nodes, auth })
        }
    }

    /// `--store-password` in place of the URL's.
    pub fn with_password(mut self, password: Option<&str>) -> Topology {
        if let (Some(p), Topology::Sentinel { auth, .. } | Topology::Cluster { auth, .. }) =
            (password, &mut self)
        {
            auth.password = Some(p.to_string());
        }
        self
    }

    /// Whether keys get a hash tag per shard (a cluster).
    pub fn sharded(&self) -> bool {
        matches!(self, Topology::Cluster { .. })
    }

    /// What the metrics and `/readyz` name before a node is known.
    pub fn seeds(&self) -> String {
        let list = |n: &[(String, u16)]| {
            n.iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Topology::Single => String::new(),
            Topology::Sentinel { sentinels, .. } => list(sentinels),
            Topology::Cluster { nodes, .. } => list(nodes),
        }
    }
}

/// `url` without its password (for error messages and logs).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let ui = &rest[..at];
            let user = ui.split_once(':').map_or(ui, |(u, _)| u);
            format!("{}{user}:<redacted>{}", &url[..scheme_end], &rest[at..])
        }
        None => url.into(),
    }
}

/// The `redis` crate's settings for a data node (or a sentinel: `db` 0).
#[cfg(any(feature = "tokio", feature = "smol"))]
fn redis_info(auth: &Auth, db: i64) -> redis::RedisConnectionInfo {
    let mut r = redis::RedisConnectionInfo::default().set_db(db);
    if let Some(u) = &auth.user {
        r = r.set_username(u);
    }
    if let Some(p) = &auth.password {
        r = r.set_password(p);
    }
    r
}

/// Connection settings for each of `nodes` (sentinels or cluster seeds).
#[cfg(any(feature = "tokio", feature = "smol"))]
fn infos(nodes: &[(String, u16)], auth: &Auth) -> redis::RedisResult<Vec<redis::ConnectionInfo>> {
    use redis::IntoConnectionInfo;
    nodes
        .iter()
        .map(|(h, p)| {
            redis::ConnectionAddr::Tcp(h.clone(), *p)
                .into_connection_info()
                .map(|i| i.set_redis_settings(redis_info(auth, 0)))
        })
        .collect()
}

/// A client for `info`; for `rediss://` with `--store-tls-ca`, one that trusts those
/// certificate authorities (rustls) instead of the web PKI roots.
pub fn client(
    tls_ca: Option<&[u8]>,
    info: redis::ConnectionInfo,
) -> redis::RedisResult<redis::Client> {
    match tls_ca {
        #[cfg(any(feature = "tokio", feature = "smol"))]
        Some(ca) if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) => {
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            )
        }
        _ => redis::Client::open(info),
    }
}

fn config_error(e: ConfigError) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "store", e.0))
}

/// The sentinels' client for the master of `t` (a [`Topology::Sentinel`]).
#[cfg(any(feature = "tokio", feature = "smol"))]
fn sentinel_client(t: &Topology) -> redis::RedisResult<redis::sentinel::SentinelClient> {
    use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
    let Topology::Sentinel {
        sentinels,
        master,
        db,
        auth,
    } = t
    else {
        return Err(config_error(ConfigError("not a Sentinel URL".into())));
    };
    let node =
        SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info(auth, *db));
    SentinelClient::build(
        infos(sentinels, auth)?,
        master.clone(),
        Some(node),
        SentinelServerType::Master,
    )
}

#[cfg(any(feature = "tokio", feature = "smol"))]
pub use managed::Link;

#[cfg(any(feature = "tokio", feature = "smol"))]
mod managed {
    use super::{config_error, infos, sentinel_client, Topology};
    use crate::redis::RedisSettings;
    use crate::shared::Shared;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use redis::{Cmd, RedisResult, Value};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing::{info, warn};

    /// The connection every command of the process goes over (cheap to clone: each
    /// variant is a handle to one multiplexed connection or a cluster's set of them).
    pub enum Link {
        /// One Redis server.
        Single(ConnectionManager),
        /// The primary the sentinels name, followed across promotions.
        Sentinel(Arc<SentinelLink>),
        /// A Redis Cluster.
        Cluster(redis::cluster_async::ClusterConnection),
    }

    fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
    }

    impl Link {
        /// The link for `s`: connects lazily (in the background, retrying), so the
        /// router starts while Redis is unreachable. Call it inside the runtime that
        /// will drive it.
        pub fn new(s: &RedisSettings, shared: Option<Arc<Shared>>) -> RedisResult<Link> {
            match &s.topology {
                Topology::Single => {
                    let info = s.connection_info().map_err(config_error)?;
                    if let Some(sh) = &shared {
                        sh.metrics.store_node(&info.addr().to_string());
                    }
                    let client = super::client(s.tls_ca.as_deref(), info)?;
                    Ok(Link::Single(ConnectionManager::new_lazy_with_config(
                        client,
                        manager_config(s.timeout),
                    )?))
                }
                Topology::Sentinel { .. } => Ok(Link::Sentinel(Arc::new(SentinelLink {
                    settings: s.clone(),
                    current: Mutex::new(None),
                    primary: Mutex::new(None),
                    asking: AtomicBool::new(false),
                    warned: AtomicBool::new(false),
                    shared,
                }))),
                Topology::Cluster { nodes, auth } => {
                    let seeds = infos(nodes, auth)?;
                    if let Some(sh) = &shared {
                        sh.metrics.store_node(&s.topology.seeds());
                    }
                    let client = redis::cluster::ClusterClient::builder(seeds)
                        .connection_timeout(s.timeout)
                        .response_timeout(s.timeout)
                        .retries(2)
                        .min_retry_wait(10)
                        .max_retry_wait(200)
                        .build()?;
                    let cfg = redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(s.timeout)
                        .set_response_timeout(s.timeout);
                    Ok(Link::Cluster(
                        client.get_pending_async_connection_with_config(cfg),
                    ))
                }
            }
        }

        /// Run `cmd`.
        pub async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
            match self {
                Link::Single(c) => cmd.query_async(&mut c.clone()).await,
                Link::Sentinel(s) => s.query(cmd).await,
                Link::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            }
        }

        /// `WAIT replicas timeout` on the connection (the node) that wrote `key`: how
        /// many replicas acknowledged every write sent before it.
        pub async fn wait_replicas(
            &self,
            key: &str,
            replicas: u32,
            timeout: Duration,
        ) -> RedisResult<i64> {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(replicas).arg(timeout.as_millis().max(1) as u64);
            match self {
                Link::Cluster(c) => {
                    use redis::cluster_routing::{
                        Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                    };
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::with_key(key, SlotAddr::Master),
                    ));
                    let v = c.clone().route_command(cmd, route).await?;
                    redis::from_redis_value(v).map_err(Into::into)
                }
                _ => {
                    let v = self.query(&cmd).await?;
                    redis::from_redis_value(v).map_err(Into::into)
                }
            }
        }

        /// The store probe: `PING` (Sentinel: ask the sentinels for the primary
        /// first, following a promotion).
        pub async fn ping(&self) -> bool {
            if let Link::Sentinel(s) = self {
                s.ask().await;
            }
            self.query(&redis::cmd("PING")).await.is_ok()
        }
    }

    /// The primary of a Sentinel-monitored master, followed across promotions.
    pub struct SentinelLink {
        settings: RedisSettings,
        /// The primary's address and the connection to it.
        current: Mutex<Option<(String, ConnectionManager)>>,
        /// The primary's address and connection settings (for the record cache's
        /// tracking connection, which follows it).
        primary: Mutex<Option<(String, redis::ConnectionInfo)>>,
        /// Someone is asking the sentinels now (one asks at a time).
        asking: AtomicBool,
        /// The last asking found no primary (and said so).
        warned: AtomicBool,
        shared: Option<Arc<Shared>>,
    }

    /// Clears [`SentinelLink::asking`] however the asking ends (a timeout drops it).
    struct Asking<'a>(&'a AtomicBool);
    impl Drop for Asking<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }

    impl SentinelLink {
        fn conn(&self) -> Option<ConnectionManager> {
            self.current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|(_, c)| c.clone())
        }

        async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
            let Some(mut c) = self.conn() else {
                self.ask().await;
                let mut c = self.conn().ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no primary known: the sentinels did not name one",
                    ))
                })?;
                return cmd.query_async(&mut c).await;
            };
            let r = cmd.query_async(&mut c).await;
            let stale = match &r {
                Err(e) => {
                    e.is_io_error()
                        || e.is_timeout()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
                }
                Ok(Value::ServerError(e)) => matches!(e.code(), "READONLY" | "MASTERDOWN"),
                Ok(_) => false,
            };
            if stale {
                // this request fails (503); the next ones go to whichever primary
                // the sentinels name now
                self.ask().await;
            }
            r
        }

        /// The primary the sentinels named last: its address and connection settings.
        pub fn primary(&self) -> Option<(String, redis::ConnectionInfo)> {
            self.primary
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }

        /// Ask the sentinels which node is the primary now; reconnect if it moved.
        pub async fn ask(&self) {
            if self.asking.swap(true, Ordering::AcqRel) {
                return;
            }
            let _asking = Asking(&self.asking);
            let Topology::Sentinel { master, .. } = &self.settings.topology else {
                return;
            };
            let found = async {
                sentinel_client(&self.settings.topology)?
                    .async_get_client()
                    .await
            };
            let client = match found.await {
                Ok(c) => {
                    self.warned.store(false, Ordering::Relaxed);
                    c
                }
                Err(e) => {
                    // once per outage, not once per failed request
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, master = %master, "store: the sentinels named no reachable primary (a promotion may be under way)");
                    }
                    return;
                }
            };
            let addr = client.get_connection_info().addr().to_string();
            let info = client.get_connection_info().clone();
            let known = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|(a, _)| a.clone());
            if known.as_deref() == Some(addr.as_str()) {
                return;
            }
            match ConnectionManager::new_lazy_with_config(
                client,
                manager_config(self.settings.timeout),
            ) {
                Ok(c) => {
                    if let Some(old) = &known {
                        info!(from = %old, to = %addr, master = %master, "store: following the promoted primary");
                    } else {
                        info!(primary = %addr, master = %master, "store: primary found through the sentinels");
                    }
                    if let Some(sh) = &self.shared {
                        sh.metrics.store_node(&addr);
                    }
                    *self.primary.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((addr.clone(), info));
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((addr, c));
                }
                Err(e) => warn!(error = %e, "store: cannot connect to the primary"),
            }
        }
    }
}

/// A blocking connection for the reaper's thread: to the one server, to the
/// primary the sentinels name now (asked at every reconnect), or to the cluster.
pub fn sync_connection(
    s: &crate::redis::RedisSettings,
) -> redis::RedisResult<Box<dyn redis::ConnectionLike + Send>> {
    let timeout = s.timeout;
    let single =
        |client: redis::Client| -> redis::RedisResult<Box<dyn redis::ConnectionLike + Send>> {
            let c = client.get_connection_with_timeout(timeout)?;
            c.set_read_timeout(Some(timeout))?;
            c.set_write_timeout(Some(timeout))?;
            Ok(Box::new(c))
        };
    match &s.topology {
        Topology::Single => single(client(
            s.tls_ca.as_deref(),
            s.connection_info().map_err(config_error)?,
        )?),
        #[cfg(not(any(feature = "tokio", feature = "smol")))]
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "Redis Sentinel and Cluster need the tokio or smol frontend",
        ))),
        #[cfg(any(feature = "tokio", feature = "smol"))]
        Topology::Sentinel { .. } => single(sentinel_client(&s.topology)?.get_client()?),
        #[cfg(any(feature = "tokio", feature = "smol"))]
        Topology::Cluster { nodes, auth } => {
            let client = redis::cluster::ClusterClient::builder(infos(nodes, auth)?)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            Ok(Box::new(client.get_connection()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_and_cluster_urls_parse() {
        let t = Topology::parse("redis+sentinel://u:p%40ss@h1:1,h2:26380,h3/mymaster/2").unwrap();
        assert_eq!(
            t,
            Topology::Sentinel {
                sentinels: vec![("h1".into(), 1), ("h2".into(), 26380), ("h3".into(), 26379)],
                master: "mymaster".into(),
                db: 2,
                auth: Auth {
                    user: Some("u".into()),
                    password: Some("p@ss".into())
                },
            }
        );
        assert!(!format!("{t:?}").contains("p@ss"), "{t:?}");
        let c = Topology::parse("redis-cluster://:pw@10.0.0.1:7000,[::1]:7001").unwrap();
        assert_eq!(
            c,
            Topology::Cluster {
                nodes: vec![("10.0.0.1".into(), 7000), ("::1".into(), 7001)],
                auth: Auth {
                    user: None,
                    password: Some("pw".into())
                },
            }
        );
        assert!(c.sharded());
        assert_eq!(Topology::parse("redis://h:1/0").unwrap(), Topology::Single);
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:x/m",
            "redis+sentinel://h:1/m/x",
            "redis-cluster://h:1/0",
            "redis-cluster://:1",
        ] {
            let e = Topology::parse(bad).unwrap_err();
            assert!(e.0.starts_with("store: invalid Redis URL"), "{bad}: {e}");
        }
        // the password never reaches an error message
        let e = Topology::parse("redis+sentinel://u:secret@h:x/m").unwrap_err();
        assert!(!e.0.contains("secret"), "{e}");
        assert_eq!(
            redact_url("redis-cluster://u:secret@h:1,h:2"),
            "redis-cluster://u:<redacted>@h:1,h:2"
        );
        assert_eq!(
            Topology::parse("redis-cluster://h:1")
                .unwrap()
                .with_password(Some("x")),
            Topology::Cluster {
                nodes: vec![("h".into(), 1)],
                auth: Auth {
                    user: None,
                    password: Some("x".into())
                }
            }
        );
    }
}
