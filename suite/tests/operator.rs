//! The operator's view (issue 19) on every frontend: admin actions need the token and
//! refuse foreign origins, `check` probes the backends and names the common mistakes,
//! the base-path mistake is logged at start, `--log-format json`.

use mcp_router_testkit::harness::{bin_path, initialize, router_bin, Conn, Proc};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "op-token-7f3a9c";

fn router(name: &str, args: &[&str]) -> (Proc, String) {
    let mut all = vec!["--admin-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let r = Proc::router(router_bin(), name, &all);
    let admin = r
        .log_field("admin", Duration::from_secs(5))
        .expect("admin address logged");
    (r, admin)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn get(admin: &str, path: &str) -> String {
    Conn::open(admin).request("GET", path, &[], "").text()
}

/// A POST with `Host: <admin>` (as a browser on the status page sends it) and exactly
/// these other header fields; its status.
fn page_post(admin: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut c = std::net::TcpStream::connect(admin).unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 2\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n{}");
    c.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {answer:?}"))
}

/// A POST as the status page's script sends it (JSON, `{}`), with extra headers.
fn action(admin: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    Conn::open(admin)
        .request("POST", path, headers, "{}")
        .status
}

fn draining(admin: &str, b: &str) -> f64 {
    metric(
        &get(admin, "/metrics"),
        &format!("mcp_router_backend_draining{{backend=\"{b}\"}}"),
    )
}

fn admin_actions_need_the_token() {
    let b0 = Proc::fake_backend("b0");
    let backend = format!("b0=http://{}", b0.addr);
    let mut cmd = Command::new(bin_path(router_bin()));
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--backend", &backend])
        .env("MCP_ROUTER_ADMIN_TOKEN", TOKEN);
    let r = Proc::start_router("router", cmd);
    let admin = r
        .log_field("admin", Duration::from_secs(5))
        .expect("admin address logged");
    let drain = "/admin/backends/b0/drain";
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(action(&admin, drain, &[]), 401, "no token");
    assert_eq!(
        action(&admin, drain, &[("Authorization", "Bearer wrong")]),
        401,
        "wrong token"
    );
    assert_eq!(draining(&admin, "b0"), 0.0);
    let origin = format!("http://{admin}");
    for (h, why) in [
        (("Origin", "http://evil.example"), "foreign Origin"),
        (("Origin", "null"), "opaque Origin"),
    ] {
        assert_eq!(
            action(&admin, drain, &[("Authorization", &bearer), h]),
            403,
            "{why}"
        );
    }
    // a text/plain POST, what a cross-site page may send without asking
    let status = page_post(
        &admin,
        drain,
        &[("Authorization", &bearer), ("Content-Type", "text/plain")],
    );
    assert_eq!(status, 403, "text/plain");
    assert_eq!(draining(&admin, "b0"), 0.0, "nothing refused changed state");
    // the right token, from the page's own origin
    let own = [
        ("Authorization", bearer.as_str()),
        ("Origin", origin.as_str()),
        ("Content-Type", "application/json"),
    ];
    assert_eq!(page_post(&admin, drain, &own), 200);
    assert_eq!(draining(&admin, "b0"), 1.0);
    assert_eq!(
        action(
            &admin,
            "/admin/backends/b0/undrain",
            &[("Authorization", &bearer)]
        ),
        200
    );
    assert_eq!(draining(&admin, "b0"), 0.0);
    // reading needs nothing
    assert!(get(&admin, "/?format=json").contains("\"token_required\":true"));
    // the token shows nowhere: logs, metrics, the page, --help
    std::thread::sleep(Duration::from_millis(200));
    let logs = r.logs().join("\n");
    assert!(logs.contains("admin request refused"), "{logs}");
    assert!(!logs.contains(TOKEN), "token in the logs");
    assert!(!get(&admin, "/metrics").contains(TOKEN));
    assert!(!get(&admin, "/").contains(TOKEN));
    let help = Command::new(bin_path(router_bin()))
        .arg("--help")
        .env("MCP_ROUTER_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--admin-token"), "{help}");
    assert!(!help.contains(TOKEN), "token in --help");
}

fn loopback_without_a_token_is_allowed() {
    let b0 = Proc::fake_backend("b0");
    let backend = format!("b0=http://{}", b0.addr);
    let (_r, admin) = router("router", &["--backend", &backend]);
    assert_eq!(action(&admin, "/admin/backends/b0/drain", &[]), 200);
    assert_eq!(draining(&admin, "b0"), 1.0);
    // but still not from a foreign page
    assert_eq!(
        action(
            &admin,
            "/admin/backends/b0/undrain",
            &[("Origin", "http://evil.example")]
        ),
        403
    );
    assert_eq!(draining(&admin, "b0"), 1.0);
    assert!(get(&admin, "/?format=json").contains("\"token_required\":false"));
}

/// An HTTP server that is not an MCP server: every request gets a small HTML page.
fn web_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = "<html><body>Welcome to the intranet</body></html>";
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// `<binary> check <args>`: (exit code, stdout).
fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin_path(router_bin()))
        .arg("check")
        .args(args)
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "---- {} check {args:?} -> {:?}\n{stdout}{}",
        router_bin(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in {out}"))
}

