//! The checks behind the fuzz targets in `fuzz/`, one function per target.
//!
//! Each function takes the fuzzer's raw input and panics when an invariant fails, so the
//! cargo-fuzz targets are one-line wrappers and the stable corpus replay test
//! (`testkit/tests/fuzz_corpus.rs`) runs exactly the same checks on every checked-in
//! seed and regression input. Only built with the `fuzzing` feature.
//!
//! Input layout for the parser targets: the first byte(s) are control bytes (limits,
//! split points); the rest is the data under test. See each function.

use crate::http::{
    parse_request, parse_response, write_request_head, write_response_head, BodyDecoder, BodyKind,
    Forward, HttpLimits, Method, RequestHead, ResponseHead,
};
use crate::mcp::{
    endpoint_session_id, is_stateless_version, query_session_id, valid_session_id,
    write_error_body, Compared, ErrorCode, Expect, Mirror, SessionKey, Sniffer, SseParser,
};
use bytes::BytesMut;

mod sealed;
mod session;
mod stdio;
pub use sealed::sealed_id;
pub use session::{session_reading, session_sequence};
pub use stdio::{stdio_bridge, stdio_http};

/// One target's checks: panics when an invariant fails.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, for the replay test: `(name, function)`.
pub const TARGETS: &[(&str, Check)] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("sse", sse),
    ("sniff", sniff),
    ("session_id", session_id),
    ("session_sequence", session_sequence),
    ("session_reading", session_reading),
    ("stdio_bridge", stdio_bridge),
    ("stdio_http", stdio_http),
    ("sealed_id", sealed_id),
];

/// Split `data` into a control prefix of `n` bytes (zero-padded) and the rest.
fn ctl<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut c = [0u8; N];
    let n = data.len().min(N);
    c[..n].copy_from_slice(&data[..n]);
    (c, &data[n..])
}

