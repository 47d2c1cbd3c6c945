//! One upgraded connection: its shared handle (`Conn`) and its reader task, which parses
//! frames, answers control frames, hands system messages to the engine and the rest to Python.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::auth::acl::TopicAcl;
use crate::deliver::CryptoState;
use crate::drain::Event;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::protocol::frame::{self, Decoder, Event as FrameEvent};
use crate::config::EncryptionPolicy;
use crate::crypto::session::CryptoError;
use crate::crypto::sign::SigError;
use crate::protocol::compress::{self, InflateError};
use crate::protocol::deflate;
use crate::protocol::message::{classify, Inbound};
use crate::protocol::msgpack;
use crate::protocol::time::now_ms;

pub struct Conn {
    pub id: u64,
    pub user_id: Option<String>,
    /// Topic ACL from the token's claim, on top of the configured one.
    pub acl: Option<TopicAcl>,
    pub out: Arc<Outbound>,
    pub topics: Mutex<HashSet<Arc<str>>>,
    /// Sequence for envelopes sent to this connection alone.
    pub seq: AtomicU64,
    pub last_rx_ms: AtomicU64,
    pub last_ping_ms: AtomicU64,
    /// E2E session, and what waits for it (see `deliver`).
    pub crypto: Mutex<CryptoState>,
    /// The client follows key rotations (it said so in `client_hello`).
    pub rotation: AtomicBool,
    /// The client takes encrypted fan-out as batch keys and shared `G:` frames (`crypto/batch.rs`):
    /// it said so in `client_hello`.
    pub batch_keys: AtomicBool,
    /// The client accepts `C:` (zlib) frames: it said so in the URL or in `client_hello`.
    pub zip: AtomicBool,
    /// The client takes the compact envelope (no `id`, `ts`): URL, `client_hello` or the config.
    pub compact: AtomicBool,
    pub created_ms: u64,
    /// When the connection's token expires (ms since the epoch, leeway included; 0: never).
    /// `auth_refresh` moves it; the keepalive sweep closes the connection once it passes.
    pub token_expires_ms: AtomicU64,
    /// The rate limit on what this client sends (None: no limit).
    pub rate: Option<Mutex<crate::limits::rate::RateState>>,
    /// permessage-deflate, as negotiated in the handshake.
    pub deflate: Option<deflate::Params>,
    /// Per-topic verdicts for its pattern subscriptions, and the hold while one is decided.
    pub gate: crate::gate::Gate,
}

impl Conn {
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Relaxed) + 1
    }
}

/// Where the reader stopped, and the code Python is told.
enum End {
    /// The peer sent Close (code, or 1005 if none).
    PeerClose(u16),
    /// We found a violation and sent Close with this code.
    Violation(u16),
    /// TCP ended without a close handshake.
    Abrupt,
    /// The server closed it (disconnect, slow consumer, idle, shutdown).
    ServerClose,
}

/// What one read may take from the socket: the size of each runtime thread's scratch buffer.
const READ_SCRATCH: usize = 64 << 10;

thread_local! {
    /// Where sockets are read into, one per runtime thread: a connection keeps only the bytes
    /// of a frame not yet complete (usually none), never a read buffer of its own.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; READ_SCRATCH].into_boxed_slice());
}

