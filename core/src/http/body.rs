//! Incremental body framing: Content-Length, chunked (with trailers) and close-delimited.

use super::BodyKind;

/// Why a body's framing is invalid. Any of these ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// A chunk-size line that is not 1-16 hex digits (optionally followed by `;` chunk
    /// extensions), or whose value overflows u64.
    InvalidChunkSize,
    /// A chunk-size line or trailer section longer than the decoder's line limit.
    LineTooLong,
    /// Chunk data not followed by CRLF, or a malformed trailer line.
    InvalidChunk,
    /// The connection closed before a Content-Length or chunked body was complete.
    Truncated,
}

impl BodyError {
    /// Short reason for logs and error bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::InvalidChunkSize => "invalid chunk size",
            BodyError::LineTooLong => "chunk line too long",
            BodyError::InvalidChunk => "invalid chunked framing",
            BodyError::Truncated => "body truncated",
        }
    }
}

/// Incremental decoder for one message body.
///
/// The decoder never consumes bytes past the end of its body (so pipelined requests and
/// bytes after a response stay in the caller's buffer). It reports how many input bytes
/// belong to the body (for raw pass-through forwarding, framing included) and hands the
/// decoded payload slices to a callback (for inspection, or to re-frame for an HTTP/1.0
/// client).
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    kind: BodyKind,
    /// Longest chunk-size line, and longest whole trailer section, accepted.
    max_line: usize,
}

impl BodyDecoder {
    /// A decoder for a body of `kind`. `max_line` bounds a chunk-size line (with its
    /// extensions) and the whole trailer section; 4096 is a good value.
    pub fn new(kind: BodyKind, max_line: usize) -> Self {
        BodyDecoder { kind, max_line }
    }

    /// Consume body bytes from the front of `input`.
    ///
    /// Returns how many bytes of `input` belong to this body (framing included); `data`
    /// is called with each decoded payload slice, in order. Bytes of an incomplete
    /// chunk-size line or trailer line are not consumed: call again with more input
    /// appended (the returned count only ever covers bytes fully accounted for, except
    /// payload bytes, which are consumed and reported as soon as they are seen).
    pub fn decode(
        &mut self,
        input: &[u8],
        data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, BodyError> {
        let _ = (input, data);
        todo!()
    }

    /// The whole body, including the last chunk and trailers, has been consumed.
    /// `Empty` and `Length(0)` are done at once; `Close` never is (see [`Self::finish`]).
    pub fn is_done(&self) -> bool {
        todo!()
    }

    /// The connection reached EOF: `Ok(())` if that properly ends the body (a `Close`
    /// body, or one already done), `Err(Truncated)` otherwise.
    pub fn finish(&mut self) -> Result<(), BodyError> {
        todo!()
    }

    /// Payload bytes still expected for a `Length` body (None for other kinds).
    pub fn remaining(&self) -> Option<u64> {
        todo!()
    }
}
