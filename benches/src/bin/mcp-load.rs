//! mcp-load: end-to-end load and memory benchmark of mcp-router.
//!
//! ```text
//! mcp-load bench [--duration S] [--warmup S] [--clients W] [--calls K] [--configs a,b,..]
//!                [--rate R] [--proxy-cpu C] [--load-cpu C] [--bin-dir DIR] [--out DIR]
//! mcp-load mem   [--idle N] [--bin-dir DIR] [--out DIR] [--proxy-cpu C] [--load-cpu C]
//! ```
//!
//! `bench` starts two `mcp-fake-backend`s (pinned to the load CPU), then for each
//! configuration (`direct`, `router`, `router-redis`, `router-sealed` (sealed ids, no
//! store), `router-redis-nocache` (the record cache off), `router-smol`,
//! `router-glommio`, `haproxy`, `haproxy-tcp` (HAProxy in `mode tcp`, a byte relay:
//! the floor); by `--configs` only:
//! `router-redis-two`, `router-sealed-one`, `router-redis-sentinel` (a primary, a
//! replica, three sentinels), `router-redis-sentinel-wait` (the same with
//! `--store-wait-replicas 1`), `router-redis-cluster` (three primaries),
//! `router-redis-caps` and `router-redis-cluster-caps` (session caps and rate on, so
//! every initialize runs the store's admission); `CONFIG@DIR` takes that
//! configuration's binaries from DIR instead of `--bin-dir`, to measure a before and an
//! after build in one run) starts the
//! frontend pinned to the proxy CPU (Redis processes go to the load CPU), runs W
//! clients doing whole MCP session lifecycles (initialize,
//! notifications/initialized, K tools/call, DELETE) over keep-alive connections for
//! the duration (closed loop; with `--rate R` open loop, each client starting its
//! lifecycles on a fixed schedule so that all offer R requests/s, and never catching
//! up in bursts), and reports throughput, latency percentiles (and the initializes'
//! alone), errors, stickiness violations (a tools/call answered by another backend
//! than the initialize) and the frontend process's own CPU time (user+sys from
//! /proc) per request. With a Redis store also the Redis processes' CPU and the
//! store's round trips per request: `INFO commandstats` calls summed over the data
//! nodes (primaries), less monitoring, replication and set-up commands. Run it
//! pinned itself (`taskset -c 1 mcp-load bench`); results go to `OUT/load.json`,
//! and Markdown tables to stdout.
//!
//! `mem` measures the router's RSS after 5k, 25k, 50k and 100k lifecycles with DELETE
//! and without (short TTL), RSS per idle session at 100k (and `--idle` more), and the
//! embedded store's heap bytes per record at 1M records in process (counted
//! allocator). Results go to `OUT/mem.json`.
//!
//! `churn` runs 100k lifecycles without DELETE (TTL 2 s) through the router and
//! reports the fake backends' own session counts (`/stats`) as it goes and after:
//! flat when reaping keeps up (issue 14). Results go to `OUT/churn.json`.

use hdrhistogram::Histogram;
use mcp_router_benches::{alloc_count, live_bytes, CountingAlloc};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

type Res<T> = Result<T, String>;

// ----- options ---------------------------------------------------------------------

#[derive(Clone)]
struct Opts {
    duration: f64,
    warmup: f64,
    clients: usize,
    calls: usize,
    configs: Vec<String>,
    proxy_cpu: String,
    load_cpu: String,
    bin_dir: String,
    out: String,
    idle: u64,
    rate: Option<f64>,
}

fn opts(args: &[String]) -> Res<Opts> {
    let mut o = Opts {
        duration: 15.0,
        warmup: 2.0,
        clients: 32,
        calls: 8,
        configs: vec![
            "direct".into(),
            "router".into(),
            "router-redis".into(),
            "router-sealed".into(),
            "router-smol".into(),
            "router-glommio".into(),
            "haproxy".into(),
            "haproxy-tcp".into(),
            "stdio-shared".into(),
            "stdio-shared-smol".into(),
            "stdio-shared-glommio".into(),
            "stdio-per-session".into(),
            "stdio-per-session-smol".into(),
            "stdio-per-session-glommio".into(),
        ],
        proxy_cpu: "0".into(),
        load_cpu: "1".into(),
        bin_dir: "target/release".into(),
        out: "target/mcp-bench".into(),
        idle: 100_000,
        rate: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--duration" => o.duration = v()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--warmup" => o.warmup = v()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--clients" => o.clients = v()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--calls" => o.calls = v()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--idle" => o.idle = v()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--rate" => o.rate = Some(v()?.parse().map_err(|e| format!("{a}: {e}"))?),
            "--configs" => o.configs = v()?.split(',').map(String::from).collect(),
            "--proxy-cpu" => o.proxy_cpu = v()?,
            "--load-cpu" => o.load_cpu = v()?,
            "--bin-dir" => o.bin_dir = v()?,
            "--out" => o.out = v()?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(o)
}

// ----- processes -------------------------------------------------------------------

/// A child process killed (and reaped) on drop.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first (clean exit), then SIGKILL
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM: killing", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `prog args` pinned to `cpu` with `taskset` (which execs it: same pid).
fn spawn_pinned(cpu: &str, prog: &str, args: &[&str], env: &[(&str, &str)]) -> Res<Child> {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpu).arg(prog).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {prog}: {e}"))
}

fn free_port() -> Res<u16> {
    let l = StdListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_listening(addr: SocketAddr) -> Res<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listening on {addr} after 10 s"))
}

fn fake_backend(o: &Opts, name: &str) -> Res<(Proc, SocketAddr)> {
    let bin = format!("{}/mcp-fake-backend", o.bin_dir);
    let mut child = spawn_pinned(
        &o.load_cpu,
        &bin,
        &["--listen", "127.0.0.1:0", "--name", name],
        &[],
    )?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("LISTENING ")
        .ok_or(format!("fake backend said {line:?}"))?
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok((
        Proc {
            child,
            name: name.into(),
        },
        addr,
    ))
}

/// user+sys CPU time of `pid` so far, from /proc/PID/stat (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Res<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = &s[s.rfind(')').ok_or("bad stat")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // fields 14 and 15 (1-based) are utime, stime; `rest` starts at field 3
    let ticks: u64 = f[11].parse::<u64>().map_err(|e| e.to_string())?
        + f[12].parse::<u64>().map_err(|e| e.to_string())?;
    let hz = clk_tck();
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn rss_kib(pid: u32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS".into())
}

struct Frontend {
    procs: Vec<Proc>,
    /// The process whose CPU is measured (none for direct).
    pid: Option<u32>,
    addr: SocketAddr,
    /// Redis data nodes (the primaries) whose `INFO commandstats` count the store's
    /// round trips.
    redis_ports: Vec<u16>,
    /// Every Redis process of the store (primaries, replicas, sentinels): their CPU
    /// per request is reported beside the proxy's.
    store_pids: Vec<u32>,
    admin: Option<SocketAddr>,
    /// Further replicas (address, pid): clients alternate over all of them, and the
    /// CPU per request counts all of them.
    more: Vec<(SocketAddr, u32)>,
}