/// Waits until the socket has data, reads what it has through this thread's scratch buffer
/// and appends it to `buf` (0 at the end of the stream). Nothing is held across the wait.
async fn read_some<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let mut rb = ReadBuf::new(&mut s[..]);
            match Pin::new(&mut *rd).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if buf.capacity() == 0 {
                        // Exactly what came: messages sliced from it are held by Python only
                        // as long as it needs them.
                        *buf = BytesMut::from(got);
                    } else {
                        buf.extend_from_slice(got);
                    }
                    Poll::Ready(Ok(got.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

/// Runs a connection until it ends, then unregisters it and tells Python.
///
/// NOTE: this future lives as long as the connection, inside its task, and a future is as
/// large as its largest state: what only a busy or closing connection needs (waiting for room
/// in the inbound queue, the close handshake's linger) is boxed, each box made in a statement
/// of its own (a temporary moved into `Box::pin(..)` within the awaiting statement would still
/// take its room in this future), so an idle connection's task holds little more than its
/// handles and the frame decoder.
pub async fn run<R, W>(engine: &Arc<Engine>, conn: Arc<Conn>, mut rd: R, wr: W, buf: BytesMut, head: Vec<u8>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer = tokio::spawn(conn.out.clone().run_writer(
        wr,
        Bytes::from(head),
        engine.cfg.max_frames_per_write,
        engine.metrics.clone(),
    ));
    let end = read_until_end(engine, &conn, &mut rd, buf).await;
    let finishing = Box::pin(finish(engine, conn, rd, writer, end));
    finishing.await
}

/// Reads and dispatches frames until the connection ends, and says how it ended.
async fn read_until_end<R: AsyncRead + Unpin>(engine: &Arc<Engine>, conn: &Arc<Conn>, rd: &mut R, mut buf: BytesMut) -> End {
    let mut decoder = Decoder::new(engine.cfg.max_message_bytes).with_deflate(conn.deflate.as_ref().map(deflate::Inflater::new));
    let m = &engine.metrics;
    'outer: loop {
        // Parse everything buffered first: the handshake may have read the first frames.
        loop {
            match decoder.next(&mut buf) {
                Ok(Some(ev)) => match ev {
                    FrameEvent::Text(d) => {
                        if let Some(ev) = on_message(engine, conn, d, true) {
                            let waiting = Box::pin(engine.inbound.push_data(ev));
                            waiting.await
                        }
                    }
                    FrameEvent::Binary(d) => {
                        if let Some(ev) = on_message(engine, conn, d, false) {
                            let waiting = Box::pin(engine.inbound.push_data(ev));
                            waiting.await
                        }
                    }
                    FrameEvent::Ping(p) => on_ping(engine, conn, &p),
                    FrameEvent::Pong => {}
                    FrameEvent::Close(code) => {
                        conn.out.close(code.unwrap_or(1000), "");
                        break 'outer End::PeerClose(code.unwrap_or(1005));
                    }
                },
                Ok(None) => break,
                Err(v) => {
                    Metrics::inc(&m.protocol_errors);
                    match v.code {
                        1009 => Metrics::inc(&m.oversized_messages),
                        1007 => Metrics::inc(&m.invalid_utf8),
                        _ => {}
                    }
                    conn.out.close(v.code, v.reason);
                    break 'outer End::Violation(v.code);
                }
            }
        }
        if conn.out.is_closing() {
            break End::ServerClose;
        }
        if buf.is_empty() {
            // Every frame read so far is parsed: what is left of the buffer belongs to the
            // messages sliced from it, and an idle connection keeps no buffer at all.
            buf = BytesMut::new();
        }
        tokio::select! {
            r = read_some(rd, &mut buf) => match r {
                Ok(0) | Err(_) => break End::Abrupt,
                Ok(_) => conn.last_rx_ms.store(now_ms(), Relaxed),
            },
            _ = conn.out.closing() => break End::ServerClose,
        }
    }
}

/// After the reader stopped: unregisters the connection, lets the close frame go out and
/// gives the peer a moment to answer it, then tells Python.
async fn finish<R: AsyncRead + Unpin>(engine: &Engine, conn: Arc<Conn>, mut rd: R, writer: tokio::task::JoinHandle<()>, end: End) {
    let m = &engine.metrics;
    let code = match end {
        End::PeerClose(c) => c,
        End::Violation(c) => c,
        End::Abrupt => {
            Metrics::inc(&m.abrupt_disconnects);
            conn.out.abort();
            1006
        }
        End::ServerClose => conn.out.close_code(),
    };
    // Gone for publications from now on, not after the linger below.
    engine.leave_all(&conn);
    // Let the close frame go out, and give the peer a moment to answer it.
    if !matches!(end, End::Abrupt) {
        let mut writer = writer;
        if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
            conn.out.abort();
            writer.abort();
        }
        if !matches!(end, End::PeerClose(_)) {
            let mut sink = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }
    engine.unregister(&conn, code);
}

/// A ping counts against the client's rate limit like a message; its pong replaces one not yet
/// written and counts within the outbound budget (`Outbound::push_pong`).
fn on_ping(engine: &Engine, conn: &Arc<Conn>, payload: &[u8]) {
    if crate::limits::rate::admit(engine, conn) {
        let r = conn.out.push_pong(frame::build(frame::OP_PONG, payload));
        if r != crate::outbound::Push::Queued {
            let _ = r.count(&engine.metrics);
        }
    }
}

/// Queues one message's event for Python; when the queue is full, hands the event back, for
/// the caller to wait for room (boxed there, so the reader's state stays small).
fn on_message(engine: &Arc<Engine>, conn: &Arc<Conn>, data: Bytes, text: bool) -> Option<Event> {
    let ev = inbound_event(engine, conn, data, text)?;
    engine.inbound.try_push_data(ev).err()
}

/// What one inbound message becomes, whatever carried it: answered here (system messages,
/// refusals) and `None`, or the event for Python.
pub fn inbound_event(engine: &Arc<Engine>, conn: &Arc<Conn>, data: Bytes, text: bool) -> Option<Event> {
    let m = &engine.metrics;
    Metrics::inc(&m.messages_in);
    Metrics::add(&m.bytes_in, data.len() as u64);
    if !crate::limits::rate::admit(engine, conn) {
        return None;
    }
    if !engine.cfg.envelopes {
        return Some(if text { Event::Raw { conn: conn.id, data } } else { Event::Bin { conn: conn.id, data } });
    }
    let (data, text, sealed) = decode(engine, conn, data, text)?;
    match classify(&data, engine.cfg.max_topics_per_message) {
        Inbound::System { msg_type, payload } => {
            engine.on_system(conn, &msg_type, payload);
            None
        }
        Inbound::TooManyTopics { count } => {
            engine.refuse_topics(conn, count, "max_topics_per_message", engine.cfg.max_topics_per_message);
            None
        }
        _ if !sealed && engine.cfg.encryption == EncryptionPolicy::Required => {
            Metrics::inc(&m.plaintext_refused);
            engine.send_error(conn, "ENCRYPTION_REQUIRED", "this server accepts application messages only encrypted (E: frames)");
            None
        }
        Inbound::App(json) if !signature_ok(engine, conn, json) => None,
        Inbound::App(json) => {
            if !engine.inbound_first(conn, json) {
                return None;
            }
            let off = json.as_ptr() as usize - data.as_ptr() as usize;
            Some(Event::Msg { conn: conn.id, data: data.slice(off..) })
        }
        Inbound::Other if text => Some(Event::Raw { conn: conn.id, data }),
        Inbound::Other => Some(Event::Bin { conn: conn.id, data }),
    }
}

/// With a signing key: a signed message must verify; with `require_signatures`, every
/// application message must be signed. A refusal is answered and counted.
fn signature_ok(engine: &Engine, conn: &Conn, json: &[u8]) -> bool {
    let Some(signer) = &engine.signer else { return true };
    let reason = match signer.verify(json) {
        Ok(()) => return true,
        Err(SigError::Missing) if !engine.cfg.require_signatures => return true,
        Err(SigError::Missing) => "message is not signed",
        Err(SigError::Invalid) => "signature does not verify",
    };
    Metrics::inc(&engine.metrics.signature_failures);
    engine.send_error(conn, "INVALID_SIGNATURE", reason);
    false
}

/// Undoes the binary encodings: `E:` (decrypt), `C:` (inflate, capped), `M:` (msgpack to JSON).
/// Returns the message, whether it is text, and whether it came encrypted; `None` when it was
/// refused (the client got an error and the connection goes on).
fn decode(engine: &Engine, conn: &Conn, data: Bytes, text: bool) -> Option<(Bytes, bool, bool)> {
    if text || data.len() < 2 {
        return Some((data, text, false));
    }
    let m = &engine.metrics;
    match &data[..2] {
        b"E:" => {
            let opened = {
                let mut cs = conn.crypto.lock();
                cs.session.as_mut().map(|s| s.open(&data[2..], now_ms()))
            };
            match opened {
                None => {
                    Metrics::inc(&m.decrypt_failures);
                    engine.send_error(conn, "ENCRYPTION_NOT_NEGOTIATED", "E: frame before a key exchange");
                    None
                }
                Some(Err(e)) => {
                    Metrics::inc(if e == CryptoError::Replayed { &m.replays_refused } else { &m.decrypt_failures });
                    engine.send_error(conn, "DECRYPTION_FAILED", e.as_str());
                    None
                }
                Some(Ok(plain)) => match simdutf8::basic::from_utf8(&plain) {
                    Ok(_) => {
                        Metrics::inc(&m.sealed_in);
                        Some((Bytes::from(plain), true, true))
                    }
                    Err(_) => {
                        Metrics::inc(&m.decrypt_failures);
                        engine.send_error(conn, "DECRYPTION_FAILED", "decrypted message is not UTF-8 text");
                        None
                    }
                },
            }
        }
        b"C:" => match compress::inflate(&data[2..], engine.cfg.max_message_bytes) {
            Ok(v) => Some((Bytes::from(v), false, false)),
            Err(e) => {
                Metrics::inc(&m.decompress_refused);
                let msg = match e {
                    InflateError::TooLarge => "decompressed message exceeds max_message_bytes",
                    InflateError::Corrupt => "corrupt compressed message",
                };
                engine.send_error(conn, "DECOMPRESSION_FAILED", msg);
                None
            }
        },
        b"M:" => match msgpack::to_json(&data[2..]) {
            Ok(v) => Some((Bytes::from(v), false, false)),
            Err(e) => {
                Metrics::inc(&m.msgpack_errors);
                engine.send_error(conn, "INVALID_MSGPACK", &e);
                None
            }
        },
        _ => Some((data, text, false)),
    }
}
