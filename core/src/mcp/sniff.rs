//! Incremental JSON-RPC envelope sniffer.

/// Reads a JSON-RPC message as it streams past and keeps only what routing needs: the
/// top-level `method` (decoded) and `id` (raw JSON token), and whether the message is a
/// batch (a top-level array, 2025-03-26 only). It never buffers the body: state is a
/// few counters and two small fixed buffers, so memory is constant whatever the input.
///
/// Only top-level members of a top-level object count; `method`/`id` nested inside
/// `params` or `result` are ignored. For a batch, `method` and `id` stay `None`.
///
/// For the 2026-07-28 header checks it also follows `params.name`, `params.uri` and
/// `params._meta["io.modelcontextprotocol/protocolVersion"]`, comparing each decoded
/// byte with the header that mirrors it ([`Sniffer::feed_with`], [`Expect`]) instead of
/// keeping the value: a comparison is two counters whatever the value's length. It
/// also notes any of the keys it follows appearing twice ([`Sniffer::has_duplicate`]).
/// Duplicate keys: the first occurrence wins (even when its value is not reported;
/// `serde_json::Value` keeps the last instead). Input that is not JSON sets
/// [`Sniffer::failed`]; what was found before the error is kept.
#[derive(Clone, Debug)]
pub struct Sniffer {
    /// Bytes fed since the last reset.
    fed: u64,
    /// What the next byte means.
    mode: Mode,
    /// Open containers, innermost last: bit `i` of the stack is set when level `i + 1`
    /// is an object, clear when it is an array.
    stack: [u64; 2],
    /// How many containers are open (at most [`MAX_DEPTH`]).
    depth: u8,
    /// What the top-level value is.
    top: Top,
    /// Inside a string: escape progress.
    esc: Esc,
    /// Inside a string: continuation bytes still expected by the current UTF-8 sequence.
    utf8_need: u8,
    /// Inside a string: the range the next continuation byte must fall in.
    utf8_lo: u8,
    /// See `utf8_lo`.
    utf8_hi: u8,
    /// The string being read is an object key.
    str_key: bool,
    /// The string being read is a key of a tracked object (the top-level object,
    /// `params`, `params._meta`; see [`Sniffer::tracked_object`]).
    top_key: bool,
    /// The tracked key being read, decoded (first bytes only).
    key_buf: [u8; KEY_CAP],
    /// Decoded bytes of the tracked key so far (may exceed `KEY_CAP`; then the key is
    /// none that matters).
    key_len: usize,
    /// The last tracked key read, waiting for its value.
    key: Key,
    /// Which member the scalar value being read is captured for.
    capture: Capture,
    /// The `method` member.
    method: Field,
    /// Decoded `method` bytes (the first `method_len`).
    method_buf: [u8; Sniffer::MAX_METHOD],
    /// Length of the decoded `method` in `method_buf`.
    method_len: usize,
    /// The method string was longer than [`Sniffer::MAX_METHOD`].
    method_too_long: bool,
    /// The `id` member.
    id: Field,
    /// Raw `id` token bytes (the first `id_len`).
    id_buf: [u8; Sniffer::MAX_ID],
    /// Length of the raw `id` token in `id_buf`.
    id_len: usize,
    /// The level-2 container open now is the value of the top-level `params`.
    params_open: bool,
    /// The level-3 container open now is the value of `params._meta`.
    meta_open: bool,
    /// Tracked keys seen so far, one bit per [`Key`] (see [`Key::bit`]).
    seen: u8,
    /// A tracked key appeared twice in its object: parsers disagree on which one counts.
    duplicate: bool,
    /// `params.name`, compared as it streams past with [`Expect::name`].
    name: Field,
    /// Progress of the `params.name` comparison.
    name_cmp: Cmp,
    /// `params.uri`, compared with [`Expect::name`].
    uri: Field,
    /// Progress of the `params.uri` comparison.
    uri_cmp: Cmp,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, compared with
    /// [`Expect::version`].
    version: Field,
    /// Progress of the version comparison.
    version_cmp: Cmp,
}

/// What the body's mirrored values are compared with, as they stream past: the request
/// headers that mirror them (2026-07-28). Borrowed for one [`Sniffer::feed_with`] call,
/// so the sniffer keeps no copy of them: comparing costs no memory however long the
/// values are.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect<'a> {
    /// The `Mcp-Name` header: compared with `params.name` and with `params.uri`.
    pub name: Mirror<'a>,
    /// The `MCP-Protocol-Version` header: compared with
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
    pub version: Mirror<'a>,
}

/// A header value that mirrors a body string: plain, or in the Base64 sentinel form
/// `=?base64?{Base64EncodedValue}?=`, decoded byte by byte on demand (no buffer).
#[derive(Clone, Copy, Debug)]
pub enum Mirror<'a> {
    /// The value as sent.
    Plain(&'a [u8]),
    /// The text between `=?base64?` and `?=`.
    Base64(&'a [u8]),
}

impl Default for Mirror<'_> {
    fn default() -> Self {
        Mirror::Plain(b"")
    }
}

impl<'a> Mirror<'a> {
    /// Read a header value. 2026-07-28, Value Encoding: "The prefix `=?base64?` and
    /// suffix `?=` indicate that the value is Base64-encoded. These markers are
    /// case-sensitive and **MUST** appear exactly as shown (lowercase)."
    pub fn of(value: &'a [u8]) -> Mirror<'a> {
        match value
            .strip_prefix(b"=?base64?")
            .and_then(|v| v.strip_suffix(b"?="))
        {
            Some(inner) => Mirror::Base64(inner),
            None => Mirror::Plain(value),
        }
    }

    /// Length of the value (decoded), or `None` when it is malformed: a plain value
    /// with a byte outside visible ASCII, space and tab ("HTTP header field values
    /// must consist of visible ASCII characters (0x21-0x7E), space (0x20), and
    /// horizontal tab (0x09)"), or Base64 that is not canonical padded standard Base64
    /// (RFC 4648 section 4: length a multiple of 4, `=` only as the last one or two
    /// characters, unused bits zero).
    pub fn len(&self) -> Option<usize> {
        match *self {
            Mirror::Plain(v) => v
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7F).contains(&b))
                .then_some(v.len()),
            Mirror::Base64(v) => {
                if v.len() % 4 != 0 {
                    return None;
                }
                let pad = match v {
                    [.., b'=', b'='] => 2,
                    [.., b'='] => 1,
                    _ => 0,
                };
                let data = &v[..v.len() - pad];
                if !data.iter().all(|&c| b64(c).is_some()) {
                    return None;
                }
                // the bits after the last decoded byte must be zero (one reading)
                let last = data.last().and_then(|&c| b64(c)).unwrap_or(0);
                let unused = match pad {
                    2 => last & 0x0F,
                    1 => last & 0x03,
                    _ => 0,
                };
                (unused == 0).then_some(v.len() / 4 * 3 - pad)
            }
        }
    }

    /// Whether the value has no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Decoded byte `k`, when the value has one (a malformed value may read as
    /// anything; [`Mirror::len`] says whether it is well formed).
    fn byte(&self, k: usize) -> Option<u8> {
        match *self {
            Mirror::Plain(v) => v.get(k).copied(),
            Mirror::Base64(v) => {
                let at = k / 3 * 4;
                let group = v.get(at..at + 4)?;
                let shift = 16 - 8 * (k % 3);
                // the `=` of the padding reads as zero bits; a byte inside it is absent
                if group.get(k % 3 + 1) == Some(&b'=') {
                    return None;
                }
                let bits = group
                    .iter()
                    .fold(0u32, |acc, &c| (acc << 6) | u32::from(b64(c).unwrap_or(0)));
                Some((bits >> shift) as u8)
            }
        }
    }
}

/// The value of a standard Base64 character (RFC 4648 table 1).
fn b64(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// An incremental comparison of a decoded body string with a [`Mirror`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cmp {
    /// Decoded bytes compared so far.
    pos: usize,
    /// Every byte so far equals the mirror's byte at its position.
    equal: bool,
}

impl Cmp {
    const START: Cmp = Cmp {
        pos: 0,
        equal: true,
    };

    fn step(&mut self, b: u8, m: &Mirror<'_>) {
        if self.equal {
            self.equal = m.byte(self.pos) == Some(b);
        }
        self.pos = self.pos.saturating_add(1);
    }

    /// [`Cmp::step`] for each byte of `run`.
    fn run(&mut self, run: &[u8], m: &Mirror<'_>) {
        match *m {
            Mirror::Plain(v) => {
                if self.equal {
                    self.equal = v.get(self.pos..self.pos.saturating_add(run.len())) == Some(run);
                }
                self.pos = self.pos.saturating_add(run.len());
            }
            Mirror::Base64(_) => {
                for &b in run {
                    self.step(b, m);
                }
            }
        }
    }
}

