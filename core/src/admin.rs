//! The operating decisions every frontend shares: what the admin endpoints answer
//! (metrics, liveness, readiness, draining), and which backends DNS discovery yields.
//! Pure: the frontend serves the answers and does the resolving.

use crate::config::Backend;
use crate::http::Method;
use crate::metrics::Metrics;
use crate::router::Router;
use std::net::SocketAddr;
use std::time::Instant;

#[path = "admin_status.rs"]
pub mod status;

/// What an admin request gets.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra response header fields.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
    /// A backend's drain state changed: (name, draining), for the log.
    pub drained: Option<(String, bool)>,
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text(status: u16, body: impl Into<String>) -> AdminAnswer {
    AdminAnswer {
        status,
        content_type: TEXT,
        headers: Vec::new(),
        body: body.into(),
        drained: None,
    }
}

/// One admin request, as much of it as the admin answer looks at.
#[derive(Clone, Copy, Debug)]
pub struct AdminRequest<'a> {
    /// The method.
    pub method: Method,
    /// The request target: path and optional `?query`.
    pub target: &'a [u8],
    /// `Authorization`.
    pub authorization: Option<&'a [u8]>,
    /// `Origin`.
    pub origin: Option<&'a [u8]>,
    /// `Host`.
    pub host: Option<&'a [u8]>,
    /// `Content-Type`.
    pub content_type: Option<&'a [u8]>,
}

impl<'a> AdminRequest<'a> {
    /// A request with only a method and a target (no header fields).
    pub fn new(method: Method, target: &'a [u8]) -> AdminRequest<'a> {
        AdminRequest {
            method,
            target,
            authorization: None,
            origin: None,
            host: None,
            content_type: None,
        }
    }
}

/// Who may change state through the admin listener.
#[derive(Clone, Default)]
pub struct AdminAuth {
    /// `--admin-token`: state-changing requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The admin listener is bound to a loopback address.
    pub loopback: bool,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the token never reaches a log
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("loopback", &self.loopback)
            .finish()
    }
}

impl AdminAuth {
    /// Whether state-changing requests are possible at all (else each gets `403`).
    pub fn actions_enabled(&self) -> bool {
        self.token.is_some() || self.loopback
    }
}

/// Equal contents, compared in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    // digests first: the comparison's time depends on neither length nor content
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &[u8]) -> bool {
    let h = String::from_utf8_lossy(host).to_ascii_lowercase();
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':').map_or(h.as_str(), |(n, _)| n)
    };
    name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

fn refused(status: u16, why: &str) -> AdminAnswer {
    let mut a = text(status, format!("{why}\n"));
    if status == 401 {
        a.headers.push((
            "WWW-Authenticate",
            "Bearer realm=\"mcp-router admin\"".into(),
        ));
    }
    a
}

