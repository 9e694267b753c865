//! Server-sent events: an incremental parser (to read the legacy `endpoint` event out of
//! a stream being forwarded) and a writer (for the stdio bridge).

use bytes::BytesMut;

/// One dispatched event. Borrowed from the parser; valid until the next `feed`.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field (None means the default type, "message").
    pub event: Option<&'a [u8]>,
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
    /// The `id:` field, if this event set one.
    pub id: Option<&'a [u8]>,
}

/// Incremental SSE parser per the WHATWG event-stream rules: lines end in CRLF, LF or
/// CR; `:` lines are comments; `field: value` with one optional space after the colon;
/// an empty line dispatches the event (an event with no data lines is not dispatched).
/// A leading UTF-8 BOM is skipped.
///
/// Memory is bounded: an event (all its lines) longer than `max_event` bytes is
/// discarded whole and [`SseParser::overflowed`] counts it.
#[derive(Clone, Debug)]
pub struct SseParser {
    _private: (),
}

impl SseParser {
    /// A parser that keeps at most `max_event` bytes of one event.
    pub fn new(max_event: usize) -> Self {
        let _ = max_event;
        todo!()
    }
    /// Feed the next bytes of the stream; `on_event` is called for each complete event.
    pub fn feed(&mut self, data: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        let _ = (data, on_event);
        todo!()
    }
    /// How many events were discarded for exceeding `max_event`.
    pub fn overflowed(&self) -> u64 {
        todo!()
    }
}

/// Append one event: optional `id:` line, optional `event:` line, one `data:` line per
/// line of `data` (split on LF; CR and CRLF are normalized), then a blank line.
pub fn write_event(out: &mut BytesMut, id: Option<&[u8]>, event: Option<&[u8]>, data: &[u8]) {
    let _ = (out, id, event, data);
    todo!()
}
