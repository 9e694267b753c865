//! Request and response heads: parsing, validation and re-serialization for forwarding.

use super::{BodyKind, HttpLimits};
use bytes::{Bytes, BytesMut};
use std::mem::MaybeUninit;
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
    /// What the name is, recognized once while parsing.
    kind: Name,
    /// The field's line reads exactly `name: value` CRLF in the head (so forwarding
    /// may copy it as is).
    verbatim: bool,
}

/// The header names the router acts on, recognized once per field while parsing, so
/// that lookups, framing checks and forwarding never compare names again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Name {
    #[default]
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Accept,
    ContentType,
    McpSessionId,
    McpProtocolVersion,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    Origin,
    McpMethod,
    McpTarget,
    LastEventId,
}

/// Number of [`Name`] variants.
const NAMES: usize = 22;

impl Name {
    /// Which known name `n` is (case-insensitive), dispatching on the length first.
    fn of(n: &[u8]) -> Name {
        let is = |s: &[u8]| eq_lower(n, s);
        match n.len() {
            2 if is(b"te") => Name::Te,
            4 if is(b"host") => Name::Host,
            6 if is(b"accept") => Name::Accept,
            6 if is(b"expect") => Name::Expect,
            6 if is(b"origin") => Name::Origin,
            8 if is(b"mcp-name") => Name::McpTarget,
            7 if is(b"trailer") => Name::Trailer,
            7 if is(b"upgrade") => Name::Upgrade,
            10 if is(b"connection") => Name::Connection,
            10 if is(b"keep-alive") => Name::KeepAlive,
            10 if is(b"mcp-method") => Name::McpMethod,
            12 if is(b"content-type") => Name::ContentType,
            13 if is(b"last-event-id") => Name::LastEventId,
            14 if is(b"mcp-session-id") => Name::McpSessionId,
            14 if is(b"content-length") => Name::ContentLength,
            15 if is(b"x-forwarded-for") => Name::XForwardedFor,
            16 if is(b"x-forwarded-host") => Name::XForwardedHost,
            16 if is(b"proxy-connection") => Name::ProxyConnection,
            17 if is(b"transfer-encoding") => Name::TransferEncoding,
            17 if is(b"x-forwarded-proto") => Name::XForwardedProto,
            20 if is(b"mcp-protocol-version") => Name::McpProtocolVersion,
            _ => Name::Other,
        }
    }

    /// A fixed hop-by-hop field, never forwarded (RFC 9110 section 7.6.1 and the
    /// proxy-specific `Proxy-Connection`; `Expect` is answered by the router itself).
    fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection
                | Name::KeepAlive
                | Name::ProxyConnection
                | Name::Te
                | Name::Trailer
                | Name::TransferEncoding
                | Name::Upgrade
                | Name::Expect
        )
    }
}

/// `n` equals `lower` ignoring ASCII case; `lower` is lower-case. Eight bytes at a
/// time: the byte-wise `eq_ignore_ascii_case` was a third of the head parse.
fn eq_lower(n: &[u8], lower: &[u8]) -> bool {
    /// Lower-case the ASCII upper-case letters of 8 bytes, leaving every other byte.
    fn fold(x: u64) -> u64 {
        const L: u64 = 0x0101_0101_0101_0101;
        let h = x & (0x7f * L);
        // per byte, high bit: >= 'A', and > 'Z' (no carry between bytes: h <= 0x7f)
        let ge_a = h + (0x80 - u64::from(b'A')) * L;
        let gt_z = h + (0x80 - u64::from(b'Z') - 1) * L;
        let upper = ge_a & !gt_z & !x & (0x80 * L);
        x | (upper >> 2)
    }
    /// The 8 bytes at `i` (callers keep `i + 8 <= s.len()`).
    fn word(s: &[u8], i: usize) -> u64 {
        s.get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    }
    let len = n.len();
    if len != lower.len() {
        return false;
    }
    if len < 8 {
        return n
            .iter()
            .zip(lower)
            .all(|(&b, &c)| b.to_ascii_lowercase() == c);
    }
    let mut diff = 0;
    let mut i = 0;
    while i + 8 <= len {
        diff |= fold(word(n, i)) ^ word(lower, i);
        i += 8;
    }
    if i < len {
        // the last 8 bytes, overlapping what was compared
        diff |= fold(word(n, len - 8)) ^ word(lower, len - 8);
    }
    diff == 0
}

/// The parsed fields of a head, with the index of the first field of each known name.
#[derive(Debug, Default)]
struct Fields {
    list: Vec<Field>,
    /// Per [`Name`]: 1 + index in `list` of its first field, 0 when absent.
    first: [u8; NAMES],
}

impl Fields {
    fn clear(&mut self) {
        self.list.clear();
        self.first = [0; NAMES];
    }

    /// The first field of a known name.
    fn first(&self, name: Name) -> Option<&Field> {
        match self.first[name as usize] {
            0 => None,
            i => self.list.get(i as usize - 1),
        }
    }

    /// First value of a header (trimmed), name matched case-insensitively.
    fn value<'a>(&'a self, raw: &'a [u8], name: &str) -> Option<&'a [u8]> {
        match Name::of(name.as_bytes()) {
            Name::Other => first_value(
                self.list
                    .iter()
                    .map(|f| (at(raw, f.name), at(raw, f.value))),
                name,
            ),
            known => self.first(known).map(|f| trim_ows(at(raw, f.value))),
        }
    }

    /// Some `Connection` field names `name` as a connection option: then the field
    /// `name` is hop-by-hop for this message. RFC 9110 section 7.6.1:
    /// "Intermediaries MUST parse a received Connection header field before a message
    /// is forwarded and, for each connection-option in this field, remove any header or
    /// trailer field(s) from the message with the same name as the connection-option,
    /// and then remove the Connection header field itself".
    fn named_by_connection(&self, raw: &[u8], name: &[u8]) -> bool {
        self.first(Name::Connection).is_some()
            && self
                .list
                .iter()
                .any(|f| f.kind == Name::Connection && has_token(at(raw, f.value), name))
    }
}

/// Fields the router reads to decide where a request goes or whether it may pass. A
/// `Connection` option naming one of them would make it hop-by-hop: RFC 9110 section
/// 7.6.1 has an intermediary "remove any header or trailer field(s) from the message
/// with the same name as the connection-option", so the backend would never see the
/// field the router decided by. Such a request is refused instead (see
/// [`RequestHead::conflict`]).
const READ_FIELDS: [&[u8]; 7] = [
    b"mcp-session-id",
    b"mcp-protocol-version",
    b"mcp-method",
    b"mcp-name",
    b"last-event-id",
    b"host",
    b"origin",
];

/// Whether `path` (a request target's path, before `?`) has a `.` or `..` segment in
/// any reading a backend may give it. RFC 3986 section 5.2 resolves references with
/// "a "remove_dot_segments" routine for interpreting and removing the special "." and
/// ".." complete path segments from a referenced path" (section 5.2.4 spells it out),
/// so a backend that normalizes `/tenant-a/../tenant-b/mcp` (the router's base path
/// `/tenant-a` plus the client's `/../tenant-b/mcp`) serves `/tenant-b/mcp`: the client
/// would escape the base path. Such a request gets 400 before any base path is
/// prefixed. Section 2.3: "URIs that differ in the replacement of an unreserved
/// character with its corresponding percent-encoded US-ASCII octet are equivalent", so
/// `%2e` is a dot. Also counted as separators, because common servers treat them so: `\` (the
/// WHATWG URL parser reads it as `/` in http URLs), `%2f` and `%5c` (servers that
/// decode before normalizing), and `#` (a parser that takes it as a fragment ends the
/// path there); and a segment's `;parameters` are ignored (servlet containers read
/// `..;x` as `..`).
pub fn has_dot_segment(path: &[u8]) -> bool {
    // Fast path: every dot segment holds a `.` or a `%`.
    if !path.iter().any(|&b| b == b'.' || b == b'%') {
        return false;
    }
    let escape = |i: usize, hex: &[u8]| {
        path.get(i..i + 3)
            .is_some_and(|e| e[0] == b'%' && e[1..].eq_ignore_ascii_case(hex))
    };
    let is_dots = |seg: &[u8]| {
        let seg = match seg.iter().position(|&b| b == b';') {
            Some(p) => &seg[..p],
            None => seg,
        };
        let (mut dots, mut i) = (0, 0);
        while i < seg.len() {
            if seg[i] == b'.' {
                i += 1;
            } else if seg
                .get(i..i + 3)
                .is_some_and(|e| e.eq_ignore_ascii_case(b"%2e"))
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        (1..=2).contains(&dots)
    };
    let (mut start, mut i) = (0, 0);
    while i <= path.len() {
        let sep = match path.get(i) {
            None | Some(b'/' | b'\\' | b'#') => 1,
            Some(b'%') if escape(i, b"2f") || escape(i, b"5c") => 3,
            _ => 0,
        };
        if sep == 0 {
            i += 1;
            continue;
        }
        if is_dots(&path[start..i]) {
            return true;
        }
        i += sep;
        start = i;
    }
    false
}

/// A parsed request head. Reused across requests of a connection: parsing into an
/// existing value keeps its field vector's capacity, so steady-state parsing does not
/// allocate.
#[derive(Debug, Default)]
pub struct RequestHead {
    raw: Bytes,
    method_range: (u32, u32),
    target: (u32, u32),
    fields: Fields,
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
    /// A header-level reason the request reads two ways (see [`RequestHead::conflict`]).
    conflict: Option<&'static str>,
}

/// Size of the stack array of `httparse` header slots. `limits.max_headers` above this
/// is capped to it (a head with more fields is refused as too large).
const HEADER_SLOTS: usize = 128;

/// The bytes of `raw` in `range`, or nothing if the range is out of bounds (it never is
/// for ranges made by the parser, but a bad range must not panic).
fn at(raw: &[u8], range: (u32, u32)) -> &[u8] {
    raw.get(range.0 as usize..range.1 as usize).unwrap_or(&[])
}

/// The byte range of `part` inside `base`. `part` is always a sub-slice returned by
/// `httparse` for `base`, except for the empty `""` it may return (e.g. a reason phrase
/// with obs-text), which is mapped to an empty range. `base` is at most `u32::MAX` long.
fn range_of(base: &[u8], part: &[u8]) -> (u32, u32) {
    if part.is_empty() {
        return (0, 0);
    }
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= base.len() => (start as u32, end as u32),
        _ => (0, 0),
    }
}

/// Strip leading and trailing optional whitespace (SP / HTAB).
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The elements of a comma-separated list field value (RFC 9110 section 5.6.1), trimmed
/// of OWS. Empty elements are yielded too; callers decide what they mean.
fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

/// `value` is a comma list containing `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_elements(value).any(|e| e.eq_ignore_ascii_case(token))
}

/// Length of the empty lines (CRLF, or a lone LF as httparse also accepts) at the start
/// of `buf`.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match buf.get(i..) {
            Some([b'\n', ..]) => i += 1,
            Some([b'\r', b'\n', ..]) => i += 2,
            _ => return i,
        }
    }
}

fn first_value<'a>(
    mut fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    name: &str,
) -> Option<&'a [u8]> {
    fields
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| trim_ows(v))
}

