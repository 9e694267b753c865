//! Redis over glommio sockets: one connection per executor, commands pipelined in
//! batches with replies matched in order. The commands and the reading of replies are
//! the shared [`RedisCodec`]'s; only the bytes travel here (encoded by
//! `redis::Cmd::get_packed_command`, decoded by `redis::parse_redis_value` once
//! `frame_len` says a whole reply is in the buffer).
//!
//! Script replies (the record, nil, or an integer for a key that holds no record) and
//! `NOSCRIPT` errors are whole RESP values like any other: the reply matching in order
//! needs nothing of its own for them. A `NOSCRIPT` reply is answered by a second
//! request carrying the script's source.
//!
//! Like the tokio and smol store: every op is bounded by `--store-timeout`; while the
//! connection is down, ops fail at once (`Unavailable`: the client gets 503, never
//! 404), and the connection comes back by itself with backoff (50 ms to 2 s).
//!
//! Unlike them it has no record cache (`--store-cache-size` is accepted and ignored):
//! every lookup is one round trip. A cache here would need a RESP3 tracking
//! connection per executor (executors share nothing) reading invalidation pushes,
//! which this client does not parse; see docs/scaling.md, "The record cache".

use crate::Glommio;
use async_channel::{Receiver, Sender};
use bytes::{Buf, BytesMut};
use mcp_router_core::{ConfigError, Router, StoreOp, StoreReply};
use mcp_router_frontend::rt::{self, Io, Runtime, Shutdown};
use mcp_router_frontend::{RedisCodec, RedisSettings, RemoteStore};
use redis::{ConnectionAddr, Value};
use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// Most commands waiting to be sent; past it ops fail at once.
const QUEUE: usize = 4096;
/// Most commands sent in one batch.
const BATCH: usize = 256;
/// Largest reply buffered; a larger one drops the connection.
const MAX_REPLY: usize = 1 << 20;

type Request = (Vec<u8>, Sender<Value>);

/// The store of one executor.
#[derive(Debug, Clone)]
pub struct GlommioRedis {
    codec: RedisCodec,
    timeout: Duration,
    queue: Sender<Request>,
    up: Rc<Cell<bool>>,
    /// The first connection attempt is over (up or failed).
    tried: Rc<Cell<bool>>,
}

/// The connection side, run by [`Worker::run`] on the executor.
#[derive(Debug)]
pub struct Worker {
    host: String,
    port: u16,
    hello: Vec<u8>,
    hello_replies: usize,
    timeout: Duration,
    queue: Receiver<Request>,
    up: Rc<Cell<bool>>,
    tried: Rc<Cell<bool>>,
}

