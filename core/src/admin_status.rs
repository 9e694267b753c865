//! The status page of the admin listener (`GET /`) and its JSON twin
//! (`GET /?format=json`): one snapshot of the same state `/metrics` reads, rendered as
//! data or as one self-contained HTML page (no external assets; a small script
//! refreshes it and sends the drain buttons' requests with the token the operator
//! typed, which is never stored).

use super::{AdminAuth, StoreState};
use crate::conn::Limit;
use crate::metrics::{Metrics, WindowSummary};
use crate::router::Router;
use serde::Serialize;
use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Instant;

/// One backend on the page.
#[derive(Clone, Debug, Serialize)]
pub struct BackendRow {
    /// Its name.
    pub name: String,
    /// `http://host:port[/base]`.
    pub url: String,
    /// Not marked down.
    pub up: bool,
    /// Takes no new sessions.
    pub draining: bool,
    /// Live sessions routed to it by this process.
    pub sessions: u64,
    /// Its last minute: requests/s, upstream p50/p99, errors by kind.
    pub last_minute: WindowSummary,
}

/// The session store on the page.
#[derive(Clone, Debug, Serialize)]
pub struct StoreRow {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// Reachable now.
    pub reachable: bool,
    /// Its operations over the last minute: round-trip p50/p99, failures (`errors_5xx`).
    pub last_minute: WindowSummary,
}

/// One cap or quota and how full it is.
#[derive(Clone, Debug, Serialize)]
pub struct CapRow {
    /// The flag's name, with underscores (`max_connections`).
    pub name: &'static str,
    /// Its value (0: off).
    pub limit: u64,
    /// What it counts.
    pub unit: &'static str,
    /// How much of it is in use now, where the router can tell.
    pub used: Option<u64>,
    /// Times it was hit since the start, where it is counted.
    pub hits: Option<u64>,
}

