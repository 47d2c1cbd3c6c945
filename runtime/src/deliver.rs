//! Putting outgoing messages on one connection in the encoding it asked for: JSON (maybe
//! compressed), msgpack, or sealed with its session key. A batch builds each shared encoding
//! once for all subscribers; sealing is per connection, under the connection's crypto lock.
//!
//! A batch to several encrypted connections that take batch keys is sealed once (`G:` frames
//! under the topic's key, `crypto/batch.rs`); a connection that does not hold that key yet gets
//! it sealed for it first.
//!
//! The switch to encryption (`seal`) queues the plaintext `server_hello` and flips the mode
//! under the outbound lock while holding the crypto lock: a frame built for the old mode is
//! then refused by the queue and re-sent sealed, so nothing reaches an encrypted connection in
//! plaintext after its key exchange, and nothing sealed precedes the key.

use std::cell::{Cell, OnceCell};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;

use crate::connection::Conn;
use crate::crypto::batch::BatchKey;
use crate::crypto::session::Session;
use crate::outbound::{PushMany, COALESCE_MAX};
use crate::protocol::deflate::{self, Params};
use crate::protocol::frame::{self, frame_in_place, HEADER_ROOM};
use crate::protocol::outgoing::{Mode, OutMsg};

/// A connection's encryption state.
#[derive(Default)]
pub struct CryptoState {
    /// Boxed: most connections never encrypt, and a session is over a kilobyte.
    pub session: Option<Box<Session>>,
    /// Messages waiting for the key exchange (encryption required), with their bytes.
    held: Vec<Arc<OutMsg>>,
    held_bytes: usize,
}

/// What goes on a connection's queue: bytes holding `n` whole frames.
pub type Piece = (Bytes, u32);

/// A run shared by several connections is cut into pieces of at most this many bytes: big enough
/// that a subscriber's queue and writer handle one item for many messages, small enough to stay
/// in cache while every subscriber's writer copies it.
pub const SHARED_PIECE: usize = 64 << 10;

/// Messages to deliver to several connections, with their shared encodings built lazily.
/// When the batch is `shared` (several messages, several connections), each encoding's small
/// frames are also concatenated once into pieces (`SHARED_PIECE`): the bytes on the wire are
/// the same frames, but every subscriber's queue takes one reference per piece instead of one
/// per message, and the kernel copies one run instead of many small segments.
pub struct Batch<'a> {
    msgs: &'a [Arc<OutMsg>],
    shared: bool,
    json: OnceCell<Vec<Piece>>,
    /// The zlib-encoded frames, and how many of them really are compressed.
    zipped: OnceCell<(Vec<Piece>, usize)>,
    /// The same, with the compact envelope where not compressed.
    zipped_compact: OnceCell<(Vec<Piece>, usize)>,
    msgpack: OnceCell<Vec<Piece>>,
    compact: OnceCell<Vec<Piece>>,
    /// permessage-deflate frames by encoding (JSON, compact JSON, msgpack) and window
    /// (`Params::key`), with how many of them really are compressed; and the compressions done
    /// for this batch, not yet counted.
    deflated: [OnceCell<(Vec<Piece>, usize)>; 3 * deflate::KEYS],
    deflations: Cell<usize>,
    /// Goes to several connections: sealed once for those that take batch keys.
    many: bool,
    /// The topic's key to seal under, if it has one still good (`with_key`); else one is made.
    key: Cell<Option<Arc<BatchKey>>>,
    /// Sealed once for every connection that takes batch keys (made for the first of them).
    sealed: OnceCell<Shared>,
    /// Of the connections given the sealed frames: those that held the key already, and those
    /// it was sent to now.
    holders: Cell<(usize, usize)>,
}

/// A batch's key and its frames sealed under it, with the full and the compact envelope.
struct Shared {
    key: Arc<BatchKey>,
    full: OnceCell<Vec<Piece>>,
    compact: OnceCell<Vec<Piece>>,
}

impl<'a> Batch<'a> {
    pub fn new(msgs: &'a [Arc<OutMsg>]) -> Self {
        Self { msgs, shared: false, json: OnceCell::new(), zipped: OnceCell::new(), zipped_compact: OnceCell::new(), msgpack: OnceCell::new(), compact: OnceCell::new(), deflated: Default::default(), deflations: Cell::new(0), many: false, key: Cell::new(None), sealed: OnceCell::new(), holders: Cell::new((0, 0)) }
    }

