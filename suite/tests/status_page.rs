//! The admin status page in a real browser (Debian's `chromium`, headless, driven
//! over the DevTools protocol on a pipe): after the official SDK clients ran through
//! the router in front of two `server-everything` replicas, the page loads with no
//! console error (its content security policy included), shows both backends and
//! their live sessions as `/?format=json` counts them, and its drain button drains a
//! backend (seen in `/metrics`) only once the right token is typed in.
//!
//! Needs `chromium` (`.ci/run` installs it) and `.ci/install-interop.sh`; without
//! them the test fails, loudly.

use mcp_router_testkit::harness::{
    free_port, router_bin, sdk_client, server_everything, Conn, Proc,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "page-token-51c2";

/// A DevTools-protocol client over `--remote-debugging-pipe` (messages are JSON
/// terminated by NUL, commands on the browser's fd 3, answers and events on fd 4).
struct Browser {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next: u64,
    events: Vec<Value>,
    session: Option<String>,
    _profile: std::path::PathBuf,
}

impl Browser {
    fn launch() -> Browser {
        let found = Command::new("sh")
            .args(["-c", "command -v chromium"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "chromium is not installed: `apt-get install -y chromium` (.ci/run does it)"
        );
        let profile = std::env::temp_dir().join(format!(
            "mcp-router-chromium-{}-{}",
            std::process::id(),
            free_port()
        ));
        // fd 3 <- our stdin pipe, fd 4 -> our stdout pipe; the browser's own output on stderr
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .args([
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-extensions",
                "--no-first-run",
                "--remote-debugging-pipe",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Browser {
            to: child.stdin.take().unwrap(),
            from: BufReader::new(child.stdout.take().unwrap()),
            child,
            next: 0,
            events: Vec::new(),
            session: None,
            _profile: profile,
        }
    }

    fn read(&mut self) -> Value {
        let mut buf = Vec::new();
        let n = self
            .from
            .read_until(0, &mut buf)
            .expect("read from chromium");
        assert!(n > 0, "chromium closed the pipe");
        buf.pop();
        serde_json::from_slice(&buf).expect("a DevTools message")
    }

    /// Send a command (to the attached page, if any) and wait for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        loop {
            let m = self.read();
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    /// Wait for an event named `method`.
    fn wait_event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i);
        }
        loop {
            let m = self.read();
            if m["method"] == method {
                return m;
            }
            self.events.push(m);
        }
    }

    /// Evaluate `js` in the page; its value.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Poll `js` until it is true (10 s).
    fn until(&mut self, js: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.eval(js) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("never true: {js}");
    }

    /// Console errors, uncaught exceptions and policy violations seen so far.
    fn errors(&mut self) -> Vec<Value> {
        // flush pending events
        self.call("Runtime.evaluate", json!({"expression": "1"}));
        self.events
            .iter()
            .filter(|e| {
                e["method"] == "Runtime.exceptionThrown"
                    || (e["method"] == "Runtime.consoleAPICalled"
                        && matches!(e["params"]["type"].as_str(), Some("error" | "assert")))
                    || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
            })
            .cloned()
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // a clean exit takes the browser's helper processes along
        let close = format!("{}\0", json!({"id": u64::MAX, "method": "Browser.close"}));
        let _ = self.to.write_all(close.as_bytes());
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn draining(admin: &str, b: &str) -> f64 {
    let m = Conn::open(admin).request("GET", "/metrics", &[], "").text();
    metric(
        &m,
        &format!("mcp_router_backend_draining{{backend=\"{b}\"}}"),
    )
}

fn status_page_in_a_browser() {
    let e0 = server_everything("streamable", "everything-0");
    let e1 = server_everything("streamable", "everything-1");
    let r = Proc::router(
        router_bin(),
        "router",
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
            "--backend",
            &format!("e0=http://{}", e0.addr),
            "--backend",
            &format!("e1=http://{}", e1.addr),
        ],
    );
    let admin = r
        .log_field("admin", Duration::from_secs(5))
        .expect("admin address logged");
    // the official SDK clients (each ends its session with DELETE) ...
    let base = format!("http://{}", r.addr);
    for script in ["ts_client.mjs", "py_client.py"] {
        sdk_client(script, &[&base, "streamable"]);
    }
    // ... and three live sessions
    for i in 0..3 {
        let init = json!({"jsonrpc":"2.0","id":i,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"status-page-test","version":"0"}}});
        let resp = r.conn().request(
            "POST",
            "/mcp",
            &[("Accept", "application/json, text/event-stream")],
            &init.to_string(),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let data: Value = serde_json::from_str(
        &Conn::open(&admin)
            .request("GET", "/?format=json", &[], "")
            .text(),
    )
    .unwrap();
    let want: Vec<(String, String)> = data["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["sessions"].to_string(),
            )
        })
        .collect();
    assert_eq!(want.len(), 2);
    assert_eq!(
        want.iter()
            .map(|(_, n)| n.parse::<u64>().unwrap())
            .sum::<u64>(),
        3,
        "{data}"
    );
    assert_eq!(
        data["sessions"]["ended"]["delete"], 2,
        "the SDK clients' DELETEs"
    );

    let mut b = Browser::launch();
    let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
    let attached = b.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    b.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
        b.call(domain, json!({}));
    }
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    );
    b.call("Page.navigate", json!({"url": format!("http://{admin}/")}));
    b.wait_event("Page.loadEventFired");
    // one auto-refresh round (every 2 s) too
    std::thread::sleep(Duration::from_millis(2500));
    let errors = b.errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let shown = b.eval(
        "[...document.querySelectorAll('#backends tr[data-backend]')]\
         .map(r => [r.dataset.backend, r.querySelector('.sessions').textContent])",
    );
    let shown: Vec<(String, String)> = serde_json::from_value(shown).unwrap();
    assert_eq!(shown, want, "the page shows what /?format=json counts");
    assert_eq!(
        b.eval("document.querySelector('#sessions').innerText.includes('ended (delete)\\t2')"),
        json!(true),
        "{}",
        b.eval("document.querySelector('#sessions').innerText")
    );
    let shot = b.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot["data"].as_str().unwrap(),
    )
    .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("status-page-{}.png", router_bin()));
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());

    // the drain button: a wrong token is refused and changes nothing
    let click = "document.querySelector('button[data-backend=\"e0\"]').click()";
    b.eval(&format!(
        "document.getElementById('token').value = 'wrong'; {click}"
    ));
    b.until("document.getElementById('msg').textContent.startsWith('401')");
    assert_eq!(draining(&admin, "e0"), 0.0);
    // (the browser logs the refused request as an error: the error watch above sees
    // what it should)
    let seen = b.errors();
    assert!(
        seen.iter().any(|e| e.to_string().contains("401")),
        "the refused request was not logged: {seen:#?}"
    );
    // the right one drains e0
    b.eval(&format!(
        "document.getElementById('token').value = '{TOKEN}'; {click}"
    ));
    b.until("document.getElementById('msg').textContent.startsWith('200')");
    assert_eq!(draining(&admin, "e0"), 1.0);
    assert_eq!(draining(&admin, "e1"), 0.0);
    b.until("document.querySelector('button[data-backend=\"e0\"]').dataset.action === 'undrain'");
    // the token was never stored
    assert_eq!(
        b.eval("localStorage.length + sessionStorage.length + document.cookie.length"),
        json!(0)
    );
    // and undrain puts it back
    b.eval(click);
    b.until("document.querySelector('button[data-backend=\"e0\"]').dataset.action === 'drain'");
    assert_eq!(draining(&admin, "e0"), 0.0);
}

mcp_router_testkit::behaviour_suite!(status_page_in_a_browser);
