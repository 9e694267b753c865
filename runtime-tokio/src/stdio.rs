//! The stdio bridge frontend: serves a stdio MCP server (`--stdio "<command>"`) over
//! Streamable HTTP (`/mcp`) and legacy HTTP+SSE (`/sse`, `/message`).
//!
//! Every decision is the core's [`Bridge`]; this module spawns and kills the children
//! and moves bytes:
//!
//! - The command runs as `sh -c "<command>"` (so quoting, environment variables and
//!   pipes work as in a shell; `sh -c "exec <command>"` for one simple command), in a
//!   **new process group** (`process_group(0)`), with stdin/stdout/stderr piped. Its
//!   stderr is logged line by line with the session id.
//! - A kill is `SIGTERM` to the whole group, `SIGKILL` to the group after
//!   [`KILL_GRACE`], then the leader is reaped and every remaining member of the group
//!   too: the router makes itself a child subreaper (Linux), so group members that
//!   outlive their parent are re-parented to it and reaped here. A child that exits by
//!   itself gets the same treatment for what it leaves behind. No orphan, no zombie.
//! - If the router itself dies without cleaning up (`kill -9`, a crash): the direct
//!   child has `PR_SET_PDEATHSIG(SIGKILL)` (and `sh` execs a simple command, so the
//!   server is that child: `mcp_router_core::stdio::shell_command`), and a watcher in each child's process
//!   group SIGKILLs the whole group when the router's end of its pipe closes
//!   (`spawn_watcher`). Only a process that left the group (`setsid`, `setpgid`)
//!   survives (if it kept the child's stdin or stdout, it sees EOF or `EPIPE` there).
//! - Backpressure: each exchange has a bounded channel of [`STREAM_BUFFER`] outputs;
//!   when a stream's channel is full (its client does not read), the core ends that
//!   session ([`Bridge::handle_stream_overflow`]) and the connection is closed. Child
//!   stdout is never stalled by one client. Lines to a child's stdin go through a
//!   bounded channel; an HTTP request waits for room (so a client that outruns its child
//!   waits, and only that client).
//! - Request heads are parsed by the core's `parse_request` (431/400/501/505 as in the
//!   proxy) and bodies are bounded by `max_inspect_body` (413).

use bytes::{Bytes, BytesMut};
use mcp_router_core::http::{
    parse_request, write_simple_response, BodyDecoder, BodyKind, HttpLimits, Method, RequestHead,
    Version,
};
use mcp_router_core::stdio::{
    Bridge, BridgeConfig, BridgeEvent, BridgeOutput, ChildId, ExchangeId, Request,
};
use std::collections::HashMap;
use std::io::Read as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::Settings;

/// Outputs buffered per exchange; a stream whose buffer is full ends its session.
pub const STREAM_BUFFER: usize = 256;
/// Lines buffered per child's stdin.
pub const STDIN_BUFFER: usize = 64;
/// Longest line accepted from a child's stdout (a longer one is a protocol error).
pub const MAX_CHILD_LINE: usize = 8 * 1024 * 1024;
/// Time a child's process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for one write to a client; a client that does not read is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub use mcp_router_frontend::config::StdioSettings;

