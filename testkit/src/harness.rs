//! End-to-end test harness shared by every frontend's suite: real processes on
//! 127.0.0.1 (fake backends, routers), log capture, and a raw HTTP/1.1 client.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary, building it first if it is missing.
pub fn bin_path(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir")
        .to_path_buf();
    let p = dir.join(name);
    static BUILD: Mutex<()> = Mutex::new(());
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // --workspace: the binary may belong to another package than the test's
        cmd.args(["build", "--workspace", "--bin", name]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "building {name} failed");
    }
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// The router frontends one behaviour suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// `mcp-router` (tokio).
    Tokio,
    /// `mcp-router-smol`.
    Smol,
    /// `mcp-router-glommio` (thread-per-core).
    Glommio,
}

impl Frontend {
    /// The binary's name.
    pub fn bin(self) -> &'static str {
        match self {
            Frontend::Tokio => "mcp-router",
            Frontend::Smol => "mcp-router-smol",
            Frontend::Glommio => "mcp-router-glommio",
        }
    }
}

thread_local! {
    static FRONTEND: std::cell::Cell<Option<Frontend>> = const { std::cell::Cell::new(None) };
}

/// Run `test` with `fe` as the frontend that [`router_bin`] names on this thread.
pub fn with_frontend(fe: Frontend, test: fn()) {
    FRONTEND.with(|f| f.set(Some(fe)));
    test();
}

/// The frontend of the running suite test. Panics outside one (a router started from
/// another thread than the test's would otherwise silently test the wrong binary).
pub fn frontend() -> Frontend {
    FRONTEND
        .with(|f| f.get())
        .expect("no frontend set on this thread: run the test through behaviour_suite!")
}

/// A fresh-enough scratch directory for one test: `tag`, the test process and the
/// frontend under test in its name (the suite runs a test's three frontend instances at
/// once, in one process, so a name without the frontend is shared between them).
pub fn test_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mcp-router-{tag}-{}-{}",
        std::process::id(),
        router_bin()
    ));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// The router binary of the running suite test.
pub fn router_bin() -> &'static str {
    frontend().bin()
}

/// Instantiate a behaviour suite: each listed `fn name()` runs once per frontend, as
/// `on_tokio::name`, `on_smol::name` and `on_glommio::name`.
#[macro_export]
macro_rules! behaviour_suite {
    ($($test:ident),* $(,)?) => {
        mod on_tokio {
            $( #[test] fn $test() { $crate::harness::with_frontend($crate::harness::Frontend::Tokio, super::$test) } )*
        }
        mod on_smol {
            $( #[test] fn $test() { $crate::harness::with_frontend($crate::harness::Frontend::Smol, super::$test) } )*
        }
        mod on_glommio {
            $( #[test] fn $test() { $crate::harness::with_frontend($crate::harness::Frontend::Glommio, super::$test) } )*
        }
    };
}

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A child process whose output is captured line by line; killed when dropped.
pub struct Proc {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    lines: Lines,
    name: String,
}

fn capture<R: Read + Send + 'static>(r: R, lines: Lines, tag: String) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("E2E_QUIET").is_none() {
                eprintln!("[{tag}] {line}");
            }
            let (m, cv) = &*lines;
            m.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            cv.notify_all();
        }
    });
}

