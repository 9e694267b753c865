//! `mcp-router check` and the start-up probe: the requests that ask a backend whether
//! it speaks MCP, the reading of its answers, and the hints for the mistakes seen
//! often (a backend URL that names the MCP endpoint instead of the server's base).
//! Pure: the frontend connects, writes these bytes and hands back what it read.

use crate::config::Backend;

/// The handshake-era version the probe's `initialize` asks for.
pub const PROBE_HANDSHAKE_VERSION: &str = "2025-11-25";
/// The stateless revision `server/discover` is sent at.
pub const PROBE_MODERN_VERSION: &str = "2026-07-28";

/// The path a client's `POST /mcp` reaches on `b`.
pub fn mcp_path(b: &Backend) -> String {
    format!("{}/mcp", b.base_path.trim_end_matches('/'))
}

fn request(b: &Backend, method: &str, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    request_at(b, &mcp_path(b), method, extra, body)
}

fn request_at(
    b: &Backend,
    path: &str,
    method: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: mcp-router-check\r\nConnection: close\r\n",
        b.authority
    );
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

/// `initialize` with a throwaway client identity.
pub fn initialize_request(b: &Backend) -> Vec<u8> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{PROBE_HANDSHAKE_VERSION}","capabilities":{{}},"clientInfo":{{"name":"mcp-router-check","version":"{}"}}}}}}"#,
        env!("CARGO_PKG_VERSION")
    );
    request(
        b,
        "POST",
        &[("Accept", "application/json, text/event-stream")],
        &body,
    )
}

/// `DELETE` of the probe's session.
pub fn delete_request(b: &Backend, session: &str, version: &str) -> Vec<u8> {
    request(
        b,
        "DELETE",
        &[
            ("Mcp-Session-Id", session),
            ("MCP-Protocol-Version", version),
        ],
        "",
    )
}

/// `server/discover` at [`PROBE_MODERN_VERSION`].
pub fn discover_request(b: &Backend) -> Vec<u8> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"server/discover","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"{PROBE_MODERN_VERSION}","io.modelcontextprotocol/clientInfo":{{"name":"mcp-router-check","version":"{}"}},"io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#,
        env!("CARGO_PKG_VERSION")
    );
    request(
        b,
        "POST",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", PROBE_MODERN_VERSION),
            ("Mcp-Method", "server/discover"),
        ],
        &body,
    )
}

/// The era of the legacy HTTP+SSE transport.
pub const LEGACY_SSE_VERSION: &str = "2024-11-05";

/// `GET <base>/sse`: the legacy HTTP+SSE transport's stream (the probe closes it as
/// soon as the `endpoint` event came, which ends that session on the backend).
pub fn legacy_sse_request(b: &Backend) -> Vec<u8> {
    let path = format!("{}/sse", b.base_path.trim_end_matches('/'));
    request_at(b, &path, "GET", &[("Accept", "text/event-stream")], "")
}

/// The `endpoint` event of a legacy SSE stream read so far: `Some` once the head and
/// that event are in (`None` inside: not an event stream, or no such event yet).
pub fn legacy_endpoint(raw: &[u8]) -> Option<String> {
    let end = head_end(raw)?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
        return None;
    }
    if !head.contains("text/event-stream") {
        return None;
    }
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&raw[end..])
    } else {
        raw[end..].to_vec()
    };
    let text = String::from_utf8_lossy(&body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|e| {
            e.lines()
                .any(|l| l.trim_end() == "event: endpoint" || l.trim_end() == "event:endpoint")
        })
        .find_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|d| d.trim().to_string())
        })
        .filter(|_| text.contains("\n\n"))
}

/// What one HTTP answer was: status, content type, session id and the first
/// JSON-RPC message of the body (plain JSON, or the first SSE `data:` that parses).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`, as sent (empty if none).
    pub content_type: String,
    /// `Mcp-Session-Id`.
    pub session: Option<String>,
    /// The JSON-RPC message, if the body held one.
    pub message: Option<serde_json::Value>,
}

/// The end of an HTTP/1.1 response head in `raw`, if it is there.
fn head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Decode a chunked body as far as it goes.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return out };
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        let take = size.min(b.len());
        out.extend_from_slice(&b[..take]);
        if take < size || b.len() < size + 2 {
            return out;
        }
        b = &b[size + 2..];
    }
}

