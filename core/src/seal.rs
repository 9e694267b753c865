//! Sealed session ids (`--session-ids sealed`): the client-facing session id is an
//! authenticated, encrypted token that carries everything needed to route the session,
//! so any router replica routes any session without a session store.
//!
//! # Token
//!
//! `base64url(no padding)` of
//!
//! | bytes | field | |
//! |---|---|---|
//! | 1 | format version ([`VERSION`]) | authenticated (AEAD associated data) |
//! | 2 | key id ([`Key::kid`]) | authenticated |
//! | 12 | nonce | per token: 4 random bytes of the process and a counter from a random start ([`crate::Router::next_nonce`]) |
//! | 1 | era (`0` Streamable HTTP, `1` legacy HTTP+SSE) | encrypted |
//! | 4 | issue time, unix seconds (big-endian) | encrypted |
//! | 8 | caller's identity digest ([`ClientId`]) | encrypted |
//! | 8 | the backend's *name*, as its first 8 bytes of SHA-256 ([`name_digest`]) | encrypted |
//! | n | the upstream session id | encrypted |
//! | 16 | Poly1305 tag | |
//!
//! The cipher is AES-256-GCM-SIV (RFC 8452) with the 32-byte key as given: no key
//! derivation of ours (the mode's own per-nonce subkeys are a few AES blocks, hardware
//! accelerated). It was chosen over XChaCha20-Poly1305 for speed (measured on the
//! benchmark machine, 80 bytes: 0.3-0.5 µs against 1.8-2.4 µs, most of it in the
//! Poly1305 backend's set-up per message) and because it is nonce-misuse resistant: a
//! repeated 12-byte nonce reveals only whether two tokens carry identical contents,
//! never the plaintext or the key. A token is `52 + n` bytes, so
//! `ceil((52 + n) * 4 / 3)` characters: 240 for an upstream id of 128 bytes (256 for
//! 140), 118 for a UUID. Sealing refuses ([`SealError::TooLong`]) a token longer than the configured
//! `max_session_id_len` (default 256); the router then answers the opener `502`
//! rather than hand out an id it would refuse to read back.
//!
//! The backend is carried as a digest of its name rather than the name itself: names
//! (`mcp@10.244.1.17:8080`) would not fit beside a 128-byte upstream id, and the digest
//! names a backend as precisely among the handful a replica has (two configured
//! backends whose names share a digest are refused at start).
//!
//! The session id "value is visible ASCII only (0x21 to 0x7E) and should be
//! cryptographically random" (shared/mcp-transport.md, Streamable HTTP): base64url is
//! visible ASCII, and under a random nonce the ciphertext is indistinguishable from
//! random bytes.
//!
//! Opening decodes into a stack buffer and decrypts in place: no allocation (the
//! upstream id is returned as a [`SessionKey`], inline up to 62 bytes).

use crate::limits::ClientId;
use crate::mcp::SessionKey;
use crate::store::Era;
use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{AesGcmSiv, Nonce, Tag};

/// AES-256-GCM-SIV over the encrypt-only AES-256: the mode derives a fresh AES key
/// for every nonce and only ever encrypts with it, so the decryption key schedule the
/// crate's default `Aes256` also expands (13 inverse mix-columns per message) is waste.
type Aes256GcmSiv = AesGcmSiv<aes::Aes256Enc>;
use sha2::{Digest, Sha256};
use std::fmt;

/// Token format version.
pub const VERSION: u8 = 1;
/// Nonce bytes.
pub const NONCE: usize = 12;
/// Header bytes (version, key id, nonce).
const HEADER: usize = 1 + 2 + NONCE;
/// Fixed plaintext bytes before the upstream id.
const FIXED: usize = 1 + 4 + 8 + 8;
/// Tag bytes.
const TAG: usize = 16;
/// Token bytes besides the upstream id.
pub const OVERHEAD: usize = HEADER + FIXED + TAG;
/// Longest token (characters) [`KeyRing::open`] decodes: the core's upper bound on
/// `max_session_id_len`.
pub const MAX_TOKEN: usize = 4096;
/// Decoded bytes of the longest token.
const MAX_RAW: usize = MAX_TOKEN / 4 * 3;
/// Decoded bytes of a token of up to 256 characters (the default id limit).
const SMALL_RAW: usize = 192;