    /// A batch that goes to several connections: its frames are pieced (see `Batch`).
    pub fn shared(msgs: &'a [Arc<OutMsg>], connections: usize) -> Self {
        Self { shared: msgs.len() > 1 && connections > 1, many: connections > 1, ..Self::new(msgs) }
    }

    /// Seal for batch-key connections under `key` (the topic's, from its last batch).
    pub fn with_key(self, key: Option<Arc<BatchKey>>) -> Self {
        self.key.set(key);
        self
    }

    /// The key the batch was sealed under, if it was: with how many of its recipients held it
    /// already and how many were sent it now.
    pub fn key_outcome(&self) -> Option<(Arc<BatchKey>, usize, usize)> {
        let s = self.sealed.get()?;
        let (had, given) = self.holders.get();
        Some((s.key.clone(), had, given))
    }

    pub fn msgs(&self) -> &[Arc<OutMsg>] {
        self.msgs
    }

    /// How many of the zlib-encoded frames are really compressed (counted once per batch).
    fn zipped_count(&self, compact: bool) -> usize {
        let cell = if compact { &self.zipped_compact } else { &self.zipped };
        cell.get().map_or(0, |(_, n)| *n)
    }

    /// The frames for a permessage-deflate connection, and how many are compressed.
    fn deflated(&self, mode: Mode, compact: bool, p: &Params) -> &(Vec<Piece>, usize) {
        let variant = if mode == Mode::Msgpack { 2 } else { usize::from(compact) };
        self.deflated[variant * deflate::KEYS + p.key()].get_or_init(|| {
            let (mut n, mut fresh) = (0, 0);
            let f: Vec<Bytes> = self
                .msgs
                .iter()
                .map(|m| {
                    let (f, new) = m.deflated(mode, compact, p);
                    n += usize::from(f[0] & deflate::RSV1 != 0);
                    fresh += usize::from(new);
                    f
                })
                .collect();
            self.deflations.set(self.deflations.get() + fresh);
            (pieces(f, self.shared), n)
        })
    }

    /// The batch key and the frames sealed under it, built on first use; only for batches that
    /// go to several connections (one connection's are sealed for it alone).
    fn sealed_once(&self, compact: bool) -> Option<(&BatchKey, &[Piece])> {
        if !self.many {
            return None;
        }
        let s = self.sealed.get_or_init(|| {
            let key = self.key.take().unwrap_or_else(|| Arc::new(BatchKey::new()));
            Shared { key, full: OnceCell::new(), compact: OnceCell::new() }
        });
        let cell = if compact { &s.compact } else { &s.full };
        let frames = cell.get_or_init(|| {
            let sealed = self.msgs.iter().map(|m| {
                let body = if compact { m.compact_body() } else { m.body() };
                frame_in_place(frame::OP_BINARY, s.key.seal(body, HEADER_ROOM))
            });
            pieces(sealed, self.shared)
        });
        Some((&s.key, frames))
    }

    fn note_holder(&self, had: bool, given: bool) {
        let (h, g) = self.holders.get();
        self.holders.set((h + usize::from(had), g + usize::from(given)));
    }

    fn frames(&self, mode: Mode, zip: bool, compact: bool) -> &[Piece] {
        if zip && mode == Mode::Json {
            let cell = if compact { &self.zipped_compact } else { &self.zipped };
            return &cell
                .get_or_init(|| {
                    let f: Vec<Bytes> = self.msgs.iter().map(|m| m.zipped(compact)).collect();
                    let n = f.iter().filter(|b| is_zipped(b)).count();
                    (pieces(f, self.shared), n)
                })
                .0;
        }
        if compact && mode == Mode::Json {
            return self.compact.get_or_init(|| pieces(self.msgs.iter().map(|m| m.compact()), self.shared));
        }
        let cell = if mode == Mode::Msgpack { &self.msgpack } else { &self.json };
        cell.get_or_init(|| pieces(self.msgs.iter().map(|m| m.frame_for(mode)), self.shared))
    }
}

