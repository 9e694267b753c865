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
///
/// The size of an event is the length of its `data` (as joined), plus the lengths of the
/// values of its `event` and `id` lines (including ones a later line replaced). Comments
/// and other fields cost nothing. Each of the parser's buffers stays within `max_event`
/// and is reused from event to event.
///
/// Per event, not per stream: `id` is reported only for the event whose lines set it (the
/// WHATWG "last event ID" that persists across events is the caller's to keep), and an
/// `id` whose value contains NUL is ignored. `retry` and unknown fields are ignored.
#[derive(Clone, Debug)]
pub struct SseParser {
    /// Bound on one event's size.
    max_event: usize,
    /// Bytes of the leading BOM matched so far; `BOM.len()` once past the stream start.
    bom: usize,
    /// Where the current line is.
    line: Line,
    /// The field name read so far (names longer than any field kept are skipped).
    name: [u8; NAME_CAP],
    /// Length of `name`.
    name_len: usize,
    /// The value just started: one leading space is still to be stripped.
    strip_space: bool,
    /// The last byte was a CR ending a line: an LF right after it is part of the same
    /// line ending.
    after_cr: bool,
    /// The event's data lines, joined with LF.
    data: Vec<u8>,
    /// The event has at least one data line.
    has_data: bool,
    /// The event's type (empty: the default type).
    event: Vec<u8>,
    /// The event's id.
    id: Vec<u8>,
    /// An `id` line set `id`.
    has_id: bool,
    /// The value of the `id` line being read (kept aside: a value with NUL is ignored).
    id_line: Vec<u8>,
    /// The event's size so far.
    size: usize,
    /// The event went over `max_event`: its lines are skipped until the blank line.
    dropping: bool,
    /// Events dropped for size.
    overflowed: u64,
}

/// The UTF-8 byte order mark.
const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// Longest field name kept (`event`).
const NAME_CAP: usize = 5;

/// Where the current line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// Nothing read yet: an end of line here is a blank line.
    Start,
    /// In the field name.
    Name,
    /// In the value of a field that is kept.
    Value(Field),
    /// In a line that is ignored (comment, other field, or an event being dropped).
    Skip,
}

/// A field that is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// `data`.
    Data,
    /// `event`.
    Event,
    /// `id`.
    Id,
}

impl SseParser {
    /// A parser that keeps at most `max_event` bytes of one event.
    pub fn new(max_event: usize) -> Self {
        SseParser {
            max_event,
            bom: 0,
            line: Line::Start,
            name: [0; NAME_CAP],
            name_len: 0,
            strip_space: false,
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            event: Vec::new(),
            id: Vec::new(),
            has_id: false,
            id_line: Vec::new(),
            size: 0,
            dropping: false,
            overflowed: 0,
        }
    }
    /// Feed the next bytes of the stream; `on_event` is called for each complete event.
    pub fn feed(&mut self, data: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        let mut rest = data;
        while let Some((&b, tail)) = rest.split_first() {
            if let Some(&expected) = BOM.get(self.bom) {
                if b == expected {
                    self.bom += 1;
                    rest = tail;
                    continue;
                }
                // Not a BOM after all: what looked like its start is content.
                let matched = BOM.get(..self.bom).unwrap_or_default();
                self.bom = BOM.len();
                for &m in matched {
                    self.byte(m, on_event);
                }
            }
            if !self.after_cr && matches!(self.line, Line::Value(_) | Line::Skip) {
                // The rest of the line in one go.
                let n = rest
                    .iter()
                    .position(|&c| c == b'\r' || c == b'\n')
                    .unwrap_or(rest.len());
                if n > 0 {
                    // `n <= rest.len()`: `split_at` cannot panic.
                    let (run, tail) = rest.split_at(n);
                    if let Line::Value(field) = self.line {
                        self.value(field, run);
                    }
                    rest = tail;
                    continue;
                }
            }
            self.byte(b, on_event);
            rest = tail;
        }
    }
    /// How many events were discarded for exceeding `max_event`.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// One byte, after the BOM.
    fn byte(&mut self, b: u8, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if std::mem::take(&mut self.after_cr) && b == b'\n' {
            return;
        }
        if b == b'\r' || b == b'\n' {
            self.end_line(on_event);
            self.after_cr = b == b'\r';
            return;
        }
        match self.line {
            Line::Start if self.dropping || b == b':' => self.line = Line::Skip,
            Line::Start | Line::Name => {
                if b == b':' {
                    match self.field() {
                        Some(field) => self.begin_value(field),
                        None => self.line = Line::Skip,
                    }
                } else if let Some(slot) = self.name.get_mut(self.name_len) {
                    *slot = b;
                    self.name_len += 1;
                    self.line = Line::Name;
                } else {
                    self.line = Line::Skip;
                }
            }
            Line::Value(field) => self.value(field, std::slice::from_ref(&b)),
            Line::Skip => {}
        }
    }