/// The base64url alphabet (RFC 4648 section 5).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Each byte's value in [`ALPHABET`], `0xFF` for bytes outside it.
const DECODE: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// base64url without padding, appended to `out`. (The general-purpose engine of the
/// `base64` crate took about a fifth of an open; this table loop is the same
/// encoding.)
fn b64_encode(raw: &[u8], out: &mut Vec<u8>) {
    let mut chunks = raw.chunks_exact(3);
    for c in &mut chunks {
        let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        out.extend_from_slice(&[
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            ALPHABET[(n >> 6) as usize & 63],
            ALPHABET[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => out.extend_from_slice(&[
            ALPHABET[usize::from(a >> 2)],
            ALPHABET[usize::from(a & 3) << 4],
        ]),
        [a, b] => out.extend_from_slice(&[
            ALPHABET[usize::from(a >> 2)],
            ALPHABET[usize::from(a & 3) << 4 | usize::from(b >> 4)],
            ALPHABET[usize::from(b & 15) << 2],
        ]),
        _ => {}
    }
}

/// Strict base64url without padding into `out`: `None` for a byte outside the
/// alphabet, a length of 1 mod 4, non-zero unused bits in the last character (so that
/// every encoding has exactly one text: no two texts open to the same token), or an
/// `out` too small. Returns the bytes written.
fn b64_decode(text: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = text.len() / 4 * 3
        + match text.len() % 4 {
            0 => 0,
            1 => return None,
            r => r - 1,
        };
    let out = out.get_mut(..n)?;
    let mut chunks = text.chunks_exact(4);
    let mut o = out.chunks_exact_mut(3);
    for (c, d) in (&mut chunks).zip(&mut o) {
        let v = [
            DECODE[usize::from(c[0])],
            DECODE[usize::from(c[1])],
            DECODE[usize::from(c[2])],
            DECODE[usize::from(c[3])],
        ];
        if (v[0] | v[1] | v[2] | v[3]) & 0xC0 != 0 {
            return None;
        }
        let w =
            u32::from(v[0]) << 18 | u32::from(v[1]) << 12 | u32::from(v[2]) << 6 | u32::from(v[3]);
        d.copy_from_slice(&[(w >> 16) as u8, (w >> 8) as u8, w as u8]);
    }
    let tail = o.into_remainder();
    match *chunks.remainder() {
        [a, b] => {
            let (a, b) = (DECODE[usize::from(a)], DECODE[usize::from(b)]);
            if (a | b) & 0xC0 != 0 || b & 15 != 0 {
                return None;
            }
            *tail.first_mut()? = a << 2 | b >> 4;
        }
        [a, b, c] => {
            let (a, b, c) = (
                DECODE[usize::from(a)],
                DECODE[usize::from(b)],
                DECODE[usize::from(c)],
            );
            if (a | b | c) & 0xC0 != 0 || c & 3 != 0 {
                return None;
            }
            tail.get_mut(..2)?
                .copy_from_slice(&[a << 2 | b >> 4, (b & 15) << 4 | c >> 2]);
        }
        _ => {}
    }
    Some(n)
}

/// The first 8 bytes of SHA-256 of a backend's name: how a token names its backend.
pub fn name_digest(name: &str) -> [u8; 8] {
    let d = Sha256::new()
        .chain_update(b"mcp-router backend\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// One sealing key. Its bytes never leave this type: `Debug` shows the id only.
#[derive(Clone)]
pub struct Key {
    id: String,
    kid: [u8; 2],
    cipher: Aes256GcmSiv,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

impl Key {
    /// A key from its 32 bytes, with an id (`None`: derived from the key: the hex of
    /// the first 4 bytes of its SHA-256, which reveals nothing useful about it).
    pub fn new(id: Option<&str>, bytes: &[u8; 32]) -> Key {
        let id = match id {
            Some(i) => i.to_string(),
            None => {
                let d = Sha256::digest(bytes);
                d[..4].iter().map(|b| format!("{b:02x}")).collect()
            }
        };
        let d = Sha256::new()
            .chain_update(b"mcp-router key id\0")
            .chain_update(id.as_bytes())
            .finalize();
        Key {
            kid: [d[0], d[1]],
            id,
            cipher: Aes256GcmSiv::new(bytes.into()),
        }
    }

    /// The key's id (as written in the key file, or derived).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 2 bytes that name the key in a token (a digest of its id).
    pub fn kid(&self) -> [u8; 2] {
        self.kid
    }
}

/// The keys that open tokens; the first one also seals.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: Vec<Key>,
}

/// Why a key file was refused (never quoting a key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl KeyRing {
    /// A ring of these keys (the first seals). Refuses an empty ring and two keys whose
    /// ids share a token key id.
    pub fn new(keys: Vec<Key>) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError("no key".into()));
        }
        for (i, k) in keys.iter().enumerate() {
            if let Some(o) = keys[..i].iter().find(|o| o.kid == k.kid) {
                return Err(KeyError(format!(
                    "keys {:?} and {:?} have the same token key id: rename one",
                    o.id, k.id
                )));
            }
        }
        Ok(KeyRing { keys })
    }

    /// Parse a key file: one key per line, 64 hex characters (32 bytes, as
    /// `openssl rand -hex 32` prints), optionally prefixed by an id and a colon
    /// (`2026q4:ab12…`). Blank lines and lines starting with `#` are skipped. Errors
    /// name the line, never its content.
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, hex) = match line.rsplit_once(':') {
                Some((id, hex)) => {
                    let id = id.trim();
                    if id.is_empty()
                        || !id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    {
                        return Err(KeyError(format!(
                            "line {}: a key id is letters, digits, '-', '_' or '.'",
                            n + 1
                        )));
                    }
                    (Some(id), hex.trim())
                }
                None => (None, line),
            };
            let mut bytes = [0u8; 32];
            if hex.len() < 64 {
                return Err(KeyError(format!(
                    "line {}: key shorter than 32 bytes (64 hex characters; `openssl rand -hex 32`)",
                    n + 1
                )));
            }
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(KeyError(format!(
                    "line {}: a key is exactly 64 hex characters",
                    n + 1
                )));
            }
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            keys.push(Key::new(id, &bytes));
        }
        KeyRing::new(keys)
    }

    /// The ids of the keys, sealing key first (for logs).
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Seal `fields` with the first key and `nonce`; append the token to `out`. Refuses
    /// a token longer than `max_len` characters.
    pub fn seal(
        &self,
        fields: &Fields<'_>,
        nonce: &[u8; NONCE],
        max_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let key = self.keys.first().ok_or(SealError::NoKey)?;
        let up = fields.upstream;
        let raw_len = OVERHEAD + up.len();
        if token_len(up.len()) > max_len.min(MAX_TOKEN) {
            return Err(SealError::TooLong);
        }
        // on the stack, and only as large as the common case needs (zeroing 3 KiB for
        // every token would cost more than the base64 step)
        let (mut small, mut big);
        let raw: &mut [u8] = if raw_len <= SMALL_RAW {
            small = [0u8; SMALL_RAW];
            &mut small[..raw_len]
        } else {
            big = [0u8; MAX_RAW];
            &mut big[..raw_len]
        };
        raw[0] = VERSION;
        raw[1..3].copy_from_slice(&key.kid);
        raw[3..HEADER].copy_from_slice(nonce);
        let (head, rest) = raw.split_at_mut(HEADER);
        let (body, tag_out) = rest.split_at_mut(FIXED + up.len());
        body[0] = match fields.era {
            Era::Streamable => 0,
            Era::LegacySse => 1,
        };
        body[1..5].copy_from_slice(&fields.issued.to_be_bytes());
        body[5..13].copy_from_slice(&fields.client.0.to_be_bytes());
        body[13..21].copy_from_slice(&fields.backend);
        body[FIXED..].copy_from_slice(up);
        let tag = key
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&head[3..]), &head[..3], body)
            .map_err(|_| SealError::TooLong)?;
        tag_out.copy_from_slice(&tag);
        out.reserve(token_len(up.len()));
        b64_encode(raw, out);
        Ok(())
    }

    /// Open a token. Never allocates (but for an upstream id longer than 62 bytes,
    /// which the returned [`SessionKey`] boxes).
    pub fn open(&self, token: &[u8], max_len: usize) -> Result<Opened, OpenError> {
        if token.len() > max_len.min(MAX_TOKEN) {
            return Err(OpenError::Malformed);
        }
        let (mut small, mut big);
        let buf: &mut [u8] = if token.len() <= SMALL_RAW / 3 * 4 {
            small = [0u8; SMALL_RAW];
            &mut small
        } else {
            big = [0u8; MAX_RAW];
            &mut big
        };
        let n = b64_decode(token, buf).ok_or(OpenError::Malformed)?;
        if n < OVERHEAD + 1 || n > buf.len() {
            return Err(OpenError::Malformed);
        }
        let raw = &mut buf[..n];
        if raw[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let kid = [raw[1], raw[2]];
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(OpenError::UnknownKey)?;
        let (head, rest) = raw.split_at_mut(HEADER);
        let (body, tag) = rest.split_at_mut(n - HEADER - TAG);
        key.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&head[3..]),
                &head[..3],
                body,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Tampered)?;
        let era = match body[0] {
            0 => Era::Streamable,
            1 => Era::LegacySse,
            _ => return Err(OpenError::Tampered),
        };
        let mut u4 = [0u8; 4];
        u4.copy_from_slice(&body[1..5]);
        let mut u8s = [0u8; 8];
        u8s.copy_from_slice(&body[5..13]);
        let client = ClientId(u64::from_be_bytes(u8s));
        let mut backend = [0u8; 8];
        backend.copy_from_slice(&body[13..21]);
        let upstream = SessionKey::new(&body[FIXED..], usize::MAX).ok_or(OpenError::Tampered)?;
        Ok(Opened {
            era,
            issued: u32::from_be_bytes(u4),
            client,
            backend,
            upstream,
            kid,
        })
    }
}

