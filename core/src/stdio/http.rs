//! The stdio bridge's HTTP server side, sans-IO: one client connection's bytes in,
//! [`Request`]s for the [`super::Bridge`] out; the bridge's outputs for the
//! connection's exchange in, response bytes out. Every status, deadline and byte of
//! framing the bridge's clients see is decided here; the frontend only moves bytes.
//!
//! # Driving a [`StdioConn`]
//!
//! - Read the socket into [`StdioConn::read_buf`] while it is `Some`, then
//!   [`StdioConn::handle_read`] with the count (`0`: end of stream).
//! - After every call, drain [`StdioConn::poll_event`]: on [`ConnEvent::Request`] give
//!   [`StdioConn::request`] to the bridge and the exchange id it returns to
//!   [`StdioConn::started`]; on [`ConnEvent::Gone`] tell the bridge the exchange's
//!   client is gone.
//! - Give each bridge output of the exchange to [`StdioConn::handle_output`] while
//!   [`StdioConn::wants_output`].
//! - Write [`StdioConn::transmit`], then [`StdioConn::advance`] by what was written.
//! - Sleep until [`StdioConn::poll_timeout`], then [`StdioConn::handle_timeout`].
//! - Close the socket once [`StdioConn::is_closed`].
//!
//! A call in the wrong state (`request` with no request ready, `started` twice) is a
//! driver bug: it panics in debug builds and is ignored in release builds.

use super::{BridgeOutput, ExchangeId, Request};
use crate::http::{
    parse_request, write_chunk, write_simple_response, write_stream_head, BodyDecoder, BodyKind,
    HttpLimits, Method, RequestHead, Version, LAST_CHUNK,
};
use crate::mcp::{write_error_body, ErrorCode};
use crate::{ClientId, ClientIdentity, IpNet};
use bytes::{Buf, Bytes, BytesMut};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of a pipelined next request kept while an exchange is answered; past it the
/// client is dropped (it sends faster than it lets itself be answered).
pub const MAX_PIPELINED: usize = 64 * 1024;

/// Response bytes queued for the client past which [`StdioConn::wants_output`] is
/// false: the frontend stops handing outputs over, its bounded queue for the exchange
/// fills, and the bridge ends the session of a client that does not read.
pub const OUT_HIGH_WATER: usize = 256 * 1024;

/// What bounds one client connection of the bridge.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Request head size and field count (431).
    pub http: HttpLimits,
    /// Largest request body (413).
    pub max_body: usize,
    /// From a request's first byte to its whole head (408).
    pub header: Duration,
    /// Between two reads of a request body (408).
    pub body_idle: Duration,
    /// A keep-alive connection with no request (closed quietly).
    pub idle: Duration,
    /// Response bytes queued without the client taking any (closed).
    pub send: Duration,
    /// Who a client is, for the per-client quotas (`--client-identity`).
    pub identity: ClientIdentity,
    /// Proxies whose forwarding headers are believed.
    pub trusted: Vec<IpNet>,
}

/// What the bridge sends one exchange: a [`BridgeOutput`] without the exchange id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeOut {
    /// A complete response (JSON body when non-empty); the exchange is over.
    Respond {
        /// HTTP status.
        status: u16,
        /// Extra header fields.
        headers: Vec<(&'static str, String)>,
        /// Body.
        body: Bytes,
    },
    /// A `200` SSE stream starts, with these extra header fields.
    Start(Vec<(&'static str, String)>),
    /// One framed SSE event.
    Event(Bytes),
    /// The stream ends.
    End,
}

impl BridgeOutput {
    /// The exchange this output is for, and what it tells the exchange; `Err(self)`
    /// for an output about children or logs.
    pub fn into_exchange(self) -> Result<(ExchangeId, ExchangeOut), BridgeOutput> {
        Ok(match self {
            BridgeOutput::Respond {
                exchange,
                status,
                headers,
                body,
            } => (
                exchange,
                ExchangeOut::Respond {
                    status,
                    headers,
                    body,
                },
            ),
            BridgeOutput::StartStream { exchange, headers } => {
                (exchange, ExchangeOut::Start(headers))
            }
            BridgeOutput::Event { exchange, data } => (exchange, ExchangeOut::Event(data)),
            BridgeOutput::EndStream { exchange } => (exchange, ExchangeOut::End),
            other => return Err(other),
        })
    }
}

/// What the driver must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// A whole request is ready: [`StdioConn::request`], then [`StdioConn::started`].
    Request,
    /// The client of this exchange is gone (closed, timed out, or refused): tell the
    /// bridge.
    Gone(ExchangeId),
    /// A request was refused here, before the bridge saw it (for the log).
    Rejected {
        /// HTTP status.
        status: u16,
        /// Why.
        reason: &'static str,
    },
}

#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) a request head; `since` is when its first byte came.
    Head { since: Option<Instant> },
    /// Reading a body; `last` is the last read that brought some of it.
    Body { dec: BodyDecoder, last: Instant },
    /// A whole request waits for the driver.
    Ready,
    /// The bridge has the request; no byte of its answer yet.
    Waiting(ExchangeId),
    /// An SSE stream is being sent.
    Streaming(ExchangeId),
    /// Send what is queued, then close.
    Closing,
    /// Done.
    Closed,
}