/// Read an answer from the bytes received so far. `Some` once it is complete enough to
/// judge: the head and, for JSON, the whole body (by `Content-Length`, or `closed`);
/// for an event stream, its first JSON-RPC message. `closed`: the peer closed.
pub fn read_answer(raw: &[u8], closed: bool) -> Option<HttpAnswer> {
    let end = head_end(raw)?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut a = HttpAnswer {
        status,
        ..HttpAnswer::default()
    };
    let (mut length, mut chunked) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => a.content_type = v.to_string(),
            "mcp-session-id" => a.session = Some(v.to_string()),
            "content-length" => length = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let body_raw = &raw[end..];
    let body = if chunked {
        dechunk(body_raw)
    } else {
        body_raw[..length.unwrap_or(body_raw.len()).min(body_raw.len())].to_vec()
    };
    let complete = closed || length.is_some_and(|n| body_raw.len() >= n) || status == 204;
    let ct = a.content_type.to_ascii_lowercase();
    if ct.starts_with("text/event-stream") {
        let text = String::from_utf8_lossy(&body);
        for event in text.split("\n\n") {
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) {
                if v.get("id").is_some() {
                    a.message = Some(v);
                    return Some(a);
                }
            }
        }
        return complete.then_some(a);
    }
    if !complete {
        return None;
    }
    if ct.starts_with("application/json") {
        a.message = serde_json::from_slice(&body).ok();
    }
    Some(a)
}

/// One backend's probe: what each step got.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Probe {
    /// Resolving or connecting failed: why.
    pub unreachable: Option<String>,
    /// The `initialize` answer (or the error reading it).
    pub initialize: Option<Result<HttpAnswer, String>>,
    /// The `DELETE` answer's status, if a session was minted.
    pub delete: Option<Result<u16, String>>,
    /// The `server/discover` answer.
    pub discover: Option<Result<HttpAnswer, String>>,
    /// `GET <base>/sse` sent an `endpoint` event (the legacy HTTP+SSE transport).
    pub legacy_sse: bool,
}

/// The protocol version an `initialize` answer agreed to, if it was an MCP answer.
pub fn handshake_version(a: &HttpAnswer) -> Option<String> {
    let v = a.message.as_ref()?.get("result")?.get("protocolVersion")?;
    v.as_str().map(str::to_string)
}

/// The versions a `server/discover` answer lists, if it was one.
pub fn discover_versions(a: &HttpAnswer) -> Option<Vec<String>> {
    let v = a
        .message
        .as_ref()?
        .get("result")?
        .get("supportedVersions")?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
    )
}

impl Probe {
    /// The eras the backend speaks: the handshake version it agreed to, and the
    /// versions `server/discover` listed.
    pub fn eras(&self) -> Vec<String> {
        let mut eras = Vec::new();
        if let Some(Ok(a)) = &self.initialize {
            if let Some(v) = handshake_version(a) {
                eras.push(v);
            }
        }
        if let Some(Ok(a)) = &self.discover {
            for v in discover_versions(a).unwrap_or_default() {
                if !eras.contains(&v) {
                    eras.push(v);
                }
            }
        }
        if self.legacy_sse && !eras.iter().any(|e| e == LEGACY_SSE_VERSION) {
            eras.push(format!("{LEGACY_SSE_VERSION}(sse)"));
        }
        eras
    }

    /// The backend answers MCP (a handshake or a discovery result).
    pub fn speaks_mcp(&self) -> bool {
        !self.eras().is_empty()
    }

    /// The answer to show for the line: the `initialize` one.
    fn shown(&self) -> Option<&HttpAnswer> {
        match &self.initialize {
            Some(Ok(a)) => Some(a),
            _ => None,
        }
    }
}

/// `http://host:port` of `b` (its URL without the base path).
pub fn origin_url(b: &Backend) -> String {
    if b.host.contains(':') {
        format!("http://[{}]:{}", b.host, b.port)
    } else {
        format!("http://{}:{}", b.host, b.port)
    }
}

/// The base-path mistake: `b`'s URL ends in `/mcp` (the URL MCP servers print for
/// their endpoint), and the endpoint that yields answered a non-JSON `404`, so the
/// backend does not serve `<base>/mcp`. The hint, if so.
pub fn base_path_hint(b: &Backend, status: u16, content_type: &str) -> Option<String> {
    let base = b.base_path.trim_end_matches('/');
    let json = content_type
        .to_ascii_lowercase()
        .starts_with("application/json");
    if status != 404 || json || !base.ends_with("/mcp") {
        return None;
    }
    let meant = base.strip_suffix("/mcp").unwrap_or("");
    Some(format!(
        "clients' /mcp reaches this backend as {base}/mcp; did you mean {}{meant} ?",
        origin_url(b)
    ))
}

