//! What a runtime has to provide for the shared drive loop: a byte stream ([`Io`]), a
//! resettable deadline ([`Timer`]), connecting, sleeping, and a remote session store
//! ([`Runtime`]). Plus the runtime-independent signals every frontend uses:
//! [`Shutdown`] and the in-flight connection count [`Tasks`]. The drive loop reads
//! its clock from [`Runtime::now`] too.

use bytes::BytesMut;
use event_listener::{Event, EventListener, Listener};
use mcp_router_core::{StoreOp, StoreReply};
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What a poll of a byte stream returns.
pub type IoPoll<T> = Poll<io::Result<T>>;

/// A session store reached over the network. Implemented once per transport.
pub trait RemoteStore {
    /// Run one op: one round trip, bounded by the store timeout; `Unavailable` when
    /// the store cannot answer in time.
    fn execute(&self, op: &StoreOp) -> impl Future<Output = StoreReply>;
    /// Whether the store answers a `PING` within the store timeout.
    fn ping(&self) -> impl Future<Output = bool>;
    /// The transport's background work, run beside the store probe for as long as
    /// the process runs (the record cache's slides); never ready by default.
    fn background(&self) -> impl Future<Output = ()> {
        std::future::pending()
    }
}

/// A connected byte stream (a client or an upstream socket).
pub trait Io: Unpin {
    /// Read into the spare capacity of `buf` (the caller reserves it), appending.
    /// `Ok(0)` is EOF.
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> IoPoll<usize>;
    /// Write from `bufs` in order, as much as the socket takes at once.
    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> IoPoll<usize>;
    /// Shut down the write side (the peer reads EOF).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> IoPoll<()>;
    /// For a pooled idle connection: whether it is still open and silent (a read
    /// would block). One that the peer closed, or that sent bytes unasked, is not.
    fn idle_alive(&mut self) -> bool;
}

/// A one-shot deadline that can be moved.
pub trait Timer: Unpin {
    /// Fire at `at` (replacing any earlier setting).
    fn fire_at(&mut self, at: Instant);
    /// Ready once the deadline has passed.
    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// The read end of a child's stdout or stderr.
pub trait PipeRead: Unpin {
    /// Read into the spare capacity of `buf`, appending; `Ok(0)` is EOF.
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> IoPoll<usize>;
}

/// The write end of a child's stdin.
pub trait PipeWrite: Unpin {
    /// Write from `buf`, as much as the pipe takes at once.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> IoPoll<usize>;
}

/// A started child process, as [`Runtime::spawn_child`] returns it.
pub struct Child<R: Runtime> {
    /// Its process id (the process group's id too).
    pub pid: u32,
    /// Its stdin.
    pub stdin: R::ChildIn,
    /// Its stdout.
    pub stdout: R::ChildOut,
    /// Its stderr.
    pub stderr: R::ChildOut,
    /// Ready with its exit status once it has exited and was reaped.
    pub exit: R::ChildExit,
}

impl<R: Runtime> Child<R> {
    /// A child just spawned with its stdio piped ([`crate::stdio::child_command`]):
    /// every pipe must be there; if one is missing, the child's process group is killed
    /// (the runtime reaps it) and the spawn is an error, never a process left running
    /// that nobody drives.
    pub fn from_pipes(
        pid: u32,
        stdin: Option<R::ChildIn>,
        stdout: Option<R::ChildOut>,
        stderr: Option<R::ChildOut>,
        exit: R::ChildExit,
    ) -> io::Result<Child<R>> {
        match (stdin, stdout, stderr) {
            (Some(stdin), Some(stdout), Some(stderr)) => Ok(Child {
                pid,
                stdin,
                stdout,
                stderr,
                exit,
            }),
            _ => {
                if pid > 0 {
                    let pg = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                }
                Err(io::Error::other("a piped stdio of the child is missing"))
            }
        }
    }
}

/// A runtime that can drive the router.
pub trait Runtime: Sized + 'static {
    /// A TCP connection.
    type Stream: Io + 'static;
    /// A connection attempt in progress.
    type Connect: Future<Output = io::Result<Self::Stream>> + Unpin;
    /// A deadline.
    type Timer: Timer;
    /// A plain sleep.
    type Sleep: Future<Output = ()>;
    /// The Redis transport.
    type Remote: RemoteStore;

    /// A child process's stdin (the stdio bridge).
    type ChildIn: PipeWrite + 'static;
    /// A child process's stdout or stderr.
    type ChildOut: PipeRead + 'static;
    /// A child process's exit, reaped.
    type ChildExit: Future<Output = io::Result<std::process::ExitStatus>> + Unpin + 'static;

