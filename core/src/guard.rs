//! DNS-rebinding protection: the `Host` and `Origin` allow-lists the router checks
//! before it forwards anything.
//!
//! MCP 2025-11-25, Streamable HTTP, Security Warning: "Servers MUST validate the
//! `Origin` header on all incoming connections to prevent DNS rebinding attacks. If the
//! `Origin` header is present and invalid, servers MUST respond with HTTP 403
//! Forbidden. The HTTP response body MAY comprise a JSON-RPC error response that has
//! no `id`." A reverse proxy that rewrote `Host` and checked nothing would take that
//! protection away from its backends: they would see the proxy's authority, never the
//! foreign one. So the router checks both fields itself (and, by default, forwards the
//! client's `Host` unchanged so that backends can check it too).

use crate::config::{Config, ConfigError};
use crate::http::{Method, Name, RequestHead};
use crate::mcp::{
    is_stateless_version, query_session_id_strict, Compared, ErrorCode, Expect, Mirror, Sniffer,
};
use std::borrow::Cow;

/// One allowed `Host` (or the host part of an allowed `Origin`): a name or IP literal
/// (IPv6 in brackets), compared ignoring ASCII case, with an optional port. Without a
/// port, any port (or none) matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case host, IPv6 literals in brackets.
    pub host: String,
    /// Required port, or `None` for any.
    pub port: Option<u16>,
}

/// One allowed `Origin`: `scheme://host[:port]`; without a port any port matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    /// Lower-case scheme (`http`, `https`, ...).
    pub scheme: String,
    /// Host and optional port.
    pub host: HostPattern,
}

/// The `Host` and `Origin` allow-lists. `None` turns a check off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebindingGuard {
    /// Allowed `Host` values; a request whose `Host` is not listed gets 403. One without
    /// `Host` (HTTP/1.0) passes: browsers, the clients DNS rebinding abuses, always send
    /// it. `None`: any.
    pub hosts: Option<Vec<HostPattern>>,
    /// Allowed `Origin` values; a request with an `Origin` not listed gets 403; one
    /// without `Origin` passes. `None`: any.
    pub origins: Option<Vec<OriginPattern>>,
}

/// Names a loopback listener answers to, the defaults of both lists.
const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Split an authority `host[:port]` (IPv6 in brackets) into its host and its port
/// digits (`None` when absent or empty). `None` when it is not such an authority.
fn split_authority(a: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (host, rest) = if a.first() == Some(&b'[') {
        let end = a.iter().position(|&b| b == b']')?;
        a.split_at(end + 1)
    } else {
        match a.iter().position(|&b| b == b':') {
            Some(c) => a.split_at(c),
            None => (a, &[][..]),
        }
    };
    let port = match rest {
        [] | [b':'] => None,
        [b':', digits @ ..] if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => {
            Some(digits)
        }
        _ => return None,
    };
    (!host.is_empty()).then_some((host, port))
}

