//! A single-producer/single-consumer byte ring in shared memory, for length-prefixed frames.
//!
//! Layout of the mapping: a header page (the producer's `head`, the consumer's `tail`, each on
//! its own cache line, and one sleep word per side), then `cap` bytes of data (`cap` a power of
//! two). `head` and `tail` count bytes since the start and only grow; a position in the data
//! is the count modulo `cap`.
//!
//! A record is the frame itself (`[u32 length LE][length bytes]`, as on the mesh's socket),
//! padded to 8 bytes. A frame that does not fit before the end of the data leaves a wrap mark
//! (`u32::MAX`) and starts again at offset 0, so every frame is contiguous and the consumer
//! reads it in place.
//!
//! Ordering: the producer writes the record's bytes, then publishes them by storing `head`
//! (Release); the consumer loads `head` (Acquire) before it reads the bytes. The consumer
//! hands space back by storing `tail` (Release) after it has read; the producer loads `tail`
//! (Acquire) before it overwrites. Sleeping: a side that finds nothing to do spins for a
//! while, then sets its sleep word to 1 (SeqCst), checks once more (SeqCst) and waits on the
//! word with FUTEX_WAIT; the other side, after its SeqCst store of `head`/`tail`, loads the
//! peer's sleep word (SeqCst) and, when set, clears it and calls FUTEX_WAKE. Both sides do
//! store-then-load in SeqCst, so at least one of them sees the other: no lost wake-up.
//! The futex is process-shared (no FUTEX_PRIVATE_FLAG), as the mapping is.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

const HEADER: usize = 4096;
const WRAP: u32 = u32::MAX;

#[repr(C, align(64))]
struct Line<T>(T);

#[repr(C)]
struct Header {
    head: Line<AtomicU64>,
    tail: Line<AtomicU64>,
    consumer_sleeping: Line<AtomicU32>,
    producer_sleeping: Line<AtomicU32>,
    /// Times each side went to sleep (for the report).
    consumer_sleeps: Line<AtomicU64>,
    producer_sleeps: Line<AtomicU64>,
}

/// The ring's shared mapping. Create it before `fork`; both processes then use the same pages.
pub struct Ring {
    base: *mut u8,
    cap: usize,
    map_len: usize,
    spin: Duration,
}

// The ring is shared on purpose; each side's methods are used by one thread at a time
// (one producer, one consumer), which the callers keep to.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