/// How a mirrored body string compares with its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compared {
    /// The body has no such member.
    Absent,
    /// The member is not a string (or the body ended inside it).
    NotString,
    /// The decoded string equals the header's (decoded) value.
    Equal,
    /// It does not.
    Different,
}

/// Most containers open at once. Deeper input fails, which bounds the stack; this is the
/// limit `serde_json` applies by default (its recursion limit of 128 rejects the 128th
/// level).
const MAX_DEPTH: u8 = 127;

/// Decoded bytes kept of a tracked key: enough for
/// `io.modelcontextprotocol/protocolVersion` (39).
const KEY_CAP: usize = 40;

/// The member of `params._meta` that carries the protocol version.
const VERSION_KEY: &[u8] = b"io.modelcontextprotocol/protocolVersion";

/// What the next byte means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A value is expected (whitespace skipped). `close`: a `]` may close the enclosing
    /// array instead (just after `[`).
    Value { close: bool },
    /// Inside an object, a key is expected. `close`: `}` may close it (just after `{`).
    Key { close: bool },
    /// After a key: the colon.
    Colon,
    /// After a value inside a container: a comma or the closing bracket.
    AfterValue,
    /// Inside a string (a key or a value).
    Str,
    /// Inside a number.
    Num(Num),
    /// Inside a literal: `word[..pos]` has been matched.
    Lit {
        /// The literal (`true`, `false` or `null`).
        word: &'static [u8],
        /// Bytes matched so far.
        pos: u8,
    },
    /// The top-level value is complete: only whitespace may follow.
    Done,
    /// Not JSON.
    Failed,
}

/// Position inside a number, per the JSON grammar
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    /// After the minus sign: a digit must follow.
    Minus,
    /// After a leading zero: no digit may follow.
    Zero,
    /// In the integer digits.
    Int,
    /// After the decimal point: a digit must follow.
    Dot,
    /// In the fraction digits.
    Frac,
    /// After `e`/`E`: a sign or digit must follow.
    Exp,
    /// After the exponent sign: a digit must follow.
    ExpSign,
    /// In the exponent digits.
    ExpInt,
}

impl Num {
    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpInt)
    }
}

/// Escape progress inside a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    /// Not in an escape.
    None,
    /// After a backslash.
    Backslash,
    /// In the four hex digits of `\u`: `n` read so far, value `acc`; `high` is the
    /// leading surrogate this escape must complete, if any.
    Hex { n: u8, acc: u16, high: Option<u16> },
    /// After a leading surrogate escape: a backslash must follow.
    LowBackslash { high: u16 },
    /// After a leading surrogate escape and a backslash: a `u` must follow.
    LowU { high: u16 },
}

/// What the top-level value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Top {
    /// Nothing read yet.
    Unknown,
    /// An object: a message.
    Object,
    /// An array: a batch.
    Array,
    /// A string, number or literal: not a message.
    Scalar,
}

/// A key that matters: a top-level one, one of `params`, or one of `params._meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    /// `method`.
    Method,
    /// `id`.
    Id,
    /// `params`.
    Params,
    /// `params.name`.
    Name,
    /// `params.uri`.
    Uri,
    /// `params._meta`.
    Meta,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
    Version,
    /// Anything else.
    Other,
}

impl Key {
    /// This key's bit in [`Sniffer::seen`].
    fn bit(self) -> u8 {
        match self {
            Key::Method => 1,
            Key::Id => 2,
            Key::Params => 4,
            Key::Name => 8,
            Key::Uri => 16,
            Key::Meta => 32,
            Key::Version => 64,
            Key::Other => 0,
        }
    }
}

/// Which member the value being read is captured for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    /// Nothing captured.
    None,
    /// The `method` string, decoded into `method_buf`.
    Method,
    /// The `id` token, raw into `id_buf`.
    Id,
    /// `params.name`, compared.
    Name,
    /// `params.uri`, compared.
    Uri,
    /// The `_meta` protocol version, compared.
    Version,
}

/// What is known of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// Its key has not been seen.
    Unseen,
    /// Its value is being read.
    Reading,
    /// Its value was read and is reported.
    Found,
    /// Its key was seen but its value is not reported (wrong type, too long).
    Unusable,
}

impl Default for Sniffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sniffer {
    /// Longest `method` kept (decoded bytes); a longer method reads as `None` with
    /// [`Sniffer::method_too_long`] set.
    pub const MAX_METHOD: usize = 128;
    /// Longest raw `id` token kept; a longer id reads as `None`.
    pub const MAX_ID: usize = 256;

