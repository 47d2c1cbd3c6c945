//! The listening socket (SO_REUSEPORT, so each worker process can open its own on one port)
//! and the accept loop with its connection and pending-handshake bounds (`limits/handshakes.rs`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

use crate::background;
use crate::config::Config;
use crate::connection::{self, Conn};
use crate::engine::Engine;
use crate::handshake::{self, Accepted};
use crate::limits::addresses::AddressCounts;
use crate::limits::handshakes::{Pending, Refused, Slot, RESPONSE_429};
use crate::metrics::Metrics;

/// A bound listening socket: TCP, or a Unix domain socket (`uds`).
pub enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, String),
}

/// The address a connection over a Unix domain socket reports (it has no IP peer).
pub const UNIX_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Binds the listening socket. Done on the caller's thread, so a bad address fails at once.
pub fn bind(cfg: &Config) -> std::io::Result<Bound> {
    if let Some(path) = &cfg.uds {
        return bind_unix(path, cfg.backlog).map(|l| Bound::Unix(l, path.clone()));
    }
    bind_tcp(cfg).map(Bound::Tcp)
}

/// A Unix domain socket at `path`, replacing a stale socket file left by a previous run (but
/// never another kind of file).
fn bind_unix(path: &str, backlog: i32) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{path} exists and is not a socket")));
        }
        std::fs::remove_file(path)?;
    }
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    sock.bind(&SockAddr::unix(path)?)?;
    sock.listen(backlog)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn bind_tcp(cfg: &Config) -> std::io::Result<std::net::TcpListener> {
    if let Some(fd) = cfg.listen_fd {
        return adopt(fd);
    }
    let addr: SocketAddr = (cfg.host.as_str(), cfg.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if cfg.reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(cfg.backlog)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Takes over a listening socket handed down by a supervisor (it keeps its own copy, so the
/// socket and its backlog outlive this process: a restarted worker accepts what queued meanwhile).
fn adopt(fd: i32) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: the fd was passed to this process for this purpose; we own it from here on.
    let sock = unsafe { Socket::from_raw_fd(fd) };
    if sock.r#type()? != Type::STREAM || sock.local_addr()?.as_socket().is_none() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "listen_fd is not a TCP socket"));
    }
    // Set here too (a supervisor's socket may lack it): accepted sockets inherit it.
    sock.set_tcp_nodelay(true)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

enum Listening {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listening {
    async fn accept(&self) -> std::io::Result<(Stream, SocketAddr)> {
        match self {
            Self::Tcp(l) => l.accept().await.map(|(s, a)| {
                // Linux copies TCP_NODELAY from the listening socket (set in `bind_tcp` and
                // `adopt`) to each accepted one: no setsockopt per connection there.
                #[cfg(not(target_os = "linux"))]
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s), a)
            }),
            Self::Unix(l) => l.accept().await.map(|(s, _)| (Stream::Unix(s), UNIX_PEER)),
        }
    }
}

impl Stream {
    /// Answers 503 (within the bound on refusals in flight) and closes.
    fn refuse(self, pending: &Pending) {
        match self {
            Self::Tcp(s) => pending.refuse(s),
            Self::Unix(s) => pending.refuse(s),
        }
    }

    /// Answers `response` (within the same bound) and closes.
    fn refuse_with(self, pending: &Pending, response: &'static [u8]) {
        match self {
            Self::Tcp(s) => pending.refuse_with(s, response),
            Self::Unix(s) => pending.refuse_with(s, response),
        }
    }
}

/// Accepts until `stop` turns true.
pub async fn serve(engine: Arc<Engine>, listener: Bound, mut stop: watch::Receiver<bool>) {
    let registered = match listener {
        Bound::Tcp(l) => TcpListener::from_std(l).map(Listening::Tcp),
        Bound::Unix(l, _) => UnixListener::from_std(l).map(Listening::Unix),
    };
    let listener = match registered {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot register the listening socket: {e}");
            return;
        }
    };
    let pending = Pending::new(engine.cfg.max_pending_handshakes, engine.cfg.max_pending_handshakes_per_ip);
    // Open connections (handshakes included) per source address; not over a Unix socket,
    // where every client has the same address (the proxy's).
    let open_by_ip = AddressCounts::default();
    let per_ip = engine.cfg.max_connections_per_ip;
    let tls = engine.tls.clone();
    let m = engine.metrics.clone();
    let background = background::spawn(&engine, stop.clone());
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        Metrics::inc(&m.connections_accepted);
        if !engine.try_reserve_slot() {
            Metrics::inc(&m.connections_rejected_limit);
            log::debug!(target: "wse.access", "{addr} refused: 503 max_connections reached");
            stream.refuse(&pending);
            continue;
        }
        let counted = if per_ip > 0 && addr != UNIX_PEER {
            match open_by_ip.take(addr, per_ip) {
                Some(c) => Some(c),
                None => {
                    Metrics::inc(&m.connections_rejected_ip);
                    log::debug!(target: "wse.access", "{addr} refused: 429 max_connections_per_ip reached");
                    engine.release_slot();
                    stream.refuse_with(&pending, RESPONSE_429);
                    continue;
                }
            }
        } else {
            None
        };
        let permit = match pending.admit(addr) {
            Ok(p) => p,
            Err(why) => {
                Metrics::inc(match why {
                    Refused::Total => &m.connections_rejected_pending,
                    Refused::PerAddress => &m.connections_rejected_pending_ip,
                });
                log::debug!(target: "wse.access", "{addr} refused: 503 {}", match why {
                    Refused::Total => "max_pending_handshakes reached",
                    Refused::PerAddress => "max_pending_handshakes_per_ip reached",
                });
                engine.release_slot();
                stream.refuse(&pending);
                continue;
            }
        };
        let engine = engine.clone();
        let tls = tls.clone();
        // The handshake runs in a task of its own, and the connection in another (`live`): a
        // task lives as long as its future, and a future is as large as its largest state, so
        // what only the handshake needs (the request, the TLS handshake, boxed besides) is gone
        // once the connection is up, and an idle connection's task carries its reader alone.
        tokio::spawn(async move {
            let timeout = engine.cfg.handshake_timeout();
            match (tls, stream) {
                (None, Stream::Tcp(stream)) => {
                    let upgrading = Box::pin(upgrade(&engine, stream, addr, timeout, permit));
                    if let Some((stream, leftover, head, conn)) = upgrading.await {
                        let (rd, wr) = stream.into_split();
                        tokio::spawn(live(engine, conn, rd, wr, leftover, head, counted));
                        return;
                    }
                }
                (None, Stream::Unix(stream)) => {
                    let upgrading = Box::pin(upgrade(&engine, stream, addr, timeout, permit));
                    if let Some((stream, leftover, head, conn)) = upgrading.await {
                        let (rd, wr) = stream.into_split();
                        tokio::spawn(live(engine, conn, rd, wr, leftover, head, counted));
                        return;
                    }
                }
                (Some(acceptor), Stream::Tcp(stream)) => {
                    let serving = Box::pin(serve_tls(&engine, acceptor, stream, addr, timeout, permit));
                    serving.await
                }
                (Some(acceptor), Stream::Unix(stream)) => {
                    let serving = Box::pin(serve_tls(&engine, acceptor, stream, addr, timeout, permit));
                    serving.await
                }
            }
            engine.release_slot();
            drop(counted);
        });
    }
    background.finish();
}

