//! One measured run: this process publishes `count` frames of `size` bytes (paced at `rate`,
//! or as fast as it can), a forked child consumes them over one transport, checks their order,
//! copies each payload out (as the engine does when it fans a mesh publication out) and records
//! the one-way latency from the frame's CLOCK_MONOTONIC stamp.
//!
//! - `uds`: as the mesh does today: the publisher appends frames to a queue under a mutex and
//!   wakes a writer thread when the queue was empty and the writer waits; the writer takes
//!   everything queued and writes it with one `write_all` (batched writes). The consumer reads
//!   into a 64 KiB buffer and parses whole frames out of it. (The mesh runs these on tokio, which
//!   adds an epoll_wait per wake-up; blocking calls here make `uds` a slight underestimate.)
//! - `shm`: the publisher copies each frame into the shared ring itself (no writer thread); the
//!   consumer reads frames in place, spinning `spin` before it sleeps on a futex.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::frame;
use crate::ring::Ring;
use crate::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// No consumer: the producer paces and builds frames and drops them (the baseline that
    /// both transports include).
    Null,
    Uds,
    Shm,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Null => "null",
            Transport::Uds => "uds",
            Transport::Shm => "shm",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub transport: Transport,
    pub size: usize,
    pub count: u64,
    /// Messages per second; None: as fast as possible.
    pub rate: Option<f64>,
    pub spin: Duration,
    pub ring_bytes: usize,
    pub queue_bytes: usize,
    pub producer_cpu: Option<usize>,
    pub consumer_cpu: Option<usize>,
}

enum Channel {
    Uds(OwnedFd, OwnedFd),
    Shm(Ring),
}

/// Runs one configuration; the report as JSON (`ok` false on any lost, repeated or reordered
/// frame, or a child that failed).
fn e(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |err| format!("{what}: {err}")
}

pub fn run(cfg: &Config) -> Result<Value, String> {
    if cfg.transport == Transport::Null {
        return Ok(run_null(cfg));
    }
    let ch = match cfg.transport {
        Transport::Null => unreachable!(),
        Transport::Uds => {
            let (a, b) = sys::socketpair().map_err(e("socketpair"))?;
            Channel::Uds(a, b)
        }
        Transport::Shm => Channel::Shm(Ring::new(cfg.ring_bytes, cfg.spin).map_err(e("ring"))?),
    };
    let (res_r, res_w) = sys::pipe().map_err(e("pipe"))?;
    let child_cfg = cfg.clone();
    let pid = sys::fork(|| {
        let Ok(w) = res_w.try_clone() else { return 3 };
        let mut w = std::fs::File::from(w);
        let report = consume(&child_cfg, &ch, &mut w);
        let _ = w.write_all(format!("{report}\n").as_bytes());
        0
    })
    .map_err(e("fork"))?;
    drop(res_w);
    if let Some(c) = cfg.producer_cpu {
        sys::pin(c).map_err(e("pin producer"))?;
    }
    sys::tight_timers();
    let mut results = std::io::BufReader::new(std::fs::File::from(res_r));
    // The child's first line says it is ready (pinned, buffers allocated).
    let mut line = String::new();
    std::io::BufRead::read_line(&mut results, &mut line).map_err(e("child"))?;
    let cpu0 = sys::cpu_self();
    let start_ns = sys::now_ns();
    match &ch {
        Channel::Uds(a, b) => {
            let _ = b; // the child's end, still open here; unused
            produce_uds(cfg, a, start_ns)?
        }
        Channel::Shm(ring) => produce_shm(cfg, ring, start_ns),
    }
    let produced_ns = sys::now_ns();
    line.clear();
    std::io::BufRead::read_line(&mut results, &mut line).map_err(e("child"))?;
    let producer_cpu = sys::cpu_self() - cpu0;
    let code = sys::wait(pid);
    let child: Value = serde_json::from_str(line.trim())
        .map_err(|err| format!("child exit {code}, report {line:?}: {err}"))?;
    let last_ns = child["last_ns"].as_u64().unwrap_or(0);
    let wall = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    let consumer_cpu = child["cpu_s"].as_f64().unwrap_or(0.0);
    let n = cfg.count as f64;
    let mut out = json!({
        "transport": cfg.transport.name(),
        "size": cfg.size,
        "mode": if cfg.rate.is_some() { "rate" } else { "full" },
        "rate": cfg.rate,
        "count": cfg.count,
        "ok": code == 0 && child["ok"].as_bool() == Some(true),
        "child_exit": code,
        "wall_s": wall,
        "publish_s": (produced_ns - start_ns) as f64 / 1e9,
        "msgs_per_s": if wall > 0.0 { n / wall } else { 0.0 },
        "producer_cpu_s": producer_cpu,
        "consumer_cpu_s": consumer_cpu,
        "cpu_s_per_million": (producer_cpu + consumer_cpu) / n * 1e6,
        "producer_cpu_s_per_million": producer_cpu / n * 1e6,
        "consumer_cpu_s_per_million": consumer_cpu / n * 1e6,
    });
    if let (Value::Object(o), Value::Object(c)) = (&mut out, child) {
        for (k, v) in c {
            if k != "ok" && k != "cpu_s" && k != "last_ns" {
                o.insert(format!("consumer_{k}"), v);
            }
        }
    }
    if let (Value::Object(o), Channel::Shm(ring)) = (&mut out, &ch) {
        o.insert("producer_sleeps".into(), json!(ring.sleeps().1));
    }
    Ok(out)
}

