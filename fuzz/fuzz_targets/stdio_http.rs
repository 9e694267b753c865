#![no_main]
// The checks live in mcp_router_core::fuzzing, shared with the stable replay test.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_router_core::fuzzing::stdio_http(data));
