//! Router configuration: backends, limits and timeouts. Pure data; the frontends fill it
//! from CLI flags, a TOML file and `MCP_ROUTER_*` environment variables.

use crate::http::HttpLimits;
use crate::limits::{ClientIdentity, IpNet, Limits};
use crate::seal::KeyRing;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Largest `max_inspect_body` accepted (1 GiB).
pub const MAX_BODY_LIMIT: usize = 1 << 30;
/// Largest `max_head` accepted (1 MiB).
pub const MAX_HEAD_LIMIT: usize = 1 << 20;
/// Longest duration any setting may have: far beyond any sensible timeout, and far
/// from the point where `Instant + Duration` overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// One backend replica: where to connect and what to send as `Host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Stable name of the backend (used in logs, and by the shared store to name the
    /// backend a session belongs to). Defaults to `host:port`.
    pub name: String,
    /// Host name or IP literal to connect to (without brackets for IPv6).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Value sent as `Host` (`host:port`, IPv6 in brackets).
    pub authority: String,
    /// Base path prepended to every forwarded request target, without a trailing slash
    /// (empty for none).
    pub base_path: String,
    /// The protocol eras it serves (`;eras=` after its URL; default both).
    pub eras: Eras,
}

/// The protocol eras a backend serves: legacy (2024-11-05 .. 2025-11-25, sessions)
/// and modern (2026-07-28 and later, stateless).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eras {
    /// Serves the session eras.
    pub legacy: bool,
    /// Serves 2026-07-28 and later.
    pub modern: bool,
}

impl Default for Eras {
    fn default() -> Self {
        Eras::BOTH
    }
}

impl Eras {
    /// A dual-era backend (what a backend is unless configured otherwise).
    pub const BOTH: Eras = Eras {
        legacy: true,
        modern: true,
    };

    /// Parse a list of `modern` and `legacy` (at least one), separated by `,` or `+`
    /// (`+` where a comma already separates backends: `--backend`,
    /// `MCP_ROUTER_BACKENDS`).
    pub fn parse(s: &str) -> Result<Eras, ConfigError> {
        let mut e = Eras {
            legacy: false,
            modern: false,
        };
        for part in s.split([',', '+']) {
            match part.trim() {
                "modern" => e.modern = true,
                "legacy" => e.legacy = true,
                other => {
                    return Err(ConfigError(format!(
                        "eras {s:?}: {other:?} is not modern or legacy"
                    )))
                }
            }
        }
        Ok(e)
    }

    /// Whether it serves a request of the modern era (`true`) or a legacy one.
    pub fn serves(self, modern: bool) -> bool {
        if modern {
            self.modern
        } else {
            self.legacy
        }
    }
}

/// A configuration value that cannot be used. The text names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Backend {
    /// Parse a backend URL `http://host[:port][/base/path]`, optionally followed by
    /// `;eras=modern,legacy` (the eras it serves; default both). `name` defaults to
    /// `host:port`. Only `http` is accepted: TLS to backends is not implemented, and a
    /// URL that asks for it is refused rather than silently downgraded.
    pub fn parse(url: &str, name: Option<&str>) -> Result<Backend, ConfigError> {
        let (url, eras) = match url.rsplit_once(";eras=") {
            Some((u, e)) => (
                u,
                Eras::parse(e).map_err(|e| ConfigError(format!("backend {url:?}: {e}")))?,
            ),
            None => (url, Eras::BOTH),
        };
        let err = |why: &str| ConfigError(format!("backend URL {url:?}: {why}"));
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err(err("https backends are not supported (use http://)"));
        } else {
            return Err(err("must start with http://"));
        };
        let (hostport, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(err("must not carry a query or fragment"));
        }
        if hostport.contains('@') {
            return Err(err("must not carry user info"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| err("unclosed IPv6 bracket"))?;
            let host = &v6[..end];
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(err("garbage after IPv6 address")),
            };
            (host, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(err("invalid host"));
        }
        let port: u16 = match port {
            None => 80,
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err("invalid port"))?,
        };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let base_path = path.trim_end_matches('/').to_string();
        if base_path.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(err("invalid path"));
        }
        Ok(Backend {
            name: name
                .map(str::to_string)
                .unwrap_or_else(|| authority.clone()),
            host: host.to_string(),
            port,
            authority,
            base_path,
            eras,
        })
    }
}

