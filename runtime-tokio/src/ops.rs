//! Operating the router: backend discovery through DNS, configuration reload, and the
//! admin listener (`/metrics`, `/healthz`, `/readyz`, draining).

use crate::{Cli, Settings, Shared};
use bytes::BytesMut;
use mcp_router_core::admin;
use mcp_router_core::http::{
    parse_request, write_simple_response, HttpLimits, RequestHead, Version,
};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Resolves a DNS name to addresses. The seam through which tests script discovery.
pub trait Resolve: Send + Sync + 'static {
    /// All addresses of `host`, with `port`.
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// Resolve every `--discover` name once, then install the resulting backend set. A
/// name that fails to resolve keeps its previous members (a DNS blip must not end
/// every session); one that resolves to nothing has none.
pub async fn discover_once(shared: &Shared) {
    let groups = read(&shared.settings).discover.clone();
    for (i, g) in groups.iter().enumerate() {
        match shared.resolver.resolve(g.host.clone(), g.port).await {
            Ok(addrs) => {
                let members = admin::discovered_members(g, addrs);
                if let Ok(mut d) = shared.discovered.lock() {
                    if let Some(slot) = d.get_mut(i) {
                        *slot = members;
                    }
                }
            }
            Err(e) => {
                warn!(name = %g.name, host = %g.host, error = %e, "discovery: resolving failed; keeping the last members")
            }
        }
    }
    apply_backends(shared);
}

/// Install the static backends of the settings in force plus the discovered ones.
pub fn apply_backends(shared: &Shared) {
    let core = read(&shared.settings).core.clone();
    let all = match shared.discovered.lock() {
        Ok(d) => admin::all_backends(&core.backends, &d),
        Err(_) => core.backends.clone(),
    };
    let changes = shared
        .router
        .set_backends(core, all, std::time::Instant::now());
    for name in &changes.added {
        info!(backend = %name, "backend added");
    }
    for name in &changes.removed {
        warn!(backend = %name, "backend removed: its sessions end");
    }
}

/// Re-resolve the `--discover` names every `discover_interval`.
pub async fn discovery_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let every = read(&shared.settings).discover_interval;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        discover_once(&shared).await;
    }
}

/// Re-read the configuration (flags, environment, `--config` file) and apply what can
/// change at run time: backends, discovery, draining, limits and timeouts (new
/// connections use the new limits; open connections and streams are untouched). The
/// listen address and the store cannot change without a restart.
pub async fn reload(shared: &Shared, cli: &Cli) -> Result<(), mcp_router_core::ConfigError> {
    let new = cli.settings()?;
    {
        let mut cur = shared.settings.write().unwrap_or_else(|e| e.into_inner());
        if new.listen != cur.listen || new.admin_listen != cur.admin_listen {
            warn!("reload: listen addresses cannot change without a restart; keeping them");
        }
        if std::mem::discriminant(&new.store) != std::mem::discriminant(&cur.store) {
            warn!("reload: the session store cannot change without a restart; keeping it");
        }
        let groups = new.discover.len();
        *cur = Settings {
            listen: cur.listen,
            admin_listen: cur.admin_listen,
            store: cur.store.clone(),
            ..new
        };
        if let Ok(mut d) = shared.discovered.lock() {
            d.resize(groups, Vec::new());
        }
    }
    discover_once(shared).await;
    let drain = read(&shared.settings).drain.clone();
    for m in shared.router.status(std::time::Instant::now()) {
        shared
            .router
            .set_draining(&m.backend.name, drain.contains(&m.backend.name));
    }
    info!(backends = shared.router.ids().len(), draining = ?drain, "configuration reloaded");
    Ok(())
}

/// Reload on every SIGHUP. A configuration that does not parse is refused and the
/// running one kept.
#[cfg(unix)]
pub async fn reload_on_sighup(shared: Arc<Shared>, cli: Cli, mut shutdown: watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        error!("cannot install a SIGHUP handler: reload disabled");
        return;
    };
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = shutdown.changed() => return,
        }
        info!("SIGHUP: reloading the configuration");
        if let Err(e) = reload(&shared, &cli).await {
            error!(error = %e, "reload refused; the running configuration stays");
        }
    }
}

fn read(s: &std::sync::RwLock<Settings>) -> std::sync::RwLockReadGuard<'_, Settings> {
    s.read().unwrap_or_else(|e| e.into_inner())
}

/// Serve the admin endpoints on `listener` until shutdown.
pub async fn serve_admin(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => if let Ok((s, _)) = r {
                let sh = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), admin_conn(s, sh)).await;
                });
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// One admin request per connection.
async fn admin_conn(mut s: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    let limits = HttpLimits::default();
    let mut buf = BytesMut::with_capacity(1024);
    let mut head = RequestHead::default();
    let mut out = BytesMut::new();
    loop {
        match parse_request(&mut buf, &limits, &mut head) {
            Ok(true) => break,
            Ok(false) => {
                if s.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            Err(e) => {
                write_simple_response(
                    &mut out,
                    e.status(),
                    "text/plain",
                    &[],
                    e.reason().as_bytes(),
                    Version::Http11,
                    false,
                );
                return s.write_all(&out).await;
            }
        }
    }
    let a = admin::answer(
        head.method,
        head.path(),
        &shared.router,
        &shared.metrics,
        shared.store.is_ready(),
        std::time::Instant::now(),
    );
    if let Some((name, draining)) = &a.drained {
        info!(backend = %name, draining, "backend drain state changed (admin)");
    }
    write_simple_response(
        &mut out,
        a.status,
        a.content_type,
        &[],
        a.body.as_bytes(),
        Version::Http11,
        false,
    );
    s.write_all(&out).await?;
    s.shutdown().await
}
