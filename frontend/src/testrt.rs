//! A [`Runtime`] for in-process tests of the drive loop: a virtual clock the test
//! advances, in-memory byte pipes for the client and the backends, timers and sleeps
//! on the virtual clock. Futures are polled by hand (no executor): the test polls the
//! [`drive`](crate::drive::drive) future, moves bytes on the other ends of the pipes,
//! advances time and polls again. Everything is thread-local: each test runs on its
//! own thread.

use crate::rt::{Child, Io, IoPoll, PipeRead, PipeWrite, RemoteStore, Runtime, Timer};
use bytes::BytesMut;
use mcp_router_core::{StoreOp, StoreReply};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    /// An hour ahead of the system clock: a deadline the drive loop took from the
    /// system clock instead of [`Runtime::now`] is then long past on the virtual clock,
    /// and a test that expects nothing before the timeout fails.
    static BASE: Instant = Instant::now() + Duration::from_secs(3600);
    static OFFSET: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    static BACKENDS: RefCell<VecDeque<Backend>> = const { RefCell::new(VecDeque::new()) };
}

/// The virtual clock: this thread's base instant plus what the test advanced.
pub fn now() -> Instant {
    BASE.with(|b| *b) + OFFSET.with(Cell::get)
}

/// Move the virtual clock forward by `d`.
pub fn advance(d: Duration) {
    OFFSET.with(|o| o.set(o.get() + d));
}

/// The virtual time passed since the clock's base.
pub fn elapsed() -> Duration {
    OFFSET.with(Cell::get)
}

/// A connection the drive loop opened: the address it asked for, and the backend's
/// end of the pipe.
pub struct Backend {
    pub host: String,
    pub port: u16,
    pub end: End,
}

/// The next connection the drive loop opened (oldest first), if any.
pub fn accept_backend() -> Option<Backend> {
    BACKENDS.with(|b| b.borrow_mut().pop_front())
}

/// One direction of a pipe.
#[derive(Default)]
struct Chan {
    data: VecDeque<u8>,
    /// The writer shut its side down (or dropped its end): EOF after `data`.
    closed: bool,
    /// The reader dropped its end: writes fail.
    reader_gone: bool,
    reader: Option<Waker>,
}

impl Chan {
    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// One end of an in-memory duplex byte stream: what one end writes, the other reads.
pub struct End {
    rx: Rc<RefCell<Chan>>,
    tx: Rc<RefCell<Chan>>,
}

/// Two connected ends.
pub fn pipe() -> (End, End) {
    let (a, b): (Rc<RefCell<Chan>>, Rc<RefCell<Chan>>) = (Rc::default(), Rc::default());
    (
        End {
            rx: a.clone(),
            tx: b.clone(),
        },
        End { rx: b, tx: a },
    )
}

impl End {
    /// Write `data` for the other end (the test side).
    pub fn send(&self, data: &[u8]) {
        let mut tx = self.tx.borrow_mut();
        assert!(!tx.closed, "write after close");
        tx.data.extend(data);
        tx.wake();
    }

    /// Everything the other end wrote so far, taken.
    pub fn take(&self) -> Vec<u8> {
        self.rx.borrow_mut().data.drain(..).collect()
    }

    /// Whether the other end closed its write side and everything was read.
    pub fn at_eof(&self) -> bool {
        let rx = self.rx.borrow();
        rx.closed && rx.data.is_empty()
    }
}

impl Drop for End {
    fn drop(&mut self) {
        let mut tx = self.tx.borrow_mut();
        tx.closed = true;
        tx.wake();
        self.rx.borrow_mut().reader_gone = true;
    }
}

impl Io for End {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> IoPoll<usize> {
        let mut rx = self.rx.borrow_mut();
        if !rx.data.is_empty() {
            let n = (buf.capacity() - buf.len()).max(1).min(rx.data.len());
            let chunk: Vec<u8> = rx.data.drain(..n).collect();
            buf.extend_from_slice(&chunk);
            return Poll::Ready(Ok(n));
        }
        if rx.closed {
            return Poll::Ready(Ok(0));
        }
        rx.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_write_vectored(&mut self, _: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> IoPoll<usize> {
        let mut tx = self.tx.borrow_mut();
        if tx.closed || tx.reader_gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut n = 0;
        for b in bufs {
            tx.data.extend(b.iter());
            n += b.len();
        }
        tx.wake();
        Poll::Ready(Ok(n))
    }

    fn poll_close(&mut self, _: &mut Context<'_>) -> IoPoll<()> {
        let mut tx = self.tx.borrow_mut();
        tx.closed = true;
        tx.wake();
        Poll::Ready(Ok(()))
    }

    fn idle_alive(&mut self) -> bool {
        let rx = self.rx.borrow();
        rx.data.is_empty() && !rx.closed
    }
}

/// A deadline on the virtual clock: ready once the test advanced past it (the test
/// polls again after advancing; no waker is kept).
#[derive(Debug, Default)]
pub struct VTimer(Option<Instant>);

impl Timer for VTimer {
    fn fire_at(&mut self, at: Instant) {
        self.0 = Some(at);
    }

