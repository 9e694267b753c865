//! What a client may hold or create: who the client is ([`ClientIdentity`],
//! [`ClientId`]), the caps on connections, sessions and session creation ([`Limits`]),
//! and the verdicts ([`Admission`]). Pure decisions: the counters live in the
//! [`Router`](crate::Router) (connections, atomics) and in the session store (sessions
//! and per-client token buckets, so that with Redis they are the fleet's).

use crate::http::RequestHead;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// How the router tells clients apart, for the per-client quotas (and, later, session
/// binding and affinity): one setting, shared by all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientIdentity {
    /// The peer address of the TCP connection (default).
    #[default]
    Peer,
    /// The first untrusted hop of `X-Forwarded-For`, walking from the right and
    /// skipping the addresses in `Config::trusted_proxies`; the peer itself must be
    /// trusted for the header to count at all.
    Xff,
    /// A digest of this header's value (lower-case name), set by an auth proxy in
    /// front; a request without it is identified by its peer address.
    Header(String),
    /// The `iss` and `sub` claims of an `Authorization: Bearer` JWT, read **without
    /// verification** (the backend or an auth proxy verifies the token): binding to the
    /// claims survives token refresh. A request without a readable JWT is identified by
    /// its peer address.
    BearerSub,
}

impl ClientIdentity {
    /// Parse `peer`, `xff`, `header:NAME` or `bearer-sub`.
    pub fn parse(s: &str) -> Result<ClientIdentity, String> {
        match s {
            "peer" => Ok(ClientIdentity::Peer),
            "xff" => Ok(ClientIdentity::Xff),
            "bearer-sub" => Ok(ClientIdentity::BearerSub),
            _ => match s.strip_prefix("header:") {
                Some(n)
                    if !n.is_empty()
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) =>
                {
                    Ok(ClientIdentity::Header(n.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "{s:?}: expected peer, xff, header:NAME or bearer-sub"
                )),
            },
        }
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientIdentity::Peer => f.write_str("peer"),
            ClientIdentity::Xff => f.write_str("xff"),
            ClientIdentity::Header(n) => write!(f, "header:{n}"),
            ClientIdentity::BearerSub => f.write_str("bearer-sub"),
        }
    }
}

/// An address range `addr/len`, for `--trusted-proxies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

impl IpNet {
    /// Parse `10.0.0.0/8`, `::1/128` or a bare address (a single host).
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: not an address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(IpNet { addr, len })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.addr), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A client, as [`ClientIdentity`] names it: the first 8 bytes of a SHA-256 digest of
/// what identifies it (never the identity itself, so neither logs nor the store see a
/// token or an address). Equal across router replicas for the same client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl ClientId {
    fn digest(kind: &[u8], parts: &[&[u8]]) -> ClientId {
        let mut h = Sha256::new();
        h.update(kind);
        for p in parts {
            h.update((p.len() as u32).to_be_bytes());
            h.update(p);
        }
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        ClientId(u64::from_be_bytes(b))
    }

    /// The client at address `ip` (the `peer` identity).
    pub fn of_addr(ip: IpAddr) -> ClientId {
        match canonical(ip) {
            IpAddr::V4(a) => ClientId::digest(b"ip", &[&a.octets()]),
            IpAddr::V6(a) => ClientId::digest(b"ip", &[&a.octets()]),
        }
    }

    /// The client making `req` over a connection from `peer`. Costs one SHA-256 of a
    /// few bytes: called once per session opener, never on an established session's
    /// request.
    pub fn of(
        identity: &ClientIdentity,
        trusted: &[IpNet],
        peer: Option<IpAddr>,
        req: &RequestHead,
    ) -> ClientId {
        let peer_id = || match peer {
            Some(ip) => ClientId::of_addr(ip),
            None => ClientId::digest(b"none", &[]),
        };
        match identity {
            ClientIdentity::Peer => peer_id(),
            ClientIdentity::Xff => match peer {
                Some(p) if trusted.iter().any(|n| n.contains(p)) => {
                    xff_client(req, trusted).map_or_else(peer_id, ClientId::of_addr)
                }
                _ => peer_id(),
            },
            ClientIdentity::Header(name) => match req.header(name) {
                Some(v) if !v.is_empty() => ClientId::digest(b"header", &[name.as_bytes(), v]),
                _ => peer_id(),
            },
            ClientIdentity::BearerSub => match req.header("authorization").and_then(jwt_iss_sub) {
                Some((iss, sub)) => ClientId::digest(b"jwt", &[iss.as_bytes(), sub.as_bytes()]),
                None => peer_id(),
            },
        }
    }
}

