//! The `mcp-router` binary: the tokio frontend with CLI/TOML/env configuration.

use clap::Parser;
use mcp_router_tokio::{ops, serve, shutdown_signal, Cli, Shared};
use tracing::{error, info, warn};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mcp-router: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    // One usable CPU (taskset, a cgroup quota of one core): a single-threaded runtime.
    // Its tasks then never pay for work stealing or cross-thread wakeups, and the
    // accept loop does not compete with a worker thread for the same CPU (proxy CPU
    // per request in the load benchmark: ~1.10x -> ~0.93x HAProxy's).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = builder
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(settings.listen).await {
            Ok(l) => l,
            Err(e) => {
                error!(listen = %settings.listen, error = %e, "cannot listen");
                std::process::exit(1);
            }
        };
        let addr = listener.local_addr().expect("bound listener has an address");
        let memory = matches!(settings.store, mcp_router_tokio::StoreSettings::Memory);
        if settings.replicas_expected > 1 && memory {
            warn!(
                replicas_expected = settings.replicas_expected,
                "several router replicas expected but the session store is embedded: \
                 sessions will break when a client's requests reach another replica; \
                 use a shared store"
            );
        }
        if let Some(stdio) = &settings.stdio {
            // `--stdio`: serve a stdio MCP server instead of proxying backends
            info!(listen = %addr, command = %stdio.command, mode = ?stdio.mode, max_children = stdio.max_children, ttl_s = settings.core.session_ttl.as_secs(), "mcp-router stdio bridge listening");
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                info!("shutdown signal received");
                let _ = tx.send(true);
            });
            if let Err(e) = mcp_router_tokio::stdio::serve(listener, &settings, stdio, rx).await {
                error!(error = %e, "stdio bridge failed");
                std::process::exit(1);
            }
            info!("stopped");
            return;
        }
                let shared = match Shared::new(&settings) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mcp-router: bad configuration: {e}");
                std::process::exit(2);
            }
        };
                let (tx, rx) = tokio::sync::watch::channel(false);
        if let Some(admin) = settings.admin_listen {
            match tokio::net::TcpListener::bind(admin).await {
                Ok(l) => {
                    let a = l.local_addr().expect("bound listener has an address");
                    info!(admin = %a, "admin listener: /metrics /healthz /readyz /admin/backends/<name>/drain");
                    tokio::spawn(ops::serve_admin(l, shared.clone(), rx.clone()));
                }
                Err(e) => {
                    error!(admin = %admin, error = %e, "cannot listen (admin)");
                    std::process::exit(1);
                }
            }
        }
        if !settings.discover.is_empty() {
            // the first resolution happens before clients are served
            ops::discover_once(&shared).await;
            tokio::spawn(ops::discovery_loop(shared.clone(), rx.clone()));
        }
        #[cfg(unix)]
        tokio::spawn(ops::reload_on_sighup(shared.clone(), cli.clone(), rx.clone()));
        let backends: Vec<String> = shared.router.status(std::time::Instant::now()).into_iter().map(|m| m.backend.name.clone()).collect();
        info!(listen = %addr, ?backends, store = shared.store.kind(), ttl_s = settings.core.session_ttl.as_secs(), "mcp-router listening");
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutdown signal received");
            let _ = tx.send(true);
        });
        serve(listener, shared, rx, settings.shutdown_grace).await;
        info!("stopped");
    });
}
