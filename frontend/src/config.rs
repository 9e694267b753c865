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
    /// `rediss://...` for TLS; Sentinel:
    /// `redis+sentinel://[user[:password]@]host:port,host:port,.../<master name>[/db]`;
    /// Cluster: `redis-cluster://[user[:password]@]host:port,host:port,...`.
    #[arg(long, env = "MCP_ROUTER_STORE")]
    pub store: Option<String>,
    /// Redis key prefix for session records; non-empty, no whitespace or control
    /// characters. Keys under it hold records only: a key there holding anything else
    /// is an unknown session, left untouched [default: mcp-router:session:].
    #[arg(long, env = "MCP_ROUTER_STORE_KEY_PREFIX")]
    pub store_key_prefix: Option<String>,
    /// Longest wait for one store operation; past it the request gets 503 [default: 500ms].
    #[arg(long, env = "MCP_ROUTER_STORE_TIMEOUT")]
    pub store_timeout: Option<String>,
    /// Redis password, overriding the URL's (keeps it off the command line).
    #[arg(long, env = "MCP_ROUTER_STORE_PASSWORD", hide_env_values = true)]
    pub store_password: Option<String>,
    /// Redis replicas that must acknowledge a new session record (`WAIT`) before the
    /// session is acknowledged to its client, so that it survives a primary failover;
    /// 0: do not wait [default: 0].
    #[arg(long, env = "MCP_ROUTER_STORE_WAIT_REPLICAS")]
    pub store_wait_replicas: Option<u32>,
    /// Session records each replica keeps in a local cache kept correct by Redis's
    /// client-side caching invalidations (`CLIENT TRACKING`), so that a request of a
    /// live session costs no Redis round trip; 0: off (one Redis server or Sentinel;
    /// Cluster always reads Redis) [default: 100000].
    #[arg(long, env = "MCP_ROUTER_STORE_CACHE_SIZE")]
    pub store_cache_size: Option<usize>,
    /// With the cache: a request answered from it slides the record's idle TTL at most
    /// once per this fraction of the session TTL (sent in the background), so an idle
    /// session ends between (1 - fraction) x TTL and TTL after its last request; in
    /// (0, 0.5] [default: 0.1].
    #[arg(long, env = "MCP_ROUTER_STORE_SLIDE_FRACTION")]
    pub store_slide_fraction: Option<f64>,
    /// For `rediss://`: a PEM file of the certificate authorities to trust for the Redis
    /// server's certificate (a private CA, a self-signed certificate) instead of the
    /// public web PKI roots.
    #[arg(long, env = "MCP_ROUTER_STORE_TLS_CA")]
    pub store_tls_ca: Option<String>,
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
    /// A draining backend's remaining sessions end this long after its drain began:
    /// their clients get 404 and the backend a DELETE for each [default: 10m].
    #[arg(long, env = "MCP_ROUTER_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// `on`: send DELETE to the backend for each session the router ends itself (idle
    /// expiry, drain timeout), carrying its Mcp-Session-Id and the --reap-header
    /// fields only [default: on].
    #[arg(long, env = "MCP_ROUTER_REAP")]
    pub reap: Option<String>,
    /// Most reap DELETEs in flight at once [default: 4].
    #[arg(long, env = "MCP_ROUTER_REAP_CONCURRENCY")]
    pub reap_concurrency: Option<usize>,
    /// Most reap DELETEs started per second, 0 for no limit [default: 100].
    #[arg(long, env = "MCP_ROUTER_REAP_RATE")]
    pub reap_rate: Option<u32>,
    /// Most reap DELETEs waiting; past it they are dropped [default: 10000].
    #[arg(long, env = "MCP_ROUTER_REAP_QUEUE")]
    pub reap_queue: Option<usize>,
    /// A header field added to every reap DELETE, `Name: value` (repeatable), e.g. a
    /// credential the backend accepts, or `MCP-Protocol-Version: 2025-06-18`. The
    /// client's own headers (Authorization included) are not kept.
    #[arg(long, env = "MCP_ROUTER_REAP_HEADER")]
    pub reap_header: Vec<String>,
    /// With --store redis: how often each replica claims expired sessions from the
    /// shared expiry index to reap them [default: 1s].
    #[arg(long, env = "MCP_ROUTER_REAP_CLAIM_INTERVAL")]
    pub reap_claim_interval: Option<String>,
    /// Path of the MCP endpoint on each backend, after its base path [default: /mcp].
    #[arg(long, env = "MCP_ROUTER_REAP_PATH")]
    pub reap_path: Option<String>,
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
    /// A stdio session with no open stream and no request in flight ends (and its child
    /// is killed) this long after its last activity [default: 60s].
    #[arg(long, env = "MCP_ROUTER_STDIO_UNATTACHED_TIMEOUT")]
    pub stdio_unattached_timeout: Option<String>,
    /// `Host` values the router accepts (`host` or `host:port`, comma-separated; `*`:
    /// any). Others get 403 before anything is forwarded (DNS-rebinding protection)
    /// [default: localhost, 127.0.0.1, `[::1]` and the --listen address, on any port, when
    /// --listen is a loopback address; otherwise any].
    #[arg(long, env = "MCP_ROUTER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// `Origin` values the router accepts (`scheme://host[:port]`, comma-separated; `*`:
    /// any); a request without `Origin` passes. Others get 403 [default: http and https
    /// on localhost, 127.0.0.1, `[::1]` when --listen is a loopback address, otherwise any].
    #[arg(long, env = "MCP_ROUTER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Send each backend its own authority as `Host` instead of the client's `Host`
    /// (which is forwarded unchanged by default); `X-Forwarded-Host` carries the
    /// client's either way.
    #[arg(long, env = "MCP_ROUTER_REWRITE_HOST")]
    pub rewrite_host: bool,
    /// Every backend serves only MCP 2026-07-28: answer GET and DELETE with 405 (Allow:
    /// POST) here instead of forwarding them for the backend to refuse.
    #[arg(long, env = "MCP_ROUTER_MODERN_ONLY")]
    pub modern_only: bool,
    /// Threads that serve clients: tokio and smol worker threads, or glommio executors
    /// (one per core, each with its own listener) [default: one per available CPU].
    #[arg(long, env = "MCP_ROUTER_WORKERS")]
    pub workers: Option<usize>,
    /// A response the client does not read for this long (no write progress) closes
    /// its connection and drops the backend connection; the session stays [default: 60s].
    #[arg(long, env = "MCP_ROUTER_CLIENT_SEND_TIMEOUT")]
    pub client_send_timeout: Option<String>,
    /// Most client connections per process; past it a new connection gets 503 with
    /// Retry-After and is closed; 0 turns the cap off [default: 4096].
    #[arg(long, env = "MCP_ROUTER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most live sessions (with Redis: the fleet's); past it `initialize` gets 503 with
    /// Retry-After; 0 turns the cap off [default: 100000].
    #[arg(long, env = "MCP_ROUTER_MAX_SESSIONS")]
    pub max_sessions: Option<u64>,
    /// Most live sessions per client (see --client-identity); past it `initialize`
    /// gets 429; 0 turns the quota off [default: 1000].
    #[arg(long, env = "MCP_ROUTER_CLIENT_MAX_SESSIONS")]
    pub client_max_sessions: Option<u64>,
    /// New sessions per second per client (token bucket); past it 429 with
    /// Retry-After; 0 turns the quota off [default: 100].
    #[arg(long, env = "MCP_ROUTER_CLIENT_SESSION_RATE")]
    pub client_session_rate: Option<u32>,
    /// New sessions a client may open at once before the rate applies [default: 200].
    #[arg(long, env = "MCP_ROUTER_CLIENT_SESSION_BURST")]
    pub client_session_burst: Option<u32>,
    /// Who a client is, for the per-client quotas: `peer` (the peer address, the
    /// default), `xff` (the first untrusted hop of X-Forwarded-For, given
    /// --trusted-proxies), `header:NAME` (a digest of a header an auth proxy sets), or
    /// `bearer-sub` (the iss and sub claims of a Bearer JWT, read unverified).
    #[arg(long, env = "MCP_ROUTER_CLIENT_IDENTITY")]
    pub client_identity: Option<String>,
    /// Affinity of stateless requests (no session: 2026-07-28, and sessionless
    /// earlier-era ones): `none` (the backend with the fewest requests in flight, the
    /// default), `principal` (the caller as --client-identity names it), `header:NAME`
    /// (a header's value, e.g. header:Mcp-Param-Handle) or `mcp-name` (the tool or
    /// resource). Rendezvous hashing with a load cap of 1.25x the average in flight.
    #[arg(long, env = "MCP_ROUTER_AFFINITY")]
    pub affinity: Option<String>,
    /// Proxies whose X-Forwarded-For is believed: addresses or CIDR ranges
    /// (environment: comma-separated).
    #[arg(
        long = "trusted-proxies",
        env = "MCP_ROUTER_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Listen backlog: connections the kernel queues before the router accepts them
    /// (capped by net.core.somaxconn) [default: 1024].
    #[arg(long, env = "MCP_ROUTER_ACCEPT_BACKLOG")]
    pub accept_backlog: Option<u32>,

    // ----- sealed session ids (issue 13) -----
    /// How client-facing session ids are made: `passthrough` (the backend's own id,
    /// routed by its record in the store) or `sealed` (an encrypted token carrying the
    /// backend and the upstream id: any replica routes it without a store; needs
    /// --session-keys) [default: passthrough].
    #[arg(long, env = "MCP_ROUTER_SESSION_IDS")]
    pub session_ids: Option<String>,
    /// Key file of sealed session ids: one key per line, 64 hex characters (`openssl
    /// rand -hex 32`), optionally `id:` before it; the first line seals, every line
    /// opens. Re-read on SIGHUP.
    #[arg(long, env = "MCP_ROUTER_SESSION_KEYS_FILE")]
    pub session_keys: Option<PathBuf>,
    /// Absolute lifetime of a sealed session id, from its issue [default: 24h].
    #[arg(long, env = "MCP_ROUTER_SESSION_MAX_AGE")]
    pub session_max_age: Option<String>,
    /// `on`: a session answers only the client that opened it, as --client-identity
    /// names it (others get 404) [default: off].
    #[arg(long, env = "MCP_ROUTER_SESSION_BINDING")]
    pub session_binding: Option<String>,
    // ----- failover (issue 14, point 3) -----
    /// `reinitialize`: a session whose backend is down (connect failed, marked down,
    /// removed) is initialized again on a healthy backend by replaying the client's
    /// initialize; the client's session id stays. With a Redis store it needs
    /// --session-keys (the initialize is kept there only sealed) [default: off].
    #[arg(long, env = "MCP_ROUTER_FAILOVER")]
    pub failover: Option<String>,
    /// At most one failover per session within this time; a session whose replacement
    /// also dies within it gets 404 [default: 60s].
    #[arg(long, env = "MCP_ROUTER_FAILOVER_WINDOW")]
    pub failover_window: Option<String>,
    /// Largest initialize body kept for a failover; a session whose initialize was
    /// larger is not failed over [default: 16384].
    #[arg(long, env = "MCP_ROUTER_FAILOVER_MAX_PARAMS")]
    pub failover_max_params: Option<usize>,
    // -- operations (issue 19): admin token, log format, `check` --
    /// Token for state-changing admin requests (drain/undrain): they need
    /// `Authorization: Bearer <token>`. Without it they are allowed only when the
    /// admin listener is on loopback. Prefer the environment or the file to the
    /// command line.
    #[arg(long, env = "MCP_ROUTER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Log format: `text` (the default) or `json` (one JSON object per line).
    #[arg(long, env = "MCP_ROUTER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Check the configuration and probe every backend with MCP, print one line per
    /// backend, and exit: 0 only if every backend answers MCP (same as `check`).
    #[arg(long)]
    pub check: bool,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Load the configuration as a start would, probe every backend with MCP
    /// (`initialize` then `DELETE`, `server/discover`, and the legacy `GET /sse`), print
    /// one line per backend with hints for known mistakes, and exit: 0 only if every
    /// backend answers MCP.
    Check,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
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
    store_wait_replicas: Option<u32>,
    store_cache_size: Option<usize>,
    store_slide_fraction: Option<f64>,
    store_tls_ca: Option<String>,
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
    drain_timeout: Option<toml::Value>,
    reap: Option<toml::Value>,
    reap_concurrency: Option<usize>,
    reap_rate: Option<u32>,
    reap_queue: Option<usize>,
    reap_header: Option<Vec<String>>,
    reap_path: Option<String>,
    reap_claim_interval: Option<toml::Value>,
    stdio: Option<String>,
    stdio_mode: Option<String>,
    stdio_max_children: Option<usize>,
    stdio_stream_grace: Option<toml::Value>,
    client_send_timeout: Option<toml::Value>,
    max_connections: Option<usize>,
    max_sessions: Option<u64>,
    client_max_sessions: Option<u64>,
    client_session_rate: Option<u32>,
    client_session_burst: Option<u32>,
    client_identity: Option<String>,
    affinity: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    accept_backlog: Option<u32>,
    stdio_unattached_timeout: Option<toml::Value>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    rewrite_host: Option<bool>,
    modern_only: Option<bool>,
    // sealed session ids (issue 13)
    session_ids: Option<String>,
    session_keys: Option<PathBuf>,
    session_max_age: Option<toml::Value>,
    session_binding: Option<toml::Value>,
    // failover (issue 14)
    failover: Option<String>,
    failover_window: Option<toml::Value>,
    failover_max_params: Option<usize>,
    // -- operations (issue 19) --
    admin_token: Option<String>,
    log_format: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum FileBackend {
    Url(String),
    Named { name: Option<String>, url: String },
}

