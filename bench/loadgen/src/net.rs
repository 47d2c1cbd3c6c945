//! Where and how to connect: the target (URL, source addresses, token) and the TCP socket,
//! connected from a chosen 127.x source address and driven by hand on the runtime's reactor.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

use tokio::io::unix::AsyncFd;
use tokio::net::TcpSocket;

/// Where to connect and how: parsed once, shared by every connection.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    /// Path and query, e.g. `/wse?format=msgpack`.
    pub resource: String,
    /// `127.0.0.1 ..= 127.0.0.N` when more than one; connection `i` uses source `i % N`.
    pub sources: Vec<Ipv4Addr>,
    pub token: Option<String>,
    pub cookie_name: String,
    pub token_header: bool,
    pub token_cookie: bool,
    pub origin: Option<String>,
    pub max_payload: u64,
    /// Offer permessage-deflate in the upgrade (and inflate what comes compressed).
    pub deflate: bool,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("only ws:// URLs are supported, got {url}"))?;
        let (authority, resource) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
                None => (rest, "/".to_string()),
            },
        };
        let with_port = if authority
            .rsplit(':')
            .next()
            .is_some_and(|p| p.parse::<u16>().is_ok())
            && authority.contains(':')
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("no IPv4 address for {authority}"))?;
        Ok(Target {
            addr,
            host_header: authority.to_string(),
            resource,
            sources: Vec::new(),
            token: None,
            cookie_name: "access_token".into(),
            token_header: true,
            token_cookie: true,
            origin: None,
            max_payload: 64 << 20,
            deflate: false,
        })
    }

    /// Add `key=value` to the query string.
    pub fn add_query(&mut self, kv: &str) {
        let sep = if self.resource.contains('?') {
            '&'
        } else {
            '?'
        };
        self.resource = format!("{}{sep}{kv}", self.resource);
    }

    pub fn set_sources(&mut self, n: usize) {
        self.sources = if n > 1 {
            (1..=n)
                .map(|i| Ipv4Addr::new(127, 0, 0, i.min(254) as u8))
                .collect()
        } else {
            Vec::new()
        };
    }

    pub fn source_for(&self, idx: usize) -> Option<Ipv4Addr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[idx % self.sources.len()])
        }
    }
}

/// TCP connect, bound to `source` if given. IP_BIND_ADDRESS_NO_PORT lets the kernel pick the
/// port at connect time by the whole 4-tuple, so each source address gives a full port range.
pub async fn tcp_connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<Sock> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if let Some(ip) = source {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the right size.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SocketAddr::new(ip.into(), 0).into())?;
    }
    let std_stream: std::net::TcpStream = sock.into();
    let stream = TcpSocket::from_std_stream(std_stream).connect(addr).await?;
    // From here on, readiness is handled by hand (see `Sock`).
    let std_stream = stream.into_std()?;
    std_stream.set_nonblocking(true)?;
    Ok(Sock {
        // SAFETY: std's TcpStream owns its descriptor and always returns the same one; it is
        // closed only when the AsyncFd (which owns the stream) is dropped.
        fd: unsafe { AsyncFd::register(std_stream) }.map_err(io::Error::from)?,
    })
}

/// A non-blocking TCP socket registered with the runtime. Unlike tokio's TcpStream it lets a
/// read that came back short clear the readiness itself (edge-triggered epoll: the socket was
/// drained), which saves the extra read that would only return EWOULDBLOCK; and any thread can
/// write to it directly.
pub struct Sock {
    pub(crate) fd: AsyncFd<std::net::TcpStream>,
}

impl Sock {
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.fd.get_ref().write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut g = self.fd.writable().await?;
                    // Retry under the guard: a write that still blocks clears the readiness.
                    match g.try_io(|s| s.get_ref().write(data)) {
                        Ok(r) => data = &data[r?..],
                        Err(_) => continue,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One write attempt (any thread): bytes written, 0 if the socket buffer is full.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self.fd.get_ref().write(data) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = Target::parse("ws://127.0.0.1:5900/wse").unwrap();
        assert_eq!(t.addr, "127.0.0.1:5900".parse().unwrap());
        assert_eq!(t.resource, "/wse");
        let mut t = Target::parse("ws://127.0.0.1:5900").unwrap();
        assert_eq!(t.resource, "/");
        t.add_query("format=msgpack");
        assert_eq!(t.resource, "/?format=msgpack");
        let mut t = Target::parse("ws://127.0.0.1:81/a?x=1").unwrap();
        t.add_query("format=msgpack");
        assert_eq!(t.resource, "/a?x=1&format=msgpack");
    }
}
