//! Inbound: C connections send JSON messages `{"t":"count","p":{"i":N,"d":"xx.."}}` as fast as
//! the socket takes them (or at a total `--rate`), each masked with its own key. The server
//! counts what its handler received; this side reports what it sent and its own CPU.
//! Replies are read (and dropped) so the server never blocks on a full socket; at the end each
//! connection closes with a close handshake, so no unread data is reset away.
//!
//! With `--stats-msg` the server's own count is read: that message is sent on the first
//! connection every `--stats-interval-ms`, and the reply's `--processed-field` (a number) is the
//! server's processed total. The writers then keep at most `--max-in-flight` messages sent but not
//! yet processed (a slow server is not buried under a backlog in the socket buffers), and the
//! measured window ends when the server has processed everything sent: `processed_per_s` and the
//! per-server-CPU-second figure count what the handler really received.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem::Finder;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::codec;
use crate::conn::{self, Conn, Reader, Status};
use crate::report::{self, rate};
use crate::seq::parse_int;
use crate::Common;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    #[arg(long, default_value_t = 10_000)]
    pub messages_per_conn: u64,
    /// Total messages per second over all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Stop sending after this long even if not every message went.
    #[arg(long, default_value_t = 60.0)]
    pub duration_s: f64,
    /// Size of each message's JSON text (approximate: the counter's digits vary).
    #[arg(long, default_value_t = 50)]
    pub payload_bytes: usize,
    /// The message type `t`.
    #[arg(long, default_value = "count")]
    pub msg_type: String,
    /// Messages gathered into one write when unlimited.
    #[arg(long, default_value_t = 64)]
    pub batch: u64,
    /// One frame per write (one message per TCP segment, as a real client sends it: the
    /// sockets have TCP_NODELAY) instead of batches; with --rate, each connection paced on its
    /// own, the connections' send times spread evenly over the interval.
    #[arg(long)]
    pub one_per_write: bool,
    /// With --server-pid: keep sending past --duration-s until the server has used this much CPU
    /// in the window (at most --max-duration-s), so that the window holds enough of it.
    #[arg(long, default_value_t = 0.0)]
    pub min_server_cpu_s: f64,
    #[arg(long, default_value_t = 30.0)]
    pub max_duration_s: f64,
    /// After sending: wait this long for each server's close reply.
    #[arg(long, default_value_t = 5.0)]
    pub close_timeout_s: f64,
    /// A message that makes the server reply with its processed count (e.g.
    /// '{"t":"bench.stats"}'); see the module notes.
    #[arg(long)]
    pub stats_msg: Option<String>,
    /// The reply's field carrying the count, found as `"FIELD":N`.
    #[arg(long, default_value = "received")]
    pub processed_field: String,
    #[arg(long, default_value_t = 5)]
    pub stats_interval_ms: u64,
    /// With --stats-msg: messages sent but not yet processed, at most (0: no limit).
    #[arg(long, default_value_t = 50_000)]
    pub max_in_flight: u64,
    /// With --stats-msg: stop waiting for the server's count after this long without progress.
    #[arg(long, default_value_t = 10.0)]
    pub stall_timeout_s: f64,
}

struct Shared {
    /// Set when the writers must stop (the run's duration is over).
    stop: std::sync::atomic::AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    closed_early: AtomicU64,
    closing: std::sync::atomic::AtomicBool,
    /// The server's processed total from its last stats reply (u64::MAX: none yet), and the
    /// total before this run sent anything.
    processed: AtomicU64,
    processed_base: AtomicU64,
    processed_key: Option<Finder<'static>>,
}

impl Shared {
    /// Processed by the server in this run (0 before the first reply).
    fn processed(&self) -> u64 {
        let p = self.processed.load(Acquire);
        if p == u64::MAX {
            return 0;
        }
        p.saturating_sub(self.processed_base.load(Acquire))
    }
}