/// The first untrusted hop of `X-Forwarded-For`, from the right (every field, in
/// order). RFC 7239 section 5.2 says of the forwarded chain that "the first IP address
/// … is the client" only when every proxy in between is trusted: the rightmost hops are
/// the ones our own proxies added, so the first one that is not ours is the client as
/// far as anyone trusted can tell. A hop that is not an address ends the walk there.
fn xff_client(req: &RequestHead, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut hops: Vec<&[u8]> = Vec::new();
    for (n, v) in req.headers() {
        if n.eq_ignore_ascii_case(b"x-forwarded-for") {
            hops.extend(v.split(|&b| b == b','));
        }
    }
    let mut last = None;
    for hop in hops.iter().rev() {
        let ip: IpAddr = std::str::from_utf8(hop).ok()?.trim().parse().ok()?;
        last = Some(ip);
        if !trusted.iter().any(|n| n.contains(ip)) {
            return Some(ip);
        }
    }
    // every hop is trusted: the leftmost is as far as the chain goes
    last
}

/// `iss` and `sub` of `Bearer <jwt>`, read without verifying the signature.
fn jwt_iss_sub(auth: &[u8]) -> Option<(String, String)> {
    let auth = std::str::from_utf8(auth).ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let payload = token.trim().split('.').nth(1)?;
    if payload.len() > 8192 {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let sub = v.get("sub")?.as_str()?.to_string();
    let iss = v
        .get("iss")
        .and_then(|i| i.as_str())
        .unwrap_or("")
        .to_string();
    Some((iss, sub))
}

/// The caps on what clients may hold or create. `0` turns a cap off.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Client connections one router process holds at once.
    pub max_connections: usize,
    /// Live session records (with a shared store: the fleet's).
    pub max_sessions: u64,
    /// Live sessions one client may hold.
    pub client_max_sessions: u64,
    /// New sessions one client may open per second (token bucket refill rate).
    pub client_session_rate: u32,
    /// Token bucket size: new sessions one client may open at once.
    pub client_session_burst: u32,
    /// What the `Retry-After` header of a `503` or `429` says when nothing better is
    /// known.
    pub retry_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_sessions: 100_000,
            client_max_sessions: 1_000,
            client_session_rate: 100,
            client_session_burst: 200,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// The store's verdict on opening one more session for a client
/// ([`StoreOp::Admit`](crate::StoreOp::Admit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (one token of the client's bucket was taken).
    Admit,
    /// `max_sessions` live sessions exist.
    Sessions,
    /// The client holds `client_max_sessions` live sessions.
    ClientSessions,
    /// The client's bucket is empty; a token comes back in this many milliseconds.
    ClientRate(u32),
}

/// What [`StoreOp::Admit`](crate::StoreOp::Admit) carries: who asks, and the caps to
/// check (the store applies them; a remote store checks them in one round trip).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmitRequest {
    /// The client.
    pub client: ClientId,
    /// Cap on live sessions (0: none).
    pub max_sessions: u64,
    /// Cap on the client's live sessions (0: none).
    pub client_max_sessions: u64,
    /// Refill rate of the client's bucket, per second (0: no rate limit).
    pub rate: u32,
    /// Size of the client's bucket.
    pub burst: u32,
}

impl AdmitRequest {
    /// The session caps checked against the counts a store holds: `live` sessions in
    /// all, `mine` of this client's. `Some` refusal when a cap is reached; `None` when
    /// the caps admit (the rate is the store's to check next, on its own bucket).
    pub fn caps(&self, live: u64, mine: u64) -> Option<Admission> {
        if self.max_sessions > 0 && live >= self.max_sessions {
            Some(Admission::Sessions)
        } else if self.client_max_sessions > 0 && mine >= self.client_max_sessions {
            Some(Admission::ClientSessions)
        } else {
            None
        }
    }
}