impl Proc {
    /// Start a process and wait until a line of its output yields its address through
    /// `find_addr`.
    pub fn start(name: &str, mut cmd: Command, find_addr: fn(&str) -> Option<String>) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let lines: Lines = Arc::default();
        capture(
            child.stdout.take().expect("stdout"),
            lines.clone(),
            name.to_string(),
        );
        capture(
            child.stderr.take().expect("stderr"),
            lines.clone(),
            name.to_string(),
        );
        let mut p = Proc {
            child,
            addr: String::new(),
            lines,
            name: name.to_string(),
        };
        let addr = p.wait_line(Duration::from_secs(30), |l| find_addr(l).is_some());
        p.addr = addr.and_then(|l| find_addr(&l)).unwrap_or_else(|| {
            let _ = p.child.kill();
            panic!("{name} did not report its address; output: {:?}", p.logs())
        });
        p
    }

    /// A `mcp-fake-backend` named `name`.
    pub fn fake_backend(name: &str) -> Proc {
        let mut cmd = Command::new(bin_path("mcp-fake-backend"));
        cmd.args(["--listen", "127.0.0.1:0", "--name", name, "--tick-ms", "20"]);
        Proc::start(name, cmd, |l| {
            l.strip_prefix("LISTENING ").map(str::to_string)
        })
    }

    /// A router binary (`mcp-router` or another frontend's) with these arguments; it
    /// must listen on `127.0.0.1:0` and log `listen=<addr>`.
    pub fn router(bin: &str, name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin_path(bin));
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        Proc::start_router(name, cmd)
    }

    /// Start a router from a prepared command (extra environment, no `--listen` added).
    pub fn start_router(name: &str, mut cmd: Command) -> Proc {
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("NO_COLOR", "1");
        Proc::start(name, cmd, |l| {
            let i = l.find("listen=")?;
            let rest = &l[i + 7..];
            Some(
                rest.split_whitespace()
                    .next()?
                    .trim_matches('"')
                    .to_string(),
            )
        })
    }

    /// Every line captured so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Count captured lines containing `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    /// Wait up to `timeout` until at least `n` captured lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.lines;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.iter().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wait up to `timeout` for a captured line matching `pred` (which must not call
    /// back into this `Proc`).
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.lines;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = g.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (e.g. "TERM", "KILL", "STOP") with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(
            st.success(),
            "kill -{sig} {} ({}) failed",
            self.pid(),
            self.name
        );
    }

    /// Kill and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for the process to exit by itself, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new client connection to it.
    pub fn conn(&self) -> Conn {
        Conn::open(&self.addr)
    }

    /// `GET /stats` of a fake backend.
    pub fn stats(&self) -> Value {
        let r = self.conn().request("GET", "/stats", &[], "");
        assert_eq!(r.status, 200);
        r.json()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// POST a JSON-RPC message to `path`, with an optional session header.
pub fn post_json(conn: &mut Conn, path: &str, sid: Option<&str>, body: &Value) -> Response {
    let mut headers = vec![("Accept", "application/json, text/event-stream")];
    if let Some(sid) = sid {
        headers.push(("Mcp-Session-Id", sid));
    }
    conn.request("POST", path, &headers, &body.to_string())
}

/// A `tools/call` of the fake backend's `echo` tool (argument `i` = `id`) in session
/// `sid` over `c`.
pub fn tools_call(c: &mut Conn, sid: &str, id: u64) -> Response {
    post_json(
        c,
        "/mcp",
        Some(sid),
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"i":id}}}),
    )
}

