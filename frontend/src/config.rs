//! Configuration shared by every frontend binary (`mcp-router`, `mcp-router-smol`,
//! `mcp-router-glommio`): CLI flags, `MCP_ROUTER_*` environment variables and a TOML
//! file, merged in that order of precedence over the defaults.

use clap::Parser;
use mcp_router_core::guard::{HostPattern, OriginPattern, RebindingGuard};
use mcp_router_core::{Backend, Config, ConfigError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Session-sticky reverse proxy for MCP (Model Context Protocol) servers.
///
/// Durations take a unit: `150ms`, `30s`, `5m`, `2h` (a bare number means seconds).
/// Every flag can also be set by its environment variable or in the TOML file given
/// with --config (same names, with underscores: `session_ttl = "2h"`). Precedence:
/// flag, then environment, then file, then default.
#[derive(Parser, Debug, Default, Clone)]
#[command(name = "mcp-router", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "MCP_ROUTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on for MCP clients [default: 127.0.0.1:8080].
    #[arg(long, env = "MCP_ROUTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// A backend replica: `http://host:port[/base]` or `name=http://host:port[/base]`.
    /// Repeat for each replica (environment: comma-separated).
    #[arg(long = "backend", env = "MCP_ROUTER_BACKENDS", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// Idle lifetime of a session record; each request slides it [default: 2h].
    #[arg(long, env = "MCP_ROUTER_SESSION_TTL")]
    pub session_ttl: Option<String>,
    /// Session store: `memory` (embedded, the default; one router replica only) or a
    /// Redis URL shared by every replica: `redis://[user[:password]@]host[:port][/db]`,
    /// `rediss://...` for TLS.
    #[arg(long, env = "MCP_ROUTER_STORE")]
    pub store: Option<String>,
    /// Redis key prefix for session records [default: mcp-router:session:].
    #[arg(long, env = "MCP_ROUTER_STORE_KEY_PREFIX")]
    pub store_key_prefix: Option<String>,
    /// Longest wait for one store operation; past it the request gets 503 [default: 500ms].
    #[arg(long, env = "MCP_ROUTER_STORE_TIMEOUT")]
    pub store_timeout: Option<String>,
    /// Redis password, overriding the URL's (keeps it off the command line).
    #[arg(long, env = "MCP_ROUTER_STORE_PASSWORD", hide_env_values = true)]
    pub store_password: Option<String>,
    /// Largest request or response head in bytes; larger request heads get 431 [default: 32768].
    #[arg(long, env = "MCP_ROUTER_MAX_HEAD")]
    pub max_head: Option<usize>,
    /// Most header fields in a head [default: 96].
    #[arg(long, env = "MCP_ROUTER_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Most request-body bytes read to find the JSON-RPC method of a request without a
    /// session; past it: 413 [default: 1048576].
    #[arg(long, env = "MCP_ROUTER_MAX_INSPECT_BODY")]
    pub max_inspect_body: Option<usize>,
    /// Longest accepted Mcp-Session-Id [default: 256].
    #[arg(long, env = "MCP_ROUTER_MAX_SESSION_ID_LEN")]
    pub max_session_id_len: Option<usize>,
    /// Time a client has to send a whole request head; then 408 [default: 10s].
    #[arg(long, env = "MCP_ROUTER_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// Idle keep-alive client connections close after this [default: 75s].
    #[arg(long, env = "MCP_ROUTER_CLIENT_IDLE_TIMEOUT")]
    pub client_idle_timeout: Option<String>,
    /// Connecting to a backend; past it the backend is marked down [default: 3s].
    #[arg(long, env = "MCP_ROUTER_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,
    /// Wait for a backend's response head; then 504 [default: 300s].
    #[arg(long, env = "MCP_ROUTER_RESPONSE_TIMEOUT")]
    pub response_timeout: Option<String>,
    /// Longest silence inside a non-SSE body [default: 60s].
    #[arg(long, env = "MCP_ROUTER_BODY_IDLE_TIMEOUT")]
    pub body_idle_timeout: Option<String>,
    /// Idle pooled backend connections close after this [default: 3s].
    #[arg(long, env = "MCP_ROUTER_POOL_IDLE_TIMEOUT")]
    pub pool_idle_timeout: Option<String>,
    /// Most idle pooled connections per backend [default: 64].
    #[arg(long, env = "MCP_ROUTER_POOL_MAX_IDLE")]
    pub pool_max_idle: Option<usize>,
    /// First backoff after a backend fails, doubled per failure [default: 1s].
    #[arg(long, env = "MCP_ROUTER_BACKOFF_INITIAL")]
    pub backoff_initial: Option<String>,
    /// Longest backoff [default: 30s].
    #[arg(long, env = "MCP_ROUTER_BACKOFF_MAX")]
    pub backoff_max: Option<String>,
    /// Probe every backend with a TCP connect this often (off by default).
    #[arg(long, env = "MCP_ROUTER_HEALTH_CHECK_INTERVAL")]
    pub health_check_interval: Option<String>,
    /// Records examined per expiry tick of the embedded store [default: 4096].
    #[arg(long, env = "MCP_ROUTER_EXPIRY_BATCH")]
    pub expiry_batch: Option<usize>,
    /// On SIGTERM/Ctrl-C, how long in-flight requests may finish [default: 10s].
    #[arg(long, env = "MCP_ROUTER_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Address of the admin listener: `/metrics` (Prometheus), `/healthz`, `/readyz`,
    /// and `POST /admin/backends/<name>/drain` / `undrain` (off by default).
    #[arg(long, env = "MCP_ROUTER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Backends found through DNS: `name=http://dns-name:port[/base]` (e.g. a
    /// StatefulSet's headless Service). Each address becomes a backend named
    /// `name@ip:port`; one that disappears ends its sessions as if it had died.
    #[arg(long, env = "MCP_ROUTER_DISCOVER", value_delimiter = ',')]
    pub discover: Vec<String>,
    /// How often --discover names are resolved again [default: 10s].
    #[arg(long, env = "MCP_ROUTER_DISCOVER_INTERVAL")]
    pub discover_interval: Option<String>,
    /// Mark a backend draining: no new sessions, its sessions go on (repeatable). A
    /// reload (SIGHUP) makes this list authoritative again.
    #[arg(long, env = "MCP_ROUTER_DRAIN", value_delimiter = ',')]
    pub drain: Vec<String>,
    /// How many router replicas run side by side; with more than one, the embedded
    /// store cannot share sessions and the router warns [default: 1].
    #[arg(long, env = "MCP_ROUTER_REPLICAS_EXPECTED")]
    pub replicas_expected: Option<u32>,
    /// Serve this stdio MCP server instead of proxying backends: the command runs with
    /// `sh -c` (e.g. `--stdio "npx -y @modelcontextprotocol/server-everything"`) and is
    /// served at /mcp (Streamable HTTP) and /sse + /message (HTTP+SSE).
    #[arg(long, env = "MCP_ROUTER_STDIO")]
    pub stdio: Option<String>,
    /// `per-session` (a child per session, the default) or `shared` (one child for all).
    #[arg(long, env = "MCP_ROUTER_STDIO_MODE")]
    pub stdio_mode: Option<String>,
    /// Most live stdio children; past it `initialize` gets 503 [default: 64].
    #[arg(long, env = "MCP_ROUTER_STDIO_MAX_CHILDREN")]
    pub stdio_max_children: Option<usize>,
    /// A session whose GET stream is lost ends unless it reopens within this [default: 30s].
    #[arg(long, env = "MCP_ROUTER_STDIO_STREAM_GRACE")]
    pub stdio_stream_grace: Option<String>,
    /// `Host` values the router accepts (`host` or `host:port`, comma-separated; `*`:
    /// any). Others get 403 before anything is forwarded (DNS-rebinding protection)
    /// [default: localhost, 127.0.0.1, [::1] and the --listen address, on any port, when
    /// --listen is a loopback address; otherwise any].
    #[arg(long, env = "MCP_ROUTER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// `Origin` values the router accepts (`scheme://host[:port]`, comma-separated; `*`:
    /// any); a request without `Origin` passes. Others get 403 [default: http and https
    /// on localhost, 127.0.0.1, [::1] when --listen is a loopback address, otherwise any].
    #[arg(long, env = "MCP_ROUTER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Send each backend its own authority as `Host` instead of the client's `Host`
    /// (which is forwarded unchanged by default); `X-Forwarded-Host` carries the
    /// client's either way.
    #[arg(long, env = "MCP_ROUTER_REWRITE_HOST")]
    pub rewrite_host: bool,
    /// Threads that serve clients: tokio and smol worker threads, or glommio executors
    /// (one per core, each with its own listener) [default: one per available CPU].
    #[arg(long, env = "MCP_ROUTER_WORKERS")]
    pub workers: Option<usize>,
}

