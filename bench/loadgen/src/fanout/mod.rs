//! Fan-out: N subscribers on one topic; one of them asks the server to publish M messages; every
//! delivery is sequence-checked per subscriber. Rounds repeat on the same connections.
//!
//! Setup per connection: upgrade; wait for the server's first frame (`server_ready`) if it sends
//! one (`--ready auto` finds out on the first connection); subscribe; wait for the
//! `subscription_update` ack unless `--no-ack-wait`. A round: the publish request is sent at t0,
//! and the round ends when every subscriber holds all M sequences, or at the timeout, or when no
//! delivery came for `--idle-timeout-s`.

mod round;
mod subscriber;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::conn::Conn;
use crate::report::{self, rate};
use crate::seq::SeqFinder;
use crate::Common;
use round::round;
use subscriber::{byte_counter, setup, subscriber, SetupCfg, Shared, SlotStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ready {
    /// Wait on the first connection; the others wait only if it got a first frame.
    Auto,
    Wait,
    Skip,
}

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Each subscriber also on its own topic PREFIX<i>; the round publishes to those (see above).
    #[arg(long)]
    pub topic_per_subscriber: Option<String>,
    /// Messages per round; each subscriber must get sequences 0 .. M-1.
    #[arg(long, default_value_t = 2000)]
    pub messages: u64,
    /// The publish request; `{topic}`, `{messages}`, `{size}` are substituted. Default:
    /// {"t":"bench.publish","p":{"topic":T,"count":M,"size":SIZE,"chunk":CHUNK}}
    #[arg(long)]
    pub publish_msg: Option<String>,
    #[arg(long, default_value_t = 60)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub chunk: usize,
    /// Ask for a round's messages in publish requests of at most this many (`start` in each
    /// request after the first: sequences continue), each sent once every subscriber holds all the
    /// earlier ones; 0: one request per round.
    #[arg(long, default_value_t = 0)]
    pub burst_messages: u64,
    /// Every K-th subscriber (and the publisher) reads and sequence-checks every delivery; the
    /// others read with `recv(MSG_TRUNC)` (the kernel discards the bytes without copying them)
    /// and are complete when they have read exactly the bytes of a checked one in that round.
    /// Makes the generator's cost per delivery a fraction of a full check's. 1: all checked.
    /// With --encrypt the unchecked ones still do the key exchange (their frames are the same
    /// bytes: batch keys of one length and shared `G:` frames, or per-connection `E:` frames of
    /// the same plaintext). Not with --topic-per-subscriber (every subscriber is then checked).
    #[arg(long, default_value_t = 1)]
    pub check_every: usize,
    /// Ask for publication frames of exactly this many bytes (`frame_bytes` in the default
    /// publish request: the peers pad to it, so that every server sends the same bytes).
    #[arg(long, default_value_t = 0)]
    pub frame_bytes: usize,
    /// The sequence field, looked for as `"FIELD":` (JSON) or the msgpack string FIELD.
    #[arg(long, default_value = "s")]
    pub seq_field: String,
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    /// End a round early when no delivery arrived for this long (after the first one).
    #[arg(long, default_value_t = 5.0)]
    pub idle_timeout_s: f64,
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Size the measured rounds to last about this long: after each warm-up round the message
    /// count becomes this x the round's deliveries/s / subscribers (within --min-messages ..=
    /// --max-messages). 0: every round publishes --messages.
    #[arg(long, default_value_t = 0.0)]
    pub target_round_s: f64,
    #[arg(long, default_value_t = 10)]
    pub min_messages: u64,
    #[arg(long, default_value_t = 100_000)]
    pub max_messages: u64,
    /// The first W rounds are warm-up: reported, but left out of the summary.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Warm up until the server is steady instead of W fixed rounds: after one cold round of
    /// --messages, warm-up rounds sized to --target-server-cpu-s each, until two in a row cost
    /// the same server CPU per delivery within --stable-within, at most this many; then --rounds
    /// measured rounds. 0: off (fixed --warmup, --rounds counting it).
    #[arg(long, default_value_t = 0)]
    pub max_warmup: usize,
    /// Steady when two consecutive warm-up rounds' server CPU per delivery differ by at most
    /// this fraction.
    #[arg(long, default_value_t = 0.05)]
    pub stable_within: f64,
    /// With --max-warmup: size rounds to about this much server CPU (needs --server-pid; the
    /// measured window should hold at least a second of it).
    #[arg(long, default_value_t = 1.2)]
    pub target_server_cpu_s: f64,
    #[arg(long, value_enum, default_value_t = Ready::Auto)]
    pub ready: Ready,
    #[arg(long, default_value_t = 1000)]
    pub ready_timeout_ms: u64,
    /// Don't wait for a subscription ack (for servers that send none).
    #[arg(long)]
    pub no_ack_wait: bool,
    #[arg(long, default_value_t = 10.0)]
    pub ack_timeout_s: f64,
    /// Pause before each round, and after it for late frames (duplicates, bench.done).
    #[arg(long, default_value_t = 200)]
    pub settle_ms: u64,
    /// Also decode every K-th delivery of each subscriber in full (and its first and last).
    #[arg(long, default_value_t = 1000)]
    pub verify_every: u64,
    /// WSE E2E encryption: each subscriber does the key exchange (ECDH P-256) before it
    /// subscribes, announcing `batch_keys`, and opens every `E:` and `G:` delivery it checks
    /// (AES-GCM-256; see --check-every). `C:` (zlib) deliveries are always
    /// inflated: ask for them with `?compression=true` in the URL.
    #[arg(long)]
    pub encrypt: bool,
    /// With --encrypt: do not announce `batch_keys`, so that the server seals every frame for
    /// each connection (what clients that predate batch keys get).
    #[arg(long)]
    pub no_batch_keys: bool,
    /// Centrifugo (v6, JSON): each subscriber sends `connect` and `subscribe` (channel --topic)
    /// commands and waits for their replies; the publisher publishes with client `publish`
    /// commands, one per message, several to a frame (at most 400, under its 64 KB message
    /// limit), data `{"s":SEQ,"d":PADDING}`; frames are read line by line. Every subscriber is
    /// checked (Centrifugo frames each client's queue on its own, so byte counts differ).
    #[arg(long)]
    pub centrifugo: bool,
    /// Offer permessage-deflate (`client_max_window_bits`, as browsers do) and inflate every
    /// compressed delivery before its check; every subscriber is then checked (each one's
    /// compressed bytes differ under context takeover). Without context takeover a thread
    /// inflates each distinct compressed message once (the same bytes inflate the same). The
    /// report says whether it was agreed and the wire bytes per delivery.
    #[arg(long)]
    pub permessage_deflate: bool,
    /// Subscribers listed individually in `errors` at most.
    #[arg(long, default_value_t = 50)]
    pub max_error_subs: usize,
}

