//! The subscribers' side of a fan-out run: connection setup (first frame, subscribe, ack) and
//! each subscriber's read loop, which checks every delivery and publishes its figures to a slot
//! that the round reads.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::conn::{self, Conn, Reader, Status};
use crate::encodings;
use crate::seq::{SeqCheck, SeqFinder};

/// One subscriber's figures for the current round, published by its task after each read.
#[derive(Default, Clone)]
pub struct SlotStats {
    pub round: u64,
    pub check: SeqCheck,
    pub verified: u64,
    pub verified_bytes: u64,
    pub verify_failed: u64,
    /// Deliveries that came compressed (permessage-deflate).
    pub compressed: u64,
    pub first_bad: Option<String>,
    pub other: u64,
    /// Masked frames from the server (a protocol violation), over the whole run.
    pub masked: u64,
    pub done_at: Option<Instant>,
    pub last_at: Option<Instant>,
    pub closed: Option<String>,
}

pub struct Shared {
    pub round: AtomicU64,
    pub info: Mutex<(u64, Instant)>,
    pub complete: AtomicUsize,
    /// Subscribers in the round: the one that completes the count wakes the main task.
    pub live: AtomicUsize,
    pub closed: AtomicUsize,
    pub done: Notify,
    pub last_ns: AtomicU64,
    pub base: Instant,
    pub slots: Vec<Mutex<SlotStats>>,
    pub hist: Mutex<hdrhistogram::Histogram<u64>>,
    pub inbox: Mutex<Vec<Value>>,
    pub finder: SeqFinder,
    pub verify_every: u64,
    pub publisher: usize,
    /// Every K-th subscriber (and the publisher) reads and checks every delivery; the others are
    /// counted by bytes (`byte_counter`). 1: every subscriber checked.
    pub check_every: usize,
    /// Frames may hold several messages, one per line (Centrifugo).
    pub split_lines: bool,
    /// Bytes each subscriber has read since it connected (upgrade and acks included).
    pub bytes: Vec<AtomicU64>,
    /// When each byte-counted subscriber last read, in ns since `base`.
    pub read_ns: Vec<AtomicU64>,
    /// Connections whose server agreed to permessage-deflate.
    pub deflate_agreed: AtomicUsize,
}

impl Shared {
    /// Whether subscriber `i` checks every delivery (else it is counted by bytes).
    pub fn checked(&self, i: usize) -> bool {
        i == self.publisher || i % self.check_every.max(1) == 0
    }
}

/// A subscriber counted by bytes: reads with `recv(MSG_TRUNC)` (the kernel discards the bytes,
/// nothing is copied or parsed) and publishes how many it has read. A round holds it complete
/// when it has read exactly the bytes a checked subscriber read in that round: every server
/// sends each publication's frame unchanged to every subscriber of the topic, so equal counts
/// mean the same deliveries (order and content are checked on the checked subscribers only).
pub async fn byte_counter(conn: Arc<Conn>, mut reader: Reader, shared: Arc<Shared>, idx: usize) {
    // What the set-up read (upgrade, first frame, ack) precedes every round.
    shared.bytes[idx].store(reader.bytes_in, Release);
    loop {
        match conn.read_discard(&mut reader).await {
            Ok(Some((_, at))) => {
                let ns = at.saturating_duration_since(shared.base).as_nanos() as u64;
                shared.bytes[idx].store(reader.bytes_in, Release);
                shared.read_ns[idx].store(ns, Release);
                shared.last_ns.fetch_max(ns, Relaxed);
            }
            end => {
                let why = match end {
                    Err(e) => format!("read error: {e}"),
                    _ => "closed (end of stream)".to_string(),
                };
                shared.slots[idx].lock().expect("slot").closed = Some(why);
                return;
            }
        }
    }
}

pub struct SetupCfg {
    /// The subscribe message of subscriber i.
    pub subscribe: Box<dyn Fn(usize) -> String + Send + Sync>,
    pub topic: String,
    pub ready_timeout: Duration,
    pub ack: bool,
    pub ack_timeout: Duration,
    /// Do the E2E key exchange before subscribing; deliveries then come as `E:` frames.
    pub encrypt: bool,
    /// With `encrypt`: announce `batch_keys`.
    pub batch_keys: bool,
    /// Centrifugo's client protocol: a `connect` command first, then the subscribe command,
    /// each answered by a reply with its `id`.
    pub centrifugo: bool,
}