    /// A fresh sniffer.
    pub fn new() -> Self {
        Sniffer {
            fed: 0,
            mode: Mode::Value { close: false },
            stack: [0; 2],
            depth: 0,
            top: Top::Unknown,
            esc: Esc::None,
            utf8_need: 0,
            utf8_lo: 0x80,
            utf8_hi: 0xBF,
            str_key: false,
            top_key: false,
            key_buf: [0; KEY_CAP],
            key_len: 0,
            key: Key::Other,
            capture: Capture::None,
            method: Field::Unseen,
            method_buf: [0; Sniffer::MAX_METHOD],
            method_len: 0,
            method_too_long: false,
            id: Field::Unseen,
            id_buf: [0; Sniffer::MAX_ID],
            id_len: 0,
            params_open: false,
            meta_open: false,
            seen: 0,
            duplicate: false,
            name: Field::Unseen,
            name_cmp: Cmp::START,
            uri: Field::Unseen,
            uri_cmp: Cmp::START,
            version: Field::Unseen,
            version_cmp: Cmp::START,
        }
    }
    /// Forget everything, ready for the next message.
    pub fn reset(&mut self) {
        // The buffers are only ever read up to their lengths, which restart at 0: leave
        // their old bytes (no 390 bytes of zeroing per request).
        let Sniffer {
            fed,
            mode,
            stack,
            depth,
            top,
            esc,
            utf8_need,
            utf8_lo,
            utf8_hi,
            str_key,
            top_key,
            key_buf: _,
            key_len,
            key,
            capture,
            method,
            method_buf: _,
            method_len,
            method_too_long,
            id,
            id_buf: _,
            id_len,
            params_open,
            meta_open,
            seen,
            duplicate,
            name,
            name_cmp,
            uri,
            uri_cmp,
            version,
            version_cmp,
        } = self;
        *fed = 0;
        *mode = Mode::Value { close: false };
        *stack = [0; 2];
        *depth = 0;
        *top = Top::Unknown;
        *esc = Esc::None;
        *utf8_need = 0;
        *utf8_lo = 0x80;
        *utf8_hi = 0xBF;
        *str_key = false;
        *top_key = false;
        *key_len = 0;
        *key = Key::Other;
        *capture = Capture::None;
        *method = Field::Unseen;
        *method_len = 0;
        *method_too_long = false;
        *id = Field::Unseen;
        *id_len = 0;
        *params_open = false;
        *meta_open = false;
        *seen = 0;
        *duplicate = false;
        *name = Field::Unseen;
        *name_cmp = Cmp::START;
        *uri = Field::Unseen;
        *uri_cmp = Cmp::START;
        *version = Field::Unseen;
        *version_cmp = Cmp::START;
    }
    /// Feed the next bytes of the body.
    pub fn feed(&mut self, data: &[u8]) {
        self.feed_with(data, &Expect::default())
    }
    /// Feed the next bytes of the body, comparing the mirrored members with `expect`
    /// (the same `expect` for every call on one body).
    pub fn feed_with(&mut self, data: &[u8], expect: &Expect<'_>) {
        self.fed = self.fed.saturating_add(data.len() as u64);
        let mut rest = data;
        while let Some((&b, tail)) = rest.split_first() {
            match self.mode {
                Mode::Failed => return,
                Mode::Str if self.esc == Esc::None && self.utf8_need == 0 => {
                    // Fast path through a run of plain ASCII inside a string: skipped
                    // when nobody captures it, else taken in one piece (exactly as
                    // stepping each byte would).
                    let n = plain_len(rest);
                    if n > 0 {
                        // `n <= rest.len()`, so both ranges are in bounds.
                        if !self.skippable() {
                            self.plain_run(rest.get(..n).unwrap_or_default(), expect);
                        }
                        rest = rest.get(n..).unwrap_or_default();
                        continue;
                    }
                }
                _ => {}
            }
            self.step(b, expect);
            rest = tail;
        }
    }
    /// The body is complete: say so, so that a value still open (or no value at all)
    /// fails, and a top-level number (which only a following byte can end) completes.
    /// Feeding more afterwards is not meaningful.
    pub fn end(&mut self) {
        if let Mode::Num(n) = self.mode {
            if n.complete() && self.depth == 0 {
                self.value_done();
            }
        }
        if self.mode != Mode::Done {
            self.fail();
        }
    }
    /// Total bytes fed since the last reset.
    pub fn fed(&self) -> u64 {
        self.fed
    }
    /// The top-level value is complete (closing brace or bracket seen), or the input
    /// failed to parse: nothing more will be learned.
    ///
    /// A top-level scalar (not a message) completes at the first byte after it, or at
    /// [`Sniffer::end`].
    pub fn finished(&self) -> bool {
        matches!(self.mode, Mode::Done | Mode::Failed)
    }
    /// The input is not valid JSON (as far as it was read).
    ///
    /// The grammar is checked as `serde_json` checks it: strings must be valid UTF-8
    /// without raw control characters and with paired surrogate escapes, numbers follow
    /// the JSON grammar, only whitespace may follow the top-level value, and at most 127
    /// containers may be open at once. Unlike `serde_json`, numbers too large for an
    /// `f64` (`1e400`) are accepted: the sniffer checks syntax, not range. Input that
    /// merely stops early is not failed until [`Sniffer::end`] is called.
    pub fn failed(&self) -> bool {
        self.mode == Mode::Failed
    }
    /// The top-level value is an array.
    pub fn is_batch(&self) -> bool {
        self.top == Top::Array
    }
    /// The decoded `method` string, once its whole value has been read.
    pub fn method(&self) -> Option<&[u8]> {
        match self.method {
            Field::Found => self.method_buf.get(..self.method_len),
            _ => None,
        }
    }
    /// The method was present but longer than [`Self::MAX_METHOD`].
    pub fn method_too_long(&self) -> bool {
        self.method_too_long
    }
    /// The raw JSON token of `id` (e.g. `7`, `"abc"`, `null`), once read. Only a string,
    /// a number or null is reported; an object or array id reads as `None`.
    pub fn id(&self) -> Option<&[u8]> {
        match self.id {
            Field::Found => self.id_buf.get(..self.id_len),
            _ => None,
        }
    }
    /// `method` is exactly `initialize`.
    pub fn is_initialize(&self) -> bool {
        self.method() == Some(b"initialize")
    }
    /// The message has an `id` member (of any type): a request, not a notification.
    pub fn has_id(&self) -> bool {
        self.id != Field::Unseen
    }
    /// A key that matters (`method`, `id`, `params`, and in `params`: `name`, `uri`,
    /// `_meta`, and in `_meta` the protocol version) appears twice in its object.
    /// JSON parsers disagree on which one counts (`serde_json` and `JSON.parse` keep
    /// the last, the sniffer the first), so such a body has two readings.
    pub fn has_duplicate(&self) -> bool {
        self.duplicate
    }
    /// `params.name` compared with [`Expect::name`] of `expect` (the one fed).
    pub fn name(&self, expect: &Expect<'_>) -> Compared {
        compared(self.name, self.name_cmp, &expect.name)
    }
    /// `params.uri` compared with [`Expect::name`] of `expect`.
    pub fn uri(&self, expect: &Expect<'_>) -> Compared {
        compared(self.uri, self.uri_cmp, &expect.name)
    }
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]` compared with
    /// [`Expect::version`] of `expect`.
    pub fn version(&self, expect: &Expect<'_>) -> Compared {
        compared(self.version, self.version_cmp, &expect.version)
    }
    /// Whether the method is known or can no longer become known (finished, failed,
    /// batch, or the top-level value is not an object).
    pub fn method_settled(&self) -> bool {
        self.settled(self.method) || self.method_too_long
    }
    /// Whether the id is known or can no longer become known.
    pub fn id_settled(&self) -> bool {
        self.settled(self.id)
    }

    /// Shared by [`Sniffer::method_settled`] and [`Sniffer::id_settled`].
    fn settled(&self, field: Field) -> bool {
        matches!(field, Field::Found | Field::Unusable)
            || self.finished()
            || matches!(self.top, Top::Array | Top::Scalar)
    }

    /// Whether the string being read can be skipped without looking at each byte.
    fn skippable(&self) -> bool {
        self.esc == Esc::None
            && self.utf8_need == 0
            && self.capture == Capture::None
            && !self.top_key
    }

    /// A run of plain ASCII (0x20..0x7F, no `"` or `\\`) inside a string that is
    /// captured or is a tracked key: what [`Sniffer::string_byte`] does for each of its
    /// bytes, in one piece.
    fn plain_run(&mut self, run: &[u8], e: &Expect<'_>) {
        let n = run.len();
        if self.capture == Capture::Id {
            match self.id_buf.get_mut(self.id_len..self.id_len + n) {
                Some(slots) => {
                    slots.copy_from_slice(run);
                    self.id_len += n;
                }
                None => {
                    self.id = Field::Unusable;
                    self.capture = Capture::None;
                }
            }
            return;
        }
        if self.top_key {
            let room = KEY_CAP.saturating_sub(self.key_len).min(n);
            if let (Some(slots), Some(bytes)) = (
                self.key_buf.get_mut(self.key_len..self.key_len + room),
                run.get(..room),
            ) {
                slots.copy_from_slice(bytes);
            }
            self.key_len = self.key_len.saturating_add(n);
            return;
        }
        match self.capture {
            Capture::Method if !self.method_too_long => {
                match self
                    .method_buf
                    .get_mut(self.method_len..self.method_len + n)
                {
                    Some(slots) => {
                        slots.copy_from_slice(run);
                        self.method_len += n;
                    }
                    None => self.method_too_long = true,
                }
            }
            Capture::Name => self.name_cmp.run(run, &e.name),
            Capture::Uri => self.uri_cmp.run(run, &e.name),
            Capture::Version => self.version_cmp.run(run, &e.version),
            _ => {}
        }
    }

    /// Whether a key read now belongs to an object whose keys matter: the top-level
    /// object, `params`, or `params._meta`.
    fn tracked_object(&self) -> bool {
        match self.depth {
            1 => self.top == Top::Object,
            2 => self.params_open,
            3 => self.meta_open,
            _ => false,
        }
    }

    /// The input is not JSON. What was found so far is kept.
    fn fail(&mut self) {
        self.mode = Mode::Failed;
        if self.method == Field::Reading {
            self.method = Field::Unusable;
        }
        if self.id == Field::Reading {
            self.id = Field::Unusable;
        }
        for f in [&mut self.name, &mut self.uri, &mut self.version] {
            if *f == Field::Reading {
                *f = Field::Unusable;
            }
        }
        self.capture = Capture::None;
    }

    /// Whether the innermost open container is an object.
    fn in_object(&self) -> bool {
        match self.depth.checked_sub(1) {
            Some(level) => {
                let word = self
                    .stack
                    .get(usize::from(level / 64))
                    .copied()
                    .unwrap_or(0);
                (word >> (level % 64)) & 1 == 1
            }
            None => false,
        }
    }

    /// Open a container.
    fn push(&mut self, object: bool) {
        if self.depth >= MAX_DEPTH {
            return self.fail();
        }
        if self.depth == 0 {
            self.top = if object { Top::Object } else { Top::Array };
        }
        let level = self.depth;
        if let Some(word) = self.stack.get_mut(usize::from(level / 64)) {
            let bit = 1u64 << (level % 64);
            if object {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
        self.depth += 1;
        self.mode = if object {
            Mode::Key { close: true }
        } else {
            Mode::Value { close: true }
        };
    }

    /// Close the innermost container with `}` (object) or `]`.
    fn pop(&mut self, object: bool) {
        if self.depth == 0 || self.in_object() != object {
            return self.fail();
        }
        match self.depth {
            2 => self.params_open = false,
            3 => self.meta_open = false,
            _ => {}
        }
        self.depth -= 1;
        self.value_done();
    }

    /// A value just ended: a string's closing quote, a number's last digit, a literal's
    /// last letter or a container's closing bracket.
    fn value_done(&mut self) {
        match self.capture {
            Capture::None => {}
            Capture::Method => {
                self.method = if self.method_too_long {
                    Field::Unusable
                } else {
                    Field::Found
                };
            }
            Capture::Id => {
                if self.id == Field::Reading {
                    self.id = Field::Found;
                }
            }
            Capture::Name => self.name = Field::Found,
            Capture::Uri => self.uri = Field::Found,
            Capture::Version => self.version = Field::Found,
        }
        self.capture = Capture::None;
        self.mode = if self.depth == 0 {
            Mode::Done
        } else {
            Mode::AfterValue
        };
    }

    /// The first byte of a value.
    fn start_value(&mut self, b: u8) {
        if self.depth == 0 && !matches!(b, b'{' | b'[') {
            self.top = Top::Scalar;
        }
        // Only a tracked key sets `key`, and its value is the next one to start.
        let key = std::mem::replace(&mut self.key, Key::Other);
        let mut opens = None;
        if key != Key::Other {
            match key {
                Key::Method if self.method == Field::Unseen => {
                    if b == b'"' {
                        self.method = Field::Reading;
                        self.capture = Capture::Method;
                    } else {
                        self.method = Field::Unusable;
                    }
                }
                Key::Id if self.id == Field::Unseen => {
                    if matches!(b, b'"' | b'-' | b'0'..=b'9' | b'n') {
                        self.id = Field::Reading;
                        self.capture = Capture::Id;
                    } else {
                        self.id = Field::Unusable;
                    }
                }
                Key::Params | Key::Meta if b == b'{' => opens = Some(key),
                Key::Name | Key::Uri | Key::Version => {
                    let (field, cmp, capture) = match key {
                        Key::Name => (&mut self.name, &mut self.name_cmp, Capture::Name),
                        Key::Uri => (&mut self.uri, &mut self.uri_cmp, Capture::Uri),
                        _ => (&mut self.version, &mut self.version_cmp, Capture::Version),
                    };
                    if *field != Field::Unseen {
                        // the first occurrence wins, as for `method` and `id`
                    } else if b == b'"' {
                        *field = Field::Reading;
                        *cmp = Cmp::START;
                        self.capture = capture;
                    } else {
                        *field = Field::Unusable;
                    }
                }
                _ => {}
            }
        }
        match b {
            b'{' => {
                self.push(true);
                match opens {
                    Some(Key::Params) => self.params_open = true,
                    Some(Key::Meta) => self.meta_open = true,
                    _ => {}
                }
            }
            b'[' => self.push(false),
            b'"' => self.start_string(false),
            b'-' => self.mode = Mode::Num(Num::Minus),
            b'0' => self.mode = Mode::Num(Num::Zero),
            b'1'..=b'9' => self.mode = Mode::Num(Num::Int),
            b't' => {
                self.mode = Mode::Lit {
                    word: b"true",
                    pos: 1,
                }
            }
            b'f' => {
                self.mode = Mode::Lit {
                    word: b"false",
                    pos: 1,
                }
            }
            b'n' => {
                self.mode = Mode::Lit {
                    word: b"null",
                    pos: 1,
                }
            }
            _ => return self.fail(),
        }
        self.raw_id(b);
    }

    /// Enter a string whose opening quote was just read.
    fn start_string(&mut self, key: bool) {
        self.mode = Mode::Str;
        self.esc = Esc::None;
        self.utf8_need = 0;
        self.str_key = key;
        self.top_key = key && self.tracked_object();
        if self.top_key {
            self.key_len = 0;
        }
    }

    /// Keep a byte of the raw `id` token, when one is being captured.
    fn raw_id(&mut self, b: u8) {
        if self.capture != Capture::Id {
            return;
        }
        match self.id_buf.get_mut(self.id_len) {
            Some(slot) => {
                *slot = b;
                self.id_len += 1;
            }
            None => {
                // Too long to report; the value is still read (and validated).
                self.id = Field::Unusable;
                self.capture = Capture::None;
            }
        }
    }

    /// Keep a decoded byte of the string being read, when it is captured.
    fn decoded(&mut self, b: u8, e: &Expect<'_>) {
        if self.top_key {
            if let Some(slot) = self.key_buf.get_mut(self.key_len) {
                *slot = b;
            }
            self.key_len = self.key_len.saturating_add(1);
            return;
        }
        match self.capture {
            Capture::Method if !self.method_too_long => {
                match self.method_buf.get_mut(self.method_len) {
                    Some(slot) => {
                        *slot = b;
                        self.method_len += 1;
                    }
                    None => self.method_too_long = true,
                }
            }
            Capture::Name => self.name_cmp.step(b, &e.name),
            Capture::Uri => self.uri_cmp.step(b, &e.name),
            Capture::Version => self.version_cmp.step(b, &e.version),
            _ => {}
        }
    }

    /// Keep a decoded code point of the string being read.
    fn decoded_char(&mut self, cp: u32, e: &Expect<'_>) {
        match char::from_u32(cp) {
            Some(c) => {
                let mut utf8 = [0u8; 4];
                for &b in c.encode_utf8(&mut utf8).as_bytes() {
                    self.decoded(b, e);
                }
            }
            // Surrogates are paired before they get here; anything else is a bug, but
            // failing is better than panicking.
            None => self.fail(),
        }
    }

    /// A string's closing quote.
    fn end_string(&mut self) {
        if self.str_key {
            if self.top_key {
                self.top_key = false;
                let k = self.key_buf.get(..self.key_len).unwrap_or_default();
                self.key = match (self.depth, k) {
                    (1, b"method") => Key::Method,
                    (1, b"id") => Key::Id,
                    (1, b"params") => Key::Params,
                    (2, b"name") => Key::Name,
                    (2, b"uri") => Key::Uri,
                    (2, b"_meta") => Key::Meta,
                    (3, VERSION_KEY) => Key::Version,
                    _ => Key::Other,
                };
                let bit = self.key.bit();
                self.duplicate |= self.seen & bit != 0;
                self.seen |= bit;
            }
            self.mode = Mode::Colon;
        } else {
            self.value_done();
        }
    }

    /// One byte, outside the fast path.
    fn step(&mut self, b: u8, e: &Expect<'_>) {
        match self.mode {
            Mode::Failed => {}
            Mode::Done => {
                if !is_ws(b) {
                    self.fail();
                }
            }
            Mode::Value { close } => match b {
                _ if is_ws(b) => {}
                b']' if close => self.pop(false),
                _ => self.start_value(b),
            },
            Mode::Key { close } => match b {
                _ if is_ws(b) => {}
                b'"' => self.start_string(true),
                b'}' if close => self.pop(true),
                _ => self.fail(),
            },
            Mode::Colon => match b {
                _ if is_ws(b) => {}
                b':' => self.mode = Mode::Value { close: false },
                _ => self.fail(),
            },
            Mode::AfterValue => match b {
                _ if is_ws(b) => {}
                b',' if self.in_object() => self.mode = Mode::Key { close: false },
                b',' => self.mode = Mode::Value { close: false },
                b'}' => self.pop(true),
                b']' => self.pop(false),
                _ => self.fail(),
            },
            Mode::Str => self.string_byte(b, e),
            Mode::Num(n) => self.number_byte(n, b, e),
            Mode::Lit { word, pos } => {
                if word.get(usize::from(pos)) != Some(&b) {
                    return self.fail();
                }
                self.raw_id(b);
                let pos = pos + 1;
                if usize::from(pos) == word.len() {
                    if word != b"null" && self.capture == Capture::Id {
                        // Unreachable: only `n` starts an id capture. Kept for safety.
                        self.id = Field::Unusable;
                        self.capture = Capture::None;
                    }
                    self.value_done();
                } else {
                    self.mode = Mode::Lit { word, pos };
                }
            }
        }
    }

    /// A byte inside a number.
    fn number_byte(&mut self, n: Num, b: u8, e: &Expect<'_>) {
        let next = match (n, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus | Num::Int, b'1'..=b'9') | (Num::Int, b'0') => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpInt, b'0'..=b'9') => Num::ExpInt,
            _ if n.complete() && !b.is_ascii_digit() => {
                // The byte after the number ends it, then is read afresh (the mode is no
                // longer `Num`, so this recurses once at most).
                self.value_done();
                return self.step(b, e);
            }
            _ => return self.fail(),
        };
        self.raw_id(b);
        self.mode = Mode::Num(next);
    }

    /// A byte inside a string.
    fn string_byte(&mut self, b: u8, e: &Expect<'_>) {
        match self.esc {
            Esc::None if self.utf8_need > 0 => {
                if !(self.utf8_lo..=self.utf8_hi).contains(&b) {
                    return self.fail();
                }
                self.utf8_need -= 1;
                self.utf8_lo = 0x80;
                self.utf8_hi = 0xBF;
                self.raw_id(b);
                self.decoded(b, e);
            }
            Esc::None => match b {
                b'"' => {
                    self.raw_id(b);
                    self.end_string();
                }
                b'\\' => {
                    self.raw_id(b);
                    self.esc = Esc::Backslash;
                }
                0x00..=0x1F => self.fail(),
                0x20..=0x7F => {
                    self.raw_id(b);
                    self.decoded(b, e);
                }
                _ => {
                    // A UTF-8 lead byte: how many continuation bytes follow, and the
                    // range of the first (which excludes overlong forms, surrogates and
                    // code points above U+10FFFF).
                    let (need, lo, hi) = match b {
                        0xC2..=0xDF => (1, 0x80, 0xBF),
                        0xE0 => (2, 0xA0, 0xBF),
                        0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
                        0xED => (2, 0x80, 0x9F),
                        0xF0 => (3, 0x90, 0xBF),
                        0xF1..=0xF3 => (3, 0x80, 0xBF),
                        0xF4 => (3, 0x80, 0x8F),
                        _ => return self.fail(),
                    };
                    self.utf8_need = need;
                    self.utf8_lo = lo;
                    self.utf8_hi = hi;
                    self.raw_id(b);
                    self.decoded(b, e);
                }
            },
            Esc::Backslash => {
                let c = match b {
                    b'"' | b'\\' | b'/' => b,
                    b'b' => 0x08,
                    b'f' => 0x0C,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.raw_id(b);
                        self.esc = Esc::Hex {
                            n: 0,
                            acc: 0,
                            high: None,
                        };
                        return;
                    }
                    _ => return self.fail(),
                };
                self.raw_id(b);
                self.decoded(c, e);
                self.esc = Esc::None;
            }
            Esc::Hex { n, acc, high } => {
                let Some(digit) = hex_digit(b) else {
                    return self.fail();
                };
                self.raw_id(b);
                // At most three digits were read before: no bits are lost.
                let acc = (acc << 4) | digit;
                if n < 3 {
                    self.esc = Esc::Hex {
                        n: n + 1,
                        acc,
                        high,
                    };
                    return;
                }
                self.esc = Esc::None;
                match (high, acc) {
                    (None, 0xD800..=0xDBFF) => self.esc = Esc::LowBackslash { high: acc },
                    (None, 0xDC00..=0xDFFF) => self.fail(),
                    (None, _) => self.decoded_char(u32::from(acc), e),
                    (Some(high), 0xDC00..=0xDFFF) => {
                        let cp = 0x10000
                            + ((u32::from(high) - 0xD800) << 10)
                            + (u32::from(acc) - 0xDC00);
                        self.decoded_char(cp, e);
                    }
                    (Some(_), _) => self.fail(),
                }
            }
            Esc::LowBackslash { high } => {
                if b != b'\\' {
                    return self.fail();
                }
                self.raw_id(b);
                self.esc = Esc::LowU { high };
            }
            Esc::LowU { high } => {
                if b != b'u' {
                    return self.fail();
                }
                self.raw_id(b);
                self.esc = Esc::Hex {
                    n: 0,
                    acc: 0,
                    high: Some(high),
                };
            }
        }
    }
}

