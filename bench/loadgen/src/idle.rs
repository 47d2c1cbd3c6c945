//! Idle: open N connections, hold them (answering pings and keepalive), close them.
//!
//! When all are open, and each has had its first frame from the server (`server_ready`) or
//! `--first-frame-timeout-ms` passed, it prints one JSON line `{"event":"all_open",...}` on
//! stdout (`ready`: how many had their first frame), so that a harness can read the server's
//! RSS then, with every connection past its upgrade; `{"event":"closing"}` before it closes them. The hold
//! ends after `--hold-s` or on SIGINT/SIGTERM.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::conn::{self, Status};
use crate::report;
use crate::Common;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    #[arg(long, default_value_t = 10.0)]
    pub hold_s: f64,
    /// How long, after the last upgrade, to wait until every connection has had its first
    /// frame from the server (0: do not wait).
    #[arg(long, default_value_t = 10_000)]
    pub first_frame_timeout_ms: u64,
}

pub async fn run(a: Args) -> Result<Value, String> {
    let target = Arc::new(a.common.target()?);
    let n = a.connections;
    let sem = Arc::new(Semaphore::new(a.common.connect_concurrency.max(1)));
    let closed = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let cpu0 = report::self_cpu();
    let mut opening = Vec::with_capacity(n);
    for i in 0..n {
        let (target, sem) = (target.clone(), sem.clone());
        opening.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.ok();
            conn::open(&target, i, 0x1d1e).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    let mut errors = Vec::new();
    let mut failed = 0u64;
    for (i, h) in opening.into_iter().enumerate() {
        match h.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(o) => {
                let (conn, mut reader) = (o.conn, o.reader);
                conns.push(conn.clone());
                let (closed, frames, ready) = (closed.clone(), frames.clone(), ready.clone());
                readers.push(tokio::spawn(async move {
                    let mut msgs: Vec<Vec<u8>> = Vec::new();
                    let mut first = true;
                    loop {
                        let r = conn
                            .read_some(&mut reader, |_, d, _| msgs.push(d.to_vec()))
                            .await;
                        if first && !msgs.is_empty() {
                            first = false;
                            ready.fetch_add(1, Release);
                        }
                        frames.fetch_add(msgs.len() as u64, Relaxed);
                        for m in msgs.drain(..) {
                            conn::answer_keepalive(&conn, &m).await;
                        }
                        if !matches!(r, Ok((Status::Open, _))) {
                            closed.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                }));
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(format!("connection {i}: {e}"));
                }
            }
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    let ready_by = Instant::now() + Duration::from_millis(a.first_frame_timeout_ms);
    while a.first_frame_timeout_ms > 0 && (ready.load(Acquire) as usize) < conns.len() && Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_open = report::self_cpu() - cpu0;
    report::event(&json!({
        "event": "all_open", "connections": conns.len(), "failed": failed,
        "ready": ready.load(Acquire), "open_s": report::round3(open_s), "pid": std::process::id(),
    }));
    eprintln!(
        "idle: {} open ({} failed) in {:.2}s; holding {}s",
        conns.len(),
        failed,
        open_s,
        a.hold_s
    );

    let hold = tokio::time::sleep(Duration::from_secs_f64(a.hold_s));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let interrupted = tokio::select! {
        _ = hold => false,
        _ = tokio::signal::ctrl_c() => true,
        _ = term.recv() => true,
    };
    let closed_during_hold = closed.load(Acquire);
    report::event(&json!({"event": "closing", "closed_by_server": closed_during_hold}));
    let t_close = Instant::now();
    for c in &conns {
        let _ = c.close(1000).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for r in readers {
            let _ = r.await;
        }
    })
    .await;
    let mut out = a.common.describe("idle");
    let o = out.as_object_mut().expect("object");
    o.insert("ok".into(), json!(failed == 0 && closed_during_hold == 0));
    o.insert("connections".into(), json!(n));
    o.insert("opened".into(), json!(conns.len()));
    o.insert("failed".into(), json!(failed));
    o.insert("ready".into(), json!(ready.load(Acquire)));
    o.insert("connect_errors".into(), json!(errors));
    o.insert("open_s".into(), json!(report::round3(open_s)));
    o.insert(
        "opened_per_s".into(),
        json!(report::rate(conns.len() as u64, open_s)),
    );
    o.insert(
        "generator_cpu_open_s".into(),
        json!(report::round6(cpu_open)),
    );
    o.insert("hold_s".into(), json!(a.hold_s));
    o.insert("interrupted".into(), json!(interrupted));
    o.insert(
        "closed_by_server_during_hold".into(),
        json!(closed_during_hold),
    );
    o.insert("frames_received".into(), json!(frames.load(Acquire)));
    o.insert(
        "close_s".into(),
        json!(report::round3(t_close.elapsed().as_secs_f64())),
    );
    o.insert(
        "generator_cpu_s".into(),
        json!(report::round6(report::self_cpu() - cpu0)),
    );
    Ok(out)
}