impl Backend {
    /// The member for one address a DNS name resolved to: named `<name>@<ip>:<port>`
    /// (stable across replicas and resolutions), connecting to the address, sending
    /// this backend's `Host` and base path.
    pub fn discovered(&self, addr: std::net::SocketAddr) -> Backend {
        Backend {
            name: format!("{}@{}", self.name, addr),
            host: addr.ip().to_string(),
            port: addr.port(),
            authority: self.authority.clone(),
            base_path: self.base_path.clone(),
            eras: self.eras,
        }
    }
}

/// Timeouts the core enforces (it reads no clock: they are compared with the `now`
/// the driver passes in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A client has this long to send a complete request head once it sent its first
    /// byte (slowloris guard); past it the router answers 408 and closes.
    pub header: Duration,
    /// A keep-alive client connection with no request in flight is closed after this.
    pub client_idle: Duration,
    /// Connecting to a backend; past it the backend counts as failed.
    pub connect: Duration,
    /// From the end of the forwarded request to the backend's response head; past it
    /// the client gets 504.
    pub response: Duration,
    /// Longest silence inside a request or non-streaming response body before the
    /// exchange is aborted. SSE responses (`text/event-stream`) are exempt: they may be
    /// silent for hours.
    pub body_idle: Duration,
    /// An idle pooled backend connection is closed after this (keep it below the
    /// backends' own keep-alive timeout: Node.js defaults to 5 s).
    pub pool_idle: Duration,
    /// A write to the client that makes no progress for this long (the client does
    /// not read its response) closes the client connection and drops the backend
    /// connection unpooled; the session record stays. nginx's `send_timeout`,
    /// HAProxy's `timeout client`. The same bound applies to a backend that stops
    /// reading a request body, with `body_idle`.
    pub client_send: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            client_idle: Duration::from_secs(75),
            connect: Duration::from_secs(3),
            response: Duration::from_secs(300),
            body_idle: Duration::from_secs(60),
            pool_idle: Duration::from_secs(3),
            client_send: Duration::from_secs(60),
        }
    }
}

/// Everything the core needs to decide.
#[derive(Clone, Debug)]
pub struct Config {
    /// The backend replicas, in order; a [`crate::BackendId`] indexes this list.
    pub backends: Vec<Backend>,
    /// Idle lifetime of a session record; every request of the session slides it.
    pub session_ttl: Duration,
    /// Head size limits.
    pub http: HttpLimits,
    /// Longest session id accepted.
    pub max_session_id_len: usize,
    /// Most request-body bytes the router holds while it still needs to read them to
    /// decide (the JSON-RPC `method` of a request without a session). Past it: 413.
    pub max_inspect_body: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// First backoff after a backend fails; doubles per consecutive failure.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Period of the active health check (a TCP connect to each backend); `None`: off.
    pub health_check_interval: Option<Duration>,
    /// Records examined per expiry tick of the embedded store (bounded work per tick).
    pub expiry_batch: usize,
    /// Period of the embedded store's expiry tick.
    pub expiry_interval: Duration,
    /// A draining backend's sessions end this long after its drain began (their
    /// clients get `404`; the backend gets a `DELETE` for each, see [`crate::reap`]).
    pub drain_timeout: Duration,
    /// Ending sessions on their backend when the router ends them itself.
    pub reap: crate::reap::ReapSettings,
    /// Most idle pooled connections kept per backend.
    pub pool_max_idle: usize,
    /// Backend choices tried for one request that has no session yet (new sessions,
    /// stateless requests) when connecting fails.
    pub connect_attempts: usize,
    /// Caps on connections, sessions and session creation.
    pub limits: Limits,
    /// Who a client is, for the per-client quotas.
    pub client_identity: ClientIdentity,
    /// Proxies whose `X-Forwarded-For` is believed (`--client-identity xff`).
    pub trusted_proxies: Vec<IpNet>,
    /// What keys a stateless request's backend ([`crate::affinity`]); requests of a
    /// session always go to the session's backend.
    pub affinity: crate::affinity::Affinity,
    /// `Host` / `Origin` allow-lists checked before anything is forwarded (403 when a
    /// request fails them). Off by default here; the binaries turn the loopback lists
    /// on when they listen on a loopback address.
    pub rebinding: crate::guard::RebindingGuard,
    /// Send the backend's own authority as `Host` instead of the client's (which is
    /// forwarded unchanged by default, as HAProxy and Envoy do). `X-Forwarded-Host`
    /// carries the client's `Host` either way.
    pub rewrite_host: bool,
    /// Every backend serves only MCP 2026-07-28: the router answers `GET` and `DELETE`
    /// itself with `405` (`Allow: POST`) instead of forwarding them for the backend to
    /// refuse.
    pub modern_only: bool,
    /// How client-facing session ids are made: the backend's own (default) or sealed
    /// tokens ([`crate::seal`]).
    pub session_ids: SessionIds,
    /// The key ring of sealed session ids (required with [`SessionIds::Sealed`]).
    pub session_keys: Option<Arc<KeyRing>>,
    /// Absolute lifetime of a sealed session id, from its issue time.
    pub session_max_age: Duration,
    /// A session answers only the client that opened it (as `client_identity` names
    /// it): sealed ids carry the caller's digest, records store it.
    pub session_binding: bool,
    /// Sealed mode: keep session records in the store as well (precise `404` after
    /// `DELETE`, idle TTL, live-session counts). `false`: no store operation at all
    /// for a sealed session. Ignored in passthrough mode (records are how it routes).
    pub session_records: bool,
    /// `--failover reinitialize`: a session whose backend is down is initialized
    /// again on a healthy backend (None: off, the default). See [`crate::failover`].
    pub failover: Option<crate::failover::FailoverSettings>,
}