/// One piece per frame, or (`shared`) runs of small frames concatenated into pieces of up to
/// `SHARED_PIECE` bytes; a frame over `COALESCE_MAX` stays a piece of its own.
fn pieces(frames: impl IntoIterator<Item = Bytes>, shared: bool) -> Vec<Piece> {
    let frames = frames.into_iter();
    if !shared {
        return frames.map(|f| (f, 1)).collect();
    }
    let mut out = Vec::new();
    let mut run: Vec<u8> = Vec::new();
    let mut n = 0u32;
    let flush = |run: &mut Vec<u8>, n: &mut u32, out: &mut Vec<Piece>| {
        if *n > 0 {
            out.push((Bytes::from(std::mem::take(run)), *n));
            *n = 0;
        }
    };
    for f in frames {
        if f.len() > COALESCE_MAX {
            flush(&mut run, &mut n, &mut out);
            out.push((f, 1));
            continue;
        }
        if run.len() + f.len() > SHARED_PIECE {
            flush(&mut run, &mut n, &mut out);
        }
        if run.capacity() == 0 {
            run.reserve(SHARED_PIECE);
        }
        run.extend_from_slice(&f);
        n += 1;
    }
    flush(&mut run, &mut n, &mut out);
    out
}

/// Queues the batch on `conn` in its encoding. Messages held for a key exchange count as queued,
/// and so do those held behind a topic the application is deciding (`gate.rs`).
#[inline]
pub fn deliver(conn: &Conn, batch: &Batch<'_>) -> PushMany {
    if conn.gate.is_holding() {
        if let Some(r) = conn.gate.hold_behind(conn, batch.msgs) {
            return r;
        }
    }
    deliver_now(conn, batch)
}

/// `deliver` without the gate (the gate's own flush).
pub fn deliver_now(conn: &Conn, batch: &Batch<'_>) -> PushMany {
    let mut mode = conn.out.mode();
    loop {
        match mode {
            Mode::Json | Mode::Msgpack if conn.deflate.is_some_and(|p| p.compresses()) => {
                // permessage-deflate replaces `C:` zlib: one compression is enough.
                let p = conn.deflate.expect("checked");
                let (frames, n) = batch.deflated(mode, conn.compact.load(Relaxed), &p);
                match conn.out.push_pieces(frames, Some(mode)) {
                    Ok(mut r) => {
                        r.deflated = r.queued.min(*n);
                        r.deflations = batch.deflations.take();
                        if mode == Mode::Msgpack {
                            r.msgpack = r.queued;
                        }
                        return r;
                    }
                    Err(now) => mode = now,
                }
            }
            Mode::Json | Mode::Msgpack => {
                let zip = conn.zip.load(Relaxed) && mode == Mode::Json;
                let compact = conn.compact.load(Relaxed);
                match conn.out.push_pieces(batch.frames(mode, zip, compact), Some(mode)) {
                    Ok(mut r) => {
                        if mode == Mode::Msgpack {
                            r.msgpack = r.queued;
                        } else if zip {
                            r.zipped = r.queued.min(batch.zipped_count(compact));
                        }
                        return r;
                    }
                    Err(now) => mode = now,
                }
            }
            Mode::Sealed | Mode::AwaitKey => {
                let mut cs = conn.crypto.lock();
                // The mode may have changed while we waited for the lock.
                mode = conn.out.mode();
                match mode {
                    Mode::Sealed => {
                        let Some(sess) = cs.session.as_mut() else { return PushMany::default() };
                        let compact = conn.compact.load(Relaxed);
                        if conn.batch_keys.load(Relaxed) {
                            if let Some((key, frames)) = batch.sealed_once(compact) {
                                let serial = key.serial();
                                let had = sess.holds_batch_key(serial);
                                let mut r = if had {
                                    conn.out.push_pieces(frames, Some(Mode::Sealed)).unwrap_or_default()
                                } else {
                                    let lead = seal(sess, key.announce());
                                    conn.out.push_keyed(lead, frames, Some(Mode::Sealed)).unwrap_or_default()
                                };
                                let given = !had && r.queued > 0;
                                if given {
                                    sess.sent_batch_key(serial);
                                }
                                batch.note_holder(had, given);
                                r.sealed = r.queued;
                                return r;
                            }
                        }
                        let frames: Vec<Bytes> = if compact {
                            batch.msgs.iter().map(|m| seal(sess, m.compact_body())).collect()
                        } else {
                            batch.msgs.iter().map(|m| seal(sess, m.body())).collect()
                        };
                        let mut r = conn.out.push_many(&frames, Some(Mode::Sealed)).unwrap_or_default();
                        r.sealed = r.queued;
                        return r;
                    }
                    Mode::AwaitKey => return hold(conn, &mut cs, batch.msgs),
                    _ => continue,
                }
            }
        }
    }
}