/// Sessions: live now, started by era and ended by cause since the start.
#[derive(Clone, Debug, Serialize)]
pub struct SessionsRow {
    /// Live sessions routed by this process.
    pub active: u64,
    /// Started, by era.
    pub started: Vec<(&'static str, u64)>,
    /// Ended, by cause.
    pub ended: Vec<(&'static str, u64)>,
}

/// Everything the status page shows.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Per backend.
    pub backends: Vec<BackendRow>,
    /// The session store.
    pub store: StoreRow,
    /// Sessions.
    pub sessions: SessionsRow,
    /// Client connections open now.
    pub connections: u64,
    /// Caps and quotas.
    pub caps: Vec<CapRow>,
    /// Admin actions need a token.
    pub token_required: bool,
    /// Admin actions are possible at all.
    pub actions_enabled: bool,
}

/// Read the snapshot now.
pub fn snapshot(
    router: &Router,
    metrics: &Metrics,
    store: StoreState,
    auth: &AdminAuth,
    now: Instant,
) -> Snapshot {
    let backends: Vec<BackendRow> = router
        .status(now)
        .into_iter()
        .map(|m| {
            let b = &m.backend;
            BackendRow {
                url: format!("http://{}:{}{}", b.host, b.port, b.base_path),
                name: b.name.clone(),
                up: m.up,
                draining: m.draining,
                sessions: m.active_sessions,
                last_minute: metrics.backend_window(router, m.id, now),
            }
        })
        .collect();
    let active: u64 = backends.iter().map(|b| b.sessions).sum();
    let cfg = router.config();
    let l = &cfg.limits;
    let connections = router.connections() as u64;
    let cap = |name, limit: u64, unit, used, hit: Option<Limit>| CapRow {
        name,
        limit,
        unit,
        used,
        hits: hit.map(|h| metrics.limited_count(h)),
    };
    let caps = vec![
        cap(
            "max_connections",
            l.max_connections as u64,
            "client connections (this process)",
            Some(connections),
            Some(Limit::Connections),
        ),
        cap(
            "max_sessions",
            l.max_sessions,
            "live sessions (with Redis: the fleet's; used: this process's)",
            Some(active),
            Some(Limit::Sessions),
        ),
        cap(
            "client_max_sessions",
            l.client_max_sessions,
            "live sessions per client",
            None,
            Some(Limit::ClientSessions),
        ),
        cap(
            "client_session_rate",
            u64::from(l.client_session_rate),
            "new sessions per second per client",
            None,
            Some(Limit::ClientRate),
        ),
        cap(
            "client_session_burst",
            u64::from(l.client_session_burst),
            "new sessions a client may open at once",
            None,
            None,
        ),
        cap(
            "client_send_timeout_ms",
            cfg.timeouts.client_send.as_millis() as u64,
            "ms a client may leave a response unread",
            None,
            Some(Limit::ClientSend),
        ),
        cap(
            "body_idle_timeout_ms",
            cfg.timeouts.body_idle.as_millis() as u64,
            "ms a backend may leave a request body unread",
            None,
            Some(Limit::UpstreamSend),
        ),
        cap(
            "pool_max_idle",
            cfg.pool_max_idle as u64,
            "idle upstream connections per backend",
            None,
            None,
        ),
        cap(
            "max_head",
            cfg.http.max_head as u64,
            "bytes per request or response head",
            None,
            None,
        ),
        cap(
            "max_inspect_body",
            cfg.max_inspect_body as u64,
            "request-body bytes read to find a method",
            None,
            None,
        ),
        cap(
            "max_session_id_len",
            cfg.max_session_id_len as u64,
            "bytes per session id",
            None,
            None,
        ),
    ];
    Snapshot {
        backends,
        store: StoreRow {
            kind: store.kind,
            reachable: store.reachable,
            last_minute: metrics.store_window(now),
        },
        sessions: SessionsRow {
            active,
            started: metrics.sessions_started_by_era(),
            ended: metrics.sessions_ended_by_cause(),
        },
        connections,
        caps,
        token_required: auth.token.is_some(),
        actions_enabled: auth.actions_enabled(),
    }
}

/// The snapshot as JSON (one object; pairs as `{label: count}` maps).
pub fn json(s: &Snapshot) -> String {
    let pairs = |v: &[(&str, u64)]| {
        serde_json::Value::Object(
            v.iter()
                .map(|(k, n)| (k.to_string(), serde_json::Value::from(*n)))
                .collect(),
        )
    };
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["sessions"]["started"] = pairs(&s.sessions.started);
    v["sessions"]["ended"] = pairs(&s.sessions.ended);
    let mut out = v.to_string();
    out.push('\n');
    out
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v} ms"))
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
th{background:#f3f3f3}.up{color:#070}.down{color:#b00;font-weight:bold}.drain{color:#a60}\
#msg{margin-left:1em}.note{color:#666}";

const SCRIPT: &str = r#"
const tok = document.getElementById('token');
const msg = document.getElementById('msg');
async function refresh() {
  try {
    const r = await fetch('/', {cache: 'no-store'});
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    const fresh = doc.getElementById('status');
    if (fresh) document.getElementById('status').replaceWith(fresh);
  } catch (e) {
    msg.textContent = 'refresh failed: ' + e;
  }
}
document.addEventListener('click', async (ev) => {
  const b = ev.target.closest('button[data-action]');
  if (!b) return;
  const h = {'Content-Type': 'application/json'};
  if (tok.value) h['Authorization'] = 'Bearer ' + tok.value;
  const url = '/admin/backends/' + encodeURIComponent(b.dataset.backend) + '/' + b.dataset.action;
  const r = await fetch(url, {method: 'POST', headers: h, body: '{}'});
  msg.textContent = r.status + ': ' + (await r.text());
  await refresh();
});
setInterval(refresh, 2000);
"#;

fn csp_hash(text: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

/// The status page's response header fields: a content security policy that lets
/// only its own script and style run and its script talk to this listener, no
/// framing (the buttons must not be clickjacked), no caching.
pub fn page_headers() -> Vec<(&'static str, String)> {
    static CSP: OnceLock<String> = OnceLock::new();
    let csp = CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            csp_hash(SCRIPT),
            csp_hash(STYLE)
        )
    });
    vec![
        ("Content-Security-Policy", csp.clone()),
        ("X-Frame-Options", "DENY".into()),
        ("Cache-Control", "no-store".into()),
        ("Referrer-Policy", "no-referrer".into()),
    ]
}

/// The status page.
pub fn html(s: &Snapshot) -> String {
    let mut o = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = write_page(&mut o, s);
    o
}