/// Hints for what the probe saw.
pub fn hints(b: &Backend, p: &Probe) -> Vec<String> {
    let mut h = Vec::new();
    if let Some(why) = &p.unreachable {
        h.push(format!(
            "{why}: is the server running and listening on {}:{} ?",
            b.host, b.port
        ));
        return h;
    }
    match &p.initialize {
        Some(Err(e)) => h.push(format!("initialize: {e}")),
        Some(Ok(a)) => {
            if let Some(x) = base_path_hint(b, a.status, &a.content_type) {
                h.push(x);
            } else if handshake_version(a).is_none() && !p.speaks_mcp() {
                // (a backend that speaks only legacy SSE answers MCP: no hint)
                let ct = if a.content_type.is_empty() {
                    "no content type"
                } else {
                    &a.content_type
                };
                let what = match a.status {
                    401 | 403 => {
                        "the backend wants credentials the router does not send".to_string()
                    }
                    404 => format!(
                        "it answers HTTP but has no MCP endpoint at {} (404, {ct})",
                        mcp_path(b)
                    ),
                    _ => format!(
                        "it answers HTTP ({} {ct}) but not MCP at {}",
                        a.status,
                        mcp_path(b)
                    ),
                };
                h.push(what);
            }
        }
        None => {}
    }
    if let Some(Ok(a)) = &p.initialize {
        if handshake_version(a).is_some() && a.session.is_none() {
            h.push("no Mcp-Session-Id: sessions are not sticky (stateless server)".into());
        }
    }
    h
}

