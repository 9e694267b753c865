//! The stdio bridge on any runtime: serves a stdio MCP server (`--stdio "<command>"`)
//! over Streamable HTTP (`/mcp`) and legacy HTTP+SSE (`/sse`, `/message`).
//!
//! Every decision is the core's: [`Bridge`] runs the sessions, [`StdioConn`] each
//! client connection's HTTP (statuses, limits, timeouts, framing). This module spawns
//! and kills the children through [`Runtime::spawn_child`] and moves bytes:
//!
//! - The command runs as `sh -c "<command>"` (so quoting, environment variables and
//!   pipes work as in a shell; `sh -c "exec <command>"` for one simple command), in a
//!   **new process group**, with stdin/stdout/stderr piped. Its stderr is logged line
//!   by line with the session id.
//! - A kill is `SIGTERM` to the whole group, `SIGKILL` to the group after
//!   [`KILL_GRACE`], then the leader is reaped and every remaining member of the group
//!   too: the router makes itself a child subreaper (Linux), so group members that
//!   outlive their parent are re-parented to it and reaped here. A child that exits by
//!   itself gets the same treatment for what it leaves behind. No orphan, no zombie.
//! - If the router itself dies without cleaning up (`kill -9`, a crash): the direct
//!   child has `PR_SET_PDEATHSIG(SIGKILL)` (and `sh` execs a simple command, so the
//!   server is that child: [`mcp_router_core::stdio::shell_command`]), and a watcher in
//!   each child's process group SIGKILLs the whole group when the router's end of its
//!   pipe closes ([`spawn_watcher`]). Only a process that left the group (`setsid`,
//!   `setpgid`) survives.
//! - Backpressure: each exchange has a queue of at most [`STREAM_BUFFER`] outputs;
//!   when a stream's queue is full (its client does not read), the core ends that
//!   session ([`Bridge::handle_stream_overflow`]) and the connection is closed. Child
//!   stdout is never stalled by one client. Each child's stdin has a queue of
//!   [`STDIN_BUFFER`] lines; an HTTP request waits for room (so a client that outruns
//!   its child waits, and only that client).
//! - One thread, no lock: the whole bridge (every connection and every child) is one
//!   future of tasks polled together, sharing the [`Bridge`] through a `RefCell` that
//!   is never held across an `.await`. Sessions of different children never wait on
//!   each other beyond the microseconds of a core call.

use crate::config::StdioSettings;
use crate::drive::Clock;
use crate::rt::{Child, Io, PipeRead, PipeWrite, Runtime, Shutdown, Timer};
use crate::Settings;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use mcp_router_core::stdio::http::{ConnEvent, ConnLimits, ExchangeOut, StdioConn};
use mcp_router_core::stdio::{
    Bridge, BridgeConfig, BridgeEvent, BridgeOutput, ChildId, EndReason, ExchangeId,
};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Read as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Outputs queued per exchange; a stream whose queue is full ends its session.
pub const STREAM_BUFFER: usize = 256;
/// Lines queued per child's stdin.
pub const STDIN_BUFFER: usize = 64;
/// Longest line accepted from a child's stdout (a longer one is a protocol error).
pub const MAX_CHILD_LINE: usize = 8 * 1024 * 1024;
/// Longest stderr line logged whole (the rest of a longer line is skipped).
const MAX_STDERR_LINE: usize = 64 * 1024;
/// Time a child's process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// The bridge's timer is re-read at least this often.
const TIMER_CAP: Duration = Duration::from_millis(500);

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

/// The bounds of one client connection, from the binary's settings.
pub fn conn_limits(settings: &Settings) -> ConnLimits {
    let t = &settings.core.timeouts;
    ConnLimits {
        http: settings.core.http.clone(),
        max_body: settings.core.max_inspect_body,
        header: t.header,
        body_idle: t.body_idle,
        idle: t.client_idle,
        send: t.client_send,
        identity: settings.core.client_identity.clone(),
        trusted: settings.core.trusted_proxies.clone(),
    }
}

