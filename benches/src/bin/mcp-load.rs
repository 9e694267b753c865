//! mcp-load: end-to-end load and memory benchmark of mcp-router.
//!
//! ```text
//! mcp-load bench [--duration S] [--warmup S] [--clients W] [--calls K] [--configs a,b,..]
//!                [--proxy-cpu C] [--load-cpu C] [--bin-dir DIR] [--out DIR]
//! mcp-load mem   [--idle N] [--bin-dir DIR] [--out DIR] [--proxy-cpu C] [--load-cpu C]
//! ```
//!
//! `bench` starts two `mcp-fake-backend`s (pinned to the load CPU), then for each
//! configuration (`direct`, `router`, `router-redis` (`-nocache`: the record cache off;
//! `-two`: two replicas), `router-sealed` (sealed ids, no
//! store), `router-smol`, `router-glommio`, `haproxy`) starts the frontend pinned to
//! the proxy CPU, runs W clients doing whole MCP session lifecycles
//! (initialize, notifications/initialized, K tools/call, DELETE) over keep-alive
//! connections for the duration, and reports throughput, latency percentiles, errors,
//! stickiness violations (a tools/call answered by another backend than the
//! initialize) and the frontend process's own CPU time (user+sys from /proc) per
//! request. Run it pinned itself (`taskset -c 1 mcp-load bench`); results go to
//! `OUT/load.json`, and a Markdown table to stdout.
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
        ],
        proxy_cpu: "0".into(),
        load_cpu: "1".into(),
        bin_dir: "target/release".into(),
        out: "target/mcp-bench".into(),
        idle: 100_000,
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
    redis_port: Option<u16>,
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
        args.push(f.into());
        args.push("0".into());
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
        redis_port: None,
        admin: Some(admin_listen.parse().map_err(|e| format!("{e}"))?),
        more: vec![],
    })
}

fn start_redis(o: &Opts) -> Res<(Proc, u16)> {
    let port = free_port()?;
    let ps = port.to_string();
    let child = spawn_pinned(
        &o.load_cpu,
        "redis-server",
        &[
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
        ],
        &[],
    )?;
    let p = Proc {
        child,
        name: "redis-server".into(),
    };
    wait_listening(format!("127.0.0.1:{port}").parse().expect("addr"))?;
    Ok((p, port))
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

/// The commands a router sends Redis as requests of their own (from `INFO
/// commandstats`, which also counts what scripts run inside, hence not the total):
/// script runs (`EVALSHA`, `EVAL`), transactions (`EXEC`: the record cache's slides)
/// and the failover load (`HMGET`). The store probe's `PING`s are left out (one per
/// second per connection, no request's).
fn redis_round_trips(port: u16) -> Res<u64> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "commandstats"])
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (cmd, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if !["evalsha", "eval", "exec", "hmget"].contains(&cmd) {
                return None;
            }
            rest.strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum())
}