/// Format version of a sealed stored value ([`KeyRing::seal_value`]); distinct from
/// [`VERSION`] so that a token can never be taken for a value or the other way round.
pub const VALUE_VERSION: u8 = 0x81;

impl KeyRing {
    /// Seal an opaque value the router stores (a session's `initialize` body in Redis,
    /// for `--failover reinitialize`) with the first key and `nonce`:
    /// `VALUE_VERSION | key id (2) | nonce (12) | ciphertext | tag (16)`, binary. The
    /// header and `context` (the session id: a value copied to another session's key
    /// does not open there) are authenticated, not stored.
    pub fn seal_value(
        &self,
        context: &[u8],
        plaintext: &[u8],
        nonce: &[u8; NONCE],
    ) -> Result<Vec<u8>, SealError> {
        let key = self.keys.first().ok_or(SealError::NoKey)?;
        let mut out = Vec::with_capacity(HEADER + plaintext.len() + TAG);
        out.push(VALUE_VERSION);
        out.extend_from_slice(&key.kid);
        out.extend_from_slice(nonce);
        let aad = value_aad(&out[..3], context);
        out.extend_from_slice(plaintext);
        let tag = key
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), &aad, &mut out[HEADER..])
            .map_err(|_| SealError::TooLong)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Open a value sealed by [`KeyRing::seal_value`] for the same `context`, by any key
    /// of the ring. `None`: malformed, tampered, another context, or a key not in the
    /// ring (rotated out).
    pub fn open_value(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < HEADER + TAG || sealed[0] != VALUE_VERSION {
            return None;
        }
        let kid = [sealed[1], sealed[2]];
        let key = self.keys.iter().find(|k| k.kid == kid)?;
        let aad = value_aad(&sealed[..3], context);
        let (body, tag) = sealed[HEADER..].split_at(sealed.len() - HEADER - TAG);
        let mut plain = body.to_vec();
        key.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&sealed[3..HEADER]),
                &aad,
                &mut plain,
                Tag::from_slice(tag),
            )
            .ok()?;
        Some(plain)
    }
}