fn on_off(field: &str, s: &str) -> Result<bool, ConfigError> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(ConfigError(format!("{field}: {s:?}: expected on or off"))),
    }
}

/// Which session store to use.
#[derive(Debug, Clone)]
// one per process, read at start: its size does not matter
#[allow(clippy::large_enum_variant)]
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
    /// Listen backlog.
    pub accept_backlog: u32,
    /// Who may change state through the admin listener (the token's `Debug` is
    /// redacted).
    pub admin_auth: mcp_router_core::admin::AdminAuth,
    /// Log format.
    pub log_format: LogFormat,
}

/// `--stdio`: serve a stdio MCP server instead of proxying backends.
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
    /// A session with no open stream and no request in flight ends this long after its
    /// last activity.
    pub unattached_timeout: Duration,
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
        // through the same bounds as a written duration (a huge number would overflow
        // `Duration` or a deadline)
        toml::Value::Integer(i) if *i >= 0 => parse_duration(field, &i.to_string()),
        toml::Value::Float(f) if *f >= 0.0 => parse_duration(field, &f.to_string()),
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
        // sealed mode keeps session records only in a store named explicitly
        let explicit_store = self.store.is_some() || file.store.is_some();
        let mut c = Config::default();
        self.session_settings(&file, explicit_store, &mut c)?;
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
        let key_prefix = self.store_key_prefix.clone().or(file.store_key_prefix);
        // Checked even when the store is `memory` (where it is unused): a prefix that
        // can never be right is reported at start, not when Redis is switched on.
        if let Some(p) = &key_prefix {
            crate::redis::check_key_prefix(p)?;
        }
        let store = self
            .store
            .clone()
            .or(file.store)
            .unwrap_or_else(|| "memory".into());
        let slide_fraction = self
            .store_slide_fraction
            .or(file.store_slide_fraction)
            .unwrap_or(crate::redis::DEFAULT_SLIDE_FRACTION);
        if !(slide_fraction > 0.0 && slide_fraction <= 0.5) {
            return Err(ConfigError(format!(
                "store_slide_fraction: {slide_fraction}: must be in (0, 0.5]"
            )));
        }
        let store = if store == "memory" {
            StoreSettings::Memory
        } else if crate::redis::Topology::is_redis_url(&store) {
            let password = self.store_password.clone().or(file.store_password);
            let s = crate::redis::RedisSettings {
                topology: crate::redis::Topology::parse(&store)?.with_password(password.as_deref()),
                url: store,
                password,
                key_prefix: key_prefix.unwrap_or_else(|| crate::redis::DEFAULT_PREFIX.into()),
                timeout: store_timeout,
                wait_replicas: self
                    .store_wait_replicas
                    .or(file.store_wait_replicas)
                    .unwrap_or(0),
                cache_size: self
                    .store_cache_size
                    .or(file.store_cache_size)
                    .unwrap_or(crate::redis::DEFAULT_CACHE_SIZE),
                slide_fraction,
                tls_ca: match self.store_tls_ca.clone().or(file.store_tls_ca) {
                    None => None,
                    Some(path) => Some(
                        std::fs::read(&path)
                            .map_err(|e| ConfigError(format!("store_tls_ca: {path}: {e}")))?,
                    ),
                },
            };
            s.check()?;
            StoreSettings::Redis(s)
        } else {
            return Err(ConfigError(format!(
                "store: {store:?}: use \"memory\", a redis:// / rediss:// URL, \
                 redis+sentinel://host:port,.../<master name> or redis-cluster://host:port,..."
            )));
        };
        c.session_ttl = dur(
            "session_ttl",
            &self.session_ttl,
            &file.session_ttl,
            c.session_ttl,
        )?;
        let mode = self.failover.as_deref().or(file.failover.as_deref());
        c.failover = match mode {
            None | Some("off") => None,
            Some("reinitialize") => {
                let remote = matches!(store, StoreSettings::Redis(_));
                if remote && c.session_keys.is_none() {
                    return Err(ConfigError(
                        "failover: reinitialize with a Redis store needs --session-keys: the \
                         client's initialize parameters it replays are kept in Redis only \
                         sealed with the session key, never in plaintext"
                            .into(),
                    ));
                }
                if c.session_ids == mcp_router_core::SessionIds::Sealed && !c.session_records {
                    return Err(ConfigError(
                        "failover: reinitialize with --session-ids sealed needs a store \
                         (--store memory or redis://: the new upstream id is kept in the \
                         session's record)"
                            .into(),
                    ));
                }
                let d = mcp_router_core::failover::FailoverSettings::default();
                let window = dur(
                    "failover_window",
                    &self.failover_window,
                    &file.failover_window,
                    d.window,
                )?;
                let max_params = self
                    .failover_max_params
                    .or(file.failover_max_params)
                    .unwrap_or(d.max_params);
                if !(1024..=1024 * 1024).contains(&max_params) {
                    return Err(ConfigError(
                        "failover_max_params: must be 1024 bytes ..= 1 MiB".into(),
                    ));
                }
                Some(mcp_router_core::failover::FailoverSettings {
                    window,
                    max_params,
                    remote,
                })
            }
            Some(m) => {
                return Err(ConfigError(format!(
                    "failover: {m:?}: use \"off\" or \"reinitialize\""
                )))
            }
        };
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
        t.client_send = dur(
            "client_send_timeout",
            &self.client_send_timeout,
            &file.client_send_timeout,
            t.client_send,
        )?;
        c.pool_max_idle = self
            .pool_max_idle
            .or(file.pool_max_idle)
            .unwrap_or(c.pool_max_idle);
        let l = &mut c.limits;
        l.max_connections = self
            .max_connections
            .or(file.max_connections)
            .unwrap_or(l.max_connections);
        l.max_sessions = self
            .max_sessions
            .or(file.max_sessions)
            .unwrap_or(l.max_sessions);
        l.client_max_sessions = self
            .client_max_sessions
            .or(file.client_max_sessions)
            .unwrap_or(l.client_max_sessions);
        l.client_session_rate = self
            .client_session_rate
            .or(file.client_session_rate)
            .unwrap_or(l.client_session_rate);
        l.client_session_burst = self
            .client_session_burst
            .or(file.client_session_burst)
            .unwrap_or(l.client_session_burst);
        if let Some(id) = self
            .client_identity
            .as_ref()
            .or(file.client_identity.as_ref())
        {
            c.client_identity = mcp_router_core::ClientIdentity::parse(id)
                .map_err(|e| ConfigError(format!("client_identity: {e}")))?;
        }
        if let Some(a) = self.affinity.as_ref().or(file.affinity.as_ref()) {
            c.affinity = mcp_router_core::Affinity::parse(a)
                .map_err(|e| ConfigError(format!("affinity: {e}")))?;
        }
        let proxies = if !self.trusted_proxies.is_empty() {
            self.trusted_proxies.clone()
        } else {
            file.trusted_proxies.clone().unwrap_or_default()
        };
        c.trusted_proxies = proxies
            .iter()
            .map(|p| mcp_router_core::IpNet::parse(p.trim()))
            .collect::<Result<_, _>>()
            .map_err(|e| ConfigError(format!("trusted_proxies: {e}")))?;
        if c.client_identity == mcp_router_core::ClientIdentity::Xff && c.trusted_proxies.is_empty()
        {
            return Err(ConfigError(
                "client_identity: xff needs --trusted-proxies (whose X-Forwarded-For to believe)"
                    .into(),
            ));
        }
        let accept_backlog = self.accept_backlog.or(file.accept_backlog).unwrap_or(1024);
        if !(1..=65535).contains(&accept_backlog) {
            return Err(ConfigError("accept_backlog: must be 1..=65535".into()));
        }
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
        c.drain_timeout = dur(
            "drain_timeout",
            &self.drain_timeout,
            &file.drain_timeout,
            c.drain_timeout,
        )?;
        c.reap.claim_interval = dur(
            "reap_claim_interval",
            &self.reap_claim_interval,
            &file.reap_claim_interval,
            c.reap.claim_interval,
        )?;
        let r = &mut c.reap;
        r.enabled = match (&self.reap, &file.reap) {
            (Some(s), _) => on_off("reap", s)?,
            (None, Some(toml::Value::Boolean(b))) => *b,
            (None, Some(toml::Value::String(s))) => on_off("reap", s)?,
            (None, Some(_)) => return Err(ConfigError("reap: expected on or off".into())),
            (None, None) => r.enabled,
        };
        r.concurrency = self
            .reap_concurrency
            .or(file.reap_concurrency)
            .unwrap_or(r.concurrency);
        r.rate = self.reap_rate.or(file.reap_rate).unwrap_or(r.rate);
        r.queue = self.reap_queue.or(file.reap_queue).unwrap_or(r.queue);
        if let Some(p) = self.reap_path.as_ref().or(file.reap_path.as_ref()) {
            r.path = p.trim_end_matches('/').to_string();
        }
        let headers = if !self.reap_header.is_empty() {
            self.reap_header.clone()
        } else {
            file.reap_header.clone().unwrap_or_default()
        };
        r.headers = headers
            .iter()
            .map(|h| match h.split_once(':') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(ConfigError(format!(
                    "reap_header: {h:?}: use \"Name: value\""
                ))),
            })
            .collect::<Result<_, _>>()?;
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
        c.modern_only = self.modern_only || file.modern_only.unwrap_or(false);
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
            accept_backlog,
            admin_auth: mcp_router_core::admin::AdminAuth {
                loopback: admin_listen.is_some_and(|a| a.ip().is_loopback()),
                token: match self.admin_token.clone().or(file.admin_token) {
                    Some(t) if t.is_empty() => {
                        return Err(ConfigError("admin_token: must not be empty".into()))
                    }
                    t => t,
                },
            },
            log_format: match self.log_format.as_deref().or(file.log_format.as_deref()) {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(f) => {
                    return Err(ConfigError(format!(
                        "log_format: {f:?}: use \"text\" or \"json\""
                    )))
                }
            },
        })
    }

    /// The `session_*` settings of sealed session ids (flag, then file). In sealed
    /// mode, records are kept only when a store was named explicitly.
    fn session_settings(
        &self,
        file: &File,
        explicit_store: bool,
        c: &mut Config,
    ) -> Result<(), ConfigError> {
        if let Some(m) = self.session_ids.as_ref().or(file.session_ids.as_ref()) {
            c.session_ids = mcp_router_core::SessionIds::parse(m)?;
        }
        c.session_records = explicit_store;
        c.session_max_age = match (&self.session_max_age, &file.session_max_age) {
            (Some(s), _) => parse_duration("session_max_age", s)?,
            (None, Some(v)) => file_duration("session_max_age", v)?,
            (None, None) => c.session_max_age,
        };
        c.session_binding = match (&self.session_binding, &file.session_binding) {
            (Some(s), _) => on_off("session_binding", s)?,
            (None, Some(toml::Value::Boolean(b))) => *b,
            (None, Some(toml::Value::String(s))) => on_off("session_binding", s)?,
            (None, Some(_)) => {
                return Err(ConfigError("session_binding: expected on or off".into()))
            }
            (None, None) => false,
        };
        let path = self.session_keys.as_ref().or(file.session_keys.as_ref());
        if let Some(p) = path {
            // the error names the file and line, never a key
            let text = std::fs::read_to_string(p).map_err(|e| {
                ConfigError(format!("session_keys: cannot read {}: {e}", p.display()))
            })?;
            let ring = mcp_router_core::KeyRing::parse(&text)
                .map_err(|e| ConfigError(format!("session_keys: {}: {e}", p.display())))?;
            c.session_keys = Some(std::sync::Arc::new(ring));
        }
        Ok(())
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
        let unattached_timeout = match (
            &self.stdio_unattached_timeout,
            &file.stdio_unattached_timeout,
        ) {
            (Some(s), _) => parse_duration("stdio_unattached_timeout", s)?,
            (None, Some(v)) => file_duration("stdio_unattached_timeout", v)?,
            (None, None) => Duration::from_secs(60),
        };
        if unattached_timeout.is_zero() {
            return Err(ConfigError("stdio_unattached_timeout: must be > 0".into()));
        }
        Ok(Some(StdioSettings {
            command,
            mode,
            max_children,
            stream_grace,
            unattached_timeout,
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
        // numbers in the file go through the same bounds
        let huge = toml::Value::Integer(i64::MAX);
        assert!(file_duration("store_timeout", &huge)
            .unwrap_err()
            .0
            .starts_with("store_timeout"));
        assert!(file_duration("f", &toml::Value::Float(1e300)).is_err());
        assert_eq!(
            file_duration("f", &toml::Value::Integer(5)).unwrap(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn backends_say_which_eras_they_serve() {
        let s = cli(&[
            "--backend",
            "old=http://a:1;eras=legacy,new=http://b:2/mcp;eras=modern,both=http://c:3;eras=modern+legacy,http://d:4",
        ])
        .settings()
        .unwrap();
        let eras: Vec<_> = s
            .core
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.eras.legacy, b.eras.modern))
            .collect();
        assert_eq!(
            eras,
            [
                ("old", true, false),
                ("new", false, true),
                ("both", true, true),
                ("d:4", true, true)
            ]
        );
        assert_eq!(s.core.backends[1].base_path, "/mcp");
        assert!(cli(&["--backend", "http://a:1;eras=future"])
            .settings()
            .is_err());
    }

    #[test]
    fn limit_flags_reach_the_core_and_bad_values_name_the_field() {
        let s = cli(&[
            "--backend",
            "http://a:1",
            "--client-send-timeout",
            "5s",
            "--max-connections",
            "10",
            "--max-sessions",
            "20",
            "--client-max-sessions",
            "3",
            "--client-session-rate",
            "4",
            "--client-session-burst",
            "5",
            "--client-identity",
            "xff",
            "--trusted-proxies",
            "10.0.0.0/8,::1",
            "--accept-backlog",
            "4096",
            "--affinity",
            "header:Mcp-Param-Handle",
        ])
        .settings()
        .unwrap();
        assert_eq!(
            s.core.affinity,
            mcp_router_core::Affinity::Header("mcp-param-handle".into())
        );
        let l = &s.core.limits;
        assert_eq!(s.core.timeouts.client_send, Duration::from_secs(5));
        assert_eq!(
            (l.max_connections, l.max_sessions, l.client_max_sessions),
            (10, 20, 3)
        );
        assert_eq!((l.client_session_rate, l.client_session_burst), (4, 5));
        assert_eq!(s.core.client_identity, mcp_router_core::ClientIdentity::Xff);
        assert_eq!(s.core.trusted_proxies.len(), 2);
        assert_eq!(s.accept_backlog, 4096);
        for (args, field) in [
            (
                &["--max-inspect-body", "18446744073709551615"][..],
                "max_inspect_body",
            ),
            (&["--max-head", "18446744073709551615"], "max_head"),
            (&["--client-identity", "cookie"], "client_identity"),
            (&["--affinity", "sticky"], "affinity"),
            (&["--client-identity", "xff"], "client_identity"),
            (&["--trusted-proxies", "10.0.0.0/99"], "trusted_proxies"),
            (&["--accept-backlog", "0"], "accept_backlog"),
            (
                &["--client-session-rate", "4294967295"],
                "client_session_rate",
            ),
            (&["--client-send-timeout", "0s"], "client_send_timeout"),
        ] {
            let mut a = vec!["--backend", "http://a:1"];
            a.extend_from_slice(args);
            let e = cli(&a).settings().unwrap_err().0;
            assert!(e.starts_with(field), "{args:?}: {e}");
        }
    }

    #[test]
    fn reap_settings_from_flags_and_file_and_bad_headers_refused() {
        let s = cli(&[
            "--backend",
            "http://x:1",
            "--drain-timeout",
            "30s",
            "--reap-header",
            "Authorization: Bearer a:b",
            "--reap-header",
            "MCP-Protocol-Version: 2025-06-18",
            "--reap-concurrency",
            "2",
            "--reap-rate",
            "0",
        ])
        .settings()
        .unwrap();
        assert_eq!(s.core.drain_timeout, Duration::from_secs(30));
        let r = &s.core.reap;
        assert!(r.enabled);
        assert_eq!((r.concurrency, r.rate, r.path.as_str()), (2, 0, "/mcp"));
        assert_eq!(
            r.headers,
            [
                ("Authorization".to_string(), "Bearer a:b".to_string()),
                ("MCP-Protocol-Version".into(), "2025-06-18".into())
            ]
        );
        let defaults = cli(&["--backend", "http://x:1"]).settings().unwrap();
        assert_eq!(defaults.core.drain_timeout, Duration::from_secs(600));
        assert!(defaults.core.reap.headers.is_empty());
        for (bad, field) in [
            ("no colon", "reap_header"),
            ("Bad Name: x", "reap_header"),
            ("Mcp-Session-Id: x", "reap_header"),
            ("X: caf\u{e9}", "reap_header"),
        ] {
            let e = cli(&["--backend", "http://x:1", "--reap-header", bad])
                .settings()
                .unwrap_err();
            assert!(e.0.starts_with(field), "{bad}: {e}");
        }
        let e = cli(&["--backend", "http://x:1", "--reap-concurrency", "0"])
            .settings()
            .unwrap_err();
        assert!(e.0.starts_with("reap_concurrency"), "{e}");
        // the README's keys, from a file
        let dir = std::env::temp_dir().join(format!("mcp-router-cfg-reap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            "backends = [\"http://x:1\"]\ndrain_timeout = \"10m\"\nreap = false\n\
             reap_header = [\"Authorization: Bearer reaper-token\"]\nreap_concurrency = 4\n\
             reap_rate = 100\nreap_queue = 10000\n",
        )
        .unwrap();
        let s = cli(&["--config", p.to_str().unwrap()]).settings().unwrap();
        assert!(!s.core.reap.enabled);
        assert_eq!(s.core.reap.headers.len(), 1);
        std::fs::remove_dir_all(&dir).ok();
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
                // the record cache: on by default
                assert_eq!((r.cache_size, r.slide_fraction), (100_000, 0.1));
            }
            StoreSettings::Memory => panic!("redis URL ignored"),
        }
        let redis = |extra: &[&str]| {
            let mut a = vec![
                "--backend",
                "http://x:1",
                "--store",
                "redis://127.0.0.1:6399",
            ];
            a.extend_from_slice(extra);
            cli(&a).settings()
        };
        match redis(&["--store-cache-size", "0", "--store-slide-fraction", "0.5"])
            .unwrap()
            .store
        {
            StoreSettings::Redis(r) => assert_eq!((r.cache_size, r.slide_fraction), (0, 0.5)),
            StoreSettings::Memory => panic!("redis URL ignored"),
        }
        for bad in ["0", "0.51", "1", "NaN"] {
            let e = redis(&["--store-slide-fraction", bad]).unwrap_err();
            assert!(e.0.starts_with("store_slide_fraction"), "{bad}: {e}");
        }
        // The key prefix: non-empty, no whitespace or control characters; checked at
        // start, from a flag or the file.
        for bad in ["", "a b", "p:\n"] {
            let e = cli(&[
                "--backend",
                "http://x:1",
                "--store",
                "redis://127.0.0.1:6399",
                "--store-key-prefix",
                bad,
            ])
            .settings()
            .unwrap_err();
            assert!(e.0.starts_with("store_key_prefix"), "{e}");
        }
        let s = cli(&[
            "--backend",
            "http://x:1",
            "--store",
            "redis://127.0.0.1:6399",
            "--store-key-prefix",
            "app1:s:",
        ])
        .settings()
        .unwrap();
        match s.store {
            StoreSettings::Redis(r) => assert_eq!(r.key_prefix, "app1:s:"),
            StoreSettings::Memory => panic!("redis URL ignored"),
        }
    }

    #[test]
    fn rebinding_lists_default_to_loopback_names_on_loopback_only() {
        let s = cli(&["--backend", "http://x:1"]).settings().unwrap();
        assert_eq!(s.core.rebinding, RebindingGuard::loopback());
        assert!(!s.core.rewrite_host);
        assert!(!s.core.modern_only);
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
            "--modern-only",
        ])
        .settings()
        .unwrap();
        let hosts = s.core.rebinding.hosts.unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].port, Some(8443));
        assert_eq!(s.core.rebinding.origins.unwrap()[0].scheme, "https");
        assert!(s.core.rewrite_host);
        assert!(s.core.modern_only);
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

    #[test]
    fn stdio_unattached_timeout_flag_file_and_default() {
        let stdio = |args: &[&str]| cli(args).settings().map(|s| s.stdio.unwrap());
        assert_eq!(
            stdio(&["--stdio", "cat"]).unwrap().unattached_timeout,
            Duration::from_secs(60)
        );
        assert_eq!(
            stdio(&["--stdio", "cat", "--stdio-unattached-timeout", "2s"])
                .unwrap()
                .unattached_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            stdio(&["--stdio", "cat", "--stdio-unattached-timeout", "1500ms"])
                .unwrap()
                .unattached_timeout,
            Duration::from_millis(1500)
        );
        for bad in ["0s", "0", "soon"] {
            let e = stdio(&["--stdio", "cat", "--stdio-unattached-timeout", bad]).unwrap_err();
            assert!(e.0.starts_with("stdio_unattached_timeout"), "{bad}: {e}");
        }
        let dir = std::env::temp_dir().join(format!("mcp-router-cfg-ua-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(&p, "stdio = \"cat\"\nstdio_unattached_timeout = \"5m\"\n").unwrap();
        let path = p.to_str().unwrap();
        assert_eq!(
            stdio(&["--config", path]).unwrap().unattached_timeout,
            Duration::from_secs(300)
        );
        assert_eq!(
            stdio(&["--config", path, "--stdio-unattached-timeout", "7s"])
                .unwrap()
                .unattached_timeout,
            Duration::from_secs(7)
        );
        std::fs::write(&p, "stdio = \"cat\"\nstdio_unattached_timeout = 0\n").unwrap();
        let e = stdio(&["--config", path]).unwrap_err();
        assert!(e.0.starts_with("stdio_unattached_timeout"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        let cmd = <Cli as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("stdio-unattached-timeout"))
            .unwrap();
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("MCP_ROUTER_STDIO_UNATTACHED_TIMEOUT")
        );
    }

    #[test]
    fn failover_flags_and_the_stores_it_refuses() {
        let b = ["--backend", "http://127.0.0.1:1"];
        let s = cli(&[b[0], b[1]]).settings().unwrap();
        assert_eq!(s.core.failover, None, "off by default");
        let s = cli(&[b[0], b[1], "--failover", "reinitialize"])
            .settings()
            .unwrap();
        let f = s.core.failover.expect("on");
        assert_eq!(f.window, Duration::from_secs(60));
        assert_eq!(f.max_params, 16 * 1024);
        let s = cli(&[
            b[0],
            b[1],
            "--failover",
            "reinitialize",
            "--failover-window",
            "5m",
            "--failover-max-params",
            "4096",
        ])
        .settings()
        .unwrap();
        let f = s.core.failover.unwrap();
        assert_eq!((f.window, f.max_params), (Duration::from_secs(300), 4096));
        let refused = |extra: &[&str], field: &str| {
            let mut args = vec![b[0], b[1], "--failover", "reinitialize"];
            args.extend_from_slice(extra);
            let e = cli(&args).settings().unwrap_err();
            assert!(e.0.starts_with(field), "{extra:?}: {e}");
            e.0
        };
        let e = refused(&["--store", "redis://127.0.0.1:6379"], "failover");
        assert!(
            e.contains("--session-keys") && e.contains("plaintext"),
            "{e}"
        );
        assert!(!f.remote, "the embedded store hands the state out itself");
        refused(&["--failover-max-params", "100"], "failover_max_params");
        refused(&["--failover-window", "soon"], "failover_window");
        let e = cli(&[b[0], b[1], "--failover", "sometimes"])
            .settings()
            .unwrap_err();
        assert!(e.0.starts_with("failover"), "{e}");
        let dir = std::env::temp_dir().join(format!("mcp-fo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("keys");
        std::fs::write(&keys, format!("{}\n", "ab".repeat(32))).unwrap();
        let k = keys.to_str().unwrap();
        let sealed = [b[0], b[1], "--session-ids", "sealed", "--session-keys", k];
        // sealed ids keep the new upstream id in a record: a store is needed
        let mut args = sealed.to_vec();
        args.extend_from_slice(&["--failover", "reinitialize"]);
        let e = cli(&args).settings().unwrap_err();
        assert!(e.0.contains("sealed"), "{e}");
        args.extend_from_slice(&["--store", "memory"]);
        assert!(cli(&args).settings().unwrap().core.failover.is_some());
        // with a key ring, Redis keeps the body sealed: sealed or passthrough ids
        let on_redis = |args: &[&str]| {
            let mut a = args.to_vec();
            a.extend_from_slice(&["--failover", "reinitialize"]);
            a.extend_from_slice(&["--store", "redis://127.0.0.1:6379"]);
            cli(&a).settings().unwrap().core.failover.expect("on")
        };
        assert!(on_redis(&sealed).remote);
        assert!(on_redis(&[b[0], b[1], "--session-keys", k]).remote);
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "backends = [\"http://x:1\"]\nfailover = \"reinitialize\"\nfailover_window = \"2m\"\nfailover_max_params = 2048\n",
        )
        .unwrap();
        let f = cli(&["--config", file.to_str().unwrap()])
            .settings()
            .unwrap()
            .core
            .failover
            .unwrap();
        assert_eq!((f.window, f.max_params), (Duration::from_secs(120), 2048));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sealed_session_flags_need_a_good_key_file_and_never_show_a_key() {
        let dir = std::env::temp_dir().join(format!("mcp-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        let key = "ab".repeat(32);
        std::fs::write(&good, format!("2026q4:{key}\n{}\n", "cd".repeat(32))).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "abcd\n").unwrap();
        let b = ["--backend", "http://127.0.0.1:1"];
        // sealed without a key: refused
        let e = cli(&[b[0], b[1], "--session-ids", "sealed"])
            .settings()
            .unwrap_err();
        assert!(e.0.starts_with("session_keys"), "{e}");
        // a short key: refused, naming the line, not the key
        let e = cli(&[
            b[0],
            b[1],
            "--session-ids",
            "sealed",
            "--session-keys",
            short.to_str().unwrap(),
        ])
        .settings()
        .unwrap_err();
        assert!(
            e.0.contains("shorter than 32 bytes") && !e.0.contains("abcd"),
            "{e}"
        );
        // good: no store named, so no records; binding and max age read
        let s = cli(&[
            b[0],
            b[1],
            "--session-ids",
            "sealed",
            "--session-keys",
            good.to_str().unwrap(),
            "--session-binding",
            "on",
            "--session-max-age",
            "1h",
        ])
        .settings()
        .unwrap();
        assert_eq!(s.core.session_ids, mcp_router_core::SessionIds::Sealed);
        assert!(!s.core.session_records && s.core.session_binding);
        assert_eq!(s.core.session_max_age, Duration::from_secs(3600));
        assert_eq!(s.core.session_keys.as_ref().unwrap().ids()[0], "2026q4");
        assert!(!format!("{s:?}").contains(&key), "a key in Debug output");
        // an explicit store keeps records
        let s = cli(&[
            b[0],
            b[1],
            "--session-ids",
            "sealed",
            "--session-keys",
            good.to_str().unwrap(),
            "--store",
            "memory",
        ])
        .settings()
        .unwrap();
        assert!(s.core.session_records);
        assert!(cli(&[b[0], b[1], "--session-ids", "opaque"])
            .settings()
            .is_err());
        assert!(cli(&[b[0], b[1], "--session-binding", "maybe"])
            .settings()
            .is_err());
        // --help shows no default key
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("--session-keys") && !help.contains(&key));
        std::fs::remove_dir_all(&dir).ok();
    }

    // -- operations (issue 19) --
    #[test]
    fn admin_token_log_format_and_check() {
        let b = ["--backend", "http://127.0.0.1:1"];
        let s = cli(&b).settings().unwrap();
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(s.admin_auth.token.is_none() && !s.admin_auth.loopback);
        let s = cli(&[
            b[0],
            b[1],
            "--log-format",
            "json",
            "--admin-listen",
            "127.0.0.1:9090",
            "--admin-token",
            "t0k",
        ])
        .settings()
        .unwrap();
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.admin_auth.loopback);
        assert_eq!(s.admin_auth.token.as_deref(), Some("t0k"));
        assert!(
            !format!("{s:?}").contains("t0k"),
            "the token stays out of Debug"
        );
        let s = cli(&[b[0], b[1], "--admin-listen", "0.0.0.0:9090"])
            .settings()
            .unwrap();
        assert!(!s.admin_auth.actions_enabled());
        for (args, field) in [
            (&["--log-format", "xml"][..], "log_format"),
            (&["--admin-token", ""][..], "admin_token"),
        ] {
            let mut a = b.to_vec();
            a.extend_from_slice(args);
            let e = cli(&a).settings().unwrap_err().0;
            assert!(e.starts_with(field), "{e}");
        }
        // `check` as a subcommand after the flags, or `--check`
        assert_eq!(cli(&[b[0], b[1], "check"]).command, Some(Command::Check));
        assert!(cli(&["--check", b[0], b[1]]).check);
        // the file
        let dir = std::env::temp_dir().join(format!("mcp-router-ops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "backends = [\"http://127.0.0.1:1\"]\nadmin_token = \"ft\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let s = cli(&["--config", f.to_str().unwrap()]).settings().unwrap();
        assert_eq!(
            (s.admin_auth.token.as_deref(), s.log_format),
            (Some("ft"), LogFormat::Json)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