fn start_haproxy(o: &Opts, backends: &[SocketAddr]) -> Res<Frontend> {
    let port = free_port()?;
    let mut servers = String::new();
    for (i, b) in backends.iter().enumerate() {
        servers.push_str(&format!("    server b{i} {b}\n"));
    }
    let cfg = format!(
        "global\n    nbthread 1\n    maxconn 4000\n\
         defaults\n    mode http\n    timeout connect 3s\n    timeout client 60s\n    timeout server 60s\n\
         \x20   option http-keep-alive\n    http-reuse always\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\
         backend be\n    balance roundrobin\n\
         \x20   stick-table type string len 64 size 1m expire 2h\n\
         \x20   stick store-response res.hdr(mcp-session-id)\n\
         \x20   stick match req.hdr(mcp-session-id)\n{servers}"
    );
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let path = format!("{}/haproxy.cfg", o.out);
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let child = spawn_pinned(&o.proxy_cpu, "haproxy", &["-f", &path, "-db"], &[])?;
    let p = Proc {
        child,
        name: "haproxy".into(),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(addr)?;
    Ok(Frontend {
        pid: Some(p.pid()),
        procs: vec![p],
        addr,
        redis_port: None,
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
}

/// Run one lifecycle; every request's latency goes to `hist` when `measure`.
async fn lifecycle(
    c: &mut Client,
    plan: Plan,
    args: &str,
    hist: &mut Histogram<u64>,
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
    stats: Arc<Stats>,
    cpu: Option<Duration>,
    first_error: Option<String>,
}

/// W clients doing lifecycles: for `warmup + duration` seconds (measuring the last
/// `duration`), or until `limit` lifecycles have started.
async fn run_clients(
    addrs: &[SocketAddr],
    clients: usize,
    plan: Plan,
    warmup: f64,
    duration: f64,
    limit: Option<u64>,
    cpu_pids: &[u32],
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
    for _ in 0..clients {
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
            let mut c = Client::over(&addrs);
            while !stop.load(Relaxed) {
                if let Some(l) = limit {
                    if started.fetch_add(1, Relaxed) >= l {
                        break;
                    }
                }
                let m = measuring.load(Relaxed);
                match lifecycle(&mut c, plan, &args, &mut hist, m, &stats).await {
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
            hist
        }));
    }
    if warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    }
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
    for t in tasks {
        let h = t.await.map_err(|e| e.to_string())?;
        hist.add(h).map_err(|e| e.to_string())?;
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

fn bench(o: &Opts) -> Res<()> {
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let (b0, a0) = fake_backend(o, "b0")?;
    let (b1, a1) = fake_backend(o, "b1")?;
    let backends = [a0, a1];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let plan = Plan {
        calls: o.calls,
        notify: true,
        delete: true,
    };
    let mut results = Vec::new();
    eprintln!(
        "mcp-load: {} clients, lifecycles of initialize + notification + {} tools/call + DELETE, \
         {} s warm-up + {} s measured per configuration; proxy on CPU {}, load and backends on CPU {}; load average {}",
        o.clients, o.calls, o.warmup, o.duration, o.proxy_cpu, o.load_cpu, loadavg()
    );
    for cfg in &o.configs {
        let fe = match cfg.as_str() {
            "direct" => Frontend {
                procs: vec![],
                pid: None,
                addr: a0,
                redis_port: None,
                admin: None,
                more: vec![],
            },
            "router" => start_router(o, &backends, None, &[])?,
            "router-redis" | "router-redis-two" | "router-redis-nocache" => {
                // `-two`: two replicas sharing the Redis, clients alternating over them
                // (the same two-process set-up as router-sealed, with a store);
                // `-nocache`: the record cache off, every lookup reads Redis
                let (redis, port) = start_redis(o)?;
                let url = format!("redis://127.0.0.1:{port}");
                let extra: &[&str] = if cfg == "router-redis-nocache" {
                    &["--store-cache-size", "0"]
                } else {
                    &[]
                };
                let mut fe = start_router(o, &backends, Some(&url), extra)?;
                if cfg == "router-redis-two" {
                    let other = start_router(o, &backends, Some(&url), &[])?;
                    fe.more.push((other.addr, other.pid.expect("pid")));
                    fe.procs.extend(other.procs);
                    wait_ready(&rt, other.admin);
                }
                fe.procs.push(redis);
                fe.redis_port = Some(port);
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
            "haproxy" => start_haproxy(o, &backends)?,
            other => return Err(format!("unknown configuration {other}")),
        };
        let redis0 = fe.redis_port.map(redis_commands).transpose()?;
        let trips0 = fe.redis_port.map(redis_round_trips).transpose()?;
        let run = rt.block_on(run_clients(
            &fe.addrs(),
            o.clients,
            plan,
            o.warmup,
            o.duration,
            None,
            &fe.pids(),
        ))?;
        let redis1 = fe.redis_port.map(redis_commands).transpose()?;
        let trips1 = fe.redis_port.map(redis_round_trips).transpose()?;
        let n = run.stats.requests.load(Relaxed);
        let h = &run.hist;
        let r = json!({
            "config": cfg,
            "seconds": run.secs,
            "requests": n,
            "lifecycles": run.stats.lifecycles.load(Relaxed),
            "throughput": n as f64 / run.secs,
            "p50_us": h.value_at_quantile(0.50),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "errors": run.stats.errors.load(Relaxed),
            "stickiness_violations": run.stats.sticky.load(Relaxed),
            "proxy_cpu_us_per_request": run.cpu.map(|c| c.as_micros() as f64 / n.max(1) as f64),
            "proxy_cpu_utilisation": run.cpu.map(|c| c.as_secs_f64() / run.secs),
            "redis_commands_per_request": match (redis0, redis1) {
                (Some(a), Some(b)) => Some((b - a) as f64 / n.max(1) as f64),
                _ => None,
            },
            "redis_round_trips_per_request": match (trips0, trips1) {
                (Some(a), Some(b)) => Some((b - a) as f64 / n.max(1) as f64),
                _ => None,
            },
            "first_error": run.first_error,
            "loadavg": loadavg(),
        });
        eprintln!("{r}");
        results.push(r);
        drop(fe);
    }
    drop((b0, b1));
    let out = json!({
        "clients": o.clients,
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
    eprintln!("wrote {path}");
    Ok(())
}

fn print_table(results: &[Value]) {
    let get = |c: &str| results.iter().find(|r| r["config"] == c);
    let hap = get("haproxy");
    let direct = get("direct");
    let ratio = |r: &Value, base: Option<&Value>, k: &str| -> String {
        match (r[k].as_f64(), base.and_then(|b| b[k].as_f64())) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        }
    };
    println!("| configuration | req/s | p50 µs | p99 µs | p99.9 µs | errors | stickiness violations | proxy CPU µs/req | CPU vs HAProxy | req/s vs HAProxy | req/s vs direct | p99 vs HAProxy |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
        );
    }
    // the Redis store against the embedded one, measured in the same run
    let embedded = get("router");
    let redis: Vec<&Value> = results
        .iter()
        .filter(|r| r["redis_round_trips_per_request"].is_number())
        .collect();
    if !redis.is_empty() {
        println!();
        println!("| configuration | proxy CPU µs/req | CPU vs embedded store (router) | Redis round trips/req | Redis commands/req |");
        println!("|---|---|---|---|---|");
        for r in redis {
            println!(
                "| {} | {} | {} | {:.3} | {:.3} |",
                r["config"].as_str().unwrap_or(""),
                r["proxy_cpu_us_per_request"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.1}")),
                ratio(r, embedded, "proxy_cpu_us_per_request"),
                r["redis_round_trips_per_request"].as_f64().unwrap_or(0.0),
                r["redis_commands_per_request"].as_f64().unwrap_or(0.0),
            );
        }
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
            },
            "2h",
        ),
        (
            "lifecycles_without_delete_ttl_5s",
            Plan {
                calls: 1,
                notify: true,
                delete: false,
            },
            "5s",
        ),
        (
            "lifecycles_without_delete_ttl_1s",
            Plan {
                calls: 1,
                notify: true,
                delete: false,
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
