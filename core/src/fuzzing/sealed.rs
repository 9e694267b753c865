//! The `sealed_id` target: sealed session ids ([`crate::seal`]).

use crate::limits::ClientId;
use crate::seal::{Fields, KeyRing};
use crate::store::Era;

const KEYS: &str = "old:0101010101010101010101010101010101010101010101010101010101010101\n\
                    new:a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2\n";

/// Sealed session ids. Byte 0 picks the mode:
///
/// - even: the rest is a session id as a client sends it. It never opens (forging one
///   means forging a Poly1305 tag) and never panics, under every `max_len`.
/// - odd: the rest is what a token carries (era bit, issue time, client digest,
///   backend digest, nonce, then the upstream id, mapped to visible ASCII). Sealed, it
///   is visible ASCII within `max_session_id_len` and opens to exactly what was
///   sealed, by either key of a ring that holds it; every one-character change, every
///   truncation and a ring without its key never open it.
pub fn sealed_id(data: &[u8]) {
    let ring = KeyRing::parse(KEYS).expect("fixed keys");
    let (mode, rest) = match data.split_first() {
        Some((m, r)) => (*m, r),
        None => return,
    };
    if mode % 2 == 0 {
        for max in [1, 87, 256, 4096] {
            assert!(ring.open(rest, max).is_err(), "an arbitrary id opened");
        }
        return;
    }
    let (c, up) = super::ctl::<33>(rest);
    let upstream: Vec<u8> = up
        .iter()
        .take(300)
        .map(|b| 0x21 + b % (0x7f - 0x21))
        .collect();
    if upstream.is_empty() {
        return;
    }
    let mut u4 = [0u8; 4];
    u4.copy_from_slice(&c[1..5]);
    let mut u8s = [0u8; 8];
    u8s.copy_from_slice(&c[5..13]);
    let mut backend = [0u8; 8];
    backend.copy_from_slice(&c[13..21]);
    let mut nonce = [0u8; crate::seal::NONCE];
    nonce.copy_from_slice(&c[21..33]);
    let fields = Fields {
        era: if c[0] & 1 == 0 {
            Era::Streamable
        } else {
            Era::LegacySse
        },
        issued: u32::from_be_bytes(u4),
        client: ClientId(u64::from_be_bytes(u8s)),
        backend,
        upstream: &upstream,
    };
    let max = if mode & 2 == 0 { 256 } else { 4096 };
    let mut token = Vec::new();
    if ring.seal(&fields, &nonce, max, &mut token).is_err() {
        assert!(crate::seal::token_len(upstream.len()) > max);
        return;
    }
    assert!(token.len() <= max && token.len() == crate::seal::token_len(upstream.len()));
    assert!(crate::mcp::valid_session_id(&token, max));
    let o = ring.open(&token, max).expect("a sealed id opens");
    assert_eq!(o.upstream.as_bytes(), &upstream[..]);
    assert_eq!(
        (o.era, o.issued, o.client, o.backend),
        (fields.era, fields.issued, fields.client, fields.backend)
    );
    // a ring with only the other key (the sealing one removed): unknown key id
    let other = KeyRing::parse(KEYS.lines().nth(1).unwrap_or("").trim()).expect("one key");
    assert!(other.open(&token, max).is_err());
    // every truncation, and one changed character per position (a few positions)
    for len in (0..token.len()).step_by(1 + token.len() / 16) {
        assert!(ring.open(&token[..len], max).is_err());
    }
    let pos = c[0] as usize % token.len();
    for sub in [b'A', b'_', b'0'] {
        let mut t = token.clone();
        if t[pos] != sub {
            t[pos] = sub;
            assert!(ring.open(&t, max).is_err(), "a changed id opened");
        }
    }
}
