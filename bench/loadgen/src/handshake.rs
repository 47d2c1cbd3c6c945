//! Handshake: N connections, K at a time: TCP connect, upgrade, first server frame
//! (`server_ready`, or the auth error). Reports connections per second and the latency of each
//! step from the start of the TCP connect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::conn::{self, Conn, Status};
use crate::report::{self, hist_json, rate};
use crate::Common;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// How long to wait for the first server frame (servers without one: upgrade time only).
    #[arg(long, default_value_t = 2000)]
    pub first_frame_timeout_ms: u64,
    /// Keep every connection open until the end (else each closes after its first frame).
    #[arg(long)]
    pub keep_open: bool,
}

#[derive(Default)]
struct Stats {
    ok: u64,
    no_first_frame: u64,
    failures: BTreeMap<String, u64>,
    first_types: BTreeMap<String, u64>,
    kept: Vec<Arc<Conn>>,
}

pub async fn run(a: Args) -> Result<Value, String> {
    let target = Arc::new(a.common.target()?);
    let hists = Arc::new(Mutex::new((
        report::new_hist(),
        report::new_hist(),
        report::new_hist(),
    )));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let window = report::Window::start(&a.common.server_pid, a.common.threads);
    let mut tasks = Vec::with_capacity(a.count);
    for i in 0..a.count {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (target, hists, stats, a) = (target.clone(), hists.clone(), stats.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            one(&target, i, &a, &hists, &stats).await;
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let w = window.end();
    let s = std::mem::take(&mut *stats.lock().expect("stats"));
    for c in &s.kept {
        let _ = c.close(1000).await;
    }
    let (h_tcp, h_up, h_first) = &*hists.lock().expect("hists");
    let mut out = a.common.describe("handshake");
    let o = out.as_object_mut().expect("object");
    let failed: u64 = s.failures.values().sum();
    o.insert("ok".into(), json!(failed == 0));
    o.insert("count".into(), json!(a.count));
    o.insert("concurrency".into(), json!(a.concurrency));
    o.insert("keep_open".into(), json!(a.keep_open));
    o.insert("succeeded".into(), json!(s.ok));
    o.insert("failed".into(), json!(failed));
    o.insert("failures".into(), json!(s.failures));
    o.insert("without_first_frame".into(), json!(s.no_first_frame));
    o.insert("first_frame_types".into(), json!(s.first_types));
    o.insert("connections_per_s".into(), json!(rate(s.ok, w.wall)));
    o.insert("tcp_connect".into(), hist_json(h_tcp));
    o.insert("upgrade".into(), hist_json(h_up));
    o.insert("first_frame".into(), hist_json(h_first));
    o.insert("lower_bound".into(), json!(w.saturated()));
    if let Value::Object(m) = w.json(s.ok) {
        o.extend(m);
    }
    Ok(out)
}

type Hists = Mutex<(Histogram<u64>, Histogram<u64>, Histogram<u64>)>;

async fn one(target: &conn::Target, i: usize, a: &Args, hists: &Hists, stats: &Mutex<Stats>) {
    let t0 = Instant::now();
    let fail = |why: String| {
        let key = why.split(':').next().unwrap_or("error").to_string();
        *stats
            .lock()
            .expect("stats")
            .failures
            .entry(key)
            .or_default() += 1;
    };
    let o = match conn::open(target, i, 0x4a5d).await {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let (conn, mut reader) = (o.conn, o.reader);
    let mut first: Option<(Vec<u8>, Instant)> = None;
    let mut closed = None;
    let wait = Duration::from_millis(a.first_frame_timeout_ms);
    let deadline = Instant::now() + wait;
    while first.is_none() && closed.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(
            left,
            conn.read_some(&mut reader, |_, d, at| {
                if first.is_none() {
                    first = Some((d.to_vec(), at));
                }
            }),
        )
        .await;
        match r {
            Err(_) => break,
            Ok(Ok((Status::Open, _))) => {}
            Ok(Ok((Status::Closed(code), _))) => closed = Some(code),
            Ok(Err(e)) => return fail(format!("read: {e}")),
        }
    }
    {
        let mut h = hists.lock().expect("hists");
        let _ =
            h.0.record(o.connected.saturating_duration_since(t0).as_nanos().max(1) as u64);
        let _ =
            h.1.record(o.upgraded.saturating_duration_since(t0).as_nanos().max(1) as u64);
        if let Some((_, at)) = &first {
            let _ =
                h.2.record(at.saturating_duration_since(t0).as_nanos().max(1) as u64);
        }
    }
    let done = {
        let mut st = stats.lock().expect("stats");
        match &first {
            Some((d, _)) => {
                let t = serde_json::from_slice::<Value>(d)
                    .ok()
                    .and_then(|v| {
                        let t = v.get("t")?.as_str()?.to_string();
                        let code = v
                            .pointer("/p/code")
                            .and_then(|c| c.as_str())
                            .map(|c| format!(" {c}"));
                        Some(t + code.as_deref().unwrap_or(""))
                    })
                    .unwrap_or_else(|| "undecodable".into());
                *st.first_types.entry(t).or_default() += 1;
            }
            None => st.no_first_frame += 1,
        }
        if let Some(code) = closed {
            *st.failures
                .entry(format!("closed by server {code}"))
                .or_default() += 1;
            true
        } else {
            st.ok += 1;
            if a.keep_open {
                st.kept.push(conn.clone());
            }
            false
        }
    };
    if done {
        return;
    }
    if a.keep_open {
        // Keep reading (pings) until the end.
        tokio::spawn(async move {
            while let Ok((Status::Open, _)) = conn.read_some(&mut reader, |_, _, _| {}).await {}
        });
    } else {
        let _ = conn.close(1000).await;
        // Wait for the server's close reply in the background: the next connection needn't.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok((Status::Open, _)) = conn.read_some(&mut reader, |_, _, _| {}).await {}
            })
            .await;
        });
    }
}