fn write_page(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>mcp-router status</title><link rel=\"icon\" href=\"data:,\">\
         <style>{STYLE}</style></head><body>\n<h1>mcp-router status</h1>\n"
    )?;
    let tip = if !s.actions_enabled {
        "admin actions are off (admin listener not on loopback, no --admin-token)"
    } else if s.token_required {
        "drain/undrain need the admin token"
    } else {
        "no admin token set: drain/undrain allowed from loopback"
    };
    writeln!(
        o,
        "<p><label>Admin token <input type=\"password\" id=\"token\" autocomplete=\"off\"></label>\
         <span id=\"msg\" role=\"status\"></span> <span class=\"note\">{}</span></p>",
        esc(tip)
    )?;
    o.push_str("<div id=\"status\">\n<h2>Backends</h2>\n<table id=\"backends\"><tr><th>backend</th><th>url</th><th>health</th><th>draining</th><th>live sessions</th><th>req/s (1 min)</th><th>upstream p50</th><th>upstream p99</th><th>errors (1 min)</th><th></th></tr>\n");
    for b in &s.backends {
        let w = &b.last_minute;
        let (hc, ht) = if b.up { ("up", "up") } else { ("down", "down") };
        let (action, label) = if b.draining {
            ("undrain", "undrain")
        } else {
            ("drain", "drain")
        };
        writeln!(
            o,
            "<tr data-backend=\"{n}\"><td>{n}</td><td>{u}</td><td class=\"{hc}\">{ht}</td><td class=\"{dc}\">{d}</td>\
             <td class=\"sessions\">{ses}</td><td>{rps}</td><td>{p50}</td><td>{p99}</td>\
             <td>5xx: {e5}, 4xx: {e4}, marked down: {md}</td>\
             <td><button type=\"button\" data-backend=\"{n}\" data-action=\"{action}\">{label}</button></td></tr>",
            n = esc(&b.name),
            u = esc(&b.url),
            dc = if b.draining { "drain" } else { "" },
            d = if b.draining { "draining" } else { "no" },
            ses = b.sessions,
            rps = w.per_second,
            p50 = ms(w.p50_ms),
            p99 = ms(w.p99_ms),
            e5 = w.errors_5xx,
            e4 = w.errors_4xx,
            md = w.marked_down,
        )?;
    }
    o.push_str("</table>\n");
    let st = &s.store;
    write!(
        o,
        "<h2>Session store</h2>\n<table id=\"store\"><tr><th>kind</th><th>reachable</th><th>ops/s (1 min)</th><th>round trip p50</th><th>p99</th><th>failed (1 min)</th></tr>\n\
         <tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>\n",
        st.kind,
        if st.reachable { "up" } else { "down" },
        if st.reachable { "yes" } else { "no" },
        st.last_minute.per_second,
        ms(st.last_minute.p50_ms),
        ms(st.last_minute.p99_ms),
        st.last_minute.errors_5xx,
    )?;
    write!(
        o,
        "<h2>Sessions</h2>\n<table id=\"sessions\"><tr><th>live</th><td>{}</td></tr>\n",
        s.sessions.active
    )?;
    for (era, n) in &s.sessions.started {
        writeln!(o, "<tr><th>started ({era})</th><td>{n}</td></tr>")?;
    }
    for (cause, n) in &s.sessions.ended {
        writeln!(o, "<tr><th>ended ({cause})</th><td>{n}</td></tr>")?;
    }
    o.push_str("</table>\n<h2>Caps and quotas</h2>\n<table id=\"caps\"><tr><th>cap</th><th>value</th><th>in use</th><th>full</th><th>hit since start</th><th>counts</th></tr>\n");
    for c in &s.caps {
        let (used, full) = match c.used {
            Some(u) if c.limit > 0 => (
                u.to_string(),
                format!(
                    "<progress max=\"{}\" value=\"{}\"></progress> {}%",
                    c.limit,
                    u.min(c.limit),
                    u * 100 / c.limit
                ),
            ),
            Some(u) => (u.to_string(), "-".into()),
            None => ("-".into(), "-".into()),
        };
        writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"note\">{}</td></tr>",
            c.name,
            if c.limit == 0 { "off".to_string() } else { c.limit.to_string() },
            used,
            full,
            c.hits.map_or_else(|| "-".into(), |h| h.to_string()),
            esc(c.unit),
        )?;
    }
    write!(
        o,
        "</table>\n<p class=\"note\">client connections open: {}. Same data: <a href=\"/?format=json\">/?format=json</a>, <a href=\"/metrics\">/metrics</a>.</p>\n</div>\n<script>{SCRIPT}</script>\n</body></html>\n",
        s.connections
    )
}
