//! glommio frontend of mcp-router: thread-per-core. One glommio executor per core
//! (`--workers`, default: every CPU the process may run on), each pinned to its core,
//! with its own listener on the same address (`SO_REUSEPORT`: the kernel spreads
//! connections), its own upstream pool and its own Redis connection, running the
//! shared drive loop of [`mcp_router_frontend`] over io_uring-backed sockets.
//!
//! What the executors share is what the core makes `Sync` with atomics: the
//! [`Router`](mcp_router_core::Router) (backend health, session counts, draining) and
//! the metrics. Sessions: with Redis, through Redis; with the embedded store, through
//! one store behind a lock that every executor uses directly (see
//! `docs/scaling.md`, "Thread-per-core and the embedded store", for why not routing
//! by session hash, and the measurement).
//!
//! Redis: the `redis` crate's own connections, as on tokio and smol (the crate's smol
//! support: async-io sockets whose reactor thread wakes the executor), so `rediss://`,
//! Sentinel, Cluster, `--store-wait-replicas` and the record cache work here too; one
//! [`ManagedRedis`] per executor.
//!
//! Use it as a library with [`serve`] (one executor), or run the bundled
//! `mcp-router-glommio` binary.

#![deny(unsafe_code)]
#![warn(missing_docs)]

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::{LocalExecutorBuilder, Placement};
use mcp_router_core::ConfigError;
use mcp_router_frontend::drive::{accept_loop, admin_conn_bounded, admin_loop};
use mcp_router_frontend::redis::ManagedRedis;
use mcp_router_frontend::rt::{connect_first, poll_read_zeroed, Child, Io, IoPoll, Runtime, Timer};
use mcp_router_frontend::shared::config_exit;
use mcp_router_frontend::stdio::futures_pipes as pipes;
pub use mcp_router_frontend::{Cli, Frontend, Settings, Shared, Shutdown, StoreSettings};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::{debug, error, info};

/// The glommio runtime (one executor), as the shared drive loop sees it.
#[derive(Debug, Clone, Copy)]
pub struct Glommio;

/// Most bytes gathered into one send when a write has several buffers (glommio's
/// sockets have no vectored send).
const GATHER_MAX: usize = 64 * 1024;

/// A client or upstream connection.
#[derive(Debug)]
pub struct Stream {
    s: glommio::net::TcpStream,
    gather: Vec<u8>,
}