impl RequestHead {
    /// First value of a known header (trimmed), found without comparing names.
    pub(crate) fn known(&self, name: Name) -> Option<&[u8]> {
        self.fields
            .first(name)
            .map(|f| trim_ows(at(&self.raw, f.value)))
    }
    /// Let go of the head's bytes (a slice of the read buffer it was parsed from) once
    /// they are no longer needed, so that the buffer is unshared again and the next
    /// read reuses it in place instead of allocating a new one. The parsed facts
    /// (method, version, ...) stay; the fields read as absent. [`Conn`](crate::Conn)
    /// does this at the end of every exchange.
    pub fn release(&mut self) {
        self.raw = Bytes::new();
        self.fields.clear();
    }
    /// The exact bytes of the head as received (request line through CRLFCRLF).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
    /// Method token as sent.
    pub fn method_str(&self) -> &[u8] {
        at(&self.raw, self.method_range)
    }
    /// Request target as sent (origin-form: path and optional query).
    pub fn target(&self) -> &[u8] {
        at(&self.raw, self.target)
    }
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &[u8] {
        let t = self.target();
        match t.iter().position(|&b| b == b'?') {
            Some(q) => &t[..q],
            None => t,
        }
    }
    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&[u8]> {
        let t = self.target();
        t.iter().position(|&b| b == b'?').map(|q| &t[q + 1..])
    }
    /// First value of a header, name matched case-insensitively. `name` is lower-case.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.value(&self.raw, name)
    }
    /// All fields in order, as (name, value) with names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .list
            .iter()
            .map(move |f| (at(&self.raw, f.name), at(&self.raw, f.value)))
    }
    /// Every value of a known header (trimmed), in order; nothing to look at when the
    /// head has none.
    pub(crate) fn all(&self, name: Name) -> impl Iterator<Item = &[u8]> + '_ {
        let fields = match self.fields.first[name as usize] {
            0 => &[][..],
            i => self.fields.list.get(i as usize - 1..).unwrap_or(&[]),
        };
        fields
            .iter()
            .filter(move |f| f.kind == name)
            .map(move |f| trim_ows(at(&self.raw, f.value)))
    }
    /// Why the head of this request could be read two ways, by the router and by the
    /// backend it forwards to, or `None`. The router answers such a request `400`
    /// itself (one reading of every request): more than one `Mcp-Session-Id` or
    /// `MCP-Protocol-Version` field, a `Connection` option naming a field the router
    /// reads (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Last-Event-ID`, `Host`,
    /// `Origin`), or a path with a dot segment (see [`has_dot_segment`]).
    pub fn conflict(&self) -> Option<&'static str> {
        self.conflict
            .or_else(|| has_dot_segment(self.path()).then_some("Request path has a dot segment"))
    }
}

/// A parsed response head, reused like [`RequestHead`].
#[derive(Debug, Default)]
pub struct ResponseHead {
    raw: Bytes,
    reason: (u32, u32),
    fields: Fields,
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
    /// First value of a known header (trimmed), found without comparing names.
    pub(crate) fn known(&self, name: Name) -> Option<&[u8]> {
        self.fields
            .first(name)
            .map(|f| trim_ows(at(&self.raw, f.value)))
    }
    /// Let go of the head's bytes, as [`RequestHead::release`].
    pub fn release(&mut self) {
        self.raw = Bytes::new();
        self.fields.clear();
    }
    /// The exact bytes of the head as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
    /// Reason phrase as sent.
    pub fn reason(&self) -> &[u8] {
        at(&self.raw, self.reason)
    }
    /// First value of a header, name matched case-insensitively. `name` is lower-case.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.value(&self.raw, name)
    }
    /// All fields in order.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .list
            .iter()
            .map(move |f| (at(&self.raw, f.name), at(&self.raw, f.value)))
    }
    /// `Content-Type` is `text/event-stream` (parameters ignored, case-insensitive).
    pub fn is_event_stream(&self) -> bool {
        match self.known(Name::ContentType) {
            Some(v) => {
                let media = v.split(|&b| b == b';').next().unwrap_or(&[]);
                trim_ows(media).eq_ignore_ascii_case(b"text/event-stream")
            }
            None => false,
        }
    }
    /// An interim 1xx response (other than 101): another head follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Map an `httparse` error (other than `Version`, handled by [`version_error`]).
fn map_httparse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        // A line starting with SP/HTAB (obs-fold) or whitespace before the colon shows
        // up as an invalid header name.
        httparse::Error::HeaderName => HeadError::Invalid(
            "invalid header field name, whitespace before colon, or obsolete line folding",
        ),
        httparse::Error::HeaderValue => HeadError::Invalid("invalid byte in header field value"),
        httparse::Error::NewLine => HeadError::Invalid("invalid line ending"),
        httparse::Error::Status => HeadError::Invalid("invalid status line"),
        httparse::Error::Token => HeadError::Invalid("invalid request line"),
        httparse::Error::Version => HeadError::Invalid("invalid HTTP version"),
    }
}

/// `httparse` only accepts `HTTP/1.0` and `HTTP/1.1`. Classify what it refused: a
/// syntactically valid `HTTP-version` (`"HTTP/" DIGIT "." DIGIT`, RFC 9112 section 2.3)
/// other than those is `UnsupportedVersion` (505), except the HTTP/2 connection preface
/// (`PRI * HTTP/2.0`), which is not an HTTP/1 request at all (`Invalid`). Anything else is
/// `Invalid`. If the version token is still incomplete but may turn out valid, the head
/// is reported incomplete (`Ok(false)`), subject to the size limit.
///
/// `line` starts at the request/status line; `version_at` is the offset of the version
/// token in it (0 for responses, after the second SP for requests).
fn version_error(line: &[u8], version_at: usize, over_limit: bool) -> Result<bool, HeadError> {
    let rest = line.get(version_at..).unwrap_or(&[]);
    let end = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    let token = &rest[..end];
    let complete = end < rest.len();
    const SHAPE: &[u8] = b"HTTP/0.0";
    let fits = token.len() <= SHAPE.len()
        && token.iter().zip(SHAPE).all(|(&b, &s)| {
            if s == b'0' {
                b.is_ascii_digit()
            } else {
                b == s
            }
        });
    if !fits {
        return Err(HeadError::Invalid("invalid HTTP version"));
    }
    if !complete || token.len() < SHAPE.len() {
        if complete {
            return Err(HeadError::Invalid("invalid HTTP version"));
        }
        return if over_limit {
            Err(HeadError::TooLarge)
        } else {
            Ok(false)
        };
    }
    if line.starts_with(b"PRI * HTTP/2.0") {
        return Err(HeadError::Invalid("HTTP/2 connection preface"));
    }
    Err(HeadError::UnsupportedVersion)
}

/// Offset of the version token in a request line: after the second SP.
fn request_version_at(line: &[u8]) -> usize {
    let mut spaces = line
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b' ')
        .map(|(i, _)| i);
    spaces.nth(1).map(|i| i + 1).unwrap_or(line.len())
}

/// What the framing-relevant fields of a head say.
#[derive(Default)]
struct Scan {
    content_length: Option<u64>,
    /// A Transfer-Encoding field was present.
    te_present: bool,
    /// Number of non-empty transfer codings listed.
    te_codings: usize,
    te_chunked: usize,
    te_last_chunked: bool,
    close: bool,
    keep_alive_token: bool,
    expect_continue: bool,
    hosts: usize,
    /// `Mcp-Session-Id` fields seen.
    session_ids: usize,
    /// `MCP-Protocol-Version` fields seen.
    versions: usize,
    /// A `Connection` option names a field the router reads to decide.
    nominates_read: bool,
}

impl Scan {
    /// Look at every field that matters for framing and connection management.
    ///
    /// Content-Length enforces RFC 9112 section 6.3 item 5: "If a message is received
    /// without Transfer-Encoding and with an invalid Content-Length header field, then
    /// the message framing is invalid and the recipient MUST treat it as an
    /// unrecoverable error, unless the field value can be successfully parsed as a
    /// comma-separated list (Section 5.6.1 of [HTTP]), all values in the list are valid,
    /// and all values in the list are the same". Values are compared numerically; an
    /// empty element (`5,`), a sign (`+5`), or more than u64 can hold is invalid.
    ///
    /// `fields.list` holds the head's fields; this also recognizes what each name is
    /// and indexes the first field of each known name. On error, `fields` is left
    /// empty.
    fn of(window: &[u8], fields: &mut Fields) -> Result<Scan, HeadError> {
        let r = Scan::of_fields(window, fields);
        if r.is_err() {
            fields.clear();
        }
        r
    }