/// What a connection task receives for its exchange.
#[derive(Debug)]
enum ExOut {
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
    Start(Vec<(&'static str, String)>),
    Event(Bytes),
    End,
}

struct ChildCtl {
    stdin: mpsc::Sender<Bytes>,
    kill: Option<oneshot::Sender<()>>,
}

struct Driver {
    bridge: Bridge,
    exchanges: HashMap<ExchangeId, mpsc::Sender<ExOut>>,
    children: HashMap<ChildId, ChildCtl>,
    command: String,
    urandom: std::fs::File,
    /// Live child supervisors (each reaps its process group).
    reapers: Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
}

type DriverRef = Arc<Mutex<Driver>>;

/// Lines to write to children, collected under the lock and written after it.
type Writes = Vec<(mpsc::Sender<Bytes>, Bytes)>;

fn lock(d: &DriverRef) -> std::sync::MutexGuard<'_, Driver> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl Driver {
    /// Drain the bridge's outputs and carry them out; returns the stdin writes.
    fn pump(&mut self, me: &DriverRef) -> Writes {
        let mut writes = Vec::new();
        loop {
            let mut overflow = Vec::new();
            let mut closed = Vec::new();
            let mut exited = Vec::new();
            while let Some(o) = self.bridge.poll_output() {
                match o {
                    BridgeOutput::Respond {
                        exchange,
                        status,
                        headers,
                        body,
                    } => {
                        if let Some(tx) = self.exchanges.remove(&exchange) {
                            let _ = tx.try_send(ExOut::Respond {
                                status,
                                headers,
                                body,
                            });
                        }
                    }
                    BridgeOutput::StartStream { exchange, headers } => {
                        self.send(exchange, ExOut::Start(headers), &mut overflow, &mut closed)
                    }
                    BridgeOutput::Event { exchange, data } => {
                        self.send(exchange, ExOut::Event(data), &mut overflow, &mut closed)
                    }
                    BridgeOutput::EndStream { exchange } => {
                        if let Some(tx) = self.exchanges.remove(&exchange) {
                            // a full channel here: the connection is closed without
                            // the terminal chunk when the sender drops
                            let _ = tx.try_send(ExOut::End);
                        }
                    }
                    BridgeOutput::Spawn { child, session } => {
                        if let Err(e) = self.spawn(child, session.as_ref().map(|s| s.as_str()), me)
                        {
                            warn!(child = child.0, error = %e, "cannot spawn the stdio MCP server");
                            exited.push((child, format!("spawn failed: {e}")));
                        }
                    }
                    BridgeOutput::ToChild { child, line } => {
                        if let Some(c) = self.children.get(&child) {
                            writes.push((c.stdin.clone(), line));
                        }
                    }
                    BridgeOutput::Kill { child } => {
                        if let Some(mut c) = self.children.remove(&child) {
                            if let Some(k) = c.kill.take() {
                                let _ = k.send(());
                            }
                        }
                    }
                    BridgeOutput::Log(e) => log_event(&e),
                }
            }
            let now = std::time::Instant::now();
            let any = !(overflow.is_empty() && closed.is_empty() && exited.is_empty());
            for x in overflow {
                warn!(exchange = x.0, "client does not keep up with its stream");
                self.exchanges.remove(&x);
                self.bridge.handle_stream_overflow(x, now);
            }
            for x in closed {
                self.exchanges.remove(&x);
                self.bridge.handle_exchange_closed(x, now);
            }
            for (c, how) in exited {
                self.children.remove(&c);
                self.bridge.handle_child_exit(c, &how, now);
            }
            if !any {
                return writes;
            }
        }
    }

    fn send(
        &mut self,
        x: ExchangeId,
        out: ExOut,
        overflow: &mut Vec<ExchangeId>,
        closed: &mut Vec<ExchangeId>,
    ) {
        let Some(tx) = self.exchanges.get(&x) else {
            return;
        };
        match tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => overflow.push(x),
            Err(mpsc::error::TrySendError::Closed(_)) => closed.push(x),
        }
    }

    fn spawn(
        &mut self,
        child: ChildId,
        session: Option<&str>,
        me: &DriverRef,
    ) -> std::io::Result<()> {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(mcp_router_core::stdio::shell_command(&self.command))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        #[cfg(target_os = "linux")]
        die_with_the_router(&mut cmd);
        let mut proc = cmd.spawn()?;
        let pid = proc.id().unwrap_or(0);
        let label = session.unwrap_or("shared").to_string();
        info!(session = %label, child = child.0, pid, "stdio child spawned");
        let watcher = if pid > 0 { spawn_watcher(pid) } else { None };
        let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(STDIN_BUFFER);
        let (kill_tx, kill_rx) = oneshot::channel();
        if let Some(stdin) = proc.stdin.take() {
            tokio::spawn(write_stdin(stdin, stdin_rx));
        }
        if let Some(out) = proc.stdout.take() {
            tokio::spawn(read_stdout(me.clone(), child, out));
        }
        if let Some(err) = proc.stderr.take() {
            tokio::spawn(read_stderr(label.clone(), pid, err));
        }
        let reapers = self.reapers.clone();
        reapers.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(supervise(
            me.clone(),
            child,
            proc,
            (pid, watcher),
            label,
            kill_rx,
            reapers,
        ));
        self.children.insert(
            child,
            ChildCtl {
                stdin: stdin_tx,
                kill: Some(kill_tx),
            },
        );
        Ok(())
    }