/// An upgraded connection, until it ends; then its slot under `max_connections` is free, and
/// its count under `max_connections_per_ip` (`counted`, dropped last).
/// (Boxes made in a statement of their own, here and below: a temporary moved into
/// `Box::pin(..)` within the awaiting statement would still take its room in the future.)
/// Not an `async fn`: its arguments would be stored twice in the future (as arguments, then
/// moved into locals), for the connection's whole life.
#[allow(clippy::manual_async_fn)]
fn live<R, W, C>(engine: Arc<Engine>, conn: Arc<Conn>, rd: R, wr: W, leftover: BytesMut, head: Vec<u8>, counted: C) -> impl std::future::Future<Output = ()> + Send
where
    C: Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    async move {
        connection::run(&engine, conn, rd, wr, leftover, head).await;
        engine.release_slot();
        drop(counted);
    }
}

/// A TLS connection: the TLS handshake (sharing the upgrade's timeout), the upgrade, then the
/// connection through tokio's split halves.
async fn serve_tls<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    engine: &Arc<Engine>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: S,
    addr: SocketAddr,
    timeout: Duration,
    permit: Slot,
) {
    let start = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            let left = timeout.saturating_sub(start.elapsed());
            if let Some((stream, leftover, head, conn)) = upgrade(engine, tls_stream, addr, left, permit).await {
                let (rd, wr) = tokio::io::split(stream);
                connection::run(engine, conn, rd, wr, leftover, head).await;
            }
        }
        Ok(Err(e)) => {
            Metrics::inc(&engine.metrics.tls_failures);
            log::debug!(target: "wse.access", "{addr} refused: TLS handshake failed: {e}");
        }
        Err(_) => {
            Metrics::inc(&engine.metrics.handshake_timeouts);
            log::debug!(target: "wse.access", "{addr} refused: TLS handshake timed out");
        }
    }
}

