//! The `mcp-router-smol` binary: the smol frontend, with the same configuration as
//! `mcp-router`.

fn main() {
    let (cli, settings) = mcp_router_frontend::shared::load_cli("mcp-router-smol");
    mcp_router_smol::run(cli, settings);
}