/// Delivers one message; true if it was queued.
pub fn deliver_one(conn: &Conn, msg: Arc<OutMsg>) -> PushMany {
    let one = [msg];
    deliver(conn, &Batch::new(&one))
}

/// A binary frame whose payload starts with `C:` (header 2, 4 or 10 bytes).
fn is_zipped(f: &Bytes) -> bool {
    let hdr = match f.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    f.get(hdr..hdr + 2) == Some(b"C:")
}

fn seal(sess: &mut Session, body: &[u8]) -> Bytes {
    frame_in_place(frame::OP_BINARY, sess.seal(body, HEADER_ROOM))
}

fn hold(conn: &Conn, cs: &mut CryptoState, msgs: &[Arc<OutMsg>]) -> PushMany {
    let mut r = PushMany::default();
    for m in msgs {
        let n = m.body().len();
        if cs.held_bytes + n > conn.out.max_bytes() {
            r.dropped += 1;
            continue;
        }
        cs.held_bytes += n;
        cs.held.push(m.clone());
        r.queued += 1;
    }
    r
}

/// Switches `conn` to encryption with `session`: `hello` (plaintext) goes first, then what
/// was held for the exchange, sealed. Returns false if it was already encrypted.
pub fn start_encryption(conn: &Conn, session: Session, hello: Bytes) -> bool {
    let mut cs = conn.crypto.lock();
    if cs.session.is_some() {
        return false;
    }
    cs.session = Some(Box::new(session));
    let _ = conn.out.push_then_switch(hello, Mode::Sealed);
    let held = std::mem::take(&mut cs.held);
    cs.held_bytes = 0;
    let sess = cs.session.as_mut().expect("just set");
    let compact = conn.compact.load(Relaxed);
    let frames: Vec<Bytes> = held.iter().map(|m| seal(sess, if compact { m.compact_body() } else { m.body() })).collect();
    let _ = conn.out.push_many(&frames, Some(Mode::Sealed));
    true
}

/// Rotates `conn`'s key: `announce(generation)` is sealed under the current key and queued,
/// then later frames use the next key. Returns the new generation, or None if not encrypted.
pub fn rotate_key(conn: &Conn, now_ms: u64, grace_ms: u64, announce: impl FnOnce(u64) -> Arc<OutMsg>) -> Option<u64> {
    let mut cs = conn.crypto.lock();
    let sess = cs.session.as_mut()?;
    let next = sess.generation() + 1;
    let f = seal(sess, announce(next).body());
    let _queued = conn.out.push(f, Some(Mode::Sealed)).ok()?;
    Some(sess.rotate(now_ms, grace_ms))
}

/// When `conn`'s key was made, if it is encrypted.
pub fn keyed_at(conn: &Conn) -> Option<u64> {
    conn.crypto.lock().session.as_ref().map(|s| s.keyed_at_ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn idle_crypto_state_is_small() {
        // Every connection carries one; only encrypted ones pay for a session.
        assert!(std::mem::size_of::<super::CryptoState>() <= 64, "{}", std::mem::size_of::<super::CryptoState>());
    }

    #[test]
    fn shared_runs_are_pieced_and_keep_every_frame_in_order() {
        use super::{pieces, Bytes, COALESCE_MAX, SHARED_PIECE};
        use crate::protocol::frame;
        let small: Vec<Bytes> = (0..1000).map(|i| frame::build(frame::OP_TEXT, format!("{{\"i\":{i}}}").as_bytes())).collect();
        let big = frame::build(frame::OP_BINARY, &vec![b'x'; COALESCE_MAX + 1]);
        let mut all = small.clone();
        all.insert(500, big.clone());
        // Not shared: one piece per frame.
        assert!(pieces(all.clone(), false).iter().all(|(_, n)| *n == 1));
        let p = pieces(all.clone(), true);
        assert_eq!(p.iter().map(|(_, n)| *n as usize).sum::<usize>(), all.len());
        assert!(p.iter().all(|(b, n)| b.len() <= SHARED_PIECE || *n == 1));
        // The big frame is a piece of its own, the same bytes (not copied).
        assert!(p.iter().any(|(b, n)| *n == 1 && b.as_ptr() == big.as_ptr()));
        let joined: Vec<u8> = p.iter().flat_map(|(b, _)| b.iter().copied()).collect();
        let expected: Vec<u8> = all.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(joined, expected);
        assert!(p.len() < 10, "{}", p.len());
    }
}
