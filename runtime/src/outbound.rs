//! A connection's outbound path: a bounded queue of ready frames and the writer task that
//! gathers them into vectored writes. Shared frames (`Bytes`) are never copied per subscriber.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::config::SlowConsumerPolicy;
use crate::metrics::Metrics;
use crate::protocol::frame::close_frame;
use crate::protocol::outgoing::Mode;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
#[must_use]
pub enum Push {
    Queued,
    /// Over budget, frame dropped (policy `drop`).
    Dropped,
    /// Over budget, connection closing (policy `close`).
    Overflow,
    /// The connection is closing or gone.
    Closed,
}

/// What `push_many` did with its frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushMany {
    pub queued: usize,
    pub dropped: usize,
    pub overflowed: usize,
    /// Of those queued: compressed, msgpack and sealed frames (set by `deliver`).
    pub zipped: usize,
    pub msgpack: usize,
    pub sealed: usize,
    /// Of those queued: permessage-deflate frames; and compressions done to build them.
    pub deflated: usize,
    pub deflations: usize,
}

impl PushMany {
    pub fn add(&mut self, o: PushMany) {
        self.queued += o.queued;
        self.dropped += o.dropped;
        self.overflowed += o.overflowed;
        self.zipped += o.zipped;
        self.msgpack += o.msgpack;
        self.sealed += o.sealed;
        self.deflated += o.deflated;
        self.deflations += o.deflations;
    }

    /// Adds the outcome to the engine's counters (`deliveries` is the caller's).
    pub fn count(&self, m: &Metrics) {
        Metrics::add(&m.messages_out, self.queued as u64);
        Metrics::add(&m.slow_consumer_drops, self.dropped as u64);
        Metrics::add(&m.slow_consumer_closes, self.overflowed as u64);
        Metrics::add(&m.compressed_out, self.zipped as u64);
        Metrics::add(&m.msgpack_out, self.msgpack as u64);
        Metrics::add(&m.sealed_out, self.sealed as u64);
        Metrics::add(&m.deflated_out, self.deflated as u64);
        Metrics::add(&m.deflate_compressions, self.deflations as u64);
    }
}

impl Push {
    /// Counts the outcome of a single send; true if the frame was queued.
    pub fn count(self, m: &Metrics) -> bool {
        match self {
            Push::Queued => Metrics::inc(&m.messages_out),
            Push::Dropped => Metrics::inc(&m.slow_consumer_drops),
            Push::Overflow => Metrics::inc(&m.slow_consumer_closes),
            Push::Closed => {}
        }
        self == Push::Queued
    }
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    queued_bytes: usize,
    writer_idle: bool,
    close: Option<Bytes>,
    close_code: u16,
    done: bool,
    /// The connection's encoding; data pushes say which one they were built for.
    mode: u8,
    /// Answers to pings, not yet written (counted in `queued_bytes`). Past `MAX_PONGS` the
    /// oldest waiting one is dropped, as RFC 6455 5.5.3 allows (only the latest ping needs an
    /// answer), so a ping flood holds a few pongs at most while an ordinary burst of pings
    /// still gets every answer.
    pongs: VecDeque<Bytes>,
}

/// Pongs one connection may have waiting to be written (a ping flood holds no more).
const MAX_PONGS: usize = 16;

pub struct Outbound {
    state: Mutex<State>,
    /// `State::mode`, readable without the lock (the lock's copy decides).
    mode_hint: AtomicU8,
    wake: Notify,
    /// Tells the reader that the server started closing.
    closing: Notify,
    max_bytes: usize,
    policy: SlowConsumerPolicy,
    overflow_code: u16,
}

impl Outbound {
    pub fn new(max_bytes: usize, policy: SlowConsumerPolicy, overflow_code: u16, mode: Mode) -> Self {
        let state = State { mode: mode as u8, ..State::default() };
        Self { state: Mutex::new(state), mode_hint: AtomicU8::new(mode as u8), wake: Notify::new(), closing: Notify::new(), max_bytes, policy, overflow_code }
    }

    #[inline]
    fn wake_locked(&self, s: &mut State) {
        if s.writer_idle {
            s.writer_idle = false;
            self.wake.notify_one();
        }
    }

