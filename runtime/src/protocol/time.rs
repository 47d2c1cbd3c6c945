//! Timestamps and ids for envelopes: RFC 3339 with milliseconds (the `time` crate, formatted
//! once per second and cached), and UUIDv7 (the `uuid` crate's layout and text form, with random
//! bits from a per-thread xorshift: an id needs uniqueness, not secrecy, and a getrandom call per
//! envelope would be a system call on the publication path).

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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

const RFC3339_MS: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

fn write_rfc3339_slow(out: &mut Vec<u8>, ms: u64) {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Formatting into a Vec cannot fail for this description (every component is defined in UTC).
    let _ = at.format_into(out, RFC3339_MS);
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

/// A UUIDv7 (48-bit millisecond time, random rest) in its 36-character text form.
pub fn write_uuid7(out: &mut Vec<u8>, ms: u64) {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&next_random().to_ne_bytes());
    random[8..].copy_from_slice(&next_random().to_ne_bytes()[..2]);
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
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
        let parsed = uuid::Uuid::parse_str(&s).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        let (secs, nanos) = parsed.get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, 0x0123_4567_89ab);
        let mut w = vec![];
        write_uuid7(&mut w, 0x0123_4567_89ab);
        assert_ne!(v_text(&w), s, "two ids of the same millisecond differ");
    }

    fn v_text(v: &[u8]) -> String {
        String::from_utf8(v.to_vec()).unwrap()
    }

    #[test]
    fn rfc3339_far_dates() {
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
    }
}