    fn random(&mut self) -> std::io::Result<[u8; 32]> {
        let mut r = [0u8; 32];
        self.urandom.read_exact(&mut r)?;
        Ok(r)
    }
}

/// The group watcher's script: wait for EOF on stdin (whose write end only the router
/// holds), then `SIGKILL` the whole process group.
const WATCHER: &str = "while read _; do :; done; kill -KILL 0";

/// Start the watcher of the process group `pgid` (the child just spawned): a `sh`
/// placed in that group, reading a pipe whose write end only the router holds (it is
/// close-on-exec, so no other child inherits it). When the router dies, however it
/// dies, the kernel closes that end; the watcher reads EOF and `SIGKILL`s the group,
/// so grandchildren that ignore EOF and are beyond the parent-death signal's reach (an
/// `npx` chain, a `sh -c` script) die too. A normal kill or exit of the child kills and
/// reaps the watcher with the rest of the group (its pipe end is dropped after that).
/// `None` (logged) if it cannot start: only the parent-death signal is left then.
fn spawn_watcher(pgid: u32) -> Option<std::process::ChildStdin> {
    use std::os::unix::process::CommandExt as _;
    let r = std::process::Command::new("sh")
        .arg("-c")
        .arg(WATCHER)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(pgid as i32)
        .spawn();
    match r {
        // the `Child` is dropped without a wait: `reap_group` reaps it
        Ok(mut w) => w.stdin.take(),
        Err(e) => {
            warn!(pgid, error = %e, "cannot start the process group watcher: a kill -9 of the router would leave this child's grandchildren behind");
            None
        }
    }
}

