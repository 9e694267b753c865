//! The `mcp-router-glommio` binary: the thread-per-core glommio frontend, with the same
//! configuration as `mcp-router`.

fn main() {
    let (cli, settings) = mcp_router_frontend::shared::load_cli("mcp-router-glommio");
    mcp_router_glommio::run(cli, settings);
}