    fn poll_fired(&mut self, _: &mut Context<'_>) -> Poll<()> {
        match self.0 {
            Some(at) if now() >= at => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }
}

/// A sleep on the virtual clock.
#[derive(Debug)]
pub struct VSleep(Instant);

impl Future for VSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if now() >= self.0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// No remote store: every op is unavailable (the tests use the embedded store).
#[derive(Debug)]
pub struct NoStore;

impl RemoteStore for NoStore {
    async fn execute(&self, _: &StoreOp) -> StoreReply {
        StoreReply::Unavailable
    }
    async fn ping(&self) -> bool {
        false
    }
}

/// No child processes: a pipe that fails.
#[derive(Debug)]
pub struct NoPipe;

impl PipeRead for NoPipe {
    fn poll_read_buf(&mut self, _: &mut Context<'_>, _: &mut BytesMut) -> IoPoll<usize> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

impl PipeWrite for NoPipe {
    fn poll_write(&mut self, _: &mut Context<'_>, _: &[u8]) -> IoPoll<usize> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

/// The test runtime.
#[derive(Debug)]
pub struct TestRt;

impl Runtime for TestRt {
    type Stream = End;
    type Connect = std::future::Ready<io::Result<End>>;
    type Timer = VTimer;
    type Sleep = VSleep;
    type Remote = NoStore;
    type ChildIn = NoPipe;
    type ChildOut = NoPipe;
    type ChildExit = std::future::Pending<io::Result<std::process::ExitStatus>>;

    /// Connects at once: the backend's end is queued for [`accept_backend`].
    fn connect(host: String, port: u16) -> Self::Connect {
        let (client, end) = pipe();
        BACKENDS.with(|b| b.borrow_mut().push_back(Backend { host, port, end }));
        std::future::ready(Ok(client))
    }

    fn spawn_child(_: std::process::Command) -> io::Result<Child<TestRt>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the test runtime runs no child process",
        ))
    }

    fn timer() -> VTimer {
        VTimer::default()
    }

    fn sleep(d: Duration) -> VSleep {
        VSleep(now() + d)
    }

    fn now() -> Instant {
        now()
    }
}

/// Poll `fut` by hand (a no-op waker: the test polls again after each change) until
/// it is pending; `true` once it completed.
pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    fut.poll(&mut cx).is_ready()
}

#[cfg(test)]
mod drive_tests {
    use super::*;
    use crate::drive::{drive, Frontend};
    use crate::rt::Shutdown;
    use crate::Shared;

    fn frontend(extra: &[&str]) -> Frontend<TestRt> {
        let mut args = vec![
            "mcp-router",
            "--backend",
            "b0=http://127.0.0.1:9/mcp",
            "--backend",
            "b1=http://127.0.0.1:10/mcp",
        ];
        args.extend_from_slice(extra);
        let cli = <crate::Cli as clap::Parser>::try_parse_from(args).expect("flags parse");
        let settings = cli.settings().expect("settings are valid");
        Frontend::new(Shared::new(&settings).expect("shared state"), None)
    }