/// Ask the kernel to `SIGKILL` the child (the `sh -c` process, or what it execs) when
/// the router dies, so a `kill -9` of the router does not leave behind a server that
/// ignores stdin EOF (a clean shutdown kills and reaps every child itself).
///
/// `PR_SET_PDEATHSIG` "is cleared for the child of a fork" and kept across `execve`
/// (unless set-user-ID/set-group-ID or file capabilities), so it covers the direct child
/// and whatever `sh -c` execs into (a single simple command, or `exec ...`), not the
/// grandchildren: those see EOF on stdin and `EPIPE` on stdout, nothing more (see the
/// README). The signal follows the *thread* that forked: the spawn runs on a runtime
/// thread (a tokio worker or the `block_on` thread), which lives as long as the
/// runtime, never on a short-lived blocking-pool thread.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_the_router(cmd: &mut tokio::process::Command) {
    let router = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            // The standard race: the router may have died between fork and prctl, and
            // then no signal comes. The child was re-parented: give up (the spawn
            // fails and the child exits before it execs the command).
            if nix::unistd::getppid() != router {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn log_event(e: &BridgeEvent) {
    match e {
        BridgeEvent::SessionStarted {
            session,
            child,
            legacy,
        } => info!(session = %session, child = child.0, legacy, "stdio session started"),
        BridgeEvent::SessionEnded { session, reason } => {
            let detail = match reason {
                mcp_router_core::stdio::EndReason::ChildExited(how) => how.as_str(),
                _ => "",
            };
            info!(session = %session, cause = reason.label(), detail, "stdio session ended")
        }
        BridgeEvent::ChildGarbage { child, sample } => {
            warn!(child = child.0, sample = %sample, "stdio child wrote invalid JSON-RPC to stdout")
        }
        BridgeEvent::Dropped { child, what } => debug!(child = child.0, what, "message dropped"),
        BridgeEvent::Rejected { status, reason } => info!(status, reason, "request rejected"),
    }
}

/// Write the writes collected by a pump: waiting for room (an HTTP request's own lines).
async fn write_waiting(writes: Writes) {
    for (tx, line) in writes {
        let _ = tx.send(line).await;
    }
}

/// Write without waiting (timer and child-reader contexts must never block on a child
/// that does not read its stdin); a full stdin drops the line, logged.
fn write_now(writes: Writes) {
    for (tx, line) in writes {
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(line) {
            warn!("child stdin full: a message to it was dropped");
        }
    }
}

async fn write_stdin(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(line) = rx.recv().await {
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

/// Read one `\n`-terminated line of at most `max` bytes into `buf` (newline removed).
/// `Ok(None)` at EOF with nothing read; `Err(InvalidData)` for a longer line.
async fn read_line_limited<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<()>> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok((!buf.is_empty()).then_some(()));
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > max {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take + usize::from(done));
        if done {
            return Ok(Some(()));
        }
    }
}

async fn read_stdout(d: DriverRef, child: ChildId, out: tokio::process::ChildStdout) {
    let mut r = BufReader::with_capacity(64 * 1024, out);
    let mut line = Vec::new();
    loop {
        match read_line_limited(&mut r, &mut line, MAX_CHILD_LINE).await {
            Ok(Some(())) => {
                let writes = {
                    let mut g = lock(&d);
                    g.bridge
                        .handle_child_line(child, &line, std::time::Instant::now());
                    g.pump(&d)
                };
                write_now(writes);
            }
            Ok(None) => return,
            Err(e) => {
                let msg = format!("<unreadable or over-long stdout line: {e}>");
                let writes = {
                    let mut g = lock(&d);
                    g.bridge
                        .handle_child_line(child, msg.as_bytes(), std::time::Instant::now());
                    g.pump(&d)
                };
                write_now(writes);
                return;
            }
        }
    }
}

async fn read_stderr(label: String, pid: u32, err: tokio::process::ChildStderr) {
    let mut r = BufReader::new(err);
    let mut line = Vec::new();
    loop {
        match read_line_limited(&mut r, &mut line, 64 * 1024).await {
            Ok(Some(())) => {
                let n = line.len().min(2048);
                let text = String::from_utf8_lossy(&line[..n]);
                info!(session = %label, pid, "child stderr: {}", text.trim_end());
            }
            Ok(None) => return,
            // an over-long stderr line: skip it, keep reading
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let _ = r.read_until(b'\n', &mut Vec::new()).await;
            }
            Err(_) => return,
        }
    }
}

/// Own one child: wait for its exit or for the order to kill it; then kill what is left
/// of its process group and reap everything, and tell the bridge.
async fn supervise(
    d: DriverRef,
    child: ChildId,
    mut proc: tokio::process::Child,
    (pid, watcher): (u32, Option<std::process::ChildStdin>),
    label: String,
    kill: oneshot::Receiver<()>,
    reapers: Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
) {
    let pgid = nix::unistd::Pid::from_raw(pid as i32);
    let status = tokio::select! {
        s = proc.wait() => s,
        _ = kill => {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
            match tokio::time::timeout(KILL_GRACE, proc.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                    proc.wait().await
                }
            }
        }
    };
    let how = match &status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    };
    reap_group(pgid).await;
    // (the watcher was in the group: killed and reaped with it)
    drop(watcher);
    info!(session = %label, child = child.0, pid, status = %how, "stdio child exited and reaped");
    let writes = {
        let mut g = lock(&d);
        g.children.remove(&child);
        g.bridge
            .handle_child_exit(child, &how, std::time::Instant::now());
        g.pump(&d)
    };
    write_now(writes);
    if reapers.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
        reapers.1.notify_waiters();
    }
}