    fn of_fields(window: &[u8], fields: &mut Fields) -> Result<Scan, HeadError> {
        let mut s = Scan::default();
        let Fields { list, first } = fields;
        *first = [0; NAMES];
        for (idx, f) in list.iter_mut().enumerate() {
            let kind = Name::of(at(window, f.name));
            f.kind = kind;
            if kind == Name::Other {
                continue;
            }
            let slot = &mut first[kind as usize];
            if *slot == 0 {
                // At most HEADER_SLOTS (128) fields: the index fits.
                *slot = (idx + 1).min(u8::MAX as usize) as u8;
            }
            let value = at(window, f.value);
            if kind == Name::ContentLength {
                for element in list_elements(value) {
                    let n = parse_decimal(element)
                        .ok_or(HeadError::BadFraming("invalid Content-Length"))?;
                    match s.content_length {
                        Some(prev) if prev != n => {
                            return Err(HeadError::BadFraming("conflicting Content-Length values"))
                        }
                        _ => s.content_length = Some(n),
                    }
                }
            } else if kind == Name::TransferEncoding {
                s.te_present = true;
                // RFC 9110 section 5.6.1: "a recipient MUST parse and ignore a
                // reasonable number of empty list elements".
                for coding in list_elements(value).filter(|e| !e.is_empty()) {
                    s.te_codings += 1;
                    // Exact token only: `xchunked`, `chunked;x=1` or `"chunked"` are
                    // other codings. (OWS around elements was trimmed; any other
                    // whitespace or control byte was refused by httparse or makes it
                    // another coding.)
                    s.te_last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    if s.te_last_chunked {
                        s.te_chunked += 1;
                    }
                }
            } else if kind == Name::Connection {
                for option in list_elements(value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        s.close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        s.keep_alive_token = true;
                    } else if READ_FIELDS.iter().any(|f| option.eq_ignore_ascii_case(f)) {
                        s.nominates_read = true;
                    }
                }
            } else if kind == Name::Expect {
                if trim_ows(value).eq_ignore_ascii_case(b"100-continue") {
                    s.expect_continue = true;
                }
            } else if kind == Name::Host {
                s.hosts += 1;
            } else if kind == Name::McpSessionId {
                s.session_ids += 1;
            } else if kind == Name::McpProtocolVersion {
                s.versions += 1;
            }
        }
        Ok(s)
    }

    /// Fields that would let the router and the backend read a request two ways.
    ///
    /// - More than one `Mcp-Session-Id`: the router routes by one, the backend may read
    ///   another (or both joined). The transport allows one: "If an Mcp-Session-Id is
    ///   returned by the server during initialization, clients using the Streamable
    ///   HTTP transport MUST include it in the Mcp-Session-Id header on all of their
    ///   subsequent HTTP requests." RFC 9110 section 5.3: "A sender MUST NOT generate
    ///   multiple field lines with the same name in a message [...] unless that field's
    ///   definition allows multiple field line values to be recombined as a
    ///   comma-separated list"; this field's definition does not.
    /// - More than one `MCP-Protocol-Version`: the era decides whether the session id
    ///   counts at all; same rule.
    /// - A `Connection` option naming a field the router reads (`READ_FIELDS`).
    fn conflict(&self) -> Option<&'static str> {
        if self.session_ids > 1 {
            Some("More than one Mcp-Session-Id header")
        } else if self.versions > 1 {
            Some("More than one MCP-Protocol-Version header")
        } else if self.nominates_read {
            Some("Connection header nominates a header the router routes on")
        } else {
            None
        }
    }

    /// The framing the message itself declares: `Some(Chunked)`, `Some(Length(n))`, or
    /// `None` when it has neither field. Enforces, for requests and responses alike:
    ///
    /// - RFC 9112 section 6.1: "A server or client that receives an HTTP/1.0 message
    ///   containing a Transfer-Encoding header field MUST treat the message as if the
    ///   framing is faulty, even if a Content-Length is present, and close the
    ///   connection after processing the message." We refuse it (`BadFraming`).
    /// - RFC 9112 section 6.2: "A sender MUST NOT send a Content-Length header field in
    ///   any message that contains a Transfer-Encoding header field." Section 6.3 item 3
    ///   says such a message "ought to be handled as an error" and "A server MAY reject
    ///   a request that contains both Content-Length and Transfer-Encoding [...]
    ///   Regardless, the server MUST close the connection after responding to such a
    ///   request to avoid the potential attacks." We reject it (`BadFraming`, the
    ///   connection is closed); for a response the caller answers 502.
    /// - RFC 9112 section 6.3 item 4: "If a Transfer-Encoding header field is present in
    ///   a request and the chunked transfer coding is not the final encoding, the
    ///   message body length cannot be determined reliably; the server MUST respond
    ///   with the 400 (Bad Request) status code and then close the connection."
    ///   (`BadFraming`; also for responses, which we do not read until close.) An empty
    ///   Transfer-Encoding is refused the same way.
    /// - RFC 9112 section 7.1: "A sender MUST NOT apply the chunked transfer coding more
    ///   than once to a message body" (`chunked, chunked` is `BadFraming`).
    /// - RFC 9112 section 6.1: "A server that receives a request message with a transfer
    ///   coding it does not understand SHOULD respond with 501 (Not Implemented)." We
    ///   only pass `chunked` through, so `gzip, chunked` is `UnsupportedTransferEncoding`.
    fn framing(&self, version: Version) -> Result<Option<BodyKind>, HeadError> {
        if !self.te_present {
            return Ok(self.content_length.map(BodyKind::Length));
        }
        if version == Version::Http10 {
            return Err(HeadError::BadFraming(
                "Transfer-Encoding in an HTTP/1.0 message",
            ));
        }
        if self.content_length.is_some() {
            return Err(HeadError::BadFraming(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if self.te_codings == 0 || !self.te_last_chunked {
            return Err(HeadError::BadFraming(
                "Transfer-Encoding does not end with chunked",
            ));
        }
        if self.te_chunked > 1 {
            return Err(HeadError::BadFraming("chunked applied more than once"));
        }
        if self.te_codings > 1 {
            return Err(HeadError::UnsupportedTransferEncoding);
        }
        Ok(Some(BodyKind::Chunked))
    }

    /// RFC 9112 section 9.3: the connection persists unless the "close" connection
    /// option is present; for HTTP/1.0 only if the "keep-alive" option is present.
    fn keep_alive(&self, version: Version) -> bool {
        if self.close {
            return false;
        }
        match version {
            Version::Http11 => true,
            Version::Http10 => self.keep_alive_token,
        }
    }
}

/// A Content-Length element: 1 or more ASCII digits, no sign, no whitespace, fitting u64.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

fn method_of(token: &[u8]) -> Method {
    // Method names are case-sensitive (RFC 9110 section 9.1).
    match token {
        b"GET" => Method::Get,
        b"POST" => Method::Post,
        b"DELETE" => Method::Delete,
        b"HEAD" => Method::Head,
        b"OPTIONS" => Method::Options,
        b"PUT" => Method::Put,
        b"PATCH" => Method::Patch,
        _ => Method::Other,
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
///
/// Details of the rules enforced (see also the framing rules on the private `Scan`):
///
/// - RFC 9112 section 2.2: "a server that is expecting to receive and parse a
///   request-line SHOULD ignore at least one empty line (CRLF) received prior to the
///   request-line." They count against `max_head` and are not part of `raw`.
/// - RFC 9112 section 5.1: "A server MUST reject, with a response status code of 400
///   (Bad Request), any received request message that contains whitespace between a
///   header field name and colon." (`Invalid`)
/// - RFC 9112 section 5.2: "A server that receives an obs-fold in a request message
///   [...] MUST either reject the message by sending a 400 (Bad Request) [...] or
///   replace each received obs-fold with one or more SP octets". We reject (`Invalid`).
/// - RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code
///   to any HTTP/1.1 request message [...] that contains more than one Host header
///   field line". (`Invalid`.) A *missing* Host is tolerated: the router does not
///   route on it, and always writes its own `Host` upstream.
/// - Only origin-form targets (starting with `/`) are accepted: the router is a
///   reverse proxy that prepends a path prefix; absolute-form, authority-form and `*`
///   are refused as `Invalid`.
/// - RFC 9110 section 10.1.1: "A server that receives a 100-continue expectation in an
///   HTTP/1.0 request MUST ignore that expectation." (`expect_continue` is false.)
/// - More than `limits.max_headers` fields (capped at 128) is `TooLarge`. A bare LF
///   line ending in the head is accepted (RFC 9112 section 2.2 allows it); the head is
///   never forwarded as is, only re-serialized with CRLF.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &HttpLimits,
    head: &mut RequestHead,
) -> Result<bool, HeadError> {
    let (over_limit, skip, window_len) = head_window(buf, limits);
    let window = &buf[skip..window_len];
    let max = limits.max_headers.min(HEADER_SLOTS);
    head.fields.list.clear();
    let (method_r, target_r, version, len) = match fast_request(window, max, &mut head.fields.list)
    {
        Some(line) => {
            #[cfg(any(test, feature = "fuzzing"))]
            cross_check_request(window, max, line, &head.fields.list);
            line
        }
        None => {
            head.fields.list.clear();
            // Uninitialized slots: httparse fills what it uses (no 4 KiB of zeroing).
            let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); HEADER_SLOTS];
            let mut req = httparse::Request::new(&mut []);
            let len = match req.parse_with_uninit_headers(window, &mut slots[..max]) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    head.release();
                    return incomplete(over_limit);
                }
                Err(httparse::Error::Version) => {
                    head.release();
                    return version_error(window, request_version_at(window), over_limit);
                }
                Err(e) => {
                    head.release();
                    return Err(map_httparse_error(e));
                }
            };
            record_fields(&mut head.fields.list, window, req.headers);
            // A complete parse always sets method, path and version.
            let version = match req.version {
                Some(0) => Version::Http10,
                _ => Version::Http11,
            };
            (
                range_of(window, req.method.unwrap_or("").as_bytes()),
                range_of(window, req.path.unwrap_or("").as_bytes()),
                version,
                len,
            )
        }
    };
    let method = at(window, method_r);
    if !at(window, target_r).starts_with(b"/") {
        head.release();
        return Err(HeadError::Invalid("request target is not in origin-form"));
    }
    let checked = Scan::of(window, &mut head.fields).and_then(|scan| {
        let body = scan.framing(version)?.unwrap_or(BodyKind::Empty);
        if scan.hosts > 1 {
            return Err(HeadError::Invalid("more than one Host field"));
        }
        Ok((scan, body))
    });
    let (scan, body) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            head.release();
            return Err(e);
        }
    };
    head.method_range = method_r;
    head.target = target_r;
    head.method = method_of(method);
    head.version = version;
    head.body = body;
    head.keep_alive = scan.keep_alive(version);
    head.expect_continue = scan.expect_continue && version == Version::Http11;
    head.conflict = scan.conflict();
    head.raw = take_head(buf, skip, len);
    Ok(true)
}

/// Try to parse a response head at the start of `buf`; same contract as
/// [`parse_request`]. `request_method` decides the body framing: a response to HEAD,
/// and 1xx, 204 and 304 responses, have `BodyKind::Empty`; otherwise chunked, then
/// Content-Length, then `Close`. Obsolete line folding is refused.
///
/// - RFC 9112 section 6.3 item 1: "Any response to a HEAD request and any response
///   with a 1xx (Informational), 204 (No Content), or 304 (Not Modified) status code is
///   always terminated by the first empty line after the header fields". Their
///   Content-Length / Transfer-Encoding are still validated (a bad one is refused).
/// - RFC 9112 section 6.3 item 5: "If it is in a response message received by a proxy,
///   the proxy MUST close the connection to the server, discard the received response,
///   and send a 502 (Bad Gateway) response to the client." Every error here is meant
///   to be answered 502 by the caller.
/// - RFC 9112 section 5.2: "A proxy or gateway that receives an obs-fold in a response
///   message [...] MUST either discard the message and replace it with a 502 (Bad
///   Gateway) response [...] or replace each received obs-fold with one or more SP
///   octets". We discard (`Invalid`). Whitespace before a colon is refused too.
/// - CL + TE and the other framing rules are as for requests (see `parse_request`).
/// - A `Close`-delimited response, or HTTP/1.0 without `keep-alive`, or any
///   `Connection: close`, gives `keep_alive == false`.
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &HttpLimits,
    request_method: Method,
    head: &mut ResponseHead,
) -> Result<bool, HeadError> {
    let (over_limit, skip, window_len) = head_window(buf, limits);
    let window = &buf[skip..window_len];
    let max = limits.max_headers.min(HEADER_SLOTS);
    head.fields.list.clear();
    let (version, status, reason_r, len) =
        match fast_response(window, max, &mut head.fields.list) {
            Some(line) => {
                #[cfg(any(test, feature = "fuzzing"))]
                cross_check_response(window, max, line, &head.fields.list);
                line
            }
            None => {
                head.fields.list.clear();
                let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); HEADER_SLOTS];
                let mut res = httparse::Response::new(&mut []);
                let len = match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut res, window, &mut slots[..max])
                {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) => {
                        head.release();
                        return incomplete(over_limit);
                    }
                    Err(httparse::Error::Version) => {
                        head.release();
                        return version_error(window, 0, over_limit);
                    }
                    Err(e) => {
                        head.release();
                        return Err(map_httparse_error(e));
                    }
                };
                record_fields(&mut head.fields.list, window, res.headers);
                // A complete parse always sets version and code.
                let version = match res.version {
                    Some(0) => Version::Http10,
                    _ => Version::Http11,
                };
                let reason = res.reason.unwrap_or("").as_bytes();
                (
                    version,
                    res.code.unwrap_or(0),
                    range_of(window, reason),
                    len,
                )
            }
        };
    if status < 100 {
        head.release();
        return Err(HeadError::Invalid("invalid status code"));
    }
    let checked =
        Scan::of(window, &mut head.fields).and_then(|scan| Ok((scan.framing(version)?, scan)));
    let (declared, scan) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            head.release();
            return Err(e);
        }
    };
    let body = if request_method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        BodyKind::Empty
    } else {
        declared.unwrap_or(BodyKind::Close)
    };

    head.reason = reason_r;
    head.status = status;
    head.version = version;
    head.body = body;
    head.keep_alive = body != BodyKind::Close && scan.keep_alive(version);
    head.raw = take_head(buf, skip, len);
    Ok(true)
}

