//! `wse-meshbench`: Unix stream socket against a shared-memory ring for the mesh's publication
//! frames, between two processes pinned to two CPUs. Runs every (size, mode, transport)
//! combination `--runs` times, interleaved (the transport order alternates), prints a table of
//! medians and writes every run and the summary as JSON.
//!
//!     cargo build --release -p wse-meshbench
//!     target/release/wse-meshbench --quick            # about 30 s
//!     target/release/wse-meshbench                    # the full matrix, about 2.5 minutes

use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use wse_meshbench::run::{self, Config, Transport};

#[derive(Parser, Debug)]
#[command(
    name = "wse-meshbench",
    about = "Mesh transport: Unix stream socket vs shared-memory ring"
)]
struct Args {
    /// Short runs (about 30 s in all): for checking the harness, not for figures.
    #[arg(long)]
    quick: bool,
    /// Frame sizes in bytes (length prefix included).
    #[arg(long, value_delimiter = ',', default_value = "64,512,4096")]
    sizes: Vec<usize>,
    /// `rate` (paced at --rate) and/or `full` (as fast as the producer can).
    #[arg(long, value_delimiter = ',', default_value = "rate,full")]
    modes: Vec<String>,
    /// `null` is the baseline (pacing and frame building, nothing sent); `uds`; `shm`.
    #[arg(long, value_delimiter = ',', default_value = "null,uds,shm")]
    transports: Vec<String>,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Messages per second in `rate` mode.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds per `rate` run (quick: 1).
    #[arg(long)]
    rate_seconds: Option<f64>,
    /// Messages per `full` run (quick: 200,000), capped by --full-bytes.
    #[arg(long)]
    full_count: Option<u64>,
    /// At most this many bytes per `full` run (quick: 256 MiB; default 1 GiB).
    #[arg(long)]
    full_bytes: Option<u64>,
    /// How long the shm consumer (and a producer facing a full ring) polls before sleeping.
    #[arg(long, default_value_t = 20)]
    spin_us: u64,
    #[arg(long, default_value_t = 1 << 20)]
    ring_bytes: usize,
    /// The uds publisher's queue limit (the mesh's per-peer queue drops past its limit; this
    /// one makes the publisher wait, so that every frame is counted).
    #[arg(long, default_value_t = 4 << 20)]
    queue_bytes: usize,
    #[arg(long, default_value_t = 0)]
    producer_cpu: usize,
    #[arg(long, default_value_t = 1)]
    consumer_cpu: usize,
    /// Don't pin the two processes.
    #[arg(long)]
    no_pin: bool,
    /// Where the JSON goes (default bench/results/mesh_transport.json, or mesh_transport-quick.json).
    #[arg(long)]
    out: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn minmax(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

fn main() {
    let a = Args::parse();
    let rate_s = a.rate_seconds.unwrap_or(if a.quick { 1.0 } else { 5.0 });
    let full_count = a
        .full_count
        .unwrap_or(if a.quick { 200_000 } else { 2_000_000 });
    let full_bytes = a
        .full_bytes
        .unwrap_or(if a.quick { 256 << 20 } else { 1 << 30 });
    let transports: Vec<Transport> = a
        .transports
        .iter()
        .map(|t| match t.as_str() {
            "null" => Transport::Null,
            "uds" => Transport::Uds,
            "shm" => Transport::Shm,
            o => {
                eprintln!("unknown transport {o}");
                std::process::exit(2)
            }
        })
        .collect();
    let pin = |c: usize| if a.no_pin { None } else { Some(c) };
    let mut runs: Vec<Value> = Vec::new();
    let t0 = std::time::Instant::now();
    for r in 0..a.runs {
        for &size in &a.sizes {
            for mode in &a.modes {
                let (count, rate) = match mode.as_str() {
                    "rate" => ((a.rate * rate_s) as u64, Some(a.rate)),
                    "full" => (full_count.min(full_bytes / size as u64), None),
                    o => {
                        eprintln!("unknown mode {o}");
                        std::process::exit(2)
                    }
                };
                let mut order = transports.clone();
                if (r + size) % 2 == 1 {
                    order.reverse();
                }
                for &transport in &order {
                    let cfg = Config {
                        transport,
                        size,
                        count,
                        rate,
                        spin: Duration::from_micros(a.spin_us),
                        ring_bytes: a.ring_bytes,
                        queue_bytes: a.queue_bytes,
                        producer_cpu: pin(a.producer_cpu),
                        consumer_cpu: pin(a.consumer_cpu),
                    };
                    match run::run(&cfg) {
                        Ok(mut v) => {
                            v["run"] = json!(r + 1);
                            eprintln!(
                                "run {} {:>4} B {:>4} {}: {:>10.0} msg/s, {:.3} CPU-s/M msgs, p50 {:.1} us, p99 {:.1} us{}",
                                r + 1,
                                size,
                                mode,
                                transport.name(),
                                v["msgs_per_s"].as_f64().unwrap_or(0.0),
                                v["cpu_s_per_million"].as_f64().unwrap_or(0.0),
                                v["consumer_latency_us"]["p50"].as_f64().unwrap_or(0.0),
                                v["consumer_latency_us"]["p99"].as_f64().unwrap_or(0.0),
                                if v["ok"].as_bool() == Some(true) { String::new() } else { format!("  FAULTY: {}", v["consumer_first_error"]) }
                            );
                            runs.push(v);
                        }
                        Err(e) => {
                            eprintln!(
                                "run {} {size} B {mode} {}: error {e}",
                                r + 1,
                                transport.name()
                            );
                            runs.push(json!({"run": r + 1, "size": size, "mode": mode, "transport": transport.name(), "ok": false, "error": e}));
                        }
                    }
                }
            }
        }
    }
    let summary = summarise(&a, &runs, &transports);
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let doc = json!({
        "meta": {
            "tool": format!("wse-meshbench {}", env!("CARGO_PKG_VERSION")),
            "quick": a.quick,
            "runs": a.runs,
            "rate": a.rate,
            "rate_seconds": rate_s,
            "full_count": full_count,
            "full_bytes": full_bytes,
            "spin_us": a.spin_us,
            "ring_bytes": a.ring_bytes,
            "queue_bytes": a.queue_bytes,
            "producer_cpu": pin(a.producer_cpu),
            "consumer_cpu": pin(a.consumer_cpu),
            "cpus": ncpu,
            "elapsed_s": t0.elapsed().as_secs_f64(),
        },
        "summary": summary,
        "runs": runs,
    });
    let out = a.out.clone().unwrap_or_else(|| {
        if a.quick {
            "bench/results/mesh_transport-quick.json".into()
        } else {
            "bench/results/mesh_transport.json".into()
        }
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap() + "\n") {
        Ok(()) => println!("JSON: {out}"),
        Err(e) => eprintln!("cannot write {out}: {e}"),
    }
    let all_ok = runs.iter().all(|r| r["ok"].as_bool() == Some(true));
    std::process::exit(if all_ok { 0 } else { 1 });
}

/// Medians per (size, mode, transport), the table, and shm's saving against uds.
fn summarise(a: &Args, runs: &[Value], transports: &[Transport]) -> Vec<Value> {
    println!(
        "\nMesh transport, producer on CPU {} and consumer on CPU {}; medians of {} runs [min-max]; CPU = both processes",
        a.producer_cpu, a.consumer_cpu, a.runs
    );
    println!(
        "{:>5} {:>4} {:>4} {:>24} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "size",
        "mode",
        "tx",
        "msgs/s [min-max]",
        "CPU-s/M",
        "-null",
        "prod",
        "cons",
        "p50 us",
        "p99 us",
        "p99.9 us"
    );
    let mut out = Vec::new();
    for &size in &a.sizes {
        for mode in &a.modes {
            let mut per: Vec<(Transport, f64)> = Vec::new();
            let mut base: Option<f64> = None;
            for &t in transports {
                let rs: Vec<&Value> = runs
                    .iter()
                    .filter(|r| {
                        r["size"] == json!(size)
                            && r["mode"] == json!(mode)
                            && r["transport"] == json!(t.name())
                            && r["ok"] == json!(true)
                    })
                    .collect();
                if rs.is_empty() {
                    println!("{size:>5} {mode:>4} {:>4} no clean run", t.name());
                    continue;
                }
                let col = |f: &dyn Fn(&Value) -> Option<f64>| {
                    rs.iter().filter_map(|r| f(r)).collect::<Vec<f64>>()
                };
                let rate = col(&|r| r["msgs_per_s"].as_f64());
                let cpu = median(col(&|r| r["cpu_s_per_million"].as_f64()));
                let prod = median(col(&|r| r["producer_cpu_s_per_million"].as_f64()));
                let cons = median(col(&|r| r["consumer_cpu_s_per_million"].as_f64()));
                let lat = |q: &str| median(col(&|r| r["consumer_latency_us"][q].as_f64()));
                let show = |x: f64| {
                    if x.is_nan() {
                        "-".to_string()
                    } else {
                        format!("{x:.1}")
                    }
                };
                let (lo, hi) = minmax(&rate);
                let mr = median(rate.clone());
                if t == Transport::Null {
                    base = Some(cpu);
                }
                let net = base.filter(|_| t != Transport::Null).map(|b| cpu - b);
                println!(
                    "{size:>5} {mode:>4} {:>4} {:>24} {cpu:>9.3} {:>9} {prod:>9.3} {cons:>9.3} {:>8} {:>8} {:>8}",
                    t.name(),
                    format!("{:.0} [{:.0}-{:.0}]", mr, lo, hi),
                    net.map(|n| format!("{n:.3}")).unwrap_or_else(|| "-".into()),
                    show(lat("p50")),
                    show(lat("p99")),
                    show(lat("p99_9"))
                );
                per.push((t, cpu));
                out.push(json!({
                    "size": size, "mode": mode, "transport": t.name(), "runs": rs.len(),
                    "msgs_per_s": mr, "msgs_per_s_min": lo, "msgs_per_s_max": hi,
                    "cpu_s_per_million": cpu, "cpu_s_per_million_above_null": net, "producer_cpu_s_per_million": prod, "consumer_cpu_s_per_million": cons,
                    "latency_us": {"p50": lat("p50"), "p99": lat("p99"), "p99_9": lat("p99_9")},
                }));
            }
            let uds = per.iter().find(|p| p.0 == Transport::Uds).map(|p| p.1);
            let shm = per.iter().find(|p| p.0 == Transport::Shm).map(|p| p.1);
            if let (Some(u), Some(s)) = (uds, shm) {
                // CPU-s per million messages = microseconds per message.
                let net = base.map(|b| ((s - b) / (u - b), (u - b) * 1e3, (s - b) * 1e3));
                println!(
                    "{size:>5} {mode:>4}  shm/uds CPU per message {:.2}x, saving {:+.0} ns per message{}",
                    s / u,
                    (u - s) * 1e3,
                    net.map(|(r, un, sn)| format!(" (above null: uds {un:.0} ns, shm {sn:.0} ns, {r:.2}x)")).unwrap_or_default()
                );
                out.push(json!({"size": size, "mode": mode, "shm_over_uds_cpu": s / u, "ns_saved_per_message": (u - s) * 1e3,
                                "uds_ns_above_null": net.map(|n| n.1), "shm_ns_above_null": net.map(|n| n.2)}));
            }
        }
    }
    out
}
