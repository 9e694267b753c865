//! The behaviour suite of **mcp-router**, written once and run against every frontend
//! binary: `mcp-router` (tokio), `mcp-router-smol` and `mcp-router-glommio`. The tests
//! live in `tests/`; each file ends with `behaviour_suite!(...)`, which instantiates
//! its tests as `on_tokio::*`, `on_smol::*` and `on_glommio::*`. A test's router comes
//! from `harness::router_bin()`.
//!
//! - `e2e`: routing, stickiness, every session-end path, SSE streaming, legacy SSE,
//!   backend kill, expiry, health checks, configuration, shutdown, large bodies.
//! - `hostile`: smuggling, floods, invalid bytes, slowloris, connection churn,
//!   misbehaving backends.
//! - `redis`: sessions shared through Redis by several replicas, Redis down and back,
//!   and a mixed pair (a tokio and a glommio replica on one Redis).
//! - `ops`: metrics, readiness, draining, SIGHUP reload, DNS discovery.
//! - `stdio`: the stdio bridge (`--stdio`): a child per session or one shared, every
//!   session-end path leaving no process behind, `kill -9` of the router, caps and
//!   quotas; `stdio_interop`: the official SDK clients through it.