/// The TOML file: the same fields as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    backends: Option<Vec<FileBackend>>,
    session_ttl: Option<toml::Value>,
    store: Option<String>,
    store_key_prefix: Option<String>,
    store_timeout: Option<toml::Value>,
    store_password: Option<String>,
    max_head: Option<usize>,
    max_headers: Option<usize>,
    max_inspect_body: Option<usize>,
    max_session_id_len: Option<usize>,
    header_timeout: Option<toml::Value>,
    client_idle_timeout: Option<toml::Value>,
    connect_timeout: Option<toml::Value>,
    response_timeout: Option<toml::Value>,
    body_idle_timeout: Option<toml::Value>,
    pool_idle_timeout: Option<toml::Value>,
    pool_max_idle: Option<usize>,
    backoff_initial: Option<toml::Value>,
    backoff_max: Option<toml::Value>,
    health_check_interval: Option<toml::Value>,
    expiry_batch: Option<usize>,
    shutdown_grace: Option<toml::Value>,
    replicas_expected: Option<u32>,
    workers: Option<usize>,
    admin_listen: Option<String>,
    discover: Option<Vec<String>>,
    discover_interval: Option<toml::Value>,
    drain: Option<Vec<String>>,
    stdio: Option<String>,
    stdio_mode: Option<String>,
    stdio_max_children: Option<usize>,
    stdio_stream_grace: Option<toml::Value>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    rewrite_host: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum FileBackend {
    Url(String),
    Named { name: Option<String>, url: String },
}