/// The fake backend that answered `r` (it names itself in its results); empty when
/// the answer names none.
pub fn answered_by(r: &Response) -> String {
    r.json()["result"]["backend"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `initialize` without a session; returns the response and the minted session id.
pub fn initialize(conn: &mut Conn, id: Value) -> (Response, String) {
    let r = post_json(
        conn,
        "/mcp",
        None,
        &json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r
        .header("mcp-session-id")
        .expect("session header")
        .to_string();
    (r, sid)
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("bad JSON {e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive HTTP/1.1 connection (a deliberately small raw client: tests see
/// exactly the bytes on the wire).
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Unconsumed SSE text read from a streaming body.
    sse_buf: String,
    /// The address connected to, sent as `Host`.
    host: String,
}

impl Conn {
    pub fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            sse_buf: String::new(),
            host: addr.to_string(),
        }
    }

    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
        // The router's own address, as a client that connected to it would send (the
        // router refuses foreign Host values on loopback); a test's own Host wins.
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {}\r\n", self.host));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" || !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.writer.write_all(req.as_bytes()).unwrap();
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read line");
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    /// Reads a status line and headers.
    pub fn read_head(&mut self) -> Response {
        let status_line = self.read_line();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        Response {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// Next chunk of a chunked body; `None` at the last chunk.
    pub fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let size_line = self.read_line();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
        if size == 0 {
            // Trailer section: just the empty line here.
            while !self.read_line().is_empty() {}
            return None;
        }
        let mut chunk = vec![0; size];
        self.reader.read_exact(&mut chunk).unwrap();
        assert_eq!(self.read_line(), "", "chunk must end in CRLF");
        Some(chunk)
    }

    pub fn read_body(&mut self, head: &mut Response) {
        if head
            .header("transfer-encoding")
            .is_some_and(|te| te.contains("chunked"))
        {
            while let Some(c) = self.read_chunk() {
                head.body.extend_from_slice(&c);
            }
        } else if let Some(len) = head.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            head.body = body;
        } else {
            self.reader.read_to_end(&mut head.body).unwrap();
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response {
        self.send(method, path, headers, body);
        let mut r = self.read_head();
        self.read_body(&mut r);
        r
    }

    /// Next SSE event of a chunked streaming body, as (event type, data).
    /// `None` once the body has ended.
    pub fn next_event(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.sse_buf.find("\n\n") {
                let raw: String = self.sse_buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return Some((event, data));
            }
            let chunk = self.read_chunk()?;
            self.sse_buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    pub fn next_json_event(&mut self) -> Value {
        let (event, data) = self.next_event().expect("stream ended early");
        assert_eq!(event, "message");
        serde_json::from_str(&data).unwrap()
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Start `redis-server` on `port` (no persistence). Panics, loudly, when it cannot
/// start: tests that need Redis are never skipped.
/// What every test Redis runs with: loopback only, nothing written to disk.
pub const REDIS_EPHEMERAL: [&str; 6] = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

pub fn redis_server(port: u16) -> Proc {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()])
        .args(REDIS_EPHEMERAL);
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server is not installed (apt-get install -y redis-server; .ci/run does it)");
    }
    Proc::start("redis", cmd, |l| {
        l.contains("Ready to accept connections")
            .then(|| String::from("redis"))
    })
    .with_addr(format!("127.0.0.1:{port}"))
}

/// A `redis-server` speaking TLS on `tls_port` (and plain RESP on `plain_port`, for
/// the test's own checks), with a certificate for 127.0.0.1 signed by a certificate
/// authority made here with `openssl` in `dir`. Returns the server and the CA's PEM
/// path. Panics (loudly) when `openssl` or a TLS-enabled `redis-server` is missing.
pub fn redis_tls_server(tls_port: u16, plain_port: u16, dir: &std::path::Path) -> (Proc, String) {
    std::fs::create_dir_all(dir).unwrap();
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
            "-days",
            "2",
            "-subj",
            "/CN=mcp-router test CA",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("srv.key"),
            "-out",
            &p("srv.csr"),
            "-subj",
            "/CN=localhost",
        ],
        &[
            "x509",
            "-req",
            "-in",
            &p("srv.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("srv.crt"),
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (redis_tls_restart(tls_port, plain_port, dir), p("ca.crt"))
}

/// Start (again) the TLS `redis-server` of [`redis_tls_server`] with the certificate
/// already made in `dir`.
pub fn redis_tls_restart(tls_port: u16, plain_port: u16, dir: &std::path::Path) -> Proc {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &plain_port.to_string()])
        .args(["--tls-port", &tls_port.to_string()])
        .args([
            "--tls-cert-file",
            &p("srv.crt"),
            "--tls-key-file",
            &p("srv.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &p("ca.crt"),
            "--tls-auth-clients",
            "no",
        ])
        .args(REDIS_EPHEMERAL);
    Proc::start("redis-tls", cmd, |l| {
        l.contains("Ready to accept connections")
            .then(|| String::from("redis"))
    })
    .with_addr(format!("127.0.0.1:{plain_port}"))
}

impl Proc {
    fn with_addr(mut self, addr: String) -> Proc {
        self.addr = addr;
        self
    }
}

/// Send one command to Redis over a raw RESP connection; returns the reply as text
/// (`+OK` / `:3` / `$-1` / the bulk string).
pub fn redis_cmd(addr: &str, args: &[&str]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to redis");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let line = line.trim_end().to_string();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.parse().unwrap();
        if n < 0 {
            return "$-1".into();
        }
        let mut buf = vec![0; n as usize + 2];
        r.read_exact(&mut buf).unwrap();
        buf.truncate(n as usize);
        return String::from_utf8_lossy(&buf).into_owned();
    }
    if let Some(n) = line.strip_prefix('*') {
        // array of bulk strings (KEYS): join with newlines
        let n: i64 = n.parse().unwrap();
        let mut out = Vec::new();
        for _ in 0..n.max(0) {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let len: usize = l.trim_end()[1..].parse().unwrap();
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf).unwrap();
            buf.truncate(len);
            out.push(String::from_utf8_lossy(&buf).into_owned());
        }
        return out.join("\n");
    }
    line
}

/// Resident set size of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

impl Proc {
    /// The value of `field=` in the first captured line that has it (quotes removed).
    pub fn log_field(&self, field: &str, timeout: Duration) -> Option<String> {
        let key = format!("{field}=");
        let line = self.wait_line(timeout, |l| l.contains(&key))?;
        let rest = &line[line.find(&key)? + key.len()..];
        Some(
            rest.split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string(),
        )
    }
}

/// One request on a fresh connection to `addr`; `(status, body)`.
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut c = Conn::open(addr);
    let r = c.request(method, path, &[], "");
    (r.status, r.text())
}

/// Open a session's server-to-client stream (`GET /mcp` with `Accept:
/// text/event-stream`) on a new connection to `addr`; returns the connection, positioned
/// after the response head, and the head.
pub fn open_session_stream(addr: &str, sid: &str) -> (Conn, Response) {
    let mut g = Conn::open(addr);
    g.send(
        "GET",
        "/mcp",
        &[("Mcp-Session-Id", sid), ("Accept", "text/event-stream")],
        "",
    );
    let head = g.read_head();
    (g, head)
}

/// `tests/interop` (absolute), with its Node and Python dependencies installed by
/// `.ci/install-interop.sh`; fails loudly when they are not.
/// The official reference server, `server-everything`, in `mode` (`streamable` or
/// `sse`) on a free port, named `name` in the logs; needs `.ci/install-interop.sh`.
pub fn server_everything(mode: &str, name: &str) -> Proc {
    let dir = interop_dir();
    let port = free_port();
    let mut cmd = Command::new(dir.join("start-everything.sh"));
    cmd.args([mode, &port.to_string()]).current_dir(&dir);
    Proc::start(name, cmd, |l| {
        let l = l.trim();
        if l.contains("listening on port") || l.contains("running on port") {
            let port = l.rsplit(' ').next()?;
            return Some(format!("127.0.0.1:{port}"));
        }
        None
    })
}

/// The MCP conformance suite's `dns-rebinding-protection` request: `initialize` to
/// `addr` with `Host: <host>` and `Origin: http://<host>`.
pub fn rebinding_request(addr: &str, host: &str) -> Response {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"conformance-dns-rebinding-test","version":"1.0.0"}}}"#;
    let origin = format!("http://{host}");
    Conn::open(addr).request(
        "POST",
        "/mcp",
        &[
            ("Host", host),
            ("Origin", &origin),
            ("Accept", "application/json, text/event-stream"),
        ],
        init,
    )
}