impl Frontend {
    fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.more.iter().map(|m| m.0))
            .collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.pid
            .into_iter()
            .chain(self.more.iter().map(|m| m.1))
            .collect()
    }
}

fn start_router(
    o: &Opts,
    backends: &[SocketAddr],
    store: Option<&str>,
    extra: &[&str],
) -> Res<Frontend> {
    start_router_bin(o, "mcp-router", backends, store, extra)
}

/// Start a router frontend binary (`mcp-router`, `mcp-router-smol`,
/// `mcp-router-glommio`): all take the same flags. Pinned to the proxy CPU, each runs
/// one worker thread or executor (the default for one allowed CPU).
fn start_router_bin(
    o: &Opts,
    name: &str,
    backends: &[SocketAddr],
    store: Option<&str>,
    extra: &[&str],
) -> Res<Frontend> {
    let port = free_port()?;
    let admin = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let mut args: Vec<String> = vec![
        "--listen".into(),
        listen.clone(),
        "--admin-listen".into(),
        admin_listen.clone(),
    ];
    for (i, b) in backends.iter().enumerate() {
        args.push("--backend".into());
        args.push(format!("b{i}=http://{b}"));
    }
    if let Some(s) = store {
        args.push("--store".into());
        args.push(s.into());
    }
    // One load generator on one address opens every session: the per-client quotas
    // and the session cap (which protect a pod from such a client) are off here, as
    // HAProxy runs without them.
    for f in [
        "--max-sessions",
        "--client-max-sessions",
        "--client-session-rate",
    ] {
        // unless the configuration sets them (the `-caps` rows)
        if !extra.contains(&f) {
            args.push(f.into());
            args.push("0".into());
        }
    }
    args.push("--max-connections".into());
    args.push("0".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let bin = format!("{}/{name}", o.bin_dir);
    // per-session info lines off, as HAProxy runs without logging here
    let child = spawn_pinned(&o.proxy_cpu, &bin, &argv, &[("RUST_LOG", "warn")])?;
    let p = Proc {
        child,
        name: name.into(),
    };
    let addr: SocketAddr = listen.parse().map_err(|e| format!("{e}"))?;
    wait_listening(addr)?;
    Ok(Frontend {
        pid: Some(p.pid()),
        procs: vec![p],
        addr,
        redis_ports: vec![],
        store_pids: vec![],
        admin: Some(admin_listen.parse().map_err(|e| format!("{e}"))?),
        more: vec![],
    })
}

fn start_redis(o: &Opts) -> Res<(Proc, u16)> {
    let port = free_port()?;
    let p = redis_node(o, port, &[])?;
    Ok((p, port))
}

/// A `redis-server` on `port` (no persistence), pinned where the load runs, with
/// `extra` arguments (`--replicaof`, cluster mode); returns once it accepts
/// connections.
fn redis_node(o: &Opts, port: u16, extra: &[&str]) -> Res<Proc> {
    let ps = port.to_string();
    // a replica writes the RDB it receives to its directory: not the caller's
    let dir = abs_dir(&format!("{}/redis", o.out))?;
    let mut args = vec![
        "--dir",
        &dir,
        "--port",
        &ps,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--loglevel",
        "warning",
    ];
    args.extend_from_slice(extra);
    let child = spawn_pinned(&o.load_cpu, "redis-server", &args, &[])?;
    let p = Proc {
        child,
        name: format!("redis-server :{port}"),
    };
    wait_listening(format!("127.0.0.1:{port}").parse().expect("addr"))?;
    Ok(p)
}

/// `dir`, created, as an absolute path.
fn abs_dir(dir: &str) -> Res<String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    let p = std::fs::canonicalize(dir).map_err(|e| format!("{dir}: {e}"))?;
    Ok(p.to_string_lossy().into_owned())
}

/// `redis-cli -p port args..`'s output.
fn redis_cli(port: u16, args: &[&str]) -> Res<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Poll `redis-cli -p port args..` until `ok` holds of its output (up to 30 s).
fn redis_wait(port: u16, args: &[&str], what: &str, ok: impl Fn(&str) -> bool) -> Res<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if redis_cli(port, args).is_ok_and(|s| ok(&s)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("redis :{port}: no {what} after 30 s"))
}

/// A port for a cluster node: it and its bus port (+10000) free, below 55536.
fn cluster_port() -> Res<u16> {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    for i in 0..2000u64 {
        let port = 20000 + ((seed.wrapping_mul(2654435761) + i * 7919) % 30000) as u16;
        let a = StdListener::bind(("127.0.0.1", port));
        let b = StdListener::bind(("127.0.0.1", port + 10000));
        if a.is_ok() && b.is_ok() {
            return Ok(port);
        }
    }
    Err("no free cluster port pair".into())
}

/// A store of Redis Sentinel: a primary, one replica (`--replicaof`), three
/// sentinels monitoring it as `m` (quorum 2). Returns the processes, the primary's
/// port and the router's `redis+sentinel://` URL, once the replica is synced and
/// every sentinel names the primary.
fn start_sentinel(o: &Opts) -> Res<(Vec<Proc>, u16, String)> {
    let primary = free_port()?;
    let mut procs = vec![redis_node(o, primary, &[])?];
    let replica = free_port()?;
    let of = format!("127.0.0.1 {primary}");
    procs.push(redis_node(o, replica, &["--replicaof", &of])?);
    redis_wait(replica, &["info", "replication"], "synced replica", |s| {
        s.contains("master_link_status:up") && s.contains("master_sync_in_progress:0")
    })?;
    redis_wait(primary, &["info", "replication"], "online replica", |s| {
        s.contains("state=online")
    })?;
    // the previous run's configuration files (their ports are not reused)
    let dir = format!("{}/sentinel", o.out);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut hosts = Vec::new();
    for _ in 0..3 {
        let port = free_port()?;
        let conf = format!("{dir}/sentinel-{port}.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor m 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds m 5000\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = spawn_pinned(
            &o.load_cpu,
            "redis-server",
            &[&conf, "--sentinel", "--loglevel", "warning"],
            &[],
        )?;
        procs.push(Proc {
            child,
            name: format!("redis-sentinel :{port}"),
        });
        wait_listening(format!("127.0.0.1:{port}").parse().expect("addr"))?;
        hosts.push(format!("127.0.0.1:{port}"));
    }
    for h in &hosts {
        let port: u16 = h[h.rfind(':').expect("port") + 1..].parse().expect("port");
        let want = primary.to_string();
        redis_wait(
            port,
            &["sentinel", "get-master-addr-by-name", "m"],
            "primary address from the sentinel",
            |s| s.lines().any(|l| l.trim() == want),
        )?;
    }
    Ok((
        procs,
        primary,
        format!("redis+sentinel://{}/m", hosts.join(",")),
    ))
}

