//! Request and response heads: parsing, validation and re-serialization for forwarding.

use super::{BodyKind, HttpLimits};
use bytes::{Bytes, BytesMut};
use std::net::IpAddr;

/// HTTP version of a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    #[default]
    Http11,
}

/// Request method, with the ones routing cares about spelled out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// GET
    #[default]
    Get,
    /// POST
    Post,
    /// DELETE
    Delete,
    /// HEAD
    Head,
    /// OPTIONS
    Options,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// Any other token (the raw text is in [`RequestHead::method_str`]).
    Other,
}

/// Why a head was refused. [`HeadError::status`] is the HTTP status to answer with;
/// the connection is always closed after such an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The head is longer than `max_head`, or has more than `max_headers` fields (431).
    TooLarge,
    /// Malformed syntax, obsolete line folding, invalid bytes in a header name or
    /// value, a bad request line (400). The text says what.
    Invalid(&'static str),
    /// Content-Length together with Transfer-Encoding, differing duplicate
    /// Content-Length values, a non-numeric Content-Length (400).
    BadFraming(&'static str),
    /// A Transfer-Encoding other than a final `chunked` (501 for requests, per RFC 9112
    /// section 6.1; for responses the caller answers 502).
    UnsupportedTransferEncoding,
    /// HTTP version other than 1.0 / 1.1 (505).
    UnsupportedVersion,
}

impl HeadError {
    /// The status to answer a *request* with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Invalid(_) | HeadError::BadFraming(_) => 400,
            HeadError::UnsupportedTransferEncoding => 501,
            HeadError::UnsupportedVersion => 505,
        }
    }
    /// A short human-readable reason, for logs and error bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::TooLarge => "request head too large",
            HeadError::Invalid(s) | HeadError::BadFraming(s) => s,
            HeadError::UnsupportedTransferEncoding => "unsupported transfer-encoding",
            HeadError::UnsupportedVersion => "unsupported HTTP version",
        }
    }
}

/// A header field as byte ranges into the head's raw bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// A parsed request head. Reused across requests of a connection: parsing into an
/// existing value keeps its field vector's capacity, so steady-state parsing does not
/// allocate.
#[derive(Debug, Default)]
pub struct RequestHead {
    raw: Bytes,
    method_range: (u32, u32),
    target: (u32, u32),
    fields: Vec<Field>,
    /// The method.
    pub method: Method,
    /// The HTTP version of the request line.
    pub version: Version,
    /// How the body is framed: `Empty`, `Length` or `Chunked` (never `Close`).
    pub body: BodyKind,
    /// Whether the client allows the connection to stay open after this exchange
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

impl Default for BodyKind {
    fn default() -> Self {
        BodyKind::Empty
    }
}

impl RequestHead {
    /// The exact bytes of the head as received (request line through CRLFCRLF).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
    /// Method token as sent.
    pub fn method_str(&self) -> &[u8] {
        todo!()
    }
    /// Request target as sent (origin-form: path and optional query).
    pub fn target(&self) -> &[u8] {
        todo!()
    }
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &[u8] {
        todo!()
    }
    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&[u8]> {
        todo!()
    }
    /// First value of a header, name matched case-insensitively. `name` is lower-case.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let _ = name;
        todo!()
    }
    /// All fields in order, as (name, value) with names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        std::iter::empty()
    }
}

/// A parsed response head, reused like [`RequestHead`].
#[derive(Debug, Default)]
pub struct ResponseHead {
    raw: Bytes,
    reason: (u32, u32),
    fields: Vec<Field>,
    /// Status code.
    pub status: u16,
    /// Version of the status line.
    pub version: Version,
    /// How the body is framed, given the request method and the status.
    pub body: BodyKind,
    /// Whether the server allows the connection to be reused after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// The exact bytes of the head as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
    /// Reason phrase as sent.
    pub fn reason(&self) -> &[u8] {
        todo!()
    }
    /// First value of a header, name matched case-insensitively. `name` is lower-case.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let _ = name;
        todo!()
    }
    /// All fields in order.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        std::iter::empty()
    }
    /// `Content-Type` is `text/event-stream` (parameters ignored, case-insensitive).
    pub fn is_event_stream(&self) -> bool {
        todo!()
    }
    /// An interim 1xx response (other than 101): another head follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Try to parse a request head at the start of `buf`.