    fn peer() -> std::net::SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn post(session: Option<&str>, body: &str) -> Vec<u8> {
        let sid = session
            .map(|s| format!("Mcp-Session-Id: {s}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\n{sid}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn response(session: Option<&str>, body: &str) -> Vec<u8> {
        let sid = session
            .map(|s| format!("Mcp-Session-Id: {s}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{sid}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
        let head = msg.split("\r\n\r\n").next()?;
        head.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    const INIT_OK: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-03-26","capabilities":{},"serverInfo":{"name":"b","version":"1"}}}"#;
    const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    const LIST_OK: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}"#;

    /// Where the next request the drive loop sent upstream arrived: on `kept` (an
    /// upstream connection still open, or back from the pool) or on a new connection.
    fn upstream_request(kept: &mut Vec<Backend>) -> (u16, String) {
        while let Some(b) = accept_backend() {
            assert_eq!(b.host, "127.0.0.1", "connects to a configured backend");
            kept.push(b);
        }
        let mut got = None;
        for b in kept.iter() {
            let bytes = b.end.take();
            if !bytes.is_empty() {
                assert!(got.is_none(), "the request went to two connections");
                got = Some((b.port, String::from_utf8(bytes).unwrap()));
            }
        }
        got.expect("a request reached a backend")
    }

    /// Backend connection `port` (one of `kept`) sends `resp`; after the drive loop
    /// ran, what the client received.
    fn backend_answers<F: Future + ?Sized>(
        fut: Pin<&mut F>,
        client: &End,
        kept: &[Backend],
        port: u16,
        resp: &[u8],
    ) -> String {
        let b = kept.iter().find(|b| b.port == port).unwrap();
        b.end.send(resp);
        assert!(!poll_once(fut));
        String::from_utf8(client.take()).unwrap()
    }

    /// An initialize is forwarded, its session id reaches the client, and the next
    /// request of the session goes to the same backend.
    #[test]
    fn initialize_then_session_request_reach_the_same_backend() {
        let fe = frontend(&[]);
        let shutdown = Shutdown::new();
        let (client, server) = pipe();
        let mut fut = Box::pin(drive(&fe, server, peer(), &shutdown));
        let mut backends = Vec::new();

        client.send(&post(None, INIT));
        assert!(!poll_once(fut.as_mut()));
        let (port, req) = upstream_request(&mut backends);
        assert!(req.starts_with("POST /mcp"), "forwarded: {req:?}");
        assert!(req.ends_with(INIT), "the body follows the head: {req:?}");
        assert!(client.take().is_empty(), "no answer before the backend's");

        let init_ok = response(Some("up-1"), INIT_OK);
        let answer = backend_answers(fut.as_mut(), &client, &backends, port, &init_ok);
        assert!(answer.starts_with("HTTP/1.1 200"), "answer: {answer:?}");
        assert!(answer.ends_with(INIT_OK), "answer: {answer:?}");
        let sid = header(&answer, "mcp-session-id")
            .expect("the session id reaches the client")
            .to_string();

        client.send(&post(Some(&sid), LIST));
        assert!(!poll_once(fut.as_mut()));
        let (port2, req2) = upstream_request(&mut backends);
        assert_eq!(port2, port, "the session's request goes to its backend");
        assert!(req2.starts_with("POST /mcp"), "forwarded: {req2:?}");
        assert_eq!(
            header(&req2, "mcp-session-id"),
            Some("up-1"),
            "the backend sees its own session id: {req2:?}"
        );
        let list_ok = response(None, LIST_OK);
        let answer = backend_answers(fut.as_mut(), &client, &backends, port, &list_ok);
        assert!(answer.starts_with("HTTP/1.1 200"), "answer: {answer:?}");
        assert!(answer.ends_with(LIST_OK), "answer: {answer:?}");

        drop(client);
        assert!(
            poll_once(fut.as_mut()),
            "the client's EOF ends the drive loop"
        );
    }

    /// Half a request head gets 408 once the header timeout passes on the virtual
    /// clock, not before.
    #[test]
    fn half_a_head_gets_408_at_the_header_timeout() {
        let fe = frontend(&["--header-timeout", "5s", "--client-idle-timeout", "100s"]);
        let shutdown = Shutdown::new();
        let (client, server) = pipe();
        let mut fut = Box::pin(drive(&fe, server, peer(), &shutdown));

        client.send(b"POST /mcp HTTP/1.1\r\nHost: loc");
        assert!(!poll_once(fut.as_mut()));
        advance(Duration::from_millis(4_999));
        assert!(!poll_once(fut.as_mut()), "still waiting at 4.999s");
        assert!(client.take().is_empty(), "no answer before the timeout");
        assert!(!client.at_eof());

        advance(Duration::from_millis(2));
        poll_once(fut.as_mut());
        let answer = String::from_utf8(client.take()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
        assert!(accept_backend().is_none(), "nothing reached a backend");
    }

    /// A keep-alive client connection left idle after a request is closed at the
    /// client idle timeout on the virtual clock, not before.
    #[test]
    fn idle_keep_alive_client_is_closed_at_the_idle_timeout() {
        let fe = frontend(&["--client-idle-timeout", "30s", "--header-timeout", "100s"]);
        let shutdown = Shutdown::new();
        let (client, server) = pipe();
        let mut fut = Box::pin(drive(&fe, server, peer(), &shutdown));
        let mut backends = Vec::new();

        client.send(&post(None, INIT));
        assert!(!poll_once(fut.as_mut()));
        let (port, _) = upstream_request(&mut backends);
        let init_ok = response(Some("up-1"), INIT_OK);
        let answer = backend_answers(fut.as_mut(), &client, &backends, port, &init_ok);
        assert!(answer.starts_with("HTTP/1.1 200"), "answer: {answer:?}");
        let t0 = elapsed();

        advance(Duration::from_millis(29_999));
        assert!(!poll_once(fut.as_mut()), "still open at 29.999s idle");
        assert!(!client.at_eof(), "not closed before the idle timeout");

        advance(Duration::from_millis(2));
        assert!(
            poll_once(fut.as_mut()),
            "the drive loop ends at the idle timeout"
        );
        assert!(client.at_eof(), "the client reads EOF");
        assert!(
            client.take().is_empty(),
            "an idle close sends nothing (no 408 for an idle connection)"
        );
        assert_eq!(elapsed() - t0, Duration::from_millis(30_001));
    }
}