/// A Redis Cluster of three primaries (no replicas), formed with `redis-cli --cluster
/// create`. Returns the processes, the nodes' ports and the router's
/// `redis-cluster://` URL, once every node says `cluster_state:ok`.
fn start_cluster(o: &Opts) -> Res<(Vec<Proc>, Vec<u16>, String)> {
    // the previous run's configuration files (their ports are not reused)
    let dir = format!("{}/cluster", o.out);
    let _ = std::fs::remove_dir_all(&dir);
    // absolute: redis-server resolves it after changing to its `--dir`
    let dir = abs_dir(&dir)?;
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = cluster_port()?;
        let conf = format!("{dir}/nodes-{port}.conf");
        let _ = std::fs::remove_file(&conf);
        procs.push(redis_node(
            o,
            port,
            &["--cluster-enabled", "yes", "--cluster-config-file", &conf],
        )?);
        ports.push(port);
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(nodes.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let out = Command::new("redis-cli")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    for &p in &ports {
        redis_wait(p, &["cluster", "info"], "cluster_state:ok", |s| {
            s.contains("cluster_state:ok")
        })?;
    }
    Ok((procs, ports, format!("redis-cluster://{}", nodes.join(","))))
}

fn redis_commands(port: u16) -> Res<u64> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "stats"])
        .output()
        .map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no total_commands_processed".into())
}

/// `total_commands_processed` summed over `ports` (none: no store).
fn total_commands(ports: &[u16]) -> Res<Option<u64>> {
    if ports.is_empty() {
        return Ok(None);
    }
    let mut t = 0;
    for &p in ports {
        t += redis_commands(p)?;
    }
    Ok(Some(t))
}

/// The commands the router sends for a session op, each one round trip: its Lua
/// scripts (`EVALSHA`, and `EVAL` after a `NOSCRIPT`), `WAIT`
/// (`--store-wait-replicas`) and `EXEC` (the reaper's acknowledging `MULTI`
/// pipeline: one round trip). `INFO commandstats` also counts every `redis.call`
/// inside a script, so a sum over all commands is the store's work, not its round
/// trips. Not counted: the failover's top-level `HMGET`, which commandstats cannot
/// tell from the admission script's own `HMGET` (no failover happens here).
const ROUND_TRIPS: &[&str] = &["eval", "evalsha", "eval_ro", "evalsha_ro", "wait", "exec"];

/// Commands that are not the store's work: the tool's `INFO`, the router's
/// readiness `PING`, connection set-up (`HELLO`, `CLIENT`, `SELECT`, `AUTH`), its
/// cluster topology reads (`CLUSTER`, `COMMAND`), the sentinels' monitoring (`PING`,
/// `INFO`, `PUBLISH` of their hello messages, `ROLE`) and replication (`REPLCONF`,
/// `PSYNC`, `SYNC`).
const NOT_STORE_WORK: &[&str] = &[
    "info",
    "ping",
    "hello",
    "client",
    "select",
    "auth",
    "cluster",
    "command",
    "publish",
    "subscribe",
    "role",
    "replconf",
    "psync",
    "sync",
    "config",
    "readonly",
];

/// `INFO commandstats` calls per command, summed over `ports`.
fn commandstats(ports: &[u16]) -> Res<std::collections::BTreeMap<String, u64>> {
    let mut m = std::collections::BTreeMap::new();
    for &p in ports {
        for l in redis_cli(p, &["info", "commandstats"])?.lines() {
            // cmdstat_evalsha:calls=123,usec=...
            let Some(rest) = l.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            let calls = stats
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            *m.entry(name.to_string()).or_insert(0) += calls;
        }
    }
    Ok(m)
}

/// HAProxy pinned to the proxy CPU: `tcp` false is the session-sticky HTTP proxy (a
/// stick table learned from the `Mcp-Session-Id` response header); `tcp` true is
/// `mode tcp`, a plain byte relay that parses nothing: the floor every frontend is
/// judged against. In TCP mode HAProxy balances connections, not requests: round robin
/// picks a backend when a client connects and every byte of that connection goes
/// there. mcp-load runs each session's lifecycle on one keep-alive connection (a
/// failed exchange drops the connection and abandons the lifecycle), so a session
/// never changes backend and the 32 connections split 16/16 over the two backends,
/// the same spread the HTTP row's round robin over new sessions gives (its
/// stickiness-violation counter checks it).
fn start_haproxy(o: &Opts, backends: &[SocketAddr], tcp: bool) -> Res<Frontend> {
    let port = free_port()?;
    let mut servers = String::new();
    for (i, b) in backends.iter().enumerate() {
        servers.push_str(&format!("    server b{i} {b}\n"));
    }
    let cfg = if tcp {
        format!(
            "global\n    nbthread 1\n    maxconn 4000\n\
             defaults\n    mode tcp\n    timeout connect 3s\n    timeout client 60s\n    timeout server 60s\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\
             backend be\n    balance roundrobin\n{servers}"
        )
    } else {
        format!(
        "global\n    nbthread 1\n    maxconn 4000\n\
         defaults\n    mode http\n    timeout connect 3s\n    timeout client 60s\n    timeout server 60s\n\
         \x20   option http-keep-alive\n    http-reuse always\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\
         backend be\n    balance roundrobin\n\
         \x20   stick-table type string len 64 size 1m expire 2h\n\
         \x20   stick store-response res.hdr(mcp-session-id)\n\
         \x20   stick match req.hdr(mcp-session-id)\n{servers}"
        )
    };
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let path = format!("{}/haproxy{}.cfg", o.out, if tcp { "-tcp" } else { "" });
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let child = spawn_pinned(&o.proxy_cpu, "haproxy", &["-f", &path, "-db"], &[])?;
    let p = Proc {
        child,
        name: if tcp { "haproxy-tcp" } else { "haproxy" }.into(),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(addr)?;
    Ok(Frontend {
        pid: Some(p.pid()),
        procs: vec![p],
        addr,
        redis_ports: vec![],
        store_pids: vec![],
        admin: None,
        more: vec![],
    })
}

// ----- HTTP client -----------------------------------------------------------------

struct Resp {
    status: u16,
    session: Option<String>,
    body: Vec<u8>,
}

/// One client: a keep-alive connection to each replica, requests taken in turn (one
/// replica: every request on the same connection).
struct Client {
    links: Vec<Link>,
    turn: usize,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client::over(&[addr])
    }

    /// A client whose successive requests alternate over `addrs`, as a non-sticky
    /// round-robin balancer in front of the replicas would send them.
    fn over(addrs: &[SocketAddr]) -> Client {
        Client {
            links: addrs.iter().map(|&a| Link::new(a)).collect(),
            turn: 0,
        }
    }

    async fn request(&mut self, req: &[u8]) -> Res<Resp> {
        let i = self.turn % self.links.len();
        self.turn = self.turn.wrapping_add(1);
        self.links[i].request(req).await
    }

    /// Drop every connection (after an error).
    fn reset(&mut self) {
        for l in &mut self.links {
            l.conn = None;
        }
    }
}

