//! The `mcp-router` binary: the tokio frontend with CLI/TOML/env configuration.

fn main() {
    let (cli, settings) = mcp_router_frontend::shared::load_cli("mcp-router");
    mcp_router_tokio::run(cli, settings);
}
