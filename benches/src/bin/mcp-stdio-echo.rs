//! A minimal stdio MCP server for the stdio bridge's load benchmark (`mcp-load`'s
//! `stdio-*` rows): newline-delimited JSON-RPC on stdin/stdout; `initialize` answered
//! at once, `tools/call` answered with its `text` argument and `"backend":"stdio"` (the
//! marker `mcp-load` checks), `ping` and any other request with an empty result;
//! notifications ignored. Written in Rust so the benchmark measures the bridge, not an
//! interpreter.

use serde_json::{json, Value};
use std::io::{BufRead, Write};

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let (Some(id), Some(method)) = (msg.get("id"), msg.get("method").and_then(Value::as_str))
        else {
            continue; // a notification or a response
        };
        let result = match method {
            "initialize" => json!({
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcp-stdio-echo", "version": "1"},
                "backend": "stdio"
            }),
            "tools/call" => json!({
                "content": [{"type": "text", "text": msg["params"]["arguments"]["text"]}],
                "backend": "stdio"
            }),
            _ => json!({}),
        };
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
        if serde_json::to_writer(&mut out, &reply).is_err()
            || out.write_all(b"\n").is_err()
            || out.flush().is_err()
        {
            return;
        }
    }
}