/// The baseline: pacing and frame building in this process, nothing sent.
fn run_null(cfg: &Config) -> Value {
    if let Some(c) = cfg.producer_cpu {
        let _ = sys::pin(c);
    }
    sys::tight_timers();
    let cpu0 = sys::cpu_self();
    let start_ns = sys::now_ns();
    let mut sum = 0u64;
    publish_all(cfg, start_ns, |f| {
        sum = sum.wrapping_add(std::hint::black_box(f)[f.len() - 1] as u64)
    });
    std::hint::black_box(sum);
    let wall = (sys::now_ns() - start_ns) as f64 / 1e9;
    let cpu = sys::cpu_self() - cpu0;
    let n = cfg.count as f64;
    json!({
        "transport": "null", "size": cfg.size, "mode": if cfg.rate.is_some() { "rate" } else { "full" },
        "rate": cfg.rate, "count": cfg.count, "ok": true, "wall_s": wall, "publish_s": wall,
        "msgs_per_s": n / wall, "producer_cpu_s": cpu, "consumer_cpu_s": 0.0,
        "cpu_s_per_million": cpu / n * 1e6, "producer_cpu_s_per_million": cpu / n * 1e6, "consumer_cpu_s_per_million": 0.0,
    })
}

/// The pacing and stamping loop shared by both producers: `send` gets each built frame.
fn publish_all(cfg: &Config, start_ns: u64, mut send: impl FnMut(&[u8])) {
    let mut buf = Vec::with_capacity(cfg.size);
    let gap_ns = cfg.rate.map(|r| 1e9 / r);
    for seq in 0..cfg.count {
        if let Some(g) = gap_ns {
            let due = start_ns + (seq as f64 * g) as u64;
            if sys::now_ns() < due {
                sys::sleep_until(due);
            }
        }
        frame::build(&mut buf, cfg.size, seq, sys::now_ns());
        send(&buf);
    }
}

fn produce_shm(cfg: &Config, ring: &Ring, start_ns: u64) {
    publish_all(cfg, start_ns, |f| ring.push(f));
}

#[derive(Default)]
struct Queue {
    out: Vec<u8>,
    writer_waiting: bool,
    publisher_waiting: bool,
    done: bool,
}

struct Shared {
    q: Mutex<Queue>,
    not_empty: Condvar,
    not_full: Condvar,
}

fn produce_uds(cfg: &Config, sock: &OwnedFd, start_ns: u64) -> Result<(), String> {
    let sh = Arc::new(Shared {
        q: Mutex::new(Queue::default()),
        not_empty: Condvar::new(),
        not_full: Condvar::new(),
    });
    let mut file = std::fs::File::from(sock.try_clone().map_err(|e| e.to_string())?);
    let writer = {
        let sh = sh.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut spare = Vec::new();
            loop {
                {
                    let mut q = sh.q.lock().unwrap();
                    while q.out.is_empty() && !q.done {
                        q.writer_waiting = true;
                        q = sh.not_empty.wait(q).unwrap();
                    }
                    q.writer_waiting = false;
                    if q.out.is_empty() {
                        return Ok(());
                    }
                    std::mem::swap(&mut q.out, &mut spare);
                    if q.publisher_waiting {
                        q.publisher_waiting = false;
                        sh.not_full.notify_one();
                    }
                }
                file.write_all(&spare)?;
                spare.clear();
            }
        })
    };
    let cap = cfg.queue_bytes;
    publish_all(cfg, start_ns, |f| {
        let mut q = sh.q.lock().unwrap();
        while !q.out.is_empty() && q.out.len() + f.len() > cap {
            q.publisher_waiting = true;
            q = sh.not_full.wait(q).unwrap();
        }
        q.out.extend_from_slice(f);
        if q.writer_waiting {
            q.writer_waiting = false;
            sh.not_empty.notify_one();
        }
    });
    {
        let mut q = sh.q.lock().unwrap();
        q.done = true;
        sh.not_empty.notify_one();
    }
    writer
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| format!("write: {e}"))
}