/// A subscriber's keys, when it encrypts.
pub type Key = Option<encodings::Keys>;

/// Open, wait for the first frame (if asked), subscribe, wait for the ack (if asked).
/// Returns whether a first frame came before the subscription.
pub async fn setup(
    target: &conn::Target,
    i: usize,
    wait_ready: bool,
    cfg: &SetupCfg,
) -> Result<(Arc<Conn>, Reader, bool, Key), String> {
    let o = conn::open(target, i, 0x5eed).await?;
    let (conn, mut reader) = (o.conn, o.reader);
    let mut got_first = false;
    if wait_ready {
        let msgs = conn::read_messages(&conn, &mut reader, cfg.ready_timeout).await?;
        got_first = !msgs.is_empty();
    }
    let mut key: Key = None;
    if cfg.centrifugo {
        conn.send_text(r#"{"id":1,"connect":{}}"#)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        centrifugo_reply(&conn, &mut reader, 1, cfg.ack_timeout).await?;
        conn.send_text(&(cfg.subscribe)(i))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        centrifugo_reply(&conn, &mut reader, 2, cfg.ack_timeout).await?;
        return Ok((conn, reader, got_first, key));
    }
    if cfg.encrypt {
        let hello = encodings::client_hello(cfg.batch_keys);
        conn.send_text(&hello.message)
            .await
            .map_err(|e| format!("client_hello: {e}"))?;
        let deadline = Instant::now() + cfg.ack_timeout;
        let p = 'found: loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no server_hello".into());
            }
            for m in conn::read_messages(&conn, &mut reader, left).await? {
                if let Ok(v) = serde_json::from_slice::<Value>(&m) {
                    if v["t"] == "server_hello" {
                        break 'found v["p"].clone();
                    }
                }
            }
        };
        key = Some(encodings::Keys::new(hello.finish(&p)?));
    }
    conn.send_text(&(cfg.subscribe)(i))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    if cfg.ack {
        let deadline = Instant::now() + cfg.ack_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no subscription ack".into());
            }
            let msgs = conn::read_messages(&conn, &mut reader, left).await?;
            let mut acked = false;
            for m in &msgs {
                let mut buf = Vec::new();
                let Some(m) = encodings::plain(key.as_mut(), m, &mut buf) else {
                    continue;
                };
                let Some(v) = serde_json::from_slice::<Value>(m).ok().or_else(|| {
                    m.strip_prefix(b"M:")
                        .and_then(|b| rmp_serde::from_slice(b).ok())
                }) else {
                    continue;
                };
                if v.get("t").and_then(|t| t.as_str()) != Some("subscription_update") {
                    got_first = true;
                    continue;
                }
                let p = &v["p"];
                let has = |k: &str| {
                    p[k].as_array()
                        .is_some_and(|a| a.iter().any(|t| t == &json!(cfg.topic)))
                };
                if has("failed_topics") || (p["success"] == json!(false) && !has("success_topics"))
                {
                    return Err(format!("subscription refused: {p}"));
                }
                acked = true;
            }
            if acked {
                break;
            }
        }
    }
    Ok((conn, reader, got_first, key))
}

/// A subscriber's read loop, for the rest of the run.
/// Waits for Centrifugo's reply to command `id` (lines of a frame read one by one); its
/// `error`, if any, is the failure.
async fn centrifugo_reply(conn: &Conn, reader: &mut Reader, id: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no reply to command {id}"));
        }
        for m in conn::read_messages(conn, reader, left).await? {
            for line in m.split(|b| *b == b'\n') {
                let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
                if v["id"] == json!(id) {
                    return match v.get("error") {
                        Some(e) => Err(format!("command {id} refused: {e}")),
                        None => Ok(()),
                    };
                }
            }
        }
    }
}

