//! smol frontend of mcp-router: smol (async-io) sockets and timers under the shared
//! drive loop of [`mcp_router_frontend`], on a multi-threaded [`Executor`]. The Redis
//! store goes through the `redis` crate's smol support.
//!
//! Use it as a library with [`serve`], or run the bundled `mcp-router-smol` binary.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use bytes::BytesMut;
use mcp_router_frontend::drive::{accept_loop, admin_conn_bounded, admin_loop};
use mcp_router_frontend::redis::ManagedRedis;
use mcp_router_frontend::rt::{connect_first, poll_read_zeroed, Child, Io, IoPoll, Runtime, Timer};
use mcp_router_frontend::shared::config_exit;
use mcp_router_frontend::stdio::futures_pipes as pipes;
pub use mcp_router_frontend::{Cli, Frontend, Settings, Shared, Shutdown, StoreSettings};
use smol::io::{AsyncRead, AsyncWrite};
use smol::{Async, Executor};
use std::future::Future;
use std::io::{self, IoSlice, Read};
use std::net::{Shutdown as Half, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::info;

/// The smol runtime, as the shared drive loop sees it.
#[derive(Debug, Clone, Copy)]
pub struct Smol;

/// A client or upstream connection.
///
/// It remembers that its last read found nothing, or took all there was (a short
/// read): the drive loop polls every source it waits on at each wake-up, and
/// `Async::poll_read` starts with a `read` syscall whatever async-io knows, so
/// without this each wake-up cost a failed `recv` per idle direction (8 `recvfrom`
/// per proxied request where 2 succeed, measured). Until async-io reports readiness
/// that came after that read, a read is not tried.
#[derive(Debug)]
pub struct Stream {
    s: Async<TcpStream>,
    /// The last read would have blocked and no readiness has been seen since.
    read_blocked: bool,
}

impl Stream {
    fn new(s: Async<TcpStream>) -> Stream {
        Stream {
            s,
            read_blocked: false,
        }
    }

    /// `Ready` when a read is worth trying: none has blocked since the last readiness.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read_blocked {
            std::task::ready!(self.s.poll_readable(cx))?;
            self.read_blocked = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl Io for Stream {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> IoPoll<usize> {
        std::task::ready!(self.poll_read_ready(cx))?;
        let s = &mut self.s;
        let mut offered = 0;
        let r = poll_read_zeroed(buf, |b| {
            offered = b.len();
            Pin::new(&mut *s).poll_read(cx, b)
        });
        self.read_blocked = match &r {
            // the read would block, and async-io holds this task's interest
            Poll::Pending => true,
            // A short read took all the socket had (as tokio reasons): register
            // interest now rather than learn it from a read that fails.
            Poll::Ready(Ok(n)) if *n > 0 && *n < offered => s.poll_readable(cx).is_pending(),
            Poll::Ready(_) => false,
        };
        r
    }

    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> IoPoll<usize> {
        Pin::new(&mut self.s).poll_write_vectored(cx, bufs)
    }

    fn poll_close(&mut self, _cx: &mut Context<'_>) -> IoPoll<()> {
        Poll::Ready(self.s.get_ref().shutdown(Half::Write))
    }

    fn idle_alive(&mut self) -> bool {
        // A read that blocked, with no readiness since: still silent, no syscall.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        // Non-blocking socket: a healthy idle connection would block.
        let mut probe = [0u8; 1];
        matches!(self.s.get_ref().read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A deadline on the async-io timer.
#[derive(Debug)]
pub struct Deadline(smol::Timer);

impl Timer for Deadline {
    fn fire_at(&mut self, at: Instant) {
        self.0.set_at(at);
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A plain sleep.
#[derive(Debug)]
pub struct Sleep(smol::Timer);

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

impl Runtime for Smol {
    type Stream = Stream;
    type Connect = Connecting;
    type Timer = Deadline;
    type Sleep = Sleep;
    type Remote = ManagedRedis<Smol>;
    type ChildIn = pipes::In;
    type ChildOut = pipes::Out;
    type ChildExit = pipes::Exit;

    fn spawn_child(cmd: std::process::Command) -> io::Result<Child<Smol>> {
        pipes::spawn(cmd)
    }

    fn connect(host: String, port: u16) -> Connecting {
        Box::pin(connect_first(
            host,
            port,
            |h, p| async move { smol::net::resolve((h.as_str(), p)).await },
            |a| async move {
                let s = Async::<TcpStream>::connect(a).await?;
                let _ = s.get_ref().set_nodelay(true);
                Ok(Stream::new(s))
            },
        ))
    }

    fn timer() -> Deadline {
        Deadline(smol::Timer::never())
    }

    fn sleep(d: Duration) -> Sleep {
        Sleep(smol::Timer::after(d))
    }
}

/// The smol runtime instance over `shared`: its pool and (for Redis) its store
/// connection.
pub fn frontend(shared: Arc<Shared>) -> Result<Arc<Frontend<Smol>>, mcp_router_core::ConfigError> {
    Frontend::managed(shared).map(Arc::new)
}

/// Serve MCP clients on `listener`, spawning onto `ex`, until `shutdown` fires; then
/// stop accepting, let in-flight exchanges finish for up to `grace`, and return.
/// Starts the background work (store expiry and probes, health checks) too.
pub async fn serve(
    ex: Arc<Executor<'static>>,
    listener: Async<TcpListener>,
    fe: Arc<Frontend<Smol>>,
    shutdown: Arc<Shutdown>,
    grace: Duration,
) {
    mcp_router_frontend::shared::start_background(&fe.shared, &shutdown);
    let (f, sd) = (fe.clone(), shutdown.clone());
    ex.spawn(async move { f.pool_expiry(&sd).await }).detach();
    let (f, sd) = (fe.clone(), shutdown.clone());
    ex.spawn(async move { f.watch_store(Duration::from_secs(1), &sd).await })
        .detach();
    let accept = || async {
        let (s, peer) = listener.accept().await?;
        let _ = s.get_ref().set_nodelay(true);
        Ok((Stream::new(s), peer))
    };
    let spawn = |s, peer, guard| {
        let (f, sd) = (fe.clone(), shutdown.clone());
        ex.spawn(async move {
            mcp_router_frontend::drive(&f, s, peer, &sd).await;
            drop(guard);
        })
        .detach();
    };
    accept_loop::<Smol, _, _, _>(accept, spawn, &shutdown, grace).await;
}

/// Serve the admin endpoints on `listener`, spawning onto `ex`, until `shutdown`.
pub async fn serve_admin(
    ex: Arc<Executor<'static>>,
    listener: Async<TcpListener>,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
) {
    let accept = || async { Ok(Stream::new(listener.accept().await?.0)) };
    let spawn = |s| {
        let sh = shared.clone();
        ex.spawn(async move { admin_conn_bounded::<Smol>(s, &sh).await })
            .detach();
    };
    admin_loop::<Smol, _, _, _>(accept, spawn, &shutdown).await;
}

/// Run the `mcp-router-smol` binary's router with `settings` (parsed from `cli`) until
/// SIGTERM or Ctrl-C, on `--workers` threads (default: one per CPU). Exits the process
/// on a listen or configuration error.
pub fn run(cli: Cli, settings: Settings) {
    let workers = settings
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listener = bind_or_exit(settings.listen, settings.accept_backlog, "");
    if let Some(stdio) = settings.stdio.clone() {
        return run_stdio(listener, &settings, &stdio);
    }
    let shared = Shared::new(&settings).unwrap_or_else(|e| config_exit("mcp-router-smol", &e));
    let fe = frontend(shared.clone()).unwrap_or_else(|e| config_exit("mcp-router-smol", &e));
    let shutdown = Shutdown::new();
    let ex = Arc::new(Executor::new());
    // Workers run the executor until the main thread has finished serving.
    let done = Shutdown::new();
    let threads: Vec<_> = (1..workers)
        .map(|i| {
            let (ex, done) = (ex.clone(), done.clone());
            std::thread::Builder::new()
                .name(format!("mcp-smol-{i}"))
                .spawn(move || smol::block_on(ex.run(done.wait())))
                .expect("starting a worker thread")
        })
        .collect();
    if let Some(admin) = settings.admin_listen {
        let l = bind_or_exit(admin, 128, " (admin)");
        mcp_router_frontend::shared::log_admin_listening(
            l.get_ref()
                .local_addr()
                .expect("bound listener has an address"),
        );
        ex.spawn(serve_admin(ex.clone(), l, shared.clone(), shutdown.clone()))
            .detach();
    }
    mcp_router_frontend::shared::start_ops(&shared, &cli, &shutdown);
    let addr = listener
        .get_ref()
        .local_addr()
        .expect("bound listener has an address");
    mcp_router_frontend::shared::log_listening(&shared, "smol", addr);
    let grace = settings.shutdown_grace;
    smol::block_on(ex.run(serve(ex.clone(), listener, fe, shutdown, grace)));
    done.trigger();
    for t in threads {
        let _ = t.join();
    }
    info!("stopped");
}

/// `--stdio`: serve a stdio MCP server instead of proxying backends, on this thread,
/// until SIGTERM or Ctrl-C (which kill and reap every child before returning).
fn run_stdio(
    listener: Async<TcpListener>,
    settings: &Settings,
    stdio: &mcp_router_frontend::config::StdioSettings,
) {
    use mcp_router_frontend::stdio;
    let addr = listener
        .get_ref()
        .local_addr()
        .expect("bound listener has an address");
    let shutdown = Shutdown::new();
    stdio::shutdown_on_signals(&shutdown);
    stdio::log_listening(settings, stdio, addr, "smol");
    let accept = || async {
        let (s, peer) = listener.accept().await?;
        let _ = s.get_ref().set_nodelay(true);
        Ok((Stream::new(s), peer))
    };
    stdio::finish(smol::block_on(stdio::serve_stdio::<Smol, _, _>(
        accept, settings, stdio, shutdown,
    )));
}

fn bind_or_exit(addr: SocketAddr, backlog: u32, what: &str) -> Async<TcpListener> {
    let l = mcp_router_frontend::rt::listen_socket(addr, backlog, false).and_then(Async::new);
    l.unwrap_or_else(|e| mcp_router_frontend::shared::listen_exit(addr, what, &e))
}