/// The associated data of a sealed value: its version and key id, then the context.
fn value_aad(head: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(head.len() + context.len());
    aad.extend_from_slice(head);
    aad.extend_from_slice(context);
    aad
}

/// Characters of the token sealing an upstream id of `n` bytes.
pub fn token_len(n: usize) -> usize {
    (4 * (OVERHEAD + n)).div_ceil(3)
}

/// What a token carries (for sealing).
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    /// The session's transport era.
    pub era: Era,
    /// Issue time, unix seconds.
    pub issued: u32,
    /// The caller's identity digest.
    pub client: ClientId,
    /// [`name_digest`] of the backend's name.
    pub backend: [u8; 8],
    /// The upstream session id (visible ASCII).
    pub upstream: &'a [u8],
}

/// What an opened token carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The session's transport era.
    pub era: Era,
    /// Issue time, unix seconds.
    pub issued: u32,
    /// The caller's identity digest.
    pub client: ClientId,
    /// [`name_digest`] of the backend's name.
    pub backend: [u8; 8],
    /// The upstream session id.
    pub upstream: SessionKey,
    /// The key id that opened it.
    pub kid: [u8; 2],
}

/// Why a token could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealError {
    /// The ring is empty.
    NoKey,
    /// The token would be longer than `max_session_id_len`.
    TooLong,
}