pub fn interop_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/interop");
    assert!(
        d.join("node_modules/@modelcontextprotocol/server-everything")
            .is_dir()
            && d.join(".venv/bin/python").exists(),
        "interop dependencies missing: run `bash .ci/install-interop.sh` first"
    );
    d.canonicalize().expect("tests/interop")
}

/// Run an official-SDK client script from `tests/interop`: `script` with node when it
/// ends in `.mjs`, else with the interop venv's python. Returns its last stdout line
/// (the JSON summary) and its whole stdout; panics with both outputs unless it exited
/// 0 with `"ok": true`.
pub fn sdk_client(script: &str, args: &[&str]) -> (Value, String) {
    let dir = interop_dir();
    assert!(dir.join(script).exists(), "tests/interop/{script} missing");
    let mut cmd = if script.ends_with(".mjs") {
        Command::new("node")
    } else {
        Command::new(dir.join(".venv/bin/python"))
    };
    let out = cmd
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run SDK client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!("{script} {args:?}: no JSON summary; stdout {stdout:?} stderr {stderr:?}")
    });
    assert!(
        out.status.success() && v["ok"] == true,
        "{script} {args:?} failed: {stdout} stderr {stderr}"
    );
    (v, stdout)
}

impl Proc {
    /// A router (`router_bin()`) named `name` over named backends (`name=http://addr`),
    /// with an admin listener on a free port; the router and that admin address.
    pub fn router_with_admin(
        name: &str,
        backends: &[(&str, &Proc)],
        extra: &[&str],
    ) -> (Proc, String) {
        let mut args: Vec<String> = vec!["--admin-listen".into(), "127.0.0.1:0".into()];
        for (n, b) in backends {
            args.push("--backend".into());
            args.push(format!("{n}=http://{}", b.addr));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = Proc::router(router_bin(), name, &refs);
        let admin = r
            .log_field("admin", Duration::from_secs(5))
            .expect("admin address logged");
        (r, admin)
    }
}

/// The value of the metric line `series` (name and labels, as exposed) on the admin
/// listener `admin`; 0 when the series is absent.
pub fn metric_at(admin: &str, series: &str) -> f64 {
    let text = Conn::open(admin).request("GET", "/metrics", &[], "").text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Open and delete sessions through the router at `addr` until ten in a row succeed
/// (a glommio replica connects to Redis once per executor and answers 503 for a
/// moment); panics after 20 s.
pub fn warm(addr: &str) {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"warm","version":"0"}}});
    let end = Instant::now() + Duration::from_secs(20);
    let mut in_a_row = 0;
    while in_a_row < 10 {
        assert!(
            Instant::now() < end,
            "{addr} never served sessions steadily"
        );
        let mut c = Conn::open(addr);
        let resp = post_json(&mut c, "/mcp", None, &init);
        match resp.header("mcp-session-id") {
            Some(sid) if resp.status == 200 => {
                let sid = sid.to_string();
                let s = c
                    .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "")
                    .status;
                assert_eq!(s, 200, "warm-up DELETE through {addr}");
                in_a_row += 1;
            }
            _ => {
                in_a_row = 0;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