/// Split points for `len` bytes drawn from `seed`: up to 8 cut positions, sorted.
fn cuts(seed: &[u8], len: usize) -> Vec<usize> {
    let mut v: Vec<usize> = seed
        .iter()
        .map(|&b| {
            if len == 0 {
                0
            } else {
                (b as usize * len) / 255
            }
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Pieces of `data` cut at `cuts`.
fn pieces<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.min(data.len());
        if c > at {
            out.push(&data[at..c]);
            at = c;
        }
    }
    out.push(&data[at..]);
    out
}

fn head_limits(c: u8) -> HttpLimits {
    HttpLimits {
        max_head: [64, 300, 4096, 32 * 1024][(c & 3) as usize],
        max_headers: [4, 16, 96, 96][((c >> 2) & 3) as usize],
    }
}

/// A serialized header field: a token name, a value without CR, LF or NUL.
fn assert_field(n: &[u8], v: &[u8]) {
    assert!(
        !n.is_empty() && n.iter().all(|&b| is_tchar(b)),
        "name {n:?}"
    );
    assert!(
        !v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
        "value {v:?}"
    );
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Request-head parser: byte 0 picks the limits, byte 1 a prefix length.
///
/// - a prefix of the input never reaches a different decision than the whole: a prefix
///   parsed complete gives the same head, a prefix refused means the whole is refused
///   with the same status;
/// - an accepted head is within the limits, has token names and values free of CR, LF
///   and NUL, never `Close` framing, and never both Content-Length and
///   Transfer-Encoding;
/// - the head the router writes upstream parses back to the same method, target (with
///   the prefix), framing and session id, and consumes exactly what was written.
pub fn request_head(data: &[u8]) {
    let ([c, p], data) = ctl::<2>(data);
    let limits = head_limits(c);
    let mut buf = BytesMut::from(data);
    let mut head = RequestHead::default();
    let whole = parse_request(&mut buf, &limits, &mut head);
    let consumed = data.len() - buf.len();

    let plen = (p as usize * data.len()) / 255;
    let mut pbuf = BytesMut::from(&data[..plen]);
    let mut phead = RequestHead::default();
    match parse_request(&mut pbuf, &limits, &mut phead) {
        Ok(false) => {}
        Ok(true) => {
            assert!(
                matches!(whole, Ok(true)),
                "prefix complete, whole {whole:?}"
            );
            assert_eq!(plen - pbuf.len(), consumed, "prefix consumed differently");
            assert_eq!(phead.raw(), head.raw());
            assert_eq!(phead.body, head.body);
        }
        Err(e) => match whole {
            Err(w) => assert_eq!(e.status(), w.status(), "prefix {e:?} whole {w:?}"),
            other => panic!("prefix refused ({e:?}) but whole gave {other:?}"),
        },
    }
    if whole != Ok(true) {
        if let Err(e) = whole {
            assert!([400, 431, 501, 505].contains(&e.status()));
        }
        return;
    }
    // what was consumed is optional empty lines, then exactly the head
    assert!(data[..consumed].ends_with(head.raw()));
    assert!(head.raw().len() <= limits.max_head);
    assert!(head.headers().count() <= limits.max_headers);
    assert_ne!(head.body, BodyKind::Close);
    assert!(head.target().starts_with(b"/"));
    let mut cl = false;
    let mut te = false;
    for (n, v) in head.headers() {
        assert_field(n, v);
        cl |= n.eq_ignore_ascii_case(b"content-length");
        te |= n.eq_ignore_ascii_case(b"transfer-encoding");
    }
    assert!(!(cl && te), "CL and TE both accepted");
    if te {
        assert_eq!(head.body, BodyKind::Chunked);
    }

    // round trip through the head the router writes upstream
    let fwd = Forward {
        host: b"10.0.0.1:8080",
        path_prefix: b"/base",
        client_ip: Some(std::net::IpAddr::from([192, 0, 2, 7])),
        proto: "http",
        drop_session_fields: false,
        session_id: None,
        target: None,
    };
    let mut out = BytesMut::new();
    write_request_head(&mut out, &head, &fwd);
    let written = out.len();
    let mut again = RequestHead::default();
    let big = HttpLimits {
        max_head: 1 << 20,
        max_headers: 128,
    };
    let r = parse_request(&mut out, &big, &mut again);
    assert_eq!(
        r,
        Ok(true),
        "written head does not parse: {:?}",
        String::from_utf8_lossy(&BytesMut::from(&head.raw()[..]))
    );
    assert!(
        out.is_empty(),
        "written head parsed short of its end ({written})"
    );
    assert_eq!(again.method_str(), head.method_str());
    assert_eq!(again.target(), [&b"/base"[..], head.target()].concat());
    assert_eq!(again.body, head.body);
    assert_eq!(
        again.header("mcp-session-id"),
        head.header("mcp-session-id")
    );
    assert_eq!(
        again.header("mcp-protocol-version"),
        head.header("mcp-protocol-version")
    );
    assert_eq!(again.header("host"), Some(&b"10.0.0.1:8080"[..]));
}

/// Response-head parser: byte 0 picks the limits, byte 1 a prefix length, byte 2 the
/// request method. Same prefix rule as [`request_head`]; the framing follows RFC 9112
/// section 6.3 (HEAD, 1xx, 204, 304 have no body); the head written to the client
/// parses back to the same status and framing.
pub fn response_head(data: &[u8]) {
    let ([c, p, m], data) = ctl::<3>(data);
    let limits = head_limits(c);
    let method = [Method::Get, Method::Post, Method::Head, Method::Delete][(m & 3) as usize];
    let mut buf = BytesMut::from(data);
    let mut head = ResponseHead::default();
    let whole = parse_response(&mut buf, &limits, method, &mut head);
    let consumed = data.len() - buf.len();

    let plen = (p as usize * data.len()) / 255;
    let mut pbuf = BytesMut::from(&data[..plen]);
    let mut phead = ResponseHead::default();
    match parse_response(&mut pbuf, &limits, method, &mut phead) {
        Ok(false) => {}
        Ok(true) => {
            assert!(
                matches!(whole, Ok(true)),
                "prefix complete, whole {whole:?}"
            );
            assert_eq!(plen - pbuf.len(), consumed);
            assert_eq!(phead.raw(), head.raw());
            assert_eq!(phead.body, head.body);
            assert_eq!(phead.status, head.status);
        }
        Err(e) => assert!(
            whole.is_err(),
            "prefix refused ({e:?}) but whole gave {whole:?}"
        ),
    }
    if whole != Ok(true) {
        return;
    }
    assert!(data[..consumed].ends_with(head.raw()));
    assert!(head.raw().len() <= limits.max_head);
    assert!((100..=999).contains(&head.status));
    let bodiless = method == Method::Head
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304;
    if bodiless {
        assert_eq!(head.body, BodyKind::Empty);
    }
    if head.body == BodyKind::Close {
        assert!(!head.keep_alive);
    }
    for (n, v) in head.headers() {
        assert_field(n, v);
    }
    let mut out = BytesMut::new();
    write_response_head(
        &mut out,
        &head,
        head.body,
        crate::http::Version::Http11,
        head.keep_alive,
    );
    let mut again = ResponseHead::default();
    let big = HttpLimits {
        max_head: 1 << 20,
        max_headers: 128,
    };
    assert_eq!(parse_response(&mut out, &big, method, &mut again), Ok(true));
    assert!(out.is_empty());
    assert_eq!(again.status, head.status);
    assert_eq!(again.body, head.body, "framing changed when relayed");
    assert_eq!(
        again.header("mcp-session-id"),
        head.header("mcp-session-id")
    );
}

/// Outcome of decoding a body fed in pieces the way the core does.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    consumed: usize,
    payload: Vec<u8>,
    error: Option<crate::http::BodyError>,
    done: bool,
}

fn decode_pieces(kind: BodyKind, max_line: usize, parts: &[&[u8]]) -> Decoded {
    let mut dec = BodyDecoder::new(kind, max_line);
    let mut buf: Vec<u8> = Vec::new();
    let mut d = Decoded {
        consumed: 0,
        payload: Vec::new(),
        error: None,
        done: false,
    };
    for part in parts {
        buf.extend_from_slice(part);
        let payload = &mut d.payload;
        match dec.decode(&buf, &mut |s| payload.extend_from_slice(s)) {
            Ok(n) => {
                assert!(n <= buf.len());
                d.consumed += n;
                buf.drain(..n);
            }
            Err(e) => {
                // after an error the connection closes: what was consumed is moot
                d.error = Some(e);
                d.consumed = 0;
                return d;
            }
        }
        if dec.is_done() {
            break;
        }
    }
    d.done = dec.is_done();
    d
}

/// Body decoder: byte 0 picks the framing and line limit, bytes 1-8 the split points.
///
/// The same bytes fed whole, in the fuzzer's pieces and one byte at a time give the
/// same consumed count, payload, error and completion; payload never exceeds what was
/// consumed; a chunked body's payload never exceeds the sizes it declared; a body is
/// never read past its end.
pub fn chunked(data: &[u8]) {
    let ([c, s0, s1, s2, s3, s4, s5, s6, s7], data) = ctl::<9>(data);
    let max_line = [16, 64, 4096, 4096][(c & 3) as usize];
    let kind = match (c >> 2) & 7 {
        0 => BodyKind::Length(u64::from(s0)),
        1 => BodyKind::Close,
        _ => BodyKind::Chunked,
    };
    let whole = decode_pieces(kind, max_line, &[data]);
    let cut = cuts(&[s0, s1, s2, s3, s4, s5, s6, s7], data.len());
    let split = decode_pieces(kind, max_line, &pieces(data, &cut));
    assert_eq!(whole, split, "decision depends on how the bytes were split");
    if data.len() <= 4096 {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        let one = decode_pieces(kind, max_line, &bytes);
        assert_eq!(whole, one, "byte-at-a-time decode differs");
    }
    if whole.error.is_none() {
        assert!(whole.payload.len() <= whole.consumed);
    }
    assert!(whole.consumed <= data.len());
    if let BodyKind::Length(n) = kind {
        assert_eq!(whole.payload.len() as u64, n.min(data.len() as u64));
        assert_eq!(whole.done, data.len() as u64 >= n);
    }
    if kind == BodyKind::Chunked && whole.done {
        // the consumed bytes must parse as a chunked body under a plain reference
        assert_eq!(
            reference_chunked(&data[..whole.consumed]),
            Some(whole.payload)
        );
    }
}

/// A plain, whole-input chunked decoder (RFC 9112 section 7.1, strict CRLF, size 1-16
/// hex digits, extensions after `;`, trailer fields as `name:value`). `None`: invalid or
/// not exactly one body.
fn reference_chunked(mut s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let lf = s.windows(2).position(|w| w == b"\r\n")?;
        let line = &s[..lf];
        s = &s[lf + 2..];
        let size_part = match line.iter().position(|&b| b == b';') {
            Some(i) => &line[..i],
            None => line,
        };
        if size_part.is_empty() || size_part.len() > 16 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(size_part).ok()?, 16).ok()?;
        if size_part.iter().any(|b| !b.is_ascii_hexdigit()) {
            return None;
        }
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).ok()?;
        if s.len() < size + 2 || &s[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&s[..size]);
        s = &s[size + 2..];
    }
    // trailers until an empty line, which must end the input
    loop {
        let lf = s.windows(2).position(|w| w == b"\r\n")?;
        let line = &s[..lf];
        s = &s[lf + 2..];
        if line.is_empty() {
            return s.is_empty().then_some(out);
        }
        let colon = line.iter().position(|&b| b == b':')?;
        if colon == 0 || !line[..colon].iter().all(|&b| is_tchar(b)) {
            return None;
        }
    }
}

