//! Real Redis topologies on 127.0.0.1 for integration tests: a Sentinel group (a
//! primary, one replica, three sentinels) and a Redis Cluster, each on free ports with
//! its files in a fresh temporary directory. Every process is a [`Proc`], killed when
//! the topology is dropped; the directory is removed then too.
//!
//! Tests that use these never skip: a missing `redis-server` or `redis-cli` panics.

use crate::harness::Proc;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long each topology may take to form before its constructor panics.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------
// RESP client

/// One RESP (v2) reply, fully parsed (nested arrays included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...` (the text after `-`).
    Error(String),
    /// `:3`
    Int(i64),
    /// `$n` bulk string (lossy UTF-8).
    Bulk(String),
    /// `$-1` or `*-1`.
    Nil,
    /// `*n`
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a status, error or bulk reply, an integer in decimal; `None` for nil
    /// and arrays.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Status(s) | Reply::Error(s) | Reply::Bulk(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array reply (empty for anything else).
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(v) => v,
            _ => &[],
        }
    }

    /// An integer reply's value.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The value of `key` in a flat `[k1, v1, k2, v2, ...]` array (SENTINEL REPLICAS
    /// entries and the like).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.items()
            .chunks(2)
            .find(|kv| kv[0].as_str() == Some(key))
            .and_then(|kv| kv.get(1)?.as_str())
    }
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed"));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad RESP {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Reply::Bulk(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(read_reply(r)?);
            }
            Reply::Array(v)
        }
        _ => return Err(bad()),
    })
}

/// Send one command to the Redis (or sentinel) at `addr` on a fresh connection and
/// read its whole reply; an I/O error when the node is down or does not answer in 5 s.
pub fn try_redis_call(addr: &str, args: &[&str]) -> io::Result<Reply> {
    let sa = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    read_reply(&mut BufReader::new(s))
}

/// [`try_redis_call`], panicking (with the address and command) on an I/O error.
pub fn redis_call(addr: &str, args: &[&str]) -> Reply {
    try_redis_call(addr, args).unwrap_or_else(|e| panic!("redis {addr} {args:?}: {e}"))
}

/// `INFO <section>` of a node as `(field, value)` pairs (`None` if it does not answer).
pub fn redis_info(addr: &str, section: &str) -> Option<Vec<(String, String)>> {
    let r = try_redis_call(addr, &["INFO", section]).ok()?;
    let Reply::Bulk(text) = r else { return None };
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect(),
    )
}

