//! JSON-RPC error bodies answered by the router on the backend's behalf.

use bytes::BytesMut;

/// Error codes the router uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// -32001 "Session not found": unknown or expired session (HTTP 404).
    SessionNotFound,
    /// -32000: generic server-side error (no backend available, store unavailable, ...).
    Server,
    /// -32700: parse error.
    Parse,
    /// -32600: invalid request (bad session header, oversized body, ...).
    InvalidRequest,
}

impl ErrorCode {
    /// The numeric JSON-RPC code.
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::SessionNotFound => -32001,
            ErrorCode::Server => -32000,
            ErrorCode::Parse => -32700,
            ErrorCode::InvalidRequest => -32600,
        }
    }
}

/// Append `{"jsonrpc":"2.0","id":<id>,"error":{"code":<code>,"message":"<message>"}}`
/// to `out`. `id` is the raw JSON token of the request id as sniffed (a JSON number or
/// string, already validated by the [`super::Sniffer`]), or `None` for `null`.
/// `message` is escaped as a JSON string.
pub fn write_error_body(out: &mut BytesMut, id: Option<&[u8]>, code: ErrorCode, message: &str) {
    let _ = (out, id, code, message);
    todo!()
}