/// The leader is reaped: SIGKILL whatever is left in its process group, and reap the
/// members that were re-parented to the router (it is a child subreaper). Bounded.
async fn reap_group(pgid: nix::unistd::Pid) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let group = nix::unistd::Pid::from_raw(-pgid.as_raw());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).is_ok();
        let mut reaped_any = false;
        loop {
            let r = waitpid(group, Some(WaitPidFlag::WNOHANG));
            debug!(pgid = pgid.as_raw(), alive, result = ?r, "reaping the process group");
            match r {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => reaped_any = true,
                Err(_) => break, // ECHILD: none of ours left in the group
            }
        }
        if (!alive && !reaped_any) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Build the bridge configuration from the binary's settings.
pub fn bridge_config(settings: &Settings, stdio: &StdioSettings) -> BridgeConfig {
    BridgeConfig {
        mode: stdio.mode,
        max_children: stdio.max_children,
        idle_ttl: settings.core.session_ttl,
        stream_grace: stdio.stream_grace,
        unattached_timeout: stdio.unattached_timeout,
        request_timeout: settings.core.timeouts.response,
        max_session_id_len: settings.core.max_session_id_len,
        client_max_sessions: settings.core.limits.client_max_sessions,
        client_session_rate: settings.core.limits.client_session_rate,
        client_session_burst: settings.core.limits.client_session_burst,
        ..BridgeConfig::default()
    }
}

/// Serve the stdio bridge on `listener` until `shutdown` turns true; then end every
/// session, kill and reap every child, and return.
pub async fn serve(
    listener: TcpListener,
    settings: &Settings,
    stdio: &StdioSettings,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(error = %e, "cannot become a child subreaper: orphaned grandchildren of a stdio server would be reaped by init");
    }
    let reapers = Arc::new((
        std::sync::atomic::AtomicUsize::new(0),
        tokio::sync::Notify::new(),
    ));
    let d: DriverRef = Arc::new(Mutex::new(Driver {
        bridge: Bridge::new(bridge_config(settings, stdio)),
        exchanges: HashMap::new(),
        children: HashMap::new(),
        command: stdio.command.clone(),
        urandom: std::fs::File::open("/dev/urandom")?,
        reapers: reapers.clone(),
    }));
    let limits = Arc::new(Limits {
        http: settings.core.http.clone(),
        identity: settings.core.client_identity.clone(),
        trusted: settings.core.trusted_proxies.clone(),
        max_body: settings.core.max_inspect_body,
        header_timeout: settings.core.timeouts.header,
        idle_timeout: settings.core.timeouts.client_idle,
    });
    tokio::spawn(timer(d.clone(), shutdown.clone()));
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(connection(d.clone(), sock, peer.ip(), limits.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let writes = {
        let mut g = lock(&d);
        info!(
            sessions = g.bridge.session_count(),
            children = g.bridge.child_count(),
            "shutting down: ending sessions, killing children"
        );
        g.bridge.shutdown(std::time::Instant::now());
        g.pump(&d)
    };
    write_now(writes);
    // wait for every child to be reaped (bounded: each reaper is)
    let wait = async {
        loop {
            let n = reapers.1.notified();
            if reapers.0.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            n.await;
        }
    };
    if tokio::time::timeout(KILL_GRACE + Duration::from_secs(8), wait)
        .await
        .is_err()
    {
        warn!("children still being reaped at exit");
    }
    // let the connection tasks flush the streams' last events
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

async fn timer(d: DriverRef, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = lock(&d).bridge.poll_timeout();
        let cap = std::time::Instant::now() + Duration::from_millis(500);
        let at = next.map_or(cap, |t| t.min(cap));
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = shutdown.changed() => return,
        }
        let writes = {
            let mut g = lock(&d);
            g.bridge.handle_timeout(std::time::Instant::now());
            g.pump(&d)
        };
        write_now(writes);
    }
}

struct Limits {
    /// Who a client is, for the per-client quotas (`--client-identity`).
    identity: mcp_router_core::ClientIdentity,
    trusted: Vec<mcp_router_core::IpNet>,
    http: HttpLimits,
    max_body: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
}