    /// Connect to `host:port` (TCP_NODELAY set).
    fn connect(host: String, port: u16) -> Self::Connect;
    /// Start `cmd` (built by [`crate::stdio::child_command`]: its own process group,
    /// stdin, stdout and stderr piped) with this runtime's process support.
    fn spawn_child(cmd: std::process::Command) -> io::Result<Child<Self>>;
    /// A timer that has not been set.
    fn timer() -> Self::Timer;
    /// Sleep for `d`.
    fn sleep(d: Duration) -> Self::Sleep;
    /// The drive loop's clock: every instant the drive loop, the upstream pool's
    /// expiry and the stdio bridge hand to the core comes from here, and is compared
    /// with this runtime's [`Timer`] and [`Runtime::sleep`]. The system's monotonic
    /// clock by default; a test runtime returns virtual time, so that timeouts can be
    /// tested in process without waiting for them.
    fn now() -> Instant {
        Instant::now()
    }
}

/// A non-blocking listening socket on `addr` with `backlog` (`--accept-backlog`; the
/// kernel caps it at `net.core.somaxconn`), `SO_REUSEADDR` as std sets it, and
/// `SO_REUSEPORT` when `reuse_port` (one listener per glommio executor). Each runtime
/// wraps it in its own listener type.
pub fn listen_socket(
    addr: std::net::SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s.into())
}

/// [`Runtime::connect`]'s policy for runtimes without one of their own: an IP
/// literal is used as is, a name goes through `resolve` (a resolver thread); the
/// addresses are tried in order, the first that connects wins, else the last error.
pub async fn connect_first<S, RF, CF>(
    host: String,
    port: u16,
    resolve: impl FnOnce(String, u16) -> RF,
    mut connect: impl FnMut(std::net::SocketAddr) -> CF,
) -> io::Result<S>
where
    RF: Future<Output = io::Result<Vec<std::net::SocketAddr>>>,
    CF: Future<Output = io::Result<S>>,
{
    let addrs = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![std::net::SocketAddr::new(ip, port)],
        Err(_) => resolve(host, port).await?,
    };
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for a in addrs {
        match connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `fut`, or `None` if it takes longer than `d`.
pub async fn timeout<R: Runtime, F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut sleep = std::pin::pin!(R::sleep(d));
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Largest read through [`poll_read_zeroed`].
const ZEROED_READ_MAX: usize = 64 * 1024;

thread_local! {
    /// This thread's initialised read buffer for [`poll_read_zeroed`], zeroed once.
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; ZEROED_READ_MAX].into_boxed_slice());
}

/// [`Io::poll_read_buf`] for a reader that needs an initialised slice (a
/// `futures-io` `AsyncRead`): it reads into this thread's scratch buffer (as much as
/// `buf`'s spare capacity, at least 1 byte and at most 64 KiB) and appends what it
/// read. Zeroing the spare capacity before each read instead cost a `memset` of up
/// to 64 KiB per attempt, and the drive loop attempts a read at every wake-up; the
/// copy costs what was read. Neutral on the load benchmark's small messages (where
/// `memset` was 1.1-1.6% of glommio's samples and the copy takes about as much); what
/// it removes is the worst case, a connection whose buffer grew with a large body
/// zeroing 64 KiB at every wake-up for the rest of its life.
pub fn poll_read_zeroed(
    buf: &mut BytesMut,
    read: impl FnOnce(&mut [u8]) -> IoPoll<usize>,
) -> IoPoll<usize> {
    let room = (buf.capacity() - buf.len()).clamp(1, ZEROED_READ_MAX);
    READ_SCRATCH.with(|scratch| {
        // A reader never reads through this again from inside its own read; if one
        // did, it would get a buffer of its own rather than a panic.
        let Ok(mut s) = scratch.try_borrow_mut() else {
            let mut own = vec![0; room];
            return append_read(buf, &mut own, read);
        };
        append_read(buf, &mut s[..room], read)
    })
}

fn append_read(
    buf: &mut BytesMut,
    into: &mut [u8],
    read: impl FnOnce(&mut [u8]) -> IoPoll<usize>,
) -> IoPoll<usize> {
    let r = read(into);
    if let Poll::Ready(Ok(n)) = &r {
        buf.extend_from_slice(&into[..(*n).min(into.len())]);
    }
    r
}

