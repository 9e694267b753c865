//! Session ids and protocol versions.

use std::borrow::Cow;

/// Default upper bound on the length of a session id the router accepts.
pub const MAX_SESSION_ID_LEN: usize = 256;

/// Longest session id kept inline in a [`SessionKey`] (no heap allocation). UUIDs (36
/// bytes), the SDKs' hex ids (32) and the router's own ids all fit; longer ids (up to
/// the configured maximum, 256 by default) are boxed.
pub const INLINE_SESSION_ID_LEN: usize = 62;

/// A validated session id, owned. Ids of up to [`INLINE_SESSION_ID_LEN`] bytes are held
/// inline: making, cloning and dropping one never touches the heap (the key is 64
/// bytes). Longer ids are boxed.
///
/// Invariant: 1..=max length, every byte in 0x21..=0x7E.
#[derive(Clone)]
pub struct SessionKey(Repr);

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        buf: [u8; INLINE_SESSION_ID_LEN],
    },
    Heap(Box<str>),
}

impl SessionKey {
    /// Validate and copy. `None` when [`valid_session_id`] says no.
    pub fn new(id: &[u8], max_len: usize) -> Option<SessionKey> {
        if !valid_session_id(id, max_len) {
            return None;
        }
        if id.len() <= INLINE_SESSION_ID_LEN {
            let mut buf = [0u8; INLINE_SESSION_ID_LEN];
            buf[..id.len()].copy_from_slice(id);
            return Some(SessionKey(Repr::Inline {
                len: id.len() as u8,
                buf,
            }));
        }
        // Visible ASCII is valid UTF-8, so this never yields `None` here.
        let s = std::str::from_utf8(id).ok()?;
        Some(SessionKey(Repr::Heap(s.into())))
    }
    /// The id as bytes (visible ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => buf.get(..*len as usize).unwrap_or(&[]),
            Repr::Heap(s) => s.as_bytes(),
        }
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Visible ASCII (the invariant) is always valid UTF-8.
            Repr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or(""),
            Repr::Heap(s) => s,
        }
    }
}