/// May this request change state? Reading (`GET`, `HEAD`) is always allowed. Anything
/// else is refused with `403` when it comes from a foreign `Origin` (a browser page of
/// another site) or carries a content type other than `application/json` (a form or a
/// `text/plain` "simple request", which browsers send cross-site without asking);
/// then it needs `Authorization: Bearer <token>` (`401` without it), unless no token
/// is set and the admin listener is on loopback, where it is allowed (from a browser,
/// one sending `Origin`, only when its `Host` names loopback: a DNS-rebound page names
/// its own host). With no token and a
/// listener off loopback, every action is refused (`403`).
pub fn authorize(req: &AdminRequest<'_>, auth: &AdminAuth) -> Result<(), AdminAnswer> {
    if matches!(req.method, Method::Get | Method::Head) {
        return Ok(());
    }
    if let Some(origin) = req.origin {
        let same = req.host.is_some_and(|h| {
            !h.is_empty()
                && (origin.strip_prefix(b"http://") == Some(h)
                    || origin.strip_prefix(b"https://") == Some(h))
        });
        if !same {
            return Err(refused(403, "forbidden: foreign Origin"));
        }
    }
    if let Some(ct) = req.content_type {
        let media = ct.split(|&b| b == b';').next().unwrap_or(&[]);
        if !media.trim_ascii().eq_ignore_ascii_case(b"application/json") {
            return Err(refused(
                403,
                "forbidden: admin actions take Content-Type: application/json (or none)",
            ));
        }
    }
    match &auth.token {
        Some(token) => {
            let given = req.authorization.and_then(|v| {
                let v = v.trim_ascii();
                (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
            });
            match given {
                Some(g) if same_secret(g, token.as_bytes()) => Ok(()),
                Some(_) => Err(refused(401, "unauthorized: wrong admin token")),
                None => Err(refused(
                    401,
                    "unauthorized: send Authorization: Bearer <admin token>",
                )),
            }
        }
        None if !auth.loopback => Err(refused(
            403,
            "forbidden: admin actions are off: the admin listener is not on loopback and no --admin-token is set",
        )),
        // A browser always sends Origin with a POST; a page whose name was re-pointed
        // at 127.0.0.1 (DNS rebinding) is same-origin with itself, but its Host is not
        // a loopback name.
        None if req.origin.is_some() && !req.host.is_some_and(is_loopback_host) => Err(refused(
            403,
            "forbidden: without --admin-token, admin actions from a browser need a loopback Host",
        )),
        None => Ok(()),
    }
}

/// Readiness: the session store is reachable and at least one backend is up. `Err`
/// says why not.
pub fn readiness(store_ready: bool, router: &Router, now: Instant) -> Result<(), &'static str> {
    match (store_ready, router.any_up(now)) {
        (true, true) => Ok(()),
        (false, false) => Err("session store unreachable; no backend up"),
        (false, true) => Err("session store unreachable"),
        (true, false) => Err("no backend up"),
    }
}

/// What the admin answer knows of the session store.
#[derive(Clone, Copy, Debug)]
pub struct StoreState {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// Reachable (the embedded store always is).
    pub reachable: bool,
}

/// `%XX` decoded (a backend name in a path: the page encodes `@` and `:`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answer one admin request: `GET /` (the status page; `/?format=json` its data),
/// `GET /metrics`, `GET /healthz`, `GET /readyz`, `POST /admin/backends/<name>/drain`
/// and `/undrain` (state-changing: see [`authorize`]).
pub fn answer(
    req: &AdminRequest<'_>,
    auth: &AdminAuth,
    router: &Router,
    metrics: &Metrics,
    store: StoreState,
    now: Instant,
) -> AdminAnswer {
    let target = String::from_utf8_lossy(req.target);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let method = req.method;
    let get = method == Method::Get;
    match path {
        "/" if get => {
            let s = status::snapshot(router, metrics, store, auth, now);
            if query.split('&').any(|p| p == "format=json") {
                AdminAnswer {
                    content_type: "application/json",
                    headers: vec![("Cache-Control", "no-store".into())],
                    ..text(200, status::json(&s))
                }
            } else {
                AdminAnswer {
                    content_type: "text/html; charset=utf-8",
                    headers: status::page_headers(),
                    ..text(200, status::html(&s))
                }
            }
        }
        "/metrics" if get => AdminAnswer {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..text(200, metrics.render(router, now))
        },
        "/healthz" if get => text(200, "ok\n"),
        "/readyz" if get => {
            // the Redis node in use (Sentinel: the primary followed), on a line of its own
            let node = metrics
                .store_node_name()
                .map(|n| {
                    format!(
                        "store node: {n}\nstore failovers followed: {}\n",
                        metrics.store_failovers_followed()
                    )
                })
                .unwrap_or_default();
            match readiness(store.reachable, router, now) {
                Ok(()) => text(200, format!("ready\n{node}")),
                Err(why) => text(503, format!("not ready: {why}\n{node}")),
            }
        }
        p if p.starts_with("/admin/backends/") && method == Method::Post => {
            let rest = &p["/admin/backends/".len()..];
            let (name, drain) = if let Some(n) = rest.strip_suffix("/drain") {
                (n, true)
            } else if let Some(n) = rest.strip_suffix("/undrain") {
                (n, false)
            } else {
                return text(404, "not found\n");
            };
            if let Err(refusal) = authorize(req, auth) {
                return refusal;
            }
            let name = percent_decode(name);
            if router.set_draining(&name, drain, now) {
                AdminAnswer {
                    drained: Some((name.clone(), drain)),
                    ..text(200, format!("{name}: draining={drain}\n"))
                }
            } else {
                text(404, format!("no backend named {name:?}\n"))
            }
        }
        "/" | "/metrics" | "/healthz" | "/readyz" => text(405, "method not allowed\n"),
        _ => text(404, "not found\n"),
    }
}

