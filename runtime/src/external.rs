//! External connections: the WebSocket belongs to another server (an ASGI application's, in
//! Python) and only its messages cross into the engine. Everything else is the engine's own
//! path: the handshake's token check, `register`/`unregister` (so the application gets the same
//! connect and disconnect events), inbound decoding and system messages (`inbound_event`), and
//! the connection's outbound queue, whose frames are handed out instead of written to a socket.
//!
//! Waking the carrier: each connection has a small task on the engine's runtime that waits on its
//! outbound queue (as the socket writer would) and, when a push finds the queue idle, adds the
//! connection to a ready set and signals one eventfd for all of them. The carrier reads the
//! ready set and takes each connection's frames until the queue says it is idle again.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::connection::{inbound_event, Conn};
use crate::drain::Event;
use crate::engine::Engine;
use crate::handshake::{authenticate, encodings, origin_allowed, Identity};
use crate::limits::users::TOO_MANY_CONNECTIONS_CODE;
use crate::metrics::Metrics;
use crate::outbound::Taken;
use crate::protocol::envelope;
use crate::protocol::frame;
use crate::protocol::time::now_ms;

/// The request headers the engine checks, as the carrier received them.
#[derive(Default)]
pub struct Request<'a> {
    pub origin: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
}

/// The outcome of `open`.
#[derive(Debug)]
pub enum Opened {
    /// Registered: the application got its connect event and `server_ready` is queued.
    Conn(u64),
    /// Refuse the upgrade with this HTTP status (403 origin, 503 over `max_connections`).
    Refused(u16),
    /// Accept, send `message` (the error envelope), close with `code` (4401 refused token,
    /// 4429 over `max_connections_per_user`) and `reason`.
    Closed { message: Vec<u8>, code: u16, reason: &'static str },
}

/// The outcome of `feed` and `retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fed {
    /// Handled: queued for the application, or answered by the engine.
    Done = 0,
    /// Taken, but the drain queue is full: call `retry` (after the application drained) before
    /// feeding more. This is the external connection's backpressure.
    Busy = 1,
    /// The connection is closing or gone: stop reading; its close comes out of `take`.
    Closed = 2,
}

/// What `take` found after the frames it returned.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeEnd {
    /// More may be queued: take again.
    More,
    /// Nothing queued: wait until the connection is in `ready()`.
    Idle,
    /// Send a close with this code and reason; the queue is finished.
    Close(u16, String),
    /// Finished (ended, or its close was already taken).
    Done,
}

/// One message for the carrier to send: (is text, payload).
pub type OutFrame = (bool, Bytes);

struct Ext {
    conn: Arc<Conn>,
    /// A message the drain queue had no room for, and since when.
    held: Mutex<Option<(Event, Instant)>>,
    pump: JoinHandle<()>,
}

pub struct Externals {
    conns: Mutex<HashMap<u64, Arc<Ext>>>,
    ready: Mutex<HashSet<u64>>,
    fd: OwnedFd,
}