impl GlommioRedis {
    /// The store for `s`, and the worker that carries its commands (spawn
    /// [`Worker::run`] on the same executor).
    pub fn new(
        s: &RedisSettings,
        router: Arc<Router>,
    ) -> Result<(GlommioRedis, Worker), ConfigError> {
        let plain_only = || {
            ConfigError(
                "store: the glommio frontend speaks plain TCP to one Redis (redis://host:port); \
                 rediss://, unix sockets, Redis Sentinel (redis+sentinel://) and Redis Cluster \
                 (redis-cluster://) need mcp-router or mcp-router-smol"
                    .into(),
            )
        };
        if !s.url.starts_with("redis://") {
            return Err(plain_only());
        }
        if s.wait_replicas > 0 {
            return Err(ConfigError(
                "store_wait_replicas: the glommio frontend does not wait for Redis replicas; \
                 use mcp-router or mcp-router-smol"
                    .into(),
            ));
        }
        let info = s.connection_info()?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            _ => return Err(plain_only()),
        };
        let r = info.redis_settings();
        let mut hello = Vec::new();
        let mut hello_replies = 0;
        if let Some(p) = r.password() {
            let mut c = redis::cmd("AUTH");
            if let Some(u) = r.username() {
                c.arg(u);
            }
            c.arg(p);
            c.write_packed_command(&mut hello);
            hello_replies += 1;
        }
        if r.db() != 0 {
            redis::cmd("SELECT")
                .arg(r.db())
                .write_packed_command(&mut hello);
            hello_replies += 1;
        }
        let (tx, rx) = async_channel::bounded(QUEUE);
        let up = Rc::new(Cell::new(false));
        let tried = Rc::new(Cell::new(false));
        Ok((
            GlommioRedis {
                codec: RedisCodec::new(s, router),
                timeout: s.timeout,
                queue: tx,
                up: up.clone(),
                tried: tried.clone(),
            },
            Worker {
                host,
                port,
                hello,
                hello_replies,
                timeout: s.timeout,
                queue: rx,
                up,
                tried,
            },
        ))
    }

    async fn request(&self, cmd: Vec<u8>) -> Option<Value> {
        if !self.up.get() && !self.tried.get() {
            // Just started: the executor's first connection is still being made. Wait
            // for it (within the store timeout) rather than answer 503 to the first
            // requests of a replica whose Redis is up; once it has been tried, a down
            // connection fails ops at once.
            let tried = self.tried.clone();
            let _ = rt::timeout::<Glommio, _>(self.timeout, async move {
                while !tried.get() {
                    Glommio::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
        }
        if !self.up.get() {
            return None;
        }
        let (tx, rx) = async_channel::bounded(1);
        self.queue.try_send((cmd, tx)).ok()?;
        rt::timeout::<Glommio, _>(self.timeout, rx.recv())
            .await?
            .ok()
    }
}

impl RemoteStore for GlommioRedis {
    async fn execute(&self, op: &StoreOp) -> StoreReply {
        let v = match self
            .request(self.codec.command(op).get_packed_command())
            .await
        {
            // Redis lost the record script (restart, `SCRIPT FLUSH`): once more with
            // its source, which loads it again
            Some(v) if RedisCodec::is_noscript(&v) => {
                self.request(self.codec.command_with_source(op).get_packed_command())
                    .await
            }
            v => v,
        };
        match v {
            Some(v) => self.codec.reply(op, v),
            None => StoreReply::Unavailable,
        }
    }

    async fn ping(&self) -> bool {
        let v = self.request(redis::cmd("PING").get_packed_command()).await;
        matches!(v, Some(Value::SimpleString(s)) if s == "PONG")
    }
}

impl Worker {
    /// Keep a connection up and carry queued commands until `shutdown`.
    pub async fn run(self, shutdown: Arc<Shutdown>) {
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_set() {
            let connected = self.connect().await;
            self.tried.set(true);
            match connected {
                Ok((s, buf)) => {
                    backoff = Duration::from_millis(50);
                    self.up.set(true);
                    self.serve(s, buf, &shutdown).await;
                    self.up.set(false);
                }
                Err(e) => debug!(error = %e, "redis: connect failed"),
            }
            // fail whatever queued meanwhile: its callers get 503 now, not later
            while self.queue.try_recv().is_ok() {}
            if rt::timeout::<Glommio, _>(backoff, shutdown.wait())
                .await
                .is_some()
            {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn connect(&self) -> io::Result<(crate::Stream, BytesMut)> {
        let t = self.timeout;
        let mut s = rt::timeout::<Glommio, _>(t, crate::connect(self.host.clone(), self.port))
            .await
            .ok_or(io::ErrorKind::TimedOut)??;
        let mut buf = BytesMut::with_capacity(4096);
        if self.hello_replies > 0 {
            let r = rt::timeout::<Glommio, _>(t, async {
                rt::write_all(&mut s, &self.hello).await?;
                for _ in 0..self.hello_replies {
                    if let Value::ServerError(e) = read_value(&mut s, &mut buf).await? {
                        return Err(io::Error::other(format!("redis refused: {e:?}")));
                    }
                }
                Ok(())
            })
            .await;
            r.ok_or(io::ErrorKind::TimedOut)??;
        }
        Ok((s, buf))
    }

    /// Carry batches until the connection fails or `shutdown`.
    async fn serve(&self, mut s: crate::Stream, mut buf: BytesMut, shutdown: &Shutdown) {
        let mut out = Vec::new();
        let mut waiting: Vec<Sender<Value>> = Vec::with_capacity(BATCH);
        loop {
            let first = futures_lite::future::or(async { self.queue.recv().await.ok() }, async {
                shutdown.wait().await;
                None
            })
            .await;
            let Some(first) = first else { return };
            out.clear();
            waiting.clear();
            let mut next = Some(first);
            while let Some((cmd, tx)) = next.take() {
                out.extend_from_slice(&cmd);
                waiting.push(tx);
                if waiting.len() < BATCH {
                    next = self.queue.try_recv().ok();
                }
            }
            let n = waiting.len();
            let r = rt::timeout::<Glommio, _>(self.timeout, async {
                rt::write_all(&mut s, &out).await?;
                for tx in waiting.drain(..n) {
                    let v = read_value(&mut s, &mut buf).await?;
                    let _ = tx.try_send(v);
                }
                Ok::<_, io::Error>(())
            })
            .await;
            match r {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    debug!(error = %e, "redis: connection lost");
                    return;
                }
                None => {
                    debug!("redis: no reply within the store timeout; reconnecting");
                    return;
                }
            }
        }
    }
}

/// Read one whole reply.
async fn read_value<S: Io>(s: &mut S, buf: &mut BytesMut) -> io::Result<Value> {
    loop {
        match frame_len(buf, 0) {
            Ok(Some(n)) => {
                let v = redis::parse_redis_value(&buf[..n]).map_err(io::Error::other)?;
                buf.advance(n);
                return Ok(v);
            }
            Ok(None) if buf.len() < MAX_REPLY => {
                if rt::read_buf(s, buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok(None) => return Err(io::Error::other("redis reply too large")),
            Err(()) => return Err(io::Error::other("malformed redis reply")),
        }
    }
}

/// The length of the first whole RESP2/RESP3 value in `b`; `None` if incomplete,
/// `Err` if malformed. Nesting is bounded.
pub(crate) fn frame_len(b: &[u8], depth: usize) -> Result<Option<usize>, ()> {
    if depth > 8 {
        return Err(());
    }
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() > 64 * 1024 {
            Err(())
        } else {
            Ok(None)
        };
    };
    // a line needs its type byte before the CRLF
    let (Some(&kind), true) = (b.first(), eol >= 1) else {
        return Err(());
    };
    let line = &b[1..eol];
    let num = || -> Result<i64, ()> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(())
    };
    let head = eol + 2;
    match kind {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Ok(Some(head)),
        b'$' | b'!' | b'=' => {
            let n = num()?;
            if n < 0 {
                return Ok(Some(head));
            }
            let n = usize::try_from(n).map_err(|_| ())?;
            if n > MAX_REPLY {
                return Err(());
            }
            let end = head + n + 2;
            Ok((b.len() >= end).then_some(end))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = num()?;
            if n < 0 {
                return Ok(Some(head));
            }
            let per = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
            let items = usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(per))
                .filter(|&n| n <= 1 << 16)
                .ok_or(())?;
            let mut at = head;
            for _ in 0..items {
                match frame_len(&b[at..], depth + 1)? {
                    Some(n) => at += n,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{frame_len, GlommioRedis};
    use mcp_router_frontend::RedisSettings;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn tls_redis_is_refused_naming_the_store() {
        let router = Arc::new(mcp_router_core::Router::new(
            Arc::new(mcp_router_core::Config::default()),
            Instant::now(),
        ));
        let settings = |url: &str| RedisSettings {
            password: Some("secret".into()),
            ..RedisSettings::single(url, "p:", Duration::from_millis(10))
        };
        let e =
            GlommioRedis::new(&settings("rediss://127.0.0.1:6379"), router.clone()).unwrap_err();
        assert!(e.0.starts_with("store:") && e.0.contains("rediss"), "{e}");
        for url in [
            "redis+sentinel://127.0.0.1:26379/m",
            "redis-cluster://127.0.0.1:7000",
        ] {
            let e = GlommioRedis::new(&settings(url), router.clone()).unwrap_err();
            assert!(
                e.0.contains("Sentinel") && e.0.contains("mcp-router-smol"),
                "{e}"
            );
        }
        let (_, worker) =
            GlommioRedis::new(&settings("redis://u@127.0.0.1:6379/3"), router).unwrap();
        // the password override and the db are sent on connect
        let hello = String::from_utf8(worker.hello.clone()).unwrap();
        assert_eq!(worker.hello_replies, 2);
        assert!(hello.contains("AUTH\r\n$1\r\nu\r\n$6\r\nsecret"), "{hello}");
        assert!(hello.contains("SELECT\r\n$1\r\n3"), "{hello}");
    }

    #[test]
    fn frames_are_found_whole_or_not_at_all() {
        assert_eq!(frame_len(b"+OK\r\n", 0), Ok(Some(5)));
        assert_eq!(frame_len(b"+OK\r", 0), Ok(None));
        assert_eq!(frame_len(b"$-1\r\n:1\r\n", 0), Ok(Some(5)));
        assert_eq!(frame_len(b"$5\r\nhello\r\n+x", 0), Ok(Some(11)));
        assert_eq!(frame_len(b"$5\r\nhel", 0), Ok(None));
        assert_eq!(frame_len(b"*2\r\n:1\r\n$1\r\na\r\n", 0), Ok(Some(15)));
        assert_eq!(frame_len(b"*2\r\n:1\r\n", 0), Ok(None));
        assert_eq!(frame_len(b"?\r\n", 0), Err(()));
        assert_eq!(frame_len(b"$x\r\n", 0), Err(()));
        assert_eq!(frame_len(b"$99999999999\r\n", 0), Err(()));
        // no type byte, huge counts: refused, never a panic
        assert_eq!(frame_len(b"\r\n", 0), Err(()));
        assert_eq!(frame_len(b"%9223372036854775807\r\n", 0), Err(()));
        assert_eq!(frame_len(b"*-1\r\n", 0), Ok(Some(5)));
        // nesting is bounded
        assert_eq!(frame_len(&b"*1\r\n".repeat(20), 0), Err(()));
        for cut in 0..15 {
            let full = b"*2\r\n:1\r\n$1\r\na\r\n";
            assert_eq!(frame_len(&full[..cut], 0), Ok(None), "cut at {cut}");
        }
    }
}