/// The members a discovery group resolved to: one per distinct address, in address
/// order, named `<group>@<ip>:<port>`.
pub fn discovered_members(group: &Backend, mut addrs: Vec<SocketAddr>) -> Vec<Backend> {
    addrs.sort();
    addrs.dedup();
    addrs.into_iter().map(|a| group.discovered(a)).collect()
}

/// The full backend set: the static backends, then every discovered member whose name
/// is not already taken.
pub fn all_backends(statics: &[Backend], discovered: &[Vec<Backend>]) -> Vec<Backend> {
    let mut all = statics.to_vec();
    for b in discovered.iter().flatten() {
        if !all.iter().any(|x| x.name == b.name) {
            all.push(b.clone());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;

    fn router() -> (Router, Instant) {
        let mut c = Config::default();
        c.backends
            .push(Backend::parse("http://127.0.0.1:1", Some("b0")).unwrap());
        c.backends
            .push(Backend::parse("http://127.0.0.1:2/mcp", Some("b@1")).unwrap());
        let t = Instant::now();
        (Router::new(Arc::new(c), t), t)
    }

    const MEM: StoreState = StoreState {
        kind: "memory",
        reachable: true,
    };

    fn loopback() -> AdminAuth {
        AdminAuth {
            token: None,
            loopback: true,
        }
    }

    #[test]
    fn admin_routes_and_readiness() {
        let (r, t) = router();
        let m = Metrics::new();
        let auth = loopback();
        let a = |meth, p: &str, store| {
            let mut req = AdminRequest::new(meth, p.as_bytes());
            req.host = Some(b"127.0.0.1:9");
            answer(
                &req,
                &auth,
                &r,
                &m,
                StoreState {
                    kind: "redis",
                    reachable: store,
                },
                t,
            )
        };
        assert_eq!(a(Method::Get, "/readyz", true).status, 200);
        let nr = a(Method::Get, "/readyz", false);
        assert_eq!(
            (nr.status, nr.body.as_str()),
            (503, "not ready: session store unreachable\n")
        );
        assert_eq!(a(Method::Get, "/healthz", false).status, 200);
        assert_eq!(a(Method::Post, "/metrics", true).status, 405);
        assert_eq!(a(Method::Post, "/", true).status, 405);
        assert_eq!(a(Method::Get, "/nope", true).status, 404);
        let d = a(Method::Post, "/admin/backends/b0/drain", true);
        assert_eq!((d.status, d.drained), (200, Some(("b0".into(), true))));
        // the page percent-encodes names
        let d = a(Method::Post, "/admin/backends/b%401/drain", true);
        assert_eq!((d.status, d.drained), (200, Some(("b@1".into(), true))));
        assert_eq!(
            a(Method::Post, "/admin/backends/zz/drain", true).status,
            404
        );
        assert!(a(Method::Get, "/metrics", true)
            .body
            .contains("mcp_router_backend_draining{backend=\"b0\"} 1"));
        r.connect_failed(crate::router::BackendId(0), t);
        r.connect_failed(crate::router::BackendId(1), t);
        assert_eq!(readiness(true, &r, t), Err("no backend up"));
    }

    fn post<'a>(target: &'a str) -> AdminRequest<'a> {
        let mut r = AdminRequest::new(Method::Post, target.as_bytes());
        r.host = Some(b"127.0.0.1:9901");
        r
    }

    #[test]
    fn actions_need_the_token_a_local_origin_and_json() {
        let token = AdminAuth {
            token: Some("s3cret".into()),
            loopback: true,
        };
        let open = loopback();
        let exposed = AdminAuth {
            token: None,
            loopback: false,
        };
        let verdict = |req: &AdminRequest<'_>, auth: &AdminAuth| match authorize(req, auth) {
            Ok(()) => 200,
            Err(a) => a.status,
        };
        let p = post("/admin/backends/b0/drain");
        // reading never needs anything
        let g = AdminRequest::new(Method::Get, b"/");
        assert_eq!(verdict(&g, &token), 200);
        assert_eq!(verdict(&g, &exposed), 200);
        // the token
        assert_eq!(verdict(&p, &token), 401, "no token");
        let no = authorize(&p, &token).unwrap_err();
        assert!(no.headers.iter().any(|(k, _)| *k == "WWW-Authenticate"));
        let wrong = AdminRequest {
            authorization: Some(b"Bearer nope"),
            ..p
        };
        assert_eq!(verdict(&wrong, &token), 401, "wrong token");
        let basic = AdminRequest {
            authorization: Some(b"Basic czNjcmV0"),
            ..p
        };
        assert_eq!(verdict(&basic, &token), 401, "not a bearer");
        let right = AdminRequest {
            authorization: Some(b"bearer  s3cret "),
            ..p
        };
        assert_eq!(verdict(&right, &token), 200);
        // loopback without a token: allowed, from a loopback Host only
        assert_eq!(verdict(&p, &open), 200);
        let rebound = AdminRequest {
            host: Some(b"evil.example:9901"),
            origin: Some(b"http://evil.example:9901"),
            ..p
        };
        assert_eq!(verdict(&rebound, &open), 403, "DNS rebinding");
        let script = AdminRequest {
            host: Some(b"test"),
            ..p
        };
        assert_eq!(verdict(&script, &open), 200, "curl, no Origin");
        for h in [&b"localhost:1"[..], b"[::1]:1", b"127.0.0.2"] {
            assert_eq!(verdict(&AdminRequest { host: Some(h), ..p }, &open), 200);
        }
        // off loopback without a token: no actions at all
        assert_eq!(verdict(&p, &exposed), 403);
        // a foreign Origin, even with the right token
        for origin in [
            &b"http://evil.example"[..],
            b"null",
            b"http://127.0.0.1:9902",
            b"https://127.0.0.1:99011",
        ] {
            let x = AdminRequest {
                origin: Some(origin),
                ..right
            };
            assert_eq!(
                verdict(&x, &token),
                403,
                "{:?}",
                String::from_utf8_lossy(origin)
            );
        }
        let same = AdminRequest {
            origin: Some(b"http://127.0.0.1:9901"),
            content_type: Some(b"application/json; charset=utf-8"),
            ..right
        };
        assert_eq!(verdict(&same, &token), 200);
        // a form or text/plain POST (what a browser sends cross-site without asking)
        for ct in [
            &b"text/plain"[..],
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
        ] {
            let x = AdminRequest {
                content_type: Some(ct),
                ..right
            };
            assert_eq!(verdict(&x, &token), 403);
        }
        // the refusal reaches the answer before any state changes
        let (r, t) = router();
        let m = Metrics::new();
        let a = answer(&p, &token, &r, &m, MEM, t);
        assert_eq!((a.status, a.drained), (401, None));
        assert!(!r.status(t)[0].draining);
        // and the token never shows in Debug
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn status_page_and_json_show_the_state_metrics_shows() {
        let (r, t) = router();
        let m = Metrics::new();
        let b0 = crate::router::BackendId(0);
        let k = crate::mcp::SessionKey::new(b"s", 10).unwrap();
        for i in 0..3u64 {
            r.session_started(b0);
            m.observe_at(
                &r,
                &crate::conn::Event::SessionStarted {
                    session: k.clone(),
                    backend: b0,
                    era: crate::store::Era::Streamable,
                },
                t,
            );
            m.observe_at(
                &r,
                &crate::conn::Event::Response {
                    backend: b0,
                    status: if i == 2 { 502 } else { 200 },
                    latency: std::time::Duration::from_millis(2 + 10 * i),
                },
                t + std::time::Duration::from_secs(i),
            );
        }
        m.observe_at(
            &r,
            &crate::conn::Event::SessionEnded {
                session: k,
                backend: b0,
                cause: crate::conn::EndCause::Deleted,
            },
            t,
        );
        r.session_ended(b0);
        r.set_draining("b@1", true, t);
        let auth = loopback();
        let now = t + std::time::Duration::from_secs(2);
        let req = AdminRequest::new(Method::Get, b"/?format=json");
        let j = answer(&req, &auth, &r, &m, MEM, now);
        assert_eq!((j.status, j.content_type), (200, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&j.body).unwrap();
        assert_eq!(v["backends"][0]["name"], "b0");
        assert_eq!(v["backends"][0]["sessions"], 2);
        assert_eq!(v["backends"][1]["draining"], true);
        assert_eq!(v["backends"][1]["url"], "http://127.0.0.1:2/mcp");
        let w = &v["backends"][0]["last_minute"];
        assert_eq!(w["requests"], 3);
        assert_eq!(w["per_second"], 1.0, "3 requests in the first 3 seconds");
        assert_eq!(w["errors_5xx"], 1);
        let (p50, p99) = (w["p50_ms"].as_f64().unwrap(), w["p99_ms"].as_f64().unwrap());
        assert!((12.0..=17.0).contains(&p50), "p50 {p50}");
        assert!((22.0..=34.0).contains(&p99), "p99 {p99}");
        assert_eq!(v["sessions"]["started"]["streamable"], 3);
        assert_eq!(v["sessions"]["ended"]["delete"], 1);
        assert_eq!(v["sessions"]["active"], 2);
        assert_eq!(v["store"]["kind"], "memory");
        let caps = v["caps"].as_array().unwrap();
        let ms = caps.iter().find(|c| c["name"] == "max_sessions").unwrap();
        assert_eq!(
            (ms["limit"].as_u64(), ms["used"].as_u64()),
            (Some(100_000), Some(2))
        );
        assert!(caps.iter().any(|c| c["name"] == "max_connections"));
        // a minute later the window is empty again; the totals stay
        let later = t + std::time::Duration::from_secs(90);
        let v: serde_json::Value =
            serde_json::from_str(&answer(&req, &auth, &r, &m, MEM, later).body).unwrap();
        assert_eq!(v["backends"][0]["last_minute"]["requests"], 0);
        assert_eq!(v["sessions"]["started"]["streamable"], 3);

        // the page: the same numbers, escaped, with the buttons and no external asset
        let page = answer(
            &AdminRequest::new(Method::Get, b"/"),
            &auth,
            &r,
            &m,
            MEM,
            now,
        );
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        let b = &page.body;
        assert!(b.contains("<td class=\"sessions\">2</td>"), "{b}");
        assert!(b.contains("data-backend=\"b@1\" data-action=\"undrain\""));
        assert!(b.contains("data-backend=\"b0\" data-action=\"drain\""));
        assert!(b.contains("5xx: 1"));
        assert!(
            b.contains("<td>max_sessions</td><td>100000</td><td>2</td>"),
            "{b}"
        );
        assert!(!b.contains("src=\"http") && !b.contains("href=\"http"));
        assert!(b.contains("type=\"password\" id=\"token\""));
        let csp = &page
            .headers
            .iter()
            .find(|(k, _)| *k == "Content-Security-Policy")
            .unwrap()
            .1;
        assert!(csp.contains("script-src 'sha256-") && csp.contains("connect-src 'self'"));
        // a hostile backend name cannot inject markup
        let mut c = Config::default();
        c.backends
            .push(Backend::parse("http://127.0.0.1:1", Some("<img>")).unwrap());
        let r2 = Router::new(Arc::new(c), t);
        let page = answer(
            &AdminRequest::new(Method::Get, b"/"),
            &auth,
            &r2,
            &m,
            MEM,
            now,
        );
        assert!(!page.body.contains("<img>") && page.body.contains("&lt;img&gt;"));
    }

    #[test]
    fn discovery_members_are_distinct_and_statics_win_names() {
        let g = Backend::parse("http://svc:8080", Some("mcp")).unwrap();
        let a: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let m = discovered_members(&g, vec![a, b, a]);
        let names: Vec<_> = m.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["mcp@10.0.0.1:8080", "mcp@10.0.0.2:8080"]);
        assert_eq!(
            (m[0].host.as_str(), m[0].authority.as_str()),
            ("10.0.0.1", "svc:8080")
        );
        let mut s = Backend::parse("http://10.9.9.9:1", None).unwrap();
        s.name = "mcp@10.0.0.1:8080".into();
        let all = all_backends(std::slice::from_ref(&s), &[m]);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].host, "10.9.9.9", "a static backend keeps its name");
    }
}
