//! CPU accounting (this process, and optionally the server's) and report helpers.
//!
//! Every scenario reports the generator's own CPU seconds over its measured window and its share
//! of one core (`cpu_s / wall_s`, divided by the worker threads for the per-core figure). When the
//! share is near a full core the generator, not the server, may have set the pace, and the rate
//! is marked as a lower bound.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Share of its cores above which the generator counts as saturated.
pub const SATURATED: f64 = 0.90;

/// User + system CPU seconds of this process (all threads), from getrusage(RUSAGE_SELF).
pub fn self_cpu() -> f64 {
    let (u, s) = self_cpu_split();
    u + s
}

/// (user, system) CPU seconds of this process.
pub fn self_cpu_split() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// utime + stime of another process (all its threads), from /proc/PID/stat.
pub fn proc_cpu(pid: u32) -> Option<f64> {
    let data = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = data.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&data[close + 2..]).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// The summed CPU seconds of several processes (a server's workers); None if none is readable.
pub fn procs_cpu(pids: &[u32]) -> Option<f64> {
    let v: Vec<f64> = pids.iter().filter_map(|&p| proc_cpu(p)).collect();
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum())
    }
}

/// A measured window: wall time and the CPU of this process (and of the server, if known).
pub struct Window {
    t0: Instant,
    threads: usize,
    cpu0: (f64, f64),
    server_pids: Vec<u32>,
    server0: Option<f64>,
}

impl Window {
    pub fn start(server_pids: &[u32], threads: usize) -> Window {
        let server_pids = server_pids.to_vec();
        let server0 = procs_cpu(&server_pids);
        Window {
            t0: Instant::now(),
            threads: threads.max(1),
            cpu0: self_cpu_split(),
            server_pids,
            server0,
        }
    }

    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Close the window now.
    pub fn end(&self) -> WindowReport {
        let wall = self.t0.elapsed().as_secs_f64();
        let (u, s) = self_cpu_split();
        let (user, sys) = (u - self.cpu0.0, s - self.cpu0.1);
        let cpu = user + sys;
        let server = match (procs_cpu(&self.server_pids), self.server0) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        };
        WindowReport {
            wall,
            cpu,
            sys,
            server,
            threads: self.threads,
        }
    }
}

pub struct WindowReport {
    pub wall: f64,
    pub cpu: f64,
    /// The kernel's part of `cpu` (socket reads and writes).
    pub sys: f64,
    pub server: Option<f64>,
    pub threads: usize,
}

impl WindowReport {
    /// The generator's CPU share of one core over the window, and per worker thread.
    pub fn share(&self) -> f64 {
        if self.wall > 0.0 {
            self.cpu / self.wall
        } else {
            0.0
        }
    }

    pub fn saturated(&self) -> bool {
        self.share() / self.threads.max(1) as f64 >= SATURATED
    }

    /// The window's figures; `work` (deliveries, messages) gives the per-server-CPU-second rate.
    pub fn json(&self, work: u64) -> Value {
        let mut v = json!({
            "window_s": round6(self.wall),
            "generator_cpu_s": round6(self.cpu),
            "generator_sys_s": round6(self.sys),
            "generator_cpu_share": round4(self.share()),
            "generator_threads": self.threads,
            "generator_saturated": self.saturated(),
        });
        if let Some(s) = self.server {
            v["server_cpu_s"] = json!(round6(s));
            v["per_server_cpu_s"] = if s > 0.0 {
                json!(work as f64 / s)
            } else {
                Value::Null
            };
        }
        v
    }
}

/// A histogram of nanoseconds, 1 ns .. 1 hour, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram bounds")
}

/// p50/p90/p99/p99.9/max of a nanosecond histogram, in microseconds.
pub fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    let us = |ns: u64| round3(ns as f64 / 1000.0);
    json!({
        "count": h.len(),
        "min_us": us(h.min()),
        "mean_us": round3(h.mean() / 1000.0),
        "p50_us": us(h.value_at_quantile(0.50)),
        "p90_us": us(h.value_at_quantile(0.90)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p99_9_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
    })
}

pub fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}
pub fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}
pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Rate per second, 0 when the window is empty.
pub fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs).round()
    } else {
        0.0
    }
}

/// Print the run's report: one JSON document, pretty-printed if asked, else on one line (the
/// last line of stdout, for harnesses).
pub fn emit(v: &Value, pretty: bool) {
    use std::io::Write;
    let text = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.unwrap_or_default());
    let _ = out.flush();
}

/// One JSON line (progress events a harness can wait for).
pub fn event(v: &Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_moves_and_proc_stat_parses() {
        let a = self_cpu();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(self_cpu() >= a);
        assert!(proc_cpu(std::process::id()).is_some());
    }
}