type Ev = (Option<Vec<u8>>, Vec<u8>, Option<Vec<u8>>);

fn sse_events(max: usize, parts: &[&[u8]]) -> (Vec<Ev>, u64) {
    let mut p = SseParser::new(max);
    let mut evs = Vec::new();
    for part in parts {
        p.feed(part, &mut |e| {
            evs.push((
                e.event.map(<[u8]>::to_vec),
                e.data.to_vec(),
                e.id.map(<[u8]>::to_vec),
            ))
        });
    }
    (evs, p.overflowed())
}

/// SSE parser: byte 0 picks `max_event`, bytes 1-8 the split points.
///
/// Whole, split and byte-at-a-time feeding dispatch the same events; every event is
/// within `max_event` and has no line break in `event`/`id` and no NUL in `id`; with
/// room for any event the parser agrees with a plain line-based reference of the
/// WHATWG rules.
pub fn sse(data: &[u8]) {
    let ([c, s0, s1, s2, s3, s4, s5, s6, s7], data) = ctl::<9>(data);
    let max = [8, 64, 8192, usize::MAX / 2][(c & 3) as usize];
    let whole = sse_events(max, &[data]);
    let cut = cuts(&[s0, s1, s2, s3, s4, s5, s6, s7], data.len());
    assert_eq!(
        whole,
        sse_events(max, &pieces(data, &cut)),
        "split changed events"
    );
    if data.len() <= 4096 {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(
            whole,
            sse_events(max, &bytes),
            "byte-at-a-time changed events"
        );
    }
    for (event, d, id) in &whole.0 {
        let size = d.len() + event.as_ref().map_or(0, Vec::len) + id.as_ref().map_or(0, Vec::len);
        assert!(size <= max, "event of {size} bytes over {max}");
        assert!(!d.contains(&b'\r'));
        if let Some(e) = event {
            assert!(!e.is_empty() && !e.contains(&b'\n') && !e.contains(&b'\r'));
        }
        if let Some(i) = id {
            assert!(!i.contains(&0) && !i.contains(&b'\n') && !i.contains(&b'\r'));
        }
    }
    if max == usize::MAX / 2 {
        assert_eq!(whole.0, reference_sse(data), "differs from the reference");
        assert_eq!(whole.1, 0);
    }
}

