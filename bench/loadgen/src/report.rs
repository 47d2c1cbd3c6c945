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

/// CPU nanoseconds of every thread of process `pid`, by thread id: the first field of each
/// `/proc/PID/task/TID/schedstat` (time spent on a CPU, counted by the scheduler in nanoseconds,
/// not in 10 ms ticks). None if the process is gone.
pub fn proc_threads_ns(pid: u32) -> Option<Vec<(u32, u64)>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")) else {
            continue; // the thread exited between the listing and the read
        };
        if let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()) {
            out.push((tid, ns));
        }
    }
    Some(out)
}

/// utime + stime in clock ticks from a `stat` file (a process's: all its threads, the exited
/// ones included; or one thread's).
fn stat_ticks(path: &str) -> Option<u64> {
    let data = std::fs::read(path).ok()?;
    let close = data.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&data[close + 2..]).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A snapshot of several processes' threads (a server's workers): thread id -> CPU ns, and the
/// tick counters that account for threads that exit between two snapshots.
#[derive(Default, Clone)]
pub struct ThreadsCpu {
    pub ns: std::collections::HashMap<u32, u64>,
    /// Processes that could be read.
    pub procs: usize,
    /// pid -> the process's utime + stime ticks (exited threads included).
    proc_ticks: std::collections::HashMap<u32, u64>,
    /// tid -> (pid, the thread's ticks).
    thread_ticks: std::collections::HashMap<u32, (u32, u64)>,
}

impl ThreadsCpu {
    pub fn read(pids: &[u32]) -> ThreadsCpu {
        let mut s = ThreadsCpu::default();
        for &p in pids {
            let Some(before) = stat_ticks(&format!("/proc/{p}/stat")) else { continue };
            if let Some(t) = proc_threads_ns(p) {
                s.procs += 1;
                for &(tid, _) in &t {
                    if let Some(k) = stat_ticks(&format!("/proc/{p}/task/{tid}/stat")) {
                        s.thread_ticks.insert(tid, (p, k));
                    }
                }
                s.ns.extend(t);
                s.proc_ticks.insert(p, before);
            }
        }
        s
    }

    /// CPU seconds from `before` to `self`: the threads' nanosecond counters, plus the CPU of
    /// threads that exited in between (or came and went), which only the process's tick counter
    /// still holds (to 10 ms); and how many of `before`'s threads are gone.
    pub fn since(&self, before: &ThreadsCpu) -> (f64, usize) {
        let (s, gone, _) = self.since_detail(before);
        (s, gone)
    }

    /// As [`since`](Self::since), with the exited threads' part (seconds) apart.
    pub fn since_detail(&self, before: &ThreadsCpu) -> (f64, usize, f64) {
        let mut ns = 0u64;
        for (tid, &now) in &self.ns {
            ns += now.saturating_sub(before.ns.get(tid).copied().unwrap_or(0));
        }
        let gone = before.ns.keys().filter(|t| !self.ns.contains_key(t)).count();
        // Per process: its ticks over the window less its live threads' ticks = exited threads'.
        let mut exited_ticks = 0u64;
        for (&pid, &now) in &self.proc_ticks {
            let Some(&was) = before.proc_ticks.get(&pid) else { continue };
            let live: u64 = self
                .thread_ticks
                .iter()
                .filter(|(_, (p, _))| *p == pid)
                .map(|(tid, (_, k))| k.saturating_sub(before.thread_ticks.get(tid).map_or(0, |x| x.1)))
                .sum();
            let extra = now.saturating_sub(was).saturating_sub(live);
            // A tick or two is rounding between the per-thread and the process counters.
            if extra > 2 || (extra > 0 && gone > 0) {
                exited_ticks += extra;
            }
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let exited = exited_ticks as f64 / hz;
        (ns as f64 / 1e9 + exited, gone, exited)
    }
}

/// A measured window: wall time and the CPU of this process (and of the server, if known).
pub struct Window {
    t0: Instant,
    threads: usize,
    cpu0: (f64, f64),
    server_pids: Vec<u32>,
    server0: Option<ThreadsCpu>,
}

impl Window {
    pub fn start(server_pids: &[u32], threads: usize) -> Window {
        let server_pids = server_pids.to_vec();
        let server0 = (!server_pids.is_empty()).then(|| ThreadsCpu::read(&server_pids));
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
        let (server, gone, exited) = match &self.server0 {
            Some(a) if a.procs > 0 => {
                let (s, gone, exited) = ThreadsCpu::read(&self.server_pids).since_detail(a);
                (Some(s), gone, exited)
            }
            _ => (None, 0, 0.0),
        };
        WindowReport {
            wall,
            cpu,
            sys,
            server,
            server_threads_gone: gone,
            server_exited_threads_cpu: exited,
            threads: self.threads,
        }
    }
}

pub struct WindowReport {
    pub wall: f64,
    pub cpu: f64,
    /// The kernel's part of `cpu` (socket reads and writes).
    pub sys: f64,
    /// Server CPU seconds over the window, every thread of every process given (schedstat).
    pub server: Option<f64>,
    /// Server threads that exited during the window (their CPU is missing from `server`).
    pub server_threads_gone: usize,
    /// The part of `server` that threads gone by the window's end used (from tick counters).
    pub server_exited_threads_cpu: f64,
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
            v["server_cpu_s"] = json!(round9(s));
            v["server_cpu_source"] = json!("schedstat");
            v["server_threads_gone"] = json!(self.server_threads_gone);
            v["server_exited_threads_cpu_s"] = json!(round6(self.server_exited_threads_cpu));
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
pub fn round9(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
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
        let me: u64 = proc_threads_ns(std::process::id()).expect("own schedstat").iter().map(|t| t.1).sum();
        assert!(me > 0, "schedstat counts this busy thread: {me}");
        // A thread alive at the first reading and gone at the second: said so, and its CPU in
        // the window still counted, from the process's tick counter.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            let _ = rx.recv();
            // Busy for 150 ms of this thread's own CPU (however busy the machine).
            let thread_cpu = || {
                // SAFETY: clock_gettime writes into the zeroed struct we pass.
                let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
            };
            let mut x = 0u64;
            while thread_cpu() < 0.15 {
                for _ in 0..10_000 {
                    x = x.wrapping_add(std::hint::black_box(x) ^ 7);
                }
            }
            std::hint::black_box(x);
        });
        let a = ThreadsCpu::read(&[std::process::id()]);
        tx.send(()).unwrap();
        h.join().unwrap();
        let (cpu, gone, exited) = ThreadsCpu::read(&[std::process::id()]).since_detail(&a);
        // At least this one: the test harness's other threads may also end inside the window.
        assert!(gone >= 1, "threads gone: {gone}");
        assert!(exited >= 0.1 && cpu >= exited, "exited thread's CPU: {exited} of {cpu}");
    }
}