/// One vectored write of `bufs[*i..]` (empty buffers skipped, written bytes consumed,
/// `*i` moved past finished buffers): `Ready(Ok(true))` once nothing is left to write,
/// `Ready(Ok(false))` after a write that made progress, `Pending` when the socket takes
/// nothing now.
pub fn poll_write_some<S: Io>(
    s: &mut S,
    bufs: &mut [bytes::Bytes],
    i: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    use bytes::Buf;
    while *i < bufs.len() && bufs[*i].is_empty() {
        *i += 1;
    }
    if *i == bufs.len() {
        return Poll::Ready(Ok(true));
    }
    let mut slices = [IoSlice::new(&[]); 16];
    let mut k = 0;
    for b in bufs[*i..].iter().take(16) {
        slices[k] = IoSlice::new(b);
        k += 1;
    }
    let mut n = match s.poll_write_vectored(cx, &slices[..k]) {
        Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        Poll::Ready(Ok(n)) => n,
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => return Poll::Pending,
    };
    while n > 0 && *i < bufs.len() {
        let b = &mut bufs[*i];
        let k = n.min(b.len());
        b.advance(k);
        n -= k;
        if b.is_empty() {
            *i += 1;
        }
    }
    Poll::Ready(Ok(false))
}

/// Write every buffer in order with as few (vectored) writes as possible; `bufs` is
/// empty afterwards, whatever the outcome.
pub async fn write_all_vectored<S: Io>(s: &mut S, bufs: &mut Vec<bytes::Bytes>) -> io::Result<()> {
    let mut i = 0;
    let r = loop {
        match poll_fn(|cx| poll_write_some(s, bufs, &mut i, cx)).await {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    bufs.clear();
    r
}

/// Write all of `data`.
pub async fn write_all<S: Io>(s: &mut S, data: &[u8]) -> io::Result<()> {
    let mut v = vec![bytes::Bytes::copy_from_slice(data)];
    write_all_vectored(s, &mut v).await
}

/// Shut down the write side.
pub async fn close<S: Io>(s: &mut S) -> io::Result<()> {
    poll_fn(|cx| s.poll_close(cx)).await
}

/// Read once into `buf` (reserving room first); `Ok(0)` is EOF.
pub async fn read_buf<S: Io>(s: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    poll_fn(|cx| s.poll_read_buf(cx, buf)).await
}

/// The process-wide "stop serving" signal, usable from any thread and any runtime.
#[derive(Debug, Default)]
pub struct Shutdown {
    set: AtomicBool,
    event: Event,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Arc<Shutdown> {
        Arc::default()
    }

    /// Fire it (idempotent).
    pub fn trigger(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    /// Whether it fired.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// A listener to poll alongside other work (one per connection, not per poll).
    pub fn listen(&self) -> ShutdownListener<'_> {
        ShutdownListener {
            listener: self.event.listen(),
            shutdown: self,
            registered: None,
        }
    }

    /// Resolve once it fired.
    pub async fn wait(&self) {
        let mut l = self.listen();
        poll_fn(|cx| l.poll(cx)).await
    }

    /// Block the calling thread for up to `d`; `true` if it fired.
    pub fn wait_blocking(&self, d: Duration) -> bool {
        let l = self.event.listen();
        if self.is_set() {
            return true;
        }
        let _ = l.wait_timeout(d);
        self.is_set()
    }
}

/// Waits for a [`Shutdown`].
///
/// The drive loop polls it on every wake-up of every connection; polling the
/// listener itself locks the event's list, which every worker thread shares. So it is
/// polled only when the task's waker changed: the listener keeps the waker it was
/// last polled with, and [`Shutdown::trigger`] sets the flag before it notifies.
#[derive(Debug)]
pub struct ShutdownListener<'a> {
    listener: EventListener,
    shutdown: &'a Shutdown,
    /// The waker the listener holds (since its last `Pending`).
    registered: Option<Waker>,
}

impl ShutdownListener<'_> {
    /// Ready once the signal fired.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.shutdown.is_set() {
                return Poll::Ready(());
            }
            if matches!(&self.registered, Some(w) if w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            match Pin::new(&mut self.listener).poll(cx) {
                Poll::Pending => {
                    self.registered = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                // notified: listen again (the flag is checked first)
                Poll::Ready(()) => {
                    self.listener = self.shutdown.event.listen();
                    self.registered = None;
                }
            }
        }
    }
}

/// Counts in-flight client connections, so that shutdown can wait for them.
#[derive(Debug, Default, Clone)]
pub struct Tasks(Arc<(AtomicUsize, Event)>);

/// Held by one in-flight connection.
#[derive(Debug)]
pub struct TaskGuard(Arc<(AtomicUsize, Event)>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0 .0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0 .1.notify(usize::MAX);
        }
    }
}

