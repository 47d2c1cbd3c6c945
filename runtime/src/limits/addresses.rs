//! Counting by source address: what the pending-handshake bound (`handshakes.rs`) and the
//! open-connection bound (`max_connections_per_ip`) count per client host.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;

/// Which address a socket is counted under: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64), an IPv4-mapped IPv6 address as its IPv4.
pub fn key(ip: IpAddr) -> IpAddr {
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

type Map = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// How many of something each address holds.
#[derive(Default)]
pub struct AddressCounts {
    map: Map,
}

/// One counted socket; dropping it gives the count back.
pub struct Counted {
    ip: IpAddr,
    map: Map,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut m = self.map.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl AddressCounts {
    /// Counts one more for `addr`'s address, unless it already holds `max`.
    pub fn take(&self, addr: SocketAddr, max: usize) -> Option<Counted> {
        let ip = key(addr.ip());
        let mut m = self.map.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted { ip, map: self.map.clone() })
    }

    /// Addresses counted now.
    pub fn addresses(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_per_address_and_gives_back_on_drop() {
        let c = AddressCounts::default();
        let a = c.take(addr("10.0.0.1:1"), 2).unwrap();
        let _b = c.take(addr("10.0.0.1:2"), 2).unwrap();
        assert!(c.take(addr("10.0.0.1:3"), 2).is_none());
        let _other = c.take(addr("10.0.0.2:1"), 2).unwrap();
        drop(a);
        assert!(c.take(addr("10.0.0.1:4"), 2).is_some());
        assert_eq!(c.addresses(), 2);
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let c = AddressCounts::default();
        let _a = c.take(addr("[2001:db8:1:2::1]:1"), 1).unwrap();
        assert!(c.take(addr("[2001:db8:1:2::99]:1"), 1).is_none());
        assert!(c.take(addr("[2001:db8:1:3::1]:1"), 1).is_some());
        let _v4 = c.take(addr("192.0.2.1:1"), 1).unwrap();
        assert!(c.take(addr("[::ffff:192.0.2.1]:1"), 1).is_none());
    }
}