fn check_passes_a_healthy_fleet() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let (code, out) = check(&[
        "--backend",
        &format!("b0=http://{}", b0.addr),
        "--backend",
        &format!("b1=http://{}", b1.addr),
    ]);
    assert_eq!(code, 0, "{out}");
    for name in ["b0", "b1"] {
        let l = line(&out, name);
        assert!(l.starts_with("OK "), "{l}");
        assert!(
            l.contains("reachable=yes status=200 content-type=application/json eras=2025-"),
            "{l}"
        );
        assert!(
            l.contains("delete=200"),
            "the probe's session is deleted: {l}"
        );
    }
    // the throwaway sessions are gone from the backends
    assert_eq!(b0.stats()["sessions"], 0);
    // --check is the same thing
    let out = Command::new(bin_path(router_bin()))
        .args(["--check", "--backend", &format!("http://{}", b0.addr)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

fn check_names_the_base_path_mistake() {
    let b0 = Proc::fake_backend("b0");
    let (code, out) = check(&["--backend", &format!("b0=http://{}/mcp", b0.addr)]);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "b0");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(l.contains("status=404"), "{l}");
    let want = format!(
        "hint: clients' /mcp reaches this backend as /mcp/mcp; did you mean http://{} ?",
        b0.addr
    );
    assert!(l.contains(&want), "{l}");
}

fn check_fails_on_a_backend_that_is_down() {
    let b0 = Proc::fake_backend("b0");
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (code, out) = check(&[
        "--backend",
        &format!("b0=http://{}", b0.addr),
        "--backend",
        &format!("dead=http://{dead}"),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "b0").starts_with("OK "));
    let l = line(&out, "dead");
    assert!(
        l.starts_with("FAIL ") && l.contains("reachable=no") && l.contains("is the server running"),
        "{l}"
    );
}

fn check_fails_on_http_that_is_not_mcp() {
    let web = web_server();
    let (code, out) = check(&["--backend", &format!("web=http://{web}")]);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "web");
    assert!(
        l.starts_with("FAIL ")
            && l.contains("reachable=yes status=200 content-type=text/html eras=none")
            && l.contains("hint: it answers HTTP (200 text/html) but not MCP at /mcp"),
        "{l}"
    );
}

fn check_against_server_everything() {
    let st = mcp_router_testkit::harness::server_everything("streamable", "streamable");
    let sse = mcp_router_testkit::harness::server_everything("sse", "sse");
    let (code, out) = check(&[
        "--backend",
        &format!("st=http://{}", st.addr),
        "--backend",
        &format!("sse=http://{}", sse.addr),
    ]);
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "st");
    assert!(
        l.starts_with("OK ") && l.contains("content-type=text/event-stream eras=2025-"),
        "{l}"
    );
    assert!(l.contains("delete=200"), "{l}");
    let l = line(&out, "sse");
    assert!(
        l.starts_with("OK ") && l.contains("eras=2024-11-05(sse)"),
        "{l}"
    );
    // the mistake as a newcomer makes it: the URL the server prints
    let (code, out) = check(&["--backend", &format!("st=http://{}/mcp", st.addr)]);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "st");
    assert!(
        l.contains("status=404 content-type=text/html")
            && l.contains(&format!(
                "hint: clients' /mcp reaches this backend as /mcp/mcp; did you mean http://{} ?",
                st.addr
            )),
        "{l}"
    );
}