fn port_of(digits: &[u8]) -> Option<u16> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl HostPattern {
    /// Parse `host`, `host:port`, `host:*`, `[v6]`, `[v6]:port`.
    pub fn parse(s: &str) -> Result<HostPattern, ConfigError> {
        let err = || ConfigError(format!("allowed_hosts: {s:?}: use host or host:port"));
        let s = s.trim();
        let (s, any_port) = match s.strip_suffix(":*") {
            Some(h) => (h, true),
            None => (s, false),
        };
        let (host, port) = split_authority(s.as_bytes()).ok_or_else(err)?;
        if any_port && port.is_some() {
            return Err(err());
        }
        let host = std::str::from_utf8(host).map_err(|_| err())?;
        if host
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)))
        {
            return Err(err());
        }
        let port = match port {
            Some(d) => Some(port_of(d).ok_or_else(err)?),
            None => None,
        };
        Ok(HostPattern {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether an authority from a request (`Host` value, or an origin's host part)
    /// matches.
    fn matches(&self, authority: &[u8]) -> bool {
        let Some((host, port)) = split_authority(authority) else {
            return false;
        };
        host.eq_ignore_ascii_case(self.host.as_bytes())
            && match self.port {
                None => true,
                Some(p) => port.and_then(port_of) == Some(p),
            }
    }
}

impl OriginPattern {
    /// Parse `scheme://host[:port]` (a trailing `/` is tolerated).
    pub fn parse(s: &str) -> Result<OriginPattern, ConfigError> {
        let err = || {
            ConfigError(format!(
                "allowed_origins: {s:?}: use scheme://host or scheme://host:port"
            ))
        };
        let t = s.trim();
        let t = t.strip_suffix('/').unwrap_or(t);
        let (scheme, rest) = t.split_once("://").ok_or_else(err)?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(err());
        }
        let host = HostPattern::parse(rest).map_err(|_| err())?;
        Ok(OriginPattern {
            scheme: scheme.to_ascii_lowercase(),
            host,
        })
    }

    fn matches(&self, origin: &[u8]) -> bool {
        let Some(sep) = origin.windows(3).position(|w| w == b"://") else {
            return false;
        };
        origin[..sep].eq_ignore_ascii_case(self.scheme.as_bytes())
            && self.host.matches(&origin[sep + 3..])
    }
}

impl RebindingGuard {
    /// No checks.
    pub fn off() -> RebindingGuard {
        RebindingGuard::default()
    }

    /// The defaults of a router listening on a loopback address: `Host` must be
    /// `localhost`, `127.0.0.1` or `[::1]` (any port); `Origin`, when present, must be
    /// `http` or `https` on one of those names (any port).
    pub fn loopback() -> RebindingGuard {
        let host = |h: &str| HostPattern {
            host: h.to_string(),
            port: None,
        };
        RebindingGuard {
            hosts: Some(LOOPBACK.iter().map(|h| host(h)).collect()),
            origins: Some(
                ["http", "https"]
                    .iter()
                    .flat_map(|s| {
                        LOOPBACK.iter().map(|h| OriginPattern {
                            scheme: s.to_string(),
                            host: host(h),
                        })
                    })
                    .collect(),
            ),
        }
    }

    /// Check a request's `Host` (`None`: absent) and its `Origin` values. `Err` is the
    /// message of the 403 answer.
    pub fn check<'a>(
        &self,
        host: Option<&[u8]>,
        mut origins: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), &'static str> {
        if let Some(hosts) = &self.hosts {
            let ok = host.is_none_or(|h| hosts.iter().any(|p| p.matches(h)));
            if !ok {
                return Err("Forbidden: Host not allowed");
            }
        }
        if let Some(allowed) = &self.origins {
            if !origins.all(|o| allowed.iter().any(|p| p.matches(o))) {
                return Err("Forbidden: Origin not allowed");
            }
        }
        Ok(())
    }
}

/// How the router reads a request it may forward: the era and the session it routes by.
#[derive(Debug)]
pub(crate) struct Reading<'a> {
    /// `MCP-Protocol-Version` names the stateless era: no session, and no
    /// `Mcp-Session-Id` is forwarded.
    pub stateless: bool,
    /// The session id named (header, or legacy query), not yet validated: the caller
    /// makes a [`SessionKey`](crate::mcp::SessionKey) of it, or opens it as a sealed id, without a copy.
    pub session: Option<Cow<'a, [u8]>>,
}