fn info_field(addr: &str, section: &str, key: &str) -> Option<String> {
    redis_info(addr, section)?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// `INFO commandstats` of a node: calls per command (`"get"`, `"set"`, `"cluster|nodes"`
/// ...); empty if the node does not answer.
pub fn command_calls(addr: &str) -> Vec<(String, u64)> {
    redis_info(addr, "commandstats")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| {
            let cmd = k.strip_prefix("cmdstat_")?;
            let calls = v.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((cmd.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// Calls of one command (lower case, as `INFO commandstats` names it) on a node.
pub fn command_count(addr: &str, cmd: &str) -> u64 {
    command_calls(addr)
        .into_iter()
        .find(|(c, _)| c == cmd)
        .map_or(0, |(_, n)| n)
}

/// The first element of `ROLE` (`master`, `slave`, `sentinel`), if the node answers.
pub fn role(addr: &str) -> Option<String> {
    let r = try_redis_call(addr, &["ROLE"]).ok()?;
    r.items().first()?.as_str().map(str::to_string)
}

/// Whether the primary at `primary` has exactly `n` replicas, all in state `online`
/// (the initial sync done and acknowledged, so writes stream to them).
pub fn replicas_online(primary: &str, n: usize) -> bool {
    let Some(info) = redis_info(primary, "replication") else {
        return false;
    };
    let online = info
        .iter()
        .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
        .count();
    info.iter()
        .any(|(k, v)| k == "connected_slaves" && *v == n.to_string())
        && online == n
}

/// Wait up to `limit` until the replica at `replica` has processed everything the
/// primary at `primary` had written when this was called (its `slave_repl_offset`
/// reaches the primary's `master_repl_offset`). Use it before killing a primary when
/// a test needs an acknowledged write to survive: `WAIT` alone is not enough right
/// after the initial sync (in one stress run, `WAIT 1` answered 1 while the replica,
/// still waiting to go `online`, had offset 0 and then lost the write in a failover).
pub fn wait_replica_caught_up(primary: &str, replica: &str, limit: Duration) -> bool {
    let Some(want) = info_field(primary, "replication", "master_repl_offset")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return false;
    };
    poll(limit, || {
        let got: u64 = info_field(replica, "replication", "slave_repl_offset")?
            .parse()
            .ok()?;
        (got >= want).then_some(())
    })
    .is_some()
}

/// Poll `f` every 50 ms until it yields a value or `limit` passes.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------
// Processes, ports, files

/// A fresh directory under `std::env::temp_dir()`, removed (with its content) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Create `<tmp>/mcp-router-<tag>-<pid>-<n>-<nanos>`.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "mcp-router-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ports are drawn from here: below Linux's ephemeral range (32768-60999), so that
/// neither an outgoing connection nor another test's `bind(0)` takes one between its
/// choice and redis-server's bind; a cluster node's bus port (+10000) stays below it too.
const PORTS: std::ops::Range<u16> = 10_000..22_768;

/// A pseudo-random number (std only: a randomly keyed hasher over a counter).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// `n` distinct free ports on 127.0.0.1 in [`PORTS`], all held until every one is
/// chosen. With `bus`, each port + 10000 (a cluster node's bus port) is free too.
fn free_ports(n: usize, bus: bool) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no {n} free ports found in {PORTS:?}");
        let p = PORTS.start + (random() % u64::from(PORTS.end - PORTS.start)) as u16;
        let Ok(l) = TcpListener::bind(("127.0.0.1", p)) else {
            continue;
        };
        if bus {
            match TcpListener::bind(("127.0.0.1", p + 10_000)) {
                Ok(bl) => held.push(bl),
                Err(_) => continue,
            }
        }
        held.push(l);
        ports.push(p);
    }
    ports
}

fn need(bin: &str) {
    if Command::new(bin).arg("--version").output().is_err() {
        panic!("{bin} is not installed (apt-get install -y redis-server; .ci/run does it)");
    }
}

/// What a redis-server log line says about its start: ready, or its port taken.
fn start_outcome(l: &str, ready: &str) -> Option<String> {
    if l.contains("Address already in use") {
        Some("in-use".into())
    } else {
        l.contains(ready).then(|| "ready".into())
    }
}

/// `redis-server` with the arguments `args(port)` gives, ready once it logs a line
/// containing `ready` (`sentinel`: `+monitor master`, else `Ready to accept
/// connections`); its address is `127.0.0.1:<port>`. Should the port be taken by the
/// time it binds, it starts again on another (`bus`: see [`free_ports`]).
fn start_redis(
    name: &str,
    port: u16,
    bus: bool,
    sentinel: bool,
    args: impl Fn(u16) -> Vec<String>,
) -> Proc {
    let mut port = port;
    for _ in 0..5 {
        let mut cmd = Command::new("redis-server");
        cmd.args(args(port));
        let mut p = if sentinel {
            Proc::start(name, cmd, |l| start_outcome(l, "+monitor master"))
        } else {
            Proc::start(name, cmd, |l| {
                start_outcome(l, "Ready to accept connections")
            })
        };
        if p.addr == "ready" {
            p.addr = format!("127.0.0.1:{port}");
            return p;
        }
        drop(p);
        port = free_ports(1, bus)[0];
    }
    panic!("{name}: every port tried was taken");
}

/// A non-persistent data node on `port` with files in `dir`, plus `extra(port)`
/// arguments.
fn data_node(
    name: &str,
    port: u16,
    bus: bool,
    dir: &Path,
    extra: impl Fn(u16) -> Vec<String>,
) -> Proc {
    start_redis(name, port, bus, false, |port| {
        let (port_s, dir) = (port.to_string(), dir.display().to_string());
        let mut args: Vec<String> = ["--port", port_s.as_str()]
            .into_iter()
            .chain(crate::harness::REDIS_EPHEMERAL)
            .chain([
                // A replica's first full sync starts at once, not after the default
                // 5 s wait for more replicas to share a diskless transfer.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                dir.as_str(),
            ])
            .map(String::from)
            .collect();
        args.extend(extra(port));
        args
    })
}

/// The port of a `127.0.0.1:<port>` address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

// ---------------------------------------------------------------------------------
// Sentinel

/// A Sentinel-monitored group: a primary, one replica of it, and three sentinels
/// (quorum 2, `down-after-milliseconds` 1000, `failover-timeout` 5000). Everything is
/// killed when it is dropped.
pub struct SentinelGroup {
    /// The initial primary (dead after [`SentinelGroup::kill_primary`]).
    pub primary: Proc,
    /// Its replica, the one a failover promotes.
    pub replica: Proc,
    /// Three sentinels.
    pub sentinels: Vec<Proc>,
    /// The monitored master's name (`mymaster`).
    pub master_name: String,
    primary_addr: String,
    _dir: TempDir,
}

/// Sentinels' `down-after-milliseconds`.
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;
/// Sentinels' `failover-timeout`.
pub const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 5000;

/// Start a [`SentinelGroup`] and return once the replica is in sync (`online` on the
/// primary, `master_link_status:up` on itself) and every sentinel
/// knows the replica and the two other sentinels. Panics if that takes over 30 s.
pub fn sentinel_group() -> SentinelGroup {
    need("redis-server");
    let dir = TempDir::new("sentinel");
    let master_name = "mymaster".to_string();
    let ports = free_ports(5, false);
    let primary = data_node("redis-primary", ports[0], false, dir.path(), |_| vec![]);
    let pp = port_of(&primary.addr);
    let replica = data_node("redis-replica", ports[1], false, dir.path(), |_| {
        vec!["--replicaof".into(), "127.0.0.1".into(), pp.to_string()]
    });
    // In sync before the sentinels start: a sentinel's first INFO of the primary then
    // already lists the replica (the next one would come 10 s later).
    let synced = poll(FORM_TIMEOUT, || {
        let up = replicas_online(&primary.addr, 1)
            && info_field(&replica.addr, "replication", "master_link_status")? == "up";
        up.then_some(())
    });
    assert!(
        synced.is_some(),
        "replica {} never synced with primary {}",
        replica.addr,
        primary.addr
    );
    let sentinels: Vec<Proc> = ports[2..]
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            start_redis(&format!("sentinel-{}", i + 1), port, false, true, |port| {
                // Sentinels rewrite their configuration: one file each.
                let conf = dir.path().join(format!("sentinel-{port}.conf"));
                let n = &master_name;
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {n} 127.0.0.1 {pp} 2\n\
                         sentinel down-after-milliseconds {n} {SENTINEL_DOWN_AFTER_MS}\n\
                         sentinel failover-timeout {n} {SENTINEL_FAILOVER_TIMEOUT_MS}\n\
                         sentinel parallel-syncs {n} 1\n",
                        dir.path().display()
                    ),
                )
                .unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
                vec![conf.display().to_string(), "--sentinel".into()]
            })
        })
        .collect();
    let g = SentinelGroup {
        primary_addr: primary.addr.clone(),
        primary,
        replica,
        sentinels,
        master_name,
        _dir: dir,
    };
    let formed = poll(FORM_TIMEOUT, || {
        g.sentinels
            .iter()
            .all(|s| g.sentinel_knows_all(&s.addr))
            .then_some(())
    });
    assert!(
        formed.is_some(),
        "sentinels never learnt the replica {} and each other (primary {})",
        g.replica.addr,
        g.primary_addr
    );
    g
}