impl Tasks {
    /// Count one more connection until the guard drops.
    pub fn enter(&self) -> TaskGuard {
        self.0 .0.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.0.clone())
    }

    /// Connections in flight.
    pub fn len(&self) -> usize {
        self.0 .0.load(Ordering::SeqCst)
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolve once no connection is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let l = self.0 .1.listen();
            if self.is_empty() {
                return;
            }
            l.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most 3 bytes per write, across slices.
    #[derive(Default)]
    struct Trickle(Vec<u8>);

    impl Io for Trickle {
        fn poll_read_buf(&mut self, _: &mut Context<'_>, _: &mut BytesMut) -> IoPoll<usize> {
            Poll::Ready(Ok(0))
        }
        fn poll_write_vectored(
            &mut self,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> IoPoll<usize> {
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(3 - n);
                self.0.extend_from_slice(&b[..k]);
                n += k;
                if n == 3 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn poll_close(&mut self, _: &mut Context<'_>) -> IoPoll<()> {
            Poll::Ready(Ok(()))
        }
        fn idle_alive(&mut self) -> bool {
            true
        }
    }

    #[test]
    fn vectored_writes_survive_partial_writes_and_empty_buffers() {
        let mut s = Trickle::default();
        let mut bufs: Vec<bytes::Bytes> = ["", "ab", "", "cdefg", "", "h", ""]
            .into_iter()
            .map(bytes::Bytes::from)
            .collect();
        futures_lite::future::block_on(write_all_vectored(&mut s, &mut bufs)).unwrap();
        assert_eq!(s.0, b"abcdefgh");
        assert!(bufs.is_empty());
        // only empty buffers: nothing to write, no WriteZero
        let mut bufs = vec![bytes::Bytes::new(), bytes::Bytes::new()];
        futures_lite::future::block_on(write_all_vectored(&mut s, &mut bufs)).unwrap();
        assert_eq!(s.0, b"abcdefgh");
    }

    #[test]
    fn connect_first_resolves_names_only_and_takes_the_first_that_connects() {
        use futures_lite::future::block_on;
        use std::cell::RefCell;
        use std::net::SocketAddr;
        let a1: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let a2: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let tried = RefCell::new(Vec::new());
        // a name: resolved, tried in order, the first that connects wins
        let got = block_on(connect_first(
            "backend.local".into(),
            80,
            |h, p| async move {
                assert_eq!((h.as_str(), p), ("backend.local", 80));
                Ok(vec![a1, a2])
            },
            |a| {
                tried.borrow_mut().push(a);
                async move {
                    if a == a1 {
                        Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                    } else {
                        Ok(a)
                    }
                }
            },
        ));
        assert_eq!(got.unwrap(), a2);
        assert_eq!(*tried.borrow(), vec![a1, a2]);
        // an address: no resolver; every address failing gives the last error
        let got = block_on(connect_first(
            "10.0.0.1".into(),
            80,
            |_, _| async { panic!("an IP literal needs no resolver") },
            |_| async { Err::<SocketAddr, _>(io::Error::from(io::ErrorKind::TimedOut)) },
        ));
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // nothing to try: NotFound
        let got = block_on(connect_first(
            "nowhere".into(),
            80,
            |_, _| async { Ok(vec![]) },
            |a| async move { Ok::<_, io::Error>(a) },
        ));
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn zeroed_reads_append_only_what_was_read() {
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(b"xy");
        let r = poll_read_zeroed(&mut buf, |b| {
            assert_eq!(b.len(), 14, "the spare capacity");
            b[..3].copy_from_slice(b"abc");
            Poll::Ready(Ok(3))
        });
        assert!(matches!(r, Poll::Ready(Ok(3))));
        assert_eq!(&buf[..], b"xyabc");
        let r = poll_read_zeroed(&mut buf, |_| Poll::Pending);
        assert!(r.is_pending());
        assert_eq!(&buf[..], b"xyabc");
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_shutdown_listener_wakes_the_waker_it_was_last_polled_with() {
        let sd = Shutdown::new();
        let mut l = sd.listen();
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        // polled again with the same waker: still pending, still registered
        for _ in 0..3 {
            assert!(l.poll(&mut Context::from_waker(&wa)).is_pending());
        }
        // the task moved to another waker: that one must be woken, not the first
        assert!(l.poll(&mut Context::from_waker(&wb)).is_pending());
        assert!(l.poll(&mut Context::from_waker(&wb)).is_pending());
        sd.trigger();
        assert_eq!(b.0.load(Ordering::SeqCst), 1, "the current waker is woken");
        assert_eq!(a.0.load(Ordering::SeqCst), 0, "the replaced waker is not");
        assert!(l.poll(&mut Context::from_waker(&wb)).is_ready());
        // a listener made after the trigger is ready at once
        assert!(sd.listen().poll(&mut Context::from_waker(&wa)).is_ready());
    }
}