/// A request the router answers itself: status, JSON-RPC code, message.
pub(crate) type Refusal = (u16, ErrorCode, &'static str);

/// Read a request once, the way the backend will: refuse what the router and the
/// backend could read two ways (400), refuse a foreign `Host` or `Origin` (403), and
/// otherwise name the session to route by.
///
/// - Header conflicts and dot segments: [`RequestHead::conflict`].
/// - DNS rebinding: [`RebindingGuard::check`]; the 403 body has code -32000, as the
///   TypeScript SDK's own Host/Origin validation answers, and "The HTTP response body
///   MAY comprise a JSON-RPC error response that has no `id`" (2025-11-25), so the
///   caller does not read the body for an id.
/// - The legacy query session (POST only, as the legacy transport posts every message
///   to the endpoint URI) is read strictly ([`query_session_id_strict`]), and when the
///   request also carries `Mcp-Session-Id` the two must be the same id: one header,
///   one query parameter, one session.
/// - The stateless era (2026-07-28): "No `initialize`, no `Mcp-Session-Id`", and a
///   modern server "ignores any `Mcp-Session-Id` it is sent". The router does not look
///   the id up, so it does not forward it either (a dual-era backend would otherwise
///   act on a session the router never checked); a legacy query session id in such a
///   request has no reading the router could route by, and is refused.
pub(crate) fn read_request<'a>(req: &'a RequestHead, cfg: &Config) -> Result<Reading<'a>, Refusal> {
    let bad = |msg| (400, ErrorCode::InvalidRequest, msg);
    if let Some(why) = req.conflict() {
        return Err(bad(why));
    }
    cfg.rebinding
        .check(req.known(Name::Host), req.all(Name::Origin))
        .map_err(|msg| (403, ErrorCode::Server, msg))?;
    let stateless = req
        .known(Name::McpProtocolVersion)
        .is_some_and(is_stateless_version);
    let query = match req.query() {
        Some(q) if req.method == Method::Post => query_session_id_strict(q).map_err(bad)?,
        _ => None,
    };
    if stateless {
        if query.is_some() {
            return Err(bad("Stateless-era request carries a legacy session id"));
        }
        return Ok(Reading {
            stateless,
            session: None,
        });
    }
    let raw = match (req.known(Name::McpSessionId), query) {
        (Some(h), Some(q)) if h != &q[..] => {
            return Err(bad("Mcp-Session-Id and the query session id disagree"))
        }
        (Some(h), _) => Some(Cow::Borrowed(h)),
        (None, q) => q,
    };
    Ok(Reading {
        stateless,
        session: raw,
    })
}

/// What a 2026-07-28 body is compared with: `Mcp-Name` and `MCP-Protocol-Version` as
/// sent (`Mcp-Method` is compared with the sniffed `method` afterwards).
pub(crate) fn expect_of(req: &RequestHead) -> Expect<'_> {
    Expect {
        name: Mirror::of(req.known(Name::McpTarget).unwrap_or_default()),
        version: Mirror::Plain(req.known(Name::McpProtocolVersion).unwrap_or_default()),
    }
}

/// Methods whose target the client mirrors into `Mcp-Name`, and the `params` member it
/// mirrors (`true`: `params.uri`, `false`: `params.name`). 2026-07-28, Standard Request
/// Headers: "`Mcp-Name` | `params.name` or `params.uri` | `tools/call`,
/// `resources/read`, `prompts/get` requests".
fn named_target(method: &[u8]) -> Option<bool> {
    match method {
        b"tools/call" | b"prompts/get" => Some(false),
        b"resources/read" => Some(true),
        _ => None,
    }
}