impl PartialEq for SessionKey {
    fn eq(&self, other: &SessionKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SessionKey {}

impl PartialOrd for SessionKey {
    fn partial_cmp(&self, other: &SessionKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SessionKey {
    fn cmp(&self, other: &SessionKey) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

/// Hashes exactly like the `str` it holds, so maps keyed by `SessionKey` can be
/// queried with a `&str` (see the `Borrow<str>` impl): `str`'s `Hash` is
/// `Hasher::write_str`, whose definition (which a hasher cannot override on stable
/// Rust) is these two calls. Done on the bytes, to skip the UTF-8 check of `as_str`.
impl std::hash::Hash for SessionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::borrow::Borrow<str> for SessionKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// "The session ID MUST only contain visible ASCII characters (ranging from 0x21 to
/// 0x7E)." (MCP 2025-03-26, Streamable HTTP, Session Management.) Also bounded: 1 to
/// `max_len` bytes.
pub fn valid_session_id(id: &[u8], max_len: usize) -> bool {
    !id.is_empty() && id.len() <= max_len && id.iter().all(|&b| (0x21..=0x7E).contains(&b))
}

/// The legacy HTTP+SSE session id in a query string: the value of the first `sessionId`
/// (TypeScript SDK) or `session_id` (Python SDK) parameter, percent-decoded (borrowed
/// when it holds no `%`). `query` is the part after `?`, without it. Parameters are
/// `&`-separated; a parameter without `=` has an empty value. Returns `None` when
/// neither parameter is present, or a percent escape is malformed.
///
/// Parameter names are matched exactly (not decoded, case-sensitive). `+` is not
/// decoded to a space: in a URI it is a literal. The decoded value is returned even
/// when it is not a valid session id (empty, non-ASCII, ...): callers validate it with
/// [`valid_session_id`].
pub fn query_session_id(query: &[u8]) -> Option<Cow<'_, [u8]>> {
    let value = query.split(|&b| b == b'&').find_map(|param| {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (param.get(..eq)?, param.get(eq + 1..)?),
            None => (param, &[][..]),
        };
        (name == b"sessionId" || name == b"session_id").then_some(value)
    })?;
    percent_decode(value)
}

/// The legacy session id of a query, read as every backend reads it, or why it cannot
/// be: `Ok(None)` when no parameter names a session, `Ok(Some(id))` when exactly one
/// does, `Err(reason)` when several do or one's value has a malformed escape.
///
/// [`query_session_id`] takes the first `sessionId` or `session_id`; backends do not
/// all agree with that. The TypeScript SDK (Express) reads a repeated `sessionId` as an
/// array, the Python SDK (Starlette) reads the last `session_id`, and both decode
/// parameter *names* (`session%5Fid` is `session_id`) and keep a malformed escape as
/// is. The legacy transport has one: "the server MUST send an `endpoint` event
/// containing a URI for the client to use for sending messages", and the client posts
/// to that URI. So a query that names a session twice, under any spelling, or with a
/// value the router cannot decode the way the backend does, is refused rather than
/// routed by one reading and served by another.
pub fn query_session_id_strict(query: &[u8]) -> Result<Option<Cow<'_, [u8]>>, &'static str> {
    let mut found = None;
    for param in query.split(|&b| b == b'&') {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => (param, &[][..]),
        };
        let is_session = |n: &[u8]| n == b"sessionId" || n == b"session_id";
        let named = if name.contains(&b'%') {
            percent_decode(name).is_some_and(|n| is_session(&n))
        } else {
            is_session(name)
        };
        if !named {
            continue;
        }
        if found.is_some() {
            return Err("More than one session id in the query");
        }
        found = Some(percent_decode(value).ok_or("Malformed session id in the query")?);
    }
    Ok(found)
}

/// Write `target` (a request target, or an `endpoint` event's URI) to `out` with the
/// value of every parameter naming the legacy session (`sessionId` / `session_id`,
/// names read as [`query_session_id_strict`] reads them) replaced by `value`,
/// percent-encoded where it is not an unreserved character. A `#fragment` is kept.
/// Returns whether a parameter was replaced.
pub fn replace_query_session_id(target: &[u8], value: &[u8], out: &mut Vec<u8>) -> bool {
    let (uri, frag) = match target.iter().position(|&b| b == b'#') {
        Some(h) => target.split_at(h),
        None => (target, &[][..]),
    };
    let Some(q) = uri.iter().position(|&b| b == b'?') else {
        out.extend_from_slice(target);
        return false;
    };
    out.extend_from_slice(&uri[..=q]);
    let mut replaced = false;
    for (i, param) in uri[q + 1..].split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        let name = match param.iter().position(|&b| b == b'=') {
            Some(eq) => &param[..eq],
            None => param,
        };
        let is_session = |n: &[u8]| n == b"sessionId" || n == b"session_id";
        let named = if name.contains(&b'%') {
            percent_decode(name).is_some_and(|n| is_session(&n))
        } else {
            is_session(name)
        };
        if !named {
            out.extend_from_slice(param);
            continue;
        }
        replaced = true;
        out.extend_from_slice(name);
        out.push(b'=');
        for &b in value {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
    }
    out.extend_from_slice(frag);
    replaced
}

/// Percent-decode `s`, borrowing when there is nothing to decode. `None` when a `%` is
/// not followed by two hex digits.
fn percent_decode(s: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !s.contains(&b'%') {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let (&hi, &lo) = (tail.first()?, tail.get(1)?);
            out.push((hex_val(hi)? << 4) | hex_val(lo)?);
            rest = tail.get(2..)?;
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Some(Cow::Owned(out))
}

/// The value of one hex digit.
fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The legacy session id announced by an HTTP+SSE server: `data` is the payload of its
/// first `endpoint` event, a URI for posting messages, relative (`/messages?sessionId=abc`,
/// `/messages/?session_id=abc`) or absolute (`http://h:1/messages?sessionId=abc`). Returns
/// [`query_session_id`] of its query; a `#fragment` is ignored, and so is whitespace
/// around the URI. `None` when the URI has no query or the query names no session.
pub fn endpoint_session_id(data: &[u8]) -> Option<Cow<'_, [u8]>> {
    let uri = data.trim_ascii();
    let uri = match uri.iter().position(|&b| b == b'#') {
        Some(hash) => uri.get(..hash)?,
        None => uri,
    };
    let q = uri.iter().position(|&b| b == b'?')?;
    query_session_id(uri.get(q + 1..)?)
}

/// Whether an `MCP-Protocol-Version` value names the stateless era: a `YYYY-MM-DD` date
/// on or after `2026-07-28` (surrounding whitespace ignored). Anything that is not such
/// a date is `false` (the backend judges invalid versions, not the router).
///
/// Only the shape is checked (four digits, dash, two digits, dash, two digits), then the
/// date is compared as text, which orders such dates correctly. Only spaces and tabs
/// count as surrounding whitespace (the HTTP definition of optional whitespace).
pub fn is_stateless_version(v: &[u8]) -> bool {
    const FIRST_STATELESS: &[u8; 10] = b"2026-07-28";
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    let Some(date) = v.get(start..end) else {
        return false;
    };
    let shaped = date.len() == 10
        && date.iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shaped && date >= &FIRST_STATELESS[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_validity() {
        assert!(valid_session_id(b"abc-123_XYZ~!", 256));
        assert!(valid_session_id(&[0x21, 0x7E], 2));
        assert!(!valid_session_id(b"", 256));
        assert!(!valid_session_id(b"a b", 256));
        assert!(!valid_session_id(b"ab\x7F", 256));
        assert!(!valid_session_id(b"ab\x20", 256));
        assert!(!valid_session_id("é".as_bytes(), 256));
        assert!(!valid_session_id(b"abc\n", 256));
        assert!(valid_session_id(b"abcd", 4));
        assert!(!valid_session_id(b"abcde", 4));
        assert!(!valid_session_id(b"a", 0));
    }

    #[test]
    fn session_key() {
        let k = SessionKey::new(b"0123abcd", MAX_SESSION_ID_LEN).unwrap();
        assert_eq!(k.as_str(), "0123abcd");
        assert_eq!(k.to_string(), "0123abcd");
        assert_eq!(format!("{k:?}"), "0123abcd");
        let set: std::collections::HashSet<SessionKey> = [k.clone()].into();
        assert!(set.contains("0123abcd"));
        assert!(SessionKey::new(b"", 10).is_none());
        assert!(SessionKey::new(b"has space", 10).is_none());
        assert!(SessionKey::new(b"toolong", 3).is_none());
        assert!(SessionKey::new(b"\xff\xfe", 10).is_none());
    }

    #[test]
    fn session_key_inline_and_boxed_agree() {
        use std::collections::HashMap;
        let ids: Vec<String> = [1, 36, 61, 62, 63, 64, 200, 256]
            .iter()
            .map(|&n| (0..n).map(|i| (b'!' + (i % 94) as u8) as char).collect())
            .collect();
        let mut m = HashMap::new();
        for id in &ids {
            let k = SessionKey::new(id.as_bytes(), MAX_SESSION_ID_LEN).unwrap();
            assert_eq!(k.as_str(), id);
            assert_eq!(k.as_bytes(), id.as_bytes());
            assert_eq!(k.clone(), k);
            m.insert(k, id.len());
        }
        for id in &ids {
            assert_eq!(m.get(id.as_str()), Some(&id.len()));
        }
        let a = SessionKey::new(b"a", 10).unwrap();
        let b = SessionKey::new(b"b", 10).unwrap();
        assert!(a < b);
        assert_eq!(std::mem::size_of::<SessionKey>(), 64);
    }

    fn q(s: &str) -> Option<Vec<u8>> {
        query_session_id(s.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn query_params() {
        assert_eq!(q("sessionId=abc"), Some(b"abc".to_vec()));
        assert_eq!(q("session_id=0f1e"), Some(b"0f1e".to_vec()));
        assert_eq!(q("x=1&sessionId=abc&y=2"), Some(b"abc".to_vec()));
        // First of either name wins.
        assert_eq!(q("session_id=one&sessionId=two"), Some(b"one".to_vec()));
        assert_eq!(q("sessionId=one&sessionId=two"), Some(b"one".to_vec()));
        // No `=`: empty value (returned; callers validate).
        assert_eq!(q("sessionId"), Some(Vec::new()));
        assert_eq!(q("sessionId="), Some(Vec::new()));
        assert_eq!(q("sessionId=a=b"), Some(b"a=b".to_vec()));
        assert_eq!(q(""), None);
        assert_eq!(q("sessionid=abc"), None);
        assert_eq!(q("xsessionId=abc"), None);
        assert_eq!(q("session%5Fid=abc"), None);
        assert_eq!(q("&&sessionId=z&"), Some(b"z".to_vec()));
        // Percent-decoding; `+` stays a plus.
        assert_eq!(q("sessionId=a%2Fb%2fc"), Some(b"a/b/c".to_vec()));
        assert_eq!(q("sessionId=a+b"), Some(b"a+b".to_vec()));
        assert_eq!(q("sessionId=%20"), Some(b" ".to_vec()));
        assert_eq!(q("sessionId=%e2%82%ac"), Some("€".as_bytes().to_vec()));
        assert_eq!(q("sessionId=%"), None);
        assert_eq!(q("sessionId=%4"), None);
        assert_eq!(q("sessionId=%zz"), None);
        assert_eq!(q("sessionId=ab%4g"), None);
        // A malformed escape in another parameter does not matter.
        assert_eq!(q("x=%&sessionId=ok"), Some(b"ok".to_vec()));
        // Borrowed when there is nothing to decode.
        assert!(matches!(
            query_session_id(b"sessionId=abc"),
            Some(Cow::Borrowed(b"abc"))
        ));
        assert!(matches!(
            query_session_id(b"sessionId=a%41"),
            Some(Cow::Owned(_))
        ));
    }

    fn ep(s: &str) -> Option<Vec<u8>> {
        endpoint_session_id(s.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn endpoint_uris() {
        assert_eq!(ep("/messages?sessionId=abc"), Some(b"abc".to_vec()));
        assert_eq!(ep("/messages/?session_id=9f86d0"), Some(b"9f86d0".to_vec()));
        assert_eq!(
            ep("http://h:1/messages?sessionId=abc"),
            Some(b"abc".to_vec())
        );
        assert_eq!(
            ep("https://example.com/a/b?x=1&sessionId=s%2D1#frag?sessionId=no"),
            Some(b"s-1".to_vec())
        );
        assert_eq!(ep("/messages?sessionId=abc#x"), Some(b"abc".to_vec()));
        assert_eq!(ep(" /messages?sessionId=abc \r\n"), Some(b"abc".to_vec()));
        assert_eq!(ep("/messages#?sessionId=abc"), None);
        assert_eq!(ep("/messages"), None);
        assert_eq!(ep("/messages?"), None);
        assert_eq!(ep(""), None);
        assert_eq!(ep("?sessionId=x"), Some(b"x".to_vec()));
    }

    #[test]
    fn stateless_versions() {
        assert!(is_stateless_version(b"2026-07-28"));
        assert!(is_stateless_version(b" \t2026-07-28\t "));
        assert!(is_stateless_version(b"2026-07-29"));
        assert!(is_stateless_version(b"2026-08-01"));
        assert!(is_stateless_version(b"2027-01-01"));
        assert!(is_stateless_version(b"9999-99-99"));
        assert!(!is_stateless_version(b"2026-07-27"));
        assert!(!is_stateless_version(b"2025-11-25"));
        assert!(!is_stateless_version(b"2025-03-26"));
        assert!(!is_stateless_version(b"2024-11-05"));
        assert!(!is_stateless_version(b""));
        assert!(!is_stateless_version(b"   "));
        assert!(!is_stateless_version(b"2026-7-28"));
        assert!(!is_stateless_version(b"2026/07/28"));
        assert!(!is_stateless_version(b"2026-07-28x"));
        assert!(!is_stateless_version(b"2026-07-280"));
        assert!(!is_stateless_version(b"x2026-07-28"));
        assert!(!is_stateless_version(b"2026-07-2a"));
        assert!(!is_stateless_version(b"\n2026-07-28"));
        assert!(!is_stateless_version("2026-07-2８".as_bytes()));
        assert!(!is_stateless_version(b"draft"));
    }
}