/// Shared by [`Sniffer::name`], [`Sniffer::uri`] and [`Sniffer::version`].
fn compared(field: Field, cmp: Cmp, m: &Mirror<'_>) -> Compared {
    match field {
        Field::Unseen => Compared::Absent,
        Field::Reading | Field::Unusable => Compared::NotString,
        Field::Found if cmp.equal && Some(cmp.pos) == m.len() => Compared::Equal,
        Field::Found => Compared::Different,
    }
}

/// Whether a byte inside a string is plain: not `"`, `\\`, a control byte or the start
/// of a UTF-8 sequence.
fn is_plain(c: u8) -> bool {
    c != b'"' && c != b'\\' && (0x20..0x80).contains(&c)
}

/// Length of the run of plain bytes ([`is_plain`]) that starts `s`. Eight bytes at a
/// time: for each test the lowest flagged byte of a word is exact (a borrow only runs
/// upward from a byte that is itself flagged), so the lowest flag of all is the first
/// byte that is not plain.
fn plain_len(s: &[u8]) -> usize {
    const L: u64 = 0x0101_0101_0101_0101;
    const H: u64 = 0x8080_8080_8080_8080;
    let zero = |y: u64| y.wrapping_sub(L) & !y & H;
    let mut i = 0;
    while let Some(w) = s.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
        let x = u64::from_le_bytes(w);
        let flags = (x & H)
            | (x.wrapping_sub(0x20 * L) & !x & H)
            | zero(x ^ (u64::from(b'"') * L))
            | zero(x ^ (u64::from(b'\\') * L));
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    let tail = s.get(i..).unwrap_or_default();
    i + tail
        .iter()
        .position(|&c| !is_plain(c))
        .unwrap_or(tail.len())
}