impl Ring {
    /// A ring of `cap` data bytes (rounded up to a power of two, at least 4 KiB) in a fresh
    /// memfd, mapped shared; `spin` is how long a side polls before it sleeps.
    pub fn new(cap: usize, spin: Duration) -> io::Result<Ring> {
        let cap = cap.max(4096).next_power_of_two();
        let map_len = HEADER + cap;
        let name = b"wse-meshbench-ring\0";
        // SAFETY: plain syscalls; every result is checked.
        unsafe {
            let fd = libc::memfd_create(name.as_ptr().cast(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ftruncate(fd, map_len as libc::off_t) != 0 {
                let e = io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            libc::close(fd);
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            // A fresh memfd reads as zeros: head = tail = 0, nobody sleeping.
            Ok(Ring {
                base: p.cast(),
                cap,
                map_len,
                spin,
            })
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The largest frame (length prefix included) that `push` accepts.
    pub fn max_frame(&self) -> usize {
        self.cap / 2
    }

    fn hdr(&self) -> &Header {
        // SAFETY: the header page is mapped for the ring's life and only accessed atomically.
        unsafe { &*(self.base as *const Header) }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: HEADER is inside the mapping.
        unsafe { self.base.add(HEADER) }
    }

    /// (consumer sleeps, producer sleeps) so far.
    pub fn sleeps(&self) -> (u64, u64) {
        let h = self.hdr();
        (
            h.consumer_sleeps.0.load(Relaxed),
            h.producer_sleeps.0.load(Relaxed),
        )
    }

    /// Producer: appends one frame (its length prefix included), waiting while the ring is full.
    pub fn push(&self, frame: &[u8]) {
        assert!(
            frame.len() >= 4 && frame.len() <= self.max_frame(),
            "frame size {} out of range",
            frame.len()
        );
        let h = self.hdr();
        let need = align8(frame.len());
        let head = h.head.0.load(Relaxed); // only this side stores it
        let pos = (head as usize) & (self.cap - 1);
        let to_end = self.cap - pos;
        let wrap = to_end < need;
        let total = if wrap { to_end + need } else { need };
        if head + total as u64 - h.tail.0.load(Acquire) > self.cap as u64 {
            self.wait(
                || head + total as u64 - h.tail.0.load(Acquire) <= self.cap as u64,
                &h.producer_sleeping.0,
                &h.producer_sleeps.0,
            );
        }
        // SAFETY: [pos, pos + total) (mod cap) is free: the consumer has moved `tail` past it
        // (Acquire above) and does not read it before `head` says so.
        unsafe {
            let d = self.data();
            let at = if wrap {
                (d.add(pos) as *mut u32).write_unaligned(WRAP);
                0
            } else {
                pos
            };
            std::ptr::copy_nonoverlapping(frame.as_ptr(), d.add(at), frame.len());
        }
        h.head.0.store(head + total as u64, SeqCst);
        wake(&h.consumer_sleeping.0);
    }

    /// Consumer: hands every frame available now (waiting for at least one) to `f`, in order,
    /// as a slice of the ring (length prefix included); returns how many. Space is handed back
    /// to the producer every 64 KiB and at the end.
    pub fn pop_all(&self, mut f: impl FnMut(&[u8])) -> usize {
        let h = self.hdr();
        let mut tail = h.tail.0.load(Relaxed); // only this side stores it
        let mut head = h.head.0.load(Acquire);
        if head == tail {
            self.wait(
                || h.head.0.load(Acquire) != tail,
                &h.consumer_sleeping.0,
                &h.consumer_sleeps.0,
            );
            head = h.head.0.load(Acquire);
        }
        let mut n = 0;
        let mut released = tail;
        while tail != head {
            let pos = (tail as usize) & (self.cap - 1);
            // SAFETY: [tail, head) was published by the producer (Acquire load of head) and is
            // not overwritten before we store a tail past it.
            let len = unsafe { (self.data().add(pos) as *const u32).read_unaligned() };
            if len == WRAP {
                tail += (self.cap - pos) as u64;
                continue;
            }
            let size = 4 + len as usize;
            assert!(
                size <= self.cap - pos,
                "corrupt ring: frame of {size} bytes at {pos}"
            );
            let frame = unsafe { std::slice::from_raw_parts(self.data().add(pos), size) };
            f(frame);
            n += 1;
            tail += align8(size) as u64;
            if tail - released >= 64 << 10 {
                self.release(tail);
                released = tail;
            }
        }
        if tail != released {
            self.release(tail);
        }
        n
    }

    fn release(&self, tail: u64) {
        let h = self.hdr();
        h.tail.0.store(tail, SeqCst);
        wake(&h.producer_sleeping.0);
    }

    /// Spins for `self.spin` until `ready`, then sleeps on `word` until woken and `ready`.
    fn wait(&self, ready: impl Fn() -> bool, word: &AtomicU32, sleeps: &AtomicU64) {
        if !self.spin.is_zero() {
            let start = Instant::now();
            loop {
                for _ in 0..64 {
                    if ready() {
                        return;
                    }
                    std::hint::spin_loop();
                }
                if start.elapsed() >= self.spin {
                    break;
                }
            }
        }
        loop {
            word.store(1, SeqCst);
            if ready() {
                word.store(0, Relaxed);
                return;
            }
            sleeps.fetch_add(1, Relaxed);
            futex_wait(word, 1);
            if ready() {
                return;
            }
        }
    }
}

/// After a SeqCst store of head/tail: wakes the other side if it said it sleeps.
fn wake(word: &AtomicU32) {
    if word.load(SeqCst) != 0 && word.swap(0, SeqCst) == 1 {
        futex_wake(word);
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` lives in the shared mapping for the call's duration. EAGAIN (the value
    // changed) and EINTR just return: the caller re-checks.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length.
        unsafe {
            libc::munmap(self.base.cast(), self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(i: u64, body_len: usize) -> Vec<u8> {
        let mut f = Vec::with_capacity(4 + body_len);
        f.extend_from_slice(&(body_len as u32).to_le_bytes());
        for k in 0..body_len {
            f.push((i as usize).wrapping_mul(31).wrapping_add(k) as u8);
        }
        if body_len >= 8 {
            f[4..12].copy_from_slice(&i.to_le_bytes());
        }
        f
    }

    fn size_of(i: u64) -> usize {
        // Sizes that do not divide the ring: records wrap at every offset.
        8 + (i as usize * 7919) % 1500
    }

    /// Many frames of mixed sizes through a small ring, producer and consumer on two threads
    /// (both spinning briefly and sleeping): every frame arrives once, in order, intact.
    #[test]
    fn frames_arrive_in_order_and_intact_across_wraps() {
        for spin_us in [0, 20] {
            let ring = Arc::new(Ring::new(4096, Duration::from_micros(spin_us)).unwrap());
            let n = 50_000u64;
            let prod = {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..n {
                        ring.push(&frame(i, size_of(i)));
                    }
                })
            };
            let mut next = 0u64;
            while next < n {
                ring.pop_all(|f| {
                    assert_eq!(f, &frame(next, size_of(next))[..], "frame {next}");
                    next += 1;
                });
            }
            prod.join().unwrap();
            assert_eq!(next, n);
            let h = ring.hdr();
            assert_eq!(h.head.0.load(SeqCst), h.tail.0.load(SeqCst));
        }
    }

    /// The same between two processes over the memfd mapping (fork), the way the benchmark
    /// uses it: the child checks every frame and reports by its exit status.
    #[test]
    fn frames_cross_a_fork() {
        let ring = Ring::new(8192, Duration::from_micros(10)).unwrap();
        let n = 20_000u64;
        // SAFETY: the child only uses the ring and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut next = 0u64;
                let mut bad = false;
                while next < n {
                    ring.pop_all(|f| {
                        bad |= f != &frame(next, size_of(next))[..];
                        next += 1;
                    });
                }
                !bad
            }));
            unsafe { libc::_exit(if matches!(ok, Ok(true)) { 0 } else { 1 }) };
        }
        // A child that dies early would leave the producer waiting for space for ever: a
        // watchdog ends the test instead (it looks without reaping the child).
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let done = done.clone();
            std::thread::spawn(move || {
                while !done.load(SeqCst) {
                    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    let r = unsafe {
                        libc::waitid(
                            libc::P_PID,
                            pid as libc::id_t,
                            &mut info,
                            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                        )
                    };
                    if r == 0 && unsafe { info.si_pid() } == pid && !done.load(SeqCst) {
                        eprintln!("the consumer process exited before the producer finished");
                        std::process::exit(1);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        for i in 0..n {
            ring.push(&frame(i, size_of(i)));
        }
        done.store(true, SeqCst);
        watchdog.join().unwrap();
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn a_frame_larger_than_half_the_ring_is_refused() {
        let ring = Ring::new(4096, Duration::ZERO).unwrap();
        ring.push(&frame(0, 3000));
    }
}