pub async fn run(a: Args) -> Result<Value, String> {
    let target = Arc::new(a.common.target()?);
    let c = a.connections.max(1);
    let sem = Arc::new(Semaphore::new(a.common.connect_concurrency.max(1)));
    let t_setup = Instant::now();
    let mut opening = Vec::with_capacity(c);
    for i in 0..c {
        let (target, sem) = (target.clone(), sem.clone());
        opening.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.ok();
            conn::open(&target, i, 0x1b0d).await
        }));
    }
    let mut conns = Vec::with_capacity(c);
    let mut errors = Vec::new();
    for (i, h) in opening.into_iter().enumerate() {
        match h.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(o) => conns.push((o.conn, o.reader)),
            Err(e) => {
                if errors.len() < 10 {
                    errors.push(format!("connection {i}: {e}"));
                }
            }
        }
    }
    let setup_s = t_setup.elapsed().as_secs_f64();
    if conns.is_empty() {
        return Err(format!("no connection opened: {errors:?}"));
    }
    let shared = Arc::new(Shared {
        stop: Default::default(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        closed_early: AtomicU64::new(0),
        closing: Default::default(),
        processed: AtomicU64::new(u64::MAX),
        processed_base: AtomicU64::new(0),
        processed_key: a
            .stats_msg
            .as_ref()
            .map(|_| Finder::new(format!("\"{}\":", a.processed_field).as_bytes()).into_owned()),
    });
    let live = conns.len();
    let per_conn_rate = if a.rate > 0.0 {
        a.rate / live as f64
    } else {
        0.0
    };
    let (conns, reader_states): (Vec<Arc<Conn>>, Vec<Reader>) = conns.into_iter().unzip();
    let mut readers = Vec::with_capacity(live);
    for (conn, reader) in conns.iter().cloned().zip(reader_states) {
        readers.push(tokio::spawn(read_loop(conn, reader, shared.clone())));
    }
    // The server's count before this run, then a poller that keeps it fresh.
    let interval = Duration::from_millis(a.stats_interval_ms.max(1));
    let poller = match &a.stats_msg {
        Some(msg) => {
            let deadline = Instant::now() + Duration::from_secs(5);
            while shared.processed.load(Acquire) == u64::MAX {
                if Instant::now() >= deadline {
                    return Err("no reply to --stats-msg with the processed field".into());
                }
                conns[0]
                    .send_text(msg)
                    .await
                    .map_err(|e| format!("stats: {e}"))?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let base = shared.processed.load(Acquire);
            shared.processed_base.store(base, Release);
            let (conn, shared, msg) = (conns[0].clone(), shared.clone(), msg.clone());
            Some(tokio::spawn(async move {
                while !shared.closing.load(Acquire) {
                    if conn.send_text(&msg).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(interval).await;
                }
            }))
        }
        None => None,
    };
    let window = report::Window::start(&a.common.server_pid, a.common.threads);
    let start = window.t0();
    // The end of sending: --duration-s, extended while the server has used less than
    // --min-server-cpu-s (up to --max-duration-s).
    let timer = {
        let (shared, pids) = (shared.clone(), a.common.server_pid.clone());
        let (min_s, max_s, want) = (a.duration_s, a.max_duration_s.max(a.duration_s), a.min_server_cpu_s);
        tokio::spawn(async move {
            let cpu0 = report::ThreadsCpu::read(&pids);
            tokio::time::sleep_until((start + Duration::from_secs_f64(min_s)).into()).await;
            while want > 0.0 && cpu0.procs > 0 && start.elapsed().as_secs_f64() < max_s {
                if report::ThreadsCpu::read(&pids).since(&cpu0).0 >= want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            shared.stop.store(true, Release);
        })
    };
    let mut writers = Vec::with_capacity(live);
    for (i, conn) in conns.iter().enumerate() {
        let (conn, shared, a2) = (conn.clone(), shared.clone(), a.clone());
        // Paced connections start spread over one interval, not all at once.
        let phase = if per_conn_rate > 0.0 {
            Duration::from_secs_f64(i as f64 / live as f64 / per_conn_rate)
        } else {
            Duration::ZERO
        };
        writers.push(tokio::spawn(async move {
            write_loop(&conn, &a2, per_conn_rate, start + phase, &shared).await
        }));
    }
    let mut write_errors = 0u64;
    for w in writers {
        if !matches!(w.await, Ok(Ok(()))) {
            write_errors += 1;
        }
    }
    timer.abort();
    let sent = shared.sent.load(Acquire);
    let mut stalled = false;
    if a.stats_msg.is_some() {
        // Until the server has processed everything sent, or stops making progress.
        let (mut last, mut last_at) = (shared.processed(), Instant::now());
        while shared.processed() < sent {
            tokio::time::sleep(interval).await;
            let p = shared.processed();
            if p > last {
                (last, last_at) = (p, Instant::now());
            } else if last_at.elapsed().as_secs_f64() > a.stall_timeout_s {
                stalled = true;
                break;
            }
        }
    }
    let w = window.end();
    let processed = shared.processed();
    eprintln!(
        "inbound: sent {sent} in {:.3}s = {:.2}M msg/s{}, generator cpu {:.0}%",
        w.wall,
        rate(sent, w.wall) / 1e6,
        if a.stats_msg.is_some() {
            format!(", server processed {processed}")
        } else {
            String::new()
        },
        w.share() * 100.0
    );

    // Close handshake on every connection; the readers end on the server's reply.
    let t_close = Instant::now();
    shared.closing.store(true, Release);
    if let Some(p) = poller {
        let _ = p.await;
    }
    for conn in &conns {
        let _ = conn.close(1000).await;
    }
    let close_timeout = Duration::from_secs_f64(a.close_timeout_s);
    let mut unclosed = 0u64;
    for r in readers {
        let left = close_timeout.saturating_sub(t_close.elapsed());
        if tokio::time::timeout(left, r).await.is_err() {
            unclosed += 1;
        }
    }
    let closed_at = Instant::now();
    let expected = a.messages_per_conn * live as u64;
    let mut out = a.common.describe("inbound");
    let o = out.as_object_mut().expect("object");
    let counted = a.stats_msg.is_some();
    let ok = errors.is_empty()
        && write_errors == 0
        && if counted {
            // A --duration-s cap may stop the sending early: what counts is that all was processed.
            !stalled && processed == sent && sent > 0
        } else {
            sent == expected
        };
    let win = w.json(if counted { processed } else { sent });
    o.insert("ok".into(), json!(ok));
    o.insert("connections".into(), json!(c));
    o.insert("connected".into(), json!(live));
    o.insert("connect_errors".into(), json!(errors));
    o.insert("setup_s".into(), json!(report::round3(setup_s)));
    o.insert("messages_per_conn".into(), json!(a.messages_per_conn));
    o.insert("expected".into(), json!(expected));
    o.insert("sent".into(), json!(sent));
    o.insert("offered_rate".into(), json!(a.rate));
    o.insert("one_per_write".into(), json!(a.one_per_write));
    o.insert("sent_per_s".into(), json!(rate(sent, w.wall)));
    if counted {
        o.insert("processed".into(), json!(processed));
        o.insert("processed_per_s".into(), json!(rate(processed, w.wall)));
        o.insert("stalled".into(), json!(stalled));
        o.insert("max_in_flight".into(), json!(a.max_in_flight));
    }
    o.insert(
        "payload_bytes".into(),
        json!(message(&a.msg_type, 0, a.payload_bytes).len()),
    );
    o.insert("write_errors".into(), json!(write_errors));
    o.insert(
        "frames_received".into(),
        json!(shared.received.load(Acquire)),
    );
    o.insert(
        "closed_by_server_early".into(),
        json!(shared.closed_early.load(Acquire)),
    );
    o.insert(
        "close_s".into(),
        json!(report::round3(
            closed_at.duration_since(t_close).as_secs_f64()
        )),
    );
    o.insert("unclosed".into(), json!(unclosed));
    // Each close frame follows that connection's data: the server's reply means it has read
    // everything (its handler may still be behind).
    let until_closed = closed_at.duration_since(start).as_secs_f64();
    o.insert("until_closed_s".into(), json!(report::round6(until_closed)));
    o.insert(
        "sent_per_s_until_closed".into(),
        json!(rate(sent, until_closed)),
    );
    o.insert("lower_bound".into(), json!(w.saturated()));
    if let Value::Object(m) = win {
        o.extend(m);
    }
    Ok(out)
}

/// `{"t":"count","p":{"i":N,"d":"xxx"}}` padded to about `size` bytes.
pub fn message(t: &str, i: u64, size: usize) -> String {
    let base = format!(r#"{{"t":"{t}","p":{{"i":{i},"d":""}}}}"#);
    let pad = size.saturating_sub(base.len());
    format!(r#"{{"t":"{t}","p":{{"i":{i},"d":"{}"}}}}"#, "x".repeat(pad))
}

async fn write_loop(
    conn: &Conn,
    a: &Args,
    per_conn_rate: f64,
    start: Instant,
    shared: &Shared,
) -> std::io::Result<()> {
    let total = a.messages_per_conn;
    let mut sent = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut text = String::new();
    // The message without its counter, split around it: each one is written with no allocation.
    let proto = message(&a.msg_type, 0, a.payload_bytes);
    let cut = proto.find(r#""i":0"#).map(|i| i + 4).unwrap_or(0);
    let (head, tail) = (&proto[..cut], &proto[cut + 1..]);
    let gate = a.stats_msg.is_some() && a.max_in_flight > 0;
    while sent < total {
        let mut now = Instant::now();
        while gate
            && !shared.stop.load(Relaxed)
            && shared.sent.load(Relaxed).saturating_sub(shared.processed()) > a.max_in_flight
        {
            tokio::time::sleep(Duration::from_micros(500)).await;
            now = Instant::now();
        }
        if shared.stop.load(Relaxed) {
            break;
        }
        let n = if per_conn_rate > 0.0 {
            let due = (now.saturating_duration_since(start).as_secs_f64() * per_conn_rate) as u64 + 1;
            if now < start || due <= sent {
                let next = start + Duration::from_secs_f64(sent as f64 / per_conn_rate);
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
            (due - sent).min(total - sent).min(a.batch * 16)
        } else {
            a.batch.max(1).min(total - sent)
        };
        // One write of n frames, or n writes of one frame each.
        let per_write = if a.one_per_write { 1 } else { n };
        let mut first = sent;
        while first < sent + n {
            let k = per_write.min(sent + n - first);
            conn.send_built(
                |rng, out| {
                    for i in first..first + k {
                        text.clear();
                        text.push_str(head);
                        let _ = write!(text, "{i}");
                        text.push_str(tail);
                        codec::encode_frame(out, codec::OP_TEXT, text.as_bytes(), rng.mask_key());
                    }
                },
                &mut buf,
            )
            .await?;
            shared.sent.fetch_add(k, Relaxed);
            first += k;
            if a.one_per_write {
                // Let the other connections write theirs: frames of one connection do not
                // pile up into one segment while the others wait.
                tokio::task::yield_now().await;
            }
        }
        sent += n;
    }
    Ok(())
}

async fn read_loop(conn: Arc<Conn>, mut reader: Reader, shared: Arc<Shared>) {
    let mut others: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut n = 0u64;
        let res = conn
            .read_some(&mut reader, |_, d, _| {
                n += 1;
                if d.len() < 512 {
                    others.push(d.to_vec());
                }
            })
            .await;
        shared.received.fetch_add(n, Relaxed);
        for m in others.drain(..) {
            if let Some(k) = &shared.processed_key {
                if let Some(v) = k
                    .find(&m)
                    .and_then(|i| parse_int(&m[i + k.needle().len()..]))
                {
                    let v = v.max(0) as u64;
                    // The first reply replaces the "none yet" marker; later ones only move up.
                    if shared
                        .processed
                        .compare_exchange(u64::MAX, v, AcqRel, Acquire)
                        .is_err()
                    {
                        shared.processed.fetch_max(v, AcqRel);
                    }
                    continue;
                }
            }
            conn::answer_keepalive(&conn, &m).await;
        }
        match res {
            Ok((Status::Open, _)) => {}
            Ok((Status::Closed(_), _)) | Err(_) => {
                if !shared.closing.load(Acquire) {
                    shared.closed_early.fetch_add(1, Relaxed);
                }
                return;
            }
        }
    }
}