/// Which session store to use.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// The embedded in-memory store.
    Memory,
    /// Redis, shared by router replicas.
    Redis(crate::redis::RedisSettings),
}

/// Everything the binary needs: the core config plus the frontend's own settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Session store.
    pub store: StoreSettings,
    /// The core's configuration.
    pub core: Config,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Router replicas expected to run side by side.
    pub replicas_expected: u32,
    /// Admin listener address.
    pub admin_listen: Option<SocketAddr>,
    /// DNS-discovered backend groups (a template backend named after the group).
    pub discover: Vec<Backend>,
    /// Re-resolution period of `discover`.
    pub discover_interval: Duration,
    /// Backends to mark draining.
    pub drain: Vec<String>,
    /// `--stdio`: serve a stdio MCP server instead of proxying backends.
    pub stdio: Option<StdioSettings>,
    /// Client-serving threads (`None`: one per available CPU).
    pub workers: Option<usize>,
}

/// `--stdio`: serve a stdio MCP server (tokio binary only) instead of proxying backends.
#[derive(Debug, Clone)]
pub struct StdioSettings {
    /// The MCP server command, run with `sh -c`.
    pub command: String,
    /// Per-session or shared child.
    pub mode: mcp_router_core::stdio::ChildMode,
    /// Most live children.
    pub max_children: usize,
    /// Grace for a lost GET stream.
    pub stream_grace: Duration,
}

/// Parse a duration: `150ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of seconds.
pub fn parse_duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let bad = || {
        ConfigError(format!(
            "{field}: invalid duration {s:?} (use e.g. 150ms, 30s, 5m, 2h)"
        ))
    };
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn file_duration(field: &str, v: &toml::Value) -> Result<Duration, ConfigError> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(Duration::from_secs(*i as u64)),
        toml::Value::Float(f) if *f >= 0.0 => Ok(Duration::from_secs_f64(*f)),
        toml::Value::String(s) => parse_duration(field, s),
        _ => Err(ConfigError(format!(
            "{field}: expected a duration like \"30s\""
        ))),
    }
}