/// The HTTP upgrade under `timeout`; on success the connection is registered and greeted
/// (`server_ready` queued: the writer sends it in one write with the `101` answer), and what
/// it goes on with is returned: the stream, the bytes read past the request, the `101` head,
/// the handle.
/// The pending-handshake `permit` is released when the upgrade is over, either way.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    engine: &Arc<Engine>,
    stream: S,
    addr: SocketAddr,
    timeout: Duration,
    permit: Slot,
) -> Option<(S, BytesMut, Vec<u8>, Arc<Conn>)> {
    let upgraded = tokio::time::timeout(timeout, handshake::accept(engine, stream, addr)).await;
    drop(permit);
    let mut a = match upgraded {
        Ok(a) => a?,
        Err(_) => {
            Metrics::inc(&engine.metrics.handshake_timeouts);
            log::debug!(target: "wse.access", "{addr} refused: handshake timed out");
            return None;
        }
    };
    if !crate::limits::users::admit(engine, a.user_id.as_deref(), &mut a.stream, &a.head).await {
        return None;
    }
    let Accepted { stream, leftover, head, user_id, claims, enc } = a;
    let conn = engine.register(user_id, claims, addr.to_string(), enc);
    if engine.cfg.envelopes {
        engine.send_ready(&conn);
    }
    Some((stream, leftover, head, conn))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's task is its `live` future (plus tokio's header): it must not carry
    /// the handshake's state, nor the cold states boxed in `connection::run` (a `Box::pin(..)`
    /// of a temporary inside the awaiting statement would bring them back). The idle benchmark
    /// measures the real memory; this guards the size of the future, whatever the machine.
    #[test]
    fn an_idle_connection_task_is_small() {
        let engine = Arc::new(Engine::new(Config::default()).unwrap());
        let conn = engine.register(None, None, "127.0.0.1:1".into(), Default::default());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        let (rd, wr) = UnixStream::from_std(a).unwrap().into_split();
        let out = conn.out.clone();
        let task = live(engine.clone(), conn, rd, wr, BytesMut::new(), Vec::new(), ());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 768, "the connection's future is {size} bytes");
        let writer = out.run_writer(tokio::io::sink(), bytes::Bytes::new(), 64, engine.metrics.clone());
        let size = std::mem::size_of_val(&writer);
        assert!(size <= 416, "the writer's future is {size} bytes");
    }
}
