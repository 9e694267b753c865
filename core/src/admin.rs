//! The operating decisions every frontend shares: what the admin endpoints answer
//! (metrics, liveness, readiness, draining), and which backends DNS discovery yields.
//! Pure: the frontend serves the answers and does the resolving.

use crate::config::Backend;
use crate::http::Method;
use crate::metrics::Metrics;
use crate::router::Router;
use std::net::SocketAddr;
use std::time::Instant;

/// What an admin request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
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
        body: body.into(),
        drained: None,
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

/// Answer one admin request: `GET /metrics`, `GET /healthz`, `GET /readyz`,
/// `POST /admin/backends/<name>/drain` and `/undrain`.
pub fn answer(
    method: Method,
    path: &[u8],
    router: &Router,
    metrics: &Metrics,
    store_ready: bool,
    now: Instant,
) -> AdminAnswer {
    let path = String::from_utf8_lossy(path);
    match (method, path.as_ref()) {
        (Method::Get, "/metrics") => AdminAnswer {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(router, now),
            drained: None,
        },
        (Method::Get, "/healthz") => text(200, "ok\n"),
        (Method::Get, "/readyz") => match readiness(store_ready, router, now) {
            Ok(()) => text(200, "ready\n"),
            Err(why) => text(503, format!("not ready: {why}\n")),
        },
        (Method::Post, p) if p.starts_with("/admin/backends/") => {
            let rest = &p["/admin/backends/".len()..];
            let (name, drain) = if let Some(n) = rest.strip_suffix("/drain") {
                (n, true)
            } else if let Some(n) = rest.strip_suffix("/undrain") {
                (n, false)
            } else {
                return text(404, "not found\n");
            };
            if router.set_draining(name, drain) {
                AdminAnswer {
                    drained: Some((name.to_string(), drain)),
                    ..text(200, format!("{name}: draining={drain}\n"))
                }
            } else {
                text(404, format!("no backend named {name:?}\n"))
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => text(405, "method not allowed\n"),
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

    #[test]
    fn admin_routes_and_readiness() {
        let mut c = Config::default();
        c.backends
            .push(Backend::parse("http://127.0.0.1:1", Some("b0")).unwrap());
        let t = Instant::now();
        let r = Router::new(Arc::new(c), t);
        let m = Metrics::new();
        let a = |meth, p: &str, store| answer(meth, p.as_bytes(), &r, &m, store, t);
        assert_eq!(a(Method::Get, "/readyz", true).status, 200);
        let nr = a(Method::Get, "/readyz", false);
        assert_eq!(
            (nr.status, nr.body.as_str()),
            (503, "not ready: session store unreachable\n")
        );
        assert_eq!(a(Method::Get, "/healthz", false).status, 200);
        assert_eq!(a(Method::Post, "/metrics", true).status, 405);
        assert_eq!(a(Method::Get, "/nope", true).status, 404);
        let d = a(Method::Post, "/admin/backends/b0/drain", true);
        assert_eq!((d.status, d.drained), (200, Some(("b0".into(), true))));
        assert_eq!(
            a(Method::Post, "/admin/backends/zz/drain", true).status,
            404
        );
        assert!(a(Method::Get, "/metrics", true)
            .body
            .contains("mcp_router_backend_draining{backend=\"b0\"} 1"));
        r.connect_failed(crate::router::BackendId(0), t);
        assert_eq!(readiness(true, &r, t), Err("no backend up"));
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