/// How client-facing session ids are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionIds {
    /// The backend's session id goes to the client unchanged; the router routes by
    /// its record in the store.
    #[default]
    Passthrough,
    /// The client gets a sealed token carrying the backend and the upstream id.
    Sealed,
}

impl SessionIds {
    /// Parse `passthrough` or `sealed`.
    pub fn parse(s: &str) -> Result<SessionIds, ConfigError> {
        match s {
            "passthrough" => Ok(SessionIds::Passthrough),
            "sealed" => Ok(SessionIds::Sealed),
            _ => Err(ConfigError(format!(
                "session_ids: {s:?}: expected passthrough or sealed"
            ))),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backends: Vec::new(),
            session_ttl: Duration::from_secs(2 * 3600),
            http: HttpLimits::default(),
            max_session_id_len: crate::mcp::MAX_SESSION_ID_LEN,
            max_inspect_body: 1024 * 1024,
            timeouts: Timeouts::default(),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            health_check_interval: None,
            expiry_batch: 4096,
            expiry_interval: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(600),
            reap: crate::reap::ReapSettings::default(),
            pool_max_idle: 64,
            connect_attempts: 3,
            limits: Limits::default(),
            client_identity: ClientIdentity::default(),
            trusted_proxies: Vec::new(),
            affinity: crate::affinity::Affinity::None,
            rebinding: crate::guard::RebindingGuard::off(),
            rewrite_host: false,
            modern_only: false,
            session_ids: SessionIds::Passthrough,
            session_keys: None,
            session_max_age: Duration::from_secs(24 * 3600),
            session_binding: false,
            session_records: true,
            failover: None,
        }
    }
}

