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

/// Where the decoder is in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A `Length` body with this many payload bytes left (done at 0).
    Length(u64),
    /// Close-delimited: everything until EOF.
    Close,
    /// An `Empty` body, or a chunked body after its trailer section.
    Done,
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left (> 0).
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// In the trailer section, after this many bytes of it.
    Trailers(usize),
}

/// Incremental decoder for one message body.
///
/// The decoder never consumes bytes past the end of its body (so pipelined requests and
/// bytes after a response stay in the caller's buffer). It reports how many input bytes
/// belong to the body (for raw pass-through forwarding, framing included) and hands the
/// decoded payload slices to a callback (for inspection, or to re-frame for an HTTP/1.0
/// client).
///
/// Chunked framing is parsed strictly (RFC 9112 section 7.1), so that the router and the
/// backend cannot disagree on where a body ends:
///
/// - `chunk-size` is 1 to 16 hex digits (16 cannot overflow u64). RFC 9112 section 7.1:
///   "Recipients MUST anticipate potentially large hexadecimal numerals and prevent
///   parsing errors due to integer conversion overflows or precision loss due to
///   integer representation." No sign, no `0x`, no whitespace: `zz`, `-1`, an empty
///   size, 17 digits, or `5 ;ext` (BWS before `;` is *rejected*) are `InvalidChunkSize`.
/// - Chunk extensions (`;` then anything of field-value bytes: HTAB, SP, VCHAR,
///   obs-text) are accepted and ignored: RFC 9112 section 7.1.1: "A recipient MUST
///   ignore unrecognized chunk extensions." The whole line, CRLF included, is bounded
///   by `max_line` ("A server ought to limit the total length of chunk extensions
///   received in a request").
/// - Every line ends with CRLF. A bare LF (or a CR not followed by LF) is refused rather
///   than tolerated: RFC 9112 section 2.2 lets a recipient accept a bare LF, but two
///   parsers disagreeing on it is the classic smuggling vector.
/// - Chunk data must be followed by exactly CRLF (`InvalidChunk` otherwise).
/// - The trailer section is a sequence of `name: value` lines (name a token, value
///   field-value bytes, no obs-fold) ended by an empty line; in total at most
///   `max_line` bytes. Trailer bytes are counted as consumed but are not payload.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    state: State,
    /// Longest chunk-size line, and longest whole trailer section, accepted.
    max_line: usize,
}

/// A byte allowed in a chunk extension or trailer field value (like a header field
/// value: HTAB, SP, VCHAR, obs-text).
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// A `tchar` (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Parse a chunk-size line at the start of `rest`: `Ok(Some((line length with CRLF,
/// size)))`, or `Ok(None)` if the line is incomplete but may still be valid.
fn parse_size_line(rest: &[u8], max_line: usize) -> Result<Option<(usize, u64)>, BodyError> {
    // Never look further than a line may be long: a complete line (CRLF included) fits
    // in `max_line` bytes. Looking one byte further would let that byte turn a
    // `LineTooLong` into an `InvalidChunkSize` only when it arrived in the same read.
    let window = &rest[..rest.len().min(max_line)];
    let incomplete = || {
        // The finished line will be at least one byte longer than what we have.
        if window.len() >= max_line {
            Err(BodyError::LineTooLong)
        } else {
            Ok(None)
        }
    };
    let mut size: u64 = 0;
    let mut i = 0;
    while let Some(v) = window.get(i).copied().and_then(hex_value) {
        if i == 16 {
            return Err(BodyError::InvalidChunkSize);
        }
        size = (size << 4) | v;
        i += 1;
    }
    let Some(&after) = window.get(i) else {
        return incomplete();
    };
    if i == 0 {
        return Err(BodyError::InvalidChunkSize);
    }
    let mut j = i;
    if after == b';' {
        j += 1;
        loop {
            match window.get(j) {
                None => return incomplete(),
                Some(b'\r') => break,
                Some(&b) if is_value_byte(b) => j += 1,
                Some(_) => return Err(BodyError::InvalidChunkSize),
            }
        }
    } else if after != b'\r' {
        return Err(BodyError::InvalidChunkSize);
    }
    // window[j] is CR.
    match window.get(j + 1) {
        None => incomplete(),
        Some(b'\n') if j + 2 <= max_line => Ok(Some((j + 2, size))),
        Some(b'\n') => Err(BodyError::LineTooLong),
        Some(_) => Err(BodyError::InvalidChunkSize),
    }
}