/// The line `check` prints for `b`.
pub fn line(b: &Backend, p: &Probe) -> String {
    let ok = p.speaks_mcp();
    let url = format!("{}{}", origin_url(b), b.base_path);
    let mut s = format!("{} {} {}", if ok { "OK  " } else { "FAIL" }, b.name, url);
    if p.unreachable.is_some() {
        s.push_str(" reachable=no");
    } else {
        s.push_str(" reachable=yes");
        match p.shown() {
            Some(a) => {
                s.push_str(&format!(" status={}", a.status));
                s.push_str(&format!(
                    " content-type={}",
                    if a.content_type.is_empty() {
                        "-".into()
                    } else {
                        a.content_type
                            .split(';')
                            .next()
                            .unwrap_or("")
                            .trim()
                            .to_string()
                    }
                ));
            }
            None => s.push_str(" status=- content-type=-"),
        }
        let eras = p.eras();
        s.push_str(&format!(
            " eras={}",
            if eras.is_empty() {
                "none".into()
            } else {
                eras.join(",")
            }
        ));
        if let Some(d) = &p.delete {
            match d {
                Ok(st) => s.push_str(&format!(" delete={st}")),
                Err(_) => s.push_str(" delete=failed"),
            }
        }
    }
    for h in hints(b, p) {
        s.push_str(" | hint: ");
        s.push_str(&h);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(url: &str) -> Backend {
        Backend::parse(url, Some("b")).unwrap()
    }

    #[test]
    fn requests_reach_what_clients_reach() {
        let r = String::from_utf8(initialize_request(&b("http://127.0.0.1:3001/mcp"))).unwrap();
        assert!(
            r.starts_with("POST /mcp/mcp HTTP/1.1\r\nHost: 127.0.0.1:3001\r\n"),
            "{r}"
        );
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["method"], "initialize");
        assert!(r.contains(&format!("Content-Length: {}\r\n", body.len())));
        let d = String::from_utf8(discover_request(&b("http://h:1"))).unwrap();
        assert!(
            d.starts_with("POST /mcp HTTP/1.1") && d.contains("MCP-Protocol-Version: 2026-07-28")
        );
        let body = d.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["method"],
            "server/discover"
        );
        let x = String::from_utf8(delete_request(&b("http://h:1"), "s1", "2025-11-25")).unwrap();
        assert!(x.starts_with("DELETE /mcp ") && x.contains("Mcp-Session-Id: s1\r\n"));
        assert!(!x.contains("Content-Length"));
    }

    #[test]
    fn answers_are_read_as_json_sse_or_chunked() {
        let j = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: abc\r\nContent-Length: 52\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":1}}";
        assert_eq!(read_answer(&j[..j.len() - 5], false), None, "incomplete");
        let a = read_answer(j, false).unwrap();
        assert_eq!((a.status, a.session.as_deref()), (200, Some("abc")));
        let ev = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"2025-06-18\"}}\n\n";
        let sse = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{ev}\r\n",
            ev.len()
        );
        let sse = sse.as_bytes();
        let a = read_answer(sse, false).expect("the first message is enough");
        assert_eq!(handshake_version(&a).as_deref(), Some("2025-06-18"));
        let html = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n<h1>nope</h1>";
        assert_eq!(read_answer(html, false), None, "no length: until close");
        let a = read_answer(html, true).unwrap();
        assert_eq!((a.status, a.message), (404, None));
    }

    fn answer(status: u16, ct: &str, msg: Option<serde_json::Value>) -> HttpAnswer {
        HttpAnswer {
            status,
            content_type: ct.into(),
            session: Some("s".into()),
            message: msg,
        }
    }

    #[test]
    fn the_legacy_endpoint_event_is_found() {
        let r = String::from_utf8(legacy_sse_request(&b("http://h:1/base"))).unwrap();
        assert!(
            r.starts_with("GET /base/sse HTTP/1.1\r\n") && r.contains("Accept: text/event-stream")
        );
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        let ev = "event: endpoint\ndata: /messages?sessionId=abc\n\n";
        assert_eq!(legacy_endpoint(head.as_bytes()), None);
        assert_eq!(
            legacy_endpoint(format!("{head}{}", &ev[..20]).as_bytes()),
            None
        );
        assert_eq!(
            legacy_endpoint(format!("{head}{ev}").as_bytes()).as_deref(),
            Some("/messages?sessionId=abc")
        );
        let html = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nevent: endpoint\ndata: x\n\n";
        assert_eq!(legacy_endpoint(html.as_bytes()), None);
    }

    #[test]
    fn hints_name_the_mistake() {
        let mistake = b("http://127.0.0.1:3001/mcp");
        let p = Probe {
            initialize: Some(Ok(answer(404, "text/html; charset=utf-8", None))),
            discover: Some(Ok(answer(404, "text/html", None))),
            ..Probe::default()
        };
        assert!(!p.speaks_mcp());
        let l = line(&mistake, &p);
        assert!(l.starts_with("FAIL b http://127.0.0.1:3001/mcp reachable=yes status=404 content-type=text/html eras=none"), "{l}");
        assert!(l.ends_with("hint: clients' /mcp reaches this backend as /mcp/mcp; did you mean http://127.0.0.1:3001 ?"), "{l}");
        // a JSON 404 is an MCP answer (an unknown session, say), not the mistake
        assert_eq!(base_path_hint(&mistake, 404, "application/json"), None);
        assert_eq!(base_path_hint(&b("http://h:1/api"), 404, "text/html"), None);
        assert_eq!(
            base_path_hint(&b("http://h:1/x/mcp"), 404, "").as_deref(),
            Some("clients' /mcp reaches this backend as /x/mcp/mcp; did you mean http://h:1/x ?")
        );
        // healthy
        let init =
            serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25"}});
        let disc = serde_json::json!({"jsonrpc":"2.0","id":2,"result":{"supportedVersions":["2025-11-25","2026-07-28"]}});
        let ok = Probe {
            initialize: Some(Ok(answer(200, "application/json", Some(init)))),
            delete: Some(Ok(200)),
            discover: Some(Ok(answer(200, "application/json", Some(disc)))),
            ..Probe::default()
        };
        assert_eq!(
            line(&b("http://127.0.0.1:3001"), &ok),
            "OK   b http://127.0.0.1:3001 reachable=yes status=200 content-type=application/json eras=2025-11-25,2026-07-28 delete=200"
        );
        // down
        let down = Probe {
            unreachable: Some("connection refused".into()),
            ..Probe::default()
        };
        let l = line(&b("http://127.0.0.1:9"), &down);
        assert!(
            l.starts_with("FAIL b http://127.0.0.1:9 reachable=no | hint: connection refused"),
            "{l}"
        );
        // HTTP but not MCP
        let web = Probe {
            initialize: Some(Ok(answer(200, "text/html", None))),
            ..Probe::default()
        };
        assert!(line(&b("http://h:1"), &web)
            .contains("hint: it answers HTTP (200 text/html) but not MCP at /mcp"));
    }
}
