//! HTTP/1.1 message heads and body framing, in both directions.
//!
//! Everything here is pure: bytes in, parsed heads, decoded framing and serialized heads
//! out. Parsing uses `httparse`; nothing allocates per message once the reusable
//! [`RequestHead`] / [`ResponseHead`] values have warmed up.

mod body;
mod head;

pub use body::{BodyDecoder, BodyError};
pub use head::{
    has_dot_segment, parse_request, parse_response, write_chunk, write_request_head,
    write_response_head, write_response_head_sid, write_simple_response, write_stream_head,
    Forward, HeadError, Method, RequestHead, ResponseHead, Version, LAST_CHUNK,
};
pub(crate) use head::{write_forwarded_head, IpText, Name};

/// How a message body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all (GET without Content-Length, HEAD responses, 1xx/204/304, ...).
    #[default]
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Responses only: the body runs until the connection closes.
    Close,
}

/// Limits on what the parser accepts. All are configurable through the router config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request or response head (request line + headers + CRLFCRLF) in bytes;
    /// a larger request head is answered 431.
    pub max_head: usize,
    /// Most header fields in one head; more is answered 431.
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head: 32 * 1024,
            max_headers: 96,
        }
    }
}
