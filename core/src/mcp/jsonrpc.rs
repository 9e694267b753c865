//! JSON-RPC error bodies answered by the router on the backend's behalf.

use std::fmt::Write as _;

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
    /// -32020 `HeaderMismatch` (2026-07-28): a mirrored header is missing, malformed or
    /// disagrees with the body.
    HeaderMismatch,
    /// -32022 `UnsupportedProtocolVersion` (2026-07-28): no backend serves the
    /// request's protocol version.
    UnsupportedVersion,
    /// -32603: internal error (a request lost with its backend, `--failover`).
    Internal,
}

impl ErrorCode {
    /// The numeric JSON-RPC code.
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::SessionNotFound => -32001,
            ErrorCode::Server => -32000,
            ErrorCode::Parse => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::HeaderMismatch => -32020,
            ErrorCode::UnsupportedVersion => -32022,
            ErrorCode::Internal => -32603,
        }
    }
}

/// Append `{"jsonrpc":"2.0","id":<id>,"error":{"code":<code>,"message":"<message>"}}`
/// to `out`. `id` is the raw JSON token of the request id as sniffed (a JSON number or
/// string, already validated by the [`super::Sniffer`]), or `None` for `null`.
/// `message` is escaped as a JSON string.
pub fn write_error_body(out: &mut BytesMut, id: Option<&[u8]>, code: ErrorCode, message: &str) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.unwrap_or(b"null"));
    out.extend_from_slice(b",\"error\":{\"code\":");
    // Writing to a `BytesMut` grows it and never fails; the result is always `Ok`.
    let _ = write!(out, "{}", code.code());
    out.extend_from_slice(b",\"message\":");
    write_json_string(out, message);
    out.extend_from_slice(b"}}");
}

/// The versions of the session eras, newest first.
pub const LEGACY_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The stateless versions the router knows.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

/// Append an `UnsupportedProtocolVersion` error body, `{"jsonrpc":"2.0","id":<id>,
/// "error":{"code":-32022,"message":"<message>","data":{"supported":[...],
/// "requested":"<requested>"}}}` (the 2026-07-28 schema's
/// `UnsupportedProtocolVersionError`: `data` with `requested` and `supported`).
pub fn write_unsupported_version_body(
    out: &mut BytesMut,
    id: Option<&[u8]>,
    message: &str,
    supported: &[&str],
    requested: &str,
) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.unwrap_or(b"null"));
    out.extend_from_slice(b",\"error\":{\"code\":-32022,\"message\":");
    write_json_string(out, message);
    out.extend_from_slice(b",\"data\":{\"supported\":[");
    for (i, v) in supported.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        write_json_string(out, v);
    }
    out.extend_from_slice(b"],\"requested\":");
    write_json_string(out, requested);
    out.extend_from_slice(b"}}}");
}

/// Append `s` as a JSON string literal: quotes and backslashes escaped, control
/// characters (U+0000 to U+001F) as `\uXXXX`, everything else verbatim (UTF-8).
fn write_json_string(out: &mut BytesMut, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.extend_from_slice(b"\"");
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut unicode = *b"\\u0000";
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x00..=0x1F => {
                // Both nibbles are below 16, in bounds of `HEX`.
                unicode[4] = HEX[usize::from(b >> 4)];
                unicode[5] = HEX[usize::from(b & 0xF)];
                &unicode
            }
            _ => continue,
        };
        // `start <= i < bytes.len()`: both ends are in bounds.
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.extend_from_slice(b"\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn body(id: Option<&[u8]>, code: ErrorCode, message: &str) -> Value {
        let mut out = BytesMut::new();
        write_error_body(&mut out, id, code, message);
        serde_json::from_slice(&out).expect("error body is JSON")
    }

    #[test]
    fn codes() {
        assert_eq!(ErrorCode::SessionNotFound.code(), -32001);
        assert_eq!(ErrorCode::Server.code(), -32000);
        assert_eq!(ErrorCode::Parse.code(), -32700);
        assert_eq!(ErrorCode::InvalidRequest.code(), -32600);
    }

    #[test]
    fn exact_bytes() {
        let mut out = BytesMut::from(&b"prefix:"[..]);
        write_error_body(
            &mut out,
            Some(b"7"),
            ErrorCode::SessionNotFound,
            "Session not found",
        );
        assert_eq!(
            &out[..],
            &br#"prefix:{"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"Session not found"}}"#[..]
        );
    }

    #[test]
    fn ids() {
        let v = body(Some(b"42"), ErrorCode::SessionNotFound, "Session not found");
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":42,"error":{"code":-32001,"message":"Session not found"}})
        );
        let v = body(Some(b"-1.5e3"), ErrorCode::Server, "x");
        assert_eq!(v["id"], json!(-1500.0));
        let v = body(Some(br#""a\"b\u00e9""#), ErrorCode::Parse, "Parse error");
        assert_eq!(v["id"], json!("a\"bé"));
        assert_eq!(v["error"]["code"], json!(-32700));
        let v = body(None, ErrorCode::InvalidRequest, "Bad Request");
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], json!(-32600));
        assert_eq!(v["jsonrpc"], json!("2.0"));
        assert_eq!(v.as_object().unwrap().len(), 3);
        assert_eq!(v["error"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn message_escaping() {
        let nasty = "q\"uote\\back/slash\n\r\t\u{0}\u{1f}\u{7f} é € 😀 </script>";
        let v = body(Some(b"1"), ErrorCode::Server, nasty);
        assert_eq!(v["error"]["message"], json!(nasty));
        let mut out = BytesMut::new();
        write_error_body(&mut out, None, ErrorCode::Server, "\u{1}\n");
        assert!(out.ends_with(br#""message":"\u0001\u000a"}}"#));
        let all: String = (0u8..0x80).map(char::from).collect();
        let v = body(None, ErrorCode::Server, &all);
        assert_eq!(v["error"]["message"], json!(all));
        let v = body(None, ErrorCode::Server, "");
        assert_eq!(v["error"]["message"], json!(""));
    }
}