fn parse_backend(spec: &str) -> Result<Backend, ConfigError> {
    let spec = spec.trim();
    match spec.split_once('=') {
        Some((name, url)) if !name.contains("://") => {
            if name.is_empty() {
                return Err(ConfigError(format!("backend {spec:?}: empty name")));
            }
            Backend::parse(url, Some(name))
        }
        _ => Backend::parse(spec, None),
    }
}

/// The flag's list if given, else the file's (empty: not set).
fn list_or(cli: &[String], file: &Option<Vec<String>>) -> Vec<String> {
    let v = if cli.is_empty() {
        file.clone().unwrap_or_default()
    } else {
        cli.to_vec()
    };
    v.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The `Host` / `Origin` allow-lists: as set (`*` turns a check off), else the
/// loopback names when listening on a loopback address, else off.
fn rebinding(
    listen: SocketAddr,
    hosts: &[String],
    origins: &[String],
) -> Result<RebindingGuard, ConfigError> {
    let loopback = listen.ip().is_loopback();
    let defaults = if loopback {
        // the loopback names, and the address listened on (127.0.0.2 is loopback too)
        let ip = match listen.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let mut g = RebindingGuard::loopback();
        if let (Some(hosts), Some(origins)) = (&mut g.hosts, &mut g.origins) {
            if !hosts.iter().any(|h| h.host == ip) {
                let host = HostPattern {
                    host: ip,
                    port: None,
                };
                for scheme in ["http", "https"] {
                    origins.push(OriginPattern {
                        scheme: scheme.into(),
                        host: host.clone(),
                    });
                }
                hosts.push(host);
            }
        }
        g
    } else {
        RebindingGuard::off()
    };
    let hosts = if hosts.is_empty() {
        defaults.hosts
    } else if hosts.iter().any(|h| h == "*") {
        None
    } else {
        Some(
            hosts
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect::<Result<_, _>>()?,
        )
    };
    let origins = if origins.is_empty() {
        defaults.origins
    } else if origins.iter().any(|o| o == "*") {
        None
    } else {
        Some(
            origins
                .iter()
                .map(|o| OriginPattern::parse(o))
                .collect::<Result<_, _>>()?,
        )
    };
    Ok(RebindingGuard { hosts, origins })
}

impl Cli {
    /// Merge flags/env with the config file and defaults, and validate.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let file: File = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError(format!("config: cannot read {}: {e}", p.display()))
                })?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError(format!("config {}: {e}", p.display())))?
            }
            None => File::default(),
        };
        let stdio = self.stdio_settings(&file)?;
        let mut c = Config::default();
        let dur = |field: &str,
                   cli: &Option<String>,
                   file: &Option<toml::Value>,
                   default: Duration|
         -> Result<Duration, ConfigError> {
            match (cli, file) {
                (Some(s), _) => parse_duration(field, s),
                (None, Some(v)) => file_duration(field, v),
                (None, None) => Ok(default),
            }
        };
        let listen = match (&self.listen, &file.listen) {
            (Some(a), _) => *a,
            (None, Some(s)) => s
                .parse()
                .map_err(|_| ConfigError(format!("listen: invalid address {s:?}")))?,
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        c.backends = if !self.backends.is_empty() {
            self.backends
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| parse_backend(s))
                .collect::<Result<_, _>>()?
        } else {
            file.backends
                .iter()
                .flatten()
                .map(|b| match b {
                    FileBackend::Url(u) => parse_backend(u),
                    FileBackend::Named { name, url } => Backend::parse(url, name.as_deref()),
                })
                .collect::<Result<_, _>>()?
        };
        let store_timeout = dur(
            "store_timeout",
            &self.store_timeout,
            &file.store_timeout,
            Duration::from_millis(500),
        )?;
        if store_timeout.is_zero() {
            return Err(ConfigError("store_timeout: must be > 0".into()));
        }
        let store = self
            .store
            .clone()
            .or(file.store)
            .unwrap_or_else(|| "memory".into());
        let store = if store == "memory" {
            StoreSettings::Memory
        } else if store.starts_with("redis://") || store.starts_with("rediss://") {
            StoreSettings::Redis(crate::redis::RedisSettings {
                url: store,
                password: self.store_password.clone().or(file.store_password),
                key_prefix: self
                    .store_key_prefix
                    .clone()
                    .or(file.store_key_prefix)
                    .unwrap_or_else(|| crate::redis::DEFAULT_PREFIX.into()),
                timeout: store_timeout,
            })
        } else {
            return Err(ConfigError(format!(
                "store: {store:?}: use \"memory\" or a redis:// / rediss:// URL"
            )));
        };
        c.session_ttl = dur(
            "session_ttl",
            &self.session_ttl,
            &file.session_ttl,
            c.session_ttl,
        )?;
        c.http.max_head = self.max_head.or(file.max_head).unwrap_or(c.http.max_head);
        c.http.max_headers = self
            .max_headers
            .or(file.max_headers)
            .unwrap_or(c.http.max_headers);
        c.max_inspect_body = self
            .max_inspect_body
            .or(file.max_inspect_body)
            .unwrap_or(c.max_inspect_body);
        c.max_session_id_len = self
            .max_session_id_len
            .or(file.max_session_id_len)
            .unwrap_or(c.max_session_id_len);
        let t = &mut c.timeouts;
        t.header = dur(
            "header_timeout",
            &self.header_timeout,
            &file.header_timeout,
            t.header,
        )?;
        t.client_idle = dur(
            "client_idle_timeout",
            &self.client_idle_timeout,
            &file.client_idle_timeout,
            t.client_idle,
        )?;
        t.connect = dur(
            "connect_timeout",
            &self.connect_timeout,
            &file.connect_timeout,
            t.connect,
        )?;
        t.response = dur(
            "response_timeout",
            &self.response_timeout,
            &file.response_timeout,
            t.response,
        )?;
        t.body_idle = dur(
            "body_idle_timeout",
            &self.body_idle_timeout,
            &file.body_idle_timeout,
            t.body_idle,
        )?;
        t.pool_idle = dur(
            "pool_idle_timeout",
            &self.pool_idle_timeout,
            &file.pool_idle_timeout,
            t.pool_idle,
        )?;
        c.pool_max_idle = self
            .pool_max_idle
            .or(file.pool_max_idle)
            .unwrap_or(c.pool_max_idle);
        c.backoff_initial = dur(
            "backoff_initial",
            &self.backoff_initial,
            &file.backoff_initial,
            c.backoff_initial,
        )?;
        c.backoff_max = dur(
            "backoff_max",
            &self.backoff_max,
            &file.backoff_max,
            c.backoff_max,
        )?;
        c.health_check_interval =
            match (&self.health_check_interval, &file.health_check_interval) {
                (Some(s), _) => Some(parse_duration("health_check_interval", s)?),
                (None, Some(v)) => Some(file_duration("health_check_interval", v)?),
                (None, None) => None,
            }
            .filter(|d| !d.is_zero());
        c.expiry_batch = self
            .expiry_batch
            .or(file.expiry_batch)
            .unwrap_or(c.expiry_batch);
        let shutdown_grace = dur(
            "shutdown_grace",
            &self.shutdown_grace,
            &file.shutdown_grace,
            Duration::from_secs(10),
        )?;
        let replicas_expected = self
            .replicas_expected
            .or(file.replicas_expected)
            .unwrap_or(1);
        let workers = self.workers.or(file.workers);
        if workers == Some(0) {
            return Err(ConfigError("workers: must be > 0".into()));
        }
        let admin_listen = match (&self.admin_listen, &file.admin_listen) {
            (Some(a), _) => Some(*a),
            (None, Some(s)) => Some(
                s.parse()
                    .map_err(|_| ConfigError(format!("admin_listen: invalid address {s:?}")))?,
            ),
            (None, None) => None,
        };
        let discover_specs = if !self.discover.is_empty() {
            self.discover.clone()
        } else {
            file.discover.clone().unwrap_or_default()
        };
        let discover = discover_specs
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| match s.trim().split_once('=') {
                Some((name, url)) if !name.is_empty() && !name.contains("://") => {
                    Backend::parse(url, Some(name))
                        .map_err(|e| ConfigError(format!("discover: {e}")))
                }
                _ => Err(ConfigError(format!(
                    "discover: {s:?}: use name=http://dns-name:port"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let discover_interval = dur(
            "discover_interval",
            &self.discover_interval,
            &file.discover_interval,
            Duration::from_secs(10),
        )?;
        if discover_interval.is_zero() {
            return Err(ConfigError("discover_interval: must be > 0".into()));
        }
        let drain = if !self.drain.is_empty() {
            self.drain.clone()
        } else {
            file.drain.clone().unwrap_or_default()
        };
        if c.backends.is_empty() && discover.is_empty() && stdio.is_none() {
            return Err(ConfigError(
                "backends: at least one backend (--backend) or DNS name (--discover) is required"
                    .into(),
            ));
        }
        c.rebinding = rebinding(
            listen,
            &list_or(&self.allowed_hosts, &file.allowed_hosts),
            &list_or(&self.allowed_origins, &file.allowed_origins),
        )?;
        c.rewrite_host = self.rewrite_host || file.rewrite_host.unwrap_or(false);
        c.validate()?;
        Ok(Settings {
            listen,
            store,
            core: c,
            shutdown_grace,
            replicas_expected,
            admin_listen,
            discover,
            discover_interval,
            drain,
            stdio,
            workers,
        })
    }

    /// The `stdio*` settings (flag, then file).
    fn stdio_settings(&self, file: &File) -> Result<Option<StdioSettings>, ConfigError> {
        let Some(command) = self.stdio.clone().or(file.stdio.clone()) else {
            return Ok(None);
        };
        if command.trim().is_empty() {
            return Err(ConfigError("stdio: empty command".into()));
        }
        let mode = match self
            .stdio_mode
            .as_deref()
            .or(file.stdio_mode.as_deref())
            .unwrap_or("per-session")
        {
            "per-session" => mcp_router_core::stdio::ChildMode::PerSession,
            "shared" => mcp_router_core::stdio::ChildMode::Shared,
            m => {
                return Err(ConfigError(format!(
                    "stdio_mode: {m:?}: use \"per-session\" or \"shared\""
                )))
            }
        };
        let max_children = self
            .stdio_max_children
            .or(file.stdio_max_children)
            .unwrap_or(64);
        if max_children == 0 {
            return Err(ConfigError("stdio_max_children: must be > 0".into()));
        }
        let stream_grace = match (&self.stdio_stream_grace, &file.stdio_stream_grace) {
            (Some(s), _) => parse_duration("stdio_stream_grace", s)?,
            (None, Some(v)) => file_duration("stdio_stream_grace", v)?,
            (None, None) => Duration::from_secs(30),
        };
        Ok(Some(StdioSettings {
            command,
            mode,
            max_children,
            stream_grace,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["mcp-router"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("f", "150ms").unwrap(),
            Duration::from_millis(150)
        );
        assert_eq!(
            parse_duration("f", "2h").unwrap(),
            Duration::from_secs(7200)
        );
        assert_eq!(parse_duration("f", "45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("session_ttl", "2 weeks")
            .unwrap_err()
            .0
            .starts_with("session_ttl"));
        assert!(parse_duration("f", "-1s").is_err());
    }

    #[test]
    fn flags_build_a_config() {
        let s = cli(&[
            "--backend",
            "http://127.0.0.1:1",
            "--backend",
            "b=http://127.0.0.1:2/x",
            "--session-ttl",
            "5m",
        ])
        .settings()
        .unwrap();
        assert_eq!(s.core.backends.len(), 2);
        assert_eq!(s.core.backends[1].name, "b");
        assert_eq!(s.core.backends[1].base_path, "/x");
        assert_eq!(s.core.session_ttl, Duration::from_secs(300));
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn errors_name_the_field() {
        let e = cli(&[]).settings().unwrap_err();
        assert!(e.0.starts_with("backends"), "{e}");
        let e = cli(&["--backend", "https://x:1"]).settings().unwrap_err();
        assert!(e.0.contains("https"), "{e}");
        let e = cli(&["--backend", "http://x:1", "--connect-timeout", "soon"])
            .settings()
            .unwrap_err();
        assert!(e.0.starts_with("connect_timeout"), "{e}");
        let e = cli(&["--backend", "http://x:1", "--store", "mongodb://x"])
            .settings()
            .unwrap_err();
        assert!(e.0.starts_with("store"), "{e}");
        let s = cli(&[
            "--backend",
            "http://x:1",
            "--store",
            "redis://127.0.0.1:6399/2",
            "--store-timeout",
            "50ms",
        ])
        .settings()
        .unwrap();
        match s.store {
            StoreSettings::Redis(r) => {
                assert_eq!(r.key_prefix, "mcp-router:session:");
                assert_eq!(r.timeout, Duration::from_millis(50));
            }
            StoreSettings::Memory => panic!("redis URL ignored"),
        }
    }

    #[test]
    fn rebinding_lists_default_to_loopback_names_on_loopback_only() {
        let s = cli(&["--backend", "http://x:1"]).settings().unwrap();
        assert_eq!(s.core.rebinding, RebindingGuard::loopback());
        assert!(!s.core.rewrite_host);
        let s = cli(&["--backend", "http://x:1", "--listen", "[::1]:9"])
            .settings()
            .unwrap();
        assert_eq!(s.core.rebinding, RebindingGuard::loopback());
        let s = cli(&["--backend", "http://x:1", "--listen", "0.0.0.0:9"])
            .settings()
            .unwrap();
        assert_eq!(s.core.rebinding, RebindingGuard::off());
        let s = cli(&["--backend", "http://x:1", "--listen", "127.0.0.2:9"])
            .settings()
            .unwrap();
        let hosts = s.core.rebinding.hosts.unwrap();
        assert_eq!(hosts.len(), 4);
        assert_eq!(hosts[3].host, "127.0.0.2");
        assert_eq!(s.core.rebinding.origins.unwrap().len(), 8);
        let s = cli(&[
            "--backend",
            "http://x:1",
            "--listen",
            "0.0.0.0:9",
            "--allowed-hosts",
            "mcp.example.com,mcp.example.com:8443",
            "--allowed-origins",
            "https://app.example.com",
            "--rewrite-host",
        ])
        .settings()
        .unwrap();
        let hosts = s.core.rebinding.hosts.unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].port, Some(8443));
        assert_eq!(s.core.rebinding.origins.unwrap()[0].scheme, "https");
        assert!(s.core.rewrite_host);
        let s = cli(&["--backend", "http://x:1", "--allowed-hosts", "*"])
            .settings()
            .unwrap();
        assert_eq!(s.core.rebinding.hosts, None);
        assert!(
            s.core.rebinding.origins.is_some(),
            "origins keep their default"
        );
        let e = cli(&[
            "--backend",
            "http://x:1",
            "--allowed-origins",
            "example.com",
        ])
        .settings()
        .unwrap_err();
        assert!(e.0.starts_with("allowed_origins"), "{e}");
    }

    #[test]
    fn file_is_read_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("mcp-router-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:9999\"\nsession_ttl = \"1h\"\nconnect_timeout = 2\nbackends = [\"http://127.0.0.1:1\", { name = \"two\", url = \"http://127.0.0.1:2\" }]\n",
        )
        .unwrap();
        let s = cli(&["--config", p.to_str().unwrap(), "--session-ttl", "10s"])
            .settings()
            .unwrap();
        assert_eq!(s.listen.port(), 9999);
        assert_eq!(s.core.session_ttl, Duration::from_secs(10));
        assert_eq!(s.core.timeouts.connect, Duration::from_secs(2));
        assert_eq!(s.core.backends[1].name, "two");
        std::fs::write(&p, "sesion_ttl = \"1h\"\n").unwrap();
        let e = cli(&["--config", p.to_str().unwrap()])
            .settings()
            .unwrap_err();
        assert!(e.0.contains("sesion_ttl"), "{e}");
    }
}