/// The part of `buf` a head parser looks at: `(over_limit, skip, end)`, where
/// `buf[skip..end]` is at most `max_head` bytes with leading empty lines skipped, and
/// `over_limit` says the buffer already holds more than `max_head` bytes.
fn head_window(buf: &[u8], limits: &HttpLimits) -> (bool, usize, usize) {
    let over_limit = buf.len() > limits.max_head;
    let end = buf.len().min(limits.max_head).min(u32::MAX as usize);
    (over_limit, leading_empty_lines(&buf[..end]), end)
}

/// An incomplete head: wait for more, unless the buffer is already over the limit.
fn incomplete(over_limit: bool) -> Result<bool, HeadError> {
    if over_limit {
        Err(HeadError::TooLarge)
    } else {
        Ok(false)
    }
}

/// Remember where each field parsed by httparse sits in the head (names are recognized
/// by [`Scan::of`]).
fn record_fields(list: &mut Vec<Field>, window: &[u8], headers: &[httparse::Header<'_>]) {
    list.extend(headers.iter().map(|h| {
        let (name, value) = (
            range_of(window, h.name.as_bytes()),
            range_of(window, h.value),
        );
        let (sep, end) = (name.1 as usize, value.1 as usize);
        let verbatim = !h.value.is_empty()
            && window.get(sep..value.0 as usize) == Some(&b": "[..])
            && window.get(end..end + 2) == Some(&b"\r\n"[..]);
        Field {
            name,
            value,
            kind: Name::Other,
            verbatim,
        }
    }));
}

/// `tchar` (RFC 9110 section 5.6.2), as a table.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

// The fast path. Almost every head on the hot path is in the plain form a client
// library or server writes: `token SP target SP HTTP/1.x` CRLF, then `Name: value` CRLF
// lines with one space after the colon, visible ASCII values without surrounding
// whitespace, and a final CRLF. For such a head httparse's answer is known exactly
// (the same method, target, version, fields and length), so it is read here in one
// simple pass; anything else (another shape, other bytes, an incomplete head, too
// many fields) is left to httparse, which then decides alone. In tests and fuzzing
// builds every fast-path answer is checked against httparse's.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The 8 bytes of `w` at `i`, if there are 8.
fn word_at(w: &[u8], i: usize) -> Option<u64> {
    let b = w.get(i..i + 8)?;
    <[u8; 8]>::try_from(b).ok().map(u64::from_le_bytes)
}

/// Index of the first byte from `i` that is not in 0x20..=0x7E, 8 bytes at a time.
fn find_special(w: &[u8], mut i: usize) -> Option<usize> {
    while let Some(x) = word_at(w, i) {
        // < 0x20 borrows, 0x7F carries into the high bit, >= 0x80 has it; the lowest
        // flagged byte is a real one (borrows and carries only run upwards)
        let hit = (x.wrapping_sub(0x20 * LO) | x.wrapping_add(LO) | x) & HI;
        if hit != 0 {
            return Some(i + hit.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    w.get(i..)?
        .iter()
        .position(|b| !(0x20..=0x7e).contains(b))
        .map(|p| i + p)
}

/// The fields from `i`: strict `Name: value` CRLF lines, then CRLF. Returns the end of
/// the head; `None` when the head is not in the strict form or is incomplete.
fn fast_fields(w: &[u8], mut i: usize, max: usize, list: &mut Vec<Field>) -> Option<usize> {
    loop {
        if *w.get(i)? == b'\r' {
            return (*w.get(i + 1)? == b'\n').then_some(i + 2);
        }
        if list.len() >= max {
            return None;
        }
        // the name: tchars up to the colon, in one pass (the colon is not a tchar)
        let mut colon = i;
        while TCHAR[*w.get(colon)? as usize] {
            colon += 1;
        }
        if colon == i || w.get(colon..colon + 2)? != b": " {
            return None;
        }
        // the value: 0x20..=0x7E up to CR LF, without whitespace around it (httparse
        // would trim it)
        let v0 = colon + 2;
        let end = find_special(w, v0)?;
        if end == v0
            || w.get(v0) == Some(&b' ')
            || w.get(end - 1) == Some(&b' ')
            || w.get(end..end + 2)? != b"\r\n"
        {
            return None;
        }
        list.push(Field {
            name: (i as u32, colon as u32),
            value: (v0 as u32, end as u32),
            kind: Name::Other,
            verbatim: true,
        });
        i = end + 2;
    }
}

/// A request line and fields: (method, target, version, head length).
type FastRequest = ((u32, u32), (u32, u32), Version, usize);

fn fast_request(w: &[u8], max: usize, list: &mut Vec<Field>) -> Option<FastRequest> {
    let mut i = 0;
    while TCHAR[*w.get(i)? as usize] {
        i += 1;
    }
    if i == 0 || *w.get(i)? != b' ' {
        return None;
    }
    let method = (0, i as u32);
    i += 1;
    let t0 = i;
    while (0x21..=0x7e).contains(w.get(i)?) {
        i += 1;
    }
    if i == t0 {
        return None;
    }
    let target = (t0 as u32, i as u32);
    let version = match w.get(i..i + 11)? {
        b" HTTP/1.1\r\n" => Version::Http11,
        b" HTTP/1.0\r\n" => Version::Http10,
        _ => return None,
    };
    let end = fast_fields(w, i + 11, max, list)?;
    Some((method, target, version, end))
}

/// A status line and fields: (version, status, reason, head length).
type FastResponse = (Version, u16, (u32, u32), usize);

fn fast_response(w: &[u8], max: usize, list: &mut Vec<Field>) -> Option<FastResponse> {
    let version = match w.get(..9)? {
        b"HTTP/1.1 " => Version::Http11,
        b"HTTP/1.0 " => Version::Http10,
        _ => return None,
    };
    let status = match *w.get(9..13)? {
        [a @ b'0'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9', b' '] => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return None,
    };
    let mut i = 13;
    loop {
        let b = *w.get(i)?;
        if b == b'\r' {
            break;
        }
        if !(0x20..=0x7e).contains(&b) {
            return None;
        }
        i += 1;
    }
    if i == 13 || *w.get(i + 1)? != b'\n' {
        return None;
    }
    let end = fast_fields(w, i + 2, max, list)?;
    Some((version, status, (13, i as u32), end))
}

/// The fields httparse found, as (name, value) ranges.
#[cfg(any(test, feature = "fuzzing"))]
fn httparse_fields(w: &[u8], headers: &[httparse::Header<'_>]) -> Vec<((u32, u32), (u32, u32))> {
    headers
        .iter()
        .map(|h| (range_of(w, h.name.as_bytes()), range_of(w, h.value)))
        .collect()
}

/// The fast path must give exactly httparse's answer.
#[cfg(any(test, feature = "fuzzing"))]
fn cross_check_request(w: &[u8], max: usize, fast: FastRequest, list: &[Field]) {
    let mut slots = vec![httparse::EMPTY_HEADER; max];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(w) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("fast path accepted a request head httparse does not: {other:?}"),
    };
    let version = if req.version == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    };
    let want = (
        range_of(w, req.method.unwrap_or("").as_bytes()),
        range_of(w, req.path.unwrap_or("").as_bytes()),
        version,
        len,
    );
    assert_eq!(fast, want, "request line");
    let got: Vec<_> = list.iter().map(|f| (f.name, f.value)).collect();
    assert_eq!(got, httparse_fields(w, req.headers), "request fields");
}

/// The fast path must give exactly httparse's answer.
#[cfg(any(test, feature = "fuzzing"))]
fn cross_check_response(w: &[u8], max: usize, fast: FastResponse, list: &[Field]) {
    let mut slots = vec![httparse::EMPTY_HEADER; max];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(w) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("fast path accepted a response head httparse does not: {other:?}"),
    };
    let version = if res.version == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    };
    let want = (
        version,
        res.code.unwrap_or(0),
        range_of(w, res.reason.unwrap_or("").as_bytes()),
        len,
    );
    assert_eq!(fast, want, "status line");
    let got: Vec<_> = list.iter().map(|f| (f.name, f.value)).collect();
    assert_eq!(got, httparse_fields(w, res.headers), "response fields");
}

/// Split the complete head (after `skip` leading empty lines) off the buffer.
fn take_head(buf: &mut BytesMut, skip: usize, len: usize) -> Bytes {
    if skip > 0 {
        bytes::Buf::advance(buf, skip);
    }
    buf.split_to(len).freeze()
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
    /// Leave out every `Mcp-Session-Id` and `Last-Event-ID` field (stateless-era
    /// requests: the router did not route by them, so the backend must not read them).
    pub drop_session_fields: bool,
    /// Write `Mcp-Session-Id: <this>` in place of the client's field (sealed session
    /// ids: the backend gets its own id back).
    pub session_id: Option<&'a [u8]>,
    /// Send this request target (path and query) instead of the client's (sealed
    /// legacy session ids in the query).
    pub target: Option<&'a [u8]>,
}

/// Copies kept fields to the output. A field that sits in the head exactly as
/// `put_field` would write it (`name: value` and CRLF) is copied from the head as is,
/// and runs of such fields are copied with one copy: the bytes written are the same,
/// with far fewer small copies.
struct FieldCopier<'a> {
    raw: &'a [u8],
    /// Range of `raw` waiting to be copied.
    run: (usize, usize),
}

impl<'a> FieldCopier<'a> {
    fn new(raw: &'a [u8]) -> Self {
        FieldCopier { raw, run: (0, 0) }
    }

    fn put(&mut self, out: &mut BytesMut, f: &Field) {
        let (start, end) = (f.name.0 as usize, f.value.1 as usize);
        if !f.verbatim {
            self.flush(out);
            put_field(out, at(self.raw, f.name), at(self.raw, f.value));
        } else if self.run.1 == start && self.run.1 > self.run.0 {
            self.run.1 = end + 2;
        } else {
            self.flush(out);
            self.run = (start, end + 2);
        }
    }

    fn flush(&mut self, out: &mut BytesMut) {
        if self.run.1 > self.run.0 {
            out.extend_from_slice(self.raw.get(self.run.0..self.run.1).unwrap_or(&[]));
        }
        self.run = (0, 0);
    }
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Append `n` in decimal, without allocating.
fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn put_framing(out: &mut BytesMut, body: BodyKind) {
    match body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            put_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::Empty | BodyKind::Close => {}
    }
}

fn put_connection(out: &mut BytesMut, client_version: Version, keep_alive: bool) {
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
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
///
/// The client's `X-Forwarded-For` fields are merged into the one written (in order,
/// joined with `, `; none is written if there are none and `client_ip` is `None`). A
/// client-sent `X-Forwarded-Host` is dropped (it is replaced by the client's `Host`, or
/// absent), so the backend never sees a spoofed one.
pub fn write_request_head(out: &mut BytesMut, head: &RequestHead, fwd: &Forward<'_>) {
    let ip = fwd.client_ip.map(IpText::new);
    write_forwarded_head(out, head, fwd, ip.as_ref());
}

/// [`write_request_head`] with the client address already formatted (`fwd.client_ip`
/// is not looked at).
pub(crate) fn write_forwarded_head(
    out: &mut BytesMut,
    head: &RequestHead,
    fwd: &Forward<'_>,
    client_ip: Option<&IpText>,
) {
    let raw = &head.raw[..];
    out.reserve(raw.len() + fwd.host.len() + fwd.path_prefix.len() + 128);
    // The request line as received when it already reads `METHOD target HTTP/1.1`
    // CRLF and no prefix is added; otherwise written piece by piece.
    let (m, t) = (head.method_range, head.target);
    let line_end = t.1 as usize + 11;
    if fwd.path_prefix.is_empty()
        && fwd.target.is_none()
        && m.0 == 0
        && t.0 == m.1 + 1
        && raw.get(m.1 as usize) == Some(&b' ')
        && raw.get(t.1 as usize..line_end) == Some(&b" HTTP/1.1\r\n"[..])
    {
        out.extend_from_slice(raw.get(..line_end).unwrap_or(&[]));
    } else {
        out.extend_from_slice(head.method_str());
        out.extend_from_slice(b" ");
        out.extend_from_slice(fwd.path_prefix);
        out.extend_from_slice(fwd.target.unwrap_or(head.target()));
        out.extend_from_slice(b" HTTP/1.1\r\n");
    }
    // One pass over the fields, whose names were recognized while parsing. Only a
    // message with a `Connection` field needs a second look at each name.
    let connection = head.fields.first(Name::Connection).is_some();
    let mut any_xff = false;
    let mut copier = FieldCopier::new(raw);
    for f in &head.fields.list {
        match f.kind {
            // rewritten below
            Name::Host | Name::ContentLength | Name::XForwardedProto | Name::XForwardedHost => {
                continue
            }
            Name::XForwardedFor => {
                any_xff = true;
                continue;
            }
            k if k.is_hop_by_hop() => continue,
            Name::McpSessionId | Name::LastEventId if fwd.drop_session_fields => continue,
            Name::McpSessionId if fwd.session_id.is_some() => continue,
            _ => {}
        }
        let name = at(raw, f.name);
        if connection && head.fields.named_by_connection(raw, name) {
            continue;
        }
        copier.put(out, f);
    }
    copier.flush(out);
    if let (Some(sid), false) = (fwd.session_id, fwd.drop_session_fields) {
        put_field(out, b"Mcp-Session-Id", sid);
    }
    put_field(out, b"Host", fwd.host);

    let mut wrote_xff = false;
    if any_xff && !(connection && head.fields.named_by_connection(raw, b"x-forwarded-for")) {
        for f in &head.fields.list {
            let value = trim_ows(at(raw, f.value));
            if f.kind != Name::XForwardedFor || value.is_empty() {
                continue;
            }
            out.extend_from_slice(if wrote_xff {
                b", "
            } else {
                b"X-Forwarded-For: "
            });
            out.extend_from_slice(value);
            wrote_xff = true;
        }
    }
    if let Some(ip) = client_ip {
        out.extend_from_slice(if wrote_xff {
            b", "
        } else {
            b"X-Forwarded-For: "
        });
        out.extend_from_slice(ip.as_bytes());
        wrote_xff = true;
    }
    if wrote_xff {
        out.extend_from_slice(b"\r\n");
    }

    put_field(out, b"X-Forwarded-Proto", fwd.proto.as_bytes());
    if let Some(host) = head.fields.first(Name::Host) {
        put_field(out, b"X-Forwarded-Host", trim_ows(at(raw, host.value)));
    }
    put_framing(out, head.body);
    out.extend_from_slice(b"\r\n");
}

/// A client address as `IpAddr`'s `Display` writes it, formatted once per connection
/// and kept inline (it is written on every forwarded request).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub(crate) fn new(ip: IpAddr) -> IpText {
        struct Cursor<'a>(&'a mut [u8; 48], usize);
        impl std::fmt::Write for Cursor<'_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                let dst = self
                    .0
                    .get_mut(self.1..self.1 + s.len())
                    .ok_or(std::fmt::Error)?;
                dst.copy_from_slice(s.as_bytes());
                self.1 += s.len();
                Ok(())
            }
        }
        let mut buf = [0u8; 48];
        let mut c = Cursor(&mut buf, 0);
        // The longest address text (IPv4-mapped IPv6) is 45 bytes: this never fails.
        let _ = std::fmt::Write::write_fmt(&mut c, format_args!("{ip}"));
        let len = c.1;
        IpText { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// The standard reason phrase for `status`, if it is a common one.
fn standard_reason(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => return None,
    })
}