/// Answer a request the core never saw (bad head, oversized body) and close.
async fn refuse(sock: &mut TcpStream, status: u16, code: i32, reason: &str) {
    let mut body = BytesMut::new();
    let code = match code {
        -32700 => mcp_router_core::mcp::ErrorCode::Parse,
        -32600 => mcp_router_core::mcp::ErrorCode::InvalidRequest,
        _ => mcp_router_core::mcp::ErrorCode::Server,
    };
    mcp_router_core::mcp::write_error_body(&mut body, None, code, reason);
    let mut out = BytesMut::new();
    write_simple_response(
        &mut out,
        status,
        "application/json",
        &[],
        &body,
        Version::Http11,
        false,
    );
    info!(status, reason, "request rejected");
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sock.write_all(&out)).await;
    let _ = sock.shutdown().await;
}

enum Got {
    Head,
    Eof,
    Refused,
}

/// Read until a request head parses into `head`.
async fn read_head(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    head: &mut RequestHead,
    lim: &Limits,
) -> Got {
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match parse_request(buf, &lim.http, head) {
                Ok(true) => return Got::Head,
                Ok(false) => {}
                Err(e) => {
                    refuse(sock, e.status(), -32600, e.reason()).await;
                    return Got::Refused;
                }
            }
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + lim.header_timeout);
        }
        let wait = match deadline {
            Some(d) => d,
            None => tokio::time::Instant::now() + lim.idle_timeout,
        };
        buf.reserve(4096);
        match tokio::time::timeout_at(wait, sock.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Got::Eof,
            Ok(Ok(_)) => {}
            Err(_) if deadline.is_some() => {
                refuse(sock, 408, -32600, "request head timeout").await;
                return Got::Refused;
            }
            Err(_) => return Got::Eof,
        }
    }
}

/// Read the body of `head` (bounded by `lim.max_body`); `None` after answering an error.
async fn read_body(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    head: &RequestHead,
    lim: &Limits,
) -> Option<Vec<u8>> {
    if let BodyKind::Length(n) = head.body {
        if n > lim.max_body as u64 {
            refuse(sock, 413, -32600, "request body too large").await;
            return None;
        }
    }
    if head.expect_continue && head.body != BodyKind::Empty {
        let _ = sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    let mut dec = BodyDecoder::new(head.body, 4096);
    let mut body = Vec::new();
    let deadline = tokio::time::Instant::now() + lim.header_timeout + Duration::from_secs(50);
    loop {
        let mut too_big = false;
        let used = match dec.decode(buf, &mut |d| {
            if body.len() + d.len() > lim.max_body {
                too_big = true;
            } else {
                body.extend_from_slice(d);
            }
        }) {
            Ok(n) => n,
            Err(e) => {
                refuse(sock, 400, -32600, e.reason()).await;
                return None;
            }
        };
        let _ = buf.split_to(used);
        if too_big {
            refuse(sock, 413, -32600, "request body too large").await;
            return None;
        }
        if dec.is_done() {
            return Some(body);
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, sock.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return None,
            Err(_) => {
                refuse(sock, 408, -32600, "request body timeout").await;
                return None;
            }
        }
    }
}

async fn write_out(sock: &mut TcpStream, b: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, sock.write_all(b)).await,
        Ok(Ok(()))
    )
}