impl SentinelGroup {
    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/<master_name>`.
    pub fn url(&self) -> String {
        let addrs: Vec<&str> = self.sentinels.iter().map(|s| s.addr.as_str()).collect();
        format!("redis+sentinel://{}/{}", addrs.join(","), self.master_name)
    }

    /// The initial primary's address (`127.0.0.1:P`).
    pub fn primary_addr(&self) -> String {
        self.primary_addr.clone()
    }

    /// The replica's address.
    pub fn replica_addr(&self) -> String {
        self.replica.addr.clone()
    }

    /// The master's address according to the sentinel at `sentinel`
    /// (`SENTINEL get-master-addr-by-name`), if it answers.
    pub fn master_addr_from(&self, sentinel: &str) -> Option<String> {
        let r = try_redis_call(
            sentinel,
            &["SENTINEL", "get-master-addr-by-name", &self.master_name],
        )
        .ok()?;
        let [ip, port] = r.items() else { return None };
        Some(format!("{}:{}", ip.as_str()?, port.as_str()?))
    }

    fn sentinel_knows_all(&self, sentinel: &str) -> bool {
        let name = &self.master_name;
        let Ok(replicas) = try_redis_call(sentinel, &["SENTINEL", "REPLICAS", name]) else {
            return false;
        };
        let knows_replica = replicas.items().iter().any(|r| {
            r.field("name") == Some(self.replica.addr.as_str())
                && r.field("flags").is_some_and(|f| f == "slave")
        });
        let Ok(others) = try_redis_call(sentinel, &["SENTINEL", "SENTINELS", name]) else {
            return false;
        };
        knows_replica && others.items().len() == self.sentinels.len() - 1
    }

    /// SIGKILL the primary (no graceful shutdown) and reap it.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Wait up to `limit` until every sentinel names the replica as the master and the
    /// replica answers `ROLE` as `master`; returns the replica's address then, `None` on
    /// timeout.
    pub fn wait_promoted(&self, limit: Duration) -> Option<String> {
        let want = self.replica.addr.clone();
        poll(limit, || {
            let all = self
                .sentinels
                .iter()
                .all(|s| self.master_addr_from(&s.addr).as_deref() == Some(want.as_str()));
            (all && role(&want).as_deref() == Some("master")).then(|| want.clone())
        })
    }
}

// ---------------------------------------------------------------------------------
// Cluster

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// `ip:port` (the bus port and hostname cut off).
    pub addr: String,
    /// Flags (`myself`, `master`, `slave`, `fail`, `fail?`, ...).
    pub flags: Vec<String>,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges it owns, inclusive (migration markers left out).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    /// Flagged `master` and not `fail`.
    pub fn is_live_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master") && !self.flags.iter().any(|f| f == "fail")
    }

    /// Number of slots it owns.
    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(|(a, b)| usize::from(b - a) + 1).sum()
    }

    /// Whether it owns `slot`.
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// Parse `CLUSTER NODES` output.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?.to_string();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => {
                        let n = s.parse().ok()?;
                        Some((n, n))
                    }
                })
                .collect();
            Some(ClusterNode {
                id: f[0].to_string(),
                addr,
                flags: f[2].split(',').map(str::to_string).collect(),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// `CLUSTER NODES` as seen by the node at `addr` (`None` if it does not answer).
pub fn cluster_nodes(addr: &str) -> Option<Vec<ClusterNode>> {
    match try_redis_call(addr, &["CLUSTER", "NODES"]).ok()? {
        Reply::Bulk(t) => Some(parse_cluster_nodes(&t)),
        _ => None,
    }
}

/// A Redis Cluster on 127.0.0.1 (`--cluster-node-timeout 1000`, no persistence), made
/// with `redis-cli --cluster create`. Everything is killed when it is dropped.
pub struct RedisCluster {
    /// Every node, in port order as given to `--cluster create` (killed ones included).
    pub nodes: Vec<Proc>,
    killed: Vec<String>,
    /// Replicas of the last primary killed, candidates for [`RedisCluster::wait_failover`].
    orphans: Vec<String>,
    /// Slots of the last primary killed.
    orphan_slots: Vec<(u16, u16)>,
    _dir: TempDir,
}

/// Cluster nodes' `--cluster-node-timeout`, in ms.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

/// Start `primaries × (1 + replicas_per_primary)` cluster nodes, join them with
/// `redis-cli --cluster create`, and return once every node says `cluster_state:ok`
/// with all 16384 slots assigned, knows every node, sees every replica attached, and
/// every primary has its replicas `online`.
/// Panics if that takes over 30 s (or `--cluster create` fails).
pub fn redis_cluster(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
    need("redis-server");
    need("redis-cli");
    assert!(
        primaries >= 3,
        "redis-cli --cluster create needs 3 primaries at least"
    );
    let dir = TempDir::new("cluster");
    let n = primaries * (1 + replicas_per_primary);
    let nodes: Vec<Proc> = free_ports(n, true)
        .into_iter()
        .map(|port| {
            data_node(&format!("cluster-{port}"), port, true, dir.path(), |port| {
                let conf = dir.path().join(format!("nodes-{port}.conf"));
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf.display().to_string(),
                    "--cluster-node-timeout",
                    &CLUSTER_NODE_TIMEOUT_MS.to_string(),
                ]
                .map(String::from)
                .to_vec()
            })
        })
        .collect();
    let mut cmd = Command::new("redis-cli");
    cmd.arg("--cluster").arg("create");
    cmd.args(nodes.iter().map(|p| p.addr.as_str()));
    cmd.args([
        "--cluster-replicas",
        &replicas_per_primary.to_string(),
        "--cluster-yes",
    ]);
    run_cli("--cluster create", cmd);
    let c = RedisCluster {
        nodes,
        killed: Vec::new(),
        orphans: Vec::new(),
        orphan_slots: Vec::new(),
        _dir: dir,
    };
    let formed = poll(FORM_TIMEOUT, || {
        c.nodes
            .iter()
            .all(|p| {
                let Some(info) = redis_cluster_info(&p.addr) else {
                    return false;
                };
                let get = |k: &str| info.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
                get("cluster_state") == Some("ok")
                    && get("cluster_slots_assigned") == Some("16384")
                    && get("cluster_known_nodes") == Some(n.to_string().as_str())
                    && cluster_nodes(&p.addr).is_some_and(|t| view_complete(&t, primaries, n))
                    && match role(&p.addr).as_deref() {
                        Some("slave") => {
                            info_field(&p.addr, "replication", "master_link_status").as_deref()
                                == Some("up")
                        }
                        _ => replicas_online(&p.addr, replicas_per_primary),
                    }
            })
            .then_some(())
    });
    assert!(formed.is_some(), "the cluster {} never formed", c.url());
    c
}

/// Whether a `CLUSTER NODES` view shows `primaries` healthy masters sharing the 16384
/// slots and every other one of the `n` nodes as a replica of one of them. (`redis-cli
/// --cluster create` makes replicas only after the join, and the other nodes learn it
/// by gossip.)
fn view_complete(t: &[ClusterNode], primaries: usize, n: usize) -> bool {
    let healthy = |x: &ClusterNode| {
        !x.flags
            .iter()
            .any(|f| matches!(f.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    };
    let masters: Vec<&ClusterNode> = t
        .iter()
        .filter(|x| x.is_live_master() && x.slot_count() > 0)
        .collect();
    let replicas = t.iter().filter(|x| {
        x.flags.iter().any(|f| f == "slave")
            && masters
                .iter()
                .any(|m| Some(m.id.as_str()) == x.master_id.as_deref())
    });
    t.len() == n
        && t.iter().all(healthy)
        && masters.len() == primaries
        && masters.iter().map(|m| m.slot_count()).sum::<usize>() == 16384
        && replicas.count() == n - primaries
}

/// Run a `redis-cli` command with a 60 s budget; panics with its output unless it
/// exits 0. Returns its stdout.
fn run_cli(what: &str, mut cmd: Command) -> String {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run redis-cli {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("[ERR]"),
        "redis-cli {what} failed ({}): {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `CLUSTER INFO` of a node as `(field, value)` pairs (`None` if it does not answer).
pub fn redis_cluster_info(addr: &str) -> Option<Vec<(String, String)>> {
    let Reply::Bulk(t) = try_redis_call(addr, &["CLUSTER", "INFO"]).ok()? else {
        return None;
    };
    Some(
        t.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect(),
    )
}

fn cluster_ok(addr: &str) -> bool {
    redis_cluster_info(addr)
        .is_some_and(|i| i.iter().any(|(k, v)| k == "cluster_state" && v == "ok"))
}

impl RedisCluster {
    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,...` (every node, killed ones too).
    pub fn url(&self) -> String {
        let addrs: Vec<&str> = self.nodes.iter().map(|p| p.addr.as_str()).collect();
        format!("redis-cluster://{}", addrs.join(","))
    }

    /// Addresses of the nodes not killed.
    pub fn live(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|p| p.addr.clone())
            .filter(|a| !self.killed.contains(a))
            .collect()
    }

    /// `CLUSTER NODES` from the first live node that answers.
    pub fn topology(&self) -> Vec<ClusterNode> {
        self.live()
            .iter()
            .find_map(|a| cluster_nodes(a))
            .expect("no live cluster node answers CLUSTER NODES")
    }

    /// Addresses of the live masters owning slots (from `CLUSTER NODES`), sorted.
    pub fn primaries(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .topology()
            .into_iter()
            .filter(|n| n.is_live_master() && n.slot_count() > 0 && !self.killed.contains(&n.addr))
            .map(|n| n.addr)
            .collect();
        v.sort();
        v
    }

    /// Addresses of the replicas of the master at `primary`, sorted.
    pub fn replicas_of(&self, primary: &str) -> Vec<String> {
        let t = self.topology();
        let Some(id) = t.iter().find(|n| n.addr == primary).map(|n| n.id.clone()) else {
            return Vec::new();
        };
        let mut v: Vec<String> = t
            .into_iter()
            .filter(|n| n.master_id.as_deref() == Some(id.as_str()))
            .map(|n| n.addr)
            .collect();
        v.sort();
        v
    }

    /// The node id of the node at `addr` (`CLUSTER MYID`).
    pub fn node_id(&self, addr: &str) -> String {
        match redis_call(addr, &["CLUSTER", "MYID"]) {
            Reply::Bulk(id) => id,
            r => panic!("CLUSTER MYID on {addr}: {r:?}"),
        }
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT` on a live node).
    pub fn slot_of(&self, key: &str) -> u16 {
        let addr = self.live().into_iter().next().expect("a live node");
        let r = redis_call(&addr, &["CLUSTER", "KEYSLOT", key]);
        r.as_int()
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or_else(|| panic!("CLUSTER KEYSLOT {key}: {r:?}"))
    }

    /// The address of the live master owning `slot`.
    pub fn node_for_slot(&self, slot: u16) -> String {
        self.topology()
            .into_iter()
            .find(|n| n.is_live_master() && n.owns(slot))
            .map(|n| n.addr)
            .unwrap_or_else(|| panic!("no live master owns slot {slot}"))
    }

    /// The address of the live master owning `key`'s slot.
    pub fn node_for_key(&self, key: &str) -> String {
        self.node_for_slot(self.slot_of(key))
    }

    /// SIGKILL the `i`-th of [`RedisCluster::primaries`] (no graceful shutdown); returns
    /// its address.
    pub fn kill_primary(&mut self, i: usize) -> String {
        let prims = self.primaries();
        let addr = prims
            .get(i)
            .unwrap_or_else(|| panic!("no primary {i} among {prims:?}"))
            .clone();
        self.orphans = self.replicas_of(&addr);
        self.orphan_slots = self
            .topology()
            .into_iter()
            .find(|n| n.addr == addr)
            .map(|n| n.slots)
            .unwrap_or_default();
        let p = self
            .nodes
            .iter_mut()
            .find(|p| p.addr == addr)
            .expect("primary is one of our nodes");
        p.kill();
        self.killed.push(addr.clone());
        addr
    }

    /// Wait up to `limit` until a replica of the primary last killed is a master, and
    /// every live node says `cluster_state:ok` and sees that replica as a master owning
    /// the dead primary's slots. Returns its address, `None` on timeout.
    pub fn wait_failover(&self, limit: Duration) -> Option<String> {
        assert!(
            !self.orphans.is_empty(),
            "wait_failover: the primary killed last had no replica"
        );
        poll(limit, || {
            let new = self
                .orphans
                .iter()
                .find(|a| role(a).as_deref() == Some("master"))?;
            self.live()
                .iter()
                .all(|a| {
                    cluster_ok(a)
                        && cluster_nodes(a).is_some_and(|t| {
                            t.iter().any(|n| {
                                &n.addr == new
                                    && n.is_live_master()
                                    && self
                                        .orphan_slots
                                        .iter()
                                        .all(|&(lo, hi)| n.owns(lo) && n.owns(hi))
                            })
                        })
                })
                .then(|| new.clone())
        })
    }

    /// Move `slots` slots from the master at `from_addr` to the master at `to_addr`
    /// with `redis-cli --cluster reshard` (keys included), and wait until every live
    /// node sees the move and says `cluster_state:ok`. Panics if it fails.
    pub fn reshard(&self, from_addr: &str, to_addr: &str, slots: usize) {
        let from = self.node_id(from_addr);
        let to = self.node_id(to_addr);
        let before = |addr: &str| {
            self.topology()
                .into_iter()
                .find(|n| n.addr == addr)
                .map_or(0, |n| n.slot_count())
        };
        let want_to = before(to_addr) + slots;
        let want_from = before(from_addr)
            .checked_sub(slots)
            .unwrap_or_else(|| panic!("{from_addr} owns fewer than {slots} slots"));
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--cluster", "reshard", from_addr])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"]);
        run_cli("--cluster reshard", cmd);
        let seen = poll(FORM_TIMEOUT, || {
            self.live()
                .iter()
                .all(|a| {
                    cluster_ok(a)
                        && cluster_nodes(a).is_some_and(|t| {
                            let count = |addr: &str| {
                                t.iter().find(|n| n.addr == addr).map(|n| n.slot_count())
                            };
                            count(to_addr) == Some(want_to) && count(from_addr) == Some(want_from)
                        })
                })
                .then_some(())
        });
        assert!(
            seen.is_some(),
            "after resharding {slots} slots {from_addr} -> {to_addr}, the nodes never agreed"
        );
    }
}