    /// The field the name read so far names, if it is one that is kept.
    fn field(&self) -> Option<Field> {
        match self.name.get(..self.name_len)? {
            b"data" => Some(Field::Data),
            b"event" => Some(Field::Event),
            b"id" => Some(Field::Id),
            _ => None,
        }
    }

    /// The colon after a kept field's name (or the end of a line that is only a name).
    fn begin_value(&mut self, field: Field) {
        self.line = Line::Value(field);
        self.strip_space = true;
        match field {
            Field::Data => {
                if self.has_data {
                    self.keep(field, b"\n");
                }
                // Unless that overflowed, the event now has data.
                self.has_data = !self.dropping;
            }
            Field::Event => self.event.clear(),
            Field::Id => self.id_line.clear(),
        }
    }

    /// Bytes of a kept field's value.
    fn value(&mut self, field: Field, mut bytes: &[u8]) {
        if self.strip_space {
            if let Some((&first, tail)) = bytes.split_first() {
                self.strip_space = false;
                if first == b' ' {
                    bytes = tail;
                }
            }
        }
        self.keep(field, bytes);
    }

    /// Store bytes of the event, or drop the event when they make it too big.
    fn keep(&mut self, field: Field, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let size = self.size.saturating_add(bytes.len());
        if size > self.max_event {
            self.overflow();
            return;
        }
        self.size = size;
        let target = match field {
            Field::Data => &mut self.data,
            Field::Event => &mut self.event,
            Field::Id => &mut self.id_line,
        };
        target.extend_from_slice(bytes);
    }

    /// The event is too big: forget it and skip its lines up to the blank line.
    fn overflow(&mut self) {
        self.clear_event();
        self.dropping = true;
        self.line = Line::Skip;
    }

    /// Forget the event being read.
    fn clear_event(&mut self) {
        self.data.clear();
        self.event.clear();
        self.id.clear();
        self.id_line.clear();
        self.has_data = false;
        self.has_id = false;
        self.size = 0;
        self.dropping = false;
    }

    /// A line ending.
    fn end_line(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        match self.line {
            Line::Start => self.dispatch(on_event),
            Line::Name => {
                // A field without a colon: its value is empty.
                if let Some(field) = self.field() {
                    self.begin_value(field);
                    if self.line == Line::Value(field) {
                        self.end_value(field);
                    }
                }
            }
            Line::Value(field) => self.end_value(field),
            Line::Skip => {}
        }
        self.line = Line::Start;
        self.name_len = 0;
    }

    /// The end of a kept field's line.
    fn end_value(&mut self, field: Field) {
        if field == Field::Id && !self.id_line.contains(&0) {
            std::mem::swap(&mut self.id, &mut self.id_line);
            self.has_id = true;
        }
        self.id_line.clear();
    }

    /// A blank line: dispatch the event (if it has data), or count it as dropped.
    fn dispatch(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.dropping {
            self.overflowed = self.overflowed.saturating_add(1);
        } else if self.has_data {
            on_event(SseEvent {
                event: (!self.event.is_empty()).then_some(&self.event[..]),
                data: &self.data,
                id: self.has_id.then_some(&self.id[..]),
            });
        }
        self.clear_event();
    }
}