    /// Applies the byte budget and the slow-consumer policy to one frame; the caller holds the lock.
    fn push_locked(&self, s: &mut State, frame: Bytes) -> Push {
        if s.done || s.close.is_some() {
            return Push::Closed;
        }
        if s.queued_bytes + frame.len() > self.max_bytes {
            return match self.policy {
                SlowConsumerPolicy::Drop => Push::Dropped,
                SlowConsumerPolicy::Close => {
                    // A consumer this far behind will not read what is queued: go straight to close.
                    s.frames.clear();
                    s.pongs.clear();
                    s.queued_bytes = 0;
                    self.begin_close_locked(s, self.overflow_code, "slow consumer");
                    Push::Overflow
                }
            };
        }
        s.queued_bytes += frame.len();
        s.frames.push_back(frame);
        Push::Queued
    }

    /// Something held for this connection outside the queue went over its budget: applies the
    /// slow-consumer policy as `push` would (`Dropped`, or `Overflow` and the close).
    pub fn overflow(&self) -> Push {
        let mut s = self.state.lock();
        if s.done || s.close.is_some() {
            return Push::Closed;
        }
        match self.policy {
            SlowConsumerPolicy::Drop => Push::Dropped,
            SlowConsumerPolicy::Close => {
                s.frames.clear();
                s.pongs.clear();
                s.queued_bytes = 0;
                self.begin_close_locked(&mut s, self.overflow_code, "slow consumer");
                Push::Overflow
            }
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode_hint.load(Relaxed))
    }

    /// Queues a data frame under the byte budget and the slow-consumer policy. `built_for` is the
    /// mode the frame was encoded for; if the connection changed mode, nothing is queued and
    /// the current mode is returned (`None` queues in any mode: plaintext system messages).
    pub fn push(&self, frame: Bytes, built_for: Option<Mode>) -> Result<Push, Mode> {
        let mut s = self.state.lock();
        check_mode(&s, built_for)?;
        let r = self.push_locked(&mut s, frame);
        self.wake_locked(&mut s);
        Ok(r)
    }

    /// Queues a frame and then switches the connection to `mode`, under one lock: what was
    /// built for the old mode after this point is refused (the key exchange's `server_hello`).
    pub fn push_then_switch(&self, frame: Bytes, mode: Mode) -> Push {
        let mut s = self.state.lock();
        let r = self.push_locked(&mut s, frame);
        s.mode = mode as u8;
        self.mode_hint.store(mode as u8, Relaxed);
        self.wake_locked(&mut s);
        r
    }

    /// Queues several data frames in order under one lock, waking the writer at most once.
    pub fn push_many(&self, frames: &[Bytes], built_for: Option<Mode>) -> Result<PushMany, Mode> {
        let mut r = PushMany::default();
        let mut s = self.state.lock();
        check_mode(&s, built_for)?;
        for frame in frames {
            match self.push_locked(&mut s, frame.clone()) {
                Push::Queued => r.queued += 1,
                Push::Dropped => r.dropped += 1,
                Push::Overflow => {
                    r.overflowed += 1;
                    break;
                }
                Push::Closed => break,
            }
        }
        self.wake_locked(&mut s);
        Ok(r)
    }

    /// Queues pieces (bytes holding whole frames, `n` messages each) in order under one lock,
    /// waking the writer at most once; counts are in messages.
    pub fn push_pieces(&self, pieces: &[(Bytes, u32)], built_for: Option<Mode>) -> Result<PushMany, Mode> {
        let mut s = self.state.lock();
        check_mode(&s, built_for)?;
        let r = self.pieces_locked(&mut s, pieces);
        self.wake_locked(&mut s);
        Ok(r)
    }

    /// `push_pieces`'s loop; the caller holds the lock and wakes the writer.
    fn pieces_locked(&self, s: &mut State, pieces: &[(Bytes, u32)]) -> PushMany {
        let mut r = PushMany::default();
        for (bytes, n) in pieces {
            match self.push_locked(s, bytes.clone()) {
                Push::Queued => r.queued += *n as usize,
                Push::Dropped => r.dropped += *n as usize,
                Push::Overflow => {
                    r.overflowed += 1;
                    break;
                }
                Push::Closed => break,
            }
        }
        r
    }

