//! Sans-IO core of mcp-router (crate docs are written with the connection state machine).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod conn;
pub mod http;
pub mod mcp;
pub mod router;
pub mod store;

pub use config::{Backend, Config, ConfigError, Timeouts};
pub use conn::{Buffers, Conn, EndCause, Event, Output};
pub use router::{BackendId, Balancer, Health, LeastSessions, PickKind, Router};
pub use store::{Era, MemStore, Record, StoreOp, StoreReply};
