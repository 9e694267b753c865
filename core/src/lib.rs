//! Sans-IO core of **mcp-router**, a session-sticky reverse proxy for the Model Context
//! Protocol (MCP).
//!
//! It parses HTTP/1.1 in both directions, reads the MCP session facts of every request
//! (`Mcp-Session-Id`, `MCP-Protocol-Version`, the legacy `sessionId`/`session_id`
//! query parameter, the JSON-RPC `method` and `id`), runs the session lifecycle and
//! makes every routing decision. It performs **no IO**: no sockets, no clock reads, no
//! threads, no randomness of its own (sealed session ids take their nonces' random
//! part from [`Router::set_entropy`] and the wall clock from
//! [`Router::set_unix_time`]). Bytes and [`std::time::Instant`]s go in; bytes to write,
//! connections to open, session-store operations, deadlines and events come out. The
//! same inputs always give the same outputs, so everything here is tested with virtual
//! time and scripted peers, and can be fuzzed and benchmarked in isolation.
//!
//! # Pieces
//!
//! - [`Config`]: backends, limits, timeouts.
//! - [`Router`]: shared by all connections of a process (`Sync`, atomics only): backend
//!   health with exponential backoff, live-session counts, and the pluggable
//!   [`Balancer`] (default [`LeastSessions`]: fewest live sessions, round-robin among
//!   ties).
//! - [`Conn`]: one client connection's proxy state machine.
//! - [`StoreOp`] / [`StoreReply`]: the session store as an interface. The driver runs
//!   each op against its store (the embedded [`MemStore`], or a remote one) and feeds
//!   the reply back.
//! - [`http`] and [`mcp`]: the parsers, usable on their own.
//! - [`seal`]: sealed session ids (`--session-ids sealed`): the token, the key ring.
//! - [`stdio`]: the stdio bridge ([`stdio::Bridge`]): serving a stdio MCP server's
//!   children as Streamable HTTP and HTTP+SSE sessions.
//!
//! # Routing rules
//!
//! | request | decision |
//! |---|---|
//! | `MCP-Protocol-Version` >= 2026-07-28 | stateless era: load-balanced; any `Mcp-Session-Id` ignored for routing and not forwarded |
//! | ... a POST of that era | the whole body read first; `Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version` checked against it; a mismatch is `400` `-32020`, a batch or a non-message `400` `-32600` (see `guard::check_mirrored`) |
//! | `Mcp-Session-Id` (or legacy `sessionId`/`session_id` on a POST), recorded | to the session's backend; the record's idle deadline slides |
//! | session id not recorded | `404`, JSON-RPC `-32001` echoing the request id; no backend sees it |
//! | sealed id ([`SessionIds::Sealed`], [`seal`]) | opened and checked (key, age, backend, binding), then to the backend it names with the upstream id; a refused one is answered like an unknown session |
//! | session id not visible ASCII or too long | `400`, JSON-RPC `-32600` |
//! | session's backend marked down | `404 -32001`, record removed |
//! | POST `initialize` without session | new session: backend with fewest live sessions; a 2xx response with `Mcp-Session-Id` records it before the client sees it |
//! | `GET` with `Accept: text/event-stream`, no session | placed like a new session; a legacy `endpoint` event in the stream records its session |
//! | anything else without a session | load-balanced; never rejected for lacking a session |
//!
//! A record ends when: a `DELETE` is answered 2xx or 404; the backend answers 404 to
//! any request of the session; connecting to its backend fails; a legacy session's
//! stream closes; or it sits idle past the TTL.
//!
//! # Driving a [`Conn`]
//!
//! The driver owns the sockets and the read [`Buffers`]. Per client connection:
//!
//! 1. Read from the client into `bufs.client` while [`Conn::wants_client_read`] says
//!    so, and from the upstream connection into `bufs.upstream` while
//!    [`Conn::wants_upstream_read`] says so. On EOF call [`Conn::handle_client_eof`] /
//!    [`Conn::handle_upstream_eof`].
//! 2. After every input, call [`Conn::handle_io`] and drain [`Conn::poll_output`] until
//!    it returns `None`, carrying each [`Output`] out in order. Carrying out an output
//!    may call back into the `Conn` (a store reply, a pooled connection ready at once);
//!    repeat step 2 until a full pass produces nothing.
//! 3. Sleep until [`Conn::poll_timeout`] (or the next read), then call
//!    [`Conn::handle_timeout`]. A spurious call is harmless.
//! 4. Stop when [`Conn::is_closed`] and the outputs are drained.
//!
//! ```no_run
//! # use mcp_router_core::*;
//! # use std::sync::Arc;
//! # use std::time::Instant;
//! # fn read_client(_: &mut bytes::BytesMut) -> usize { 0 }
//! # let router = Arc::new(Router::new(Arc::new(Config::default()), Instant::now()));
//! # let mut store = MemStore::new(std::time::Duration::from_secs(60), 64, Instant::now());
//! let mut conn = Conn::new(router, None, "http", Instant::now());
//! let mut bufs = Buffers::default();
//! while !conn.is_closed() {
//!     // (1) wait for client bytes, upstream bytes, a connect result or the deadline
//!     if read_client(&mut bufs.client) == 0 {
//!         conn.handle_client_eof(Instant::now());
//!     }
//!     // (2) feed and drain until quiet
//!     loop {
//!         conn.handle_io(&mut bufs, Instant::now());
//!         let mut any = false;
//!         while let Some(out) = conn.poll_output() {
//!             any = true;
//!             match out {
//!                 Output::ToClient(bytes) => { /* write to the client socket */ }
//!                 Output::ToUpstream(bytes) => { /* write to the upstream socket */ }
//!                 Output::Connect { backend, fresh } => {
//!                     /* take a pooled connection (unless fresh) or dial; then
//!                        conn.handle_upstream_connected(reused, now) or
//!                        conn.handle_upstream_failed(now) */
//!                 }
//!                 Output::ReleaseUpstream { reuse } => {
//!                     bufs.upstream.clear(); /* pool it if reuse, else close it */
//!                 }
//!                 Output::Store(op) => {
//!                     let reply = store.execute(&op, Instant::now());
//!                     conn.handle_store_reply(reply, Instant::now());
//!                 }
//!                 Output::CloseClient => { /* flush, then close the client socket */ }
//!                 Output::Event(e) => { /* log or count */ }
//!             }
//!         }
//!         if !any { break; }
//!     }
//!     // (3) sleep until conn.poll_timeout(), then conn.handle_timeout(now)
//! }
//! ```
//!
//! The embedded store's expiry is a separate tick: every [`Config::expiry_interval`]
//! call [`MemStore::expire`] (bounded work per call) and report each expired record to
//! [`Router::session_ended`].
//!
//! Network input never panics the core: malformed input becomes an HTTP error status
//! with a JSON-RPC body where the protocol expects one, or a closed connection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod affinity;
pub mod config;
pub mod conn;
pub mod failover;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod http;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod probe;
pub mod reap;
pub mod router;
pub mod seal;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod stdio;
pub mod store;
mod timer;

pub use affinity::Affinity;
pub use config::{Backend, Config, ConfigError, SessionIds, Timeouts};
pub use conn::{Buffers, Conn, EndCause, Event, Limit, Output, Side};
pub use limits::{Admission, AdmitRequest, ClientId, ClientIdentity, IpNet, Limits};
pub use reap::{ReapJob, ReapResult, ReapSettings, Reaper};
pub use router::{
    BackendId, Balancer, ConnPermit, ConnRefusal, Health, LeastSessions, PickKind, Router,
};
pub use seal::{KeyRing, Refusal};
pub use store::{Era, MemStore, Record, StoreOp, StoreReply};