struct Link {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Link {
    fn new(addr: SocketAddr) -> Link {
        Link {
            addr,
            conn: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn request(&mut self, req: &[u8]) -> Res<Resp> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            self.conn = Some(s);
            self.buf.clear();
        }
        let r = self.exchange(req).await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn exchange(&mut self, req: &[u8]) -> Res<Resp> {
        let s = self.conn.as_mut().ok_or("no connection")?;
        s.write_all(req).await.map_err(|e| format!("write: {e}"))?;
        // head
        let (status, session, len, chunked, close, head_len) = loop {
            let mut h = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut h);
            match r.parse(&self.buf).map_err(|e| format!("parse: {e}"))? {
                httparse::Status::Complete(n) => {
                    let mut len = None;
                    let mut chunked = false;
                    let mut close = false;
                    let mut session = None;
                    for h in r.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            len = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = true;
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        } else if h.name.eq_ignore_ascii_case("mcp-session-id") {
                            session = Some(String::from_utf8_lossy(h.value).into_owned());
                        }
                    }
                    break (r.code.unwrap_or(0), session, len, chunked, close, n);
                }
                httparse::Status::Partial => read_more(s, &mut self.buf).await?,
            }
        };
        self.buf.drain(..head_len);
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    read_more(s, &mut self.buf).await?;
                    continue;
                };
                let size_txt = String::from_utf8_lossy(&self.buf[..eol]).to_string();
                let size =
                    usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| format!("bad chunk size {size_txt:?}"))?;
                while self.buf.len() < eol + 2 + size + 2 {
                    read_more(s, &mut self.buf).await?;
                }
                body.extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
                self.buf.drain(..eol + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let len = len.unwrap_or(0);
            while self.buf.len() < len {
                read_more(s, &mut self.buf).await?;
            }
            self.buf.drain(..len).collect()
        };
        if close {
            self.conn = None;
        }
        Ok(Resp {
            status,
            session,
            body,
        })
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Res<()> {
    let mut tmp = [0u8; 16 * 1024];
    let n = s.read(&mut tmp).await.map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed".into());
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

fn post(body: &str, session: Option<&str>) -> Vec<u8> {
    let sid = session
        .map(|s| format!("Mcp-Session-Id: {s}\r\nMcp-Protocol-Version: 2025-06-18\r\n"))
        .unwrap_or_default();
    format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\n{sid}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn backend_of(body: &[u8]) -> Option<&[u8]> {
    let k = b"\"backend\":\"";
    let at = body.windows(k.len()).position(|w| w == k)? + k.len();
    let end = body[at..].iter().position(|&b| b == b'"')?;
    Some(&body[at..at + end])
}

// ----- load ------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    lifecycles: AtomicU64,
    errors: AtomicU64,
    sticky: AtomicU64,
}

/// What one lifecycle does.
#[derive(Clone, Copy)]
struct Plan {
    calls: usize,
    notify: bool,
    delete: bool,
    /// Open-loop pacing: each client starts a lifecycle at most once per this interval
    /// (`--rate`); `None`: closed loop, the next lifecycle right after the last.
    pace: Option<Duration>,
}

impl Plan {
    fn requests(&self) -> usize {
        1 + usize::from(self.notify) + self.calls + usize::from(self.delete)
    }
}

/// Run one lifecycle; every request's latency goes to `hist` when `measure`, the
/// initialize's to `init_hist` too.
#[allow(clippy::too_many_arguments)]
async fn lifecycle(
    c: &mut Client,
    plan: Plan,
    args: &str,
    hist: &mut Histogram<u64>,
    init_hist: &mut Histogram<u64>,
    measure: bool,
    st: &Stats,
) -> Res<()> {
    let timed = |hist: &mut Histogram<u64>, t: Instant| {
        if measure {
            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
            st.requests.fetch_add(1, Relaxed);
        }
    };
    let t = Instant::now();
    let init = c
        .request(&post(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"mcp-load","version":"1"}}}"#,
            None,
        ))
        .await?;
    if measure {
        let _ = init_hist.record(t.elapsed().as_micros().max(1) as u64);
    }
    timed(hist, t);
    if init.status != 200 {
        return Err(format!("initialize: {}", init.status));
    }
    let sid = init.session.ok_or("initialize: no Mcp-Session-Id")?;
    let backend = backend_of(&init.body)
        .ok_or("initialize: no backend")?
        .to_vec();
    if plan.notify {
        let t = Instant::now();
        let r = c
            .request(&post(
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                Some(&sid),
            ))
            .await?;
        timed(hist, t);
        if r.status != 202 {
            return Err(format!("notifications/initialized: {}", r.status));
        }
    }
    for i in 0..plan.calls {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{args}","i":{i}}}}}}}"#,
            i + 1
        );
        let t = Instant::now();
        let r = c.request(&post(&body, Some(&sid))).await?;
        timed(hist, t);
        if r.status != 200 {
            return Err(format!("tools/call: {}", r.status));
        }
        if backend_of(&r.body) != Some(&backend[..]) {
            st.sticky.fetch_add(1, Relaxed);
        }
    }
    if plan.delete {
        let req = format!(
            "DELETE /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-06-18\r\n\r\n"
        );
        let t = Instant::now();
        let r = c.request(req.as_bytes()).await?;
        timed(hist, t);
        if r.status != 200 {
            return Err(format!("DELETE: {}", r.status));
        }
    }
    Ok(())
}

struct Run {
    secs: f64,
    hist: Histogram<u64>,
    /// The initializes' latencies alone (session creation).
    init_hist: Histogram<u64>,
    stats: Arc<Stats>,
    cpu: Option<Duration>,
    first_error: Option<String>,
}

