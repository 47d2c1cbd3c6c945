//! Latency: round trips through an echo handler at a fixed offered rate.
//!
//! Each connection sends `{"t":"echo","p":{"n":N,"ts":NS}}` and expects the server to send the
//! payload back. Open loop: message j of the run is due at start + j / rate and goes to
//! connection j % C, whether or not earlier replies came back. Latency is measured from the
//! message's scheduled time (a stalled server cannot hide its stall: no coordinated omission)
//! and, separately, from when it was really written. Messages due in the first `--warmup-s` are
//! sent but not recorded.
//!
//! The schedule is kept by a pacer thread of its own (timer slack 1 us) that writes to the
//! sockets directly: tokio's timers tick by the millisecond, which would add up to a millisecond
//! to every figure. Replies are read by the tokio runtime.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::codec::{self, Rng};
use crate::conn::{self, Conn, Reader, Status};
use crate::report::{self, hist_json, rate};
use crate::seq::parse_int;
use crate::Common;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Total messages per second over all connections.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    #[arg(long, default_value = "echo")]
    pub msg_type: String,
    /// The pacer sleeps at least this long between wake-ups and then writes everything due:
    /// fewer wake-ups at high rates, at the cost of up to this much send delay (counted in
    /// `latency`, not in `latency_from_write`).
    #[arg(long, default_value_t = 50)]
    pub min_sleep_us: u64,
    /// After the last send, wait at most this long for the replies still due.
    #[arg(long, default_value_t = 5.0)]
    pub drain_s: f64,
}

struct Shared {
    base: Instant,
    start: Instant,
    measure_from: Instant,
    rate: f64,
    conns: usize,
    sent: AtomicU64,
    received: AtomicU64,
    unmatched: AtomicU64,
    /// From the scheduled send time, and from the real one.
    hist: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

impl Shared {
    /// When message `n` of connection `k` was due.
    fn due(&self, k: usize, n: u64) -> Instant {
        self.due_global(n * self.conns as u64 + k as u64)
    }

    /// When message `j` of the run was due.
    fn due_global(&self, j: u64) -> Instant {
        self.start + Duration::from_secs_f64(j as f64 / self.rate)
    }
}

pub async fn run(a: Args) -> Result<Value, String> {
    if a.rate <= 0.0 {
        return Err("--rate must be > 0".into());
    }
    let target = Arc::new(a.common.target()?);
    let c = a.connections.max(1);
    let sem = Arc::new(Semaphore::new(a.common.connect_concurrency.max(1)));
    let mut opening = Vec::new();
    for i in 0..c {
        let (target, sem) = (target.clone(), sem.clone());
        opening.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.ok();
            conn::open(&target, i, 0x1a7e).await
        }));
    }
    let mut conns = Vec::new();
    for h in opening {
        let o = h.await.map_err(|e| e.to_string())??;
        conns.push((o.conn, o.reader));
    }
    let now = Instant::now() + Duration::from_millis(50);
    let shared = Arc::new(Shared {
        base: now,
        start: now,
        measure_from: now + Duration::from_secs_f64(a.warmup_s),
        rate: a.rate,
        conns: c,
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        unmatched: AtomicU64::new(0),
        hist: Mutex::new((report::new_hist(), report::new_hist())),
    });
    let end = shared.start + Duration::from_secs_f64(a.warmup_s + a.duration_s);
    let window = report::Window::start(&a.common.server_pid, a.common.threads);
    let mut readers = Vec::new();
    let mut all = Vec::new();
    for (k, (conn, reader)) in conns.into_iter().enumerate() {
        readers.push(tokio::spawn(read_loop(
            conn.clone(),
            reader,
            shared.clone(),
            k,
        )));
        all.push(conn);
    }
    let quantum = Duration::from_micros(a.min_sleep_us);
    let pacer = {
        let (all, shared, t) = (all.clone(), shared.clone(), a.msg_type.clone());
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pacer(&all, &shared, end, &t, quantum))
            .map_err(|e| e.to_string())?
    };
    let write_errors = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the pacer thread panicked".to_string())?;
    let sent = shared.sent.load(Acquire);
    let drain_end = Instant::now() + Duration::from_secs_f64(a.drain_s);
    while shared.received.load(Acquire) < sent && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let w = window.end();
    for c in &all {
        let _ = c.close(1000).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for r in readers {
            let _ = r.await;
        }
    })
    .await;
    let received = shared.received.load(Acquire);
    let (h_sched, h_sent) = &*shared.hist.lock().expect("hist");
    let mut out = a.common.describe("latency");
    let o = out.as_object_mut().expect("object");
    o.insert("ok".into(), json!(received == sent && write_errors == 0));
    o.insert("connections".into(), json!(c));
    o.insert("offered_rate".into(), json!(a.rate));
    o.insert("duration_s".into(), json!(a.duration_s));
    o.insert("warmup_s".into(), json!(a.warmup_s));
    o.insert("sent".into(), json!(sent));
    o.insert("received".into(), json!(received));
    o.insert("lost".into(), json!(sent.saturating_sub(received)));
    o.insert("write_errors".into(), json!(write_errors));
    o.insert(
        "unmatched_frames".into(),
        json!(shared.unmatched.load(Acquire)),
    );
    o.insert(
        "achieved_rate".into(),
        json!(rate(h_sched.len(), a.duration_s)),
    );
    o.insert("latency".into(), hist_json(h_sched));
    o.insert("latency_from_write".into(), hist_json(h_sent));
    o.insert("lower_bound".into(), json!(w.saturated()));
    if let Value::Object(m) = w.json(received) {
        o.extend(m);
    }
    Ok(out)
}