/// One client connection: requests in, the bridge's answers out.
async fn connection(d: DriverRef, mut sock: TcpStream, peer: std::net::IpAddr, lim: Arc<Limits>) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut head = RequestHead::default();
    loop {
        match read_head(&mut sock, &mut buf, &mut head, &lim).await {
            Got::Head => {}
            Got::Eof | Got::Refused => return,
        }
        let Some(body) = read_body(&mut sock, &mut buf, &head, &lim).await else {
            return;
        };
        let version = head.version;
        let keep_alive = head.keep_alive;
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        let step = {
            let mut g = lock(&d);
            match g.random() {
                Ok(random) => {
                    let req = Request {
                        method: head.method,
                        path: head.path(),
                        query: head.query(),
                        session_id: head.header("mcp-session-id"),
                        accept: head.header("accept"),
                        body: &body,
                        client: mcp_router_core::ClientId::of(
                            &lim.identity,
                            &lim.trusted,
                            Some(peer),
                            &head,
                        ),
                    };
                    let x = g
                        .bridge
                        .handle_request(&req, &random, std::time::Instant::now());
                    g.exchanges.insert(x, tx);
                    Ok((x, g.pump(&d)))
                }
                Err(e) => Err(e),
            }
        };
        let (x, writes) = match step {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read /dev/urandom");
                refuse(&mut sock, 503, -32000, "no randomness for a session id").await;
                return;
            }
        };
        write_waiting(writes).await;
        let head_method = head.method;
        match serve_exchange(
            &d,
            &mut sock,
            &mut buf,
            &mut rx,
            x,
            version,
            keep_alive,
            head_method,
        )
        .await
        {
            Next::KeepAlive => continue,
            Next::Close => {
                let _ = sock.shutdown().await;
                return;
            }
        }
    }
}

enum Next {
    KeepAlive,
    Close,
}