pub async fn subscriber(
    conn: Arc<Conn>,
    mut reader: Reader,
    shared: Arc<Shared>,
    idx: usize,
    mut key: Key,
) {
    shared.bytes[idx].store(reader.bytes_in, Release);
    let mut plain_buf: Vec<u8> = Vec::new();
    let mut st = SlotStats::default();
    let mut t0 = shared.base;
    let mut verify_at = 1u64;
    let mut hint = 0usize;
    let mut others: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut batch = 0u64;
        let mut completed = false;
        let res = {
            let mut f = |op: u8, raw: &[u8], at: Instant| {
                // E: and C: frames are opened first: their cost is part of what is measured.
                let Some(data) = encodings::plain(key.as_mut(), raw, &mut plain_buf) else {
                    fail(&mut st, "undecodable E:/G:/C: frame".into(), raw);
                    return;
                };
                if data.is_empty() {
                    return; // a batch key, taken
                }
                let r = shared.round.load(Acquire);
                if r != st.round {
                    let (m, t) = *shared.info.lock().expect("info");
                    st = SlotStats {
                        round: r,
                        check: std::mem::take(&mut st.check),
                        ..Default::default()
                    };
                    st.check.reset(m);
                    t0 = t;
                    verify_at = 1;
                }
                let Some(s) = shared.finder.find_hinted(data, &mut hint) else {
                    st.other += 1;
                    others.push(data.to_vec());
                    return;
                };
                st.compressed += (op & 0x40 != 0) as u64;
                let in_order = st.check.on(s);
                batch += 1;
                let c = &st.check;
                if !in_order || c.received >= verify_at || (c.complete() && st.done_at.is_none()) {
                    if c.received >= verify_at {
                        verify_at = c.received + shared.verify_every;
                    }
                    st.verified += 1;
                    st.verified_bytes += data.len() as u64;
                    match shared.finder.full(data) {
                        Ok((Some(full), _)) if full == s => {}
                        Ok((got, _)) => fail(
                            &mut st,
                            format!("fast path read {s}, full decode {got:?}"),
                            data,
                        ),
                        Err(e) => fail(&mut st, e, data),
                    }
                }
                if st.done_at.is_none() && st.check.complete() {
                    st.done_at = Some(at);
                    completed = true;
                }
            };
            // Centrifugo sends several replies and pushes in one frame, one per line.
            let split = shared.split_lines;
            let g = |op: u8, raw: &[u8], at: Instant| {
                if split && raw.contains(&b'\n') {
                    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        f(op, line, at);
                    }
                } else {
                    f(op, raw, at);
                }
            };
            conn.read_some(&mut reader, g).await
        };
        let (status, at) = match res {
            Ok(x) => x,
            Err(e) => (Status::Closed(0), {
                st.closed = Some(format!("read error: {e}"));
                Instant::now()
            }),
        };
        if batch > 0 && st.round > 0 {
            st.last_at = Some(at);
            let ns = at.saturating_duration_since(shared.base).as_nanos() as u64;
            shared.last_ns.fetch_max(ns, Relaxed);
            let lat = at.saturating_duration_since(t0).as_nanos() as u64;
            let _ = shared
                .hist
                .lock()
                .expect("hist")
                .record_n(lat.max(1), batch);
        }
        st.masked = reader.protocol_violations;
        for m in others.drain(..) {
            if conn::answer_keepalive(&conn, &m).await {
                continue;
            }
            if idx == shared.publisher {
                if let Some(v) = shared.finder.decode(&m) {
                    shared.inbox.lock().expect("inbox").push(v);
                }
            }
        }
        if let Status::Closed(code) = status {
            if st.closed.is_none() {
                st.closed = Some(format!("closed ({code})"));
            }
        }
        shared.bytes[idx].store(reader.bytes_in, Release);
        *shared.slots[idx].lock().expect("slot") = st.clone_light();
        if completed && shared.complete.fetch_add(1, AcqRel) + 1 >= shared.live.load(Acquire) {
            shared.done.notify_one();
        }
        if matches!(status, Status::Closed(_)) {
            if shared.closed.fetch_add(1, AcqRel) + 1 >= shared.live.load(Acquire) {
                shared.done.notify_one();
            }
            return;
        }
    }
}

fn fail(st: &mut SlotStats, e: String, data: &[u8]) {
    st.verify_failed += 1;
    if st.first_bad.is_none() {
        st.first_bad = Some(format!(
            "{e}: {}",
            String::from_utf8_lossy(&data[..data.len().min(300)])
        ));
    }
}

impl SlotStats {
    /// A copy for the shared slot, without the sequence bitset.
    fn clone_light(&self) -> SlotStats {
        SlotStats {
            check: self.check.counts(),
            first_bad: self.first_bad.clone(),
            closed: self.closed.clone(),
            ..*self
        }
    }
}
