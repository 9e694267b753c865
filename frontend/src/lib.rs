//! What every frontend of **mcp-router** shares, whatever runtime drives it (tokio in
//! `mcp-router`, smol in `mcp-router-smol`, glommio in `mcp-router-glommio`):
//!
//! - [`check`]: `mcp-router check`, probing each backend with MCP.
//! - [`config`]: the CLI flags, `MCP_ROUTER_*` environment and TOML file: all three
//!   binaries take the same configuration.
//! - [`shared`]: the process-wide [`Shared`] state, logs and metrics of the core's
//!   events, and the operating work that needs no runtime (store expiry, health checks,
//!   DNS discovery, SIGHUP reload, signals), run on plain threads.
//! - [`drive`](mod@drive): the per-connection drive loop and the admin endpoint, written once
//!   against the small traits of [`rt`] ([`Io`], [`Timer`], [`Runtime`]).
//! - [`redis`]: the Redis record format, commands and reply reading, plus the
//!   `ConnectionManager` transport the tokio and smol frontends use;
//!   [`redis_link`]: one server, Sentinel or Cluster.
//! - [`pool`]: idle upstream connections.
//! - [`reap`]: the `DELETE`s sent upstream for sessions the router ended itself.
//! - [`stdio`]: the stdio bridge (`--stdio`): children through [`Runtime::spawn_child`],
//!   connections through the core's `StdioConn`.
//!
//! A frontend implements [`Runtime`] for its sockets and timers, accepts connections
//! and spawns [`drive`](drive::drive) for each.

// `deny`, not `forbid`: the one exception is the stdio bridge's `pre_exec` hook
// (`stdio::die_with_the_router`: `PR_SET_PDEATHSIG` in the forked child), which std
// only offers as `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod config;
pub mod drive;
pub mod pool;
pub mod reap;
pub mod record_cache;
pub mod redis;
pub mod redis_link;
pub mod rt;
pub mod shared;
pub mod stdio;
#[cfg(test)]
mod testrt;

pub use config::{parse_duration, Cli, Settings, StoreSettings};
pub use drive::{admin_conn, drive, Frontend};
pub use redis::{RedisCodec, RedisSettings, RemoteStore};
pub use rt::{Io, Runtime, Shutdown, Tasks, Timer};
pub use shared::{Resolve, Shared, SystemResolver};
