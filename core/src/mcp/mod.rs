//! MCP session facts: session ids, protocol versions, the JSON-RPC envelope sniffer,
//! the SSE event parser and the JSON-RPC error bodies the router answers with.

mod jsonrpc;
mod session;
mod sniff;
mod sse;

pub use jsonrpc::{
    write_error_body, write_unsupported_version_body, ErrorCode, LEGACY_VERSIONS, MODERN_VERSIONS,
};
pub use session::{
    endpoint_session_id, is_stateless_version, query_session_id, query_session_id_strict,
    replace_query_session_id, valid_session_id, SessionKey, INLINE_SESSION_ID_LEN,
    MAX_SESSION_ID_LEN,
};
pub use sniff::{Compared, Expect, Mirror, Sniffer};
pub use sse::{write_event, SseEvent, SseParser};
