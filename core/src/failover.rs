//! Opt-in failover (`--failover reinitialize`): a session whose backend is down is
//! initialized again on a healthy backend, under the same client-facing session id.
//!
//! The connection state machine ([`crate::Conn`]) drives it; this module holds the
//! settings, the state a record carries for it, and the requests the replay writes.
//!
//! The rules (docs/scaling.md, "Failover"):
//!
//! - Only a request that never left the router is forwarded after a failover. A
//!   request written to a backend that then went away without answering may have been
//!   executed: it is answered with JSON-RPC `-32603` "backend lost; retry", never sent
//!   again. (A request written to a *pooled* connection the backend had already closed
//!   is the exception the router already makes: nothing of it was processed, so it is
//!   resent, here to the new backend.)
//! - The replay is the client's own `initialize` request body, byte for byte, then
//!   `notifications/initialized`, each on a fresh connection, then the client's request
//!   with the new upstream session id. Any failure of the replay: `404` `-32001` as
//!   without failover, and the record ends.
//! - One failover per session per `failover_window`: a session whose replacement
//!   backend is also down within the window gets `404`.
//! - The client's session id never changes: the record, keyed by it, gains the new
//!   backend and the new upstream id; requests go out with the upstream id and
//!   responses that repeat it carry the client's id back.
//! - Server-side state of the old session (subscriptions, resources, a tool's memory,
//!   SSE events not yet seen) is lost; a GET stream on the dead backend ends and the
//!   client's reconnect (with or without `Last-Event-ID`) lands on the new backend.

use crate::mcp::SessionKey;
use bytes::{BufMut, Bytes, BytesMut};
use std::time::{Duration, Instant};

/// `--failover reinitialize` and its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverSettings {
    /// At most one failover per session within this time (`--failover-window`).
    pub window: Duration,
    /// Largest `initialize` body kept for a replay (`--failover-max-params`); a session
    /// whose `initialize` was larger is not eligible for failover.
    pub max_params: usize,
    /// The store keeps the `initialize` body away from the request path (Redis: sealed
    /// with the session key, in a hash beside the record): a lookup hands out at most
    /// the new upstream id, and a failover first loads the whole state
    /// ([`crate::StoreOp::LoadFailover`]). `false`: the embedded store, whose lookup
    /// hands out the whole state by reference count.
    pub remote: bool,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            window: Duration::from_secs(60),
            max_params: 16 * 1024,
            remote: false,
        }
    }
}

/// What a record keeps for failover. Immutable once stored: a failover replaces it
/// (so a lookup hands out a reference count, never a copy of the parameters).
#[derive(Debug, PartialEq, Eq)]
pub struct Failover {
    /// The client's `initialize` request body, as it sent it (at most `max_params`).
    pub params: Bytes,
    /// The upstream session id requests of the session go out with after a failover
    /// (`None`: the id the record is keyed by).
    pub upstream: Option<SessionKey>,
    /// When the last failover happened (`None`: never).
    pub at: Option<Instant>,
    /// Failovers so far: a failover is stored only over the generation it started from,
    /// so two connections failing the same session over at once cannot both win.
    pub generation: u32,
}

/// The body of the `notifications/initialized` the replay sends.
pub const INITIALIZED: &[u8] = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// The message a request that may have reached the lost backend is answered with
/// (JSON-RPC `-32603`).
pub const LOST: &str = "backend lost; retry";

/// Why a session was failed over (or tried to be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Connecting to the session's backend failed (refused, unreachable, timed out).
    ConnectFailed,
    /// The backend is marked down (a failed connect or health check, within backoff).
    MarkedDown,
    /// The backend is no longer configured (removed from the file, gone from DNS).
    Removed,
    /// The connection broke (or ended) before the request's response came back.
    ConnectionLost,
}

impl Cause {
    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::ConnectFailed => "connect_failed",
            Cause::MarkedDown => "marked_down",
            Cause::Removed => "removed",
            Cause::ConnectionLost => "connection_lost",
        }
    }
}

/// How a failover ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The session lives on the new backend; the request was forwarded there.
    Done,
    /// Another connection failed the session over first; the request followed it.
    Joined,
    /// The session had failed over within `failover_window` already: `404`.
    Window,
    /// The session's `initialize` was not kept (larger than `max_params`, or a legacy
    /// SSE session): `404`.
    Ineligible,
    /// No healthy backend, or the replay failed (connect, status, no session id,
    /// timeout): `404`.
    Failed,
    /// A request that may have reached the lost backend: answered `-32603`.
    Lost,
}

impl Outcome {
    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Joined => "joined",
            Outcome::Window => "window",
            Outcome::Ineligible => "ineligible",
            Outcome::Failed => "failed",
            Outcome::Lost => "lost",
        }
    }
}

/// The parts of a replayed request's head.
pub(crate) struct ReplayHead<'a> {
    pub path_prefix: &'a [u8],
    pub target: &'a [u8],
    pub host: &'a [u8],
    pub session_id: Option<&'a [u8]>,
    pub protocol_version: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
}

/// Write a replayed `POST` (head and body) to `out`: `Connection: close`, so the
/// connection ends with the response and is never pooled. The values come from a
/// request head the router parsed (no CR or LF) and from the router's own state.
pub(crate) fn write_replay(out: &mut BytesMut, h: &ReplayHead<'_>, body: &[u8]) {
    out.put_slice(b"POST ");
    out.put_slice(h.path_prefix);
    out.put_slice(h.target);
    out.put_slice(b" HTTP/1.1\r\nHost: ");
    out.put_slice(h.host);
    out.put_slice(
        b"\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n",
    );
    if let Some(v) = h.session_id {
        out.put_slice(b"Mcp-Session-Id: ");
        out.put_slice(v);
        out.put_slice(b"\r\n");
    }
    if let Some(v) = h.protocol_version {
        out.put_slice(b"MCP-Protocol-Version: ");
        out.put_slice(v);
        out.put_slice(b"\r\n");
    }
    if let Some(v) = h.authorization {
        out.put_slice(b"Authorization: ");
        out.put_slice(v);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: ");
    out.put_slice(body.len().to_string().as_bytes());
    out.put_slice(b"\r\nConnection: close\r\n\r\n");
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_request_is_one_closed_post_with_its_length() {
        let mut out = BytesMut::new();
        let h = ReplayHead {
            path_prefix: b"/base",
            target: b"/mcp",
            host: b"b:1",
            session_id: Some(b"s1"),
            protocol_version: Some(b"2025-06-18"),
            authorization: None,
        };
        write_replay(&mut out, &h, INITIALIZED);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("POST /base/mcp HTTP/1.1\r\nHost: b:1\r\n"));
        assert!(text.contains("\r\nMcp-Session-Id: s1\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", INITIALIZED.len())));
        assert!(!text.contains("Authorization"));
        assert!(text.ends_with(std::str::from_utf8(INITIALIZED).unwrap()));
    }
}