/// Check a 2026-07-28 POST, its body read to the end by `s` (fed with
/// [`expect_of`]`(req)`), before any backend sees it. The router routes such requests
/// without a session, and the headers exist so that it and other intermediaries can
/// ("The Streamable HTTP transport mirrors selected JSON-RPC body fields into HTTP
/// headers so that intermediaries (load balancers, gateways, observability tooling)
/// can route and inspect requests without parsing the body"); the router reads the
/// body anyway, so it holds each request to one reading:
///
/// - "The body of the HTTP POST **MUST** be a single JSON-RPC _request_ or
///   _notification_. The client **MUST NOT** send JSON-RPC _responses_." Not JSON:
///   400 -32700; a batch, a scalar, an object without a string `method` (a response):
///   400 -32600. A tracked member twice (`method`, `id`, `params`, `params.name`,
///   `params.uri`, `params._meta`, the `_meta` version; see
///   [`Sniffer::has_duplicate`]): 400 -32600, as parsers disagree on which counts.
/// - "Servers that process the request body **MUST** reject requests where the values
///   specified in the headers do not match the corresponding values in the request
///   body." and "When rejecting a request due to header validation failure, servers
///   **MUST** return HTTP status `400 Bad Request` and **MUST** include a JSON-RPC
///   error response using the following error code: `-32020` `HeaderMismatch`".
///   Validation failure conditions: "A required standard header
///   (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) is missing.", "A header value
///   does not match the corresponding request body value.", "A header value contains
///   invalid characters." So, for a request (a message with an `id`):
///   - `Mcp-Method` must be present once and equal `method`. "Header _values_ (such as
///     method names) are case-sensitive." A `method` longer than
///     [`Sniffer::MAX_METHOD`] bytes is not kept, so it cannot be compared: -32020.
///   - "The header value **MUST** match the `io.modelcontextprotocol/protocolVersion`
///     field carried in the request body's `_meta`. If the values do not match, the
///     server **MUST** reject the request with `400 Bad Request` and a
///     `HeaderMismatch` JSON-RPC error": `params._meta` must carry it, equal.
///   - For `tools/call` and `prompts/get` `Mcp-Name` must equal `params.name`, for
///     `resources/read` `params.uri`; "servers **MUST** decode an encoded `Mcp-Name`
///     or `Mcp-Param-{Name}` value before comparing it to the corresponding request
///     body value" ([`Mirror`]). A body without that member needs no header (there is
///     nothing to mirror); a header with no member to match is a mismatch. The
///     comparison keeps no copy (see [`Expect`]), so no length bound applies beyond
///     the head size limit (`max_head`): a body value longer than the header's can
///     only differ.
///
///   "header requirements for notification POSTs are not defined by this revision":
///   for a notification a missing header or `_meta` version is not refused, but a
///   header that is present must match, as for a request.
/// - `Mcp-Param-{Name}` headers are not checked: "Intermediate servers that do not
///   recognize an `Mcp-Param-{Name}` header **MUST** forward it and otherwise ignore
///   it"; the router recognizes none (it does not know the tools' schemas).
///
/// Intermediaries "are not required to return a JSON-RPC error response"; the router
/// returns one anyway, echoing the request id, so that an SDK probing `server/discover`
/// recognizes a modern error and does not fall back to `initialize`.
pub(crate) fn check_mirrored(req: &RequestHead, s: &Sniffer) -> Result<(), Refusal> {
    let invalid = |msg| Err((400, ErrorCode::InvalidRequest, msg));
    let mismatch = |msg| Err((400, ErrorCode::HeaderMismatch, msg));
    if s.failed() {
        return Err((400, ErrorCode::Parse, "Parse error: the body is not JSON"));
    }
    if s.is_batch() {
        return invalid("A 2026-07-28 body is one JSON-RPC request or notification, not a batch");
    }
    let Some(method) = s.method() else {
        if s.method_too_long() {
            return mismatch("Header mismatch: method too long to compare with Mcp-Method");
        }
        return invalid("The body is not a JSON-RPC request or notification");
    };
    if s.has_duplicate() {
        return invalid("A JSON-RPC member appears twice in the body");
    }
    let request = s.has_id();
    let expect = expect_of(req);
    let twice = |name| req.all(name).nth(1).is_some();
    match req.known(Name::McpMethod) {
        _ if twice(Name::McpMethod) => {
            return mismatch("Header mismatch: more than one Mcp-Method header")
        }
        None if request => return mismatch("Header mismatch: Mcp-Method header missing"),
        None => {}
        Some(h) if Mirror::Plain(h).len().is_none() => {
            return mismatch("Header mismatch: Mcp-Method header has invalid characters")
        }
        Some(h) if h != method => {
            return mismatch("Header mismatch: Mcp-Method header does not match the body's method")
        }
        Some(_) => {}
    }
    match s.version(&expect) {
        Compared::Equal => {}
        Compared::Absent if !request => {}
        Compared::Absent => {
            return mismatch(
                "Header mismatch: params._meta carries no io.modelcontextprotocol/protocolVersion",
            )
        }
        Compared::NotString | Compared::Different => {
            return mismatch(
                "Header mismatch: MCP-Protocol-Version header does not match the body's _meta",
            )
        }
    }
    let header = req.known(Name::McpTarget);
    if twice(Name::McpTarget) {
        return mismatch("Header mismatch: more than one Mcp-Name header");
    }
    if header.is_some() && expect.name.len().is_none() {
        return mismatch("Header mismatch: Mcp-Name header is malformed");
    }
    let Some(uri) = named_target(method) else {
        return Ok(());
    };
    let body = if uri { s.uri(&expect) } else { s.name(&expect) };
    match (header, body) {
        (None, Compared::Absent) => Ok(()),
        (None, _) if !request => Ok(()),
        (None, _) => mismatch("Header mismatch: Mcp-Name header missing"),
        (Some(_), Compared::Equal) => Ok(()),
        (Some(_), _) => mismatch("Header mismatch: Mcp-Name header does not match the body"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chk(g: &RebindingGuard, host: Option<&str>, origin: Option<&str>) -> bool {
        g.check(
            host.map(str::as_bytes),
            origin.map(str::as_bytes).into_iter(),
        )
        .is_ok()
    }

    #[test]
    fn loopback_defaults() {
        let g = RebindingGuard::loopback();
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:1",
            "[::1]:9",
            "[::1]",
        ] {
            assert!(chk(&g, Some(h), None), "{h}");
        }
        for h in [
            "evil.example.com",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "127.0.0.2",
            "localhost:x",
            "localhost:8080:1",
            "[::1",
            "",
        ] {
            assert!(!chk(&g, Some(h), None), "{h}");
        }
        assert!(chk(&g, None, None), "no Host (HTTP/1.0): nothing to check");
        assert!(chk(&g, Some("localhost"), Some("http://localhost:3000")));
        assert!(chk(&g, Some("localhost"), Some("https://[::1]")));
        for o in [
            "http://evil.example.com",
            "null",
            "http://localhost.evil.com",
            "file://localhost",
            "localhost",
        ] {
            assert!(!chk(&g, Some("localhost"), Some(o)), "{o}");
        }
        // every Origin field must pass
        let two = [&b"http://localhost"[..], b"http://evil.example.com"];
        assert!(g.check(Some(b"localhost"), two.into_iter()).is_err());
    }

    #[test]
    fn patterns() {
        let h = HostPattern::parse("MCP.example.com:8443").unwrap();
        assert_eq!((h.host.as_str(), h.port), ("mcp.example.com", Some(8443)));
        assert!(h.matches(b"mcp.example.com:8443"));
        assert!(!h.matches(b"mcp.example.com"));
        assert!(!h.matches(b"mcp.example.com:443"));
        assert_eq!(HostPattern::parse("a:*").unwrap().port, None);
        assert!(HostPattern::parse("[::1]:80").unwrap().matches(b"[::1]:80"));
        for bad in ["", "a b", "a:x", "a:1:*", "a/b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        let o = OriginPattern::parse("https://app.example.com/").unwrap();
        assert!(o.matches(b"https://app.example.com"));
        assert!(o.matches(b"HTTPS://APP.example.com:444"));
        assert!(!o.matches(b"http://app.example.com"));
        for bad in ["app.example.com", "://x", "http://", "h t://x"] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(chk(&RebindingGuard::off(), None, Some("null")));
    }
}