impl Io for Stream {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> IoPoll<usize> {
        let s = &mut self.s;
        poll_read_zeroed(buf, |b| Pin::new(s).poll_read(cx, b))
    }

    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> IoPoll<usize> {
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        let (Some(first), None) = (nonempty.next(), nonempty.clone().next()) else {
            // Several buffers: one send of their concatenation (bounded), so that a
            // response head and its body leave together.
            self.gather.clear();
            for b in bufs {
                let room = GATHER_MAX.saturating_sub(self.gather.len());
                if room == 0 {
                    break;
                }
                self.gather.extend_from_slice(&b[..b.len().min(room)]);
            }
            return Pin::new(&mut self.s).poll_write(cx, &self.gather);
        };
        Pin::new(&mut self.s).poll_write(cx, first)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> IoPoll<()> {
        // glommio's close shuts down the write side only
        Pin::new(&mut self.s).poll_close(cx)
    }

    fn idle_alive(&mut self) -> bool {
        // The last read of a pooled connection left a readiness poll armed in the
        // ring; while it has not completed, the socket has nothing to read and glommio
        // answers Pending without a syscall (a peek costs one per checkout). Without
        // such a poll, glommio tries one `recv` and arms it. A read that returns
        // anything (EOF, bytes nobody asked for, an error) condemns the connection,
        // so consuming a byte of it loses nothing.
        let mut probe = [0u8; 1];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(&mut self.s)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }
}

/// A deadline on the executor's timer.
///
/// glommio's `Timer::poll` re-registers the timer (a `BTreeMap` removal and insert,
/// and a waker clone) every time it is polled, and the drive loop polls its deadline
/// on every wake-up; so the timer is polled only when it is not registered for this
/// task yet or its instant has come.
#[derive(Debug, Default)]
pub struct Deadline {
    timer: Option<glommio::timer::Timer>,
    at: Option<Instant>,
    /// The waker the timer is registered with, since the last `fire_at`.
    registered: Option<std::task::Waker>,
}

impl Timer for Deadline {
    fn fire_at(&mut self, at: Instant) {
        let d = at.saturating_duration_since(Instant::now());
        match &mut self.timer {
            Some(t) => t.reset(d),
            None => self.timer = Some(glommio::timer::Timer::new(d)),
        }
        self.at = Some(at);
        // a timer that fired is out of the reactor: the next poll registers it again
        self.registered = None;
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(t), Some(at)) = (&mut self.timer, self.at) else {
            return Poll::Pending;
        };
        if matches!(&self.registered, Some(w) if w.will_wake(cx.waker())) && Instant::now() < at {
            return Poll::Pending;
        }
        match Pin::new(t).poll(cx) {
            Poll::Ready(_) => {
                self.registered = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A plain sleep.
#[derive(Debug)]
pub struct Sleep(glommio::timer::Timer);

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Stream>>>>;

/// Connect to `host:port`; a name is resolved on glommio's blocking pool.
pub(crate) fn connect(host: String, port: u16) -> Connecting {
    Box::pin(connect_first(
        host,
        port,
        |h, p| async move {
            glommio::executor()
                .spawn_blocking(move || {
                    (h.as_str(), p)
                        .to_socket_addrs()
                        .map(|a| a.collect::<Vec<_>>())
                })
                .await
        },
        |a| async move {
            let s = glommio::net::TcpStream::connect(a).await?;
            let _ = s.set_nodelay(true);
            Ok(stream(s))
        },
    ))
}

impl Runtime for Glommio {
    type Stream = Stream;
    type Connect = Connecting;
    type Timer = Deadline;
    type Sleep = Sleep;
    type Remote = ManagedRedis<Glommio>;
    type ChildIn = pipes::In;
    type ChildOut = pipes::Out;
    type ChildExit = pipes::Exit;

    fn spawn_child(cmd: std::process::Command) -> std::io::Result<Child<Glommio>> {
        pipes::spawn(cmd)
    }

    fn connect(host: String, port: u16) -> Connecting {
        connect(host, port)
    }

    fn timer() -> Deadline {
        Deadline::default()
    }

    fn sleep(d: Duration) -> Sleep {
        Sleep(glommio::timer::Timer::new(d))
    }
}

/// This executor's runtime instance over `shared`: its pool and, for Redis, its own
/// connections. Call it on the executor that will serve.
pub fn frontend(shared: Arc<Shared>) -> Result<Rc<Frontend<Glommio>>, ConfigError> {
    Frontend::managed(shared).map(Rc::new)
}

/// The next client connection (TCP_NODELAY set) and its address.
async fn accept(l: &glommio::net::TcpListener) -> io::Result<(Stream, SocketAddr)> {
    let s = l.accept().await?;
    let peer = s.peer_addr()?;
    let _ = s.set_nodelay(true);
    Ok((stream(s), peer))
}

fn stream(s: glommio::net::TcpStream) -> Stream {
    Stream {
        s,
        gather: Vec::new(),
    }
}

/// Serve MCP clients on `listener` on this executor until `shutdown` fires; then stop
/// accepting, let in-flight exchanges finish for up to `grace`, and return. With
/// `probe_store`, this executor's store connection also feeds readiness. The
/// process-wide background work (embedded-store expiry, health checks:
/// [`start_background`](mcp_router_frontend::shared::start_background)) is the
/// caller's, once for all executors, as [`run`] does.
pub async fn serve(
    listener: glommio::net::TcpListener,
    fe: Rc<Frontend<Glommio>>,
    shutdown: Arc<Shutdown>,
    grace: Duration,
    probe_store: bool,
) {
    let (f, sd) = (fe.clone(), shutdown.clone());
    glommio::spawn_local(async move { f.pool_expiry(&sd).await }).detach();
    let (f, sd) = (fe.clone(), shutdown.clone());
    let every = Duration::from_secs(1);
    glommio::spawn_local(async move { f.keep_store(every, &sd, probe_store).await }).detach();
    let accept = || accept(&listener);
    let spawn = |s, peer, guard| {
        let (f, sd) = (fe.clone(), shutdown.clone());
        glommio::spawn_local(async move {
            mcp_router_frontend::drive(&f, s, peer, &sd).await;
            drop(guard);
        })
        .detach();
    };
    accept_loop::<Glommio, _, _, _>(accept, spawn, &shutdown, grace).await;
}

/// Serve the admin endpoints on `listener` on this executor until `shutdown`.
pub async fn serve_admin(
    listener: glommio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
) {
    let accept = || async { Ok(stream(listener.accept().await?)) };
    let spawn = |s| {
        let sh = shared.clone();
        glommio::spawn_local(async move { admin_conn_bounded::<Glommio>(s, &sh).await }).detach();
    };
    admin_loop::<Glommio, _, _, _>(accept, spawn, &shutdown).await;
}

/// io_uring registers each executor's IO memory, which counts against
/// `RLIMIT_MEMLOCK` (8 MiB by default on Debian, less than a few executors need):
/// raise the soft limit to the hard one, and the hard one when allowed (root).
fn raise_memlock() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok() {
        return;
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) {
        if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard) {
            debug!(error = %e, "cannot raise RLIMIT_MEMLOCK");
        }
    }
}

/// A glommio listener on `addr` with `backlog` (glommio's own `bind` fixes it at 1024)
/// and `SO_REUSEPORT`, so every executor has its own.
#[allow(unsafe_code)]
fn listener(addr: SocketAddr, backlog: u32) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let std = mcp_router_frontend::rt::listen_socket(addr, backlog, true)?;
    // as glommio's own `bind` leaves it: io_uring waits on a blocking socket
    std.set_nonblocking(false)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that `into_raw_fd` just
    // gave up ownership of; the glommio listener becomes its only owner.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(std.into_raw_fd()) })
}

/// The memory each executor registers with io_uring for DMA buffers. glommio's
/// default is 10 MiB, for file I/O; mcp-router's TCP sockets never use it. Registered
/// memory is pinned, and `fork` copies pinned pages at once instead of sharing them
/// copy-on-write: with 10 MiB every child the stdio bridge spawns cost a 10 MiB copy
/// (`stdio-per-session-glommio`: 355 µs of router CPU per request, 4x tokio's).
const IO_MEMORY: usize = 64 * 1024;

/// An executor builder for `placement`, without glommio's preemption timers (a
/// patch of ours, `vendor/glommio/PATCHES.md`): they cost two ring entries per turn
/// of the executor loop, to preempt between task queues, and mcp-router runs one
/// queue of tasks that each make a syscall every few microseconds. Its registered
/// memory is [`IO_MEMORY`].
fn executor(placement: Placement) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .preempt_timer(Duration::MAX)
        .io_memory(IO_MEMORY)
}

