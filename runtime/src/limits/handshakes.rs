//! Pending handshakes (accepted sockets not yet upgraded): bounded in total and per source
//! address, so that silent sockets from one address cannot take every slot. A socket over
//! either bound is answered `503 Service Unavailable` and closed; the refusals themselves are
//! bounded too (past that, a refused socket is simply dropped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::addresses::{AddressCounts, Counted};

/// Refusals being written at once, at most; each lives for up to `LINGER`.
const MAX_REFUSALS: usize = 1024;
/// How long a refused socket is read (and the reading thrown away) after the 503, so that the
/// close does not reset a request the client already sent (which would lose the 503).
const LINGER: Duration = Duration::from_millis(500);
const RESPONSE_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";
/// `max_connections_per_ip`: this client holds too many connections (the server is not full).
pub const RESPONSE_429: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

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
    by_ip: AddressCounts,
    refusals: Arc<Semaphore>,
}

/// A pending handshake's slots; dropping it frees them.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    _ip: Option<Counted>,
}

impl Pending {
    /// `per_ip` 0: no bound per address.
    pub fn new(total: usize, per_ip: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_ip,
            by_ip: AddressCounts::default(),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        }
    }

    /// Takes a slot for a handshake from `addr`, or says which bound refused it.
    pub fn admit(&self, addr: SocketAddr) -> Result<Slot, Refused> {
        let ip = if self.per_ip > 0 { Some(self.by_ip.take(addr, self.per_ip).ok_or(Refused::PerAddress)?) } else { None };
        // Refused in total: the address's count is given back as `ip` drops.
        let total = self.total.clone().try_acquire_owned().map_err(|_| Refused::Total)?;
        Ok(Slot { _total: total, _ip: ip })
    }

    /// Answers `503` and closes (see `refuse_with`).
    pub fn refuse<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, stream: S) {
        self.refuse_with(stream, RESPONSE_503)
    }

    /// Answers `response` and closes, in its own task; without a free refusal slot, just closes.
    pub fn refuse_with<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, mut stream: S, response: &'static [u8]) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            if stream.write_all(response).await.is_err() {
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
        self.by_ip.addresses()
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
    fn no_bound_per_address_when_zero() {
        let p = Pending::new(2, 0);
        let _a = p.admit(addr("10.0.0.1:1")).unwrap();
        let _b = p.admit(addr("10.0.0.1:2")).unwrap();
        assert_eq!(p.admit(addr("10.0.0.1:3")).err(), Some(Refused::Total));
    }
}