fn base_path_mistake_is_logged_once_at_start() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let r = Proc::router(
        router_bin(),
        "router",
        &[
            "--backend",
            &format!("b0=http://{}/mcp", b0.addr),
            "--backend",
            &format!("b1=http://{}", b1.addr),
        ],
    );
    let hint = format!("did you mean http://{} ?", b0.addr);
    assert!(
        r.wait_count(&hint, 1, Duration::from_secs(10)),
        "{:?}",
        r.logs()
    );
    // clients still get the backend's 404 (the router does not rewrite URLs) ...
    for i in 0..3 {
        let _ = r.conn().request(
            "POST",
            "/mcp",
            &[("Accept", "application/json, text/event-stream")],
            &json!({"jsonrpc":"2.0","id":i,"method":"initialize","params":{}}).to_string(),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    // ... and the log says it once
    assert_eq!(r.count_logs(&hint), 1, "{:?}", r.logs());
    assert_eq!(r.count_logs("did you mean"), 1, "b1 is fine");
}

fn base_path_mistake_of_a_reloaded_backend_is_logged_on_its_first_404() {
    let b0 = Proc::fake_backend("b0");
    let b1 = Proc::fake_backend("b1");
    let dir = std::env::temp_dir().join(format!(
        "mcp-router-operator-{}-{}",
        std::process::id(),
        mcp_router_testkit::harness::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("router.toml");
    std::fs::write(&file, format!("backends = [\"http://{}\"]\n", b1.addr)).unwrap();
    let r = Proc::router(
        router_bin(),
        "router",
        &["--config", file.to_str().unwrap()],
    );
    std::fs::write(
        &file,
        format!(
            "backends = [\"http://{}\", \"http://{}/mcp\"]\n",
            b1.addr, b0.addr
        ),
    )
    .unwrap();
    r.signal("HUP");
    assert!(r.wait_count("configuration reloaded", 1, Duration::from_secs(5)));
    let hint = format!("did you mean http://{} ?", b0.addr);
    assert_eq!(r.count_logs(&hint), 0, "no probe before its first 404");
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(
            r.conn()
                .request(
                    "POST",
                    "/mcp",
                    &[("Accept", "application/json, text/event-stream")],
                    &json!({"jsonrpc":"2.0","id":i,"method":"initialize","params":{}}).to_string(),
                )
                .status,
        );
    }
    assert!(statuses.contains(&404), "{statuses:?}");
    assert!(
        r.wait_count(&hint, 1, Duration::from_secs(10)),
        "{:?}",
        r.logs()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.count_logs(&hint), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn json_logs_are_one_object_per_line() {
    let b0 = Proc::fake_backend("b0");
    let mut cmd = Command::new(bin_path(router_bin()));
    cmd.args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--backend", &format!("b0=http://{}", b0.addr)])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let r = Proc::start("router", cmd, |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        v.get("listen")?.as_str().map(str::to_string)
    });
    let (_, sid) = initialize(&mut r.conn(), json!(1));
    assert!(r.wait_count("session started", 1, Duration::from_secs(5)));
    let lines = r.logs();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(
            v["level"].is_string() && v["message"].is_string() && v["timestamp"].is_string(),
            "{l}"
        );
    }
    let started: Value = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["message"] == "session started")
        .unwrap();
    // the same fields as the text line
    assert_eq!(started["session"], sid.as_str());
    assert_eq!(started["backend"], "b0");
    assert_eq!(started["era"], "Streamable");
}

mcp_router_testkit::behaviour_suite!(
    admin_actions_need_the_token,
    loopback_without_a_token_is_allowed,
    check_passes_a_healthy_fleet,
    check_names_the_base_path_mistake,
    check_fails_on_a_backend_that_is_down,
    check_fails_on_http_that_is_not_mcp,
    check_against_server_everything,
    base_path_mistake_is_logged_once_at_start,
    base_path_mistake_of_a_reloaded_backend_is_logged_on_its_first_404,
    json_logs_are_one_object_per_line,
);
