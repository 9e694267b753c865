//! `mcp-fake-backend --listen 127.0.0.1:0 --name b1 [--tick-ms 100]`
//!
//! Prints `LISTENING <addr>` on stdout once bound, then serves until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use mcp_router_testkit::{bind, serve, Config};

const USAGE: &str = "usage: mcp-fake-backend [--listen ADDR] [--name NAME] [--tick-ms N]
  --listen ADDR   address to bind (default 127.0.0.1:0)
  --name NAME     backend name, visible ASCII (default backend)
  --tick-ms N     spacing of streamed events in ms (default 100)";

struct Args {
    listen: SocketAddr,
    config: Config,
}

fn parse_args() -> Result<Args, String> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = Config::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--name" => {
                let v = value()?;
                if v.is_empty() || !v.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                    return Err("--name must be non-empty visible ASCII".into());
                }
                config.name = v;
            }
            "--tick-ms" => {
                let v = value()?;
                let ms: u64 = v.parse().map_err(|e| format!("--tick-ms {v}: {e}"))?;
                config.tick = Duration::from_millis(ms.max(1));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args { listen, config })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("mcp-fake-backend: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-fake-backend: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match bind(args.listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mcp-fake-backend: bind {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("mcp-fake-backend: local_addr: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The handler is in place before anyone learns the address: a SIGTERM sent
        // right after LISTENING must be a clean exit, not the default action.
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("mcp-fake-backend: signal: {e}");
                    return ExitCode::FAILURE;
                }
            };
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "LISTENING {addr}");
            let _ = out.flush();
        }
        tokio::select! {
            r = serve(listener, args.config) => {
                if let Err(e) = r {
                    eprintln!("mcp-fake-backend: {e}");
                    return ExitCode::FAILURE;
                }
            }
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        ExitCode::SUCCESS
    })
    // Dropping the runtime here would wait on nothing blocking; streaming
    // tasks are cancelled with it.
}