/// What the consumer keeps while it checks frames.
struct Sink {
    expected: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
    skip: u64,
    scratch: Vec<u8>,
    last_ns: u64,
}

impl Sink {
    fn take(&mut self, f: &[u8]) {
        let now = sys::now_ns();
        match frame::parse(f) {
            Ok(p) => {
                if p.seq != self.expected {
                    self.errors += 1;
                    self.first_error.get_or_insert_with(|| {
                        format!("expected seq {}, got {}", self.expected, p.seq)
                    });
                }
                self.expected = p.seq + 1;
                // The engine copies the payload once into the frame it fans out.
                self.scratch.clear();
                self.scratch.extend_from_slice(p.payload);
                if p.seq >= self.skip {
                    let _ = self.hist.record(now.saturating_sub(p.sent_ns).max(1));
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                self.expected += 1;
            }
        }
        self.last_ns = now;
    }
}

fn consume(cfg: &Config, ch: &Channel, w: &mut std::fs::File) -> Value {
    if let Some(c) = cfg.consumer_cpu {
        if let Err(e) = sys::pin(c) {
            return json!({"ok": false, "error": format!("pin consumer: {e}")});
        }
    }
    let mut sink = Sink {
        expected: 0,
        errors: 0,
        first_error: None,
        hist: Histogram::new(3).expect("histogram"),
        // The first 1% (at least the first frame) warms caches and wakes threads up.
        skip: (cfg.count / 100).max(1),
        scratch: Vec::with_capacity(cfg.size),
        last_ns: 0,
    };
    let mut wakeups = 0u64;
    let mut reads = 0u64;
    // The parent starts its clock on the ready line.
    let cpu0;
    let mut received = 0u64;
    match ch {
        Channel::Shm(ring) => {
            ready(w);
            cpu0 = sys::cpu_self();
            while received < cfg.count {
                received += ring.pop_all(|f| sink.take(f)) as u64;
                wakeups += 1;
            }
        }
        Channel::Uds(a, b) => {
            let _ = a;
            let mut sock = std::fs::File::from(b.try_clone().expect("dup"));
            let mut buf = vec![0u8; 64 << 10];
            let (mut start, mut end) = (0usize, 0usize);
            ready(w);
            cpu0 = sys::cpu_self();
            while received < cfg.count {
                if buf.len() - end < 16 << 10 {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                    if buf.len() - end < 16 << 10 {
                        buf.resize(buf.len() * 2, 0);
                    }
                }
                let n = match sock.read(&mut buf[end..]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        sink.errors += 1;
                        sink.first_error.get_or_insert(format!("read: {e}"));
                        break;
                    }
                };
                reads += 1;
                end += n;
                while end - start >= 4 {
                    let len =
                        u32::from_le_bytes(buf[start..start + 4].try_into().unwrap()) as usize;
                    if end - start < 4 + len {
                        break;
                    }
                    sink.take(&buf[start..start + 4 + len]);
                    received += 1;
                    start += 4 + len;
                }
                if start == end {
                    start = 0;
                    end = 0;
                }
            }
        }
    }
    let cpu = sys::cpu_self() - cpu0;
    let h = &sink.hist;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let mut out = json!({
        "ok": sink.errors == 0 && received == cfg.count,
        "received": received,
        "errors": sink.errors,
        "first_error": sink.first_error,
        "cpu_s": cpu,
        "last_ns": sink.last_ns,
        "latency_us": {"count": h.len(), "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p99_9": us(0.999), "max": h.max() as f64 / 1e3},
    });
    let o = out.as_object_mut().expect("object");
    match ch {
        Channel::Shm(ring) => {
            o.insert("batches".into(), json!(wakeups));
            o.insert("sleeps".into(), json!(ring.sleeps().0));
        }
        Channel::Uds(..) => {
            o.insert("reads".into(), json!(reads));
        }
    }
    out
}

/// Tells the parent (the result pipe's first line) that the consumer is set up.
fn ready(w: &mut std::fs::File) {
    let _ = w.write_all(b"ready\n");
}