    /// Queues `lead` (a batch key sealed for this connection), then the pieces sealed under
    /// that key, under one lock. Without room for the key, the pieces would be unreadable:
    /// they are refused with it (dropped, or the connection overflows, as the policy says).
    pub fn push_keyed(&self, lead: Bytes, pieces: &[(Bytes, u32)], built_for: Option<Mode>) -> Result<PushMany, Mode> {
        let mut r = PushMany::default();
        let mut s = self.state.lock();
        check_mode(&s, built_for)?;
        match self.push_locked(&mut s, lead) {
            Push::Queued => {}
            Push::Dropped => {
                r.dropped = pieces.iter().map(|(_, n)| *n as usize).sum();
                return Ok(r);
            }
            Push::Overflow => {
                r.overflowed = 1;
                return Ok(r);
            }
            Push::Closed => return Ok(r),
        }
        let r = self.pieces_locked(&mut s, pieces);
        self.wake_locked(&mut s);
        Ok(r)
    }

    /// Queues a control frame (the server's ping), in order with data and within the budget.
    pub fn push_control(&self, frame: Bytes) -> Push {
        let mut s = self.state.lock();
        let r = self.push_locked(&mut s, frame);
        self.wake_locked(&mut s);
        r
    }

    /// Queues the answer to a ping: it goes out ahead of queued data frames and counts within
    /// the budget; with `MAX_PONGS` already waiting, the oldest of them is replaced.
    pub fn push_pong(&self, frame: Bytes) -> Push {
        let mut s = self.state.lock();
        if s.done || s.close.is_some() {
            return Push::Closed;
        }
        let held = if s.pongs.len() >= MAX_PONGS { s.pongs.front().map_or(0, Bytes::len) } else { 0 };
        if s.queued_bytes - held + frame.len() > self.max_bytes {
            // Over the budget: the slow-consumer policy applies as to any frame.
            let r = self.push_locked(&mut s, frame);
            debug_assert!(r != Push::Queued);
            return r;
        }
        if s.pongs.len() >= MAX_PONGS {
            s.pongs.pop_front();
        }
        s.queued_bytes = s.queued_bytes - held + frame.len();
        s.pongs.push_back(frame);
        self.wake_locked(&mut s);
        Push::Queued
    }

    /// Starts the close handshake: queued frames go out first, then the close frame.
    /// Returns false when a close was already under way.
    pub fn close(&self, code: u16, reason: &str) -> bool {
        let mut s = self.state.lock();
        if s.done || s.close.is_some() {
            return false;
        }
        self.begin_close_locked(&mut s, code, reason);
        true
    }

    /// Queues the close frame (sent after what is queued) and tells writer and reader.
    fn begin_close_locked(&self, s: &mut State, code: u16, reason: &str) {
        s.close = Some(close_frame(code, reason));
        s.close_code = code;
        self.wake_locked(s);
        self.closing.notify_one();
    }

    /// Stops the writer without a close frame (the peer is gone).
    pub fn abort(&self) {
        let mut s = self.state.lock();
        s.done = true;
        s.frames.clear();
        s.pongs.clear();
        s.queued_bytes = 0;
        s.writer_idle = false;
        self.wake.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        let s = self.state.lock();
        s.done || s.close.is_some()
    }

    /// Resolves once `close` was called (or the budget overflowed under policy `close`).
    pub async fn closing(&self) {
        self.closing.notified().await
    }

    /// The code of the close frame the server sent, if it sent one.
    pub fn close_code(&self) -> u16 {
        self.state.lock().close_code
    }

    pub fn queued_bytes(&self) -> usize {
        self.state.lock().queued_bytes
    }