pub async fn run(a: Args) -> Result<Value, String> {
    let mut target = a.common.target()?;
    target.deflate = a.permessage_deflate;
    let target = Arc::new(target);
    let n = a.subscribers.max(1);
    let shared = Arc::new(Shared {
        round: AtomicU64::new(0),
        info: Mutex::new((a.messages, Instant::now())),
        complete: AtomicUsize::new(0),
        live: AtomicUsize::new(usize::MAX),
        closed: AtomicUsize::new(0),
        done: Notify::new(),
        last_ns: AtomicU64::new(0),
        base: Instant::now(),
        slots: (0..n).map(|_| Mutex::new(SlotStats::default())).collect(),
        hist: Mutex::new(report::new_hist()),
        inbox: Mutex::new(Vec::new()),
        finder: SeqFinder::new(&a.seq_field, a.common.format()),
        verify_every: a.verify_every.max(1),
        publisher: 0,
        // Too few subscribers for a checked one besides the publisher: check them all.
        check_every: if n >= 2 * a.check_every.max(1)
            && !a.permessage_deflate
            && !a.centrifugo
            && a.topic_per_subscriber.is_none()
        {
            a.check_every.max(1)
        } else {
            1
        },
        bytes: (0..n).map(|_| AtomicU64::new(0)).collect(),
        read_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
        deflate_agreed: AtomicUsize::new(0),
        split_lines: a.centrifugo,
    });
    let (topic, prefix) = (a.topic.clone(), a.topic_per_subscriber.clone());
    let centrifugo = a.centrifugo;
    let subscribe = Box::new(move |i: usize| {
        if centrifugo {
            return json!({"id":2,"subscribe":{"channel":topic}}).to_string();
        }
        let topics = match &prefix {
            Some(p) => json!([topic, format!("{p}{i}")]),
            None => json!([topic]),
        };
        json!({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","topics":topics}})
            .to_string()
    });
    let sem = Arc::new(Semaphore::new(a.common.connect_concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<Arc<Conn>, String>)>();
    let t_setup = Instant::now();
    let cfg = Arc::new(SetupCfg {
        subscribe,
        topic: a.topic.clone(),
        ready_timeout: Duration::from_millis(a.ready_timeout_ms),
        ack: !a.no_ack_wait,
        ack_timeout: Duration::from_secs_f64(a.ack_timeout_s),
        encrypt: a.encrypt,
        batch_keys: !a.no_batch_keys,
        centrifugo: a.centrifugo,
    });

    // The first connection alone: it tells whether the server sends a first frame.
    let mut ready = a.ready;
    let spawn = |i: usize, wait_ready: bool| {
        let (target, shared, sem, tx, cfg) = (
            target.clone(),
            shared.clone(),
            sem.clone(),
            tx.clone(),
            cfg.clone(),
        );
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            match setup(&target, i, wait_ready, &cfg).await {
                Ok((conn, reader, _, key)) => {
                    drop(permit);
                    shared
                        .deflate_agreed
                        .fetch_add(reader.inflate.is_some() as usize, Relaxed);
                    let _ = tx.send((i, Ok(conn.clone())));
                    if shared.checked(i) {
                        subscriber(conn, reader, shared, i, key).await;
                    } else {
                        byte_counter(conn, reader, shared, i).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send((i, Err(e)));
                }
            }
        })
    };
    let mut tasks = Vec::with_capacity(n);
    let mut conns: Vec<Option<Arc<Conn>>> = vec![None; n];
    let mut errors: Vec<String> = Vec::new();
    let mut failures = 0usize;
    let mut deflate: Value;
    {
        let (target, shared, cfg) = (target.clone(), shared.clone(), cfg.clone());
        let first = setup(&target, 0, ready != Ready::Skip, &cfg).await;
        match first {
            Ok((conn, reader, got_first, key)) => {
                shared
                    .deflate_agreed
                    .fetch_add(reader.inflate.is_some() as usize, Relaxed);
                deflate = json!({"offered": a.permessage_deflate, "answer": reader.extensions,
                    "server_no_context_takeover": reader.inflate.as_ref().map(|i| i.no_context),
                    "server_max_window_bits": reader.inflate.as_ref().map(|i| i.window_bits)});
                if ready == Ready::Auto {
                    ready = if got_first { Ready::Wait } else { Ready::Skip };
                }
                conns[0] = Some(conn.clone());
                tasks.push(tokio::spawn(subscriber(conn, reader, shared, 0, key)));
            }
            Err(e) => return Err(format!("first connection: {e}")),
        }
    }
    for i in 1..n {
        tasks.push(spawn(i, ready == Ready::Wait));
    }
    drop(tx);
    for _ in 1..n {
        let Some((i, r)) = rx.recv().await else { break };
        match r {
            Ok(c) => conns[i] = Some(c),
            Err(e) => {
                failures += 1;
                if errors.len() < 10 {
                    errors.push(format!("subscriber {i}: {e}"));
                }
            }
        }
    }
    let setup_s = t_setup.elapsed().as_secs_f64();
    let live: Vec<usize> = (0..n).filter(|&i| conns[i].is_some()).collect();
    let publisher = conns[shared.publisher]
        .clone()
        .ok_or("the publisher connection failed")?;

    let mut rounds = Vec::new();
    let mut m = a.messages;
    let mut steady: Option<bool> = None;
    let mut warmed = 0usize;
    let settle = Duration::from_millis(a.settle_ms);
    if a.max_warmup > 0 {
        // Cold: the first publications after start, reported apart.
        tokio::time::sleep(settle).await;
        let mut v = round(&a, m, &shared, &publisher, &live, 1, true).await;
        v["cold"] = json!(true);
        m = size_round(&a, &v, m, live.len());
        rounds.push(v);
        let mut last: Option<f64> = None;
        steady = Some(false);
        while warmed < a.max_warmup {
            tokio::time::sleep(settle).await;
            let v = round(
                &a,
                m,
                &shared,
                &publisher,
                &live,
                rounds.len() as u64 + 1,
                true,
            )
            .await;
            warmed += 1;
            let cost = cpu_per_delivery(&v);
            m = size_round(&a, &v, m, live.len());
            let ok = v["ok"] == json!(true);
            rounds.push(v);
            if !ok {
                break; // a broken run: the measured rounds will say so
            }
            // Only rounds of about the target size are compared: a small round's cost per
            // delivery is not a sized one's.
            let sized = v_cpu(&rounds) >= 0.5 * a.target_server_cpu_s;
            if !sized {
                last = None;
                continue;
            }
            if let (Some(prev), Some(now)) = (last, cost) {
                if (now - prev).abs() <= a.stable_within * prev {
                    steady = Some(true);
                    break;
                }
            }
            last = cost;
        }
        for _ in 0..a.rounds.max(1) {
            tokio::time::sleep(settle).await;
            let v = round(
                &a,
                m,
                &shared,
                &publisher,
                &live,
                rounds.len() as u64 + 1,
                false,
            )
            .await;
            // A server still getting cheaper would shrink the next window under its minimum.
            m = size_round(&a, &v, m, live.len());
            rounds.push(v);
        }
    } else {
        for r in 1..=a.rounds.max(1) {
            tokio::time::sleep(settle).await;
            let v = round(&a, m, &shared, &publisher, &live, r as u64, r <= a.warmup).await;
            if a.target_round_s > 0.0 && r <= a.warmup && !live.is_empty() {
                let rate = v["deliveries_per_s"].as_f64().unwrap_or(0.0);
                if rate > 0.0 {
                    let want = a.target_round_s * rate / live.len() as f64;
                    m = (want as u64).clamp(a.min_messages.max(1), a.max_messages.max(1));
                }
            }
            rounds.push(v);
        }
    }

    // Close every connection politely, then give the reader tasks a moment to see the replies.
    for c in conns.iter().flatten() {
        let _ = c.close(1000).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;

    let measured: Vec<&Value> = rounds
        .iter()
        .filter(|r| r["warmup"] != json!(true))
        .collect();
    let summary = summarise(&measured);
    let ok = failures == 0 && rounds.iter().all(|r| r["ok"] == json!(true));
    let mut out = a.common.describe("fanout");
    let o = out.as_object_mut().expect("object");
    o.insert("ok".into(), json!(ok));
    o.insert("subscribers".into(), json!(n));
    deflate["agreed"] = json!(shared.deflate_agreed.load(Relaxed));
    o.insert("permessage_deflate".into(), deflate);
    o.insert("connected".into(), json!(live.len()));
    o.insert("connect_failures".into(), json!(failures));
    o.insert("connect_errors".into(), json!(errors));
    o.insert("setup_s".into(), json!(report::round3(setup_s)));
    o.insert("server_ready".into(), json!(ready == Ready::Wait));
    o.insert("ack_wait".into(), json!(!a.no_ack_wait));
    o.insert("topic".into(), json!(a.topic));
    o.insert("topic_per_subscriber".into(), json!(a.topic_per_subscriber));
    o.insert("messages".into(), json!(a.messages));
    o.insert("messages_measured".into(), json!(m));
    o.insert(
        "warmup_rounds".into(),
        json!(rounds.iter().filter(|r| r["warmup"] == json!(true)).count()),
    );
    // With --max-warmup: whether two warm-up rounds agreed within --stable-within (false: the
    // server never settled within the bound, and the measured rounds say so).
    o.insert("steady".into(), json!(steady));
    o.insert("steady_after_rounds".into(), json!(steady.map(|_| warmed)));
    o.insert("summary".into(), summary);
    o.insert("rounds".into(), json!(rounds));
    Ok(out)
}

/// Server CPU seconds of the last round (0 if unknown).
fn v_cpu(rounds: &[Value]) -> f64 {
    rounds
        .last()
        .and_then(|r| r["server_cpu_s"].as_f64())
        .unwrap_or(0.0)
}

/// Server CPU seconds per delivery of a round, if known.
fn cpu_per_delivery(v: &Value) -> Option<f64> {
    let cpu = v["server_cpu_s"].as_f64()?;
    let d = v["deliveries"].as_u64()?;
    (cpu > 0.0 && d > 0).then(|| cpu / d as f64)
}

/// The next round's message count: about --target-server-cpu-s of server CPU (or
/// --target-round-s of wall time when the server's CPU is not known).
fn size_round(a: &Args, v: &Value, m: u64, live: usize) -> u64 {
    if live == 0 {
        return m;
    }
    let want = match cpu_per_delivery(v) {
        Some(c) => a.target_server_cpu_s / (c * live as f64),
        None => {
            let rate = v["deliveries_per_s"].as_f64().unwrap_or(0.0);
            if rate <= 0.0 || a.target_round_s <= 0.0 {
                return m;
            }
            a.target_round_s * rate / live as f64
        }
    };
    // A round grows at most 100x at a time (a first reading may be off).
    (want as u64).clamp(
        a.min_messages.max(1),
        a.max_messages.max(1).min(m.saturating_mul(100).max(1)),
    )
}

/// Sums over the measured rounds.
fn summarise(rounds: &[&Value]) -> Value {
    let f = |k: &str| {
        rounds
            .iter()
            .map(|r| r[k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    let u = |k: &str| {
        rounds
            .iter()
            .map(|r| r[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let (wall, cpu, win) = (f("wall_s"), f("generator_cpu_s"), f("window_s"));
    let deliveries = u("deliveries");
    let share = if win > 0.0 { cpu / win } else { 0.0 };
    let mut v = json!({
        "rounds": rounds.len(),
        "ok": rounds.iter().all(|r| r["ok"] == json!(true)),
        "deliveries": deliveries, "missing": u("missing"), "duplicates": u("duplicates"), "gaps": u("gaps"),
        "reordered": u("reordered"), "verify_failed": u("verify_failed"),
        "wall_s": report::round6(wall), "deliveries_per_s": rate(deliveries, wall),
        "generator_cpu_s": report::round6(cpu),
        "generator_sys_s": report::round6(f("generator_sys_s")), "generator_cpu_share": report::round4(share),
        "lower_bound": rounds.iter().any(|r| r["lower_bound"] == json!(true)),
    });
    if rounds.iter().all(|r| r.get("server_cpu_s").is_some()) && !rounds.is_empty() {
        let s = f("server_cpu_s");
        v["server_cpu_s"] = json!(report::round9(s));
        v["per_server_cpu_s"] = if s > 0.0 {
            json!(deliveries as f64 / s)
        } else {
            Value::Null
        };
    }
    v
}
