//! `mcp-router check` (and the start-up probe of backends whose URL ends in `/mcp`):
//! blocking sockets on the calling thread carrying the core's probe requests
//! ([`mcp_router_core::probe`]) to each backend and its answers back. Shared by all
//! three binaries; no runtime.

use crate::config::Settings;
use mcp_router_core::probe::{self, HttpAnswer, Probe};
use mcp_router_core::Backend;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest wait for one probe answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read of one answer.
const MAX_ANSWER: usize = 256 * 1024;

fn resolve(b: &Backend) -> Result<Vec<SocketAddr>, String> {
    match (b.host.as_str(), b.port).to_socket_addrs() {
        Ok(a) => {
            let v: Vec<_> = a.collect();
            if v.is_empty() {
                Err(format!("{} resolves to no address", b.host))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("cannot resolve {}: {e}", b.host)),
    }
}

/// One exchange on a fresh connection.
fn exchange(addr: SocketAddr, req: &[u8], connect: Duration) -> Result<HttpAnswer, String> {
    let mut s = TcpStream::connect_timeout(&addr, connect).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return probe::read_answer(&raw, true)
                .ok_or_else(|| format!("no complete answer within {}s", ANSWER_TIMEOUT.as_secs()));
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => {
                return probe::read_answer(&raw, true)
                    .ok_or_else(|| "connection closed before an HTTP answer".to_string())
            }
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if let Some(a) = probe::read_answer(&raw, false) {
                    return Ok(a);
                }
                if raw.len() > MAX_ANSWER {
                    return probe::read_answer(&raw, true)
                        .ok_or_else(|| "answer too large".to_string());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// `GET <base>/sse`: does a legacy HTTP+SSE stream start with an `endpoint` event?
/// The connection is closed at once after it (ending that session on the backend).
fn legacy_sse(addr: SocketAddr, b: &Backend, connect: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, connect) else {
        return false;
    };
    if s.write_all(&probe::legacy_sse_request(b)).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut raw = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while raw.len() < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => return probe::legacy_endpoint(&raw).is_some(),
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if probe::legacy_endpoint(&raw).is_some() {
                    return true;
                }
                // a head that is not an event stream ends the wait
                if let Some(a) = probe::read_answer(&raw, false) {
                    if !a
                        .content_type
                        .to_ascii_lowercase()
                        .starts_with("text/event-stream")
                    {
                        return false;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Probe one backend: resolve, connect, `initialize` then `DELETE` its session,
/// `server/discover`, and `GET <base>/sse` (legacy HTTP+SSE).
pub fn probe_backend(b: &Backend, connect: Duration) -> Probe {
    let mut p = Probe::default();
    let addrs = match resolve(b) {
        Ok(a) => a,
        Err(e) => {
            p.unreachable = Some(e);
            return p;
        }
    };
    // the first address that takes a connection
    let mut addr = None;
    let mut last = String::new();
    for a in &addrs {
        match TcpStream::connect_timeout(a, connect) {
            Ok(_) => {
                addr = Some(*a);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let Some(addr) = addr else {
        p.unreachable = Some(last);
        return p;
    };
    let init = exchange(addr, &probe::initialize_request(b), connect);
    if let Ok(a) = &init {
        if let (Some(sid), Some(v)) = (&a.session, probe::handshake_version(a)) {
            p.delete =
                Some(exchange(addr, &probe::delete_request(b, sid, &v), connect).map(|d| d.status));
        }
    }
    p.initialize = Some(init);
    p.discover = Some(exchange(addr, &probe::discover_request(b), connect));
    p.legacy_sse = legacy_sse(addr, b, connect);
    p
}

/// Every backend `check` looks at: the static ones, then each member `--discover`
/// names resolve to now.
fn backends(settings: &Settings) -> Vec<Result<Backend, String>> {
    let mut v: Vec<Result<Backend, String>> =
        settings.core.backends.iter().cloned().map(Ok).collect();
    for g in &settings.discover {
        match (g.host.as_str(), g.port).to_socket_addrs() {
            Ok(addrs) => {
                let members = mcp_router_core::admin::discovered_members(g, addrs.collect());
                if members.is_empty() {
                    v.push(Err(format!(
                        "{}: {} resolves to no address",
                        g.name, g.host
                    )));
                }
                v.extend(members.into_iter().map(Ok));
            }
            Err(e) => v.push(Err(format!("{}: cannot resolve {}: {e}", g.name, g.host))),
        }
    }
    v
}

/// Run the check: one line per backend on `out`; `true` if every backend answers MCP.
pub fn run(settings: &Settings, out: &mut dyn Write) -> bool {
    let connect = settings.core.timeouts.connect;
    let mut all = true;
    let list = backends(settings);
    if list.is_empty() {
        let _ = writeln!(
            out,
            "FAIL no backends to check (--stdio serves a command instead)"
        );
        return settings.stdio.is_some();
    }
    for b in list {
        match b {
            Ok(b) => {
                let p = probe_backend(&b, connect);
                all &= p.speaks_mcp();
                let _ = writeln!(out, "{}", probe::line(&b, &p));
            }
            Err(e) => {
                all = false;
                let _ = writeln!(out, "FAIL {e}");
            }
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if all {
            "check: every backend answers MCP"
        } else {
            "check: some backends do not answer MCP"
        }
    );
    all
}

/// Probe `b` on a thread (off the request path) and log the base-path hint if its
/// `/mcp` answers a non-JSON `404`.
pub fn hint_base_path(b: Backend, connect: Duration) {
    let _ = std::thread::Builder::new()
        .name("mcp-probe".into())
        .spawn(move || {
            let p = probe_backend(&b, connect);
            if let Some(Ok(a)) = &p.initialize {
                if let Some(hint) = probe::base_path_hint(&b, a.status, &a.content_type) {
                    tracing::warn!(backend = %b.name, status = a.status, content_type = %a.content_type, "{hint}");
                }
            }
        });
}