    /// The writer task: runs until the close frame is written, the peer is gone, or `abort`.
    ///
    /// `preface` (the upgrade's `101` answer; may be empty) goes out first, in the same write as
    /// the first frames queued (`server_ready`), or alone if none are.
    pub async fn run_writer<W: AsyncWrite + Unpin>(self: Arc<Self>, mut wr: W, preface: Bytes, max_batch: usize, metrics: Arc<Metrics>) {
        let mut preface = (!preface.is_empty()).then_some(preface);
        let mut batch: Vec<Bytes> = Vec::new();
        // Where runs of small frames are gathered for one write; freed whenever the queue
        // empties, so an idle connection holds none.
        let mut scratch: Vec<u8> = Vec::new();
        loop {
            let mut close = None;
            let wait = {
                let mut s = self.state.lock();
                if s.done {
                    break;
                }
                batch.extend(s.pongs.drain(..));
                if !s.frames.is_empty() {
                    // At most `max_batch` frames and about WRITE_BYTES per write (see there).
                    let (mut n, mut bytes) = (0, 0);
                    for f in s.frames.iter().take(max_batch) {
                        if n > 0 && bytes + f.len() > WRITE_BYTES {
                            break;
                        }
                        bytes += f.len();
                        n += 1;
                    }
                    batch.extend(s.frames.drain(..n));
                    false
                } else if !batch.is_empty() {
                    false
                } else {
                    match s.close.take() {
                        Some(c) => {
                            close = Some(c);
                            false
                        }
                        None if preface.is_some() => false,
                        None => {
                            s.writer_idle = true;
                            true
                        }
                    }
                }
            };
            if wait {
                if scratch.capacity() > 0 {
                    scratch = Vec::new();
                }
                if batch.capacity() > 0 {
                    batch = Vec::new();
                }
                self.wake.notified().await;
                continue;
            }
            if let Some(c) = close {
                let c = match preface.take() {
                    Some(p) => Bytes::from([&p[..], &c[..]].concat()),
                    None => c,
                };
                let _ = wr.write_all(&c).await;
                let _ = wr.shutdown().await;
                self.state.lock().done = true;
                break;
            }
            let bytes: usize = batch.iter().map(|b| b.len()).sum();
            let frames = batch.len();
            if let Some(p) = preface.take() {
                batch.insert(0, p);
            }
            // Boxed: the writer's task lives as long as the connection, and a future is as
            // large as its largest state; an idle writer needs none of this one's. (In a
            // statement of its own: a temporary moved into `Box::pin(..)` within the awaiting
            // statement would still take its room in this future.)
            let writing = Box::pin(write_batch(&mut wr, &batch, &mut scratch, &metrics));
            let ok = writing.await;
            Metrics::add(&metrics.frames_out, frames as u64);
            Metrics::add(&metrics.bytes_out, bytes as u64);
            batch.clear();
            let more = {
                let mut s = self.state.lock();
                s.queued_bytes = s.queued_bytes.saturating_sub(bytes);
                if !ok {
                    s.done = true;
                    s.frames.clear();
                    s.pongs.clear();
                    s.queued_bytes = 0;
                    break;
                }
                !s.frames.is_empty()
            };
            if batch.capacity() > 4 * max_batch {
                batch = Vec::new();
            }
            // More queued: let the other connections' writers take their turn first, so that
            // a fan-out's shared frames go to every subscriber while they are in cache.
            if more {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Bytes per write at most (beyond one frame): a fan-out writes its shared pieces to each
/// subscriber in turn in writes this size, so that the kernel copies them while they are still
/// in cache, rather than several megabytes to one subscriber, then the same to the next.
/// 256 KiB measured best among 64 KiB, 128 KiB, 256 KiB and no cap (bench/run.py quick, fan-out:
/// 100 subscribers +20%, 1,000 +25% per server CPU-second against no cap; 64 KiB did best at
/// 100 but cost 10% at 1,000, where the writes per subscriber add up).
const WRITE_BYTES: usize = 256 << 10;

/// What a writer that is not a socket (an external connection) found in the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Frames were moved out; more may follow.
    Frames,
    /// Nothing queued: the next push wakes `woken()`.
    Idle,
    /// The close frame, after every data frame; the queue is finished.
    Close(Bytes),
    /// Finished without a close frame (aborted, or the close was already taken).
    Done,
}

impl Outbound {
    /// The writer side for a transport outside the engine: moves up to `max` frames into `out`
    /// (they leave the byte budget now), or reports the close or the end. `Idle` arms the wake-up,
    /// as the socket writer does when it finds the queue empty.
    pub fn take_ready(&self, max: usize, out: &mut Vec<Bytes>) -> Taken {
        let mut s = self.state.lock();
        if s.done {
            return Taken::Done;
        }
        if !s.pongs.is_empty() {
            let held: usize = s.pongs.iter().map(Bytes::len).sum();
            s.queued_bytes = s.queued_bytes.saturating_sub(held);
            out.extend(s.pongs.drain(..));
            if s.frames.is_empty() {
                return Taken::Frames;
            }
        }
        if !s.frames.is_empty() {
            let n = s.frames.len().min(max.max(1));
            let mut bytes = 0;
            for f in s.frames.drain(..n) {
                bytes += f.len();
                out.push(f);
            }
            s.queued_bytes = s.queued_bytes.saturating_sub(bytes);
            return Taken::Frames;
        }
        match s.close.take() {
            Some(c) => {
                s.done = true;
                Taken::Close(c)
            }
            None => {
                s.writer_idle = true;
                Taken::Idle
            }
        }
    }

    /// Resolves when a push found the writer idle, or on `abort`.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// True once the queue is finished (close frame taken or written, or aborted).
    pub fn is_done(&self) -> bool {
        self.state.lock().done
    }
}

fn check_mode(s: &State, built_for: Option<Mode>) -> Result<(), Mode> {
    match built_for {
        Some(m) if m as u8 != s.mode => Err(Mode::from_u8(s.mode)),
        _ => Ok(()),
    }
}

/// Frames up to this size are copied into one contiguous buffer before the write; larger ones
/// go to the kernel as their own `iovec`. The kernel's copy from a vector of small segments
/// costs far more per byte than from one run (per-segment setup and a cold source line per
/// frame); a user-space `memcpy` of a small frame that is still in cache is cheaper than that.
pub const COALESCE_MAX: usize = 1024;

/// One piece of a write: a run of coalesced small frames in the scratch buffer, or a large
/// frame of the batch written from where it is.
#[derive(Clone, Copy)]
enum Piece {
    Scratch(usize, usize),
    Frame(usize),
}

/// Writes every frame of `batch`, as few `writev` calls as the kernel allows. Runs of small
/// frames are copied into `scratch` first (see `COALESCE_MAX`); a batch of one frame is written
/// as it is.
async fn write_batch<W: AsyncWrite + Unpin>(wr: &mut W, batch: &[Bytes], scratch: &mut Vec<u8>, metrics: &Metrics) -> bool {
    scratch.clear();
    let mut pieces: Vec<Piece> = Vec::with_capacity(8);
    if batch.len() == 1 {
        pieces.push(Piece::Frame(0));
    } else {
        for (i, b) in batch.iter().enumerate() {
            if b.len() > COALESCE_MAX {
                pieces.push(Piece::Frame(i));
                continue;
            }
            let start = scratch.len();
            scratch.extend_from_slice(b);
            match pieces.last_mut() {
                Some(Piece::Scratch(_, end)) if *end == start => *end = scratch.len(),
                _ => pieces.push(Piece::Scratch(start, scratch.len())),
            }
        }
    }
    let piece = |p: Piece| -> &[u8] {
        match p {
            Piece::Scratch(a, b) => &scratch[a..b],
            Piece::Frame(i) => &batch[i],
        }
    };
    let mut idx = 0;
    let mut offset = 0;
    while idx < pieces.len() {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity((pieces.len() - idx).min(1024));
        slices.push(IoSlice::new(&piece(pieces[idx])[offset..]));
        for &p in &pieces[idx + 1..] {
            if slices.len() == 1024 {
                break;
            }
            slices.push(IoSlice::new(piece(p)));
        }
        Metrics::inc(&metrics.write_syscalls);
        let mut n = match wr.write_vectored(&slices).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        while n > 0 {
            let left = piece(pieces[idx]).len() - offset;
            if n >= left {
                n -= left;
                idx += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(n: usize) -> (Bytes, u32) {
        (Bytes::from(vec![b'x'; n]), 1)
    }

    /// A batch's frames are unreadable without its key: when the key does not fit, none of
    /// them is queued, and they count as dropped (or the connection overflows).
    #[test]
    fn keyed_pieces_go_with_their_key_or_not_at_all() {
        let out = Outbound::new(1000, SlowConsumerPolicy::Drop, 1008, Mode::Sealed);
        let pieces = [piece(100), piece(100), piece(100)];
        let r = out.push_keyed(Bytes::from(vec![b'k'; 100]), &pieces, Some(Mode::Sealed)).unwrap();
        assert_eq!((r.queued, r.dropped), (3, 0));
        assert_eq!(out.queued_bytes(), 400);
        // 400 queued: a 700-byte key does not fit; nothing of its batch goes in.
        let r = out.push_keyed(Bytes::from(vec![b'k'; 700]), &pieces, Some(Mode::Sealed)).unwrap();
        assert_eq!((r.queued, r.dropped), (0, 3));
        assert_eq!(out.queued_bytes(), 400);
        // Built for another mode: handed back.
        assert!(out.push_keyed(Bytes::from_static(b"k"), &pieces, Some(Mode::Json)).is_err());

        let closing = Outbound::new(1000, SlowConsumerPolicy::Close, 1008, Mode::Sealed);
        let r = closing.push_keyed(Bytes::from(vec![b'k'; 1001]), &pieces, Some(Mode::Sealed)).unwrap();
        assert_eq!((r.queued, r.overflowed), (0, 1));
    }
}