/// Parse one trailer-section line at the start of `rest`, `used` bytes into the
/// section: `Ok(Some((line length with CRLF, is the final empty line)))`, or `Ok(None)`
/// if incomplete.
fn parse_trailer_line(
    rest: &[u8],
    used: usize,
    max_line: usize,
) -> Result<Option<(usize, bool)>, BodyError> {
    let avail = max_line.saturating_sub(used);
    let window = &rest[..rest.len().min(avail)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // The line needs at least one more byte than we have.
        return if window.len() >= avail {
            Err(BodyError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    let Some(line) = window[..lf].strip_suffix(b"\r") else {
        return Err(BodyError::InvalidChunk);
    };
    if line.is_empty() {
        return Ok(Some((lf + 1, true)));
    }
    let name_len = line.iter().take_while(|&&b| is_tchar(b)).count();
    match line.get(name_len) {
        Some(b':') if name_len > 0 => {}
        _ => return Err(BodyError::InvalidChunk),
    }
    if !line[name_len + 1..].iter().all(|&b| is_value_byte(b)) {
        return Err(BodyError::InvalidChunk);
    }
    Ok(Some((lf + 1, false)))
}

impl BodyDecoder {
    /// A decoder for a body of `kind`. `max_line` bounds a chunk-size line (with its
    /// extensions) and the whole trailer section; 4096 is a good value.
    pub fn new(kind: BodyKind, max_line: usize) -> Self {
        let state = match kind {
            BodyKind::Empty => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::Size,
            BodyKind::Close => State::Close,
        };
        BodyDecoder { state, max_line }
    }

    /// Consume body bytes from the front of `input`.
    ///
    /// Returns how many bytes of `input` belong to this body (framing included); `data`
    /// is called with each decoded payload slice, in order. Bytes of an incomplete
    /// chunk-size line or trailer line are not consumed: call again with more input
    /// appended (the returned count only ever covers bytes fully accounted for, except
    /// payload bytes, which are consumed and reported as soon as they are seen).
    ///
    /// After an error the decoder's state is unspecified; the connection must be closed.
    pub fn decode(
        &mut self,
        input: &[u8],
        data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, BodyError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done | State::Length(0) => return Ok(pos),
                State::Close => {
                    if !rest.is_empty() {
                        data(rest);
                    }
                    return Ok(input.len());
                }
                _ if rest.is_empty() => return Ok(pos),
                State::Length(left) | State::Data(left) => {
                    // `take` <= rest.len(), so the cast back to usize is lossless.
                    let take = left.min(rest.len() as u64);
                    data(&rest[..take as usize]);
                    pos += take as usize;
                    let left = left - take;
                    self.state = match self.state {
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::DataCr,
                        _ => State::Data(left),
                    };
                }
                State::DataCr | State::DataLf => {
                    let (want, next) = if self.state == State::DataCr {
                        (b'\r', State::DataLf)
                    } else {
                        (b'\n', State::Size)
                    };
                    if rest[0] != want {
                        return Err(BodyError::InvalidChunk);
                    }
                    pos += 1;
                    self.state = next;
                }
                State::Size => match parse_size_line(rest, self.max_line)? {
                    None => return Ok(pos),
                    Some((len, size)) => {
                        pos += len;
                        self.state = if size == 0 {
                            State::Trailers(0)
                        } else {
                            State::Data(size)
                        };
                    }
                },
                State::Trailers(used) => match parse_trailer_line(rest, used, self.max_line)? {
                    None => return Ok(pos),
                    Some((len, last)) => {
                        pos += len;
                        self.state = if last {
                            State::Done
                        } else {
                            State::Trailers(used + len)
                        };
                    }
                },
            }
        }
    }

    /// The whole body, including the last chunk and trailers, has been consumed.
    /// `Empty` and `Length(0)` are done at once; `Close` never is (see [`Self::finish`]).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    /// The connection reached EOF: `Ok(())` if that properly ends the body (a `Close`
    /// body, or one already done), `Err(Truncated)` otherwise.
    pub fn finish(&mut self) -> Result<(), BodyError> {
        if self.state == State::Close || self.is_done() {
            Ok(())
        } else {
            Err(BodyError::Truncated)
        }
    }

    /// Payload bytes still expected for a `Length` body (None for other kinds).
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    /// Feed `input` in pieces ending at each of `cuts` (then the rest), re-feeding
    /// unconsumed bytes with the next piece appended, like a connection buffer would.
    /// Returns (payload, total consumed, error).
    fn feed(
        kind: BodyKind,
        max_line: usize,
        input: &[u8],
        cuts: &[usize],
    ) -> (Vec<u8>, usize, Option<BodyError>, BodyDecoder) {
        let mut dec = BodyDecoder::new(kind, max_line);
        let mut payload = Vec::new();
        let mut consumed = 0;
        let ends = cuts.iter().copied().chain(std::iter::once(input.len()));
        for end in ends {
            if dec.is_done() {
                break;
            }
            let avail = &input[consumed..end.max(consumed)];
            match dec.decode(avail, &mut |d| payload.extend_from_slice(d)) {
                Ok(n) => {
                    assert!(n <= avail.len());
                    consumed += n;
                }
                Err(e) => return (payload, consumed, Some(e), dec),
            }
        }
        (payload, consumed, None, dec)
    }

    fn all_at_once(kind: BodyKind, input: &[u8]) -> (Vec<u8>, usize, Option<BodyError>) {
        let (p, c, e, _) = feed(kind, MAX, input, &[]);
        (p, c, e)
    }

    #[test]
    fn empty_body_is_done_and_consumes_nothing() {
        let mut d = BodyDecoder::new(BodyKind::Empty, MAX);
        assert!(d.is_done());
        assert_eq!(
            d.decode(b"GET / HTTP/1.1\r\n", &mut |_| panic!("no data")),
            Ok(0)
        );
        assert_eq!(d.finish(), Ok(()));
        assert_eq!(d.remaining(), None);
    }

    #[test]
    fn length_body_stops_at_its_end() {
        let mut d = BodyDecoder::new(BodyKind::Length(5), MAX);
        assert_eq!(d.remaining(), Some(5));
        let mut got = Vec::new();
        assert_eq!(d.decode(b"hel", &mut |x| got.extend_from_slice(x)), Ok(3));
        assert_eq!(d.remaining(), Some(2));
        assert!(!d.is_done());
        assert_eq!(
            d.decode(b"loGET / HTTP/1.1", &mut |x| got.extend_from_slice(x)),
            Ok(2)
        );
        assert_eq!(got, b"hello");
        assert!(d.is_done());
        assert_eq!(d.remaining(), Some(0));
        assert_eq!(d.decode(b"more", &mut |_| panic!("no data")), Ok(0));
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn length_zero_is_done_at_once() {
        let d = BodyDecoder::new(BodyKind::Length(0), MAX);
        assert!(d.is_done());
    }

    #[test]
    fn truncated_bodies() {
        let mut d = BodyDecoder::new(BodyKind::Length(10), MAX);
        assert_eq!(d.decode(b"abc", &mut |_| {}), Ok(3));
        assert_eq!(d.finish(), Err(BodyError::Truncated));

        for partial in [
            &b""[..],
            b"5\r\nab",
            b"5\r\nabcde\r\n",
            b"0\r\n",
            b"0\r\nX: y\r\n",
        ] {
            let (_, _, err, mut dec) = feed(BodyKind::Chunked, MAX, partial, &[]);
            assert_eq!(err, None);
            assert_eq!(dec.finish(), Err(BodyError::Truncated), "{partial:?}");
        }
    }

    #[test]
    fn close_body_takes_everything_and_ends_at_eof() {
        let mut d = BodyDecoder::new(BodyKind::Close, MAX);
        let mut got = Vec::new();
        assert_eq!(d.decode(b"abc", &mut |x| got.extend_from_slice(x)), Ok(3));
        assert_eq!(d.decode(b"", &mut |x| got.extend_from_slice(x)), Ok(0));
        assert_eq!(d.decode(b"de", &mut |x| got.extend_from_slice(x)), Ok(2));
        assert_eq!(got, b"abcde");
        assert!(!d.is_done());
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn chunked_simple() {
        let body = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        let (p, c, e) = all_at_once(BodyKind::Chunked, body);
        assert_eq!(e, None);
        assert_eq!(p, b"hello, world");
        assert_eq!(c, body.len());
    }

    #[test]
    fn chunked_with_extensions_trailers_and_uppercase_hex() {
        let body =
            b"A;name=value;x=\"q s\"\r\n0123456789\r\n1f\r\n0123456789012345678901234567890\r\n\
                     000;last\r\nExpires: never\r\nX-Sum:\tabc  \r\n\r\n";
        let (p, c, e) = all_at_once(BodyKind::Chunked, body);
        assert_eq!(e, None);
        assert_eq!(p.len(), 10 + 31);
        assert_eq!(c, body.len());
    }

    #[test]
    fn chunked_never_consumes_past_the_end() {
        let mut input = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let end = input.len();
        input.extend_from_slice(b"POST /next HTTP/1.1\r\n\r\n");
        let (p, c, e) = all_at_once(BodyKind::Chunked, &input);
        assert_eq!((p.as_slice(), c, e), (&b"abc"[..], end, None));
        let mut d = BodyDecoder::new(BodyKind::Chunked, MAX);
        assert_eq!(d.decode(&input, &mut |_| {}), Ok(end));
        assert!(d.is_done());
        assert_eq!(d.decode(&input[end..], &mut |_| panic!("no data")), Ok(0));
    }

    #[test]
    fn incomplete_size_line_is_not_consumed() {
        let mut d = BodyDecoder::new(BodyKind::Chunked, MAX);
        assert_eq!(d.decode(b"1", &mut |_| {}), Ok(0));
        assert_eq!(d.decode(b"10", &mut |_| {}), Ok(0));
        assert_eq!(d.decode(b"10;ext", &mut |_| {}), Ok(0));
        assert_eq!(d.decode(b"10;ext\r", &mut |_| {}), Ok(0));
        assert_eq!(d.decode(b"10;ext\r\nab", &mut |_| {}), Ok(10));
        assert_eq!(d.remaining(), None);
    }

    #[test]
    fn invalid_chunk_sizes() {
        for body in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"0x5\r\n",
            b" 5\r\n",
            b"5 \r\nhello\r\n",
            b"5 ;x\r\nhello\r\n",
            b"12345678901234567\r\n", // 17 hex digits
            b"5\rX",
            b"5;a\x00b\r\n",
            b"5;a\rb\r\n",
        ] {
            let (_, _, e) = all_at_once(BodyKind::Chunked, body);
            assert_eq!(e, Some(BodyError::InvalidChunkSize), "{body:?}");
        }
        // 16 hex digits is the most accepted, even all f's (u64::MAX).
        let (_, c, e) = all_at_once(BodyKind::Chunked, b"ffffffffffffffff\r\nab");
        assert_eq!((c, e), (20, None));
        let (_, c, e) = all_at_once(BodyKind::Chunked, b"0000000000000001\r\na\r\n0\r\n\r\n");
        assert_eq!((c, e), (26, None));
    }

    #[test]
    fn bare_lf_is_refused_everywhere() {
        let cases: [(&[u8], BodyError); 4] = [
            (b"5\nhello\r\n0\r\n\r\n", BodyError::InvalidChunkSize),
            (b"5\r\nhello\n0\r\n\r\n", BodyError::InvalidChunk),
            (b"5\r\nhello\r\n0\r\nX: y\n\r\n", BodyError::InvalidChunk),
            (b"5\r\nhello\r\n0\r\n\n", BodyError::InvalidChunk),
        ];
        for (body, err) in cases {
            assert_eq!(
                all_at_once(BodyKind::Chunked, body).2,
                Some(err),
                "{body:?}"
            );
        }
    }

    #[test]
    fn missing_crlf_after_chunk_data() {
        for body in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"5\r\nhello0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\rX",
        ] {
            let (_, _, e) = all_at_once(BodyKind::Chunked, body);
            assert_eq!(e, Some(BodyError::InvalidChunk), "{body:?}");
        }
    }

    #[test]
    fn malformed_trailers() {
        for body in [
            &b"0\r\nno colon\r\n\r\n"[..],
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nBad Name: x\r\n\r\n",
            b"0\r\nX: a\r\n folded\r\n\r\n",
            b"0\r\nX: a\x01b\r\n\r\n",
        ] {
            let (_, _, e) = all_at_once(BodyKind::Chunked, body);
            assert_eq!(e, Some(BodyError::InvalidChunk), "{body:?}");
        }
    }

    #[test]
    fn line_limits() {
        // A size line of exactly max_line bytes (CRLF included) is fine, one more is not.
        let max = 16;
        let ok = b"1;aaaaaaaaaaaa\r\nx\r\n0\r\n\r\n"; // first line 16 bytes
        assert_eq!(feed(BodyKind::Chunked, max, ok, &[]).2, None);
        let long = b"1;aaaaaaaaaaaaa\r\nx\r\n0\r\n\r\n";
        assert_eq!(
            feed(BodyKind::Chunked, max, long, &[]).2,
            Some(BodyError::LineTooLong)
        );
        // An incomplete line already at the limit is refused without waiting for more.
        let mut d = BodyDecoder::new(BodyKind::Chunked, max);
        assert_eq!(d.decode(b"1;aaaaaaaaaaaaa", &mut |_| {}), Ok(0));
        assert_eq!(
            d.decode(b"1;aaaaaaaaaaaaaa", &mut |_| {}),
            Err(BodyError::LineTooLong)
        );
        // The trailer section as a whole is bounded.
        let trailers_ok = b"0\r\nA: 1\r\nB: 2\r\n\r\n"; // section: 6 + 6 + 2 = 14
        assert_eq!(feed(BodyKind::Chunked, 14, trailers_ok, &[]).2, None);
        assert_eq!(
            feed(BodyKind::Chunked, 13, trailers_ok, &[]).2,
            Some(BodyError::LineTooLong)
        );
        let mut d = BodyDecoder::new(BodyKind::Chunked, 14);
        assert_eq!(d.decode(b"0\r\nA: 1\r\nB: 2\r\n", &mut |_| {}), Ok(15));
        assert_eq!(d.decode(b"X: 3", &mut |_| {}), Err(BodyError::LineTooLong));
    }

    /// Feeding the same input split at every possible point (and one byte at a time)
    /// gives the same payload and consumed count as feeding it at once.
    #[test]
    fn split_invariance() {
        let mut bodies: Vec<(BodyKind, Vec<u8>)> = vec![
            (BodyKind::Chunked, b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
            (
                BodyKind::Chunked,
                b"3;a=b\r\nabc\r\n10\r\n0123456789abcdef\r\n0;z\r\nT: v\r\nU:\r\n\r\nGET / HTTP/1.1\r\n"
                    .to_vec(),
            ),
            (BodyKind::Chunked, b"1\r\nx\r\n1\r\ny\r\n0\r\n\r\nrest".to_vec()),
            (BodyKind::Length(7), b"1234567890".to_vec()),
            (BodyKind::Close, b"anything at all".to_vec()),
            (BodyKind::Chunked, b"5\r\nhelloX".to_vec()), // error case
        ];
        // A longer body with many chunks.
        let mut long = Vec::new();
        for i in 1..20u8 {
            long.extend_from_slice(format!("{i:x}\r\n").as_bytes());
            long.extend_from_slice(&vec![b'a' + i; i as usize]);
            long.extend_from_slice(b"\r\n");
        }
        long.extend_from_slice(b"0\r\n\r\n");
        bodies.push((BodyKind::Chunked, long));

        // On an error the consumed count of the failing call is not reported, so only
        // payload and error are compared then.
        let key = |r: &(Vec<u8>, usize, Option<BodyError>, BodyDecoder)| {
            (r.0.clone(), if r.2.is_some() { 0 } else { r.1 }, r.2)
        };
        for (kind, input) in &bodies {
            let whole = key(&feed(*kind, MAX, input, &[]));
            for cut in 0..=input.len() {
                assert_eq!(key(&feed(*kind, MAX, input, &[cut])), whole, "cut {cut}");
            }
            for cut2 in 0..=input.len() {
                for cut in 0..=cut2 {
                    assert_eq!(key(&feed(*kind, MAX, input, &[cut, cut2])), whole);
                }
            }
            let cuts: Vec<usize> = (0..=input.len()).collect();
            assert_eq!(key(&feed(*kind, MAX, input, &cuts)), whole);
        }
    }
}
