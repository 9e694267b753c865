//! Session ids and protocol versions.

use std::borrow::Cow;

/// Default upper bound on the length of a session id the router accepts.
pub const MAX_SESSION_ID_LEN: usize = 256;

/// A validated session id, owned. Cheap to clone for short ids.
///
/// Invariant: 1..=max length, every byte in 0x21..=0x7E.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(Box<str>);

impl SessionKey {
    /// Validate and copy. `None` when [`valid_session_id`] says no.
    pub fn new(id: &[u8], max_len: usize) -> Option<SessionKey> {
        let _ = (id, max_len);
        todo!()
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for SessionKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// "The session ID MUST only contain visible ASCII characters (ranging from 0x21 to
/// 0x7E)." (MCP 2025-03-26, Streamable HTTP, Session Management.) Also bounded: 1 to
/// `max_len` bytes.
pub fn valid_session_id(id: &[u8], max_len: usize) -> bool {
    let _ = (id, max_len);
    todo!()
}

/// The legacy HTTP+SSE session id in a query string: the value of the first `sessionId`
/// (TypeScript SDK) or `session_id` (Python SDK) parameter, percent-decoded (borrowed
/// when it holds no `%`). `query` is the part after `?`, without it. Parameters are
/// `&`-separated; a parameter without `=` has an empty value. Returns `None` when
/// neither parameter is present, or a percent escape is malformed.
pub fn query_session_id(query: &[u8]) -> Option<Cow<'_, [u8]>> {
    let _ = query;
    todo!()
}

/// Whether an `MCP-Protocol-Version` value names the stateless era: a `YYYY-MM-DD` date
/// on or after `2026-07-28` (surrounding whitespace ignored). Anything that is not such
/// a date is `false` (the backend judges invalid versions, not the router).
pub fn is_stateless_version(v: &[u8]) -> bool {
    let _ = v;
    todo!()
}
