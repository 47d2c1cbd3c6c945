//! Timestamps and ids for envelopes: RFC 3339 with milliseconds, and UUIDv7.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

thread_local! {
    /// The text up to the seconds for the last second formatted: most envelopes of a burst share it.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// `2026-11-24T15:04:05.123Z` into `out`.
pub fn write_rfc3339(out: &mut Vec<u8>, ms: u64) {
    let sec = ms / 1000;
    let (cached, prefix) = SECOND.with(|c| c.get());
    let prefix = if cached == sec {
        prefix
    } else {
        let mut v = Vec::with_capacity(24);
        write_rfc3339_slow(&mut v, ms);
        let mut p = [0u8; 20];
        p.copy_from_slice(&v[..20]);
        SECOND.with(|c| c.set((sec, p)));
        p
    };
    out.extend_from_slice(&prefix);
    let frac = ms % 1000;
    out.extend_from_slice(&[b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8, b'Z']);
}

fn write_rfc3339_slow(out: &mut Vec<u8>, ms: u64) {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    use std::io::Write;
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ms % 1000
    );
}

/// Appends `n` in decimal.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

pub fn rfc3339(ms: u64) -> String {
    let mut v = Vec::with_capacity(24);
    write_rfc3339(&mut v, ms);
    String::from_utf8(v).unwrap()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut s = [0u8; 8];
    // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(s.as_mut_ptr().cast(), 8, 0) };
    let v = u64::from_ne_bytes(s);
    if n == 8 && v != 0 {
        v
    } else {
        now_ms() ^ 0x9E37_79B9_7F4A_7C15
    }
}

/// xorshift64*: ids need uniqueness, not secrecy.
pub fn next_random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A UUIDv7 (48-bit millisecond time, random rest) in its 36-character text form.
pub fn write_uuid7(out: &mut Vec<u8>, ms: u64) {
    let r1 = next_random();
    let r2 = next_random();
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6..8].copy_from_slice(&r1.to_be_bytes()[..2]);
    b[8..16].copy_from_slice(&r2.to_be_bytes());
    b[6] = (b[6] & 0x0F) | 0x70;
    b[8] = (b[8] & 0x3F) | 0x80;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[(byte >> 4) as usize]);
        out.push(HEX[(byte & 15) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_532_645_007), "2026-11-24T15:04:05.007Z");
        // Same second from the cache, then the next second.
        assert_eq!(rfc3339(1_795_532_645_999), "2026-11-24T15:04:05.999Z");
        assert_eq!(rfc3339(1_795_532_646_010), "2026-11-24T15:04:06.010Z");
        let mut v = vec![];
        write_u64(&mut v, 0);
        write_u64(&mut v, 18_446_744_073_709_551_615);
        assert_eq!(v, b"018446744073709551615");
    }

    #[test]
    fn uuid7_shape() {
        let mut v = vec![];
        write_uuid7(&mut v, 0x0123_4567_89ab);
        let s = String::from_utf8(v).unwrap();
        assert_eq!(s.len(), 36);
        assert!(s.starts_with("01234567-89ab-7"));
        assert!(matches!(s.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
    }
}