/// One client connection of the stdio bridge.
#[derive(Debug)]
pub struct StdioConn {
    lim: Arc<ConnLimits>,
    peer: Option<IpAddr>,
    state: State,
    inbuf: BytesMut,
    head: RequestHead,
    body: Vec<u8>,
    out: BytesMut,
    /// When the queued output last made progress (or was queued onto an empty queue).
    sent_at: Instant,
    /// When the connection last finished an exchange (or opened).
    idle_since: Instant,
    events: Vec<ConnEvent>,
}

impl StdioConn {
    /// A connection from `peer` accepted at `now`.
    pub fn new(lim: Arc<ConnLimits>, peer: Option<IpAddr>, now: Instant) -> StdioConn {
        StdioConn {
            lim,
            peer,
            state: State::Head { since: None },
            inbuf: BytesMut::with_capacity(4096),
            head: RequestHead::default(),
            body: Vec::new(),
            out: BytesMut::new(),
            sent_at: now,
            idle_since: now,
            events: Vec::new(),
        }
    }

    /// The buffer to read client bytes into (appending; reserve room first), or `None`
    /// when the connection takes no bytes now.
    pub fn read_buf(&mut self) -> Option<&mut BytesMut> {
        match self.state {
            State::Head { .. } | State::Body { .. } => Some(&mut self.inbuf),
            // read on while answering, to notice the client going away (pipelined
            // bytes are kept for the next request, bounded)
            State::Waiting(_) | State::Streaming(_) => Some(&mut self.inbuf),
            State::Ready | State::Closing | State::Closed => None,
        }
    }

    /// `n` bytes were appended to [`StdioConn::read_buf`]; `0` is the end of the
    /// client's stream.
    pub fn handle_read(&mut self, n: usize, now: Instant) {
        if n == 0 {
            self.close_now();
            return;
        }
        match self.state {
            State::Head { since: None } => self.state = State::Head { since: Some(now) },
            State::Body { ref mut last, .. } => *last = now,
            State::Waiting(_) | State::Streaming(_) if self.inbuf.len() > MAX_PIPELINED => {
                self.close_now();
                return;
            }
            _ => {}
        }
        self.advance_input(now);
    }

    /// The next thing the driver must act on.
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// Whether [`StdioConn::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The exchange being answered, if any.
    pub fn exchange(&self) -> Option<ExchangeId> {
        match self.state {
            State::Waiting(x) | State::Streaming(x) => Some(x),
            _ => None,
        }
    }