/// What an executor bound (the MCP address, the admin one on the first executor).
struct Bound {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
}

/// Run the `mcp-router-glommio` binary's router with `settings` (parsed from `cli`)
/// until SIGTERM or Ctrl-C: one executor per `--workers` (default: every allowed CPU),
/// executor `i` pinned to the `i`-th allowed CPU. Exits the process on a listen or
/// configuration error (from the executor that meets it).
pub fn run(cli: Cli, settings: Settings) {
    raise_memlock();
    if let Some(stdio) = settings.stdio.clone() {
        return run_stdio(&settings, &stdio);
    }
    use mcp_router_frontend::shared::{allowed_cpus, core_plan, listen_exit};
    let plan = core_plan(settings.workers, &allowed_cpus());
    let n = plan.len();
    let shared = Shared::new(&settings).unwrap_or_else(|e| config_exit("mcp-router-glommio", &e));
    let shutdown = Shutdown::new();
    mcp_router_frontend::shared::start_background(&shared, &shutdown);
    mcp_router_frontend::shared::start_ops(&shared, &cli, &shutdown);
    let grace = settings.shutdown_grace;
    let backlog = settings.accept_backlog;
    // Executor 0 binds first (the address may have port 0); the others bind the
    // address it got, SO_REUSEPORT sharing it.
    let mut listen = settings.listen;
    let mut admin = settings.admin_listen;
    let mut handles = Vec::new();
    for (i, cpu) in plan.into_iter().enumerate() {
        let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
        let (tx, rx) = std::sync::mpsc::channel::<Bound>();
        let (sh, sd) = (shared.clone(), shutdown.clone());
        let admin_here = admin.take();
        let spawned =
            executor(placement)
                .name(&format!("mcp-glommio-{i}"))
                .spawn(move || async move {
                    let bind = |a: SocketAddr, backlog: u32, what: &str| {
                        listener(a, backlog).unwrap_or_else(|e| listen_exit(a, what, &e))
                    };
                    let l = bind(listen, backlog, "");
                    let admin_l = admin_here.map(|a| bind(a, 128, " (admin)"));
                    let fe = frontend(sh.clone())
                        .unwrap_or_else(|e| config_exit("mcp-router-glommio", &e));
                    let _ = tx.send(Bound {
                        addr: l.local_addr().unwrap_or(listen),
                        admin: admin_l.as_ref().and_then(|a| a.local_addr().ok()),
                    });
                    if let Some(a) = admin_l {
                        glommio::spawn_local(serve_admin(a, sh.clone(), sd.clone())).detach();
                    }
                    serve(l, fe, sd, grace, i == 0).await;
                });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                error!(executor = i, error = %e, "cannot start a glommio executor");
                std::process::exit(1);
            }
        }
        let Ok(b) = rx.recv() else {
            error!(executor = i, "glommio executor failed at start");
            std::process::exit(1);
        };
        listen = b.addr;
        if let Some(a) = b.admin {
            mcp_router_frontend::shared::log_admin_listening(a);
        }
    }
    info!(
        executors = n,
        "thread-per-core: one listener per executor (SO_REUSEPORT)"
    );
    mcp_router_frontend::shared::log_listening(&shared, "glommio", listen);
    for h in handles {
        let _ = h.join();
    }
    info!("stopped");
}