/// Write every message when it is due (all that are due at once after a late wake-up).
/// Returns the number of connections that failed or could not take their last messages.
fn pacer(conns: &[Arc<Conn>], shared: &Shared, end: Instant, t: &str, quantum: Duration) -> u64 {
    // SAFETY: prctl(PR_SET_TIMERSLACK) on this thread; no pointers involved.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let c = conns.len();
    let mut rng = Rng::new(0x9ace);
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); c];
    let mut dirty: Vec<usize> = Vec::new();
    let mut failed = vec![false; c];
    let mut text = String::new();
    let mut j = 0u64;
    let flush = |pending: &mut Vec<Vec<u8>>, dirty: &mut Vec<usize>, failed: &mut Vec<bool>| {
        dirty.retain(|&k| {
            if failed[k] {
                return false;
            }
            match conns[k].try_send_raw(&pending[k]) {
                Ok(n) => {
                    pending[k].drain(..n);
                    !pending[k].is_empty()
                }
                Err(_) => {
                    failed[k] = true;
                    false
                }
            }
        });
    };
    loop {
        let due = shared.due_global(j);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(quantum));
            continue;
        }
        let ts = now.saturating_duration_since(shared.base).as_nanos() as u64;
        let first = j;
        while shared.due_global(j) <= now && shared.due_global(j) < end {
            let (k, n) = ((j % c as u64) as usize, j / c as u64);
            text.clear();
            let _ = write!(text, r#"{{"t":"{t}","p":{{"n":{n},"ts":{ts}}}}}"#);
            if pending[k].is_empty() {
                dirty.push(k);
            }
            codec::encode_frame(
                &mut pending[k],
                codec::OP_TEXT,
                text.as_bytes(),
                rng.mask_key(),
            );
            j += 1;
        }
        shared.sent.fetch_add(j - first, Relaxed);
        flush(&mut pending, &mut dirty, &mut failed);
    }
    let give_up = Instant::now() + Duration::from_secs(2);
    while !dirty.is_empty() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_micros(200));
        flush(&mut pending, &mut dirty, &mut failed);
    }
    failed.iter().filter(|&&f| f).count() as u64 + dirty.len() as u64
}

async fn read_loop(conn: Arc<Conn>, mut reader: Reader, shared: Arc<Shared>, k: usize) {
    let key_n = Finder::new(b"\"n\":");
    let key_ts = Finder::new(b"\"ts\":");
    let mut others: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut got = Vec::new();
        let res = conn
            .read_some(&mut reader, |_, d, at| {
                let Some(i) = key_n.find(d) else {
                    others.push(d.to_vec());
                    return;
                };
                let Some(n) = parse_int(&d[i + 4..]) else {
                    others.push(d.to_vec());
                    return;
                };
                // The payload's "ts" (a number) comes after "n"; the envelope's is a string.
                let ts = key_ts
                    .find_iter(&d[i..])
                    .find_map(|j| parse_int(&d[i + j + 5..]));
                got.push((n.max(0) as u64, ts, at));
            })
            .await;
        if !got.is_empty() {
            shared.received.fetch_add(got.len() as u64, Relaxed);
            let mut h = shared.hist.lock().expect("hist");
            for (n, ts, at) in got {
                let due = shared.due(k, n);
                if due < shared.measure_from {
                    continue;
                }
                let _ =
                    h.0.record(at.saturating_duration_since(due).as_nanos().max(1) as u64);
                if let Some(ts) = ts {
                    let sent = shared.base + Duration::from_nanos(ts.max(0) as u64);
                    let _ =
                        h.1.record(at.saturating_duration_since(sent).as_nanos().max(1) as u64);
                }
            }
        }
        for m in others.drain(..) {
            if !conn::answer_keepalive(&conn, &m).await {
                shared.unmatched.fetch_add(1, Relaxed);
            }
        }
        if !matches!(res, Ok((Status::Open, _))) {
            return;
        }
    }
}