    /// The ready request, for [`super::Bridge::handle_request`].
    pub fn request(&self) -> Request<'_> {
        debug_assert!(
            matches!(self.state, State::Ready),
            "StdioConn::request with no request ready"
        );
        Request {
            method: self.head.method,
            path: self.head.path(),
            query: self.head.query(),
            session_id: self.head.header("mcp-session-id"),
            accept: self.head.header("accept"),
            body: &self.body,
            client: ClientId::of(&self.lim.identity, &self.lim.trusted, self.peer, &self.head),
        }
    }

    /// The bridge took the ready request as exchange `x`.
    pub fn started(&mut self, x: ExchangeId) {
        if !matches!(self.state, State::Ready) {
            debug_assert!(false, "StdioConn::started with no request ready");
            return;
        }
        self.body = Vec::new();
        self.state = State::Waiting(x);
    }

    /// The ready request cannot be given to the bridge: the frontend has no random
    /// bytes for a session id. `503` with JSON-RPC -32000, and close.
    pub fn no_randomness(&mut self, now: Instant) {
        self.refuse_and_close(
            503,
            ErrorCode::Server,
            "no randomness for a session id",
            now,
        );
    }

    /// Whether [`StdioConn::handle_output`] should be called now (the client takes
    /// its bytes).
    pub fn wants_output(&self) -> bool {
        self.out.len() < OUT_HIGH_WATER
            && matches!(self.state, State::Waiting(_) | State::Streaming(_))
    }

    /// One output of the bridge for this connection's exchange.
    pub fn handle_output(&mut self, o: ExchangeOut, now: Instant) {
        let (State::Waiting(x) | State::Streaming(x)) = self.state else {
            // the exchange was given up (client gone); the bridge knows
            return;
        };
        let (version, keep_alive) = (self.head.version, self.head.keep_alive);
        match o {
            ExchangeOut::Respond {
                status,
                headers,
                body,
            } => {
                if matches!(self.state, State::Streaming(_)) {
                    debug_assert!(false, "Respond after StartStream");
                    self.close_now();
                    return;
                }
                let extra: Vec<(&str, &[u8])> =
                    headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
                // RFC 9110 section 8.6: "a server MUST NOT send Content-Length in such
                // a response [to HEAD] unless its field value equals the decimal number
                // of octets that would have been sent in the content of a response if
                // the same request had used the GET method": the response as for GET,
                // then its body taken off again.
                let head_only = self.head.method == Method::Head;
                self.queue_with(now, |out| {
                    let start = out.len();
                    write_simple_response(
                        out,
                        status,
                        "application/json",
                        &extra,
                        &body,
                        version,
                        keep_alive,
                    );
                    if head_only && out[start..].ends_with(&body) {
                        out.truncate(out.len() - body.len());
                    }
                });
                self.exchange_done(keep_alive, now);
            }
            ExchangeOut::Start(headers) => {
                let extra: Vec<(&str, &[u8])> =
                    headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
                self.queue_with(now, |out| {
                    write_stream_head(out, "text/event-stream", &extra, version, keep_alive)
                });
                self.state = State::Streaming(x);
            }
            ExchangeOut::Event(data) => {
                if !matches!(self.state, State::Streaming(_)) {
                    return;
                }
                if version == Version::Http11 {
                    self.queue_with(now, |out| write_chunk(out, &data));
                } else {
                    self.queue_with(now, |out| out.extend_from_slice(&data));
                }
            }
            ExchangeOut::End => {
                if matches!(self.state, State::Streaming(_)) && version == Version::Http11 {
                    self.queue_with(now, |out| out.extend_from_slice(LAST_CHUNK));
                    self.exchange_done(keep_alive, now);
                } else {
                    // an HTTP/1.0 stream ends with the connection (or the bridge ended
                    // an exchange it never started: nothing to frame)
                    self.state = State::Closing;
                }
            }
        }
    }

    /// The bytes to write to the client.
    pub fn transmit(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of [`StdioConn::transmit`] were written.
    pub fn advance(&mut self, n: usize, now: Instant) {
        let n = n.min(self.out.len());
        self.out.advance(n);
        if n > 0 {
            self.sent_at = now;
        }
        if self.out.is_empty() && matches!(self.state, State::Closing) {
            self.state = State::Closed;
        }
    }

    /// When [`StdioConn::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let send = (!self.out.is_empty()).then(|| self.sent_at + self.lim.send);
        let read = match self.state {
            State::Head { since: Some(t) } => Some(t + self.lim.header),
            State::Head { since: None } if self.out.is_empty() => {
                Some(self.idle_since + self.lim.idle)
            }
            State::Body { last, .. } => Some(last + self.lim.body_idle),
            _ => None,
        };
        match (send, read) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed; a spurious call is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.out.is_empty() && now >= self.sent_at + self.lim.send {
            // "a client that stops reading is cut after --client-send-timeout"
            self.close_now();
            return;
        }
        match self.state {
            State::Head { since: Some(t) } if now >= t + self.lim.header => {
                self.refuse_and_close(408, ErrorCode::InvalidRequest, "request head timeout", now);
            }
            State::Head { since: None }
                if self.out.is_empty() && now >= self.idle_since + self.lim.idle =>
            {
                self.state = State::Closed;
            }
            State::Body { last, .. } if now >= last + self.lim.body_idle => {
                self.refuse_and_close(408, ErrorCode::InvalidRequest, "request body timeout", now);
            }
            _ => {}
        }
    }

    /// Whether the connection is over: close the socket.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Queue output built by `f`, restarting the send clock if the queue was empty.
    fn queue_with(&mut self, now: Instant, f: impl FnOnce(&mut BytesMut)) {
        if self.out.is_empty() {
            self.sent_at = now;
        }
        f(&mut self.out);
    }

    /// The exchange's answer is complete.
    fn exchange_done(&mut self, keep_alive: bool, now: Instant) {
        if keep_alive {
            self.idle_since = now;
            self.state = State::Head { since: None };
            self.advance_input(now);
        } else {
            self.state = State::Closing;
        }
    }

    /// The bridge gave the exchange up without a last output (it ended the session of
    /// a client that did not keep up with its stream): close at once, unsent bytes
    /// dropped. The bridge knows, so nothing is reported.
    pub fn exchange_dropped(&mut self) {
        if self.exchange().is_some() {
            self.out.clear();
            self.state = State::Closed;
        }
    }

    /// Close at once (unsent bytes dropped); a live exchange is reported gone.
    fn close_now(&mut self) {
        if let State::Waiting(x) | State::Streaming(x) = self.state {
            self.events.push(ConnEvent::Gone(x));
        }
        self.out.clear();
        self.state = State::Closed;
    }

    /// Answer with an error (JSON-RPC body, id `null`: the request was never read as
    /// JSON-RPC) and close after it is sent.
    fn refuse_and_close(
        &mut self,
        status: u16,
        code: ErrorCode,
        reason: &'static str,
        now: Instant,
    ) {
        let mut body = BytesMut::new();
        write_error_body(&mut body, None, code, reason);
        let version = self.head.version;
        self.queue_with(now, |out| {
            write_simple_response(out, status, "application/json", &[], &body, version, false)
        });
        self.events.push(ConnEvent::Rejected { status, reason });
        self.inbuf.clear();
        self.state = State::Closing;
    }

    /// `413`: the body is over `max_body` (declared, or as it arrives chunked).
    fn body_too_large(&mut self, now: Instant) {
        self.refuse_and_close(
            413,
            ErrorCode::InvalidRequest,
            "request body too large",
            now,
        );
    }

    /// Parse what was read as far as the state allows.
    fn advance_input(&mut self, now: Instant) {
        loop {
            match &mut self.state {
                State::Head { since } => {
                    if self.inbuf.is_empty() {
                        return;
                    }
                    since.get_or_insert(now);
                    match parse_request(&mut self.inbuf, &self.lim.http, &mut self.head) {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => {
                            let reason = e.reason();
                            self.refuse_and_close(
                                e.status(),
                                ErrorCode::InvalidRequest,
                                reason,
                                now,
                            );
                            return;
                        }
                    }
                    if let BodyKind::Length(n) = self.head.body {
                        if n > self.lim.max_body as u64 {
                            return self.body_too_large(now);
                        }
                    }
                    // RFC 9110 section 10.1.1: "A server that receives a 100-continue
                    // expectation in an HTTP/1.1 (or later) request ... MAY send a 100
                    // (Continue) interim response"; the client would otherwise wait
                    // before it sends the body.
                    if self.head.expect_continue && self.head.body != BodyKind::Empty {
                        self.queue_with(now, |out| {
                            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n")
                        });
                    }
                    self.body.clear();
                    self.state = State::Body {
                        dec: BodyDecoder::new(self.head.body, 4096),
                        last: now,
                    };
                }
                State::Body { dec, .. } => {
                    let (max, body) = (self.lim.max_body, &mut self.body);
                    let mut too_big = false;
                    let used = match dec.decode(&self.inbuf, &mut |d| {
                        if body.len() + d.len() > max {
                            too_big = true;
                        } else {
                            body.extend_from_slice(d);
                        }
                    }) {
                        Ok(n) => n,
                        Err(e) => {
                            let reason = e.reason();
                            self.refuse_and_close(400, ErrorCode::InvalidRequest, reason, now);
                            return;
                        }
                    };
                    let done = dec.is_done();
                    self.inbuf.advance(used);
                    if too_big {
                        return self.body_too_large(now);
                    }
                    if !done {
                        return;
                    }
                    self.state = State::Ready;
                    self.events.push(ConnEvent::Request);
                    return;
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            http: HttpLimits::default(),
            max_body: 1000,
            header: Duration::from_secs(10),
            body_idle: Duration::from_secs(20),
            idle: Duration::from_secs(30),
            send: Duration::from_secs(40),
            identity: ClientIdentity::Peer,
            trusted: Vec::new(),
        })
    }

    fn feed(c: &mut StdioConn, bytes: &[u8], now: Instant) {
        let b = c.read_buf().expect("takes bytes");
        b.extend_from_slice(bytes);
        c.handle_read(bytes.len(), now);
    }

    fn sent(c: &mut StdioConn, now: Instant) -> String {
        let t = String::from_utf8_lossy(c.transmit()).into_owned();
        let n = c.transmit().len();
        c.advance(n, now);
        t
    }

    const POST: &[u8] =
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nMcp-Session-Id: s\r\n\r\n{}";

    /// A new connection that received `request` whole, handed it to the bridge, and
    /// has it under way as exchange `x`.
    fn exchange_started(request: &[u8], x: u64, t0: Instant) -> StdioConn {
        let mut c = StdioConn::new(lim(), None, t0);
        feed(&mut c, request, t0);
        assert_eq!(c.poll_event(), Some(ConnEvent::Request));
        c.started(ExchangeId(x));
        c
    }

    #[test]
    fn split_bytes_make_one_request_and_a_json_answer() {
        let t0 = Instant::now();
        let mut c = StdioConn::new(lim(), None, t0);
        for b in POST.chunks(3) {
            feed(&mut c, b, t0);
        }
        assert_eq!(c.poll_event(), Some(ConnEvent::Request));
        let r = c.request();
        assert_eq!(
            (r.path, r.body, r.session_id),
            (&b"/mcp"[..], &b"{}"[..], Some(&b"s"[..]))
        );
        c.started(ExchangeId(7));
        assert!(c.wants_output());
        c.handle_output(
            ExchangeOut::Respond {
                status: 202,
                headers: vec![],
                body: Bytes::new(),
            },
            t0,
        );
        let t = sent(&mut c, t0);
        assert!(t.starts_with("HTTP/1.1 202 Accepted\r\n"), "{t}");
        assert!(!c.is_closed(), "keep-alive");
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn streams_are_chunked_and_end_with_the_last_chunk() {
        let t0 = Instant::now();
        let mut c = exchange_started(POST, 1, t0);
        c.handle_output(ExchangeOut::Start(vec![("Mcp-Session-Id", "s".into())]), t0);
        c.handle_output(ExchangeOut::Event(Bytes::from_static(b"data: {}\n\n")), t0);
        c.handle_output(ExchangeOut::End, t0);
        let t = sent(&mut c, t0);
        assert!(t.contains("Transfer-Encoding: chunked\r\n"), "{t}");
        assert!(
            t.ends_with("\r\n\r\na\r\ndata: {}\n\n\r\n0\r\n\r\n"),
            "{t:?}"
        );
        // a pipelined request waits its turn, then is parsed
        feed(&mut c, POST, t0);
        assert_eq!(c.poll_event(), Some(ConnEvent::Request));
    }

    #[test]
    fn limits_answer_413_408_and_431_with_jsonrpc_bodies() {
        let t0 = Instant::now();
        let mut c = StdioConn::new(lim(), None, t0);
        feed(
            &mut c,
            b"POST /mcp HTTP/1.1\r\nContent-Length: 5000\r\n\r\n",
            t0,
        );
        assert_eq!(
            c.poll_event(),
            Some(ConnEvent::Rejected {
                status: 413,
                reason: "request body too large"
            })
        );
        let t = sent(&mut c, t0);
        assert!(
            t.starts_with("HTTP/1.1 413 ") && t.contains("-32600"),
            "{t}"
        );
        assert!(c.is_closed());

        // a chunked body over the bound
        let mut c = StdioConn::new(lim(), None, t0);
        feed(
            &mut c,
            b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            t0,
        );
        let big = format!("{:x}\r\n{}\r\n", 1200, "x".repeat(1200));
        feed(&mut c, big.as_bytes(), t0);
        assert!(sent(&mut c, t0).starts_with("HTTP/1.1 413 "));

        // a head that stops half-way: 408 at the header timeout, not before
        let mut c = StdioConn::new(lim(), None, t0);
        feed(&mut c, b"POST /mcp HTTP/1.1\r\nHo", t0);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        c.handle_timeout(t0 + Duration::from_secs(9));
        assert!(c.transmit().is_empty());
        c.handle_timeout(t0 + Duration::from_secs(10));
        assert!(sent(&mut c, t0).starts_with("HTTP/1.1 408 "));

        // a body that stops: 408 at body_idle after the last read
        let mut c = StdioConn::new(lim(), None, t0);
        feed(
            &mut c,
            b"POST /mcp HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",
            t0,
        );
        let t1 = t0 + Duration::from_secs(15);
        feed(&mut c, b"\"", t1);
        assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_secs(20)));
        c.handle_timeout(t1 + Duration::from_secs(20));
        assert!(sent(&mut c, t1).contains("request body timeout"));

        // an oversized head
        let mut c = StdioConn::new(lim(), None, t0);
        let long = format!("GET /mcp HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(40_000));
        feed(&mut c, long.as_bytes(), t0);
        assert!(sent(&mut c, t0).starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn a_client_gone_mid_exchange_is_reported_once() {
        let t0 = Instant::now();
        let mut c = exchange_started(POST, 3, t0);
        c.handle_read(0, t0);
        assert_eq!(c.poll_event(), Some(ConnEvent::Gone(ExchangeId(3))));
        assert_eq!(c.poll_event(), None);
        assert!(c.is_closed());
        // outputs after that are ignored
        c.handle_output(ExchangeOut::End, t0);
        assert!(c.transmit().is_empty());
    }

    #[test]
    fn an_exchange_the_bridge_dropped_closes_without_a_report() {
        let t0 = Instant::now();
        let mut c = exchange_started(POST, 8, t0);
        c.handle_output(ExchangeOut::Start(vec![]), t0);
        c.exchange_dropped();
        assert!(c.is_closed() && c.transmit().is_empty());
        assert_eq!(c.poll_event(), None, "the bridge dropped it: no Gone");
    }

    #[test]
    fn a_client_that_does_not_read_is_cut_at_the_send_timeout() {
        let t0 = Instant::now();
        let mut c = exchange_started(POST, 4, t0);
        c.handle_output(ExchangeOut::Start(vec![]), t0);
        for _ in 0..300 {
            if !c.wants_output() {
                break;
            }
            c.handle_output(ExchangeOut::Event(Bytes::from(vec![b'x'; 4096])), t0);
        }
        assert!(!c.wants_output(), "the queue is bounded");
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(40)));
        c.handle_timeout(t0 + Duration::from_secs(40));
        assert_eq!(c.poll_event(), Some(ConnEvent::Gone(ExchangeId(4))));
        assert!(c.is_closed());
    }

    #[test]
    fn head_requests_get_no_body_and_http10_streams_close() {
        let t0 = Instant::now();
        let mut c = exchange_started(b"HEAD /mcp HTTP/1.1\r\n\r\n", 5, t0);
        c.handle_output(
            ExchangeOut::Respond {
                status: 405,
                headers: vec![],
                body: Bytes::from_static(b"{\"x\":1}"),
            },
            t0,
        );
        let t = sent(&mut c, t0);
        assert!(
            t.starts_with("HTTP/1.1 405 ") && t.ends_with("\r\n\r\n"),
            "{t}"
        );
        assert!(!t.contains('{'), "a HEAD response has no body: {t}");
        assert!(
            t.contains("Content-Length: 7\r\n"),
            "the length GET would have had: {t}"
        );

        let mut c = exchange_started(b"GET /sse HTTP/1.0\r\n\r\n", 6, t0);
        c.handle_output(ExchangeOut::Start(vec![]), t0);
        c.handle_output(ExchangeOut::Event(Bytes::from_static(b"data: 1\n\n")), t0);
        c.handle_output(ExchangeOut::End, t0);
        let t = sent(&mut c, t0);
        assert!(t.ends_with("\r\n\r\ndata: 1\n\n"), "{t:?}");
        assert!(c.is_closed());
    }
}