impl Externals {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd returns a new descriptor or -1; we own it from here on.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { conns: Mutex::new(HashMap::new()), ready: Mutex::new(HashSet::new()), fd })
    }

    /// The descriptor that becomes readable when connections have frames to send.
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, id: u64) -> Option<Arc<Ext>> {
        self.conns.lock().get(&id).cloned()
    }

    /// Checks a new connection as the handshake would and, if it passes, registers it.
    /// `rt` runs its wake-up task (the engine's runtime).
    pub fn open(self: &Arc<Self>, engine: &Arc<Engine>, rt: &Handle, req: &Request<'_>, addr: String) -> Opened {
        let m = &engine.metrics;
        Metrics::inc(&m.connections_accepted);
        if !origin_allowed(engine, req.origin) {
            return Opened::Refused(403);
        }
        if !engine.try_reserve_slot() {
            Metrics::inc(&m.connections_rejected_limit);
            return Opened::Refused(503);
        }
        let Identity { user_id, claims } = match authenticate(engine, req.cookie, req.authorization, req.query) {
            Ok(id) => id,
            Err(e) => {
                engine.release_slot();
                let message = envelope::error(e.code(), &e.message(), 1);
                return Opened::Closed { message, code: 4401, reason: e.reason() };
            }
        };
        if let Some(u) = user_id.as_deref() {
            if !engine.user_slots.try_acquire(u, engine.cfg.max_connections_per_user) {
                engine.release_slot();
                Metrics::inc(&m.connections_rejected_user);
                let msg = format!("at most {} connections per user", engine.cfg.max_connections_per_user);
                let message = envelope::error("TOO_MANY_CONNECTIONS", &msg, 1);
                return Opened::Closed { message, code: TOO_MANY_CONNECTIONS_CODE, reason: "too many connections" };
            }
        }
        Metrics::inc(&m.handshakes_ok);
        let conn = engine.register(user_id, claims, addr, encodings(engine, req.query));
        let pump = rt.spawn(pump(self.clone(), conn.clone()));
        let id = conn.id;
        self.conns.lock().insert(id, Arc::new(Ext { conn: conn.clone(), held: Mutex::new(None), pump }));
        if engine.cfg.envelopes {
            engine.send_ready(&conn);
        }
        Opened::Conn(id)
    }

    /// One message from the client, through the same decoding and classification as a socket's.
    /// `Err` if a held message was not retried first.
    pub fn feed(&self, engine: &Arc<Engine>, id: u64, data: Bytes, text: bool) -> Result<Fed, &'static str> {
        let Some(x) = self.get(id) else { return Ok(Fed::Closed) };
        let mut held = x.held.lock();
        if held.is_some() {
            return Err("a held message must be retried before the next is fed");
        }
        let c = &x.conn;
        if c.out.is_closing() {
            return Ok(Fed::Closed);
        }
        c.last_rx_ms.store(now_ms(), Relaxed);
        if data.len() > engine.cfg.max_message_bytes {
            let m = &engine.metrics;
            Metrics::inc(&m.protocol_errors);
            Metrics::inc(&m.oversized_messages);
            c.out.close(1009, "message too big");
            return Ok(Fed::Closed);
        }
        let Some(ev) = inbound_event(engine, c, data, text) else { return Ok(Fed::Done) };
        match engine.inbound.try_push_data(ev) {
            Ok(()) => Ok(Fed::Done),
            Err(ev) => {
                Metrics::inc(&engine.metrics.backpressure_waits);
                *held = Some((ev, Instant::now()));
                Ok(Fed::Busy)
            }
        }
    }

    /// Tries again to queue the message `feed` held.
    pub fn retry(&self, engine: &Engine, id: u64) -> Fed {
        let Some(x) = self.get(id) else { return Fed::Closed };
        let mut held = x.held.lock();
        let Some((ev, since)) = held.take() else { return Fed::Done };
        match engine.inbound.try_push_data(ev) {
            Ok(()) => {
                Metrics::add(&engine.metrics.backpressure_ns, since.elapsed().as_nanos() as u64);
                Fed::Done
            }
            Err(ev) => {
                *held = Some((ev, since));
                Fed::Busy
            }
        }
    }

    /// Moves up to `max` queued messages into `out`, without their frame headers. WebSocket
    /// pings and pongs are left out: the carrier's server runs its own.
    pub fn take(&self, engine: &Engine, id: u64, max: usize, out: &mut Vec<OutFrame>) -> TakeEnd {
        let Some(x) = self.get(id) else { return TakeEnd::Done };
        let mut frames = Vec::new();
        let r = x.conn.out.take_ready(max, &mut frames);
        let m = &engine.metrics;
        Metrics::add(&m.frames_out, frames.len() as u64);
        Metrics::add(&m.bytes_out, frames.iter().map(|f| f.len() as u64).sum());
        for piece in frames {
            // A piece may hold several whole frames (a run shared by several subscribers).
            for (op, payload) in split_all(piece) {
                match op {
                    frame::OP_TEXT => out.push((true, payload)),
                    frame::OP_BINARY => out.push((false, payload)),
                    _ => {}
                }
            }
        }
        match r {
            Taken::Frames => TakeEnd::More,
            Taken::Idle => TakeEnd::Idle,
            Taken::Done => TakeEnd::Done,
            Taken::Close(f) => {
                let (_, p) = split(f);
                let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1000 };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                TakeEnd::Close(code, reason)
            }
        }
    }

    /// The connections that have frames since the last call (clears the eventfd).
    pub fn ready(&self) -> Vec<u64> {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a local u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        self.ready.lock().drain().collect()
    }

    fn mark(&self, id: u64) {
        let mut r = self.ready.lock();
        let first = r.is_empty();
        if r.insert(id) && first {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a local u64 to our own eventfd.
            unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// The connection is over (`code` as Python is told: the peer's, the server's close, or
    /// 1006). A held message is queued first, so the disconnect event still comes after it.
    pub fn end(&self, engine: &Engine, id: u64, code: u16) -> bool {
        let Some(x) = self.conns.lock().remove(&id) else { return false };
        x.pump.abort();
        if let Some((ev, _)) = x.held.lock().take() {
            engine.inbound.push_lifecycle(ev);
        }
        if code == 1006 {
            Metrics::inc(&engine.metrics.abrupt_disconnects);
        }
        x.conn.out.abort();
        self.ready.lock().remove(&id);
        engine.unregister(&x.conn, code);
        engine.release_slot();
        true
    }
}

/// Waits on the connection's queue as a socket writer would, and marks it ready instead of writing.
async fn pump(hub: Arc<Externals>, conn: Arc<Conn>) {
    loop {
        conn.out.woken().await;
        if conn.out.is_done() {
            return;
        }
        hub.mark(conn.id);
    }
}

/// A server frame's opcode and payload (server frames are unmasked, FIN set, never fragmented).
/// The frames of a piece, each as (opcode, payload). Server frames are unmasked and whole.
fn split_all(mut piece: Bytes) -> Vec<(u8, Bytes)> {
    let mut out = Vec::with_capacity(1);
    while piece.len() >= 2 {
        let (hdr, len) = match piece[1] & 0x7f {
            126 if piece.len() >= 4 => (4, u16::from_be_bytes([piece[2], piece[3]]) as usize),
            127 if piece.len() >= 10 => (10, u64::from_be_bytes(piece[2..10].try_into().expect("8 bytes")) as usize),
            n if n < 126 => (2, n as usize),
            _ => break,
        };
        let end = (hdr + len).min(piece.len());
        let f = piece.split_to(end);
        out.push(split(f));
    }
    out
}

fn split(f: Bytes) -> (u8, Bytes) {
    let op = f.first().map_or(0, |b| b & 0x0f);
    let hdr = match f.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    (op, f.slice(hdr.min(f.len())..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_strips_every_header_size() {
        for n in [0usize, 5, 125, 126, 70_000] {
            let body = vec![b'x'; n];
            let (op, p) = split(frame::build(frame::OP_TEXT, &body));
            assert_eq!(op, frame::OP_TEXT);
            assert_eq!(&p[..], &body[..]);
        }
        let mut two = frame::build(frame::OP_TEXT, b"a").to_vec();
        two.extend_from_slice(&frame::build(frame::OP_BINARY, &vec![b'y'; 300]));
        let parts = split_all(Bytes::from(two));
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].0, &parts[0].1[..]), (frame::OP_TEXT, &b"a"[..]));
        assert_eq!((parts[1].0, parts[1].1.len()), (frame::OP_BINARY, 300));
        let (op, p) = split(frame::close_frame(4401, "expired"));
        assert_eq!(op, frame::OP_CLOSE);
        assert_eq!(&p[..2], &4401u16.to_be_bytes());
        assert_eq!(&p[2..], b"expired");
    }

    use crate::config::{Config, JwtConfig};

    fn engine(cfg: Config) -> Arc<Engine> {
        Arc::new(Engine::new(cfg).unwrap())
    }

    fn take_all(hub: &Externals, e: &Engine, id: u64) -> (Vec<OutFrame>, TakeEnd) {
        let mut out = vec![];
        loop {
            match hub.take(e, id, 8, &mut out) {
                TakeEnd::More => continue,
                end => return (out, end),
            }
        }
    }

    fn json(f: &OutFrame) -> serde_json::Value {
        serde_json::from_slice(&f.1).unwrap()
    }

    #[tokio::test]
    async fn a_connection_gets_ready_answers_and_ends_with_its_events() {
        let e = engine(Config { inbound_queue: 1, ..Config::default() });
        let hub = Arc::new(Externals::new().unwrap());
        let Opened::Conn(id) = hub.open(&e, &Handle::current(), &Request::default(), "1.2.3.4:5".into()) else { panic!() };
        let (out, end) = take_all(&hub, &e, id);
        assert_eq!(end, TakeEnd::Idle);
        assert_eq!(json(&out[0])["t"], "server_ready");
        assert!(!out[0].0, "JSON goes in binary frames by default");
        // Idle now: the next message for it marks it ready and signals the fd.
        let ping = Bytes::from_static(br#"{"c":"WSE","t":"ping","p":{"timestamp":1}}"#);
        assert_eq!(hub.feed(&e, id, ping, true), Ok(Fed::Done));
        for _ in 0..100 {
            if !hub.ready.lock().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(hub.ready(), vec![id]);
        let (out, _) = take_all(&hub, &e, id);
        assert_eq!(json(&out[0])["t"], "PONG");
        assert!(out[0].0, "keepalive replies are text");
        // Application messages go to the drain queue; a full queue holds the next one.
        let msg = || Bytes::from_static(br#"{"t":"chat","p":{}}"#);
        assert_eq!(hub.feed(&e, id, msg(), false), Ok(Fed::Done));
        assert_eq!(hub.feed(&e, id, msg(), false), Ok(Fed::Busy));
        assert!(hub.feed(&e, id, msg(), false).is_err(), "feeding past a held message is refused");
        assert_eq!(hub.retry(&e, id), Fed::Busy);
        let evs = e.inbound.take(10);
        assert!(matches!(evs[0], Event::Connect { conn, .. } if conn == id));
        assert!(matches!(evs[1], Event::Msg { .. }));
        assert_eq!(hub.retry(&e, id), Fed::Done);
        // A server close comes out of `take` with its code, after what was queued.
        assert!(e.send(id, "U", "note", b"{}", None));
        e.pubq.run_batch(&e.topics, &e.metrics);
        assert!(e.disconnect(id, 4000, "bye"));
        let (out, end) = take_all(&hub, &e, id);
        assert_eq!(json(&out[0])["t"], "note");
        assert_eq!(end, TakeEnd::Close(4000, "bye".into()));
        assert_eq!(hub.feed(&e, id, msg(), false), Ok(Fed::Closed));
        assert!(hub.end(&e, id, 4000));
        assert!(!hub.end(&e, id, 4000));
        let evs = e.inbound.take(10);
        assert!(matches!(evs[0], Event::Msg { .. }));
        assert!(matches!(evs[1], Event::Disconnect { code: 4000, .. }));
        assert_eq!(e.conn_count(), 0);
        assert!(hub.is_empty());
    }

    #[tokio::test]
    async fn refusals_match_the_handshake() {
        let jwt = JwtConfig { secret: Some("s".repeat(32)), ..JwtConfig::default() };
        let cfg = Config { jwt: Some(jwt), allowed_origins: vec!["https://ok".into()], max_connections: 1, ..Config::default() };
        let e = engine(cfg);
        let hub = Arc::new(Externals::new().unwrap());
        let rt = Handle::current();
        let bad_origin = Request { origin: Some("https://evil"), ..Request::default() };
        assert!(matches!(hub.open(&e, &rt, &bad_origin, String::new()), Opened::Refused(403)));
        let no_token = Request { origin: Some("https://ok"), ..Request::default() };
        match hub.open(&e, &rt, &no_token, String::new()) {
            Opened::Closed { message, code, reason } => {
                assert_eq!((code, reason), (4401, "missing"));
                let v: serde_json::Value = serde_json::from_slice(&message).unwrap();
                assert_eq!(v["p"]["code"], "AUTH_REQUIRED");
            }
            other => panic!("{other:?}"),
        }
        let bad = Request { origin: Some("https://ok"), authorization: Some("Bearer x.y.z"), ..Request::default() };
        assert!(matches!(hub.open(&e, &rt, &bad, String::new()), Opened::Closed { reason: "malformed", .. }));
        let snap: HashMap<_, _> = e.metrics.snapshot().into_iter().collect();
        assert_eq!((snap["auth_missing"], snap["auth_failed"], snap["handshake_bad_origin"]), (1, 1, 1));
        assert_eq!(e.conn_count(), 0, "refused connections leave no slot taken");
    }
}