/// WHATWG event-stream parsing over the whole input, per-event `id` as documented.
fn reference_sse(mut s: &[u8]) -> Vec<Ev> {
    if s.starts_with(b"\xEF\xBB\xBF") {
        s = &s[3..];
    }
    let mut evs = Vec::new();
    let (mut data, mut has_data, mut event, mut id) = (Vec::new(), false, Vec::new(), None);
    loop {
        let Some(end) = s.iter().position(|&b| b == b'\r' || b == b'\n') else {
            return evs;
        };
        let line = &s[..end];
        let skip = if s[end] == b'\r' && s.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        s = &s[end + skip..];
        if line.is_empty() {
            if has_data {
                evs.push((
                    (!event.is_empty()).then(|| event.clone()),
                    data.clone(),
                    id.clone(),
                ));
            }
            data.clear();
            has_data = false;
            event.clear();
            id = None;
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (name, mut value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        if value.first() == Some(&b' ') {
            value = &value[1..];
        }
        match name {
            b"data" => {
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                has_data = true;
            }
            b"event" => event = value.to_vec(),
            b"id" if !value.contains(&0) => id = Some(value.to_vec()),
            _ => {}
        }
    }
}

/// What `serde_json` says about a message's top level: first `method` and `id` (raw).
#[derive(Default)]
struct Top {
    object: bool,
    array: bool,
    method: Option<Box<serde_json::value::RawValue>>,
    id: Option<Box<serde_json::value::RawValue>>,
}

impl<'de> serde::Deserialize<'de> for Top {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Top, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Top, A::Error> {
                let mut t = Top {
                    object: true,
                    ..Top::default()
                };
                while let Some(k) = m.next_key::<String>()? {
                    let slot = match k.as_str() {
                        "method" if t.method.is_none() => &mut t.method,
                        "id" if t.id.is_none() => &mut t.id,
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(m.next_value()?);
                }
                Ok(t)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Top, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Top {
                    array: true,
                    ..Top::default()
                })
            }
            fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
                Ok(Top::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
                Ok(Top::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
                Ok(Top::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
                Ok(Top::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Top, E> {
                Ok(Top::default())
            }
            fn visit_unit<E>(self) -> Result<Top, E> {
                Ok(Top::default())
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Sniffed {
    method: Option<Vec<u8>>,
    too_long: bool,
    id: Option<Vec<u8>>,
    failed: bool,
    batch: bool,
    name: Compared,
    uri: Compared,
    version: Compared,
    duplicate: bool,
}

/// What the fuzzed bodies' mirrored members are compared with: `Mcp-Name:
/// get_weather` in its Base64 form (decoded by position), and a protocol version.
const FUZZ_EXPECT: Expect<'static> = Expect {
    name: Mirror::Base64(b"Z2V0X3dlYXRoZXI="),
    version: Mirror::Plain(b"2026-07-28"),
};

/// How `serde_json` reads the string at `path` of `v`, compared with `want`.
fn serde_compared(v: &serde_json::Value, path: &[&str], want: &str) -> Compared {
    let mut at = v;
    for p in path {
        match at.get(p) {
            Some(next) => at = next,
            None => return Compared::Absent,
        }
    }
    match at.as_str() {
        Some(s) if s == want => Compared::Equal,
        Some(_) => Compared::Different,
        None => Compared::NotString,
    }
}

fn sniff_pieces(parts: &[&[u8]]) -> Sniffed {
    let mut s = Sniffer::new();
    // once settled, what the router decided on must not change
    let mut method_at_settle: Option<Option<Vec<u8>>> = None;
    let mut id_at_settle: Option<Option<Vec<u8>>> = None;
    for part in parts {
        s.feed_with(part, &FUZZ_EXPECT);
        if method_at_settle.is_none() && s.method_settled() {
            method_at_settle = Some(s.method().map(<[u8]>::to_vec));
        }
        if id_at_settle.is_none() && s.id_settled() {
            id_at_settle = Some(s.id().map(<[u8]>::to_vec));
        }
    }
    s.end();
    assert!(
        s.method_settled() && s.id_settled(),
        "not settled after end"
    );
    let r = Sniffed {
        method: s.method().map(<[u8]>::to_vec),
        too_long: s.method_too_long(),
        id: s.id().map(<[u8]>::to_vec),
        failed: s.failed(),
        batch: s.is_batch(),
        name: s.name(&FUZZ_EXPECT),
        uri: s.uri(&FUZZ_EXPECT),
        version: s.version(&FUZZ_EXPECT),
        duplicate: s.has_duplicate(),
    };
    if let Some(m) = method_at_settle {
        assert_eq!(m, r.method, "method changed after it was settled");
    }
    if let Some(i) = id_at_settle {
        assert_eq!(i, r.id, "id changed after it was settled");
    }
    r
}

/// JSON-RPC envelope sniffer, differential against `serde_json`: bytes 0-7 are split
/// points. Whatever the split, the sniffer reaches the same result, and a settled
/// method or id never changes afterwards. When `serde_json` accepts the input the
/// sniffer does not fail and agrees on batch-ness, the first top-level `method`
/// (decoded) and the first top-level `id` (raw token); when `serde_json` refuses it for
/// a reason other than a number out of `f64` range, the sniffer fails too. The
/// 2026-07-28 comparisons (`params.name`, `params.uri` with a Base64 `Mcp-Name`, the
/// `_meta` protocol version) are split-invariant too, and agree with `serde_json`
/// when no member they follow appears twice.
pub fn sniff(data: &[u8]) {
    let ([s0, s1, s2, s3, s4, s5, s6, s7], data) = ctl::<8>(data);
    let whole = sniff_pieces(&[data]);
    let cut = cuts(&[s0, s1, s2, s3, s4, s5, s6, s7], data.len());
    assert_eq!(
        whole,
        sniff_pieces(&pieces(data, &cut)),
        "split changed the sniff"
    );
    if data.len() <= 4096 {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(
            whole,
            sniff_pieces(&bytes),
            "byte-at-a-time changed the sniff"
        );
    }
    let strict = serde_json::from_slice::<serde_json::Value>(data);
    match strict {
        Err(e) => {
            let range = e.to_string().contains("number out of range");
            if !range {
                assert!(
                    whole.failed,
                    "serde_json refuses ({e}) but the sniffer accepts"
                );
            }
        }
        Ok(v) => {
            assert!(!whole.failed, "serde_json accepts but the sniffer failed");
            assert_eq!(whole.batch, v.is_array());
            let top: Top = serde_json::from_slice(data).expect("valid JSON");
            assert_eq!(top.object, v.is_object());
            assert_eq!(top.array, v.is_array());
            let method = top
                .method
                .as_ref()
                .and_then(|r| serde_json::from_str::<String>(r.get()).ok());
            match &method {
                Some(m) if m.len() > Sniffer::MAX_METHOD => {
                    assert!(whole.too_long && whole.method.is_none())
                }
                m => assert_eq!(whole.method.as_deref(), m.as_ref().map(|s| s.as_bytes())),
            }
            let id = top.id.as_ref().map(|r| r.get().as_bytes()).filter(|t| {
                !t.starts_with(b"{")
                    && !t.starts_with(b"[")
                    && !t.starts_with(b"t")
                    && !t.starts_with(b"f")
            });
            match id {
                Some(t) if t.len() > Sniffer::MAX_ID => assert_eq!(whole.id, None),
                t => assert_eq!(whole.id.as_deref(), t, "id differs from serde_json"),
            }
            let params = v
                .get("params")
                .filter(|p| p.is_object() && !whole.duplicate);
            if let Some(p) = params {
                let m = serde_compared(p, &["name"], "get_weather");
                assert_eq!(whole.name, m, "params.name differs from serde_json");
                let u = serde_compared(p, &["uri"], "get_weather");
                assert_eq!(whole.uri, u, "params.uri differs from serde_json");
                if p.get("_meta").is_some_and(serde_json::Value::is_object) {
                    let path = ["_meta", "io.modelcontextprotocol/protocolVersion"];
                    let ver = serde_compared(p, &path, "2026-07-28");
                    assert_eq!(whole.version, ver, "_meta version differs from serde_json");
                }
            }
        }
    }
}

/// Session ids, legacy query ids, protocol versions and the router's own JSON-RPC
/// error bodies. Byte 0 picks the check, the rest is the input:
///
/// - `SessionKey::new` accepts exactly the visible-ASCII ids of 1..=max bytes and keeps
///   them verbatim;
/// - `query_session_id` / `endpoint_session_id` agree with a plain reference;
/// - `is_stateless_version` agrees with a date-parsing reference;
/// - an id the sniffer reports, echoed in a router error body, gives valid JSON whose
///   `id` equals the request's.
pub fn session_id(data: &[u8]) {
    let ([c], data) = ctl::<1>(data);
    let max = [1, 8, 256, 4096][(c >> 6) as usize];
    let valid = !data.is_empty() && data.len() <= max && data.iter().all(|&b| b.is_ascii_graphic());
    assert_eq!(valid_session_id(data, max), valid);
    match SessionKey::new(data, max) {
        Some(k) => {
            assert!(valid);
            assert_eq!(k.as_str().as_bytes(), data);
        }
        None => assert!(!valid),
    }
    assert_eq!(
        query_session_id(data).map(|c| c.into_owned()),
        reference_query(data),
        "query"
    );
    let uri = {
        let t = data.trim_ascii();
        match t.iter().position(|&b| b == b'#') {
            Some(h) => &t[..h],
            None => t,
        }
    };
    let expect = uri
        .iter()
        .position(|&b| b == b'?')
        .and_then(|q| reference_query(&uri[q + 1..]));
    assert_eq!(
        endpoint_session_id(data).map(|c| c.into_owned()),
        expect,
        "endpoint"
    );
    assert_eq!(
        is_stateless_version(data),
        reference_stateless(data),
        "version"
    );

    let mut body = Vec::from(&b"{\"jsonrpc\":\"2.0\",\"id\":"[..]);
    body.extend_from_slice(data);
    body.push(b'}');
    let mut s = Sniffer::new();
    s.feed(&body);
    s.end();
    if let Some(id) = s.id() {
        let mut out = BytesMut::new();
        write_error_body(
            &mut out,
            Some(id),
            ErrorCode::SessionNotFound,
            "Session not found",
        );
        match serde_json::from_slice::<serde_json::Value>(id) {
            Ok(want) => {
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                    panic!(
                        "error body is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(&out)
                    )
                });
                assert_eq!(v["id"], want);
                assert_eq!(v["error"]["code"], -32001);
            }
            // JSON leaves number range to implementations: echoing the client's own
            // `1e400` verbatim is right; only its syntax must hold.
            Err(e) => assert!(e.to_string().contains("number out of range"), "{e}"),
        }
    }
}

fn reference_query(q: &[u8]) -> Option<Vec<u8>> {
    for param in q.split(|&b| b == b'&') {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (&param[..i], &param[i + 1..]),
            None => (param, &[][..]),
        };
        if name == b"sessionId" || name == b"session_id" {
            let mut out = Vec::new();
            let mut i = 0;
            while i < value.len() {
                if value[i] == b'%' {
                    let h = std::str::from_utf8(value.get(i + 1..i + 3)?).ok()?;
                    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return None;
                    }
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 3;
                } else {
                    out.push(value[i]);
                    i += 1;
                }
            }
            return Some(out);
        }
    }
    None
}

fn reference_stateless(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    let s = s.trim_matches(|c| c == ' ' || c == '\t');
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() != 3
        || parts[0].len() != 4
        || parts[1].len() != 2
        || parts[2].len() != 2
        || !parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let n = |p: &str| p.parse::<u32>().unwrap_or(0);
    (n(parts[0]), n(parts[1]), n(parts[2])) >= (2026, 7, 28)
}