/// A token bucket, in milli-tokens, refilled lazily from a millisecond clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Milli-tokens left.
    pub level: u64,
    /// When `level` was computed (ms on the store's clock).
    pub at_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            level: u64::from(burst) * 1000,
            at_ms: now_ms,
        }
    }

    /// Take one token at `now_ms`: `Ok` or the milliseconds until one is there.
    pub fn take(&mut self, rate: u32, burst: u32, now_ms: u64) -> Result<(), u32> {
        let cap = u64::from(burst.max(1)) * 1000;
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(u64::from(rate)))
            .min(cap);
        self.at_ms = now_ms.max(self.at_ms);
        if self.level >= 1000 {
            self.level -= 1000;
            Ok(())
        } else {
            let missing = 1000 - self.level;
            let rate = u64::from(rate.max(1));
            Err(missing.div_ceil(rate).min(u64::from(u32::MAX)) as u32)
        }
    }

    /// Whether the bucket would be full again at `now_ms` (and may be forgotten).
    pub fn is_full_at(&self, rate: u32, burst: u32, now_ms: u64) -> bool {
        let cap = u64::from(burst.max(1)) * 1000;
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.level
            .saturating_add(elapsed.saturating_mul(u64::from(rate)))
            >= cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, HttpLimits};
    use bytes::BytesMut;

    fn head(extra: &str) -> RequestHead {
        let mut b =
            BytesMut::from(format!("POST /mcp HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_str());
        let mut h = RequestHead::default();
        assert!(parse_request(&mut b, &HttpLimits::default(), &mut h).unwrap());
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn identities_parse() {
        assert_eq!(ClientIdentity::parse("peer"), Ok(ClientIdentity::Peer));
        assert_eq!(
            ClientIdentity::parse("header:X-User"),
            Ok(ClientIdentity::Header("x-user".into()))
        );
        for bad in ["", "header:", "header:a b", "jwt"] {
            assert!(ClientIdentity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nets_contain() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("x").is_err());
    }

    #[test]
    fn peer_and_xff_identities() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let h = head("X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX-Forwarded-For: 10.0.0.9\r\n");
        let peer = ClientId::of(&ClientIdentity::Peer, &trusted, ip("10.0.0.1"), &h);
        let xff = ClientId::of(&ClientIdentity::Xff, &trusted, ip("10.0.0.1"), &h);
        assert_eq!(peer, ClientId::of_addr("10.0.0.1".parse().unwrap()));
        // the rightmost untrusted hop, not the leftmost (which the client chose)
        assert_eq!(xff, ClientId::of_addr("2.2.2.2".parse().unwrap()));
        // an untrusted peer's header does not count
        let direct = ClientId::of(&ClientIdentity::Xff, &trusted, ip("3.3.3.3"), &h);
        assert_eq!(direct, ClientId::of_addr("3.3.3.3".parse().unwrap()));
    }

    #[test]
    fn header_and_bearer_identities() {
        let id = ClientIdentity::Header("x-user".into());
        let a = ClientId::of(&id, &[], ip("1.1.1.1"), &head("X-User: alice\r\n"));
        let b = ClientId::of(&id, &[], ip("2.2.2.2"), &head("x-user: alice\r\n"));
        let c = ClientId::of(&id, &[], ip("1.1.1.1"), &head("X-User: bob\r\n"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let jwt = |claims: &str| {
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "Authorization: Bearer {}.{}.sig\r\n",
                e.encode(r#"{"alg":"none"}"#),
                e.encode(claims)
            )
        };
        let bs = ClientIdentity::BearerSub;
        let t1 = ClientId::of(
            &bs,
            &[],
            ip("1.1.1.1"),
            &head(&jwt(r#"{"iss":"i","sub":"u","exp":1}"#)),
        );
        let t2 = ClientId::of(
            &bs,
            &[],
            ip("2.2.2.2"),
            &head(&jwt(r#"{"iss":"i","sub":"u","exp":2}"#)),
        );
        let t3 = ClientId::of(
            &bs,
            &[],
            ip("1.1.1.1"),
            &head(&jwt(r#"{"iss":"j","sub":"u"}"#)),
        );
        assert_eq!(t1, t2, "a refreshed token is the same client");
        assert_ne!(t1, t3);
        // unreadable token: the peer
        let p = ClientId::of(
            &bs,
            &[],
            ip("1.1.1.1"),
            &head("Authorization: Bearer x.!!.y\r\n"),
        );
        assert_eq!(p, ClientId::of_addr("1.1.1.1".parse().unwrap()));
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let mut b = Bucket::full(2, 0);
        assert_eq!(b.take(10, 2, 0), Ok(()));
        assert_eq!(b.take(10, 2, 0), Ok(()));
        assert_eq!(b.take(10, 2, 0), Err(100));
        assert_eq!(b.take(10, 2, 50), Err(50));
        assert_eq!(b.take(10, 2, 100), Ok(()));
        assert!(!b.is_full_at(10, 2, 150));
        assert!(b.is_full_at(10, 2, 300));
        // a clock that goes back never overflows or refills
        assert_eq!(b.take(10, 2, 0), Err(100));
    }
}