/// The command for one child: `sh -c "<command>"` in a new process group, stdio
/// piped, dying with the router (`PR_SET_PDEATHSIG`, Linux).
pub fn child_command(command: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(mcp_router_core::stdio::shell_command(command))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    #[cfg(target_os = "linux")]
    die_with_the_router(&mut cmd);
    cmd
}

/// Ask the kernel to `SIGKILL` the child (the `sh -c` process, or what it execs) when
/// the router dies, so a `kill -9` of the router does not leave behind a server that
/// ignores stdin EOF (a clean shutdown kills and reaps every child itself).
///
/// `PR_SET_PDEATHSIG` "is cleared for the child of a fork" and kept across `execve`
/// (unless set-user-ID/set-group-ID or file capabilities), so it covers the direct child
/// and whatever `sh -c` execs into, not the grandchildren: those see EOF on stdin and
/// `EPIPE` on stdout, nothing more (see the README). The signal follows the *thread*
/// that forked: the bridge runs on the thread that serves it for the life of the
/// process, never on a short-lived pool thread.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_the_router(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    let router = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)?;
            // The standard race: the router may have died between fork and prctl, and
            // then no signal comes. The child was re-parented: give up (the spawn
            // fails and the child exits before it execs the command).
            if nix::unistd::getppid() != router {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
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
pub fn spawn_watcher(pgid: u32) -> Option<std::process::ChildStdin> {
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

/// The leader is reaped: SIGKILL whatever is left in its process group, and reap the
/// members that were re-parented to the router (it is a child subreaper). Bounded.
async fn reap_group<R: Runtime>(pgid: u32) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let pg = nix::unistd::Pid::from_raw(pgid as i32);
    let group = nix::unistd::Pid::from_raw(-(pgid as i32));
    let deadline = R::now() + Duration::from_secs(5);
    loop {
        let alive = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL).is_ok();
        let mut reaped_any = false;
        loop {
            let r = waitpid(group, Some(WaitPidFlag::WNOHANG));
            debug!(pgid, alive, result = ?r, "reaping the process group");
            match r {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => reaped_any = true,
                Err(_) => break, // ECHILD: none of ours left in the group
            }
        }
        if (!alive && !reaped_any) || R::now() >= deadline {
            return;
        }
        R::sleep(Duration::from_millis(20)).await;
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
                EndReason::ChildExited(how) => how.as_str(),
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

/// Wake-up slot of a task (set while it waits).
#[derive(Default)]
struct Wake(Option<Waker>);

impl Wake {
    fn wake(&mut self) {
        if let Some(w) = self.0.take() {
            w.wake();
        }
    }
    fn register(&mut self, cx: &Context<'_>) {
        self.0 = Some(cx.waker().clone());
    }
}

/// The outputs waiting for one exchange's connection.
#[derive(Default)]
struct ExQueue {
    items: VecDeque<ExchangeOut>,
    /// The bridge dropped the exchange without a last output (slow client, shutdown).
    dropped: bool,
    wake: Wake,
}

/// One child's stdin lines and its kill order.
#[derive(Default)]
struct ChildCtl {
    stdin: VecDeque<Bytes>,
    kill: bool,
    /// The child task (lines to write, a kill).
    wake: Wake,
    /// Connection tasks waiting for room in `stdin`.
    room: Vec<Waker>,
}

type Queue = Rc<RefCell<ExQueue>>;
type Ctl = Rc<RefCell<ChildCtl>>;
type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Lines for children's stdin, collected by a pump and written after it.
type Writes = Vec<(Ctl, Bytes)>;

struct Driver<R: Runtime> {
    bridge: Bridge,
    exchanges: HashMap<ExchangeId, Queue>,
    children: HashMap<ChildId, Ctl>,
    command: String,
    urandom: std::fs::File,
    /// Tasks started from inside other tasks (children), for the serving loop to poll.
    spawned: Vec<Task>,
    /// The serving loop (new tasks).
    main: Wake,
    /// The timer task, and the deadline it sleeps until.
    timer: Wake,
    timer_at: Option<Instant>,
    /// Children whose task has not finished (reaping included).
    live_children: Rc<Cell<usize>>,
    me: std::rc::Weak<RefCell<Driver<R>>>,
}

type DriverRef<R> = Rc<RefCell<Driver<R>>>;

impl<R: Runtime> Driver<R> {
    /// Drain the bridge's outputs and carry them out; returns the stdin writes.
    fn pump(&mut self) -> Writes {
        let mut writes = Vec::new();
        loop {
            let mut again: Vec<(ExchangeId, bool)> = Vec::new();
            let mut failed = Vec::new();
            while let Some(o) = self.bridge.poll_output() {
                let o = match o.into_exchange() {
                    Ok((x, out)) => {
                        let last = matches!(out, ExchangeOut::Respond { .. } | ExchangeOut::End);
                        let Some(q) = (if last {
                            self.exchanges.remove(&x)
                        } else {
                            self.exchanges.get(&x).cloned()
                        }) else {
                            continue;
                        };
                        let mut q = q.borrow_mut();
                        if !last && q.items.len() >= STREAM_BUFFER {
                            again.push((x, true));
                            continue;
                        }
                        q.items.push_back(out);
                        q.wake.wake();
                        continue;
                    }
                    Err(o) => o,
                };
                match o {
                    BridgeOutput::Spawn { child, session } => {
                        if let Err(e) = self.spawn(child, session.as_ref().map(|s| s.as_str())) {
                            warn!(child = child.0, error = %e, "cannot spawn the stdio MCP server");
                            failed.push((child, format!("spawn failed: {e}")));
                        }
                    }
                    BridgeOutput::ToChild { child, line } => {
                        if let Some(c) = self.children.get(&child) {
                            writes.push((c.clone(), line));
                        }
                    }
                    BridgeOutput::Kill { child } => {
                        if let Some(c) = self.children.remove(&child) {
                            let mut c = c.borrow_mut();
                            c.kill = true;
                            c.wake.wake();
                        }
                    }
                    BridgeOutput::Log(e) => log_event(&e),
                    _ => {}
                }
            }
            let now = R::now();
            let any = !(again.is_empty() && failed.is_empty());
            for (x, _) in again {
                warn!(exchange = x.0, "client does not keep up with its stream");
                if let Some(q) = self.exchanges.remove(&x) {
                    let mut q = q.borrow_mut();
                    q.dropped = true;
                    q.wake.wake();
                }
                self.bridge.handle_stream_overflow(x, now);
            }
            for (c, how) in failed {
                self.children.remove(&c);
                self.bridge.handle_child_exit(c, &how, now);
            }
            if !any {
                break;
            }
        }
        // a deadline earlier than the one the timer sleeps until wakes it
        if let Some(t) = self.bridge.poll_timeout() {
            if self.timer_at.is_none_or(|at| t < at) {
                self.timer.wake();
            }
        }
        writes
    }

    /// The exchange's client is gone.
    fn gone(&mut self, x: ExchangeId) -> Writes {
        self.exchanges.remove(&x);
        self.bridge.handle_exchange_closed(x, R::now());
        self.pump()
    }

    fn spawn(&mut self, child: ChildId, session: Option<&str>) -> io::Result<()> {
        let proc = R::spawn_child(child_command(&self.command))?;
        let label = session.unwrap_or("shared").to_string();
        info!(session = %label, child = child.0, pid = proc.pid, "stdio child spawned");
        let watcher = if proc.pid > 0 {
            spawn_watcher(proc.pid)
        } else {
            None
        };
        let ctl: Ctl = Rc::default();
        self.children.insert(child, ctl.clone());
        self.live_children.set(self.live_children.get() + 1);
        if let Some(me) = self.me.upgrade() {
            self.spawned
                .push(Box::pin(child_task(me, child, proc, watcher, label, ctl)));
            self.main.wake();
        }
        Ok(())
    }

    fn random(&mut self) -> io::Result<[u8; 32]> {
        let mut r = [0u8; 32];
        self.urandom.read_exact(&mut r)?;
        Ok(r)
    }
}

/// Write lines from a context that must never wait (the timer, a child's output): a
/// full stdin drops the line, logged.
fn write_now(writes: Writes) {
    for (ctl, line) in writes {
        let mut c = ctl.borrow_mut();
        if c.stdin.len() >= STDIN_BUFFER {
            warn!("child stdin full: a message to it was dropped");
            continue;
        }
        c.stdin.push_back(line);
        c.wake.wake();
    }
}

/// Write an HTTP request's own lines, waiting for room: a client that outruns its
/// child waits, and only that client.
async fn write_waiting(writes: Writes) {
    for (ctl, line) in writes {
        let mut line = Some(line);
        poll_fn(|cx| {
            let mut c = ctl.borrow_mut();
            if c.kill {
                return Poll::Ready(());
            }
            if c.stdin.len() < STDIN_BUFFER {
                if let Some(l) = line.take() {
                    c.stdin.push_back(l);
                }
                c.wake.wake();
                return Poll::Ready(());
            }
            // once per task, however often it is polled while it waits
            if !c.room.iter().any(|w| w.will_wake(cx.waker())) {
                c.room.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

/// Serve the stdio bridge: accept connections with `accept` until `shutdown`, then end
/// every session, kill and reap every child, and return. Runs on the calling thread.
pub async fn serve_stdio<R, A, F>(
    mut accept: A,
    settings: &Settings,
    stdio: &StdioSettings,
    shutdown: Arc<Shutdown>,
) -> io::Result<()>
where
    R: Runtime,
    A: FnMut() -> F,
    F: Future<Output = io::Result<(R::Stream, SocketAddr)>>,
{
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(error = %e, "cannot become a child subreaper: orphaned grandchildren of a stdio server would be reaped by init");
    }
    let live_children = Rc::new(Cell::new(0));
    let urandom = std::fs::File::open("/dev/urandom")?;
    let d: DriverRef<R> = Rc::new_cyclic(|me| {
        RefCell::new(Driver {
            bridge: Bridge::new(bridge_config(settings, stdio)),
            exchanges: HashMap::new(),
            children: HashMap::new(),
            command: stdio.command.clone(),
            urandom,
            spawned: Vec::new(),
            main: Wake::default(),
            timer: Wake::default(),
            timer_at: None,
            live_children: live_children.clone(),
            me: me.clone(),
        })
    });
    let lim = Arc::new(conn_limits(settings));
    let stop = Rc::new(Cell::new(false));
    let mut tasks: FuturesUnordered<Task> = FuturesUnordered::new();
    tasks.push(Box::pin(timer_task(d.clone(), stop.clone())));
    let mut accepting: Option<Pin<Box<F>>> = Some(Box::pin(accept()));
    let mut stopping = shutdown.listen();
    let mut backoff = R::timer();
    let mut backing_off = false;
    // after the last child is reaped, the connections get this long to send the
    // streams' last events
    let mut flush = R::timer();
    let mut flushing = false;
    // Serve until shutdown; then until every child is reaped (each reaping is bounded).
    poll_fn(|cx| {
        if !stop.get() && stopping.poll(cx).is_ready() {
            stop.set(true);
            accepting = None;
            let mut g = d.borrow_mut();
            info!(
                sessions = g.bridge.session_count(),
                children = g.bridge.child_count(),
                "shutting down: ending sessions, killing children"
            );
            g.bridge.shutdown(R::now());
            let w = g.pump();
            drop(g);
            write_now(w);
        }
        loop {
            if backing_off {
                if backoff.poll_fired(cx).is_pending() {
                    break;
                }
                backing_off = false;
            }
            let Some(a) = accepting.as_mut() else { break };
            match a.as_mut().poll(cx) {
                Poll::Ready(Ok((sock, peer))) => {
                    tasks.push(Box::pin(connection::<R>(
                        d.clone(),
                        sock,
                        peer,
                        lim.clone(),
                    )));
                    accepting = Some(Box::pin(accept()));
                }
                Poll::Ready(Err(e)) => {
                    warn!(error = %e, "accept failed");
                    accepting = Some(Box::pin(accept()));
                    backoff.fire_at(R::now() + Duration::from_millis(50));
                    backing_off = true;
                }
                Poll::Pending => break,
            }
        }
        loop {
            {
                let mut g = d.borrow_mut();
                for t in g.spawned.drain(..) {
                    tasks.push(t);
                }
                g.main.register(cx);
            }
            match tasks.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if stop.get() && live_children.get() == 0 {
            if !flushing {
                flushing = true;
                flush.fire_at(R::now() + Duration::from_millis(100));
            }
            if flush.poll_fired(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await;
    Ok(())
}

/// Sleep until the bridge's next deadline (re-read at least every [`TIMER_CAP`], and
/// when a call brings it forward), then let time pass in the bridge.
async fn timer_task<R: Runtime>(d: DriverRef<R>, stop: Rc<Cell<bool>>) {
    let mut clock = Clock::new(R::timer());
    loop {
        let at = {
            let mut g = d.borrow_mut();
            let cap = R::now() + TIMER_CAP;
            let at = g.bridge.poll_timeout().map_or(cap, |t| t.min(cap));
            g.timer_at = Some(at);
            at
        };
        clock.arm(Some(at));
        poll_fn(|cx| {
            d.borrow_mut().timer.register(cx);
            if stop.get() {
                return Poll::Ready(());
            }
            if clock.poll(cx).is_ready() {
                return Poll::Ready(());
            }
            // woken for an earlier deadline: start over
            match d.borrow().bridge.poll_timeout() {
                Some(t) if t < at => Poll::Ready(()),
                _ => Poll::Pending,
            }
        })
        .await;
        if stop.get() {
            return;
        }
        let w = {
            let mut g = d.borrow_mut();
            g.bridge.handle_timeout(R::now());
            g.pump()
        };
        write_now(w);
    }
}

/// One client connection: requests in, the bridge's answers out.
async fn connection<R: Runtime>(
    d: DriverRef<R>,
    mut sock: R::Stream,
    peer: SocketAddr,
    lim: Arc<ConnLimits>,
) {
    let mut conn = StdioConn::new(lim, Some(peer.ip()), R::now());
    let mut clock = Clock::new(R::timer());
    let mut queue: Option<(ExchangeId, Queue)> = None;
    loop {
        while let Some(ev) = conn.poll_event() {
            match ev {
                ConnEvent::Request => {
                    let step = {
                        let mut g = d.borrow_mut();
                        match g.random() {
                            Ok(random) => {
                                let x = g.bridge.handle_request(&conn.request(), &random, R::now());
                                let q: Queue = Rc::default();
                                g.exchanges.insert(x, q.clone());
                                conn.started(x);
                                queue = Some((x, q));
                                Some(g.pump())
                            }
                            Err(e) => {
                                warn!(error = %e, "cannot read /dev/urandom");
                                None
                            }
                        }
                    };
                    match step {
                        Some(w) => write_waiting(w).await,
                        None => conn.no_randomness(R::now()),
                    }
                }
                ConnEvent::Gone(x) => {
                    queue = None;
                    let w = d.borrow_mut().gone(x);
                    write_now(w);
                }
                ConnEvent::Rejected { status, reason } => {
                    info!(status, reason, "request rejected")
                }
            }
        }
        let now = R::now();
        if let Some((x, q)) = &queue {
            let mut q = q.borrow_mut();
            while conn.wants_output() {
                match q.items.pop_front() {
                    Some(o) => conn.handle_output(o, now),
                    None => break,
                }
            }
            let (x, dropped) = (*x, q.dropped && q.items.is_empty());
            drop(q);
            if dropped {
                // the bridge gave the exchange up (slow client, shutdown): close
                queue = None;
                conn.exchange_dropped();
            } else if conn.exchange() != Some(x) {
                queue = None;
            }
        }
        if conn.is_closed() {
            let _ = poll_fn(|cx| sock.poll_close(cx)).await;
            if let Some(x) = conn.exchange() {
                let w = d.borrow_mut().gone(x);
                write_now(w);
            }
            return;
        }
        if conn.has_events() {
            continue;
        }
        clock.arm(Some(
            conn.poll_timeout()
                .unwrap_or_else(|| now + Duration::from_secs(86400)),
        ));
        poll_fn(|cx| {
            let mut progressed = false;
            if !conn.transmit().is_empty() {
                match sock.poll_write_vectored(cx, &[IoSlice::new(conn.transmit())]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        conn.advance(n, R::now());
                        progressed = true;
                    }
                    Poll::Ready(_) => {
                        conn.handle_read(0, R::now());
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(buf) = conn.read_buf() {
                buf.reserve(4096);
                let r = sock.poll_read_buf(cx, buf);
                match r {
                    Poll::Ready(Ok(n)) => {
                        conn.handle_read(n, R::now());
                        progressed = true;
                    }
                    Poll::Ready(Err(_)) => {
                        conn.handle_read(0, R::now());
                        progressed = true;
                    }
                    Poll::Pending => {}
                }
            }
            if let Some((_, q)) = &queue {
                let mut q = q.borrow_mut();
                if conn.wants_output() && (!q.items.is_empty() || q.dropped) {
                    progressed = true;
                } else {
                    q.wake.register(cx);
                }
            }
            if clock.poll(cx).is_ready() {
                conn.handle_timeout(R::now());
                progressed = true;
            }
            if progressed {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// Split complete lines off the front of `buf` (newline removed), at most `max` bytes
/// each: `Err(())` for a longer line.
fn split_lines(buf: &mut BytesMut, max: usize, mut line: impl FnMut(&[u8])) -> Result<(), ()> {
    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
        if i > max {
            return Err(());
        }
        let l = buf.split_to(i + 1);
        line(&l[..i]);
    }
    if buf.len() > max {
        return Err(());
    }
    Ok(())
}

/// Own one child: write its stdin, read its stdout into the bridge and its stderr into
/// the log, wait for its exit or for the order to kill it; then kill what is left of
/// its process group, reap everything, and tell the bridge.
async fn child_task<R: Runtime>(
    d: DriverRef<R>,
    child: ChildId,
    mut proc: Child<R>,
    watcher: Option<std::process::ChildStdin>,
    label: String,
    ctl: Ctl,
) {
    let pid = proc.pid;
    let pg = nix::unistd::Pid::from_raw(pid as i32);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut err = BytesMut::with_capacity(4096);
    let (mut out_open, mut err_open, mut skipping_err) = (true, true, false);
    let mut writing: Option<Bytes> = None;
    let mut stdin_open = true;
    let mut grace: Option<R::Timer> = None;
    let mut killed = false;
    let status = poll_fn(|cx| loop {
        let mut progressed = false;
        if out_open {
            out.reserve(64 * 1024);
            match proc.stdout.poll_read_buf(cx, &mut out) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    progressed = true;
                    let mut lines = Vec::new();
                    let r = split_lines(&mut out, MAX_CHILD_LINE, |l| lines.push(l.to_vec()));
                    let w = {
                        let mut g = d.borrow_mut();
                        for l in &lines {
                            g.bridge.handle_child_line(child, l, R::now());
                        }
                        if r.is_err() {
                            out_open = false;
                            let msg = "<over-long stdout line>";
                            g.bridge.handle_child_line(child, msg.as_bytes(), R::now());
                        }
                        g.pump()
                    };
                    write_now(w);
                }
                Poll::Ready(Ok(_)) => out_open = false,
                Poll::Ready(Err(e)) => {
                    out_open = false;
                    let msg = format!("<unreadable stdout: {e}>");
                    let w = {
                        let mut g = d.borrow_mut();
                        g.bridge.handle_child_line(child, msg.as_bytes(), R::now());
                        g.pump()
                    };
                    write_now(w);
                }
                Poll::Pending => {}
            }
        }
        if err_open {
            err.reserve(4096);
            match proc.stderr.poll_read_buf(cx, &mut err) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    progressed = true;
                    while let Some(i) = err.iter().position(|&b| b == b'\n') {
                        let l = err.split_to(i + 1);
                        if !std::mem::take(&mut skipping_err) {
                            let text = String::from_utf8_lossy(&l[..i.min(2048)]);
                            info!(session = %label, pid, "child stderr: {}", text.trim_end());
                        }
                    }
                    if err.len() > MAX_STDERR_LINE {
                        // an over-long stderr line: skip it, keep reading
                        err.clear();
                        skipping_err = true;
                    }
                }
                Poll::Ready(_) => err_open = false,
                Poll::Pending => {}
            }
        }
        if stdin_open {
            if writing.is_none() {
                let mut c = ctl.borrow_mut();
                writing = c.stdin.pop_front();
                if writing.is_some() {
                    for w in c.room.drain(..) {
                        w.wake();
                    }
                }
            }
            if let Some(line) = writing.as_mut() {
                match proc.stdin.poll_write(cx, line) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        progressed = true;
                        let _ = line.split_to(n.min(line.len()));
                        if line.is_empty() {
                            writing = None;
                        }
                    }
                    Poll::Ready(_) => {
                        stdin_open = false;
                        writing = None;
                    }
                    Poll::Pending => {}
                }
            }
        }
        {
            let mut c = ctl.borrow_mut();
            if c.kill && !killed {
                killed = true;
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM);
                let mut t = R::timer();
                t.fire_at(R::now() + KILL_GRACE);
                grace = Some(t);
            }
            c.wake.register(cx);
        }
        if let Some(t) = grace.as_mut() {
            if t.poll_fired(cx).is_ready() {
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                grace = None;
            }
        }
        if let Poll::Ready(s) = Pin::new(&mut proc.exit).poll(cx) {
            return Poll::Ready(s);
        }
        if !progressed {
            return Poll::Pending;
        }
    })
    .await;
    let how = match &status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    };
    reap_group::<R>(pid).await;
    // (the watcher was in the group: killed and reaped with it)
    drop(watcher);
    info!(session = %label, child = child.0, pid, status = %how, "stdio child exited and reaped");
    let w = {
        let mut g = d.borrow_mut();
        g.children.remove(&child);
        g.bridge.handle_child_exit(child, &how, R::now());
        let w = g.pump();
        g.live_children.set(g.live_children.get().saturating_sub(1));
        g.main.wake();
        w
    };
    {
        let mut c = ctl.borrow_mut();
        c.kill = true;
        for w in c.room.drain(..) {
            w.wake();
        }
    }
    write_now(w);
}

/// Run until SIGTERM or Ctrl-C: the signals trigger `shutdown` (installed before the
/// listening line, so a SIGTERM sent as soon as the address is known still kills and
/// reaps every child instead of killing the router by the default action).
pub fn shutdown_on_signals(shutdown: &Arc<Shutdown>) {
    crate::shared::signal_thread(shutdown, None);
}

/// How a binary's stdio bridge ended: `stopped`, or the error logged and exit status 1.
pub fn finish(served: io::Result<()>) {
    match served {
        Ok(()) => info!("stopped"),
        Err(e) => {
            error!(error = %e, "stdio bridge failed");
            std::process::exit(1);
        }
    }
}

/// Log the stdio bridge's listening line (and the admin listener it does not serve).
pub fn log_listening(settings: &Settings, stdio: &StdioSettings, addr: SocketAddr, runtime: &str) {
    if settings.admin_listen.is_some() {
        warn!("--admin-listen is not served in stdio mode (no /metrics, /healthz, /readyz)");
    }
    info!(listen = %addr, runtime, command = %stdio.command, mode = ?stdio.mode,
        max_children = stdio.max_children, ttl_s = settings.core.session_ttl.as_secs(),
        unattached_ms = stdio.unattached_timeout.as_millis() as u64,
        "mcp-router stdio bridge listening");
}

/// The pipe types of a `futures-io` process crate (`async-process`: smol, glommio).
#[cfg(feature = "async-process")]
pub mod futures_pipes {
    use super::*;
    use crate::rt::{poll_read_zeroed, IoPoll};
    use futures_lite::{AsyncRead, AsyncWrite};

    /// A child's stdout or stderr.
    pub struct Out(pub Pin<Box<dyn AsyncRead>>);
    /// A child's stdin.
    pub struct In(pub Pin<Box<dyn AsyncWrite>>);
    /// A child's exit.
    pub type Exit = Pin<Box<dyn Future<Output = io::Result<std::process::ExitStatus>>>>;

    impl PipeRead for Out {
        fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> IoPoll<usize> {
            let r = &mut self.0;
            poll_read_zeroed(buf, |b| r.as_mut().poll_read(cx, b))
        }
    }

    impl PipeWrite for In {
        fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> IoPoll<usize> {
            self.0.as_mut().poll_write(cx, buf)
        }
    }

    /// Spawn `cmd` with `async-process`.
    pub fn spawn<R>(cmd: std::process::Command) -> io::Result<Child<R>>
    where
        R: Runtime<ChildIn = In, ChildOut = Out, ChildExit = Exit>,
    {
        // (the conversion keeps the process group and the pre-exec hook, not the
        // stdio settings)
        let mut c = async_process::Command::from(cmd);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false)
            .reap_on_drop(true);
        let mut child = c.spawn()?;
        let stdin = child.stdin.take().map(|i| In(Box::pin(i)));
        let stdout = child.stdout.take().map(|o| Out(Box::pin(o)));
        let stderr = child.stderr.take().map(|e| Out(Box::pin(e)));
        let pid = child.id();
        let exit: Exit = Box::pin(async move { child.status().await });
        Child::from_pipes(pid, stdin, stdout, stderr, exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_router_core::stdio::ChildMode;

    fn cli(args: &[&str]) -> crate::Cli {
        let mut v = vec!["mcp-router"];
        v.extend_from_slice(args);
        <crate::Cli as clap::Parser>::try_parse_from(v).unwrap()
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

    #[test]
    fn lines_are_split_and_bounded() {
        let mut b = BytesMut::from(&b"one\ntwo\npart"[..]);
        let mut got = Vec::new();
        split_lines(&mut b, 8, |l| got.push(l.to_vec())).unwrap();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(&b[..], b"part");
        let mut b = BytesMut::from(&b"0123456789\n"[..]);
        assert!(split_lines(&mut b, 8, |_| {}).is_err());
        let mut b = BytesMut::from(&b"0123456789"[..]);
        assert!(
            split_lines(&mut b, 8, |_| {}).is_err(),
            "an unfinished line over the bound"
        );
    }

    #[test]
    fn children_get_their_own_process_group_and_sh() {
        let c = child_command("echo hi");
        assert_eq!(c.get_program(), "sh");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args[0], "-c");
        assert_eq!(args[1], "exec echo hi");
    }
}