///
/// - `Ok(false)`: incomplete; `buf` untouched. (If `buf` already holds more than
///   `limits.max_head` bytes without a complete head, that is `Err(TooLarge)` instead.)
/// - `Ok(true)`: complete; the head bytes were split off the front of `buf` into
///   `head.raw` and every field of `head` describes the new request.
/// - `Err(e)`: the request must be refused with `e.status()` and the connection closed.
///
/// Validation: methods and header names are tokens; header values hold no CR, LF or NUL;
/// obsolete line folding is refused; Content-Length must be digits only and duplicates
/// must agree; Content-Length with Transfer-Encoding is refused (request smuggling);
/// Transfer-Encoding must be exactly `chunked` (any case, several comma-separated or
/// repeated fields allowed only if the final coding is chunked and no other coding is
/// present); HTTP/1.0 with Transfer-Encoding is refused. Leading empty lines (CRLF)
/// before the request line are skipped (RFC 9112 section 2.2).
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &HttpLimits,
    head: &mut RequestHead,
) -> Result<bool, HeadError> {
    let _ = (buf, limits, head);
    todo!()
}

/// Try to parse a response head at the start of `buf`; same contract as
/// [`parse_request`]. `request_method` decides the body framing: a response to HEAD,
/// and 1xx, 204 and 304 responses, have `BodyKind::Empty`; otherwise chunked, then
/// Content-Length, then `Close`. Obsolete line folding is refused.
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &HttpLimits,
    request_method: Method,
    head: &mut ResponseHead,
) -> Result<bool, HeadError> {
    let _ = (buf, limits, request_method, head);
    todo!()
}

/// What a forwarded request head must say that the client's did not.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    /// Value for `Host` (the backend's authority, e.g. `10.0.0.5:8080`).
    pub host: &'a [u8],
    /// Prefix prepended to the request target (the backend's base path without a
    /// trailing slash; empty for none).
    pub path_prefix: &'a [u8],
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    /// `http` or `https`: the scheme the client used, sent as `X-Forwarded-Proto`.
    pub proto: &'a str,
}

/// Serialize `head` for the backend into `out`: `METHOD prefix+target HTTP/1.1`, every
/// field except hop-by-hop ones (`Connection` and the fields it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Expect`), and
/// except `Host`, `Content-Length`, `X-Forwarded-Proto` which are rewritten. Then:
/// `Host: <fwd.host>`, `X-Forwarded-For: <existing values>, <client ip>`,
/// `X-Forwarded-Proto`, `X-Forwarded-Host: <client's Host>` when the client sent one,
/// and the framing field: `Content-Length: n` or `Transfer-Encoding: chunked` as
/// `head.body` says (nothing for `Empty`). The upstream connection stays keep-alive
/// (HTTP/1.1 default), so no `Connection` field is written.
pub fn write_request_head(out: &mut BytesMut, head: &RequestHead, fwd: &Forward<'_>) {
    let _ = (out, head, fwd);
    todo!()
}

/// Serialize `head` for the client into `out`: `HTTP/1.1 <status> <reason>`, every
/// field except hop-by-hop ones (as above) and except `Content-Length`, then the
/// framing: `body` is the framing the router will send the body with (`Length(n)` ->
/// `Content-Length: n`; `Chunked` -> `Transfer-Encoding: chunked`; `Close`/`Empty` ->
/// nothing, except that an `Empty` body of a status that may carry one (not 1xx, 204,
/// 304, and not answering HEAD — the caller passes `Length(0)` for those it wants) gets
/// nothing written either). Finally `Connection: close` when `keep_alive` is false, or
/// `Connection: keep-alive` when `keep_alive` is true and the client is HTTP/1.0.
pub fn write_response_head(
    out: &mut BytesMut,
    head: &ResponseHead,
    body: BodyKind,
    client_version: Version,
    keep_alive: bool,
) {
    let _ = (out, head, body, client_version, keep_alive);
    todo!()
}

/// Serialize a complete response generated by the router itself: status line with the
/// standard reason phrase for `status`, `Content-Type` (when `body` is non-empty),
/// `Content-Length`, each of `extra` (name, value), `Connection: close` when
/// `keep_alive` is false (or `Connection: keep-alive` for a keep-alive HTTP/1.0
/// client), blank line, body.
pub fn write_simple_response(
    out: &mut BytesMut,
    status: u16,
    content_type: &str,
    extra: &[(&str, &[u8])],
    body: &[u8],
    client_version: Version,
    keep_alive: bool,
) {
    let _ = (
        out,
        status,
        content_type,
        extra,
        body,
        client_version,
        keep_alive,
    );
    todo!()
}