/// `--stdio`: serve a stdio MCP server instead of proxying backends, on one executor,
/// until SIGTERM or Ctrl-C (which kill and reap every child before returning).
fn run_stdio(settings: &Settings, stdio: &mcp_router_frontend::config::StdioSettings) {
    use mcp_router_frontend::stdio as bridge;
    let (settings, stdio) = (settings.clone(), stdio.clone());
    let shutdown = Shutdown::new();
    bridge::shutdown_on_signals(&shutdown);
    let served = executor(Placement::Unbound)
        .name("mcp-glommio-stdio")
        .spawn(move || async move {
            let l = listener(settings.listen, settings.accept_backlog)?;
            let addr = l.local_addr().unwrap_or(settings.listen);
            bridge::log_listening(&settings, &stdio, addr, "glommio");
            let accept = || accept(&l);
            bridge::serve_stdio::<Glommio, _, _>(accept, &settings, &stdio, shutdown).await
        })
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|h| h.join().map_err(|e| io::Error::other(e.to_string()))?);
    bridge::finish(served);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A pooled connection is alive while the peer stays silent, and not once it has
    /// closed or sent bytes nobody asked for, with and without a readiness poll left
    /// armed by an earlier read.
    #[test]
    fn idle_alive_sees_close_and_stray_bytes() {
        raise_memlock();
        executor(Placement::Unbound)
            .spawn(|| async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = l.local_addr().unwrap().port();
                for case in ["silent", "closed", "stray bytes"] {
                    for armed in [false, true] {
                        let mut s = connect("127.0.0.1".into(), port).await.unwrap();
                        let (mut peer, _) = l.accept().unwrap();
                        if armed {
                            // a read that finds nothing leaves a poll in the ring
                            let mut buf = BytesMut::with_capacity(64);
                            let mut cx = Context::from_waker(std::task::Waker::noop());
                            assert!(s.poll_read_buf(&mut cx, &mut buf).is_pending());
                        }
                        match case {
                            "closed" => drop(peer),
                            "stray bytes" => peer.write_all(b"x").unwrap(),
                            _ => {}
                        }
                        // let the ring see the completion
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                        assert_eq!(s.idle_alive(), case == "silent", "{case}, armed: {armed}");
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// The stdio bridge polls its pending accept on every wake-up of its task. glommio
    /// kept one more clone of the task's waker per such poll (its task references are
    /// an `i16`): past 32,767 polls without a new connection the executor thread
    /// panicked, which under load took ~2 s (`stdio-shared-glommio` in `mcp-load`).
    /// Here: 40,000 polls, then a connection, accepted.
    #[test]
    fn an_accept_polled_again_and_again_does_not_pile_up_wakers() {
        raise_memlock();
        executor(Placement::Unbound)
            .spawn(|| async {
                let l = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let mut a = Box::pin(accept(&l));
                let mut polls = 0u32;
                let accepted = std::future::poll_fn(|cx| {
                    polls += 1;
                    match polls {
                        // pending, and woken at once: polled again on the next turn
                        ..40_000 => {
                            assert!(a.as_mut().poll(cx).is_pending());
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        40_000 => {
                            std::thread::spawn(move || std::net::TcpStream::connect(addr));
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        _ => a.as_mut().poll(cx).map(|r| r.map(|(_, peer)| peer)),
                    }
                })
                .await;
                assert!(accepted.is_ok(), "{accepted:?}");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