/// Wait for the exchange's outputs and write them; notices the client going away.
#[allow(clippy::too_many_arguments)]
async fn serve_exchange(
    d: &DriverRef,
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    rx: &mut mpsc::Receiver<ExOut>,
    x: ExchangeId,
    version: Version,
    keep_alive: bool,
    method: Method,
) -> Next {
    let chunked = version == Version::Http11;
    let mut streaming = false;
    let mut scratch = [0u8; 1024];
    let gone = |d: &DriverRef| {
        let writes = {
            let mut g = lock(d);
            g.exchanges.remove(&x);
            g.bridge
                .handle_exchange_closed(x, std::time::Instant::now());
            g.pump(d)
        };
        write_now(writes);
        Next::Close
    };
    loop {
        let out = tokio::select! {
            o = rx.recv() => o,
            r = sock.read(&mut scratch) => match r {
                Ok(0) | Err(_) => return gone(d),
                Ok(n) => {
                    // a pipelined next request: keep it (bounded) for later
                    if buf.len() + n > 64 * 1024 {
                        return gone(d);
                    }
                    buf.extend_from_slice(&scratch[..n]);
                    continue;
                }
            },
        };
        let ok = match out {
            None => {
                // the bridge dropped this exchange (slow client, shutdown)
                return Next::Close;
            }
            Some(ExOut::Respond {
                status,
                headers,
                body,
            }) => {
                let extra: Vec<(&str, &[u8])> =
                    headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
                let mut out = BytesMut::new();
                let body: &[u8] = if method == Method::Head { &[] } else { &body };
                write_simple_response(
                    &mut out,
                    status,
                    "application/json",
                    &extra,
                    body,
                    version,
                    keep_alive,
                );
                if !write_out(sock, &out).await {
                    return gone(d);
                }
                return if keep_alive {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
            Some(ExOut::Start(headers)) => {
                streaming = true;
                let mut out = BytesMut::new();
                out.extend_from_slice(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n",
                );
                for (k, v) in &headers {
                    out.extend_from_slice(k.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(v.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                if chunked {
                    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                }
                if !chunked || !keep_alive {
                    out.extend_from_slice(b"Connection: close\r\n");
                }
                out.extend_from_slice(b"\r\n");
                write_out(sock, &out).await
            }
            Some(ExOut::Event(ev)) if streaming => {
                if chunked {
                    let mut out = BytesMut::with_capacity(ev.len() + 16);
                    out.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
                    out.extend_from_slice(&ev);
                    out.extend_from_slice(b"\r\n");
                    write_out(sock, &out).await
                } else {
                    write_out(sock, &ev).await
                }
            }
            Some(ExOut::Event(_)) => true,
            Some(ExOut::End) => {
                if chunked && streaming {
                    if !write_out(sock, b"0\r\n\r\n").await {
                        return Next::Close;
                    }
                    return if keep_alive {
                        Next::KeepAlive
                    } else {
                        Next::Close
                    };
                }
                return Next::Close;
            }
        };
        if !ok {
            return gone(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use mcp_router_core::stdio::ChildMode;

    fn cli(args: &[&str]) -> crate::Cli {
        let mut v = vec!["mcp-router"];
        v.extend_from_slice(args);
        crate::Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn stdio_flags_replace_backends() {
        let s = cli(&[
            "--stdio",
            "npx -y server",
            "--stdio-mode",
            "shared",
            "--stdio-max-children",
            "3",
            "--stdio-stream-grace",
            "250ms",
            "--session-ttl",
            "5m",
        ])
        .settings()
        .unwrap();
        let st = s.stdio.clone().expect("stdio settings");
        assert_eq!(st.command, "npx -y server");
        assert_eq!(st.mode, ChildMode::Shared);
        assert_eq!(st.max_children, 3);
        assert_eq!(st.stream_grace, Duration::from_millis(250));
        let b = bridge_config(&s, &st);
        assert_eq!(b.idle_ttl, Duration::from_secs(300));
        assert_eq!(b.max_children, 3);
        // defaults
        let st = cli(&["--stdio", "x"]).settings().unwrap().stdio.unwrap();
        assert_eq!(st.mode, ChildMode::PerSession);
        assert_eq!(
            (st.max_children, st.stream_grace, st.unattached_timeout),
            (64, Duration::from_secs(30), Duration::from_secs(60))
        );
        let s = cli(&["--stdio", "x", "--stdio-unattached-timeout", "2s"])
            .settings()
            .unwrap();
        let b = bridge_config(&s, s.stdio.as_ref().unwrap());
        assert_eq!(b.unattached_timeout, Duration::from_secs(2));
    }

    #[test]
    fn stdio_errors_name_the_field() {
        let e = cli(&["--stdio", "x", "--stdio-mode", "pooled"])
            .settings()
            .unwrap_err();
        assert!(e.0.starts_with("stdio_mode"), "{e}");
        let e = cli(&["--stdio", "x", "--stdio-max-children", "0"])
            .settings()
            .unwrap_err();
        assert!(e.0.starts_with("stdio_max_children"), "{e}");
        let e = cli(&["--stdio", "  "]).settings().unwrap_err();
        assert!(e.0.starts_with("stdio"), "{e}");
        // without --stdio, backends are still required
        assert!(cli(&[]).settings().is_err());
    }

    #[test]
    fn stdio_from_the_toml_file() {
        let dir = std::env::temp_dir().join(format!("mcp-router-stdio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            "stdio = \"python3 server.py\"\nstdio_mode = \"shared\"\nstdio_max_children = 7\nstdio_stream_grace = \"2s\"\n",
        )
        .unwrap();
        let s = cli(&["--config", p.to_str().unwrap(), "--stdio-max-children", "9"])
            .settings()
            .unwrap();
        let st = s.stdio.unwrap();
        assert_eq!(st.command, "python3 server.py");
        assert_eq!(st.mode, ChildMode::Shared);
        assert_eq!(st.max_children, 9, "the flag wins over the file");
        assert_eq!(st.stream_grace, Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn line_reader_bounds_lines() {
        let data: &[u8] = b"one\ntwo\nlong-line-here\nlast";
        let mut r = tokio::io::BufReader::new(data);
        let mut buf = Vec::new();
        assert!(read_line_limited(&mut r, &mut buf, 8)
            .await
            .unwrap()
            .is_some());
        assert_eq!(buf, b"one");
        assert!(read_line_limited(&mut r, &mut buf, 8)
            .await
            .unwrap()
            .is_some());
        assert_eq!(buf, b"two");
        let e = read_line_limited(&mut r, &mut buf, 8).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let mut r = tokio::io::BufReader::new(&b"last"[..]);
        assert!(read_line_limited(&mut r, &mut buf, 8)
            .await
            .unwrap()
            .is_some());
        assert_eq!(buf, b"last");
        assert!(read_line_limited(&mut r, &mut buf, 8)
            .await
            .unwrap()
            .is_none());
    }
}
