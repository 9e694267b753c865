//! Incremental JSON-RPC envelope sniffer.

/// Reads a JSON-RPC message as it streams past and keeps only what routing needs: the
/// top-level `method` (decoded) and `id` (raw JSON token), and whether the message is a
/// batch (a top-level array, 2025-03-26 only). It never buffers the body: state is a
/// few counters and two small fixed buffers, so memory is constant whatever the input.
///
/// Only top-level members of a top-level object count; `method`/`id` nested inside
/// `params` or `result` are ignored. For a batch, `method` and `id` stay `None`.
/// Duplicate keys: the first occurrence wins. Input that is not JSON sets
/// [`Sniffer::failed`]; what was found before the error is kept.
#[derive(Clone, Debug)]
pub struct Sniffer {
    _private: (),
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
        todo!()
    }
    /// Forget everything, ready for the next message.
    pub fn reset(&mut self) {
        todo!()
    }
    /// Feed the next bytes of the body.
    pub fn feed(&mut self, data: &[u8]) {
        let _ = data;
        todo!()
    }
    /// Total bytes fed since the last reset.
    pub fn fed(&self) -> u64 {
        todo!()
    }
    /// The top-level value is complete (closing brace or bracket seen), or the input
    /// failed to parse: nothing more will be learned.
    pub fn finished(&self) -> bool {
        todo!()
    }
    /// The input is not valid JSON (as far as it was read).
    pub fn failed(&self) -> bool {
        todo!()
    }
    /// The top-level value is an array.
    pub fn is_batch(&self) -> bool {
        todo!()
    }
    /// The decoded `method` string, once its whole value has been read.
    pub fn method(&self) -> Option<&[u8]> {
        todo!()
    }
    /// The method was present but longer than [`Self::MAX_METHOD`].
    pub fn method_too_long(&self) -> bool {
        todo!()
    }
    /// The raw JSON token of `id` (e.g. `7`, `"abc"`, `null`), once read. Only a string,
    /// a number or null is reported; an object or array id reads as `None`.
    pub fn id(&self) -> Option<&[u8]> {
        todo!()
    }
    /// `method` is exactly `initialize`.
    pub fn is_initialize(&self) -> bool {
        self.method() == Some(b"initialize")
    }
    /// Whether the method is known or can no longer become known (finished, failed,
    /// batch, or the top-level value is not an object).
    pub fn method_settled(&self) -> bool {
        todo!()
    }
    /// Whether the id is known or can no longer become known.
    pub fn id_settled(&self) -> bool {
        todo!()
    }
}