/// `HTTP/1.1 <status> <reason>\r\n`. The status is written as three digits.
fn put_status_line(out: &mut BytesMut, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let status = status.min(999);
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// Serialize `head` for the client into `out`: `HTTP/1.1 <status> <reason>`, every
/// field except hop-by-hop ones (as above) and except `Content-Length`, then the
/// framing: `body` is the framing the router will send the body with (`Length(n)` ->
/// `Content-Length: n`; `Chunked` -> `Transfer-Encoding: chunked`; `Close`/`Empty` ->
/// nothing, except that an `Empty` body of a status that may carry one (not 1xx, 204,
/// 304, and not answering HEAD — the caller passes `Length(0)` for those it wants) gets
/// nothing written either). Finally `Connection: close` when `keep_alive` is false, or
/// `Connection: keep-alive` when `keep_alive` is true and the client is HTTP/1.0.
///
/// The reason phrase is the backend's; if it sent none, the standard phrase for the
/// status (or none for an uncommon status).
pub fn write_response_head(
    out: &mut BytesMut,
    head: &ResponseHead,
    body: BodyKind,
    client_version: Version,
    keep_alive: bool,
) {
    write_response_head_sid(out, head, body, client_version, keep_alive, None)
}

/// [`write_response_head`], writing `Mcp-Session-Id: <session_id>` in place of the
/// backend's field(s) when `session_id` is given (sealed session ids).
pub fn write_response_head_sid(
    out: &mut BytesMut,
    head: &ResponseHead,
    body: BodyKind,
    client_version: Version,
    keep_alive: bool,
    session_id: Option<&[u8]>,
) {
    out.reserve(head.raw.len() + 64);
    let raw = &head.raw[..];
    // The status line as received when it already reads `HTTP/1.1 SSS reason` CRLF
    // (what `put_status_line` would write); otherwise written piece by piece.
    let (r0, r1) = (head.reason.0 as usize, head.reason.1 as usize);
    let verbatim = r0 == 13
        && r1 > r0
        && raw.get(..9) == Some(&b"HTTP/1.1 "[..])
        && raw.get(12) == Some(&b' ')
        && raw.get(9..12).is_some_and(|d| {
            d.iter().all(u8::is_ascii_digit)
                && u16::from(d[0] - b'0') * 100
                    + u16::from(d[1] - b'0') * 10
                    + u16::from(d[2] - b'0')
                    == head.status
        })
        && raw.get(r1..r1 + 2) == Some(&b"\r\n"[..]);
    if verbatim {
        out.extend_from_slice(raw.get(..r1 + 2).unwrap_or(&[]));
    } else {
        let reason = match head.reason() {
            [] => standard_reason(head.status).unwrap_or("").as_bytes(),
            r => r,
        };
        put_status_line(out, head.status, reason);
    }
    let raw = &head.raw[..];
    let connection = head.fields.first(Name::Connection).is_some();
    let mut copier = FieldCopier::new(raw);
    for f in &head.fields.list {
        if f.kind == Name::ContentLength || f.kind.is_hop_by_hop() {
            continue;
        }
        if f.kind == Name::McpSessionId && session_id.is_some() {
            continue;
        }
        if connection && head.fields.named_by_connection(raw, at(raw, f.name)) {
            continue;
        }
        copier.put(out, f);
    }
    copier.flush(out);
    if let Some(sid) = session_id {
        put_field(out, b"Mcp-Session-Id", sid);
    }
    put_framing(out, body);
    put_connection(out, client_version, keep_alive);
    out.extend_from_slice(b"\r\n");
}

/// Serialize a complete response generated by the router itself: status line with the
/// standard reason phrase for `status`, `Content-Type` (when `body` is non-empty),
/// `Content-Length`, each of `extra` (name, value), `Connection: close` when
/// `keep_alive` is false (or `Connection: keep-alive` for a keep-alive HTTP/1.0
/// client), blank line, body.
///
/// For 1xx, 204 and 304 no `Content-Length` and no body are written (RFC 9110 section
/// 8.6: "A server MUST NOT send a Content-Length header field in any response with a
/// status code of 1xx (Informational) or 204 (No Content)."), and for an interim 1xx no
/// `Connection` field either (the exchange is not over). Uncommon statuses get the
/// reason phrase `Unknown`.
pub fn write_simple_response(
    out: &mut BytesMut,
    status: u16,
    content_type: &str,
    extra: &[(&str, &[u8])],
    body: &[u8],
    client_version: Version,
    keep_alive: bool,
) {
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    let body = if bodiless { &[][..] } else { body };
    out.reserve(128 + content_type.len() + body.len());
    put_status_line(
        out,
        status,
        standard_reason(status).unwrap_or("Unknown").as_bytes(),
    );
    if !body.is_empty() {
        put_field(out, b"Content-Type", content_type.as_bytes());
    }
    if !bodiless {
        put_framing(out, BodyKind::Length(body.len() as u64));
    }
    for (name, value) in extra {
        put_field(out, name.as_bytes(), value);
    }
    if !(100..200).contains(&status) {
        put_connection(out, client_version, keep_alive);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Append one chunk of a chunked body (RFC 9112 section 7.1: `chunk-size CRLF
/// chunk-data CRLF`, the size in hex). An empty `data` writes nothing: a zero-size
/// chunk is the last chunk and ends the body ([`LAST_CHUNK`]).
pub fn write_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = data.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xF];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.reserve(data.len() + 20);
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and the empty trailer section that end a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Append a `200` head for a streamed body of `content_type` (an SSE stream): the
/// `extra` fields, `Transfer-Encoding: chunked` for an HTTP/1.1 client (an HTTP/1.0
/// client gets the body delimited by the connection's close, so `Connection: close`),
/// and `Connection: close` when the connection ends with the stream.
pub fn write_stream_head(
    out: &mut BytesMut,
    content_type: &str,
    extra: &[(&str, &[u8])],
    client_version: Version,
    keep_alive: bool,
) {
    let chunked = client_version == Version::Http11;
    put_status_line(out, 200, b"OK");
    put_field(out, b"Content-Type", content_type.as_bytes());
    put_field(out, b"Cache-Control", b"no-cache");
    for (name, value) in extra {
        put_field(out, name.as_bytes(), value);
    }
    if chunked {
        put_framing(out, BodyKind::Chunked);
    }
    put_connection(out, client_version, chunked && keep_alive);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits::default()
    }

    /// Parse a complete request head; returns the head and what is left in the buffer.
    fn req(input: &[u8]) -> Result<(RequestHead, BytesMut), HeadError> {
        let mut buf = BytesMut::from(input);
        let mut head = RequestHead::default();
        match parse_request(&mut buf, &limits(), &mut head)? {
            true => Ok((head, buf)),
            false => panic!("incomplete: {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn req_err(input: &[u8]) -> HeadError {
        match req(input) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn res(input: &[u8], method: Method) -> Result<ResponseHead, HeadError> {
        let mut buf = BytesMut::from(input);
        let mut head = ResponseHead::default();
        match parse_response(&mut buf, &limits(), method, &mut head)? {
            true => Ok(head),
            false => panic!("incomplete: {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn text(out: &BytesMut) -> &str {
        std::str::from_utf8(out).expect("test output is ASCII")
    }

    #[test]
    fn simple_request() {
        let (h, rest) = req(b"POST /mcp?x=1&y HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\nX-Thing:  a b \t\r\n\r\n{}").unwrap();
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.method_str(), b"POST");
        assert_eq!(h.target(), b"/mcp?x=1&y");
        assert_eq!(h.path(), b"/mcp");
        assert_eq!(h.query(), Some(&b"x=1&y"[..]));
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.body, BodyKind::Length(2));
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(h.header("host"), Some(&b"example.com"[..]));
        assert_eq!(h.header("x-thing"), Some(&b"a b"[..]));
        assert_eq!(h.header("missing"), None);
        assert_eq!(h.headers().count(), 3);
        assert_eq!(
            h.headers().next(),
            Some((&b"Host"[..], &b"example.com"[..]))
        );
        assert!(h.raw().starts_with(b"POST") && h.raw().ends_with(b"\r\n\r\n"));
        assert_eq!(&rest[..], b"{}");
    }

    #[test]
    fn fast_path_agrees_with_httparse_on_mutated_heads() {
        // parse_* cross-check every fast-path answer against httparse (cfg(test))
        let req: &[u8] = b"POST /mcp?x=1 HTTP/1.1\r\nHost: router.example:8080\r\nUser-Agent: mcp-bench/1\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nMcp-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: b0-1-0123456789abcdef\r\nContent-Length: 5\r\n\r\nhello";
        let res: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s-1\r\ncontent-length: 2\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n{}";
        let mut list = Vec::new();
        assert!(fast_request(req, 128, &mut list).is_some());
        list.clear();
        assert!(fast_response(res, 128, &mut list).is_some());
        let interesting = [
            b' ', b'\t', b'\r', b'\n', b':', 0x7f, 0x80, 0xff, b'a', b'A', 0, b'/', b'1', b'"',
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut fast_req, mut fast_res) = (0, 0);
        for round in 0..40_000 {
            let base = if round % 2 == 0 { req } else { res };
            let mut m = base.to_vec();
            for _ in 0..1 + next(3) {
                let at = next(m.len());
                match next(4) {
                    0 => m[at] = interesting[next(interesting.len())],
                    1 => {
                        m.remove(at);
                    }
                    2 => m.insert(at, interesting[next(interesting.len())]),
                    _ => m.truncate(at),
                }
                if m.is_empty() {
                    break;
                }
            }
            let limits = HttpLimits {
                max_headers: 3 + next(8),
                ..limits()
            };
            list.clear();
            if round % 2 == 0 {
                fast_req += fast_request(&m, limits.max_headers, &mut list).is_some() as usize;
                let mut buf = BytesMut::from(&m[..]);
                let _ = parse_request(&mut buf, &limits, &mut RequestHead::default());
            } else {
                fast_res += fast_response(&m, limits.max_headers, &mut list).is_some() as usize;
                let mut buf = BytesMut::from(&m[..]);
                let _ =
                    parse_response(&mut buf, &limits, Method::Get, &mut ResponseHead::default());
            }
        }
        // both paths were exercised
        assert!(fast_req > 1000 && fast_res > 1000, "{fast_req} {fast_res}");
    }

    #[test]
    fn copied_fields_are_written_as_field_by_field() {
        // verbatim lines, odd spacing, bare LF, empty values, runs broken by dropped
        // fields: every kept field must come out as `name: value` CRLF, in order
        let input: &[u8] = b"POST /a HTTP/1.1\r\nA: 1\r\nB: 2\r\nC:3\r\nD:  4  \r\nE: \r\nHost: h\r\nF: 5\nG: 6\r\nContent-Length: 0\r\nH: 7\r\nI: 8\r\n\r\n";
        let (h, _) = req(input).unwrap();
        let mut out = BytesMut::new();
        let fwd = Forward {
            host: b"b:1",
            path_prefix: b"",
            client_ip: None,
            proto: "http",
            drop_session_fields: false,
            session_id: None,
            target: None,
        };
        write_request_head(&mut out, &h, &fwd);
        let mut want = String::from("POST /a HTTP/1.1\r\n");
        for (n, v) in h.headers() {
            let n = std::str::from_utf8(n).unwrap();
            if !["host", "content-length"].contains(&n.to_ascii_lowercase().as_str()) {
                want.push_str(&format!("{n}: {}\r\n", std::str::from_utf8(v).unwrap()));
            }
        }
        let got = text(&out);
        assert!(got.starts_with(&want), "{got:?}\nwant prefix {want:?}");
        assert!(got[want.len()..].starts_with("Host: b:1\r\n"), "{got:?}");
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "192.0.2.7",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn eq_lower_is_exact() {
        let all: Vec<u8> = (0..=255u8).collect();
        for &a in &all {
            for &b in b"az-09" {
                assert_eq!(
                    eq_lower(&[a], &[b]),
                    [a].eq_ignore_ascii_case(&[b]),
                    "{a} {b}"
                );
                let long = [b'x', b'-', b'y', b'z', b'w', b'v', b'u', b't', a];
                let want = [b'x', b'-', b'y', b'z', b'w', b'v', b'u', b't', b];
                assert_eq!(eq_lower(&long, &want), long.eq_ignore_ascii_case(&want));
            }
        }
        for i in 0..14 {
            let mut n = *b"Mcp-Session-Id";
            assert!(eq_lower(&n, b"mcp-session-id"));
            n[i] ^= 0x40;
            assert!(!eq_lower(&n, b"mcp-session-id"), "{i}");
        }
        assert!(eq_lower(b"MCP-Protocol-Version", b"mcp-protocol-version"));
        assert!(!eq_lower(b"MCP-Protocol-Versioo", b"mcp-protocol-version"));
        assert!(!eq_lower(b"mcp", b"mcp-"));
        assert!(eq_lower(b"", b""));
    }

    #[test]
    fn dot_segments_in_every_spelling() {
        for p in [
            "/..",
            "/.",
            "/../x",
            "/x/./y",
            "/%2e%2e/x",
            "/%2E./x",
            "/.%2e",
            "/x/..%2fy",
            "/x/..%5Cy",
            "/..\\y",
            "/..;a=b/x",
            "/..#x",
            "/x/%2e",
        ] {
            assert!(has_dot_segment(p.as_bytes()), "{p}");
        }
        for p in [
            "/",
            "/mcp",
            "/a.b",
            "/...",
            "/..a",
            "/%2e%2e%2e",
            "/.well-known/x",
            "/%2f..x",
            "/x%2e",
            "//",
            "/;..",
        ] {
            assert!(!has_dot_segment(p.as_bytes()), "{p}");
        }
    }

    #[test]
    fn conflicting_fields_are_flagged_not_refused() {
        for (input, conflict) in [
            (&b"GET / HTTP/1.1\r\nMcp-Session-Id: a\r\n\r\n"[..], false),
            (
                b"GET / HTTP/1.1\r\nMcp-Session-Id: a\r\nmcp-session-id: a\r\n\r\n",
                true,
            ),
            (
                b"GET / HTTP/1.1\r\nMCP-Protocol-Version: 1\r\nMCP-Protocol-Version: 1\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.1\r\nConnection: close, HOST\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nConnection: close, X-Last-Event-ID\r\n\r\n",
                false,
            ),
            (b"GET /a/../b HTTP/1.1\r\n\r\n", true),
        ] {
            let (h, _) = req(input).unwrap();
            assert_eq!(
                h.conflict().is_some(),
                conflict,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn known_names_are_recognized_exactly_in_any_case() {
        let names: &[&str] = &[
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "expect",
            "accept",
            "content-type",
            "mcp-session-id",
            "mcp-protocol-version",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "origin",
            "mcp-method",
            "mcp-name",
            "last-event-id",
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let k = Name::of(n.as_bytes());
            assert_ne!(k, Name::Other, "{n}");
            assert!(seen.insert(k as usize), "{n} shares a kind");
            assert_eq!(Name::of(n.to_ascii_uppercase().as_bytes()), k);
            // one byte off, or one byte longer: not that name
            let mut off = n.as_bytes().to_vec();
            off[0] ^= 0x01;
            assert_ne!(Name::of(&off), k, "{n}");
            assert_ne!(Name::of(format!("{n}x").as_bytes()), k, "{n}");
        }
        assert_eq!(seen.len() + 1, NAMES);
        // lookups of known and unknown names agree with a plain scan
        let (h, _) = req(b"GET / HTTP/1.1\r\nX-A: 1\r\nMCP-Session-ID:  s1 \r\nmcp-session-id: s2\r\nHOST: h\r\n\r\n").unwrap();
        assert_eq!(h.header("mcp-session-id"), Some(&b"s1"[..]));
        assert_eq!(h.header("host"), Some(&b"h"[..]));
        assert_eq!(h.header("x-a"), Some(&b"1"[..]));
        assert_eq!(h.header("accept"), None);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_first_wins() {
        let (h, _) = req(b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n").unwrap();
        assert_eq!(h.header("x-a"), Some(&b"1"[..]));
        assert_eq!(h.path(), b"/");
        assert_eq!(h.query(), None);
        assert_eq!(h.body, BodyKind::Empty);
    }

    #[test]
    fn methods_are_case_sensitive() {
        for (m, want) in [
            (&b"GET"[..], Method::Get),
            (b"POST", Method::Post),
            (b"DELETE", Method::Delete),
            (b"HEAD", Method::Head),
            (b"OPTIONS", Method::Options),
            (b"PUT", Method::Put),
            (b"PATCH", Method::Patch),
            (b"get", Method::Other),
            (b"Post", Method::Other),
            (b"PROPFIND", Method::Other),
        ] {
            let mut input = m.to_vec();
            input.extend_from_slice(b" / HTTP/1.1\r\n\r\n");
            let (h, _) = req(&input).unwrap();
            assert_eq!(h.method, want);
            assert_eq!(h.method_str(), m);
        }
    }

    #[test]
    fn incomplete_head_leaves_buffer_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut head = RequestHead::default();
        for n in 0..input.len() {
            let mut buf = BytesMut::from(&input[..n]);
            assert_eq!(
                parse_request(&mut buf, &limits(), &mut head),
                Ok(false),
                "{n}"
            );
            assert_eq!(&buf[..], &input[..n]);
        }
    }

    #[test]
    fn pipelined_requests_parse_one_after_the_other() {
        let mut buf = BytesMut::from(
            &b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcDELETE /c HTTP/1.1\r\n\r\n"[..],
        );
        let mut h = RequestHead::default();
        assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(true));
        assert_eq!((h.method, h.target()), (Method::Get, &b"/a"[..]));
        assert_eq!(h.header("host"), Some(&b"x"[..]));
        assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(true));
        assert_eq!((h.method, h.target()), (Method::Post, &b"/b"[..]));
        assert_eq!(
            h.header("host"),
            None,
            "fields of the previous request are gone"
        );
        assert_eq!(h.body, BodyKind::Length(3));
        let _ = buf.split_to(3); // the body
        assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(true));
        assert_eq!((h.method, h.target()), (Method::Delete, &b"/c"[..]));
        assert!(buf.is_empty());
        assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(false));
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_consumed() {
        let mut buf = BytesMut::from(&b"\r\n\r\nGET / HTTP/1.1\r\n\r\nX"[..]);
        let mut h = RequestHead::default();
        assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(true));
        assert_eq!(&h.raw()[..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(h.method_str(), b"GET");
        assert_eq!(&buf[..], b"X");
        // Only empty lines so far: incomplete.
        let mut buf = BytesMut::from(&b"\r\n\r\n"[..]);
        assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(false));
        assert_eq!(buf.len(), 4);
    }

    #[test]
    fn steady_state_parsing_does_not_grow_fields() {
        let input = b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nAccept: */*\r\nContent-Length: 2\r\n\r\n";
        let mut h = RequestHead::default();
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(true));
        let cap = h.fields.list.capacity();
        let ptr = h.fields.list.as_ptr();
        for _ in 0..100 {
            let mut buf = BytesMut::from(&input[..]);
            assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(true));
            assert_eq!(h.fields.list.capacity(), cap);
            assert_eq!(
                h.fields.list.as_ptr(),
                ptr,
                "the field vector was not reallocated"
            );
        }
        let mut rh = ResponseHead::default();
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: y\r\n\r\n";
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(
            parse_response(&mut buf, &limits(), Method::Post, &mut rh),
            Ok(true)
        );
        let cap = rh.fields.list.capacity();
        for _ in 0..100 {
            let mut buf = BytesMut::from(&input[..]);
            assert_eq!(
                parse_response(&mut buf, &limits(), Method::Post, &mut rh),
                Ok(true)
            );
            assert_eq!(rh.fields.list.capacity(), cap);
        }
    }

    #[test]
    fn oversized_heads_are_too_large() {
        let small = HttpLimits {
            max_head: 64,
            max_headers: 96,
        };
        let mut h = RequestHead::default();
        // Incomplete and already longer than max_head.
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        buf.extend_from_slice(&[b'a'; 60]);
        assert_eq!(
            parse_request(&mut buf, &small, &mut h),
            Err(HeadError::TooLarge)
        );
        // Incomplete but within max_head: wait.
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX: aaaa"[..]);
        assert_eq!(parse_request(&mut buf, &small, &mut h), Ok(false));
        // Complete, but longer than max_head.
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        buf.extend_from_slice(&[b'a'; 60]);
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_request(&mut buf, &small, &mut h),
            Err(HeadError::TooLarge)
        );
        // Exactly max_head is fine, and a body after it does not count.
        let mut exact = b"GET / HTTP/1.1\r\nX: ".to_vec();
        exact.resize(60, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exact.len(), 64);
        let mut buf = BytesMut::from(&exact[..]);
        buf.extend_from_slice(&[b'b'; 1000]);
        assert_eq!(parse_request(&mut buf, &small, &mut h), Ok(true));
        assert_eq!(buf.len(), 1000);
        assert_eq!(HeadError::TooLarge.status(), 431);
        // Responses too.
        let mut rh = ResponseHead::default();
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        buf.extend_from_slice(&[b'a'; 60]);
        assert_eq!(
            parse_response(&mut buf, &small, Method::Get, &mut rh),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn too_many_headers() {
        let few = HttpLimits {
            max_head: 32 * 1024,
            max_headers: 3,
        };
        let mut h = RequestHead::default();
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"[..]);
        assert_eq!(parse_request(&mut buf, &few, &mut h), Ok(true));
        let mut buf =
            BytesMut::from(&b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"[..]);
        assert_eq!(
            parse_request(&mut buf, &few, &mut h),
            Err(HeadError::TooLarge)
        );
        // max_headers above the stack array is capped at 128.
        let many = HttpLimits {
            max_head: 64 * 1024,
            max_headers: 1000,
        };
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..129 {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(
            parse_request(&mut buf, &many, &mut h),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn smuggling_framing_is_refused() {
        let bad = |input: &[u8]| {
            let e = req_err(input);
            assert!(matches!(e, HeadError::BadFraming(_)), "{e:?} for {input:?}");
            assert_eq!(e.status(), 400);
        };
        // CL.TE and TE.CL.
        bad(
            b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        );
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\n");
        // Conflicting or invalid Content-Length.
        bad(b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nContent-Length: 5,\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n");
        // Transfer-Encoding not ending in chunked (RFC 9112 6.3 item 4: 400).
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        bad(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
        );
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunk ed\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n");
        // chunked twice.
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
        bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
        // HTTP/1.0 with Transfer-Encoding, with or without Content-Length.
        bad(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        bad(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
    }

    #[test]
    fn unsupported_transfer_codings_are_501() {
        for input in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let e = req_err(input);
            assert_eq!(e, HeadError::UnsupportedTransferEncoding);
            assert_eq!(e.status(), 501);
        }
    }

    #[test]
    fn accepted_framing() {
        let body = |input: &[u8]| req(input).unwrap().0.body;
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            BodyKind::Length(5)
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            BodyKind::Length(5)
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            BodyKind::Length(0)
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n"),
            BodyKind::Length(u64::MAX)
        );
        for te in [
            &b"chunked"[..],
            b"Chunked",
            b"CHUNKED",
            b"chunked ",
            b"chunked\t",
            b"  chunked",
            b"chunked,",
            b", chunked",
        ] {
            let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: ".to_vec();
            input.extend_from_slice(te);
            input.extend_from_slice(b"\r\n\r\n");
            assert_eq!(body(&input), BodyKind::Chunked, "{te:?}");
        }
        assert_eq!(
            body(b"GET / HTTP/1.1\r\n\r\n"),
            BodyKind::Empty,
            "no framing fields: no body"
        );
    }

    #[test]
    fn invalid_syntax_is_refused() {
        let invalid = |input: &[u8]| {
            let e = req_err(input);
            assert!(matches!(e, HeadError::Invalid(_)), "{e:?} for {input:?}");
            assert_eq!(e.status(), 400);
        };
        // Whitespace between field name and colon.
        invalid(b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n");
        invalid(b"POST / HTTP/1.1\r\nContent-Length\t: 5\r\n\r\n");
        // Obsolete line folding.
        invalid(b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n");
        // Bad bytes.
        invalid(b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nX A: b\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\n: b\r\n\r\n");
        invalid(b"G\x01T / HTTP/1.1\r\n\r\n");
        invalid(b"GET /a b HTTP/1.1\r\n\r\n");
        invalid(b"GET  / HTTP/1.1\r\n\r\n");
        invalid(b"GET / http/1.1\r\n\r\n");
        invalid(b"GET / HTTP/1.1 \r\n\r\n");
        invalid(b"GET /\r\n\r\n");
        // The HTTP/2 connection preface.
        invalid(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        // Not origin-form.
        invalid(b"GET http://example.com/ HTTP/1.1\r\n\r\n");
        invalid(b"OPTIONS * HTTP/1.1\r\n\r\n");
        // Two Host fields.
        invalid(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    }

    #[test]
    fn unsupported_versions() {
        for input in [
            &b"GET / HTTP/1.2\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
        ] {
            let e = req_err(input);
            assert_eq!(e, HeadError::UnsupportedVersion, "{input:?}");
            assert_eq!(e.status(), 505);
        }
        // A version that may still turn out valid waits for the rest of the line.
        let mut h = RequestHead::default();
        let mut buf = BytesMut::from(&b"GET / HTTP/2"[..]);
        assert_eq!(parse_request(&mut buf, &limits(), &mut h), Ok(false));
        let mut buf = BytesMut::from(&b"GET / HTTP/X"[..]);
        assert!(matches!(
            parse_request(&mut buf, &limits(), &mut h),
            Err(HeadError::Invalid(_))
        ));
        let mut rh = ResponseHead::default();
        let mut buf = BytesMut::from(&b"HTTP/2.0 200 OK\r\n\r\n"[..]);
        assert_eq!(
            parse_response(&mut buf, &limits(), Method::Get, &mut rh),
            Err(HeadError::UnsupportedVersion)
        );
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |input: &[u8]| req(input).unwrap().0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: foo\r\nConnection: close\r\n\r\n"
        ));
        assert!(ka(b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: foo, Keep-Alive\r\n\r\n"));
        assert!(ka(
            b"GET / HTTP/1.0\r\nConnection: foo\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n"));
        let (h, _) = req(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(h.version, Version::Http10);
    }

    #[test]
    fn expect_continue() {
        let ec = |input: &[u8]| req(input).unwrap().0.expect_continue;
        assert!(ec(
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(ec(b"POST / HTTP/1.1\r\nexpect: 100-Continue \r\n\r\n"));
        assert!(!ec(b"POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n"));
        assert!(!ec(b"POST / HTTP/1.1\r\n\r\n"));
        // Ignored for HTTP/1.0 (RFC 9110 10.1.1).
        assert!(!ec(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"));
    }

    #[test]
    fn response_framing() {
        let r = |input: &[u8], m: Method| res(input, m).unwrap();
        let h = r(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
            Method::Post,
        );
        assert_eq!(
            (h.status, h.body, h.keep_alive),
            (200, BodyKind::Length(12), true)
        );
        assert_eq!(h.reason(), b"OK");
        let h = r(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Get,
        );
        assert_eq!(h.body, BodyKind::Chunked);
        // Neither: until close, which cannot keep the connection.
        let h = r(b"HTTP/1.1 200 OK\r\n\r\n", Method::Get);
        assert_eq!((h.body, h.keep_alive), (BodyKind::Close, false));
        // HEAD, 1xx, 204 and 304 have no body whatever they say.
        let h = r(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
            Method::Head,
        );
        assert_eq!((h.body, h.keep_alive), (BodyKind::Empty, true));
        let h = r(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Head,
        );
        assert_eq!(h.body, BodyKind::Empty);
        for status in [
            &b"100 Continue"[..],
            b"102 Processing",
            b"103 Early Hints",
            b"204 No Content",
            b"304 Not Modified",
        ] {
            let mut input = b"HTTP/1.1 ".to_vec();
            input.extend_from_slice(status);
            input.extend_from_slice(b"\r\nContent-Length: 7\r\n\r\n");
            let h = r(&input, Method::Get);
            assert_eq!(
                (h.body, h.keep_alive),
                (BodyKind::Empty, true),
                "{status:?}"
            );
        }
        assert!(r(b"HTTP/1.1 100 Continue\r\n\r\n", Method::Post).is_interim());
        assert!(!r(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::Get).is_interim());
        assert!(!r(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Method::Get).is_interim());
        // Connection: close.
        let h = r(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            Method::Get,
        );
        assert!(!h.keep_alive);
        // HTTP/1.0 responses.
        let h = r(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::Get);
        assert_eq!((h.version, h.keep_alive), (Version::Http10, false));
        let h = r(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            Method::Get,
        );
        assert!(h.keep_alive);
        // No reason phrase.
        let h = r(b"HTTP/1.1 204\r\n\r\n", Method::Get);
        assert_eq!((h.status, h.reason()), (204, &b""[..]));
    }

    #[test]
    fn bad_responses_are_refused() {
        let e = |input: &[u8]| res(input, Method::Get).expect_err("refused");
        assert!(matches!(
            e(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::BadFraming(_)
        ));
        assert!(matches!(
            e(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"),
            HeadError::BadFraming(_)
        ));
        assert!(matches!(
            e(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::BadFraming(_)
        ));
        assert_eq!(
            e(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            HeadError::UnsupportedTransferEncoding
        );
        // Obsolete line folding, in the middle and at the start of a value.
        assert!(matches!(
            e(b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n"),
            HeadError::Invalid(_)
        ));
        assert!(matches!(
            e(b"HTTP/1.1 200 OK\r\nX-A:\r\n two\r\n\r\n"),
            HeadError::Invalid(_)
        ));
        // Whitespace before the colon.
        assert!(matches!(
            e(b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"),
            HeadError::Invalid(_)
        ));
        assert!(matches!(
            e(b"HTTP/1.1 20 OK\r\n\r\n"),
            HeadError::Invalid(_)
        ));
        assert!(matches!(
            e(b"HTTP/1.1 099 Odd\r\n\r\n"),
            HeadError::Invalid(_)
        ));
    }

    #[test]
    fn event_stream_detection() {
        let is = |ct: &[u8]| {
            let mut input = b"HTTP/1.1 200 OK\r\nContent-Type: ".to_vec();
            input.extend_from_slice(ct);
            input.extend_from_slice(b"\r\n\r\n");
            res(&input, Method::Get).unwrap().is_event_stream()
        };
        assert!(is(b"text/event-stream"));
        assert!(is(b"Text/Event-Stream; charset=utf-8"));
        assert!(is(b"text/event-stream ;charset=utf-8"));
        assert!(!is(b"application/json"));
        assert!(!is(b"text/event-streams"));
        assert!(!res(b"HTTP/1.1 200 OK\r\n\r\n", Method::Get)
            .unwrap()
            .is_event_stream());
    }

    #[test]
    fn forwarded_request_head() {
        let (h, _) = req(b"POST /mcp?s=1 HTTP/1.1\r\n\
            Host: public.example\r\n\
            Connection: keep-alive, X-Secret\r\n\
            Keep-Alive: timeout=5\r\n\
            X-Secret: drop me\r\n\
            Proxy-Connection: keep-alive\r\n\
            TE: trailers\r\n\
            Trailer: X-Sum\r\n\
            Upgrade: websocket\r\n\
            Expect: 100-continue\r\n\
            X-Forwarded-For: 203.0.113.9\r\n\
            Mcp-Session-Id: abc\r\n\
            x-forwarded-for: 198.51.100.7, 192.0.2.1\r\n\
            X-Forwarded-Proto: gopher\r\n\
            X-Forwarded-Host: spoofed\r\n\
            Content-Length: 2\r\n\
            Accept: application/json, text/event-stream\r\n\r\n")
        .unwrap();
        let mut out = BytesMut::new();
        write_request_head(
            &mut out,
            &h,
            &Forward {
                host: b"10.0.0.5:8080",
                path_prefix: b"/base",
                client_ip: Some("192.0.2.44".parse().unwrap()),
                proto: "https",
                drop_session_fields: false,
                session_id: None,
                target: None,
            },
        );
        assert_eq!(
            text(&out),
            "POST /base/mcp?s=1 HTTP/1.1\r\n\
             Mcp-Session-Id: abc\r\n\
             Accept: application/json, text/event-stream\r\n\
             Host: 10.0.0.5:8080\r\n\
             X-Forwarded-For: 203.0.113.9, 198.51.100.7, 192.0.2.1, 192.0.2.44\r\n\
             X-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: public.example\r\n\
             Content-Length: 2\r\n\r\n"
        );
        // The output parses back.
        let (back, _) = req(&out).unwrap();
        assert_eq!(back.body, BodyKind::Length(2));
        assert!(!back.expect_continue);
    }

    #[test]
    fn forwarded_request_head_chunked_ipv6_no_host() {
        let (h, _) = req(
            b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer t\r\n\r\n",
        )
        .unwrap();
        let mut out = BytesMut::new();
        write_request_head(
            &mut out,
            &h,
            &Forward {
                host: b"backend",
                path_prefix: b"",
                client_ip: Some("2001:db8::1".parse().unwrap()),
                proto: "http",
                drop_session_fields: false,
                session_id: None,
                target: None,
            },
        );
        assert_eq!(
            text(&out),
            "PUT /x HTTP/1.1\r\n\
             Authorization: Bearer t\r\n\
             Host: backend\r\n\
             X-Forwarded-For: 2001:db8::1\r\n\
             X-Forwarded-Proto: http\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        // No body, no client ip, no XFF: nothing framing- or XFF-related is written.
        let (h, _) = req(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut out = BytesMut::new();
        write_request_head(
            &mut out,
            &h,
            &Forward {
                host: b"b",
                path_prefix: b"/p",
                client_ip: None,
                proto: "http",
                drop_session_fields: false,
                session_id: None,
                target: None,
            },
        );
        assert_eq!(
            text(&out),
            "GET /p/ HTTP/1.1\r\nHost: b\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    fn response_for(input: &[u8], method: Method) -> ResponseHead {
        res(input, method).unwrap()
    }

    #[test]
    fn forwarded_response_head() {
        let h = response_for(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nMcp-Session-Id: s1\r\n\r\n",
            Method::Post,
        );
        let mut out = BytesMut::new();
        write_response_head(&mut out, &h, BodyKind::Chunked, Version::Http11, true);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: s1\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        // The same for an HTTP/1.0 client: close-delimited, no chunking.
        let mut out = BytesMut::new();
        write_response_head(&mut out, &h, BodyKind::Close, Version::Http10, false);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: s1\r\nConnection: close\r\n\r\n"
        );
        // A keep-alive HTTP/1.0 client with a Content-Length body.
        let h = response_for(
            b"HTTP/1.1 202 Whatever\r\nContent-Length: 0\r\n\r\n",
            Method::Post,
        );
        let mut out = BytesMut::new();
        write_response_head(&mut out, &h, BodyKind::Length(0), Version::Http10, true);
        assert_eq!(
            text(&out),
            "HTTP/1.1 202 Whatever\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
        // Missing reason phrase: the standard one.
        let h = response_for(b"HTTP/1.1 404\r\nContent-Length: 3\r\n\r\n", Method::Get);
        let mut out = BytesMut::new();
        write_response_head(&mut out, &h, BodyKind::Length(3), Version::Http11, false);
        assert_eq!(
            text(&out),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        // Empty body (204): nothing about framing.
        let h = response_for(b"HTTP/1.1 204 No Content\r\n\r\n", Method::Get);
        let mut out = BytesMut::new();
        write_response_head(&mut out, &h, BodyKind::Empty, Version::Http11, true);
        assert_eq!(text(&out), "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn simple_responses() {
        let mut out = BytesMut::new();
        write_simple_response(
            &mut out,
            502,
            "application/json",
            &[("Retry-After", b"1")],
            b"{\"error\":1}",
            Version::Http11,
            false,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: 11\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{\"error\":1}"
        );
        let mut out = BytesMut::new();
        write_simple_response(&mut out, 202, "text/plain", &[], b"", Version::Http10, true);
        assert_eq!(
            text(&out),
            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
        let mut out = BytesMut::new();
        write_simple_response(
            &mut out,
            599,
            "text/plain",
            &[],
            b"x",
            Version::Http11,
            true,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 599 Unknown\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"
        );
        let mut out = BytesMut::new();
        write_simple_response(&mut out, 100, "", &[], b"", Version::Http11, true);
        assert_eq!(text(&out), "HTTP/1.1 100 Continue\r\n\r\n");
        let mut out = BytesMut::new();
        write_simple_response(
            &mut out,
            204,
            "text/plain",
            &[],
            b"ignored",
            Version::Http11,
            false,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
        for (status, reason) in [
            (200, "OK"),
            (400, "Bad Request"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (409, "Conflict"),
            (413, "Content Too Large"),
            (415, "Unsupported Media Type"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
        ] {
            let mut out = BytesMut::new();
            write_simple_response(&mut out, status, "", &[], b"", Version::Http11, true);
            assert!(
                text(&out).starts_with(&format!("HTTP/1.1 {status} {reason}\r\n")),
                "{status}"
            );
            // Every simple response parses back as a valid response.
            let back = response_for(&out, Method::Get);
            assert_eq!(back.status, status);
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: every prefix and many one-byte mutations of a
        // valid head must parse to something without panicking.
        let base = b"POST /mcp?q HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut h = RequestHead::default();
        let mut rh = ResponseHead::default();
        for i in 0..base.len() {
            for b in [0u8, b'\r', b'\n', b' ', b'\t', b':', b',', 0x80, 0xff, b'H'] {
                let mut input = base.to_vec();
                input[i] = b;
                let mut buf = BytesMut::from(&input[..]);
                let _ = parse_request(&mut buf, &limits(), &mut h);
                let mut buf = BytesMut::from(&input[..i]);
                let _ = parse_request(&mut buf, &limits(), &mut h);
                let mut buf = BytesMut::from(&input[..]);
                let _ = parse_response(&mut buf, &limits(), Method::Get, &mut rh);
            }
        }
    }

    #[test]
    fn chunks_are_framed_in_hex() {
        let mut out = BytesMut::new();
        write_chunk(&mut out, b"");
        assert!(out.is_empty(), "an empty chunk would end the body");
        write_chunk(&mut out, &[b'x'; 26]);
        assert_eq!(&out[..4], b"1a\r\n");
        assert!(out.ends_with(b"x\r\n"));
        let mut out = BytesMut::new();
        write_chunk(&mut out, &vec![0u8; 0x10000]);
        assert!(out.starts_with(b"10000\r\n"));
    }

    #[test]
    fn stream_heads_frame_by_version() {
        let mut out = BytesMut::new();
        write_stream_head(
            &mut out,
            "text/event-stream",
            &[("Mcp-Session-Id", b"s1")],
            Version::Http11,
            true,
        );
        let t = String::from_utf8(out.to_vec()).unwrap();
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(
            t.contains("Transfer-Encoding: chunked\r\n") && t.contains("Mcp-Session-Id: s1\r\n"),
            "{t}"
        );
        assert!(!t.contains("Connection: close"), "{t}");
        let mut out = BytesMut::new();
        write_stream_head(&mut out, "text/event-stream", &[], Version::Http10, true);
        let t = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            !t.contains("chunked") && t.contains("Connection: close\r\n"),
            "{t}"
        );
    }
}
