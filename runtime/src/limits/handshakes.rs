//! Pending handshakes (accepted sockets not yet upgraded): bounded in total and per source
//! address, so that silent sockets from one address cannot take every slot. A socket over
//! either bound is answered `503 Service Unavailable` and closed; the refusals themselves are
//! bounded too (past that, a refused socket is simply dropped).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refusals being written at once, at most; each lives for up to `LINGER`.
const MAX_REFUSALS: usize = 1024;
/// How long a refused socket is read (and the reading thrown away) after the 503, so that the
/// close does not reset a request the client already sent (which would lose the 503).
const LINGER: Duration = Duration::from_millis(500);
const RESPONSE_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

/// Which address a pending handshake is counted under: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_pending_handshakes` reached.
    Total,
    /// `max_pending_handshakes_per_ip` reached for its address.
    PerAddress,
}

pub struct Pending {
    total: Arc<Semaphore>,
    per_ip: usize,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    refusals: Arc<Semaphore>,
}

/// A pending handshake's slots; dropping it frees them.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    ip: Option<(IpAddr, Arc<Mutex<HashMap<IpAddr, usize>>>)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((ip, map)) = self.ip.take() {
            release(&map, ip);
        }
    }
}

fn release(map: &Mutex<HashMap<IpAddr, usize>>, ip: IpAddr) {
    let mut m = map.lock();
    if let Some(n) = m.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            m.remove(&ip);
        }
    }
}

impl Pending {
    /// `per_ip` 0: no bound per address.
    pub fn new(total: usize, per_ip: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_ip,
            by_ip: Arc::new(Mutex::new(HashMap::new())),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        }
    }

    /// Takes a slot for a handshake from `addr`, or says which bound refused it.
    pub fn admit(&self, addr: SocketAddr) -> Result<Slot, Refused> {
        let ip = if self.per_ip > 0 {
            let k = key(addr.ip());
            let mut m = self.by_ip.lock();
            let n = m.entry(k).or_insert(0);
            if *n >= self.per_ip {
                return Err(Refused::PerAddress);
            }
            *n += 1;
            Some((k, self.by_ip.clone()))
        } else {
            None
        };
        match self.total.clone().try_acquire_owned() {
            Ok(total) => Ok(Slot { _total: total, ip }),
            Err(_) => {
                if let Some((k, map)) = ip {
                    release(&map, k);
                }
                Err(Refused::Total)
            }
        }
    }

    /// Answers `503` and closes, in its own task; without a free refusal slot, just closes.
    pub fn refuse<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, mut stream: S) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            if stream.write_all(RESPONSE_503).await.is_err() {
                return;
            }
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(LINGER, async {
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }

    /// Addresses with a handshake pending now (for tests).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.by_ip.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bounds_per_address_and_in_total() {
        let p = Pending::new(3, 2);
        let a1 = p.admit(addr("10.0.0.1:1")).unwrap();
        let _a2 = p.admit(addr("10.0.0.1:2")).unwrap();
        assert_eq!(p.admit(addr("10.0.0.1:3")).err(), Some(Refused::PerAddress));
        let _b1 = p.admit(addr("10.0.0.2:1")).unwrap();
        // The total is reached: another address is refused, and its count is given back.
        assert_eq!(p.admit(addr("10.0.0.3:1")).err(), Some(Refused::Total));
        assert_eq!(p.addresses(), 2);
        drop(a1);
        assert!(p.admit(addr("10.0.0.1:4")).is_ok());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let p = Pending::new(100, 1);
        let _a = p.admit(addr("[2001:db8:1:2::1]:1")).unwrap();
        assert_eq!(p.admit(addr("[2001:db8:1:2::99]:1")).err(), Some(Refused::PerAddress));
        assert!(p.admit(addr("[2001:db8:1:3::1]:1")).is_ok());
        let _v4 = p.admit(addr("192.0.2.1:1")).unwrap();
        assert_eq!(p.admit(addr("[::ffff:192.0.2.1]:1")).err(), Some(Refused::PerAddress));
    }

    #[test]
    fn no_bound_per_address_when_zero() {
        let p = Pending::new(2, 0);
        let _a = p.admit(addr("10.0.0.1:1")).unwrap();
        let _b = p.admit(addr("10.0.0.1:2")).unwrap();
        assert_eq!(p.admit(addr("10.0.0.1:3")).err(), Some(Refused::Total));
    }
}