/// Append one event: optional `id:` line, optional `event:` line, one `data:` line per
/// line of `data` (split on LF; CR and CRLF are normalized), then a blank line.
///
/// CR and LF inside `id` or `event` would end their line early, so they are left out.
pub fn write_event(out: &mut BytesMut, id: Option<&[u8]>, event: Option<&[u8]>, data: &[u8]) {
    for (name, value) in [(&b"id: "[..], id), (&b"event: "[..], event)] {
        if let Some(value) = value {
            out.extend_from_slice(name);
            for piece in value.split(|&b| b == b'\r' || b == b'\n') {
                out.extend_from_slice(piece);
            }
            out.extend_from_slice(b"\n");
        }
    }
    let mut rest = data;
    loop {
        let n = rest
            .iter()
            .position(|&c| c == b'\r' || c == b'\n')
            .unwrap_or(rest.len());
        // `n <= rest.len()`: `split_at` cannot panic.
        let (line, tail) = rest.split_at(n);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n");
        rest = match tail {
            [] => break,
            [b'\r', b'\n', after @ ..] | [_, after @ ..] => after,
        };
    }
    out.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::endpoint_session_id;

    /// An owned event: (event, data, id).
    type Owned = (Option<Vec<u8>>, Vec<u8>, Option<Vec<u8>>);

    fn owned(e: SseEvent<'_>) -> Owned {
        (
            e.event.map(<[u8]>::to_vec),
            e.data.to_vec(),
            e.id.map(<[u8]>::to_vec),
        )
    }

    fn ev(event: Option<&str>, data: &str, id: Option<&str>) -> Owned {
        (
            event.map(|s| s.as_bytes().to_vec()),
            data.as_bytes().to_vec(),
            id.map(|s| s.as_bytes().to_vec()),
        )
    }

    /// Parse `stream` fed in pieces cut at `cuts` (ascending).
    fn parse_cut(stream: &[u8], cuts: &[usize], max_event: usize) -> (Vec<Owned>, u64) {
        let mut p = SseParser::new(max_event);
        let mut events = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            p.feed(&stream[at..cut], &mut |e| events.push(owned(e)));
            at = cut;
        }
        (events, p.overflowed())
    }

    fn parse(stream: &[u8]) -> Vec<Owned> {
        parse_cut(stream, &[], 1 << 20).0
    }

    /// Every single cut, every pair of cuts (short streams) and byte by byte agree.
    fn assert_split_invariant(stream: &[u8], max_event: usize) -> (Vec<Owned>, u64) {
        let whole = parse_cut(stream, &[], max_event);
        for a in 0..=stream.len() {
            assert_eq!(parse_cut(stream, &[a], max_event), whole, "cut at {a}");
            if stream.len() <= 48 {
                for b in a..=stream.len() {
                    assert_eq!(parse_cut(stream, &[a, b], max_event), whole, "cuts {a} {b}");
                }
            }
        }
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(parse_cut(stream, &every, max_event), whole, "byte by byte");
        whole
    }

    #[test]
    fn endpoint_event() {
        let stream = b"event: endpoint\ndata: /messages?sessionId=abc-123\n\n";
        let events = parse(stream);
        assert_eq!(
            events,
            vec![ev(Some("endpoint"), "/messages?sessionId=abc-123", None)]
        );
        assert_eq!(
            endpoint_session_id(&events[0].1).as_deref(),
            Some(&b"abc-123"[..])
        );
        // Python SDK style, CRLF.
        let stream = b"event: endpoint\r\ndata: /messages/?session_id=9f86d081884c7d65\r\n\r\n";
        let events = parse(stream);
        assert_eq!(
            endpoint_session_id(&events[0].1).as_deref(),
            Some(&b"9f86d081884c7d65"[..])
        );
    }

    #[test]
    fn line_endings() {
        let want = vec![ev(Some("e"), "a\nb", Some("1")), ev(None, "c", None)];
        for stream in [
            &b"event: e\nid: 1\ndata: a\ndata: b\n\ndata: c\n\n"[..],
            b"event: e\r\nid: 1\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n",
            b"event: e\rid: 1\rdata: a\rdata: b\r\rdata: c\r\r",
            b"event: e\r\nid: 1\rdata: a\ndata: b\r\n\rdata: c\n\r\n",
        ] {
            assert_eq!(assert_split_invariant(stream, 1024), (want.clone(), 0));
        }
        // CR then LF in the next chunk is one line ending, not two.
        let mut p = SseParser::new(64);
        let mut events = Vec::new();
        p.feed(b"data: x\r", &mut |e| events.push(owned(e)));
        p.feed(b"\n", &mut |e| events.push(owned(e)));
        assert!(events.is_empty());
        p.feed(b"\r", &mut |e| events.push(owned(e)));
        assert_eq!(events, vec![ev(None, "x", None)]);
    }

    #[test]
    fn fields() {
        // No colon: empty value. Only one space stripped. Colon in the value kept.
        assert_eq!(parse(b"data\n\n"), vec![ev(None, "", None)]);
        assert_eq!(parse(b"data:\n\n"), vec![ev(None, "", None)]);
        assert_eq!(parse(b"data: \n\n"), vec![ev(None, "", None)]);
        assert_eq!(parse(b"data:  two\n\n"), vec![ev(None, " two", None)]);
        assert_eq!(parse(b"data:x\n\n"), vec![ev(None, "x", None)]);
        assert_eq!(parse(b"data: a: b\n\n"), vec![ev(None, "a: b", None)]);
        assert_eq!(parse(b"data\ndata\n\n"), vec![ev(None, "\n", None)]);
        assert_eq!(
            parse(b"data: a\ndata\ndata: b\n\n"),
            vec![ev(None, "a\n\nb", None)]
        );
        // Comments, retry, unknown and differently-cased fields are ignored.
        assert_eq!(
            parse(b": ping\n\n:\nretry: 100\nData: no\nfoo: bar\ndatum: x\ndata: y\n: c\n\n"),
            vec![ev(None, "y", None)]
        );
        // No data, no event (but the next one does not inherit the type or id).
        assert_eq!(
            parse(b"event: x\nid: 5\n\ndata: y\n\n"),
            vec![ev(None, "y", None)]
        );
        // Later event and id lines replace earlier ones.
        assert_eq!(
            parse(b"event: a\nevent: b\nid: 1\nid: 2\ndata: d\n\n"),
            vec![ev(Some("b"), "d", Some("2"))]
        );
        // An empty event type is the default; an empty id is an id.
        assert_eq!(
            parse(b"event:\nid\ndata: d\n\n"),
            vec![ev(None, "d", Some(""))]
        );
        // An id with NUL is ignored.
        assert_eq!(
            parse(b"id: 1\nid: 2\x003\ndata: d\n\n"),
            vec![ev(None, "d", Some("1"))]
        );
        assert_eq!(parse(b"id: \0\ndata: d\n\n"), vec![ev(None, "d", None)]);
        // SSE polling (2025-11-25): an id with empty data.
        assert_eq!(parse(b"id: 42\ndata:\n\n"), vec![ev(None, "", Some("42"))]);
        // An unfinished event is not dispatched.
        assert_eq!(parse(b"data: a\n\ndata: b\n"), vec![ev(None, "a", None)]);
        // Non-ASCII passes through.
        assert_eq!(
            parse("data: é€😀\n\n".as_bytes()),
            vec![ev(None, "é€😀", None)]
        );
    }

    #[test]
    fn bom() {
        assert_eq!(parse(b"\xEF\xBB\xBFdata: a\n\n"), vec![ev(None, "a", None)]);
        assert_split_invariant(b"\xEF\xBB\xBFdata: a\n\n", 64);
        // Only at the start of the stream: a second one is part of a field name.
        assert_eq!(parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n"), vec![]);
        assert_eq!(
            parse(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n").len(),
            1
        );
        // Something that starts like a BOM but is not one is content.
        assert_eq!(parse(b"\xEF\xBBdata: a\n\n"), vec![]);
        assert_eq!(parse(b"\xEF\n\ndata: a\n\n"), vec![ev(None, "a", None)]);
        assert_eq!(parse(b"\xEF"), vec![]);
    }

    #[test]
    fn bounded() {
        // Size counts data (joined), event and id values.
        let stream = b"event: abc\nid: 12\ndata: 0123\ndata: 45\n\n";
        let size = 3 + 2 + 4 + 1 + 2;
        let (events, dropped) = assert_split_invariant(stream, size);
        assert_eq!((events.len(), dropped), (1, 0));
        let (events, dropped) = assert_split_invariant(stream, size - 1);
        assert_eq!((events.len(), dropped), (0, 1));
        // A dropped event is dropped whole; the next one is fine.
        let stream = b"data: 0123456789\ndata: x\nevent: e\n\nevent: f\ndata: ok\n\n: big comments are free 0123456789\n\n";
        let (events, dropped) = assert_split_invariant(stream, 8);
        assert_eq!(events, vec![ev(Some("f"), "ok", None)]);
        assert_eq!(dropped, 1);
        // Empty data lines cost their line feeds.
        let (events, dropped) = parse_cut(&b"data\n".repeat(100), &[], 50);
        assert_eq!((events.len(), dropped), (0, 0));
        let mut stream = b"data\n".repeat(100);
        stream.extend_from_slice(b"\n");
        let (events, dropped) = parse_cut(&stream, &[], 50);
        assert_eq!((events.len(), dropped), (0, 1));
        let (events, dropped) = parse_cut(&stream, &[], 99);
        assert_eq!((events.len(), dropped), (1, 0));
        // Replaced event and id values still count.
        let (events, dropped) = parse_cut(&b"id: 0123\n".repeat(10), &[], 39);
        assert_eq!((events.len(), dropped), (0, 0));
        let mut p = SseParser::new(39);
        p.feed(&b"id: 0123\n".repeat(10), &mut |_| {});
        p.feed(b"data: x\n\n", &mut |_| panic!("dropped"));
        assert_eq!(p.overflowed(), 1);
        // Zero: only empty events pass.
        let (events, dropped) = parse_cut(b"data\n\ndata: x\n\n", &[], 0);
        assert_eq!((events, dropped), (vec![ev(None, "", None)], 1));
        // A huge event does not grow the buffers past the bound.
        let mut p = SseParser::new(1000);
        let mut big = b"data: ".to_vec();
        big.resize(100_000, b'x');
        p.feed(&big, &mut |_| panic!("dropped"));
        assert!(p.data.capacity() <= 2000 && p.data.is_empty());
        p.feed(b"\n\ndata: y\n\n", &mut |e| assert_eq!(e.data, b"y"));
        assert_eq!(p.overflowed(), 1);
    }

    #[test]
    fn split_invariance() {
        let streams: &[&[u8]] = &[
            b"\xEF\xBB\xBFevent: endpoint\r\ndata: /messages?sessionId=1\r\n\r\n: ping\r\rid: 7\rdata: {\"a\":1}\r\r",
            b"id: x\0y\nid: z\ndata:a\ndata: b\r\n\n\n\nevent: q\ndata\n\r\nretry: 5\n",
            b"data: first\n\ndata: 0123456789abcdef\n\ndata: last\n\n",
            b"event:\xc3\xa9\ndata:  \xe2\x82\xac\n\n:\n\n\r\r\n\ndata\n\n",
        ];
        for stream in streams {
            for max in [0, 4, 8, 16, 1024] {
                assert_split_invariant(stream, max);
            }
        }
    }

    #[test]
    fn writer() {
        let mut out = BytesMut::new();
        write_event(&mut out, Some(b"7"), Some(b"message"), b"{\"a\":1}");
        assert_eq!(&out[..], b"id: 7\nevent: message\ndata: {\"a\":1}\n\n");
        let mut out = BytesMut::new();
        write_event(&mut out, None, None, b"");
        assert_eq!(&out[..], b"data: \n\n");
        let mut out = BytesMut::new();
        write_event(&mut out, None, None, b"a\nb\r\nc\rd\n");
        assert_eq!(&out[..], b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n");
        let mut out = BytesMut::new();
        write_event(&mut out, Some(b"i\r\nd"), Some(b"e\nv"), b" x");
        assert_eq!(&out[..], b"id: id\nevent: ev\ndata:  x\n\n");
    }

    #[test]
    fn writer_round_trips() {
        /// (id, event, data written, data read back)
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a [u8], &'a [u8]);
        let cases: &[Case] = &[
            (
                Some(b"1"),
                Some(b"endpoint"),
                b"/messages?sessionId=a",
                b"/messages?sessionId=a",
            ),
            (None, None, b"", b""),
            (None, Some(b"message"), b"a\r\nb\rc\n", b"a\nb\nc\n"),
            (Some(b""), None, b"  leading spaces", b"  leading spaces"),
            (None, None, b"\n\n", b"\n\n"),
            (None, None, b": not a comment", b": not a comment"),
        ];
        let mut out = BytesMut::new();
        for (id, event, data, _) in cases {
            write_event(&mut out, *id, *event, data);
        }
        let events = assert_split_invariant(&out, 1024).0;
        let want: Vec<Owned> = cases
            .iter()
            .map(|(id, event, _, data)| {
                (
                    event.filter(|e| !e.is_empty()).map(<[u8]>::to_vec),
                    data.to_vec(),
                    id.map(<[u8]>::to_vec),
                )
            })
            .collect();
        assert_eq!(events, want);
    }

    /// A straightforward WHATWG parser over a whole stream, without size bounds.
    fn reference(stream: &[u8]) -> Vec<Owned> {
        let stream = stream.strip_prefix(&BOM[..]).unwrap_or(stream);
        let mut lines = Vec::new();
        let mut rest = stream;
        while let Some(n) = rest.iter().position(|&c| c == b'\r' || c == b'\n') {
            lines.push(&rest[..n]);
            rest = match &rest[n..] {
                [b'\r', b'\n', after @ ..] | [_, after @ ..] => after,
                [] => unreachable!(),
            };
        }
        let (mut events, mut data, mut event, mut id) = (Vec::new(), None::<Vec<u8>>, None, None);
        for line in lines {
            if line.is_empty() {
                if let Some(data) = data.take() {
                    events.push((
                        event.take().filter(|e: &Vec<u8>| !e.is_empty()),
                        data,
                        id.take(),
                    ));
                }
                (event, id) = (None, None);
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (name, value) = match line.iter().position(|&c| c == b':') {
                Some(c) => (
                    &line[..c],
                    line[c + 1..].strip_prefix(b" ").unwrap_or(&line[c + 1..]),
                ),
                None => (line, &b""[..]),
            };
            match name {
                b"data" => match &mut data {
                    Some(d) => {
                        d.push(b'\n');
                        d.extend_from_slice(value);
                    }
                    None => data = Some(value.to_vec()),
                },
                b"event" => event = Some(value.to_vec()),
                b"id" if !value.contains(&0) => id = Some(value.to_vec()),
                _ => {}
            }
        }
        events
    }

    #[test]
    fn random_streams_match_reference() {
        const PIECES: &[&[u8]] = &[
            b"data",
            b"data:",
            b"data: ",
            b"event",
            b"event:",
            b"id",
            b"id:",
            b"retry:",
            b":",
            b" ",
            b"x",
            b"yz",
            b"\r",
            b"\n",
            b"\r\n",
            b"\0",
            b"\xEF\xBB\xBF",
            b"\xEF",
            b"dat",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..3000 {
            let mut stream = Vec::new();
            for _ in 0..next(40) {
                stream.extend_from_slice(PIECES[next(PIECES.len())]);
            }
            let whole = parse_cut(&stream, &[], 1 << 20);
            assert_eq!(
                whole.0,
                reference(&stream),
                "{:?}",
                String::from_utf8_lossy(&stream)
            );
            let a = next(stream.len() + 1);
            let b = next(stream.len() + 1);
            assert_eq!(parse_cut(&stream, &[a.min(b), a.max(b)], 1 << 20), whole);
            let max = next(12);
            let small = parse_cut(&stream, &[], max);
            assert_eq!(parse_cut(&stream, &[a.min(b), a.max(b)], max), small);
            // Bounded parsing keeps a subset: every event it keeps is one of the unbounded
            // parser's, and every event is either kept or dropped.
            assert!(small.0.iter().all(|e| whole.0.contains(e)));
            assert!(small.0.len() as u64 + small.1 >= whole.0.len() as u64);
        }
    }
}