impl Config {
    /// Check the values make sense together; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |f: &str, why: &str| Err(ConfigError(format!("{f}: {why}")));
        if self.backends.len() > u16::MAX as usize {
            return bad("backends", "too many backends");
        }
        for (i, b) in self.backends.iter().enumerate() {
            if self.backends[..i].iter().any(|o| o.name == b.name) {
                return bad("backends", &format!("duplicate backend name {:?}", b.name));
            }
            // a sealed id names its backend by this digest
            let d = crate::seal::name_digest(&b.name);
            if let Some(o) = self.backends[..i]
                .iter()
                .find(|o| crate::seal::name_digest(&o.name) == d)
            {
                return bad(
                    "backends",
                    &format!(
                        "backend names {:?} and {:?} share a digest: rename one",
                        o.name, b.name
                    ),
                );
            }
        }
        if self.session_ttl.is_zero() {
            return bad("session_ttl", "must be > 0");
        }
        if self.http.max_head < 1024 {
            return bad("max_head", "must be at least 1024 bytes");
        }
        if self.http.max_headers == 0 {
            return bad("max_headers", "must be > 0");
        }
        if !(1..=4096).contains(&self.max_session_id_len) {
            return bad("max_session_id_len", "must be 1..=4096");
        }
        // Upper bounds keep every sum and deadline of the core free of overflow
        // (`max_inspect_body + 1`, `now + timeout`), whatever a configuration says.
        if !(1024..=MAX_BODY_LIMIT).contains(&self.max_inspect_body) {
            return bad("max_inspect_body", "must be 1024 bytes ..= 1 GiB");
        }
        if self.http.max_head > MAX_HEAD_LIMIT {
            return bad("max_head", "must be at most 1 MiB");
        }
        if self.http.max_headers > 10_000 {
            return bad("max_headers", "must be at most 10000");
        }
        let t = &self.timeouts;
        for (f, d) in [
            ("header_timeout", t.header),
            ("client_idle_timeout", t.client_idle),
            ("connect_timeout", t.connect),
            ("response_timeout", t.response),
            ("body_idle_timeout", t.body_idle),
            ("pool_idle_timeout", t.pool_idle),
            ("client_send_timeout", t.client_send),
            ("session_ttl", self.session_ttl),
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
            ("expiry_interval", self.expiry_interval),
            ("drain_timeout", self.drain_timeout),
            ("reap_claim_interval", self.reap.claim_interval),
            ("reap_claim_lease", self.reap.claim_lease),
            ("session_max_age", self.session_max_age),
        ] {
            if d.is_zero() {
                return bad(f, "must be > 0");
            }
            if d > MAX_DURATION {
                return bad(f, "must be at most 365 days");
            }
        }
        if self.session_ids == SessionIds::Sealed && self.session_keys.is_none() {
            return bad(
                "session_keys",
                "sealed session ids need a key file (--session-keys FILE)",
            );
        }
        if self.session_ids == SessionIds::Sealed
            && self.max_session_id_len < crate::seal::token_len(1)
        {
            return bad(
                "max_session_id_len",
                "too short for a sealed session id (at least 87)",
            );
        }
        let r = &self.reap;
        if !(1..=1024).contains(&r.concurrency) {
            return bad("reap_concurrency", "must be 1..=1024");
        }
        if r.rate > 1_000_000 {
            return bad("reap_rate", "must be at most 1000000 (0: no limit)");
        }
        if !(1..=1 << 24).contains(&r.queue) {
            return bad("reap_queue", "must be 1..=16777216");
        }
        if !r.path.starts_with('/') || !r.path.bytes().all(|c| c.is_ascii_graphic()) {
            return bad("reap_path", "must start with / and be visible ASCII");
        }
        for (k, v) in &r.headers {
            let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
            if k.is_empty() || !k.bytes().all(token) {
                return bad("reap_header", &format!("{k:?}: not a header name"));
            }
            if !v
                .bytes()
                .all(|c| c == b' ' || c == b'\t' || c.is_ascii_graphic())
            {
                return bad("reap_header", &format!("{k}: value must be visible ASCII"));
            }
            if k.eq_ignore_ascii_case("host")
                || k.eq_ignore_ascii_case("mcp-session-id")
                || k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("connection")
                || k.eq_ignore_ascii_case("transfer-encoding")
            {
                return bad("reap_header", &format!("{k}: set by the router"));
            }
        }
        if let Some(h) = self.health_check_interval {
            if h.is_zero() || h > MAX_DURATION {
                return bad("health_check_interval", "must be > 0 and at most 365 days");
            }
        }
        let l = &self.limits;
        for (f, v, max) in [
            ("max_connections", l.max_connections as u64, 1 << 24),
            ("max_sessions", l.max_sessions, 1 << 40),
            ("client_max_sessions", l.client_max_sessions, 1 << 40),
            (
                "client_session_rate",
                u64::from(l.client_session_rate),
                1_000_000,
            ),
            (
                "client_session_burst",
                u64::from(l.client_session_burst),
                1_000_000,
            ),
            ("expiry_batch", self.expiry_batch as u64, 1 << 24),
            ("pool_max_idle", self.pool_max_idle as u64, 1 << 20),
            ("connect_attempts", self.connect_attempts as u64, 64),
        ] {
            if v > max {
                return bad(f, &format!("must be at most {max}"));
            }
        }
        if l.client_session_rate > 0 && l.client_session_burst == 0 {
            return bad(
                "client_session_burst",
                "must be > 0 when client_session_rate is set",
            );
        }
        if l.retry_after.is_zero() || l.retry_after > Duration::from_secs(3600) {
            return bad("retry_after", "must be 1 s ..= 1 h");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return bad("backoff", "need 0 < backoff_initial <= backoff_max");
        }
        if self.expiry_batch == 0 || self.expiry_interval.is_zero() {
            return bad("expiry", "expiry_batch and expiry_interval must be > 0");
        }
        if self.connect_attempts == 0 {
            return bad("connect_attempts", "must be > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_urls() {
        let b = Backend::parse("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            (
                b.host.as_str(),
                b.port,
                b.authority.as_str(),
                b.base_path.as_str()
            ),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "")
        );
        assert_eq!(b.name, "127.0.0.1:8080");
        let b = Backend::parse("http://mcp-0.mcp:80/api/", Some("pod0")).unwrap();
        assert_eq!((b.base_path.as_str(), b.name.as_str()), ("/api", "pod0"));
        let b = Backend::parse("http://[::1]:9000/x", None).unwrap();
        assert_eq!(
            (b.host.as_str(), b.authority.as_str()),
            ("::1", "[::1]:9000")
        );
        assert_eq!(Backend::parse("http://example", None).unwrap().port, 80);
        assert_eq!(
            Backend::parse("http://example", None).unwrap().eras,
            Eras::BOTH
        );
        let b = Backend::parse("http://a:1/mcp;eras=modern", Some("m")).unwrap();
        assert_eq!((b.base_path.as_str(), b.port), ("/mcp", 1));
        assert!(b.eras.modern && !b.eras.legacy);
        let b = Backend::parse("http://a:1;eras=legacy, modern", None).unwrap();
        assert_eq!(b.eras, Eras::BOTH);
        let b = Backend::parse("http://a:1;eras=modern+legacy", None).unwrap();
        assert_eq!(b.eras, Eras::BOTH);
        assert_eq!(b.authority, "a:1");
        for bad in [
            "http://a:1;eras=",
            "http://a:1;eras=new",
            "http://a:1;eras=modern,",
        ] {
            assert!(Backend::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_bad_backend_urls() {
        for u in [
            "https://a:1",
            "ftp://a",
            "a:1",
            "http://:80",
            "http://a:0",
            "http://a:70000",
            "http://a:1/p?q",
            "http://u@a:1",
            "http://a b:1",
        ] {
            let e = Backend::parse(u, None).unwrap_err();
            assert!(e.0.contains(u), "{e}");
        }
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = Config::default();
        c.backends.push(Backend::parse("http://a:1", None).unwrap());
        c.validate().unwrap();
        c.backends.push(Backend::parse("http://a:1", None).unwrap());
        assert!(c.validate().unwrap_err().0.contains("duplicate"));
        c.backends.pop();
        c.timeouts.connect = std::time::Duration::ZERO;
        assert!(c.validate().unwrap_err().0.starts_with("connect_timeout"));
        c.timeouts.connect = Duration::from_secs(1);
        c.validate().unwrap();
    }

    #[test]
    fn every_limit_has_a_bound_that_names_the_field() {
        let check = |f: &dyn Fn(&mut Config), field: &str| {
            let mut c = Config::default();
            f(&mut c);
            let e = c.validate().unwrap_err().0;
            assert!(e.starts_with(field), "{field}: {e}");
        };
        check(&|c| c.max_inspect_body = usize::MAX, "max_inspect_body");
        check(&|c| c.http.max_head = usize::MAX, "max_head");
        check(&|c| c.timeouts.response = Duration::MAX, "response_timeout");
        check(
            &|c| c.timeouts.client_send = Duration::ZERO,
            "client_send_timeout",
        );
        check(
            &|c| c.session_ttl = Duration::from_secs(u64::MAX),
            "session_ttl",
        );
        check(
            &|c| c.health_check_interval = Some(Duration::MAX),
            "health_check_interval",
        );
        check(
            &|c| c.limits.max_connections = usize::MAX,
            "max_connections",
        );
        check(&|c| c.limits.max_sessions = u64::MAX, "max_sessions");
        check(
            &|c| c.limits.client_session_rate = u32::MAX,
            "client_session_rate",
        );
        check(
            &|c| c.limits.client_session_burst = 0,
            "client_session_burst",
        );
        check(&|c| c.expiry_batch = usize::MAX, "expiry_batch");
        check(&|c| c.pool_max_idle = usize::MAX, "pool_max_idle");
    }
}
