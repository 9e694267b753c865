//! tokio frontend of mcp-router: tokio sockets and timers under the shared drive loop
//! of [`mcp_router_frontend`]. It makes no routing decision of its own.
//!
//! Use it as a library with [`serve`], or run the bundled `mcp-router` binary.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use bytes::BytesMut;
use mcp_router_frontend::drive::{accept_loop, admin_conn_bounded, admin_loop};
use mcp_router_frontend::redis::ManagedRedis;
use mcp_router_frontend::rt::{Child, Io, IoPoll, PipeRead, PipeWrite, Runtime, Timer};
use mcp_router_frontend::shared::config_exit;
pub use mcp_router_frontend::{
    config, shared, Cli, Frontend, Resolve, Settings, Shared, Shutdown, StoreSettings,
};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tracing::info;

/// The tokio runtime, as the shared drive loop sees it.
#[derive(Debug, Clone, Copy)]
pub struct Tokio;

/// A client or upstream connection.
#[derive(Debug)]
pub struct Stream(TcpStream);

impl Io for Stream {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> IoPoll<usize> {
        tokio_util::io::poll_read_buf(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> IoPoll<usize> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> IoPoll<()> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn idle_alive(&mut self) -> bool {
        // A closed (or garbage-sending) connection reads 0 (or >0) bytes at once; a
        // healthy idle one would block.
        let mut probe = [0u8; 1];
        matches!(self.0.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A deadline on the tokio timer.
#[derive(Debug)]
pub struct Deadline(Pin<Box<tokio::time::Sleep>>);

impl Timer for Deadline {
    fn fire_at(&mut self, at: Instant) {
        self.0.as_mut().reset(at.into());
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

/// A stdio child's pipe (tokio's process support).
#[derive(Debug)]
pub struct Pipe<T>(T);

/// A stdio child's stdout or stderr.
#[derive(Debug)]
pub enum Output {
    /// stdout.
    Out(ChildStdout),
    /// stderr.
    Err(ChildStderr),
}

impl PipeRead for Pipe<Output> {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> IoPoll<usize> {
        match &mut self.0 {
            Output::Out(o) => tokio_util::io::poll_read_buf(Pin::new(o), cx, buf),
            Output::Err(e) => tokio_util::io::poll_read_buf(Pin::new(e), cx, buf),
        }
    }
}

impl PipeWrite for Pipe<ChildStdin> {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> IoPoll<usize> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
}

type Exit = Pin<Box<dyn Future<Output = io::Result<std::process::ExitStatus>>>>;

impl Runtime for Tokio {
    type Stream = Stream;
    type Connect = Connecting;
    type Timer = Deadline;
    type Sleep = tokio::time::Sleep;
    type Remote = ManagedRedis<Tokio>;
    type ChildIn = Pipe<ChildStdin>;
    type ChildOut = Pipe<Output>;
    type ChildExit = Exit;

    fn spawn_child(cmd: std::process::Command) -> io::Result<Child<Tokio>> {
        let mut c = tokio::process::Command::from(cmd);
        c.kill_on_drop(false);
        let mut child = c.spawn()?;
        let (stdin, stdout, stderr) = (
            child.stdin.take().map(Pipe),
            child.stdout.take().map(|o| Pipe(Output::Out(o))),
            child.stderr.take().map(|e| Pipe(Output::Err(e))),
        );
        let pid = child.id().unwrap_or(0);
        let exit: Exit = Box::pin(async move { child.wait().await });
        Child::from_pipes(pid, stdin, stdout, stderr, exit)
    }

    fn connect(host: String, port: u16) -> Connecting {
        Box::pin(async move {
            let s = TcpStream::connect((host.as_str(), port)).await?;
            let _ = s.set_nodelay(true);
            Ok(Stream(s))
        })
    }

    fn timer() -> Deadline {
        Deadline(Box::pin(tokio::time::sleep(Duration::from_secs(
            86400 * 365,
        ))))
    }

    fn sleep(d: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(d)
    }
}

/// The tokio runtime instance over `shared`: its pool and (for Redis) its store
/// connection. Call it inside a tokio runtime.
pub fn frontend(shared: Arc<Shared>) -> Result<Arc<Frontend<Tokio>>, mcp_router_core::ConfigError> {
    Frontend::managed(shared).map(Arc::new)
}

/// Serve MCP clients on `listener` until `shutdown` fires, then stop accepting, let
/// in-flight exchanges finish for up to `grace`, and return. Starts the background
/// work (store expiry and probes, health checks) too.
pub async fn serve(
    listener: TcpListener,
    fe: Arc<Frontend<Tokio>>,
    shutdown: Arc<Shutdown>,
    grace: Duration,
) {
    mcp_router_frontend::shared::start_background(&fe.shared, &shutdown);
    let (f, sd) = (fe.clone(), shutdown.clone());
    tokio::spawn(async move { f.pool_expiry(&sd).await });
    let (f, sd) = (fe.clone(), shutdown.clone());
    tokio::spawn(async move { f.watch_store(Duration::from_secs(1), &sd).await });
    let accept = || async {
        let (s, peer) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        Ok((Stream(s), peer))
    };
    let spawn = |s, peer, guard| {
        let (f, sd) = (fe.clone(), shutdown.clone());
        tokio::spawn(async move {
            mcp_router_frontend::drive(&f, s, peer, &sd).await;
            drop(guard);
        });
    };
    accept_loop::<Tokio, _, _, _>(accept, spawn, &shutdown, grace).await;
}

/// Serve the admin endpoints on `listener` until `shutdown`.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, shutdown: Arc<Shutdown>) {
    let accept = || async { Ok(Stream(listener.accept().await?.0)) };
    let spawn = |s| {
        let sh = shared.clone();
        tokio::spawn(async move { admin_conn_bounded::<Tokio>(s, &sh).await });
    };
    admin_loop::<Tokio, _, _, _>(accept, spawn, &shutdown).await;
}

/// Run the `mcp-router` binary's router with `settings` (parsed from `cli`) until
/// SIGTERM or Ctrl-C: bind, start the admin listener, discovery and signal handling,
/// serve. Exits the process on a listen or configuration error.
pub fn run(cli: Cli, settings: Settings) {
    // One worker (`--workers 1`, or one usable CPU: taskset, a cgroup quota of one
    // core): a single-threaded runtime. Its tasks then never pay for work stealing or
    // cross-thread wake-ups, and the accept loop does not compete with a worker thread
    // for the same CPU (proxy CPU per request in the load benchmark, pinned to one CPU:
    // ~1.10x -> ~0.93x HAProxy's).
    let workers = settings
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut b = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let rt = b.enable_all().build().expect("building the tokio runtime");
    rt.block_on(async move {
        let listener = bind_or_exit(settings.listen, settings.accept_backlog, "").await;
        if let Some(stdio) = settings.stdio.clone() {
            return run_stdio(listener, &settings, &stdio).await;
        }
        let shared = Shared::new(&settings).unwrap_or_else(|e| config_exit("mcp-router", &e));
        let fe = frontend(shared.clone()).unwrap_or_else(|e| config_exit("mcp-router", &e));
        let shutdown = Shutdown::new();
        if let Some(admin) = settings.admin_listen {
            let l = bind_or_exit(admin, 128, " (admin)").await;
            mcp_router_frontend::shared::log_admin_listening(
                l.local_addr().expect("bound listener has an address"),
            );
            tokio::spawn(serve_admin(l, shared.clone(), shutdown.clone()));
        }
        mcp_router_frontend::shared::start_ops(&shared, &cli, &shutdown);
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        mcp_router_frontend::shared::log_listening(&shared, "tokio", addr);
        serve(listener, fe, shutdown, settings.shutdown_grace).await;
        info!("stopped");
    });
}

/// `--stdio`: serve a stdio MCP server instead of proxying backends, until SIGTERM or
/// Ctrl-C (which kill and reap every child before returning).
async fn run_stdio(listener: TcpListener, settings: &Settings, stdio: &config::StdioSettings) {
    use mcp_router_frontend::stdio;
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let shutdown = Shutdown::new();
    stdio::shutdown_on_signals(&shutdown);
    stdio::log_listening(settings, stdio, addr, "tokio");
    let accept = || async {
        let (s, peer) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        Ok((Stream(s), peer))
    };
    stdio::finish(stdio::serve_stdio::<Tokio, _, _>(accept, settings, stdio, shutdown).await);
}

async fn bind_or_exit(addr: SocketAddr, backlog: u32, what: &str) -> TcpListener {
    let l = mcp_router_frontend::rt::listen_socket(addr, backlog, false)
        .and_then(TcpListener::from_std);
    l.unwrap_or_else(|e| mcp_router_frontend::shared::listen_exit(addr, what, &e))
}