/// Why a token did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not base64url, too short or too long, or an unknown format version.
    Malformed,
    /// No key of the ring has its key id (never was, or removed).
    UnknownKey,
    /// The tag does not verify (tampered, or sealed by another key with the same id).
    Tampered,
}

/// Why a request's sealed session id was refused (each answered `404` `-32001`, like
/// an unknown session); also used for the binding check of `passthrough` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Did not open: malformed.
    Malformed,
    /// Did not open: unknown key id.
    UnknownKey,
    /// Did not open: tag mismatch.
    Tampered,
    /// Past `--session-max-age`.
    Expired,
    /// Names a backend this replica does not have.
    UnknownBackend,
    /// Carries another caller's identity (`--session-binding on`).
    Binding,
}

impl Refusal {
    /// Lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Tampered => "tampered",
            Refusal::Expired => "expired",
            Refusal::UnknownBackend => "unknown_backend",
            Refusal::Binding => "binding",
        }
    }
}

impl From<OpenError> for Refusal {
    fn from(e: OpenError) -> Refusal {
        match e {
            OpenError::Malformed => Refusal::Malformed,
            OpenError::UnknownKey => Refusal::UnknownKey,
            OpenError::Tampered => Refusal::Tampered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(lines: &str) -> KeyRing {
        KeyRing::parse(lines).unwrap()
    }
    const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const K2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";

    fn fields(up: &[u8]) -> Fields<'_> {
        Fields {
            era: Era::Streamable,
            issued: 1_800_000_000,
            client: ClientId(0x0102_0304_0506_0708),
            backend: name_digest("b0"),
            upstream: up,
        }
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_context_and_ring() {
        let ring = KeyRing::parse(&format!("a:{}\n", "11".repeat(32))).unwrap();
        let plain = br#"{"method":"initialize","params":{"clientInfo":{"name":"zed"}}}"#;
        let v = ring.seal_value(b"s1", plain, &[7; NONCE]).unwrap();
        assert_eq!(v.len(), plain.len() + HEADER + TAG);
        assert!(
            !v.windows(3).any(|w| w == b"zed"),
            "ciphertext carries the name"
        );
        assert_eq!(ring.open_value(b"s1", &v).as_deref(), Some(&plain[..]));
        assert_eq!(ring.open_value(b"s2", &v), None, "another session's value");
        let mut bad = v.clone();
        bad[HEADER] ^= 1;
        assert_eq!(ring.open_value(b"s1", &bad), None, "tampered");
        let other = KeyRing::parse(&format!("b:{}\n", "22".repeat(32))).unwrap();
        assert_eq!(other.open_value(b"s1", &v), None, "a key not in the ring");
        let rotated =
            KeyRing::parse(&format!("b:{}\na:{}\n", "22".repeat(32), "11".repeat(32))).unwrap();
        assert_eq!(rotated.open_value(b"s1", &v).as_deref(), Some(&plain[..]));
        assert_eq!(
            ring.open_value(b"s1", &v[..HEADER + TAG - 1]),
            None,
            "short"
        );
    }

    fn seal(r: &KeyRing, up: &[u8], nonce: u8) -> Vec<u8> {
        let mut out = Vec::new();
        r.seal(&fields(up), &[nonce; NONCE], 256, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_and_sizes() {
        let r = ring(K1);
        for n in [1, 16, 36, 62, 63, 100, 128, 140] {
            let up = vec![b'x'; n];
            let t = seal(&r, &up, 7);
            assert_eq!(t.len(), token_len(n), "{n}");
            assert!(t.len() <= 256, "{n}: {}", t.len());
            assert!(t
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
            let o = r.open(&t, 256).unwrap();
            assert_eq!(o.upstream.as_bytes(), &up[..]);
            assert_eq!(o.era, Era::Streamable);
            assert_eq!(o.issued, 1_800_000_000);
            assert_eq!(o.client, ClientId(0x0102_0304_0506_0708));
            assert_eq!(o.backend, name_digest("b0"));
            // the token reveals nothing of the upstream id or the backend
            if n >= 8 {
                assert!(!t.windows(8).any(|w| w == &up[..8]));
            }
        }
        assert_eq!(token_len(128), 240);
        assert_eq!(token_len(140), 256);
        assert_eq!(token_len(36), 118);
        let mut out = Vec::new();
        assert_eq!(
            r.seal(&fields(&[b'x'; 141]), &[0; NONCE], 256, &mut out),
            Err(SealError::TooLong)
        );
        // a larger limit seals a larger id
        r.seal(&fields(&[b'x'; 141]), &[0; NONCE], 4096, &mut out)
            .unwrap();
        assert_eq!(r.open(&out, 4096).unwrap().upstream.as_bytes().len(), 141);
        // legacy era round-trips too
        let mut f = fields(b"abc");
        f.era = Era::LegacySse;
        let mut out = Vec::new();
        r.seal(&f, &[1; NONCE], 256, &mut out).unwrap();
        assert_eq!(r.open(&out, 256).unwrap().era, Era::LegacySse);
    }

    #[test]
    fn rotation_old_tokens_open_while_their_key_is_in_the_ring() {
        let old = ring(&format!("old:{K1}"));
        let t_old = seal(&old, b"s-1", 1);
        // new key first, old one still opens
        let both = ring(&format!("new:{K2}\nold:{K1}\n"));
        assert_eq!(both.open(&t_old, 256).unwrap().upstream.as_bytes(), b"s-1");
        let t_new = seal(&both, b"s-2", 2);
        assert_eq!(old.open(&t_new, 256), Err(OpenError::UnknownKey));
        // old key removed: its tokens stop opening
        let new = ring(&format!("new:{K2}"));
        assert_eq!(new.open(&t_old, 256), Err(OpenError::UnknownKey));
        assert!(new.open(&t_new, 256).is_ok());
        // same id, other key bytes: does not open
        let impostor = ring(&format!("old:{K2}"));
        assert_eq!(impostor.open(&t_old, 256), Err(OpenError::Tampered));
    }

    #[test]
    fn tampered_token_of_every_length_never_opens() {
        let r = ring(K1);
        let t = seal(&r, b"0123456789abcdef0123456789abcdef", 3);
        // every prefix (every shorter length), every single-character change
        for len in 0..t.len() {
            assert!(r.open(&t[..len], 256).is_err(), "prefix {len}");
        }
        for i in 0..t.len() {
            for c in [b'A', b'z', b'0', b'-', b'_'] {
                let mut x = t.clone();
                if x[i] == c {
                    continue;
                }
                x[i] = c;
                assert!(r.open(&x, 256).is_err(), "pos {i} -> {}", c as char);
            }
        }
        // longer: appended characters
        for extra in 1..8 {
            let mut x = t.clone();
            x.resize(x.len() + extra, b'A');
            assert!(r.open(&x, 256).is_err(), "+{extra}");
        }
        // random-looking ids of every length up to 256
        for len in 0..=300 {
            let x: Vec<u8> = (0..len).map(|i| b"AbZz09-_"[(i * 7 + len) % 8]).collect();
            assert!(r.open(&x, 256).is_err(), "len {len}");
        }
    }

    #[test]
    fn base64url_matches_the_reference_and_is_strict() {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for len in 0..80 {
            let raw: Vec<u8> = (0..len).map(|i| (i * 37 + len * 11) as u8).collect();
            let mut out = Vec::new();
            b64_encode(&raw, &mut out);
            assert_eq!(out, e.encode(&raw).into_bytes(), "{len}");
            let mut back = [0u8; 128];
            let got = b64_decode(&out, &mut back).map(|n| back[..n].to_vec());
            assert_eq!(got, Some(raw), "{len}");
        }
        // every 1- to 4-character text: accepted exactly when the reference accepts it
        let chars: Vec<u8> = (0u8..=255)
            .filter(|b| *b == b'=' || b.is_ascii_graphic())
            .collect();
        let mut buf = [0u8; 8];
        for a in &chars {
            for b in &chars {
                for t in [
                    vec![*a],
                    vec![*a, *b],
                    vec![*a, *b, b'A'],
                    vec![*a, *b, b'Q', b'w'],
                ] {
                    let ours = b64_decode(&t, &mut buf).map(|n| buf[..n].to_vec());
                    assert_eq!(ours, e.decode(&t).ok(), "{:?}", String::from_utf8_lossy(&t));
                }
            }
        }
    }

    #[test]
    fn key_files() {
        let r = ring(&format!("# comment\n\n2026q4:{K1}\n{K2}\n"));
        assert_eq!(r.ids()[0], "2026q4");
        assert_eq!(r.ids()[1].len(), 8);
        for (text, why) in [
            ("", "no key"),
            ("abcd", "shorter than 32 bytes"),
            (&format!("{K1}00")[..], "exactly 64"),
            (&K1.replace('0', "g")[..], "exactly 64"),
            (&format!("bad id:{K1}")[..], "key id"),
            (&format!("a:{K1}\na:{K2}")[..], "same token key id"),
        ] {
            let e = KeyRing::parse(text).unwrap_err();
            assert!(e.0.contains(why), "{text}: {e}");
            assert!(!e.0.contains(K1) && !e.0.contains(K2));
        }
        assert!(!format!("{r:?}").contains("0101"));
    }
}
