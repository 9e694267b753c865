//! Sans-IO core of mcp-router (crate docs are written with the connection state machine).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod http;
pub mod mcp;