/// JSON whitespace.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The value of a hex digit.
fn hex_digit(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    /// Everything a sniffer reports, for comparisons.
    #[derive(Debug, PartialEq, Eq)]
    struct Report {
        failed: bool,
        finished: bool,
        batch: bool,
        method: Option<Vec<u8>>,
        method_too_long: bool,
        id: Option<Vec<u8>>,
        method_settled: bool,
        id_settled: bool,
        fed: u64,
    }

    fn report(s: &Sniffer) -> Report {
        Report {
            failed: s.failed(),
            finished: s.finished(),
            batch: s.is_batch(),
            method: s.method().map(<[u8]>::to_vec),
            method_too_long: s.method_too_long(),
            id: s.id().map(<[u8]>::to_vec),
            method_settled: s.method_settled(),
            id_settled: s.id_settled(),
            fed: s.fed(),
        }
    }

    /// Feed `input` in pieces cut at `cuts` (ascending), then end it.
    fn sniff_cut(input: &[u8], cuts: &[usize]) -> (Report, Report) {
        let mut s = Sniffer::new();
        let mut at = 0;
        for &cut in cuts {
            s.feed(&input[at..cut]);
            at = cut;
        }
        s.feed(&input[at..]);
        let before_end = report(&s);
        s.end();
        (before_end, report(&s))
    }

    fn sniff(input: &[u8]) -> Report {
        sniff_cut(input, &[]).1
    }

    /// Feed `input` in every possible way that cuts it once, and byte by byte, and
    /// check the sniffer reports the same thing every time, before and after `end`.
    fn assert_split_invariant(input: &[u8]) {
        let whole = sniff_cut(input, &[]);
        for cut in 0..=input.len() {
            assert_eq!(
                sniff_cut(input, &[cut]),
                whole,
                "cut at {cut} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut s = Sniffer::new();
        for b in input {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(report(&s), whole.0, "byte by byte");
        s.end();
        assert_eq!(report(&s), whole.1, "byte by byte, ended");
    }

    /// The oracle: what `serde_json` makes of a message, keeping the first of duplicate
    /// top-level keys (our rule) rather than the last (what `serde_json::Value` keeps).
    #[derive(Debug)]
    enum Oracle {
        Object {
            method: Option<Value>,
            id: Option<Value>,
        },
        Array,
        Scalar,
    }

    impl<'de> Deserialize<'de> for Oracle {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Oracle;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Oracle, A::Error> {
                    let (mut method, mut id) = (None, None);
                    while let Some(key) = map.next_key::<String>()? {
                        let value: Value = map.next_value()?;
                        match key.as_str() {
                            "method" if method.is_none() => method = Some(value),
                            "id" if id.is_none() => id = Some(value),
                            _ => {}
                        }
                    }
                    Ok(Oracle::Object { method, id })
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Oracle, A::Error> {
                    // `Value`, not `IgnoredAny`: strings must be validated.
                    while seq.next_element::<Value>()?.is_some() {}
                    Ok(Oracle::Array)
                }
                fn visit_bool<E>(self, _: bool) -> Result<Oracle, E> {
                    Ok(Oracle::Scalar)
                }
                fn visit_i64<E>(self, _: i64) -> Result<Oracle, E> {
                    Ok(Oracle::Scalar)
                }
                fn visit_u64<E>(self, _: u64) -> Result<Oracle, E> {
                    Ok(Oracle::Scalar)
                }
                fn visit_f64<E>(self, _: f64) -> Result<Oracle, E> {
                    Ok(Oracle::Scalar)
                }
                fn visit_str<E>(self, _: &str) -> Result<Oracle, E> {
                    Ok(Oracle::Scalar)
                }
                fn visit_unit<E>(self) -> Result<Oracle, E> {
                    Ok(Oracle::Scalar)
                }
            }
            d.deserialize_any(V)
        }
    }

    /// Check the sniffer against `serde_json` on a complete input. Returns whether the
    /// input was valid JSON.
    fn assert_agrees(input: &[u8]) -> bool {
        let got = sniff(input);
        let shown = String::from_utf8_lossy(input);
        let oracle = serde_json::from_slice::<Oracle>(input);
        assert_eq!(
            oracle.is_err(),
            serde_json::from_slice::<Value>(input).is_err(),
            "oracle sanity on {shown:?}"
        );
        let oracle = match oracle {
            Err(e) if e.to_string().contains("number out of range") => {
                // Documented difference: the sniffer checks syntax, not range.
                return false;
            }
            Err(e) => {
                assert!(
                    got.failed,
                    "serde_json says {e} but sniffer accepts {shown:?}"
                );
                assert!(got.finished && got.method_settled && got.id_settled);
                return false;
            }
            Ok(oracle) => oracle,
        };
        assert!(!got.failed, "serde_json accepts {shown:?}, sniffer fails");
        assert!(
            got.finished && got.method_settled && got.id_settled,
            "{shown:?}"
        );
        assert_eq!(got.batch, matches!(oracle, Oracle::Array), "{shown:?}");
        let Oracle::Object { method, id } = oracle else {
            assert_eq!((got.method, got.id), (None, None), "{shown:?}");
            assert!(!got.method_too_long);
            return true;
        };
        match &method {
            Some(Value::String(m)) if m.len() <= Sniffer::MAX_METHOD => {
                assert_eq!(got.method.as_deref(), Some(m.as_bytes()), "{shown:?}");
                assert!(!got.method_too_long);
            }
            Some(Value::String(_)) => {
                assert_eq!(got.method, None);
                assert!(got.method_too_long, "{shown:?}");
            }
            _ => {
                assert_eq!(got.method, None, "{shown:?}");
                assert!(!got.method_too_long);
            }
        }
        match &id {
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => {
                let token = got.id.unwrap_or_else(|| panic!("no id in {shown:?}"));
                let parsed: Value = serde_json::from_slice(&token).expect("id token is JSON");
                assert_eq!(&parsed, v, "{shown:?}");
                // The token is exactly the raw bytes of the input.
                assert!(input.windows(token.len()).any(|w| w == token));
            }
            _ => assert_eq!(got.id, None, "{shown:?}"),
        }
        true
    }

    /// Hand-written messages; ids in corpus entries are at most a few dozen bytes.
    fn corpus() -> Vec<Vec<u8>> {
        let text: &[&str] = &[
            // TypeScript SDK order.
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"ts","version":"1.0"}}}"#,
            // Python SDK order: method and params first.
            r#"{"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{"sampling":{}},"clientInfo":{"name":"mcp","version":"0.1.0"}},"jsonrpc":"2.0","id":0}"#,
            r#"{"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}},"jsonrpc":"2.0","id":3}"#,
            r#"{"method":"notifications/initialized","jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"reason":"x"}}"#,
            // Nested method/id keys are not the message's.
            r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"x","arguments":{"method":"evil","id":99,"nested":[{"method":"deeper","id":"z"}]}}}"#,
            r#"{"params":{"method":"nope","id":5},"method":"tools/list","id":7,"jsonrpc":"2.0"}"#,
            r#"{"params":[[[[{"method":"x","id":1}]]]],"method":"deep","id":"d"}"#,
            r#"{"result":{"id":{"id":[]},"method":"m"},"jsonrpc":"2.0","id":8}"#,
            // Responses.
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Bad \"request\""}}"#,
            // Batches.
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"}]"#,
            "[]",
            "[ ]",
            "{}",
            "{ }",
            // Whitespace everywhere.
            " \r\n\t{ \"method\" : \"ping\" , \"id\" : 12 }\n\n",
            "{\"id\"\n:\n-7\n,\"method\"\t:\t\"a\"\r}",
            // Escapes.
            r#"{"method":"tools\/call\u0021\n\t\"q\\ \b\f\r","id":1}"#,
            r#"{"meth\u006fd":"ping","\u0069d":3}"#,
            r#"{"\u006d\u0065\u0074\u0068\u006f\u0064":"x\u00e9\u20AC","\u0069\u0064":"\u0069"}"#,
            // Unicode.
            r#"{"method":"héllo/世界/😀","id":"ünï"}"#,
            r#"{"method":"\ud83d\ude00 \uD83D\uDE00","id":"\uDBFF\uDFFF"}"#,
            // Numbers.
            r#"{"id":1.5e+10,"method":"a"}"#,
            r#"{"id":-0.0E-2,"method":"b"}"#,
            r#"{"id":0,"method":"c"}"#,
            r#"{"id":-0,"method":"c"}"#,
            r#"{"id":1E5}"#,
            r#"{"id":123456789012345678901234567890,"method":"x"}"#,
            r#"{"id":18446744073709551616}"#,
            r#"{"id":-9223372036854775809}"#,
            r#"{"id":-42,"method":"m"}"#,
            r#"{"id":10.25e-3}"#,
            // String ids with escapes.
            r#"{"id":"a\"b\\c","method":"m"}"#,
            r#"{"id":"","method":""}"#,
            // Method and id of other types.
            r#"{"method":123,"id":{"x":1}}"#,
            r#"{"method":null,"id":[1,2]}"#,
            r#"{"method":["a"],"id":true}"#,
            r#"{"id":false,"method":{"a":"b"}}"#,
            // Keys that look like method or id.
            r#"{"methods":"no","method_":"no","ids":1,"metho":"no","Method":"no","ID":2,"i":3,"method":"yes"}"#,
            r#"{"methodmethod":"no","idid":1}"#,
            // Scalars.
            r#""just a string""#,
            "42",
            "-1.5e3",
            "null",
            "true",
            "false",
            " 0 ",
            // Valid with trailing whitespace.
            "{\"method\":\"x\"} \r\n\t",
            // Invalid.
            r#"{"method":"x",}"#,
            r#"{"method" "x"}"#,
            r#"{"method":"x" "id":1}"#,
            r#"{"id":01}"#,
            r#"{"id":1.}"#,
            r#"{"id":-}"#,
            r#"{"id":+1}"#,
            r#"{"id":.5}"#,
            r#"{"id":1e}"#,
            r#"{"id":1e+}"#,
            r#"{"id":1.e5}"#,
            r#"{"id":0x1}"#,
            r#"{"id":tru}"#,
            r#"{"id":nul}"#,
            r#"{"id":nulll}"#,
            r#"{"id":True}"#,
            r#"{"method":"\q"}"#,
            r#"{"method":"\u12"}"#,
            r#"{"method":"\u12g4"}"#,
            r#"{"method":"\ud800"}"#,
            r#"{"method":"\ud800\n"}"#,
            r#"{"method":"\ud800\u0041"}"#,
            r#"{"method":"\ud800\ud800"}"#,
            r#"{"method":"\udc00\ud800"}"#,
            r#"{"a":1}}"#,
            "[1,2",
            r#"{"a":[1}"#,
            r#"{"a":{1]}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{"b":2}"#,
            "",
            "   ",
            "\u{feff}{}",
            "{'a':1}",
            r#"{"a":NaN}"#,
            "{a:1}",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"method":"x""#,
            r#""unterminated"#,
            "]",
            "}",
            ":",
            "\"a\u{1}b\"",
            "{\"method\":\"a\tb\"}",
            "{\"method\":\"a\u{7f}b\"}",
        ];
        let bytes: &[&[u8]] = &[
            b"{\"m\":\"\xff\"}",
            b"{\"m\":\"\xc3\"}",
            b"{\"m\":\"\xc3(\"}",
            b"{\"m\":\"\xed\xa0\x80\"}",
            b"{\"m\":\"\xc0\xaf\"}",
            b"{\"m\":\"\xe0\x80\xaf\"}",
            b"{\"m\":\"\xf4\x90\x80\x80\"}",
            b"{\"m\":\"\xf0\x9f\x98\x80\"}",
            b"{\"method\":\"\xc3\xa9\",\"id\":\"\xe2\x82\xac\"}",
            b"{\"m\":\"\xe2\x82\\n\"}",
            b"{\"m\":\"a\x00\"}",
            b"{\"method\":\"a\"}\x00",
            b"\xef\xbb\xbf{\"method\":\"x\"}",
            b"\xef\xbb{}",
        ];
        text.iter()
            .map(|s| s.as_bytes().to_vec())
            .chain(bytes.iter().map(|b| b.to_vec()))
            .collect()
    }

    #[test]
    fn corpus_agrees_with_serde_json() {
        let mut valid = 0;
        for input in corpus() {
            valid += usize::from(assert_agrees(&input));
        }
        assert!(valid > 40, "{valid} valid inputs");
    }

    #[test]
    fn corpus_split_invariant() {
        for input in corpus() {
            assert_split_invariant(&input);
        }
    }

    /// A tiny deterministic generator (xorshift64).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn mutate(rng: &mut XorShift, input: &mut Vec<u8>) {
        const INTERESTING: &[u8] = b"{}[]\":,\\u0123456789abcdefABCDEF-+.eEntrufls \t\r\n\x00\x1f\x7f\x80\xbf\xc3\xe2\xed\xf0\xff";
        for _ in 0..=rng.below(3) {
            let at = rng.below(input.len() + 1);
            match rng.below(5) {
                0 if at < input.len() => input[at] ^= 1 << rng.below(8),
                1 if at < input.len() => input[at] = INTERESTING[rng.below(INTERESTING.len())],
                2 => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                3 if at < input.len() => {
                    input.remove(at);
                }
                _ => {
                    // Duplicate a slice somewhere else (makes duplicate keys, deep
                    // nesting, repeated escapes).
                    let from = rng.below(input.len() + 1);
                    let len = rng.below(input.len() - from + 1).min(24);
                    let piece = input[from..from + len].to_vec();
                    let to = rng.below(input.len() + 1);
                    input.splice(to..to, piece);
                }
            }
        }
    }

    #[test]
    fn mutations_agree_with_serde_json() {
        let corpus = corpus();
        let seed = std::env::var("SNIFF_SEED")
            .ok()
            .and_then(|n| n.parse().ok());
        let mut rng = XorShift(seed.unwrap_or(0x9E37_79B9_7F4A_7C15) | 1);
        let (mut valid, mut total) = (0, 0);
        // More cases on demand: SNIFF_MUTATIONS=1000000 SNIFF_SEED=7 cargo test ...
        let cases = std::env::var("SNIFF_MUTATIONS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(6000);
        for _ in 0..cases {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &mut input);
            valid += usize::from(assert_agrees(&input));
            total += 1;
            // And one random split, and one three-way split.
            let whole = sniff_cut(&input, &[]);
            let a = rng.below(input.len() + 1);
            let b = rng.below(input.len() + 1);
            assert_eq!(sniff_cut(&input, &[a]), whole);
            assert_eq!(sniff_cut(&input, &[a.min(b), a.max(b)]), whole);
        }
        // The mutations must not all be trivially invalid.
        assert!(valid > total / 10, "{valid} of {total} valid");
    }

    #[test]
    fn duplicates_first_wins() {
        // serde_json's `Value` keeps the last of duplicate keys; we keep the first.
        let input = br#"{"method":"first","id":1,"method":"second","id":2}"#;
        let v: Value = serde_json::from_slice(input).unwrap();
        assert_eq!(v["method"], "second");
        assert_eq!(v["id"], 2);
        let r = sniff(input);
        assert_eq!(r.method.as_deref(), Some(&b"first"[..]));
        assert_eq!(r.id.as_deref(), Some(&b"1"[..]));
        // The first occurrence wins even when it is not usable.
        let r = sniff(br#"{"method":5,"id":{},"method":"m","id":"i"}"#);
        assert_eq!((r.method, r.id), (None, None));
        assert!(r.method_settled && r.id_settled && !r.failed);
        // A spelled-out escape is the same key.
        let r = sniff(br#"{"meth\u006fd":"a","method":"b","\u0069d":1,"id":2}"#);
        assert_eq!(r.method.as_deref(), Some(&b"a"[..]));
        assert_eq!(r.id.as_deref(), Some(&b"1"[..]));
        assert_agrees(br#"{"method":"first","id":1,"method":"second","id":2}"#);
    }

    #[test]
    fn settles_early() {
        let msg =
            br#"{"method":"initialize","params":{"capabilities":{}},"jsonrpc":"2.0","id":0 }"#;
        let mut s = Sniffer::new();
        let at = msg.iter().position(|&b| b == b',').unwrap();
        s.feed(&msg[..at - 1]);
        assert!(!s.method_settled() && s.method().is_none());
        s.feed(&msg[at - 1..at]);
        assert!(s.method_settled());
        assert!(s.is_initialize());
        assert!(!s.id_settled() && !s.finished());
        let id_at = msg.len() - 3;
        s.feed(&msg[at..=id_at]);
        // A number only ends at the byte after it.
        assert!(!s.id_settled());
        s.feed(b" ");
        assert!(s.id_settled() && !s.finished());
        assert_eq!(s.id(), Some(&b"0"[..]));
        s.feed(b"}");
        assert!(s.finished() && !s.failed());
        assert_eq!(s.fed(), msg.len() as u64);

        // A string id settles at its closing quote.
        let mut s = Sniffer::new();
        s.feed(br#"{"id":"x\"y"#);
        assert!(!s.id_settled());
        s.feed(b"\"");
        assert!(s.id_settled());
        assert_eq!(s.id(), Some(&br#""x\"y""#[..]));
        assert!(!s.method_settled());

        // Object and boolean ids settle (as None) at their first byte.
        let mut s = Sniffer::new();
        s.feed(br#"{"id":{"#);
        assert!(s.id_settled() && s.id().is_none());
        let mut s = Sniffer::new();
        s.feed(br#"{"id":t"#);
        assert!(s.id_settled() && s.id().is_none());
        s.feed(br#"rue,"method":7"#);
        assert!(s.method_settled() && s.method().is_none() && !s.method_too_long());

        // Batches and scalars settle at once.
        let mut s = Sniffer::new();
        s.feed(b" [");
        assert!(s.is_batch() && s.method_settled() && s.id_settled() && !s.finished());
        let mut s = Sniffer::new();
        s.feed(b"4");
        assert!(s.method_settled() && s.id_settled() && !s.finished());
        s.end();
        assert!(s.finished() && !s.failed());
        // Nothing fed: nothing settled.
        let s = Sniffer::new();
        assert!(!s.method_settled() && !s.id_settled() && !s.finished() && !s.failed());
    }

    #[test]
    fn bounded_method_and_id() {
        let exact = "m".repeat(Sniffer::MAX_METHOD);
        let r = sniff(format!(r#"{{"method":"{exact}"}}"#).as_bytes());
        assert_eq!(r.method.as_deref(), Some(exact.as_bytes()));
        assert!(!r.method_too_long);
        // The limit counts decoded bytes.
        let escaped = r"\u0041".repeat(Sniffer::MAX_METHOD);
        let r = sniff(format!(r#"{{"method":"{escaped}"}}"#).as_bytes());
        assert_eq!(r.method.as_deref(), Some("A".repeat(128).as_bytes()));
        let long = "m".repeat(Sniffer::MAX_METHOD + 1);
        let input = format!(r#"{{"method":"{long}","id":1}}"#);
        let r = sniff(input.as_bytes());
        assert_eq!(r.method, None);
        assert!(r.method_too_long && r.method_settled && !r.failed);
        assert_eq!(r.id.as_deref(), Some(&b"1"[..]));
        assert_agrees(input.as_bytes());
        assert_split_invariant(input.as_bytes());

        let id = format!(r#""{}""#, "i".repeat(Sniffer::MAX_ID - 2));
        let r = sniff(format!(r#"{{"id":{id}}}"#).as_bytes());
        assert_eq!(r.id.as_deref(), Some(id.as_bytes()));
        let id = format!(r#""{}""#, "i".repeat(Sniffer::MAX_ID - 1));
        let r = sniff(format!(r#"{{"id":{id},"method":"m"}}"#).as_bytes());
        assert_eq!(r.id, None);
        assert!(r.id_settled && !r.failed);
        assert_eq!(r.method.as_deref(), Some(&b"m"[..]));
        let digits = "1".repeat(Sniffer::MAX_ID + 1);
        let r = sniff(format!(r#"{{"id":{digits}}}"#).as_bytes());
        assert_eq!(r.id, None);
        assert!(!r.failed);
        // An invalid value after a too-long prefix still fails.
        let r = sniff(format!(r#"{{"id":{digits}x}}"#).as_bytes());
        assert!(r.failed);
    }

    #[test]
    fn depth_limit_matches_serde_json() {
        for depth in [1, 2, 126, 127, 128, 129, 500] {
            for open in [b'[', b'{'] {
                let mut input = Vec::new();
                for level in 0..depth {
                    if open == b'{' || level % 2 == 1 {
                        input.extend_from_slice(br#"{"a":"#);
                    } else {
                        input.push(b'[');
                    }
                }
                input.extend_from_slice(b"1");
                for level in (0..depth).rev() {
                    if open == b'{' || level % 2 == 1 {
                        input.push(b'}');
                    } else {
                        input.push(b']');
                    }
                }
                assert_agrees(&input);
                assert_eq!(sniff(&input).failed, depth > 127, "depth {depth}");
            }
        }
    }

    #[test]
    fn end_matters_only_for_incomplete_input() {
        let (before, after) = sniff_cut(b"-", &[]);
        assert!(!before.failed && !before.finished);
        assert!(after.failed && after.finished);
        let (before, after) = sniff_cut(b"12", &[]);
        assert!(!before.finished);
        assert!(after.finished && !after.failed);
        let (before, after) = sniff_cut(b"12 ", &[]);
        assert!(before.finished && after.finished && !after.failed);
        let (before, after) = sniff_cut(br#"{"id":1"#, &[]);
        assert!(!before.failed && after.failed);
        assert_eq!(after.id.as_deref(), None);
        let (before, after) = sniff_cut(br#"{"id":1,"method":"m""#, &[]);
        assert_eq!(before.id.as_deref(), Some(&b"1"[..]));
        // What was found before the error is kept.
        assert!(after.failed);
        assert_eq!(after.id.as_deref(), Some(&b"1"[..]));
        assert_eq!(after.method.as_deref(), Some(&b"m"[..]));
        let (_, after) = sniff_cut(b"", &[]);
        assert!(after.failed);
    }

    #[test]
    fn out_of_range_numbers_are_syntax_only() {
        // serde_json rejects numbers an f64 cannot hold; the sniffer checks syntax only.
        assert!(serde_json::from_slice::<Value>(b"1e400").is_err());
        let r = sniff(br#"{"id":1e400}"#);
        assert!(!r.failed);
        assert_eq!(r.id.as_deref(), Some(&b"1e400"[..]));
    }

    #[test]
    fn reset_and_garbage_after_failure() {
        let mut s = Sniffer::new();
        s.feed(b"{\"method\":\"a\"}}");
        assert!(s.failed() && s.finished());
        assert_eq!(s.method(), Some(&b"a"[..]));
        s.feed(b"more garbage \xff");
        assert!(s.failed());
        assert_eq!(s.fed(), 29);
        s.reset();
        assert_eq!(report(&s), report(&Sniffer::default()));
        s.feed(br#"{"method":"b"}"#);
        assert_eq!(s.method(), Some(&b"b"[..]));
        assert!(s.finished() && !s.failed() && !s.is_batch());
    }

    #[test]
    fn batch_members_are_ignored() {
        let r = sniff(br#"[{"method":"initialize","id":1}]"#);
        assert!(r.batch && !r.failed);
        assert_eq!((r.method, r.id), (None, None));
    }

    /// What [`compare_cut`] reports: (name, uri, version, duplicate, failed).
    type Comparison = (Compared, Compared, Compared, bool, bool);

    /// Sniff `input` cut at `cut`, comparing with `expect`.
    fn compare_cut(input: &[u8], cut: usize, expect: &Expect<'_>) -> Comparison {
        let mut s = Sniffer::new();
        s.feed_with(&input[..cut], expect);
        s.feed_with(&input[cut..], expect);
        s.end();
        (
            s.name(expect),
            s.uri(expect),
            s.version(expect),
            s.has_duplicate(),
            s.failed(),
        )
    }

    /// What serde_json reads for a member of `params` (or of `params._meta`), as a
    /// comparison with `want`.
    fn serde_compared(v: &Value, path: &[&str], want: &[u8]) -> Compared {
        let mut at = v;
        for p in path {
            match at.get(p) {
                Some(next) => at = next,
                None => return Compared::Absent,
            }
        }
        match at.as_str() {
            Some(s) if s.as_bytes() == want => Compared::Equal,
            Some(_) => Compared::Different,
            None => Compared::NotString,
        }
    }

    const MODERN: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"name":"x","uri":"y","_meta":{}},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","x":{"name":"z"}},"uri":"file:///a"}}"#;

    #[test]
    fn plain_len_matches_a_byte_scan() {
        let mut rng = XorShift(0x5EED_0000_0000_0001);
        const BYTES: &[u8] = b"\"\\\x00\x1f\x20\x21\x7e\x7f\x80\xff\x5b\x5d\x01aZ";
        for _ in 0..20_000 {
            let len = rng.below(40);
            let s: Vec<u8> = (0..len)
                .map(|_| match rng.below(3) {
                    0 => BYTES[rng.below(BYTES.len())],
                    _ => b'a' + rng.below(26) as u8,
                })
                .collect();
            let want = s.iter().position(|&c| !is_plain(c)).unwrap_or(s.len());
            assert_eq!(plain_len(&s), want, "{s:?}");
        }
        for b in 0..=255u8 {
            let mut s = vec![b'x'; 17];
            s[11] = b;
            assert_eq!(plain_len(&s), if is_plain(b) { 17 } else { 11 }, "{b:#x}");
        }
    }

    #[test]
    fn mirrors_decode_like_base64() {
        let m = Mirror::of(b"=?base64?SGVsbG8sIOS4lueVjA==?=");
        assert!(matches!(m, Mirror::Base64(_)));
        let want = "Hello, 世界".as_bytes();
        assert_eq!(m.len(), Some(want.len()));
        let got: Vec<u8> = (0..want.len()).map(|k| m.byte(k).unwrap()).collect();
        assert_eq!(got, want);
        assert_eq!(m.byte(want.len()), None);
        for (v, len) in [
            (&b"=?base64??="[..], Some(0)),
            (b"=?base64?YQ==?=", Some(1)),
            (b"=?base64?YWI=?=", Some(2)),
            (b"=?base64?YWJj?=", Some(3)),
            (b"=?base64?YR==?=", None),
            (b"=?base64?YWJ=?=", None),
            (b"=?base64?YQ?=", None),
            (b"=?base64?YQ=?=", None),
            (b"=?base64?Y===?=", None),
            (b"=?base64?=YWJ?=", None),
            (b"=?base64?YW-j?=", None),
            (b"=?base64?YW j?=", None),
            (b"plain name", Some(10)),
            (b"tab\there", Some(8)),
            (b"caf\xc3\xa9", None),
            (b"a\x7fb", None),
            (b"=?BASE64?YQ==?=", Some(15)),
            (b"=?base64?YQ==", Some(13)),
        ] {
            assert_eq!(Mirror::of(v).len(), len, "{}", String::from_utf8_lossy(v));
        }
        assert!(Mirror::of(b"").is_empty());
    }

    #[test]
    fn mirrored_members_compare_at_every_split() {
        let exp = |name: &'static [u8], version: &'static [u8]| Expect {
            name: Mirror::of(name),
            version: Mirror::Plain(version),
        };
        use Compared::*;
        let plain = exp(b"get_weather", b"2026-07-28");
        let b64 = exp(b"=?base64?Z2V0X3dlYXRoZXI=?=", b"2026-07-28");
        let uri = exp(b"file:///a", b"2026-07-27");
        let short = exp(b"get_weathe", b"2026-07-28 ");
        let cases: [(&[u8], Expect<'_>, Comparison); 8] = [
            (MODERN.as_bytes(), plain, (Equal, Different, Equal, false, false)),
            (MODERN.as_bytes(), b64, (Equal, Different, Equal, false, false)),
            (MODERN.as_bytes(), uri, (Different, Equal, Different, false, false)),
            (MODERN.as_bytes(), short, (Different, Different, Different, false, false)),
            (
                br#"{"params":{"name":"get\u005fweather","uri":7,"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
                plain,
                (Equal, NotString, Equal, false, false),
            ),
            (
                br#"{"params":{"name":"Hello, \u4e16\u754c","_meta":[]},"id":2}"#,
                exp(b"=?base64?SGVsbG8sIOS4lueVjA==?=", b""),
                (Equal, Absent, Absent, false, false),
            ),
            (
                br#"{"params":{"name":"a","_meta":{},"name":"b"}}"#,
                exp(b"a", b""),
                (Equal, Absent, Absent, true, false),
            ),
            (
                br#"{"params":{"name":"get_weather""#,
                plain,
                (Equal, Absent, Absent, false, true),
            ),
        ];
        for (input, expect, want) in cases {
            for cut in 0..=input.len() {
                assert_eq!(
                    compare_cut(input, cut, &expect),
                    want,
                    "{} cut at {cut}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        // duplicates at each tracked level, and none for keys elsewhere
        for (input, dup) in [
            (&br#"{"id":1,"id":2}"#[..], true),
            (br#"{"params":{},"params":{}}"#, true),
            (br#"{"params":{"_meta":{},"_meta":{}}}"#, true),
            (br#"{"params":{"uri":"a","uri":"a"}}"#, true),
            (
                br#"{"params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"a","io.modelcontextprotocol/protocolVersion":"a"}}}"#,
                true,
            ),
            (br#"{"result":{"method":1,"method":2}}"#, false),
            (br#"{"params":{"arguments":{"name":1,"name":2}}}"#, false),
            (br#"{"params":{"_meta":{"x":{"io.modelcontextprotocol/protocolVersion":1}}},"x":{"params":{"name":1,"name":1}}}"#, false),
            (br#"[{"id":1},{"id":2}]"#, false),
        ] {
            let mut s = Sniffer::new();
            s.feed(input);
            assert_eq!(s.has_duplicate(), dup, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn mirrored_members_agree_with_serde_json_under_mutation() {
        let mut rng = XorShift(0x2026_0728_0000_0001);
        let expect = Expect {
            name: Mirror::Plain(b"get_weather"),
            version: Mirror::Plain(b"2026-07-28"),
        };
        let (mut checked, mut equal) = (0, 0);
        for _ in 0..20_000 {
            let mut input = MODERN.as_bytes().to_vec();
            mutate(&mut rng, &mut input);
            let mut s = Sniffer::new();
            s.feed_with(&input, &expect);
            s.end();
            let Ok(v) = serde_json::from_slice::<Value>(&input) else {
                continue;
            };
            if s.failed() || s.has_duplicate() || !v.is_object() {
                continue;
            }
            checked += 1;
            let params_obj = v.get("params").is_some_and(Value::is_object);
            let meta_obj = params_obj && v["params"].get("_meta").is_some_and(Value::is_object);
            if params_obj {
                assert_eq!(
                    s.name(&expect),
                    serde_compared(&v, &["params", "name"], b"get_weather"),
                    "{}",
                    String::from_utf8_lossy(&input)
                );
                assert_eq!(
                    s.uri(&expect),
                    serde_compared(&v, &["params", "uri"], b"get_weather")
                );
                equal += usize::from(s.name(&expect) == Compared::Equal);
            }
            if meta_obj {
                assert_eq!(
                    s.version(&expect),
                    serde_compared(
                        &v,
                        &["params", "_meta", "io.modelcontextprotocol/protocolVersion"],
                        b"2026-07-28"
                    ),
                    "{}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
        assert!(
            checked > 2_000 && equal > 1_000,
            "{checked} checked, {equal} equal"
        );
    }
}