/// W clients doing lifecycles: for `warmup + duration` seconds (measuring the last
/// `duration`), or until `limit` lifecycles have started. `mark` runs once, just
/// before the measured window opens (the caller samples its own counters there).
#[allow(clippy::too_many_arguments)]
async fn run_clients(
    addrs: &[SocketAddr],
    clients: usize,
    plan: Plan,
    warmup: f64,
    duration: f64,
    limit: Option<u64>,
    cpu_pids: &[u32],
    mark: &mut dyn FnMut(),
) -> Res<Run> {
    let stats = Arc::new(Stats::default());
    let measuring = Arc::new(AtomicBool::new(warmup <= 0.0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let args = "lorem ipsum dolor sit amet ".repeat(11);
    let args: Arc<str> = args[..290].into();
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    let addrs: Arc<[SocketAddr]> = addrs.into();
    for i in 0..clients {
        let (addrs, stats, measuring, stop, started, args, first_error) = (
            addrs.clone(),
            stats.clone(),
            measuring.clone(),
            stop.clone(),
            started.clone(),
            args.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
            let mut init = hist.clone();
            let mut c = Client::over(&addrs);
            // paced clients start staggered over one interval
            let mut next = tokio::time::Instant::now()
                + plan.pace.unwrap_or_default() * i as u32 / clients as u32;
            while !stop.load(Relaxed) {
                if let Some(p) = plan.pace {
                    tokio::time::sleep_until(next).await;
                    // no catching up in bursts: a late start moves the schedule
                    next = (next + p).max(tokio::time::Instant::now());
                }
                if let Some(l) = limit {
                    if started.fetch_add(1, Relaxed) >= l {
                        break;
                    }
                }
                let m = measuring.load(Relaxed);
                match lifecycle(&mut c, plan, &args, &mut hist, &mut init, m, &stats).await {
                    Ok(()) => {
                        if m {
                            stats.lifecycles.fetch_add(1, Relaxed);
                        }
                    }
                    Err(e) => {
                        if m || limit.is_some() {
                            stats.errors.fetch_add(1, Relaxed);
                        }
                        {
                            let mut f = first_error.lock().expect("lock");
                            if f.is_none() {
                                *f = Some(e);
                            }
                        }
                        c.reset();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (hist, init)
        }));
    }
    if warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    }
    // the caller's own counters (Redis), before the measured window opens
    mark();
    measuring.store(true, Relaxed);
    let cpu_all = || -> Res<Option<Duration>> {
        if cpu_pids.is_empty() {
            return Ok(None);
        }
        let mut t = Duration::ZERO;
        for &p in cpu_pids {
            t += cpu_time(p)?;
        }
        Ok(Some(t))
    };
    let cpu0 = cpu_all()?;
    let t0 = Instant::now();
    if limit.is_none() {
        tokio::time::sleep(Duration::from_secs_f64(duration)).await;
        stop.store(true, Relaxed);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
    let mut init_hist = hist.clone();
    for t in tasks {
        let (h, i) = t.await.map_err(|e| e.to_string())?;
        hist.add(h).map_err(|e| e.to_string())?;
        init_hist.add(i).map_err(|e| e.to_string())?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = match (cpu_all()?, cpu0) {
        (Some(c1), Some(c0)) => Some(c1.saturating_sub(c0)),
        _ => None,
    };
    let first_error = first_error.lock().expect("lock").take();
    Ok(Run {
        secs,
        hist,
        init_hist,
        stats,
        cpu,
        first_error,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Wait (up to 5 s) for a router's `/readyz` to answer 200 (it has reached its store).
fn wait_ready(rt: &tokio::runtime::Runtime, admin: Option<SocketAddr>) {
    let Some(a) = admin else { return };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if rt
            .block_on(http_get(a, "/readyz"))
            .is_ok_and(|(s, _)| s == 200)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `-caps` configuration's flags: the session caps and the per-client rate on,
/// far above what the load reaches, so that every initialize runs the store's
/// admission (one script on one Redis; on a cluster one `COUNT` script per shard,
/// then the client's bucket); otherwise none (all off, as for HAProxy).
fn caps(cfg: &str) -> &'static [&'static str] {
    if cfg.ends_with("-caps") {
        &[
            "--max-sessions",
            "1000000000",
            "--client-max-sessions",
            "1000000000",
            "--client-session-rate",
            "1000000",
        ]
    } else {
        &[]
    }
}

fn bench(o: &Opts) -> Res<()> {
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let plan = Plan {
        calls: o.calls,
        notify: true,
        delete: true,
        pace: None,
    };
    let plan = Plan {
        // every client's share of the rate, as lifecycles
        pace: o
            .rate
            .map(|r| Duration::from_secs_f64(o.clients as f64 * plan.requests() as f64 / r)),
        ..plan
    };
    let mut results = Vec::new();
    eprintln!(
        "mcp-load: {} clients, lifecycles of initialize + notification + {} tools/call + DELETE, \
         {} s warm-up + {} s measured per configuration; proxy on CPU {}, load and backends on CPU {}; load average {}",
        o.clients, o.calls, o.warmup, o.duration, o.proxy_cpu, o.load_cpu, loadavg()
    );
    let all = o;
    for label in &all.configs {
        // `CONFIG@DIR`: the configuration with the binaries from DIR, so that a before
        // and an after build are measured in one run, against the same HAProxy rows.
        let (cfg, o) = match label.split_once('@') {
            Some((c, dir)) => (
                c,
                &Opts {
                    bin_dir: dir.into(),
                    ..all.clone()
                },
            ),
            None => (label.as_str(), all),
        };
        // Fresh backends for every configuration: backends kept across the run made
        // each configuration slower than the one before it (the same HAProxy row
        // measured five times in a row: 41970 -> 32099 req/s, 12.4 -> 14.3 µs of CPU
        // per request), which favoured whatever came first.
        let (_b0, a0) = fake_backend(all, "b0")?;
        let (_b1, a1) = fake_backend(all, "b1")?;
        let backends = [a0, a1];
        let fe = match cfg {
            "direct" => Frontend {
                procs: vec![],
                pid: None,
                addr: a0,
                redis_ports: vec![],
                store_pids: vec![],
                admin: None,
                more: vec![],
            },
            "router" => start_router(o, &backends, None, &[])?,
            "router-redis"
            | "router-redis-two"
            | "router-redis-caps"
            | "router-redis-nocache"
            | "router-glommio-redis"
            | "router-glommio-redis-nocache"
            | "router-smol-redis"
            | "router-smol-redis-nocache" => {
                // `-two`: two replicas sharing the Redis, clients alternating over them
                // (the same two-process set-up as router-sealed, with a store);
                // `-nocache`: the record cache off, every lookup reads Redis
                let (redis, port) = start_redis(o)?;
                let url = format!("redis://127.0.0.1:{port}");
                let mut extra: Vec<&str> = caps(cfg).to_vec();
                if cfg.ends_with("-nocache") {
                    extra.extend(["--store-cache-size", "0"]);
                }
                // `router-<frontend>-redis`: the same on another frontend
                let bin = match cfg.split('-').nth(1) {
                    Some("glommio") => "mcp-router-glommio",
                    Some("smol") => "mcp-router-smol",
                    _ => "mcp-router",
                };
                let mut fe = start_router_bin(o, bin, &backends, Some(&url), &extra)?;
                if cfg == "router-redis-two" {
                    let other = start_router(o, &backends, Some(&url), &[])?;
                    fe.more.push((other.addr, other.pid.expect("pid")));
                    fe.procs.extend(other.procs);
                    wait_ready(&rt, other.admin);
                }
                fe.store_pids.push(redis.pid());
                fe.procs.push(redis);
                fe.redis_ports = vec![port];
                wait_ready(&rt, fe.admin);
                fe
            }
            "router-redis-sentinel" | "router-redis-sentinel-wait" => {
                // `-wait`: `--store-wait-replicas 1`, every new session's record
                // acknowledged by the replica (`WAIT 1`) before the answer
                let (redis, primary, url) = start_sentinel(o)?;
                let extra: &[&str] = if cfg.ends_with("-wait") {
                    &["--store-wait-replicas", "1"]
                } else {
                    &[]
                };
                let mut fe = start_router(o, &backends, Some(&url), extra)?;
                fe.store_pids.extend(redis.iter().map(Proc::pid));
                fe.procs.extend(redis);
                fe.redis_ports = vec![primary];
                wait_ready(&rt, fe.admin);
                fe
            }
            "router-redis-cluster" | "router-redis-cluster-caps" => {
                let (redis, ports, url) = start_cluster(o)?;
                let mut fe = start_router(o, &backends, Some(&url), caps(cfg))?;
                fe.store_pids.extend(redis.iter().map(Proc::pid));
                fe.procs.extend(redis);
                fe.redis_ports = ports;
                wait_ready(&rt, fe.admin);
                fe
            }
            "router-sealed-one" => {
                // the same, one replica: the sealing's own cost, without a second
                // process sharing the proxy CPU
                std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
                let keys = format!("{}/session-keys", o.out);
                std::fs::write(&keys, format!("bench:{}\n", "5a".repeat(32)))
                    .map_err(|e| e.to_string())?;
                start_router(
                    o,
                    &backends,
                    None,
                    &["--session-ids", "sealed", "--session-keys", &keys],
                )?
            }
            "router-sealed" => {
                // Sealed session ids, no store, two replicas: every client's requests
                // alternate between them (a non-sticky balancer), so most requests of a
                // session reach a replica that did not mint its id; CPU is both's.
                std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
                let keys = format!("{}/session-keys", o.out);
                std::fs::write(&keys, format!("bench:{}\n", "5a".repeat(32)))
                    .map_err(|e| e.to_string())?;
                let sealed = ["--session-ids", "sealed", "--session-keys", &keys];
                let mut fe = start_router(o, &backends, None, &sealed)?;
                let other = start_router(o, &backends, None, &sealed)?;
                fe.more.push((other.addr, other.pid.expect("pid")));
                fe.procs.extend(other.procs);
                fe
            }
            "router-smol" => start_router_bin(o, "mcp-router-smol", &backends, None, &[])?,
            "router-glommio" => start_router_bin(o, "mcp-router-glommio", &backends, None, &[])?,
            stdio if stdio.starts_with("stdio-") => {
                // `stdio-<mode>[-<frontend>]`: the stdio bridge serving mcp-stdio-echo,
                // one shared child or one child per session (each lifecycle spawns
                // and kills one); the router's CPU only (not the children's)
                let mut parts = stdio.split('-').skip(1);
                let mode = match parts.next() {
                    Some("shared") => "shared",
                    _ => "per-session",
                };
                let bin = match stdio.rsplit('-').next() {
                    Some("glommio") => "mcp-router-glommio",
                    Some("smol") => "mcp-router-smol",
                    _ => "mcp-router",
                };
                let echo = format!("{}/mcp-stdio-echo", o.bin_dir);
                let extra = [
                    "--stdio",
                    &echo,
                    "--stdio-mode",
                    mode,
                    "--stdio-max-children",
                    "256",
                ];
                start_router_bin(o, bin, &[], None, &extra)?
            }
            "haproxy" => start_haproxy(o, &backends, false)?,
            "haproxy-tcp" => start_haproxy(o, &backends, true)?,
            other => return Err(format!("unknown configuration {other}")),
        };
        let store_cpu = || -> Res<Duration> {
            let mut t = Duration::ZERO;
            for &p in &fe.store_pids {
                t += cpu_time(p)?;
            }
            Ok(t)
        };
        let mut before = Err("not sampled".to_string());
        let run = rt.block_on(run_clients(
            &fe.addrs(),
            o.clients,
            plan,
            o.warmup,
            o.duration,
            None,
            &fe.pids(),
            &mut || {
                before = (|| {
                    Ok((
                        total_commands(&fe.redis_ports)?,
                        commandstats(&fe.redis_ports)?,
                        store_cpu()?,
                    ))
                })()
            },
        ))?;
        let (redis0, stats0, store0) = before?;
        let store1 = store_cpu()?;
        let stats1 = commandstats(&fe.redis_ports)?;
        let redis1 = total_commands(&fe.redis_ports)?;
        let n = run.stats.requests.load(Relaxed);
        let lifecycles = run.stats.lifecycles.load(Relaxed);
        let h = &run.hist;
        let ih = &run.init_hist;
        // the store's commands during the measured window, per command
        let calls: serde_json::Map<String, Value> = stats1
            .iter()
            .filter_map(|(k, v)| {
                let d = v - stats0.get(k).copied().unwrap_or(0);
                (d > 0).then(|| (k.clone(), json!(d)))
            })
            .collect();
        let sum = |keep: &dyn Fn(&str) -> bool| -> u64 {
            calls
                .iter()
                .filter(|(k, _)| keep(k.split('|').next().unwrap_or(k)))
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .sum()
        };
        let round_trips = sum(&|c| ROUND_TRIPS.contains(&c));
        let redis_work = sum(&|c| !NOT_STORE_WORK.contains(&c));
        let has_store = !fe.redis_ports.is_empty();
        let r = json!({
            "config": label,
            "seconds": run.secs,
            "requests": n,
            "lifecycles": lifecycles,
            "throughput": n as f64 / run.secs,
            "p50_us": h.value_at_quantile(0.50),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "errors": run.stats.errors.load(Relaxed),
            "stickiness_violations": run.stats.sticky.load(Relaxed),
            "proxy_cpu_us_per_request": run.cpu.map(|c| c.as_micros() as f64 / n.max(1) as f64),
            "proxy_cpu_us_per_lifecycle": run.cpu.map(|c| c.as_micros() as f64 / lifecycles.max(1) as f64),
            "proxy_cpu_utilisation": run.cpu.map(|c| c.as_secs_f64() / run.secs),
            "initialize_p50_us": ih.value_at_quantile(0.50),
            "initialize_p99_us": ih.value_at_quantile(0.99),
            "redis_commands_per_request": match (redis0, redis1) {
                (Some(a), Some(b)) => Some((b - a) as f64 / n.max(1) as f64),
                _ => None,
            },
            "store_round_trips_per_request": has_store.then(|| round_trips as f64 / n.max(1) as f64),
            "store_round_trips_per_lifecycle": has_store.then(|| round_trips as f64 / lifecycles.max(1) as f64),
            "store_commands_incl_scripts_per_request": has_store.then(|| redis_work as f64 / n.max(1) as f64),
            "store_cpu_us_per_request": has_store.then(|| (store1 - store0).as_micros() as f64 / n.max(1) as f64),
            "store_commands": calls,
            "first_error": run.first_error,
            "loadavg": loadavg(),
        });
        eprintln!("{r}");
        results.push(r);
        drop(fe);
    }
    let out = json!({
        "clients": o.clients,
        "rate": o.rate,
        "calls": o.calls,
        "duration": o.duration,
        "warmup": o.warmup,
        "proxy_cpu": o.proxy_cpu,
        "load_cpu": o.load_cpu,
        "results": results,
    });
    let path = format!("{}/load.json", o.out);
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json"))
        .map_err(|e| e.to_string())?;
    print_table(&results);
    print_store_table(&results);
    eprintln!("wrote {path}");
    Ok(())
}

fn print_table(results: &[Value]) {
    let get = |c: &str| results.iter().find(|r| r["config"] == c);
    let hap = get("haproxy");
    let tcp = get("haproxy-tcp");
    let direct = get("direct");
    println!("| configuration | req/s | p50 µs | p99 µs | p99.9 µs | errors | stickiness violations | proxy CPU µs/req | CPU vs HAProxy | req/s vs HAProxy | req/s vs direct | p99 vs HAProxy | CPU vs HAProxy TCP | req/s vs HAProxy TCP | p99 vs HAProxy TCP |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["config"].as_str().unwrap_or(""),
            r["throughput"].as_f64().unwrap_or(0.0),
            r["p50_us"],
            r["p99_us"],
            r["p999_us"],
            r["errors"],
            r["stickiness_violations"],
            r["proxy_cpu_us_per_request"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.1}")),
            ratio(r, hap, "proxy_cpu_us_per_request"),
            ratio(r, hap, "throughput"),
            ratio(r, direct, "throughput"),
            ratio(r, hap, "p99_us"),
            ratio(r, tcp, "proxy_cpu_us_per_request"),
            ratio(r, tcp, "throughput"),
            ratio(r, tcp, "p99_us"),
        );
    }
    // the Redis store against the embedded one, measured in the same run
    let embedded = get("router");
    let redis: Vec<&Value> = results
        .iter()
        .filter(|r| r["store_round_trips_per_request"].is_number())
        .collect();
    if !redis.is_empty() {
        println!();
        println!("| configuration | proxy CPU µs/req | CPU vs embedded store (router) | Redis round trips/req | Redis commands/req (incl. in scripts) |");
        println!("|---|---|---|---|---|");
        for r in redis {
            println!(
                "| {} | {} | {} | {:.3} | {:.3} |",
                r["config"].as_str().unwrap_or(""),
                r["proxy_cpu_us_per_request"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.1}")),
                ratio(r, embedded, "proxy_cpu_us_per_request"),
                r["store_round_trips_per_request"].as_f64().unwrap_or(0.0),
                r["store_commands_incl_scripts_per_request"]
                    .as_f64()
                    .unwrap_or(0.0),
            );
        }
    }
}

/// `r[k]` over `base[k]` as `1.23x`; `-` when either is missing or the base is 0.
fn ratio(r: &Value, base: Option<&Value>, k: &str) -> String {
    match (r[k].as_f64(), base.and_then(|b| b[k].as_f64())) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// The configurations with a Redis store, against `router-redis` of the same run:
/// round trips (the store's commands from `INFO commandstats`, primaries only) and
/// session creation (initialize) latency.
fn print_store_table(results: &[Value]) {
    let rows: Vec<&Value> = results
        .iter()
        .filter(|r| !r["store_round_trips_per_request"].is_null())
        .collect();
    if rows.is_empty() {
        return;
    }
    let base = results.iter().find(|r| r["config"] == "router-redis");
    let f1 = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.1}"));
    let f2 = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.2}"));
    println!();
    println!("| configuration | req/s | p99 µs | initialize p50 µs | initialize p99 µs | proxy CPU µs/req | proxy CPU µs/lifecycle | Redis CPU µs/req | store round trips/req | store round trips/lifecycle | Redis commands/req (incl. in scripts) | req/s vs router-redis | proxy CPU vs router-redis | initialize p99 vs router-redis |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["config"].as_str().unwrap_or(""),
            r["throughput"].as_f64().unwrap_or(0.0),
            r["p99_us"],
            r["initialize_p50_us"],
            r["initialize_p99_us"],
            f1(&r["proxy_cpu_us_per_request"]),
            f1(&r["proxy_cpu_us_per_lifecycle"]),
            f1(&r["store_cpu_us_per_request"]),
            f2(&r["store_round_trips_per_request"]),
            f2(&r["store_round_trips_per_lifecycle"]),
            f2(&r["store_commands_incl_scripts_per_request"]),
            ratio(r, base, "throughput"),
            ratio(r, base, "proxy_cpu_us_per_request"),
            ratio(r, base, "initialize_p99_us"),
        );
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Res<(u16, String)> {
    let mut c = Client::new(addr);
    let r = c
        .request(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

async fn sessions_active(admin: SocketAddr) -> Option<u64> {
    let (_, body) = http_get(admin, "/metrics").await.ok()?;
    body.lines()
        .find(|l| l.starts_with("mcp_router_sessions_active "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

// ----- memory ----------------------------------------------------------------------

fn mem(o: &Opts) -> Res<()> {
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = serde_json::Map::new();
    out.insert("loadavg".into(), json!(loadavg()));
    let checkpoints = [5_000u64, 25_000, 50_000, 100_000];
    for (name, plan, ttl) in [
        (
            "lifecycles_with_delete",
            Plan {
                calls: 1,
                notify: true,
                delete: true,
                pace: None,
            },
            "2h",
        ),
        (
            "lifecycles_without_delete_ttl_5s",
            Plan {
                calls: 1,
                notify: true,
                delete: false,
                pace: None,
            },
            "5s",
        ),
        (
            "lifecycles_without_delete_ttl_1s",
            Plan {
                calls: 1,
                notify: true,
                delete: false,
                pace: None,
            },
            "1s",
        ),
    ] {
        let (b0, a0) = fake_backend(o, "b0")?;
        let (b1, a1) = fake_backend(o, "b1")?;
        let fe = start_router(o, &[a0, a1], None, &["--session-ttl", ttl])?;
        let pid = fe.pid.expect("pid");
        let admin = fe.admin.expect("admin");
        let base = rss_kib(pid)?;
        let mut rows = vec![json!({"lifecycles": 0, "rss_kib": base})];
        let mut done = 0;
        let t = Instant::now();
        for &cp in &checkpoints {
            let run = rt.block_on(run_clients(
                &[fe.addr],
                o.clients,
                plan,
                0.0,
                0.0,
                Some(cp - done),
                &[],
                &mut || {},
            ))?;
            done = cp;
            let live = rt.block_on(sessions_active(admin));
            let rss = rss_kib(pid)?;
            let row = json!({
                "lifecycles": cp,
                "rss_kib": rss,
                "sessions_active": live,
                "errors": run.stats.errors.load(Relaxed),
                "elapsed_s": t.elapsed().as_secs_f64(),
            });
            eprintln!("{name}: {row}");
            rows.push(row);
        }
        let growth = rows[4]["rss_kib"].as_u64().unwrap_or(0) as i64
            - rows[1]["rss_kib"].as_u64().unwrap_or(0) as i64;
        out.insert(
            name.into(),
            json!({"ttl": ttl, "rows": rows, "rss_growth_5k_to_100k_kib": growth}),
        );
        drop((fe, b0, b1));
    }
    // idle sessions: initialize only, long TTL
    {
        let (b0, a0) = fake_backend(o, "b0")?;
        let (b1, a1) = fake_backend(o, "b1")?;
        let fe = start_router(o, &[a0, a1], None, &["--session-ttl", "2h"])?;
        let pid = fe.pid.expect("pid");
        let admin = fe.admin.expect("admin");
        let plan = Plan {
            calls: 0,
            notify: false,
            delete: false,
            pace: None,
        };
        // warm the connections and buffers first
        rt.block_on(run_clients(
            &[fe.addr],
            o.clients,
            plan,
            0.0,
            0.0,
            Some(1_000),
            &[],
            &mut || {},
        ))?;
        let base = rss_kib(pid)?;
        let base_live = rt.block_on(sessions_active(admin)).unwrap_or(0);
        let mut rows = Vec::new();
        let mut done = 1_000;
        let t = Instant::now();
        let mut cps = vec![100_000u64];
        if o.idle > 100_000 {
            cps.push(o.idle);
        }
        for cp in cps {
            let run = rt.block_on(run_clients(
                &[fe.addr],
                o.clients,
                plan,
                0.0,
                0.0,
                Some(cp - (done - 1_000)),
                &[],
                &mut || {},
            ))?;
            done = cp + 1_000;
            let live = rt.block_on(sessions_active(admin)).unwrap_or(0);
            let rss = rss_kib(pid)?;
            let per = (rss as f64 - base as f64) * 1024.0 / (live - base_live).max(1) as f64;
            let row = json!({
                "idle_sessions": live - base_live,
                "rss_kib": rss,
                "base_rss_kib": base,
                "rss_bytes_per_session": per,
                "errors": run.stats.errors.load(Relaxed),
                "elapsed_s": t.elapsed().as_secs_f64(),
            });
            eprintln!("idle: {row}");
            rows.push(row);
        }
        out.insert("idle_sessions_router_rss".into(), json!(rows));
        drop((fe, b0, b1));
    }
    // the embedded store alone, 1M records, heap bytes counted in process
    {
        use mcp_router_core::mcp::SessionKey;
        use mcp_router_core::{BackendId, Era, MemStore, Record, StoreOp};
        let t = Instant::now();
        let mut s = MemStore::new(Duration::from_secs(7200), 4096, t);
        let rec = Record {
            backend: BackendId(1),
            era: Era::Streamable,
            client: mcp_router_core::ClientId(0),
        };
        let mut rows = Vec::new();
        let before = live_bytes();
        let (a0, _) = alloc_count();
        let mut n = 0u64;
        for cp in [100_000u64, 1_000_000] {
            while n < cp {
                // the fake backend's id shape: name-counter-16 hex
                let id = format!("b1-{n}-{:016x}", n.wrapping_mul(0x9e3779b97f4a7c15));
                let k = SessionKey::new(id.as_bytes(), 256).expect("key");
                s.execute(&StoreOp::Insert(k, rec), t);
                n += 1;
            }
            let per = (live_bytes() - before) as f64 / n as f64;
            rows.push(json!({"records": n, "heap_bytes_per_record": per, "id_len": format!("b1-{n}-{:016x}", 0).len()}));
        }
        let _ = alloc_count().0 - a0;
        eprintln!("embedded store in process: {rows:?}");
        out.insert("embedded_store_heap".into(), json!(rows));
    }
    let path = format!("{}/mem.json", o.out);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Value::Object(out)).expect("json"),
    )
    .map_err(|e| e.to_string())?;
    eprintln!("wrote {path}");
    Ok(())
}

// ----- churn without DELETE: the backends' own session counts ---------------------

/// Sessions the fake backend at `addr` holds (`/stats?brief`).
async fn backend_sessions(addr: SocketAddr) -> Res<u64> {
    let (status, body) = http_get(addr, "/stats?brief").await?;
    if status != 200 {
        return Err(format!("{addr}/stats: {status}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    v["sessions"].as_u64().ok_or("no sessions in /stats".into())
}

async fn metric(admin: SocketAddr, series: &str) -> u64 {
    let Ok((_, body)) = http_get(admin, "/metrics").await else {
        return 0;
    };
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Issue 14: lifecycles that never send `DELETE` (initialize, notification, one
/// tools/call), TTL 2 s, through the router (embedded store) to two fake backends;
/// after every 20k lifecycles and for 8 s after the load stops, the backends' own
/// session counts (`/stats`), the router's live sessions and its reap counters.
/// Three times: with the default reap bounds (100 `DELETE`s a second, queue 10 000),
/// with `--reap-rate 20000 --reap-concurrency 8`, and that with `--reap-queue 100000`.
/// Results go to `OUT/churn.json`.
fn churn(o: &Opts) -> Res<()> {
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = serde_json::Map::new();
    out.insert("loadavg".into(), json!(loadavg()));
    let plan = Plan {
        calls: 1,
        notify: true,
        delete: false,
        pace: None,
    };
    let runs: [(&str, &[&str]); 3] = [
        ("default_reap_bounds", &[]),
        (
            "reap_rate_20000",
            &["--reap-rate", "20000", "--reap-concurrency", "8"],
        ),
        (
            "reap_rate_20000_queue_100000",
            &[
                "--reap-rate",
                "20000",
                "--reap-concurrency",
                "8",
                "--reap-queue",
                "100000",
            ],
        ),
    ];
    for (name, flags) in runs {
        let (b0, a0) = fake_backend(o, "b0")?;
        let (b1, a1) = fake_backend(o, "b1")?;
        let mut extra = vec!["--session-ttl", "2s"];
        extra.extend_from_slice(flags);
        let fe = start_router(o, &[a0, a1], None, &extra)?;
        let admin = fe.admin.expect("admin");
        let sample = |phase: &str, lifecycles: u64, t: Instant| -> Res<Value> {
            rt.block_on(async {
                let s0 = backend_sessions(a0).await?;
                let s1 = backend_sessions(a1).await?;
                let r = |res: &str| format!("mcp_router_sessions_reaped_total{{result=\"{res}\"}}");
                Ok(json!({
                    "phase": phase,
                    "t_s": (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                    "lifecycles": lifecycles,
                    "backend_sessions": s0 + s1,
                    "router_sessions_active": sessions_active(admin).await,
                    "reaped_deleted": metric(admin, &r("deleted")).await,
                    "reaped_dropped": metric(admin, &r("dropped")).await,
                    "reaped_failed": metric(admin, &r("failed")).await,
                }))
            })
        };
        let t = Instant::now();
        let mut rows = vec![sample("load", 0, t)?];
        let mut done = 0u64;
        let mut errors = 0;
        for _ in 0..5 {
            let run = rt.block_on(run_clients(
                &[fe.addr],
                o.clients,
                plan,
                0.0,
                0.0,
                Some(20_000),
                &[],
                &mut || {},
            ))?;
            errors += run.stats.errors.load(Relaxed);
            done += 20_000;
            let row = sample("load", done, t)?;
            eprintln!("{name}: {row}");
            rows.push(row);
        }
        for _ in 0..4 {
            std::thread::sleep(Duration::from_secs(2));
            let row = sample("idle", done, t)?;
            eprintln!("{name}: {row}");
            rows.push(row);
        }
        out.insert(
            name.into(),
            json!({"ttl": "2s", "flags": flags, "errors": errors, "rows": rows}),
        );
        drop((fe, b0, b1));
    }
    let path = format!("{}/churn.json", o.out);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Value::Object(out)).expect("json"),
    )
    .map_err(|e| e.to_string())?;
    eprintln!("wrote {path}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("bench") => opts(&args[1..]).and_then(|o| bench(&o)),
        Some("mem") => opts(&args[1..]).and_then(|o| mem(&o)),
        Some("churn") => opts(&args[1..]).and_then(|o| churn(&o)),
        _ => Err("usage: mcp-load bench|mem|churn [options] (see the source header)".into()),
    };
    if let Err(e) = r {
        eprintln!("mcp-load: {e}");
        std::process::exit(1);
    }
}
